"""``snapdragon-qnn``: a static-shape prefill/decode pair, QDQ-quantized for the QNN HTP, proven on it.

Steps: ``static_graph.StaticDecoder`` is exported twice with torch.onnx (dynamo), once for ``step_tokens``
new tokens (``prefill.onnx``) and once for one (``decode.onnx``), both over ``context_tokens`` KV slots.
Calibration feeds come from running those fp32 graphs on calibration text with the host-side cache
(``static_host.StaticHost``), exactly as the runtime will call them. onnxruntime's QNN tooling
(``get_qnn_qdq_config`` + ``quantize``) then writes QDQ graphs with 16-bit activations and 8- or 4-bit
per-channel weights. Validation runs them on the QNN HTP backend of ``onnxruntime-qnn`` (on x86 the
Hexagon is emulated: right answers, not phone speed) with CPU fallback disabled, so a session that opens
at all proves every node runs on the HTP.
"""

from __future__ import annotations

import shutil
from functools import lru_cache
from pathlib import Path

import numpy as np

from mv4deploy.export.source import SourceModel
from mv4deploy.export.static_host import GraphShape, StaticHost, StaticRunner, io_names
from mv4deploy.export.targets import ExportTarget, Precision
from mv4deploy.model.tokenizer import TOKENIZER_FILES

GRAPHS = {"prefill.onnx": "step", "decode.onnx": 1}
CALIB_DECODE_STEPS = 16      # decode feeds per calibration chunk, after prefilling its first half
NOTES = (
    "RMSNorm is exported as x / sqrt(mean(x^2) + eps) instead of x * rsqrt(...): the HTP's Reciprocal "
    "(QNN 2.51, 16-bit) returned wrong values for outputs above ~1 (1/0.018 gave 1.33), Div is exact",
    "Linear layers are exported as Gemm (2-D activations), not MatMul, so weights get one scale per "
    "output channel (the QNN quantizer gives MatMul weights a single per-tensor scale)",
    "Attention is written out (MatMul, Softmax, additive mask input) over a fixed KV window; only the new "
    "K/V leave the graph, so the graph has no ScatterND and no dynamic shapes",
)


def export_static(model, shape: GraphShape, path: Path) -> None:
    import torch
    from mv4deploy.export.static_graph import StaticDecoder
    decoder = StaticDecoder(model, shape.context, shape.step).eval()
    inputs, outputs = io_names(shape.layers)
    torch.onnx.export(decoder, shape.example_torch(), str(path), input_names=inputs, output_names=outputs,
                      dynamo=True, optimize=True, verbose=False)


def _calibration_feeds(prefill, decode, shape: GraphShape, chunks: np.ndarray, graph: str):
    """Feeds for one graph, produced by the fp32 pair on calibration chunks (a generator: one at a time)."""
    for chunk in chunks:
        host = StaticHost(shape)
        if graph == "prefill.onnx":
            for start in range(0, len(chunk), shape.step):
                feeds, valid = host.feeds(chunk[start:start + shape.step], shape.step)
                yield feeds
                host.commit(prefill(feeds), valid)
            continue
        half = len(chunk) // 2
        for start in range(0, half, shape.step):
            feeds, valid = host.feeds(chunk[start:min(start + shape.step, half)], shape.step)
            host.commit(prefill(feeds), valid)
        for token in chunk[half:half + CALIB_DECODE_STEPS]:
            feeds, _ = host.feeds([token], 1)
            yield feeds
            host.commit(decode(feeds), 1)


def quantize_graph(fp32: Path, out: Path, feeds, target: ExportTarget) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantType, quantize
    from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter(feeds)

        def get_next(self):
            return next(self.feeds, None)

    weight_type = {Precision.INT8: QuantType.QUInt8, Precision.INT4: QuantType.QInt4}[target.weights.precision]
    config = get_qnn_qdq_config(str(fp32), Reader(), activation_type=QuantType.QUInt16, weight_type=weight_type,
                                per_channel=target.weights.per_channel)
    quantize(str(fp32), str(out), config)


def build(source: SourceModel, target: ExportTarget, out: Path, work: Path, model=None,
          calib_chunks: np.ndarray | None = None, **_) -> "QnnBuild":
    shape = GraphShape.of(source.spec, target.context_tokens, target.step_tokens)
    fp32 = {name: work / "fp32" / name for name in GRAPHS}
    fp32["prefill.onnx"].parent.mkdir(parents=True, exist_ok=True)
    for name, path in fp32.items():
        export_static(model, shape.with_step(target.step_tokens if GRAPHS[name] == "step" else 1), path)
    prefill, decode = (cpu_session(fp32[name]) for name in GRAPHS)
    for name in GRAPHS:
        feeds = _calibration_feeds(_run(prefill), _run(decode), shape, calib_chunks, name)
        quantize_graph(fp32[name], out / name, feeds, target)
    for name in (*TOKENIZER_FILES, "config.json", "generation_config.json"):
        if (source.folder / name).is_file():
            shutil.copy2(source.folder / name, out / name)
    return QnnBuild(out, shape)


def _run(session):
    return lambda feeds: session.run(None, feeds)


def cpu_session(path: Path):
    import onnxruntime as ort
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@lru_cache(maxsize=1)
def _register_qnn() -> str:
    """Register onnxruntime-qnn's plugin EP once per process; returns the HTP backend library path."""
    import onnxruntime as ort
    import onnxruntime_qnn
    ort.register_execution_provider_library("QNNExecutionProvider", onnxruntime_qnn.get_library_path())
    return onnxruntime_qnn.get_qnn_htp_path()


def htp_session(path: Path):
    """A session on the QNN HTP backend with CPU fallback disabled: it fails to open unless every node of
    the graph is assigned to the HTP."""
    import onnxruntime as ort
    backend = _register_qnn()
    options = ort.SessionOptions()
    options.log_severity_level = 3        # errors only: the EP warns about Windows-only features at every open
    devices = [d for d in ort.get_ep_devices() if d.ep_name == "QNNExecutionProvider"]
    options.add_provider_for_devices(devices, {"backend_path": backend})
    options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    return ort.InferenceSession(str(path), sess_options=options)


class QnnBuild:
    def __init__(self, folder: Path, shape: GraphShape):
        self.folder, self.shape = folder, shape
        self.graphs = tuple(GRAPHS)
        self.command = "torch.onnx.export(dynamo=True) of a static decoder + onnxruntime QNN QDQ quantization"
        self.notes = NOTES

    def runner(self, folder: Path | None = None) -> StaticRunner:
        folder = folder or self.folder
        prefill, decode = (htp_session(folder / name) for name in GRAPHS)
        import onnxruntime_qnn
        from mv4deploy.model.tokenizer import load_tokenizer
        return StaticRunner(self.shape, _run(prefill), _run(decode),
                            f"QNN HTP (onnxruntime-qnn {onnxruntime_qnn.__version__}, CPU fallback disabled)",
                            folder, load_tokenizer(folder))

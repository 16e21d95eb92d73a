"""Targets built by the onnxruntime-genai model builder (``cpu-int4``, ``cpu-fp32``).

The builder (``python -m onnxruntime_genai.models.builder``) reads a local transformers folder offline and
writes ``model.onnx`` (+ ``model.onnx.data``), ``genai_config.json`` and the tokenizer files. It runs in a
subprocess: it logs heavily and holds the whole model in memory, and neither should outlive the step.
Its ``--help`` crashes in 0.18 (an argparse bug); the options used here are read from its source:
``-p`` precision, ``-e`` execution provider, ``-c`` cache folder, ``--extra_options KEY=VALUE ...``
(``block_size``, ``is_symmetric``, ``accuracy_level``, ``op_types_to_quantize=MatMul/Gather``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


from mv4deploy.core.errors import CheckFailed
from mv4deploy.export.source import SourceModel
from mv4deploy.export.targets import ExportTarget, Precision

BUILDER_MODULE = "onnxruntime_genai.models.builder"


def builder_command(source: SourceModel, target: ExportTarget, out: Path, cache: Path) -> list[str]:
    w = target.weights
    cmd = [sys.executable, "-m", BUILDER_MODULE, "-i", str(source.folder), "-o", str(out),
           "-p", w.precision.value, "-e", "cpu", "-c", str(cache)]
    if w.precision is not Precision.FP32:
        extra = {"block_size": w.block_size or 32, "is_symmetric": str(w.symmetric).lower(),
                 "op_types_to_quantize": "/".join(w.quantize_ops)}
        if w.accuracy_level is not None:
            extra["accuracy_level"] = w.accuracy_level
        cmd += ["--extra_options", *(f"{k}={v}" for k, v in extra.items())]
    return cmd


def build(source: SourceModel, target: ExportTarget, out: Path, work: Path, **_) -> "GenaiBuild":
    """Run the builder into ``out``, then cap the generation length (and so the KV buffer) at the target's
    context: genai allocates past/present as one [batch, kv_heads, max_length, head_dim] buffer."""
    cmd = builder_command(source, target, out, work / "builder-cache")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0 or not (out / "genai_config.json").is_file():
        tail = [line for line in (proc.stderr + proc.stdout).strip().splitlines() if line.strip()][-1:]
        raise CheckFailed(f"onnxruntime-genai builder failed (exit {proc.returncode}): {' '.join(tail)}")
    max_length = min(target.context_tokens, source.spec.max_position_embeddings)
    config_path = out / "genai_config.json"
    config = json.loads(config_path.read_text())
    config["search"]["max_length"] = max_length
    config_path.write_text(json.dumps(config, indent=4) + "\n")
    return GenaiBuild(out, " ".join(["python", *cmd[1:]]), max_length)


class GenaiBuild:
    def __init__(self, folder: Path, command: str, max_length: int):
        self.folder, self.command, self.max_length = folder, command, max_length
        self.graphs = ("model.onnx",)
        self.notes: tuple[str, ...] = ()

    def runner(self, folder: Path | None = None):
        """The folder as ``mv4deploy validate`` opens it: onnxruntime-genai's own Generator, what its user runs."""
        from mv4deploy.validate.backends import open_source
        return open_source(folder or self.folder, "cpu", role="export")

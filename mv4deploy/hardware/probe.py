"""Measure what the planner needs on this machine: achievable rates, not spec-sheet peaks.

Host: multi-threaded memory read bandwidth, CPU matmul rate per format (a square GEMM: prefill), the weight
bytes/s one-token matmuls stream per format (``matvec``: decode; on a CPU often far below the read
bandwidth), sequential read of a temporary file with its pages dropped from the page cache first. GPU (when
torch sees CUDA): device memory bandwidth, pinned host->device and device->host copies, dense matmul rate in
bf16, fp16, fp8 and int8. Each figure is the best of a few repeats, after a warm-up, so a noisy neighbour
lowers it only if it is there the whole time. Host figures use ``threads`` CPU threads (default: every core),
recorded in the profile so ``mv4deploy run`` uses as many: on a 2-vCPU VM one thread streamed bf16 weights
through one-token matmuls at ~14 GB/s and two at ~3 GB/s (the vCPUs share a core).
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from mv4deploy.core.errors import InputError


@dataclass
class ProbeResult:
    host_bandwidth_bytes_per_s: float | None = None
    host_compute_flops_per_s: dict[str, float] = field(default_factory=dict)
    host_matvec_bytes_per_s: dict[str, float] = field(default_factory=dict)
    host_threads: int | None = None
    storage_read_bytes_per_s: float | None = None
    gpu_bandwidth_bytes_per_s: float | None = None
    gpu_compute_flops_per_s: dict[str, float] = field(default_factory=dict)
    host_to_gpu_bytes_per_s: float | None = None
    gpu_to_host_bytes_per_s: float | None = None
    notes: list[str] = field(default_factory=list)


def _torch():
    try:
        import torch
    except ImportError:
        raise InputError(None, "profile probe", None,
                         "needs torch: pip install -c constraints.txt 'mv4deploy[quant]'") from None
    return torch


def _best_seconds(fn, repeats: int, sync=lambda: None) -> float:
    fn()
    sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def host_read_bandwidth(size_bytes: int = 2**30, repeats: int = 5) -> float:
    """Bytes/s of a multi-threaded reduction over ``size_bytes`` of float32 (read-bound)."""
    torch = _torch()
    data = torch.ones(size_bytes // 4, dtype=torch.float32)
    return size_bytes / _best_seconds(lambda: data.sum(), repeats)


HOST_DTYPES = {"fp32": "float32", "bf16": "bfloat16"}
MATVEC_SIDE = 1024      # weights alternate [4k, k] and [k, 4k]: a MoE expert's gate/up and down shapes


def host_matmul_rate(dtype_name: str, n: int = 2048, repeats: int = 3) -> float:
    """FLOP/s of an n x n x n matmul on the CPU (2 n^3 FLOPs)."""
    torch = _torch()
    dtype = getattr(torch, HOST_DTYPES[dtype_name])
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    return 2 * n**3 / _best_seconds(lambda: a @ b, repeats)


def host_matvec_rate(dtype_name: str, size_bytes: int = 2**29, repeats: int = 3) -> float:
    """Weight bytes/s that one-token ``F.linear`` calls stream on the CPU, over ``size_bytes`` of weights (more
    than the caches hold, so every pass reads memory): what a decode step's CPU-side matmuls achieve."""
    torch = _torch()
    import torch.nn.functional as F
    dtype = getattr(torch, HOST_DTYPES[dtype_name])
    k = MATVEC_SIDE
    per_matrix = 4 * k * k * dtype.itemsize
    shapes = [(4 * k, k) if i % 2 == 0 else (k, 4 * k) for i in range(max(2, size_bytes // per_matrix))]
    weights = [torch.randn(shape).to(dtype) for shape in shapes]
    inputs = {shape[1]: torch.randn(1, shape[1]).to(dtype) for shape in shapes}

    def sweep():
        for w in weights:
            F.linear(inputs[w.shape[1]], w)
    return len(weights) * per_matrix / _best_seconds(sweep, repeats)


def storage_read_bandwidth(directory: Path, size_bytes: int = 2**30, chunk_bytes: int = 16 * 2**20) -> float:
    """Sequential read bytes/s of a fresh temporary file whose pages were dropped from the page cache."""
    with tempfile.NamedTemporaryFile(dir=directory, prefix=".mv4deploy-probe-", delete=True) as handle:
        block = os.urandom(chunk_bytes)
        for _ in range(size_bytes // chunk_bytes):
            handle.write(block)
        handle.flush()
        os.fsync(handle.fileno())
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        with open(handle.name, "rb", buffering=0) as reader:
            buffer = bytearray(chunk_bytes)
            start = time.perf_counter()
            while reader.readinto(buffer):
                pass
            elapsed = time.perf_counter() - start
    return (size_bytes // chunk_bytes) * chunk_bytes / elapsed


def gpu_rates(result: ProbeResult, size_bytes: int = 2**30) -> None:
    torch = _torch()
    sync = torch.cuda.synchronize
    src = torch.empty(size_bytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    # a device copy reads and writes every byte once
    result.gpu_bandwidth_bytes_per_s = 2 * size_bytes / _best_seconds(lambda: dst.copy_(src), 5, sync)
    pinned = torch.empty(size_bytes, dtype=torch.uint8, pin_memory=True)
    result.host_to_gpu_bytes_per_s = size_bytes / _best_seconds(lambda: dst.copy_(pinned, non_blocking=True), 5, sync)
    result.gpu_to_host_bytes_per_s = size_bytes / _best_seconds(lambda: pinned.copy_(dst, non_blocking=True), 5, sync)
    del src, dst, pinned
    gpu_matmul_rates(result)


def gpu_matmul_rates(result: ProbeResult, n: int = 8192) -> None:
    """Dense n^3 GEMMs: bf16 and fp16 (cuBLAS), fp8 e4m3 (``_scaled_mm``), int8 (``_int_mm``)."""
    torch = _torch()
    sync = torch.cuda.synchronize
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    result.gpu_compute_flops_per_s["bf16"] = 2 * n**3 / _best_seconds(lambda: a @ b, 10, sync)
    a16, b16 = a.half(), b.half()
    result.gpu_compute_flops_per_s["fp16"] = 2 * n**3 / _best_seconds(lambda: a16 @ b16, 10, sync)
    del a16, b16
    one = torch.ones((), device="cuda")
    kernels = {
        "fp8": lambda: (a.to(torch.float8_e4m3fn), b.to(torch.float8_e4m3fn).t(),
                        lambda x, y: torch._scaled_mm(x, y, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)),
        "int8": lambda: (a.clamp(-127, 127).to(torch.int8), b.clamp(-127, 127).to(torch.int8).t().contiguous().t(),
                         torch._int_mm),
    }
    for fmt, make in kernels.items():
        try:
            x, y, mm = make()
            result.gpu_compute_flops_per_s[fmt] = 2 * n**3 / _best_seconds(lambda: mm(x, y), 10, sync)
        except (RuntimeError, AttributeError) as exc:  # no tensor-core kernel for it on this GPU / build
            result.notes.append(f"{fmt} matmul not measured: {exc}")


def probe(storage_dir: Path, storage_bytes: int = 2**30, host_bytes: int = 2**30,
          threads: int | None = None) -> ProbeResult:
    torch = _torch()
    result = ProbeResult(host_threads=threads or os.cpu_count() or 1)
    torch.set_num_threads(result.host_threads)
    result.host_bandwidth_bytes_per_s = host_read_bandwidth(host_bytes)
    for fmt in HOST_DTYPES:
        result.host_compute_flops_per_s[fmt] = host_matmul_rate(fmt)
        result.host_matvec_bytes_per_s[fmt] = host_matvec_rate(fmt, min(host_bytes, 2**29))
    result.storage_read_bytes_per_s = storage_read_bandwidth(storage_dir, storage_bytes)
    if torch.cuda.is_available():
        gpu_rates(result)
    else:
        result.notes.append("no CUDA device: host figures only")
    return result


def _rate_text(value: float, unit: str) -> str:
    return f"{value / 1e9:.3f}G{unit}"


def with_measurements(data: dict, result: ProbeResult) -> dict:
    """A profile dict with ``measured:`` written beside the nominal figures of each section. A base
    profile's ``runtime_overhead`` is dropped: it was fitted against the figures this probe replaces."""
    data = {k: v for k, v in data.items() if k != "runtime_overhead"}
    host = data.setdefault("host", {})
    host["measured"] = {"bandwidth": _rate_text(result.host_bandwidth_bytes_per_s, "B/s"),
                        "compute": {f: _rate_text(v, "FLOPS") for f, v in result.host_compute_flops_per_s.items()},
                        "matvec": {f: _rate_text(v, "B/s") for f, v in result.host_matvec_bytes_per_s.items()},
                        "threads": result.host_threads}
    if result.storage_read_bytes_per_s:
        data.setdefault("storage", {"kind": "disk", "read_bandwidth": "unknown"})
        data["storage"]["measured"] = {"bandwidth": _rate_text(result.storage_read_bytes_per_s, "B/s")}
    if result.gpu_bandwidth_bytes_per_s and "gpus" in data:
        data["gpus"]["measured"] = {"bandwidth": _rate_text(result.gpu_bandwidth_bytes_per_s, "B/s"),
                                    "compute": {f: _rate_text(v, "FLOPS")
                                                for f, v in result.gpu_compute_flops_per_s.items()}}
        data.setdefault("host_link", {"bandwidth": "unknown"})
        data["host_link"]["measured"] = _rate_text(result.host_to_gpu_bytes_per_s, "B/s")
        data["host_link"]["measured_d2h"] = _rate_text(result.gpu_to_host_bytes_per_s, "B/s")
    return data


def probe_profile_yaml(name: str, base: str | None, storage_dir: Path, size: str, threads: int | None = None) -> str:
    import yaml

    from mv4deploy.hardware.detect import detect_profile_dict
    from mv4deploy.hardware.profile import load_profile_dict, parse_profile
    from mv4deploy.core.units import parse_bytes
    try:
        size_bytes = parse_bytes(size)
    except ValueError as exc:
        raise InputError(None, "--size", size, str(exc)) from None
    if not Path(storage_dir).is_dir():
        raise InputError(None, "--storage-dir", str(storage_dir), "not a directory")
    data = load_profile_dict(base)[0] if base else detect_profile_dict(name)
    data["name"] = name
    if threads is not None and not 1 <= threads <= 4096:
        raise InputError(None, "--threads", threads, "must be between 1 and 4096")
    result = probe(Path(storage_dir), storage_bytes=size_bytes, host_bytes=size_bytes, threads=threads)
    data = with_measurements(data, result)
    parse_profile(data, "probed profile")  # what we write must load
    notes = "".join(f"# {note}\n" for note in result.notes)
    return ("# Written by `mv4deploy profile probe`: `measured:` figures are achievable rates on this machine;"
            " the planner prefers them.\n" + notes + yaml.safe_dump(data, sort_keys=False))

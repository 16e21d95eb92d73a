"""``mv4deploy run CHECKPOINT --plan plan.json``: execute a plan and put its predictions beside measurements.

1. Refuse a plan made for another model or profile (``planfile``): exit 2, one line.
2. Resolve the plan's groups to parameters (``placement``), load the checkpoint into host memory in BF16
   (the format the planner counts for a BF16 checkpoint), place it (``apply``).
3. Run ``repeats`` trials of the plan's workload (``measure``): prefill of the prompt in plan-sized chunks,
   then decode steps; the comparison uses the median trial (by decode speed), every trial is reported.

Compared (measured / predicted):
- decode tokens/s and prefill tokens/s against the plan's ``estimates``;
- per GPU, peak allocated + non-torch memory against the device's ``used_bytes`` (weights, Engram, KV,
  workspace and the runtime reserve the profile allows);
- host: the RSS the run adds to the process (peak during the trials minus the RSS before loading) against the
  host's weights + Engram + KV + workspace, plus the engine's own memory where the profile has it calibrated
  (``runtime_overhead.engine_host_bytes``). The host's ``reserve`` is the OS's and the process's allowance, so it is
  left out; the process baseline (interpreter and libraries) is reported beside it.
"""

from __future__ import annotations

import ctypes
import gc
import statistics
from pathlib import Path

from mv4deploy.core.errors import InputError
from mv4deploy.runtime.planfile import (check_model, check_profile, expert_skew, parse_device_map, read_plan)
from mv4deploy.model.rules import PLAIN_FORMATS


def _resolve(checkpoint: str | Path, plan, profile_name: str | None):
    """The checkpoint's inventory and groups as the planner built them, after the fingerprint checks."""
    from mv4deploy.hardware.profile import load_profile
    from mv4deploy.model.source import resolve_model
    from mv4deploy.plan.groups import build_groups
    from mv4deploy.plan.plan import model_fingerprint, profile_fingerprint
    folder = Path(checkpoint)
    if not (folder / "config.json").is_file():
        raise InputError(folder, None, None, "not a checkpoint folder (no config.json)")
    resolved = resolve_model(str(folder))
    grouping = build_groups(resolved.inventory, bool(plan.workload.get("include_mtp")), expert_skew(plan))
    check_model(plan, model_fingerprint(resolved.inventory, grouping.groups)._asdict(), folder)
    source = profile_name or plan.profile
    try:
        profile = load_profile(source)
    except InputError:
        if profile_name:
            raise
        raise InputError(plan.path, "profile", plan.profile, "not a shipped profile: pass --profile FILE, the "
                         "profile the plan was made for") from None
    check_profile(plan, profile_fingerprint(profile)._asdict(), source)
    return resolved, grouping, profile


def run_checkpoint(checkpoint: str | Path, plan_path: str | Path, tokens: int = 32, warmup: int = 3,
                   prompt_tokens: int | None = None, profile: str | None = None, device_map: list[str] | None = None,
                   repeats: int = 1, seed: int = 0, threads: int | None = None) -> dict:
    """Execute ``plan_path`` on ``checkpoint`` and report measured beside predicted (see the module doc)."""
    plan = read_plan(plan_path)
    overrides = parse_device_map(device_map)
    workload = _workload(plan, tokens, warmup, prompt_tokens, repeats)
    resolved, grouping, hardware = _resolve(checkpoint, plan, profile)
    if threads is None:
        threads = hardware.host.measured.threads                   # as many as the profile was probed with
    if threads is not None and not 1 <= threads <= 4096:
        raise InputError(None, "--threads", threads, "must be between 1 and 4096")
    from mv4deploy.runtime.placement import resolve_placement
    placement = resolve_placement(plan, resolved.inventory, grouping)
    placement.deviations += _format_notes(plan) + _fill_note(workload)
    import torch

    from mv4deploy.runtime.apply import apply_placement, default_devices
    from mv4deploy.runtime.measure import cuda_devices, non_torch_bytes, rss_bytes, trial
    from mv4deploy.runtime.loader import load_model
    devices = default_devices(plan.gpu_tiers, overrides)
    if threads:
        torch.set_num_threads(threads)
    workload["threads"] = torch.get_num_threads()
    baseline = _process_baseline(devices)
    model = load_model(checkpoint, device="cpu", dtype=torch.bfloat16)
    executor = apply_placement(model, placement, devices)
    _release_freed_memory()
    loaded = rss_bytes()
    trials = [trial(executor, workload["prompt_tokens"], workload["chunk"], tokens, warmup, workload["batch"],
                    seed + i) for i in range(repeats)]
    non_torch = {str(d): non_torch_bytes(d) for d in cuda_devices(executor)}
    return _report(plan, checkpoint, placement, devices, workload, trials, baseline, loaded, non_torch,
                   executor.state.counters,
                   hardware.runtime_overhead.engine_host_bytes(workload["batch"], plan.workload["context_tokens"]))


def _workload(plan, tokens: int, warmup: int, prompt_tokens: int | None, repeats: int) -> dict:
    context, batch = plan.workload["context_tokens"], plan.workload["batch"]
    chunk = min(plan.workload["prefill_chunk"], context)
    for option, value, low in (("--tokens", tokens, 1), ("--warmup", warmup, 0), ("--repeats", repeats, 1)):
        if value < low:
            raise InputError(None, option, value, f"must be at least {low}")
    prompt = prompt_tokens if prompt_tokens is not None else context - tokens - warmup
    if prompt < 1 or prompt + tokens + warmup > context:
        raise InputError(None, "--prompt-tokens", prompt, f"prompt + warm-up + tokens must fit the plan's context "
                         f"({context:,} tokens)")
    return {"batch": batch, "prompt_tokens": prompt, "chunk": chunk, "tokens": tokens, "warmup": warmup,
            "context_tokens": context, "repeats": repeats}


def _format_notes(plan) -> list[str]:
    formats = sorted({r.format for r in plan.groups if r.format not in PLAIN_FORMATS})
    if not formats:
        return []
    return [f"weights planned as {', '.join(formats)} are held in BF16 by this runtime (dequantized at load): "
            f"memory above the plan's for those groups, and no FP8/FP4 kernels"]


def _fill_note(workload: dict) -> list[str]:
    filled = workload["prompt_tokens"] + workload["warmup"] + workload["tokens"]
    if filled >= workload["context_tokens"]:
        return []
    return [f"the run fills {filled:,} of the plan's {workload['context_tokens']:,} context tokens per sequence: "
            f"its KV cache and engine memory stay below what the plan counts for a full context"]


def _process_baseline(devices) -> int:
    """RSS of the process with everything but the model: the libraries a run imports, oneDNN's first
    matmul and, on CUDA, the context (all present before any weight is read)."""
    import torch
    import transformers.models.deepseek_v4.modeling_deepseek_v4  # noqa: F401  (what load_model imports)

    import mv4deploy.runtime.model_v41  # noqa: F401
    from mv4deploy.runtime.measure import rss_bytes
    probe = torch.ones(64, 64, dtype=torch.bfloat16)
    probe @ probe
    for device in {d for d in devices.values() if d.type == "cuda"}:
        torch.ones(1, device=device)
    gc.collect()
    return rss_bytes()


def _release_freed_memory() -> None:
    """Return what loading freed (float32 decode buffers) to the OS, so RSS shows what the model holds."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):   # not glibc: RSS may keep some freed heap
        pass


def _ratio(measured: float | None, predicted: float | None) -> float | None:
    return measured / predicted if measured is not None and predicted else None


def _row(metric: str, predicted, measured, unit: str) -> dict:
    return {"metric": metric, "predicted": predicted, "measured": measured, "ratio": _ratio(measured, predicted),
            "unit": unit}


def _host_predicted(plan, engine_bytes: int) -> int | None:
    host = plan.devices.get("host")
    if host is None:
        return None
    parts = host["breakdown"]
    return parts["weights"] + parts["engram"] + parts["kv_cache"] + parts["activations"] + engine_bytes


def _report(plan, checkpoint, placement, devices, workload, trials, baseline, loaded, non_torch, counters,
            engine_bytes: int) -> dict:
    median = sorted(trials, key=lambda t: t.decode_tokens_per_s)[len(trials) // 2]
    rows = [_row("decode tokens/s", plan.estimates.get("decode_tokens_per_s"), median.decode_tokens_per_s, "tok/s"),
            _row("prefill tokens/s", plan.estimates.get("prefill_tokens_per_s"), median.prefill_tokens_per_s,
                 "tok/s"),
            _row("host RSS added (model)", _host_predicted(plan, engine_bytes), median.rss_peak_bytes - baseline,
                 "bytes")]
    for tier, device in sorted(devices.items()):
        if device.type == "cuda" and tier in plan.devices:
            peak = median.gpu_peak_bytes.get(str(device), 0) + non_torch.get(str(device), 0)
            rows.append(_row(f"{tier} peak memory", plan.devices[tier]["used_bytes"], peak, "bytes"))
    speeds = [t.decode_tokens_per_s for t in trials]
    return {
        "checkpoint": str(checkpoint), "plan": str(plan.path), "model": plan.model, "profile": plan.profile,
        "devices": {tier: str(d) for tier, d in sorted(devices.items()) if tier in plan.devices or tier == "host"},
        "workload": workload,
        "comparison": rows,
        "decode_tokens_per_s_spread": {"min": min(speeds), "median": statistics.median(speeds), "max": max(speeds)},
        "memory": {"rss_baseline_bytes": baseline, "rss_after_load_bytes": loaded, "engine_bytes": engine_bytes,
                   "rss_peak_bytes": median.rss_peak_bytes, "gpu_non_torch_bytes": non_torch},
        "trials": [t.to_json() for t in trials],
        "executed": dict(sorted(counters.items())),
        "deviations": list(placement.deviations),
        "predicted_bottleneck": plan.estimates.get("bottleneck"),
    }

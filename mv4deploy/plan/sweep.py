"""``--sweep FIELD=v1,v2,...``: re-plan across values of one setting; ``--plot FILE.png``: draw it.

The sweep keeps everything else fixed and reports how memory per device and speed move. The plot is
one panel per plan with each device's memory stacked by category against its capacity, plus, for a
sweep, decode tokens/s and GPU memory against the swept value. matplotlib is imported only here, only
when a plot is asked for (the ``plot`` extra).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from mv4deploy.core.errors import InputError
from mv4deploy.plan.plan import BREAKDOWN, Plan
from mv4deploy.plan.tiers import MemoryKind
from mv4deploy.plan.workload import Workload, batch_size, context_tokens, host_mem_bytes, prefill_chunk_tokens

SWEEP_FIELDS = {            # option name -> (the Workload field it sets, None: host RAM; its option's validator)
    "context": ("context_tokens", context_tokens),
    "batch": ("batch", batch_size),
    "prefill-chunk": ("prefill_chunk", prefill_chunk_tokens),
    "host-mem": (None, host_mem_bytes),
}


@dataclass(frozen=True)
class Sweep:
    field: str
    labels: tuple[str, ...]
    values: tuple[int, ...]


def parse_sweep(text: str) -> Sweep:
    """'context=8k,32k,128k,1m' -> Sweep('context', ...); each value passes the same check as the single
    option (``--sweep host-mem=0`` is refused like ``--host-mem 0``), all of them before any planning."""
    name, sep, values = str(text).partition("=")
    name = name.strip().replace("_", "-")
    if not sep or name not in SWEEP_FIELDS or not values.strip():
        raise InputError(None, "--sweep", text, f"expected FIELD=V1,V2,... with FIELD one of {', '.join(SWEEP_FIELDS)}")
    _, validate = SWEEP_FIELDS[name]
    labels = tuple(v.strip() for v in values.split(",") if v.strip())
    try:
        parsed = tuple(validate(v) for v in labels)
    except InputError as exc:
        raise InputError(None, "--sweep", text, f"{name} value {exc.value!r}: {exc.reason}") from None
    return Sweep(name, labels, parsed)


def sweep_points(sweep: Sweep, workload: Workload, host_mem: int | None, plan_fn) -> list[tuple[str, Plan]]:
    """``plan_fn(workload, host_mem) -> Plan`` for each swept value (already validated by ``parse_sweep``)."""
    field, _ = SWEEP_FIELDS[sweep.field]
    points = []
    for label, value in zip(sweep.labels, sweep.values):
        w = replace(workload, **{field: value}) if field is not None else workload
        points.append((label, plan_fn(w, value if field is None else host_mem)))
    return points


def sweep_json(sweep: Sweep, points: list[tuple[str, Plan]]) -> dict:
    return {"sweep": {"field": sweep.field, "points": [
        {"value": label, "verdict": p.verdict.value, "workload": p.workload.to_json(),
         "devices": [d.to_json() for d in p.devices], "estimates": p.estimates.to_json(),
         "kv_cache": {"gpu_bytes_saved": p.kv_cache.gpu_bytes_saved,
                      "added_s_per_token": p.kv_cache.added_s_per_token}} for label, p in points]}}


def plot(path: Path, plan: Plan, points: list[tuple[str, Plan]] | None = None) -> None:
    """Write a PNG (atomically): the memory stack per device, and the sweep when there is one."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError(None, "--plot", str(path), "needs matplotlib: pip install 'mv4deploy[plot]'") from None
    from mv4deploy.core.fileio import atomic_path
    panels = 2 if points else 1
    fig, axes = plt.subplots(1, panels, figsize=(7 * panels, 4.5), squeeze=False)
    _memory_stack(axes[0][0], plan)
    if points:
        _sweep_lines(axes[0][1], points)
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def _memory_stack(ax, plan: Plan) -> None:
    devices = [d for d in plan.devices if d.kind is not MemoryKind.NVME or d.used_bytes]
    names = [d.name for d in devices]
    bottom = [0.0] * len(devices)
    for category in BREAKDOWN:
        heights = [d.breakdown[category] / 2**30 for d in devices]
        ax.bar(names, heights, bottom=bottom, label=category)
        bottom = [b + h for b, h in zip(bottom, heights)]
    ax.scatter(names, [d.capacity_bytes / 2**30 for d in devices], marker="_", s=600, color="black",
               label="capacity", zorder=3)
    ax.set_ylabel("GiB")
    ax.set_title(f"{plan.model} on {plan.profile}: {plan.verdict.value}")
    ax.legend(fontsize=8)


def _sweep_lines(ax, points: list[tuple[str, Plan]]) -> None:
    labels = [label for label, _ in points]
    ax.plot(labels, [p.estimates.decode_tokens_per_s for _, p in points], marker="o", label="decode tok/s")
    ax.set_ylabel("decode tokens/s")
    twin = ax.twinx()
    gpu = [sum(d.used_bytes for d in p.devices if d.kind.accelerator) / 2**30 for _, p in points]
    twin.plot(labels, gpu, marker="s", color="tab:red", label="GPU used (GiB)")
    twin.set_ylabel("GPU memory used, GiB")
    ax.set_title("sweep")

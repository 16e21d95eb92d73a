"""Runs inside AIConfigurator's own venv (python3.11, `pip install aiconfigurator`), never in ours.

It imports only aiconfigurator and pandas (both in that venv) and prints one JSON object to stdout, so
benchmarks/vs_aiconfigurator.py can call it through subprocess. Two commands:

    python _aic_probe.py estimate '{"model_path": ..., "system_name": ..., "mode": "agg", ...}'
        One `aiconfigurator.cli.api.cli_estimate` point (the same layout as ours, priced by AIC):
        the CSV-shaped result row plus, for static modes, the per-op step times in ms.
    python _aic_probe.py reference MODEL BACKEND
        AIC's timing assumptions for h200_sxm: per-op decode/prefill step times for a few layouts and
        batch sizes, the measured collective tables it reads (intra-node only on h200) and the system
        constants it uses beyond one node (systems/h200_sxm.yaml).
"""

from __future__ import annotations

import json
import logging
import sys
import time
import warnings
from pathlib import Path

SYSTEM = "h200_sxm"
DECODE_POINTS = [  # (label, tp, attention dp, moe ep, batch per attention-DP rank)
    ("tp8 ep8", 8, 1, 8, 1), ("tp8 ep8", 8, 1, 8, 16), ("tp8 ep8", 8, 1, 8, 64), ("tp8 ep8", 8, 1, 8, 128),
    ("dp8 ep8 (attn DP)", 1, 8, 8, 8), ("dp8 ep8 (attn DP)", 1, 8, 8, 32),
    ("dp16 ep16 (2 nodes)", 1, 16, 16, 32), ("dp32 ep32 (4 nodes)", 1, 32, 32, 32),
]
PREFILL_POINTS = [("tp8 ep8", 8, 1, 8, 1), ("dp8 ep8 (attn DP)", 1, 8, 8, 1), ("dp16 ep16 (2 nodes)", 1, 16, 16, 1)]
MESSAGE_BYTES = [16 << 10, 256 << 10, 1 << 20, 16 << 20]


def quiet() -> None:
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)


def estimate(kwargs: dict) -> dict:
    from aiconfigurator.cli.api import cli_estimate
    start = time.perf_counter()
    result = cli_estimate(**kwargs)
    out = {"row": {k: v for k, v in result.get().items() if isinstance(v, (int, float, str, type(None)))},
           "wall_s": time.perf_counter() - start}
    summary = result.summary
    if summary is not None:
        out["context_ops_ms"] = {k: float(v) for k, v in summary._context_latency_dict.items()}
        out["generation_ops_ms"] = {k: float(v) for k, v in summary._generation_latency_dict.items()}
        out["memory_gib"] = {k: float(v) for k, v in (summary._memory or {}).items()}
    return out


def step_points(model: str, backend: str) -> list[dict]:
    rows = []
    for phase, points, mode, osl in (("decode", DECODE_POINTS, "static_gen", 2),
                                     ("prefill", PREFILL_POINTS, "static_ctx", 1)):
        for label, tp, dp, ep, batch in points:
            kwargs = dict(model_path=model, system_name=SYSTEM, mode=mode, backend_name=backend, isl=4000,
                          osl=osl, batch_size=batch, tp_size=tp, attention_dp_size=dp, moe_tp_size=1,
                          moe_ep_size=ep)
            try:
                got = estimate(kwargs)
            except Exception as exc:  # AIC refuses some layouts (no data); record why, keep going
                rows.append({"phase": phase, "layout": label, "batch": batch, "error": str(exc)[:200]})
                continue
            ops = got["generation_ops_ms" if phase == "decode" else "context_ops_ms"]
            rows.append({"phase": phase, "layout": label, "batch": batch, "step_ms": sum(ops.values()),
                         "ops_ms": ops, "memory_gib": got.get("memory_gib", {})})
    return rows


def nearest_rows(df, group_cols: list[str], size_col: str, sizes: list[int], value_col: str) -> list[dict]:
    out = []
    for key, group in df.groupby(group_cols):
        key = key if isinstance(key, tuple) else (key,)
        for size in sizes:
            row = group.iloc[(group[size_col] - size).abs().argsort().iloc[0]]
            entry = {**dict(zip(group_cols, [str(k) if not isinstance(k, int) else k for k in key])),
                     size_col: int(row[size_col]), value_col: float(row[value_col])}
            if entry not in out:  # a requested size below the smallest measured one maps to that one
                out.append(entry)
    return out


def comm_tables(backend: str) -> dict:
    import pandas as pd
    import yaml
    import aiconfigurator_core
    root = Path(aiconfigurator_core.__file__).parent / "systems"
    spec = yaml.safe_load((root / f"{SYSTEM}.yaml").read_text())
    data = root / "data" / SYSTEM / "comm"
    nccl_version = spec["misc"]["nccl_version"]
    nccl = pd.read_parquet(data / "nccl" / nccl_version / "nccl_perf.parquet")
    nccl = nccl[nccl.nccl_dtype == "half"]
    out = {"system_yaml": {"path": f"aiconfigurator_core/systems/{SYSTEM}.yaml", "node": spec["node"],
                           "gpu": {k: spec["gpu"][k] for k in ("mem_bw", "mem_bw_empirical_scaling_factor",
                                                              "mem_empirical_constant_latency")},
                           "misc": {k: spec["misc"][k] for k in ("other_mem", "nccl_version")}},
           "nccl": {"path": f"aiconfigurator_core/systems/data/{SYSTEM}/comm/nccl/{nccl_version}/nccl_perf.parquet",
                    "rows_ms": nearest_rows(nccl, ["op_name", "num_gpus"], "message_size", MESSAGE_BYTES,
                                            "latency")}}
    from packaging.version import Version
    versions = sorted((p.name for p in (data / backend).iterdir() if (p / "custom_allreduce_perf.parquet").exists()),
                      key=Version)
    if versions:
        path = data / backend / versions[-1] / "custom_allreduce_perf.parquet"
        frame = pd.read_parquet(path)
        out["custom_allreduce"] = {"path": str(path.relative_to(root.parent.parent)),
                                   "rows_ms": nearest_rows(frame, ["num_gpus"], "message_size", MESSAGE_BYTES,
                                                           "latency")}
    a2a = sorted(data.glob(f"{backend}/*/moe_a2a_perf.parquet")) or sorted(data.glob("*/*/moe_a2a_perf.parquet"))
    if a2a:
        frame = pd.read_parquet(a2a[-1])
        frame = frame[frame.hidden_size == 7168]
        out["moe_a2a"] = {"path": str(a2a[-1].relative_to(root.parent.parent)),
                          "rows_us": nearest_rows(frame, ["comm_backend", "phase", "ep_size", "node_num"],
                                                  "num_tokens", [1, 16, 128, 256, 4096], "latency")}
    # the DeepEP low-latency table that spans the most nodes (sglang 0.5.6.post2 on h200: 1, 2, 4, 8)
    ll = sorted(data.glob("sglang/*/wideep_deepep_ll_perf.parquet"),
                key=lambda f: pd.read_parquet(f, columns=["node_num"]).node_num.nunique())
    if ll:
        frame = pd.read_parquet(ll[-1])
        frame = frame[(frame.hidden_size == 7168) & (frame.num_experts == 256)]
        out["deepep_ll"] = {"path": str(ll[-1].relative_to(root.parent.parent)),
                            "dispatch_us": nearest_rows(frame, ["node_num"], "num_token", [1, 16, 128, 512],
                                                        "dispatch_avg_t_us"),
                            "combine_us": nearest_rows(frame, ["node_num"], "num_token", [1, 16, 128, 512],
                                                       "combine_avg_t_us")}
    return out


def main(argv: list[str]) -> int:
    quiet()
    if len(argv) == 2 and argv[0] == "estimate":
        print(json.dumps(estimate(json.loads(argv[1]))))
        return 0
    if len(argv) == 3 and argv[0] == "reference":
        import aiconfigurator
        print(json.dumps({"aiconfigurator_version": aiconfigurator.__version__, "model": argv[1],
                          "backend": argv[2], "system": SYSTEM, "steps": step_points(argv[1], argv[2]),
                          "comm": comm_tables(argv[2])}))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

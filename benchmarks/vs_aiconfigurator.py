"""Our multi-node plan vs NVIDIA's AIConfigurator for DeepSeek-V3 on 8, 16 and 32 H200 (issue 17).

The same model, system, lengths and latency targets go through both tools:
- AIConfigurator (pip `aiconfigurator`, in its OWN venv: it needs no torch and is not in our locks)
  runs `aiconfigurator cli default --model-path deepseek-ai/DeepSeek-V3 --system h200_sxm --backend B
  --total-gpus N --isl --osl --ttft --tpot` as a subprocess; its best aggregated and disaggregated layouts
  are read from the `best_config_topn.csv` files it saves. Without its venv, the outputs recorded in
  benchmarks/data/aiconfigurator/ are read instead (and the script says so).
- `mv4deploy plan --profile h200xN --model deepseek-v3 --json ...` (a fresh process). Its `cluster` section
  gives our layout, tokens/s per GPU and per user, TTFT and TPOT; without one, "ours: not available".
- When ours is available, AIConfigurator also prices OUR layout (`cli_estimate` through _aic_probe.py), so
  the 0.5-2x acceptance compares the same layout, not just each tool's favourite.

Workload (the DeepSeek example AIConfigurator ships, cli/exps/deepseek_wideep_trtllm.yaml, and the
DEEPSEEK_V3 experiment of its docs/cli_user_guide.md): ISL 4000, OSL 1000, TTFT <= 1000 ms, TPOT <= 40 ms.
Run (AIConfigurator venv: python3.11 -m venv /tmp/aic-venv && /tmp/aic-venv/bin/pip install aiconfigurator):
    PYTHONPATH=. python benchmarks/vs_aiconfigurator.py [--aic-venv DIR] [--backend trtllm] [--gpus 8,16,32]
    PYTHONPATH=. python benchmarks/vs_aiconfigurator.py --record        # rewrite the recorded outputs
    PYTHONPATH=. python benchmarks/vs_aiconfigurator.py --reference     # AIC's per-op timing tables
    PYTHONPATH=. python benchmarks/vs_aiconfigurator.py --model deepseek-v4-flash --backend sglang
        (V4 on H200 is modelled by AIC only as the FP8-expert conversion sgl-project/DeepSeek-V4-*-FP8)
Notes on what AIC assumes, its per-op timings and the launch files it writes: benchmarks/data/aiconfigurator/NOTES.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "benchmarks" / "data" / "aiconfigurator"
PROBE = REPO / "benchmarks" / "_aic_probe.py"
SYSTEM = "h200_sxm"
# our preset -> the checkpoint AIConfigurator models on H200 (V4 only as the FP8-expert conversions: SM90 has no FP4)
MODELS = {"deepseek-v3": "deepseek-ai/DeepSeek-V3", "deepseek-v4-flash": "sgl-project/DeepSeek-V4-Flash-FP8",
          "deepseek-v4-pro": "sgl-project/DeepSeek-V4-Pro-FP8"}
BACKENDS = ("trtllm", "sglang", "vllm")
# one HGX H200 node is not a shipped profile (adding one would change `plan`'s profile suggestions): a file here
PROFILES = {8: "benchmarks/data/profiles/h200x8.yaml", 16: "h200x16", 32: "h200x32"}


@dataclass(frozen=True)
class Workload:
    isl: int = 4000
    osl: int = 1000
    ttft_ms: float = 1000.0
    tpot_ms: float = 40.0


def aic_python(venv: Path) -> Path | None:
    python = venv / "bin" / "python"
    return python if (venv / "bin" / "aiconfigurator").exists() and python.exists() else None


def timed(cmd: list[str], **kw) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run cmd; return it, its wall seconds and its CPU seconds (user + system of the child)."""
    start, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(cmd, capture_output=True, text=True, **kw)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return done, time.perf_counter() - start, cpu_s


def read_topn(csv_path: Path) -> list[dict]:
    if not csv_path.exists():
        return []
    with csv_path.open(newline="") as f:
        return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _number(text: str):
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def aic_command(venv: Path, model: str, backend: str, gpus: int, w: Workload, save_dir: Path) -> list[str]:
    return [str(venv / "bin" / "aiconfigurator"), "cli", "default", "--model-path", MODELS[model],
            "--system", SYSTEM, "--backend", backend, "--total-gpus", str(gpus), "--isl", str(w.isl),
            "--osl", str(w.osl), "--ttft", str(w.ttft_ms), "--tpot", str(w.tpot_ms), "--top-n", "3",
            "--no-color", "--save-dir", str(save_dir)]


def run_aic(venv: Path, model: str, backend: str, gpus: int, w: Workload) -> tuple[dict, str]:
    """One AIConfigurator search: (record, its terminal output)."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = aic_command(venv, model, backend, gpus, w, Path(tmp))
        done, wall_s, cpu_s = timed(cmd)
        if done.returncode != 0:
            raise SystemExit(f"aiconfigurator failed ({done.returncode}): {done.stderr[-500:]}")
        found = {mode: next(Path(tmp).glob(f"*/*/{mode}/best_config_topn.csv"), None) for mode in ("agg", "disagg")}
        rows = {mode: read_topn(path) if path else [] for mode, path in found.items()}
    version = subprocess.run([str(venv / "bin" / "python"), "-c", "import aiconfigurator as a; print(a.__version__)"],
                             capture_output=True, text=True).stdout.strip()
    record = {"aiconfigurator_version": version, "command": " ".join(cmd[1:-2]), "workload": asdict(w),
              "model": MODELS[model], "backend": backend, "gpus": gpus, "wall_s": round(wall_s, 2),
              "cpu_s": round(cpu_s, 2),
              "load_avg_1min": os.getloadavg()[0], **rows}
    return record, done.stdout + done.stderr


def record_path(model: str, backend: str, gpus: int) -> Path:
    return DATA / f"{MODELS[model].split('/')[1]}_{backend}_{gpus}gpu.json"


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def aic_result(venv: Path, model: str, backend: str, gpus: int, w: Workload, record: bool,
               recorded: bool = False) -> dict | None:
    """Live when the venv is there (and saved with --record) unless ``recorded``; else the recorded run, if any."""
    if aic_python(venv) is not None and not recorded:
        result, output = run_aic(venv, model, backend, gpus, w)
        if record:
            write_atomic(record_path(model, backend, gpus), json.dumps(result, indent=1) + "\n")
            write_atomic(record_path(model, backend, gpus).with_suffix(".txt"), output)
        return result
    path = record_path(model, backend, gpus)
    if not path.exists():
        return None
    result = json.loads(path.read_text())
    if result["workload"] != asdict(w):
        print(f"{path.name}: recorded for {result['workload']}, not {asdict(w)}; skipped", file=sys.stderr)
        return None
    return result


def plan_args(profile: str, model: str, w: Workload) -> list[str]:
    """The `mv4deploy plan` command line for one cluster profile and workload (the flags of issue 17)."""
    return ["plan", "--profile", profile, "--model", model, "--json", "--input-tokens", str(w.isl),
            "--output-tokens", str(w.osl), "--ttft-ms", str(w.ttft_ms), "--tpot-ms", str(w.tpot_ms)]


def ours(profile: str, model: str, w: Workload) -> dict | None:
    """Our plan's `cluster` section plus the search time, or None when plan cannot give one yet.

    Keys read from `cluster`: layout (one phrase), tokens_per_s_per_gpu (over all the profile's GPUs),
    tokens_per_s_per_user, ttft_s, tpot_s; for AIC to price the same layout, mode and tp/dp/ep/batch
    (see estimate_kwargs). A missing key shows as "-"; the lead's `plan --json` defines the final names."""
    if not (REPO / profile if profile.endswith(".yaml") else REPO / "profiles" / f"{profile}.yaml").exists():
        return None
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "mv4deploy", *plan_args(profile, model, w)]
    done, wall_s, cpu_s = timed(cmd, cwd=REPO, env=env)
    if done.returncode != 0:
        print(f"ours ({profile}): exit {done.returncode}: {done.stderr.strip()[-300:]}", file=sys.stderr)
        return None
    cluster = json.loads(done.stdout).get("cluster")
    if not cluster:
        return None
    return {"cluster": cluster, "wall_s": wall_s, "cpu_s": cpu_s}


def layout(row: dict, total_gpus: int) -> str:
    """AIC's row as one phrase: 'agg 2x tp8ep8 bs64' or '1x [1P tp8ep8 bs1 + 1D dp8ep4etp2 bs26]'.

    bs is per attention-DP rank; an agg row's num_total_gpus is one replica's, a disagg row's all used."""
    def worker(p: str) -> str:
        sizes = {k: int(row.get(f"{p}{k}") or 1) for k in ("tp", "cp", "dp", "moe_ep", "moe_tp", "pp")}
        names = {"tp": "tp", "cp": "cp", "dp": "dp", "moe_ep": "ep", "moe_tp": "etp", "pp": "pp"}
        return "".join(f"{names[k]}{v}" for k, v in sizes.items() if v > 1) or "1gpu"

    def gpus(p: str) -> int:  # AIC: gpus/worker = tp * dp * pp = etp * ep * pp for MoE (cp: context parallel)
        size = {k: int(row.get(f"{p}{k}") or 1) for k in ("tp", "cp", "dp", "moe_ep", "moe_tp", "pp")}
        return max(size["tp"] * size["cp"] * size["dp"], size["moe_tp"] * size["moe_ep"]) * size["pp"]

    if "(p)tp" not in row:
        return f"agg {total_gpus // gpus('')}x {worker('')} bs{int(row['bs'])}"
    per_replica = int(row["(p)workers"]) * gpus("(p)") + int(row["(d)workers"]) * gpus("(d)")
    used = int(row["num_total_gpus"])
    idle = f" ({used} of {total_gpus} GPUs)" if used < total_gpus else ""
    return (f"{used // per_replica}x [{int(row['(p)workers'])}P {worker('(p)')} bs{int(row['(p)bs'])} + "
            f"{int(row['(d)workers'])}D {worker('(d)')} bs{int(row['(d)bs'])}]{idle}")


def metrics(row: dict) -> dict:
    """tok_s_gpu counts every GPU of the cluster (AIC's ranking key), idle ones of a disagg replica too."""
    return {"tok_s_gpu": float(row.get("tokens/s/gpu_cluster") or row["tokens/s/gpu"]),
            "tok_s_user": float(row["tokens/s/user"]),
            "ttft_ms": float(row["ttft"]), "tpot_ms": float(row["tpot"])}


def our_metrics(cluster: dict) -> dict:
    """The keys we read from `plan --json`'s cluster section (seconds in, milliseconds shown)."""
    def get(key: str, scale: float = 1.0):
        value = cluster.get(key)
        return None if value is None else float(value) * scale
    return {"tok_s_gpu": get("tokens_per_s_per_gpu"), "tok_s_user": get("tokens_per_s_per_user"),
            "ttft_ms": get("ttft_s", 1e3), "tpot_ms": get("tpot_s", 1e3)}


def fmt(value, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def table_rows(gpus: int, aic: dict | None, mine: dict | None) -> list[list[str]]:
    rows = []
    for mode in ("agg", "disagg"):
        best = (aic or {}).get(mode) or []
        if not best:
            why = "no layout meets the targets" if aic else "no run (no venv, nothing recorded)"
            rows.append([str(gpus), f"AIC {mode}", why,
                         "-", "-", "-", "-", "-", "-"])
            continue
        m = metrics(best[0])
        rows.append([str(gpus), f"AIC {mode}", layout(best[0], gpus), fmt(m["tok_s_gpu"]), fmt(m["tok_s_user"]),
                     fmt(m["ttft_ms"], ".0f"), fmt(m["tpot_ms"]), fmt(aic["wall_s"]), fmt(aic["cpu_s"])])
    if mine is None:
        rows.append([str(gpus), "ours", "ours: not available", "-", "-", "-", "-", "-", "-"])
    else:
        m = our_metrics(mine["cluster"])
        rows.append([str(gpus), "ours", str(mine["cluster"].get("layout", "?")), fmt(m["tok_s_gpu"]),
                     fmt(m["tok_s_user"]), fmt(m["ttft_ms"], ".0f"), fmt(m["tpot_ms"]), fmt(mine["wall_s"], ".2f"),
                     fmt(mine["cpu_s"], ".2f")])
    return rows


def print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(c.ljust(w) if i == 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))


def estimate_kwargs(cluster: dict, model: str, backend: str, w: Workload) -> dict | None:
    """cli_estimate arguments for our layout; None when the cluster section lacks a field it needs.

    Read from `cluster`: mode ("agg" | "disagg"); for agg tp, dp (attention DP), ep, batch (per DP rank);
    for disagg a "prefill" and a "decode" dict with the same four keys plus workers (per replica)."""
    base = dict(model_path=MODELS[model], system_name=SYSTEM, backend_name=backend, isl=w.isl, osl=w.osl,
                mode=cluster.get("mode"))
    names = {"tp": "tp_size", "dp": "attention_dp_size", "ep": "moe_ep_size", "batch": "batch_size"}
    try:
        if base["mode"] == "agg":
            return {**base, **{names[k]: int(cluster[k]) for k in names},
                    "moe_tp_size": int(cluster["tp"]) * int(cluster["dp"]) // int(cluster["ep"])}
        if base["mode"] == "disagg":
            for side in ("prefill", "decode"):
                part = cluster[side]
                base.update({f"{side}_{names[k]}": int(part[k]) for k in names})
                base.update({f"{side}_moe_tp_size": int(part["tp"]) * int(part["dp"]) // int(part["ep"]),
                             f"{side}_num_workers": int(part["workers"])})
            return base
    except (KeyError, TypeError, ValueError):
        return None
    return None


def aic_same_layout(venv: Path, cluster: dict, model: str, backend: str, w: Workload) -> dict | None:
    """AIConfigurator's price for OUR layout (its tokens/s/gpu etc.), or None if it cannot say."""
    kwargs = estimate_kwargs(cluster, model, backend, w)
    if aic_python(venv) is None or kwargs is None:
        return None
    done = subprocess.run([str(aic_python(venv)), str(PROBE), "estimate", json.dumps(kwargs)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        print(f"AIC estimate of our layout failed: {done.stderr.strip()[-300:]}", file=sys.stderr)
        return None
    return metrics(json.loads(done.stdout)["row"])


def compare(venv: Path, model: str, backend: str, gpus_list: list[int], w: Workload, record: bool,
            recorded: bool = False) -> int:
    live = aic_python(venv) is not None and not recorded
    why = "--recorded" if recorded else f"{venv} absent"
    source = f"live from {venv}" if live else f"recorded outputs in {DATA.relative_to(REPO)} ({why})"
    print(f"AIConfigurator: {source}", file=sys.stderr)
    header = ["GPUs", "tool", "layout", "tok/s/GPU", "tok/s/user", "TTFT ms", "TPOT ms", "search s", "CPU s"]
    rows, same = [], []
    for gpus in gpus_list:
        aic, mine = aic_result(venv, model, backend, gpus, w, record, recorded), ours(PROFILES[gpus], model, w)
        if aic:
            print(f"{gpus} GPUs: AIConfigurator {aic['aiconfigurator_version']}, {aic['wall_s']} s wall",
                  file=sys.stderr)
        rows += table_rows(gpus, aic, mine)
        priced = aic_same_layout(venv, mine["cluster"], model, backend, w) if mine else None
        if priced and our_metrics(mine["cluster"])["tok_s_gpu"]:
            ratio = our_metrics(mine["cluster"])["tok_s_gpu"] / priced["tok_s_gpu"]
            same.append([str(gpus), str(mine["cluster"].get("layout", "?")), fmt(priced["tok_s_gpu"]),
                         fmt(our_metrics(mine["cluster"])["tok_s_gpu"]), fmt(ratio, ".2f")])
    print(f"{MODELS[model]} on H200 (ours: {model}), AIConfigurator backend {backend}; ISL {w.isl}, OSL {w.osl}, "
          f"TTFT <= {w.ttft_ms:g} ms, TPOT <= {w.tpot_ms:g} ms")
    print_table(header, rows)
    if same:
        print("\nOur layout priced by both (acceptance: ours / AIC within 0.5-2x)")
        print_table(["GPUs", "our layout", "AIC tok/s/GPU", "ours tok/s/GPU", "ours/AIC"], same)
    return 0


def reference(venv: Path, backend: str) -> int:
    """AIC's per-op timing assumptions for DeepSeek-V3 on h200_sxm, saved and printed as Markdown."""
    python = aic_python(venv)
    path = DATA / f"reference_h200_{backend}.json"
    if python is not None:
        done = subprocess.run([str(python), str(PROBE), "reference", MODELS["deepseek-v3"], backend],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"probe failed: {done.stderr[-500:]}")
        write_atomic(path, json.dumps(json.loads(done.stdout), indent=1) + "\n")
    elif not path.exists():
        raise SystemExit(f"no AIConfigurator venv at {venv} and no {path}")
    print_reference(json.loads(path.read_text()))
    return 0


def print_reference(ref: dict) -> None:
    layers = 61  # DeepSeek-V3: 3 dense + 58 MoE layers; step totals below are summed over all of them
    print(f"AIConfigurator {ref['aiconfigurator_version']}, {ref['model']}, {ref['system']}, {ref['backend']}\n")
    print("| phase | layout | batch / DP rank | step ms | ms / layer | largest ops (ms per step) |")
    print("|---|---|---|---|---|---|")
    for s in ref["steps"]:
        if "error" in s:
            print(f"| {s['phase']} | {s['layout']} | {s['batch']} | refused: {s['error'][:80]} | | |")
            continue
        top = sorted(s["ops_ms"].items(), key=lambda kv: -kv[1])[:4]
        ops = ", ".join(f"{k.replace('generation_', '').replace('context_', '')} {v:.2f}" for k, v in top)
        print(f"| {s['phase']} | {s['layout']} | {s['batch']} | {s['step_ms']:.2f} | "
              f"{s['step_ms'] / layers:.3f} | {ops} |")
    comm = ref["comm"]
    print(f"\nNCCL (fp16), ms, from {comm['nccl']['path']}\n\n| op | GPUs | bytes | ms |\n|---|---|---|---|")
    for r in comm["nccl"]["rows_ms"]:
        print(f"| {r['op_name']} | {r['num_gpus']} | {r['message_size']} | {r['latency']:.4f} |")
    for key, unit in (("custom_allreduce", "rows_ms"), ("moe_a2a", "rows_us")):
        if key in comm:
            print(f"\n{key} ({unit[5:]}), from {comm[key]['path']}\n")
            cols = [c for c in comm[key][unit][0]]
            print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
            for r in comm[key][unit]:
                print("| " + " | ".join(f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    if "deepep_ll" in comm:
        print(f"\nDeepEP low-latency (us), hidden 7168, 256 experts, from {comm['deepep_ll']['path']}\n")
        print("| nodes | tokens | dispatch us | combine us |\n|---|---|---|---|")
        for d, c in zip(comm["deepep_ll"]["dispatch_us"], comm["deepep_ll"]["combine_us"]):
            print(f"| {d['node_num']} | {d['num_token']} | {d['dispatch_avg_t_us']:.1f} | "
                  f"{c['combine_avg_t_us']:.1f} |")
    print(f"\nsystem constants ({comm['system_yaml']['path']}): {json.dumps(comm['system_yaml']['node'])}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--aic-venv", type=Path, default=Path(os.environ.get("AIC_VENV", "/tmp/aic-venv")),
                   help="AIConfigurator's venv (env AIC_VENV; default /tmp/aic-venv)")
    p.add_argument("--model", choices=sorted(MODELS), default="deepseek-v3", help="our preset; see MODELS")
    p.add_argument("--backend", choices=BACKENDS, default="trtllm")
    p.add_argument("--gpus", default="8,16,32", help="comma-separated; each needs profiles/h200xN.yaml for ours")
    p.add_argument("--record", action="store_true", help="save AIC's outputs to benchmarks/data/aiconfigurator/")
    p.add_argument("--reference", action="store_true", help="print (and save) AIC's per-op timing tables")
    p.add_argument("--recorded", action="store_true", help="use the recorded searches even with the venv present "
                                                          "(AIC still prices our layout live: ~10 s each)")
    for flag, default in (("--isl", 4000), ("--osl", 1000), ("--ttft-ms", 1000.0), ("--tpot-ms", 40.0)):
        p.add_argument(flag, type=type(default), default=default)
    a = p.parse_args(argv)
    if a.reference:
        return reference(a.aic_venv, a.backend)
    gpus = [int(g) if g.strip().isdigit() else -1 for g in a.gpus.split(",")]
    if any(g not in PROFILES for g in gpus):
        print(f"--gpus: {a.gpus!r}: each must be one of {sorted(PROFILES)}", file=sys.stderr)
        return 2
    return compare(a.aic_venv, a.model, a.backend, gpus, Workload(a.isl, a.osl, a.ttft_ms, a.tpot_ms), a.record,
                   a.recorded)


if __name__ == "__main__":
    sys.exit(main())

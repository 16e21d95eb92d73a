"""Predicted against published: the planner's decode speed for published runs of real engines on real hardware.

    python benchmarks/published_runs.py            # the table: shipped engine constants, and leave-one-out
    python benchmarks/published_runs.py --fit      # the fitted constants to write into engines/*.yaml

Inputs (all data, with sources): the runs (benchmarks/data/published_runs.yaml), which of them are checked and
how (published_checks.yaml: model preset, machine, engine, policy, context), their machines as hardware profiles
(run_machines.yaml), and the engine models (engines/*.yaml). The constants an engine file marks "fitted" are
fitted here, per engine, on that engine's runs, by coordinate descent on the squared log-ratio (golden-section
search per constant, in log space, inside its range). Leave-one-out: each run is predicted by constants refitted
without it (every row of the same run id left out together), so no run checks a constant fitted on itself.
The table prints both; docs/planner.md quotes it.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mv4deploy.engines.engine import CpuKernels, Engine, load_engine  # noqa: E402
from mv4deploy.hardware.profile import load_profile, parse_profile  # noqa: E402
from mv4deploy.model.kv import kv_layout  # noqa: E402
from mv4deploy.model.source import resolve_model  # noqa: E402
from mv4deploy.plan.assemble import assemble_plan  # noqa: E402
from mv4deploy.plan.cluster_model import ClusterLayout, links_of, shape_of, step_cost  # noqa: E402
from mv4deploy.plan.policy import resolve_policy  # noqa: E402
from mv4deploy.plan.tiers import build_machine  # noqa: E402
from mv4deploy.plan.workload import make_workload  # noqa: E402

DATA = ROOT / "benchmarks" / "data"
WITHIN = 0.25
GOLDEN = (math.sqrt(5) - 1) / 2


def load_inputs():
    checks = yaml.safe_load((DATA / "published_checks.yaml").read_text())
    machines = yaml.safe_load((DATA / "run_machines.yaml").read_text())["machines"]
    runs = {r["id"]: r for r in yaml.safe_load((DATA / "published_runs.yaml").read_text())["runs"]}
    profiles = {name: parse_profile({"name": name, "description": name, **m}, f"run_machines.yaml:{name}")
                for name, m in machines.items()}
    return checks, profiles, runs


# ---- engine constants: read and replace by dotted field name -------------------------------------------

def get_field(engine: Engine, field: str):
    """A constant by dotted path (``step.graph.gpu_node_s``, ``gpu_efficiency.kv``); ``cpu_efficiency``: the best."""
    if field == "cpu_efficiency":
        return max(engine.cpu_efficiency.values(), default=1.0)
    value = engine
    for key in field.split("."):
        value = value.get(key, 1.0) if isinstance(value, (dict, MappingProxyType)) else getattr(value, key)
    return value


def set_field(engine: Engine, field: str, value) -> Engine:
    if field == "cpu_efficiency":
        return replace(engine, cpu_efficiency=MappingProxyType({k: value for k in CpuKernels}))
    return _set(engine, field.split("."), value)


def _set(obj, keys: list[str], value):
    head, rest = keys[0], keys[1:]
    if isinstance(obj, (dict, MappingProxyType)):
        return MappingProxyType({**obj, head: _set(obj[head], rest, value) if rest else value})
    return replace(obj, **{head: _set(getattr(obj, head), rest, value) if rest else value})


def derived(engines: dict[str, Engine], shared: dict) -> dict[str, Engine]:
    """Engines that take another's constants (``fields``; and a sourced factor on its CPU fraction), on top of
    their own current ones."""
    out = dict(engines)
    for name, rule in shared.items():
        source = out.get(rule["from"], load_engine(rule["from"]))
        mine = out.get(name, load_engine(name))
        for field in rule.get("fields", ()):
            mine = set_field(mine, field, get_field(source, field))
        if "cpu_efficiency_factor" in rule:
            mine = set_field(mine, "cpu_efficiency", min(1.0, get_field(source, "cpu_efficiency") *
                                                         rule["cpu_efficiency_factor"]))
        out[name] = mine
    return out


# ---- prediction -------------------------------------------------------------------------------------------

class Predictor:
    def __init__(self, profiles):
        self.profiles, self.models, self.groupings = profiles, {}, {}

    def decode(self, check: dict, engine: Engine) -> float:
        for arch, nodes in check.get("graph_nodes", {}).items():     # the graph of the build the run used
            engine = set_field(engine, f"step.graph.nodes_per_layer.{arch}", nodes)
        model = self.models.get(check["model"]) or self.models.setdefault(check["model"], resolve_model(
            str(DATA / check["model"]) if check["model"].endswith(".json") else check["model"]))
        workload = make_workload(check["context"], check.get("batch", 1))
        key = (check["model"], check["context"])
        machine = self.profiles.get(check["machine"]) or self.profiles.setdefault(check["machine"],
                                                                                 load_profile(check["machine"]))
        plan, _, grouping = assemble_plan(model, machine, workload, check["policy"],
                                          quick=True, grouping=self.groupings.get(key), engine=engine)
        self.groupings[key] = grouping
        if "layout" in check:
            return self.cluster_decode(check, model, machine, grouping, engine)
        return plan.estimates.decode_tokens_per_s

    @staticmethod
    def cluster_decode(check: dict, model, profile, grouping, engine: Engine) -> float:
        """A run whose layout the single-node planner does not take (DP-attention, a pipeline over nodes): the
        cluster model's decode step for that layout, one sequence per DP rank (SGLang pads idle ranks to the
        same step)."""
        layout = ClusterLayout(**{"pp": 1, "dp": 1, **check["layout"]})
        machine = build_machine(profile, engine=engine)
        policy = resolve_policy(check["policy"], machine.device_kind, model.spec.architecture)
        shape = shape_of(model.spec, grouping, kv_layout(model.spec, policy.kv_cache))
        cost = step_cost(shape, layout, machine.gpus[0], links_of(profile, engine), machine.overhead, 1,
                         check["context"], prefill=False)
        return 1.0 / (layout.pp * cost.stage_s + cost.crossing_s)


def loss(predictor: Predictor, checks: list[dict], engines: dict[str, Engine]) -> float:
    total = 0.0
    for c in checks:
        predicted = predictor.decode(c, engines[c["engine"]])
        total += math.log(max(predicted, 1e-9) / c["published"]) ** 2
    return total


def golden_search(f, lo: float, hi: float, steps: int = 14) -> float:
    a, b = math.log(lo), math.log(hi)
    c, d = b - GOLDEN * (b - a), a + GOLDEN * (b - a)
    fc, fd = f(math.exp(c)), f(math.exp(d))
    for _ in range(steps):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - GOLDEN * (b - a)
            fc = f(math.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + GOLDEN * (b - a)
            fd = f(math.exp(d))
    return math.exp((a + b) / 2)


def sharers(name: str, shared: dict) -> set[str]:
    """``name`` and every engine that takes a constant from it, directly or through another."""
    found = {name}
    while True:
        more = {n for n, rule in shared.items() if rule["from"] in found} - found
        if not more:
            return found
        found |= more


def fit(predictor, checks, fitted: dict, shared: dict, rounds: int = 3, only=None) -> dict[str, Engine]:
    """Coordinate descent over every fitted constant, each on the checks of its engine and of the engines
    sharing it, starting from the middle of each range (not from what is shipped). ``only``: (engines to refit,
    values for the rest)."""
    engines = {name: load_engine(name) for name in {c["engine"] for c in checks} | set(fitted) | set(shared)}
    if only is not None:
        engines.update(only[1])
    todo = {name: fields for name, fields in fitted.items() if only is None or name in only[0]}
    for name, fields in todo.items():
        for spec in fields:
            engines[name] = set_field(engines[name], spec["field"], math.sqrt(spec["range"][0] * spec["range"][1]))
    for _ in range(rounds):
        for name, fields in todo.items():
            users = sharers(name, shared)
            mine = [c for c in checks if c["engine"] in users and c.get("fit", True)]
            for spec in fields if mine else ():
                def f(value, field=spec["field"]):
                    trial = {**engines, name: set_field(engines[name], field, value)}
                    return loss(predictor, mine, derived(trial, shared))
                engines[name] = set_field(engines[name], spec["field"], golden_search(f, *spec["range"]))
    return derived(engines, shared)


def _shown(model: str) -> str:
    """A preset's name, or a shipped config's file name without its folder and suffix."""
    return Path(model).stem if model.endswith(".json") else model


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fit", action="store_true", help="print the constants fitted on every run")
    args = parser.parse_args()
    spec, profiles, runs = load_inputs()
    checks, fitted, shared = spec["checks"], spec["fitted"], spec.get("shared", {})
    predictor = Predictor(profiles)
    if args.fit:
        engines = fit(predictor, checks, fitted, shared)
        for name, fields in fitted.items():
            print(name, {s["field"]: f"{get_field(engines[name], s['field']):.4g}" for s in fields})
        return 0
    shipped = {c["engine"]: load_engine(c["engine"]) for c in checks}
    full = fit(predictor, checks, fitted, shared)
    rows, hits = [], 0
    for run_id in dict.fromkeys(c["run"] for c in checks):
        others = [c for c in checks if c["run"] != run_id]
        touched = {name for name in fitted if {c["engine"] for c in checks if c["run"] == run_id} & sharers(name, shared)}
        refit = fit(predictor, others, fitted, shared, only=(touched, full))
        for c in (c for c in checks if c["run"] == run_id):
            now = predictor.decode(c, shipped[c["engine"]])
            loo = predictor.decode(c, refit[c["engine"]])
            ratio = loo / c["published"]
            hits += abs(ratio - 1) <= WITHIN
            rows.append((c, runs[run_id], now, loo, ratio))
    print(f"{'run':4} {'engine':13} {'model':28} {'machine':19} {'ctx':>6} {'published':>9} {'shipped':>8} "
          f"{'LOO':>7} {'LOO/pub':>7}")
    for c, run, now, loo, ratio in rows:
        print(f"{c['run']:4} {c['engine']:13} {_shown(c['model']):28} {c['machine']:19} {c['context']:>6} "
              f"{c['published']:>9.2f} {now:>8.2f} {loo:>7.2f} {ratio:>7.3f}")
    shipped_hits = sum(abs(now / c["published"] - 1) <= WITHIN for c, _, now, _, _ in rows)
    print(f"within ±{WITHIN:.0%} (leave-one-out): {hits} of {len(rows)}; with the shipped constants: {shipped_hits}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

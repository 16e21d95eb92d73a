"""``mv4deploy plan``: validate the options, resolve the model and the profile, plan (or sweep), and hand the
result to the tables or ``--json``."""

from __future__ import annotations

import gc
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from mv4deploy.cli import output, tables
from mv4deploy.cli.app import EngineOpt, ExpertDtypeOpt, JsonOpt, ModelOpt, ProfileOpt, app
from mv4deploy.core.errors import EXIT_OK, InputError
from mv4deploy.model import DEFAULT_MODEL

if TYPE_CHECKING:  # the planner is imported when the command runs, so `--help` stays fast
    from mv4deploy.plan.plan import Plan
    from mv4deploy.plan.sweep import Sweep


@app.command("plan")
def plan(profile: ProfileOpt,
         model: ModelOpt = DEFAULT_MODEL,
         context: Annotated[str, typer.Option(help="Context tokens per sequence (131072, 128k, 1m).")] = "131072",
         batch: Annotated[str, typer.Option(help="Sequences decoded together.")] = "1",
         prefill_chunk: Annotated[str, typer.Option(help="Tokens per prefill step.")] = "2048",
         policy: Annotated[str, typer.Option(help="auto, native, fp8, int4-experts, int4, nvfp4, mobile-int4.")] = "auto",
         host_mem: Annotated[Optional[str], typer.Option(help="Host RAM instead of the profile's (256GiB).")] = None,
         gpu_mem_util: Annotated[Optional[str], typer.Option(help="Fraction of GPU memory to use.")] = None,
         expert_skew: Annotated[Optional[str], typer.Option(help="HOT:SHARE, e.g. 0.2:0.6.")] = None,
         mtp: Annotated[bool, typer.Option("--mtp", help="Place the MTP / draft layers too.")] = False,
         expert_dtype: ExpertDtypeOpt = None,
         engine: EngineOpt = "auto",
         sweep: Annotated[Optional[str], typer.Option(help="FIELD=V1,V2 (context, batch, prefill-chunk, "
                                                           "host-mem).")] = None,
         plot: Annotated[Optional[Path], typer.Option(help="Draw memory per device (and the sweep) to a PNG.")]
         = None,
         input_tokens: Annotated[Optional[str], typer.Option(help="Cluster plan: prompt tokens per request "
                                                                  "(default 4000).")] = None,
         output_tokens: Annotated[Optional[str], typer.Option(help="Cluster plan: generated tokens per request "
                                                                   "(default 1000).")] = None,
         concurrency: Annotated[Optional[str], typer.Option(help="Cluster plan: requests served at once.")] = None,
         ttft_ms: Annotated[Optional[str], typer.Option(help="Cluster plan: time to first token target, ms.")] = None,
         tpot_ms: Annotated[Optional[str], typer.Option(help="Cluster plan: time per output token target, ms.")]
         = None,
         out: Annotated[Optional[Path], typer.Option(help="Also write the plan JSON here.")] = None,
         json_out: JsonOpt = False) -> int:
    """Where every tensor group, KV pool and Engram table goes, in which format, and how fast it runs."""
    for option, path in (("--out", out), ("--plot", plot)):   # before anything is printed
        if path is not None and not path.resolve().parent.is_dir():
            raise InputError(path, option, None, "its folder does not exist")
    result = run_plan(model, profile, context, batch, prefill_chunk, policy, host_mem, gpu_mem_util,
                      expert_skew, mtp, sweep, expert_dtype, engine,
                      (input_tokens, output_tokens, concurrency, ttft_ms, tpot_ms))
    data = result.plan.to_json()
    output.print_warnings(list(result.plan.warnings))
    if result.sweep is not None:
        from mv4deploy.plan.sweep import sweep_json
        data = sweep_json(result.sweep, list(result.points))
        output.emit_json(data) if json_out else tables.sweep_table(result)
    else:
        output.emit_json(data) if json_out else tables.plan_table(result.plan)
    _write_files(result, data, out, plot)
    return EXIT_OK


def _write_files(result: PlanResult, data: dict, out: Path | None, plot: Path | None) -> None:
    """``--out``: the JSON just printed (or that --json would print); ``--plot``: memory per device (and the sweep)."""
    if out is not None:
        import json
        from mv4deploy.core.fileio import write_text_atomic
        write_text_atomic(out, json.dumps(data, indent=2) + "\n")
        output.info(f"wrote {out}")
    if plot is not None:
        from mv4deploy.plan.sweep import plot as draw
        draw(plot, result.plan, list(result.points) or None)
        output.info(f"wrote {plot}")


@dataclass(frozen=True)
class PlanResult:
    plan: Plan
    sweep: Sweep | None = None
    points: tuple = ()


@contextmanager
def _without_cyclic_gc():
    """The inventory allocates ~145K small objects (V4-Pro) and none of them form cycles: the cyclic
    collector would rescan them again and again (~15-20% of a plan's time). Restored afterwards."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def run_plan(model: str, profile: str, context: str = "131072", batch: str = "1", prefill_chunk: str = "2048",
             policy: str = "auto", host_mem: str | None = None, gpu_mem_util: str | None = None,
             expert_skew: str | None = None, mtp: bool = False, sweep: str | None = None,
             expert_dtype: str | None = None, engine: str = "auto", serving: tuple = ()) -> PlanResult:
    """Validate everything before any work, so a bad option costs nothing and says exactly what is wrong.
    ``serving``: (--input-tokens, --output-tokens, --concurrency, --ttft-ms, --tpot-ms) as given (None: not)."""
    from mv4deploy.plan.cluster import make_serving
    served = make_serving(*serving)
    from mv4deploy.core.schema import fraction, numeric, option
    from mv4deploy.plan.policy import policy_names
    from mv4deploy.plan.sweep import parse_sweep, sweep_points
    from mv4deploy.plan.workload import host_mem_bytes, make_workload
    workload = make_workload(context, batch, prefill_chunk, expert_skew, mtp)
    if policy not in policy_names():
        raise InputError(None, "--policy", policy, f"unknown policy; known: {', '.join(policy_names())}")
    host_bytes = host_mem_bytes(host_mem) if host_mem is not None else None
    util = option("--gpu-mem-util", numeric(fraction), gpu_mem_util) if gpu_mem_util is not None else None
    parsed_sweep = parse_sweep(sweep) if sweep is not None else None
    from mv4deploy.engines.engine import AUTO, load_engine
    if engine != AUTO:
        load_engine(engine)     # an unknown name exits 2 here, listing the shipped engines
    from mv4deploy.hardware.profile import load_profile
    from mv4deploy.model.source import resolve_model
    from mv4deploy.plan.make import make_plan
    with _without_cyclic_gc():
        hardware = load_profile(profile)
        resolved = resolve_model(model, expert_dtype)
        if parsed_sweep is None:
            return PlanResult(make_plan(resolved, hardware, workload, policy, host_bytes, util, engine=engine,
                                        serving=served))

        from mv4deploy.plan.groups import build_groups
        grouping = build_groups(resolved.inventory, workload.include_mtp, workload.expert_skew)  # shared by the points

        def plan_fn(w, host):
            return make_plan(resolved, hardware, w, policy, host, util, suggest=False, grouping=grouping, engine=engine,
                             serving=served)

        points = sweep_points(parsed_sweep, workload, host_bytes, plan_fn)
        return PlanResult(points[-1][1], parsed_sweep, tuple(points))

"""Human-readable tables for each command's result (rich), on stdout; ``output`` holds the sinks."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.table import Table

from mv4deploy.cli.output import _count, _stdout, info, warn
from mv4deploy.core.units import format_bytes


def inspect_table(report: dict) -> None:
    """Human view of ``mv4deploy inspect``: parameters and bytes by role, KV pools, Engram."""
    out = _stdout()
    params = report["params"]
    out.print(f"[bold]{report['model']}[/]  ({report['architecture']}, {report['source_kind']} {report['source']})")
    out.print(f"parameters {_count(params['total'])} (+{_count(params['mtp'])} MTP), "
              f"active per token {_count(params['active_per_token'])}; "
              f"checkpoint {format_bytes(report['checkpoint_bytes'])} in {report['tensors']:,} tensors")
    table = Table(title="by role", title_justify="left")
    for column in ("role", "parameters", "bytes as stored"):
        table.add_column(column, justify="left" if column == "role" else "right")
    for role, count in params["by_role"].items():
        table.add_row(role, _count(count), format_bytes(report["bytes_by_role"].get(role, 0)))
    out.print(table)
    kv = report["kv_cache"]
    pools = Table(title=f"KV cache ({kv['format']}): {kv['bytes_per_token']:,.1f} B/token + "
                        f"{format_bytes(kv['fixed_bytes_per_sequence'])} per sequence", title_justify="left")
    for column in ("pool", "layers", "B/entry", "tokens/entry", "access", "B/token"):
        pools.add_column(column, justify="left" if column in ("pool", "access") else "right")
    for p in kv["pools"]:
        per_token = f"window {p['window_tokens']}" if p["window_tokens"] else f"{p['bytes_per_token']:,.2f}"
        pools.add_row(p["name"], str(p["layers"]), str(p["bytes_per_entry"]), str(p["tokens_per_entry"]),
                      p["access"], per_token)
    out.print(pools)
    if report["engram"]:
        e = report["engram"]
        out.print(f"Engram: layers {e['layers']}, {sum(e['rows']):,} rows x {e['row_bytes']} B = "
                  f"{format_bytes(e['table_bytes'])}; {e['rows_read_per_token']} rows read per token")
    for m in report["mismatches"]:
        warn(f"{m['name']}: {m['problem']}")


def profile_table(profile: dict) -> None:
    out = _stdout()
    out.print(f"[bold]{profile['name']}[/]  {profile['description']}")
    table = Table(show_header=True)
    table.add_column("field")
    table.add_column("value")
    for key, value in _flatten(profile):
        if key not in ("name", "description", "source"):
            table.add_row(key, _show(key, value))
    out.print(table)


def _flatten(data: dict, prefix: str = ""):
    for key, value in data.items():
        if isinstance(value, dict) and value:
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _show(key: str, value) -> str:
    if value is None:
        return "unknown"
    if key.endswith("_bytes") and isinstance(value, (int, float)):
        return format_bytes(value)
    if key.endswith("_bytes_per_s") and isinstance(value, (int, float)):
        return f"{value / 1e9:,.1f} GB/s"
    if "flops_per_s" in key and isinstance(value, (int, float)):
        return f"{value / 1e12:,.1f} TFLOP/s"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    return str(getattr(value, "value", value))


def name_list(title: str, names: list[str]) -> None:
    out = _stdout()
    out.print(f"[bold]{title}[/]")
    for name in names:
        out.print(f"  {name}")


def export_table(report: dict) -> None:
    """Human view of ``mv4deploy export onnx``: where it went, sizes, the statistics as ``mv4deploy validate``
    prints them, greedy agreement, and the target's tolerance as a gate."""
    out = _stdout()
    v, g = report["validation"], report["validation"]["greedy"]
    verdict = "[green]passed[/]" if v["passed"] else "[red]FAILED[/]: " + "; ".join(v["failures"])
    out.print(f"[bold]{report['model']}[/] -> {report['out']}  (target {report['target']}, "
              f"{report['weights']['format']}, {report['runtime']})")
    out.print(f"model files {format_bytes(report['sizes']['model_bytes'])}; validated on {report['runner']}: {verdict}")
    out.print(f"vs PyTorch fp32 on {v['eval']['text']}: {v['eval']['chunks']} chunks x {v['eval']['chunk_tokens']} "
              f"tokens, {v['stats']['tokens_scored']} positions scored (second half of each chunk)")
    _stat_tables(out, v["stats"])
    out.print(f"greedy: agreeing leading tokens {g['agreeing_prefix']} of {g['new_tokens']} "
              f"(mean {g['agreeing_prefix_mean']:.1f})")
    _gate_table(out, v["gate"])
    for note in report["notes"]:
        out.print(f"graph change: {note}")


# ---- mv4deploy plan ---------------------------------------------------------------------------------

def _gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:,.2f}"


def _rate(value: float | None, unit: str) -> str:
    return "n/a" if value is None else f"{value:,.1f} {unit}"


def _wide_stdout(min_width: int = 120) -> Console:
    """The plan's tables have ten columns: never squeeze them below ``min_width`` when piped."""
    console = _stdout()
    return Console(file=sys.stdout, highlight=False, soft_wrap=False, width=max(console.width, min_width))


def plan_table(plan) -> None:
    """Human view of ``mv4deploy plan``: devices, groups by class and tier, KV and Engram decisions,
    estimates, verdict and suggestions, engine hints (the CLI prints the plan's warnings to stderr)."""
    out, w = _wide_stdout(), plan.workload
    out.print(f"[bold]{plan.model}[/] on [bold]{plan.profile}[/]: [bold]{plan.verdict.value.replace('_', ' ')}[/]  "
              f"(context {w.context_tokens:,} x batch {w.batch}, prefill chunk {w.chunk_tokens:,}; "
              f"policy {plan.decisions.policy.name})")
    out.print(_devices(plan))
    out.print(_groups_by_class(plan))
    _kv_and_engram(out, plan)
    _estimates(out, plan)
    _hints(out, plan)
    if plan.cluster is not None:
        from mv4deploy.cli.cluster_table import cluster_table
        cluster_table(out, plan.cluster)


def _devices(plan) -> Table:
    table = Table(title="memory per device (GiB)", title_justify="left")
    for column in ("device", "kind", "capacity", "weights", "engram", "kv cache", "activations", "reserve",
                   "used", "headroom"):
        table.add_column(column, justify="left" if column in ("device", "kind") else "right")
    for d in plan.devices:
        b = d.breakdown
        table.add_row(d.name, d.kind, _gib(d.capacity_bytes), _gib(b["weights"]), _gib(b["engram"]),
                      _gib(b["kv_cache"]), _gib(b["activations"]), _gib(b["reserve"]), _gib(d.used_bytes),
                      _gib(d.headroom_bytes))
    return table


def _groups_by_class(plan) -> Table:
    from mv4deploy.plan.groups import GroupClass
    order = {cls.value: i for i, cls in enumerate(GroupClass)}   # rows in the enum's order
    rank = {"host": 1, "nvme": 2, "unplaced": 3}
    tiers = sorted({g.tier for g in plan.groups}, key=lambda t: (rank.get(t, 0), t))
    by_class: dict[str, dict] = {}
    for g in sorted(plan.groups, key=lambda g: order.get(g.role, len(order))):
        row = by_class.setdefault(g.role, {"formats": set(), "groups": set()})
        row[g.tier] = row.get(g.tier, 0) + g.bytes
        row["formats"].add(g.format)
        row["groups"].add(g.group)     # a group cut over tiers is one group, several rows
    table = Table(title="weights by group class and tier (GiB)", title_justify="left")
    table.add_column("class")
    table.add_column("groups", justify="right")
    for tier in tiers:
        table.add_column(tier, justify="right")
    table.add_column("formats")
    for cls, row in by_class.items():
        table.add_row(cls, str(len(row["groups"])), *[_gib(row[t]) if t in row else "" for t in tiers],
                      ", ".join(sorted(row["formats"])))
    return table


def _kv_and_engram(out: Console, plan) -> None:
    kv = plan.kv_cache
    pools = ", ".join(f"{p.name} {format_bytes(p.bytes)} on {p.tier}" for p in kv.pools)
    out.print(f"KV cache: {pools}")
    if kv.gpu_bytes_saved:
        out.print(f"  top-k pools in host RAM save {format_bytes(kv.gpu_bytes_saved)} of GPU memory and add "
                  f"{kv.added_s_per_token * 1e3:.2f} ms per decode step")
    e = plan.engram
    if e:
        tables = ", ".join(f"layer {t.layer} {format_bytes(t.bytes)} on {t.tier}" for t in e.tables)
        out.print(f"Engram: {tables}; {e.rows_per_token} rows x {e.row_bytes} B = {e.bytes_per_token:,} B "
                  f"per token; lookups {e.lookup_s_per_token * 1e6:,.0f} us, "
                  f"{'hidden behind earlier layers' if e.fits_overlap_window else 'partly exposed'} "
                  f"(exposed {e.exposed_s_per_token * 1e6:,.0f} us)")
        if e.page_cache_bytes:
            out.print(f"  page cache for hot rows: {format_bytes(e.page_cache_bytes)} of free host RAM")


def _estimates(out: Console, plan) -> None:
    est, d = plan.estimates, plan.decisions
    gap = d.bound_gap
    out.print(f"decode {_rate(est.decode_tokens_per_s, 'tok/s')} (bound {_rate(est.bound_decode_tokens_per_s, 'tok/s')}"
              + (f", plan at {100 / gap:.1f}% of it" if gap else "") + f"); prefill "
              f"{_rate(est.prefill_tokens_per_s, 'tok/s')}; time to first token "
              f"{_rate(est.time_to_first_token_s, 's')} for a {plan.workload.context_tokens:,}-token prompt")
    out.print(f"bottleneck: {est.bottleneck}")
    if plan.engine is not None:
        out.print(f"engine: {plan.engine.name} {plan.engine.version} ({plan.engine.why})")
    out.print(f"layout: {d.parallelism.reason}")
    experts = d.routed_experts
    if experts.offloaded_decode:
        out.print(f"offloaded experts: decode {', '.join(experts.offloaded_decode)}; prefill "
                  f"{', '.join(experts.offloaded_prefill)}")
    ws = d.workspace
    out.print(f"workspace {format_bytes(ws['total_bytes'])} per device (largest transient: {ws['largest_transient']} "
              f"{format_bytes(ws['largest_transient_bytes'])}; stream buffer {format_bytes(ws['stream_buffer_bytes'])})")
    for s in plan.suggestions:
        out.print(f"suggestion: {s.change} -> {s.verdict.value.replace('_', ' ')}, "
                  f"{s.decode_tokens_per_s:,.1f} tok/s ({s.why})")


def _hints(out: Console, plan) -> None:
    for engine in ("vllm", "sglang", "llama_cpp"):
        line = getattr(plan.hints, engine)
        if line:
            out.print(f"{engine}: {line}", soft_wrap=True)
    device_map = plan.hints.accelerate_device_map
    if device_map:
        out.print(f"accelerate device_map: {len(device_map)} modules (full map with --json)")


def sweep_table(result) -> None:
    out = _wide_stdout()
    first = result.points[0][1]
    out.print(f"[bold]{first.model}[/] on [bold]{first.profile}[/]: sweep of {result.sweep.field}")
    table = Table()
    for column in ("value", "verdict", "GPU used GiB", "host used GiB", "decode tok/s", "prefill tok/s",
                   "TTFT s", "KV saved GiB"):
        table.add_column(column, justify="left" if column in ("value", "verdict") else "right")
    for label, plan in result.points:
        gpu = sum(d.used_bytes for d in plan.devices if d.kind in ("gpu", "npu"))
        host = sum(d.used_bytes for d in plan.devices if d.kind == "host")
        est = plan.estimates
        table.add_row(label, plan.verdict.value, _gib(gpu), _gib(host), f"{est.decode_tokens_per_s:,.1f}",
                      _rate(est.prefill_tokens_per_s, ""), _rate(est.time_to_first_token_s, ""),
                      _gib(plan.kv_cache.gpu_bytes_saved))
    out.print(table)


def generation(result: dict) -> None:
    """``mv4deploy generate``: prompt + continuation on stdout, speed on stderr."""
    sys.stdout.write(result["prompt"] + result["completion"] + "\n")
    info(f"{result['new_tokens']} tokens at {result['tokens_per_s']} tokens/s on {result['device']} "
         f"({result['model']}, loaded in {result['load_s']} s)")


# ---- mv4deploy run ----------------------------------------------------------------------------------

def _measure(value, unit: str) -> str:
    if value is None:
        return "n/a"
    return f"{value / 2**20:,.1f} MiB" if unit == "bytes" else f"{value:,.2f} {unit}"


def run_table(report: dict) -> None:
    """``mv4deploy run``: measured beside predicted with the ratio; what crossed tiers; deviations."""
    out, w = _wide_stdout(100), report["workload"]
    out.print(f"[bold]{report['model']}[/] on [bold]{report['profile']}[/] ({', '.join(f'{t}={d}' for t, d in report['devices'].items())}): "
              f"batch {w['batch']}, prompt {w['prompt_tokens']:,} in chunks of {w['chunk']:,}, "
              f"{w['warmup']} warm-up + {w['tokens']} timed decode steps, {w['repeats']} trial(s), "
              f"{w['threads']} CPU thread(s)")
    table = Table(title="predicted (plan) vs measured", title_justify="left")
    for column in ("metric", "predicted", "measured", "measured / predicted"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for row in report["comparison"]:
        ratio = "n/a" if row["ratio"] is None else f"{row['ratio']:.3f}"
        table.add_row(row["metric"], _measure(row["predicted"], row["unit"]), _measure(row["measured"], row["unit"]),
                      ratio)
    out.print(table)
    spread, memory = report["decode_tokens_per_s_spread"], report["memory"]
    out.print(f"decode tok/s over trials: min {spread['min']:,.2f}, median {spread['median']:,.2f}, "
              f"max {spread['max']:,.2f}; process RSS before loading {_measure(memory['rss_baseline_bytes'], 'bytes')}")
    if report["executed"]:
        out.print("crossed tiers: " + ", ".join(f"{k} {v:,}" for k, v in report["executed"].items()))
    out.print(f"plan's bottleneck: {report['predicted_bottleneck']}")
    for note in report["deviations"]:
        warn(note)


# ---- mv4deploy validate ----------------------------------------------------------------------------

def validation_table(data: dict) -> None:
    """Human view of ``mv4deploy validate``: llama.cpp's statistics with their ±, then the gate."""
    out = _stdout()
    ref, cand = data["reference"], data["candidate"]
    out.print(f"reference [bold]{ref['path']}[/] ({ref['kind']})")
    if cand:
        out.print(f"candidate [bold]{cand['path']}[/] ({cand['kind']})")
    out.print(f"eval {data['eval']['name']}: {data['chunks']} chunks x {data['chunk_tokens']} tokens, "
              f"{data['chunks'] * data['scored_per_chunk']} positions scored (second half of each chunk)")
    if data.get("golden_out"):
        out.print(f"golden file written: {data['golden_out']}")
    if data.get("tokens_scored") is None:
        return
    _stat_tables(out, data)
    if data.get("contexts"):
        _contexts_table(out, data["contexts"])
    if data.get("tasks"):
        _tasks_table(out, data["tasks"])
    if data.get("gate"):
        _gate_table(out, data["gate"])


def _contexts_table(out: Console, contexts: dict) -> None:
    """``--contexts``: the same targets scored at each length, and the growth against the shortest."""
    table = Table(title=f"long context: {contexts['windows']} windows x {contexts['scored_per_window']} targets "
                        "per length (the same targets at every length)", title_justify="left")
    for column in ("context", "mean KLD", "KLD p99", "same top 1", "PPL(base)", "PPL ratio", "KLD growth",
                   "PPL ratio growth"):
        table.add_column(column, justify="right")
    for r in contexts["per_length"]:
        table.add_row(str(r["context_tokens"]), f"{r['kld_mean']:.6f} ± {r['kld_mean_unc']:.6f}",
                      f"{r['kld_p99']:.5f}", f"{100 * r['same_top1']:.2f} %", f"{r['ppl_base']:.3f}",
                      f"{r['ppl_ratio']:.4f}", f"{r['kld_mean_growth']:+.6f}", f"x{r['ppl_ratio_growth']:.4f}")
    out.print(table)


def _tasks_table(out: Console, tasks: list[dict]) -> None:
    """``--tasks``: accuracy of both models with Wilson intervals, and McNemar's exact test on the pairs."""
    table = Table(title="task accuracy (lm-evaluation-harness)", title_justify="left")
    for column in ("task", "items", "reference", "candidate", "drop", "only ref / only cand", "McNemar p",
                   "worse p"):
        table.add_column(column, justify="left" if column == "task" else "right")
    for t in tasks:
        def acc(who): return (f"{100 * t[f'acc_{who}']:.1f} % [{100 * t[f'acc_{who}_low']:.1f}, "
                              f"{100 * t[f'acc_{who}_high']:.1f}]")
        table.add_row(t["task"], str(t["items"]), acc("reference"), acc("candidate"), f"{100 * t['acc_drop']:+.1f} pt",
                      f"{t['reference_only']} / {t['candidate_only']}", f"{t['mcnemar_p']:.3g}", f"{t['worse_p']:.3g}")
    out.print(table)


def _stat_tables(out: Console, summary: dict) -> None:
    """Every statistic of a summary with its ±, one table per ``STAT_SECTIONS`` section (llama.cpp's labels)."""
    from mv4deploy.validate.table import STAT_SECTIONS, format_row
    for section, rows in STAT_SECTIONS:
        table = Table(title=section, title_justify="left")
        table.add_column("statistic")
        table.add_column("value", justify="right")
        for row in rows:
            table.add_row(row.label, format_row(row, summary))
        out.print(table)


def _gate_table(out: Console, gate: dict) -> None:
    """``GateResult.to_json()`` output: one row per limit, measured value and verdict."""
    verdict = "[green]PASS[/]" if gate["passed"] else "[bold red]FAIL[/]"
    table = Table(title=f"gate {gate['source']}: {verdict}", title_justify="left")
    for column in ("limit", "statistic", "measured", "bound", "result"):
        table.add_column(column, justify="right" if column in ("measured", "bound") else "left")
    for c in gate["checks"]:
        measured = "n/a" if c["measured"] is None else f"{c['measured']:.6g}"
        table.add_row(c["limit"], c["metric"], measured, ("<= " if c["bound"] == "max" else ">= ")
                      + f"{c['value']:g}", "pass" if c["passed"] else "[bold red]fail[/]")
    out.print(table)

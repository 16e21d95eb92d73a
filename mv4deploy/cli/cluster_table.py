"""The cluster section of ``mv4deploy plan`` as tables: the chosen layout and its runners-up, and one launch
command per node for vLLM and SGLang (the Dynamo deployment file is in ``--json``'s ``cluster.commands``)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


def cluster_table(out: Console, cluster) -> None:
    s = cluster.serving
    targets = ", ".join(t for t in (f"TTFT <= {s.ttft_s * 1e3:g} ms" if s.ttft_s else "",
                                    f"TPOT <= {s.tpot_s * 1e3:g} ms" if s.tpot_s else "",
                                    f"concurrency {s.concurrency}" if s.concurrency else "") if t)
    out.print(f"[bold]cluster[/]: {cluster.nodes} nodes x {cluster.gpus_per_node} GPUs, {cluster.engine}; "
              f"input {s.input_tokens:,} / output {s.output_tokens:,} tokens{'; ' + targets if targets else ''}: "
              f"[bold]{cluster.verdict.replace('_', ' ')}[/] (searched in {cluster.search_s:.3f} s)")
    if not cluster.options:
        return
    table = Table(title="layouts, best first", title_justify="left")
    for column in ("layout", "tok/s/GPU", "tok/s/user", "TTFT ms", "TPOT ms", "concurrency", "GPUs used",
                   "GiB/GPU", "meets targets", "bottleneck"):
        table.add_column(column, justify="left" if column in ("layout", "bottleneck") else "right")
    for o in cluster.options:
        table.add_row(o.layout, f"{o.tokens_per_s_per_gpu:,.1f}", f"{o.tokens_per_s_per_user:.1f}",
                      f"{o.ttft_s * 1e3:,.0f}", f"{o.tpot_s * 1e3:.1f}", str(o.concurrency), str(o.gpus_used),
                      f"{o.memory_per_gpu_bytes / 2**30:.1f}", "yes" if o.meets_targets else "no", o.bottleneck)
    out.print(table)
    for engine in ("vllm", "sglang"):
        for c in cluster.commands.get(engine, []):
            out.print(f"{engine} node {c['node']} ({c['role']} {c['instance']}): {c['command']}", soft_wrap=True)
    for note in cluster.notes:
        out.print(f"note: {note}")

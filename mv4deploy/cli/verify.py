"""``mv4deploy verify``: a quantized output against its manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mv4deploy.cli import output
from mv4deploy.cli.app import JsonOpt, app
from mv4deploy.core.errors import EXIT_OK, CheckFailed


@app.command()
def verify(out: Annotated[Path, typer.Argument(help="A finished `mv4deploy quantize` output folder.")],
           json_out: JsonOpt = False) -> int:
    """Check a quantized output against its manifest (sha256 per shard, index, headers vs config)."""
    from mv4deploy.quant.manifest import verify_output
    report = verify_output(out)
    output.emit_json(report) if json_out else output.info(
        f"{report['out']}: {'ok' if report['ok'] else 'FAILED'} ({report['shards']} shards, {report['weights']} weights)")
    if not report["ok"]:
        raise CheckFailed(f"{out}: {len(report['problems'])} problems, first: {report['problems'][0]}")
    return EXIT_OK

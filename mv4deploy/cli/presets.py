"""``mv4deploy presets``: the built-in model presets."""

from __future__ import annotations

from mv4deploy.cli import output, tables
from mv4deploy.cli.app import JsonOpt, app
from mv4deploy.core.errors import EXIT_OK


@app.command("presets")
def presets(json_out: JsonOpt = False) -> int:
    """List the built-in model presets."""
    from mv4deploy.model.source import list_presets
    names = list_presets()
    output.emit_json(names) if json_out else tables.name_list("model presets", names)
    return EXIT_OK

"""``mv4deploy generate``: greedy generation, a smoke check that a checkpoint loads and continues text."""

from __future__ import annotations

from typing import Annotated

import typer

from mv4deploy.cli import output, tables
from mv4deploy.cli.app import DeviceOpt, JsonOpt, app
from mv4deploy.core.errors import EXIT_OK


@app.command()
def generate(checkpoint: Annotated[str, typer.Argument(help="A checkpoint folder (native DeepSeek or HF layout).")],
             prompt: Annotated[str, typer.Option("--prompt", help="Text to continue.")],
             max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Tokens to generate.")] = 32,
             device: DeviceOpt = "cpu",
             json_out: JsonOpt = False) -> int:
    """Greedy generation from a checkpoint: a smoke check that it loads and continues text."""
    from mv4deploy.runtime.generate import generate_text
    result = generate_text(checkpoint, prompt, max_new_tokens, device)
    output.emit_json(result) if json_out else tables.generation(result)
    return EXIT_OK

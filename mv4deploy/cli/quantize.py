"""``mv4deploy quantize``: a checkpoint into a recipe's formats, shard by shard, resumable."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mv4deploy.cli import output
from mv4deploy.cli.app import DeviceOpt, JsonOpt, app
from mv4deploy.core.errors import EXIT_OK
from mv4deploy.quant.run import AUTO_WORKERS


@app.command()
def quantize(src: Annotated[Path, typer.Argument(help="Checkpoint folder: config.json + safetensors.")],
             out: Annotated[Path, typer.Argument(help="Output folder (new, empty, or an interrupted run).")],
             recipe: Annotated[Optional[str], typer.Option(help="A preset (native, fp8, fp8-fp4-experts, int4, "
                                                           "int4-experts, nvfp4, nf4) or a recipe file.")] = None,
             plan: Annotated[Optional[Path], typer.Option(help="Derive the recipe from a plan.json.")] = None,
             calib: Annotated[Optional[Path], typer.Option(help="Calibration text: GPTQ for INT4 weights.")] = None,
             workers: Annotated[int, typer.Option(min=0, max=64, help="Weights quantized in parallel "
                                                  "(0: one per CPU, at most 4).")] = AUTO_WORKERS,
             device: DeviceOpt = "auto",
             allow_nonfinite: Annotated[bool, typer.Option("--allow-nonfinite",
                                                           help="Store NaN/Inf as 0 instead of failing.")] = False,
             ray: Annotated[Optional[str], typer.Option(
                 "--ray", metavar="ADDRESS", help="Spread whole shards over a Ray cluster: HOST:PORT, ray://HOST:10001, "
                 "auto (the cluster this node joined) or local (start one here); --workers is then threads per "
                 "task. Needs pip install 'mv4deploy[ray]'.")] = None,
             part: Annotated[Optional[str], typer.Option(
                 "--part", metavar="I/N", help="Quantize only slice I of N (a Slurm array task); OUT stays "
                 "unfinished until --finalize.")] = None,
             finalize: Annotated[bool, typer.Option(
                 "--finalize", help="After every --part: check all shards are there, write config, manifest and "
                 "index.")] = False,
             json_out: JsonOpt = False) -> int:
    """Quantize a checkpoint shard by shard into a recipe's formats (same bits on cpu and cuda); re-run the
    same command to resume."""
    from mv4deploy.quant.run import run_quantize
    result = run_quantize(src, out, recipe=recipe, plan=plan, calib=calib, workers=workers, device=device,
                          allow_nonfinite=allow_nonfinite, progress=output.progress, ray=ray, part=part,
                          finalize=finalize)
    if "part" in result:
        output.emit_json(result) if json_out else output.info(
            f"part {result['part']}: {result['shards']} shards in {result['out']} "
            + ("(already finalized)" if result["finalized"] else "(unfinished: run --finalize after every part)"))
        return EXIT_OK
    fallback = (result["calibration"] or {}).get("rtn_fallback", [])
    output.print_warnings([f"{result['out']}: {result['portability']}"] * bool(result["portability"]) + [f"GPTQ fell back to round-to-nearest for {f['name']}: {f['reason']}" for f in fallback[:20]]
                          + ([f"... and {len(fallback) - 20} more (quantization_manifest.json lists all)"]
                             if len(fallback) > 20 else []))
    output.emit_json(result) if json_out else output.info(
        f"wrote {result['out']}: {result['shards']} shards, {result['out_bytes']:,} bytes "
        f"({', '.join(f'{k} x{v}' for k, v in result['formats'].items())})")
    return EXIT_OK

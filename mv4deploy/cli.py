"""The ``mv4deploy`` command line: parse, call one library function, hand the result to output.py.

Exit codes: 0 ok, 1 a check failed, 2 bad input (one line on stderr naming file, field and value),
3 an internal error (a bug: rerun with ``--debug`` for the traceback). Heavy modules are imported
inside the commands that need them, so ``inspect``, ``profile`` and ``plan`` never import torch.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

try:  # typer >= 0.20 ships its own copy of click
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover - older typer depends on click itself
    from click import exceptions as click_errors

from mv4deploy import output
from mv4deploy.device import check_device
from mv4deploy.errors import EXIT_BAD_INPUT, EXIT_CHECK_FAILED, EXIT_OK, CheckFailed, InputError
from mv4deploy.model.source import DEFAULT_MODEL
from mv4deploy.quant.run import AUTO_WORKERS

EXIT_INTERNAL = 3
_EXIT = tuple({typer.Exit, getattr(click_errors, "Exit", typer.Exit)})
_ABORT = tuple({typer.Abort, getattr(click_errors, "Abort", typer.Abort)})

app = typer.Typer(name="mv4deploy", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  rich_markup_mode=None,
                  help="Plan, quantize, export and validate DeepSeek V4-class models for the hardware you have. "
                       "Add --debug anywhere to see a traceback on errors.")
profile_app = typer.Typer(no_args_is_help=True, help="Hardware profiles: list, show, detect, probe.")
app.add_typer(profile_app, name="profile")

# Options shared by several commands: declared once, so a flag means the same everywhere (STYLE (b)15).
_MODEL_HELP = "A preset name, a config.json, or a checkpoint folder."
_PROFILE_HELP = "A shipped profile name or a YAML file."
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON with stable keys to stdout.")]
ModelArg = Annotated[str, typer.Argument(help=_MODEL_HELP)]
ModelOpt = Annotated[str, typer.Option("--model", help=_MODEL_HELP)]
ProfileArg = Annotated[str, typer.Argument(help=_PROFILE_HELP)]
ProfileOpt = Annotated[str, typer.Option("--profile", help=_PROFILE_HELP)]
DeviceOpt = Annotated[str, typer.Option("--device", callback=check_device,
                                        help="auto (CUDA when present), cpu or cuda.")]


@app.command()
def inspect(model: ModelArg = DEFAULT_MODEL, json_out: JsonOpt = False) -> int:
    """What a model is: parameters, tensors and bytes by role, KV-cache layout, Engram tables."""
    from mv4deploy.model.report import inspect_report
    from mv4deploy.model.source import resolve_model
    report = inspect_report(resolve_model(model))
    output.print_warnings([f"unknown config key {k!r} is not modelled" for k in report["unknown_keys"]])
    output.emit_json(report) if json_out else output.inspect_table(report)
    if report["mismatches"]:
        raise CheckFailed(f"{len(report['mismatches'])} tensors of {model} disagree with its config.json")
    return EXIT_OK


@app.command("presets")
def presets(json_out: JsonOpt = False) -> int:
    """List the built-in model presets."""
    from mv4deploy.model.source import list_presets
    names = list_presets()
    output.emit_json(names) if json_out else output.name_list("model presets", names)
    return EXIT_OK


@profile_app.command("list")
def profile_list(json_out: JsonOpt = False) -> int:
    """List the shipped hardware profiles."""
    from mv4deploy.hardware.profile import list_profiles
    names = list_profiles()
    output.emit_json(names) if json_out else output.name_list("hardware profiles", names)
    return EXIT_OK


@profile_app.command("show")
def profile_show(profile: ProfileArg, json_out: JsonOpt = False) -> int:
    """Show a profile with every figure parsed into bytes, bytes/s and FLOP/s."""
    from mv4deploy.hardware.profile import load_profile, profile_to_dict
    data = profile_to_dict(load_profile(profile))
    output.emit_json(data) if json_out else output.profile_table(data)
    return EXIT_OK


@profile_app.command("detect")
def profile_detect(out: Annotated[Optional[Path], typer.Option("--out", help="Write the YAML here.")] = None,
                   name: Annotated[str, typer.Option(help="Profile name.")] = "this-machine") -> int:
    """Describe this machine as a profile (psutil, /proc/cpuinfo, torch.cuda or nvidia-smi when present);
    figures it cannot read are written as 'unknown', never invented."""
    from mv4deploy.hardware.detect import detect_profile_yaml
    from mv4deploy.fileio import write_text_atomic
    text = detect_profile_yaml(name)
    if out is None:
        output.text(text)
    else:
        write_text_atomic(out, text)
        output.info(f"wrote {out}")
    return EXIT_OK


@profile_app.command("probe")
def profile_probe(out: Annotated[Optional[Path], typer.Option("--out", help="Write the YAML here.")] = None,
                  base: Annotated[Optional[str], typer.Option(help="Start from this profile (name or YAML); "
                                                              "default: what `profile detect` finds.")] = None,
                  storage_dir: Annotated[Path, typer.Option(help="Where to write the temporary read-test file.")]
                  = Path("."),
                  size: Annotated[str, typer.Option(help="Bytes per memory and storage test.")] = "1GiB",
                  name: Annotated[str, typer.Option(help="Profile name.")] = "this-machine",
                  threads: Annotated[Optional[int], typer.Option(help="CPU threads for the host figures "
                                                                 "(default: every core); runs use as many.")] = None
                  ) -> int:
    """Measure host memory bandwidth, CPU matmul rates, storage reads (and GPU bandwidth, host<->GPU copies,
    bf16/fp8 matmul when CUDA is present); write a profile with `measured:` beside the nominal figures."""
    from mv4deploy.hardware.probe import probe_profile_yaml
    from mv4deploy.fileio import write_text_atomic
    text = probe_profile_yaml(name, base, storage_dir, size, threads)
    if out is None:
        output.text(text)
    else:
        write_text_atomic(out, text)
        output.info(f"wrote {out}")
    return EXIT_OK


# ---- export: ONNX for CPUs and phones (mv4deploy/export/) ------------------------------------------------
export_app = typer.Typer(no_args_is_help=True, help="Export distillates to ONNX, validated against PyTorch.")
app.add_typer(export_app, name="export")


@export_app.command("onnx")
def export_onnx(model_dir: Annotated[Path, typer.Argument(help="A transformers folder (Qwen2/Llama + tokenizer).")],
                out: Annotated[Path, typer.Argument(help="Output folder (must be new or empty).")],
                target: Annotated[str, typer.Option("--target", help="A name in exporters/ or a YAML file.")],
                eval_text: Annotated[Optional[Path], typer.Option("--eval", help="Validation text (default: "
                                                                  "this Python's textwrap.py).")] = None,
                calib_text: Annotated[Optional[Path], typer.Option("--calib", help="Calibration text for QDQ "
                                                                   "targets (default: argparse.py).")] = None,
                overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a non-empty OUT.")] = False,
                json_out: JsonOpt = False) -> int:
    """Export MODEL_DIR to ONNX for TARGET and validate it (KLD, top-1, greedy agreement); exit 1 if it
    misses the target's tolerance (the folder is then kept as OUT.rejected)."""
    from mv4deploy.export.pipeline import export_onnx as run_export
    with output.library_noise_to_stderr():   # builders print banners on stdout and log at INFO
        report = run_export(model_dir, out, target, eval_text, calib_text, overwrite, notify=output.info)
    output.emit_json(report) if json_out else output.export_table(report)
    if not report["validation"]["passed"]:
        raise CheckFailed(f"{report['target']} export of {report['model']} failed validation: "
                          + "; ".join(report["validation"]["failures"]) + f" (kept in {report['out']})")
    return EXIT_OK


@export_app.command("targets")
def export_targets(json_out: JsonOpt = False) -> int:
    """List the shipped export targets."""
    from mv4deploy.export.targets import list_targets
    names = list_targets()
    output.emit_json(names) if json_out else output.name_list("export targets", names)
    return EXIT_OK


# ---- mv4deploy plan ---------------------------------------------------------------------------------
@app.command("plan")
def plan(profile: ProfileOpt,
         model: ModelOpt = DEFAULT_MODEL,
         context: Annotated[str, typer.Option(help="Context tokens per sequence (131072, 128k, 1m).")] = "131072",
         batch: Annotated[str, typer.Option(help="Sequences decoded together.")] = "1",
         prefill_chunk: Annotated[str, typer.Option(help="Tokens per prefill step.")] = "2048",
         policy: Annotated[str, typer.Option(help="auto, native, fp8, int4-experts, int4, mobile-int4.")] = "auto",
         host_mem: Annotated[Optional[str], typer.Option(help="Host RAM instead of the profile's (256GiB).")] = None,
         gpu_mem_util: Annotated[Optional[str], typer.Option(help="Fraction of GPU memory to use.")] = None,
         expert_skew: Annotated[Optional[str], typer.Option(help="HOT:SHARE, e.g. 0.2:0.6.")] = None,
         mtp: Annotated[bool, typer.Option("--mtp", help="Place the MTP / draft layers too.")] = False,
         sweep: Annotated[Optional[str], typer.Option(help="FIELD=V1,V2 (context, batch, prefill-chunk, "
                                                           "host-mem).")] = None,
         plot: Annotated[Optional[Path], typer.Option(help="Draw memory per device (and the sweep) to a PNG.")]
         = None,
         out: Annotated[Optional[Path], typer.Option(help="Also write the plan JSON here.")] = None,
         json_out: JsonOpt = False) -> int:
    """Where every tensor group, KV pool and Engram table goes, in which format, and how fast it runs."""
    from mv4deploy.plan.command import run_plan
    for option, path in (("--out", out), ("--plot", plot)):   # before anything is printed
        if path is not None and not path.resolve().parent.is_dir():
            raise InputError(path, option, None, "its folder does not exist")
    result = run_plan(model, profile, context, batch, prefill_chunk, policy, host_mem, gpu_mem_util,
                      expert_skew, mtp, sweep)
    data = result.plan.to_json()
    output.print_warnings(list(result.plan.warnings))
    if result.sweep is not None:
        from mv4deploy.plan.sweep import sweep_json
        data = sweep_json(result.sweep, list(result.points))
        output.emit_json(data) if json_out else output.sweep_table(result)
    else:
        output.emit_json(data) if json_out else output.plan_table(result.plan)
    if out is not None:
        import json
        from mv4deploy.fileio import write_text_atomic
        write_text_atomic(out, json.dumps(data, indent=2) + "\n")
        output.info(f"wrote {out}")
    if plot is not None:
        from mv4deploy.plan.sweep import plot as draw
        draw(plot, result.plan, list(result.points) or None)
        output.info(f"wrote {plot}")
    return EXIT_OK


# ---------------------------------------------------------------- quantize / verify (mv4deploy.quant)
@app.command()
def quantize(src: Annotated[Path, typer.Argument(help="Checkpoint folder: config.json + safetensors.")],
             out: Annotated[Path, typer.Argument(help="Output folder (new, empty, or an interrupted run).")],
             recipe: Annotated[Optional[str], typer.Option(help="A preset (native, fp8, fp8-fp4-experts, "
                                                           "int4-experts, nf4) or a recipe file.")] = None,
             plan: Annotated[Optional[Path], typer.Option(help="Derive the recipe from a plan.json.")] = None,
             calib: Annotated[Optional[Path], typer.Option(help="Calibration text: GPTQ for INT4 weights.")] = None,
             workers: Annotated[int, typer.Option(min=0, max=64, help="Weights quantized in parallel "
                                                  "(0: one per CPU, at most 4).")] = AUTO_WORKERS,
             device: DeviceOpt = "auto",
             allow_nonfinite: Annotated[bool, typer.Option("--allow-nonfinite",
                                                           help="Store NaN/Inf as 0 instead of failing.")] = False,
             json_out: JsonOpt = False) -> int:
    """Quantize a checkpoint shard by shard into a recipe's formats (same bits on cpu and cuda); re-run the
    same command to resume."""
    from mv4deploy.quant.run import run_quantize
    result = run_quantize(src, out, recipe=recipe, plan=plan, calib=calib, workers=workers, device=device,
                          allow_nonfinite=allow_nonfinite, progress=output.progress)
    fallback = (result["calibration"] or {}).get("rtn_fallback", [])
    output.print_warnings([f"GPTQ fell back to round-to-nearest for {f['name']}: {f['reason']}" for f in fallback[:20]]
                          + ([f"... and {len(fallback) - 20} more (quantization_manifest.json lists all)"]
                             if len(fallback) > 20 else []))
    output.emit_json(result) if json_out else output.info(
        f"wrote {result['out']}: {result['shards']} shards, {result['out_bytes']:,} bytes "
        f"({', '.join(f'{k} x{v}' for k, v in result['formats'].items())})")
    return EXIT_OK


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


PathOpt = Optional[Path]


@app.command()
def validate(
    reference: Annotated[PathOpt, typer.Option("--reference", help="Reference model folder (checkpoint, "
                                               "transformers or ONNX).")] = None,
    candidate: Annotated[PathOpt, typer.Option("--candidate", help="Candidate model folder.")] = None,
    eval_path: Annotated[PathOpt, typer.Option("--eval", help="Held-out UTF-8 text to score.")] = None,
    chunk: Annotated[int, typer.Option("--chunk", help="Tokens per chunk; the second half is scored.")] = 256,
    max_chunks: Annotated[Optional[int], typer.Option("--max-chunks", help="Score at most this many chunks.")] = None,
    golden: Annotated[PathOpt, typer.Option("--golden", help="Score against this golden file instead of "
                                            "--reference.")] = None,
    golden_out: Annotated[PathOpt, typer.Option("--golden-out", help="Write the reference's top-k log-probs "
                                                "here.")] = None,
    topk: Annotated[Optional[int], typer.Option("--topk", help="Tokens per position kept in --golden-out "
                                                "(default 128).")] = None,
    tail_samples: Annotated[Optional[int], typer.Option("--tail-samples", help="Tail tokens sampled per position "
                                                        "in --golden-out (default 64).")] = None,
    gate: Annotated[PathOpt, typer.Option("--gate", help="YAML limits; exit 1 if any fails.")] = None,
    report: Annotated[PathOpt, typer.Option("--report", help="Write a Markdown report here.")] = None,
    plot: Annotated[PathOpt, typer.Option("--plot", help="Write the KLD histogram (PNG) here.")] = None,
    device: DeviceOpt = "cpu",
    json_out: JsonOpt = False,
) -> int:
    """Compare a candidate with a reference (or a golden file): KLD, Δp, top-1 and PPL statistics as
    llama-perplexity --kl-divergence reports them; exit 1 when --gate fails."""
    from mv4deploy.validate.report import write_report
    from mv4deploy.validate.run import ValidateRequest
    from mv4deploy.validate.run import validate as run_validate
    for option, path in (("--report", report), ("--plot", plot)):
        if path is not None and candidate is None:
            raise InputError(None, option, str(path), "needs --candidate")
        if path is not None and not path.resolve().parent.is_dir():
            raise InputError(path, option, None, "its folder does not exist")
    request = ValidateRequest(reference=reference, candidate=candidate, eval_path=eval_path, chunk_tokens=chunk,
                              max_chunks=max_chunks, golden=golden, golden_out=golden_out, gate=gate, device=device,
                              **{k: v for k, v in (("topk", topk), ("tail_samples", tail_samples)) if v is not None})
    result = run_validate(request, progress=lambda text, total: output.progress(text, total, unit_bytes=False))
    data = result.to_json()
    drawn = write_report(data, result.positions.kld, report, plot) if report or plot else None
    data["plot"] = None if drawn is None else str(drawn)   # always present: --json keys are stable
    output.emit_json(data) if json_out else output.validation_table(data)
    if result.gate is not None and not result.gate.passed:
        raise CheckFailed("gate failed: " + "; ".join(c.describe() for c in result.gate.failures))
    return EXIT_OK


@app.command()
def generate(checkpoint: Annotated[str, typer.Argument(help="A checkpoint folder (native DeepSeek or HF layout).")],
             prompt: Annotated[str, typer.Option("--prompt", help="Text to continue.")],
             max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Tokens to generate.")] = 32,
             device: DeviceOpt = "cpu",
             json_out: JsonOpt = False) -> int:
    """Greedy generation from a checkpoint: a smoke check that it loads and continues text."""
    from mv4deploy.runtime.generate import generate_text
    result = generate_text(checkpoint, prompt, max_new_tokens, device)
    output.emit_json(result) if json_out else output.generation(result)
    return EXIT_OK


# ---- mv4deploy run (mv4deploy.execute) -------------------------------------------------------------
@app.command("run")
def run_plan_file(
        checkpoint: Annotated[Path, typer.Argument(help="The checkpoint folder the plan was made for.")],
        plan: Annotated[Path, typer.Option(help="A plan.json from `mv4deploy plan --out` (or --json).")],
        tokens: Annotated[int, typer.Option(help="Decode steps timed, after the warm-up.")] = 32,
        warmup: Annotated[int, typer.Option(help="Decode steps run before timing.")] = 3,
        prompt_tokens: Annotated[Optional[int], typer.Option(help="Prompt length per sequence (default: the "
                                                             "plan's context minus warm-up and tokens).")] = None,
        profile: Annotated[Optional[str], typer.Option(help="The profile the plan was made for, when it is not a "
                                                       "shipped one (checked against the plan's fingerprint).")]
        = None,
        device_map: Annotated[Optional[list[str]], typer.Option(help="TIER=DEVICE, e.g. gpu:0=cpu to run a GPU "
                                                                "plan's split on the CPU (repeatable).")] = None,
        repeats: Annotated[int, typer.Option(help="Trials; the median one is compared.")] = 1,
        threads: Annotated[Optional[int], typer.Option(help="CPU threads (default: as many as the profile's "
                                                       "host figures were probed with).")] = None,
        json_out: JsonOpt = False) -> int:
    """Execute a plan on a checkpoint and print measured memory and tokens/s beside the plan's predictions."""
    from mv4deploy.execute.run import run_checkpoint
    report = run_checkpoint(checkpoint, plan, tokens, warmup, prompt_tokens, profile, device_map, repeats,
                            threads=threads)
    output.emit_json(report) if json_out else output.run_table(report)
    return EXIT_OK


def main(argv: list[str] | None = None) -> None:
    sys.exit(run(list(sys.argv[1:] if argv is None else argv)))


def run(args: list[str]) -> int:
    """Run one command line and return its exit code; user errors become one line on stderr."""
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    command = typer.main.get_command(app)
    try:
        code = command.main(args=args, prog_name="mv4deploy", standalone_mode=False)
    except InputError as exc:
        if debug:
            raise
        output.error(exc.one_line())
        return EXIT_BAD_INPUT
    except CheckFailed as exc:
        output.error(str(exc))
        return EXIT_CHECK_FAILED
    except click_errors.NoArgsIsHelpError as exc:
        output.text(exc.format_message())
        return EXIT_BAD_INPUT
    except click_errors.UsageError as exc:
        output.error(" ".join(exc.format_message().split()))
        return EXIT_BAD_INPUT
    except _EXIT as exc:
        return exc.exit_code
    except (*_ABORT, KeyboardInterrupt):
        output.error("interrupted")
        return 130
    except Exception as exc:  # a bug, not a user mistake
        if debug:
            raise
        output.error(f"internal error ({type(exc).__name__}: {exc}); rerun with --debug for a traceback")
        return EXIT_INTERNAL
    return code if isinstance(code, int) else EXIT_OK

"""The Typer application, its command groups, and the options several commands share (declared once, so a
flag means the same everywhere). Each command lives in the module named after it."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from mv4deploy.core.device import check_device

app = typer.Typer(name="mv4deploy", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  rich_markup_mode=None,
                  help="Plan, quantize, export and validate DeepSeek V4-class models for the hardware you have. "
                       "Add --debug anywhere to see a traceback on errors.")
profile_app = typer.Typer(no_args_is_help=True, help="Hardware profiles: list, show, detect, probe.")
app.add_typer(profile_app, name="profile")
export_app = typer.Typer(no_args_is_help=True, help="Export distillates to ONNX, validated against PyTorch.")
app.add_typer(export_app, name="export")

_MODEL_HELP = "A preset name, a config.json, or a checkpoint folder."
_PROFILE_HELP = "A shipped profile name or a YAML file."
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON with stable keys to stdout.")]
ModelArg = Annotated[str, typer.Argument(help=_MODEL_HELP)]
ModelOpt = Annotated[str, typer.Option("--model", help=_MODEL_HELP)]
ProfileArg = Annotated[str, typer.Argument(help=_PROFILE_HELP)]
ProfileOpt = Annotated[str, typer.Option("--profile", help=_PROFILE_HELP)]
ExpertDtypeOpt = Annotated[Optional[str], typer.Option(
    "--expert-dtype", help="fp4 or fp8: how the routed experts are stored, for a config that does not say.")]
EngineOpt = Annotated[str, typer.Option(help="auto (the best engine the hardware supports), vllm, sglang, ktransformers, "
                                              "llama.cpp, ik_llama.cpp, accelerate, mv4deploy.")]
DeviceOpt = Annotated[str, typer.Option("--device", callback=check_device,
                                        help="auto (CUDA when present), cpu or cuda.")]

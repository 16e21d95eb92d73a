"""``mv4deploy profile list|show|detect|probe``: hardware profiles."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mv4deploy.cli import output, tables
from mv4deploy.cli.app import JsonOpt, ProfileArg, profile_app
from mv4deploy.core.errors import EXIT_OK


@profile_app.command("list")
def profile_list(json_out: JsonOpt = False) -> int:
    """List the shipped hardware profiles."""
    from mv4deploy.hardware.profile import list_profiles
    names = list_profiles()
    output.emit_json(names) if json_out else tables.name_list("hardware profiles", names)
    return EXIT_OK


@profile_app.command("show")
def profile_show(profile: ProfileArg, json_out: JsonOpt = False) -> int:
    """Show a profile with every figure parsed into bytes, bytes/s and FLOP/s."""
    from mv4deploy.hardware.profile import load_profile, profile_to_dict
    data = profile_to_dict(load_profile(profile))
    output.emit_json(data) if json_out else tables.profile_table(data)
    return EXIT_OK


@profile_app.command("detect")
def profile_detect(out: Annotated[Optional[Path], typer.Option("--out", help="Write the YAML here.")] = None,
                   name: Annotated[str, typer.Option(help="Profile name.")] = "this-machine") -> int:
    """Describe this machine as a profile (psutil, /proc/cpuinfo, torch.cuda or nvidia-smi when present);
    figures it cannot read are written as 'unknown', never invented."""
    from mv4deploy.hardware.detect import detect_profile_yaml
    text = detect_profile_yaml(name)
    return _write_yaml(text, out)


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
    text = probe_profile_yaml(name, base, storage_dir, size, threads)
    return _write_yaml(text, out)


def _write_yaml(text: str, out: Path | None) -> int:
    """A profile YAML to stdout, or to ``out`` (temp then rename)."""
    if out is None:
        output.text(text)
        return EXIT_OK
    from mv4deploy.core.fileio import write_text_atomic
    write_text_atomic(out, text)
    output.info(f"wrote {out}")
    return EXIT_OK

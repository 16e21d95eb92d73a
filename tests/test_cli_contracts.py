"""Rules every command shares: one --device rule, one --workers default, one progress-bar rule, stable
--json keys (inspect's formats list every stored-format slot)."""

from __future__ import annotations

import inspect
import io
import os
import sys

import pytest
import yaml

from conftest import run_cli
from mv4deploy.cli import output
from mv4deploy.core.device import DEVICES, check_device, resolve_device
from mv4deploy.core.errors import InputError
from mv4deploy.quant.run import AUTO_WORKERS, _workers, quantize_checkpoint, run_quantize


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_drawn_only_on_a_terminal(monkeypatch):
    piped = io.StringIO()
    monkeypatch.setattr(sys, "stderr", piped)
    with output.progress("scoring chunks", 3, unit_bytes=False) as advance:
        advance(3)
    assert piped.getvalue() == ""
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with output.progress("scoring chunks", 3, unit_bytes=False) as advance:
        advance(3)
    assert "scoring chunks" in terminal.getvalue() and "3/3" in terminal.getvalue()


def test_text_goes_to_stdout_with_one_final_newline(capsys):
    output.text("name: x\n")
    output.text("usage")
    captured = capsys.readouterr()
    assert captured.out == "name: x\nusage\n" and captured.err == ""


def test_profile_detect_prints_a_yaml_profile_on_stdout():
    result = run_cli("profile", "detect", "--name", "here")
    assert result.code == 0, result.stderr
    assert yaml.safe_load(result.stdout)["name"] == "here"


def test_one_device_rule():
    assert DEVICES == ("auto", "cpu", "cuda")
    assert [check_device(d) for d in DEVICES] == list(DEVICES) and resolve_device("cpu") == "cpu"
    with pytest.raises(InputError, match="--device: 'gpu': must be one of auto, cpu, cuda"):
        check_device("gpu")


def test_workers_default_is_the_same_in_the_cli_and_the_library():
    for function in (run_quantize, quantize_checkpoint):
        assert inspect.signature(function).parameters["workers"].default == AUTO_WORKERS == 0
    assert _workers(0) == max(1, min(4, os.cpu_count() or 1)) and _workers(3) == 3
    with pytest.raises(InputError, match="--workers"):
        _workers(-1)


@pytest.mark.parametrize("preset,norm", [("deepseek-v3.2", "f32"), ("tiny-deepseek-v4", "bf16")])
def test_inspect_formats_list_every_slot(preset, norm):
    result = run_cli("inspect", preset, "--json")
    assert result.code == 0, result.stderr
    formats = result.json()["formats"]
    assert set(formats) == {"linear", "expert", "engram_table", "plain", "norm"} and formats["norm"] == norm

"""Fault injection: the disk fills up (ENOSPC) or turns read-only (EROFS) at each kind of write a quantize or
an export makes; the run exits 2 with one line naming a path, leaves no ``*.tmp``, lock or partial folder
it cannot use, and a clean re-run of the same command completes (quantize: byte-identical to a run that
never failed).

The faults are simulated in-process by wrapping the os calls every write goes through (``os.open`` with
O_CREAT, ``pwrite``, ``ftruncate``, ``fsync``, ``replace``, ``mkdir``): the Nth call raises.
"""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest

from conftest import REPO
from inproc import one_line_error, run_inproc, tree
from quant_synth import make_checkpoint, preset_config

WRAPPED = ("open", "pwrite", "ftruncate", "fsync", "replace", "mkdir")
_CREATE = os.O_CREAT


class Faults:
    """Count the write-side os calls; raise ``OSError(code)`` on call number ``fail_at`` (1-based)."""

    def __init__(self, monkeypatch, code: int | None = None, fail_at: int | None = None):
        self.calls, self.code, self.fail_at, self.lock = 0, code, fail_at, threading.Lock()
        for name in WRAPPED:
            monkeypatch.setattr(os, name, self._wrap(name, getattr(os, name)))

    def _wrap(self, name, real):
        def call(*args, **kwargs):
            if name == "open" and not (len(args) > 1 and args[1] & _CREATE):
                return real(*args, **kwargs)          # reads are never refused
            with self.lock:
                self.calls += 1
                hit = self.calls == self.fail_at
            if hit:
                target = args[0] if isinstance(args[0], (str, os.PathLike)) else None
                raise OSError(self.code, os.strerror(self.code), *([os.fspath(target)] if target else []))
            return real(*args, **kwargs)
        return call


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("faults") / "src", preset_config("tiny-deepseek-v4"), shards=2)


@pytest.fixture(scope="module")
def clean(src, tmp_path_factory):
    """A run that never failed, and how many write calls it made."""
    out = tmp_path_factory.mktemp("clean") / "out"
    mp = pytest.MonkeyPatch()
    faults = Faults(mp)
    try:
        assert run_inproc("quantize", src, out, "--recipe", "fp8", "--workers", "1").code == 0
    finally:
        mp.undo()
    return tree(out), faults.calls


def _leftovers(out: Path) -> list[str]:
    return [str(p.relative_to(out)) for p in out.rglob("*") if p.name.endswith(".tmp") or p.name == ".mv4deploy.lock"] \
        if out.exists() else []


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
@pytest.mark.parametrize("where", [1, 2, 3, 4, 5, 0.1, 0.35, 0.6, 0.8, 0.9, 0.97, 0.99, 1.0])
def test_quantize_fault_then_clean_rerun(src, clean, tmp_path, monkeypatch, code, where):
    reference, total = clean
    fail_at = where if isinstance(where, int) else max(1, round(where * total))   # ints: the first calls (lock)
    out = tmp_path / "out"
    with monkeypatch.context() as mp:
        Faults(mp, code, fail_at)
        result = run_inproc("quantize", src, out, "--recipe", "fp8", "--workers", "1")
    line = one_line_error(result, "cannot write", os.strerror(code))
    assert str(out) in line                                  # names the path (OUT or a file in it)
    assert _leftovers(out) == []
    if out.exists() and (out / ".mv4deploy-partial").exists():
        assert "re-run the same command" in line
    rerun = run_inproc("quantize", src, out, "--recipe", "fp8", "--workers", "1")
    assert rerun.code == 0, rerun.stderr
    assert tree(out) == reference


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_export_fault_leaves_nothing_then_clean_rerun_gets_past_it(tmp_path, monkeypatch, code):
    """The export writes into a hidden folder beside OUT: a fault there (first write) is one line naming it,
    and neither that folder nor OUT is left behind. The re-run (no fault) then gets as far as the build,
    which a stub stands in for here (the real build is test_export.py's business)."""
    import mv4deploy.export.run as pipeline
    model = REPO / "tests" / "fixtures" / "models" / "tiny-qwen2"
    out = tmp_path / "out"
    with monkeypatch.context() as mp:
        Faults(mp, code, 1)
        result = run_inproc("export", "onnx", model, out, "--target", "cpu-fp32")
    one_line_error(result, "cannot write", os.strerror(code), str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == []

    def disk_fills_during_build(source, target, work, *rest):
        (work / "out" / "model.onnx").write_bytes(b"\0" * 1024)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(work / "out" / "model.onnx.data"))
    monkeypatch.setattr(pipeline, "_build_and_verify", disk_fills_during_build)
    result = run_inproc("export", "onnx", model, out, "--target", "cpu-fp32")
    one_line_error(result, "cannot write", "model.onnx.data")
    assert sorted(p.name for p in tmp_path.iterdir()) == []

    reached = []
    monkeypatch.setattr(pipeline, "_build_and_verify", lambda *a: reached.append(a) or (_ for _ in ()).throw(
        KeyboardInterrupt()))
    assert run_inproc("export", "onnx", model, out, "--target", "cpu-fp32").code == 130
    assert len(reached) == 1 and sorted(p.name for p in tmp_path.iterdir()) == []

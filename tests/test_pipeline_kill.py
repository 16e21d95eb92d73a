"""Kill ``mv4deploy quantize`` with SIGKILL at random points (at least 10 times), re-run, and
require the final output to be byte-identical to an uninterrupted run. After every kill, no file
that looks complete (anything but ``*.tmp``) may hold partial or wrong data."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import REPO, run_cli
from quant_synth import make_checkpoint, scaled_v4_config

KILLS = 10
RECIPE = "int4-experts"
STAGING = ".mv4deploy-partial"


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _start(src: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mv4deploy", "quantize", str(src), str(out), "--recipe", RECIPE],
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _assert_nothing_partial(out: Path, ref: dict[str, bytes]) -> None:
    """Every non-.tmp file is either identical to the reference file of the same name, or the
    journal, whose entries must match the shards they name (or the lock file a killed run leaves: the
    kernel released its flock, and the next run takes it over)."""
    for rel, data in _files(out).items():
        name = Path(rel).name
        if name.endswith(".tmp") or name == ".mv4deploy.lock":
            continue
        if name == "journal.json":
            done = json.loads(data)["done"]
            for shard, entry in done.items():
                import hashlib
                staged = out / STAGING / shard
                shard_bytes = staged.read_bytes() if staged.is_file() else (out / shard).read_bytes()
                assert hashlib.sha256(shard_bytes).hexdigest() == entry["sha256"], shard
            continue
        assert name in ref, f"unexpected file {rel}"
        assert data == ref[name], f"{rel} looks complete but differs from the uninterrupted run"


def _kill_at_random_point(proc: subprocess.Popen, out: Path, rng: random.Random, window_s: float) -> bool:
    """Wait until this process has started writing a shard (its ``*.PID.tmp`` appears) or exited,
    sleep a random part of the processing window, SIGKILL. True if it was still running then."""
    deadline = time.monotonic() + 120
    while (proc.poll() is None and time.monotonic() < deadline
           and not any((out / STAGING).glob(f"*.{proc.pid}.tmp"))):
        time.sleep(0.01)
    time.sleep(rng.uniform(0, window_s))
    alive = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return alive


def _processing_window_s(src: Path, out: Path) -> float:
    """Run uninterrupted; seconds from the first shard write to exit (kills are drawn in there)."""
    proc = _start(src, out)
    while proc.poll() is None and not any((out / STAGING).glob(f"*.{proc.pid}.tmp")):
        time.sleep(0.01)
    started = time.monotonic()
    assert proc.wait() == 0
    return max(0.2, time.monotonic() - started)


def test_sigkill_at_random_points_then_resume_is_byte_identical(tmp_path):
    src = make_checkpoint(tmp_path / "src", scaled_v4_config(), shards=6)
    ref_dir = tmp_path / "ref"
    window_s = _processing_window_s(src, ref_dir)
    ref = {Path(rel).name: data for rel, data in _files(ref_dir).items()}
    rng, kills, outs = random.Random(20261123), 0, []
    while kills < KILLS:
        out = tmp_path / f"out{len(outs)}"
        outs.append(out)
        for _ in range(4):                              # up to 4 interruptions of the same output
            kills += _kill_at_random_point(_start(src, out), out, rng, window_s)
            _assert_nothing_partial(out, ref)
            if (out / "model.safetensors.index.json").exists() or kills >= KILLS:
                break
    assert kills >= KILLS
    for out in outs:
        result = run_cli("quantize", src, out, "--recipe", RECIPE)
        assert result.code == 0, result.stderr
        got = _files(out)
        assert got.keys() == _files(ref_dir).keys()
        assert all(got[k] == v for k, v in _files(ref_dir).items()), out

"""``quantize --part I/N`` (a Slurm array) and ``--finalize``: parts + finalize give the one-process run's
bytes, a killed part resumes, bad parts and missing parts are one line with exit 2, and neither path
needs Ray."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO
from inproc import one_line_error, run_inproc
from mv4deploy.core.errors import InputError
from mv4deploy.quant.recipe import get_recipe
from mv4deploy.quant.run import quantize_checkpoint
from quant_synth import make_checkpoint, preset_config, scaled_v4_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")
RECIPE = "int4-experts"
STAGING = ".mv4deploy-partial"


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("parts") / "src", preset_config("tiny-deepseek-v4"), shards=4)


@pytest.fixture(scope="module")
def reference(src, tmp_path_factory):
    out = tmp_path_factory.mktemp("parts-ref") / "out"
    quantize_checkpoint(src, out, get_recipe(RECIPE))
    return files(out)


def test_parts_then_finalize_is_byte_identical_to_one_process(src, reference, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)   # `import ray` fails: neither path may need it
    out = tmp_path / "out"
    first = run_inproc("quantize", src, out, "--recipe", RECIPE, "--part", "2/2", "--json")
    assert first.code == 0, first.stderr
    assert first.json()["shards"] == 2 and first.json()["finalized"] is False
    assert not (out / "config.json").exists() and not (out / "model.safetensors.index.json").exists()
    staged = sorted(p.name for p in (out / STAGING).glob("model-*.safetensors"))
    assert len(staged) == 2 and not any(p.suffix == ".safetensors" for p in out.iterdir())
    assert run_inproc("quantize", src, out, "--recipe", RECIPE, "--part", "1/2").code == 0
    assert run_inproc("quantize", src, out, "--recipe", RECIPE, "--finalize").code == 0
    assert files(out) == reference
    assert run_inproc("verify", out).code == 0


def test_shards_split_by_size_deterministically(src):
    from mv4deploy.quant.job import plan_job
    from mv4deploy.quant.parts import owners
    job = plan_job(src, src.parent / "unused", get_recipe(RECIPE))
    sizes = {s.file: s.source_bytes for s in job.shards}
    split = owners(job.shards, 2)
    # 4 shards: 1,111,xxx B (the embedding's) first to part 1, then each to the lighter part
    assert split == owners(job.shards, 2) and set(split.values()) == {1, 2}
    load = [sum(sizes[f] for f, p in split.items() if p == i) for i in (1, 2)]
    assert abs(load[0] - load[1]) <= max(sizes.values())
    assert set(owners(job.shards, 8).values()) == {1, 2, 3, 4}   # more parts than shards: some get none


@pytest.mark.parametrize("value", ["0/2", "3/2", "x/y", "1/0", "1"])
def test_bad_part_is_one_line_exit_2(src, tmp_path, value):
    line = one_line_error(run_inproc("quantize", src, tmp_path / "out", "--recipe", RECIPE, "--part", value),
                          "--part", value)
    assert "I/N" in line and not (tmp_path / "out").exists()


def test_finalize_names_the_missing_part(src, tmp_path):
    out = tmp_path / "out"
    assert run_inproc("quantize", src, out, "--recipe", RECIPE, "--part", "1/2").code == 0
    before = {k: v for k, v in files(out).items() if k != ".mv4deploy.lock"}   # the parts' (a finalize removes it)
    one_line_error(run_inproc("quantize", src, out, "--recipe", RECIPE, "--finalize"), "part 2/2 not finished",
                   "2 of 4 shards missing")
    assert files(out) == before   # nothing written, no staged shard removed


def test_part_with_ray_or_calib_is_refused(src, tmp_path):
    one_line_error(run_inproc("quantize", src, tmp_path / "o", "--recipe", RECIPE, "--part", "1/2", "--finalize"),
                   "--part/--finalize", "at most one")
    calib = tmp_path / "c.txt"
    calib.write_text("text")
    one_line_error(run_inproc("quantize", src, tmp_path / "o", "--recipe", RECIPE, "--part", "1/2", "--calib",
                              calib), "--calib")


def test_ray_flag_without_ray_says_how_to_install(src, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    one_line_error(run_inproc("quantize", src, tmp_path / "out", "--recipe", RECIPE, "--ray", "local"),
                   "--ray", "pip install 'mv4deploy[ray]'")
    assert not (tmp_path / "out").exists()


def test_parts_share_out_and_a_whole_run_is_refused_meanwhile(tmp_path):
    from mv4deploy.core.outdir import claim_out, hold_lock
    out = tmp_path / "out"
    with claim_out(out, shared=True), claim_out(out, shared=True):
        (out / STAGING).mkdir()
        with hold_lock(out / STAGING / "part-1-of-2.lock", out):
            with pytest.raises(InputError, match="part-1-of-2.lock"):
                with hold_lock(out / STAGING / "part-1-of-2.lock", out):
                    pass
        with pytest.raises(InputError, match=r"another mv4deploy run \(--part runs\)"):
            with claim_out(out):
                pass
    with claim_out(out):   # the parts are gone: an exclusive run may take OUT
        with pytest.raises(InputError, match=f"pid {os.getpid()}"):
            with claim_out(out, shared=True):
                pass


def test_a_killed_part_resumes_and_the_result_is_byte_identical(tmp_path):
    src = make_checkpoint(tmp_path / "src", scaled_v4_config(), shards=4)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for attempt in range(5):               # the poll can miss a shard's short-lived temporary file: try again
        out = tmp_path / f"out{attempt}"
        command = [sys.executable, "-m", "mv4deploy", "quantize", str(src), str(out), "--recipe", RECIPE]
        proc = subprocess.Popen(command + ["--part", "1/2"], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline and \
                not any((out / STAGING).glob(f"*.{proc.pid}.tmp")):
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)   # mid-shard: its temporary file exists
        proc.wait()
        if any((out / STAGING).glob(f"*.{proc.pid}.tmp")):
            break
    assert any((out / STAGING).glob(f"*.{proc.pid}.tmp")), "the part finished before it could be killed, 5 times"
    assert not (out / "config.json").exists()
    assert run_inproc("quantize", src, out, "--recipe", RECIPE, "--part", "2/2").code == 0
    one_line_error(run_inproc("quantize", src, out, "--recipe", RECIPE, "--finalize"), "part 1/2 not finished")
    resumed = run_inproc("quantize", src, out, "--recipe", RECIPE, "--part", "1/2", "--json")
    assert resumed.code == 0, resumed.stderr
    assert run_inproc("quantize", src, out, "--recipe", RECIPE, "--finalize").code == 0
    ref = tmp_path / "ref"
    quantize_checkpoint(src, ref, get_recipe(RECIPE))
    assert files(out) == files(ref)

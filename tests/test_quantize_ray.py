"""``quantize --ray``: shards as Ray tasks on one local Ray instance (started once for the module, 2 CPUs) give
the one-process run's bytes, and a task that raises leaves its finished siblings journalled so the re-run
resumes them (and still gives the one-process bytes)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from conftest import REPO
from mv4deploy.core.errors import InputError
from mv4deploy.quant.recipe import get_recipe
from mv4deploy.quant.run import quantize_checkpoint
from quant_synth import make_checkpoint, preset_config

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.usefixtures("one_torch_thread")
RECIPE = "int4-experts"
BAD = "layers.1.ffn.experts.3.w1.weight"   # planted NaNs: its shard's task raises


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance for the module; its workers import this checkout."""
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(REPO) + (os.pathsep + old if old else "")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ("ray", "local")   # quantize_checkpoint's scale: the address is not used while this one is up
    ray.shutdown()
    if old is None:
        os.environ.pop("PYTHONPATH")
    else:
        os.environ["PYTHONPATH"] = old


def _plant_nan(name, tensor):
    if name == BAD:
        tensor = tensor.clone()
        tensor[0, 0] = float("nan")
    return tensor


def test_ray_output_is_byte_identical_to_one_process(local_ray, tmp_path):
    src = make_checkpoint(tmp_path / "src", preset_config("tiny-deepseek-v4"), shards=4)
    quantize_checkpoint(src, tmp_path / "one", get_recipe(RECIPE))
    summary = quantize_checkpoint(src, tmp_path / "ray", get_recipe(RECIPE), scale=local_ray)
    assert summary["shards"] == 4 and summary["resumed_shards"] == 0
    assert files(tmp_path / "ray") == files(tmp_path / "one")


def test_a_task_that_raises_is_resumed_by_the_rerun(local_ray, tmp_path):
    src = make_checkpoint(tmp_path / "src", preset_config("tiny-deepseek-v4"), shards=4, edit=_plant_nan)
    out = tmp_path / "ray"
    with pytest.raises(InputError, match=re.escape(f"{BAD}: '1 of 8192 values': are NaN")):
        quantize_checkpoint(src, out, get_recipe(RECIPE), scale=local_ray)
    staged = sorted(p.name for p in (out / ".mv4deploy-partial").glob("model-*.safetensors"))
    assert len(staged) == 3 and not (out / "config.json").exists()   # the other three tasks finished
    summary = quantize_checkpoint(src, out, get_recipe(RECIPE), scale=local_ray, allow_nonfinite=True)
    assert summary["resumed_shards"] == 3
    quantize_checkpoint(src, tmp_path / "one", get_recipe(RECIPE), allow_nonfinite=True)
    assert files(out) == files(tmp_path / "one")


def test_cli_ray_address_of_a_running_cluster(local_ray, tmp_path, cli):
    src = make_checkpoint(tmp_path / "src", preset_config("tiny-deepseek-v4"), shards=2)
    address = ray.get_runtime_context().gcs_address
    result = cli("quantize", src, tmp_path / "out", "--recipe", RECIPE, "--ray", address, "--json")
    assert result.code == 0, result.stderr[-2000:]
    assert result.json()["shards"] == 2


def test_an_address_nobody_listens_on_is_one_line_at_once():
    from mv4deploy.quant.cluster import _check_reachable
    with pytest.raises(InputError, match=r"--ray: '127.0.0.1:1': cannot connect to a Ray cluster"):
        _check_reachable("127.0.0.1:1")
    _check_reachable("auto")   # no HOST:PORT: ray.init decides


def test_a_task_hashes_its_source_in_line(tmp_path, monkeypatch):
    """A Ray task holds exactly ``options.workers`` CPUs: it starts no thread of its own to hash the source shard
    (one would take a core from the task beside it: docs/quantization.md, "Spread over a Ray cluster")."""
    import hashlib

    from mv4deploy.quant import cluster, pipeline
    from mv4deploy.quant.job import STAGING, plan_job

    src = make_checkpoint(tmp_path / "src", preset_config("tiny-deepseek-v4"), shards=2)
    job = plan_job(src, tmp_path / "out", get_recipe(RECIPE), {})
    (job.out / STAGING).mkdir(parents=True)
    shard = job.shards[0]

    def no_threads(*args, **kwargs):
        raise AssertionError("a task started a thread pool")
    monkeypatch.setattr(pipeline, "ThreadPoolExecutor", no_threads)
    entry = cluster.quantize_shard(job, shard.file, pipeline.Options(), "cpu")
    assert entry["source_sha256"] == hashlib.sha256((src / shard.file).read_bytes()).hexdigest()
    with pytest.raises(AssertionError, match="thread pool"):      # the one-process path does hash aside
        pipeline.process_shard(job, shard, job.out / STAGING, pipeline.Options())

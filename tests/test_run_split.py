"""Split execution gives the unsplit model's logits (CPU-only: ``gpu:0`` is mapped to the CPU, so every
cross-tier path runs: experts on the "host" side, streamed modules, Engram tables apart, a host CSA pool).

Each case edits a real plan of the trained fixture (tiny-v4 / tiny-v41 planned for a small GPU) to put
groups where the case needs them, then runs a chunked prefill and teacher-forced decode steps through the
placed model and through the model as loaded, in float32, and compares every step's logits. The counters
of what crossed tiers show the machinery did run (a case that silently ran everything in place would fail).
"""

from __future__ import annotations

import copy
import json

import pytest

torch = pytest.importorskip("torch")

from mv4deploy.runtime.apply import apply_placement, default_devices  # noqa: E402
from mv4deploy.runtime.placement import resolve_placement  # noqa: E402
from mv4deploy.runtime.planfile import read_plan  # noqa: E402
from mv4deploy.hardware.profile import parse_profile  # noqa: E402
from mv4deploy.model.source import resolve_model  # noqa: E402
from mv4deploy.plan.make import make_plan  # noqa: E402
from mv4deploy.plan.groups import build_groups  # noqa: E402
from mv4deploy.plan.workload import make_workload  # noqa: E402
from mv4deploy.runtime.loader import load_model  # noqa: E402

from tests.conftest import REPO  # noqa: E402

FIXTURES = REPO / "tests" / "fixtures" / "models"
SMALL_GPU = {  # everything fits on it: each case moves groups off it by hand
    "name": "small-gpu", "gpus": {"model": "test", "count": 1, "memory": "64MiB", "usable_fraction": 1.0,
                                  "bandwidth": "1000GB/s", "compute": {"bf16": "100TFLOPS"},
                                  "native_formats": ["bf16"], "runtime_reserve": "0B"},
    "host": {"memory": "8GiB", "bandwidth": "50GB/s", "cores": 8, "isa": ["avx512_bf16"],
             "compute": {"fp32": "1TFLOPS", "bf16": "2TFLOPS"}, "reserve": "0B"},
    "host_link": {"bandwidth": "25GB/s"},
}
CONTEXT, CHUNK, PROMPT, STEPS = 96, 32, 64, 12     # 64 + 12 tokens: up to 19 CSA entries, top-8 selected
TOPK, RATIO = 8, 4


def _plan(name: str) -> dict:
    model = resolve_model(str(FIXTURES / name))
    plan = make_plan(model, parse_profile(SMALL_GPU, "test"), make_workload(context=CONTEXT, prefill_chunk=CHUNK),
                     suggest=False)
    data = plan.to_json()
    assert all(g["tier"] == "gpu:0" for g in data["groups"])
    return data


@pytest.fixture(scope="module")
def plans():
    return {name: _plan(name) for name in ("tiny-v4", "tiny-v41")}


def _move(plan: dict, role: str, tier: str, decode: str, prefill: str, layers=None) -> None:
    for g in plan["groups"]:
        if g["role"] == role and (layers is None or g["layer"] in layers):
            g["tier"], g["execution"] = tier, {"decode": decode, "prefill": prefill}


def _cut(plan: dict, layer: int, at: int, decode: str, prefill: str) -> None:
    """Layer ``layer``'s experts [0, at) stay on the GPU, [at, 8) go to host RAM."""
    index = next(i for i, g in enumerate(plan["groups"]) if g["role"] == "routed_experts" and g["layer"] == layer)
    row = plan["groups"][index]
    gpu = {**row, "name": f"{row['name']}[0:{at}]", "experts": [0, at]}
    host = {**row, "name": f"{row['name']}[{at}:8]", "experts": [at, 8], "tier": "host",
            "execution": {"decode": decode, "prefill": prefill}}
    plan["groups"][index:index + 1] = [gpu, host]


def experts_on_host(plan):
    _cut(plan, 0, 3, "cpu", "cpu")
    _move(plan, "routed_experts", "host", "cpu", "stream", layers={1, 3})
    _move(plan, "routed_experts", "host", "stream", "stream", layers={2})


def modules_on_host(plan):
    _move(plan, "embedding", "host", "cpu", "cpu")
    _move(plan, "head", "host", "cpu", "stream")
    _move(plan, "shared_expert", "host", "cpu", "cpu", layers={1})
    for role in ("attention", "norms_mhc", "router", "hash_router", "compressor", "indexer"):
        _move(plan, role, "host", "stream", "stream", layers={0, 1, 3})


def csa_on_host(plan):
    for pool in plan["kv_cache"]["pools"]:
        if pool["name"] == "csa_entries":
            pool["tier"] = "host"


def engram_on_host(plan):
    _move(plan, "engram_table", "host", "lookup", "lookup")


def everything(plan):
    for edit in (experts_on_host, modules_on_host, csa_on_host, engram_on_host):
        edit(plan)


CASES = [("tiny-v4", experts_on_host), ("tiny-v4", modules_on_host), ("tiny-v4", csa_on_host),
         ("tiny-v41", engram_on_host), ("tiny-v41", everything)]


def _tokens(vocab: int) -> torch.Tensor:
    return torch.randint(3, vocab, (1, PROMPT + STEPS), generator=torch.Generator().manual_seed(7))


def _steps(model, make_cache, state, tokens: torch.Tensor) -> list[torch.Tensor]:
    """Logits of the last prompt position and of each teacher-forced decode step."""
    from transformers import DynamicCache
    engram = hasattr(model.model, "engram_cfg")
    cache = make_cache() if make_cache else DynamicCache(config=model.config)
    out = []
    with torch.inference_mode():
        for phase, spans in (("prefill", [(b, b + CHUNK) for b in range(0, PROMPT, CHUNK)]),
                             ("decode", [(p, p + 1) for p in range(PROMPT, PROMPT + STEPS)])):
            if state is not None:
                state.phase = phase
            for begin, end in spans:
                extra = {"engram_input_ids": tokens[:, :end]} if engram else {}
                logits = model(tokens[:, begin:end], past_key_values=cache, use_cache=True, **extra).logits
                if phase == "decode" or end == PROMPT:
                    out.append(logits[:, -1].clone())
    return out


def _placed(name: str, plan: dict, tmp_path):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    plan_file = read_plan(path)
    resolved = resolve_model(str(FIXTURES / name))
    placement = resolve_placement(plan_file, resolved.inventory, build_groups(resolved.inventory))
    model = load_model(FIXTURES / name, dtype=torch.float32)
    return apply_placement(model, placement, default_devices(plan_file.gpu_tiers, {"gpu:0": "cpu"}))


@pytest.fixture(scope="module")
def reference():
    out = {}
    for name in ("tiny-v4", "tiny-v41"):
        model = load_model(FIXTURES / name, dtype=torch.float32)
        out[name] = _steps(model, None, None, _tokens(model.config.vocab_size))
    return out


@pytest.mark.parametrize("name, edit", CASES, ids=[f"{n}-{e.__name__}" for n, e in CASES])
def test_split_execution_gives_the_unsplit_logits(name, edit, plans, reference, tmp_path):
    plan = copy.deepcopy(plans[name])
    edit(plan)
    executor = _placed(name, plan, tmp_path)
    got = _steps(executor.model, executor.make_cache, executor.state, _tokens(executor.model.config.vocab_size))
    for step, (a, b) in enumerate(zip(got, reference[name])):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=f"step {step}")
    counters = executor.state.counters
    if edit in (experts_on_host, everything):
        assert counters["host_expert_calls"] > 0 and counters["streamed_bytes"] > 0
    if edit in (modules_on_host, everything):
        assert counters["host_module_calls"] >= PROMPT // CHUNK + STEPS     # the embedding, at least
    if edit in (csa_on_host, everything):
        _check_kv_fetches(counters, executor.placement)
    if edit in (engram_on_host, everything):
        assert all(layer.engram.embed.host_resident for layer in executor.model.model.layers if layer.engram)


def _check_kv_fetches(counters, placement) -> None:
    """Decode at position p (p + 1 tokens seen) selects min(top-k, (p + 1) // 4) entries per CSA layer; the
    prefill chunks fetch every entry so far (entries of 32 / 64 tokens: 8 then 16 entries, 64 B each)."""
    layers = len(placement.host_topk_pools)
    assert layers == 2                                          # tiny: layers 1 and 3 are CSA
    selected = sum(min(TOPK, (p + 1) // RATIO) for p in range(PROMPT, PROMPT + STEPS))
    assert counters["kv_fetched_entries"] == layers * selected
    head_dim = 64
    assert counters["kv_prefill_fetched_bytes"] == layers * (8 + 16) * head_dim * 4    # float32 entries


def test_experts_are_split_as_the_rows_say(plans, tmp_path):
    plan = copy.deepcopy(plans["tiny-v4"])
    experts_on_host(plan)
    experts = _placed("tiny-v4", plan, tmp_path).model.model.layers[0].mlp.experts
    assert [(p.experts, p.placement.where.tier) for p in experts.parts] == [((0, 1, 2), "gpu:0"),
                                                                            ((3, 4, 5, 6, 7), "host")]


@pytest.mark.parametrize("name", ["tiny-v4", "tiny-v41"])
def test_loaded_weights_do_not_map_the_shards(name):
    """A tensor aliasing a memory-mapped shard (raw tid2eid, float32-as-stored mHC, an Engram table on the
    CPU) keeps the whole file mapped and every page read counted in RSS: the loader must own its tensors."""
    model = load_model(FIXTURES / name, dtype=torch.bfloat16)
    loaded = model.state_dict()                                 # what came from the shards
    assert [name for name, t in loaded.items() if not t.untyped_storage().resizable()] == []


@pytest.mark.gpu
@pytest.mark.parametrize("name, edit", [("tiny-v4", everything), ("tiny-v41", everything)])
def test_split_across_cuda_and_host_gives_the_cpu_logits(name, edit, plans, reference, tmp_path):
    """The real thing: gpu:0 is CUDA, host RAM is pinned, experts stream on a side stream, CSA entries and
    Engram rows cross PCIe. Same logits as the unsplit model on the CPU (float32; TF32 off)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    plan = copy.deepcopy(plans[name])
    edit(plan)
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    plan_file = read_plan(path)
    resolved = resolve_model(str(FIXTURES / name))
    placement = resolve_placement(plan_file, resolved.inventory, build_groups(resolved.inventory))
    executor = apply_placement(load_model(FIXTURES / name, dtype=torch.float32), placement,
                               default_devices(plan_file.gpu_tiers))
    tokens = _tokens(executor.model.config.vocab_size).to("cuda")
    got = _steps(executor.model, executor.make_cache, executor.state, tokens)
    for step, (a, b) in enumerate(zip(got, reference[name])):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-3, atol=1e-3, msg=f"step {step}")
    assert executor.state.counters["streamed_bytes"] > 0 and executor.state.counters["kv_fetched_entries"] > 0


def test_experts_all_on_the_layers_gpu_move_there(plans, tmp_path, monkeypatch):
    """A layer whose experts all sit on the GPU that runs it keeps transformers' module and must move it to
    that GPU (not leave it where it was loaded). On the CPU both devices are the CPU, so the moves are
    recorded: layers 0, 1, 3 (all on gpu:0) move to gpu:0's device; layer 2 (on the host) is wrapped."""
    plan = copy.deepcopy(plans["tiny-v4"])
    _move(plan, "routed_experts", "host", "cpu", "cpu", layers={2})
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    plan_file = read_plan(path)
    resolved = resolve_model(str(FIXTURES / "tiny-v4"))
    placement = resolve_placement(plan_file, resolved.inventory, build_groups(resolved.inventory))
    model = load_model(FIXTURES / "tiny-v4", dtype=torch.float32)
    experts_type, moved = type(model.model.layers[0].mlp.experts), []
    original_to = experts_type.to
    monkeypatch.setattr(experts_type, "to", lambda self, *a, **k: moved.append((self, a)) or original_to(self, *a, **k))
    gpu = torch.device("cpu")
    executor = apply_placement(model, placement, {"gpu:0": gpu, "host": torch.device("cpu"),
                                                  "nvme": torch.device("cpu")})
    layers = executor.model.model.layers
    originals = [layer.mlp.experts for layer in layers]
    assert [(originals.index(module), args) for module, args in moved] == [(0, (gpu,)), (1, (gpu,)), (3, (gpu,))]
    assert type(layers[2].mlp.experts).__name__ == "PlacedExperts"

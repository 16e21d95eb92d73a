"""The V4.1-style model: Engram tables placed apart from the model, decoding with a cache, the fixture."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")

from mv4deploy.runtime.hf_config import v4_config  # noqa: E402
from mv4deploy.runtime.model_v41 import DeepseekV41ForCausalLM, place_engram_tables  # noqa: E402

from tests.conftest import REPO  # noqa: E402

TINY = {"vocab_size": 64, "hidden_size": 32, "moe_intermediate_size": 16, "num_hidden_layers": 3,
        "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32, "qk_rope_head_dim": 8,
        "q_lora_rank": 16, "o_groups": 2, "o_lora_rank": 8, "n_routed_experts": 4, "n_shared_experts": 1,
        "num_experts_per_tok": 2, "num_hash_layers": 1, "compress_ratios": [0, 4, 0], "sliding_window": 8,
        "index_n_heads": 2, "index_head_dim": 16, "index_topk": 4, "hc_mult": 2, "num_nextn_predict_layers": 0,
        "engram_layer_ids": [0, 2], "engram_max_ngram_size": 3, "engram_n_heads": 2, "engram_head_dim": 8,
        "engram_vocab_size": 53, "engram_pad_token_id": 2, "engram_compressed_vocab_size": 40}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = DeepseekV41ForCausalLM(v4_config(TINY, "test")).eval()
    gen = torch.Generator().manual_seed(1)
    for layer in m.model.layers:
        gate = layer.mlp.gate
        if hasattr(gate, "tid2eid"):
            gate.tid2eid.copy_(torch.rand(64, 4, generator=gen).argsort(-1)[:, :2])
        if layer.engram is not None:           # make the Engram contribution large enough to matter
            torch.nn.init.normal_(layer.engram.embed.weight, std=1.0)
    m.set_token_map([i % 40 for i in range(64)])
    return m


def ids(length: int = 21) -> torch.Tensor:
    return torch.randint(3, 64, (2, length), generator=torch.Generator().manual_seed(2))


def test_engram_changes_the_output(model):
    with torch.no_grad():
        base = model(input_ids=ids()).logits
        off = copy.deepcopy(model)
        for layer in off.model.layers:
            if layer.engram is not None:
                layer.engram.wkv.weight.zero_()      # value 0 -> Engram adds nothing
        assert not torch.allclose(base, off(input_ids=ids()).logits)


def test_host_resident_table_gives_identical_logits(model):
    """CPU-only CI: the table kept apart from the model (host-resident, gathered before the layers and
    handed over) vs inside the model's own tree. Moving the model leaves a host-resident table put."""
    apart = copy.deepcopy(model)
    place_engram_tables(apart, "cpu")
    table = apart.model.layers[0].engram.embed.weight
    apart.to(torch.float64).to(torch.float32)           # a move the table must sit out
    assert apart.model.layers[0].engram.embed.weight is table and table.dtype == torch.float32
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids()).logits, apart(input_ids=ids()).logits)


@pytest.mark.gpu
def test_cpu_table_cuda_model_matches_all_cuda(model):
    on_gpu = copy.deepcopy(model).to("cuda")
    split = copy.deepcopy(model)
    place_engram_tables(split, "cpu")
    split.to("cuda")
    assert split.model.layers[0].engram.embed.weight.device.type == "cpu"
    with torch.no_grad():
        a = on_gpu(input_ids=ids().cuda()).logits
        b = split(input_ids=ids().cuda()).logits
    assert torch.equal(a, b)


def test_generate_with_cache_matches_full_recompute(model):
    """With a KV cache only the new token is fed; its n-gram history comes from engram_input_ids."""
    prompt = ids(9)[:1]
    with torch.no_grad():
        cached = model.generate(prompt, max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=2)
        seq = prompt
        for _ in range(6):
            nxt = model(input_ids=seq, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], dim=1)
    assert torch.equal(cached, seq)


def test_cache_without_history_is_refused(model):
    from transformers import DynamicCache
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(input_ids=ids(5)[:1], past_key_values=cache, use_cache=True)
        with pytest.raises(ValueError, match="engram_input_ids"):
            model(input_ids=ids(1)[:1], past_key_values=cache, use_cache=True)


def test_fixture_engram_layers_and_placement():
    from mv4deploy.runtime import load_model
    folder = REPO / "tests" / "fixtures" / "models" / "tiny-v41"
    if not (folder / "config.json").is_file():
        pytest.skip("tiny-v41 not built")
    model = load_model(folder, engram_device="cpu")
    engram_layers = [i for i, layer in enumerate(model.model.layers) if layer.engram is not None]
    assert engram_layers == [1, 2]
    assert model.model.layers[1].engram.embed.host_resident

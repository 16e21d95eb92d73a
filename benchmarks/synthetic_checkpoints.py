"""Synthetic V4-architecture checkpoints for measurements: real native tensor names, dtypes and shapes (from
the inventory a config implies), random values, written shard by shard (memory bounded by one shard).

Random weights are enough for speed and memory: a decode step reads and multiplies the same bytes whatever
they hold. Values follow transformers' own initialization of DeepSeek V4 (normal(0, 0.02) matrices, unit
norms and mHC scales, zero biases, sinks and position biases) so the forward stays finite, except the hash
routers' ``tid2eid``, which gets distinct random experts per token (transformers zeroes it: every token
would then route to expert 0 k times). V4.1-style Engram checkpoints borrow the trained fixture's tokenizer
(2,048 ids, 1,454 compressed): Engram hashing needs one, so their ``vocab_size`` is 2,048.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from mv4deploy.core.errors import InputError
from mv4deploy.core.fileio import atomic_path, write_text_atomic
from mv4deploy.model.config import load_json, read_config
from mv4deploy.model.tensors import Role
from mv4deploy.model.inventory import build_inventory
from mv4deploy.model.safetensors_headers import INDEX_NAME
from mv4deploy.model.source import PRESETS_DIR
from mv4deploy.formats.kernels import TORCH_DTYPES

STD = 0.02                                       # DeepseekV4Config.initializer_range
ENGRAM_TOKENIZER = ("tokenizer.json", "tokenizer_config.json")
ENGRAM_KEYS = {"engram_max_ngram_size": 3, "engram_n_heads": 4, "engram_head_dim": 32, "engram_pad_token_id": 2,
               "engram_compressed_vocab_size": 1454}
ENGRAM_VOCAB = 2048


def _fixture(name: str) -> Path:
    """A trained fixture of a source checkout (not shipped in the wheel)."""
    folder = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "models" / name
    if not folder.is_dir():
        raise InputError(folder, None, None, "Engram checkpoints borrow this fixture's tokenizer: run from a "
                                             "source checkout")
    return folder


def v4_config(hidden: int, layers: int, experts: int, top_k: int, moe_inter: int, vocab: int = 32768,
              heads: int = 16, head_dim: int = 128, engram_layers: tuple[int, ...] = (),
              engram_vocab: int = 0, **overrides) -> dict:
    """A native V4 config (tiny-deepseek-v4's keys, BF16: no quantization_config) scaled to these sizes.
    Layers follow V4's pattern: two sliding-window layers, then CSA (ratio 4) and HCA (ratio 128) in turn."""
    config = copy.deepcopy(load_json(PRESETS_DIR / "tiny-deepseek-v4.json"))
    config.pop("quantization_config", None)
    config.pop("expert_dtype", None)
    ratios = [0, 0] + [4 if i % 2 == 0 else 128 for i in range(layers - 2)]
    config.update({"vocab_size": vocab, "hidden_size": hidden, "num_hidden_layers": layers,
                   "num_nextn_predict_layers": 0, "n_routed_experts": experts, "num_experts_per_tok": top_k,
                   "moe_intermediate_size": moe_inter, "num_attention_heads": heads, "head_dim": head_dim,
                   "qk_rope_head_dim": 64 if head_dim >= 128 else head_dim // 4, "q_lora_rank": hidden // 4,
                   "o_groups": 4, "o_lora_rank": hidden // 4, "compress_ratios": ratios[:layers],
                   "sliding_window": 128, "index_n_heads": 8, "index_head_dim": 64, "index_topk": 64,
                   "num_hash_layers": 1, "max_position_embeddings": 65536})
    if engram_layers:
        config.update({"vocab_size": ENGRAM_VOCAB, "engram_layer_ids": list(engram_layers),
                       "engram_vocab_size": engram_vocab or 20000, **ENGRAM_KEYS})
    config.update(overrides)
    return config


def _value(info, generator: torch.Generator, spec) -> torch.Tensor:
    """One stored tensor, initialized as transformers initializes its parameter (see the module doc)."""
    name, shape, dtype = info.name, tuple(info.shape), TORCH_DTYPES[info.dtype]
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "tid2eid":                                            # [vocab, top_k] distinct experts
        order = torch.rand(shape[0], spec.n_routed_experts, generator=generator).argsort(-1)
        return order[:, : shape[1]].to(dtype).contiguous()
    if info.role is Role.NORM or name.endswith(("norm.weight", "_scale", "q_weight", "k_weight")):
        return torch.ones(shape, dtype=dtype)
    if name.endswith(("_base", "attn_sink", ".ape", "gate.bias")):
        return torch.zeros(shape, dtype=dtype)
    return (torch.randn(shape, generator=generator) * STD).to(dtype)


def write_checkpoint(config: dict, folder: str | Path, seed: int = 0, shard_bytes: int = 2**30) -> Path:
    """``config`` and random weights in the layout it implies, in shards of about ``shard_bytes``; the index
    and config.json are written last, so a half-written folder never looks complete."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    spec = read_config(config, str(folder / "config.json"))
    tensors = build_inventory(spec).tensors
    generator = torch.Generator().manual_seed(seed)
    shards, current, size = [], {}, 0
    for info in tensors:
        current[info.name] = _value(info, generator, spec)
        size += info.nbytes
        if size >= shard_bytes:
            shards.append(_save(folder, current, len(shards)))
            current, size = {}, 0
    if current:
        shards.append(_save(folder, current, len(shards)))
    weight_map = {}
    for index, (tmp_name, names) in enumerate(shards, start=1):
        final = f"model-{index:05d}-of-{len(shards):05d}.safetensors"
        (folder / tmp_name).rename(folder / final)
        weight_map.update(dict.fromkeys(names, final))
    total = sum(t.nbytes for t in tensors)
    write_text_atomic(folder / INDEX_NAME, json.dumps({"metadata": {"total_size": total},
                                                       "weight_map": dict(sorted(weight_map.items()))}, indent=1))
    if config.get("engram_layer_ids"):
        for name in ENGRAM_TOKENIZER:
            shutil.copyfile(_fixture("tiny-v41") / name, folder / name)
    write_text_atomic(folder / "config.json", json.dumps(config, indent=2) + "\n")
    return folder


def _save(folder: Path, tensors: dict[str, torch.Tensor], index: int) -> tuple[str, list[str]]:
    name = f"part-{index:05d}.safetensors"
    with atomic_path(folder / name) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt", "mv4deploy": "synthetic"})
    return name, list(tensors)


def parameters(config: dict) -> int:
    """Logical parameters of ``config`` (without MTP), as ``mv4deploy inspect`` counts them."""
    return build_inventory(read_config(config, "synthetic")).params_total

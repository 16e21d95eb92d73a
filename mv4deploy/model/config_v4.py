"""The per-layer schedules of a V4 / V4.1 config, in both spellings (DeepSeek-native keys and transformers'
folded ones): hash-routed layers, compress ratios (``compress_ratios`` / ``compress_rates`` / ``layer_types``,
with draft layers beyond the MTP tail), shared-KV source layers, Engram, DSpark draft layers, the vision tower.
Each reader takes ``config.Reader`` (typed access that names the file, key and value on error)."""

from __future__ import annotations

from mv4deploy.core.errors import InputError
from mv4deploy.model import engram_tables
from mv4deploy.model.config_reader import Reader
from mv4deploy.model.spec import Arch, DSparkSpec, EngramSpec, VisionSpec


V4_TYPE_RATIO = {"sliding_attention": 0}


def num_hash_layers(r: Reader, layers: int) -> int:
    native = r.int("num_hash_layers", None, minimum=0, maximum=layers)
    types = r.cfg.get("mlp_layer_types")
    r.used.add("mlp_layer_types")
    if types is None:
        return native if native is not None else 0
    allowed = {"hash_moe", "moe"}
    if not isinstance(types, list) or len(types) != layers or not set(types) <= allowed:
        raise InputError(r.source, "mlp_layer_types", types,
                         f"must list {layers} entries from {sorted(allowed)}")
    folded = types.count("hash_moe")
    if types[:folded] != ["hash_moe"] * folded:
        raise InputError(r.source, "mlp_layer_types", types, "hash_moe layers must come before moe layers")
    if native is not None and native != folded:
        raise InputError(r.source, "num_hash_layers", native, f"contradicts mlp_layer_types ({folded} hash_moe)")
    return folded


def compress_ratios(r: Reader, arch: Arch, layers: int, mtp: int) -> tuple[int, ...]:
    """One ratio per layer, then one per MTP / draft layer. ``compress_ratios`` (DeepSeek) or a per-layer
    ``compress_rates`` list; transformers writes ``layer_types`` + a ``compress_rates`` mapping instead."""
    allowed = {0, 1, 2} if arch is Arch.DEEPSEEK_V41 else {0, 4, 128}
    native, key = native_ratios(r)
    folded = ratios_from_layer_types(r, layers, mtp)
    if native is None and folded is None:
        raise InputError(r.source, "compress_ratios", None, "required key is missing (or layer_types)")
    if native is None:
        return folded
    if len(native) == layers:
        native = native + (0,) * mtp  # an MTP layer is sliding-window only in every released config
    drafts = len(native) - layers - mtp
    if drafts < 0 or (drafts > 0 and not has_dspark(r)):
        raise InputError(r.source, key, f"{len(native)} entries",
                         f"expected num_hidden_layers + num_nextn_predict_layers = {layers + mtp}"
                         + ("" if drafts < 0 else " (entries beyond that are draft layers, which need dspark_* keys)"))
    bad = sorted(set(native) - allowed)
    if bad:
        raise InputError(r.source, key, bad[0], f"ratio must be one of {sorted(allowed)}")
    if folded is not None and folded[:layers] != native[:layers]:
        raise InputError(r.source, "layer_types", None, f"contradicts {key}")
    return native


def native_ratios(r: Reader) -> tuple[tuple[int, ...] | None, str]:
    """Per-layer ratios and the key they came from; ``compress_rates`` counts only as a list (a mapping
    is transformers' per-layer-type form, read with ``layer_types``)."""
    native = r.ints("compress_ratios", None)
    rates = r.cfg.get("compress_rates")
    if not isinstance(rates, list):
        return native, "compress_ratios"
    listed = r.ints("compress_rates")
    if native is not None and native != listed:
        raise InputError(r.source, "compress_rates", list(listed), "contradicts compress_ratios")
    return listed, "compress_rates"


def ratios_from_layer_types(r: Reader, layers: int, mtp: int) -> tuple[int, ...] | None:
    types = r.cfg.get("layer_types")
    r.used.update({"layer_types", "compress_rates"})
    if types is None:
        return None
    mapping = r.cfg.get("compress_rates")
    if mapping is not None and not isinstance(mapping, (dict, list)):
        raise InputError(r.source, "compress_rates", mapping, "must map layer types to ratios (or list one per layer)")
    rates = {"compressed_sparse_attention": 4, "heavily_compressed_attention": 128,
             **(mapping if isinstance(mapping, dict) else {}), **V4_TYPE_RATIO}
    if not isinstance(types, list) or len(types) != layers or not all(t in rates for t in types):
        raise InputError(r.source, "layer_types", types, f"must list {layers} entries from {sorted(rates)}")
    return tuple(rates[t] for t in types) + (0,) * mtp


def layer_ids(r: Reader, key: str, layers: int) -> tuple[int, ...] | None:
    ids = r.ints(key, None)
    if ids is not None and any(i >= layers for i in ids):
        raise InputError(r.source, key, list(ids), f"layer ids must be < num_hidden_layers ({layers})")
    return ids


def engram(r: Reader, layers: int) -> EngramSpec | None:
    ids = layer_ids(r, "engram_layer_ids", layers)
    if not ids:
        return None
    max_n, heads = r.int("engram_max_ngram_size", minimum=2, maximum=16), r.int("engram_n_heads")
    vocab = r.int("engram_vocab_size", maximum=2**40)
    computed = engram_tables.table_rows(vocab, max_n, heads, len(ids))
    rows = r.ints("engram_num_embeddings", None, minimum=1) or computed
    if len(rows) != len(ids):
        raise InputError(r.source, "engram_num_embeddings", list(rows),
                         f"needs one entry per engram layer ({len(ids)})")
    pad = r.int("engram_pad_token_id", None, minimum=0, maximum=2**40)
    if pad is None:
        pad = r.int("engram_pad_id", 0, minimum=0, maximum=2**40)
    return EngramSpec(layer_ids=ids, num_embeddings=rows, max_ngram_size=max_n, n_heads=heads,
                      head_dim=r.int("engram_head_dim"), vocab_size=vocab, pad_token_id=pad,
                      compressed_vocab_size=r.int("engram_compressed_vocab_size", None, maximum=2**40))


DSPARK_SHAPING = ("dspark_n_routed_experts", "dspark_target_layer_ids", "dspark_markov_rank")


def has_dspark(r: Reader) -> bool:
    return any(r.cfg.get(key) is not None for key in DSPARK_SHAPING)


def dspark(r: Reader, layers: int) -> DSparkSpec | None:
    """V4.1 gives the draft layers their own MoE size (``dspark_n_routed_experts``); V4-Flash-0731 does not,
    and its draft layers (``mtp.0..2``, 1,565 tensors each as shipped) carry the main MoE."""
    if not has_dspark(r):
        return None
    r.used.update({"dspark_block_size", "dspark_noise_token_id"})  # decoding details, no tensors
    experts = r.int("dspark_n_routed_experts", r.int("n_routed_experts"))
    top_k = r.int("dspark_num_experts_per_tok", r.int("num_experts_per_tok"), maximum=experts)
    return DSparkSpec(n_routed_experts=experts, num_experts_per_tok=top_k,
                      target_layer_ids=layer_ids(r, "dspark_target_layer_ids", layers) or (),
                      markov_rank=r.int("dspark_markov_rank"))


VISION_ACCEPTED = frozenset({"model_type", "num_attention_heads", "rope_theta", "max_image_tokens", "min_pixels",
                             "max_wh_ratio"})


def mapping(value) -> dict:
    if not isinstance(value, dict):
        raise ValueError("must be an object")
    return value


def vision(r: Reader) -> VisionSpec | None:
    raw = r.get("vision_config", mapping, required=False)
    if raw is None:
        return None
    v = Reader(raw, f"{r.source}: vision_config")
    spec = VisionSpec(num_hidden_layers=v.int("num_hidden_layers"), hidden_size=v.int("hidden_size"),
                      intermediate_size=v.int("intermediate_size"), patch_size=v.int("patch_size"),
                      downsample_ratio=v.int("downsample_ratio"))
    unknown = sorted(set(raw) - v.used - VISION_ACCEPTED)
    r.extra_unknown = tuple(f"vision_config.{k}" for k in unknown)
    return spec

"""DeepSeek-native tensor names <-> transformers parameter names, as a table read both ways.

Each row pairs a native template with a target template; ``{i}`` is a layer, ``{e}`` an expert. A target
is a parameter (or persistent buffer) of transformers' ``DeepseekV4ForCausalLM`` (plus our Engram
modules), optionally followed by ``[e]`` (one expert's slice of a fused 3-D tensor) and ``:gate`` /
``:up`` (which half of ``gate_up_proj``). The rows restate transformers' own ``deepseek_v4`` entry in
``conversion_mapping.py`` name for name (tests/test_runtime_name_map.py checks every V4-Flash and V4-Pro
name against it), adding what it lacks: the Engram tensors of V4.1 and an explicit per-expert slot.

Names the runtime does not instantiate (MTP / DSpark draft layers, V4.1's vision tower and its own
attention extras) are listed in ``SKIPPED`` with the reason, so every shipped name is accounted for.
Scales (``.scale``, ``weight_scale_inv``) are not rows: they belong to their weight's format.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

L = "model.layers.{i}."
RENAMES: tuple[tuple[str, str], ...] = (
    ("embed.weight", "model.embed_tokens.weight"),
    ("head.weight", "lm_head.weight"),
    ("norm.weight", "model.norm.weight"),
    ("hc_head_fn", "model.hc_head.hc_fn"),
    ("hc_head_base", "model.hc_head.hc_base"),
    ("hc_head_scale", "model.hc_head.hc_scale"),
    # attention
    ("layers.{i}.attn.attn_sink", L + "self_attn.sinks"),
    ("layers.{i}.attn.wq_a.weight", L + "self_attn.q_a_proj.weight"),
    ("layers.{i}.attn.q_norm.weight", L + "self_attn.q_a_norm.weight"),
    ("layers.{i}.attn.wq_b.weight", L + "self_attn.q_b_proj.weight"),
    ("layers.{i}.attn.wkv.weight", L + "self_attn.kv_proj.weight"),
    ("layers.{i}.attn.kv_norm.weight", L + "self_attn.kv_norm.weight"),
    ("layers.{i}.attn.wo_a.weight", L + "self_attn.o_a_proj.weight"),
    ("layers.{i}.attn.wo_b.weight", L + "self_attn.o_b_proj.weight"),
    # compressor (CSA and HCA layers) and the CSA Lightning Indexer with its own compressor
    ("layers.{i}.attn.compressor.ape", L + "self_attn.compressor.position_bias"),
    ("layers.{i}.attn.compressor.wkv.weight", L + "self_attn.compressor.kv_proj.weight"),
    ("layers.{i}.attn.compressor.wgate.weight", L + "self_attn.compressor.gate_proj.weight"),
    ("layers.{i}.attn.compressor.norm.weight", L + "self_attn.compressor.kv_norm.weight"),
    ("layers.{i}.attn.indexer.wq_b.weight", L + "self_attn.compressor.indexer.q_b_proj.weight"),
    ("layers.{i}.attn.indexer.weights_proj.weight", L + "self_attn.compressor.indexer.scorer.weights_proj.weight"),
    ("layers.{i}.attn.indexer.compressor.ape", L + "self_attn.compressor.indexer.position_bias"),
    ("layers.{i}.attn.indexer.compressor.wkv.weight", L + "self_attn.compressor.indexer.kv_proj.weight"),
    ("layers.{i}.attn.indexer.compressor.wgate.weight", L + "self_attn.compressor.indexer.gate_proj.weight"),
    ("layers.{i}.attn.indexer.compressor.norm.weight", L + "self_attn.compressor.indexer.kv_norm.weight"),
    # norms and mHC mixes around the two sublayers
    ("layers.{i}.attn_norm.weight", L + "input_layernorm.weight"),
    ("layers.{i}.ffn_norm.weight", L + "post_attention_layernorm.weight"),
    ("layers.{i}.hc_attn_fn", L + "attn_hc.fn"),
    ("layers.{i}.hc_attn_base", L + "attn_hc.base"),
    ("layers.{i}.hc_attn_scale", L + "attn_hc.scale"),
    ("layers.{i}.hc_ffn_fn", L + "ffn_hc.fn"),
    ("layers.{i}.hc_ffn_base", L + "ffn_hc.base"),
    ("layers.{i}.hc_ffn_scale", L + "ffn_hc.scale"),
    # MoE: router (learned or hash), shared expert, routed experts fused into 3-D tensors
    ("layers.{i}.ffn.gate.weight", L + "mlp.gate.weight"),
    ("layers.{i}.ffn.gate.bias", L + "mlp.gate.e_score_correction_bias"),
    ("layers.{i}.ffn.gate.tid2eid", L + "mlp.gate.tid2eid"),
    ("layers.{i}.ffn.shared_experts.w1.weight", L + "mlp.shared_experts.gate_proj.weight"),
    ("layers.{i}.ffn.shared_experts.w3.weight", L + "mlp.shared_experts.up_proj.weight"),
    ("layers.{i}.ffn.shared_experts.w2.weight", L + "mlp.shared_experts.down_proj.weight"),
    ("layers.{i}.ffn.experts.{e}.w1.weight", L + "mlp.experts.gate_up_proj[{e}]:gate"),
    ("layers.{i}.ffn.experts.{e}.w3.weight", L + "mlp.experts.gate_up_proj[{e}]:up"),
    ("layers.{i}.ffn.experts.{e}.w2.weight", L + "mlp.experts.down_proj[{e}]"),
    # Engram (V4.1): our module, same leaf names as the checkpoint
    ("layers.{i}.engram.embed.weight", L + "engram.embed.weight"),
    ("layers.{i}.engram.wkv.weight", L + "engram.wkv.weight"),
    ("layers.{i}.engram.q_weight", L + "engram.q_weight"),
    ("layers.{i}.engram.k_weight", L + "engram.k_weight"),
)

SKIPPED: tuple[tuple[str, str], ...] = (
    (r"mtp\.\d+\..+", "MTP / DSpark draft layer: transformers' DeepseekV4 does not instantiate it"),
    (r"(vision|aligner)\..+|image_(start|end|newline)", "V4.1 vision tower: not implemented by the runtime"),
    (r"layers\.\d+\.attn\.indexer\.(wk\.weight|k_norm\.weight)", "V4.1 indexer keys from the kv latent: "
     "V4.1 attention is not implemented by transformers' DeepseekV4"),
    (r"layers\.\d+\.ffn\.gate\.bias_vl", "V4.1 routing bias for image tokens: no vision path in the runtime"),
)


@dataclass(frozen=True)
class Target:
    """Where one native tensor lands: a parameter, optionally one expert's slice and one half of it."""

    param: str
    expert: int | None = None
    half: str | None = None    # "gate" | "up" for gate_up_proj, None for the whole (slice)

    @property
    def key(self) -> str:
        slot = f"[{self.expert}]" if self.expert is not None else ""
        return self.param + slot + (f":{self.half}" if self.half else "")


_FIELD = {"i": r"(?P<i>\d+)", "e": r"(?P<e>\d+)"}
_TARGET_KEY = re.compile(r"(?P<param>[^\[:]+)(?:\[(?P<expert>\d+)\])?(?::(?P<half>gate|up))?")


def _compile(template: str) -> re.Pattern:
    parts = re.split(r"(\{[ie]\})", template)
    return re.compile("".join(_FIELD[p[1]] if p in ("{i}", "{e}") else re.escape(p) for p in parts))


@lru_cache(maxsize=1)
def _tables():
    forward = [(_compile(native), target) for native, target in RENAMES]
    backward = [(_compile(target), native) for native, target in RENAMES]
    skipped = [(re.compile(pattern), reason) for pattern, reason in SKIPPED]
    return forward, backward, skipped


def _substitute(template: str, match: re.Match) -> str:
    return template.format(**{k: int(v) for k, v in match.groupdict().items()})


def to_target(native: str) -> Target | None:
    """The transformers target of a native weight name; None when it is a skipped name."""
    forward, _, skipped = _tables()
    hits = [_substitute(target, m) for pattern, target in forward if (m := pattern.fullmatch(native))]
    if len(hits) > 1:
        raise ValueError(f"name map: {native!r} matches {len(hits)} rows")
    if hits:
        parts = _TARGET_KEY.fullmatch(hits[0])
        expert = parts["expert"]
        return Target(parts["param"], int(expert) if expert is not None else None, parts["half"])
    if skip_reason(native) is not None:
        return None
    raise KeyError(f"name map: no row for native tensor {native!r}")


def skip_reason(native: str) -> str | None:
    return next((reason for pattern, reason in _tables()[2] if pattern.fullmatch(native)), None)


def to_native(target: Target | str) -> str:
    """The native name a target comes from (the inverse of ``to_target``)."""
    key = target.key if isinstance(target, Target) else target
    _, backward, _ = _tables()
    hits = [_substitute(native, m) for pattern, native in backward if (m := pattern.fullmatch(key))]
    if len(hits) != 1:
        raise KeyError(f"name map: target {key!r} matches {len(hits)} rows")
    return hits[0]



def native_layout(names) -> bool:
    """Whether tensor ``names`` are DeepSeek's own layout: none carries transformers' ``model.`` prefix
    (``embed.weight``, ``layers.0.attn...``); an empty list is neither layout, so False."""
    names = list(names)
    return bool(names) and not any(name.startswith("model.") for name in names)

"""Typed access to one config.json dict (``Reader``), and the keys each family may carry: a key nobody reads
and no table lists is reported as unknown, never silently ignored."""

from __future__ import annotations

from mv4deploy.core.schema import Section, boolean, integer, integers
from mv4deploy.model.quant_config import OURS_KEY
from mv4deploy.model.spec import Arch

GENERIC_KEYS = frozenset({
    "architectures", "model_type", "torch_dtype", "dtype", "transformers_version", "_name_or_path",
    "bos_token_id", "eos_token_id", "pad_token_id", "initializer_range", "use_cache", "attention_dropout",
    "hidden_act", "auto_map", "rms_norm_eps", "rope_theta", "rope_scaling", "rope_parameters",
    "quantization_config", "pretraining_tp", "output_router_logits", "router_aux_loss_coef",
    "router_jitter_noise", "mlp_bias", "text_config", "return_dict", "output_hidden_states",
    "output_attentions", "tie_word_embeddings", "max_position_embeddings", "vocab_size",
    "hidden_size", "num_hidden_layers", "num_nextn_predict_layers", "attention_bias",
    # written by transformers' save_pretrained
    "chunk_size_feed_forward", "id2label", "label2id", "is_encoder_decoder", "problem_type",
    OURS_KEY,
})
ROUTER_KEYS = frozenset({"scoring_func", "topk_method", "routed_scaling_factor", "norm_topk_prob",
                         "n_group", "topk_group", "ep_size", "aux_loss_alpha", "seq_aux"})
FAMILY_KEYS = {
    Arch.QWEN2: frozenset({"use_sliding_window", "sliding_window", "max_window_layers", "layer_types",
                           "use_mrope"}),
    Arch.LLAMA: frozenset(),
    Arch.DEEPSEEK_V3: ROUTER_KEYS,
    Arch.DEEPSEEK_V32: ROUTER_KEYS,
    Arch.DEEPSEEK_V4: ROUTER_KEYS | {"swiglu_limit", "hc_sinkhorn_iters", "hc_eps", "compress_rope_theta",
                                     "expert_dtype", "layer_types", "mlp_layer_types", "partial_rotary_factor",
                                     "compress_rates"},
}
FAMILY_KEYS[Arch.DEEPSEEK_V41] = FAMILY_KEYS[Arch.DEEPSEEK_V4] | {
    "candidate_source_layer_id", "candidate_topk_blocks", "candidate_block_size", "image_token_id",
}
_MISSING = object()
_MAX_DIM = 2**22  # 4M: no hidden size, vocabulary or expert count comes near it


class Reader(Section):
    """Typed access to one config dict through ``schema.Section``; a config is not strict (``done`` is
    never called): keys nobody read are listed by ``unknown`` instead of refused."""

    suggest_typos = False   # a config has dozens of keys: a near name is rarely the one meant

    def __init__(self, cfg: dict, source: str):
        super().__init__(cfg, source)
        self.cfg = cfg
        self.extra_unknown: tuple[str, ...] = ()
        self.expert_dtype_override: str | None = None

    def int(self, key: str, default=_MISSING, minimum: int = 1, maximum: int = _MAX_DIM) -> int | None:
        return self.get(key, integer(minimum, maximum), required=default is _MISSING, default=default)

    def bool(self, key: str, default=_MISSING) -> bool:
        return self.get(key, boolean, required=default is _MISSING, default=default)

    def ints(self, key: str, default=_MISSING, minimum: int = 0) -> tuple[int, ...] | None:
        return self.get(key, integers(minimum), required=default is _MISSING, default=default)

    def unknown(self, arch: Arch) -> tuple[str, ...]:
        accepted = GENERIC_KEYS | FAMILY_KEYS[arch] | self.used
        return tuple(sorted([k for k in self.cfg if k not in accepted] + list(self.extra_unknown)))

"""Turn a checkpoint's config.json into the transformers config its model class is built from.

DeepSeek-native V4 configs (``compress_ratios``, ``num_hash_layers``, ``qk_rope_head_dim``) are folded by
``DeepseekV4Config`` itself; we only drop the keys that describe how the *file* stores weights
(``quantization_config``, ``expert_dtype``): the loader dequantizes while reading, so the model it builds
is an ordinary full-precision one. ``engram_*`` keys ride along as config attributes and are read by
``mv4deploy.runtime.engram.EngramConfig``.
"""

from __future__ import annotations

from mv4deploy.core.errors import InputError
from mv4deploy.model.quant_config import OURS_KEY
from mv4deploy.model.spec import Arch

# Keys about storage or provenance, not about the network a transformers class builds.
STORAGE_KEYS = frozenset({"quantization_config", "expert_dtype", OURS_KEY, "architectures", "model_type", "torch_dtype",
                          "dtype", "transformers_version", "_name_or_path"})


def v4_config(raw: dict, source: str):
    """A ``DeepseekV4Config`` from a native (or transformers-folded) V4 config dict."""
    from transformers import DeepseekV4Config
    kwargs = {k: v for k, v in raw.items() if k not in STORAGE_KEYS}
    if isinstance(kwargs.get("compress_rates"), list):  # the per-layer list under its newer name
        kwargs["compress_ratios"] = kwargs.pop("compress_rates")
    try:
        return DeepseekV4Config(**kwargs)
    except (TypeError, ValueError) as exc:  # transformers validates layer types, rope parameters, ...
        raise InputError(source, None, None, f"transformers rejects this config: {exc}") from exc


def has_engram(raw: dict) -> bool:
    return bool(raw.get("engram_layer_ids"))


def check_runnable(arch: Arch, raw: dict, source: str) -> None:
    """V4.1's own attention (compress ratios 1/2, shared kv/index sources) has no transformers module:
    only V4 attention, optionally with Engram layers, can run here."""
    if arch is Arch.DEEPSEEK_V41 or "text_config" in raw:
        raise InputError(source, "model_type", raw.get("model_type"),
                         "V4.1 attention (ratios 1/2, shared kv/index sources) is not implemented by transformers' "
                         "DeepseekV4; runnable: deepseek_v4 (optionally with engram_* keys), qwen2, llama, "
                         "deepseek_v3")

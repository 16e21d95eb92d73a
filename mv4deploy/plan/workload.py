"""What the deployment must serve: context length, concurrent sequences, prefill chunk, expert skew.

Validated once here; a bad value is an ``InputError`` naming the option and the value (exit 2).
"""

from __future__ import annotations

from dataclasses import dataclass

from mv4deploy.core import schema
from mv4deploy.core.errors import InputError
from mv4deploy.core.units import parse_tokens

DEFAULT_CONTEXT_TOKENS = 131072
# llama.cpp's default logical batch (-b 2048); vLLM's chunked prefill uses 2048-8192. A larger chunk
# re-reads offloaded weights less often but needs more activation memory on the GPU.
DEFAULT_PREFILL_CHUNK = 2048
MAX_CONTEXT_TOKENS = 2**24      # 16M: far beyond any model here; larger is a typo
MAX_BATCH = 65536
ACTIVATION_BYTES = 2            # activations (hidden states, queries, MLP intermediates) are BF16


@dataclass(frozen=True)
class ExpertSkew:
    """Routing skew: the ``hot_fraction`` most-used experts of each layer receive ``hot_share`` of the
    routed tokens (uniform routing is hot_share == hot_fraction)."""

    hot_fraction: float
    hot_share: float


@dataclass(frozen=True)
class Workload:
    context_tokens: int = DEFAULT_CONTEXT_TOKENS
    batch: int = 1                                 # sequences decoded together
    prefill_chunk: int = DEFAULT_PREFILL_CHUNK     # tokens per prefill step (clamped to the context)
    expert_skew: ExpertSkew | None = None
    include_mtp: bool = False                      # place the MTP / draft layers too

    @property
    def chunk_tokens(self) -> int:
        return min(self.prefill_chunk, self.context_tokens)

    def to_json(self) -> dict:
        """Everything that shapes the plan, so a saved plan can be re-made from its own JSON:
        ``prefill_chunk_tokens`` is ``prefill_chunk`` with its unit (the unitless key stays for readers of
        the contract); ``expert_skew`` is ``[hot_fraction, hot_share]`` or null."""
        skew = self.expert_skew
        return {"context_tokens": self.context_tokens, "batch": self.batch, "prefill_chunk": self.prefill_chunk,
                "prefill_chunk_tokens": self.prefill_chunk, "include_mtp": self.include_mtp,
                "expert_skew": [skew.hot_fraction, skew.hot_share] if skew is not None else None}


def _tokens(option: str, value: object, maximum: int) -> int:
    try:
        tokens = parse_tokens(value)
    except ValueError as exc:
        raise InputError(None, option, value, str(exc)) from None
    if tokens < 1:
        raise InputError(None, option, value, "must be a positive number of tokens")
    if tokens > maximum:
        raise InputError(None, option, value, f"must be at most {maximum:,}")
    return tokens


# ---- the plan's option validators: one each, used by the single options and by --sweep alike -----------

def context_tokens(value: object) -> int:
    return _tokens("--context", value, MAX_CONTEXT_TOKENS)


def prefill_chunk_tokens(value: object) -> int:
    return _tokens("--prefill-chunk", value, MAX_CONTEXT_TOKENS)


def batch_size(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            value = int(str(value))
        except ValueError:
            raise InputError(None, "--batch", value, "must be a positive integer") from None
    if not 1 <= value <= MAX_BATCH:
        raise InputError(None, "--batch", value, f"must be between 1 and {MAX_BATCH}")
    return value


def host_mem_bytes(value: object) -> int:
    """--host-mem: the host RAM to plan with instead of the profile's (a machine override, not a workload
    figure, validated here with the options it is swept beside): the profile's ``host.memory`` rule."""
    return schema.option("--host-mem", schema.positive_size, value)


def _skew(value: str | None) -> ExpertSkew | None:
    """'0.2:0.6' -> the hottest 20% of experts get 60% of routed tokens."""
    if value is None:
        return None
    try:
        hot_fraction, hot_share = (float(part) for part in str(value).split(":"))
    except ValueError:
        raise InputError(None, "--expert-skew", value, "expected HOT_FRACTION:HOT_SHARE like 0.2:0.6") from None
    if not (0 < hot_fraction < 1 and hot_fraction <= hot_share < 1):
        raise InputError(None, "--expert-skew", value,
                         "need 0 < hot fraction < 1 and hot fraction <= hot share < 1")
    return ExpertSkew(hot_fraction, hot_share)


def make_workload(context: object = DEFAULT_CONTEXT_TOKENS, batch: object = 1,
                  prefill_chunk: object = DEFAULT_PREFILL_CHUNK, expert_skew: str | None = None,
                  include_mtp: bool = False) -> Workload:
    """Validate user input into a ``Workload``; strings like '128k' are accepted for token counts."""
    batch = batch_size(batch)
    return Workload(context_tokens=context_tokens(context), batch=batch,
                    prefill_chunk=prefill_chunk_tokens(prefill_chunk), expert_skew=_skew(expert_skew),
                    include_mtp=include_mtp)

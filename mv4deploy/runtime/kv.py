"""CSA entries in host RAM: the top-k pool of a V4 layer kept off the GPU, its selected entries fetched per step.

transformers' ``DeepseekV4CSACache`` keeps a CSA layer's compressed entries on the GPU and its attention
reads all of them behind a mask that only opens the indexer's top-k. Here the entries live in host memory
(pinned on a CUDA machine) and:

- a decode step (one query per sequence) runs the compressor and the indexer as usual (the indexer's own keys
  stay on the GPU: they are read densely), then gathers only the ``index_topk`` entries the indexer selected
  from the host pool and hands the attention those (``index_topk`` x entry bytes over the link per layer,
  what the planner charges). Entries the indexer marks invalid (-1) are masked, exactly as transformers'
  block bias masks them, so the attention output is the same;
- a prefill chunk (many queries, each with its own top-k) needs every entry once: the pool goes to the GPU
  for the chunk and is dropped after it.

The placeholder handed back to transformers in decode is a zero-stride view (no memory) of the pool's
length, so its mask arithmetic runs unchanged; the entries it would have read are never materialized.
"""

from __future__ import annotations

import torch
from transformers.models.deepseek_v4.modeling_deepseek_v4 import DeepseekV4CSACache

from mv4deploy.runtime.cache_names import cache_in
from mv4deploy.runtime.modules import ExecState

POOL = "compressor"


class HostCSACache(DeepseekV4CSACache):
    _layer_type = None       # a subclass with a layer type would replace transformers' registry entry

    def __init__(self, config, host: torch.device, state: ExecState):
        super().__init__(config)
        self.host, self.state = host, state
        self.pool: torch.Tensor | None = None      # [B, entries, head_dim] in host memory
        self.fetch_all = True

    def update_compressor_states(self, name: str, compressed: torch.Tensor) -> torch.Tensor:
        if name != POOL:
            return super().update_compressor_states(name, compressed)
        self.entry_count[name] += compressed.shape[1]
        if compressed.shape[1] or self.pool is None:
            new = compressed.to(self.host, copy=True)
            self.pool = new if self.pool is None else torch.cat([self.pool, new], dim=1)
        if self.fetch_all:
            self.state.counters["kv_prefill_fetched_bytes"] += self.pool.numel() * self.pool.element_size()
            return self.pool.to(compressed.device, non_blocking=True, copy=True)
        batch, entries, width = self.pool.shape
        return compressed.new_zeros(()).expand(batch, entries, width)

    def gather(self, indices: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Entries ``indices`` [B, 1, k] (-1: none) of the host pool -> ([B, 1, k, head_dim] on ``device``,
        validity [B, 1, 1, k])."""
        idx = indices[:, 0].to(self.host)                                         # [B, k]
        valid = idx >= 0
        safe = idx.clamp_min(0)
        width = self.pool.shape[-1]
        picked = torch.gather(self.pool, 1, safe.unsqueeze(-1).expand(-1, -1, width))   # [B, k, head_dim]
        if device.type == "cuda":
            picked = picked.pin_memory()
        self.state.counters["kv_fetched_entries"] += int(valid.sum())
        self.state.counters["kv_fetched_bytes"] += picked.numel() * picked.element_size()
        return picked.unsqueeze(1).to(device, non_blocking=True), valid.unsqueeze(1).unsqueeze(1).to(device)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        super().reorder_cache(beam_idx)
        if self.pool is not None:
            self.pool = self.pool.index_select(0, beam_idx.to(self.host))

    def reset(self) -> None:
        super().reset()
        self.pool = None


def fetch_selected(compressor, state: ExecState) -> None:
    """Hooks on one CSA compressor: prefill gets the whole host pool, decode only the indexer's top-k."""
    selected: dict[str, torch.Tensor] = {}

    def cache_of(args, kwargs):
        past = cache_in(kwargs)                # ``cache`` from transformers 5.25, else ``past_key_values``
        if past is None and len(args) > 3:
            past = args[3]
        layer = kwargs.get("layer_idx", args[4] if len(args) > 4 else None)
        cache = past.layers[layer] if past is not None else None
        return cache if isinstance(cache, HostCSACache) else None

    def before(module, args, kwargs):
        cache = cache_of(args, kwargs)
        if cache is not None:
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            cache.fetch_all = hidden.shape[1] > 1
        return None

    def after(module, args, kwargs, output):
        cache = cache_of(args, kwargs)
        if cache is None or cache.fetch_all:
            return None
        entries, valid = cache.gather(selected.pop("indices"), output[0].device)
        bias = torch.zeros(valid.shape, dtype=output[0].dtype, device=valid.device)
        return entries, bias.masked_fill(~valid, float("-inf"))                  # [B, 1, k, D], [B, 1, 1, k]

    compressor.indexer.register_forward_hook(lambda m, a, out: selected.__setitem__("indices", out))
    compressor.register_forward_pre_hook(before, with_kwargs=True)
    compressor.register_forward_hook(after, with_kwargs=True)

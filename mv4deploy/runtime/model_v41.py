"""A V4.1-style causal LM: transformers' DeepseekV4 decoder with Engram at the configured layers.

Every decoder layer is a ``DeepseekV41DecoderLayer``; those listed in ``engram_layer_ids`` own an
``Engram`` (parameters ``model.layers.{i}.engram.*``) applied to the hc residual streams before the
layer's own mHC/attention, as V4.1's reference does. Before any layer runs, the model hashes the token
ids (``engram_indices``) and gathers every Engram layer's rows from its table; a table placed in host
memory (``place_engram_tables(model, "cpu")``) is gathered there and the rows are copied to the model's
device on a side CUDA stream, overlapping the layers that precede the Engram layer.

Decoding with a KV cache needs the n-gram history: ``generate`` passes every id so far as
``engram_input_ids`` (see ``prepare_inputs_for_generation``); a hand-written decode loop must too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import DeepseekV4ForCausalLM, DeepseekV4Model
from transformers import initialization as init
from transformers.models.deepseek_v4.modeling_deepseek_v4 import DeepseekV4DecoderLayer

from mv4deploy.runtime.cache_names import cache_in
from mv4deploy.runtime.engram import Engram, EngramConfig, EngramEmbedding, EngramHasher, ShortConv, engram_indices


@dataclass
class FetchedRows:
    """One Engram layer's gathered rows on their way to the model's device."""

    rows: torch.Tensor
    scales: torch.Tensor | None
    event: object = None           # torch.cuda.Event when copied on a side stream

    def ready(self) -> torch.Tensor:
        """Decoded rows [B, L, columns, head_dim], after the copy (if any) has finished."""
        if self.event is not None:
            stream = torch.cuda.current_stream(self.rows.device)
            stream.wait_event(self.event)
            for tensor in (self.rows, self.scales):
                if tensor is not None:
                    tensor.record_stream(stream)
        return EngramEmbedding.decode(self.rows, self.scales)


class DeepseekV41DecoderLayer(DeepseekV4DecoderLayer):
    def __init__(self, config, layer_idx: int, engram_cfg: EngramConfig):
        super().__init__(config, layer_idx)
        self.engram = Engram(engram_cfg, layer_idx) if layer_idx in engram_cfg.layer_ids else None

    def forward(self, hidden_states, input_ids=None, engram_rows=None, **kwargs):
        if self.engram is not None:
            if engram_rows is None or self.layer_idx not in engram_rows:
                raise ValueError(f"layer {self.layer_idx} has Engram but no rows were fetched for it")
            hidden_states = self.engram(hidden_states, engram_rows[self.layer_idx].ready())
        return super().forward(hidden_states, input_ids=input_ids, **kwargs)


class _EngramInit:
    """transformers initializes its own modules; these are ours."""

    def _init_weights(self, module):
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, EngramEmbedding) and module.weight.dtype.is_floating_point \
                and module.weight.element_size() > 1:
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, Engram):
            init.ones_(module.q_weight)
            init.ones_(module.k_weight)
        elif isinstance(module, ShortConv):
            init.ones_(module.norm_weight)
            init.zeros_(module.weight)


class DeepseekV41Model(_EngramInit, DeepseekV4Model):
    def __init__(self, config):
        super().__init__(config)
        self.engram_cfg = EngramConfig.from_hf(config)
        self.layers = nn.ModuleList(DeepseekV41DecoderLayer(config, i, self.engram_cfg)
                                    for i in range(config.num_hidden_layers))
        self.engram_hasher = EngramHasher(self.engram_cfg)
        self.post_init()

    def forward(self, input_ids=None, engram_input_ids=None, **kwargs):
        # the cache arrives as ``cache`` (transformers >= 5.25) or ``past_key_values``; pass it on as named
        if input_ids is None:
            raise ValueError("Engram hashes token ids: pass input_ids, not inputs_embeds")
        cache = cache_in(kwargs)
        past = cache.get_seq_length() if cache is not None else 0
        if past and engram_input_ids is None:
            raise ValueError("decoding with a cache: pass engram_input_ids (every id so far) for the n-gram history")
        rows = self.fetch_engram_rows(input_ids, engram_input_ids)
        return super().forward(input_ids=input_ids, engram_rows=rows, **kwargs)

    def fetch_engram_rows(self, input_ids: torch.Tensor, context_ids: torch.Tensor | None = None
                          ) -> dict[int, FetchedRows]:
        """Hash ids of the last ``input_ids.shape[1]`` positions of ``context_ids`` (default: input_ids)
        and every Engram layer's rows, started on their way to the model's device."""
        ids = context_ids if context_ids is not None else input_ids
        # the last T positions only look back max_ngram_size - 1 tokens: hash no more of the history than that
        # (a decode step would otherwise re-hash the whole context)
        ids = ids[:, -(input_ids.shape[1] + self.engram_cfg.max_ngram_size - 1):]
        hashes = engram_indices(ids, self.engram_hasher)[:, -input_ids.shape[1]:]   # [B, T, layers, columns]
        sides: dict = {}
        fetched = {}
        for layer_id in self.engram_cfg.layer_ids:
            engram = self.layers[layer_id].engram
            device = self.row_device(layer_id)
            rows, scales = engram.embed.gather(hashes[:, :, engram.layer_index])
            if rows.device == device:
                fetched[layer_id] = FetchedRows(rows, scales)
                continue
            if device.type != "cuda":
                fetched[layer_id] = FetchedRows(rows.to(device), None if scales is None else scales.to(device))
                continue
            if device not in sides:
                sides[device] = torch.cuda.Stream(device)
            fetched[layer_id] = _copy_on_stream(rows, scales, device, sides[device])
        return fetched

    def row_device(self, layer_id: int) -> torch.device:
        """Where Engram layer ``layer_id`` runs, so its rows go there: ``engram_row_devices`` when an executor
        placed the model (its embedding or Engram weights may sit in host RAM), else its ``wkv``'s device."""
        placed = getattr(self, "engram_row_devices", None)
        return placed[layer_id] if placed else self.layers[layer_id].engram.wkv.weight.device


def _copy_on_stream(rows, scales, device, stream) -> FetchedRows:
    """Pinned host rows -> device, asynchronously on ``stream``; the consumer waits on the event."""
    with torch.cuda.stream(stream):
        moved = [None if t is None else t.pin_memory().to(device, non_blocking=True) for t in (rows, scales)]
        event = torch.cuda.Event()
        event.record(stream)
    return FetchedRows(moved[0], moved[1], event)


class DeepseekV41ForCausalLM(_EngramInit, DeepseekV4ForCausalLM):
    def __init__(self, config):
        super().__init__(config)
        self.model = DeepseekV41Model(config)
        self.post_init()

    def set_token_map(self, token_map) -> None:
        """The tokenizer's compressed-id map (``engram.compressed_token_map``); hashing needs it."""
        self.model.engram_hasher.set_token_map(token_map)

    def prepare_inputs_for_generation(self, input_ids, **kwargs):
        inputs = super().prepare_inputs_for_generation(input_ids, **kwargs)
        inputs["engram_input_ids"] = input_ids
        return inputs


def place_engram_tables(model: DeepseekV41ForCausalLM, device: str | torch.device) -> None:
    """Keep every Engram table (and the hasher) on ``device`` (e.g. "cpu") whatever the model's device;
    on a CUDA machine host tables are pinned so row copies can run asynchronously."""
    device = torch.device(device)
    pin = device.type == "cpu" and torch.cuda.is_available()
    for layer in model.model.layers:
        if layer.engram is not None:
            layer.engram.embed.place(device, pin)
    model.model.engram_hasher.place(device)

"""Engram (DeepSeek V4.1): n-gram hash lookups written into the mHC residual streams before a layer.

The algorithm follows the official demo (deepseek-ai/Engram ``engram_demo_v1.py``) and the shapes V4.1
ships (facts/deepseek-arch.md §3, research/tensors.md §4):

1. *Tokenizer compression*: every token id maps to a canonical id; tokens whose text is equal after
   NFKC -> NFD -> strip accents -> lowercase -> whitespace collapse -> strip share one (a token that
   decodes to U+FFFD, a partial UTF-8 byte, is keyed by its raw token string).
2. *N-grams* of orders 2..max over compressed ids, left-padded with the compressed pad id.
3. *Multiplicative-XOR hash*: ``mix_n = XOR_{k<n} tok[t-k] * m_k`` with odd multipliers
   ``m_k = 2r + 1``, ``r ~ numpy.default_rng(10007 * layer_id)`` below ``(int64_max // vocab) // 2``
   (so no product overflows int64).
4. *K heads per order*: ``mix_n mod p`` for a distinct prime ``p`` per (layer, order, head)
   (``mv4deploy.model.engram_tables``); all heads share one table of sum(p) rows at running offsets.
5. *Fusion* per hc stream: ``e`` = the (order, head) rows concatenated; ``[k_1..k_hc, v] = wkv(e)``;
   ``gate_s = sigmoid(signed_sqrt(<h_s * q_w * k_w, k_s> / (rms(h_s) rms(k_s) sqrt(D))))``;
   ``h_s += gate_s * v``. The demo's short depthwise causal conv (kernel 4, dilation = max n-gram,
   after a per-stream RMSNorm, SiLU) is optional here (``kernel_size``): V4.1 ships no tensors for it.

Hash ids depend on token ids only, so ``engram_indices`` runs before the layers and the rows can be
gathered from a table that stays in host memory while the model runs on a GPU (see model_v41.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mv4deploy.model import engram_tables

INT64_MAX = np.iinfo(np.int64).max
_WHITESPACE = re.compile(r"[ \t\r\n]+")
GATE_FLOOR = 1e-6  # |dot| is clamped here before the signed square root (as the training kernel does)


@dataclass(frozen=True)
class EngramConfig:
    """Engram hyper-parameters, named after the V4.1 config keys (``engram_*``)."""

    layer_ids: tuple[int, ...]
    max_ngram_size: int
    n_heads: int
    head_dim: int
    vocab_size: int               # where each (order, head) prime search starts
    pad_token_id: int
    compressed_vocab_size: int    # every hash multiplier derives from it
    hidden_size: int
    hc_mult: int
    eps: float = 1e-6
    kernel_size: int = 0          # demo's ShortConv; 0 = none (V4.1 as shipped)

    @classmethod
    def from_hf(cls, config) -> "EngramConfig":
        get = lambda key, default=None: getattr(config, key, default)  # noqa: E731
        pad = get("engram_pad_token_id", get("engram_pad_id", 0))
        made = cls(layer_ids=tuple(get("engram_layer_ids")), max_ngram_size=get("engram_max_ngram_size"),
                   n_heads=get("engram_n_heads"), head_dim=get("engram_head_dim"),
                   vocab_size=get("engram_vocab_size"), pad_token_id=pad,
                   compressed_vocab_size=get("engram_compressed_vocab_size") or 0,
                   hidden_size=config.hidden_size, hc_mult=config.hc_mult, eps=config.rms_norm_eps,
                   kernel_size=get("engram_kernel_size", 0) or 0)
        shipped = get("engram_num_embeddings")
        if shipped is not None and tuple(shipped) != made.num_embeddings:
            raise ValueError(f"engram_num_embeddings {list(shipped)} contradicts the primes of engram_vocab_size "
                             f"{made.vocab_size}: {list(made.num_embeddings)}")
        return made

    @property
    def hash_columns(self) -> int:
        """Rows gathered per token per layer: one per (order, head)."""
        return (self.max_ngram_size - 1) * self.n_heads

    @cached_property
    def primes(self) -> tuple[tuple[tuple[int, ...], ...], ...]:
        """primes[layer][order - 2][head]."""
        return engram_tables.head_primes(self.vocab_size, self.max_ngram_size, self.n_heads, len(self.layer_ids))

    @property
    def num_embeddings(self) -> tuple[int, ...]:
        return tuple(sum(map(sum, layer)) for layer in self.primes)


# ------------------------------------------------------------------ 1. tokenizer compression
def _normalizer():
    from tokenizers import normalizers
    return normalizers.Sequence([normalizers.NFKC(), normalizers.NFD(), normalizers.StripAccents(),
                                 normalizers.Lowercase()])


def canonical_text(text: str, normalizer=None) -> str:
    """NFKC/NFD/strip-accents/lowercase, then whitespace runs -> one space, then strip; a token that is
    only whitespace keeps one space (so it does not merge with the empty string)."""
    normalized = (normalizer or _normalizer()).normalize_str(text)
    collapsed = _WHITESPACE.sub(" ", normalized)
    key = " " if collapsed == " " else collapsed.strip()
    return key or text


def compressed_token_map(tokenizer) -> tuple[list[int], int]:
    """(canonical id of every token id, number of canonical ids), ids numbered by first appearance."""
    backend, normalizer = tokenizer.backend_tokenizer, _normalizer()
    keys: dict[str, int] = {}
    lookup = []
    for token_id in range(len(tokenizer)):
        text = backend.decode([token_id], skip_special_tokens=False)
        key = backend.id_to_token(token_id) if "\ufffd" in text else canonical_text(text, normalizer)
        lookup.append(keys.setdefault(key, len(keys)))
    return lookup, len(keys)


# ------------------------------------------------------------------ 2-4. hashing
def hash_multipliers(layer_ids: tuple[int, ...], max_ngram_size: int, compressed_vocab_size: int) -> torch.Tensor:
    """[n_layers, max_ngram_size] odd int64 multipliers; layer ``l`` draws from default_rng(10007 * l)."""
    bound = max(1, (INT64_MAX // max(compressed_vocab_size, 1)) // 2)
    rows = [np.random.default_rng(10007 * layer).integers(0, bound, size=max_ngram_size, dtype=np.int64) * 2 + 1
            for layer in layer_ids]
    return torch.from_numpy(np.stack(rows))


class HostResident(nn.Module):
    """A module that stays on its device when the model around it moves (``model.to("cuda")``) while
    ``host_resident`` is set: Engram tables in host memory, and the hasher next to them."""

    host_resident = False

    def _apply(self, fn, recurse=True):
        return self if self.host_resident else super()._apply(fn, recurse)

    def place(self, device: torch.device, pin: bool = False) -> None:
        self.host_resident = False
        self.to(device)
        if pin:
            for tensor in list(self.parameters()) + list(self.buffers()):
                tensor.data = tensor.data.pin_memory()
        self.host_resident = True


class EngramHasher(HostResident):
    """Token ids -> hash ids [B, L, n_engram_layers, hash_columns] (rows of each layer's table)."""

    def __init__(self, cfg: EngramConfig):
        super().__init__()
        self.cfg = cfg
        primes = torch.tensor(cfg.primes, dtype=torch.long)                  # [layers, orders, heads]
        flat = primes.flatten(1)                                            # [layers, orders * heads]
        self.register_buffer("primes", primes, persistent=False)
        self.register_buffer("offsets", flat.cumsum(-1) - flat, persistent=False)
        self.register_buffer("multipliers", hash_multipliers(cfg.layer_ids, cfg.max_ngram_size,
                                                             max(cfg.compressed_vocab_size, 1)), persistent=False)
        self.register_buffer("token_map", torch.empty(0, dtype=torch.long), persistent=False)

    def set_token_map(self, token_map) -> None:
        token_map = torch.as_tensor(token_map, dtype=torch.long, device=self.primes.device)
        size = int(token_map.max()) + 1
        if size != self.cfg.compressed_vocab_size:
            raise ValueError(f"tokenizer compresses to {size} ids but engram_compressed_vocab_size is "
                             f"{self.cfg.compressed_vocab_size}: the hash multipliers would differ")
        self.token_map = token_map

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if not self.token_map.numel():
            raise RuntimeError("Engram needs the tokenizer's compressed-id map: call set_token_map first")
        ids = self.token_map[input_ids.to(self.token_map.device)]                     # [B, L]
        pad = self.token_map[self.cfg.pad_token_id]
        grams = [ids]
        for shift in range(1, self.cfg.max_ngram_size):                               # tok[t - shift]
            grams.append(F.pad(ids, (shift, 0), value=int(pad))[:, : ids.shape[1]])
        tokens = torch.stack(grams, dim=-1)                                           # [B, L, N]
        products = tokens.unsqueeze(2) * self.multipliers                             # [B, L, layers, N]
        mix, columns = products[..., 0], []
        for order in range(2, self.cfg.max_ngram_size + 1):
            mix = torch.bitwise_xor(mix, products[..., order - 1])
            columns.append(mix.unsqueeze(-1) % self.primes[:, order - 2])            # [B, L, layers, heads]
        return torch.cat(columns, dim=-1) + self.offsets


def engram_indices(input_ids: torch.Tensor, hasher: EngramHasher) -> torch.Tensor:
    """Hash ids of every position, computed from token ids alone (so they can be prefetched)."""
    return hasher(input_ids)


# ------------------------------------------------------------------ 5. the table and the fusion
class EngramEmbedding(HostResident):
    """The hash table: rows as stored (BF16, or FP8 e4m3 + one UE8M0 scale per 32, dequantized per row
    on lookup). ``host_resident`` keeps it where it is when the model moves (``model.to("cuda")``)."""

    def __init__(self, rows: int, head_dim: int, scale_columns: int = 0, dtype=torch.float32):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(rows, head_dim, dtype=dtype), requires_grad=dtype.is_floating_point)
        self.scale = None
        if scale_columns:
            self.scale = nn.Parameter(torch.empty(rows, scale_columns, dtype=torch.float8_e8m0fnu),
                                      requires_grad=False)

    def gather(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Raw rows (and their scales) for ``indices``, on the table's device."""
        idx = indices.to(self.weight.device)
        rows = F.embedding(idx, self.weight)
        return rows, (F.embedding(idx, self.scale.view(torch.uint8)) if self.scale is not None else None)

    @staticmethod
    def decode(rows: torch.Tensor, scales: torch.Tensor | None) -> torch.Tensor:
        """Gathered rows as float32: FP8 rows times 2**(e8m0 - 127) per group of 32 columns."""
        if scales is None:
            return rows.float()
        factors = torch.exp2(scales.float() - 127.0)                                  # [..., head_dim / 32]
        grouped = rows.float().unflatten(-1, (scales.shape[-1], -1))                 # [..., groups, 32]
        return (grouped * factors.unsqueeze(-1)).flatten(-2)


class ShortConv(nn.Module):
    """The demo's short depthwise causal conv over the hc*D channels: per-stream RMSNorm, conv1d with
    left padding (kernel-1)*dilation (no look-ahead), SiLU."""

    def __init__(self, cfg: EngramConfig):
        super().__init__()
        channels = cfg.hc_mult * cfg.hidden_size
        self.dilation, self.kernel, self.eps = cfg.max_ngram_size, cfg.kernel_size, cfg.eps
        self.norm_weight = nn.Parameter(torch.ones(cfg.hc_mult, cfg.hidden_size))
        self.weight = nn.Parameter(torch.zeros(channels, 1, cfg.kernel_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, L, hc, D] -> [B, L, hc, D]."""
        batch, length, hc, dim = x.shape
        normed = x * torch.rsqrt(x.square().mean(-1, keepdim=True) + self.eps) * self.norm_weight
        seq = normed.reshape(batch, length, hc * dim).transpose(1, 2)                # [B, C, L]
        seq = F.pad(seq, ((self.kernel - 1) * self.dilation, 0))
        out = F.conv1d(seq, self.weight.to(seq.dtype), groups=hc * dim, dilation=self.dilation)
        return F.silu(out).transpose(1, 2).reshape(batch, length, hc, dim)


class Engram(nn.Module):
    """One layer's Engram: table, ``wkv`` (hash rows -> hc keys + one value), per-stream gate norms."""

    def __init__(self, cfg: EngramConfig, layer_id: int, table_dtype=torch.float32, table_scale_columns: int = 0):
        super().__init__()
        self.cfg, self.layer_id = cfg, layer_id
        self.layer_index = cfg.layer_ids.index(layer_id)
        rows = cfg.num_embeddings[self.layer_index]
        self.embed = EngramEmbedding(rows, cfg.head_dim, table_scale_columns, table_dtype)
        self.wkv = nn.Linear(cfg.hash_columns * cfg.head_dim, cfg.hidden_size * (cfg.hc_mult + 1), bias=False)
        self.q_weight = nn.Parameter(torch.ones(cfg.hc_mult, cfg.hidden_size))
        self.k_weight = nn.Parameter(torch.ones(cfg.hc_mult, cfg.hidden_size))
        self.short_conv = ShortConv(cfg) if cfg.kernel_size else None

    def gates(self, hidden: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """hidden, keys: [B, L, hc, D] -> sigmoid gate per (token, stream) [B, L, hc], in float32."""
        h, k = hidden.float(), keys.float()
        rstd = torch.rsqrt(h.square().mean(-1) + self.cfg.eps) * torch.rsqrt(k.square().mean(-1) + self.cfg.eps)
        weight = self.q_weight.float() * self.k_weight.float()
        dot = (h * weight * k).sum(-1) * rstd * self.cfg.hidden_size ** -0.5
        return torch.sigmoid(torch.copysign(dot.abs().clamp_min(GATE_FLOOR).sqrt(), dot))

    def forward(self, hidden: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """hidden: [B, L, hc, D]; rows: [B, L, hash_columns, head_dim] (decoded) -> hidden + Engram."""
        kv = self.wkv(rows.flatten(-2).to(self.wkv.weight.dtype))                    # [B, L, (hc + 1) D]
        dim, hc = self.cfg.hidden_size, self.cfg.hc_mult
        keys, value = kv.split([hc * dim, dim], dim=-1)
        gate = self.gates(hidden, keys.unflatten(-1, (hc, dim)))                      # [B, L, hc]
        out = gate.unsqueeze(-1) * value.float().unsqueeze(-2)                        # [B, L, hc, D]
        if self.short_conv is not None:
            out = out + self.short_conv(out)
        return (hidden.float() + out).to(hidden.dtype)

"""The host side of the static-shape graphs: the KV window, the mask and the positions.

A static graph (``static_graph.StaticDecoder``) sees ``C`` cache slots and ``T`` new tokens per call. The
host keeps the cache, ``n`` filled slots, and per call:

- pads the new tokens to T (padding is never committed),
- builds ``attention_bias`` [1, 1, T, C + T]: 0 for slots < n and for new keys at or before the query,
  ``MASK_VALUE`` elsewhere (unfilled slots, padding, the future),
- after the call, copies the first ``valid`` rows of each ``present_*`` into slots n .. n + valid - 1.

This is what an app on the phone does around the two graphs, and what the calibration and the
validation here do, so the quantizer sees the inputs the runtime will give.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

# Added to the scores of keys a query may not see. Not -inf or -1e4: 16-bit quantized attention scores
# must keep their resolution (a range of ~110 in 65,536 steps is 0.0017 per step; exp(-100) is 4e-44).
MASK_VALUE = -100.0


def io_names(layers: int) -> tuple[list[str], list[str]]:
    past = [f"past_{kv}_{i}" for i in range(layers) for kv in ("key", "value")]
    present = [f"present_{kv}_{i}" for i in range(layers) for kv in ("key", "value")]
    return ["input_ids", "position_ids", "attention_bias", *past], ["logits", *present]


@dataclass(frozen=True)
class GraphShape:
    layers: int
    kv_heads: int
    head_dim: int
    context: int          # C: KV slots
    step: int             # T: new tokens per call

    @staticmethod
    def of(spec, context: int, step: int) -> "GraphShape":
        return GraphShape(spec.num_hidden_layers, spec.num_key_value_heads, spec.head_dim, context, step)

    def with_step(self, step: int) -> "GraphShape":
        return replace(self, step=step)

    def example_torch(self):
        import torch
        host = StaticHost(self)
        feeds, _ = host.feeds([0], self.step)
        return tuple(torch.from_numpy(v) for v in feeds.values())


class StaticHost:
    def __init__(self, shape: GraphShape):
        self.shape = shape
        cache = (shape.layers, 2, 1, shape.kv_heads, shape.context, shape.head_dim)
        self.cache = np.zeros(cache, dtype=np.float32)       # [L, K/V, 1, KV, C, D]
        self.filled = 0

    def feeds(self, tokens, step: int) -> tuple[dict[str, np.ndarray], int]:
        """Inputs for one call of a graph taking ``step`` tokens; returns (feeds, valid tokens)."""
        valid, c, n = len(tokens), self.shape.context, self.filled
        if not 0 < valid <= step:
            raise ValueError(f"{valid} tokens for a graph of {step}")
        if n + valid > c:
            raise ValueError(f"context full: {n} + {valid} tokens > {c} slots")
        ids = np.zeros((1, step), dtype=np.int32)
        ids[0, :valid] = np.asarray(tokens, dtype=np.int32)
        bias = np.full((1, 1, step, c + step), MASK_VALUE, dtype=np.float32)
        bias[0, 0, :, :n] = 0.0
        bias[0, 0, :, c:] = np.triu(np.full((step, step), MASK_VALUE, dtype=np.float32), 1)
        feeds = {"input_ids": ids, "position_ids": np.arange(n, n + step, dtype=np.int32).reshape(1, -1),
                 "attention_bias": bias}
        names = io_names(self.shape.layers)[0][3:]
        feeds.update(zip(names, (self.cache[i // 2, i % 2].copy() for i in range(2 * self.shape.layers))))
        return feeds, valid

    def commit(self, outputs, valid: int) -> np.ndarray:
        """Store the new K/V rows; returns the logits of the valid positions [valid, V]."""
        logits, *present = outputs
        n = self.filled
        for i, tensor in enumerate(present):
            self.cache[i // 2, i % 2, :, :, n:n + valid] = tensor[:, :, :valid]
        self.filled += valid
        return logits[0, :valid]


class StaticRunner:
    """A prefill/decode pair (any two callables feeds -> outputs) with the host around it, as a
    ``validate.backends.LogitsSource``: every call of a chunk or a sequence goes through the static graphs."""

    kind = "onnx-static"

    def __init__(self, shape: GraphShape, prefill, decode, runtime: str, path=None, tokenizer=None):
        self.shape, self.prefill, self.decode, self.runtime = shape, prefill, decode, runtime
        self.path, self.tokenizer = path, tokenizer
        self.host: StaticHost | None = None

    def _prefill(self, tokens) -> np.ndarray:
        """Logits [n, V] of ``tokens`` from an empty window, ``step`` tokens per prefill call."""
        self.host = StaticHost(self.shape)
        rows = []
        for start in range(0, len(tokens), self.shape.step):
            feeds, valid = self.host.feeds(tokens[start:start + self.shape.step], self.shape.step)
            rows.append(self.host.commit(self.prefill(feeds), valid))
        return np.concatenate(rows).astype(np.float32)

    def last_logits(self, tokens, keep: int):
        import torch
        return torch.from_numpy(self._prefill(tokens.view(-1).tolist())[-keep:])

    def begin(self, prompt):
        import torch
        return torch.from_numpy(self._prefill(prompt.view(-1).tolist())[-1])

    def advance(self, token: int):
        import torch
        feeds, valid = self.host.feeds([token], 1)
        return torch.from_numpy(self.host.commit(self.decode(feeds), valid)[-1].astype(np.float32))

    def close(self) -> None:
        self.prefill = self.decode = self.host = None

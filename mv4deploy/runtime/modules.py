"""What executes a module where the plan put it: routed experts split across tiers, and hooks that run a
module on the CPU beside its weights or stream its weights to the GPU for each call.

- ``PlacedExperts`` replaces a layer's ``DeepseekV4Experts``. Each part (a range of experts) lives on its tier:
  GPU-resident experts run there; host experts either run on the CPU (the hidden rows routed to them go to the
  host and their sum comes back: two activation transfers per layer) or are streamed (each expert a token hits
  is copied to the GPU, on a side CUDA stream, and runs there). The arithmetic is transformers' own per-expert
  loop (``_apply_gate``: the clamped SwiGLU), so a split model computes what the unsplit one does.
- ``run_on`` hooks: a module whose weights stay in host RAM runs there; its tensor inputs move to the host
  and its outputs back to the caller's device.
- ``stream`` hooks: a module's host-resident parameters are copied to the device that runs the layer before
  its forward and dropped after it (the GPU holds one module's weights at a time).

The mode of each is read per call from ``ExecState.phase`` ("prefill" or "decode"): the plan may run
offloaded experts on the CPU in decode and stream them for prefill. ``ExecState.counters`` count what
crossed (bytes streamed, host calls, KV entries fetched) so tests can check the machinery did run.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from mv4deploy.runtime.placement import ExpertPart


@dataclass
class ExecState:
    phase: str = "prefill"
    counters: Counter = field(default_factory=Counter)


def move(value, device: torch.device):
    """Tensors (nested in tuples, lists, dicts) moved to ``device``; everything else as it is."""
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, (tuple, list)):
        return type(value)(move(v, device) for v in value)
    if isinstance(value, dict):
        return {k: move(v, device) for k, v in value.items()}
    return value


def _first_device(args, kwargs) -> torch.device | None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            return value.device
    return None


def pin(tensor: torch.Tensor) -> torch.Tensor:
    """Page-locked when a CUDA device exists (async copies need it), as it is otherwise."""
    return tensor.pin_memory() if torch.cuda.is_available() and tensor.device.type == "cpu" else tensor


@dataclass
class _Part:
    experts: tuple[int, ...]
    gate_up: torch.Tensor        # [n, 2I, H] on the part's device
    down: torch.Tensor           # [n, H, I]
    placement: ExpertPart


class PlacedExperts(nn.Module):
    """A layer's routed experts, each range on its own tier (see the module docstring)."""

    def __init__(self, experts: nn.Module, parts: list[ExpertPart], devices: dict[str, torch.device],
                 state: ExecState):
        super().__init__()
        self.num_experts, self.state = experts.num_experts, state
        # transformers' clamp + SwiGLU, bound to a stand-in holding only what it reads (binding it to the
        # original module would keep that module's full expert weights alive beside the placed copies)
        self.apply_gate = partial(type(experts)._apply_gate, SimpleNamespace(limit=experts.limit,
                                                                             act_fn=experts.act_fn))
        self.parts = []
        for part in parts:
            index = torch.tensor(part.experts, dtype=torch.long)
            device = devices[part.where.tier]
            gate_up = experts.gate_up_proj.data.index_select(0, index).to(device)
            down = experts.down_proj.data.index_select(0, index).to(device)
            if part.where.off_gpu:
                gate_up, down = pin(gate_up), pin(down)
            self.parts.append(_Part(part.experts, gate_up, down, part))
        self.host = devices.get("host", torch.device("cpu"))
        self._side_stream = None

    def forward(self, hidden: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(hidden)
        for part in self.parts:
            mode = part.placement.where.mode(self.state.phase)
            if mode == "cpu":
                self._on_host(part, hidden, top_k_index, top_k_weights, out)
            elif mode == "stream":
                self._streamed(part, hidden, top_k_index, top_k_weights, out)
            else:
                self._resident(part, hidden, top_k_index, top_k_weights, out)
        return out

    def _hits(self, part: _Part, top_k_index: torch.Tensor) -> list[tuple[int, int]]:
        """(slot in the part, expert) for the part's experts any token routes to, ascending."""
        hit = set(torch.unique(top_k_index).tolist())
        return [(slot, e) for slot, e in enumerate(part.experts) if e in hit]

    def _expert(self, hidden, top_k_index, top_k_weights, expert, gate_up, down, out) -> None:
        """transformers' per-expert step: tokens routed to ``expert`` through its SwiGLU, weighted, added."""
        token_idx, top_k_pos = torch.where(top_k_index == expert)
        current = self.apply_gate(F.linear(hidden[token_idx], gate_up))
        current = F.linear(current, down) * top_k_weights[token_idx, top_k_pos, None]
        out.index_add_(0, token_idx, current.to(out.dtype))

    def _resident(self, part, hidden, top_k_index, top_k_weights, out) -> None:
        for slot, expert in self._hits(part, top_k_index):
            self._expert(hidden, top_k_index, top_k_weights, expert, part.gate_up[slot], part.down[slot], out)

    def _on_host(self, part, hidden, top_k_index, top_k_weights, out) -> None:
        """The CPU runs the part beside its weights: hidden rows go to the host, their sum comes back."""
        hits = self._hits(part, top_k_index)
        if not hits:
            return
        device = part.gate_up.device
        h, idx, w = hidden.to(device), top_k_index.to(device), top_k_weights.to(device)
        partial = torch.zeros_like(h)
        for slot, expert in hits:
            self._expert(h, idx, w, expert, part.gate_up[slot], part.down[slot], partial)
        out += partial.to(out.device, non_blocking=True)
        self.state.counters["host_expert_calls"] += len(hits)
        self.state.counters["activation_bytes_crossed"] += 2 * h.numel() * h.element_size()

    def _streamed(self, part, hidden, top_k_index, top_k_weights, out) -> None:
        """Each hit expert's weights are copied to the GPU (all copies queued on a side stream, each expert
        waits for its own) and run there; the copies are dropped after use."""
        hits = self._hits(part, top_k_index)
        copies = [self._copy(part, slot, hidden.device) for slot, _ in hits]
        for (slot, expert), (gate_up, down, event) in zip(hits, copies):
            if event is not None:
                torch.cuda.current_stream(hidden.device).wait_event(event)
            self._expert(hidden, top_k_index, top_k_weights, expert, gate_up, down, out)
            self.state.counters["streamed_bytes"] += gate_up.numel() * gate_up.element_size() \
                + down.numel() * down.element_size()

    def _copy(self, part, slot: int, device: torch.device):
        if device.type != "cuda":
            return part.gate_up[slot].to(device, copy=True), part.down[slot].to(device, copy=True), None
        self._side_stream = self._side_stream or torch.cuda.Stream(device)
        with torch.cuda.stream(self._side_stream):
            gate_up = part.gate_up[slot].to(device, non_blocking=True)
            down = part.down[slot].to(device, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self._side_stream)
        for tensor in (gate_up, down):
            tensor.record_stream(torch.cuda.current_stream(device))
        return gate_up, down, event


def run_on(module: nn.Module, device: torch.device, when, state: ExecState) -> None:
    """While ``when(state.phase)`` holds, ``module`` runs on ``device`` (its weights' home): inputs are
    moved there and outputs back to the device of its first tensor input."""
    caller: list[torch.device | None] = [None]

    def before(mod, args, kwargs):
        if not when(state.phase):
            return None
        caller[0] = _first_device(args, kwargs)
        state.counters["host_module_calls"] += 1
        return move(args, device), move(kwargs, device)

    def after(mod, args, kwargs, output):
        if not when(state.phase) or caller[0] is None:
            return None
        return move(output, caller[0])

    module.register_forward_pre_hook(before, with_kwargs=True)
    module.register_forward_hook(after, with_kwargs=True)


def stream(module: nn.Module, names: list[str], device: torch.device, when, state: ExecState) -> None:
    """While ``when(state.phase)`` holds, the module's host-resident tensors ``names`` (its own parameters or
    buffers) are copied to ``device`` for each forward and put back afterwards."""
    home = {name: _tensor(module, name).data for name in names}

    def before(mod, args):
        if not when(state.phase):
            return
        for name, data in home.items():
            _tensor(mod, name).data = data.to(device, non_blocking=True, copy=True)
            state.counters["streamed_bytes"] += data.numel() * data.element_size()

    def after(mod, args, output):
        for name, data in home.items():
            _tensor(mod, name).data = data

    module.register_forward_pre_hook(before)
    module.register_forward_hook(after)


def _tensor(module: nn.Module, name: str) -> torch.Tensor:
    return module._parameters[name] if name in module._parameters else module._buffers[name]

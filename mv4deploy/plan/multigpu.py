"""How several GPUs share the model: split by layers (pipeline) or shard every layer (tensor + expert
parallel), and what crossing between them costs per decode step and per prefill chunk.

- Pipeline: each GPU runs a contiguous range of layers (balanced by bytes; the embedding on the first,
  the head on the last). Only the hidden state crosses, hc_mult x hidden per token, once per stage
  boundary. At batch 1 the stages run one after the other, so GPU bandwidth does not add up.
- Tensor + expert parallel: attention and dense blocks split their heads / columns over all GPUs, routed
  experts are spread over them; every GPU reads 1/G of each layer, so bandwidth adds up, at the price
  of collectives in every layer (an all-reduce after attention, a dispatch and a combine around the
  experts), each a latency plus its bytes over the interconnect, and of the busiest GPU setting the pace
  of the experts (``costs.ep_imbalance``). Single-KV-head caches (MLA, V4) are replicated per GPU.

Tensor + expert parallel is a candidate only where GPUs reach each other directly (NVLink, or PCIe
with P2P); without P2P every collective would bounce through host memory. The planner evaluates the
candidates and keeps the faster; ``reason`` says why, with the numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from mv4deploy.hardware.profile import HardwareProfile, LinkKind
from mv4deploy.plan.groups import GroupClass, Grouping
from mv4deploy.plan.tiers import Machine, Tier
from mv4deploy.plan.workload import ACTIVATION_BYTES


class Mode(str, Enum):
    SINGLE = "single"
    PIPELINE = "pipeline"
    TENSOR_EXPERT = "tensor+expert parallel"
    CPU_ONLY = "cpu only"


@dataclass(frozen=True)
class Layout:
    mode: Mode
    gpus: tuple[Tier, ...]                 # one per GPU, or one sharded over all
    stage_of_layer: dict[int, int] = field(default_factory=dict)   # pipeline: GPU index per layer
    shards: int = 1

    def gpu_for(self, layer: int | None, cls: GroupClass | None = None) -> Tier | None:
        if not self.gpus:
            return None
        if self.mode is not Mode.PIPELINE:
            return self.gpus[0]
        if layer is None:
            return self.gpus[-1] if cls is GroupClass.HEAD else self.gpus[0]
        return self.gpus[self.stage_of_layer.get(layer, len(self.gpus) - 1)]

    def stage_layers(self, layers: list[int]) -> list[tuple[Tier | None, set[int]]]:
        if self.mode is not Mode.PIPELINE:
            return [(self.gpus[0] if self.gpus else None, set(layers))]
        return [(gpu, {layer for layer in layers if self.stage_of_layer[layer] == i}) for i, gpu in enumerate(self.gpus)]


def candidate_modes(profile: HardwareProfile) -> list[Mode]:
    gpus = profile.gpus
    if gpus is None:
        return [Mode.CPU_ONLY]
    if gpus.count == 1:
        return [Mode.SINGLE]
    direct = profile.interconnect.kind is LinkKind.NVLINK or profile.interconnect.p2p
    return [Mode.PIPELINE, Mode.TENSOR_EXPERT] if direct else [Mode.PIPELINE]


def _stages(grouping: Grouping, count: int) -> dict[int, int]:
    """Contiguous layer ranges with about equal bytes each (the embedding counts for the first GPU and
    the head for the last, as they live there)."""
    per_layer: dict[int, int] = {}
    head = embedding = 0
    for g in grouping.groups:
        if g.layer is None:
            head += g.native_bytes if g.cls is GroupClass.HEAD else 0
            embedding += g.native_bytes if g.cls is GroupClass.EMBEDDING else 0
        else:
            per_layer[g.layer] = per_layer.get(g.layer, 0) + g.native_bytes
    total = sum(per_layer.values()) + head + embedding
    stage, running, stages = 0, embedding, {}
    for layer in sorted(per_layer):
        if stage < count - 1 and running + per_layer[layer] / 2 > total * (stage + 1) / count:
            stage += 1
        stages[layer] = stage
        running += per_layer[layer]
    return stages


def build_layout(machine: Machine, mode: Mode, grouping: Grouping) -> Layout:
    if mode is Mode.CPU_ONLY:
        return Layout(mode, ())
    if mode is Mode.TENSOR_EXPERT:
        return Layout(mode, machine.gpu_shard, shards=machine.profile.gpus.count)
    tiers = machine.gpus
    stages = _stages(grouping, len(tiers)) if mode is Mode.PIPELINE else {}
    return Layout(mode, tiers, stages)


def _transfer_s(profile: HardwareProfile, nbytes: float) -> float:
    link = profile.interconnect
    return link.latency_s + (nbytes / link.bandwidth_bytes_per_s if link.bandwidth_bytes_per_s else 0.0)


def crossing_s(profile: HardwareProfile, layout: Layout, spec, tokens: int, moe_layers: int, layers: int) -> float:
    """Seconds per step (``tokens`` tokens) spent crossing between GPUs, independent of placement."""
    if layout.mode is Mode.PIPELINE:
        hidden = tokens * spec.hidden_size * spec.hc_mult * ACTIVATION_BYTES
        return (len(layout.gpus) - 1) * _transfer_s(profile, hidden)
    if layout.mode is not Mode.TENSOR_EXPERT:
        return 0.0
    g = layout.shards
    reduce = _transfer_s(profile, 2 * (g - 1) / g * tokens * spec.hidden_size * ACTIVATION_BYTES)
    experts = getattr(spec, "num_experts_per_tok", 1) or 1
    exchange = _transfer_s(profile, tokens * experts * spec.hidden_size * ACTIVATION_BYTES / g)
    return moe_layers * (reduce + 2 * exchange) + (layers - moe_layers) * 2 * reduce


def kv_replicas(spec, layout: Layout) -> int:
    """Copies of the KV cache a sharded tier keeps: heads split over GPUs, but a cache with fewer KV
    heads than GPUs (MLA and V4 have one) is replicated to the rest."""
    if layout.mode is not Mode.TENSOR_EXPERT:
        return 1
    kv_heads = getattr(spec, "num_key_value_heads", 1)   # MLA specs have none: one latent per token
    return max(1, layout.shards // max(kv_heads, 1))


REASONS = {
    Mode.SINGLE: "one GPU",
    Mode.CPU_ONLY: "no GPU in the profile: everything runs on the CPU",
    Mode.PIPELINE: "layers split across {n} GPUs (pipeline): only the hidden state crosses, once per stage "
                   "boundary{why}",
    Mode.TENSOR_EXPERT: "tensor parallel attention + expert parallel MoE across {n} GPUs over {link}: each GPU "
                        "reads 1/{n} of every layer; {collectives} collectives per step",
}


def reason(profile: HardwareProfile, layout: Layout, others: dict[Mode, tuple[str, float]]) -> str:
    """Why this layout: the rule, and what the other candidates came to (verdict, decode tokens/s)."""
    n = len(layout.gpus) if layout.mode is Mode.PIPELINE else layout.shards
    link = profile.interconnect
    why = ""
    if layout.mode is Mode.PIPELINE and not (link.kind is LinkKind.NVLINK or link.p2p):
        why = (f"; the GPUs have no P2P path ({link.kind.value} through host memory), so tensor/expert "
               f"parallel would send 2-3 collectives per layer through host RAM")
    text = REASONS[layout.mode].format(n=n, why=why, link=link.kind.value, collectives="3 per MoE layer")
    rest = [f"{m.value}: {verdict}, {rate:,.1f} tok/s" for m, (verdict, rate) in others.items()
            if m is not layout.mode]
    if rest:
        text += f" (the alternative, {'; '.join(rest)}, ranks lower on verdict or decode speed)"
    return text

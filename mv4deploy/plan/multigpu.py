"""How several GPUs share the model: split by layers (pipeline) or shard every layer (tensor + expert
parallel), and what crossing between them costs per decode step and per prefill chunk.

- Pipeline: each GPU runs a contiguous range of layers (balanced by bytes; the embedding on the first,
  the head on the last). Only the hidden state crosses, hc_mult x hidden per token, once per stage
  boundary. At batch 1 the stages run one after the other, so GPU bandwidth does not add up.
- Tensor parallel: every weight, routed experts included, is split by columns over all GPUs; every GPU
  reads 1/G of each layer, so bandwidth adds up, at the price of two all-reduces per layer (after
  attention, after the MLP / MoE). What vLLM and SGLang do without ``--enable-expert-parallel``, and the
  faster choice at small batches: every GPU reads its slice of the same experts.
- Tensor + expert parallel: attention and dense blocks split as above, routed experts spread whole over
  the GPUs: an all-reduce after attention, a dispatch and a combine around the experts (all-to-all),
  each a latency plus its bytes over the interconnect, and the busiest GPU sets the pace of the experts
  (``costs.ep_imbalance``). Single-KV-head caches (MLA, V4) are replicated per GPU in both.

Tensor (+ expert) parallel is a candidate only where GPUs reach each other directly (NVLink, or PCIe
with P2P); without P2P every collective would bounce through host memory. The planner evaluates the
candidates and keeps the faster; ``reason`` says why, with the numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from mv4deploy.engines.engine import Engine
from mv4deploy.hardware.profile import HardwareProfile, LinkKind
from mv4deploy.plan.groups import GroupClass, Grouping
from mv4deploy.plan.tiers import Machine, Tier
from mv4deploy.plan.workload import ACTIVATION_BYTES


class Mode(str, Enum):
    SINGLE = "single"
    PIPELINE = "pipeline"
    TENSOR = "tensor parallel"
    TENSOR_EXPERT = "tensor+expert parallel"
    CPU_ONLY = "cpu only"

    @property
    def sharded(self) -> bool:
        """Every GPU holds a slice of every layer (tensor parallel, with or without expert parallel MoE)."""
        return self is Mode.TENSOR or self is Mode.TENSOR_EXPERT


@dataclass(frozen=True)
class Layout:
    mode: Mode
    gpus: tuple[Tier, ...]                 # one per GPU, or one sharded over all
    stage_of_layer: dict[int, int] = field(default_factory=dict)   # pipeline: GPU index per layer
    shards: int = 1

    @property
    def gpu_count(self) -> int:
        """GPUs the layout runs on (a pipeline's stages, or the shards of one sharded tier)."""
        return max(len(self.gpus), self.shards)

    @property
    def expert_shards(self) -> int:
        """GPUs the routed experts are spread over whole (expert parallel: the busiest sets the pace)."""
        return self.shards if self.mode is Mode.TENSOR_EXPERT else 1

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


def candidate_modes(profile: HardwareProfile, engine: Engine | None = None) -> list[Mode]:
    """The layouts the machine allows, less those ``engine`` does not implement (its ``layouts``)."""
    gpus = profile.gpus
    if gpus is None:
        return [Mode.CPU_ONLY]
    if gpus.count == 1:
        return [Mode.SINGLE]
    direct = profile.interconnect.kind is LinkKind.NVLINK or profile.interconnect.p2p
    modes = [Mode.PIPELINE, Mode.TENSOR, Mode.TENSOR_EXPERT] if direct else [Mode.PIPELINE]
    if engine is None:
        return modes
    return [m for m in modes if m.name.lower() in engine.layouts] or modes[:1]


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
    if mode.sharded:
        return Layout(mode, machine.gpu_shard, shards=machine.profile.gpus.count)
    tiers = machine.gpus
    stages = _stages(grouping, len(tiers)) if mode is Mode.PIPELINE else {}
    return Layout(mode, tiers, stages)


def _transfer_s(machine: Machine, nbytes: float, collective: str | None = None) -> float:
    """One crossing of ``nbytes``: the link's latency and bandwidth, or, for a collective the engine models
    (``all_reduce``, ``all_to_all``), the engine's latency and fraction of the link bandwidth."""
    link, engine = machine.profile.interconnect, machine.engine
    modelled = engine.collective(link.kind.value, collective) if engine is not None and collective else None
    latency_s, fraction = (modelled.latency_s, modelled.bandwidth_fraction) if modelled else (link.latency_s, 1.0)
    bandwidth = link.bandwidth_bytes_per_s * fraction if link.bandwidth_bytes_per_s else None
    return latency_s + (nbytes / bandwidth if bandwidth else 0.0)


def crossing_s(machine: Machine, layout: Layout, spec, tokens: int, moe_layers: int, layers: int) -> float:
    """Seconds per step (``tokens`` tokens) spent crossing between GPUs, independent of placement."""
    if layout.mode is Mode.PIPELINE:
        hidden = tokens * spec.hidden_size * spec.hc_mult * ACTIVATION_BYTES
        return (len(layout.gpus) - 1) * _transfer_s(machine, hidden)
    if not layout.mode.sharded:
        return 0.0
    g = layout.shards
    reduce = _transfer_s(machine, 2 * (g - 1) / g * tokens * spec.hidden_size * ACTIVATION_BYTES, "all_reduce")
    if layout.mode is Mode.TENSOR:
        return layers * 2 * reduce
    experts = getattr(spec, "num_experts_per_tok", 1) or 1
    exchange = _transfer_s(machine, tokens * experts * spec.hidden_size * ACTIVATION_BYTES / g, "all_to_all")
    return moe_layers * (reduce + 2 * exchange) + (layers - moe_layers) * 2 * reduce


def kv_replicas(spec, layout: Layout) -> int:
    """Copies of the KV cache a sharded tier keeps: heads split over GPUs, but a cache with fewer KV
    heads than GPUs (MLA and V4 have one) is replicated to the rest."""
    if not layout.mode.sharded:
        return 1
    kv_heads = getattr(spec, "num_key_value_heads", 1)   # MLA specs have none: one latent per token
    return max(1, layout.shards // max(kv_heads, 1))


REASONS = {
    Mode.SINGLE: "one GPU",
    Mode.CPU_ONLY: "no GPU in the profile: everything runs on the CPU",
    Mode.PIPELINE: "layers split across {n} GPUs (pipeline): only the hidden state crosses, once per stage "
                   "boundary{why}",
    Mode.TENSOR: "tensor parallel across {n} GPUs over {link}: each GPU reads 1/{n} of every weight, experts "
                 "included; 2 all-reduces per layer",
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

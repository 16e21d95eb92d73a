"""What one step of a cluster layout costs: a decode step at the per-rank batch, a prefill of the input length.

The model is reduced once (``shape_of``) to a few totals from the planner's groups: per-layer dense bytes and
FLOPs (attention, indexer, compressor, shared expert, dense MLP, router, norms), routed-expert bytes and FLOPs,
the embedding and head, and the KV layout (``model.kv``). A layout (``ClusterLayout``) is ``tp`` attention
tensor parallel within a node, ``dp`` attention data-parallel ranks, ``pp`` pipeline stages, and the MoE either
expert parallel over the stage's ``tp x dp`` GPUs (``ep``) or split by columns over them (``tp``).

One pipeline stage holds ``ceil(L / pp)`` of the L layers (the slowest stage sets the pace). Per GPU, with B
sequences per DP rank and T = B x dp tokens entering the stage's MoE:

- dense: ``max(dense_bytes / tp / BW, B x dense_flops / tp / FLOPS)`` (``costs.on_gpu``, the engine's kernel
  fractions); attention: ``B x attention_flops(ctx) / tp`` and the KV the B sequences read (MLA / V4 keep one KV
  head, so every TP rank reads all of it); in decode, with one KV head, ``x decode_tile_padding(tp)``: the
  kernels fill 64-row tiles with a rank's query heads, so TP below 64 heads per rank does not shrink the work;
- experts, expert parallel over e GPUs: the busiest GPU has u = ``costs.ep_imbalance(T x k, e)`` times the mean
  load: bytes ``min(all local experts, u x (E/e) x (1 - (1 - k/E)^T) experts)``, FLOPs ``u x T x expert_flops / e``;
  split by columns over s GPUs: ``touched experts / s`` bytes, ``T x expert_flops / s`` FLOPs;
- collectives per layer (the engine's latency + bytes / (link x fraction), per link kind): an all-reduce of
  ``2 (tp-1)/tp x B x hidden x 2 B`` over NVLink; expert parallel: a dispatch (FP8, 1 B per value) and a combine
  (BF16) of ``T/e x k x hidden x (e-1)/e`` per GPU, over NVLink within a node and the network beyond (the share
  ``(e - g_node)/e`` of it crosses nodes; the slower link sets the time); MoE split by columns: an all-reduce
  of ``2 (s-1)/s x T x hidden x 2 B`` over its s GPUs (network when s spans nodes), or, with DP-attention, an
  all-gather of the DP ranks' tokens to every GPU of the MoE and a reduce-scatter of its sums back to their
  ranks, ``(s-1)/s x T x hidden x 2 B`` each (SGLang's ``dp_attention``: NCCL, not its custom all-reduce);
- pipeline: ``pp - 1`` point-to-point sends of ``T x hidden x hc_mult x 2 B`` per step (network latency +
  bytes / network bandwidth when stages are on different nodes);
- the engine's fixed cost: ``per_layer x layers of the stage + per_step`` (``per_step_multi_gpu`` more on several GPUs).

A prefill of I tokens per DP rank is the same sum with T = I x dp, attention at the mean position
(``costs.mean_attention_flops``; a prompt's tokens fill the tiles), its roofline divided by the engine's
``prefill_efficiency``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import ceil

from mv4deploy.engines.engine import COLLECTIVES
from mv4deploy.formats import FORMATS
from mv4deploy.plan.costs import Work, attention_flops, ep_imbalance, mean_attention_flops, on_gpu
from mv4deploy.plan.groups import GroupClass
from mv4deploy.plan.workload import ACTIVATION_BYTES

EDGE = (GroupClass.EMBEDDING, GroupClass.HEAD)
DISPATCH_BYTES = 1      # DeepEP dispatches FP8 activations and combines in BF16 (engine_facts.md §2)
DECODE_TILE_ROWS = 64   # query rows per tile of the one-KV-head decode kernels (FlashMLA's kBlockM)
HBM, COMPUTE, NVLINK, NETWORK, FIXED = "HBM", "compute", "NVLink", "network", "per-layer fixed cost"


@dataclass(frozen=True)
class ClusterLayout:
    tp: int                 # attention tensor parallel (within a node)
    dp: int                 # attention data-parallel ranks (DP-attention) per pipeline stage
    pp: int                 # pipeline stages
    moe: str                # "ep": experts whole over the stage's GPUs; "tp": every expert split over them

    @property
    def stage_gpus(self) -> int:
        return self.tp * self.dp

    @property
    def gpus(self) -> int:
        return self.tp * self.dp * self.pp

    @property
    def ep(self) -> int:
        return self.stage_gpus if self.moe == "ep" else 1

    @property
    def name(self) -> str:
        parts = [f"tp{self.tp}"] + ([f"dp{self.dp}"] if self.dp > 1 else []) + \
                ([f"ep{self.ep}"] if self.ep > 1 else []) + ([f"pp{self.pp}"] if self.pp > 1 else [])
        return " ".join(parts)


@dataclass(frozen=True)
class ModelShape:
    """The model reduced to what a cluster layout's cost needs (bytes as stored, FLOPs per token)."""

    spec: object
    layers: int
    moe_layers: int
    dense_bytes: int           # every per-layer group but the routed experts, all layers
    dense_flops: float         # per token, all layers
    dense_compute: str
    expert_bytes: int          # routed experts, all layers
    expert_flops: float        # per token (k of E experts), all layers
    expert_compute: str
    experts: int               # routed experts per MoE layer
    top_k: int
    edge_bytes: int            # embedding + head
    head_bytes: int            # read whole every step (the embedding only by rows)
    head_flops: float
    table_bytes: int           # Engram tables (sharded over a stage's GPUs, looked up by rows)
    kv: object                 # model.kv.KVLayout
    _attention: dict = field(default_factory=dict, compare=False, repr=False)   # (context, prefill) -> FLOPs

    def kv_bytes(self, context_tokens: int, sequences: int = 1) -> int:
        return self.kv.bytes(context_tokens, sequences)

    def kv_read_bytes(self, context_tokens: int) -> float:
        """Bytes one sequence's decode step reads from its cache (all layers)."""
        return sum(p.read_bytes_per_step(context_tokens) for p in self.kv.pools) + self.kv.fixed_bytes_per_sequence

    def attention_flops(self, context_tokens: int, prefill: bool) -> float:
        """Attention-core FLOPs per token summed over layers: at ``context_tokens`` (decode) or the mean over
        a prompt of that length (prefill)."""
        key = (context_tokens, prefill)
        if key not in self._attention:
            per_layer = mean_attention_flops if prefill else attention_flops
            self._attention[key] = sum(per_layer(self.spec, layer, context_tokens) for layer in range(self.layers))
        return self._attention[key]

    def decode_tile_padding(self, tp: int) -> float:
        """How much more attention-core work a decode step does than its heads need on a rank of ``tp``: with
        one shared KV head (MLA, V4's sparse MLA) the decode kernels pack a rank's query heads into the rows of
        a 64-row tile (FlashMLA's ``Flash_fwd_kernel_traits_mla<576, 64, 64>``, rows = s_q x h_q / h_kv), so
        fewer than 64 heads per rank run a part-empty tile (V3's 128 heads at TP 8: 16 rows, 4x)."""
        if (getattr(self.spec, "num_key_value_heads", 1) or 1) != 1:
            return 1.0
        rows = max(1, self.spec.num_attention_heads // tp)
        return ceil(rows / DECODE_TILE_ROWS) * DECODE_TILE_ROWS / rows


def _compute(groups) -> str:
    biggest = max(groups, key=lambda g: g.native_bytes, default=None)
    fmt = FORMATS.get(biggest.main_format) if biggest is not None else None
    return fmt.compute if fmt is not None else "bf16"


def shape_of(spec, grouping, kv) -> ModelShape:
    groups = grouping.groups
    experts = [g for g in groups if g.cls is GroupClass.ROUTED_EXPERTS]
    edge = [g for g in groups if g.cls in EDGE]
    tables = [g for g in groups if g.cls is GroupClass.ENGRAM_TABLE]
    dense = [g for g in groups if g.layer is not None and g.cls not in (GroupClass.ROUTED_EXPERTS,
                                                                         GroupClass.ENGRAM_TABLE)]
    layers = len({g.layer for g in groups if g.layer is not None})
    per_layer_experts = max((g.experts for g in experts), default=0)
    moe_layers = len({g.layer for g in experts})
    return ModelShape(spec, layers, moe_layers, sum(g.native_bytes for g in dense),
                      sum(g.flops_per_token for g in dense), _compute(dense),
                      sum(g.native_bytes for g in experts), sum(g.flops_per_token for g in experts), _compute(experts),
                      per_layer_experts, getattr(spec, "num_experts_per_tok", 0) or 0,
                      sum(g.native_bytes for g in edge), sum(g.native_bytes for g in edge if g.cls is GroupClass.HEAD),
                      sum(g.flops_per_token for g in edge if g.cls is GroupClass.HEAD),
                      sum(g.native_bytes for g in tables), kv)


@dataclass(frozen=True)
class Links:
    """The cluster's links as the engine drives them: (latency s, bytes/s) per collective and link kind."""

    gpus_per_node: int
    nvlink: dict               # collective -> (latency_s, bytes_per_s)
    network: dict
    network_p2p: tuple[float, float]

    def collective_s(self, kind: str, nbytes: float, across_nodes: bool) -> float:
        latency, rate = (self.network if across_nodes else self.nvlink)[kind]
        return latency + nbytes / rate


def links_of(profile, engine) -> Links:
    def table(link: str, bandwidth: float, latency: float) -> dict:
        out = {}
        for kind in COLLECTIVES:     # an engine without its own gather or scatter figures: its all-reduce's
            c = engine.collective(link, kind) or engine.collective(link, "all_reduce") if engine is not None else None
            out[kind] = (c.latency_s, bandwidth * c.bandwidth_fraction) if c else (latency, bandwidth)
        return out
    ic, net = profile.interconnect, profile.network
    intra = ic.bandwidth_bytes_per_s or 1.0
    nvlink = table(ic.kind.value if ic.kind.value in ("nvlink", "pcie") else "nvlink", intra, ic.latency_s)
    network = table("network", net.bandwidth_bytes_per_s, net.latency_s) if net is not None else nvlink
    p2p = (net.latency_s, net.bandwidth_bytes_per_s) if net is not None else (ic.latency_s, intra)
    return Links(profile.gpus.count, nvlink, network, p2p)


@dataclass(frozen=True)
class StageCost:
    """Seconds of one stage step by resource (``HBM``, ``compute``, ``NVLink``, ``network``, the fixed cost),
    and the pipeline crossings of one step (added once per token, not per stage)."""

    by_resource: dict
    crossing_s: float

    @property
    def stage_s(self) -> float:
        return sum(self.by_resource.values())


def _add(out: dict, cost) -> None:
    out[COMPUTE if cost.limit.endswith("compute") else HBM] = out.get(
        COMPUTE if cost.limit.endswith("compute") else HBM, 0.0) + cost.seconds


def _experts_work(shape: ModelShape, layout: ClusterLayout, tokens: int, frac: float) -> Work:
    """What the busiest GPU of the stage reads and computes for the routed experts of ``tokens`` tokens."""
    if not shape.experts:
        return Work(0.0, 0.0, shape.expert_compute)
    stage_bytes, stage_flops = shape.expert_bytes * frac, tokens * shape.expert_flops * frac
    touched = 1.0 - (1.0 - shape.top_k / shape.experts) ** tokens
    if layout.moe == "tp":
        return Work(stage_bytes * touched / layout.stage_gpus, stage_flops / layout.stage_gpus, shape.expert_compute)
    e = layout.ep
    busiest = ep_imbalance(tokens * shape.top_k, e)
    read = min(stage_bytes / e, busiest * stage_bytes / e * touched)
    return Work(read, busiest * stage_flops / e, shape.expert_compute)


def _collectives_s(shape, layout: ClusterLayout, links: Links, rank_tokens: int, stage_layers: int,
                   moe_layers: int) -> dict:
    """Seconds of one stage's collectives per step, by link kind (NVLink, network)."""
    out = {NVLINK: 0.0, NETWORK: 0.0}
    hidden = shape.spec.hidden_size
    if layout.tp > 1:
        reduce_bytes = 2 * (layout.tp - 1) / layout.tp * rank_tokens * hidden * ACTIVATION_BYTES
        out[NVLINK] += stage_layers * links.collective_s("all_reduce", reduce_bytes, False)
    s, g_node = layout.stage_gpus, links.gpus_per_node
    if s <= 1 or not moe_layers:
        return out
    tokens = rank_tokens * layout.dp
    if layout.moe == "tp":
        share = (s - 1) / s * tokens * hidden * ACTIVATION_BYTES
        if layout.dp > 1:    # SGLang's DP-attention: all-gather the ranks' tokens, reduce-scatter the MoE's sums back
            per_layer = links.collective_s("all_gather", share, s > g_node) + \
                links.collective_s("reduce_scatter", share, s > g_node)
        else:                # the MoE's all-reduce of its partial sums
            per_layer = links.collective_s("all_reduce", 2 * share, s > g_node)
        out[NETWORK if s > g_node else NVLINK] += moe_layers * per_layer
        return out
    per_gpu = tokens / s * shape.top_k * hidden * (s - 1) / s
    for nbytes in (per_gpu * DISPATCH_BYTES, per_gpu * ACTIVATION_BYTES):    # dispatch, combine
        if s > g_node:
            remote = nbytes * (s - g_node) / (s - 1)
            local = links.collective_s("all_to_all", nbytes - remote, False)
            out[NETWORK] += moe_layers * max(links.collective_s("all_to_all", remote, True), local)
        else:
            out[NVLINK] += moe_layers * links.collective_s("all_to_all", nbytes, False)
    return out


def step_cost(shape: ModelShape, layout: ClusterLayout, gpu, links: Links, engine_step, rank_tokens: int,
              context_tokens: int, prefill: bool) -> StageCost:
    """One stage's step: a decode step (``rank_tokens`` = sequences per DP rank, at ``context_tokens``) or a
    prefill (``rank_tokens`` = prompt tokens per DP rank, ``context_tokens`` = the prompt length)."""
    stage_layers = ceil(shape.layers / layout.pp)
    frac = stage_layers / max(shape.layers, 1)
    moe_layers = ceil(shape.moe_layers / layout.pp)
    out: dict = {}
    dense = Work((shape.dense_bytes * frac + shape.head_bytes) / layout.tp,
                 rank_tokens * (shape.dense_flops * frac + shape.head_flops) / layout.tp, shape.dense_compute)
    _add(out, on_gpu(dense, gpu))
    kv_read = 0.0 if prefill else rank_tokens * shape.kv_read_bytes(context_tokens) * frac
    padding = 1.0 if prefill else shape.decode_tile_padding(layout.tp)
    attention = Work(kv_read, rank_tokens * shape.attention_flops(context_tokens, prefill) * frac / layout.tp * padding,
                     "kv")
    _add(out, on_gpu(attention, gpu))
    _add(out, on_gpu(_experts_work(shape, layout, rank_tokens * layout.dp, frac), gpu))
    if prefill and engine_step.prefill_efficiency < 1:
        out = {k: v / engine_step.prefill_efficiency for k, v in out.items()}
    for link, seconds in _collectives_s(shape, layout, links, rank_tokens, stage_layers, moe_layers).items():
        if seconds:
            out[link] = seconds
    per_layer = engine_step.prefill_per_layer_s if prefill else engine_step.layer_s(shape.spec.layer_family)
    fixed = per_layer * stage_layers + (0.0 if prefill else engine_step.step_s(layout.gpus))
    if fixed:
        out[FIXED] = fixed
    crossing = 0.0
    if layout.pp > 1:
        latency, rate = links.network_p2p if layout.stage_gpus >= links.gpus_per_node else links.nvlink["all_reduce"]
        hidden = rank_tokens * layout.dp * shape.spec.hidden_size * getattr(shape.spec, "hc_mult", 1) * ACTIVATION_BYTES
        crossing = (layout.pp - 1) * (latency + hidden / rate)
    return StageCost(out, crossing)


def weights_per_gpu(shape: ModelShape, layout: ClusterLayout) -> float:
    """Bytes of weights on the fullest GPU (the last stage also holds the head; tables shard over a stage)."""
    frac = ceil(shape.layers / layout.pp) / max(shape.layers, 1)
    return (shape.dense_bytes * frac / layout.tp + shape.expert_bytes * frac / layout.stage_gpus
            + shape.edge_bytes / layout.tp + shape.table_bytes / layout.stage_gpus)


def kv_per_gpu(shape: ModelShape, layout: ClusterLayout, sequences_per_rank: int, context_tokens: int) -> float:
    """KV bytes per GPU: a DP rank's sequences (all micro-batches of a pipeline), its stage's share of the
    layers; a cache with fewer KV heads than TP ranks (MLA, V4: one) is replicated on each of them."""
    frac = ceil(shape.layers / layout.pp) / max(shape.layers, 1)
    heads = getattr(shape.spec, "num_key_value_heads", 1) or 1
    split = min(layout.tp, heads)
    return shape.kv_bytes(context_tokens, sequences_per_rank * layout.pp) * frac / split

"""Engine models as data: what an inference engine can run, and what it costs beyond the roofline.

One YAML file per engine in ``engines/`` (shipped like the profiles) says, for a version of the engine:

- what it runs at all (hardware gates): the architectures it serves and on which GPUs (compute
  capability), the storage formats and KV cache formats it loads and from which GPU generation, which
  compute formats its kernels run natively (below that a weight-only dequantization, or a refusal);
- how it spreads a model: the multi-GPU layouts it implements, whether offloaded weights run on the CPU
  (KTransformers, llama.cpp) or stream to the GPU every forward (vLLM's ``--cpu-offload-gb``, accelerate),
  whether it reads weights from NVMe (llama.cpp's mmap);
- what a step costs beside the roofline: a fixed time per decode step (more when the step spans several GPU
  processes) and per decoder layer, one figure or one per layer family (kernel launches, small kernels, the
  scheduler), per routed-expert call, per prefill chunk layer; for a ggml engine, per node of its graph instead
  (``GraphCost``: a barrier of the CPU threads, or a GPU kernel);
- how close its kernels come to the memory and the compute: a fraction of the GPU's achievable bandwidth and
  of its compute per compute format (``kv`` for the attention core over its cache, which sets how decode slows
  as the context fills and the batch grows), and a fraction of host bandwidth for CPU expert kernels per
  instruction set (AMX, AVX-512, AVX2, NEON);
- its collectives per interconnect: latency per all-reduce and per all-to-all, and the fraction of the link
  bandwidth they reach.

Every figure in a file carries its source (a published run, the engine's docs or code, or our measurement);
``docs/planner.md`` lists them, with the fitted ones and the runs they were fitted on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

from mv4deploy.core.errors import InputError
from mv4deploy.core.schema import Section, boolean, fraction, latency, load_yaml, positive_int, strings, text

AUTO = "auto"
COLLECTIVES = ("all_reduce", "all_to_all", "all_gather", "reduce_scatter")
LINKS = ("nvlink", "pcie", "network")          # the interconnect kinds an engine's collectives are given for
LAYER_FAMILIES = ("deepseek", "dense")         # decoder layers with a fixed cost of their own (ModelSpec.layer_family)


class CpuKernels(str, Enum):
    """The instruction-set class a CPU expert kernel uses, best first (``hardware.isa`` names map here)."""

    AMX = "amx"
    AVX512 = "avx512"
    AVX2 = "avx2"
    NEON = "neon"


ISA_CLASS = {"amx_bf16": CpuKernels.AMX, "amx_int8": CpuKernels.AMX, "avx512f": CpuKernels.AVX512,
             "avx2": CpuKernels.AVX2, "asimd": CpuKernels.NEON}


def capability(value: str) -> tuple[int, ...]:
    """A CUDA compute capability ("8.9", "10.0", "12.0") as a comparable tuple."""
    try:
        return tuple(int(part) for part in str(value).split("."))
    except ValueError:
        raise ValueError(f"not a compute capability like 8.9: {value!r}") from None


def _capability_text(value) -> str:
    capability(value)
    return str(value)


@dataclass(frozen=True)
class ArchSupport:
    """Which GPUs the engine serves an architecture on: from ``min_cc``, or only the listed ``cc_in``."""

    min_cc: str | None = None
    cc_in: tuple[str, ...] = ()
    why: str = ""


@dataclass(frozen=True)
class Collective:
    latency_s: float
    bandwidth_fraction: float


@dataclass(frozen=True)
class GraphCost:
    """A ggml engine's fixed cost: a forward is a graph whose nodes run one after another, each costing a fixed
    time on its backend beside its roofline (``plan.costs.graph_overhead_s``). On the CPU every thread meets
    the others at a barrier after each node, so a node costs ``cpu_node_s + threads x cpu_node_per_thread_s``;
    on a GPU it is a kernel launch, ``gpu_node_s``."""

    nodes_per_layer: Mapping[str, int]      # architecture -> graph nodes of one decoder layer at batch 1
    cpu_node_s: float
    cpu_node_per_thread_s: float
    gpu_node_s: float

    def cpu_node_at(self, threads: int) -> float:
        return self.cpu_node_s + threads * self.cpu_node_per_thread_s


@dataclass(frozen=True)
class StepCost:
    """Fixed time beside the roofline (``plan.costs.overhead_s`` reads these by name; ``graph``:
    ``plan.costs.graph_overhead_s``)."""

    per_step_s: float = 0.0
    per_step_multi_gpu_s: float = 0.0               # more per step where the step runs on several GPU processes
    per_layer_s: float = 0.0                        # per decoder layer of a family ``family_layer_s`` omits
    per_expert_s: float = 0.0
    prefill_per_layer_s: float = 0.0
    prefill_efficiency: float = 1.0
    graph: GraphCost | None = None
    family_layer_s: Mapping[str, float] = field(default_factory=dict)   # LAYER_FAMILIES -> per decoder layer

    def step_s(self, gpus: int) -> float:
        """The fixed cost of one decode step on ``gpus`` GPUs: one process, or several whose schedulers meet every
        step (SGLang broadcasts the step's requests over the TP ranks' CPU group; vLLM's multiprocess executor
        sends each step to its workers)."""
        return self.per_step_s + (self.per_step_multi_gpu_s if gpus > 1 else 0.0)

    def layer_s(self, family: str) -> float:
        """The fixed cost of one decode step per decoder layer of ``family`` (``ModelSpec.layer_family``)."""
        return self.family_layer_s.get(family, self.per_layer_s)


@dataclass(frozen=True)
class Engine:
    name: str
    version: str
    summary: str
    needs_gpu: bool
    architectures: Mapping[str, ArchSupport]
    min_cc: str | None = None                       # the engine's own floor on any GPU
    runs_on_npu: bool = False                       # drives a phone's NPU (mv4deploy's ONNX export does)
    native_min_cc: Mapping[str, str] = field(default_factory=dict)    # compute format -> lowest CC
    weight_only: bool = True                        # below it: dequantize weight-only (True) or refuse
    format_min_cc: Mapping[str, str] = field(default_factory=dict)    # storage format -> lowest CC
    unsupported_formats: frozenset[str] = frozenset()                 # storage formats it cannot load
    kv_min_cc: Mapping[str, str] = field(default_factory=dict)        # KV cache format -> lowest CC
    layouts: frozenset[str] = frozenset({"single"})
    cpu_execution: bool = False
    streams_weights: bool = False
    streams_whole_modules: bool = False             # streaming moves whole modules (all of a layer's experts)
    reads_nvme: bool = False
    step: StepCost = StepCost()
    uses_profile_overhead: bool = False             # mv4deploy's runtime: the profile's fitted overhead
    gpu_efficiency: Mapping[str, float] = field(default_factory=dict)  # of bandwidth: compute format / "kv" / "default"
    compute_efficiency: Mapping[str, float] = field(default_factory=dict)  # of compute, per compute format / "kv"
    cpu_efficiency: Mapping[CpuKernels, float] = field(default_factory=dict)
    collectives: Mapping[str, Mapping[str, Collective]] = field(default_factory=dict)
    launch: str = ""                                # the hint key this engine's launch line has in a plan
    sources: tuple[str, ...] = ()

    def gpu_fraction(self, compute_format: str) -> float:
        table = self.gpu_efficiency
        return table.get(compute_format, table.get("default", 1.0))

    def cpu_fraction(self, isa: tuple[str, ...]) -> float:
        """The host-bandwidth fraction of the best CPU kernel class the host's ISA allows (1.0 unless given)."""
        classes = {ISA_CLASS[i] for i in isa if i in ISA_CLASS}
        for kernels in CpuKernels:
            if kernels in classes and kernels in self.cpu_efficiency:
                return self.cpu_efficiency[kernels]
        return 1.0

    def collective(self, link: str, kind: str) -> Collective | None:
        return self.collectives.get(link, {}).get(kind)


# ---- the schema -----------------------------------------------------------------------------------

def _cc_map(section: Section | None) -> Mapping[str, str]:
    if section is None:
        return MappingProxyType({})
    out = {key: section.get(key, _capability_text) for key in list(section.data)}
    section.done()
    return MappingProxyType(out)


def _architectures(section: Section) -> Mapping[str, ArchSupport]:
    out = {}
    for arch in list(section.data):
        entry = section.section(arch)
        out[arch] = ArchSupport(entry.get("min_cc", _capability_text, required=False),
                                tuple(_capability_text(v) for v in entry.get("cc_in", strings, required=False,
                                                                             default=())),
                                entry.get("why", text, required=False, default=""))
        entry.done()
    return MappingProxyType(out)


def _fractions(section: Section | None, keys=None) -> dict:
    if section is None:
        return {}
    out = {(keys(k) if keys else k): section.get(k, fraction) for k in list(section.data)}
    section.done()
    return out


def _cpu_kernels(key: str) -> CpuKernels:
    try:
        return CpuKernels(key)
    except ValueError:
        raise InputError(None, "cpu_efficiency", key, f"must be one of {[k.value for k in CpuKernels]}") from None


def _collectives(section: Section | None) -> Mapping[str, Mapping[str, Collective]]:
    if section is None:
        return MappingProxyType({})
    out = {}
    for link in list(section.data):
        if link not in LINKS:
            raise InputError(section.source, section.field(link), link, f"must be one of {list(LINKS)}")
        per_link, kinds = section.section(link), {}
        for kind in list(per_link.data):
            if kind not in COLLECTIVES:
                raise InputError(per_link.source, per_link.field(kind), kind, f"must be one of {list(COLLECTIVES)}")
            entry = per_link.section(kind)
            kinds[kind] = Collective(entry.get("latency", latency), entry.get("bandwidth_fraction", fraction))
            entry.done()
        out[link] = MappingProxyType(kinds)
    return MappingProxyType(out)


def _step(section: Section | None) -> StepCost:
    if section is None:
        return StepCost()
    values = {name: section.get(key, latency, required=False, default=0.0) for name, key in
              (("per_step_s", "per_step"), ("per_step_multi_gpu_s", "per_step_multi_gpu"),
               ("per_expert_s", "per_expert"), ("prefill_per_layer_s", "prefill_per_layer"))}
    if isinstance(section.data.get("per_layer"), dict):       # one figure per layer family
        values["family_layer_s"] = _family_layers(section.section("per_layer"))
    else:
        values["per_layer_s"] = section.get("per_layer", latency, required=False, default=0.0)
    values["prefill_efficiency"] = section.get("prefill_efficiency", fraction, required=False, default=1.0)
    values["graph"] = _graph(section.section("graph", required=False))
    section.done()
    return StepCost(**values)


def _family_layers(section: Section) -> Mapping[str, float]:
    """``per_layer`` given per layer family: every family of LAYER_FAMILIES, nothing else."""
    out = {family: section.get(family, latency) for family in LAYER_FAMILIES}
    section.done()
    return MappingProxyType(out)


def _node_counts(section: Section) -> Mapping[str, int]:
    out = {arch: section.get(arch, positive_int) for arch in list(section.data)}
    section.done()
    return MappingProxyType(out)


def _graph(section: Section | None) -> GraphCost | None:
    if section is None:
        return None
    graph = GraphCost(_node_counts(section.section("nodes_per_layer")), section.get("cpu_node", latency),
                      section.get("cpu_node_per_thread", latency), section.get("gpu_node", latency))
    section.done()
    return graph


def parse_engine(data: object, source: str) -> Engine:
    top = Section(data, source)
    gates = top.section("gates")
    runs = top.section("runs")
    same = top.get("collectives_of", text, required=False)     # another shipped engine's collectives, by name
    collectives = _collectives(top.section("collectives", required=False))
    if same and collectives:
        raise InputError(source, "collectives_of", same, "give collectives or collectives_of, not both")
    engine = Engine(
        name=top.get("name", text), version=str(top.get("version", lambda v: v)),
        summary=top.get("summary", text),
        needs_gpu=gates.get("needs_gpu", boolean),
        min_cc=gates.get("min_cc", _capability_text, required=False),
        runs_on_npu=gates.get("runs_on_npu", boolean, required=False, default=False),
        architectures=_architectures(gates.section("architectures")),
        native_min_cc=_cc_map(gates.section("native_compute", required=False)),
        weight_only=gates.get("weight_only_below", boolean, required=False, default=True),
        format_min_cc=_cc_map(gates.section("formats", required=False)),
        unsupported_formats=frozenset(gates.get("unsupported_formats", strings, required=False, default=())),
        kv_min_cc=_cc_map(gates.section("kv_cache", required=False)),
        layouts=frozenset(runs.get("layouts", strings)),
        cpu_execution=runs.get("cpu_execution", boolean),
        streams_weights=runs.get("streams_weights", boolean),
        streams_whole_modules=runs.get("streams_whole_modules", boolean, required=False, default=False),
        reads_nvme=runs.get("reads_nvme", boolean),
        step=_step(top.section("step", required=False)),
        uses_profile_overhead=top.get("uses_profile_overhead", boolean, required=False, default=False),
        gpu_efficiency=MappingProxyType(_fractions(top.section("gpu_efficiency", required=False))),
        compute_efficiency=MappingProxyType(_fractions(top.section("compute_efficiency", required=False))),
        cpu_efficiency=MappingProxyType(_fractions(top.section("cpu_efficiency", required=False), _cpu_kernels)),
        collectives=load_engine(same).collectives if same else collectives,
        launch=top.get("launch", text, required=False, default=""),
        sources=top.get("sources", strings, required=False, default=()))
    gates.done()
    runs.done()
    top.done()
    return engine


# ---- shipped engines ------------------------------------------------------------------------------

def engines_dir() -> Path:
    from mv4deploy.core.paths import data_dir
    return data_dir("engines")


def list_engines() -> list[str]:
    return sorted(p.stem for p in engines_dir().glob("*.yaml"))


@lru_cache(maxsize=None)
def load_engine(name: str) -> Engine:
    """A shipped engine by name (parsed once per process: the files are data that do not change)."""
    path = engines_dir() / f"{name}.yaml"
    if not path.is_file():
        raise InputError(None, "engine", name, f"unknown engine; shipped: {', '.join([AUTO] + list_engines())}")
    return parse_engine(load_yaml(path), str(path))

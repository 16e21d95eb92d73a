"""Hardware profile schema and loader: ``profiles/NAME.yaml`` -> a frozen ``HardwareProfile``.

Every figure is parsed once here ("24GiB" -> bytes, "1008GB/s" -> bytes/s, "838TFLOPS" -> FLOP/s).
Unknown keys, missing fields, negative or absurd sizes and unknown format names are one-line errors
naming the file and the field. A figure nobody measured may be written ``unknown`` (``profile detect``
does this) and loads as ``None``; the planner refuses to guess it. How a file is read and a field parsed
is ``mv4deploy.core.schema``'s (shared with export targets, gates and recipes); this module is the profile's schema.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import Enum
from pathlib import Path

from mv4deploy.core.errors import InputError
from mv4deploy.hardware.isa import parse_isa
from mv4deploy.core.units import parse_flops_per_s, parse_seconds
from mv4deploy.core.schema import (Section, boolean, enum_of, fraction, integer, latency, load_yaml, positive_int,
                                   positive_iops, positive_rate, positive_size, size, text)

COMPUTE_FORMATS = ("fp32", "bf16", "fp16", "fp8", "fp4", "int16", "int8", "int4")

# Defaults for the planner's figures when a profile does not give them. Each is an assumption unless noted.
DEFAULT_GPU_RUNTIME_RESERVE_BYTES = 2**30   # llama.cpp's per-device fit margin, -fitt 1024 MiB (facts/peers.md §2)
DEFAULT_HOST_RESERVE_BYTES = 6 * 2**30      # assumption: OS, desktop session and the engine process itself
DEFAULT_HOST_LINK_LATENCY_S = 10e-6         # assumption: one small host<->device copy (launch + DMA setup)
DEFAULT_INTERCONNECT_LATENCY_S = 10e-6      # assumption: one small-message collective or peer copy
DEFAULT_STORAGE_LATENCY_S = 80e-6           # assumption: one NVMe 4 KiB random read at low queue depth
DEFAULT_NETWORK_LATENCY_S = 5e-6            # assumption: one small RDMA write between nodes (IB / RoCE)
MAX_NODES = 1024


class DeviceKind(str, Enum):
    GPU = "gpu"
    NPU = "npu"


class NetworkKind(str, Enum):   # between the nodes of a cluster
    INFINIBAND, ROCE = "infiniband", "roce"


class LinkKind(str, Enum):
    NONE = "none"        # a single device
    PCIE = "pcie"
    NVLINK = "nvlink"


@dataclass(frozen=True)
class Measured:
    """Rates measured on the machine (``mv4deploy profile probe``). They are achievable rates, so the
    planner uses them as they are, in place of nominal x efficiency."""

    bandwidth_bytes_per_s: float | None = None
    compute_flops_per_s: dict[str, float] = field(default_factory=dict)
    # Weight bytes/s one-token matmuls stream, per compute format (the decode shape). On a CPU this is often
    # well below the memory bandwidth (a 2-core VM: bf16 ~6-10 GB/s against ~20 GB/s for a plain read).
    matvec_bytes_per_s: dict[str, float] = field(default_factory=dict)
    threads: int | None = None      # CPU threads the host figures were measured with (runs use as many)


@dataclass(frozen=True)
class RuntimeOverhead:
    """Time the engine spends beside the roofline: dispatching operators and launching kernels. An eager
    PyTorch step of a V4 layer runs ~600 small operators (mHC Sinkhorn, norms, routing), which on a CPU
    costs milliseconds per layer whatever the weights. A prefill chunk has its own fixed cost per layer and
    runs its GEMMs at a fraction of the probed rate (a chunk splits into small per-expert matmuls; eager
    attention materializes its scores). Fitted per machine and engine from measured runs
    (``benchmarks/truth.py``); zero (not modelled) unless a profile gives it. ``host_bytes`` is the RSS the
    engine adds beside the model's bytes (oneDNN's kernel cache, heap kept after prefill), plus
    ``host_bytes_per_token`` per token of context per sequence: part of what ``host.reserve`` sets aside,
    and what ``mv4deploy run`` adds to the plan's host bytes to predict RSS."""

    per_step_s: float = 0.0      # once per forward (embedding, masks, head, sampling)
    per_layer_s: float = 0.0     # per decoder layer per forward
    per_expert_s: float = 0.0    # per routed expert a forward calls (one per distinct expert hit)
    prefill_per_layer_s: float = 0.0   # per decoder layer per prefill chunk (in place of the three above)
    prefill_efficiency: float = 1.0    # the fraction of the roofline a prefill chunk reaches (small GEMMs)
    host_bytes: int = 0          # the engine's resident memory besides the model (kernel caches, retained heap)
    host_bytes_per_token: int = 0    # more of it per token of context per sequence (masks, eager attention)
    engine: str = ""             # what was measured ("mv4deploy run: eager PyTorch 2.13, bf16")
    source: str = ""             # which runs it was fitted on

    def step_s(self, gpus: int) -> float:
        """Per step, on any number of GPUs (mv4deploy's runtime runs in one process)."""
        return self.per_step_s

    def layer_s(self, family: str) -> float:
        """Per decoder layer, whatever the layer (``engines.engine.StepCost.layer_s`` gives one per family)."""
        return self.per_layer_s

    def engine_host_bytes(self, batch: int, context_tokens: int) -> int:
        """The RSS the engine adds beside the model's bytes for ``batch`` sequences of ``context_tokens``."""
        return self.host_bytes + self.host_bytes_per_token * batch * context_tokens


@dataclass(frozen=True)
class GPUs:
    kind: DeviceKind
    model: str
    count: int
    memory_bytes: int                    # per device
    usable_fraction: float               # of memory_bytes, after driver/context (phone: the app budget)
    bandwidth_bytes_per_s: float | None  # per device
    compute_flops_per_s: dict[str, float]  # dense, per format, per device
    native_formats: tuple[str, ...]
    compute_capability: str | None = None
    unified_memory: bool = False         # memory is the host's RAM (phones, APUs)
    runtime_reserve_bytes: int = DEFAULT_GPU_RUNTIME_RESERVE_BYTES  # per device: allocator slack, workspaces
    measured: Measured = field(default_factory=Measured)


@dataclass(frozen=True)
class Interconnect:
    kind: LinkKind = LinkKind.NONE
    bandwidth_bytes_per_s: float | None = None  # per direction, per device pair
    p2p: bool = False
    latency_s: float = DEFAULT_INTERCONNECT_LATENCY_S  # per hop (a peer copy or one collective step)


@dataclass(frozen=True)
class Network:
    """The link between the nodes of a cluster: per GPU (one NIC per GPU, as HGX nodes have), per direction."""

    kind: NetworkKind
    bandwidth_bytes_per_s: float                # per GPU, per direction ("400Gb/s" -> 5e10)
    latency_s: float = DEFAULT_NETWORK_LATENCY_S  # one small RDMA message between nodes


@dataclass(frozen=True)
class Host:
    memory_bytes: int
    bandwidth_bytes_per_s: float | None
    cores: int | None
    isa: tuple[str, ...] = ()
    compute_flops_per_s: dict[str, float] = field(default_factory=dict)
    reserve_bytes: int = DEFAULT_HOST_RESERVE_BYTES  # left to the OS and the serving process
    measured: Measured = field(default_factory=Measured)


@dataclass(frozen=True)
class HostLink:
    bandwidth_bytes_per_s: float | None           # nominal, per direction
    pcie_gen: int | None = None
    lanes: int | None = None
    measured_bytes_per_s: float | None = None     # host -> device, pinned
    latency_s: float = DEFAULT_HOST_LINK_LATENCY_S  # per transfer
    measured_d2h_bytes_per_s: float | None = None  # device -> host, pinned


@dataclass(frozen=True)
class Storage:
    kind: str = "nvme"
    read_bytes_per_s: float | None = None
    capacity_bytes: int | None = None
    random_read_iops: float | None = None          # 4 KiB random reads at high queue depth
    latency_s: float = DEFAULT_STORAGE_LATENCY_S    # one random read
    measured: Measured = field(default_factory=Measured)


@dataclass(frozen=True)
class Efficiency:
    """Achievable fraction of each peak (bandwidth or compute), per tier."""

    gpu_bandwidth: float = 0.8
    gpu_compute: float = 0.6
    host_bandwidth: float = 0.7
    host_compute: float = 0.5
    host_link: float = 0.9
    storage: float = 0.8


@dataclass(frozen=True)
class HardwareProfile:
    name: str
    description: str
    gpus: GPUs | None               # None: a CPU-only machine
    host: Host
    interconnect: Interconnect = field(default_factory=Interconnect)
    host_link: HostLink | None = None
    storage: Storage | None = None
    efficiency: Efficiency = field(default_factory=Efficiency)
    source: str = ""
    runtime_overhead: RuntimeOverhead = field(default_factory=RuntimeOverhead)
    nodes: int = 1                  # a cluster: ``nodes`` machines like this one (gpus.count per node)
    network: Network | None = None  # between the nodes; required when nodes > 1


def _formats(value) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"must be a non-empty list of formats from {list(COMPUTE_FORMATS)}")
    bad = [v for v in value if v not in COMPUTE_FORMATS]
    if bad:
        raise ValueError(f"unknown format {bad[0]!r}; known: {', '.join(COMPUTE_FORMATS)}")
    return tuple(value)


def _compute(section: Section | None) -> dict[str, float]:
    return _per_format(section, parse_flops_per_s)


def _per_format(section: Section | None, parse) -> dict[str, float]:
    """A mapping of compute format -> figure (FLOP/s, or bytes/s for ``matvec``)."""
    if section is None:
        return {}
    rates = {}
    for fmt in list(section.data):
        if fmt not in COMPUTE_FORMATS:
            raise InputError(section.source, section.field(fmt), fmt,
                             f"unknown format; known: {', '.join(COMPUTE_FORMATS)}")
        rate = section.get(fmt, parse, allow_unknown=True)
        if rate is not None:
            rates[fmt] = rate
    section.done()
    return rates


def parse_profile(data: object, source: str) -> HardwareProfile:
    top = Section(data, source, "")
    gpus = _gpus(top.section("gpus", required=False))
    h = top.section("host")
    host = Host(memory_bytes=h.get("memory", positive_size),
                bandwidth_bytes_per_s=h.get("bandwidth", positive_rate, allow_unknown=True),
                cores=h.get("cores", positive_int, allow_unknown=True),
                isa=h.get("isa", parse_isa, required=False, default=()),
                compute_flops_per_s=_compute(h.section("compute", required=False)),
                reserve_bytes=h.get("reserve", size, required=False, default=DEFAULT_HOST_RESERVE_BYTES),
                measured=_measured(h.section("measured", required=False)))
    h.done()
    profile = HardwareProfile(
        name=top.get("name", text), description=top.get("description", text, required=False, default=""),
        gpus=gpus, host=host, interconnect=_interconnect(top.section("interconnect", required=False)),
        host_link=_host_link(top.section("host_link", required=False)),
        storage=_storage(top.section("storage", required=False)),
        efficiency=_efficiency(top.section("efficiency", required=False)), source=source,
        runtime_overhead=_overhead(top.section("runtime_overhead", required=False)),
        nodes=top.get("nodes", integer(1, MAX_NODES), required=False, default=1),
        network=_network(top.section("network", required=False)))
    top.done()
    _check_cluster(profile, source)
    if gpus is not None and gpus.count > 1 and profile.interconnect.kind is LinkKind.NONE:
        raise InputError(source, "interconnect.kind", "none", f"{gpus.count} GPUs need an interconnect (pcie/nvlink)")
    return profile


def _check_cluster(profile: HardwareProfile, source: str) -> None:
    if profile.nodes > 1 and profile.network is None:
        raise InputError(source, "network", None, f"nodes: {profile.nodes} needs a network section (kind, bandwidth "
                                                  f"per GPU, latency) between the nodes")
    if profile.nodes > 1 and profile.gpus is None:
        raise InputError(source, "nodes", profile.nodes, "a cluster needs GPUs (a gpus section)")


def _network(s: Section | None) -> Network | None:
    if s is None:
        return None
    network = Network(kind=s.get("kind", enum_of(NetworkKind)), bandwidth_bytes_per_s=s.get("bandwidth", positive_rate),
                      latency_s=s.get("latency", latency, required=False, default=DEFAULT_NETWORK_LATENCY_S))
    s.done()
    return network


def _gpus(g: Section | None) -> GPUs | None:
    if g is None:
        return None
    gpus = GPUs(
        kind=g.get("kind", enum_of(DeviceKind), required=False, default=DeviceKind.GPU),
        model=g.get("model", text), count=g.get("count", positive_int),
        memory_bytes=g.get("memory", positive_size), usable_fraction=g.get("usable_fraction", fraction),
        bandwidth_bytes_per_s=g.get("bandwidth", positive_rate, allow_unknown=True),
        compute_flops_per_s=_compute(g.section("compute", required=False)),
        native_formats=g.get("native_formats", _formats),
        compute_capability=g.get("compute_capability", text, required=False, allow_unknown=True),
        unified_memory=g.get("unified_memory", boolean, required=False, default=False),
        runtime_reserve_bytes=g.get("runtime_reserve", size, required=False,
                                    default=DEFAULT_GPU_RUNTIME_RESERVE_BYTES),
        measured=_measured(g.section("measured", required=False)))
    g.done()
    return gpus


def _interconnect(s: Section | None) -> Interconnect:
    if s is None:
        return Interconnect()
    link = Interconnect(kind=s.get("kind", enum_of(LinkKind)),
                        bandwidth_bytes_per_s=s.get("bandwidth", positive_rate, required=False, allow_unknown=True),
                        p2p=s.get("p2p", boolean, required=False, default=False),
                        latency_s=s.get("latency", latency, required=False, default=DEFAULT_INTERCONNECT_LATENCY_S))
    s.done()
    return link


def _host_link(s: Section | None) -> HostLink | None:
    if s is None:
        return None
    link = HostLink(bandwidth_bytes_per_s=s.get("bandwidth", positive_rate, allow_unknown=True),
                    pcie_gen=s.get("pcie_gen", positive_int, required=False, allow_unknown=True),
                    lanes=s.get("lanes", positive_int, required=False, allow_unknown=True),
                    measured_bytes_per_s=s.get("measured", positive_rate, required=False, allow_unknown=True),
                    latency_s=s.get("latency", latency, required=False, default=DEFAULT_HOST_LINK_LATENCY_S),
                    measured_d2h_bytes_per_s=s.get("measured_d2h", positive_rate, required=False,
                                                   allow_unknown=True))
    s.done()
    return link


def _storage(s: Section | None) -> Storage | None:
    if s is None:
        return None
    storage = Storage(kind=s.get("kind", text, required=False, default="nvme"),
                      read_bytes_per_s=s.get("read_bandwidth", positive_rate, allow_unknown=True),
                      capacity_bytes=s.get("capacity", positive_size, required=False, allow_unknown=True),
                      random_read_iops=s.get("random_read_iops", positive_iops, required=False, allow_unknown=True),
                      latency_s=s.get("latency", latency, required=False, default=DEFAULT_STORAGE_LATENCY_S),
                      measured=_measured(s.section("measured", required=False)))
    s.done()
    return storage


def _measured(s: Section | None) -> Measured:
    if s is None:
        return Measured()
    measured = Measured(bandwidth_bytes_per_s=s.get("bandwidth", positive_rate, required=False),
                        compute_flops_per_s=_compute(s.section("compute", required=False)),
                        matvec_bytes_per_s=_per_format(s.section("matvec", required=False), positive_rate),
                        threads=s.get("threads", positive_int, required=False))
    s.done()
    return measured


def _overhead_seconds(value) -> float:
    seconds = parse_seconds(value)
    if not 0 <= seconds <= 10:
        raise ValueError("must be a duration between 0 and 10 s")
    return seconds


def _overhead(s: Section | None) -> RuntimeOverhead:
    if s is None:
        return RuntimeOverhead()
    overhead = RuntimeOverhead(per_step_s=s.get("per_step", _overhead_seconds, required=False, default=0.0),
                               per_layer_s=s.get("per_layer", _overhead_seconds, required=False, default=0.0),
                               per_expert_s=s.get("per_expert", _overhead_seconds, required=False, default=0.0),
                               prefill_per_layer_s=s.get("prefill_per_layer", _overhead_seconds, required=False,
                                                         default=0.0),
                               prefill_efficiency=s.get("prefill_efficiency", fraction, required=False, default=1.0),
                               host_bytes=s.get("host_bytes", size, required=False, default=0),
                               host_bytes_per_token=s.get("host_bytes_per_token", size, required=False, default=0),
                               engine=s.get("engine", text, required=False, default=""),
                               source=s.get("source", text, required=False, default=""))
    s.done()
    return overhead


def _efficiency(s: Section | None) -> Efficiency:
    if s is None:
        return Efficiency()
    values = {f.name: s.get(f.name, fraction, required=False, default=f.default) for f in fields(Efficiency)}
    s.done()
    return Efficiency(**values)


def profiles_dir() -> Path:
    """Shipped profiles: inside the installed wheel, or ``profiles/`` of a source checkout."""
    from mv4deploy.core.paths import data_dir
    return data_dir("profiles")


def list_profiles() -> list[str]:
    return sorted(p.stem for p in profiles_dir().glob("*.yaml"))


def load_profile(name_or_path: str | Path) -> HardwareProfile:
    """A shipped profile by name, or a YAML file by path."""
    data, path = load_profile_dict(name_or_path)
    return parse_profile(data, str(path))


def load_profile_dict(name_or_path: str | Path) -> tuple[object, Path]:
    """The raw YAML data of a profile and the file it came from."""
    name = str(name_or_path)
    path = Path(name)
    if not (name.endswith((".yaml", ".yml")) or path.is_file()):
        path = profiles_dir() / f"{name}.yaml"
        if not path.is_file():
            raise InputError(None, "profile", name, f"unknown profile; shipped: {', '.join(list_profiles())}")
    return load_yaml(path), path


def profile_to_dict(profile: HardwareProfile) -> dict:
    """Plain data with parsed units (bytes, bytes/s, FLOP/s); enums as their values."""
    from dataclasses import asdict

    def clean(value):
        if isinstance(value, Enum):
            return value.value
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value

    data = clean(asdict(profile))
    if profile.nodes == 1 and profile.network is None:   # one machine: the same figures (and hash) as before clusters
        del data["nodes"], data["network"]
    return data

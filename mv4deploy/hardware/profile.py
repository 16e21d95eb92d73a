"""Hardware profile schema and loader: ``profiles/NAME.yaml`` -> a frozen ``HardwareProfile``.

Every figure is parsed once here ("24GiB" -> bytes, "1008GB/s" -> bytes/s, "838TFLOPS" -> FLOP/s).
Unknown keys, missing fields, negative or absurd sizes and unknown format names are one-line errors
naming the file and the field. A figure nobody measured may be written ``unknown`` (``profile detect``
does this) and loads as ``None``; the planner refuses to guess it.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, fields
from enum import Enum
from pathlib import Path

import yaml

from mv4deploy.errors import InputError
from mv4deploy.hardware.isa import parse_isa
from mv4deploy.hardware.units import parse_bytes, parse_bytes_per_s, parse_flops_per_s, parse_iops, parse_seconds

COMPUTE_FORMATS = ("fp32", "bf16", "fp16", "fp8", "fp4", "int16", "int8", "int4")
UNKNOWN = "unknown"
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when built in: ~10x faster, same results

# Defaults for the planner's figures when a profile does not give them. Each is an assumption unless noted.
DEFAULT_GPU_RUNTIME_RESERVE_BYTES = 2**30   # llama.cpp's per-device fit margin, -fitt 1024 MiB (facts/peers.md §2)
DEFAULT_HOST_RESERVE_BYTES = 6 * 2**30      # assumption: OS, desktop session and the engine process itself
DEFAULT_HOST_LINK_LATENCY_S = 10e-6         # assumption: one small host<->device copy (launch + DMA setup)
DEFAULT_INTERCONNECT_LATENCY_S = 10e-6      # assumption: one small-message collective or peer copy
DEFAULT_STORAGE_LATENCY_S = 80e-6           # assumption: one NVMe 4 KiB random read at low queue depth


class DeviceKind(str, Enum):
    GPU = "gpu"
    NPU = "npu"


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
    engine adds beside the model's bytes (oneDNN's kernel cache, heap kept after prefill): part of what
    ``host.reserve`` sets aside, and what ``mv4deploy run`` adds to the plan's host bytes to predict RSS."""

    per_step_s: float = 0.0      # once per forward (embedding, masks, head, sampling)
    per_layer_s: float = 0.0     # per decoder layer per forward
    per_expert_s: float = 0.0    # per routed expert a forward calls (one per distinct expert hit)
    prefill_per_layer_s: float = 0.0   # per decoder layer per prefill chunk (in place of the three above)
    prefill_efficiency: float = 1.0    # the fraction of the roofline a prefill chunk reaches (small GEMMs)
    host_bytes: int = 0          # the engine's resident memory besides the model (kernel caches, retained heap)
    engine: str = ""             # what was measured ("mv4deploy run: eager PyTorch 2.13, bf16")
    source: str = ""             # which runs it was fitted on

    @property
    def modelled(self) -> bool:
        return bool(self.per_step_s or self.per_layer_s or self.per_expert_s or self.prefill_per_layer_s
                    or self.prefill_efficiency != 1.0)


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


class _Section:
    """Typed reads from one YAML mapping; leftover keys are an error (typos fail at load time)."""

    def __init__(self, data: object, source: str, path: str):
        if not isinstance(data, dict):
            raise InputError(source, path, data, "must be a mapping")
        self.data, self.source, self.path, self.used = data, source, path, set()

    def _field(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def get(self, key: str, parse, required: bool = True, default=None, allow_unknown: bool = False):
        self.used.add(key)
        if key not in self.data or self.data[key] is None:
            if required:
                near = difflib.get_close_matches(key, [k for k in self.data if isinstance(k, str)], n=1)
                hint = f" (found {near[0]!r}: a typo?)" if near and near[0] != key else ""
                raise InputError(self.source, self._field(key), None, f"required field is missing{hint}")
            return default
        value = self.data[key]
        if value == UNKNOWN:
            if not allow_unknown:
                raise InputError(self.source, self._field(key), value, "must be known for this field")
            return None
        try:
            return parse(value)
        except (ValueError, TypeError) as exc:
            raise InputError(self.source, self._field(key), value, str(exc)) from None

    def section(self, key: str, required: bool = True) -> "_Section | None":
        self.used.add(key)
        if key not in self.data:
            if required:
                raise InputError(self.source, self._field(key), None, "required section is missing")
            return None
        return _Section(self.data[key], self.source, self._field(key))

    def done(self) -> None:
        extra = sorted(set(self.data) - self.used)
        if extra:
            raise InputError(self.source, self._field(extra[0]), self.data[extra[0]], "unknown field")


def _positive_int(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError("must be a positive integer")
    return value


def _fraction(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError("must be a number in (0, 1]")
    return float(value)


def _positive_size(value) -> int:
    size = parse_bytes(value)
    if size <= 0 or size > 2**60:
        raise ValueError("must be a size between 1 B and 1 EiB")
    return size


def _positive_rate(value) -> float:
    rate = parse_bytes_per_s(value)
    if rate <= 0 or rate > 1e16:
        raise ValueError("must be a rate between 0 and 10 PB/s")
    return rate


def _size(value) -> int:
    """A size that may be zero (a reserve)."""
    size = parse_bytes(value)
    if size > 2**60:
        raise ValueError("must be a size below 1 EiB")
    return size


def _latency(value) -> float:
    seconds = parse_seconds(value)
    if not 0 < seconds <= 1:
        raise ValueError("must be a latency between 0 and 1 s")
    return seconds


def _positive_iops(value) -> float:
    rate = parse_iops(value)
    if not 0 < rate <= 1e10:
        raise ValueError("must be an operation rate between 0 and 10G IOPS")
    return rate


def _formats(value) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"must be a non-empty list of formats from {list(COMPUTE_FORMATS)}")
    bad = [v for v in value if v not in COMPUTE_FORMATS]
    if bad:
        raise ValueError(f"unknown format {bad[0]!r}; known: {', '.join(COMPUTE_FORMATS)}")
    return tuple(value)


def _strings(value) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("must be a list of strings")
    return tuple(value)


def _text(value) -> str:
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise ValueError("must be text")
    return str(value)


def _compute(section: _Section | None) -> dict[str, float]:
    return _per_format(section, parse_flops_per_s)


def _per_format(section: _Section | None, parse) -> dict[str, float]:
    """A mapping of compute format -> figure (FLOP/s, or bytes/s for ``matvec``)."""
    if section is None:
        return {}
    rates = {}
    for fmt in list(section.data):
        if fmt not in COMPUTE_FORMATS:
            raise InputError(section.source, section._field(fmt), fmt,
                             f"unknown format; known: {', '.join(COMPUTE_FORMATS)}")
        rate = section.get(fmt, parse, allow_unknown=True)
        if rate is not None:
            rates[fmt] = rate
    section.done()
    return rates


def _enum(kind):
    def parse(value):
        try:
            return kind(value)
        except ValueError:
            raise ValueError(f"must be one of {[k.value for k in kind]}") from None
    return parse


def parse_profile(data: object, source: str) -> HardwareProfile:
    top = _Section(data, source, "")
    gpus = _gpus(top.section("gpus", required=False))
    h = top.section("host")
    host = Host(memory_bytes=h.get("memory", _positive_size),
                bandwidth_bytes_per_s=h.get("bandwidth", _positive_rate, allow_unknown=True),
                cores=h.get("cores", _positive_int, allow_unknown=True),
                isa=h.get("isa", parse_isa, required=False, default=()),
                compute_flops_per_s=_compute(h.section("compute", required=False)),
                reserve_bytes=h.get("reserve", _size, required=False, default=DEFAULT_HOST_RESERVE_BYTES),
                measured=_measured(h.section("measured", required=False)))
    h.done()
    profile = HardwareProfile(
        name=top.get("name", _text), description=top.get("description", _text, required=False, default=""),
        gpus=gpus, host=host, interconnect=_interconnect(top.section("interconnect", required=False)),
        host_link=_host_link(top.section("host_link", required=False)),
        storage=_storage(top.section("storage", required=False)),
        efficiency=_efficiency(top.section("efficiency", required=False)), source=source,
        runtime_overhead=_overhead(top.section("runtime_overhead", required=False)))
    top.done()
    if gpus is not None and gpus.count > 1 and profile.interconnect.kind is LinkKind.NONE:
        raise InputError(source, "interconnect.kind", "none", f"{gpus.count} GPUs need an interconnect (pcie/nvlink)")
    return profile


def _gpus(g: _Section | None) -> GPUs | None:
    if g is None:
        return None
    gpus = GPUs(
        kind=g.get("kind", _enum(DeviceKind), required=False, default=DeviceKind.GPU),
        model=g.get("model", _text), count=g.get("count", _positive_int),
        memory_bytes=g.get("memory", _positive_size), usable_fraction=g.get("usable_fraction", _fraction),
        bandwidth_bytes_per_s=g.get("bandwidth", _positive_rate, allow_unknown=True),
        compute_flops_per_s=_compute(g.section("compute", required=False)),
        native_formats=g.get("native_formats", _formats),
        compute_capability=g.get("compute_capability", _text, required=False, allow_unknown=True),
        unified_memory=g.get("unified_memory", _bool, required=False, default=False),
        runtime_reserve_bytes=g.get("runtime_reserve", _size, required=False,
                                    default=DEFAULT_GPU_RUNTIME_RESERVE_BYTES),
        measured=_measured(g.section("measured", required=False)))
    g.done()
    return gpus


def _bool(value) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def _interconnect(s: _Section | None) -> Interconnect:
    if s is None:
        return Interconnect()
    link = Interconnect(kind=s.get("kind", _enum(LinkKind)),
                        bandwidth_bytes_per_s=s.get("bandwidth", _positive_rate, required=False, allow_unknown=True),
                        p2p=s.get("p2p", _bool, required=False, default=False),
                        latency_s=s.get("latency", _latency, required=False, default=DEFAULT_INTERCONNECT_LATENCY_S))
    s.done()
    return link


def _host_link(s: _Section | None) -> HostLink | None:
    if s is None:
        return None
    link = HostLink(bandwidth_bytes_per_s=s.get("bandwidth", _positive_rate, allow_unknown=True),
                    pcie_gen=s.get("pcie_gen", _positive_int, required=False, allow_unknown=True),
                    lanes=s.get("lanes", _positive_int, required=False, allow_unknown=True),
                    measured_bytes_per_s=s.get("measured", _positive_rate, required=False, allow_unknown=True),
                    latency_s=s.get("latency", _latency, required=False, default=DEFAULT_HOST_LINK_LATENCY_S),
                    measured_d2h_bytes_per_s=s.get("measured_d2h", _positive_rate, required=False,
                                                   allow_unknown=True))
    s.done()
    return link


def _storage(s: _Section | None) -> Storage | None:
    if s is None:
        return None
    storage = Storage(kind=s.get("kind", _text, required=False, default="nvme"),
                      read_bytes_per_s=s.get("read_bandwidth", _positive_rate, allow_unknown=True),
                      capacity_bytes=s.get("capacity", _positive_size, required=False, allow_unknown=True),
                      random_read_iops=s.get("random_read_iops", _positive_iops, required=False, allow_unknown=True),
                      latency_s=s.get("latency", _latency, required=False, default=DEFAULT_STORAGE_LATENCY_S),
                      measured=_measured(s.section("measured", required=False)))
    s.done()
    return storage


def _measured(s: _Section | None) -> Measured:
    if s is None:
        return Measured()
    measured = Measured(bandwidth_bytes_per_s=s.get("bandwidth", _positive_rate, required=False),
                        compute_flops_per_s=_compute(s.section("compute", required=False)),
                        matvec_bytes_per_s=_per_format(s.section("matvec", required=False), _positive_rate),
                        threads=s.get("threads", _positive_int, required=False))
    s.done()
    return measured


def _overhead_seconds(value) -> float:
    seconds = parse_seconds(value)
    if not 0 <= seconds <= 10:
        raise ValueError("must be a duration between 0 and 10 s")
    return seconds


def _overhead(s: _Section | None) -> RuntimeOverhead:
    if s is None:
        return RuntimeOverhead()
    overhead = RuntimeOverhead(per_step_s=s.get("per_step", _overhead_seconds, required=False, default=0.0),
                               per_layer_s=s.get("per_layer", _overhead_seconds, required=False, default=0.0),
                               per_expert_s=s.get("per_expert", _overhead_seconds, required=False, default=0.0),
                               prefill_per_layer_s=s.get("prefill_per_layer", _overhead_seconds, required=False,
                                                         default=0.0),
                               prefill_efficiency=s.get("prefill_efficiency", _fraction, required=False, default=1.0),
                               host_bytes=s.get("host_bytes", _size, required=False, default=0),
                               engine=s.get("engine", _text, required=False, default=""),
                               source=s.get("source", _text, required=False, default=""))
    s.done()
    return overhead


def _efficiency(s: _Section | None) -> Efficiency:
    if s is None:
        return Efficiency()
    values = {f.name: s.get(f.name, _fraction, required=False, default=f.default) for f in fields(Efficiency)}
    s.done()
    return Efficiency(**values)


def profiles_dir() -> Path:
    """Shipped profiles: inside the installed wheel, or ``profiles/`` of a source checkout."""
    from mv4deploy.paths import data_dir
    return data_dir("profiles")


def list_profiles() -> list[str]:
    return sorted(p.stem for p in profiles_dir().glob("*.yaml"))


def load_profile(name_or_path: str | Path) -> HardwareProfile:
    """A shipped profile by name, or a YAML file by path."""
    data, path = load_profile_dict(name_or_path)
    return parse_profile(data, str(path))


def load_profile_dict(name_or_path: str | Path) -> tuple[object, Path]:
    """The raw YAML data of a profile and the file it came from."""
    text = str(name_or_path)
    path = Path(text)
    if not (text.endswith((".yaml", ".yml")) or path.is_file()):
        path = profiles_dir() / f"{text}.yaml"
        if not path.is_file():
            raise InputError(None, "profile", text, f"unknown profile; shipped: {', '.join(list_profiles())}")
    try:
        data = yaml.load(path.read_text(), Loader=_SAFE_LOADER)
    except FileNotFoundError:
        raise InputError(path, None, None, "profile file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, None, None, f"cannot read ({exc.__class__.__name__})") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else None
        raise InputError(path, where, None, f"malformed YAML: {getattr(exc, 'problem', exc)}") from None
    return data, path


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

    return clean(asdict(profile))

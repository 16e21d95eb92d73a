"""Devices and tiers from a ``HardwareProfile``: where bytes can live, how fast they are read, what executes.

A *device* is a memory with a budget (``gpu:0``, ``host``, ``nvme``); a *tier* is what the placement
sees: one or more devices with an achievable bandwidth and compute per format (``hardware.rates``: what
``profile probe`` measured, else peak x the profile's efficiency), the formats its units execute
natively and the link that joins it to the GPU.
Figures a profile marks ``unknown`` stay ``None``: the planner then leaves out what needs them (CPU
execution without host bandwidth and compute, the NVMe tier without a read bandwidth) and says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import Enum
from types import MappingProxyType
from typing import Mapping

from mv4deploy.core.errors import InputError
from mv4deploy.engines.engine import Engine
from mv4deploy.hardware.isa import Isa
from mv4deploy.hardware.profile import DeviceKind, HardwareProfile
from mv4deploy.hardware.rates import AchievableRates, achievable_rates

PAGE_BYTES = 4096                 # one NVMe / page-cache read unit
FLOAT_FALLBACK = ("bf16", "fp16", "fp32")  # what weight-only dequantization computes in, best first


class TierKind(str, Enum):
    GPU = "gpu"     # a GPU or NPU (its own memory, or the app budget of a phone's shared RAM)
    HOST = "host"   # CPU RAM: holds weights; the CPU may execute them, or they stream over the host link
    NVME = "nvme"   # storage read through the page cache: holds weights, never executes them


class MemoryKind(str, Enum):
    """What holds a device's bytes: a GPU's memory, a phone NPU's app budget, host RAM or a drive."""

    GPU = "gpu"
    NPU = "npu"
    HOST = "host"
    NVME = "nvme"

    @property
    def accelerator(self) -> bool:
        """Where activations live and placed weights execute first (a GPU, or a phone's NPU)."""
        return self is MemoryKind.GPU or self is MemoryKind.NPU


@dataclass(frozen=True)
class Device:
    """One memory with a budget. ``capacity_bytes``: GPU memory x usable fraction (or --gpu-mem-util),
    host RAM (or --host-mem), drive capacity. ``reserve_bytes`` is held back inside that budget."""

    name: str
    kind: MemoryKind
    capacity_bytes: int
    reserve_bytes: int


@dataclass(frozen=True)
class Tier:
    name: str                                  # "gpu:0", "gpu:0-7" (sharded over 8), "host", "nvme"
    kind: TierKind
    devices: tuple[str, ...]
    bandwidth_bytes_per_s: float | None        # achievable, summed over the tier's devices
    compute_flops_per_s: Mapping[str, float] = field(default_factory=dict)  # achievable, per format
    native_formats: frozenset[str] = frozenset()
    link_bytes_per_s: float | None = None      # GPU tiers: host -> this tier (summed over GPUs when sharded)
    latency_s: float = 0.0                     # per transfer over that link (NVMe: per random read)
    random_read_bytes_per_s: float | None = None  # nvme: 4 KiB random reads (IOPS x 4 KiB)
    matvec_bytes_per_s: Mapping[str, float] = field(default_factory=dict)  # host: one-token matmul reads, per format
    # The engine's kernels: the fraction of the bandwidth and of the compute they reach per compute format ("kv":
    # the attention core over its cache; "default": the rest), whether the CPU executes weights and whether they
    # stream to a GPU.
    efficiency: Mapping[str, float] = field(default_factory=dict)
    compute_efficiency: Mapping[str, float] = field(default_factory=dict)
    cpu_execution: bool = True
    streams: bool = True
    streams_whole: bool = False      # streaming moves a whole module, not only the experts a step touches

    def read_bytes_per_s(self, compute_format: str) -> float | None:
        """The bandwidth the engine's kernels reach reading weights (or "kv" cache) computing in that format."""
        if not self.bandwidth_bytes_per_s:
            return self.bandwidth_bytes_per_s
        return self.bandwidth_bytes_per_s * self.efficiency.get(compute_format, self.efficiency.get("default", 1.0))

    def rate(self, compute_format: str) -> tuple[float | None, str]:
        """FLOP/s for weights whose format computes in ``compute_format``, and how: natively, or after a
        weight-only dequantization into the best float format this tier runs ("dequant:bf16")."""
        native = compute_format in self.native_formats
        if native and compute_format in self.compute_flops_per_s:
            return self.compute_flops_per_s[compute_format], "native"
        for fallback in FLOAT_FALLBACK:
            if fallback in self.native_formats and fallback in self.compute_flops_per_s:
                return self.compute_flops_per_s[fallback], "native" if native else f"dequant:{fallback}"
        return None, "native" if native else "dequant"

    def weight_read_bytes_per_s(self, compute_format: str) -> float | None:
        """Bytes/s at which this tier's units stream weights computing in ``compute_format`` through a
        one-token matmul: the measured matvec rate of the format it really computes in (native, or the
        float format it dequantizes to), capped by the memory bandwidth; the bandwidth when none was measured."""
        _, how = self.rate(compute_format)
        fmt = how.split(":", 1)[1] if how.startswith("dequant:") else compute_format
        matvec, bandwidth = self.matvec_bytes_per_s.get(fmt), self.read_bytes_per_s(fmt)
        if matvec and bandwidth:
            return min(matvec, bandwidth)
        return matvec or bandwidth

    @property
    def can_execute(self) -> bool:
        """GPUs always; the CPU only when the profile knows its bandwidth and compute (no guessing)."""
        if self.kind is TierKind.GPU:
            return True
        return self.kind is TierKind.HOST and self.cpu_execution and bool(self.bandwidth_bytes_per_s
                                                                          and self.compute_flops_per_s)


def _gpu_capacity(profile: HardwareProfile, gpu_mem_util: float | None) -> int:
    fraction = gpu_mem_util if gpu_mem_util is not None else profile.gpus.usable_fraction
    return int(profile.gpus.memory_bytes * fraction)


def build_devices(profile: HardwareProfile, rates: AchievableRates, host_mem_bytes: int | None = None,
                  gpu_mem_util: float | None = None) -> tuple[Device, ...]:
    """Every memory of the machine. A unified-memory device (a phone) has no separate host tier: its
    app budget is the whole of what the model may use."""
    devices = []
    gpus = profile.gpus
    if gpus is not None:
        kind = MemoryKind.NPU if gpus.kind is DeviceKind.NPU else MemoryKind.GPU
        devices += [Device(f"gpu:{i}", kind, _gpu_capacity(profile, gpu_mem_util), gpus.runtime_reserve_bytes)
                    for i in range(gpus.count)]
    if gpus is None or not gpus.unified_memory:
        memory = host_mem_bytes if host_mem_bytes is not None else profile.host.memory_bytes
        devices.append(Device("host", MemoryKind.HOST, memory, min(profile.host.reserve_bytes, memory)))
    storage = profile.storage
    if storage is not None and rates.storage_read.value and storage.capacity_bytes:
        devices.append(Device("nvme", MemoryKind.NVME, storage.capacity_bytes, 0))
    return tuple(devices)


def gpu_tiers(profile: HardwareProfile, rates: AchievableRates, sharded: bool) -> tuple[Tier, ...]:
    """One tier per GPU, or one tier sharded over all GPUs (tensor / expert parallel)."""
    gpus = profile.gpus
    if gpus is None:
        return ()
    if rates.gpu_bandwidth.value is None:
        raise InputError(profile.source, "gpus.bandwidth", "unknown",
                         "the planner needs the GPU memory bandwidth; write it in the profile")
    link = rates.host_link.value
    latency = profile.host_link.latency_s if profile.host_link else 0.0
    count = gpus.count if sharded else 1
    compute = MappingProxyType({f: r.value * count for f, r in rates.gpu_compute.items() if r.value})
    common = dict(kind=TierKind.GPU, bandwidth_bytes_per_s=rates.gpu_bandwidth.value * count,
                  compute_flops_per_s=compute, native_formats=frozenset(gpus.native_formats),
                  link_bytes_per_s=link * count if link else None, latency_s=latency)
    if sharded:
        names = tuple(f"gpu:{i}" for i in range(gpus.count))
        return (Tier(name=f"gpu:0-{gpus.count - 1}", devices=names, **common),)
    return tuple(Tier(name=f"gpu:{i}", devices=(f"gpu:{i}",), **common) for i in range(gpus.count))


def host_tier(profile: HardwareProfile, rates: AchievableRates) -> Tier | None:
    if profile.gpus is not None and profile.gpus.unified_memory:
        return None
    host = profile.host
    native = {"fp32"} | {f for isa in host.isa for f in Isa(isa).formats}   # the CPU's ISA extensions
    link = rates.host_link.value
    return Tier(name="host", kind=TierKind.HOST, devices=("host",),
                bandwidth_bytes_per_s=rates.host_bandwidth.value,
                compute_flops_per_s=MappingProxyType({f: r.value for f, r in rates.host_compute.items() if r.value}),
                native_formats=frozenset(native),
                link_bytes_per_s=link if link and profile.gpus is not None else None,
                latency_s=profile.host_link.latency_s if profile.host_link else 0.0,
                matvec_bytes_per_s=MappingProxyType({f: r.value for f, r in rates.host_matvec.items()}))


def nvme_tier(profile: HardwareProfile, rates: AchievableRates, host: Tier | None) -> Tier | None:
    """Storage read through the page cache into host RAM, then to the CPU or over the host link."""
    storage = profile.storage
    read = rates.storage_read.value
    if storage is None or not read or not storage.capacity_bytes:
        return None
    random = min(read, storage.random_read_iops * PAGE_BYTES) if storage.random_read_iops else None
    link = host.link_bytes_per_s if host is not None else None
    return Tier(name="nvme", kind=TierKind.NVME, devices=("nvme",), bandwidth_bytes_per_s=read,
                link_bytes_per_s=link, latency_s=storage.latency_s, random_read_bytes_per_s=random)


@dataclass(frozen=True)
class Machine:
    """A profile turned, once, into what the planner reads: its achievable rates (measured where probed,
    else nominal x efficiency), its devices and its tiers, with the user's overrides applied. Built at the
    planner's door (``build_machine``); nothing after it goes back to the profile's raw figures for a rate."""

    profile: HardwareProfile
    rates: AchievableRates
    devices: tuple[Device, ...]
    gpus: tuple[Tier, ...]           # one tier per GPU
    gpu_shard: tuple[Tier, ...]      # one tier sharded over all GPUs (tensor / expert parallel); () without GPUs
    host: Tier | None
    nvme: Tier | None
    engine: Engine | None = None     # None: the bare roofline with the profile's own fitted overhead

    @property
    def overhead(self):
        """The fixed costs beside the roofline (``costs.overhead_s``): the engine's, or the profile's fitted
        ones for mv4deploy's own runtime."""
        if self.engine is None or self.engine.uses_profile_overhead:
            return self.profile.runtime_overhead
        return self.engine.step

    @property
    def device_kind(self) -> DeviceKind | None:
        """The accelerator's kind; None on a CPU-only machine."""
        return self.profile.gpus.kind if self.profile.gpus is not None else None


def build_machine(profile: HardwareProfile, host_mem_bytes: int | None = None,
                  gpu_mem_util: float | None = None, engine: Engine | None = None) -> Machine:
    """``engine``: whose kernels run the plan (their bandwidth fractions, what executes where); None keeps the
    bare roofline."""
    rates = achievable_rates(profile)
    devices = build_devices(profile, rates, host_mem_bytes, gpu_mem_util)
    if engine is not None and not engine.reads_nvme:
        devices = tuple(d for d in devices if d.kind is not MemoryKind.NVME)
    host = _with_engine(host_tier(profile, rates), engine, profile)
    nvme = nvme_tier(profile, rates, host) if any(d.name == "nvme" for d in devices) else None
    gpus = tuple(_with_engine(t, engine, profile) for t in gpu_tiers(profile, rates, sharded=False))
    shard = tuple(_with_engine(t, engine, profile) for t in gpu_tiers(profile, rates, sharded=True))
    return Machine(profile, rates, devices, gpus, shard, host, nvme, engine)


def _with_engine(tier: Tier | None, engine: Engine | None, profile: HardwareProfile) -> Tier | None:
    if tier is None or engine is None:
        return tier
    if tier.kind is TierKind.GPU:
        return replace(tier, efficiency=engine.gpu_efficiency, compute_efficiency=engine.compute_efficiency,
                       streams=engine.streams_weights,
                       streams_whole=engine.streams_whole_modules)
    isa = tuple(i.value for i in profile.host.isa)        # Isa enums hash by name: look them up by value
    return replace(tier, efficiency=MappingProxyType({"default": engine.cpu_fraction(isa)}),
                   cpu_execution=engine.cpu_execution)

"""The rates the planner uses: a measured figure where ``profile probe`` wrote one, else nominal x efficiency.

Every figure says where it came from, so a plan can show which of its inputs are measured on the machine
and which are spec-sheet peaks scaled by an assumed efficiency.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mv4deploy.hardware.profile import HardwareProfile, Measured

MEASURED = "measured"
NOMINAL = "nominal x efficiency"


@dataclass(frozen=True)
class Rate:
    value: float | None     # bytes/s or FLOP/s; None when neither measured nor given
    source: str


@dataclass(frozen=True)
class AchievableRates:
    gpu_bandwidth: Rate
    gpu_compute: dict[str, Rate]
    host_bandwidth: Rate
    host_compute: dict[str, Rate]
    host_link: Rate
    storage_read: Rate
    interconnect: Rate = field(default_factory=lambda: Rate(None, NOMINAL))


def _rate(measured: float | None, nominal: float | None, efficiency: float) -> Rate:
    if measured is not None:
        return Rate(measured, MEASURED)
    return Rate(nominal * efficiency if nominal is not None else None, NOMINAL)


def _compute(measured: Measured, nominal: dict[str, float], efficiency: float) -> dict[str, Rate]:
    formats = set(nominal) | set(measured.compute_flops_per_s)
    return {f: _rate(measured.compute_flops_per_s.get(f), nominal.get(f), efficiency) for f in sorted(formats)}


def achievable_rates(profile: HardwareProfile) -> AchievableRates:
    eff, gpus, host = profile.efficiency, profile.gpus, profile.host
    none = Measured()
    link, storage = profile.host_link, profile.storage
    return AchievableRates(
        gpu_bandwidth=_rate(gpus.measured.bandwidth_bytes_per_s, gpus.bandwidth_bytes_per_s, eff.gpu_bandwidth)
        if gpus else Rate(None, NOMINAL),
        gpu_compute=_compute(gpus.measured, gpus.compute_flops_per_s, eff.gpu_compute) if gpus else {},
        host_bandwidth=_rate(host.measured.bandwidth_bytes_per_s, host.bandwidth_bytes_per_s, eff.host_bandwidth),
        host_compute=_compute(host.measured, host.compute_flops_per_s, eff.host_compute),
        host_link=_rate(link.measured_bytes_per_s, link.bandwidth_bytes_per_s, eff.host_link)
        if link else Rate(None, NOMINAL),
        storage_read=_rate((storage.measured if storage else none).bandwidth_bytes_per_s,
                           storage.read_bytes_per_s if storage else None, eff.storage),
        interconnect=Rate(profile.interconnect.bandwidth_bytes_per_s, NOMINAL),
    )

"""Describe this machine as a profile YAML: psutil, /proc/cpuinfo, and torch.cuda or nvidia-smi when present.

Only figures read from the machine are written; what cannot be read (memory bandwidth, compute rates,
link speeds) is written as ``unknown`` for ``mv4deploy profile probe`` to measure, never guessed.
"""

from __future__ import annotations

import platform
import shutil
import subprocess
from pathlib import Path

import psutil
import yaml

from mv4deploy.hardware.isa import Isa
from mv4deploy.hardware.profile import parse_profile


def cpu_flags() -> tuple[str, ...]:
    """The ISA extensions the planner knows (``hardware.isa.Isa``) that /proc/cpuinfo lists, in table order."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            present = set(line.split(":", 1)[1].split())
            return tuple(isa.value for isa in Isa if isa.value in present)
    return ()


def detect_gpus() -> dict | None:
    """Name, count and memory of NVIDIA GPUs, from nvidia-smi (no torch import needed)."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        result = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,compute_cap",
                                 "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    rows = [[c.strip() for c in line.split(",")] for line in result.stdout.strip().splitlines() if line.strip()]
    if result.returncode != 0 or not rows:
        return None
    name, memory_mib, capability = rows[0][0], rows[0][1], rows[0][2] if len(rows[0]) > 2 else "unknown"
    return {"kind": "gpu", "model": name, "count": len(rows), "memory": f"{memory_mib}MiB",
            "usable_fraction": 0.95, "bandwidth": "unknown", "native_formats": _formats_for(capability),
            "compute_capability": capability}


def _formats_for(capability: str) -> list[str]:
    """Tensor-core formats by compute capability (facts/hardware.md §3)."""
    try:
        major, minor = (int(x) for x in capability.split(".")[:2])
    except ValueError:
        return ["bf16", "fp16"]
    formats = ["bf16", "fp16", "int8"]
    if (major, minor) >= (8, 9):
        formats.append("fp8")
    if (major, minor) == (8, 9):
        formats.append("int4")
    if major >= 10:
        formats.append("fp4")
    return formats


def detect_profile_dict(name: str) -> dict:
    memory = psutil.virtual_memory().total
    data = {
        "name": name,
        "description": f"Detected on {platform.node() or 'this machine'} ({platform.machine()}, "
                       f"{platform.system()}); unknown figures need `mv4deploy profile probe`.",
        "host": {"memory": f"{memory}B", "bandwidth": "unknown",
                 "cores": psutil.cpu_count(logical=False) or psutil.cpu_count() or "unknown",
                 "isa": list(cpu_flags())},
        "storage": {"kind": "disk", "read_bandwidth": "unknown",
                    "capacity": f"{shutil.disk_usage(Path.cwd()).total}B"},
    }
    gpus = detect_gpus()
    if gpus is not None:
        data["gpus"] = gpus
        data["host_link"] = {"bandwidth": "unknown"}
        if gpus["count"] > 1:
            data["interconnect"] = {"kind": "pcie", "p2p": False, "bandwidth": "unknown"}
    return data


def detect_profile_yaml(name: str) -> str:
    data = detect_profile_dict(name)
    parse_profile(data, "detected profile")  # what we write must load
    header = "# Written by `mv4deploy profile detect`: 'unknown' marks figures this machine could not report.\n"
    return header + yaml.safe_dump(data, sort_keys=False)

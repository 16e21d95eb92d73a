"""Put a loaded model where a ``ModelPlacement`` says, and make the caches its KV placement needs.

The model is loaded into host memory first (``runtime.load_model(device="cpu")``); then every parameter and
buffer moves to the device of its tier (``devices``: tier name -> torch device, injectable: tests map
``gpu:0`` to the CPU and run the whole split machinery there). Host-resident weights get the hooks their
execution mode needs (``modules.run_on`` / ``modules.stream``), routed experts become ``PlacedExperts``,
Engram tables go to their tier (host tables are pinned and their rows copied on a side stream: see
``runtime.model_v41``), and CSA layers whose entries the plan keeps in host RAM get a ``HostCSACache`` and
the hooks that fetch the selected entries (``kv.py``).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch

from mv4deploy.core.errors import InputError
from mv4deploy.runtime.kv import HostCSACache, fetch_selected
from mv4deploy.runtime.modules import ExecState, PlacedExperts, pin, run_on, stream
from mv4deploy.runtime.placement import HOST, ModelPlacement, Where, cpu_capable

SKIP_GENERIC = (".mlp.experts.", ".engram.embed.", "engram_hasher.")   # placed by their own code


def default_devices(tiers: list[str], overrides: dict[str, str] | None = None) -> dict[str, torch.device]:
    """``gpu:i`` -> ``cuda:i``, ``host`` and ``nvme`` -> ``cpu``, then the user's overrides."""
    out = {"host": torch.device("cpu"), "nvme": torch.device("cpu")}
    for tier in tiers:
        if tier.startswith("gpu:"):
            out[tier] = torch.device(f"cuda:{tier.split(':')[1]}")
    out.update({k: torch.device(v) for k, v in (overrides or {}).items()})
    out = {tier: torch.device("cuda", 0) if d.type == "cuda" and d.index is None else d for tier, d in out.items()}
    for tier, device in out.items():
        if device.type == "cuda" and (not torch.cuda.is_available() or device.index >= torch.cuda.device_count()):
            raise InputError(None, "--device-map", f"{tier}={device}",
                             "the plan runs this tier on a CUDA device this machine does not have (to emulate a "
                             "split on the CPU, map it: --device-map gpu:0=cpu)")
    return out


@dataclass
class Executor:
    model: torch.nn.Module
    placement: ModelPlacement
    devices: dict[str, torch.device]
    state: ExecState

    @property
    def input_device(self) -> torch.device:
        return self.devices[self.placement.primary_tier]

    def make_cache(self):
        """A ``DynamicCache`` for the model, host-pool CSA layers as the plan puts them."""
        from transformers import DynamicCache
        cache = DynamicCache(config=self.model.config)
        for layer in self.placement.host_topk_pools:
            cache.layers[layer] = HostCSACache(self.model.config, self.devices[HOST], self.state)
        return cache


def apply_placement(model, placement: ModelPlacement, devices: dict[str, torch.device]) -> Executor:
    state = ExecState()
    executor = Executor(model, placement, devices, state)
    layers = model.model.layers
    for index, layer in enumerate(layers):
        parts = placement.experts.get(index)
        run_tier = placement.layer_tier.get(index)
        if parts and any(part.where.tier != run_tier for part in parts):
            layer.mlp.experts = PlacedExperts(layer.mlp.experts, parts, devices, state)
        elif parts:                                  # every expert on the tier that runs the layer
            layer.mlp.experts.to(devices[run_tier])
    _move_generic(executor)
    _engram(executor)
    for index in placement.host_topk_pools:
        compressor = layers[index].self_attn.compressor
        if compressor is None or not hasattr(compressor, "indexer"):
            raise InputError(None, "kv_cache.pools", placement.host_topk_pools[index],
                             f"layer {index} has no CSA compressor to keep in host RAM")
        fetch_selected(compressor, state)
    return executor


def _run_tier(executor: Executor, name: str) -> str:
    """The tier that runs the module owning ``name``: its layer's, else the model's first layer's."""
    parts = name.split(".")
    if len(parts) > 2 and parts[:2] == ["model", "layers"]:
        return executor.placement.layer_tier.get(int(parts[2]), executor.placement.primary_tier)
    return executor.placement.primary_tier


def _move_generic(executor: Executor) -> None:
    """Every parameter and buffer not placed by its own code: to its tier's device (the run device if the
    plan does not name it); host-resident ones get hooks for how they execute."""
    model, placement = executor.model, executor.placement
    hooked: dict[str, list[tuple[str, Where]]] = defaultdict(list)
    tensors = [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]
    for name, tensor in tensors:
        if any(part in f".{name}" for part in SKIP_GENERIC):
            continue
        where = placement.params.get(name)
        run_tier = _run_tier(executor, name)
        device = executor.devices[where.tier if where is not None else run_tier]
        if tensor.device != device:
            tensor.data = tensor.data.to(device)
        if where is not None and where.off_gpu and run_tier.startswith("gpu"):   # off the GPU that runs it
            tensor.data = pin(tensor.data)
            module, _, leaf = name.rpartition(".")
            hooked[module].append((leaf, where))
    for module_name, leaves in hooked.items():
        _hook(executor, module_name, leaves)


def _hook(executor: Executor, module_name: str, leaves: list[tuple[str, Where]]) -> None:
    module = executor.model.get_submodule(module_name)
    where = leaves[0][1]
    host, run_device = executor.devices[where.tier], executor.devices[_run_tier(executor, f"{module_name}.x")]
    capable = cpu_capable(f"{module_name}.x")

    def runs_on_cpu(phase: str) -> bool:
        return capable and where.mode(phase) == "cpu"

    def streams(phase: str) -> bool:
        return where.mode(phase) != "resident" and not runs_on_cpu(phase)

    if capable:
        run_on(module, host, runs_on_cpu, executor.state)
    stream(module, [leaf for leaf, _ in leaves], run_device, streams, executor.state)


def _engram(executor: Executor) -> None:
    """Each Engram table (and the hasher, beside the tables) on its tier; host tables pinned."""
    model, placement = executor.model, executor.placement
    if not placement.engram:
        return
    model.model.engram_row_devices = {layer: executor.devices[placement.layer_tier[layer]]
                                      for layer in placement.engram}
    from mv4deploy.runtime.model_v41 import place_engram_tables
    tiers = {where.tier for where in placement.engram.values()}
    if len(tiers) == 1:
        place_engram_tables(model, executor.devices[tiers.pop()])
        return
    for layer, where in placement.engram.items():
        device = executor.devices[where.tier]
        model.model.layers[layer].engram.embed.place(device, device.type == "cpu" and torch.cuda.is_available())
    model.model.engram_hasher.place(executor.devices[HOST])

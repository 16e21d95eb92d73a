"""Engine hints derived from the plan: vLLM and SGLang launch lines, llama.cpp ``-ot`` rules, and an
accelerate ``device_map`` for transformers. Nothing here is written per model: every flag comes from
the plan's placement, workload and layout, and module names from one table per naming family.

Engines cannot express everything a plan can. Where one falls short (vLLM has no per-expert CPU
execution, llama.cpp keeps a layer's experts in one tensor, accelerate places whole modules) the hint
takes the conservative side and a warning says what differs.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from mv4deploy.core.jsonify import JsonResult
from mv4deploy.hardware.profile import DeviceKind
from mv4deploy.model.kv import CacheFormat
from mv4deploy.plan.groups import GroupClass
from mv4deploy.plan.items import ItemKind
from mv4deploy.plan.kv_tiering import cache_format
from mv4deploy.plan.multigpu import Mode
from mv4deploy.plan.tiers import TierKind

# Module paths in transformers' models (DeepseekV3/V32/V4, Qwen2, Llama share this layout).
MODULES = {
    GroupClass.EMBEDDING: ("model.embed_tokens",),
    GroupClass.ATTENTION: ("model.layers.{l}.self_attn",),
    GroupClass.INDEXER: ("model.layers.{l}.self_attn",),
    GroupClass.COMPRESSOR: ("model.layers.{l}.self_attn",),
    GroupClass.ROUTED_EXPERTS: ("model.layers.{l}.mlp.experts",),
    GroupClass.SHARED_EXPERT: ("model.layers.{l}.mlp.shared_experts",),
    GroupClass.ROUTER: ("model.layers.{l}.mlp.gate",),
    GroupClass.HASH_ROUTER: ("model.layers.{l}.mlp.gate",),
    GroupClass.DENSE_MLP: ("model.layers.{l}.mlp",),
    GroupClass.NORMS_MHC: ("model.layers.{l}.input_layernorm", "model.layers.{l}.post_attention_layernorm"),
    GroupClass.HEAD: ("model.norm", "lm_head"),
}
MHC_MODULES = {GroupClass.NORMS_MHC: ("model.layers.{l}.attn_hc", "model.layers.{l}.ffn_hc"),
               GroupClass.HEAD: ("model.hc_head",)}
# llama.cpp GGUF tensor names of routed experts (one 3-D tensor per layer and projection).
LLAMA_CPP_EXPERTS = r"blk\.({layers})\.ffn_(gate|up|down)_exps\.="
KT_METHOD = {"mxfp4": "MXFP4", "fp8-e4m3-block128": "FP8", "fp8-e4m3-block128-ue8m0": "FP8",
             "fp8-e4m3-block32-ue8m0": "FP8", "bf16": "BF16", "int4-g128": "RAWINT4", "int4-g32": "RAWINT4"}
ACCELERATE_DEVICE = {TierKind.HOST: "cpu", TierKind.NVME: "disk"}


@dataclass(frozen=True)
class Hints(JsonResult):
    """Launch lines per engine (None where the engine cannot run the plan) and an accelerate device_map."""

    vllm: str | None = None
    sglang: str | None = None
    llama_cpp: str | None = None
    accelerate_device_map: dict[str, int | str] | None = None


def _gib(nbytes: int) -> int:
    return -(-nbytes // 2**30)


def _weights(plan):
    return [p for p in plan.placement.placed if p.item.kind is ItemKind.WEIGHTS]


def _offloaded_expert_layers(plan) -> list[int]:
    """Layers whose routed experts are not wholly on a GPU (engines keep a layer's experts together)."""
    layers = set()
    for p in _weights(plan):
        if p.item.cls is GroupClass.ROUTED_EXPERTS and p.option.tier.kind is not TierKind.GPU:
            layers.add(p.item.layer)
    return sorted(layers)


def _gpu_experts_per_layer(plan) -> int:
    """KTransformers' ``--kt-num-gpu-experts`` counts GPU experts *per MoE layer* (sglang-kt multiplies it by
    the number of MoE layers, then places that total by activation frequency): the plan's GPU-resident routed
    experts over its MoE layers, rounded down so the engine never holds more than the plan budgeted."""
    experts = [p for p in _weights(plan) if p.item.cls is GroupClass.ROUTED_EXPERTS]
    layers = {p.item.layer for p in experts}
    on_gpu = sum(p.stop - p.start for p in experts if p.option.tier.kind is TierKind.GPU)
    return on_gpu // max(len(layers), 1)


def _parallel(best, tp: str, pp: str, ep: str | None) -> list[str]:
    layout = best.layout
    if layout.mode.sharded:
        return [tp, str(layout.shards)] + ([ep] if ep and layout.mode is Mode.TENSOR_EXPERT else [])
    if layout.mode is Mode.PIPELINE:
        return [pp, str(len(layout.gpus))]
    return []


def _gpus_used(best) -> int:
    """GPUs the layout spreads the model over (tensor x pipeline ranks)."""
    return best.layout.shards if best.layout.mode.sharded else max(len(best.layout.gpus), 1)


def _model_ref(resolved) -> str:
    return resolved.source if resolved.kind != "preset" else f"/path/to/{resolved.spec.name}"


def vllm_hint(plan, best, resolved, machine, notes: list[str]) -> str | None:
    if machine.profile.gpus is None or machine.device_kind is not DeviceKind.GPU:
        return None
    w = plan.workload
    util = plan.devices[0].capacity_bytes / machine.profile.gpus.memory_bytes
    args = ["vllm", "serve", _model_ref(resolved), "--max-model-len", str(w.context_tokens),
            "--max-num-seqs", str(w.batch), "--max-num-batched-tokens", str(w.chunk_tokens),
            "--gpu-memory-utilization", f"{util:.2f}"]
    args += _parallel(best, "--tensor-parallel-size", "--pipeline-parallel-size", "--enable-expert-parallel")
    if _kv_format(best) is CacheFormat.FP8:
        args += ["--kv-cache-dtype", "fp8"]
    host_weights = sum(p.bytes for p in _weights(plan) if p.option.tier.kind is not TierKind.GPU)
    if host_weights:   # vLLM's --cpu-offload-gb is per GPU: each rank offloads its share of the weights
        args += ["--cpu-offload-gb", str(_gib(-(-host_weights // _gpus_used(best))))]
        notes.append("vLLM: --cpu-offload-gb streams offloaded weights over PCIe at every step; it has no "
                     "per-expert CPU execution, so expect less than the plan's decode speed")
    if plan.kv_cache.gpu_bytes_saved:   # no flag for it in the vLLM we check against (tests/data/engine_flags)
        notes.append(f"vLLM: the plan keeps {_gib(plan.kv_cache.gpu_bytes_saved)} GiB of top-k KV pools in host RAM; "
                     f"vLLM keeps its KV cache on the GPU, so give it that much GPU memory or a shorter context")
    return " ".join(args)


def _kv_format(best) -> CacheFormat | None:
    return next((cache_format(p.option) for p in best.placement.placed if cache_format(p.option)), None)


def sglang_hint(plan, best, resolved, machine, notes: list[str]) -> str | None:
    if machine.profile.gpus is None or machine.device_kind is not DeviceKind.GPU:
        return None
    w = plan.workload
    util = plan.devices[0].capacity_bytes / machine.profile.gpus.memory_bytes
    env = []
    args = ["python", "-m", "sglang.launch_server", "--model-path", _model_ref(resolved), "--context-length",
            str(w.context_tokens), "--max-running-requests", str(w.batch), "--chunked-prefill-size",
            str(w.chunk_tokens), "--mem-fraction-static", f"{util:.2f}"]
    args += _parallel(best, "--tp-size", "--pp-size", None)
    if best.layout.mode is Mode.TENSOR_EXPERT:
        args += ["--ep-size", str(best.layout.shards)]
    if _kv_format(best) is CacheFormat.FP8:
        args += ["--kv-cache-dtype", "fp8_e4m3"]
    if _offloaded_expert_layers(plan):
        fmt = next(p.option.format for p in _weights(plan) if p.item.cls is GroupClass.ROUTED_EXPERTS)
        cores = machine.profile.host.cores or 1
        args += ["--kt-method", KT_METHOD.get(fmt, "BF16"), "--kt-weight-path", "/path/to/cpu-expert-weights",
                 "--kt-cpuinfer", str(cores), "--kt-num-gpu-experts", str(_gpu_experts_per_layer(plan)),
                 "--kt-expert-placement-strategy", "front-loading"]
        notes.append("SGLang: CPU experts need the KTransformers kt-kernel backend (sglang-kt); "
                     "--kt-num-gpu-experts is per MoE layer (the plan's GPU-resident routed experts / MoE layers)")
    if plan.kv_cache.gpu_bytes_saved:
        total = sum(p.bytes for p in plan.kv_cache.pools)
        ratio = max(1.0, total / max(total - plan.kv_cache.gpu_bytes_saved, 1))
        args += ["--enable-hierarchical-cache", "--hicache-ratio", f"{ratio:.1f}"]
    if plan.engram and any(not t.tier.startswith("gpu") for t in plan.engram.tables):
        env.append("SGLANG_ENABLE_DSV41_ENGRAM_HOST_TABLE=1")
        if any(t.tier == "nvme" for t in plan.engram.tables):
            notes.append("Engram tables on NVMe need an mmap-backed table; SGLang's and vLLM's host tables are "
                         "in RAM (vLLM's disk backend, PR #56757, was not merged)")
    return " ".join(env + args)


def _regex_numbers(numbers: list[int]) -> str:
    return "|".join(str(n) for n in numbers)


def llama_cpp_hint(plan, best, resolved, machine, notes: list[str]) -> str | None:
    if machine.profile.gpus is not None and machine.device_kind is not DeviceKind.GPU:
        return None
    w = plan.workload
    args = ["llama-server", "-m", f"{_model_ref(resolved)}.gguf", "-c", str(w.context_tokens), "-np", str(w.batch),
            "-b", str(w.chunk_tokens), "-ub", str(min(w.chunk_tokens, 512))]
    if machine.profile.gpus is None:
        return " ".join(args + ["-ngl", "0"])
    args += ["-ngl", "999"]
    layers = _offloaded_expert_layers(plan)
    if layers:
        args += ["-ot", f"'{LLAMA_CPP_EXPERTS.format(layers=_regex_numbers(layers))}CPU'"]
        cut = [p.item.layer for p in _weights(plan) if p.item.cls is GroupClass.ROUTED_EXPERTS
               and p.option.tier.kind is TierKind.GPU and (p.start, p.stop) != (0, p.item.units)]
        if cut:
            notes.append(f"llama.cpp: layers {sorted(set(cut))} have their experts split between GPU and host in "
                         f"the plan; GGUF keeps a layer's experts in one tensor, so the -ot rule keeps them on the CPU")
    if best.layout.mode is not Mode.SINGLE:
        counts = defaultdict(int)
        for stage in best.layout.stage_of_layer.values():
            counts[stage] += 1
        args += ["-sm", "layer", "-ts", ",".join(str(counts[i]) for i in range(len(best.layout.gpus)))] \
            if best.layout.mode is Mode.PIPELINE else ["-sm", "row"]
    kv_host = [p for p in plan.kv_cache.pools if p.tier == "host"]
    if kv_host and len(kv_host) == len(plan.kv_cache.pools):
        args.append("-nkvo")
    elif kv_host:
        notes.append("llama.cpp: KV offload (-nkvo) is all or nothing; the plan keeps only top-k pools in host RAM")
    return " ".join(args)


def accelerate_map(plan, best, resolved, machine, notes: list[str]) -> dict[str, int | str] | None:
    """``{module: device}`` for ``from_pretrained(device_map=...)``; a module whose groups sit on
    different tiers goes to the slowest of them (accelerate cannot split a module)."""
    if machine.profile.gpus is not None and machine.device_kind is not DeviceKind.GPU:
        return None
    hc = resolved.spec.hc_mult > 1
    worst: dict[str, tuple[int, int | str]] = {}
    n_layers = max((p.item.layer for p in _weights(plan) if p.item.layer is not None), default=0) + 1
    for p in plan.placement.placed:
        if p.item.kind is ItemKind.KV or p.item.group is None or p.item.group.cls not in MODULES:
            continue
        device = _accelerate_device(p, best, n_layers)
        rank = 0 if isinstance(device, int) else (1 if device == "cpu" else 2)
        modules = MODULES[p.item.group.cls] + (MHC_MODULES.get(p.item.group.cls, ()) if hc else ())
        for template in modules:
            name = template.format(l=p.item.layer)
            if name not in worst or rank > worst[name][0]:
                worst[name] = (rank, device)
    if best.layout.mode.sharded:
        notes.append("accelerate: a device_map places whole modules, so tensor/expert parallel is approximated "
                     "by giving each GPU a range of layers")
    return {name: device for name, (_, device) in worst.items()}


def _accelerate_device(p, best, n_layers: int) -> int | str:
    tier = p.option.tier
    if tier.kind is not TierKind.GPU:
        return ACCELERATE_DEVICE[tier.kind]
    if best.layout.mode.sharded:
        layer = p.item.layer if p.item.layer is not None else (n_layers - 1 if p.item.cls is GroupClass.HEAD else 0)
        return min(best.layout.shards - 1, layer * best.layout.shards // n_layers)
    return int(tier.name.split(":")[1])


def engine_hints(plan, best, resolved, machine, refused: frozenset[str] = frozenset()) -> tuple[Hints, list[str]]:
    """Launch lines for the plan; none for an engine whose hardware gates refused it (``refused``: the launch
    keys of those engines: "vllm", "sglang", "llama_cpp", "accelerate")."""
    notes: list[str] = []
    makers = {"vllm": vllm_hint, "sglang": sglang_hint, "llama_cpp": llama_cpp_hint, "accelerate": accelerate_map}
    made = {key: None if key in refused else make(plan, best, resolved, machine, notes) for key, make in makers.items()}
    hints = Hints(made["vllm"], made["sglang"], made["llama_cpp"], made["accelerate"])
    if machine.device_kind is DeviceKind.NPU:
        notes.append("no server-engine hints for an NPU: build the deployment with `mv4deploy export onnx`")
    return hints, notes

"""Load a checkpoint folder into a transformers model, shard by shard, dequantizing as it reads.

DeepSeek-native V4 checkpoints (optionally with V4.1 Engram layers), and Qwen2/Llama checkpoints written
by ``mv4deploy quantize`` (formats transformers cannot read), go through our own loop:

1. headers vs the config-derived inventory (``model.source.resolve_model``): a missing tensor, an
   unexpected one, or a dtype/shape that contradicts config.json is an ``InputError`` naming it;
2. the model is built on the meta device (``accelerate.init_empty_weights``; buffers stay real);
3. shards are read in order with ``safe_open``; each logical weight is decoded (``LogicalWeight.decode``:
   the format registry dequantizes FP8 blocks and MXFP4) and written into its transformers parameter
   through the name map, experts straight into their slice of the fused 3-D tensors. Only one weight's
   stored tensors exist beside the model at any time, so the model is never held twice;
4. every parameter must have been filled: an uncovered slot names the native tensor it needed.

Engram tables keep their stored dtype (an FP8 table stays FP8 + scales and is dequantized per gathered
row) and may live on another device (``engram_device``). HF-layout checkpoints (Qwen2 / Llama
distillates, V3, transformers' own saves) go to ``from_pretrained``, with the same header checks first.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mv4deploy.core.errors import InputError
from mv4deploy.model.config import load_json
from mv4deploy.model.quant_config import QUANT_METHOD, quantized_by_us
from mv4deploy.model.tensors import Role
from mv4deploy.model.inventory import build_inventory
from mv4deploy.model.source import refuse_mismatches, resolve_model
from mv4deploy.model.spec import Arch
from mv4deploy.runtime import name_map
from mv4deploy.runtime.hf_config import STORAGE_KEYS, check_runnable, has_engram, v4_config
from mv4deploy.model.rules import LogicalWeight, logical_weights
from mv4deploy.runtime.weights import TORCH_DTYPES, slot_view

NATIVE = (Arch.DEEPSEEK_V4, Arch.DEEPSEEK_V41)
DENSE = (Arch.QWEN2, Arch.LLAMA)
KEEP_FP32_EXTRA = ("q_weight", "k_weight")  # Engram gate norms: the gate is computed in float32


def load_model(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
               engram_device: str | torch.device | None = None):
    """A transformers causal LM (eval mode) with the checkpoint's weights, on ``device`` in ``dtype``
    (norms, mHC and router biases stay float32 as transformers keeps them)."""
    folder = Path(path)
    if not folder.is_dir():
        raise InputError(folder, None, None, "not a checkpoint folder")
    raw = load_json(folder / "config.json")
    resolved = resolve_model(folder)
    spec, headers = resolved.spec, resolved.headers
    native = spec.architecture in NATIVE and name_map.native_layout([h.name for h in headers])
    ours = quantized_by_us(raw)
    if native or (ours and spec.architecture in DENSE):
        if native:
            check_runnable(spec.architecture, raw, str(folder / "config.json"))
        refuse_mismatches(folder, resolved.mismatches)
        model = _load_streaming(folder, raw, spec, {h.name: h.file for h in headers}, native,
                                (torch.device(device), dtype, torch.device(engram_device or device)))
    elif ours:
        raise InputError(folder / "config.json", "quantization_config.quant_method", QUANT_METHOD,
                         f"loading an mv4deploy-quantized {spec.architecture.value} checkpoint is not implemented; "
                         "supported: deepseek_v4 (native names), qwen2, llama")
    else:
        if spec.architecture not in NATIVE:
            refuse_mismatches(folder, resolved.mismatches)
        model = _load_hf(folder, torch.device(device), dtype)
    return model.eval()


def _load_hf(folder: Path, device: torch.device, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM
    from mv4deploy.runtime.quiet import library_bars_off
    with library_bars_off():
        model, info = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, device_map=str(device),
                                                           local_files_only=True, output_loading_info=True,
                                                           use_safetensors=True, trust_remote_code=False)
    for kind in ("missing_keys", "mismatched_keys"):
        if info.get(kind):
            raise InputError(folder, str(sorted(info[kind])[0]), None, f"{kind.replace('_', ' ')} on load")
    return model


def _build_empty(raw: dict, spec, source: str, native: bool):
    """The model class config.json names, parameters on the meta device (buffers real)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM, DeepseekV4ForCausalLM
    with init_empty_weights(include_buffers=False):
        if not native:
            kwargs = {k: v for k, v in raw.items() if k not in STORAGE_KEYS}
            return AutoModelForCausalLM.from_config(AutoConfig.for_model(raw["model_type"], **kwargs))
        hf = v4_config(raw, source)
        if not has_engram(raw):
            return DeepseekV4ForCausalLM(hf)
        from mv4deploy.runtime.model_v41 import DeepseekV41ForCausalLM
        model = DeepseekV41ForCausalLM(hf)
        _shape_engram_tables(model, spec)
        return model


def _shape_engram_tables(model, spec) -> None:
    """Tables keep their stored format: rebuild each (still on meta) in the checkpoint's dtype."""
    from mv4deploy.runtime.engram import EngramEmbedding
    inventory = {t.name: t for t in build_inventory(spec).tensors}
    for layer in model.model.layers:
        if layer.engram is None:
            continue
        stored = inventory[f"layers.{layer.layer_idx}.engram.embed.weight"]
        scale = inventory.get(f"layers.{layer.layer_idx}.engram.embed.scale")
        table = layer.engram.embed
        layer.engram.embed = EngramEmbedding(table.weight.shape[0], table.weight.shape[1],
                                             scale.shape[-1] if scale else 0, TORCH_DTYPES[stored.dtype])


def _load_streaming(folder: Path, raw: dict, spec, file_of: dict[str, str], native: bool, placement):
    """Our shard-by-shard loop. ``native``: DeepSeek names through the name map; otherwise (an HF-layout
    checkpoint written by ``mv4deploy quantize``) the stored names are the parameter names."""
    device, dtype, engram_device = placement
    model = _build_empty(raw, spec, str(folder / "config.json"), native)
    filler = _Filler(model, folder, device, dtype, engram_device)
    weights = sorted(logical_weights(spec), key=lambda w: file_of[w.payload])
    with _Shards(folder) as shards:
        for weight in weights:
            target = name_map.to_target(weight.name) if native else name_map.Target(weight.name)
            if target is None:
                continue  # MTP / draft / vision tensors: transformers has no module for them
            tensors = {t.name: shards.read(file_of[t.name], t.name) for t in weight.stored}
            if weight.stored[0].role is Role.ENGRAM_TABLE:
                filler.put_table(weight, tensors)
            else:
                filler.put(target, _decoded(folder / file_of[weight.payload], weight, tensors), weight.name)
    filler.finish()
    if has_engram(raw):
        from mv4deploy.runtime.model_v41 import place_engram_tables
        place_engram_tables(model, engram_device)  # before the move below, which then leaves them
    model.to(device)  # non-persistent buffers (rotary tables) were built on the CPU
    if has_engram(raw):
        _attach_token_map(model, folder)
    return model


def _decoded(shard: Path, weight: LogicalWeight, tensors: dict) -> torch.Tensor:
    value = weight.decode(tensors, torch.float32)
    if value.is_floating_point() and not torch.isfinite(value).all():
        raise InputError(shard, weight.payload, None,
                         "decodes to NaN/Inf values: corrupt shard?")
    return value


def _attach_token_map(model, folder: Path) -> None:
    from mv4deploy.runtime.engram import compressed_token_map
    from mv4deploy.model.tokenizer import load_tokenizer
    token_map, _ = compressed_token_map(load_tokenizer(folder, why="Engram hashing"))
    try:
        model.set_token_map(token_map)
    except ValueError as exc:
        raise InputError(folder / "config.json", "engram_compressed_vocab_size", None, str(exc)) from exc


class _Shards:
    """Open shard files lazily with ``safe_open`` (memory-mapped: reading one tensor copies only it)."""

    def __init__(self, folder: Path):
        self.folder, self.open = folder, {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.open.clear()

    def read(self, file: str, name: str) -> torch.Tensor:
        from safetensors import SafetensorError, safe_open
        try:
            if file not in self.open:
                self.open[file] = safe_open(self.folder / file, framework="pt", device="cpu")
            return self.open[file].get_tensor(name)
        except (SafetensorError, OSError, RuntimeError) as exc:
            raise InputError(self.folder / file, name, None, f"cannot read tensor: {exc}") from exc


class _Filler:
    """Writes decoded weights into the meta-initialized model and tracks which slots are filled."""

    def __init__(self, model, folder: Path, device, dtype, engram_device):
        self.model, self.folder, self.engram_device = model, folder, engram_device
        self.device, self.dtype = device, dtype
        self.expected = dict(model.state_dict(keep_vars=True))
        self.tied = getattr(model.config, "tie_word_embeddings", False)
        for key in (getattr(model, "_tied_weights_keys", None) or {}) if self.tied else ():
            self.expected.pop(key, None)   # filled by tie_weights() from its source
        self.keep_fp32 = set(getattr(model, "_keep_in_fp32_modules_strict", None) or ()) | set(KEEP_FP32_EXTRA)
        self.partial: dict[str, tuple[torch.Tensor, set]] = {}
        self.done: set[str] = set()

    def _dtype(self, name: str, current: torch.Tensor) -> torch.dtype:
        if not current.is_floating_point():
            return current.dtype
        return torch.float32 if any(part in self.keep_fp32 for part in name.split(".")) else self.dtype

    def _current(self, name: str, native: str) -> torch.Tensor:
        if name not in self.expected:
            raise InputError(self.folder, native, None, f"has no place in the model config.json builds ({name})")
        return self.expected[name]

    def put(self, target: name_map.Target, value: torch.Tensor, native: str) -> None:
        current = self._current(target.param, native)
        if target.expert is None and target.half is None:
            self._check_shape(native, value.shape, current.shape)
            self._assign(target.param, _owned(value.to(self.device, self._dtype(target.param, current))))
            return
        full, filled = self.partial.setdefault(
            target.param, (torch.empty(current.shape, dtype=self._dtype(target.param, current), device=self.device),
                           set()))
        view = slot_view(full, target.expert, target.half)
        self._check_shape(native, value.shape, view.shape)
        view.copy_(value)
        filled.add((target.expert, target.half))
        if len(filled) == self._slots(target.param, current):
            self._assign(target.param, full)
            del self.partial[target.param]

    def put_table(self, weight: LogicalWeight, tensors: dict[str, torch.Tensor]) -> None:
        """An Engram table as stored: payload (and scales) unchanged, on the Engram device."""
        for info in weight.stored:
            param = name_map.to_target(weight.name).param[: -len("weight")] + info.name.rsplit(".", 1)[1]
            current = self._current(param, info.name)
            self._check_shape(info.name, tensors[info.name].shape, current.shape)
            self._assign(param, _owned(tensors[info.name].to(self.engram_device)))

    @staticmethod
    def _slots(name: str, current: torch.Tensor) -> int:
        return current.shape[0] * (2 if name.endswith("gate_up_proj") else 1)

    def _check_shape(self, native: str, got, want) -> None:
        if tuple(got) != tuple(want):
            raise InputError(self.folder, native, list(got),
                             f"shape contradicts the model config.json describes ({list(want)})")

    def _assign(self, name: str, value: torch.Tensor) -> None:
        module_name, _, leaf = name.rpartition(".")
        module = self.model.get_submodule(module_name)
        if leaf in module._parameters:
            module._parameters[leaf] = torch.nn.Parameter(value, requires_grad=False)
        else:
            module._buffers[leaf] = value
        self.done.add(name)

    def finish(self) -> None:
        for name, (full, filled) in self.partial.items():
            experts = range(full.shape[0])
            halves = ("gate", "up") if name.endswith("gate_up_proj") else (None,)
            missing = next((e, h) for e in experts for h in halves if (e, h) not in filled)
            native = name_map.to_native(name_map.Target(name, *missing))
            raise InputError(self.folder, native, None, "missing from checkpoint")
        for name in self.expected:
            if name not in self.done:
                raise InputError(self.folder, _native_or(name), None, "missing from checkpoint")
        if self.tied:
            self.model.tie_weights()


def _owned(tensor: torch.Tensor) -> torch.Tensor:
    """A CPU tensor that is not a view of a memory-mapped shard: a raw or float32-as-stored tensor read by
    ``safe_open`` aliases the file, and one such tensor keeps the whole shard mapped, every page the loader
    read counted in the process's RSS (a 1.8 GB checkpoint showed 1.9 GB of RssFile after loading)."""
    if tensor.device.type != "cpu" or not _maps_a_file(tensor):
        return tensor
    return tensor.clone()


def _maps_a_file(tensor: torch.Tensor) -> bool:
    storage = tensor.untyped_storage()
    return not storage.resizable()       # safetensors' zero-copy tensors wrap a fixed (mmap) buffer


def _native_or(name: str) -> str:
    try:
        return name_map.to_native(name)
    except KeyError:
        return name

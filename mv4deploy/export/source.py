"""The model an export starts from: a transformers folder of a Qwen2 or Llama distillate.

``check_source`` is the preflight that runs before anything slow: config.json readable, an architecture
the export supports (the dense GQA decoders DeepSeek distils into; the MoE/MLA families have no ONNX
path here), and a tokenizer that transformers loads offline. Bad input is one line and exit 2.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mv4deploy.core.errors import InputError
from mv4deploy.model.config import load_json
from mv4deploy.model.source import read_folder_config
from mv4deploy.model.spec import Arch, DenseSpec
from mv4deploy.model.tokenizer import load_tokenizer
from mv4deploy.core.safepaths import check_model_folder

# transformers class per supported family (what the genai builder and our static graph understand)
SUPPORTED = {Arch.QWEN2: "Qwen2ForCausalLM", Arch.LLAMA: "LlamaForCausalLM"}


@dataclass(frozen=True)
class SourceModel:
    folder: Path
    spec: DenseSpec
    tokenizer: object            # a transformers tokenizer
    eos_token_id: int | None


def check_source(folder: str | Path) -> SourceModel:
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, None, None, "MODEL_DIR must be a folder with config.json, weights and a tokenizer")
    check_model_folder(folder)
    config_path = folder / "config.json"
    raw = load_json(config_path)
    spec = read_folder_config(folder, raw)
    if spec.architecture not in SUPPORTED:
        known = ", ".join(SUPPORTED.values())
        raise InputError(config_path, "architectures", raw.get("architectures") or spec.architecture.value,
                         f"unsupported architecture for ONNX export; supported: {known}")
    if not any(folder.glob("*.safetensors")):
        raise InputError(folder, "weights", None, "no *.safetensors in the model folder")
    tokenizer = load_tokenizer(folder)
    eos = raw.get("eos_token_id", getattr(tokenizer, "eos_token_id", None))
    return SourceModel(folder, spec, tokenizer, eos[0] if isinstance(eos, list) else eos)


def load_torch_model(folder: Path):
    """The PyTorch reference in fp32 on the CPU (weights stored in BF16 are upcast exactly)."""
    import torch
    from transformers import AutoModelForCausalLM

    from mv4deploy.runtime.quiet import library_bars_off
    with library_bars_off():
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, local_files_only=True,
                                                     trust_remote_code=False, use_safetensors=True)
    return model.eval()

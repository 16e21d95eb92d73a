"""Candidates for the validation tests, derived once per test session from the committed, trained
tests/fixtures/models/tiny-qwen2 (a transformers-layout Qwen2: the distillate architecture):

- ``ref``: the fixture itself (read in place); ``copy``: the same files in another folder;
- ``fp8``: every 2-D weight rounded through float8_e4m3fn with a per-tensor scale (a small, real error);
- ``damaged``: ``model.layers.0.mlp.down_proj`` zeroed (the dense analogue of zeroing an expert);
- ``other_tokenizer``: a Qwen2 of the same shape whose tokenizer was trained on other text.

The eval text is the fixtures' held-out tests/fixtures/eval.txt. Building takes a few seconds.
"""

from __future__ import annotations

import functools
import shutil
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "models" / "tiny-qwen2"
EVAL_TEXT = REPO / "tests" / "fixtures" / "eval.txt"
CALIB_TEXT = REPO / "tests" / "fixtures" / "calib.txt"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


@dataclass(frozen=True)
class TinyModels:
    root: Path
    ref: Path
    copy: Path
    fp8: Path
    damaged: Path
    other_tokenizer: Path
    eval_text: Path


def fp8_round_trip(model) -> None:
    """Round every 2-D weight through float8_e4m3fn with a per-tensor scale (amax -> 448)."""
    import torch
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                scale = p.abs().max().clamp(min=1e-12) / 448.0
                p.copy_((p / scale).to(torch.float8_e4m3fn).to(torch.float32) * scale)


def _variant(folder: Path, change) -> Path:
    import torch
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(str(FIXTURE), local_files_only=True, dtype=torch.float32)
    change(model)
    model.save_pretrained(str(folder))
    for name in TOKENIZER_FILES:
        shutil.copy(FIXTURE / name, folder / name)
    return folder


def _zero_first_mlp(model) -> None:
    import torch
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.zero_()


def _other_tokenizer(folder: Path) -> Path:
    """An untrained Qwen2 of the fixture's shape with a tokenizer trained on the calibration text."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<bos>", "<eos>", "<pad>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([CALIB_TEXT.read_text()[:20_000]], trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                            pad_token="<pad>").save_pretrained(str(folder))
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(FIXTURE))).save_pretrained(str(folder))
    return folder


@functools.lru_cache(maxsize=None)
def build_tiny_models(root: Path) -> TinyModels:
    """Build (once per process) every candidate under ``root``."""
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    root.mkdir(parents=True, exist_ok=True)
    copy = root / "copy"
    if not copy.is_dir():
        shutil.copytree(FIXTURE, copy)
    return TinyModels(root, FIXTURE, copy, _variant(root / "fp8", fp8_round_trip),
                      _variant(root / "damaged", _zero_first_mlp), _other_tokenizer(root / "other"), EVAL_TEXT)

"""Tiny models for the validation tests, built once per test session in a temporary folder.

A byte-level BPE tokenizer (Qwen2-style pre-tokenizer, 384 tokens) is trained on a Python standard-library
module, and a Qwen2ForCausalLM (hidden 64, 2 layers) is trained on it for 150 steps (about 3 s on 2 cores),
so its next-token distributions are peaked like a real model's rather than uniform. Variants:

- ``ref``: the trained model; ``copy``: the same weights saved again elsewhere;
- ``fp8``: every 2-D weight rounded through float8_e4m3fn with a per-tensor scale (a small, real error);
- ``damaged``: ``model.layers.0.mlp.down_proj`` zeroed (the dense analogue of zeroing an expert);
- ``other_tokenizer``: the same architecture with a tokenizer trained on different text.

The eval text is another standard-library module, never seen in training.
"""

from __future__ import annotations

import functools
import shutil
import textwrap
from dataclasses import dataclass
from pathlib import Path

import argparse as _argparse_module
import fractions as _fractions_module

TRAIN_SOURCE = Path(_argparse_module.__file__)
EVAL_SOURCE = Path(textwrap.__file__)
OTHER_SOURCE = Path(_fractions_module.__file__)
VOCAB = 384
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")


@dataclass(frozen=True)
class TinyModels:
    root: Path
    ref: Path
    copy: Path
    fp8: Path
    damaged: Path
    other_tokenizer: Path
    eval_text: Path


def train_tokenizer(text: str, folder: Path, vocab: int = VOCAB):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([text], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    fast.save_pretrained(str(folder))
    return fast


def train_model(tokenizer, text: str, steps: int = 150, seed: int = 0):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      tie_word_embeddings=False, eos_token_id=0, bos_token_id=None, pad_token_id=0)
    model = Qwen2ForCausalLM(cfg)
    ids = torch.tensor(tokenizer(text, verbose=False)["input_ids"])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # tiny matmuls: one thread is as fast, and 4x faster on a shared, busy machine
    try:
        for _ in range(steps):
            starts = torch.randint(0, len(ids) - 129, (8,), generator=g)
            batch = torch.stack([ids[s:s + 128] for s in starts])
            loss = model(input_ids=batch, labels=batch).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def fp8_round_trip(model) -> None:
    """Round every 2-D weight through float8_e4m3fn with a per-tensor scale (amax -> 448)."""
    import torch
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                scale = p.abs().max().clamp(min=1e-12) / 448.0
                p.copy_((p / scale).to(torch.float8_e4m3fn).to(torch.float32) * scale)


def _save(model, tokenizer_dir: Path, folder: Path) -> Path:
    model.save_pretrained(str(folder))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_dir / name, folder / name)
    return folder


@functools.lru_cache(maxsize=None)
def build_tiny_models(root: Path) -> TinyModels:
    """Build (once per process) every tiny model under ``root``."""
    import copy
    import torch
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    root.mkdir(parents=True, exist_ok=True)
    train_text = TRAIN_SOURCE.read_text()[:60_000]
    tok = train_tokenizer(train_text, root / "tokenizer")
    model = train_model(tok, train_text)
    ref = _save(model, root / "tokenizer", root / "ref")
    copy_dir = _save(model, root / "tokenizer", root / "copy")
    quant = copy.deepcopy(model)
    fp8_round_trip(quant)
    fp8 = _save(quant, root / "tokenizer", root / "fp8")
    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken.model.layers[0].mlp.down_proj.weight.zero_()
    damaged = _save(broken, root / "tokenizer", root / "damaged")
    other_tok = train_tokenizer(OTHER_SOURCE.read_text()[:30_000], root / "other-tokenizer")
    other = _save(train_model(other_tok, OTHER_SOURCE.read_text()[:30_000], steps=5), root / "other-tokenizer",
                  root / "other")
    eval_text = root / "eval.txt"
    eval_text.write_text(EVAL_SOURCE.read_text())
    return TinyModels(root, ref, copy_dir, fp8, damaged, other, eval_text)

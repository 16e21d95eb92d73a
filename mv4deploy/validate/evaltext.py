"""The eval text as token chunks, and a tokenizer fingerprint that says two models read text alike.

Chunking follows ``llama-perplexity``: the text is tokenized once, cut into ``C = len // N`` chunks of N
tokens (the remainder is dropped), each chunk is run from an empty cache, and only the second half is
scored: the logits at positions ``N//2 .. N-2`` predict tokens ``N//2+1 .. N-1``, ``N - 1 - N//2``
positions per chunk (127 for N = 256). The first half gives every scored token at least N/2 tokens of
context, so the score measures the model, not a cold start. When the tokenizer adds a BOS token, the
first token of every chunk is replaced by it, as llama.cpp does.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from mv4deploy.core.errors import InputError
from mv4deploy.core.fileio import sha256_file

MIN_CHUNK_TOKENS = 4
# Exercises what tokenizers disagree on: digits, case, accents, CJK, emoji, runs of spaces and newlines, code.
PROBE_TEXT = ("The 2024 Q3 résumé: naïve café ÉCOLE straße 東京都 😀 ½ x² ﬁ\n\n\tdef f(x):  return x**2 "
              "# 12345678\r\n    if a!=b and c<=d: print('ok')   \n\nI'm we'll they've 3.14159 0x1F -42")


@dataclass(frozen=True)
class Chunking:
    """Which positions of an N-token chunk are scored (llama.cpp's second half)."""

    chunk_tokens: int

    @property
    def first_scored(self) -> int:
        """Index of the first logits row that is scored."""
        return self.chunk_tokens // 2

    @property
    def scored_per_chunk(self) -> int:
        return self.chunk_tokens - 1 - self.chunk_tokens // 2

    @property
    def logits_kept(self) -> int:
        """Rows a model must return per chunk: positions first_scored .. N-1 (the last one unused)."""
        return self.chunk_tokens - self.first_scored

    def targets(self, chunk: Tensor) -> Tensor:
        """The tokens the scored positions predict: ``chunk[N//2 + 1:]``."""
        return chunk[self.first_scored + 1:]


@dataclass(frozen=True)
class EvalTokens:
    tokens: Tensor          # [C, N] int64
    chunking: Chunking
    name: str               # file name of the eval text
    sha256: str             # of the file's bytes
    total_tokens: int       # the whole text, before the remainder was dropped
    bos_id: int | None

    @property
    def chunks(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def positions(self) -> int:
        return self.chunks * self.chunking.scored_per_chunk


def bos_id(tokenizer) -> int | None:
    """The BOS id if this tokenizer puts one in front of text, else None."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return None
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return int(bos) if ids and ids[0] == bos else None


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of the vocabulary (ids and strings, added tokens included), the BOS rule and the ids of
    ``PROBE_TEXT``: equal fingerprints mean the same ids for the same text, whatever the files look like
    (tokenizer.json rewritten by an exporter with a different layout still matches)."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: (item[1], item[0]))
    probe = tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"]
    blob = json.dumps({"vocab": vocab, "probe": probe, "bos": bos_id(tokenizer)}, ensure_ascii=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def tokenize_eval(path: Path, tokenizer, chunk_tokens: int, max_chunks: int | None = None) -> EvalTokens:
    """Tokenize the eval text and cut it into ``[C, N]`` chunks (at most ``max_chunks``)."""
    path = Path(path)
    if chunk_tokens < MIN_CHUNK_TOKENS:
        raise InputError(None, "--chunk", chunk_tokens, f"a chunk needs at least {MIN_CHUNK_TOKENS} tokens")
    if max_chunks is not None and max_chunks < 1:
        raise InputError(None, "--max-chunks", max_chunks, "must be at least 1")
    text = read_text(path)
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    chunks = len(ids) // chunk_tokens
    if chunks < 1:
        raise InputError(path, "tokens", len(ids), f"the eval text is shorter than one chunk of {chunk_tokens} tokens")
    if max_chunks is not None:
        chunks = min(chunks, max_chunks)
    tokens = torch.tensor(ids[: chunks * chunk_tokens], dtype=torch.int64).view(chunks, chunk_tokens)
    bos = bos_id(tokenizer)
    if bos is not None:
        tokens[:, 0] = bos
    return EvalTokens(tokens, Chunking(chunk_tokens), path.name, sha256_file(path), len(ids), bos)


def read_text(path: Path) -> str:
    if not path.is_file():
        raise InputError(path, None, None, "eval text not found")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(path, None, None, f"not UTF-8 text (byte {exc.start})") from exc


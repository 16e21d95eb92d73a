"""The one way a model folder's tokenizer is loaded: offline, never running code from the folder.

Every command that reads a tokenizer (validate, export, generate, the runtime's Engram hashing, GPTQ
calibration) calls ``load_tokenizer``, so a missing folder or unreadable tokenizer is always the same one
line naming the folder (exit 2), never a transformers message about Hub repo ids. transformers is
imported only when a tokenizer is loaded (the planner path never loads one).
"""

from __future__ import annotations

from pathlib import Path

from mv4deploy.core.errors import InputError, first_line
from mv4deploy.core.safepaths import check_model_folder

# Any of these makes a folder a tokenizer folder for AutoTokenizer (fast, sentencepiece, BPE vocab).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def load_tokenizer(folder: str | Path, why: str | None = None):
    """The tokenizer saved in ``folder``; ``why`` (e.g. "Engram hashing") is added to the error message."""
    folder = Path(folder)
    need = f" ({why} needs it)" if why else ""
    if not folder.is_dir():
        raise InputError(folder, None, None, f"not a folder; expected a model folder with a tokenizer{need}")
    check_model_folder(folder)
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise InputError(folder, "tokenizer", None, f"no tokenizer files (none of {', '.join(TOKENIZER_FILES)})"
                         + need)
    from transformers import AutoTokenizer
    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    except Exception as exc:        # the tokenizers library raises a bare Exception for a malformed file
        raise InputError(folder, "tokenizer", None, f"transformers cannot load it{need}: {first_line(exc)}") from exc

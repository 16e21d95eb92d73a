"""Logits of a checkpoint folder as plain transformers loads it: ``AutoModelForCausalLM.from_pretrained``
and nothing else. Run as a script in a subprocess so that no mv4deploy import (and nothing it patches)
can reach the model: ``python plain_hf_logits.py FOLDER TOKENS.pt OUT.pt [DTYPE]``. TOKENS.pt holds a [B, T]
int64 tensor; OUT.pt gets the float32 log-probabilities [B, T, V], or the exception's one line on stderr,
exit 3. DTYPE is ``float32`` (default) or ``auto`` (what a bare ``from_pretrained(FOLDER)`` does: the
checkpoint's own dtype).
"""

import sys


def main(folder: str, tokens_path: str, out_path: str, dtype: str = "float32") -> int:
    import torch
    from transformers import AutoModelForCausalLM
    assert "mv4deploy" not in sys.modules
    tokens = torch.load(tokens_path)
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype, dtype), device_map="cpu",
                                                     local_files_only=True)
    except Exception as exc:  # reported to the caller, which decides whether it is expected
        print(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", file=sys.stderr)
        return 3
    with torch.no_grad():
        logits = model(tokens).logits.float()
    assert "mv4deploy" not in sys.modules
    torch.save(torch.log_softmax(logits, -1), out_path)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:5]))

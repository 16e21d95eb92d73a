"""Our GPTQ against llm-compressor's GPTQ: same scheme (W4A16, symmetric INT4, group 128; 32 on tiny-v4), same
calibration tokens, same held-out scoring, side by side.

    python benchmarks/gptq_vs_llmcompressor.py --llmc-python /tmp/llmc-venv/bin/python [--models tiny-qwen2,tiny-v4]

llm-compressor runs in its own environment (``--llmc-python``: a venv with llmcompressor 0.14 and the CPU
torch; its transformers pin differs from ours) through ``benchmarks/_llmc_gptq.py``, which never imports
mv4deploy. The calibration chunks are the ones our GPTQ reads (``quant.calibrate``: the first 4,096 tokens
of tests/fixtures/calib.txt, in chunks of 256), written to JSON for it. Both outputs are compressed-tensors
``pack-quantized`` checkpoints; llm-compressor's logits are computed in its own environment right after
calibration (its V4 output does not decompress under our transformers 5.25), ours through mv4deploy's
loader, and both are scored as ``mv4deploy validate --chunk 256 --max-chunks 8`` scores them against the
BF16 fixture. Scope: every linear and every routed expert (llm-compressor unfuses V4's experts into
per-expert linears and calibrates all of them), ``lm_head`` and what our recipes keep BF16 (V4's compressor,
indexer scorer and router projections) excluded on both sides; the benchmark compares the sets of
quantized modules of both outputs and stops if they differ.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _chunks(src: Path, spec) -> list[list[int]]:
    from mv4deploy.quant.calibrate import _token_ids
    ids = _token_ids(src, spec).tolist()
    return [ids[i:i + spec.seq_len] for i in range(0, len(ids), spec.seq_len) if len(ids[i:i + spec.seq_len]) > 1]


# llm-compressor needs K divisible by the group: tiny-v4 has K = 64 linears (shared expert down, o_b), so g32
GROUP = {"tiny-qwen2": 128, "tiny-v4": 32}


def _recipe(group: int):
    from mv4deploy.model.rules import Rule
    from mv4deploy.quant.recipe import CATCH_ALL, KEEP_HIGH_PRECISION, Recipe
    fmt = f"int4-g{group}"
    return Recipe(f"int4-g{group}", KEEP_HIGH_PRECISION + (Rule(fmt, slot="expert"), Rule(fmt, slot="linear"), CATCH_ALL))


def _llmc_ignore(model: str) -> list[str]:
    """Linear modules our linear-slot recipe keeps BF16 (transformers names, llm-compressor regexes)."""
    if model.startswith("tiny-v4"):  # V4: compressor / indexer scorer / router projections stay BF16 in ours
        return ["re:.*compressor\\.(kv_proj|gate_proj)$", "re:.*indexer\\.(kv_proj|gate_proj)$",
                "re:.*weights_proj$", "re:.*mlp\\.gate$"]
    return []


class Precomputed:
    """A logits source of logits computed elsewhere ([C, N, V], one row per eval chunk)."""

    def __init__(self, chunks, logits):
        self.rows = {tuple(c.tolist()): row for c, row in zip(chunks, logits)}

    def last_logits(self, tokens, keep: int):
        return self.rows[tuple(tokens.tolist())][-keep:].float()


def _quantized_modules(folder: Path) -> set[str]:
    """Names of the INT4 modules of a checkpoint, normalised: no ``model.`` prefix, V4 experts as w1/w2/w3."""
    from safetensors import safe_open
    rename = {"wgate": "w1", "up_proj": "w3", "down_proj": "w2"}
    names = set()
    for file in folder.glob("*.safetensors"):
        with safe_open(str(file), "pt") as handle:
            names |= {k[: -len(".weight_packed")].removeprefix("model.") for k in handle.keys()
                      if k.endswith(".weight_packed")}
    return {n.rsplit(".", 1)[0] + "." + rename.get(n.rsplit(".", 1)[1], n.rsplit(".", 1)[1])
            if ".experts." in n and ".shared_experts." not in n else n for n in names}


def _run_llmc(python: str, src: Path, out: Path, tokens: Path, model: str, group: int, eval_path: Path) -> float:
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    proc = subprocess.run([python, str(REPO / "benchmarks/_llmc_gptq.py"), str(src), str(out), str(tokens),
                           str(eval_path), str(group),
                           *_llmc_ignore(model)], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"llm-compressor failed on {model}: {proc.stderr.strip().splitlines()[-1]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llmc-python", required=True, help="python of a venv with llmcompressor")
    parser.add_argument("--models", default="tiny-qwen2,tiny-v4")
    parser.add_argument("--work", type=Path, default=Path("/tmp/mv4deploy-gptq-bench"))
    args = parser.parse_args()
    import torch

    from mv4deploy.model.tokenizer import load_tokenizer
    from mv4deploy.quant.calibrate import CalibrationSpec
    from mv4deploy.quant.run import quantize_checkpoint
    from mv4deploy.runtime import load_model
    from mv4deploy.validate.evaltext import tokenize_eval
    from mv4deploy.validate.backends import TorchSource
    from mv4deploy.validate.stats import summarize
    from mv4deploy.validate.run import compare_sources
    torch.set_num_threads(2)
    spec = CalibrationSpec(REPO / "tests/fixtures/calib.txt")
    rows = []
    for model in args.models.split(","):
        src = REPO / "tests/fixtures/models" / model
        work = args.work / model
        work.mkdir(parents=True, exist_ok=True)
        tokens = work / "calib_chunks.json"
        tokens.write_text(json.dumps(_chunks(src, spec)))
        group = GROUP.get(model, 128)
        et = tokenize_eval(REPO / "tests/fixtures/eval.txt", load_tokenizer(src), 256, 8)
        torch.save(et.tokens, work / "eval.pt")
        seconds = _run_llmc(args.llmc_python, src, work / "llmc", tokens, model, group, work / "eval.pt")
        shutil.rmtree(work / "ours", ignore_errors=True)
        start = time.perf_counter()
        quantize_checkpoint(src, work / "ours", _recipe(group), calibration=spec, workers=2)
        ours_s = time.perf_counter() - start
        theirs_set, ours_set = _quantized_modules(work / "llmc"), _quantized_modules(work / "ours")
        if theirs_set != ours_set:
            raise SystemExit(f"{model}: different scopes: only llm-compressor {sorted(theirs_set - ours_set)[:4]}, "
                             f"only ours {sorted(ours_set - theirs_set)[:4]}")
        ref = TorchSource.of(load_model(src))
        theirs = Precomputed(et.tokens, torch.load(work / "llmc" / "eval_logits.pt"))
        ours = TorchSource.of(load_model(work / "ours"))
        for name, cand, secs in (("llm-compressor GPTQ", theirs, seconds), ("mv4deploy GPTQ", ours, ours_s)):
            s = summarize(compare_sources(ref, cand, et))
            rows.append((f"{model} g{group}", name, s["kld_mean"], s["kld_p99"], s["same_top1"], secs))
    print(f"{'model':15s} {'engine':20s} {'mean KLD':>10s} {'99% KLD':>10s} {'top-1':>7s} {'seconds':>8s}")
    for model, name, kld, p99, top1, secs in rows:
        print(f"{model:15s} {name:20s} {kld:10.3e} {p99:10.3e} {top1:7.4f} {secs:8.1f}")


if __name__ == "__main__":
    main()

"""Quality of each recipe on the runtime's trained fixtures: top-1 agreement and KLD against the BF16
model on held-out text, and GPTQ against round-to-nearest INT4 at the same group size.

    python benchmarks/quantize_quality.py [--fixtures tests/fixtures/models] [--work /tmp/mv4deploy-qquality]

Scored exactly as ``mv4deploy validate --chunk 256 --max-chunks 8`` scores it (``validate.evaltext``
chunks, the second half of each chunk, float64 ``position_stats`` + ``summarize``), so the figures compare
with ``mv4deploy validate`` and the CI gates. Top-1 is the raw same-top-1 rate with its Wilson lower bound
(95 %), the statistic a gate's ``top1_min`` bounds. Needs ``mv4deploy.runtime`` (``load_model``) and the
fixtures ``tiny-v4`` / ``tiny-v41`` with their tokenizers, plus ``tests/fixtures/calib.txt``
(calibration) and ``tests/fixtures/eval.txt`` (held out). Rows: tiny-v4 fp8, int4-experts RTN, int4-experts GPTQ, nf4,
int4-all RTN / GPTQ (every linear INT4: GPTQ's effect without FP8 error mixed in), tiny-v41 fp8 (FP8
Engram tables). Acceptance: GPTQ mean KLD <= 0.8x RTN's.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _recipes():
    from mv4deploy.quant.recipe import CATCH_ALL, KEEP_HIGH_PRECISION, Recipe, get_recipe
    from mv4deploy.model.rules import Rule
    int4_all = Recipe("int4-all", KEEP_HIGH_PRECISION + (Rule("int4-g128", slot="expert"),
                                                         Rule("int4-g128", slot="linear"), CATCH_ALL))
    return [("tiny-v4", "fp8", get_recipe("fp8"), False), ("tiny-v4", "int4-experts RTN", get_recipe("int4-experts"), False),
            ("tiny-v4", "int4-experts GPTQ", get_recipe("int4-experts"), True), ("tiny-v4", "nf4", get_recipe("nf4"), False),
            ("tiny-v4", "int4-all RTN", int4_all, False), ("tiny-v4", "int4-all GPTQ", int4_all, True),
            ("tiny-v41", "fp8 (FP8 Engram tables)", get_recipe("fp8"), False)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fixtures", type=Path, default=REPO / "tests/fixtures/models")
    parser.add_argument("--work", type=Path, default=Path("/tmp/mv4deploy-qquality"))
    parser.add_argument("--chunks", type=int, default=8)
    args = parser.parse_args()
    try:
        import torch

        from mv4deploy.runtime import load_model
    except ImportError as exc:
        raise SystemExit(f"needs the runtime (mv4deploy.runtime): {exc}")
    from mv4deploy.model.tokenizer import load_tokenizer
    from mv4deploy.quant.calibrate import CalibrationSpec
    from mv4deploy.quant.run import quantize_checkpoint
    from mv4deploy.validate.evaltext import tokenize_eval
    from mv4deploy.validate.run import compare_models
    torch.set_num_threads(1)
    calib = CalibrationSpec(REPO / "tests/fixtures/calib.txt")
    print(f"{'model':9s} {'recipe':26s} {'mean KLD':>10s} {'99% KLD':>9s} {'max KLD':>9s} {'top-1':>7s} "
          f"{'(Wilson lo)':>11s} {'PPL ref -> cand':>18s}  positions")
    references, kld = {}, {}
    for model, label, recipe, gptq in _recipes():
        src = args.fixtures / model
        if not src.is_dir():
            raise SystemExit(f"fixture {src} is missing (the runtime issue builds it)")
        if model not in references:
            tokens = tokenize_eval(REPO / "tests/fixtures/eval.txt", load_tokenizer(src), 256, args.chunks)
            references[model] = (load_model(src), tokens)
        reference, tokens = references[model]
        out = args.work / f"{model}-{label.replace(' ', '_')}"
        shutil.rmtree(out, ignore_errors=True)
        quantize_checkpoint(src, out, recipe, calibration=calib if gptq else None, workers=2)
        s = compare_models(reference, load_model(out), tokens)
        print(f"{model:9s} {label:26s} {s['kld_mean']:10.4e} {s['kld_p99']:9.3e} {s['kld_max']:9.3e} "
              f"{s['same_top1']:7.4f} {s['same_top1_wilson_low']:11.4f} {s['ppl_base']:8.3f} -> {s['ppl_q']:7.3f}"
              f"  {s['tokens_scored']}")
        kld[label] = s["kld_mean"]
    for name in ("int4-experts", "int4-all"):
        ratio = kld[f"{name} GPTQ"] / kld[f"{name} RTN"]
        print(f"{name}: GPTQ mean KLD / RTN mean KLD = {ratio:.2f} (acceptance <= 0.8)")


if __name__ == "__main__":
    main()

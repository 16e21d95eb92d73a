"""Quality of each recipe on the runtime's trained fixtures: top-1 agreement and KLD against the BF16
model on held-out text, and GPTQ against round-to-nearest INT4 at the same group size.

    python benchmarks/quantize_quality.py [--fixtures tests/fixtures/models] [--work /tmp/mv4deploy-qquality]

Needs ``mv4deploy.runtime`` (``load_model``, ``evaluate.agreement``) and the fixtures ``tiny-v4`` /
``tiny-v41`` with their tokenizers, plus ``tests/fixtures/calib.txt`` (calibration) and
``tests/fixtures/eval.txt`` (held out). Rows: tiny-v4 fp8, int4-experts RTN, int4-experts GPTQ, nf4,
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
    from mv4deploy.quant.rules import Rule
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
        from mv4deploy.runtime.evaluate import agreement
    except ImportError as exc:
        raise SystemExit(f"needs the runtime (mv4deploy.runtime): {exc}")
    from mv4deploy.model.tokenizer import load_tokenizer
    from mv4deploy.quant.calibrate import CalibrationSpec
    from mv4deploy.quant.run import quantize_checkpoint
    torch.set_num_threads(1)
    calib = CalibrationSpec(REPO / "tests/fixtures/calib.txt")
    print(f"{'model':9s} {'recipe':26s} {'mean KLD':>10s} {'max KLD':>9s} {'top-1':>7s} {'PPL ref -> cand':>18s}")
    references = {}
    for model, label, recipe, gptq in _recipes():
        src = args.fixtures / model
        if not src.is_dir():
            raise SystemExit(f"fixture {src} is missing (the runtime issue builds it)")
        if model not in references:
            tokenizer = load_tokenizer(src)
            ids = torch.tensor(tokenizer((REPO / "tests/fixtures/eval.txt").read_text())["input_ids"])
            references[model] = (load_model(src), ids)
        reference, ids = references[model]
        out = args.work / f"{model}-{label.replace(' ', '_')}"
        shutil.rmtree(out, ignore_errors=True)
        quantize_checkpoint(src, out, recipe, calibration=calib if gptq else None, workers=2)
        a = agreement(reference, load_model(out), ids, max_chunks=args.chunks)
        print(f"{model:9s} {label:26s} {a.kld_mean:10.4e} {a.kld_max:9.3e} {a.top1:7.4f} "
              f"{a.ppl_reference:8.3f} -> {a.ppl_candidate:7.3f}")


if __name__ == "__main__":
    main()

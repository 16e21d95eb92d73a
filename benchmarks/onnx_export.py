"""ONNX export of tiny-qwen2 to every target: sizes side by side, and decode speed of onnxruntime-genai int4
against PyTorch eager fp32, measured in the same run.

    python benchmarks/onnx_export.py                          # tests/fixtures/models/tiny-qwen2
    python benchmarks/onnx_export.py --model DIR --new-tokens 256 --repeat 5 --keep /tmp/exports

Each target is exported as a user does it (``python -m mv4deploy export onnx ... --json``, which validates
the export against PyTorch before it succeeds), so this script also covers every export the test suite
runs. Then, in this process, on the same prompt (the first ``--prompt-tokens`` of the eval text):

- PyTorch eager fp32: transformers' model, one token per forward with its DynamicCache, argmax;
- onnxruntime-genai fp32 and int4: ``Generator.generate_next_token`` (greedy, EOS masked by min_length so
  every run makes the same number of tokens) on the exported folders;
- QNN HTP: one decode.onnx call on the emulated HTP (x86 emulation: a correctness check, not phone speed).

Each decode measurement runs in a fresh process (load, one warm-up run, one timed run; only the decode
loop is timed, prefill excluded), the cases interleaved round by round for ``--repeat`` rounds; the median
tokens/s is printed with its min-max, and each case's ratio to PyTorch within a round (median and
min-max over rounds: A/B pairs that met the same machine load). Separate processes keep onnxruntime's spinning thread pools and torch's OpenMP
threads from competing for the same cores. Both run ``--threads`` threads (default 1: torch's
``set_num_threads``, genai's ``intra_op_num_threads`` through a config overlay). With the default thread
counts on a shared 2-core machine PyTorch's decode swung 7-833 tokens/s between processes (issue 20); with
one thread each it is steady. Load averages (``os.getloadavg``) are printed before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
TARGETS = ("cpu-fp32", "cpu-int4", "onnx-int4", "snapdragon-qnn", "snapdragon-qnn-w4")


def export(model: Path, out: Path, target: str, eval_path: Path, calib_path: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "NO_COLOR": "1"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "mv4deploy", "export", "onnx", str(model), str(out), "--target",
                           target, "--eval", str(eval_path), "--calib", str(calib_path), "--json", "--overwrite"],
                          capture_output=True, text=True, env=env, cwd=REPO)
    if proc.returncode != 0:
        sys.exit(f"export {target} failed ({proc.returncode}): {proc.stderr.strip()[-800:]}")
    report = json.loads(proc.stdout)
    report["wall_s"] = time.perf_counter() - start
    return report


def reuse(folder: Path) -> dict:
    report = json.loads((folder / "export.json").read_text())
    report["wall_s"] = report["seconds"]["total_s"]
    return report


def torch_decode(model, prompt: list[int], new_tokens: int) -> float:
    import torch
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([prompt]), use_cache=True)
        past, token = out.past_key_values, int(out.logits[0, -1].argmax())
        start = time.perf_counter()
        for _ in range(new_tokens):
            out = model(input_ids=torch.tensor([[token]]), past_key_values=past, use_cache=True)
            past, token = out.past_key_values, int(out.logits[0, -1].argmax())
        return new_tokens / (time.perf_counter() - start)


def genai_decode(og_model, prompt: list[int], new_tokens: int) -> float:
    import numpy as np
    import onnxruntime_genai as og
    params = og.GeneratorParams(og_model)
    total = len(prompt) + new_tokens        # min_length masks EOS, so every run makes new_tokens tokens
    params.set_search_options(max_length=total, min_length=total, do_sample=False)
    gen = og.Generator(og_model, params)
    gen.append_tokens(np.asarray(prompt, dtype=np.int32))
    start = time.perf_counter()
    for _ in range(new_tokens):
        gen.generate_next_token()
    elapsed = time.perf_counter() - start
    if len(gen.get_sequence(0)) != total:
        raise RuntimeError(f"genai stopped at {len(gen.get_sequence(0))} of {total} tokens")
    return new_tokens / elapsed


def htp_decode_s(folder: Path, eval_path: Path, model: Path, prompt_tokens: int, calls: int) -> float:
    from mv4deploy.export.qnn import QnnBuild
    from mv4deploy.model.tokenizer import load_tokenizer
    prompt = load_tokenizer(model)(eval_path.read_text(), add_special_tokens=False)["input_ids"][:prompt_tokens]
    from mv4deploy.export.static_host import GraphShape
    report = json.loads((folder / "export.json").read_text())
    from mv4deploy.export.targets import load_target
    from mv4deploy.model.config import load_json, read_config
    spec = read_config(load_json(folder / "config.json"), "config.json")
    target = load_target(report["target"])
    runner = QnnBuild(folder, GraphShape.of(spec, target.context_tokens, target.step_tokens)).runner()
    import torch
    logits = runner.begin(torch.tensor(prompt))
    start = time.perf_counter()
    for _ in range(calls):
        logits = runner.advance(int(logits.argmax()))
    return (time.perf_counter() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=REPO / "tests" / "fixtures" / "models" / "tiny-qwen2")
    parser.add_argument("--eval", type=Path, default=REPO / "tests" / "fixtures" / "eval.txt")
    parser.add_argument("--calib", type=Path, default=REPO / "tests" / "fixtures" / "calib.txt")
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="threads per decode process (default 1)")
    parser.add_argument("--keep", type=Path, help="write the exports here instead of a temporary folder")
    parser.add_argument("--reuse", action="store_true", help="with --keep: take finished exports found there")
    parser.add_argument("--decode-case", choices=("torch", "genai"), help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.decode_case:
        print(decode_case(opts.decode_case, opts.folder, opts.model, opts.eval, opts.prompt_tokens, opts.new_tokens,
                          opts.threads))
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = opts.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        reports = {t: reuse(root / t) if opts.reuse and (root / t / "export.json").is_file()
                   else export(opts.model, root / t, t, opts.eval, opts.calib) for t in TARGETS}
        print_sizes(reports)
        print_speed(opts, root, reports)


def print_sizes(reports: dict) -> None:
    fp32 = reports["cpu-fp32"]["sizes"]["model_bytes"]
    print(f"\n{'target':<19}{'weights':<19}{'model bytes':>14}{'vs fp32':>9}{'mean KLD':>11}{'top-1':>8}"
          f"{'greedy':>9}{'export s':>10}")
    for target, r in reports.items():
        size, s, g = r["sizes"]["model_bytes"], r["validation"]["stats"], r["validation"]["greedy"]
        print(f"{target:<19}{r['weights']['format']:<19}{size:>14,}{size / fp32:>9.3f}{s['kld_mean']:>11.2e}"
              f"{s['same_top1']:>8.4f}{g['agreeing_prefix_mean']:>9.1f}{r['wall_s']:>10.1f}")


CASES = {"pytorch eager fp32": ("torch", None), "genai fp32 (cpu-fp32)": ("genai", "cpu-fp32"),
         "genai int4 (cpu-int4)": ("genai", "cpu-int4")}


def decode_case(kind: str, folder: str, model: Path, eval_path: Path, prompt_tokens: int, new_tokens: int,
                threads: int) -> float:
    """One measurement in this (fresh) process: load, warm up with one run, then time a second run."""
    from mv4deploy.export.source import load_torch_model
    from mv4deploy.model.tokenizer import load_tokenizer
    tokenizer = load_tokenizer(model)
    prompt = tokenizer(eval_path.read_text(), add_special_tokens=False)["input_ids"][:prompt_tokens]
    if kind == "torch":
        import torch
        torch.set_num_threads(threads)
        fn, loaded = torch_decode, load_torch_model(model)
    else:
        import onnxruntime_genai as og
        config = og.Config(folder)
        config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
        fn, loaded = genai_decode, og.Model(config)
    fn(loaded, prompt, 8)
    return fn(loaded, prompt, new_tokens)


def print_speed(opts, root: Path, reports: dict) -> None:
    """Each measurement in its own process, cases interleaved round by round."""
    rates = {name: [] for name in CASES}
    load_before = os.getloadavg()
    for _ in range(opts.repeat):
        for name, (kind, target) in CASES.items():
            folder = str(root / target) if target else ""
            proc = subprocess.run([sys.executable, __file__, "--decode-case", kind, "--folder", folder, "--model",
                                   str(opts.model), "--eval", str(opts.eval), "--prompt-tokens",
                                   str(opts.prompt_tokens), "--new-tokens", str(opts.new_tokens),
                                   "--threads", str(opts.threads)],
                                  capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
            if proc.returncode != 0:
                sys.exit(f"decode case {name} failed: {proc.stderr.strip()[-800:]}")
            rates[name].append(float(proc.stdout.strip().splitlines()[-1]))
    print(f"\ndecode, {opts.new_tokens} new tokens after a {opts.prompt_tokens}-token prompt, median of "
          f"{opts.repeat} runs, each in a fresh process ({os.cpu_count()} cores, {opts.threads} thread(s) each; "
          f"load average {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after)")
    for name, values in rates.items():
        median = statistics.median(values)
        ratios = [v / b for v, b in zip(values, rates["pytorch eager fp32"])]   # within a round: A/B pairs
        print(f"  {name:<24}{median:>9.1f} tokens/s  (min {min(values):.1f}, max {max(values):.1f}); vs PyTorch in "
              f"the same round: median {statistics.median(ratios):.1f}x ({min(ratios):.1f}-{max(ratios):.1f}x)")
    per_call = htp_decode_s(root / "snapdragon-qnn", opts.eval, opts.model, opts.prompt_tokens, 16)
    print(f"  {'QNN HTP decode.onnx':<24}{1 / per_call:>9.1f} calls/s  (x86 emulation of the Hexagon HTP, "
          "correctness only)")


if __name__ == "__main__":
    main()

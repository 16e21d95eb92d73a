"""ONNX export of tiny-qwen2 to every target: sizes side by side, and decode speed of onnxruntime-genai int4
against PyTorch eager fp32, measured in the same run.

    python benchmarks/onnx_export.py                          # tests/fixtures/models/tiny-qwen2
    python benchmarks/onnx_export.py --model DIR --new-tokens 256 --repeat 5 --keep /tmp/exports

Each target is exported as a user does it (``python -m mv4deploy export onnx ... --json``, which validates
the export against PyTorch before it succeeds), so this script also covers every export the test suite
runs. Then, in this process, on the same prompt (the first ``--prompt-tokens`` of the eval text):

- PyTorch eager fp32: transformers' model, one token per forward with its DynamicCache, argmax;
- onnxruntime-genai fp32 and int4: ``Generator.generate_next_token`` (greedy) on the exported folders;
- QNN HTP: one decode.onnx call on the emulated HTP (x86 emulation: a correctness check, not phone speed).

Only the decode loop is timed (prefill excluded); the cases are interleaved, ``--repeat`` rounds, and the
median tokens/s is printed. Threads: torch and onnxruntime both use the machine's cores (2 here).
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


def export(model: Path, out: Path, target: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "NO_COLOR": "1"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "mv4deploy", "export", "onnx", str(model), str(out), "--target",
                           target, "--json", "--overwrite"], capture_output=True, text=True, env=env, cwd=REPO)
    if proc.returncode != 0:
        sys.exit(f"export {target} failed ({proc.returncode}): {proc.stderr.strip()[-800:]}")
    report = json.loads(proc.stdout)
    report["wall_s"] = time.perf_counter() - start
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


def htp_decode_s(folder: Path, prompt: list[int], calls: int) -> float:
    from mv4deploy.export.qnn import QnnBuild
    from mv4deploy.export.static_host import GraphShape
    report = json.loads((folder / "export.json").read_text())
    from mv4deploy.export.targets import load_target
    from mv4deploy.model.config import load_json, read_config
    spec = read_config(load_json(folder / "config.json"), "config.json")
    target = load_target(report["target"])
    runner = QnnBuild(folder, GraphShape.of(spec, target.context_tokens, target.step_tokens)).runner()
    logits = runner.begin(prompt)
    start = time.perf_counter()
    for _ in range(calls):
        logits = runner.advance(int(logits.argmax()))
    return (time.perf_counter() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=REPO / "tests" / "fixtures" / "models" / "tiny-qwen2")
    parser.add_argument("--eval", type=Path, default=REPO / "tests" / "fixtures" / "eval.txt")
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--keep", type=Path, help="write the exports here instead of a temporary folder")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = opts.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        reports = {t: export(opts.model, root / t, t) for t in TARGETS}
        print_sizes(reports)
        print_speed(opts, root, reports)


def print_sizes(reports: dict) -> None:
    fp32 = reports["cpu-fp32"]["sizes"]["model_bytes"]
    print(f"\n{'target':<16}{'weights':<20}{'model bytes':>14}{'vs fp32':>9}{'mean KLD':>11}{'top-1':>8}"
          f"{'greedy':>9}{'export s':>10}")
    for target, r in reports.items():
        size, s, g = r["sizes"]["model_bytes"], r["validation"]["stats"], r["validation"]["greedy"]
        print(f"{target:<16}{r['weights']['format']:<20}{size:>14,}{size / fp32:>9.3f}{s['kld_mean']:>11.2e}"
              f"{s['same_top1']:>8.4f}{g['agreeing_prefix_mean']:>9.1f}{r['wall_s']:>10.1f}")


def print_speed(opts, root: Path, reports: dict) -> None:
    import onnxruntime_genai as og
    import torch
    from mv4deploy.export.source import load_tokenizer, load_torch_model
    tokenizer = load_tokenizer(opts.model)
    prompt = tokenizer(opts.eval.read_text(), add_special_tokens=False)["input_ids"][: opts.prompt_tokens]
    cases = {"pytorch eager fp32": (torch_decode, load_torch_model(opts.model)),
             "genai fp32 (cpu-fp32)": (genai_decode, og.Model(str(root / "cpu-fp32"))),
             "genai int4 (cpu-int4)": (genai_decode, og.Model(str(root / "cpu-int4")))}
    rates = {name: [] for name in cases}
    for _ in range(opts.repeat):                      # interleaved rounds: drift hits every case alike
        for name, (fn, model) in cases.items():
            rates[name].append(fn(model, prompt, opts.new_tokens))
    base = statistics.median(rates["pytorch eager fp32"])
    print(f"\ndecode, {opts.new_tokens} new tokens after a {len(prompt)}-token prompt, median of {opts.repeat} "
          f"(torch threads {torch.get_num_threads()}, {os.cpu_count()} cores)")
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"  {name:<24}{median:>9.1f} tokens/s  ({median / base:.2f}x PyTorch; min {min(values):.1f}, "
              f"max {max(values):.1f})")
    per_call = htp_decode_s(root / "snapdragon-qnn", prompt, 16)
    print(f"  {'QNN HTP decode.onnx':<24}{1 / per_call:>9.1f} calls/s  (x86 emulation of the Hexagon HTP, "
          "correctness only)")


if __name__ == "__main__":
    main()

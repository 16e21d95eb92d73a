"""Train the tiny fixture models of tests/fixtures/models/ from local text, deterministically.

    python scripts/make_fixtures.py all            # tokenizer, texts, train 3 models, export 4 fixtures
    python scripts/make_fixtures.py train tiny-v4  # one stage (stages are cached under build/fixtures/)

Text: the Python standard library's own top-level modules (this interpreter's), minus held-out modules
for evaluation (tests/fixtures/eval.txt) and calibration (tests/fixtures/calib.txt). A byte-level BPE
tokenizer is trained on the training modules with ``tokenizers``; every fixture shares it.

Models (configs below): ``tiny-v4`` (sliding + CSA + HCA layers, hash-MoE then MoE, mHC, 8 experts),
``tiny-v41`` (tiny-v4 + Engram at layers 1 and 2, continued from tiny-v4's weights), ``tiny-qwen2``
(the distillate architecture). Training is FP32 AdamW on CPU (TRAIN_THREADS threads, default 2). Each
is written as a native checkpoint in BF16 (F32 where DeepSeek ships F32); tiny-v4's routed experts are
first rounded onto the MXFP4 grid (``experts_on_fp4_grid``) and ``tiny-v4-fp8fp4`` stores the same
network the way DeepSeek ships V4 (FP8 e4m3 128x128 UE8M0 + MXFP4 experts). A README per fixture states
its held-out loss against the unigram baseline.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import sysconfig
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FIXTURES = REPO / "tests" / "fixtures"
MODELS = FIXTURES / "models"
CACHE = REPO / "build" / "fixtures"
SEED = 1234
VOCAB = 2048
SPECIALS = ("<bos>", "<eos>", "<pad>")          # ids 0, 1, 2 as in DeepSeek V4 (bos 0, eos 1, pad 2)
EVAL_MODULES = ("textwrap", "fractions", "heapq", "shlex", "calendar")
CALIB_MODULES = ("queue", "sched", "glob", "fnmatch", "graphlib", "numbers")
SEQ_LEN, BATCH = 256, 16

V4_CONFIG = {
    "architectures": ["DeepseekV4ForCausalLM"], "model_type": "deepseek_v4", "torch_dtype": "bfloat16",
    "vocab_size": VOCAB, "hidden_size": 128, "moe_intermediate_size": 64, "num_hidden_layers": 4,
    "num_nextn_predict_layers": 0, "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 64,
    "qk_rope_head_dim": 16, "q_lora_rank": 64, "o_groups": 2, "o_lora_rank": 32, "n_routed_experts": 8,
    "n_shared_experts": 1, "num_experts_per_tok": 2, "num_hash_layers": 1, "compress_ratios": [0, 4, 128, 4],
    "sliding_window": 64, "index_n_heads": 4, "index_head_dim": 32, "index_topk": 8, "hc_mult": 4,
    "hc_sinkhorn_iters": 20, "hc_eps": 1e-6, "max_position_embeddings": 4096, "rms_norm_eps": 1e-6,
    "rope_theta": 10000, "compress_rope_theta": 160000, "scoring_func": "sqrtsoftplus", "topk_method": "noaux_tc",
    "routed_scaling_factor": 1.5, "norm_topk_prob": True, "swiglu_limit": 10.0, "tie_word_embeddings": False,
    "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 2,
}
V41_CONFIG = {**V4_CONFIG, "engram_layer_ids": [1, 2], "engram_max_ngram_size": 3, "engram_n_heads": 4,
              "engram_head_dim": 32, "engram_vocab_size": 1999, "engram_pad_token_id": 2}
QWEN2_CONFIG = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "torch_dtype": "bfloat16", "vocab_size": VOCAB,
    "hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 4, "num_attention_heads": 4,
    "num_key_value_heads": 2, "max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "rope_theta": 10000,
    "hidden_act": "silu", "tie_word_embeddings": False, "use_sliding_window": False, "sliding_window": 4096,
    "max_window_layers": 4, "attention_dropout": 0.0, "initializer_range": 0.02, "use_cache": True,
    "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 2,
}
# name -> (native config, training steps, peak learning rate)
MODELS_TO_TRAIN = {"tiny-v4": (V4_CONFIG, 300, 3e-3), "tiny-v41": (V41_CONFIG, 100, 1e-3),
                   "tiny-qwen2": (QWEN2_CONFIG, 500, 3e-3)}


# ---------------------------------------------------------------- text and tokenizer
def stdlib_modules() -> dict[str, Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return {p.stem: p for p in sorted(root.glob("*.py"))}


def make_texts() -> None:
    """eval.txt / calib.txt from held-out modules; the training text is every other module."""
    modules = stdlib_modules()
    held = set(EVAL_MODULES) | set(CALIB_MODULES)
    CACHE.mkdir(parents=True, exist_ok=True)
    (CACHE / "train.txt").write_text("\n\x00\n".join(p.read_text() for n, p in modules.items() if n not in held))
    for file, names in (("eval.txt", EVAL_MODULES), ("calib.txt", CALIB_MODULES)):
        (FIXTURES / file).write_text("".join(f"# ---- {n}.py\n{modules[n].read_text()}\n" for n in names))


# The pre-tokenizer AutoTokenizer forces on any `qwen2` checkpoint (Qwen2Tokenizer rebuilds it whatever
# tokenizer.json says), so tiny-qwen2's tokenizer is trained with it; the DeepSeek fixtures keep GPT-2's.
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
TOKENIZER_OF = {"tiny-qwen2": "qwen2"}   # fixture -> tokenizer kind; the rest use "bytelevel"


def make_tokenizer(kind: str) -> None:
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    if kind == "qwen2":
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=list(SPECIALS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator((CACHE / "train.txt").read_text().split("\n\x00\n"), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=SPECIALS[0], eos_token=SPECIALS[1],
                                   pad_token=SPECIALS[2], clean_up_tokenization_spaces=False)
    folder = CACHE / f"tokenizer-{kind}"
    fast.save_pretrained(folder)
    config_path = folder / "tokenizer_config.json"   # no unk token: Qwen2Tokenizer would add one
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "unk_token": None}, indent=2))


def load_tokenizer(kind: str = "bytelevel"):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(CACHE / f"tokenizer-{kind}")


def tokenizer_for(name: str):
    return load_tokenizer(TOKENIZER_OF.get(name.removesuffix("-fp8fp4"), "bytelevel"))


def encode_file_list(tok, texts: list[str]):
    import torch
    ids: list[int] = []
    for text in texts:
        ids += tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return torch.tensor(ids, dtype=torch.long)


def train_tokens(tok):
    return encode_file_list(tok, (CACHE / "train.txt").read_text().split("\n\x00\n"))


def eval_tokens(tok):
    return encode_file_list(tok, [(FIXTURES / "eval.txt").read_text()])


# ---------------------------------------------------------------- models and training
def build_model(name: str, tok):
    import torch
    from mv4deploy.runtime.hf_config import v4_config
    cfg = MODELS_TO_TRAIN[name][0]
    torch.manual_seed(SEED)
    if cfg["model_type"] == "qwen2":
        from transformers import Qwen2Config, Qwen2ForCausalLM
        return Qwen2ForCausalLM(Qwen2Config(**{k: v for k, v in cfg.items() if k not in ("architectures",)}))
    hf = v4_config({**cfg, "router_aux_loss_coef": 0.01}, name)
    if "engram_layer_ids" in cfg:
        from mv4deploy.runtime.engram import compressed_token_map
        from mv4deploy.runtime.model_v41 import DeepseekV41ForCausalLM
        token_map, size = compressed_token_map(tok)
        hf.engram_compressed_vocab_size = size
        model = DeepseekV41ForCausalLM(hf)
        model.set_token_map(token_map)
    else:
        from transformers import DeepseekV4ForCausalLM
        model = DeepseekV4ForCausalLM(hf)
    init_hash_routing(model, hf)
    return model


WARM_START = {"tiny-v41": "tiny-v4"}  # tiny-v41 = tiny-v4 + Engram: it continues from tiny-v4's weights


def warm_start(model, source: str) -> None:
    """Copy every parameter ``source`` has (all but the Engram ones) from its trained weights."""
    from safetensors.torch import load_file
    missing, unexpected = model.load_state_dict(load_file(CACHE / f"{source}.trained.safetensors"), strict=False)
    if unexpected or any(".engram." not in key for key in missing):
        raise RuntimeError(f"warm start from {source}: missing {missing[:3]}, unexpected {unexpected[:3]}")


def init_hash_routing(model, hf) -> None:
    """transformers leaves ``tid2eid`` zero (it expects a checkpoint); give each token k distinct experts."""
    import torch
    gen = torch.Generator().manual_seed(SEED + 1)
    for layer in model.model.layers:
        gate = layer.mlp.gate
        if hasattr(gate, "tid2eid"):
            picks = torch.rand(hf.vocab_size, hf.n_routed_experts, generator=gen).argsort(dim=-1)
            gate.tid2eid.copy_(picks[:, : hf.num_experts_per_tok])


def train(name: str) -> None:
    import torch
    torch.set_num_threads(int(os.environ.get("TRAIN_THREADS", "2")))
    tok = tokenizer_for(name)
    data, held = train_tokens(tok), eval_tokens(tok)
    cfg, steps, peak_lr = MODELS_TO_TRAIN[name]
    model = build_model(name, tok).train()
    if name in WARM_START:
        warm_start(model, WARM_START[name])
    deepseek = cfg["model_type"] != "qwen2"
    opt = torch.optim.AdamW(model.parameters(), lr=peak_lr, betas=(0.9, 0.95), weight_decay=0.01)
    gen = torch.Generator().manual_seed(SEED + 2)
    log = (CACHE / f"{name}.log").open("w")
    start = time.time()
    for step in range(steps):
        lr = peak_lr * min(1.0, (step + 1) / 30) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        for group in opt.param_groups:
            group["lr"] = lr
        offsets = torch.randint(0, len(data) - SEQ_LEN - 1, (BATCH,), generator=gen)
        batch = torch.stack([data[o: o + SEQ_LEN] for o in offsets.tolist()])
        extra = {"output_router_logits": True} if deepseek else {}
        loss = model(input_ids=batch, labels=batch, use_cache=False, **extra).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % 20 == 0 or step == steps - 1:
            log.write(f"step {step} loss {loss.item():.4f} lr {lr:.2e} t {time.time() - start:.0f}s\n")
            log.flush()
    model.eval()
    nll = heldout_nll(model, held)
    log.write(f"held-out nll {nll:.4f} ppl {math.exp(nll):.2f} after {time.time() - start:.0f}s\n")
    log.close()
    from safetensors.torch import save_file
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, CACHE / f"{name}.trained.safetensors")
    (CACHE / f"{name}.trained.json").write_text(json.dumps({"heldout_nll": nll, "steps": steps,
                                                            "threads": torch.get_num_threads(),
                                                            "train_s": round(time.time() - start)}))


def heldout_nll(model, tokens, chunk: int = SEQ_LEN, max_chunks: int = 64) -> float:
    """Mean next-token NLL (nats) over non-overlapping chunks of the held-out tokens."""
    import torch
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(min(max_chunks, (len(tokens) - 1) // chunk)):
            ids = tokens[i * chunk: (i + 1) * chunk].unsqueeze(0)
            logits = model(input_ids=ids, use_cache=False).logits.float()
            total += torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="sum").item()
            count += chunk - 1
    return total / count


def unigram_entropy(train, held) -> tuple[float, float]:
    """(entropy of the training unigram distribution, its cross-entropy on held-out tokens), nats."""
    import torch
    counts = torch.bincount(train, minlength=VOCAB).double() + 1.0
    probs = counts / counts.sum()
    return float(-(probs * probs.log()).sum()), float(-probs.log()[held[1:]].mean())


# ---------------------------------------------------------------- export
EVAL_CHUNKS = 8  # the tests and the READMEs score the first 8 x 256 tokens of eval.txt


FP8FP4 = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8", "scale_fmt": "ue8m0",
          "weight_block_size": [128, 128], "expert_dtype": "fp4"}


def export_all() -> None:
    import torch
    from safetensors.torch import load_file
    from mv4deploy.runtime.native_save import save_native
    for name, (cfg, _, _) in MODELS_TO_TRAIN.items():
        state = load_file(CACHE / f"{name}.trained.safetensors")
        if name == "tiny-v4":
            state = experts_on_fp4_grid(state)
        config = dict(cfg)
        if "engram_layer_ids" in cfg:
            from mv4deploy.runtime.engram import compressed_token_map
            config["engram_compressed_vocab_size"] = compressed_token_map(tokenizer_for(name))[1]
        outputs = [(name, config, state)]
        if name == "tiny-v4":
            outputs.append(("tiny-v4-fp8fp4", {**config, "quantization_config": FP8FP4},
                            {k: v.to(torch.float32) for k, v in state.items()}))
        for out_name, out_config, out_state in outputs:
            save_native(out_state, out_config, MODELS / out_name, sorted_shards=2)
            kind = TOKENIZER_OF.get(name, "bytelevel")
            for file in ("tokenizer.json", "tokenizer_config.json"):   # as trained, byte for byte
                shutil.copy(CACHE / f"tokenizer-{kind}" / file, MODELS / out_name / file)
    numbers = measure()
    for name in numbers["nll"]:
        source = name.removesuffix("-fp8fp4")
        stats = json.loads((CACHE / f"{source}.trained.json").read_text())
        config = json.loads((MODELS / name / "config.json").read_text())
        _write_readme(MODELS / name, name, config, stats, numbers)


def experts_on_fp4_grid(state: dict) -> dict:
    """Round every routed expert onto the MXFP4 grid (e2m1 x UE8M0 per 32), in place of FP4 QAT.

    DeepSeek trains V4's experts with FP4 quantization-aware training, so the experts it ships are
    exact FP4 values; ours were trained without it. Rounding them once after training (+0.3% held-out
    PPL) makes tiny-v4 and tiny-v4-fp8fp4 the same network in two layouts, as for the real checkpoint:
    they then differ by the FP8 rounding of the other linears only, and the FP4 path must be exact.
    ``measure`` also reports the unrounded case."""
    import torch
    from mv4deploy.formats import get_format
    fp4 = get_format("mxfp4")
    out = dict(state)
    for key, value in state.items():
        if key.endswith(("experts.gate_up_proj", "experts.down_proj")):
            out[key] = torch.stack([fp4.dequantize("w.weight", fp4.quantize("w.weight", e.float())) for e in value])
    return out


def _write_readme(out: Path, name: str, config: dict, stats: dict, numbers: dict) -> None:
    nll = numbers["nll"][name]
    kind = TOKENIZER_OF.get(name.removesuffix("-fp8fp4"), "bytelevel")
    h_uni, ce_uni = numbers["unigram"][kind]
    quantized = "quantization_config" in config
    stored = ("FP8 e4m3 with 128x128 UE8M0 block scales for linears, MXFP4 (e2m1 + UE8M0 per 32) for routed "
              "experts, BF16/F32 elsewhere: the layout DeepSeek ships V4 in, made from tiny-v4's weights by "
              "the format registry." if quantized else
              "BF16, HF layout (model.* names), as the R1 distillates ship." if config["model_type"] == "qwen2" else
              "BF16 (F32 where DeepSeek ships F32: mHC, attention sinks, compressor position biases, router biases).")
    if name == "tiny-v4":
        stored += (" The routed experts were rounded onto the MXFP4 grid after training (in place of the FP4 "
                   "quantization-aware training DeepSeek gives its experts), so tiny-v4-fp8fp4 is this network "
                   "exactly in DeepSeek's shipped layout.")
    extra = ""
    if quantized:
        agree = numbers["agreement"]
        extra = (f"\nAgainst tiny-v4 (`mv4deploy validate --chunk {SEQ_LEN} --max-chunks {EVAL_CHUNKS}` scoring: second "
                 f"half of each chunk): mean KL(tiny-v4 || this) {agree['kld_mean']:.5f} nats/token "
                 f"(max {agree['kld_max']:.4f}), same top-1 token {100 * agree['same_top1']:.2f}% of "
                 f"{agree['tokens_scored']} positions.\n")
    split = (" with Qwen2's pre-tokenizer split and NFC, which AutoTokenizer imposes on every qwen2 checkpoint"
             if kind == "qwen2" else " with GPT-2's byte-level pre-tokenizer")
    origin = (f"continued from {WARM_START[name]}'s trained weights (the Engram layers start fresh) for "
              if name in WARM_START else "")
    text = f"""# {name}

Trained by `TRAIN_THREADS={stats['threads']} python scripts/make_fixtures.py train {name.removesuffix('-fp8fp4')}` then
`export` (seed {SEED}; `all` runs every stage) on the Python {sys.version.split()[0]} standard library's top-level
modules (minus the held-out ones): {origin}{stats['steps']} AdamW steps of {BATCH} x {SEQ_LEN} tokens in FP32
on {stats['threads']} shared CPU thread(s), {stats['train_s']} s wall. Tokenizer: byte-level BPE,
{VOCAB} tokens, trained on the same text{split} (tokenizer.json here; `AutoTokenizer.from_pretrained` loads
it offline and tokenizes exactly as in training).
Architecture: `{config['model_type']}` (config.json). Stored: {stored}

Held-out: the first {EVAL_CHUNKS} x {SEQ_LEN} tokens of tests/fixtures/eval.txt (modules never trained on),
next-token loss of this checkpoint as `mv4deploy.runtime.load_model` loads it
(`python scripts/make_fixtures.py measure`):

| model | nats/token | perplexity |
|---|---|---|
| this checkpoint | {nll:.3f} | {math.exp(nll):.1f} |
| unigram model of the training tokens (cross-entropy on the same tokens) | {ce_uni:.3f} | {math.exp(ce_uni):.1f} |
| entropy of the training unigram distribution | {h_uni:.3f} | {math.exp(h_uni):.1f} |
| uniform over the vocabulary | {math.log(VOCAB):.3f} | {VOCAB} |
{extra}"""
    (out / "README.md").write_text(text)


def measure() -> dict:
    """Held-out NLL of each stored fixture, tokenized by its own folder's AutoTokenizer, on the tokens
    the tests use; the unigram baseline of its tokenizer on the same tokens; tiny-v4-fp8fp4 vs tiny-v4.
    Printed for docs/runtime.md."""
    import torch
    from mv4deploy.runtime import load_model
    from mv4deploy.model.tokenizer import load_tokenizer as folder_tokenizer
    from mv4deploy.runtime.evaluate import heldout_nll
    from mv4deploy.validate.evaltext import tokenize_eval
    from mv4deploy.validate.run import compare_models
    torch.set_num_threads(2)
    numbers = {"unigram": {}, "nll": {}}
    for name in ("tiny-v4", "tiny-v41", "tiny-qwen2", "tiny-v4-fp8fp4"):
        kind = TOKENIZER_OF.get(name.removesuffix("-fp8fp4"), "bytelevel")
        held = eval_tokens(folder_tokenizer(MODELS / name))
        if kind not in numbers["unigram"]:
            h_uni, ce_uni = unigram_entropy(train_tokens(load_tokenizer(kind)), held[: EVAL_CHUNKS * SEQ_LEN])
            numbers["unigram"][kind] = (h_uni, ce_uni)
            print(f"unigram ({kind} tokenizer): entropy {h_uni:.4f} nats, cross-entropy on the held-out tokens "
                  f"{ce_uni:.4f} (ppl {math.exp(ce_uni):.1f})")
        nll, n = heldout_nll(load_model(MODELS / name), held, SEQ_LEN, EVAL_CHUNKS)
        numbers["nll"][name] = nll
        print(f"{name}: held-out nll {nll:.4f} nats/token, ppl {math.exp(nll):.2f} ({n} tokens)")
    held = tokenize_eval(REPO / "tests" / "fixtures" / "eval.txt", folder_tokenizer(MODELS / "tiny-v4"), SEQ_LEN,
                         EVAL_CHUNKS)
    stats = compare_models(load_model(MODELS / "tiny-v4"), load_model(MODELS / "tiny-v4-fp8fp4"), held)
    numbers["agreement"] = stats
    print(f"tiny-v4-fp8fp4 vs tiny-v4: KLD mean {stats['kld_mean']:.6f} max {stats['kld_max']:.5f} nats, "
          f"top-1 {stats['same_top1']:.4f} over {stats['tokens_scored']} positions")
    if (CACHE / "tiny-v4.trained.safetensors").is_file():
        unrounded = _with_trained_experts(load_model(MODELS / "tiny-v4"))
        ptq = compare_models(unrounded, load_model(MODELS / "tiny-v4-fp8fp4"), held)
        print(f"tiny-v4-fp8fp4 vs tiny-v4 with its experts as trained (BF16, not on the FP4 grid): "
              f"KLD mean {ptq['kld_mean']:.6f} max {ptq['kld_max']:.5f} nats, top-1 {ptq['same_top1']:.4f}; "
              f"that tiny-v4's ppl {ptq['ppl_base']:.2f}")
    return numbers


def _with_trained_experts(model):
    """tiny-v4 with the experts it had before ``experts_on_fp4_grid`` (BF16-rounded, as stored)."""
    import torch
    from safetensors.torch import load_file
    state = load_file(CACHE / "tiny-v4.trained.safetensors")
    with torch.no_grad():
        for key, param in model.named_parameters():
            if key.endswith(("experts.gate_up_proj", "experts.down_proj")):
                param.copy_(state[key].to(torch.bfloat16).float())
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=["texts", "tokenizer", "train", "export", "measure", "all"])
    parser.add_argument("model", nargs="?", choices=sorted(MODELS_TO_TRAIN))
    args = parser.parse_args()
    if args.stage in ("texts", "all"):
        make_texts()
    if args.stage in ("tokenizer", "all"):
        for kind in ("bytelevel", "qwen2"):
            make_tokenizer(kind)
    if args.stage == "train":
        train(args.model)
    if args.stage == "all":
        for name in MODELS_TO_TRAIN:
            train(name)
    if args.stage in ("export", "all"):
        shutil.rmtree(MODELS, ignore_errors=True)
        export_all()
    if args.stage == "measure":
        measure()


if __name__ == "__main__":
    main()

"""llm-compressor's GPTQ on a checkpoint, run in llm-compressor's own environment (its pins differ from
ours; it never imports mv4deploy): ``python _llmc_gptq.py SRC OUT TOKENS.json EVAL.pt GROUP [IGNORE_REGEX ...]``.
TOKENS.json holds the calibration chunks (lists of token ids) mv4deploy's GPTQ uses, so both see the
same data. The calibrated model's logits on the eval chunks (EVAL.pt, [C, N] int64) are saved to
OUT/eval_logits.pt ([C, N, V] float32), computed here in llm-compressor's own environment, since its
saved V4 checkpoint does not decompress under our newer transformers. Scheme: W4A16 (symmetric INT4, one scale per GROUP along K), llm-compressor's defaults
otherwise (static activation order, dampening 0.01, block 128, sequential pipeline)."""

import json
import sys


def main(src: str, out: str, tokens_path: str, eval_path: str, group: str, *ignore: str) -> None:
    import torch
    from compressed_tensors.quantization import preset_name_to_scheme
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier
    from transformers import AutoModelForCausalLM
    chunks = json.load(open(tokens_path))
    data = Dataset.from_dict({"input_ids": chunks, "attention_mask": [[1] * len(c) for c in chunks]})
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32, local_files_only=True)
    scheme = preset_name_to_scheme("W4A16", ["Linear"])
    scheme.weights.group_size = int(group)
    modifier = GPTQModifier(config_groups={"group_0": scheme}, ignore=["lm_head", *ignore])
    oneshot(model=model, dataset=data, recipe=modifier, num_calibration_samples=len(chunks),
            max_seq_length=max(len(c) for c in chunks), shuffle_calibration_samples=False)
    model.eval()
    with torch.no_grad():
        logits = torch.stack([model(input_ids=chunk[None, :], use_cache=False).logits[0].float()
                              for chunk in torch.load(eval_path)])
    model.save_pretrained(out, save_compressed=True)
    torch.save(logits, f"{out}/eval_logits.pt")


if __name__ == "__main__":
    main(*sys.argv[1:])

"""Task accuracy through lm-evaluation-harness (``validate --tasks``), the suites CI accuracy gates run.

lm-eval is the backend (the ``tasks`` extra): it reads the task, builds the requests and scores the
answers; mv4deploy answers its ``loglikelihood`` requests through a ``backends.LogitsSource``, so a task
runs on exactly the model validate loaded (runtime, transformers or ONNX, per ``--loader``). Supported:
loglikelihood and multiple-choice tasks (ARC, HellaSwag, MMLU, PIQA, Winogrande, ...); generation tasks
are refused with one line.

``--tasks`` items, comma-separated:
- a YAML file in lm-eval's task format (relative ``dataset_kwargs.data_files`` are resolved against the
  YAML's folder, so a task and its JSONL travel together);
- the name of a task shipped with mv4deploy (``tasks/NAME/*.yaml``, e.g. ``mv4-nextline``);
- any task name lm-eval knows (``arc_easy``, ``hellaswag``): its dataset must already be in the local
  Hugging Face cache, because validate runs offline (``HF_DATASETS_OFFLINE=1`` unless set otherwise).

Per item, correctness is lm-eval's own ``acc`` (or ``exact_match``) from its logged samples; ``paired``
turns the two models' answers into accuracies, intervals and McNemar's test.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from mv4deploy.core.errors import InputError, first_line
from mv4deploy.core.paths import data_dir
from mv4deploy.core.schema import load_yaml

CORRECTNESS_METRICS = ("acc", "exact_match")
Progress = Callable[[str, int], object]


@dataclass(frozen=True)
class TaskSpec:
    label: str                 # as given on the command line
    name: str                  # lm-eval's task name (the samples are keyed by it)
    config: dict | str         # a task config (from YAML) or a registered task name


def parse_tasks(text: str) -> tuple[TaskSpec, ...]:
    """``--tasks a.yaml,mv4-nextline,arc_easy`` -> task specs; a missing file or a bad YAML is exit 2."""
    specs = []
    for item in (s.strip() for s in str(text).split(",") if s.strip()):
        path = _task_yaml(item)
        if path is None:
            specs.append(TaskSpec(item, item, item))
            continue
        config = load_yaml(path)
        if not isinstance(config, dict) or not isinstance(config.get("task"), str):
            raise InputError(path, "task", None, "an lm-eval task YAML needs a 'task: NAME' key")
        specs.append(TaskSpec(item, config["task"], _resolve_data_files(config, path.parent)))
    if not specs:
        raise InputError(None, "--tasks", text, "name at least one task (a YAML file or a task name)")
    return tuple(specs)


def _task_yaml(item: str) -> Path | None:
    path = Path(item)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise InputError(path, "--tasks", item, "task file not found")
        return path
    shipped = sorted((data_dir("tasks") / item).glob("*.yaml"))
    return shipped[0] if shipped else None


def _resolve_data_files(config: dict, folder: Path) -> dict:
    files = (config.get("dataset_kwargs") or {}).get("data_files")
    if files is None:
        return config
    def resolve(p): return str(p) if Path(p).is_absolute() else str((folder / p).resolve())
    resolved = {k: resolve(v) for k, v in files.items()} if isinstance(files, dict) else resolve(files)
    return {**config, "dataset_kwargs": {**config["dataset_kwargs"], "data_files": resolved}}


def run_tasks(source, specs: tuple[TaskSpec, ...], limit: int | None, progress: Progress,
              role: str) -> dict[str, dict[int, bool]]:
    """Per task, per item: did ``source`` answer correctly? ``{task: {doc_id: correct}}``."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not sys.stderr.isatty():          # no redraws in CI logs (the rule of every progress bar here)
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError as exc:
        raise InputError(None, "--tasks", None, f"needs lm-evaluation-harness: pip install 'mv4deploy[tasks]' "
                                                f"({first_line(exc)})") from exc
    model = make_lm(source, progress, role)
    try:
        results = lm_eval.simple_evaluate(model=model, tasks=[s.config for s in specs], task_manager=TaskManager(),
                                          limit=limit, log_samples=True, bootstrap_iters=0, verbosity="ERROR")
    except InputError:
        raise
    except (FileNotFoundError, KeyError, ValueError, ConnectionError, OSError) as exc:
        raise InputError(None, "--tasks", ",".join(s.label for s in specs),
                         f"lm-eval cannot run it (offline; is its dataset in the HF cache?): {first_line(exc)}") from exc
    return {s.name: _correctness(s, results["samples"].get(s.name, [])) for s in specs}


def _correctness(spec: TaskSpec, samples: list[dict]) -> dict[int, bool]:
    if not samples:
        raise InputError(None, "--tasks", spec.label, "lm-eval returned no items for this task")
    metric = next((m for m in CORRECTNESS_METRICS if m in samples[0]), None)
    if metric is None:
        raise InputError(None, "--tasks", spec.label, f"no per-item {' or '.join(CORRECTNESS_METRICS)} metric")
    return {int(s["doc_id"]): bool(s[metric]) for s in samples}


def make_lm(source, progress: Progress, role: str):
    """An ``lm_eval.api.model.LM`` answering loglikelihood requests through a ``LogitsSource``."""
    from lm_eval.api.model import LM

    from mv4deploy.validate.evaltext import bos_id

    class SourceLM(LM):
        def loglikelihood(self, requests, disable_tqdm: bool = False):
            bos, groups = bos_id(source.tokenizer), {}
            for k, request in enumerate(requests):        # the choices of one item share their context
                groups.setdefault(request.args[0], []).append(k)
            out: list = [None] * len(requests)
            with progress(f"tasks: {role}, {len(requests)} requests", len(requests)) as advance:
                for context, ks in groups.items():
                    for k, answer in zip(ks, loglikelihoods(source, bos, context, [requests[k].args[1] for k in ks])):
                        out[k] = answer
                    advance(len(ks))
            return out

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            raise InputError(None, "--tasks", None, "perplexity (loglikelihood_rolling) tasks are not supported")

        def generate_until(self, requests, disable_tqdm: bool = False):
            raise InputError(None, "--tasks", None, "generation tasks are not supported; use loglikelihood or "
                                                    "multiple-choice tasks")
    return SourceLM()


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of context and continuation, split as lm-eval's HF model does: trailing spaces of the
    context move to the continuation, and the continuation is what the whole text adds to the context."""
    spaces = len(context) - len(context.rstrip(" "))
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    def encode(text): return tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    whole, ctx = encode(context + continuation), encode(context)
    if whole[: len(ctx)] != ctx:
        return ctx, encode(continuation)
    return ctx, whole[len(ctx):]


def loglikelihood(source, bos: int | None, context: str, continuation: str) -> tuple[float, bool]:
    """(sum of ln P(continuation tokens | context), whether each was the argmax), one forward."""
    return loglikelihoods(source, bos, context, [continuation])[0]


def loglikelihoods(source, bos: int | None, context: str, continuations: list[str]) -> list[tuple[float, bool]]:
    """``loglikelihood`` of each continuation of one context: one batched forward when the source has
    ``last_logits_batch`` (torch models), else one forward each."""
    pairs = [encode_pair(source.tokenizer, context, c) for c in continuations]
    rows, keep = [], max(len(cont) for _, cont in pairs) + 1
    for ctx, cont in pairs:
        ctx = ([bos] if bos is not None else []) + ctx
        if not ctx or not cont:
            raise InputError(None, "--tasks", context[:40], "a request needs a context and a continuation")
        rows.append(torch.tensor(ctx + cont, dtype=torch.int64))
    if hasattr(source, "last_logits_batch"):
        logits = source.last_logits_batch(rows, keep)
    else:
        logits = [source.last_logits(row, keep) for row in rows]
    return [_score(lg, cont) for lg, (_, cont) in zip(logits, pairs)]


def _score(logits, cont: list[int]) -> tuple[float, bool]:
    logp = torch.log_softmax(logits[-len(cont) - 1: -1].double(), dim=-1)     # [len(cont), V]: predicts each token
    target = torch.tensor(cont).view(-1, 1)
    return float(logp.gather(1, target).sum()), bool((logp.argmax(dim=-1) == target.view(-1)).all())

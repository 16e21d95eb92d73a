"""Run a placed model through the plan's workload and measure it: prefill and decode speed, memory.

One trial: a random prompt of ``prompt_tokens`` per sequence (``batch`` sequences) is prefilled in forwards of
the plan's prefill chunk (``chunk`` tokens in all: ``chunk // batch`` per sequence), then ``warmup`` decode
steps run untimed and ``tokens`` decode steps are timed one by one (greedy: the argmax feeds the next step;
CUDA is synchronized around each step). Logits are kept for the last position only, as serving engines do.

Memory: host RSS is sampled every ``RSS_INTERVAL_S`` (25 ms) on a thread from before the prefill to the end of the
decode (its peak), and read before the model was loaded (the process baseline: Python, torch, transformers,
the CUDA context). On CUDA, each device's ``max_memory_allocated`` (reset once the model is placed, so it
starts at the weights) plus what the device uses outside torch's allocator at the end (context, cuBLAS and
kernel images: ``total - free - memory_reserved``), the figure a plan's per-GPU ``used_bytes`` predicts.
"""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass, field

import psutil
import torch

from mv4deploy.runtime.cache_names import forward_cache_arg

RSS_INTERVAL_S = 0.025


def rss_bytes() -> int:
    return psutil.Process().memory_info().rss


class RssPeak:
    """Peak resident set size while the ``with`` block runs (sampled)."""

    def __enter__(self):
        self.peak, self._stop = rss_bytes(), threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(RSS_INTERVAL_S):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


@dataclass
class Trial:
    prefill_s: float
    prefill_tokens: int
    decode_steps_s: list[float]
    batch: int
    rss_peak_bytes: int
    gpu_peak_bytes: dict[str, int] = field(default_factory=dict)    # max_memory_allocated per CUDA device

    @property
    def decode_tokens_per_s(self) -> float:
        return self.batch * len(self.decode_steps_s) / sum(self.decode_steps_s)

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prefill_tokens / self.prefill_s

    def to_json(self) -> dict:
        steps = self.decode_steps_s
        return {"prefill_s": self.prefill_s, "prefill_tokens": self.prefill_tokens,
                "prefill_tokens_per_s": self.prefill_tokens_per_s, "decode_tokens_per_s": self.decode_tokens_per_s,
                "decode_step_s": {"median": statistics.median(steps), "min": min(steps), "max": max(steps)},
                "rss_peak_bytes": self.rss_peak_bytes, "gpu_peak_allocated_bytes": self.gpu_peak_bytes}


def cuda_devices(executor) -> list[torch.device]:
    return sorted({d for d in executor.devices.values() if d.type == "cuda"}, key=lambda d: d.index or 0)


def _sync(devices) -> None:
    for device in devices:
        torch.cuda.synchronize(device)


def non_torch_bytes(device: torch.device) -> int:
    """What the device uses beside torch's caching allocator (context, libraries' workspaces, kernels)."""
    free, total = torch.cuda.mem_get_info(device)
    return max(0, total - free - torch.cuda.memory_reserved(device))


def _forward(model, ids, cache, history, engram: bool):
    kwargs = {forward_cache_arg(model): cache, "use_cache": True, "logits_to_keep": 1}
    if engram:
        kwargs["engram_input_ids"] = history            # every id so far: the n-gram history
    return model(ids, **kwargs).logits[:, -1]


def trial(executor, prompt_tokens: int, chunk: int, tokens: int, warmup: int, batch: int, seed: int) -> Trial:
    model, state, device = executor.model, executor.state, executor.input_device
    engram = hasattr(model.model, "engram_cfg")
    devices = cuda_devices(executor)
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (batch, prompt_tokens), generator=generator).to(device)
    per_forward = max(1, chunk // batch)
    cache = executor.make_cache()
    for d in devices:
        torch.cuda.reset_peak_memory_stats(d)
    with torch.inference_mode(), RssPeak() as rss:
        state.phase = "prefill"
        _sync(devices)
        start = time.perf_counter()
        for begin in range(0, prompt_tokens, per_forward):
            logits = _forward(model, ids[:, begin:begin + per_forward], cache, ids[:, :begin + per_forward], engram)
        _sync(devices)
        prefill_s = time.perf_counter() - start
        state.phase = "decode"
        history, steps = ids, []
        for step in range(warmup + tokens):
            nxt = logits.argmax(-1, keepdim=True)
            history = torch.cat([history, nxt], dim=1)
            _sync(devices)
            start = time.perf_counter()
            logits = _forward(model, nxt, cache, history, engram)
            _sync(devices)
            if step >= warmup:
                steps.append(time.perf_counter() - start)
    peaks = {str(d): torch.cuda.max_memory_allocated(d) for d in devices}
    return Trial(prefill_s, batch * prompt_tokens, steps, batch, rss.peak, peaks)

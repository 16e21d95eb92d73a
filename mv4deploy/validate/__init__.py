"""Validation: compare a candidate model with a reference on held-out text, the way
``llama-perplexity --kl-divergence`` does, and gate the result for CI.

Modules, bottom up: ``metrics`` (per-position tensor functions), ``stats`` (llama.cpp's summary
statistics with their uncertainties, Wilson interval), ``evaltext`` (tokenize and chunk the eval text,
tokenizer fingerprints), ``golden`` (the reference's top-k log-probs on disk), ``backends`` (anything
that turns token chunks into logits), ``contexts`` (the same targets at several context lengths),
``tasks`` + ``paired`` (task accuracy through lm-evaluation-harness, McNemar), ``gate`` (YAML limits),
``report`` (Markdown + histogram) and ``run`` (the ``mv4deploy validate`` pipeline). Torch is imported by the modules that need it, never here.
"""

"""Quantization: the format registry (pure, no torch at import), recipes and the shard pipeline."""

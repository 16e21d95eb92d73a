"""Quantization: recipes (rules -> formats), GPTQ calibration, and the streaming shard pipeline that writes checkpoints."""

"""mv4deploy: plan, quantize, export and validate DeepSeek V4-class models on the hardware you have."""

__version__ = "0.1.0"

"""The model side: config readers, specs, tensor inventories and KV-cache layouts (no torch)."""

DEFAULT_MODEL = "deepseek-v4-flash"   # what `inspect` and `plan` use without --model

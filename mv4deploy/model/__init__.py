"""The model side: config readers, specs, tensor inventories and KV-cache layouts (no torch)."""

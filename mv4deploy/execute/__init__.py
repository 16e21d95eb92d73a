"""Execute a plan: place a checkpoint's groups, KV pools and Engram tables where ``mv4deploy plan`` put them,
run its workload, and measure memory and speed beside the plan's predictions (``mv4deploy run``).

``planfile`` and ``placement`` read the plan without torch; the rest imports torch and transformers.
"""

"""The planner: where each tensor group, KV pool and Engram table lives, in which format, and how fast
that runs (``mv4deploy plan``). Pure Python, no torch; the entry point is ``make.make_plan``."""

"""Engine models: what vLLM, SGLang, KTransformers, llama.cpp, ik_llama.cpp, accelerate and mv4deploy's runtime run,
and what they cost."""

"""ONNX export of the distillates (Qwen2 / Llama) for CPUs and phones, each export validated against PyTorch.

Modules: ``targets`` (exporters/*.yaml -> ExportTarget), ``source`` (preflight of MODEL_DIR), one module per
builder kind (``genai``: onnxruntime-genai model builder; ``dynamo``: torch.onnx + MatMulNBitsQuantizer;
``qnn``: static-shape QDQ graphs for the QNN HTP, with ``static_graph`` and ``static_host``), ``verify``
(KLD / top-1 through mv4deploy.validate, greedy agreement), ``report`` (sizes, README, export.json),
and ``run`` (the command).
Heavy libraries (torch, onnx, onnxruntime*) are imported inside the functions that use them.
"""

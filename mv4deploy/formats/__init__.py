"""The one registry of numeric weight formats: what each is (bits, block or group, scale dtype, packing,
bytes per tensor) and its name in each ecosystem. Everything else asks here; nothing else knows a layout.

``base`` defines ``QuantFormat`` and ``FORMATS``; ``catalog`` registers the formats a checkpoint can hold;
``onnx_layouts`` adds the layouts only ONNX exports hold; ``dtypes`` sizes safetensors dtypes; the
``kernels*`` modules are their torch side. Importing this package imports no torch.
"""

from mv4deploy.formats import catalog  # noqa: F401  (registers the formats)
from mv4deploy.formats.base import FORMATS, QuantFormat, StoredTensor, get_format

__all__ = ["FORMATS", "QuantFormat", "StoredTensor", "get_format"]

"""Weight formats as data: how each stores a logical weight, and exactly how many bytes that takes.

A format turns one logical weight (name, shape) into the tensors a checkpoint holds for it: the
payload plus its scales, each with a safetensors dtype and shape. ``nbytes`` is derived from that
layout, so it counts scales and padding exactly (FP4 with a UE8M0 scale per 32 values is 4.25 bits;
FP8 with a 128x128 F32 block scale adds 4 bytes per 16,384 values). This module imports no torch:
the planner uses it. A new format is one class with ``name=...``; tests loop over ``FORMATS``.

Each format also carries its torch side (``quantize``, ``dequantize``, ``error_bound``): torch is
imported inside those methods only; the kernels live in ``kernels_fp.py`` and ``kernels_int.py``.
Byte layouts and error bounds are tabulated in docs/quantization.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from mv4deploy.formats.dtypes import tensor_nbytes

FORMATS: dict[str, "QuantFormat"] = {}


@dataclass(frozen=True)
class StoredTensor:
    name: str
    dtype: str
    shape: tuple[int, ...]
    params: int  # logical parameters this tensor carries (0 for scales and metadata)

    @property
    def nbytes(self) -> int:
        return tensor_nbytes(self.dtype, self.shape)


@dataclass(frozen=True, eq=False)
class Ecosystem:
    """A format's names outside mv4deploy; None where that ecosystem has no byte-identical layout
    (tests/test_formats_ecosystem.py holds them against the libraries and the released configs)."""

    safetensors: str                     # dtype of the payload tensor, as the safetensors header names it
    transformers: dict | None = None     # the checkpoint's config.json ``quantization_config``
    compressed_tensors: str | None = None  # compressed-tensors' CompressionFormat value
    onnx: str | None = None              # the ONNX tensor type, or the operator that stores it
    gguf: str | None = None              # ggml's type name


@dataclass(frozen=True)
class QuantFormat:
    """Base: a format named in ``FORMATS``. ``compute`` is the precision a device must run natively
    to execute it without conversion (matched against a hardware profile's ``native_formats``).

    The torch side (torch imported lazily; same bits on CPU and CUDA):
      quantize(name, weight) -> dict[str, Tensor]   keys, dtypes and shapes exactly as ``stored``
      dequantize(name, tensors, dtype) -> Tensor     the logical weight (default float32: exact)
      error_bound(weight) -> Tensor                  elementwise bound on |dequantize(quantize(w)) - w|
    """

    name: ClassVar[str]
    compute: ClassVar[str]
    bits: ClassVar[float]  # nominal bits per value of the payload, without scales
    min_ndim: ClassVar[int] = 2     # block and group formats need [*lead, rows, cols]
    lossless: ClassVar[bool] = False  # bf16/f32 keep NaN/Inf as they are; the others refuse them
    ecosystem: ClassVar[Ecosystem]
    # The quantization_config family that reads this layout as is: "fp8" (DeepSeek's and transformers'
    # fine-grained FP8, which also carries MXFP4 experts and FP8 Engram rows), "compressed-tensors",
    # "bitsandbytes"; None for plain dtypes and layouts no checkpoint loader reads.
    config_family: ClassVar[str | None] = None
    requantizes_exactly: ClassVar[bool] = True   # quantize(dequantize(q)) == q, byte for byte
    ct_scheme: ClassVar[tuple[str, str] | None] = None   # compressed-tensors (preset, format) of this layout

    def __init_subclass__(cls, register: bool = True, **kwargs):
        super().__init_subclass__(**kwargs)
        if register and "name" in cls.__dict__:
            FORMATS[cls.name] = cls()

    def stored(self, name: str, shape: tuple[int, ...]) -> tuple[StoredTensor, ...]:
        """The checkpoint tensors that hold logical weight ``name`` of ``shape`` (payload first)."""
        raise NotImplementedError

    def nbytes(self, shape: tuple[int, ...]) -> int:
        return sum(t.nbytes for t in self.stored("w.weight", tuple(shape)))

    def quantize(self, name: str, weight, allow_nonfinite: bool = False) -> dict:
        """Quantize one logical weight. NaN/Inf raise ``kernels.NonFiniteError`` naming ``name``
        unless ``allow_nonfinite`` (then they are stored as 0)."""
        from mv4deploy.formats.kernels import finite_or_zero
        if weight.ndim < self.min_ndim:
            raise ValueError(f"{name}: {self.name} needs at least {self.min_ndim} dims, got shape "
                             f"{list(weight.shape)}")
        if not self.lossless:
            weight = finite_or_zero(name, weight, allow_nonfinite)
        stored = self.stored(name, tuple(weight.shape))
        return {t.name: value for t, value in zip(stored, self._quantize(weight))}

    def dequantize(self, name: str, tensors: dict, dtype=None, shape: tuple[int, ...] | None = None):
        """The logical weight from its stored tensors. ``shape`` is needed only where the packing
        hides it (MXFP4 with an odd K); the other formats read it from their tensors."""
        import torch
        names = [t.name for t in self.stored(name, (1,) * max(self.min_ndim, 1))]
        missing = [n for n in names if n not in tensors]
        if missing:
            raise KeyError(f"{name}: {self.name} needs stored tensor {missing[0]!r}")
        return self._dequantize([tensors[n] for n in names], shape, dtype or torch.float32)

    def error_bound(self, weight):
        """Elementwise bound (float32) on |dequantize(quantize(w), float32) - w|."""
        raise NotImplementedError(f"{self.name}: error_bound")

    def _quantize(self, weight) -> tuple:
        raise NotImplementedError(f"{self.name}: quantize")

    def _dequantize(self, stored: list, shape, dtype):
        raise NotImplementedError(f"{self.name}: dequantize")


def _base(name: str) -> str:
    """'layers.0.attn.wq_a.weight' -> 'layers.0.attn.wq_a' (scales are named after the module)."""
    return name[: -len(".weight")] if name.endswith(".weight") else name


def _half_ulp(weight, mantissa_bits: int, min_exponent: int):
    """Half a unit in the last place of ``weight`` in a float format with ``mantissa_bits`` explicit
    bits whose smallest normal is 2**min_exponent (subnormal spacing below it)."""
    import torch
    w = weight.float().abs()
    floor = 2.0 ** (min_exponent - mantissa_bits - 1)
    return torch.maximum(w * 2.0 ** -(mantissa_bits + 1), torch.full_like(w, floor))


def get_format(name: str) -> QuantFormat:
    try:
        return FORMATS[name]
    except KeyError:
        raise KeyError(f"unknown format {name!r}; known: {', '.join(sorted(FORMATS))}") from None

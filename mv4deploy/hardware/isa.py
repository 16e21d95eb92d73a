"""CPU instruction-set extensions, named as Linux reports them in /proc/cpuinfo, and the compute formats
each lets the CPU run natively (fp32 always; everything else is dequantized first).

One table for every user: ``profile detect`` writes these names, the profile loader accepts only these (a
typo such as ``avx512bf16`` fails at load time instead of silently doing nothing), and the planner's host
tier reads the formats from here. Arm names are the kernel's: ``asimd`` is NEON, ``asimdhp`` its fp16
arithmetic (Armv8.2), ``asimddp`` the int8 dot product, ``i8mm`` the int8 matrix multiply, ``bf16`` the
BF16 dot product (Armv8.6).
"""

from __future__ import annotations

from enum import Enum


class Isa(str, Enum):
    AVX2 = "avx2"
    AVX512F = "avx512f"
    AVX512_BF16 = "avx512_bf16"
    AVX512_FP16 = "avx512_fp16"
    AVX512_VNNI = "avx512_vnni"
    AVX_VNNI = "avx_vnni"
    AMX_BF16 = "amx_bf16"
    AMX_INT8 = "amx_int8"
    ASIMD = "asimd"
    ASIMDHP = "asimdhp"
    ASIMDDP = "asimddp"
    I8MM = "i8mm"
    BF16 = "bf16"
    SVE = "sve"
    SVE2 = "sve2"

    @property
    def formats(self) -> tuple[str, ...]:
        """Compute formats (``hardware.profile.COMPUTE_FORMATS``) this extension runs natively."""
        return ISA_FORMATS.get(self, ())


ISA_FORMATS: dict[Isa, tuple[str, ...]] = {
    Isa.AVX512_BF16: ("bf16",), Isa.AMX_BF16: ("bf16",), Isa.BF16: ("bf16",),
    Isa.AVX512_FP16: ("fp16",), Isa.ASIMDHP: ("fp16",),
    Isa.AVX512_VNNI: ("int8",), Isa.AVX_VNNI: ("int8",), Isa.AMX_INT8: ("int8",), Isa.ASIMDDP: ("int8",),
    Isa.I8MM: ("int8",),
}


def parse_isa(value) -> tuple[Isa, ...]:
    """A profile's ``host.isa`` list; an unknown name is a ValueError listing the known ones."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("must be a list of ISA extension names")
    known = {isa.value: isa for isa in Isa}
    bad = [v for v in value if v not in known]
    if bad:
        raise ValueError(f"unknown ISA extension {bad[0]!r} (names as /proc/cpuinfo reports them); "
                         f"known: {', '.join(known)}")
    return tuple(known[v] for v in value)

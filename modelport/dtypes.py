"""The element types modelport moves, and their names in each format.

Canonical names follow torch (``float32``, ``bfloat16`` …). Nothing here imports
torch or numpy at module level.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DType:
    name: str          # canonical, as torch spells it without "torch."
    itemsize: int
    safetensors: str   # dtype code in a safetensors header
    storage: str       # legacy torch storage class (torch.FloatStorage …)
    numpy: str         # numpy dtype used to hold the raw bytes (bfloat16 is held as uint16)


DTYPES: dict[str, DType] = {
    d.name: d
    for d in (
        DType("float64", 8, "F64", "DoubleStorage", "<f8"),
        DType("float32", 4, "F32", "FloatStorage", "<f4"),
        DType("float16", 2, "F16", "HalfStorage", "<f2"),
        DType("bfloat16", 2, "BF16", "BFloat16Storage", "<u2"),
        DType("int64", 8, "I64", "LongStorage", "<i8"),
        DType("int32", 4, "I32", "IntStorage", "<i4"),
        DType("int16", 2, "I16", "ShortStorage", "<i2"),
        DType("int8", 1, "I8", "CharStorage", "i1"),
        DType("uint8", 1, "U8", "ByteStorage", "u1"),
        DType("bool", 1, "BOOL", "BoolStorage", "?"),
        DType("complex64", 8, "C64", "ComplexFloatStorage", "<c8"),
        DType("complex128", 16, "C128", "ComplexDoubleStorage", "<c16"),
    )
}

BY_SAFETENSORS = {d.safetensors: d for d in DTYPES.values()}

# The names users may give on the command line for --dtype.
CAST_TARGETS = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
FLOATING = frozenset({"float64", "float32", "float16", "bfloat16"})


def canonical(name) -> str:
    """The canonical name for a user's spelling: fp16, float16, torch.float16, a torch.dtype …"""
    text = str(name).removeprefix("torch.")
    return CAST_TARGETS.get(text, text)


def get(name: str) -> DType:
    return DTYPES[name]


def to_torch(name: str):
    import torch

    return getattr(torch, name)


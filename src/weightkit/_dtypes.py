"""Canonical dtype names and how raw storage maps to NumPy.

weightkit names dtypes the way torch does (``float32``, ``bfloat16``, ``float8_e4m3fn``).
NumPy has no bfloat16 or float8, so readers hand those out as raw unsigned-integer views of
the same bytes (``uint16`` for bfloat16, ``uint8`` for float8); :func:`decode` turns raw
storage into values.
"""

from __future__ import annotations

import numpy as np

# canonical name -> (itemsize in bytes, numpy dtype of the raw storage)
DTYPES: dict[str, tuple[int, np.dtype]] = {
    "float64": (8, np.dtype("<f8")),
    "float32": (4, np.dtype("<f4")),
    "float16": (2, np.dtype("<f2")),
    "bfloat16": (2, np.dtype("<u2")),
    "float8_e4m3fn": (1, np.dtype("u1")),
    "float8_e5m2": (1, np.dtype("u1")),
    "complex64": (8, np.dtype("<c8")),
    "complex128": (16, np.dtype("<c16")),
    "int64": (8, np.dtype("<i8")),
    "int32": (4, np.dtype("<i4")),
    "int16": (2, np.dtype("<i2")),
    "int8": (1, np.dtype("i1")),
    "uint64": (8, np.dtype("<u8")),
    "uint32": (4, np.dtype("<u4")),
    "uint16": (2, np.dtype("<u2")),
    "uint8": (1, np.dtype("u1")),
    "bool": (1, np.dtype("?")),
}

# dtypes whose raw storage is not their value
_VIEWED = {"bfloat16", "float8_e4m3fn", "float8_e5m2"}

# safetensors header dtype codes -> canonical names
SAFETENSORS_CODES: dict[str, str] = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "C64": "complex64",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U64": "uint64",
    "U32": "uint32",
    "U16": "uint16",
    "U8": "uint8",
    "BOOL": "bool",
}


def itemsize(dtype: str) -> int:
    return DTYPES[dtype][0] if dtype in DTYPES else 0


def is_floating(dtype: str) -> bool:
    return dtype.startswith(("float", "bfloat"))


def from_numpy(dtype: np.dtype) -> str:
    """Canonical name of a NumPy dtype (``np.float32`` -> ``"float32"``)."""
    dt = np.dtype(dtype)
    if dt.kind == "V" and dt.itemsize == 2 and dt.name in ("bfloat16",):
        return "bfloat16"
    if dt.name == "bfloat16":  # ml_dtypes
        return "bfloat16"
    name = dt.newbyteorder("=").name
    if name in DTYPES:
        return name
    raise KeyError(name)


def from_torch(dtype) -> str:
    """Canonical name of a torch dtype (``torch.bfloat16`` -> ``"bfloat16"``)."""
    return str(dtype).removeprefix("torch.")


def raw_view(array: np.ndarray, dtype: str) -> np.ndarray:
    """Reinterpret ``array``'s bytes as the raw storage of ``dtype``."""
    raw = DTYPES[dtype][1]
    return array if array.dtype == raw else array.view(raw)


def decode(raw: np.ndarray, dtype: str) -> np.ndarray:
    """Values of raw storage: bfloat16 becomes float32 (exact), float8 becomes float32."""
    if dtype == "bfloat16":
        return (raw.astype(np.uint32) << 16).view(np.float32)
    if dtype in ("float8_e4m3fn", "float8_e5m2"):
        return _decode_float8(raw, dtype)
    return raw


def _decode_float8(raw: np.ndarray, dtype: str) -> np.ndarray:
    bits = raw.astype(np.int32)
    sign = np.where(bits & 0x80, -1.0, 1.0)
    if dtype == "float8_e4m3fn":
        exp_bits, man_bits, bias = 4, 3, 7
    else:
        exp_bits, man_bits, bias = 5, 2, 15
    exp = (bits >> man_bits) & ((1 << exp_bits) - 1)
    man = bits & ((1 << man_bits) - 1)
    normal = (1.0 + man / (1 << man_bits)) * np.exp2(exp - bias)
    subnormal = (man / (1 << man_bits)) * np.exp2(1 - bias)
    out = np.where(exp == 0, subnormal, normal)
    if dtype == "float8_e4m3fn":
        out = np.where((exp == 15) & (man == 7), np.nan, out)
    else:
        out = np.where((exp == 31) & (man == 0), np.inf, out)
        out = np.where((exp == 31) & (man != 0), np.nan, out)
    return (sign * out).astype(np.float32)


def is_viewed(dtype: str) -> bool:
    return dtype in _VIEWED

"""The layout of weightkit's quantised tensors: 4-bit codes two to a byte, codes in rows (the
channel axis first) cut into groups, one scale (and zero point) per row and group."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["pack4", "unpack4", "dequantize"]


def pack4(codes: np.ndarray, scheme: str) -> np.ndarray:
    """Two 4-bit codes per byte, the first in the low nibble (symmetric codes stored + 8)."""
    nib = (codes.reshape(-1) + (8 if scheme == "symmetric" else 0)).astype(np.uint8)
    if nib.size % 2:
        nib = np.append(nib, np.uint8(0))
    return nib[0::2] | (nib[1::2] << np.uint8(4))


def unpack4(packed: np.ndarray, n: int, scheme: str) -> np.ndarray:
    out = np.empty(packed.size * 2, dtype=np.int16)
    out[0::2] = packed & 0x0F
    out[1::2] = packed >> 4
    out = out[:n]
    return out - 8 if scheme == "symmetric" else out


def dequantize(codes: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, info: dict) -> np.ndarray:
    """Float32 values of a stored quantised tensor (``info``: its ``weightkit.quantized.tensors`` entry)."""
    shape = tuple(info["shape"])
    n = math.prod(shape)
    rows, cols, group, groups = info["rows"], info["cols"], info["group_size"], info["groups"]
    q = unpack4(np.asarray(codes), n, info["scheme"]) if info["bits"] == 4 else np.asarray(codes).astype(np.int16)
    q = q.reshape(rows, cols)
    pad = groups * group - cols
    if pad:
        q = np.pad(q, ((0, 0), (0, pad)))
    qg = q.reshape(rows, groups, group).astype(np.float32)
    if zero_point is not None:
        qg -= np.asarray(zero_point, dtype=np.float32).reshape(rows, groups)[:, :, None]
    out = (qg * np.asarray(scale, dtype=np.float32).reshape(rows, groups)[:, :, None]).reshape(rows, groups * group)
    out = out[:, :cols]
    axis = info["axis"]
    if axis is None:
        return np.ascontiguousarray(out.reshape(shape))
    rest = [d for i, d in enumerate(shape) if i != axis]
    return np.ascontiguousarray(np.moveaxis(out.reshape(shape[axis], *rest), 0, axis))

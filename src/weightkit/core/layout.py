"""Weights rearranged for pictures, using the axis tokens from the layer table (so Keras
kernels, transposed convolutions and depthwise kernels come out the same way as Conv2d)."""

from __future__ import annotations

import numpy as np

from weightkit.errors import WeightkitError
from weightkit.layers import KERNEL_TOKENS


def _find(tokens, *wanted) -> int | None:
    return next((i for i, t in enumerate(tokens) if t in wanted), None)


def conv_filters(w) -> np.ndarray:
    """A conv weight as ``(filters, channels, *kernel)``: one row per learned filter."""
    axes, tokens = w.axes, w.axis_tokens
    kernel = [i for i, t in enumerate(tokens) if t in KERNEL_TOKENS]
    if not kernel:
        raise WeightkitError(f"{w.name} ({w.kind} {w.role}, axes {', '.join(axes)}) has no spatial kernel; "
                             "'filters' needs a convolution weight")
    data = w.numpy().astype(np.float32)
    if "depth_multiplier" in tokens:  # Keras depthwise: each (channel, multiplier) pair is one filter
        c, m = tokens.index("in"), tokens.index("depth_multiplier")
        data = np.transpose(data, (c, m, *kernel))
        return data.reshape(-1, 1, *data.shape[2:])
    # torch ConvTranspose is (in, out/groups, k…): the filters are axis 1
    out, inp = _find(tokens, "out", "out_per_group"), _find(tokens, "in", "in_per_group")
    if out is None or inp is None:
        raise WeightkitError(f"{w.name}: cannot tell filters from channels (axes {', '.join(axes)})")
    return np.transpose(data, (out, inp, *kernel))


def matrix(w) -> np.ndarray:
    """A dense weight as ``(out_features, in_features)`` (Keras kernels are transposed)."""
    if w.ndim != 2:
        raise WeightkitError(f"{w.name} has shape {w.shape}; a heatmap needs a 2-D weight matrix")
    data = w.numpy().astype(np.float32)
    if w.out_axis == 1:
        data = data.T
    return data


def downsample(a: np.ndarray, max_size: int) -> np.ndarray:
    """Block means so that neither side exceeds ``max_size``."""
    fy = -(-a.shape[0] // max_size)
    fx = -(-a.shape[1] // max_size)
    if fy == 1 and fx == 1:
        return a
    h, w = a.shape[0] // fy * fy, a.shape[1] // fx * fx
    return a[:h, :w].reshape(h // fy, fy, w // fx, fx).mean(axis=(1, 3))

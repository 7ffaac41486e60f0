"""Weights rearranged for pictures, using the axis meanings from the layer table (so Keras
kernels, transposed convolutions and depthwise kernels come out the same way as Conv2d)."""

from __future__ import annotations

import numpy as np

from weightkit.errors import WeightkitError


def _find(axes, *prefixes) -> int | None:
    for i, label in enumerate(axes):
        if label.startswith(prefixes):
            return i
    return None


def conv_filters(w) -> np.ndarray:
    """A conv weight as ``(filters, channels, *kernel)``: one row per learned filter."""
    axes = w.axes
    kernel = [i for i, a in enumerate(axes) if a.startswith("kernel")]
    if not kernel:
        raise WeightkitError(f"{w.name} ({w.kind} {w.role}, axes {', '.join(axes)}) has no spatial kernel; "
                             "'filters' needs a convolution weight")
    data = w.numpy().astype(np.float32)
    if "depth_multiplier" in axes:  # Keras depthwise: each (channel, multiplier) pair is one filter
        c, m = axes.index("in_channels"), axes.index("depth_multiplier")
        data = np.transpose(data, (c, m, *kernel))
        return data.reshape(-1, 1, *data.shape[2:])
    if axes[0] == "in_channels":  # torch ConvTranspose: (in, out/groups, k…): the filters are axis 1
        out, inp = 1, 0
    else:
        out, inp = _find(axes, "out_channels"), _find(axes, "in_channels")
    if out is None or inp is None:
        raise WeightkitError(f"{w.name}: cannot tell filters from channels (axes {', '.join(axes)})")
    return np.transpose(data, (out, inp, *kernel))


def matrix(w) -> np.ndarray:
    """A dense weight as ``(out_features, in_features)`` (Keras kernels are transposed)."""
    axes = w.axes
    if w.ndim != 2:
        raise WeightkitError(f"{w.name} has shape {w.shape}; a heatmap needs a 2-D weight matrix")
    data = w.numpy().astype(np.float32)
    out = _find(axes, "out_features", "out_channels", "4*hidden", "3*hidden", "4*units", "3*units", "num_embeddings")
    if out == 1:
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

"""Conv filters as an image grid, and weight matrices as heatmaps."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from weightkit.core.layout import conv_filters, downsample, matrix
from weightkit.core.opening import as_weightset
from weightkit.core.selector import Selector
from weightkit.errors import WeightkitError
from weightkit.layers import KERNEL_TOKENS
from weightkit.render._text import literal
from weightkit.render.plots._mpl import LITERAL, figure, grid, record_shown

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _pick(ws, select: Any, want) -> Any:
    """The first weight of the kind drawn (``want``) that ``select`` names (any, without it)."""
    candidates = [w for w in ws if w.role in ("weight", "kernel", "depthwise_kernel") and w.numel and want(w)]
    if not candidates:
        raise WeightkitError(f"{ws.source}: no layer has weights of this kind to draw")
    return Selector.of(select).pick(candidates, source=ws.source)[0]


def _is_conv(w) -> bool:
    return any(t in KERNEL_TOKENS for t in w.axis_tokens)


def plot_filters(source: Any, *, select: Any = None, mode: Literal["auto", "rgb", "channels", "mean"] = "auto",
                 max_filters: int = 64) -> Figure:
    """The filters of a conv layer as an image grid; returns a matplotlib Figure.

    ``auto``: first-layer filters over 3 input channels in colour (RGB), other 2-D filters
    averaged over input channels (``mean``); ``channels`` draws one panel per (filter, input
    channel). 1-D filters, and 2-D ones of k×1 or 1×k, are drawn as curves over the kernel: one
    line per input channel, or the channels' mean within their min-max band past 8 channels. One
    axes per panel. The first ``max_filters`` filters are drawn, and the title says so when there
    are more; ``fig.weightkit_shown`` holds ``{"tensor", "filters", "of", "mode"}``. ``select``
    (see :class:`weightkit.core.selector.Selector`) chooses the conv weight; the first one by default.

    Example:
        >>> import torch, weightkit
        >>> fig = weightkit.plot_filters(torch.nn.Conv2d(3, 8, 5))
        >>> len(fig.axes), fig.weightkit_shown["filters"], fig.weightkit_shown["of"]
        (8, 8, 8)
    """
    ws = as_weightset(source)
    w = _pick(ws, select, _is_conv)
    if not _is_conv(w):
        raise WeightkitError(f"{w.name} ({w.kind}) has no filters; 'filters' draws convolution layers")
    every = conv_filters(w)
    f = every[:max_filters]
    n_filters, channels, *kernel = f.shape
    if len(kernel) == 2 and 1 in kernel and max(kernel) > 1:  # k×1 or 1×k: a 1-D filter
        f = f.reshape(n_filters, channels, max(kernel))
        kernel = [max(kernel)]
    curves = len(kernel) == 1
    if mode == "auto":
        mode = "rgb" if channels == 3 and len(kernel) == 2 else "mean"
    if mode == "rgb" and (channels != 3 or len(kernel) != 2):
        raise WeightkitError(f"{w.name}: 'rgb' needs 2-D filters over 3 input channels; this one has {channels}")
    if mode == "channels" and len(kernel) == 2:
        panels = [(i, c, f[i, c]) for i in range(n_filters) for c in range(channels)]
        rows, cols = n_filters, channels
    else:
        panels = []
        for i in range(n_filters):
            if mode == "rgb":
                img = np.transpose(f[i], (1, 2, 0))
                lo, hi = img.min(), img.max()
                img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
            elif curves:
                img = f[i]  # (channels, kernel): drawn as curves below
            else:
                img = f[i].mean(axis=0)
            panels.append((i, None, img))  # type: ignore[arg-type]  # c is None: one panel per filter
        rows, cols = grid(len(panels))
    fig = figure((1.2 * cols + 0.5, 1.2 * rows + 0.6))
    for k, (i, c, img) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, k + 1)
        if curves:
            _curves(ax, img)
        else:
            ax.imshow(img, cmap=None if img.ndim == 3 else "RdBu_r", interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{i}" if c is None else f"{i}/{c}", fontsize=6)
    total = every.shape[0]
    shown = f"{n_filters} of {total} filters (the first {n_filters})" if total > n_filters else f"{total} filters"
    fig.suptitle(literal(f"{w.layer} ({w.kind}) {shown}, {'curves' if curves else mode}"), fontsize=9, **LITERAL)
    record_shown(fig, tensor=w.name, filters=n_filters, of=total, mode="curves" if curves else mode)
    return fig


def _curves(ax, f: np.ndarray) -> None:
    """A 1-D filter ``(channels, k)`` as curves over the kernel positions."""
    x = np.arange(f.shape[1])
    if f.shape[0] <= 8:
        for row in f:
            ax.plot(x, row, linewidth=0.8)
    else:
        ax.fill_between(x, f.min(axis=0), f.max(axis=0), color="#4c72b0", alpha=0.25, linewidth=0)
        ax.plot(x, f.mean(axis=0), color="#4c72b0", linewidth=1)
    ax.axhline(0, color="0.6", linewidth=0.5)


def plot_heatmap(source: Any, *, select: Any = None, max_size: int = 256) -> Figure:
    """A Linear/Dense weight matrix as a heatmap, rows = output units, columns = inputs
    (Keras kernels are transposed to match); matrices larger than ``max_size`` are shown
    as block means. ``fig.axes[0]`` is the heatmap, ``fig.axes[1]`` its colour bar. ``select``
    chooses the matrix; the first one by default.

    Example:
        >>> import torch, weightkit
        >>> fig = weightkit.plot_heatmap(torch.nn.Linear(20, 5))
        >>> fig.axes[0].images[0].get_array().shape
        (5, 20)
    """
    ws = as_weightset(source)
    w = _pick(ws, select, lambda w: w.ndim == 2 and not _is_conv(w))
    m = downsample(matrix(w), max_size)
    fig = figure((6, 4.5))
    ax = fig.subplots()
    lim = float(np.abs(m).max()) or 1.0
    im = ax.imshow(m, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto", interpolation="nearest")
    ax.set_xlabel("input")
    ax.set_ylabel("output unit")
    shown = "" if m.shape == (w.shape[0], w.shape[1]) or m.shape == (w.shape[1], w.shape[0]) else " (block means)"
    ax.set_title(literal(f"{w.name} ({w.kind}){shown}"), fontsize=9, **LITERAL)
    fig.colorbar(im, ax=ax)
    return fig

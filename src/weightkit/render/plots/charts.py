"""Charts of measured data: histograms, per-layer norms, feature importance, per-layer change."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from weightkit import _dtypes
from weightkit.analyses.diff import diff
from weightkit.analyses.importance import feature_importance
from weightkit.analyses.statistics import stats
from weightkit.core.opening import as_weightset
from weightkit.core.selector import select as select_weights
from weightkit.errors import WeightkitError
from weightkit.render._text import literal
from weightkit.render.plots._mpl import LITERAL, figure, grid, record_shown

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _floating(ws, select: Any):
    """The weights ``select`` names that hold floating-point values: integer buffers (a BatchNorm's
    step counter, token ids) are not weights to draw."""
    chosen = {w.name for w in select_weights(ws, select) if _dtypes.is_floating(w.dtype)}
    if not chosen:
        raise WeightkitError(f"{ws.source}: no floating-point tensor to draw (only integer ones are selected)")
    return lambda w: w.name in chosen


def _integer(ws, select: Any) -> list[str]:
    return [w.name for w in select_weights(ws, select) if not _dtypes.is_floating(w.dtype)]


def plot_hist(source: Any, *, select: Any = None, max_panels: int = 24, bins: int = 64) -> Figure:
    """Weight histograms, one panel per tensor, from the streaming statistics engine.

    Example:
        >>> import torch, weightkit
        >>> fig = weightkit.plot_hist(torch.nn.Linear(30, 20))
        >>> len(fig.axes)
        2
    """

    ws = as_weightset(source)
    report = stats(ws, select=_floating(ws, select), bins=bins)
    drawable = [t for t in report.tensors if t.hist_counts]
    tensors = drawable[:max_panels]
    if not tensors:
        raise WeightkitError(f"{report.source}: no floating-point tensor with finite values to draw")
    rows, cols = grid(len(tensors), max_cols=4)
    fig = figure((3.2 * cols, 2.2 * rows + 0.8))
    skipped = _integer(ws, select)
    record_shown(fig, tensors=len(tensors), of=len(drawable), skipped_integer=skipped)
    left = [f"{len(tensors)} of {len(drawable)} tensors (the first {len(tensors)})"] if len(drawable) > len(tensors) else []
    left += [f"{len(skipped)} integer tensor(s) skipped"] if skipped else []
    if left:
        fig.suptitle("; ".join(left), fontsize=8)
    for k, t in enumerate(tensors):
        ax = fig.add_subplot(rows, cols, k + 1)
        edges = np.asarray(t.hist_edges)
        ax.stairs(t.hist_counts, edges, fill=True, color="#4c72b0")
        ax.set_title(literal(t.name), fontsize=7, **LITERAL)
        ax.tick_params(labelsize=6)
    fig.tight_layout()
    return fig


def plot_norms(source: Any, *, select: Any = None) -> Figure:
    """Per-layer L2 norm and standard deviation as bar charts along depth (two panels).

    Example:
        >>> import torch, weightkit
        >>> net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 2))
        >>> [len(ax.patches) for ax in weightkit.plot_norms(net).axes]
        [2, 2]
    """

    ws = as_weightset(source)
    report = stats(ws, select=_floating(ws, select))
    layers = [g for g in report.layers if g.finite]
    skipped = _integer(ws, select)
    fig = figure((max(6, 0.35 * len(layers) + 2), 5))
    axes = fig.subplots(2, 1, sharex=True)
    x = np.arange(len(layers))
    axes[0].bar(x, [g.l2_norm for g in layers], color="#4c72b0")
    axes[0].set_ylabel("L2 norm")
    axes[0].set_yscale("log")
    axes[1].bar(x, [g.std or 0.0 for g in layers], color="#dd8452")
    axes[1].set_ylabel("std")
    axes[1].set_yscale("log")
    axes[1].set_xticks(x, [literal(g.name or "(top)") for g in layers], rotation=90, fontsize=7, **LITERAL)
    note = f" ({len(skipped)} integer tensor(s) skipped)" if skipped else ""
    fig.suptitle(literal(f"per-layer weight scale: {report.source}{note}"), fontsize=9, **LITERAL)
    record_shown(fig, layers=len(layers), skipped_integer=skipped)
    fig.tight_layout()
    return fig


def plot_importance(source: Any, *, feature_names: Sequence[str] | None = None, top: int = 30) -> Figure:
    """Bar charts of input-feature importance (first layer, Garson, Olden), most important first.

    Example:
        >>> import torch, weightkit
        >>> len(weightkit.plot_importance(torch.nn.Sequential(torch.nn.Linear(5, 3), torch.nn.Linear(3, 1))).axes)
        3
    """

    imp = feature_importance(source, feature_names=feature_names)
    n = min(top, len(imp.features))
    fig = figure((12, max(3, 0.25 * n + 1)))
    axes = fig.subplots(1, 3)
    for ax, (title, values) in zip(axes, (("first layer |W| share", imp.first_layer),
                                          ("Garson", imp.garson), ("Olden (signed)", imp.olden))):
        order = np.argsort(-np.abs(values))[:n][::-1]
        # numeric positions with fixed labels, not a category axis: names stay literal, duplicates stay apart
        ax.barh(range(len(order)), [values[i] for i in order],
                color=["#c44e52" if values[i] < 0 else "#4c72b0" for i in order])
        ax.set_yticks(range(len(order)), [literal(imp.features[i]) for i in order], **LITERAL)
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=7)
    fig.suptitle(f"input-feature importance through {len(imp.layers)} layers", fontsize=9)
    fig.tight_layout()
    return fig


def plot_diff(a: Any, b: Any) -> Figure:
    """Per-layer relative change ‖A − B‖/‖B‖ as a bar chart (log scale).

    Example:
        >>> import torch, weightkit
        >>> m = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 1))
        >>> before = {k: v.clone() for k, v in m.state_dict().items()}
        >>> with torch.no_grad():
        ...     _ = m[0].weight.add_(0.1)
        >>> len(weightkit.plot_diff(m, before).axes[0].patches)
        2
    """

    report = diff(a, b)
    if not report.layers:
        raise WeightkitError(f"{report.a} and {report.b} have no tensors with values and names in common to compare")
    fig = figure((max(6, 0.35 * len(report.layers) + 2), 4))
    ax = fig.subplots()
    values = [c.relative if np.isfinite(c.relative) else np.nan for c in report.layers]
    floor = min([v for v in values if v and np.isfinite(v)] or [1e-12]) / 10
    ax.bar(range(len(values)), [max(v, floor) if np.isfinite(v) else floor for v in values], color="#55a868")
    ax.set_yscale("log")
    ax.set_ylabel("relative change ||A-B|| / ||B||")
    ax.set_xticks(range(len(values)), [literal(c.layer or "(top)") for c in report.layers], rotation=90, fontsize=7, **LITERAL)
    ax.set_title(literal(f"{report.a}  vs  {report.b}"), fontsize=8, **LITERAL)
    fig.tight_layout()
    return fig

"""The gradient-flow figure of a recorded run."""

from __future__ import annotations

import os
import warnings
from typing import TYPE_CHECKING

import numpy as np

from weightkit.errors import WeightkitError
from weightkit.render._text import literal
from weightkit.render.plots._mpl import LITERAL, figure
from weightkit.tracking.store import Run, open_run

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["plot_grad_flow"]


def plot_grad_flow(run: Run | str | os.PathLike, *, run_dir: str | os.PathLike = "runs", include_bias: bool = False) -> Figure:
    """Three panels, log scale: mean and max |grad| per layer at the latest measured step (bars, in
    model order, input first), mean |grad| (solid) and max |grad| (faint) per layer over the steps,
    and the update-to-weight ratio ‖Δw‖/‖w‖ per layer over the steps with the 1e-3 line.

    Parameters with fewer than two dimensions (biases, normalisation scales) are left out unless
    ``include_bias=True`` or there is nothing else. A parameter that never had a gradient is drawn
    as a red mark at the bottom of the bar panel instead of failing; NaN/Inf show as red marks too.

    Example:
        >>> import tempfile, torch, weightkit
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Sigmoid(), torch.nn.Linear(8, 1))
        >>> opt = torch.optim.SGD(net.parameters(), lr=0.1); d = tempfile.mkdtemp()
        >>> with weightkit.watch(net, optimizer=opt, every=1, run_dir=d, name="g"):
        ...     for _ in range(4):
        ...         opt.zero_grad(); net(torch.randn(8, 4)).square().mean().backward(); opt.step()
        >>> fig = weightkit.plot_grad_flow("g", run_dir=d)
        >>> [ax.get_yscale() for ax in fig.axes]
        ['log', 'log', 'log']
    """

    own = not isinstance(run, Run)
    r = run if isinstance(run, Run) else open_run(run, run_dir=run_dir)
    try:
        with warnings.catch_warnings():  # an all-NaN series on a log axis is expected (a run that blew up)
            warnings.simplefilter("ignore", UserWarning)
            return _draw(r, include_bias)
    finally:
        if own:
            r.close()


def _positive(v: np.ndarray) -> np.ndarray:
    return np.where(np.isfinite(v) & (v > 0), v, np.nan)


def _draw(run: Run, include_bias: bool):
    if not len(run.steps):
        raise WeightkitError(f"{run.name}: the run has no measured step yet; nothing to draw")
    pick = [i for i, p in enumerate(run.params) if include_bias or len(p.shape) >= 2]
    if not pick:
        pick = list(range(len(run.params)))
    names = [literal(run.params[i].name) for i in pick]
    steps = run.steps
    mean, mean_present = run._load("grad_absmean")
    mean, mean_present = mean[:, pick], mean_present[:, pick]
    amax = run.metric("grad_absmax")[:, pick]
    ratio = run.metric("update_ratio")[:, pick]

    from matplotlib import colormaps

    fig = figure((max(7.0, 0.32 * len(pick) + 3), 10.5))
    axes = fig.subplots(3, 1)
    colors = colormaps["viridis"](np.linspace(0, 0.95, len(pick)))

    # 1. bars at the latest measured step where any gradient was seen
    ax = axes[0]
    rows = np.nonzero(mean_present.any(axis=1))[0]
    x = np.arange(len(pick))
    if len(rows):
        last = rows[-1]
        mx, mn = amax[last], mean[last]
        ax.bar(x, np.nan_to_num(_positive(mx)), color="#8fbbd9", label="max |grad|", width=0.8)
        ax.bar(x, np.nan_to_num(_positive(mn)), color="#1f4e79", label="mean |grad|", width=0.5)
        ax.set_title(f"gradient flow at step {steps[last]} (input → output)", fontsize=9)
    else:
        mx = mn = np.full(len(pick), np.nan)
        ax.set_title("no gradient recorded", fontsize=9)
    finite = np.concatenate([_positive(amax).ravel(), _positive(mean).ravel()])
    finite = finite[np.isfinite(finite)]
    floor = finite.min() / 10 if len(finite) else 1e-12
    top = finite.max() * 10 if len(finite) else 1.0
    ax.set_yscale("log")
    ax.set_ylim(floor, top)
    no_grad = [k for k in range(len(pick)) if not mean_present[:, k].any()]
    bad = [k for k in range(len(pick)) if k not in no_grad and len(rows) and not np.isfinite(mx[k])]
    if no_grad:
        ax.scatter(no_grad, [floor * 1.5] * len(no_grad), marker="x", color="#c44e52", zorder=3, label="no gradient")
    if bad:
        ax.scatter(bad, [floor * 1.5] * len(bad), marker="^", color="#c44e52", zorder=3, label="NaN/Inf")
    ax.set_xticks(x, names, rotation=90, fontsize=7, **LITERAL)
    ax.set_xlim(-0.6, len(pick) - 0.4)
    ax.set_ylabel("|grad|")
    ax.legend(fontsize=7, loc="upper left")

    # 2. mean and max |grad| over the steps
    ax = axes[1]
    for k in range(len(pick)):
        line, = ax.plot(steps, _positive(mean[:, k]), color=colors[k], lw=1.4, label=names[k])
        ax.plot(steps, _positive(amax[:, k]), color=colors[k], lw=0.8, alpha=0.35)
    ax.set_yscale("log")
    ax.set_ylabel("mean |grad| (max faint)")
    ax.set_title("per-layer gradient magnitude over steps (dark: input side, light: output side)", fontsize=9)
    if len(pick) <= 16:
        legend = ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        for text in legend.get_texts():  # parameter names
            text.set(**LITERAL)

    # 3. update ratio over the steps
    ax = axes[2]
    if np.isfinite(_positive(ratio)).any():
        for k in range(len(pick)):
            ax.plot(steps, _positive(ratio[:, k]), color=colors[k], lw=1.2)
    else:
        ax.text(0.5, 0.5, "no updates recorded (watch without an optimizer?)", transform=ax.transAxes,
                ha="center", va="center", fontsize=8, color="#666666")
    ax.axhline(1e-3, color="#c44e52", ls="--", lw=1, label="1e-3")
    ax.set_yscale("log")
    ax.set_ylabel("‖Δw‖ / ‖w‖")
    ax.set_xlabel("optimizer step")
    ax.set_title("update-to-weight ratio per layer", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    fig.suptitle(literal(f"weightkit run {run.name}"), fontsize=10, **LITERAL)
    fig.tight_layout()
    return fig

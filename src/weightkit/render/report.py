"""``weightkit.report``: every analysis of a source gathered in one self-contained HTML page.

Assembly (this module) collects results as data; ``render/html.py`` turns them into the page.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from weightkit._atomic import atomic_write
from weightkit.analyses.diff import diff
from weightkit.analyses.doctor import doctor
from weightkit.analyses.importance import _chain, feature_importance
from weightkit.analyses.statistics import stats
from weightkit.analyses.summary import summary
from weightkit.core.opening import as_weightset
from weightkit.errors import WeightkitError
from weightkit.layers import KERNEL_TOKENS
from weightkit.render.html import render_html
from weightkit.render.plots import plot_diff, plot_filters, plot_heatmap, plot_importance
from weightkit.render.plots._mpl import encode
from weightkit.render.plots.grad_flow import plot_grad_flow
from weightkit.tracking import open_run

__all__ = ["report", "ReportData", "ReportInfo"]

MAX_FILTER_LAYERS = 4
MAX_HEATMAPS = 4


@dataclass
class ReportData:
    """Everything the page shows, as results of the public analyses plus pictures (PNG bytes)."""

    summary: Any
    stats: Any
    doctor: Any
    importance: Any = None
    diff: Any = None
    run: dict[str, Any] | None = None
    pictures: dict[str, list[tuple[str, bytes]]] = field(default_factory=dict)  # section -> [(caption, png)]
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ReportInfo:
    path: str
    bytes: int
    sections: list[str]


def _png(fig) -> bytes:
    return encode(fig, "png", dpi=80)


def gather(source, *, run=None, compare=None, pictures: bool = True) -> ReportData:
    """Run the analyses a report shows; a failing optional section becomes a note, not an error."""

    ws = as_weightset(source)
    data = ReportData(summary=summary(ws), stats=stats(ws), doctor=doctor(ws))
    if compare is not None:

        data.diff = diff(ws, compare)
    if run is not None:
        data.run = _run_section(run, data, pictures)
    if _mlp_like(ws):

        data.importance = feature_importance(ws)
    if pictures:
        _pictures(ws, data)
    return data


def _mlp_like(ws) -> bool:
    """Inputs go straight into a dense layer, followed by at least one more (an MLP's shape)."""
    params = [w for w in ws if not w.is_buffer and w.ndim >= 2]
    if not params or params[0].kind not in ("Linear", "Dense"):
        return False
    try:

        return len(_chain(ws)[0]) >= 2
    except WeightkitError:
        return False


def _along_depth(items: list, k: int) -> list:
    """``k`` of ``items`` evenly spaced from the first to the last (all of them when few)."""
    if len(items) <= k:
        return items
    return [items[round(i * (len(items) - 1) / (k - 1))] for i in range(k)]


def _pictures(ws, data: ReportData) -> None:

    # an empty tensor has nothing to draw
    convs = [w for w in ws if not w.is_buffer and w.numel and any(t in KERNEL_TOKENS for t in w.axis_tokens)]
    for w in _along_depth(convs, MAX_FILTER_LAYERS):
        data.pictures.setdefault("filters", []).append((w.name, _png(plot_filters(ws, select=_exactly(w.name), max_filters=32))))
    if len(convs) > MAX_FILTER_LAYERS:
        data.notes.append(f"filters drawn for {MAX_FILTER_LAYERS} of {len(convs)} conv layers, first to last")
    dense = [w for w in ws if not w.is_buffer and w.numel and w.ndim == 2 and w.kind in ("Linear", "Dense")]
    for w in _along_depth(dense, MAX_HEATMAPS):
        data.pictures.setdefault("heatmaps", []).append((w.name, _png(plot_heatmap(ws, select=_exactly(w.name), max_size=128))))
    if len(dense) > MAX_HEATMAPS:
        data.notes.append(f"heatmaps drawn for {MAX_HEATMAPS} of {len(dense)} dense layers, first to last")
    if data.importance is not None:
        data.pictures["importance"] = [("input-feature importance", _png(plot_importance(ws)))]
    if data.diff is not None and data.diff.layers:
        data.pictures["diff"] = [("relative change per layer", _png(plot_diff(ws, data.diff.b)))]


def _run_section(run, data: ReportData, pictures: bool) -> dict[str, Any]:
    from dataclasses import asdict

    opened = open_run(run)
    section: dict[str, Any] = {"name": str(run), "alerts": [asdict(a) for a in opened.alerts]}
    if pictures:
        data.pictures["gradflow"] = [("gradient flow", _png(plot_grad_flow(opened)))]
    return section


def report(source: Any, out: str | Path, *, run: Any = None, compare: Any = None) -> ReportInfo:
    """Write a self-contained HTML report (no network, no external files) for ``source``.

    Example:
        >>> import tempfile, torch, weightkit
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> info = weightkit.report(net, tempfile.mktemp(suffix=".html"))
        >>> info.bytes > 0 and "layers" in info.sections
        True
    """

    out = Path(out)
    if not out.parent.exists():
        raise WeightkitError(f"{out}: the directory {out.parent} does not exist; create it or choose another path")
    data = gather(source, run=run, compare=compare)
    html, sections = render_html(data)
    with atomic_write(out) as fh:
        fh.write(html.encode("utf-8"))
    return ReportInfo(str(out), len(html.encode()), sections)


def _exactly(name: str):
    """A selector of one tensor by its exact name (a name may hold glob characters such as ``[``)."""
    return lambda w: w.name == name

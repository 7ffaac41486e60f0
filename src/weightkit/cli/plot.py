"""``weightkit plot KIND SOURCE -o FILE``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from weightkit.cli._app import SELECT, app, guard, print_json, say
from weightkit.errors import WeightkitError
from weightkit.render import plots as p
from weightkit.render.plots._mpl import save
from weightkit.render.plots.grad_flow import plot_grad_flow

KINDS = ("filters", "hist", "heatmap", "norms", "importance", "diff", "gradflow")


@app.command()
def plot(
    kind: str = typer.Argument(..., help=f"What to draw: {', '.join(KINDS)}."),
    source: Path = typer.Argument(..., help="Model checkpoint (for diff: the new one; for gradflow: a watch run)."),
    output: Path = typer.Option(..., "--output", "-o", help="Picture to write (.png, .svg or .pdf)."),
    select: Optional[str] = SELECT,
    other: Optional[Path] = typer.Option(None, "--other", help="Reference checkpoint for diff."),
    features: Optional[str] = typer.Option(None, "--features", help="Comma-separated input feature names (importance)."),
    mode: str = typer.Option("auto", "--mode", help="filters: auto, rgb, channels or mean."),
    as_json: bool = typer.Option(False, "--json", help="Print what was drawn as JSON."),
) -> None:
    """Draw weights: conv filters, histograms, a weight heatmap, per-layer norms, feature importance, diffs."""

    def run():
        if kind not in KINDS:
            raise WeightkitError(f"unknown plot kind {kind!r}; choose one of: {', '.join(KINDS)}")
        src = str(source)
        if kind == "filters":
            fig = p.plot_filters(src, select=select, mode=mode)
        elif kind == "heatmap":
            fig = p.plot_heatmap(src, select=select)
        elif kind == "hist":
            fig = p.plot_hist(src, select=select)
        elif kind == "norms":
            fig = p.plot_norms(src, select=select)
        elif kind == "gradflow":

            fig = plot_grad_flow(src)
        elif kind == "importance":
            names = [f.strip() for f in features.split(",")] if features else None
            fig = p.plot_importance(src, feature_names=names)
        else:
            if other is None:
                raise WeightkitError("plot diff needs the reference checkpoint: --other PATH")
            fig = p.plot_diff(src, str(other))
        save(fig, output)
        shown = getattr(fig, "weightkit_shown", None)
        if as_json:
            print_json({"kind": kind, "source": src, "output": str(output), "panels": len(fig.axes), "shown": shown})
        else:
            say(f"wrote {output}" + _left_out(shown))

    guard(run)


def _left_out(shown: dict | None) -> str:
    """What a picture does not show, for the line that names the file."""
    if not shown:
        return ""
    parts = []
    for what in ("filters", "tensors"):
        if what in shown and shown["of"] > shown[what]:
            parts.append(f"{shown[what]} of {shown['of']} {what} drawn")
    if shown.get("skipped_integer"):
        parts.append(f"{len(shown['skipped_integer'])} integer tensor(s) skipped")
    return f" ({'; '.join(parts)})" if parts else ""

"""``weightkit stats``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from weightkit.analyses.statistics import stats as compute
from weightkit.cli._app import SELECT, app, console, guard, print_json
from weightkit.core.opening import open as open_weights
from weightkit.core.selector import select as select_weights
from weightkit.render.console import renderable

PROGRESS_MIN_BYTES = 256 << 20


@app.command()
def stats(
    source: Path = typer.Argument(..., help="Checkpoint file or directory of shards."),
    select: Optional[str] = SELECT,
    bins: int = typer.Option(64, "--bins", help="Histogram bins (at most)."),
    eps: float = typer.Option(1e-6, "--eps", help="Count values with |w| < eps as 'small'."),
    as_json: bool = typer.Option(False, "--json", help="Print the statistics as JSON."),
) -> None:
    """Measure every weight: mean, std, min, max, norm, zeros, NaN/Inf, histogram, quantiles."""

    def run():
        with open_weights(str(source)) as ws:
            total = sum(w.nbytes for w in select_weights(ws, select))
            show = not as_json and sys.stderr.isatty() and total >= PROGRESS_MIN_BYTES
            if show:
                from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

                with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                              TransferSpeedColumn(), transient=True) as bar:
                    task = bar.add_task("measuring", total=total)
                    report = compute(ws, select=select, bins=bins, eps=eps,
                                     progress=lambda done, _: bar.update(task, completed=done))
            else:
                report = compute(ws, select=select, bins=bins, eps=eps)
        if as_json:
            print_json(report.to_dict())
        else:
            console().print(renderable(report))

    guard(run)

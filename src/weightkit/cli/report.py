"""``weightkit report SOURCE -o report.html``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from weightkit.cli._app import app, guard, print_json, say
from weightkit.render.report import report as build


@app.command()
def report(
    source: Path = typer.Argument(..., help="Checkpoint file or directory of shards."),
    output: Path = typer.Option(Path("report.html"), "--output", "-o", help="HTML file to write."),
    run: Optional[str] = typer.Option(None, "--run", help="A watch run to include (gradient flow, alerts)."),
    compare: Optional[Path] = typer.Option(None, "--compare", help="Another checkpoint to compare with."),
    as_json: bool = typer.Option(False, "--json", help="Print what was written as JSON."),
) -> None:
    """Write one self-contained HTML page: overview, layers, doctor, statistics, filters, heatmaps…"""

    def run_():
        info = build(str(source), output, run=run, compare=str(compare) if compare else None)
        if as_json:
            print_json({"path": info.path, "bytes": info.bytes, "sections": info.sections})
        else:
            say(f"wrote {info.path} ({info.bytes / 1e6:.1f} MB): {', '.join(info.sections)}")

    guard(run_)

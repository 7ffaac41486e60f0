"""``weightkit doctor``."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from weightkit.analyses.doctor import doctor as check
from weightkit.cli._app import EXIT_FINDINGS, app, console, guard, print_json
from weightkit.render.console import renderable


@app.command()
def doctor(
    source: Path = typer.Argument(..., help="Checkpoint file or directory of shards."),
    rule: Optional[List[str]] = typer.Option(None, "--rule", help="Run only this rule (repeatable)."),
    as_json: bool = typer.Option(False, "--json", help="Print the findings as JSON."),
) -> None:
    """Check weights for problems (NaN/Inf, dead units, exploding scale, BatchNorm…). Exit 1 on errors."""

    def run():
        report = check(str(source), rules=rule or None)
        if as_json:
            print_json(report.to_dict())
        else:
            console().print(renderable(report))
        return EXIT_FINDINGS if report.exit_code else 0

    guard(run)

"""``weightkit scan``: static check of weight files for code; exit 0 all safe, 1 anything flagged."""

from __future__ import annotations

from pathlib import Path
from typing import List

import typer

from weightkit.cli._app import EXIT_FINDINGS, EXIT_OK, app, console, guard, print_json
from weightkit.errors import SourceNotFoundError
from weightkit.render.console import renderable
from weightkit.scanner import scan as scan_path


@app.command()
def scan(
    paths: List[Path] = typer.Argument(..., help="Weight files or directories to scan."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list of reports."),
    allow: List[str] = typer.Option([], "--allow", help="Treat this exact global (module.Name) as safe; repeatable."),
) -> None:
    """Check weight files for code without running any (pickles, zips, npy/npz, Keras, safetensors).

    Verdicts: safe, needs-code (imports classes not on the allow-list), unreadable (damaged or
    unknown), malicious (code-execution gadget or evasion trick). Exit 0 when every file is safe.
    """

    def run():
        for p in paths:
            if not p.exists():
                raise SourceNotFoundError(f"{p}: no such file or directory; check the path")
        reports = [scan_path(p, allow=allow) for p in paths]
        if as_json:
            print_json([r.to_dict() for r in reports])
        else:
            console().print(renderable(reports))
        return EXIT_OK if all(r.safe for r in reports) else EXIT_FINDINGS

    guard(run)

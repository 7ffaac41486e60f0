"""``weightkit scan``: static check of weight files for code; exit 0 all safe, 1 anything flagged."""

from __future__ import annotations

from pathlib import Path
from typing import List

import typer

from ..errors import SourceNotFoundError
from ._app import EXIT_FINDINGS, EXIT_OK, app, console, guard, print_json

_STYLE = {"safe": "bold green", "needs-code": "bold yellow", "unreadable": "bold magenta", "malicious": "bold red"}
_SEV = {"critical": "red", "warning": "yellow", "info": "dim"}


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
        from ..scan import scan as scan_path

        for p in paths:
            if not p.exists():
                raise SourceNotFoundError(f"{p}: no such file or directory; check the path")
        reports = [scan_path(p, allow=allow) for p in paths]
        if as_json:
            print_json([r.to_dict() for r in reports])
        else:
            _render(reports)
        return EXIT_OK if all(r.safe for r in reports) else EXIT_FINDINGS

    guard(run)


def _render(reports) -> None:
    from rich.table import Table
    from rich.text import Text

    out = console()
    for r in reports:
        imported = f"; {sum(r.globals.values())} globals imported, {len(r.globals)} distinct" if r.globals else ""
        line = Text.assemble((r.path, "bold"), "  ", (r.verdict, _STYLE[r.verdict]), f"  ({r.format}{imported})")
        out.print(line)
        if not r.findings:
            continue
        table = Table("severity", "rule", "where", "global", "finding", show_edge=False, header_style="bold")
        for f in r.sorted_findings():
            where = (f.member or "") + (f"@{f.position}" if f.position is not None else "")
            table.add_row(Text(f.severity, _SEV[f.severity]), f.rule, where or "-", f.global_name or "-", f.message)
        out.print(table)
    if len(reports) > 1:
        counts = {v: sum(r.verdict == v for r in reports) for v in _STYLE}
        out.print(", ".join(f"{n} {v}" for v, n in counts.items() if n))

"""Terminal rendering of :class:`weightkit.scanner.ScanReport` verdicts and findings."""

from __future__ import annotations

from typing import Iterator

from rich.console import RenderableType

from weightkit.render._format import LiteralTable, line, text
from weightkit.scanner import ScanReport

_STYLE = {"safe": "bold green", "needs-code": "bold yellow", "unreadable": "bold magenta", "malicious": "bold red"}
_SEV = {"critical": "red", "warning": "yellow", "info": "dim"}


def render_scans(reports: list[ScanReport]) -> Iterator[RenderableType]:
    """A verdict line per report, its findings as a table, and a count line for several."""
    for r in reports:
        imported = f"; {sum(r.globals.values())} globals imported, {len(r.globals)} distinct" if r.globals else ""
        yield line((r.path, "bold"), "  ", (r.verdict, _STYLE[r.verdict]), f"  ({r.format}{imported})")
        if not r.findings:
            continue
        table = LiteralTable("severity", "rule", "where", "global", "finding", show_edge=False, header_style="bold")
        for f in r.sorted_findings():
            where = (f.member or "") + (f"@{f.position}" if f.position is not None else "")
            table.add_row(text(f.severity, _SEV[f.severity]), f.rule, where or "-", f.global_name or "-", f.message)
        yield table
    if len(reports) > 1:
        counts = {v: sum(r.verdict == v for r in reports) for v in _STYLE}
        yield ", ".join(f"{n} {v}" for v, n in counts.items() if n)

"""Terminal rendering of a :class:`weightkit.analyses.doctor.DoctorReport`."""

from __future__ import annotations

from typing import Iterator

from rich import box
from rich.console import Group, RenderableType

from weightkit.analyses.doctor import DoctorReport
from weightkit.render._format import LiteralTable, line, text

STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}


def render_doctor(r: DoctorReport) -> Iterator[RenderableType]:
    yield line(("weightkit doctor ", "bold"), (r.source, "cyan"), f"  ({r.format})")
    if not r.findings:
        yield text(f"No problems found ({len(r.rules_run)} rules checked).", style="green")
        return
    table = LiteralTable(show_edge=False, header_style="bold", box=box.SIMPLE_HEAD, padding=(0, 1), show_lines=True)
    table.add_column("severity", no_wrap=True)
    table.add_column("rule", no_wrap=True)
    table.add_column("finding and fix", overflow="fold")
    for f in r.findings:
        # two lines as two Texts: a newline inside one Text would be shown escaped
        parts = [text(f.message)]
        if f.details.get("grouped"):  # one row for many alike findings: name every tensor
            shown = f.tensors[:12]
            more = f" … ({len(f.tensors)} in all)" if len(f.tensors) > len(shown) else ""
            parts.append(line((f"{f.details['count']}x: ", "bold"), ", ".join(shown) + more))
        body = Group(*parts, line(("fix: ", "bold"), f.fix))
        table.add_row(text(f.severity, style=STYLE[f.severity]), f.rule, body)
    yield table
    counts = {s: sum(f.severity == s for f in r.findings) for s in STYLE}
    yield text(f"{counts['error']} errors, {counts['warning']} warnings, {counts['info']} notes "
               f"({len(r.rules_run)} rules checked); exit code {r.exit_code}.",
               style="bold red" if counts["error"] else "")

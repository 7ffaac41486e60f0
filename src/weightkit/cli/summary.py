"""``weightkit summary`` and ``weightkit formats``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from weightkit.analyses.summary import summary as summarize
from weightkit.cli._app import SELECT, app, console, guard, print_json
from weightkit.render._format import LiteralTable
from weightkit.render.console import renderable
from weightkit.sources._base import reader_specs


@app.command()
def summary(
    source: Path = typer.Argument(..., help="Checkpoint file or directory of shards."),
    select: Optional[str] = SELECT,
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON (schema in docs/summary-json.md)."),
    format: Optional[str] = typer.Option(None, "--format", help="Force a reader (see `weightkit formats`)."),
) -> None:
    """List every weight with its layer, kind, shape, axis meanings, dtype and size."""

    def run():
        s = summarize(str(source), select=select, format=format)
        if as_json:
            print_json(s.to_dict())
        else:
            console().print(renderable(s))

    guard(run)


@app.command()
def formats(as_json: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """List the formats weightkit reads."""

    def run():
        specs = [{"name": s.name, "suffixes": list(s.suffixes), "description": s.description,
                  "kind": "file" if s.sniff else "live object"} for s in reader_specs()]
        if as_json:
            print_json(specs)
            return
        table = LiteralTable("format", "kind", "file names", "what", show_edge=False, header_style="bold")
        for s in specs:
            table.add_row(s["name"], s["kind"], " ".join(s["suffixes"]), s["description"])
        console().print(table)

    guard(run)

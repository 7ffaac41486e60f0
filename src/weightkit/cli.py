"""The ``weightkit`` command: parse arguments, call the public API, render, choose the exit code.

Exit codes: 0 success, 1 findings (doctor, diff, scan), 2 bad input or usage.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Callable, Optional

import typer

from .errors import WeightkitError

app = typer.Typer(
    name="weightkit",
    help="See, measure and change the weights of neural networks, from any model or checkpoint.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EXIT_OK, EXIT_FINDINGS, EXIT_BAD_INPUT = 0, 1, 2


def _fail(message: str) -> None:
    typer.echo(f"weightkit: error: {message}", err=True)
    raise typer.Exit(EXIT_BAD_INPUT)


def _guard(fn: Callable[[], int | None]) -> None:
    """Run a command body; bad input becomes one line on stderr and exit code 2."""
    try:
        code = fn()
    except WeightkitError as e:
        _fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
    except KeyboardInterrupt:
        raise typer.Exit(130)
    raise typer.Exit(code or EXIT_OK)


def _console():
    from rich.console import Console

    # piped output is read in files and logs: give tables room instead of rich's 80 columns
    width = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 140
    return Console(width=width)


def _print_json(data) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


@app.command()
def summary(
    source: Path = typer.Argument(..., help="Checkpoint file or directory of shards."),
    filter: Optional[str] = typer.Option(None, "--filter", "-f", help="Only tensors whose name matches this glob."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON (schema in docs/summary-json.md)."),
    format: Optional[str] = typer.Option(None, "--format", help="Force a reader (see `weightkit formats`)."),
) -> None:
    """List every weight with its layer, kind, shape, axis meanings, dtype and size."""

    def run():
        from . import _api

        s = _api.summary(str(source), filter=filter, format=format)
        if filter and not s.tensors:
            raise WeightkitError(f"{source}: no tensor name matches --filter {filter!r}; try a broader glob such as '*{filter}*'")
        if as_json:
            _print_json(s.to_dict())
        else:
            _console().print(s)

    _guard(run)


@app.command()
def formats(as_json: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """List the formats weightkit reads."""

    def run():
        from .sources._base import reader_specs

        specs = [{"name": s.name, "suffixes": list(s.suffixes), "description": s.description,
                  "kind": "file" if s.sniff else "live object"} for s in reader_specs()]
        if as_json:
            _print_json(specs)
            return
        from rich.table import Table

        table = Table("format", "kind", "file names", "what", show_edge=False, header_style="bold")
        for s in specs:
            table.add_row(s["name"], s["kind"], " ".join(s["suffixes"]), s["description"])
        _console().print(table)

    _guard(run)


def main() -> None:
    os.environ.setdefault("KERAS_BACKEND", "torch")
    app()


if __name__ == "__main__":
    main()

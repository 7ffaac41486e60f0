"""The typer app and what every command shares: error guard, console, JSON output."""

from __future__ import annotations

import json
import os
import sys
from typing import Callable

import typer

from weightkit.errors import WeightkitError

app = typer.Typer(
    name="weightkit",
    help="See, measure and change the weights of neural networks, from any model or checkpoint.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EXIT_OK, EXIT_FINDINGS, EXIT_BAD_INPUT = 0, 1, 2

# One option narrows tensors on every command, with the meaning of weightkit.Selector.
SELECT = typer.Option(None, "--select", "-s", "--filter", "-f",
                      help="Only these tensors: a glob on names, 're:<regex>', 'kind:<Kind>' or 'role:<role>'.")


def fail(message: str) -> None:
    typer.echo(f"weightkit: error: {message}", err=True)
    raise typer.Exit(EXIT_BAD_INPUT)


def guard(fn: Callable[[], int | None]) -> None:
    """Run a command body; bad input becomes one line on stderr and exit code 2."""
    try:
        code = fn()
    except WeightkitError as e:
        fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    raise typer.Exit(code or EXIT_OK)


def console():
    from rich.console import Console

    # piped output is read in files and logs: give tables room instead of rich's 80 columns
    width = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 140
    return Console(width=width)


def print_json(data) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")

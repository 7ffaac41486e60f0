"""The typer app and what every command shares: error guard, console, JSON output.

Messages quote names and paths from files, so every line printed here goes through
:func:`weightkit.render._text.literal` (control characters shown escaped), and the console reads
no markup or emoji codes in strings (results are drawn by :func:`weightkit.render.console.renderable`,
which keeps them literal too).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import warnings
from typing import Callable

import typer

from weightkit.errors import WeightkitError
from weightkit.render._text import literal

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


def say(message: str) -> None:
    """Print one line on stdout, control characters shown escaped."""
    typer.echo(literal(message))


def error_line(message: str) -> None:
    """One error line on stderr: the whole message on one line (a newline in a name it quotes is
    shown as ``\\n``)."""
    typer.echo(f"weightkit: error: {literal(message)}", err=True)


def fail(message: str) -> None:
    error_line(message)
    raise typer.Exit(EXIT_BAD_INPUT)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    # warnings quote names too (matplotlib names the glyphs it lacks); escape each line of them
    text = warnings.formatwarning(message, category, filename, lineno, line)
    (file or sys.stderr).write("".join(literal(ln) + "\n" for ln in text.splitlines()))


class _LiteralLog(logging.StreamHandler):
    """weightkit's log records (``runs list`` names a run store it cannot read) on stderr, as
    Python's last-resort handler prints them, with control characters escaped."""

    def format(self, record: logging.LogRecord) -> str:
        return literal(super().format(record))


@contextlib.contextmanager
def _literal_side_output():
    log = logging.getLogger("weightkit")
    handler = _LiteralLog(sys.stderr)
    handler.setLevel(logging.WARNING)
    log.addHandler(handler)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            yield
    finally:
        log.removeHandler(handler)


def guard(fn: Callable[[], int | None]) -> None:
    """Run a command body; bad input becomes one line on stderr and exit code 2."""
    try:
        with _literal_side_output():
            code = fn()
    except WeightkitError as e:
        fail(str(e) or type(e).__name__)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    raise typer.Exit(code or EXIT_OK)


def console():
    from rich.console import Console

    # piped output is read in files and logs: give tables room instead of rich's 80 columns
    width = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 140
    return Console(width=width, markup=False, emoji=False)


def print_json(data) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")

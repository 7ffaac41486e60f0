"""The ``weightkit`` command: parse arguments, call the public API, render, choose the exit code.

Exit codes: 0 success, 1 findings (doctor, diff, scan), 2 bad input or usage.
Each command lives in its own module, which registers itself on the shared typer ``app``.
"""

from __future__ import annotations

import os

from weightkit.cli import compress as _compress  # noqa: F401
from weightkit.cli import doctor as _doctor  # noqa: F401
from weightkit.cli import plot as _plot  # noqa: F401
from weightkit.cli import report as _report  # noqa: F401
from weightkit.cli import runs as _runs  # noqa: F401
from weightkit.cli import scan as _scan  # noqa: F401
from weightkit.cli import stats as _stats  # noqa: F401
from weightkit.cli import summary as _summary  # noqa: F401  (registers commands)
from weightkit.cli._app import EXIT_BAD_INPUT, EXIT_FINDINGS, EXIT_OK, app

__all__ = ["app", "main", "EXIT_OK", "EXIT_FINDINGS", "EXIT_BAD_INPUT"]


def main() -> None:
    os.environ.setdefault("KERAS_BACKEND", "torch")
    app()

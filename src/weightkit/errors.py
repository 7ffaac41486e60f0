"""The one error family of weightkit.

Every error a user can cause by what they pass in is a ``WeightkitError``. Its message is a
single line that names the input, says what is wrong and what to do about it. The CLI prints
that line and exits with status 2.
"""

from __future__ import annotations

__all__ = [
    "WeightkitError",
    "SourceNotFoundError",
    "UnsupportedFormatError",
    "CorruptFileError",
    "UnsafeCheckpointError",
    "MissingDependencyError",
]


class WeightkitError(Exception):
    """Base class of every error weightkit raises on bad input."""


class SourceNotFoundError(WeightkitError, FileNotFoundError):
    """The path does not exist, or a directory holds no weights."""


class UnsupportedFormatError(WeightkitError, ValueError):
    """The object or file is of a kind weightkit cannot read."""


class CorruptFileError(WeightkitError, ValueError):
    """The file looks like a known format but is truncated or damaged."""


class UnsafeCheckpointError(WeightkitError):
    """Loading the file would require executing code stored in it."""


class MissingDependencyError(WeightkitError, ImportError):
    """An optional dependency needed for this source is not installed."""


def require(module: str, *, extra: str, purpose: str):
    """Import an optional dependency or raise a one-line install hint."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(
            f"{purpose} needs the Python package '{module}', which is not installed; "
            f"install it with: pip install 'weightkit[{extra}]'"
        ) from None

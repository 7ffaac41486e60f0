"""Special files (FIFOs, devices, sockets) where a weights file is expected: opening a FIFO for
reading blocks until a writer appears (forever), a device such as ``/dev/zero`` reads without end,
and opening some devices acts on them. Readers and the scanner refuse them before opening."""

from __future__ import annotations

import os
import stat
from typing import BinaryIO

from weightkit.errors import UnsupportedFormatError

__all__ = ["special_kind", "refuse_special", "open_regular"]

_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def special_kind(path: str | os.PathLike) -> str | None:
    """What ``path`` is (symlinks followed) when it is a FIFO, device or socket, else ``None``
    (regular files, directories, and paths that cannot be stat'ed, which the caller reports)."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    return _kind(mode)


def _kind(mode: int) -> str | None:
    return next((what for test, what in _KINDS if test(mode)), None)


def _refusal(path: str | os.PathLike, kind: str) -> UnsupportedFormatError:
    return UnsupportedFormatError(f"{path}: is {kind}, not a regular file, so it was not opened (reading it could "
                                  "block or never end); pass the weights file itself")


def refuse_special(path: str | os.PathLike) -> None:
    """Raise :class:`UnsupportedFormatError` when ``path`` is a FIFO, device or socket."""
    kind = special_kind(path)
    if kind is not None:
        raise _refusal(path, kind)


def open_regular(path: str | os.PathLike) -> BinaryIO:
    """``open(path, "rb")`` for a regular file, refusing special files without blocking: checked by
    ``stat`` before opening (opening a device can act on it) and by ``fstat`` after, with
    ``O_NONBLOCK`` so that a FIFO swapped in between does not block the open.

    Raises:
        UnsupportedFormatError: a FIFO, device or socket. ``OSError`` as ``open`` raises it.
    """
    refuse_special(path)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        kind = _kind(os.fstat(fd).st_mode)
        if kind is not None:
            raise _refusal(path, kind)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise

"""Atomic file writes: the destination is either untouched or the complete new file.

The bytes go to a temporary file in the destination's directory (same file system, so the
final ``rename`` is atomic), which is flushed and fsynced before it replaces the destination;
the directory is then fsynced so the rename itself survives a crash. On any exception the
temporary file is removed and the destination is left as it was. A process killed with
SIGKILL cannot clean up: it may leave a ``.<name>.*.wktmp`` file beside the destination, but
never a half-written file at the destination path.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator

from weightkit.errors import WeightkitError

__all__ = ["atomic_write", "check_writable", "TEMP_SUFFIX"]

TEMP_SUFFIX = ".wktmp"


def check_writable(path: str | os.PathLike) -> Path:
    """``path`` as a ``Path`` when a file can be created there, else a one-line ``WeightkitError``."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise WeightkitError(f"{path}: is a directory; give a file name to write")
    if not parent.is_dir():
        raise WeightkitError(f"{path}: directory {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise WeightkitError(f"{path}: directory {parent} is not writable; choose another output path")
    return path


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Open a temporary binary file that replaces ``path`` when the block ends without error.

    Example:
        >>> import tempfile, pathlib
        >>> from weightkit._atomic import atomic_write
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "out.bin"
        >>> with atomic_write(target) as fh:
        ...     _ = fh.write(b"complete")
        >>> target.read_bytes()
        b'complete'
    """
    path = check_writable(path)
    directory = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=directory)
    except OSError as e:
        raise WeightkitError(f"{path}: cannot create a file in {directory} ({e.strerror}); nothing was written") from None
    try:
        try:
            mode = os.stat(path).st_mode & 0o7777  # keep the mode of the file being replaced
        except OSError:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w+b") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError) and not isinstance(e, WeightkitError):
            raise WeightkitError(
                f"{path}: writing failed ({e.strerror or e}); the destination is unchanged") from None
        raise
    _fsync_dir(directory)

"""Atomic file writes that never follow a link planted where weightkit writes.

Every file weightkit writes (safetensors, reports, pictures, exports, run stores, demo files)
goes through this module. The bytes go to a temporary file that ``tempfile.mkstemp`` creates in
the destination's directory (``O_CREAT | O_EXCL``, mode 0600, a random name
``.<name>.<random>.wktmp``): creation fails rather than open an existing file or a symlink, and
no other process can guess the name in advance. The temporary file is flushed and fsynced, then
renamed over the destination (same file system, so the rename is atomic), and the directory is
fsynced so the rename itself survives a crash. On any exception the temporary file is removed and
the destination is left as it was. A process killed with SIGKILL cannot clean up: it may leave a
``.<name>.*.wktmp`` file beside the destination, but never a half-written destination.

A symlink *at the destination* is replaced by the new file (``rename`` replaces the link itself);
its target is never opened or changed. With ``exclusive=True`` an existing destination (a file or
a link) is refused instead: the new file is installed with ``link``, which never replaces or
follows anything.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator

from weightkit.errors import WeightkitError

__all__ = ["atomic_write", "atomic_path", "atomic_files", "check_writable", "TEMP_SUFFIX"]

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


def _directory(path: Path) -> Path:
    return path.parent if str(path.parent) else Path(".")


def _new_temp(path: Path) -> tuple[int, str]:
    """A new temporary file beside ``path`` (exclusive, unpredictable name) with the final mode."""
    directory = _directory(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=directory)
    except OSError as e:
        raise WeightkitError(f"{path}: cannot create a file in {directory} ({e.strerror}); nothing was written") from None
    try:
        st = os.lstat(path)
        # keep the permissions of a regular file being replaced; a link's target is nobody's business
        # here, and set-id bits are never copied
        mode = st.st_mode & 0o777 if stat.S_ISREG(st.st_mode) else None
    except OSError:
        mode = None
    if mode is None:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    os.fchmod(fd, mode)
    return fd, tmp


def _install(tmp: str, path: Path, *, exclusive: bool) -> None:
    """Move the finished temporary file to ``path`` (replacing it, or refusing an existing one)."""
    if not exclusive:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise WeightkitError(f"{path}: already exists; remove it or choose another path") from None
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS):
            raise
        # a file system without hard links: check, then rename (a race remains there)
        if os.path.lexists(path):
            raise WeightkitError(f"{path}: already exists; remove it or choose another path") from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def _failed(path: Path, tmp: str, e: BaseException) -> None:
    """Clean up after a failed write; an ``OSError`` becomes a one-line ``WeightkitError``."""
    with contextlib.suppress(OSError):
        os.unlink(tmp)
    if isinstance(e, OSError) and not isinstance(e, WeightkitError):
        raise WeightkitError(f"{path}: writing failed ({e.strerror or e}); the destination is unchanged") from None


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, *, exclusive: bool = False) -> Iterator[BinaryIO]:
    """Open a temporary binary file that replaces ``path`` when the block ends without error.

    Args:
        path: the destination; a symlink there is replaced, never followed.
        exclusive: refuse a destination that already exists (file or link) instead of replacing it.

    Example:
        >>> import tempfile, pathlib
        >>> from weightkit._atomic import atomic_write
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "out.bin"
        >>> with atomic_write(target) as fh:
        ...     _ = fh.write(b"complete")
        >>> target.read_bytes()
        b'complete'
    """
    with _replacing(path, exclusive=exclusive) as (fd, _):
        with os.fdopen(fd, "w+b") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, exclusive: bool = False) -> Iterator[Path]:
    """The path of a new empty temporary file that replaces ``path`` when the block ends without error.

    For writers that insist on a path (SQLite): they must write into the file at that path, not
    replace it. The file is fsynced before it is moved; on an exception it is removed.

    Example:
        >>> import sqlite3, tempfile, pathlib
        >>> from weightkit._atomic import atomic_path
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "db.sqlite"
        >>> with atomic_path(target, exclusive=True) as tmp:
        ...     con = sqlite3.connect(tmp); _ = con.execute("CREATE TABLE t(x)"); con.commit(); con.close()
        >>> sqlite3.connect(target).execute("SELECT name FROM sqlite_master").fetchall()
        [('t',)]
    """
    with _replacing(path, exclusive=exclusive) as (fd, tmp):
        os.close(fd)
        yield Path(tmp)
        fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def _replacing(path: str | os.PathLike, *, exclusive: bool) -> Iterator[tuple[int, str]]:
    """A new temporary file ``(fd, name)`` beside ``path`` that is installed at ``path`` when the
    block ends without error (then the directory is fsynced), and removed on any exception."""
    path = check_writable(path)
    fd, tmp = _new_temp(path)
    try:
        yield fd, tmp
        _install(tmp, path, exclusive=exclusive)
    except BaseException as e:
        _failed(path, tmp, e)
        raise
    _fsync_dir(_directory(path))


@contextlib.contextmanager
def atomic_files(directory: str | os.PathLike) -> Iterator[Path]:
    """A new private directory (mode 0700, unpredictable name) inside ``directory``, for writers
    that name their own files (TensorBoard's event files); when the block ends without error each
    file written there is fsynced and renamed into ``directory`` (a link planted at its name is
    replaced, never followed). On an exception nothing reaches ``directory``.

    Example:
        >>> import tempfile, pathlib
        >>> from weightkit._atomic import atomic_files
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> with atomic_files(d) as tmp:
        ...     _ = (tmp / "events.1").write_bytes(b"e")
        >>> sorted(p.name for p in d.iterdir())
        ['events.1']
    """
    directory = Path(directory)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=".weightkit.", suffix=TEMP_SUFFIX, dir=directory))
    except OSError as e:
        raise WeightkitError(f"{directory}: cannot create a file there ({e.strerror}); nothing was written") from None
    try:
        yield tmp
        for name in sorted(os.listdir(tmp)):
            src = tmp / name
            fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW)  # only regular files the writer made
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise WeightkitError(f"{directory}: the writer made {name!r}, which is not a file; nothing was moved")
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(src, directory / name)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)  # rmtree removes links, never what they point to
        if isinstance(e, OSError) and not isinstance(e, WeightkitError):
            raise WeightkitError(f"{directory}: writing failed ({e.strerror or e}); nothing more was written") from None
        raise
    os.rmdir(tmp)
    _fsync_dir(directory)

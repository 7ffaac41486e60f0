"""Sources: everything weightkit can open, one module per format behind one reader protocol.

``open_reader(obj)`` picks the reader: live objects by type (without importing a framework
the caller has not imported), paths by their content (magic bytes), never by the file
extension alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from weightkit.errors import CorruptFileError, SourceNotFoundError, UnsupportedFormatError, WeightkitError
from weightkit.formats.special import refuse_special
from weightkit.sources._base import (
    RawTensor,
    Reader,
    ReaderBase,
    _load_all,
    fspath,
    list_readers,
    reader_specs,
    register_reader,
    sniff_head,
)

__all__ = ["open_reader", "list_readers", "register_reader", "Reader", "ReaderBase", "RawTensor"]

def open_reader(obj: Any, *, format: str | None = None) -> Reader:
    """Open ``obj`` (a path, a live model, a state dict) with the reader that fits it."""
    _load_all()
    specs = list(reader_specs())
    if format is not None:
        by_name = {s.name: s for s in specs}
        if format not in by_name:
            raise UnsupportedFormatError(
                f"unknown format {format!r}; known formats: {', '.join(by_name)}"
            )
        specs = [by_name[format]]
    path = fspath(obj)
    if path is None:
        for spec in specs:
            if spec.accepts is not None and spec.accepts(obj):
                return spec.open(obj)
        raise UnsupportedFormatError(
            f"cannot open an object of type {type(obj).__module__}.{type(obj).__qualname__}; "
            "pass a path, a torch.nn.Module, a Keras model or layer, or a dict of tensors"
        )
    return _open_path(path, specs, forced=format is not None)


def _open_with(spec, path: Path) -> Reader:
    """Open with one reader; a reader's own unexpected exception still becomes one clear line."""
    try:
        return spec.open(path)
    except WeightkitError:
        raise
    except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError, EOFError, RuntimeError) as e:
        detail = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise CorruptFileError(f"{path}: cannot be read as {spec.name} ({detail}); the file may be damaged") from None


def _open_path(path: Path, specs, *, forced: bool) -> Reader:
    if not path.exists():
        raise SourceNotFoundError(f"{path}: no such file or directory; check the path")
    refuse_special(path)  # before any reader opens it: a FIFO would block the open forever
    if path.is_dir():
        head = None
    else:
        try:
            head = sniff_head(path)
        except OSError as e:
            raise SourceNotFoundError(f"{path}: cannot be read ({e.strerror}); check its permissions") from None
        if not head:
            raise CorruptFileError(f"{path}: the file is empty; it holds no weights")
    if forced and specs[0].sniff is None:
        raise UnsupportedFormatError(
            f"{path}: format {specs[0].name!r} reads live objects, not files; drop --format to detect the file's format"
        )
    for spec in specs:
        if spec.sniff is None:
            continue
        try:
            matched = spec.sniff(path, head)
        except WeightkitError:
            raise
        except Exception:
            matched = False
        if matched:
            return _open_with(spec, path)
    if forced:
        raise CorruptFileError(
            f"{path}: is not a {specs[0].name} file (its content does not match); drop --format to detect the format"
        )
    name = path.name.lower()
    for spec in specs:
        if any(name.endswith(s) for s in spec.suffixes):
            raise CorruptFileError(
                f"{path}: named like a {spec.name} file but its content is not one "
                "(truncated, corrupt or mislabelled); re-download or re-save it"
            )
    raise UnsupportedFormatError(
        f"{path}: unknown weights format (first bytes {(head or b'')[:8]!r}); "
        f"weightkit reads: {', '.join(s.name for s in specs if s.sniff)}"
    )

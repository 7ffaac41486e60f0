"""Guards on HDF5 files that libhdf5 itself does not check: corrupt global heaps, and objects that
make libhdf5 read outside the file (external storage, virtual datasets, external links)."""

from __future__ import annotations

import contextlib
import mmap
import os
from pathlib import Path
from typing import Any

from weightkit.errors import CorruptFileError, UnsafeCheckpointError

__all__ = ["scan_global_heaps", "check_global_heaps", "reaches_outside", "refuse_outside", "MAX_LINKS"]

MAX_LINKS = 100_000  # links walked in one file; a Keras file of a 1000-layer model holds a few thousand


def scan_global_heaps(path: Path, mm: Any, start: int, end: int) -> None:
    """Refuse an HDF5 global heap in ``mm[start:end]`` (bytes or a mapping) that libhdf5's parser
    would loop on forever: an object whose size keeps the parser in place (found by fuzzing).
    Vlen strings, such as the ``name`` attribute Keras gives every object, live in these heaps."""
    pos = start
    while (i := mm.find(b"GCOL\x01", pos, end)) >= 0:
        pos, size = i + 5, int.from_bytes(mm[i + 8:i + 16], "little")
        if size < 16 or i + size > end:
            continue  # libhdf5 cannot read this collection: an error, not a loop
        p, stop = i + 16, i + size
        while p + 16 <= stop:
            index, length = int.from_bytes(mm[p:p + 2], "little"), int.from_bytes(mm[p + 8:p + 16], "little")
            need = (16 + ((length + 7) & ~7)) % (1 << 64) if index else length
            if need == 0 or need > stop - p:
                raise CorruptFileError(f"{path}: corrupt HDF5 global heap at byte {i - start} (an object of "
                                       f"{length} bytes at byte {p - start}); the file is damaged")
            p += need


def check_global_heaps(path: Path, fh: Any = None, start: int = 0, end: int | None = None) -> None:
    """:func:`scan_global_heaps` over bytes ``[start, end)`` of the file ``path`` (or of the open
    file ``fh``), through a read-only mapping: one scan of the file, nothing held in memory."""
    with open(path, "rb") if fh is None else contextlib.nullcontext(fh) as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            scan_global_heaps(path, mm, start, min(size, end if end is not None else size))


def reaches_outside(f: Any, *, limit: int = MAX_LINKS) -> list[tuple[str, str, str]]:
    """``(object, what, target)`` for each link or dataset of the open h5py file ``f`` that makes
    libhdf5 read outside the file or that no weights file holds: an external link (``what`` =
    ``"external link"``: another HDF5 file), external storage (the raw bytes of any file:
    ``/etc/passwd``, ``/proc/self/environ``, ``/dev/zero``), a virtual dataset (datasets of other
    files), object or region references, and soft links (which can make a walk revisit a group
    without end). Links are walked without following soft or external ones and no data is read.

    Raises:
        CorruptFileError: more than ``limit`` links.
    """
    import h5py

    found: list[tuple[str, str, str]] = []
    seen = 0

    def visit(name: str, link: Any) -> bool | None:
        nonlocal seen
        seen += 1
        if seen > limit:
            return True  # stops the walk
        if isinstance(link, h5py.ExternalLink):
            found.append((name, "external link", f"{link.filename}:{link.path}"))
        elif isinstance(link, h5py.SoftLink):
            found.append((name, "soft link", link.path))
        else:
            obj = f.get(name)  # reached through hard links only, so this path stays in the file
            if isinstance(obj, h5py.Dataset):
                found.extend(_dataset_outside(h5py, name, obj))
        return None

    if f.visititems_links(visit):
        raise CorruptFileError(f"{f.filename}: more than {limit} HDF5 links; not a weights file")
    return found


def _dataset_outside(h5py: Any, name: str, ds: Any) -> list[tuple[str, str, str]]:
    out = []
    plist = ds.id.get_create_plist()
    if plist.get_external_count():
        target, _, _ = plist.get_external(0)
        out.append((name, "external storage", target.decode("utf-8", "replace")))
    if ds.is_virtual:
        sources = ds.virtual_sources()
        out.append((name, "virtual dataset", f"{sources[0].file_name}:{sources[0].dset_name}" if sources else "?"))
    dtypes = [ds.dtype] + [t for t, *_ in (ds.dtype.fields or {}).values()]
    if any(h5py.check_dtype(ref=t) is not None for t in dtypes):
        out.append((name, "object reference", str(ds.dtype)))
    return out


def refuse_outside(path: Path, f: Any) -> None:
    """Raise :class:`UnsafeCheckpointError` for the first object :func:`reaches_outside` finds, before
    any data is read: a reader reads weights stored in the file, never another file through it."""
    found = reaches_outside(f)
    if found:
        name, what, target = found[0]
        raise UnsafeCheckpointError(
            f"{path}: refused: HDF5 {what} {name!r} points at {target!r}, so reading it would read outside "
            "this file (or loop); Keras never writes these, re-save the weights with model.save_weights()")

"""Guards on HDF5 bytes that libhdf5 itself does not check."""

from __future__ import annotations

import contextlib
import mmap
import os
from pathlib import Path
from typing import Any

from weightkit.errors import CorruptFileError

__all__ = ["scan_global_heaps", "check_global_heaps"]


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

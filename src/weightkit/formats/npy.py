"""The ``.npy`` header, parsed and checked in one place for the numpy readers and the scanner.

An array is the magic ``\\x93NUMPY``, a version (1.0, 2.0 or 3.0), a 2-byte (1.0) or 4-byte
header length, a Python dict literal ``{'descr': …, 'fortran_order': …, 'shape': …}`` (latin-1;
UTF-8 in 3.0), then the data. The literal is read with :func:`ast.literal_eval`, never evaluated,
exactly as numpy's ``_read_array_header`` reads it: when that is a syntax error in a 1.0/2.0
header, the Python 2 ``L`` suffixes are dropped token by token (numpy's ``_filter_header``) and
the literal read again. An object
dtype is returned, not refused: its data is a pickle, which readers refuse and the scanner walks.
"""

from __future__ import annotations

import ast
import io
import math
import os
import tokenize
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.lib.format import descr_to_dtype

from weightkit.errors import CorruptFileError

__all__ = ["MAGIC", "MAX_HEADER_BYTES", "HEAD_BYTES", "NpyHeader", "looks_like", "parse", "pickle_start"]

MAGIC = b"\x93NUMPY"
MAX_HEADER_BYTES = 10_000  # numpy's own limit for np.load(allow_pickle=False) (format._MAX_HEADER_SIZE)
# numpy counts the limit in characters of the decoded header: a UTF-8 (3.0) one may have 4x the bytes
HEAD_BYTES = 12 + 4 * MAX_HEADER_BYTES  # enough of a file to hold any header parse() accepts
MAX_NDIM = 64  # numpy's limit
# np.load(allow_pickle=True) lifts numpy's header limit; the scanner follows an object array's
# header this far (a longer one is unreadable to it, and refused by every reader)
MAX_PICKLE_HEADER_BYTES = 1 << 20
_LAYOUT = {(1, 0): (2, "latin-1"), (2, 0): (4, "latin-1"), (3, 0): (4, "utf-8")}  # length bytes, encoding
_KEYS = {"descr", "fortran_order", "shape"}
_FIX = "the file is corrupt; re-download or re-save it"


@dataclass(frozen=True)
class NpyHeader:
    """A checked header; the data starts at byte ``data_start`` of the file (or zip member)."""

    version: tuple[int, int]
    dtype: np.dtype
    shape: tuple[int, ...]
    fortran_order: bool
    data_start: int

    @property
    def nbytes(self) -> int:
        """Bytes of data the header declares (for an object dtype the data is a pickle instead)."""
        return math.prod(self.shape) * self.dtype.itemsize


def looks_like(head: Any) -> bool:
    """Whether a file's first bytes are the ``.npy`` magic."""
    return head is not None and bytes(head[:6]) == MAGIC


def parse(name: str | os.PathLike, head: Any, size: int) -> NpyHeader:
    """The checked header of a ``.npy`` array of ``size`` bytes (a file or a zip member) that
    starts with ``head`` (at least the whole header: :data:`HEAD_BYTES` always suffice). Unless
    the dtype holds objects, the data must fill the rest exactly.

    Raises:
        CorruptFileError: one line: ``name``, the rule the array breaks, what to do.
    """
    head = bytes(head[:HEAD_BYTES])
    if len(head) < 8 or head[:6] != MAGIC:
        raise _error(name, "not a .npy array (bad magic number)")
    version = (head[6], head[7])
    if version not in _LAYOUT:
        raise _error(name, f".npy format version {version[0]}.{version[1]} (numpy reads 1.0, 2.0 and 3.0)")
    width, encoding = _LAYOUT[version]
    length = int.from_bytes(head[8:8 + width], "little")
    start = 8 + width + length
    too_long = f"; at most {MAX_HEADER_BYTES} characters are allowed"
    if length > MAX_HEADER_BYTES * (4 if encoding == "utf-8" else 1):  # before reading: numpy allocates it first
        raise _error(name, f"the .npy header declares {length} bytes{too_long}")
    if len(head) < start or size < start:
        raise _error(name, "the file ends inside its .npy header", "the file is truncated; re-download or re-save it")
    try:
        text = head[8 + width:start].decode(encoding)
    except UnicodeDecodeError:
        raise _error(name, f"bad .npy header (not {encoding} text)") from None
    if len(text) > MAX_HEADER_BYTES:
        raise _error(name, f"the .npy header has {len(text)} characters{too_long}")
    try:
        d = _literal(text, version)
        if type(d) is not dict or d.keys() != _KEYS:
            raise ValueError("not a dict of 'descr', 'fortran_order' and 'shape'")
        shape, fortran = d["shape"], d["fortran_order"]
        if type(shape) is not tuple or len(shape) > MAX_NDIM or not all(type(n) is int and n >= 0 for n in shape):
            raise ValueError(f"shape {shape!r:.80} is not a tuple of at most {MAX_NDIM} non-negative integers")
        if type(fortran) is not bool:
            raise ValueError(f"fortran_order {fortran!r:.20} is not True or False")
        dtype = descr_to_dtype(d["descr"])
    except (ValueError, SyntaxError, TypeError, KeyError, IndexError, OverflowError, RecursionError, MemoryError) as e:
        # ValueError covers bad text too; numpy's descr_to_dtype leaks the other errors
        detail = (str(e).splitlines() or [""])[0][:120]
        kind = "" if type(e) is ValueError else f"{type(e).__name__}: "
        raise _error(name, f"bad .npy header ({kind}{detail})") from None
    header = NpyHeader(version, dtype, shape, fortran, start)
    if not dtype.hasobject and start + header.nbytes != size:
        need, have = header.nbytes, size - start
        problem = "the data is truncated" if need > have else f"{have - need} trailing bytes after the data"
        need_s = str(need) if need < 1 << 64 else "more than 2**64"  # str() refuses 4300+ digits
        raise _error(name, f"the .npy header declares shape {shape!r:.80} of {str(dtype):.60} ({need_s} bytes) but {have} "
                     f"bytes follow it: {problem}")
    return header


def pickle_start(head: Any) -> int | None:
    """Where the pickle of an object array starts when ``np.load(allow_pickle=True)`` would
    unpickle it, also for a header :func:`parse` refuses: numpy then reads headers of any length
    (followed here up to :data:`MAX_PICKLE_HEADER_BYTES`), shapes of any integers and any number
    of axes, and unpickles the data before it looks at the shape. ``None`` when numpy would not
    unpickle anything (not an object array, or a header numpy itself refuses)."""
    head = bytes(head[:12 + MAX_PICKLE_HEADER_BYTES])
    if len(head) < 8 or head[:6] != MAGIC or (head[6], head[7]) not in _LAYOUT:
        return None
    version = (head[6], head[7])
    width, encoding = _LAYOUT[version]
    start = 8 + width + int.from_bytes(head[8:8 + width], "little")
    if start > len(head):
        return None
    try:
        d = _literal(head[8 + width:start].decode(encoding), version)
        if type(d) is not dict or d.keys() != _KEYS or type(d["shape"]) is not tuple:
            return None
        if not all(isinstance(n, int) for n in d["shape"]) or type(d["fortran_order"]) is not bool:
            return None
        return start if descr_to_dtype(d["descr"]).hasobject else None
    except (ValueError, SyntaxError, TypeError, KeyError, IndexError, OverflowError, RecursionError, MemoryError):
        return None


def _literal(text: str, version: tuple[int, int]) -> Any:
    """The header's dict literal, read without evaluating anything, as numpy reads it."""
    try:
        try:
            return ast.literal_eval(text)
        except SyntaxError:
            if version > (2, 0):
                raise
        return ast.literal_eval(_filter_header(text))
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError, tokenize.TokenError):
        # literal_eval's messages name AST nodes and their addresses; say what it means instead
        raise ValueError("not a literal of strings, numbers, tuples and lists") from None


def _filter_header(text: str) -> str:
    """Files written by Python 2 spell some integers ``3L``: numpy's ``_filter_header`` drops a
    NAME token ``L`` right after a NUMBER token (``3L``, ``3 L``, ``0x1FL``; never inside strings
    or comments) and untokenizes; the same tokens are dropped here."""
    tokens, after_number = [], False
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if after_number and tok.type == tokenize.NAME and tok.string == "L":
            continue  # numpy's loop, too, keeps ``after_number`` set: ``3L L`` loses both
        tokens.append(tok)
        after_number = tok.type == tokenize.NUMBER
    return tokenize.untokenize(tokens)


def _error(name: Any, problem: str, fix: str = _FIX) -> CorruptFileError:
    return CorruptFileError(f"{name}: {problem}; {fix}")

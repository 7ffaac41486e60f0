"""The safetensors header, parsed and checked in one place for the readers and the scanner.

A file is an 8-byte little-endian length ``n``, ``n`` bytes of UTF-8 JSON (an object: tensor name
→ ``{"dtype", "shape", "data_offsets"}``, plus an optional ``__metadata__`` of strings), then the
tensor bytes. :func:`parse` checks everything a reader trusts before it maps a byte: the length
(within the format's limit and the file), the JSON, every entry (a dtype weightkit reads, a shape
of at most 64 non-negative integers, two offsets whose span is exactly shape × itemsize), and that
the tensors tile the data: no overlap, no hole, no byte after the last one.
"""

from __future__ import annotations

import json
import os
import reprlib
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from weightkit import _dtypes
from weightkit.errors import CorruptFileError

__all__ = ["MAX_HEADER_BYTES", "MAX_NDIM", "TensorInfo", "Header", "looks_like", "parse", "read"]

MAX_HEADER_BYTES = 100_000_000  # the format's own limit (MAX_HEADER_SIZE of the safetensors crate)
MAX_NDIM = 64  # numpy's limit: a tensor with more axes could be listed but never read
_CORRUPT = "the file is corrupt; re-download or re-save it"
_short = reprlib.Repr()  # names and values from the file, quoted but bounded in a message
_short.maxstring, _short.maxother, _short.maxlist = 120, 60, 8


@dataclass(slots=True)  # not frozen: that costs 4x per tensor, and a header may list 100,000
class TensorInfo:
    """One tensor of a header; ``begin``/``end`` are byte offsets into the data, which starts at
    :attr:`Header.data_start` of the file."""

    name: str
    dtype: str  # weightkit's name ("bfloat16"), not the file's code ("BF16")
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class Header:
    """A checked header: the tensors in the file's order, ``__metadata__`` and where the data starts."""

    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    data_start: int


def looks_like(head: Any) -> bool:
    """Whether a file's first bytes start like safetensors: a length within the format's limit,
    then ``{``. Says nothing about the rest (:func:`parse` does)."""
    if head is None or len(head) < 10:
        return False
    (n,) = struct.unpack_from("<Q", head)
    return 2 <= n <= MAX_HEADER_BYTES and head[8:9] == b"{"


def parse(name: str | os.PathLike, data: Any, size: int) -> Header:
    """The checked header of a safetensors file of ``size`` bytes that starts with ``data``
    (bytes or a mapping holding at least the length and the header).

    Raises:
        CorruptFileError: one line: ``name``, the rule the file breaks, what to do.
    """
    n = _length(name, bytes(data[:8]), size)
    raw = bytes(data[8:8 + n])
    if len(raw) < n:
        raise _error(name, f"safetensors header declares {n} bytes but only {len(raw)} follow",
                     "the file is truncated, re-download or re-save it")
    return _checked(name, raw, size)


def read(path: Path) -> Header:
    """:func:`parse` of the file at ``path``, reading the length and the header only."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        n = _length(path, fh.read(8), size)
        raw = fh.read(n)
    if len(raw) < n:  # the file shrank since its size was read
        raise _error(path, f"the file ends inside its {n}-byte safetensors header", "re-download or re-save it")
    return _checked(path, raw, size)


def _line(e: Exception) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0][:120]


def _error(name: Any, problem: str, fix: str = _CORRUPT) -> CorruptFileError:
    return CorruptFileError(f"{name}: {problem}; {fix}")


def _length(name: Any, prefix: bytes, size: int) -> int:
    if len(prefix) < 8:
        raise _error(name, "truncated safetensors file (no header)", "re-download or re-save it")
    (n,) = struct.unpack("<Q", prefix)
    if n > MAX_HEADER_BYTES:
        raise _error(name, f"safetensors header declares {n} bytes, more than the format allows "
                     f"({MAX_HEADER_BYTES})")
    if 8 + n > size:
        raise _error(name, f"safetensors header declares {n} bytes but the file has {size}",
                     "the file is truncated or corrupt, re-download or re-save it")
    return n


def _checked(name: Any, raw: bytes, size: int) -> Header:
    if raw[:1] != b"{":
        raise _error(name, "safetensors header does not start with '{'")
    try:
        # strict UTF-8, as the format says (json.loads would also guess UTF-16/32 from bytes);
        # ValueError covers bad UTF-8, bad JSON and integers of more than 4300 digits
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique)
    except _Duplicate as e:
        raise _error(name, f"safetensors header names {_short.repr(e.key)} twice: loaders disagree on which "
                     "entry counts") from None
    except (ValueError, RecursionError) as e:
        raise _error(name, f"safetensors header is not valid JSON ({_line(e)})") from None
    if not isinstance(header, dict):
        raise _error(name, "safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(type(v) is str for v in metadata.values()):
        raise _error(name, "safetensors __metadata__ must map strings to strings")
    for text in (*header, *metadata, *metadata.values()):
        if not _unicode(text):  # JSON can escape a lone surrogate; the Rust loader refuses it
            raise _error(name, f"safetensors header holds a name that is not valid Unicode: {_short.repr(text)}")
    data_len = size - 8 - len(raw)
    tensors = {key: _entry(name, key, entry) for key, entry in header.items()}
    pos = 0  # tensors must tile the data exactly: no overlap, no hole, nothing after the last one
    for begin, end, key in sorted((t.begin, t.end, t.name) for t in tensors.values()):
        if begin < pos:
            raise _error(name, f"tensor {_short.repr(key)} overlaps the tensor before it")
        if begin > pos:
            raise _error(name, f"{_count(begin - pos)} unused bytes (a hole) before tensor {_short.repr(key)} "
                         f"at data offset {_count(pos)}")
        pos = end
    if pos > data_len:
        raise _error(name, f"tensor data end at byte {_count(pos)} but the file holds {data_len} data bytes",
                     "the file is truncated, re-download or re-save it")
    if pos < data_len:
        raise _error(name, f"{data_len - pos} trailing bytes after the last tensor's data",
                     "the file is corrupt or something was appended to it")
    return Header(tensors, metadata, 8 + len(raw))


class _Duplicate(ValueError):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _unique(pairs: list[tuple[str, Any]]) -> dict:
    """A JSON object whose keys are all distinct: ``json`` keeps the last of equal keys, other
    parsers the first or neither, so a header that repeats one means different tensors to each."""
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        raise _Duplicate(next(k for k, _ in pairs if k in seen or seen.add(k)))  # type: ignore[func-returns-value]
    return out


def _unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _count(n: int) -> str:
    """A number from the file for a message: JSON integers may have thousands of digits."""
    if abs(n) < 1 << 64:
        return str(n)
    return f"more than 2**{n.bit_length() - 1}" if n > 0 else f"less than -2**{n.bit_length() - 1}"


def _entry(name: Any, key: str, entry: Any) -> TensorInfo:
    """One ``name → {dtype, shape, data_offsets}`` entry, whose span matches its shape."""
    # one pass of cheap type checks (a header may list 100,000 tensors); _malformed says what is wrong
    if (type(entry) is dict and type(code := entry.get("dtype")) is str
            and (dtype := _dtypes.SAFETENSORS_CODES.get(code)) is not None
            and type(shape := entry.get("shape")) is list and len(shape) <= MAX_NDIM
            and type(offsets := entry.get("data_offsets")) is list and len(offsets) == 2
            and type(begin := offsets[0]) is int and type(end := offsets[1]) is int):
        numel = 1
        for d in shape:
            if type(d) is not int or d < 0:
                break
            numel *= d
        else:
            want = numel * _dtypes.itemsize(dtype)
            if not 0 <= begin <= end or end - begin != want:
                raise _error(name, f"tensor {_short.repr(key)} declares {_count(want)} bytes for shape "
                             f"{_short.repr(shape)} {dtype} but its byte range is {_count(begin)}..{_count(end)}")
            return TensorInfo(key, dtype, tuple(shape), begin, end)
    raise _error(name, f"malformed header entry for tensor {_short.repr(key)}: {_malformed(entry)}")


def _malformed(entry: Any) -> str:
    if type(entry) is not dict:
        return "not a JSON object"
    code, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if type(code) is not str or code not in _dtypes.SAFETENSORS_CODES:
        return f"unknown dtype {_short.repr(code)} (weightkit reads {', '.join(_dtypes.SAFETENSORS_CODES)})"
    if type(shape) is not list or len(shape) > MAX_NDIM or not all(type(d) is int and d >= 0 for d in shape):
        return f"shape {_short.repr(shape)} is not a list of at most {MAX_NDIM} non-negative integers"
    return f"data_offsets {_short.repr(offsets)} are not two integers"

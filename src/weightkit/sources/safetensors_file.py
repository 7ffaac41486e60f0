"""``.safetensors`` files and directories of shards with their ``*.safetensors.index.json``.

Only the JSON header is read on open; tensor bytes are memory-mapped and touched only when
asked. The header is parsed here (rather than through ``safetensors.safe_open``) because
weightkit needs the byte offsets for zero-copy chunked reads and raw bfloat16 access, and
validates the header against the file before trusting it.
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from weightkit import _dtypes
from weightkit.errors import CorruptFileError
from weightkit.sources._base import RawTensor, ReaderBase, model_order_key, register_reader

MAX_HEADER_BYTES = 100 << 20  # the format's own limit


def _sniff(path: Path, head: bytes | None) -> bool:
    if head is None or len(head) < 10:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 2 <= n <= MAX_HEADER_BYTES and head[8:9] == b"{"


def parse_header(path: Path) -> tuple[dict[str, dict], dict[str, str], int]:
    """Validated ``(tensors, metadata, data_start)`` of a safetensors file."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        prefix = fh.read(8)
        if len(prefix) < 8:
            raise CorruptFileError(f"{path}: truncated safetensors file (no header); re-download or re-save it")
        (n,) = struct.unpack("<Q", prefix)
        if n > MAX_HEADER_BYTES or 8 + n > size:
            raise CorruptFileError(
                f"{path}: safetensors header declares {n} bytes but the file has {size}; "
                "the file is truncated or corrupt, re-download or re-save it"
            )
        raw = fh.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise CorruptFileError(f"{path}: safetensors header is not valid JSON ({e}); the file is corrupt") from None
    if not isinstance(header, dict):
        raise CorruptFileError(f"{path}: safetensors header is not a JSON object; the file is corrupt")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CorruptFileError(f"{path}: safetensors __metadata__ must map strings to strings; the file is corrupt")
    data_len = size - 8 - n
    spans = []
    for name, info in header.items():
        _check_entry(path, name, info, data_len)
        spans.append((info["data_offsets"][0], info["data_offsets"][1], name))
    spans.sort()
    pos = 0  # tensors must tile the data exactly: no overlap, no hole, nothing after the last one
    for start, end, name in spans:
        if start < pos:
            raise CorruptFileError(f"{path}: tensor {name!r} overlaps the tensor before it; the file is corrupt")
        if start > pos:
            raise CorruptFileError(f"{path}: {start - pos} unused bytes (a hole) before tensor {name!r} at data "
                                   f"offset {pos}; the file is corrupt")
        pos = end
    if pos > data_len:
        raise CorruptFileError(
            f"{path}: tensor data end at byte {pos} but the file holds {data_len} data bytes; the file is truncated"
        )
    if pos < data_len:
        raise CorruptFileError(f"{path}: {data_len - pos} trailing bytes after the last tensor's data; "
                               "the file is corrupt or something was appended to it")
    return header, metadata, 8 + n


def _check_entry(path: Path, name: str, info: Any, data_len: int) -> None:
    ok = (
        isinstance(info, dict)
        and info.get("dtype") in _dtypes.SAFETENSORS_CODES
        and isinstance(info.get("shape"), list)
        and all(type(d) is int and d >= 0 for d in info["shape"])
        and isinstance(info.get("data_offsets"), list)
        and len(info["data_offsets"]) == 2
        and all(type(o) is int for o in info["data_offsets"])
    )
    if not ok:
        raise CorruptFileError(f"{path}: malformed header entry for tensor {name!r}; the file is corrupt")
    start, end = info["data_offsets"]
    dtype = _dtypes.SAFETENSORS_CODES[info["dtype"]]
    want = math.prod(info["shape"]) * _dtypes.itemsize(dtype)
    if not (0 <= start <= end) or end - start != want:
        raise CorruptFileError(
            f"{path}: tensor {name!r} declares {want} bytes for shape {info['shape']} {dtype} "
            f"but its byte range is {start}..{end}; the file is corrupt"
        )


_SMALL_READ = 1 << 20  # ranges up to this are read into memory rather than mapped


class _Shard:
    """One file's validated header; each read maps just the bytes it needs (or reads them, up to
    ``_SMALL_READ``), and the mapping goes away with the array, so resident memory stays bounded
    by what is in use."""

    def __init__(self, path: Path):
        self.path = path
        self.header, self.metadata, self.data_start = parse_header(path)

    def flat(self, name: str, start: int, stop: int) -> np.ndarray:
        info = self.header[name]
        dtype = _dtypes.DTYPES[_dtypes.SAFETENSORS_CODES[info["dtype"]]][1]
        if stop <= start:
            return np.empty(0, dtype=dtype)
        offset = self.data_start + info["data_offsets"][0] + start * dtype.itemsize
        nbytes = (stop - start) * dtype.itemsize
        if nbytes > _SMALL_READ:
            if offset + nbytes > os.path.getsize(self.path):
                raise self._truncated(name)
            return np.memmap(self.path, dtype=dtype, mode="r", offset=offset, shape=(stop - start,))
        # a bias or a norm: one read costs a tenth of setting up and tearing down a mapping
        fd = os.open(self.path, os.O_RDONLY)
        try:
            data = os.pread(fd, nbytes, offset)
        finally:
            os.close(fd)
        if len(data) != nbytes:
            raise self._truncated(name)
        return np.frombuffer(data, dtype=dtype)

    def _truncated(self, name: str) -> CorruptFileError:
        return CorruptFileError(f"{self.path}: the file ends inside tensor {name!r}: it was truncated "
                                "after it was opened; re-download or re-save it")

    def array(self, name: str) -> np.ndarray:
        shape = self.header[name]["shape"]
        return self.flat(name, 0, math.prod(shape)).reshape(shape)


class SafetensorsReader(ReaderBase):
    """One safetensors file (directories of shards: see ``sources/directory.py``)."""

    format = "safetensors"

    def __init__(self, path: Path):
        self.description = str(path)
        self._shards = [_Shard(path)]
        self._where: dict[str, _Shard] = {name: self._shards[0] for name in self._shards[0].header}

    def _aliases(self) -> dict[str, list[str]]:
        """``safetensors.torch.save_model`` drops tied tensors and records ``removed -> kept`` in metadata."""
        shard = self._shards[0]
        out: dict[str, list[str]] = {}
        for removed, kept in shard.metadata.items():
            if isinstance(kept, str) and kept in shard.header and removed not in shard.header:
                out.setdefault(kept, []).append(removed)
        return out

    def tensors(self) -> list[RawTensor]:
        # safetensors writers sort the header by dtype and name, so the file order carries no
        # meaning; see model_order_key
        aliases = self._aliases()
        out = []
        for name, shard in sorted(self._where.items(), key=lambda kv: model_order_key(kv[0])):
            info = shard.header[name]
            out.append(RawTensor(name, name, tuple(info["shape"]), _dtypes.SAFETENSORS_CODES[info["dtype"]],
                                 shared_with=tuple(aliases.get(name, ()))))
        return out

    def read(self, key: str) -> np.ndarray:
        return self._where[key].array(key)

    def read_flat(self, key: str, start: int, stop: int) -> np.ndarray:
        return self._where[key].flat(key, start, stop)

    def metadata(self) -> dict[str, Any]:
        aliased = {n for names in self._aliases().values() for n in names}
        return {k: v for k, v in self._shards[0].metadata.items() if k not in aliased}



register_reader("safetensors", suffixes=(".safetensors",), sniff=_sniff, description="safetensors file")(
    SafetensorsReader
)

"""``.safetensors`` files and directories of shards with their ``*.safetensors.index.json``.

Only the JSON header is read on open (parsed and checked against the file by
``formats.safetensors``, the scanner's parser too); tensor bytes are memory-mapped and touched
only when asked. ``safetensors.safe_open`` is not used because weightkit needs the byte offsets
for zero-copy chunked reads and raw bfloat16 access.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from weightkit import _dtypes
from weightkit.errors import CorruptFileError, UnsafeCheckpointError
from weightkit.formats import safetensors
from weightkit.scanner import file_formats
from weightkit.sources._base import RawTensor, ReaderBase, model_order_key, register_reader


def _sniff(path: Path, head: bytes | None) -> bool:
    return safetensors.looks_like(head)


_SMALL_READ = 1 << 20  # ranges up to this are read into memory rather than mapped


class _Shard:
    """One file's validated header; each read maps just the bytes it needs (or reads them, up to
    ``_SMALL_READ``), and the mapping goes away with the array, so resident memory stays bounded
    by what is in use."""

    def __init__(self, path: Path):
        self.path = path
        header = safetensors.read(path)
        formats = file_formats(path)
        if len(formats) > 1:  # its tensor bytes make it another file for other loaders (a polyglot)
            raise UnsafeCheckpointError(
                f"{path}: refused: the file is at once {' and '.join(formats)}, so loaders that take it for another "
                f"format read other content than its tensors (a polyglot); run `weightkit scan {path}` for details")
        self.header: dict[str, safetensors.TensorInfo] = header.tensors
        self.metadata: dict[str, str] = header.metadata
        self.data_start = header.data_start

    def flat(self, name: str, start: int, stop: int) -> np.ndarray:
        info = self.header[name]
        dtype = _dtypes.DTYPES[info.dtype][1]
        if stop <= start:
            return np.empty(0, dtype=dtype)
        offset = self.data_start + info.begin + start * dtype.itemsize
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
        shape = self.header[name].shape
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
            out.append(RawTensor(name, name, info.shape, info.dtype, shared_with=tuple(aliases.get(name, ()))))
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

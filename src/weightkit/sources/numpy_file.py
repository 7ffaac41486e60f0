"""NumPy ``.npz`` archives and ``.npy`` arrays, never with ``allow_pickle``.

Headers are parsed by ``formats.npy`` (the scanner's parser too), and the data is read from
there: a ``.npy`` file is memory-mapped, an ``.npz`` member read when asked.
"""

from __future__ import annotations

import math
import os
import zipfile
import zlib
from pathlib import Path
from typing import Any, Literal

import numpy as np

from weightkit import _dtypes
from weightkit.errors import CorruptFileError, UnsafeCheckpointError
from weightkit.formats import npy
from weightkit.sources._base import RawTensor, ReaderBase, register_reader

_ZIP_ERRORS = (OSError, zipfile.BadZipFile, EOFError, zlib.error, NotImplementedError, RuntimeError)


def _sniff_npz(path: Path, head: bytes | None) -> bool:
    if head is None or not head.startswith(b"PK\x03\x04"):
        return False
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    return bool(names) and all(n.endswith(".npy") for n in names)


def _sniff_npy(path: Path, head: bytes | None) -> bool:
    return npy.looks_like(head)


def _dtype_name(path: Path, name: str, dtype: np.dtype) -> str:
    if dtype.hasobject:
        raise UnsafeCheckpointError(
            f"{path}: array {name!r} holds Python objects, which only a pickle can load and weightkit never "
            "unpickles; save numeric arrays only (np.savez with numbers)"
        )
    try:
        return _dtypes.from_numpy(dtype)
    except KeyError:
        raise CorruptFileError(f"{path}: array {name!r} has dtype {dtype}, which is not a weight dtype") from None


def _order(header: npy.NpyHeader) -> Literal["C", "F"]:
    return "F" if header.fortran_order else "C"


class NpzReader(ReaderBase):
    format = "npz"

    def __init__(self, path: Path):
        self.path = path
        self.description = str(path)
        try:
            self._zip = zipfile.ZipFile(path)
        except _ZIP_ERRORS as e:
            raise CorruptFileError(f"{path}: not a readable .npz archive ({e}); the file may be truncated") from None
        try:
            self._infos: dict[str, tuple[zipfile.ZipInfo, npy.NpyHeader]] = {}
            for info in self._zip.infolist():
                name = info.filename.removesuffix(".npy")
                if name == info.filename or name in self._infos:
                    raise CorruptFileError(f"{path}: member {info.filename!r} is not a .npy array or is listed twice; "
                                           "an .npz holds one .npy member per array")
                self._infos[name] = (info, self._header(name, info))
        except BaseException:
            self._zip.close()
            raise

    def _header(self, name: str, info: zipfile.ZipInfo) -> npy.NpyHeader:
        try:
            with self._zip.open(info) as fh:
                head = fh.read(npy.HEAD_BYTES)
        except _ZIP_ERRORS as e:
            raise CorruptFileError(f"{self.path}: array {name!r} cannot be read ({e}); the file is corrupt") from None
        # the header's size must be the member's (numpy allocates the whole array before reading it);
        # the declared size, which deflate cannot inflate more than ~1032-fold, then bounds memory
        header = npy.parse(f"{self.path}: array {name!r}", head, info.file_size)
        if info.compress_type == zipfile.ZIP_DEFLATED and info.file_size > 1032 * info.compress_size + 1024:
            raise CorruptFileError(f"{self.path}: array {name!r} declares {info.file_size} bytes in a member of "
                                   f"{info.compress_size} compressed bytes, more than deflate can hold; the file is corrupt")
        return header

    def tensors(self) -> list[RawTensor]:
        out = []
        for name, (_, header) in self._infos.items():
            out.append(RawTensor(name, name, header.shape, _dtype_name(self.path, name, header.dtype)))
        return out

    def read(self, key: str) -> np.ndarray:
        info, header = self._infos[key]
        dtype = _dtype_name(self.path, key, header.dtype)
        try:
            with self._zip.open(info) as fh:
                fh.read(header.data_start)
                data = fh.read()  # to the end, so that zipfile checks the CRC
        except _ZIP_ERRORS as e:
            raise CorruptFileError(f"{self.path}: array {key!r} cannot be read ({e}); the file is corrupt") from None
        if len(data) != header.nbytes:
            raise CorruptFileError(f"{self.path}: array {key!r} holds {len(data)} data bytes, its header declares "
                                   f"{header.nbytes}; the file is corrupt")
        arr = np.frombuffer(data, dtype=header.dtype).reshape(header.shape, order=_order(header))
        return _dtypes.raw_view(arr, dtype)

    def close(self) -> None:
        self._zip.close()


class NpyReader(ReaderBase):
    format = "npy"

    def __init__(self, path: Path):
        self.path = path
        self.description = str(path)
        try:
            with open(path, "rb") as fh:
                header = npy.parse(path, fh.read(npy.HEAD_BYTES), os.fstat(fh.fileno()).st_size)
        except OSError as e:
            raise CorruptFileError(f"{path}: not a readable .npy file ({e}); the file may be truncated") from None
        self._dtype = _dtype_name(path, path.stem, header.dtype)  # refuses object arrays before mapping
        self._header = header
        # an empty array maps nothing, and numpy cannot even index some empty shapes ([2**63, 0])
        self._arr = np.memmap(path, dtype=header.dtype, mode="r", offset=header.data_start, shape=header.shape,
                              order=_order(header)) if math.prod(header.shape) else None

    def tensors(self) -> list[RawTensor]:
        return [RawTensor(self.path.stem, self.path.stem, tuple(self._header.shape), self._dtype)]

    def read(self, key: str) -> np.ndarray:
        return np.empty(self._header.shape, self._header.dtype) if self._arr is None else self._arr

    def metadata(self) -> dict[str, Any]:
        return {}


register_reader("npz", suffixes=(".npz",), sniff=_sniff_npz, description="NumPy .npz archive")(NpzReader)
register_reader("npy", suffixes=(".npy",), sniff=_sniff_npy, description="NumPy .npy array")(NpyReader)

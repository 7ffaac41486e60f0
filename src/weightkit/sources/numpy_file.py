"""NumPy ``.npz`` archives and ``.npy`` arrays, never with ``allow_pickle``."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .. import _dtypes
from ..errors import CorruptFileError, UnsafeCheckpointError
from ._base import RawTensor, ReaderBase, register_reader

_NPY_MAGIC = b"\x93NUMPY"


def _sniff_npz(path: Path, head: bytes | None) -> bool:
    if head is None or not head.startswith(b"PK\x03\x04"):
        return False
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    return bool(names) and all(n.endswith(".npy") for n in names)


def _sniff_npy(path: Path, head: bytes | None) -> bool:
    return head is not None and head.startswith(_NPY_MAGIC)


def _read_header(fh) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from a .npy header, without reading the data."""
    version = np.lib.format.read_magic(fh)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read(fh)
    return tuple(shape), dtype


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


class NpzReader(ReaderBase):
    format = "npz"

    def __init__(self, path: Path):
        self.path = path
        self.description = str(path)
        try:
            self._npz = np.load(path, allow_pickle=False, mmap_mode="r")
            self._infos = {}
            for name in self._npz.files:
                self._infos[name] = self._header(name)
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
            raise CorruptFileError(f"{path}: not a readable .npz archive ({e}); the file may be truncated") from None

    def _header(self, name: str) -> tuple[tuple[int, ...], np.dtype]:
        with self._npz.zip.open(f"{name}.npy") as fh:
            return _read_header(fh)

    def tensors(self) -> list[RawTensor]:
        out = []
        for name, (shape, dtype) in self._infos.items():
            out.append(RawTensor(name, name, shape, _dtype_name(self.path, name, dtype)))
        return out

    def read(self, key: str) -> np.ndarray:
        try:
            arr = self._npz[key]
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
            raise CorruptFileError(f"{self.path}: array {key!r} cannot be read ({e}); the file is corrupt") from None
        return _dtypes.raw_view(arr, _dtype_name(self.path, key, arr.dtype))

    def close(self) -> None:
        self._npz.close()


class NpyReader(ReaderBase):
    format = "npy"

    def __init__(self, path: Path):
        self.path = path
        self.description = str(path)
        try:
            with open(path, "rb") as fh:
                _dtype_name(path, path.stem, _read_header(fh)[1])  # refuses object arrays before loading
            self._arr = np.load(path, allow_pickle=False, mmap_mode="r")
        except ValueError as e:
            raise CorruptFileError(f"{path}: not a readable .npy file ({e}); the file may be truncated") from None
        except (OSError, EOFError) as e:
            raise CorruptFileError(f"{path}: not a readable .npy file ({e}); the file may be truncated") from None
        self._dtype = _dtype_name(path, path.stem, self._arr.dtype)

    def tensors(self) -> list[RawTensor]:
        return [RawTensor(self.path.stem, self.path.stem, tuple(self._arr.shape), self._dtype)]

    def read(self, key: str) -> np.ndarray:
        return self._arr

    def metadata(self) -> dict[str, Any]:
        return {}


register_reader("npz", suffixes=(".npz",), sniff=_sniff_npz, description="NumPy .npz archive")(NpzReader)
register_reader("npy", suffixes=(".npy",), sniff=_sniff_npy, description="NumPy .npy array")(NpyReader)

"""NumPy ``.npz`` archives and ``.npy`` arrays, never with ``allow_pickle``."""

from __future__ import annotations

import io
import math
import tokenize
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from weightkit import _dtypes
from weightkit.errors import CorruptFileError, UnsafeCheckpointError
from weightkit.sources._base import RawTensor, ReaderBase, register_reader

_NPY_MAGIC = b"\x93NUMPY"
_MAX_HEADER = 1 << 16


def _sniff_npz(path: Path, head: bytes | None) -> bool:
    if head is None or not head.startswith(b"PK\x03\x04"):
        return False
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    return bool(names) and all(n.endswith(".npy") for n in names)


def _sniff_npy(path: Path, head: bytes | None) -> bool:
    return head is not None and head.startswith(_NPY_MAGIC)


def _read_header(fh) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from a .npy header, without reading the data; ``fh`` ends at the data."""
    head = fh.read(8)
    if len(head) < 8 or head[:6] != _NPY_MAGIC or head[6] not in (1, 2, 3):
        raise ValueError("not a .npy array (bad magic number or version)")
    size = fh.read(2 if head[6] == 1 else 4)
    length = int.from_bytes(size, "little")
    if len(size) < (2 if head[6] == 1 else 4) or length > _MAX_HEADER:  # numpy would allocate it first
        raise ValueError(f"the header declares {length} bytes; at most {_MAX_HEADER} are allowed")
    buf = io.BytesIO(head + size + fh.read(length))
    try:
        np.lib.format.read_magic(buf)
        read = np.lib.format.read_array_header_1_0 if head[6] == 1 else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(buf)
    except (SyntaxError, tokenize.TokenError, TypeError, KeyError, OverflowError) as e:  # numpy's parser leaks these
        raise ValueError(f"bad .npy header ({type(e).__name__}: {e})") from None
    if any(d < 0 for d in shape):
        raise ValueError(f"negative dimension in shape {tuple(shape)}")
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
        info = self._npz.zip.getinfo(f"{name}.npy")
        with self._npz.zip.open(info) as fh:
            shape, dtype = _read_header(fh)
            start = fh.tell()
        # numpy allocates the whole array before reading it: the member must really hold it
        # (its declared size, which deflate cannot inflate more than ~1032-fold, bounds memory)
        need = start + math.prod(shape) * dtype.itemsize
        if dtype.hasobject:
            return shape, dtype  # refused with its own message when listed
        if need != info.file_size or (info.compress_type == zipfile.ZIP_DEFLATED
                                      and info.file_size > 1032 * info.compress_size + 1024):
            raise CorruptFileError(f"{self.path}: array {name!r} declares shape {shape} {dtype} ({need} bytes) but its "
                                   f"member holds {info.file_size} bytes ({info.compress_size} compressed); "
                                   "the file is corrupt")
        return shape, dtype

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
                shape, dtype = _read_header(fh)
                _dtype_name(path, path.stem, dtype)  # refuses object arrays before loading
                need = fh.tell() + math.prod(shape) * dtype.itemsize
            if need > path.stat().st_size:  # numpy's memmap overflows on absurd shapes
                raise ValueError(f"shape {shape} {dtype} needs {need} bytes, the file has {path.stat().st_size}")
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

"""A directory of weights: shards listed by a ``*.index.json`` (Hugging Face style), or the
weight files in it, presented as one set of tensors. Each shard is opened by its own reader."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CorruptFileError, SourceNotFoundError
from ._base import RawTensor, ReaderBase, model_order_key, register_reader

# file patterns tried in order when a directory has no index; the first that matches wins,
# so a repository holding both safetensors and .bin copies of a model is read once
_WEIGHT_GLOBS = ("*.safetensors", "pytorch_model*.bin", "*.pt", "*.pth", "*.ckpt", "*.bin", "*.npz",
                 "*.keras", "*.weights.h5")


def _sniff(path: Path, head: bytes | None) -> bool:
    return head is None


def _inside(name: Any, index_path: Path) -> str:
    """A shard name from an index, refused unless it is a relative path inside the directory
    (no absolute path, no ``..``): an index must not make weightkit open files elsewhere.
    Symlinks inside the directory are followed (the Hugging Face cache links shards to blobs)."""
    parts = Path(name).parts if isinstance(name, str) and name else ()
    if not parts or Path(name).is_absolute() or ".." in parts or "\0" in name:
        raise CorruptFileError(f"{index_path}: shard {name!r} is not a file name inside the directory; "
                               "a shard index lists files next to it")
    return name


def _shard_files(path: Path) -> tuple[list[Path], dict[str, Any]]:
    indexes = sorted(path.glob("*.index.json"), key=lambda p: (".safetensors." not in p.name, p.name))
    if indexes:
        index_path = indexes[0]
        try:
            index = json.loads(index_path.read_text())
            names = list(dict.fromkeys(index["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
            raise CorruptFileError(f"{index_path}: not a valid shard index ({e}); re-download it") from None
        files = [path / _inside(f, index_path) for f in names]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise SourceNotFoundError(
                f"{path}: index {index_path.name} lists shards that are missing ({', '.join(missing[:3])}); "
                "download every shard"
            )
        return sorted(files), {"index": index_path.name, **({"index_metadata": index["metadata"]}
                                                             if index.get("metadata") else {})}
    for pattern in _WEIGHT_GLOBS:
        files = sorted(p for p in path.glob(pattern) if p.is_file())
        if files:
            return files, {}
    raise SourceNotFoundError(
        f"{path}: directory holds no weights weightkit can read (looked for an *.index.json and for "
        f"{', '.join(_WEIGHT_GLOBS)}); pass a weights file or a directory of shards"
    )


@register_reader("directory", sniff=_sniff, description="directory of shards (with or without *.index.json)")
class DirectoryReader(ReaderBase):
    format = "directory"

    def __init__(self, path: Path):
        from . import open_reader

        self.description = str(path)
        files, self._meta = _shard_files(path)
        self._shards = [open_reader(f) for f in files]
        self._where: dict[str, tuple[ReaderBase, RawTensor]] = {}
        self._tensors: list[RawTensor] = []
        for shard in self._shards:
            for raw in shard.tensors():
                if raw.name not in self._where:
                    self._where[raw.name] = (shard, raw)
                    self._tensors.append(raw)
        formats = sorted({s.format for s in self._shards})
        if formats == ["safetensors"]:
            self._tensors.sort(key=lambda raw: model_order_key(raw.name))
        self.format = f"{formats[0]}-sharded" if len(formats) == 1 and len(files) > 1 else "+".join(formats)
        self._meta["shards"] = [f.name for f in files]

    def tensors(self) -> list[RawTensor]:
        return [replace(raw, key=raw.name) for raw in self._tensors]

    def read(self, key: str) -> np.ndarray:
        shard, raw = self._where[key]
        return shard.read(raw.key)

    def read_flat(self, key: str, start: int, stop: int) -> np.ndarray:
        shard, raw = self._where[key]
        return shard.read_flat(raw.key, start, stop)

    def read_torch(self, key: str):
        shard, raw = self._where[key]
        return shard.read_torch(raw.key)

    def metadata(self) -> dict[str, Any]:
        meta = dict(self._meta)
        for shard in self._shards:
            for k, v in shard.metadata().items():
                meta.setdefault(k, v)
        return meta

    def close(self) -> None:
        for shard in self._shards:
            shard.close()

"""A directory of weights: shards listed by a ``*.index.json`` (Hugging Face style) or a Keras
``*.weights.json``, or the weight files in it, presented as one set of tensors; and such an index
file opened by itself. Each shard is opened by its own reader."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from weightkit.errors import SourceNotFoundError
from weightkit.formats.shard_index import index_shards, looks_like_index
from weightkit.sources import open_reader
from weightkit.sources._base import RawTensor, Reader, ReaderBase, model_order_key, register_reader
from weightkit.sources.keras_file import keras_shards

# file patterns tried in order when a directory has no index; the first that matches wins,
# so a repository holding both safetensors and .bin copies of a model is read once
_WEIGHT_GLOBS = ("*.safetensors", "pytorch_model*.bin", "*.pt", "*.pth", "*.ckpt", "*.bin", "*.npz",
                 "*.keras", "*.weights.h5")




def _sniff(path: Path, head: bytes | None) -> bool:
    return head is None


def _shard_files(path: Path) -> tuple[list[Path], dict[str, Any]]:
    indexes = sorted(path.glob("*.index.json"), key=lambda p: (".safetensors." not in p.name, p.name))
    indexes += sorted(path.glob("*.weights.json"))
    if indexes:
        return index_shards(indexes[0])
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
        self.description = str(path)
        self._open_shards(*_shard_files(path))

    def _open_shards(self, files: list[Path], meta: dict[str, Any]) -> None:
        self._meta = meta
        self._shards: list[Reader]
        if meta.get("index", "").endswith(".weights.json"):  # Keras: one model's variables spread over files
            self._shards = list(keras_shards(files))
        else:
            self._shards = [open_reader(f) for f in files]
        self._where: dict[str, tuple[Reader, RawTensor]] = {}
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


def _sniff_index(path: Path, head: bytes | None) -> bool:
    return head is not None and looks_like_index(head)


@register_reader("shard-index", suffixes=(".index.json", ".weights.json"), sniff=_sniff_index,
                 description="shard index (*.safetensors.index.json, Keras *.weights.json) with its shards")
class ShardIndexReader(DirectoryReader):
    """A shard index file: the shards it lists, next to it, as one set of tensors."""

    def __init__(self, path: Path):
        self.description = str(path)
        self._open_shards(*index_shards(path))

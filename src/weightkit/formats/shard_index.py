"""Shard indexes: the JSON ``weight_map`` that lists a sharded checkpoint's files (Hugging Face
``*.index.json``, Keras ``*.weights.json``), parsed with the path checks every reader and the
scanner share."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from weightkit.errors import CorruptFileError, SourceNotFoundError

__all__ = ["index_shards", "looks_like_index"]

_MAX_INDEX_BYTES = 64 << 20  # the index of a 1-trillion-parameter model is a few MB


def _inside(name: Any, index_path: Path) -> str:
    """A shard name from an index, refused unless it is a relative path inside the directory
    (no absolute path, no ``..``): an index must not make weightkit open files elsewhere.
    Symlinks inside the directory are followed (the Hugging Face cache links shards to blobs)."""
    parts = Path(name).parts if isinstance(name, str) and name else ()
    if not parts or Path(name).is_absolute() or ".." in parts or "\0" in name:
        raise CorruptFileError(f"{index_path}: shard {name!r} is not a file name inside the directory; "
                               "a shard index lists files next to it")
    return name


def index_shards(index_path: Path) -> tuple[list[Path], dict[str, Any]]:
    """The shards a ``weight_map`` index lists, next to it: Hugging Face ``*.index.json`` (tensor
    name → file) or Keras ``*.weights.json`` (variable path → list of files)."""
    try:
        size = index_path.stat().st_size
        if size > _MAX_INDEX_BYTES:
            raise ValueError(f"{size} bytes, more than an index of any real model")
        index = json.loads(index_path.read_text())
        names: list[Any] = []
        for value in index["weight_map"].values():
            names.extend(value if isinstance(value, list) else [value])
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
        raise CorruptFileError(f"{index_path}: not a valid shard index ({e}); re-download it") from None
    names = list(dict.fromkeys(_inside(n, index_path) for n in names))
    nested = [n for n in names if n.lower().endswith(".json")]
    if nested:
        raise CorruptFileError(f"{index_path}: lists {nested[0]!r} as a shard; shards hold weights, not another index")
    if not names:
        raise CorruptFileError(f"{index_path}: the shard index lists no shards; re-download it")
    files = [index_path.parent / f for f in names]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise SourceNotFoundError(
            f"{index_path.parent}: index {index_path.name} lists shards that are missing "
            f"({', '.join(missing[:3])}); download every shard"
        )
    meta = index.get("metadata") if isinstance(index, dict) else None
    return sorted(files), {"index": index_path.name, **({"index_metadata": meta} if meta else {})}


def looks_like_index(head: bytes) -> bool:
    """The first bytes of a JSON shard index (a ``weight_map`` object)."""
    return head.lstrip()[:1] == b"{" and b'"weight_map"' in head

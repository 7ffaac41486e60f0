"""Saving weights: streamed, atomic, hashed safetensors (:func:`save`, and the writer that
pruning and quantisation use too).

Files are written by weightkit's own streaming safetensors writer: the header (whose length is
known in advance, hashes included, because a sha256 is always 64 hex digits) goes first as a
placeholder, then each tensor's raw bytes chunk by chunk while they are hashed, then the final
header over the placeholder. So a checkpoint of any size is written with memory for one chunk,
and the result is a standard safetensors file (``safetensors.safe_open`` and
``safetensors.torch.load_file`` read it).

Metadata (all strings, as safetensors requires): ``weightkit.framework``,
``weightkit.source``, ``weightkit.version``, ``weightkit.sha256`` (a JSON object: tensor name
-> sha256 of its stored bytes), ``format: pt`` for PyTorch weights (what transformers expects),
any ``metadata=`` the caller passes, and one ``alias: kept`` entry per tied tensor, exactly as
``safetensors.torch.save_model`` records them (tied tensors are stored once).
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from weightkit import _dtypes
from weightkit._atomic import atomic_write, check_writable
from weightkit._version import __version__
from weightkit.core.opening import open as _open
from weightkit.core.weightset import WeightSet
from weightkit.edits import _backend
from weightkit.edits._compress import ranged_reader
from weightkit.errors import UnsupportedFormatError, WeightkitError
from weightkit.sources.mapping import MappingReader

__all__ = ["save", "Entry", "write_safetensors", "weight_entry", "base_metadata",
           "open_source"]

HASH_KEY = "weightkit.sha256"
KERAS_ORDER_KEY = "weightkit.keras_order"
CHUNK_BYTES = 16 << 20
_CODES = {name: code for code, name in _dtypes.SAFETENSORS_CODES.items()}


# --- the streaming writer ------------------------------------------------------------------

@dataclass
class Entry:
    """One tensor to write: ``produce()`` yields its raw storage as flat C-order chunks."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    produce: Callable[[], Iterable[np.ndarray]]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * _dtypes.itemsize(self.dtype)


def _is_utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _header(entries: list[Entry], metadata: dict[str, str]) -> bytes:
    head: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    pos = 0
    for e in entries:
        head[e.name] = {"dtype": _CODES[e.dtype], "shape": list(e.shape), "data_offsets": [pos, pos + e.nbytes]}
        pos += e.nbytes
    try:
        raw = json.dumps(head, separators=(",", ":"), ensure_ascii=False).encode()
    except UnicodeEncodeError:
        # a name read from a pickle or a JSON escape can hold a lone surrogate, which UTF-8 cannot encode
        bad = next(s for s in (*(e.name for e in entries), *metadata, *metadata.values()) if not _is_utf8(s))
        raise UnsupportedFormatError(f"{bad!r} is not valid Unicode (it holds a lone surrogate), and a safetensors "
                                     "header is UTF-8; rename it before saving") from None
    raw += b" " * (-(8 + len(raw)) % 8)  # data starts 8-byte aligned, as safetensors writes it
    return struct.pack("<Q", len(raw)) + raw


def write_safetensors(path: str | Path, entries: list[Entry], metadata: dict[str, str] | None = None, *,
                      first: tuple[str, str] | None = None) -> dict[str, str]:
    """Write ``entries`` as one safetensors file, atomically, with a sha256 per tensor.

    ``first`` is a metadata item put at the head of the header (so a sniffer finds it in the
    first bytes). Returns ``{name: sha256}``.
    """
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise WeightkitError(f"{path}: tensor names repeat ({', '.join(dup[:3])}); every name must be unique")
    for e in entries:
        if e.dtype not in _CODES:
            raise WeightkitError(f"{path}: tensor {e.name!r} has dtype {e.dtype}, which safetensors cannot store")
    meta: dict[str, str] = dict([first]) if first else {}
    meta.update({k: v for k, v in (metadata or {}).items() if k != HASH_KEY})
    hashes = {e.name: "0" * 64 for e in entries}
    meta[HASH_KEY] = json.dumps(hashes, separators=(",", ":"))
    placeholder = _header(entries, meta)
    with atomic_write(path) as fh:
        fh.write(placeholder)
        for e in entries:
            h = hashlib.sha256()
            written = 0
            for chunk in e.produce():
                buf = np.ascontiguousarray(chunk)
                if buf.dtype.byteorder == ">":
                    buf = buf.astype(buf.dtype.newbyteorder("<"))
                h.update(buf.data)
                fh.write(buf.data)
                written += buf.nbytes
            if written != e.nbytes:
                raise WeightkitError(f"{path}: tensor {e.name!r} produced {written} bytes, expected {e.nbytes}; "
                                     "nothing was written")
            hashes[e.name] = h.hexdigest()
        meta[HASH_KEY] = json.dumps(hashes, separators=(",", ":"))
        final = _header(entries, meta)
        assert len(final) == len(placeholder)
        fh.seek(0)
        fh.write(final)
    return hashes


def weight_entry(w, *, name: str | None = None, chunk_bytes: int = CHUNK_BYTES) -> Entry:
    """An :class:`Entry` streaming a :class:`weightkit.Weight`'s raw storage unchanged."""

    def produce():
        read = ranged_reader(w)
        step = max(1, chunk_bytes // max(1, _dtypes.itemsize(w.dtype)))
        for start in range(0, w.numel, step):
            yield read(start, min(w.numel, start + step))

    return Entry(name or w.name, w.dtype, tuple(w.shape), produce)


# --- sources -------------------------------------------------------------------------------

def _keras_state(model) -> dict[str, np.ndarray]:
    import keras

    out: dict[str, np.ndarray] = {}
    for v in model.weights:
        out[v.path] = np.asarray(keras.ops.convert_to_numpy(v))
    if not out:
        raise WeightkitError(f"Keras model {model.name!r} has no weights (is it built?); call it on data first")
    return out


def open_source(obj: Any):
    """``(WeightSet, framework, owned)`` for anything weightkit reads (``owned``: close it after)."""

    if isinstance(obj, WeightSet):
        ws, owned = obj, False
    elif _backend.is_keras(obj):
        try:  # a Keras reader gives layer kinds and axes; without one, the variables by path
            ws = _open(obj)
        except UnsupportedFormatError:
            ws = _open(_keras_state(obj))
        return ws, "keras", True
    else:
        ws, owned = _open(obj), True
    return ws, _framework(ws), owned


def _framework(ws) -> str:
    fmt = ws.format
    if fmt.startswith(("torch", "pytorch")):
        return "pytorch"
    if fmt.startswith("keras"):
        return "keras"
    if fmt.startswith("numpy"):
        return "numpy"
    meta = ws.metadata if fmt.startswith(("safetensors", "weightkit")) else {}
    if meta.get("weightkit.framework"):
        return str(meta["weightkit.framework"])
    if meta.get("format") == "pt":
        return "pytorch"
    if fmt == "state-dict":
        first = next(iter(ws), None)
        reader = getattr(first, "_reader", None)
        if first is not None and isinstance(reader, MappingReader):
            v = reader._items[first._key]
            return "numpy" if isinstance(v, np.ndarray) else "pytorch"
    return "unknown"


def base_metadata(ws, framework: str, extra: dict[str, str] | None = None, *, carry: bool = False) -> dict[str, str]:
    """The metadata weightkit writes: framework, source, version, aliases of tied tensors, the
    caller's entries; with ``carry=True`` also the source's own string metadata."""

    meta: dict[str, str] = {}
    if carry:
        for k, v in ws.metadata.items():
            if isinstance(k, str) and isinstance(v, str) and not k.startswith("weightkit."):
                meta[k] = v
    if framework == "pytorch":
        meta.setdefault("format", "pt")
    meta["weightkit.framework"] = framework
    meta["weightkit.source"] = ws.source
    meta["weightkit.version"] = __version__
    for w in ws:
        for alias in w.shared_with:
            meta[alias] = w.name
    for k, v in (extra or {}).items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise WeightkitError(f"metadata must map strings to strings (safetensors stores only strings); "
                                 f"received {k!r}: {type(v).__name__}")
        meta[k] = v
    return meta


# --- save ----------------------------------------------------------------------------------

def save(model_or_weights: Any, path: str | Path, *, metadata: dict[str, str] | None = None) -> Path:
    """Save weights as a safetensors file, atomically, with a sha256 per tensor.

    Args:
        model_or_weights: a live ``torch.nn.Module``, a Keras model, a state dict, a
            ``WeightSet``, or a path to any checkpoint weightkit opens (streamed tensor by
            tensor: memory for one chunk, whatever the checkpoint's size).
        path: the file to write. It is replaced only once the new file is complete.
        metadata: extra string entries for the safetensors header.

    Returns:
        ``path`` as a ``Path``. Tied tensors are stored once, with ``alias: kept`` metadata
        as ``safetensors.torch.save_model`` writes it.

    Raises:
        WeightkitError: unreadable source, unwritable path, non-string metadata.

    Example:
        >>> import tempfile, torch, weightkit
        >>> net = torch.nn.Linear(3, 2)
        >>> p = weightkit.save(net, tempfile.mkdtemp() + "/net.safetensors")
        >>> weightkit.verify(p).ok
        True
    """
    path = check_writable(path)
    ws, framework, owned = open_source(model_or_weights)
    try:
        meta = base_metadata(ws, framework, metadata)
        if framework == "keras" and _backend.is_keras(model_or_weights):
            # Keras paths hold auto-generated layer names (dense_3): record the model's order so
            # load_into can match a fresh instance of the same architecture by position
            meta[KERAS_ORDER_KEY] = json.dumps([v.path for v in model_or_weights.weights])
        entries = [weight_entry(w) for w in ws]
        if not entries:
            raise WeightkitError(f"{ws.source}: holds no tensors; nothing to save")
        write_safetensors(path, entries, meta)
    finally:
        if owned:
            ws.close()
    return path

"""Saving weights (streamed, atomic, hashed safetensors), loading them into a live model, and
checking a saved file's hashes.

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
from dataclasses import asdict, dataclass, field
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
from weightkit.errors import CorruptFileError, UnsupportedFormatError, WeightkitError
from weightkit.sources._base import module_loaded, sniff_head
from weightkit.sources.mapping import MappingReader
from weightkit.sources.safetensors_file import _Shard, _sniff

__all__ = ["save", "load_into", "verify", "LoadReport", "VerifyReport", "Entry", "write_safetensors",
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


def _header(entries: list[Entry], metadata: dict[str, str]) -> bytes:
    head: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    pos = 0
    for e in entries:
        head[e.name] = {"dtype": _CODES[e.dtype], "shape": list(e.shape), "data_offsets": [pos, pos + e.nbytes]}
        pos += e.nbytes
    raw = json.dumps(head, separators=(",", ":"), ensure_ascii=False).encode()
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
                h.update(buf)
                fh.write(buf)
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
        if isinstance(reader, MappingReader):
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


# --- load_into -----------------------------------------------------------------------------

@dataclass
class LoadReport:
    """What :func:`weightkit.load_into` found and did."""

    path: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    """In the model, not in the file."""
    unexpected: list[str] = field(default_factory=list)
    """In the file, not in the model."""
    shape_mismatches: list[dict[str, Any]] = field(default_factory=list)
    """``{"name", "model_shape", "file_shape"}`` per tensor whose shapes differ (not loaded)."""
    cast: list[dict[str, str]] = field(default_factory=list)
    """``{"name", "file_dtype", "model_dtype"}``: loaded with a dtype conversion."""

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.shape_mismatches)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}

    def problems(self) -> str:
        parts = []
        if self.missing:
            parts.append(f"missing in file: {', '.join(self.missing)}")
        if self.unexpected:
            parts.append(f"unexpected in file: {', '.join(self.unexpected)}")
        if self.shape_mismatches:
            parts.append("shape mismatches: " + ", ".join(
                f"{m['name']} (model {tuple(m['model_shape'])}, file {tuple(m['file_shape'])})"
                for m in self.shape_mismatches))
        return "; ".join(parts)


def load_into(model: Any, path: str | Path, *, strict: bool = True) -> LoadReport:
    """Load a checkpoint into a live torch model in place (same ``Parameter`` objects).

    Values are copied under ``torch.no_grad()`` with ``copy_``, so device, dtype and every
    optimizer's references stay. Names are the model's ``state_dict`` keys; a tied tensor
    stored once (``alias: kept`` metadata) fills every name it has.

    Args:
        model: a ``torch.nn.Module``.
        path: any checkpoint weightkit opens (or a state dict / ``WeightSet``).
        strict: when ``True``, a missing key, an unexpected key or a shape mismatch raises
            ``WeightkitError`` listing all of them and nothing is loaded; when ``False``
            the matching tensors are loaded and the report lists the rest.

    Example:
        >>> import tempfile, torch, weightkit
        >>> a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
        >>> p = weightkit.save(a, tempfile.mkdtemp() + "/a.safetensors")
        >>> weightkit.load_into(b, p).loaded
        ['weight', 'bias']
        >>> bool(torch.equal(a.weight, b.weight))
        True
    """

    if _backend.is_keras(model):
        return _load_into_keras(model, path, strict=strict)
    if not module_loaded("torch"):
        raise UnsupportedFormatError(f"load_into needs a live torch.nn.Module; received {type(model).__name__}")
    import torch

    if not isinstance(model, torch.nn.Module):
        raise UnsupportedFormatError(
            f"load_into needs a live torch.nn.Module or Keras model; received {type(model).__name__}")
    ws, _, owned = open_source(path)
    try:
        report = LoadReport(path=ws.source)
        targets = model.state_dict(keep_vars=True)
        for name in targets:
            if name not in ws:
                report.missing.append(name)
        known = set(targets)
        for w in ws:
            if not ({w.name, *w.shared_with} & known):
                report.unexpected.append(w.name)
        plan = []
        for name, t in targets.items():
            if name not in ws:
                continue
            w = ws[name]
            if tuple(w.shape) != tuple(t.shape):
                report.shape_mismatches.append({"name": name, "model_shape": list(t.shape), "file_shape": list(w.shape)})
                continue
            plan.append((name, t, w))
        if strict and not report.ok:
            raise WeightkitError(f"{ws.source} does not fit {type(model).__name__} (nothing loaded): {report.problems()}")
        # read and convert everything first, so a failure cannot leave the model half-loaded
        staged = []
        for name, t, w in plan:
            value = w.torch()
            if value.dtype != t.dtype:
                if value.is_floating_point() and not t.is_floating_point():
                    raise WeightkitError(f"{ws.source}: tensor {name!r} is {w.dtype} in the file but "
                                         f"{_dtypes.from_torch(t.dtype)} in the model; converting would lose values")
                report.cast.append({"name": name, "file_dtype": w.dtype, "model_dtype": _dtypes.from_torch(t.dtype)})
            staged.append((name, t, value.to(device=t.device, dtype=t.dtype)))
        with torch.no_grad():
            for name, t, value in staged:
                t.copy_(value)
                report.loaded.append(name)
        return report
    finally:
        if owned:
            ws.close()


def _load_into_keras(model, path, *, strict: bool) -> LoadReport:
    """Keras variables are matched by path; when none matches (a new instance of the same
    architecture has new auto-generated layer names) and the file records the saved model's
    variable order, by position in ``model.weights``."""
    import keras

    ws, _, owned = open_source(path)
    try:
        report = LoadReport(path=ws.source)
        variables = {v.path: v for v in model.weights}
        names = {n: n for n in variables if n in ws}
        order = ws.metadata.get(KERAS_ORDER_KEY) if not names else None
        if order:
            saved = json.loads(order)
            if len(saved) == len(variables):
                names = {n: s for n, s in zip(variables, saved) if s in ws}
        report.missing = [n for n in variables if n not in names]
        used = set(names.values())
        report.unexpected = [w.name for w in ws if w.name not in used]
        plan = []
        for name, v in variables.items():
            if name not in names:
                continue
            w = ws[names[name]]
            if tuple(w.shape) != tuple(v.shape):
                report.shape_mismatches.append({"name": name, "model_shape": list(v.shape), "file_shape": list(w.shape)})
                continue
            plan.append((name, v, w.numpy()))
        if strict and not report.ok:
            raise WeightkitError(f"{ws.source} does not fit Keras model {model.name!r} (nothing loaded): {report.problems()}")
        for name, v, value in plan:
            v.assign(keras.ops.cast(value, v.dtype))
            report.loaded.append(name)
        return report
    finally:
        if owned:
            ws.close()


# --- verify --------------------------------------------------------------------------------

@dataclass
class VerifyReport:
    """The result of :func:`weightkit.verify`: every recorded sha256 recomputed."""

    path: str
    checked: int
    matched: list[str]
    mismatched: list[str]
    """Tensors whose bytes no longer hash to the recorded value."""
    missing: list[str]
    """Hash recorded, tensor absent from the file."""
    unrecorded: list[str]
    """Tensor in the file with no recorded hash."""

    @property
    def ok(self) -> bool:
        return not (self.mismatched or self.missing or self.unrecorded)

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def verify(path: str | Path) -> VerifyReport:
    """Recompute the sha256 of every tensor of a weightkit-written safetensors file.

    Raises:
        WeightkitError: not a safetensors file, damaged header, or no hashes recorded
            (a file weightkit did not write: there is nothing to compare against).

    Example:
        >>> import tempfile, torch, weightkit
        >>> p = weightkit.save(torch.nn.Linear(3, 2), tempfile.mkdtemp() + "/m.safetensors")
        >>> r = weightkit.verify(p)
        >>> r.ok, r.checked
        (True, 2)
    """

    p = Path(path)
    if not p.is_file():
        raise WeightkitError(f"{p}: no such file; check the path")
    if not _sniff(p, sniff_head(p)):
        raise UnsupportedFormatError(f"{p}: not a safetensors file; verify checks files written by weightkit.save")
    shard = _Shard(p)
    raw = shard.metadata.get(HASH_KEY)
    if raw is None:
        raise WeightkitError(f"{p}: no hashes recorded (not written by weightkit); nothing to verify")
    try:
        recorded = json.loads(raw)
        assert isinstance(recorded, dict) and all(isinstance(v, str) for v in recorded.values())
    except (ValueError, AssertionError):
        raise CorruptFileError(f"{p}: the recorded hashes ({HASH_KEY}) are not a JSON object of strings") from None
    matched, mismatched = [], []
    for name in shard.header:
        if name not in recorded:
            continue
        info = shard.header[name]
        n = math.prod(info["shape"])
        itemsize = max(1, shard.flat(name, 0, 0).dtype.itemsize)
        step = max(1, CHUNK_BYTES // itemsize)
        h = hashlib.sha256()
        for start in range(0, n, step):
            h.update(np.ascontiguousarray(shard.flat(name, start, min(n, start + step))))
        (matched if h.hexdigest() == recorded[name] else mismatched).append(name)
    return VerifyReport(
        path=str(p), checked=len(matched) + len(mismatched), matched=matched, mismatched=mismatched,
        missing=[n for n in recorded if n not in shard.header],
        unrecorded=[n for n in shard.header if n not in recorded],
    )


"""Keras weight files: Keras 3 ``.weights.h5``, ``.keras`` archives, legacy Keras 2 HDF5.

Keras 3 writes one HDF5 group per object: ``<group>/vars`` holds the object's own variables
as datasets ``0``, ``1``… (``save_own_variables`` order) and, in recent Keras 3 releases, an
attribute ``name`` with the object's name. Groups are named by attribute (``cell``, ``forward_layer``,
``query_dense``) or, in a list of layers, by class name in snake_case (``layers/dense_1``).

Tensor names rebuild ``variable.path`` the way Keras scopes variables when it builds a model:
Sequential and subclassed models prefix their layers with their own name, Functional models do
not, and a nested model starts afresh (it is built before the model around it). Kinds, roles
and trainable flags come from ``config.json`` in ``.keras`` archives and from the group names
otherwise. Only HDF5 headers are read until ``read()``. Optimizer variables are summarised in
``metadata()``, not listed; seed-generator state is not in these files.
"""

from __future__ import annotations

import collections
import io
import json
import re
import shutil
import struct
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from weightkit import _dtypes
from weightkit.errors import CorruptFileError, UnsupportedFormatError, WeightkitError, require
from weightkit.formats.hdf5 import check_global_heaps, refuse_outside
from weightkit.sources._base import RawTensor, ReaderBase, register_reader
from weightkit.sources.keras_model import (
    BUFFERS,
    VAR_ORDER,
    KerasObject,
    child_entry,
    describe,
    fits,
    kind_from_variables,
    legacy_layer,
    rnn_from_gates,
    roles_for,
)

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_WEIGHTS = "model.weights.h5"
_MAX_JSON = 64 << 20
# sublayers whose live order is not alphabetical (the order Keras writes attributes in)
_RANK = {"forward_layer": 0, "backward_layer": 1,
         "query_dense": 0, "key_dense": 1, "_gate_dense": 2, "value_dense": 3, "output_dense": 4}


def _sniff_h5(path: Path, head: bytes | None) -> bool:
    return head is not None and head.startswith(_HDF5_MAGIC)


def _sniff_keras(path: Path, head: bytes | None) -> bool:
    if head is None:  # model.save(dir, zipped=False)
        return (path / "config.json").is_file() and (path / _WEIGHTS).is_file()
    if not head.startswith(b"PK\x03\x04"):
        return False
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
    except (zipfile.BadZipFile, OSError):  # truncated: ours if Keras' first members are there
        return b"metadata.json" in head and b"config.json" in head
    # an archive saved without weights is still a Keras archive: opening it says so
    return "config.json" in names and (_WEIGHTS in names or "metadata.json" in names)


@contextmanager
def _guard(path: Path, doing: str):
    """Turn any h5py/zipfile failure into one CorruptFileError line."""
    try:
        yield
    except WeightkitError:
        raise
    except Exception as e:  # h5py raises OSError, KeyError, ValueError, RuntimeError…
        detail = (str(e).splitlines() or [type(e).__name__])[0][:160]
        raise CorruptFileError(
            f"{path}: {doing} failed ({detail}); the file is truncated or corrupt, re-save or re-download it"
        ) from None


class _Slice(io.RawIOBase):
    """Read-only file over bytes ``[start, start + size)`` of another (an uncompressed zip
    member), so h5py reads the weights inside a ``.keras`` archive in place."""

    def __init__(self, path: Path, start: int, size: int):
        super().__init__()
        self._fh, self._start, self._size, self._pos = open(path, "rb"), start, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        self._pos = max(0, offset + (0, self._pos, self._size)[whence])
        return self._pos

    def readinto(self, buf) -> int:
        self._fh.seek(self._start + self._pos)
        got = self._fh.readinto(memoryview(buf).cast("B")[: max(0, self._size - self._pos)]) or 0
        self._pos += got
        return got

    def close(self) -> None:
        self._fh.close()
        super().close()


def _check_global_heaps(path: Path, source) -> None:
    """Refuse an HDF5 global heap that libhdf5's parser would loop on forever (an object whose
    size keeps the parser in place; found by fuzzing). Vlen strings, such as the ``name``
    attribute Keras gives every object, live in these heaps. Costs one scan of the file."""
    if isinstance(source, _Slice):
        check_global_heaps(path, source._fh, source._start, source._start + source._size)
    elif isinstance(source, Path) and source.is_file():
        with open(source, "rb") as fh:
            check_global_heaps(path, fh)
    elif hasattr(source, "fileno"):
        check_global_heaps(path, source)


def _text(v) -> str | None:
    return v.decode("utf8", "replace") if isinstance(v, bytes) else v if isinstance(v, str) else None


def _json(raw) -> Any:
    raw = _text(raw)
    return json.loads(raw) if raw else None


def _json_or_note(raw, what: str, notes: list[str]) -> Any:
    """``_json``, but a config that is not valid JSON becomes a note instead of an error: the
    weights of a Keras 2 file do not depend on it (layer kinds then come from the names)."""
    try:
        return _json(raw)
    except (ValueError, UnicodeError, TypeError):
        notes.append(f"{what} is not valid JSON (ignored: layer kinds come from the weight names)")
        return None


class KerasFileReader(ReaderBase):
    """A Keras 3 ``.weights.h5`` or ``.keras`` archive, or a Keras 2 HDF5 weights file."""

    def __init__(self, path: Path, format: str, *, vars_names: dict[str, str | None] | None = None,
                 shard: bool = False):
        """``vars_names``/``shard``: one file of a sharded ``*.weights.json`` set, where a ``vars``
        group's name (which scopes variable paths) may be written in another shard than its
        variables (``vars_names``: group path -> name, from every shard), and a shard may hold no
        variable at all."""
        self._h5py = require("h5py", extra="keras", purpose="reading Keras weight files")
        self.path, self.format, self.description = path, format, str(path)
        self._vars_names = vars_names or {}
        self._config: Any = None
        self._meta: dict[str, Any] = {}
        self._raw: list[RawTensor] = []
        self._names: set[str] = set()
        self._notes: list[str] = []  # what could not be read but did not stop the weights from being read
        self._optimizer: Any = None
        self._slice: _Slice | None = None
        self._h5: Any = None  # an h5py.File (h5py is imported on first use and ships no types)
        with _guard(path, "opening the Keras file"):
            source = self._open_archive() if format == "keras" else path
            _check_global_heaps(path, source)
            self._h5 = self._h5py.File(source, "r")
            refuse_outside(path, self._h5)
            self._list()
        if not self._raw and not shard:
            self.close()
            raise CorruptFileError(f"{path}: Keras file without weights (no variables in it); "
                                   "re-save the model after building it")

    def _open_archive(self):
        """The weights member of a ``.keras`` zip (or directory), as a file h5py can read."""
        if self.path.is_dir():
            for member, attr in (("config.json", "_config"), ("metadata.json", "_meta")):
                file = self.path / member
                if file.is_file() and file.stat().st_size < _MAX_JSON:
                    setattr(self, attr, json.loads(file.read_text()) or {})
            return self.path / _WEIGHTS
        with zipfile.ZipFile(self.path) as zf:
            infos = {i.filename: i for i in zf.infolist()}
            if "config.json" not in infos:
                raise CorruptFileError(f"{self.path}: a zip file but not a Keras archive (no config.json); "
                                       "pass a .keras file saved with model.save()")
            for member, attr in (("config.json", "_config"), ("metadata.json", "_meta")):
                if member in infos and infos[member].file_size < _MAX_JSON:
                    setattr(self, attr, json.loads(zf.read(member)) or {})
            if _WEIGHTS not in infos and "model.weights.npz" in infos:
                raise UnsupportedFormatError(
                    f"{self.path}: Keras archive saved with weights_format='npz', which weightkit does not read "
                    "(it holds pickled objects); re-save it with model.save() and the default weights format")
            if _WEIGHTS not in infos:
                raise CorruptFileError(f"{self.path}: Keras archive holds no weights (no {_WEIGHTS}: saved "
                                       "without weights, or stripped); re-save the model with model.save()")
            info = infos[_WEIGHTS]
            if info.compress_type != zipfile.ZIP_STORED:  # re-zipped with compression: unpack it to disk
                self._slice = self._spool(zf, info)
                return self._slice
        with open(self.path, "rb") as fh:
            fh.seek(info.header_offset)
            local = fh.read(30)
        start = info.header_offset + 30 + sum(struct.unpack("<HH", local[26:30]))
        if local[:4] != b"PK\x03\x04" or start + info.file_size > self.path.stat().st_size:
            raise CorruptFileError(f"{self.path}: {_WEIGHTS} is cut short; the archive is truncated")
        self._slice = _Slice(self.path, start, info.file_size)
        return self._slice

    def _spool(self, zf: zipfile.ZipFile, info: zipfile.ZipInfo):
        """A compressed weights member, unpacked into a temporary file (not memory: it may be
        a zip bomb); only an HDF5 file is unpacked past its first bytes."""
        tmp = tempfile.TemporaryFile()
        try:
            with zf.open(info) as src:
                head = src.read(8)
                if head != _HDF5_MAGIC:
                    raise CorruptFileError(f"{self.path}: {_WEIGHTS} is not an HDF5 file; the archive is corrupt")
                tmp.write(head)
                shutil.copyfileobj(src, tmp, 1 << 20)
            tmp.seek(0)
            return tmp
        except BaseException:
            tmp.close()
            raise

    # --- Keras 3 ---------------------------------------------------------------------------

    def _list(self) -> None:
        f, Group = self._h5, self._h5py.Group
        legacy = f["model_weights"] if isinstance(f.get("model_weights"), Group) else f
        root_vars = f.get("vars")
        self._named = (isinstance(root_vars, Group) and "name" in root_vars.attrs) or bool(self._vars_names)
        if "vars" in f or "layers" in f or any(isinstance(g, Group) and "vars" in g for g in f.values()):
            self._visit(f, "", None, "")
        elif "layer_names" in legacy.attrs or "layer_names0" in legacy.attrs:
            self._legacy(f, legacy)
        else:
            found: list = []
            f.visititems(lambda _, o: found.append(o) if isinstance(o, self._h5py.Dataset) else None)
            if found:
                raise UnsupportedFormatError(
                    f"{self.path}: an HDF5 file but not Keras weights (no 'vars' groups, no 'layer_names'); "
                    "weightkit reads Keras 3 .weights.h5 and Keras 2 save_weights files")
        self._meta_out = self._summary()

    def _visit(self, group, attr: str, parent: KerasObject | None, container: str) -> None:
        vg = group.get("vars")
        vg = vg if isinstance(vg, self._h5py.Group) else None
        # recent Keras gives every object a named vars group; older Keras 3 only those with
        # variables, and then only the lists Keras itself makes are taken for lists
        if vg is None and parent is not None and (self._named or attr in ("layers", "cells")):
            for name, child in self._children(group):
                self._visit(child, name, parent, container or attr)
            return
        name = _text(vg.attrs.get("name")) if vg is not None else None
        if name is None and (vg is not None or parent is None):
            name = self._vars_names.get(f"{group.name.rstrip('/')}/vars")
        entry = self._config if parent is None else (
            child_entry(parent.kind, parent.config, attr, name, container) if parent.config else None)
        lst = group.get("layers")
        obj = describe(parent, attr, name, container, entry,
                       list(lst) if isinstance(lst, self._h5py.Group) and "vars" not in lst else None)
        if vg is not None:
            self._emit(vg, obj)
        for name, child in self._children(group):
            if parent is None and name == "optimizer":
                self._optimizer = child
            else:
                self._visit(child, name, obj, "")

    def _emit(self, vg, obj: KerasObject) -> None:
        keys = sorted((k for k in vg if isinstance(vg[k], self._h5py.Dataset)),
                      key=lambda k: (not k.isdigit(), int(k) if k.isdigit() else 0, k))
        dsets = [vg[k] for k in keys]
        shapes = [tuple(int(d) for d in ds.shape) for ds in dsets]
        kind, how, facts = obj.kind, obj.kind_from, dict(obj.facts)
        if kind is None and obj.layer != obj.scope:  # the cell of an RNN of unknown class
            kind = rnn_from_gates(shapes)
            how = "inferred" if kind else None
        roles = roles_for(kind, len(dsets), obj.config if how == "config" else None)
        if roles is not None and kind is not None and how in ("name", "inferred") and not fits(kind, shapes):
            roles = None
        if roles is None:  # never guess: the class does not fit these variables
            facts.update({"keras_class": kind} if kind else {})
            kind, how, roles = None, None, [None] * len(dsets)
        if kind == "GRU" and "bias" in roles:
            facts["reset_after"] = bool(obj.config.get("reset_after", True)) if obj.config is not None \
                else len(shapes[roles.index("bias")]) == 2
        for i, (ds, role) in enumerate(zip(dsets, roles)):
            buffer = role in BUFFERS.get(kind or "", ())
            trainable = False if buffer or not obj.trainable else (True if kind else None)
            self._add(ds, f"{obj.scope}/{role or i}", obj.layer, kind, how, role or str(i), trainable, buffer, facts)

    def _children(self, group) -> list:
        """Subgroups in model order: HDF5 lists them alphabetically, but Keras writes variables
        in model order, so their data offsets restore it (plus _RANK within a layer)."""
        def first(item) -> tuple:
            offsets = [float("inf")]
            item[1].visititems(lambda _, o: offsets.append(o.id.get_offset() or float("inf"))
                               if isinstance(o, self._h5py.Dataset) else None)
            return _RANK.get(item[0], 0), min(offsets)

        return sorted(((n, g) for n, g in group.items() if n != "vars" and isinstance(g, self._h5py.Group)),
                      key=first)

    def _add(self, ds, name, layer, kind, how, role, trainable, buffer, facts) -> None:
        if name in self._names:
            name = ds.name.lstrip("/")  # two objects with one path (hand-made files): keep both
        self._names.add(name)
        self._raw.append(RawTensor(
            key=ds.name, name=name, shape=tuple(int(d) for d in ds.shape), dtype=self._dtype(ds),
            layer=layer, kind=kind, kind_from=how, role=role, trainable=trainable, is_buffer=buffer,
            layer_config=dict(facts)))

    def _dtype(self, ds) -> str:
        if _text(ds.attrs.get("dtype")) == "bfloat16" and ds.dtype.itemsize == 2:
            return "bfloat16"  # Keras stores bfloat16 as 2-byte opaque data with this attribute
        try:
            return _dtypes.from_numpy(ds.dtype)
        except (KeyError, TypeError):
            raise UnsupportedFormatError(
                f"{self.path}: variable {ds.name} has dtype {ds.dtype}, which weightkit does not read") from None

    # --- Keras 2 ---------------------------------------------------------------------------

    def _legacy(self, f, root) -> None:
        """Keras 2 ``save_weights("x.h5")`` (or ``model_weights`` of a whole-model ``.h5``): a
        group per layer whose ``weight_names`` attribute lists datasets like ``dense/kernel:0``."""
        self._config = _json_or_note(f.attrs.get("model_config"), "model_config", self._notes)
        entries: dict[str, dict] = {}  # every layer config in model_config, by name
        stack = [self._config]
        while stack:
            node = stack.pop()
            if isinstance(node, dict):
                if isinstance(node.get("config"), dict) and "class_name" in node:
                    entries.setdefault(node["config"].get("name"), node)
                stack.extend(node.values())
            elif isinstance(node, list):
                stack.extend(node)
        if isinstance(f.get("optimizer_weights"), self._h5py.Group):
            self._optimizer = f["optimizer_weights"]
        for lname in _chunked(root, "layer_names"):
            group = root.get(lname)
            layers: dict[str, list] = {}  # layer path -> [kind, how, config, facts, [(dataset, name, role)]]
            for wname in _chunked(group, "weight_names") if group is not None else ():
                if not isinstance(group.get(wname), self._h5py.Dataset):
                    continue
                full = re.sub(r":\d+$", "", wname)
                *path, role = full.split("/")
                # a weight scoped under another name than its layer's (TensorFlow made names unique:
                # ``conv2d_1_1/kernel`` in layer ``conv2d_1``) belongs to the layer of its group
                shown = full if path and path[0] == lname else f"{lname}/{full}"
                layer, kind, how, cfg, facts = legacy_layer(lname, [lname, *path[1:]], entries)
                layers.setdefault(layer, [kind, how, cfg, facts, []])[4].append((group[wname], shown, role))
            for layer, (kind, how, cfg, facts, members) in layers.items():
                self._legacy_layer(layer, kind, how, cfg, facts, members)

    def _legacy_layer(self, layer: str, kind, how, cfg, facts: dict, members: list) -> None:
        """Emit one Keras 2 layer's weights with the kind its config gives, else the kind its
        variables leave no doubt about, else the kind its name gives if its variables fit."""
        roles = [role for _, _, role in members]
        shapes = [tuple(int(d) for d in ds.shape) for ds, _, _ in members]
        known = {r for r, _ in VAR_ORDER.get(kind or "", ())}
        if how == "config":
            if not set(roles) <= known:  # a custom class (or a config that does not fit): unknown
                facts = {**facts, "keras_class": kind}
                kind, how = None, None
        else:
            structural = kind_from_variables(roles, shapes, layer)
            if structural is not None and (kind is None or structural != kind or not set(roles) <= known):
                kind, how = structural, "inferred"
            elif kind is not None and (not set(roles) <= known or not fits(kind, shapes)):
                kind, how = None, None
        if kind in ("GRU", "CuDNNGRU") and "bias" in roles:
            facts = {**facts, "reset_after": bool(cfg.get("reset_after", True)) if cfg and kind == "GRU"
                     else len(shapes[roles.index("bias")]) == 2}
        frozen = cfg is not None and cfg.get("trainable") is False
        for ds, name, role in members:
            buffer = role in BUFFERS.get(kind or "", ())
            trainable = False if buffer or frozen else (True if kind else None)
            self._add(ds, name, layer, kind, how, role, trainable, buffer, facts)

    # --- reading ---------------------------------------------------------------------------

    def tensors(self) -> list[RawTensor]:
        return list(self._raw)

    def read(self, key: str) -> np.ndarray:
        with _guard(self.path, f"reading {key}"):
            ds = self._h5[key]
            stored = ds.id.get_storage_size()  # h5py allocates the declared size before reading
            if ds.nbytes > (1 << 26) and ds.nbytes > 1032 * stored:
                raise CorruptFileError(f"{self.path}: variable {key} declares {ds.nbytes} bytes but the file stores "
                                       f"{stored} for it; the file is corrupt")
            arr = np.asarray(ds[()])
        dtype = self._info(key).dtype
        return _dtypes.raw_view(arr, dtype) if _dtypes.is_viewed(dtype) else arr

    def _summary(self) -> dict[str, Any]:
        f = self._h5
        cfg = self._config if isinstance(self._config, dict) else {}
        inner = cfg.get("config")
        inner = inner if isinstance(inner, dict) else {}  # Keras 2.1 Sequential: a list of layers
        legacy = f.get("model_weights", f)
        attrs = {k: _text(f.attrs.get(k, legacy.attrs.get(k))) for k in ("keras_version", "backend")}
        root = f.get("vars")
        meta: dict[str, Any] = {
            "keras_version": self._meta.get("keras_version") or attrs["keras_version"],
            "date_saved": self._meta.get("date_saved"), "backend": attrs["backend"],
            "model_class": cfg.get("class_name"),
            "model_name": inner.get("name") or (_text(root.attrs.get("name")) if root else None),
        }
        layers = inner.get("layers") if inner else cfg.get("config")
        if isinstance(layers, list):  # the architecture at a glance: its layer classes, in order of first use
            counts = collections.Counter(str(c["class_name"]) for c in layers if isinstance(c, dict)
                                         and isinstance(c.get("class_name"), str))
            meta["layers"] = ", ".join(f"{k} ×{n}" if n > 1 else k for k, n in counts.items())[:600] or None
        if self._optimizer is not None:
            sizes: list[int] = []
            self._optimizer.visititems(lambda _, o: sizes.append(o.size * o.dtype.itemsize)
                                       if isinstance(o, self._h5py.Dataset) else None)
            compiled = cfg.get("compile_config")
            compiled = compiled.get("optimizer") if isinstance(compiled, dict) else None
            cls = compiled.get("class_name") if isinstance(compiled, dict) else compiled
            training = _json_or_note(f.attrs.get("training_config"), "training_config", self._notes)
            training = training if isinstance(training, dict) else {}
            cls = cls or (training.get("optimizer_config") or {}).get("class_name")
            if cls is None and "vars" in self._optimizer:
                cls = _text(self._optimizer["vars"].attrs.get("name"))
            meta["optimizer"] = {"class": cls, "variables": len(sizes), "bytes": int(sum(sizes))}
        if self._notes:
            meta["notes"] = list(self._notes)
        return {k: v for k, v in meta.items() if v is not None}

    def metadata(self) -> dict[str, Any]:
        return dict(self._meta_out)

    def model_config(self) -> dict[str, Any] | None:
        return self._config if isinstance(self._config, dict) else None

    def close(self) -> None:
        for handle in (self._h5, self._slice):
            if handle is not None:
                handle.close()
        self._h5 = self._slice = None


def _chunked(group, name: str) -> list[str]:
    """A Keras 2 list attribute, which Keras splits into ``name0``, ``name1``… when large."""
    keys = [name] if name in group.attrs else [f"{name}{i}" for i in range(len(group.attrs))
                                               if f"{name}{i}" in group.attrs]
    return [_text(v) or str(v) for k in keys for v in group.attrs[k]]


@register_reader("keras-h5", suffixes=(".weights.h5", ".h5", ".hdf5"), sniff=_sniff_h5,
                 description="Keras HDF5 weights (Keras 3 .weights.h5, Keras 2 .h5)")
def open_keras_h5(path) -> KerasFileReader:
    return KerasFileReader(Path(path), "keras-h5")


@register_reader("keras", suffixes=(".keras",), sniff=_sniff_keras,
                 description="Keras 3 .keras archive (or the directory of model.save(..., zipped=False))")
def open_keras_archive(path) -> KerasFileReader:
    return KerasFileReader(Path(path), "keras")


def keras_shards(files: list[Path]) -> list[KerasFileReader]:
    """The files of a Keras sharded ``*.weights.json`` set, each read knowing every ``vars``
    group's name, which Keras may write in another shard than the group's variables."""
    h5py = require("h5py", extra="keras", purpose="reading Keras weight files")
    names: dict[str, str | None] = {}

    def note(path: str, obj) -> None:  # visititems stops at the first callback that returns a value
        if isinstance(obj, h5py.Group) and path.split("/")[-1] == "vars" and "name" in obj.attrs:
            names.setdefault("/" + path, _text(obj.attrs["name"]))

    for f in files:
        with _guard(f, "opening the Keras shard"):
            _check_global_heaps(f, f)
            with h5py.File(f, "r") as h5:
                h5.visititems(note)
    return [KerasFileReader(f, "keras-h5", vars_names=names, shard=True) for f in files]

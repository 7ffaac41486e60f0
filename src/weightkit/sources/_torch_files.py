"""Zip and legacy ``torch.save`` files read with the restricted unpickler, and the walk that
turns a tree of stubs (a pickled ``nn.Module``) into the names ``model.state_dict()`` gives.

Storages of zip checkpoints are memory-mapped as ``torch.load(mmap=True)`` does (only the
pages a read touches are loaded); legacy files are read storage by storage. Every size in the
file is checked against the file before anything is allocated or mapped.
"""

from __future__ import annotations

import io
import mmap
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from weightkit.layers import list_kinds
from weightkit.sources._restricted import MAX_PICKLE_BYTES, Bad, Stub, unpickle

__all__ = ["load_torch_zip", "load_torch_legacy", "module_state", "is_module", "LEGACY_MAGIC"]

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
MAX_DEPTH = 256
MAX_MODULES = 1_000_000  # modules visited plus names given, for the largest files


def _torch():
    import torch

    return torch


def load_torch_zip(path: Path) -> Any:
    """A zip checkpoint (any archive folder name); storages memory-mapped from the file."""
    torch = _torch()
    size = path.stat().st_size
    with zipfile.ZipFile(path) as zf, open(path, "rb", buffering=0) as raw:
        pkls = [n for n in zf.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
        if len(pkls) != 1:
            raise Bad(f"{len(pkls)} data.pkl members; expected one")
        prefix = pkls[0][: -len("data.pkl")]
        order = f"{prefix}byteorder"
        if order in zf.namelist() and (zf.getinfo(order).file_size > 16 or zf.read(order).strip() not in (b"little", b"")):
            raise Bad("big-endian checkpoint; re-save it on a little-endian machine")
        info = zf.getinfo(pkls[0])
        if info.file_size > MAX_PICKLE_BYTES:
            raise Bad(f"data.pkl larger than {MAX_PICKLE_BYTES >> 20} MiB")
        data = zf.read(info)
        whole: list = []
        cache: dict[str, Any] = {}

        def storages(key, dtype, numel, view):
            if key not in cache:
                nbytes = numel * dtype.itemsize
                cache[key] = _zip_storage(path, zf, raw, f"{prefix}data/{key}", nbytes, size, whole)
            return torch.storage.TypedStorage(wrap_storage=cache[key], dtype=dtype, _internal=True)

        return unpickle(io.BytesIO(data), str(path), storages)


def _zip_storage(path, zf, raw, name, nbytes, size, whole):
    torch = _torch()
    try:
        info = zf.getinfo(name)
    except KeyError:
        raise Bad(f"tensor data {name} is missing") from None
    if info.file_size < nbytes:
        raise Bad(f"tensor data {name} holds {info.file_size} bytes, its tensor needs {nbytes}")
    if nbytes == 0:
        return torch.UntypedStorage(0)
    if info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 1:
        raw.seek(info.header_offset)
        local = raw.read(30)
        if len(local) == 30 and local[:4] == b"PK\x03\x04":
            start = info.header_offset + 30 + int.from_bytes(local[26:28], "little") + int.from_bytes(local[28:30], "little")
            if start + nbytes > size:
                raise Bad(f"tensor data {name} runs past the end of the file")
            if start % 64 == 0:  # torch aligns its records: map them in place, like torch.load(mmap=True)
                if not whole:
                    whole.append(torch.UntypedStorage.from_file(str(path), False, size))
                return whole[0][start:start + nbytes]
    buf = bytearray()  # compressed or unaligned (not written by torch): read just this storage
    with zf.open(info) as f:  # in chunks: memory grows only with what really decompresses
        while len(buf) < nbytes and (chunk := f.read(min(16 << 20, nbytes - len(buf)))):
            buf += chunk
    if len(buf) < nbytes:
        raise Bad(f"tensor data {name} is cut short")
    return torch.frombuffer(buf, dtype=torch.uint8).untyped_storage()


class _MMapReader:
    """A file over an mmap whose ``read(n)`` never allocates more than what is there."""

    def __init__(self, mm):
        self.mm, self.pos = mm, 0

    def read(self, n=-1):
        end = len(self.mm) if n is None or n < 0 else min(len(self.mm), self.pos + n)
        out = self.mm[self.pos:end]
        self.pos = max(self.pos, end)
        return out

    def readinto(self, b):
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)

    def readline(self):
        i = self.mm.find(b"\n", self.pos)
        return self.read((i + 1 - self.pos) if i >= 0 else -1)


def load_torch_legacy(path: Path) -> Any:
    """A legacy (non-zip) ``torch.save`` file: magic, protocol, sys_info, the object, storage
    keys, then each storage as an int64 element count and its bytes; read storage by storage."""
    torch = _torch()
    label = str(path)
    with open(path, "rb") as fh:
        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        f = _MMapReader(mm)
        if unpickle(f, label) != LEGACY_MAGIC:
            raise Bad("not a legacy torch.save file (bad magic number)")
        if unpickle(f, label) != 1001:
            raise Bad("unsupported legacy protocol version")
        info = unpickle(f, label)
        if not isinstance(info, dict) or info.get("little_endian") is not True:
            raise Bad("big-endian or unknown legacy checkpoint")
        found: dict[str, tuple] = {}
        budget = [len(mm)]

        def storages(key, dtype, numel, view):
            if view is not None:
                raise Bad("legacy storage views are not supported")
            if key not in found:
                itemsize = dtype.itemsize
                budget[0] -= numel * itemsize
                if budget[0] < 0:
                    raise Bad("the storages are larger than the file")
                found[key] = (torch.UntypedStorage(numel * itemsize), numel, itemsize)
            return torch.storage.TypedStorage(wrap_storage=found[key][0], dtype=dtype, _internal=True)

        obj = unpickle(f, label, storages)
        keys = unpickle(f, label)
        if not isinstance(keys, list) or len(set(keys)) != len(keys) or set(keys) != set(found):
            raise Bad("the storage keys do not match the tensors")
        pos = f.pos
        for key in keys:
            storage, numel, itemsize = found[key]
            if pos + 8 > len(mm) or int.from_bytes(mm[pos:pos + 8], "little", signed=True) != numel:
                raise Bad(f"storage {key} has a wrong size record")
            pos, n = pos + 8, numel * itemsize
            if pos + n > len(mm):
                raise Bad(f"storage {key} runs past the end of the file")
            if n:
                view = torch.empty(0, dtype=torch.uint8).set_(storage).numpy()
                view[:] = np.frombuffer(mm, np.uint8, n, pos)
                del view
            pos += n
        return obj
    finally:
        try:
            mm.close()
        except BufferError:  # a view is still alive (an error path); the GC unmaps it
            pass


# ---- stub trees -----------------------------------------------------------------------------
def is_module(obj) -> bool:
    """A stub of a pickled ``nn.Module`` (its state has ``_parameters`` and ``_modules`` dicts)."""
    return isinstance(obj, Stub) and isinstance(obj.state.get("_parameters"), dict) \
        and isinstance(obj.state.get("_modules"), dict)


def module_state(root: Stub, *, limit: int = MAX_MODULES) -> tuple[OrderedDict, dict[int, dict]]:
    """``(state_dict, hints)``: the names ``model.state_dict()`` gives (parameters, persistent
    buffers, then submodules, recursively) and per tensor (by ``id``) its layer facts.

    A submodule shared by several parents is named once per path, as ``state_dict()`` names it,
    so a small pickle of shared modules (a DAG: 2**k paths through k levels) names exponentially
    many tensors: modules visited plus names given are capped at ``limit`` (callers pass one
    proportional to the file)."""
    torch = _torch()
    out: OrderedDict = OrderedDict()
    hints: dict[int, dict] = {}
    _CFG = ("bidirectional", "proj_size", "groups", "hidden_size", "num_layers")
    kinds: dict[str, str] = {}
    spent = [0]

    def visit(mod: Stub, prefix: str, path: tuple):
        if len(path) > MAX_DEPTH or any(m is mod for m in path):
            raise Bad("module tree too deep or cyclic")
        st = mod.state
        skip = st.get("_non_persistent_buffers_set")
        skip = skip if isinstance(skip, (set, frozenset)) else set()
        items = [(r, t, False) for r, t in st["_parameters"].items()]
        bufs = st.get("_buffers")
        items += [(r, t, True) for r, t in (bufs.items() if isinstance(bufs, dict) else ()) if r not in skip]
        spent[0] += 1 + len(items)
        if spent[0] > limit:
            raise Bad(f"the pickled model names more than {limit} modules and tensors (submodules shared "
                      "across many paths)")
        qualname = type(mod).qualname
        kind = kinds.get(qualname) or kinds.setdefault(qualname, _kind(qualname))
        cfg = {a: st[a] for a in _CFG if type(st.get(a)) in (bool, int)}
        for role, t, is_buffer in items:
            if isinstance(t, torch.Tensor) and isinstance(role, str):
                out[prefix + role] = t
                hints.setdefault(id(t), {"role": role, "kind": kind, "is_buffer": is_buffer, "layer_config": cfg,
                                         "trainable": False if is_buffer else bool(t.requires_grad)})
        for name, child in st["_modules"].items():
            if is_module(child) and isinstance(name, str):
                visit(child, f"{prefix}{name}.", (*path, mod))

    visit(root, "", ())
    return out, hints


def _kind(qualname: str) -> str:
    """Layer kind from a class name: ``torch.nn.modules.linear.Linear`` -> ``Linear``; torch
    subclasses of a known kind map to it (``NonDynamicallyQuantizableLinear``)."""

    name = qualname.rpartition(".")[2]
    if qualname.startswith("torch.nn.") and name not in list_kinds():
        return next((k for k in sorted(list_kinds(), key=len, reverse=True) if name.endswith(k)), name)
    return name

"""Tensors out of pickles that need code, with nothing from the file imported or run.

:class:`RestrictedUnpickler` is a ``pickle.Unpickler`` whose ``find_class`` never imports a
name from the file: allow-listed globals that rebuild data get small, checked implementations
here (tensors, storages, ``torch.Size``, dtypes, ``OrderedDict``, numpy arrays and scalars,
plain builtins); known gadgets are refused; every other global becomes an inert :class:`Stub`
class that records its qualified name, constructor arguments and state. A whole ``nn.Module``
pickled with ``torch.save(model)`` so becomes a tree of stubs whose ``_parameters``,
``_buffers`` and ``_modules`` dicts hold real tensors; :func:`module_state` walks it into the
names ``model.state_dict()`` gives.

The containers around the pickles (zip and legacy ``torch.save`` files) are read in
:mod:`weightkit.sources._torch_files`.
"""

from __future__ import annotations

import io
import math
import pickle
import re
import struct
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from weightkit.errors import CorruptFileError, UnsafeCheckpointError
from weightkit.scanner._allowlist import SAFE_ENCODINGS, critical_reason, fix_imports, judge
from weightkit.scanner._pickle import MAX_NESTING

__all__ = ["Stub", "RestrictedUnpickler", "unpickle", "load_pickle"]

MAX_PICKLE_BYTES = 512 << 20
_STORAGE_DTYPES = {"Double": "float64", "Float": "float32", "Half": "float16", "BFloat16": "bfloat16",
                   "Long": "int64", "Int": "int32", "Short": "int16", "Char": "int8", "Byte": "uint8",
                   "Bool": "bool", "ComplexDouble": "complex128", "ComplexFloat": "complex64", "Untyped": "uint8"}
_KEY = re.compile(r"^[\w.-]{1,200}$")
_NUMPY_CORE = ("numpy._core", "numpy.core")  # numpy 2 spelling first (numpy.core warns there)


class Bad(CorruptFileError):
    """A structural problem found while unpickling; the reader adds the file name."""


class Stub:
    """An object of a class that was never imported: its name, constructor arguments and state.

    ``BUILD`` stores the state in :attr:`state` (never ``setattr`` on a real class);
    ``SETITEM``/``APPEND`` go to :attr:`items`. Stub classes are made per qualified name.
    """

    __slots__ = ("args", "kwargs", "state", "items")
    qualname = "?"
    args: tuple
    kwargs: dict
    state: dict
    items: list

    def __new__(cls, *args, **kwargs):
        self = object.__new__(cls)
        self.args, self.kwargs, self.state, self.items = args, kwargs, {}, []
        return self

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2 and all(s is None or isinstance(s, dict) for s in state):
            for part in state:
                self.state.update(part or {})
        elif isinstance(state, dict):
            self.state.update(state)
        else:
            self.state["__state__"] = state

    def __setitem__(self, key, value):
        self.items.append((key, value))

    def append(self, value):
        self.items.append(value)

    def extend(self, values):
        self.items.extend(values)

    add = append

    def __repr__(self):
        return f"<{self.qualname} (not imported)>"


class _Marker:
    """A class that a pickle may name but never call (``torch.Tensor``, ``numpy.ndarray``…)."""

    __slots__ = ("name",)

    def __init__(self, name):
        self.name = name


class _StorageType:
    __slots__ = ("name", "dtype")

    def __init__(self, name, dtype):
        self.name, self.dtype = name, dtype


# ---- allow-listed rebuilders ----------------------------------------------------------------
def _torch():
    import torch

    return torch


def _ints(v, what) -> tuple:
    if not isinstance(v, (tuple, list)) or not all(type(x) is int and x >= 0 for x in v):
        raise Bad(f"a tensor's {what} is not a tuple of non-negative integers")
    return tuple(v)


def _tensor(storage, offset, size, stride, dtype=None):
    torch = _torch()
    if not isinstance(storage, torch.storage.TypedStorage):
        raise Bad("a tensor is rebuilt from something that is not a storage")
    size, stride = _ints(size, "size"), _ints(stride, "stride")
    if type(offset) is not int or offset < 0 or len(size) != len(stride):
        raise Bad("a tensor has a bad storage offset or stride")
    t = torch.empty((0,), dtype=dtype or storage.dtype)
    t.set_(storage._untyped_storage, offset, size, stride)  # torch checks the bounds
    return t


def _grad(t, requires_grad):
    if requires_grad is True and (t.is_floating_point() or t.is_complex()):
        t.requires_grad_(True)
    return t


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    return _grad(_tensor(storage, storage_offset, size, stride), requires_grad)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, metadata=None):
    if not isinstance(dtype, _torch().dtype):
        raise Bad("_rebuild_tensor_v3 without a dtype")
    return _grad(_tensor(storage, storage_offset, size, stride, dtype), requires_grad)


def _rebuild_parameter(data, requires_grad, backward_hooks, state=None):
    torch = _torch()
    if not isinstance(data, torch.Tensor):
        raise Bad("a Parameter holds no tensor")
    grad = requires_grad is True and (data.is_floating_point() or data.is_complex())
    return torch.nn.Parameter(data.detach(), requires_grad=grad)


def _rebuild_from_type_v2(func, new_type, args, state):
    if func not in _REBUILDERS or not isinstance(args, tuple):
        raise Bad("_rebuild_from_type_v2 with a function that does not rebuild tensors")
    t = func(*args)
    if getattr(new_type, "name", None) == "torch.nn.parameter.Parameter" and not isinstance(t, _torch().nn.Parameter):
        t = _rebuild_parameter(t, t.requires_grad, None)
    return t  # other tensor subclasses (not imported) stay plain tensors


_REBUILDERS = {_rebuild_tensor, _rebuild_tensor_v2, _rebuild_tensor_v3, _rebuild_parameter}


def _plain(*types):
    ok = (type(None), bool, int, float, complex, str, bytes) + types

    def check(fn):
        def call(*args):
            if not all(isinstance(a, ok) and type(a) is not range for a in args):
                raise Bad(f"{fn.__name__}() called with a value it does not rebuild from")
            return fn(*args)
        return call
    return check


_CONTAINERS = (list, tuple, dict, set, frozenset)


def _bytes(fn):
    def call(*args):
        if args and isinstance(args[0], int):
            raise Bad(f"{fn.__name__}() called with a size")
        return _plain(*_CONTAINERS)(fn)(*args)
    return call


def _codecs_encode(obj, encoding="utf-8"):
    if not isinstance(obj, str) or not isinstance(encoding, str) or encoding.lower() not in SAFE_ENCODINGS:
        raise Bad("_codecs.encode with an encoding that does not rebuild bytes")
    return obj.encode(encoding)


def _np_attr(module: str, name: str):
    import importlib

    for core in _NUMPY_CORE:  # the spelling this numpy has; both are names of ours, not the file's
        try:
            return getattr(importlib.import_module(module.replace("numpy._core", core, 1)), name)
        except (ImportError, AttributeError):
            continue
    raise Bad(f"numpy has no {module}.{name}")


def _np_reconstruct(subtype, shape, dtype):
    if getattr(subtype, "name", None) != "numpy.ndarray":
        raise Bad("numpy _reconstruct of a class that is not numpy.ndarray")
    return np.ndarray.__new__(np.ndarray, (0,), np.uint8)  # BUILD (ndarray.__setstate__) sets shape, dtype, data


def _np_dtype(spec, align=False, copy=False):
    if not isinstance(spec, str):
        raise Bad("numpy dtype from something that is not a string")
    dtype = np.dtype(spec, False, True)  # a copy: BUILD must never touch numpy's shared dtypes
    if dtype.kind not in "biufcOSU" or dtype.fields is not None or dtype.subdtype is not None:
        raise Bad(f"numpy dtype {spec!r} is not a number, string or object type")
    return dtype


# numpy's own __setstate__ trusts its argument (a 6-item state segfaults it, found by fuzzing;
# flags or sizes from a file would corrupt memory): states are checked, and rebuilt by weightkit
def _dtype_state(dtype, state):
    if not (isinstance(state, tuple) and len(state) in (8, 9) and state[0] in (3, 4)
            and state[1] in ("<", ">", "|", "=") and state[2:5] == (None, None, None)):
        raise Bad("malformed numpy dtype state")
    sized = dtype.kind in "SU"  # flexible types keep their size in the state
    return (3, state[1], None, None, None, dtype.itemsize if sized else -1, dtype.alignment if sized else -1,
            dtype.flags)


def _array_state(state):
    if not (isinstance(state, tuple) and len(state) == 5 and state[0] == 1 and isinstance(state[2], np.dtype)):
        raise Bad("malformed numpy array state")
    _, shape, dtype, fortran, raw = state
    n = math.prod(_ints(shape, "shape"))
    if not (raw is not None and (isinstance(raw, list) and len(raw) == n and dtype.hasobject
                                 or isinstance(raw, (bytes, bytearray)) and len(raw) == n * dtype.itemsize)):
        raise Bad("numpy array data does not match its shape")
    return (1, tuple(shape), dtype, bool(fortran), raw)


def _np_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype):
        raise Bad("numpy scalar without a dtype")
    if dtype.hasobject:
        return data
    if not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise Bad("numpy scalar without its bytes")
    return _np_attr("numpy._core.multiarray", "scalar")(dtype, data)


def _np_frombuffer(buf, dtype, shape, order):
    if not isinstance(buf, (bytes, bytearray, pickle.PickleBuffer)) or not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise Bad("numpy _frombuffer with bad arguments")
    return np.frombuffer(buf, dtype=dtype).reshape(_ints(shape, "shape"), order=order if order in ("C", "F") else "C")


def _get_layout(name):
    torch = _torch()
    layout = getattr(torch, str(name).rpartition(".")[2], None)
    if not isinstance(layout, torch.layout):
        raise Bad(f"unknown tensor layout {name!r}")
    return layout


def _copyreg_reconstructor(cls, base, state):
    if not (isinstance(cls, type) and issubclass(cls, Stub)):
        raise Bad("copyreg._reconstructor of a class it does not rebuild")
    obj = cls.__new__(cls)
    if state is not None:
        obj.args = (state,)
    return obj


def _copyreg_newobj(cls, *args):
    if not (isinstance(cls, type) and issubclass(cls, Stub)):
        raise Bad("copyreg.__newobj__ of a class it does not rebuild")
    return cls.__new__(cls, *args)


def _implementations() -> dict[str, Any]:
    torch = _torch()
    out: dict[str, Any] = {f"torch._utils.{f.__name__}": f for f in _REBUILDERS}
    out["torch._utils._rebuild_parameter_with_state"] = _rebuild_parameter
    out["torch._tensor._rebuild_from_type_v2"] = out["torch.tensor._rebuild_from_type_v2"] = _rebuild_from_type_v2
    for name, dt in _STORAGE_DTYPES.items():
        for m in ("torch", "torch.cuda"):
            out[f"{m}.{name}Storage"] = _StorageType(name, getattr(torch, dt))
    out["torch.storage.UntypedStorage"] = _StorageType("Untyped", torch.uint8)
    for name in ("Tensor", "nn.parameter.Parameter"):
        out[f"torch.{name}"] = _Marker(f"torch.{name}")
    for name in dir(torch):
        v = getattr(torch, name, None)
        if isinstance(v, (torch.dtype, torch.layout, torch.memory_format, torch.qscheme)):
            out[f"torch.{name}"] = v
    out.update({"torch.Size": _plain(*_CONTAINERS)(torch.Size), "torch.device": _plain()(torch.device),
                "torch.serialization._get_layout": _get_layout, "_codecs.encode": _codecs_encode,
                "collections.OrderedDict": _plain(*_CONTAINERS)(OrderedDict),
                "collections.Counter": _plain(*_CONTAINERS)(Counter),
                "copyreg._reconstructor": _copyreg_reconstructor, "copyreg.__newobj__": _copyreg_newobj,
                "numpy.ndarray": _Marker("numpy.ndarray")})
    for container in (set, frozenset, tuple, list, dict):
        out[f"builtins.{container.__name__}"] = _plain(*_CONTAINERS)(container)
    for scalar in (int, float, bool, str, complex, slice, range):
        out[f"builtins.{scalar.__name__}"] = _plain()(scalar)
    out["builtins.bytes"], out["builtins.bytearray"] = _bytes(bytes), _bytes(bytearray)
    for core in _NUMPY_CORE:
        out.update({f"{core}.multiarray._reconstruct": _np_reconstruct, f"{core}.multiarray.scalar": _np_scalar,
                    f"{core}.numeric._frombuffer": _np_frombuffer})
    out["numpy.dtype"] = _np_dtype
    return out


_IMPL: dict[str, Any] | None = None


# ---- the unpickler --------------------------------------------------------------------------
class RestrictedUnpickler(pickle._Unpickler):
    """Unpickles with allow-listed rebuilders and inert stubs; refuses gadgets; imports nothing.

    ``storages(key, dtype, numel, view)`` resolves torch's storage ids (``None``: plain pickles).
    Built on the pure-Python unpickler: its memo is a dict (the C one allocates an array as
    long as the largest memo index a file names) and every read is bounded by the input.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, label: str, storages=None):
        super().__init__(file, encoding="utf-8")
        self.label, self.storages = label, storages
        self.classes: dict[str, type] = {}
        self.depths: dict[int, tuple[tuple, int]] = {}  # id -> (tuple kept alive, nesting) when nested
        global _IMPL
        if _IMPL is None:
            _IMPL = _implementations()

    def _bytearray8(self):  # the stock one allocates the declared length before reading
        (n,) = struct.unpack("<Q", self.read(8))
        data = self.read(n)
        if len(data) < n:
            raise pickle.UnpicklingError("pickle data was truncated")
        self.append(bytearray(data))

    def _build(self):  # only stubs, numpy arrays/dtypes and dict attributes take state: no setattr
        state = self.stack.pop()
        inst = self.stack[-1]
        if type(inst) in (OrderedDict, Counter) and isinstance(state, dict):  # a state dict's _metadata
            inst.__dict__.update((k, v) for k, v in state.items() if isinstance(k, str))
            return
        if isinstance(inst, Stub):
            inst.__setstate__(state)
        elif isinstance(inst, np.dtype):
            inst.__setstate__(_dtype_state(inst, state))
        elif isinstance(inst, np.ndarray):
            inst.__setstate__(_array_state(state))
        else:
            raise Bad(f"BUILD applied to {type(inst).__name__}, which takes no state")

    def _depth(self, t: tuple) -> int:
        """How deep ``hash(t)`` recurses: tuples nested in tuples (cached; anything else ends it)."""
        known = self.depths.get(id(t))
        if known is not None and known[0] is t:
            return known[1]
        d, todo = 1, [(x, 2) for x in t if isinstance(x, tuple)]
        while todo and d <= MAX_NESTING:  # iterative: a tuple that came from elsewhere is walked, not recursed
            x, k = todo.pop()
            known = self.depths.get(id(x))
            if known is not None and known[0] is x:
                d = max(d, k - 1 + known[1])
                continue
            d = max(d, k)
            todo.extend((y, k + 1) for y in x if isinstance(y, tuple))
        if d > 1:
            self.depths[id(t)] = (t, d)
        return d

    def _checked(code: int):  # type: ignore[misc]  # noqa: N805 - builds dispatch entries, not a method
        """The stock opcode, then a check of the tuple it made: hashing a tuple recurses in C
        with no guard, so a ~100,000-deep one used as a key would crash Python; refused first."""
        load = pickle._Unpickler.dispatch[code]

        def run(self):
            load(self)
            top = self.stack[-1]
            if isinstance(top, tuple) and self._depth(top) > MAX_NESTING:
                raise Bad(f"tuples nested more than {MAX_NESTING} levels deep (hashing them would crash Python)")
        return run

    # pickle's own dispatch table is typed for the base class; these take the subclass
    dispatch[pickle.BYTEARRAY8[0]] = _bytearray8  # type: ignore[assignment]
    dispatch[pickle.BUILD[0]] = _build  # type: ignore[assignment]
    for _op in (pickle.TUPLE, pickle.TUPLE1, pickle.TUPLE2, pickle.TUPLE3, pickle.REDUCE, pickle.NEWOBJ,
                pickle.NEWOBJ_EX, pickle.OBJ, pickle.INST):
        dispatch[_op[0]] = _checked(_op[0])
    del _op, _checked

    def find_class(self, module, name):
        m, n = fix_imports(module, name, self.proto)
        path = f"{m}.{n}"
        status, reason = judge(m, n)
        if status != "critical" and (module, name) != (m, n):
            reason = critical_reason(f"{module}.{name}")
            status = "critical" if reason else status
        if status == "critical":  # the scanner refuses these first; this is defence in depth
            raise UnsafeCheckpointError(f"{self.label}: refused: the pickle imports {path} ({reason}); "
                                        "weightkit never runs code from a file")
        impl = _IMPL.get(path)
        if impl is not None and (status == "allowed" or path.startswith("copyreg.")):
            return impl
        cls = self.classes.get(path)
        if cls is None:
            cls = self.classes[path] = type(n.rpartition(".")[2] or "Stub", (Stub,), {"__slots__": (), "qualname": path})
        return cls

    def persistent_load(self, pid):
        if isinstance(pid, tuple) and len(pid) == 4 and pid[0] == "module" and isinstance(pid[1], type) \
                and issubclass(pid[1], Stub):
            return pid[1]  # legacy torch.save: a module class (a stub here)
        if self.storages is None or not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise Bad("unsupported persistent id in the pickle")
        stype, key, numel = pid[1], pid[2], pid[4]
        if not isinstance(stype, _StorageType) or not isinstance(key, str) or not _KEY.match(key) \
                or type(numel) is not int or numel < 0:
            raise Bad("malformed storage reference in the pickle")
        return self.storages(key, stype.dtype, numel, pid[5] if len(pid) > 5 else None)


def unpickle(file, label: str, storages=None):
    """Unpickle one pickle from ``file`` with :class:`RestrictedUnpickler`."""
    return RestrictedUnpickler(file, label, storages).load()


def load_pickle(path: Path) -> Any:
    """A raw pickle file (no persistent ids), unpickled with the restricted unpickler."""
    if path.stat().st_size > MAX_PICKLE_BYTES:
        raise Bad(f"pickle larger than {MAX_PICKLE_BYTES >> 20} MiB")
    data = path.read_bytes()
    return unpickle(io.BytesIO(data), str(path))

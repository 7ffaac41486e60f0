"""PyTorch checkpoints (``.pt``/``.pth``/``.bin``/``.ckpt``): a state dict, a training
checkpoint dict holding one, or a whole pickled model.

Every file is scanned first (:func:`weightkit.scanner.scan`, which reads only the pickles): a
malicious or unreadable file is refused with the scanner's main reason. A safe file loads with
``torch.load(weights_only=True)`` (memory-mapped for zip files, so opening reads the pickle, not
the tensor bytes). A file that needs code (``torch.save(model)``, ``argparse.Namespace`` or
custom classes in a checkpoint) is read by the restricted unpickler
(:mod:`weightkit.sources._restricted`): tensors are rebuilt, every other class becomes an inert
stub, nothing from the file is imported or run.
"""

from __future__ import annotations

import contextlib
import pickle
import struct
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from weightkit import _dtypes
from weightkit.errors import CorruptFileError, UnsafeCheckpointError, UnsupportedFormatError
from weightkit.scanner import scan
from weightkit.scanner._pickle import c_int, c_long
from weightkit.sources import _torch_files as r
from weightkit.sources._base import RawTensor, ReaderBase, register_reader
from weightkit.sources._restricted import Stub
from weightkit.sources._torch_files import LEGACY_MAGIC, MAX_MODULES, is_module, module_state
from weightkit.sources.torch_module import torch_raw

# keys under which training checkpoints keep the model's state dict, most specific first
STATE_DICT_KEYS = ("model_state_dict", "state_dict", "model", "module", "net", "network",
                   "model_state", "weights", "params", "ema", "model_ema", "state")
_LEGACY_MAGIC = b"\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"
_TAR_MEMBERS = (b"sys_info", b"pickle", b"storages", b"tensors")  # torch's oldest format: a tar of these
_OPTIMIZER_KEYS = {"state", "param_groups"}
_MAX_DEPTH = 64  # nesting walked in a loaded checkpoint
_MAX_EXPANDED = 1 << 26  # bytes a broadcast (stride-0) tensor may expand to when read
_META_NODES = 100_000  # values summarised into the metadata of one checkpoint, all keys together
RESTRICTED = "restricted unpickler (nothing executed)"


def _sniff(path: Path, head: bytes | None) -> bool:
    if head is None:
        return False
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as zf:
                return any(n.endswith("/data.pkl") or n == "data.pkl" for n in zf.namelist())
        except (zipfile.BadZipFile, OSError):
            return False
    if head[:1] == b"\x80" and _LEGACY_MAGIC in head[:32]:
        return True
    return _is_tar(head) or _text_magic(head)


def _text_magic(head: bytes) -> bool:
    """A legacy file whose magic number is a protocol-0 INT or LONG (``L0x1950…L``): torch.load
    compares the value, whatever opcode spells it."""
    if head[:1] not in (b"I", b"L") or b"\n" not in head:
        return False
    try:
        return (c_int if head[:1] == b"I" else c_long)(head[1:head.index(b"\n")]) == LEGACY_MAGIC
    except ValueError:
        return False


def _is_tar(head: bytes) -> bool:
    return head[257:262] == b"ustar" and (head[:100].rstrip(b"\0") in _TAR_MEMBERS or b"storages" in head[:512])


def refuse_unsafe(path: Path):
    """Scan ``path`` and refuse it when malicious or unreadable; returns the :class:`ScanReport`."""

    report = scan(path)
    if report.verdict in ("safe", "needs-code"):
        return report
    # the most concrete reason first: the gadget a pickle calls, then what makes the file odd
    f = min((f for f in report.sorted_findings() if f.verdict == report.verdict),
            key=lambda f: f.rule != "global-critical")
    if f.rule == "global-critical" and f.global_name:
        verb = "calls" if set(f.ops) & {"REDUCE", "NEWOBJ", "NEWOBJ_EX", "OBJ", "INST"} else "imports"
        reason = f"the pickle{f' in {f.member}' if f.member else ''} {verb} {f.global_name} ({f.severity})"
    else:
        reason = f"{f.message} ({f.severity}{f', in {f.member}' if f.member else ''})"
    reason = " ".join(reason.split())
    hint = f"run `weightkit scan {path}` for details"
    if report.verdict == "malicious":
        raise UnsafeCheckpointError(f"{path}: refused: {reason}, so loading it needs code execution, "
                                    f"which weightkit never does; {hint}")
    raise CorruptFileError(f"{path}: refused: {reason}; the file is damaged, truncated or not a checkpoint; {hint}")


def _torch_load(path: Path, is_zip: bool) -> Any:
    """``torch.load(weights_only=True)``; ``None`` when torch's unpickler refuses a global the
    scanner accepts (numpy arrays, scalars and dtypes, ``range``…): the restricted unpickler
    reads those. numpy's rebuilders are not added to torch's allow-list, because torch would
    hand numpy's ``__setstate__`` unchecked state (a malformed dtype state segfaults numpy)."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError:
        return None
    except Exception as e:  # torch raises RuntimeError/EOFError/ValueError/KeyError on damaged files
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CorruptFileError(
            f"{path}: not a readable PyTorch checkpoint ({msg[:160]}); the file may be truncated or corrupt"
        ) from None


# what a damaged file makes pickle, zipfile, torch and numpy raise inside the restricted unpickler
_LOAD_ERRORS = (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError,
                RuntimeError, OverflowError, RecursionError, OSError, zipfile.BadZipFile, zlib.error, struct.error)


@contextlib.contextmanager
def _restricted_errors(path: Path, what: str):
    """One-line errors for everything the restricted unpickler can hit in a damaged file."""
    try:
        yield
    except (UnsafeCheckpointError, CorruptFileError) as e:
        msg = " ".join(str(e).split())
        raise type(e)(msg if msg.startswith(str(path)) else f"{path}: {msg}; the file may be damaged") from None
    except _LOAD_ERRORS as e:
        detail = " ".join(str(e).split())[:160] or type(e).__name__
        raise CorruptFileError(f"{path}: not a readable {what} ({type(e).__name__}: {detail}); "
                               "the file may be truncated or corrupt") from None


def _restricted_load(path: Path, is_zip: bool, what: str) -> Any:
    with _restricted_errors(path, "PyTorch checkpoint"):
        if is_zip:
            return r.load_torch_zip(path)
        if head_is_legacy(path):
            return r.load_torch_legacy(path)
    raise UnsafeCheckpointError(
        f"{path}: this checkpoint {what}, and it is neither a zip nor a legacy pickle checkpoint, the two layouts "
        "weightkit extracts without running code; re-save it as a state dict or as safetensors")


def head_is_legacy(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(32)
    return head[:1] == b"\x80" and _LEGACY_MAGIC in head


def _load(path: Path, report) -> tuple[Any, str]:
    """``(object, how)``: the unpickled checkpoint and how it was loaded."""
    is_zip = zipfile.is_zipfile(path)
    with open(path, "rb") as fh:
        if not is_zip and _is_tar(fh.read(512)):  # torch.load reads these only with weights_only=False
            raise UnsupportedFormatError(
                f"{path}: a legacy tar checkpoint (PyTorch's oldest torch.save format), which weightkit does not "
                "read; if you trust the file, load it with torch.load(weights_only=False) and re-save it as a "
                "state dict or safetensors")
    # torch.load allocates a legacy file's storages at their declared sizes before reading them;
    # the restricted loader checks those sizes against the file first
    if report.verdict == "safe" and (is_zip or not head_is_legacy(path)):
        obj = _torch_load(path, is_zip)
        if obj is not None:
            return obj, "torch.load(weights_only=True)"
    needs = ", ".join(report.needs_code[:3]) or "globals torch refuses"
    return _restricted_load(path, is_zip, f"needs code ({needs})"), RESTRICTED


def _is_tensor(x: Any) -> bool:
    import torch

    return isinstance(x, torch.Tensor)


def _is_state_dict(x: Any) -> bool:
    return isinstance(x, Mapping) and bool(x) and all(_is_tensor(v) for v in x.values())


def _is_optimizer(x: Any) -> bool:
    """An optimizer's ``state_dict()`` (in O(1): a checkpoint's dicts may be huge and shared)."""
    return isinstance(x, Mapping) and all(k in x for k in _OPTIMIZER_KEYS)


class _Walk:
    """One walk over a loaded checkpoint's values. A pickle may reach one container from many
    keys (memo references), so everything known about a container is kept by ``id`` (with the
    container, so the id stays its own) and each is looked at once; summaries share one budget
    of nodes. The work is linear in the checkpoint, however its containers are shared."""

    def __init__(self, nodes: int = _META_NODES):
        self.left = nodes
        self.holds: dict[int, tuple[Any, bool]] = {}  # container -> whether it holds a tensor
        self.tried: set[int] = set()  # mappings already searched for a state dict (kept alive by obj)
        self.done: dict[tuple[int, int], tuple[Any, Any]] = {}  # (container, depth) -> its summary

    def holds_tensor(self, obj: Any, depth: int = 0) -> bool:
        """Whether :func:`_flatten` of ``obj`` finds a tensor (without naming them all)."""
        if _is_tensor(obj):
            return True
        if depth > _MAX_DEPTH or not isinstance(obj, (Mapping, list, tuple)):
            return False
        known = self.holds.get(id(obj))
        if known is not None:
            return known[1]
        self.holds[id(obj)] = (obj, False)  # a cycle back here finds nothing new
        found = not _is_optimizer(obj) and any(self.holds_tensor(v, depth + 1) for v in
                                               (obj.values() if isinstance(obj, Mapping) else obj))
        self.holds[id(obj)] = (obj, found)
        return found


def _flatten(obj: Any, prefix: str = "", depth: int = 0, seen: set | None = None,
             walk: _Walk | None = None) -> dict[str, Any]:
    """Tensor leaves of nested dicts/lists, named with dots (a container reached twice is
    walked once, so shared sub-containers in a pickle cannot multiply the work); with ``walk``,
    each value visited is charged to its budget and the walk stops when it is spent."""
    out: dict[str, Any] = {}
    seen = set() if seen is None else seen
    if walk is not None:
        walk.left -= 1
    if _is_tensor(obj):
        out[prefix or "tensor"] = obj
    elif depth > _MAX_DEPTH or id(obj) in seen or (walk is not None and walk.left < 0):
        return out
    elif isinstance(obj, Mapping):
        seen.add(id(obj))
        if _is_optimizer(obj):
            return out
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k), depth + 1, seen, walk))
    elif isinstance(obj, (list, tuple)):
        seen.add(id(obj))
        for i, v in enumerate(obj):
            out.update(_flatten(v, f"{prefix}.{i}" if prefix else str(i), depth + 1, seen, walk))
    return out


def find_state_dict(obj: Any, _walk: _Walk | None = None, _depth: int = 0) -> tuple[dict[str, Any], str | None]:
    """``(state_dict, key_path)``: where in a loaded checkpoint the model's weights are."""
    walk = _Walk() if _walk is None else _walk
    if _is_state_dict(obj):
        return {str(k): v for k, v in obj.items()}, None  # names are strings, whatever the pickle's keys
    if isinstance(obj, Mapping) and _depth <= _MAX_DEPTH:
        walk.tried.add(id(obj))
        for key in STATE_DICT_KEYS:
            inner_obj = obj.get(key)
            # a mapping reached again (shared by several keys) was searched already and held nothing
            if isinstance(inner_obj, Mapping) and not _is_optimizer(inner_obj) and id(inner_obj) not in walk.tried:
                inner, path = find_state_dict(inner_obj, walk, _depth + 1)
                if inner:
                    return inner, key if path is None else f"{key}.{path}"
    flat = _flatten(obj) if walk.holds_tensor(obj) else {}
    return flat, ("(nested)" if flat else None)


def summarize_value(v: Any, depth: int = 0, _walk: _Walk | None = None) -> Any:
    """A JSON-friendly summary of a non-weight checkpoint value (at most 100,000 objects in all,
    each container summarised once however many keys share it)."""
    walk = _Walk() if _walk is None else _walk
    walk.left -= 1
    if _is_tensor(v):
        if v.numel() == 1:
            return v.item()
        return {"tensor": list(v.shape), "dtype": _dtypes.from_torch(v.dtype)}
    if isinstance(v, (bool, int, float, str)) or v is None:
        return v
    if depth > 8 or walk.left < 0:
        return f"<{type(v).__name__}>"
    known = walk.done.get((id(v), depth))
    if known is not None:
        return known[1]
    out = _summary(v, depth, walk)
    walk.done[(id(v), depth)] = (v, out)
    return out


def _summary(v: Any, depth: int, walk: _Walk) -> Any:
    stub = _stub_summary(v, depth, walk)
    if stub is not None:
        return stub
    if isinstance(v, Mapping):
        if _is_optimizer(v):
            return _summarize_optimizer(v, walk)
        if (depth >= 3 or len(v) > 50) and not _scalars(v):
            return {"entries": len(v)} | _tensor_stats(v, walk)
        return {str(k): summarize_value(x, depth + 1, walk) for k, x in v.items()}
    if isinstance(v, (list, tuple, set, frozenset)):  # sets as lists: a set's repr is as big as the set
        if len(v) > 20:
            return {"items": len(v)}
        return [summarize_value(x, depth + 1, walk) for x in v]
    if isinstance(v, (bytes, bytearray)):
        return {"bytes": len(v)}
    if hasattr(v, "item") and callable(v.item):  # numpy scalars
        try:
            return v.item()
        except Exception:
            pass
    return repr(v)[:200]


def _scalars(v: Mapping) -> bool:
    """A flat mapping of at most 500 scalars (hyper-parameters, a config): shown whole, it is small."""
    return len(v) <= 500 and all(isinstance(x, (bool, int, float)) or x is None or (isinstance(x, str) and len(x) <= 200)
               for x in v.values())


def _tensor_stats(v: Any, walk: _Walk) -> dict[str, Any]:
    """Count and bytes of the tensors in ``v``; ``None`` for both when the budget ran out first."""
    tensors = _flatten(v, walk=walk)
    if walk.left < 0:
        return {"tensors": None, "bytes": None}
    return {"tensors": len(tensors), "bytes": sum(t.numel() * t.element_size() for t in tensors.values())}


def _stub_summary(v: Any, depth: int, walk: _Walk) -> dict[str, Any] | None:
    """``{"needs_code": "module.Class", "args": …, "state": …}`` for an object the restricted
    unpickler left as a stub; ``None`` for anything else."""
    import sys

    restricted = sys.modules.get("weightkit.sources._restricted")
    if restricted is None:
        return None
    if isinstance(v, type) and issubclass(v, restricted.Stub):
        return {"needs_code": getattr(v, "qualname", "?")}
    if not isinstance(v, restricted.Stub):
        return None
    out: dict[str, Any] = {"needs_code": v.qualname}
    if v.args:
        out["args"] = summarize_value(list(v.args[:20]), depth + 1, walk)
    if v.state:
        out["state"] = summarize_value(dict(list(v.state.items())[:50]), depth + 1, walk)
    return out


def _summarize_optimizer(opt: Mapping, walk: _Walk) -> dict[str, Any]:
    groups = []
    param_groups = opt.get("param_groups")
    for g in param_groups if isinstance(param_groups, (list, tuple)) else ():
        if walk.left < 0:
            break
        if not isinstance(g, Mapping):
            continue
        walk.left -= len(g)
        params = g.get("params")
        groups.append({str(k): summarize_value(x, 3, walk) for k, x in g.items()
                       if k != "params" and isinstance(x, (int, float, str, bool, tuple, list)) or x is None}
                      | {"params": len(params) if isinstance(params, (list, tuple)) else 0})
    stats = _tensor_stats(opt.get("state", {}), walk)
    return {"optimizer_state": True, "param_groups": groups,
            "state_tensors": stats["tensors"], "state_bytes": stats["bytes"]}


@register_reader("torch", suffixes=(".pt", ".pth", ".bin", ".ckpt"), sniff=_sniff,
                 description="PyTorch checkpoint (torch.save)")
class TorchCheckpointReader(ReaderBase):
    """A checkpoint: scanned, then loaded with ``torch.load(weights_only=True)`` or, when it
    needs code, with the restricted unpickler (whole models get kinds from their stub classes)."""

    format = "torch"

    def __init__(self, path: Path):
        self.path = path
        self.description = str(path)
        report = refuse_unsafe(path)
        obj, how = self._load(path, report)
        self._hints: dict[int, dict] = {}
        self._done: dict[int, Any] = {}
        root = obj
        if how == RESTRICTED:
            # a module costs hundreds of pickle bytes; names beyond that come from sharing
            self._module_limit = min(MAX_MODULES, 100_000 + path.stat().st_size // 16)
            with _restricted_errors(path, "pickled model"):
                obj = self._materialize(obj, 0)
        del self._done
        walk = _Walk()
        self._tensors, self._weights_from = find_state_dict(obj, walk)
        if not self._tensors:
            raise CorruptFileError(f"{path}: the checkpoint holds no tensors; nothing to show")
        for name, t in self._tensors.items():
            if _dtypes.from_torch(t.dtype) not in _dtypes.DTYPES:
                raise UnsupportedFormatError(f"{path}: tensor {name!r} has dtype {t.dtype}, which weightkit does "
                                             "not read; convert it (e.g. dequantize) and re-save")
            stored = t.untyped_storage().nbytes()  # stride-0 views would expand on read
            if t.numel() * t.element_size() > max(stored, _MAX_EXPANDED):
                raise CorruptFileError(f"{path}: tensor {name!r} declares shape {tuple(t.shape)} over {stored} stored "
                                       "bytes (overlapping strides); the file is corrupt")
        self._meta = self._metadata(obj, walk)
        if how == RESTRICTED:

            if isinstance(root, Stub):
                self._meta["class"] = root.qualname
            if report.needs_code:
                self._meta["needs_code"] = report.needs_code
            self._meta["loaded_with"] = how

    def _load(self, path: Path, report) -> tuple[Any, str]:
        return _load(path, report)

    def _materialize(self, obj: Any, depth: int) -> Any:
        """Pickled modules (stub trees) become their state dicts; containers are walked (each
        once: a container shared in the pickle stays shared)."""

        done = self._done
        if depth > _MAX_DEPTH or id(obj) in done:
            return done.get(id(obj), (None, obj))[1]
        if is_module(obj):
            new, hints = module_state(obj, limit=self._module_limit)
            for k, v in hints.items():
                self._hints.setdefault(k, v)
        elif type(obj) in (dict, OrderedDict):
            new = type(obj)((k, self._materialize(v, depth + 1)) for k, v in obj.items())
        elif type(obj) in (list, tuple):
            new = type(obj)(self._materialize(v, depth + 1) for v in obj)
        else:
            return obj
        done[id(obj)] = (obj, new)  # keeps obj alive, so its id is not reused
        return new

    def _metadata(self, obj: Any, walk: _Walk) -> dict[str, Any]:
        meta: dict[str, Any] = {}
        if self._weights_from:
            meta["weights_from"] = self._weights_from
        if isinstance(obj, Mapping) and not _is_state_dict(obj):
            nested = self._weights_from == "(nested)"
            used = None if nested or self._weights_from is None else self._weights_from.split(".")[0]
            for k, v in obj.items():
                if k == used or (nested and walk.holds_tensor(v)):
                    continue
                meta[str(k)] = summarize_value(v, 0, walk)
        return meta

    def tensors(self) -> list[RawTensor]:
        seen: dict[tuple, RawTensor] = {}
        aliases: dict[tuple, list[str]] = {}  # gathered, then set once: growing a tuple per alias is quadratic
        for name, t in self._tensors.items():
            ident = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()),
                     t.dtype) if t.numel() else (id(t),)
            if ident in seen:
                aliases.setdefault(ident, []).append(name)
                continue
            raw = seen[ident] = RawTensor(name, name, tuple(t.shape), _dtypes.from_torch(t.dtype))
            hint = self._hints.get(id(t))
            if hint and (name == hint["role"] or name.endswith("." + hint["role"])):
                layer = name[: -len(hint["role"])].removesuffix(".")
                raw.layer, raw.role, raw.kind, raw.kind_from = layer, hint["role"], hint["kind"], "module"
                raw.trainable, raw.is_buffer, raw.layer_config = hint["trainable"], hint["is_buffer"], hint["layer_config"]
        for ident, names in aliases.items():
            seen[ident].shared_with = tuple(names)
        return list(seen.values())

    def read(self, key: str):
        return torch_raw(self._tensors[key])

    def read_torch(self, key: str):
        return self._tensors[key]

    def metadata(self) -> dict[str, Any]:
        return self._meta

    def close(self) -> None:
        self._tensors = {}


from weightkit.sources import pickle_file  # noqa: E402,F401  (registers the raw-pickle reader right after this one)

"""PyTorch checkpoints (``.pt``/``.pth``/``.bin``/``.ckpt``): a state dict, or a training
checkpoint dict holding one.

Loaded only with ``torch.load(weights_only=True)`` (memory-mapped for zip files, so opening
reads the pickle, not the tensor bytes). A file whose pickle needs code is refused.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .. import _dtypes
from ..errors import CorruptFileError, UnsafeCheckpointError
from ._base import RawTensor, ReaderBase, register_reader
from .torch_module import torch_raw

# keys under which training checkpoints keep the model's state dict, most specific first
STATE_DICT_KEYS = ("model_state_dict", "state_dict", "model", "module", "net", "network",
                   "model_state", "weights", "params", "ema", "model_ema", "state")
_LEGACY_MAGIC = b"\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"
_OPTIMIZER_KEYS = {"state", "param_groups"}


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
    return head[257:262] == b"ustar" and b"storages" in head[:512]


def _load(path: Path) -> Any:
    import torch

    is_zip = zipfile.is_zipfile(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as e:
        needs = _needed_global(str(e))
        what = f" (it pickles {needs})" if needs else ""
        raise UnsafeCheckpointError(
            f"{path}: this checkpoint needs code to load{what}, and weightkit never runs code from a file; "
            "re-save it as a state dict (torch.save(model.state_dict(), ...)) or as safetensors"
        ) from None
    except Exception as e:  # torch raises RuntimeError/EOFError/ValueError/KeyError on damaged files
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CorruptFileError(
            f"{path}: not a readable PyTorch checkpoint ({msg[:160]}); the file may be truncated or corrupt"
        ) from None


def _needed_global(message: str) -> str | None:
    m = re.search(r"(?:Unsupported global: GLOBAL|global) ([\w.]+)", message)
    return m.group(1) if m else None


def _is_tensor(x: Any) -> bool:
    import torch

    return isinstance(x, torch.Tensor)


def _is_state_dict(x: Any) -> bool:
    return isinstance(x, Mapping) and bool(x) and all(_is_tensor(v) for v in x.values())


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Tensor leaves of nested dicts/lists, named with dots."""
    out: dict[str, Any] = {}
    if _is_tensor(obj):
        out[prefix or "tensor"] = obj
    elif isinstance(obj, Mapping):
        if _OPTIMIZER_KEYS <= set(obj):
            return out
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out.update(_flatten(v, f"{prefix}.{i}" if prefix else str(i)))
    return out


def find_state_dict(obj: Any) -> tuple[dict[str, Any], str | None]:
    """``(state_dict, key_path)``: where in a loaded checkpoint the model's weights are."""
    if _is_state_dict(obj):
        return dict(obj), None
    if isinstance(obj, Mapping):
        for key in STATE_DICT_KEYS:
            if key in obj and isinstance(obj[key], Mapping) and not _OPTIMIZER_KEYS <= set(obj[key]):
                inner, path = find_state_dict(obj[key])
                if inner:
                    return inner, key if path is None else f"{key}.{path}"
    flat = _flatten(obj)
    return flat, ("(nested)" if flat else None)


def summarize_value(v: Any, depth: int = 0) -> Any:
    """A JSON-friendly summary of a non-weight checkpoint value."""
    if _is_tensor(v):
        if v.numel() == 1:
            return v.item()
        return {"tensor": list(v.shape), "dtype": _dtypes.from_torch(v.dtype)}
    if isinstance(v, (bool, int, float, str)) or v is None:
        return v
    if isinstance(v, Mapping):
        if _OPTIMIZER_KEYS <= set(v):
            return _summarize_optimizer(v)
        if depth >= 3 or len(v) > 50:
            tensors = _flatten(v)
            return {"entries": len(v), "tensors": len(tensors),
                    "bytes": sum(t.numel() * t.element_size() for t in tensors.values())}
        return {str(k): summarize_value(x, depth + 1) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        if len(v) > 20:
            return {"items": len(v)}
        return [summarize_value(x, depth + 1) for x in v]
    if hasattr(v, "item") and callable(v.item):  # numpy scalars
        try:
            return v.item()
        except Exception:
            pass
    return repr(v)[:200]


def _summarize_optimizer(opt: Mapping) -> dict[str, Any]:
    tensors = _flatten(opt.get("state", {}))
    groups = []
    for g in opt.get("param_groups", []):
        groups.append({k: summarize_value(x, 3) for k, x in g.items()
                       if k != "params" and isinstance(x, (int, float, str, bool, tuple, list)) or x is None}
                      | {"params": len(g.get("params", []))})
    return {
        "optimizer_state": True,
        "param_groups": groups,
        "state_tensors": len(tensors),
        "state_bytes": sum(t.numel() * t.element_size() for t in tensors.values()),
    }


@register_reader("torch", suffixes=(".pt", ".pth", ".bin", ".ckpt"), sniff=_sniff,
                 description="PyTorch checkpoint (torch.save)")
class TorchCheckpointReader(ReaderBase):
    format = "torch"

    def __init__(self, path: Path):
        self.path = path
        self.description = str(path)
        obj = _load(path)
        self._tensors, self._weights_from = find_state_dict(obj)
        if not self._tensors:
            raise CorruptFileError(f"{path}: the checkpoint holds no tensors; nothing to show")
        self._meta = self._metadata(obj)

    def _metadata(self, obj: Any) -> dict[str, Any]:
        meta: dict[str, Any] = {}
        if self._weights_from:
            meta["weights_from"] = self._weights_from
        if isinstance(obj, Mapping) and not _is_state_dict(obj):
            nested = self._weights_from == "(nested)"
            used = None if nested or self._weights_from is None else self._weights_from.split(".")[0]
            for k, v in obj.items():
                if k == used or (nested and _flatten(v)):
                    continue
                meta[str(k)] = summarize_value(v)
        return meta

    def tensors(self) -> list[RawTensor]:
        seen: dict[tuple, RawTensor] = {}
        for name, t in self._tensors.items():
            ident = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()),
                     t.dtype) if t.numel() else (id(t),)
            if ident in seen:
                first = seen[ident]
                first.shared_with = (*first.shared_with, name)
                continue
            seen[ident] = RawTensor(name, name, tuple(t.shape), _dtypes.from_torch(t.dtype))
        return list(seen.values())

    def read(self, key: str):
        return torch_raw(self._tensors[key])

    def read_torch(self, key: str):
        return self._tensors[key]

    def metadata(self) -> dict[str, Any]:
        return self._meta

    def close(self) -> None:
        self._tensors = {}

"""An in-memory state dict: a mapping of names to torch tensors or NumPy arrays."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from weightkit import _dtypes
from weightkit.sources._base import RawTensor, ReaderBase, module_loaded, register_reader
from weightkit.sources.torch_module import torch_raw


def _is_tensor(v: Any) -> bool:
    if isinstance(v, np.ndarray):
        return True
    if module_loaded("torch"):
        import torch

        return isinstance(v, torch.Tensor)
    return False


def _accepts(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(k, str) and _is_tensor(v) for k, v in obj.items())


@register_reader("state-dict", accepts=_accepts, description="a dict of tensors or arrays")
class MappingReader(ReaderBase):
    format = "state-dict"
    description = "state dict"

    def __init__(self, mapping: Mapping):
        self._items = dict(mapping)

    def tensors(self) -> list[RawTensor]:
        out = []
        for name, v in self._items.items():
            dtype = _dtypes.from_numpy(v.dtype) if isinstance(v, np.ndarray) else _dtypes.from_torch(v.dtype)
            out.append(RawTensor(name, name, tuple(v.shape), dtype))
        return out

    def read(self, key: str) -> np.ndarray:
        v = self._items[key]
        return v if isinstance(v, np.ndarray) else torch_raw(v)

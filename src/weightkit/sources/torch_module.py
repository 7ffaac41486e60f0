"""Live ``torch.nn.Module``: parameters and buffers, with kinds from the module classes."""

from __future__ import annotations

from typing import Any

import numpy as np

from weightkit import _dtypes
from weightkit.layers import list_kinds
from weightkit.sources._base import RawTensor, ReaderBase, module_loaded, register_reader


def _is_module(obj: Any) -> bool:
    if not module_loaded("torch"):
        return False
    import torch

    if not isinstance(obj, torch.nn.Module):
        return False
    if module_loaded("keras"):  # Keras 3 layers on the torch backend are nn.Modules: the Keras reader takes them
        import keras

        return not isinstance(obj, keras.layers.Layer)
    return True


def _kind(module) -> str:
    """The module's class, or the nearest torch base whose layout weightkit knows
    (``NonDynamicallyQuantizableLinear`` and user subclasses of ``nn.Linear`` are ``Linear``)."""
    known = set(list_kinds())
    for cls in type(module).__mro__:
        if cls.__name__ in known and cls.__module__.startswith("torch.nn"):
            return cls.__name__
    return type(module).__name__


def _config(module) -> dict[str, Any]:
    cfg = {}
    for attr in ("bidirectional", "proj_size", "groups", "hidden_size", "num_layers"):
        if hasattr(module, attr) and isinstance(getattr(module, attr), (bool, int)):
            cfg[attr] = getattr(module, attr)
    return cfg


def torch_raw(t) -> np.ndarray:
    """Raw storage of a CPU tensor as NumPy, without copying (bfloat16 -> uint16 view)."""
    import torch

    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    dtype = _dtypes.from_torch(t.dtype)
    if _dtypes.is_viewed(dtype):
        t = t.view(torch.uint8 if _dtypes.itemsize(dtype) == 1 else torch.int16)
    arr = t.numpy()
    return _dtypes.raw_view(arr, dtype) if _dtypes.is_viewed(dtype) else arr


@register_reader("torch-module", accepts=_is_module, description="a live torch.nn.Module")
class TorchModuleReader(ReaderBase):
    """Reads a live module. Data are the module's own tensors: ``read`` does not copy them."""

    format = "torch-module"

    def __init__(self, module):
        self.module = module
        self.description = f"torch.nn.Module {type(module).__name__}"
        self._tensors: dict[str, Any] = {}

    def tensors(self) -> list[RawTensor]:
        out: dict[int, RawTensor] = {}
        self._tensors = {}
        # module by module, so a layer's buffers sit beside its parameters; shared modules and
        # tied parameters are reached again under other names and become aliases
        for layer, owner in self.module.named_modules(remove_duplicate=False):
            prefix = f"{layer}." if layer else ""
            items = [(False, n, t) for n, t in owner._parameters.items()]
            items += [(True, n, t) for n, t in owner._buffers.items()]
            for is_buffer, role, t in items:
                if t is None:
                    continue
                name = prefix + role
                if id(t) in out:
                    first = out[id(t)]
                    first.shared_with = (*first.shared_with, name)
                    continue
                out[id(t)] = RawTensor(
                    key=name,
                    name=name,
                    shape=tuple(t.shape),
                    dtype=_dtypes.from_torch(t.dtype),
                    layer=layer,
                    kind=_kind(owner),
                    kind_from="module",
                    role=role,
                    trainable=bool(t.requires_grad) if not is_buffer else False,
                    is_buffer=is_buffer,
                    device=str(t.device),
                    layer_config=_config(owner),
                )
                self._tensors[name] = t
        return list(out.values())

    def _tensor(self, key: str):
        if not self._tensors:
            self.tensors()
        return self._tensors[key]

    def read(self, key: str) -> np.ndarray:
        return torch_raw(self._tensor(key))

    def read_torch(self, key: str):
        return self._tensor(key).detach()

    def metadata(self) -> dict[str, Any]:
        return {"class": f"{type(self.module).__module__}.{type(self.module).__qualname__}",
                "training": bool(self.module.training)}

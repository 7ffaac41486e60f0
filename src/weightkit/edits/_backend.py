"""What the edits need to know of a live model, for torch and Keras 3 alike.

The framework is picked by the model's type, checking ``sys.modules`` first, so an edit never
imports a framework the caller has not imported. Keras 3 layers on the torch backend are
``nn.Module`` objects too: Keras is checked first.

A :class:`Slot` is one writable tensor (a torch parameter or buffer, or a Keras variable) under
the name users see: ``state_dict()`` keys for torch, ``variable.path`` for Keras. Values are
handled as torch tensors on both sides (Keras runs on its torch backend; on another backend the
values go through NumPy).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from weightkit import _dtypes
from weightkit.errors import UnsupportedFormatError, WeightkitError
from weightkit.sources._base import module_loaded

TORCH, KERAS = "torch", "keras"


def is_keras(obj: Any) -> bool:
    """A live Keras 3 layer or model (without importing Keras when the caller has not)."""
    if not module_loaded("keras"):
        return False
    import keras

    return isinstance(obj, (keras.Layer, keras.Model))


def is_torch_module(obj: Any) -> bool:
    """A live ``torch.nn.Module`` (without importing torch when the caller has not)."""
    if not module_loaded("torch"):
        return False
    import torch

    return isinstance(obj, torch.nn.Module)


def framework(model: Any, what: str) -> str:
    """``"torch"`` or ``"keras"`` for a live model; ``UnsupportedFormatError`` otherwise."""
    if module_loaded("keras"):
        import keras

        if isinstance(model, keras.Layer):
            return KERAS
    if module_loaded("torch"):
        import torch

        if isinstance(model, torch.nn.Module):
            return TORCH
    raise UnsupportedFormatError(
        f"{what} edits a live model in place: a torch.nn.Module or a Keras 3 model/layer; received "
        f"{type(model).__module__}.{type(model).__qualname__} (for checkpoint files use weightkit.load_into, "
        "weightkit.prune or weightkit.save)")


def torch_dtype(name: str):
    import torch

    dt = getattr(torch, name, None)
    if not isinstance(dt, torch.dtype):
        raise WeightkitError(f"dtype {name!r} has no torch equivalent")
    return dt


@dataclass(eq=False)
class Slot:
    """One tensor of a live model that edits can write."""

    name: str
    obj: Any
    """The ``nn.Parameter`` / buffer tensor, or the Keras variable."""
    framework: str
    is_buffer: bool = False
    aliases: tuple[str, ...] = ()
    """Other names of the same tensor (tied weights)."""
    keras_torch: bool = field(default=True, repr=False)

    @property
    def key(self) -> int:
        """Identity of the storage object: names with the same key are one tensor."""
        return id(self.obj)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.obj.shape)

    @property
    def dtype_name(self) -> str:
        if self.framework == TORCH:
            return _dtypes.from_torch(self.obj.dtype)
        return str(self.obj.dtype)

    def live(self):
        """The current value as a torch tensor (the model's own memory where possible)."""
        if self.framework == TORCH:
            return self.obj.detach()
        if self.keras_torch:
            return self.obj.value.detach()
        return to_torch(np.asarray(self.obj.numpy()))

    @property
    def torch_dtype(self):
        """The dtype as a torch dtype (what values are validated and converted to)."""
        return self.obj.dtype if self.framework == TORCH else torch_dtype(self.dtype_name)

    @property
    def device(self):
        return self.live().device

    def assign(self, value) -> None:
        """Write ``value`` (a torch tensor of the slot's shape, dtype and device) in place."""
        if self.framework == TORCH:
            import torch

            with torch.no_grad():
                self.obj.copy_(value)
        elif self.keras_torch:
            self.obj.assign(value)
        else:
            self.obj.assign(to_numpy(value))

    def numpy(self) -> np.ndarray:
        """A copy of the values as NumPy (bfloat16 and float8 as float32, exactly)."""
        return to_numpy(self.live(), copy=True)


def to_numpy(t, *, copy: bool = False) -> np.ndarray:
    """A torch tensor as NumPy; types NumPy lacks (bfloat16, float8) become float32 exactly."""
    import torch

    t = t.detach()
    if t.dtype in (torch.bfloat16,) or "float8" in str(t.dtype):
        return t.to(torch.float32).cpu().numpy()  # a new array already
    if t.device.type != "cpu":
        return t.cpu().numpy()
    arr = t.numpy()
    return np.array(arr, copy=True) if copy else arr


def to_torch(value: Any):
    """Anything array-like as a torch tensor (a torch tensor stays as it is)."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach()
    if module_loaded("keras"):
        import keras

        if isinstance(value, keras.Variable):
            value = value.value if keras.backend.backend() == "torch" else np.asarray(value.numpy())
            if isinstance(value, torch.Tensor):
                return value.detach()
    arr = np.asarray(value)
    if arr.dtype.name == "bfloat16":  # ml_dtypes (what Keras hands out)
        return torch.from_numpy(np.ascontiguousarray(arr).view(np.int16)).view(torch.bfloat16)
    if arr.dtype.kind == "V" or arr.dtype.name.startswith("float8"):
        arr = arr.astype(np.float32)
    if arr.dtype.kind not in "biufc":
        raise TypeError(f"values of dtype {arr.dtype} are not numbers")
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if not arr.ndim:
        return torch.tensor(arr)
    arr = np.ascontiguousarray(arr)
    if not arr.flags.writeable:  # weightkit only reads it; torch warns about read-only memory
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(arr)
    return torch.from_numpy(arr)


# --- torch ----------------------------------------------------------------------------------

def torch_slots(model) -> dict[str, Slot]:
    """The model's ``state_dict()`` entries that are its own parameters and buffers, in that
    order (tied tensors appear under each name, sharing one storage object)."""
    own: dict[int, bool] = {}
    for _, t in model.named_parameters(remove_duplicate=False):
        own[id(t)] = False
    for _, t in model.named_buffers(remove_duplicate=False):
        own.setdefault(id(t), True)
    names_of: dict[int, list[str]] = {}
    out: dict[str, Slot] = {}
    for name, t in model.state_dict(keep_vars=True).items():
        if id(t) not in own:
            continue  # extra state or a tensor a state-dict hook derived: not writable
        names_of.setdefault(id(t), []).append(name)
        out[name] = Slot(name, t, TORCH, is_buffer=own[id(t)])
    for s in out.values():
        s.aliases = tuple(n for n in names_of[id(s.obj)] if n != s.name)
    return out


def torch_owners(model) -> dict[str, tuple[Any, str, Any, bool]]:
    """Every parameter and buffer name (tied ones under each name) -> (module, attribute,
    tensor, is_buffer). Names are those :func:`weightkit.open` gives."""
    out: dict[str, tuple[Any, str, Any, bool]] = {}
    for layer, module in model.named_modules(remove_duplicate=False):
        prefix = f"{layer}." if layer else ""
        for attr, t in module._parameters.items():
            if t is not None:
                out.setdefault(prefix + attr, (module, attr, t, False))
        for attr, t in module._buffers.items():
            if t is not None:
                out.setdefault(prefix + attr, (module, attr, t, True))
    return out


# --- Keras ----------------------------------------------------------------------------------

def keras_is_torch() -> bool:
    import keras

    return keras.backend.backend() == "torch"


def keras_check_built(model) -> None:
    if not model.built and not model.weights:
        raise UnsupportedFormatError(
            f"Keras {type(model).__name__} '{model.name}' is not built yet, so it has no weights; call it on "
            "data or build it first (model.build(input_shape))")


def keras_slots(model) -> dict[str, Slot]:
    """``model.weights`` in order, by ``variable.path`` (a repeated path gets ``#i``)."""
    keras_check_built(model)
    on_torch = keras_is_torch()
    trainable_ids = {id(v) for layer in keras_layers(model) for v in layer._trainable_variables}
    out: dict[str, Slot] = {}
    for i, v in enumerate(model.weights):
        name = v.path if v.path not in out else f"{v.path}#{i}"
        out[name] = Slot(name, v, KERAS, is_buffer=id(v) not in trainable_ids, keras_torch=on_torch)
    return out


def keras_layers(model) -> list:
    """``model`` and every layer inside it, each once, parents before children."""
    out, seen, stack = [], set(), [model]
    while stack:
        layer = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        out.append(layer)
        stack.extend(reversed(layer._layers))
    return out


def keras_parents(model) -> dict[int, Any]:
    """id(layer) -> its parent layer (the first one found)."""
    parents: dict[int, Any] = {}
    for layer in keras_layers(model):
        for child in layer._layers:
            parents.setdefault(id(child), layer)
    return parents


def keras_owners(model) -> dict[int, Any]:
    """id(variable) -> the layer that created it (its path is the variable's scope)."""
    holders: dict[int, list] = {}
    for layer in keras_layers(model):
        for v in layer._trainable_variables + layer._non_trainable_variables:
            holders.setdefault(id(v), []).append(layer)
    out = {}
    for v in model.weights:
        held = holders.get(id(v), [])
        scope = v.path.rpartition("/")[0]
        owner = next((h for h in held if getattr(h, "path", None) == scope), held[0] if held else None)
        if owner is not None:
            out[id(v)] = owner
    return out

"""What trains: ``freeze``, ``unfreeze``, the ``trainable`` report and weight-decay
``param_groups``.

Torch freezes single parameters (``requires_grad_``). Keras freezes layers
(``layer.trainable``, which Keras applies to the layer and everything inside it), so a Keras
selection must hold every trainable variable of the layers it touches; freezing a kernel but not
its bias is an error that says so. After freezing or unfreezing a Keras model, ``compile()`` it
again before ``fit`` (Keras' rule: an optimizer built earlier does not know variables that
started to train).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from weightkit.core.selector import Names, Selector
from weightkit.core.selector import select as select_weights
from weightkit.edits._backend import KERAS, TORCH, framework, keras_layers, keras_owners, keras_parents, keras_slots, torch_owners
from weightkit.errors import WeightkitError

_NORM_CLASS = re.compile(r"(Norm|Normalization)(\d+d)?$")

__all__ = ["freeze", "unfreeze", "trainable", "param_groups", "TrainableReport", "TensorTrainable"]


@dataclass(frozen=True)
class TensorTrainable:
    name: str
    shape: tuple[int, ...]
    numel: int
    trainable: bool
    """True when an optimizer step would update it (torch: ``requires_grad``; Keras: in
    ``model.trainable_weights``)."""
    is_buffer: bool
    """State that never trains (torch buffers; Keras variables created non-trainable, such as
    BatchNormalization's moving statistics)."""


@dataclass(frozen=True)
class TrainableReport:
    """Which weights train. ``report[name]`` is a bool; ``to_dict()`` gives JSON.

    Example:
        >>> import torch, weightkit
        >>> r = weightkit.trainable(torch.nn.Linear(3, 2))
        >>> r["weight"], r.trainable_params, r.frozen_params
        (True, 8, 0)
    """

    framework: str
    tensors: list[TensorTrainable]

    @property
    def trainable_params(self) -> int:
        return sum(t.numel for t in self.tensors if t.trainable)

    @property
    def frozen_params(self) -> int:
        """Elements of parameters that could train but are frozen (buffers not counted)."""
        return sum(t.numel for t in self.tensors if not t.trainable and not t.is_buffer)

    @property
    def buffer_elements(self) -> int:
        return sum(t.numel for t in self.tensors if t.is_buffer)

    @property
    def trainable_names(self) -> list[str]:
        return [t.name for t in self.tensors if t.trainable]

    @property
    def frozen_names(self) -> list[str]:
        return [t.name for t in self.tensors if not t.trainable and not t.is_buffer]

    def __getitem__(self, name: str) -> bool:
        for t in self.tensors:
            if t.name == name:
                return t.trainable
        raise KeyError(f"no weight named {name!r}; names: {', '.join(t.name for t in self.tensors[:8])}"
                       + (", …" if len(self.tensors) > 8 else ""))

    def to_dict(self) -> dict[str, Any]:
        return {
            "framework": self.framework,
            "tensors": [{"name": t.name, "shape": list(t.shape), "numel": t.numel, "trainable": t.trainable,
                         "is_buffer": t.is_buffer} for t in self.tensors],
            "total": {"trainable_params": self.trainable_params, "frozen_params": self.frozen_params,
                      "buffer_elements": self.buffer_elements},
        }

    def __str__(self) -> str:
        return (f"{self.trainable_params:,} trainable, {self.frozen_params:,} frozen parameters "
                f"({len(self.frozen_names)} of {len(self.trainable_names) + len(self.frozen_names)} tensors frozen)")


def trainable(model: Any) -> TrainableReport:
    """Which weights of a live torch or Keras 3 model train, with totals.

    Torch: every parameter (``requires_grad``) and buffer, tied parameters once. Keras: every
    variable of ``model.weights``; trainable means Keras would hand it to the optimizer.

    Example:
        >>> import torch, weightkit
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
        >>> _ = weightkit.freeze(net, select="0.*")
        >>> weightkit.trainable(net).frozen_names
        ['0.weight', '0.bias']
    """
    fw = framework(model, "trainable")
    out: list[TensorTrainable] = []
    if fw == TORCH:
        for name, p in model.named_parameters():
            out.append(TensorTrainable(name, tuple(p.shape), p.numel(), bool(p.requires_grad), False))
        for name, b in model.named_buffers():
            out.append(TensorTrainable(name, tuple(b.shape), b.numel(), False, True))
    else:
        slots = keras_slots(model)
        live = {id(v) for v in model.trainable_weights}
        for name, s in slots.items():
            shape = s.shape
            n = 1
            for d in shape:
                n *= d
            out.append(TensorTrainable(name, shape, n, id(s.obj) in live, s.is_buffer))
    return TrainableReport(fw, out)


def freeze(model: Any, *, select: Any = None, kind: Names = None, role: Names = None) -> TrainableReport:
    """Stop the selected weights from training (torch ``requires_grad_(False)``, Keras
    ``layer.trainable = False``). Without a selector, everything is frozen.

    Returns the :func:`trainable` report after the change. Keras: ``compile()`` the model after
    freezing, before ``fit`` (an optimizer built earlier keeps its list of variables).

    Raises:
        WeightkitError: nothing matches; only buffers match; on Keras, the selection holds part
            of a layer's trainable variables (Keras freezes whole layers). The model is unchanged.

    Example:
        >>> import torch, weightkit
        >>> net = torch.nn.Sequential()
        >>> net.add_module("backbone", torch.nn.Linear(8, 8))
        >>> net.add_module("head", torch.nn.Linear(8, 2))
        >>> weightkit.freeze(net, select="backbone.*").trainable_names
        ['head.weight', 'head.bias']
    """
    return _set_trainable(model, select, kind, role, False, "freeze")


def unfreeze(model: Any, *, select: Any = None, kind: Names = None, role: Names = None) -> TrainableReport:
    """Let the selected weights train again; the counterpart of :func:`freeze`. On Keras, the
    layers holding the selection are made trainable (without unfreezing their siblings).

    Example:
        >>> import torch, weightkit
        >>> net = torch.nn.Linear(3, 2)
        >>> _ = weightkit.freeze(net)
        >>> weightkit.unfreeze(net, role="bias").trainable_names
        ['bias']
    """
    return _set_trainable(model, select, kind, role, True, "unfreeze")


def _set_trainable(model, select, kind, role, value: bool, what: str) -> TrainableReport:

    fw = framework(model, what)
    weights = select_weights(model, select, kind=kind, role=role)
    params = [w for w in weights if not w.is_buffer]
    if not params:
        raise WeightkitError(f"{what}: the selection holds only buffers ({', '.join(w.name for w in weights[:5])}), "
                             "which never train; nothing to do")
    if fw == TORCH:
        owners = torch_owners(model)
        for w in params:
            owners[w.name][2].requires_grad_(value)
    else:
        _keras_set(model, params, value, what)
    return trainable(model)


def _keras_set(model, params: list, value: bool, what: str) -> None:
    slots = keras_slots(model)
    owners = keras_owners(model)
    chosen = {id(slots[w.name].obj) for w in params}
    layers: dict[int, Any] = {}
    for w in params:
        layer = owners.get(id(slots[w.name].obj))
        if layer is None:
            raise WeightkitError(f"{what}: no layer of the model owns {w.name}, so Keras cannot (un)freeze it")
        layers[id(layer)] = layer
    for layer in layers.values():  # Keras sets trainable on a layer and everything inside it
        inside = [v for sub in keras_layers(layer) for v in sub._trainable_variables]
        left = [v.path for v in inside if id(v) not in chosen]
        if left:
            raise WeightkitError(
                f"{what}: Keras cannot {what} a single variable: layer {layer.path or layer.name!r} "
                f"({type(layer).__name__}) also holds {', '.join(left)}, which the selection leaves out; "
                f"select the whole layer (e.g. select={(layer.path or layer.name) + '/*'!r})")
    parents = keras_parents(model)
    for layer in layers.values():
        layer.trainable = value
        if value:  # a frozen ancestor hides the layer's weights: make the ancestors trainable, not their other children
            p = parents.get(id(layer))
            while p is not None:
                if not p.trainable:
                    p._trainable = True
                p = parents.get(id(p))


def param_groups(model: Any, *, weight_decay: float = 0.01, no_decay: Any = None) -> list[dict[str, Any]]:
    """Two torch optimizer parameter groups: weights with ``weight_decay``, and biases plus
    normalisation weights with ``weight_decay=0``. Frozen parameters are left out.

    No decay: every 1-D parameter (biases, norm scales), every parameter of a normalisation
    layer (a class, or a base class, named ``…Norm``/``…Norm2d``/``…Normalization``: BatchNorm*,
    LayerNorm, GroupNorm, RMSNorm, InstanceNorm*, ``LlamaRMSNorm``…),
    and any parameter whose name matches ``no_decay`` (a glob, ``"re:<regex>"``, or a list of
    them — e.g. ``"*embed*"``; embeddings are decayed otherwise). Tied parameters appear once.

    Args:
        model: a ``torch.nn.Module``.
        weight_decay: the decay of the first group.
        no_decay: extra name patterns to exclude from decay.

    Example:
        >>> import torch, weightkit
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
        >>> groups = weightkit.param_groups(net, weight_decay=0.1)
        >>> [(len(g["params"]), g["weight_decay"]) for g in groups]
        [(1, 0.1), (3, 0.0)]
        >>> opt = torch.optim.AdamW(groups, lr=1e-3)
    """
    fw = framework(model, "param_groups")
    if fw == KERAS:
        raise WeightkitError("param_groups builds torch optimizer groups; a Keras optimizer takes "
                             "weight_decay= and optimizer.exclude_from_weight_decay(var_names=[...]) instead")
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) or not weight_decay >= 0:
        raise WeightkitError(f"param_groups: weight_decay must be a number >= 0; received {weight_decay!r}")
    no_decay_sel = None if no_decay is None else Selector(no_decay)
    module_of = {}
    for name, (module, *_rest) in torch_owners(model).items():
        module_of[name] = module
    decay, keep = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        module = module_of.get(name)
        norm = module is not None and any(_NORM_CLASS.search(c.__name__) for c in type(module).__mro__)
        if p.ndim <= 1 or norm or (no_decay_sel is not None and no_decay_sel(_Named(name))):
            keep.append(p)
        else:
            decay.append(p)
    if not decay and not keep:
        raise WeightkitError("param_groups: every parameter of the model is frozen; unfreeze some first")
    return [{"params": decay, "weight_decay": float(weight_decay)}, {"params": keep, "weight_decay": 0.0}]


class _Named:
    """A parameter seen by its name alone (``param_groups`` matches ``no_decay`` on names)."""

    def __init__(self, name: str):
        self.name, self.shared_with, self.kind, self.role = name, (), None, None

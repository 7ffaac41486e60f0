"""Live Keras 3 models and layers, plus what both Keras readers know of Keras' layers: the
variables of each class, the names Keras gives layers and groups, and how configs nest.

Tensors are ``model.weights``, named by ``variable.path``. Seed-generator state (the
``seed_generator_state`` variables of Dropout and friends) is not a weight: Keras leaves it out
of ``model.weights`` and out of its weight files, and so does weightkit; ``metadata()`` counts
it. Nothing here imports keras unless the caller already has.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from weightkit import _dtypes
from weightkit.errors import UnsupportedFormatError
from weightkit.sources._base import RawTensor, ReaderBase, module_loaded, register_reader
from weightkit.sources.torch_module import torch_raw

# HDF5 group name -> class. Keras names the groups of a layer list by the class name in
# snake_case (``naming.to_snake_case``), plus ``_1``, ``_2``… for repeats. Generated once with
# Keras 3.15 for the classes whose variables VAR_ORDER knows and the containers around them.
SNAKE_TO_CLASS = {
    "dense": "Dense", "einsum_dense": "EinsumDense", "embedding": "Embedding",
    "conv1d": "Conv1D", "conv2d": "Conv2D", "conv3d": "Conv3D", "conv1d_transpose": "Conv1DTranspose",
    "conv2d_transpose": "Conv2DTranspose", "conv3d_transpose": "Conv3DTranspose",
    "depthwise_conv1d": "DepthwiseConv1D", "depthwise_conv2d": "DepthwiseConv2D",
    "separable_conv1d": "SeparableConv1D", "separable_conv2d": "SeparableConv2D",
    "batch_normalization": "BatchNormalization", "layer_normalization": "LayerNormalization",
    "group_normalization": "GroupNormalization", "rms_normalization": "RMSNormalization",
    "normalization": "Normalization", "p_re_lu": "PReLU", "lstm": "LSTM", "gru": "GRU",
    "simple_rnn": "SimpleRNN", "conv_lstm1d": "ConvLSTM1D", "conv_lstm2d": "ConvLSTM2D",
    "conv_lstm3d": "ConvLSTM3D", "lstm_cell": "LSTMCell", "gru_cell": "GRUCell",
    "simple_rnn_cell": "SimpleRNNCell", "rnn": "RNN", "stacked_rnn_cells": "StackedRNNCells",
    "bidirectional": "Bidirectional", "time_distributed": "TimeDistributed",
    "cu_dnnlstm": "CuDNNLSTM", "cu_dnngru": "CuDNNGRU",  # Keras 2's GPU-only RNNs
    "multi_head_attention": "MultiHeadAttention", "input_layer": "InputLayer",
    "sequential": "Sequential", "functional": "Functional",
}

_BIAS = ("bias", "use_bias")
_RNN = (("kernel", None), ("recurrent_kernel", None), _BIAS)
_CONV = (("kernel", None), _BIAS)
_NORM = (("gamma", "scale"), ("beta", "center"))
# class -> its variables in the order ``Layer.save_own_variables`` writes them (trainable ones
# first, in creation order): (role, config flag without which the variable does not exist)
VAR_ORDER: dict[str, tuple[tuple[str, str | None], ...]] = {
    "Dense": _CONV, "EinsumDense": (("kernel", None), ("bias", "bias_axes")),
    "Embedding": (("embeddings", None),),
    **{k: _CONV for k in ("Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose", "Conv2DTranspose",
                          "Conv3DTranspose", "DepthwiseConv1D", "DepthwiseConv2D")},
    "SeparableConv1D": (("depthwise_kernel", None), ("pointwise_kernel", None), _BIAS),
    "SeparableConv2D": (("depthwise_kernel", None), ("pointwise_kernel", None), _BIAS),
    "BatchNormalization": (*_NORM, ("moving_mean", None), ("moving_variance", None)),
    "LayerNormalization": _NORM, "GroupNormalization": _NORM,
    "RMSNormalization": (("scale", None),), "PReLU": (("alpha", None),),
    "Normalization": (("mean", None), ("variance", None), ("count", None)),
    **{k: _RNN for k in ("LSTM", "GRU", "SimpleRNN", "ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D",
                         "CuDNNLSTM", "CuDNNGRU")},
}
# Keras 2 wrappers whose weights are their inner layer's (``time_distributed_1/kernel``)
WRAPPERS = {"TimeDistributed"}
_OFF_BY_DEFAULT = {"bias_axes"}  # flags whose absence from a config means "no variable"
# non-trainable state of a class (never updated by the optimizer)
BUFFERS = {"BatchNormalization": {"moving_mean", "moving_variance"}, "Normalization": {"mean", "variance", "count"}}
RNN_KINDS = {"LSTM", "GRU", "SimpleRNN", "ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D"}
CELL_KIND = {"LSTMCell": "LSTM", "GRUCell": "GRU", "SimpleRNNCell": "SimpleRNN"}
# MultiHeadAttention's EinsumDense sublayers: HDF5 attribute name -> sublayer (= its layer name)
MHA_SUBLAYERS = {"query_dense": "query", "key_dense": "key", "value_dense": "value",
                 "output_dense": "attention_output", "_gate_dense": "gate"}
CELL_NAMES = {"LSTM": "lstm_cell", "GRU": "gru_cell", "SimpleRNN": "simple_rnn_cell"}  # fixed by Keras


def roles_for(kind: str | None, count: int, config: dict | None = None) -> list[str | None] | None:
    """Roles of a ``kind`` layer's ``count`` saved variables, in save order.

    With the layer's ``config`` its flags decide; without it the count does, and a variable
    that could be either of two optional ones (BatchNormalization with only one of
    ``center``/``scale``) gets role None. None when the count does not fit the class.
    """
    order = VAR_ORDER.get(kind or "")
    if order is None:
        return None
    if config is not None:
        if config.get("rms_scaling"):  # LayerNormalization(rms_scaling=True): a gamma, no beta
            config = {**config, "scale": True, "center": False}
        roles: list[str | None] = [r for r, flag in order if flag is None or config.get(flag, flag not in _OFF_BY_DEFAULT)]
        return roles if len(roles) == count else None
    optional = sum(flag is not None for _, flag in order)
    present = count - (len(order) - optional)
    if not 0 <= present <= optional:
        return None
    out: list[str | None] = []
    placed = 0
    for role, flag in order:
        if flag is None or present == optional:
            out.append(role)
        elif placed < present:
            out.append(None)
            placed += 1
    return out


def rnn_from_gates(shapes: list[tuple[int, ...]]) -> str | None:
    """LSTM, GRU or SimpleRNN from a cell's ``kernel, recurrent_kernel[, bias]`` shapes."""
    return next((k for k in ("LSTM", "GRU", "SimpleRNN") if 2 <= len(shapes) <= 3 and fits(k, shapes)), None)


def fits(kind: str, shapes: list[tuple[int, ...]]) -> bool:
    """Shapes agree with a kind guessed from a name (rank of kernels, gates of RNN cells)."""
    gates = {"LSTM": 4, "GRU": 3, "SimpleRNN": 1}.get(kind)
    if gates and len(shapes) >= 2:
        units = shapes[1][0] if len(shapes[1]) == 2 else -1
        return len(shapes[0]) == 2 and shapes[1] == (units, gates * units)
    m = re.fullmatch(r"(?:Depthwise)?Conv([123])D(?:Transpose)?", kind)
    want = int(m.group(1)) + 2 if m else {"Dense": 2, "Embedding": 2}.get(kind)
    return want is None or len(shapes[0]) == want


def kind_from_variables(roles: list[str], shapes: list[tuple[int, ...]], name: str = "") -> str | None:
    """The Keras class that a layer's variables (roles and shapes) leave no doubt about; None
    when they fit several or none. Structure comes before names: a layer named ``output`` or
    ``rnn_1`` is known by what it holds.

    Example:
        >>> kind_from_variables(["kernel", "recurrent_kernel", "bias"], [(10, 80), (20, 80), (80,)])
        'LSTM'
        >>> kind_from_variables(["kernel", "bias"], [(3, 3, 8, 16), (16,)])
        'Conv2D'
    """
    r = dict(zip(roles, shapes))
    if len(r) != len(roles) or not r:
        return None
    k, b = r.get("kernel"), r.get("bias")
    if "recurrent_kernel" in r and k is not None:
        rk = r["recurrent_kernel"]
        if len(k) in (3, 4, 5) and len(rk) == len(k):
            return f"ConvLSTM{len(k) - 2}D"
        if len(k) != 2 or len(rk) != 2 or rk[1] != k[1] or not rk[0] or rk[1] % rk[0]:
            return None
        units, kind = rk[0], {4: "LSTM", 3: "GRU", 1: "SimpleRNN"}.get(rk[1] // rk[0])
        if kind is None or b is None:
            return kind
        if b == (2 * rk[1],) and kind != "SimpleRNN":  # input and recurrent biases side by side
            return f"CuDNN{kind}"
        return kind if b in ((rk[1],), (2, rk[1])) and units else None
    keys = set(r)
    if {"moving_mean", "moving_variance"} <= keys <= {"gamma", "beta", "moving_mean", "moving_variance"}:
        return "BatchNormalization"
    if keys == {"embeddings"} and len(r["embeddings"]) == 2:
        return "Embedding"
    if keys == {"alpha"}:
        return "PReLU"
    if {"depthwise_kernel", "pointwise_kernel"} <= keys <= {"depthwise_kernel", "pointwise_kernel", "bias"}:
        dims = len(r["depthwise_kernel"]) - 2
        return f"SeparableConv{dims}D" if dims in (1, 2) else None
    if "depthwise_kernel" in keys and keys <= {"depthwise_kernel", "bias"}:
        dims = len(r["depthwise_kernel"]) - 2
        return f"DepthwiseConv{dims}D" if dims in (1, 2) else None
    if k is None or not keys <= {"kernel", "bias"} or (b is not None and len(b) != 1):
        return None
    if len(k) == 2:
        return "Dense" if b is None or b[0] == k[1] else None
    if len(k) not in (3, 4, 5):
        return None
    dims, named = len(k) - 2, re.search(r"transpose|deconv", name, re.I) is not None
    if b is not None and (b[0] == k[-1]) != (b[0] == k[-2]):  # the bias tells filters from channels
        return f"Conv{dims}D" if b[0] == k[-1] else f"Conv{dims}DTranspose"
    if b is not None and b[0] not in (k[-1], k[-2]):
        return None
    return f"Conv{dims}DTranspose" if named else f"Conv{dims}D"


def snake_case(name: str) -> str:
    """Keras' ``naming.to_snake_case``: how it names the groups of a list of layers."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def config_entry(cfg: dict | None, key: str) -> dict | None:
    """``cfg[key]`` when it is a serialised layer (``{"class_name": …, "config": …}``)."""
    e = (cfg or {}).get(key)
    return e if isinstance(e, dict) and "class_name" in e else None


def child_entry(pk: str | None, pcfg: dict, attr: str, name: str | None, container: str) -> dict | None:
    """The serialised config of a sublayer, found in its parent's config (``pk``: parent class;
    ``attr``: the sublayer's attribute or group name; ``container``: the list holding it)."""
    if container in ("layers", "cells"):
        items = [e for e in pcfg.get(container) or () if isinstance(e, dict) and "class_name" in e]
        for e in items:
            if name and (e.get("config") or {}).get("name") == name:
                return e
        if pk == "Sequential" and items and items[0]["class_name"] == "InputLayer":
            items = items[1:]  # Sequential.layers leaves its InputLayer out
        used: dict[str, int] = {}
        for e in items:  # files without names: rebuild the group names Keras gave the list
            base = snake_case(e["class_name"])
            used[base] = used.get(base, -1) + 1
            if (f"{base}_{used[base]}" if used[base] else base) == attr:
                return e
        return None
    if pk == "Bidirectional" and attr == "backward_layer":
        return config_entry(pcfg, "backward_layer") or config_entry(pcfg, "layer")
    if attr in ("layer", "forward_layer", "cell"):  # wrappers and the generic RNN
        return config_entry(pcfg, "cell" if attr == "cell" else "layer")
    return None


@dataclass
class KerasObject:
    """A Keras object of a weights file, as far as its groups and config tell."""

    kind: str | None
    kind_from: str | None
    config: dict | None  # its "config" from config.json; None when unknown
    trainable: bool  # False when it or an ancestor is frozen in the config
    scope: str  # variable-path prefix of its own variables
    child_scope: str  # variable-path prefix of its sublayers' variables
    layer: str  # the layer its variables are reported under (an RNN cell's: its RNN layer)
    facts: dict = field(default_factory=dict)


def describe(parent: KerasObject | None, attr: str, name: str | None, container: str,
             entry: dict | None, layer_list: list[str] | None) -> KerasObject:
    """A sublayer ``attr`` of ``parent`` (None: the root model) with its object ``name`` if the
    file has it, its config ``entry`` if found, and the group names of its list of layers if it
    has one. Models scope their layers afresh: Sequential by its name, Functional by nothing."""
    pk, pcfg = (parent.kind, parent.config) if parent else (None, None)
    kind, how = (entry.get("class_name"), "config") if entry else (None, None)
    cfg = (entry.get("config") or {}) if entry else None
    name = name or (cfg or {}).get("name")
    facts, fold = {}, False
    if attr == "cell" and parent and (pk in RNN_KINDS or pk == "RNN" or "direction" in parent.facts):
        fold, facts = True, dict(parent.facts)
        if pk in RNN_KINDS:
            kind, how, cfg = pk, parent.kind_from, pcfg
            name = name or CELL_NAMES.get(pk, "conv_lstm_cell")
    elif pk == "MultiHeadAttention" and attr in MHA_SUBLAYERS:
        assert parent is not None  # pk is its kind
        name, kind, how = name or MHA_SUBLAYERS[attr], "EinsumDense", parent.kind_from
        cfg = {"bias_axes": pcfg.get("use_bias", True)} if pcfg is not None else None
        facts = {"parent": "MultiHeadAttention", "sublayer": MHA_SUBLAYERS[attr]}
    elif pk == "Bidirectional" and attr in ("forward_layer", "backward_layer"):
        facts = {"direction": attr.split("_")[0]}
        if kind is None and name:
            kind, how = kind_from_name(re.sub(r"^(forward|backward)_", "", name)), "name"
    name = name or attr
    if kind is None and parent is not None:  # list members are named after their class
        kind, how = kind_from_name(attr if container else name), "name"
    if kind is not None:
        kind = CELL_KIND.get(kind, kind)
    if cfg is not None:
        is_model, functional = "layers" in cfg, "input_layers" in cfg
    else:
        is_model = layer_list is not None
        functional = layer_list is not None and any(re.fullmatch(r"input_layer(_\d+)?", k) for k in layer_list)
    scope = name if is_model or parent is None else f"{parent.child_scope}/{name}".lstrip("/")
    trainable = (parent.trainable if parent else True) and (cfg or {}).get("trainable", True) is not False
    return KerasObject(kind or None, how if kind else None, cfg, trainable, scope,
                       ("" if functional else name) if is_model else scope,
                       parent.layer if fold and parent else scope, facts)


def legacy_layer(lname: str, path: list[str], entries: dict[str, dict]):
    """``(layer, kind, kind_from, config, facts)`` of a Keras 2 weight ``path/<role>`` in the
    group of layer ``lname``; ``entries`` maps layer names to their ``model_config`` entries.
    A cell is folded into its RNN layer (``lstm/lstm_cell`` -> ``lstm``)."""
    cell = len(path) > 1 and re.search(r"_cell(_\d+)?$", path[-1]) is not None
    owner = path[-2] if cell else path[-1]
    entry, facts, top = entries.get(owner), {}, entries.get(lname, {})
    m = re.match(r"(forward|backward)_(.+)$", owner)
    if m and top.get("class_name", kind_from_name(lname)) == "Bidirectional":
        facts["direction"] = m.group(1)
        wrapper = top.get("config") or {}
        entry = entry or (m.group(1) == "backward" and config_entry(wrapper, "backward_layer")) \
            or config_entry(wrapper, "layer")
        owner = m.group(2)
    if entry and entry.get("class_name") in WRAPPERS:  # TimeDistributed(Dense): the Dense's weights
        facts["wrapper"] = entry["class_name"]
        entry = config_entry(entry.get("config"), "layer") or {}
    elif not entry and kind_from_name(owner) in WRAPPERS:
        facts["wrapper"] = kind_from_name(owner)
    kind, how = (entry["class_name"], "config") if entry else (kind_from_name(owner), "name")
    cfg = (entry.get("config") or {}) if entry else None
    if kind is not None:
        kind = CELL_KIND.get(kind, kind)
    return "/".join(path[:-1] if cell else path), kind, how, cfg, facts


def kind_from_name(name: str) -> str | None:
    """Class of a layer from a Keras-derived name: ``dense_3`` -> ``Dense``; None if unknown."""
    return SNAKE_TO_CLASS.get(name) or SNAKE_TO_CLASS.get(re.sub(r"_\d+$", "", name))


def _keras_class(obj, known) -> str:
    """The nearest Keras class of ``obj`` that weightkit knows (user subclasses of ``Dense`` are
    ``Dense``); the object's own class name otherwise."""
    for cls in type(obj).__mro__:
        if cls.__name__ in known and cls.__module__.startswith("keras"):
            return cls.__name__
    return type(obj).__name__


_KNOWN = {*VAR_ORDER, *CELL_KIND, "RNN", "StackedRNNCells", "Bidirectional", "MultiHeadAttention",
          "Sequential", "Functional"}


def _is_keras_layer(obj: Any) -> bool:
    if not module_loaded("keras"):
        return False
    import keras

    return isinstance(obj, keras.Layer)


@register_reader("keras-model", accepts=_is_keras_layer, description="a live Keras 3 model or layer")
class KerasModelReader(ReaderBase):
    """Reads a live Keras model or layer. ``read`` returns the variables' own memory where the
    backend allows (torch), a copy otherwise."""

    format = "keras-model"

    def __init__(self, model):
        self.model = model
        self.description = f"Keras {type(model).__name__} '{model.name}'"
        if not model.built and not model.weights:
            raise UnsupportedFormatError(
                f"{self.description} is not built yet, so it has no weights; call it on data or "
                "build it first (model.build(input_shape)), then open it")
        self._vars: dict[str, Any] = {}
        self._tensors: list[RawTensor] | None = None

    def tensors(self) -> list[RawTensor]:
        if self._tensors is None:
            self._tensors = self._collect()
        return self._tensors

    def _collect(self) -> list[RawTensor]:
        holders: dict[int, list[Any]] = {}  # id(variable) -> layers holding it as their own
        self._parents: dict[int, Any] = {}
        stack, seen = [self.model], set()
        while stack:
            layer = stack.pop()
            if id(layer) in seen:
                continue
            seen.add(id(layer))
            for v in layer._trainable_variables + layer._non_trainable_variables:
                holders.setdefault(id(v), []).append(layer)
            for child in reversed(layer._layers):
                self._parents.setdefault(id(child), layer)
                stack.append(child)
        out = []
        for v in self.model.weights:
            held = holders.get(id(v), [])
            # the owner is the layer that created the variable (its path is the variable's scope);
            # any other layer holding it ties it (shared_with)
            scope = v.path.rpartition("/")[0]
            owner = next((h for h in held if h.path == scope), held[0] if held else None)
            shared = tuple(f"{h.path or h.name}/{next((k for k, x in vars(h).items() if x is v), v.name)}"
                           for h in held if h is not owner)
            key = v.path if v.path not in self._vars else f"{v.path}#{len(self._vars)}"
            self._vars[key] = v
            out.append(self._raw(key, v, owner, shared))
        return out

    def _raw(self, key: str, v, owner, shared: tuple[str, ...]) -> RawTensor:
        layer, _, role = v.path.rpartition("/")
        kind = _keras_class(owner, _KNOWN) if owner is not None else None
        parent = self._parents.get(id(owner))
        parent_kind = _keras_class(parent, _KNOWN) if parent is not None else None
        facts: dict[str, Any] = {}
        if kind in CELL_KIND or kind == "ConvLSTMCell":
            if parent_kind in RNN_KINDS or parent_kind == "RNN":  # the cell is folded into its RNN layer
                layer = layer.rpartition("/")[0]
                grand = self._parents.get(id(parent))
                if grand is not None and _keras_class(grand, _KNOWN) == "Bidirectional":
                    facts["direction"] = "forward" if parent is grand.forward_layer else "backward"
            kind = parent_kind if parent_kind in RNN_KINDS else CELL_KIND.get(kind)
            if kind == "GRU":
                facts["reset_after"] = bool(owner.reset_after)
        elif kind == "EinsumDense" and parent_kind == "MultiHeadAttention":
            facts = {"parent": "MultiHeadAttention", "sublayer": owner.name}
        is_buffer = owner is not None and any(x is v for x in owner._non_trainable_variables)
        return RawTensor(
            key=key, name=v.path, shape=tuple(int(d) for d in v.shape), dtype=str(v.dtype),
            layer=layer, kind=kind, kind_from="module" if kind else None, role=role,
            trainable=bool(v.trainable), is_buffer=is_buffer, shared_with=shared, layer_config=facts,
        )

    def read(self, key: str) -> np.ndarray:
        if not self._vars:
            self.tensors()
        v = self._vars[key]
        import keras

        if keras.backend.backend() == "torch":

            return torch_raw(v.value)
        arr = np.asarray(v.numpy())
        dtype = str(v.dtype)
        return _dtypes.raw_view(arr, dtype) if _dtypes.is_viewed(dtype) else arr

    def metadata(self) -> dict[str, Any]:
        import keras

        m = self.model
        weights = {id(v) for v in m.weights}
        meta: dict[str, Any] = {
            "model_class": type(m).__name__, "model_name": m.name, "built": bool(m.built),
            "keras_version": keras.__version__, "backend": keras.backend.backend(),
            "dtype_policy": getattr(getattr(m, "dtype_policy", None), "name", None),
            "seed_generator_states": sum(1 for v in m.variables
                                         if id(v) not in weights and "seed_generator" in v.path),
        }
        opt = getattr(m, "optimizer", None)
        if opt is not None and getattr(opt, "variables", None):
            meta["optimizer"] = {
                "class": type(opt).__name__, "variables": len(opt.variables),
                "bytes": sum(int(np.prod(v.shape)) * _dtypes.itemsize(str(v.dtype)) for v in opt.variables),
            }
        return meta

"""Layer semantics in one table: for each layer kind, the role of each tensor and what each
axis means.

Live models give the kind from their classes; files give it by inference from names,
shapes and sibling tensors (:func:`infer_kind`). Where inference is not sure the kind is
``"unknown"`` and the axes are ``"?"``; nothing is guessed silently (``kind_from`` says how
each kind was found).

Example:
    >>> from weightkit.layers import axes_for
    >>> axes_for("Linear", "weight", (2, 3))
    ('out_features', 'in_features')
    >>> axes_for("Dense", "kernel", (3, 2))
    ('in_features', 'out_features')
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["axes_for", "list_kinds", "split_rnn_name", "infer_kind", "UNKNOWN", "LayerFacts"]

UNKNOWN = "unknown"

_KERNEL_DIMS = {1: ("kernel_size",), 2: ("kernel_h", "kernel_w"), 3: ("kernel_d", "kernel_h", "kernel_w")}


@dataclass(frozen=True)
class LayerFacts:
    """What is known about one layer when its axes are named."""

    kind: str
    roles: frozenset[str]  # roles of all tensors of this layer
    config: dict[str, Any]  # facts from the source (bidirectional, reset_after, …)
    names: tuple[str, ...] = ()


# --- PyTorch -------------------------------------------------------------------------------

def _torch_conv(dims: int, transposed: bool = False):
    k = _KERNEL_DIMS[dims]
    w = ("in_channels", "out_channels/groups", *k) if transposed else ("out_channels", "in_channels/groups", *k)
    return {"weight": w, "bias": ("out_channels",)}


_NORM_STATS = ("num_features",)
_BATCHNORM = {
    "weight": _NORM_STATS,
    "bias": _NORM_STATS,
    "running_mean": _NORM_STATS,
    "running_var": _NORM_STATS,
    "num_batches_tracked": (),
}

_RNN_GATES = {"LSTM": "4*hidden (i,f,g,o)", "GRU": "3*hidden (r,z,n)", "RNN": "hidden_size"}


def _rnn_axes(kind: str, role: str, ndim: int, facts: LayerFacts, layer_index: int) -> tuple[str, ...] | None:
    base = kind.removesuffix("Cell")
    gates = _RNN_GATES.get(base)
    if gates is None:
        return None
    proj = "weight_hr" in facts.roles or bool(facts.config.get("proj_size"))
    state = "proj_size" if proj else "hidden_size"
    if role == "weight_ih":
        if layer_index == 0:
            inp = "input_size"
        elif facts.config.get("bidirectional") or any(n.endswith("_reverse") for n in facts.names):
            inp = f"2*{state.removesuffix('_size')} (fwd,bwd of layer {layer_index - 1})"
        else:
            inp = state
        return (gates, inp)
    if role == "weight_hh":
        return (gates, state)
    if role in ("bias_ih", "bias_hh"):
        return (gates,)
    if role == "weight_hr":
        return ("proj_size", "hidden_size")
    return None


_TORCH: dict[str, dict[str, tuple[str, ...]]] = {
    "Linear": {"weight": ("out_features", "in_features"), "bias": ("out_features",)},
    "Bilinear": {"weight": ("out_features", "in1_features", "in2_features"), "bias": ("out_features",)},
    "Conv1D": {"weight": ("in_features", "out_features"), "bias": ("out_features",)},  # HF GPT-2 style
    "Conv1d": _torch_conv(1),
    "Conv2d": _torch_conv(2),
    "Conv3d": _torch_conv(3),
    "ConvTranspose1d": _torch_conv(1, True),
    "ConvTranspose2d": _torch_conv(2, True),
    "ConvTranspose3d": _torch_conv(3, True),
    "BatchNorm": _BATCHNORM,
    "BatchNorm1d": _BATCHNORM,
    "BatchNorm2d": _BATCHNORM,
    "BatchNorm3d": _BATCHNORM,
    "SyncBatchNorm": _BATCHNORM,
    "InstanceNorm1d": _BATCHNORM,
    "InstanceNorm2d": _BATCHNORM,
    "InstanceNorm3d": _BATCHNORM,
    "GroupNorm": {"weight": ("num_channels",), "bias": ("num_channels",)},
    "LayerNorm": {"weight": ("normalized_shape",), "bias": ("normalized_shape",)},
    "RMSNorm": {"weight": ("normalized_shape",)},
    "Embedding": {"weight": ("num_embeddings", "embedding_dim")},
    "EmbeddingBag": {"weight": ("num_embeddings", "embedding_dim")},
    "PReLU": {"weight": ("num_parameters",)},
    "MultiheadAttention": {
        "in_proj_weight": ("3*embed_dim (q,k,v)", "embed_dim"),
        "in_proj_bias": ("3*embed_dim (q,k,v)",),
        "q_proj_weight": ("embed_dim", "embed_dim"),
        "k_proj_weight": ("embed_dim", "kdim"),
        "v_proj_weight": ("embed_dim", "vdim"),
        "bias_k": ("1", "1", "embed_dim"),
        "bias_v": ("1", "1", "embed_dim"),
    },
}

# --- Keras 3 -------------------------------------------------------------------------------

def _keras_conv(dims: int, transposed: bool = False):
    k = _KERNEL_DIMS[dims]
    w = (*k, "out_channels", "in_channels") if transposed else (*k, "in_channels/groups", "out_channels")
    return {"kernel": w, "bias": ("out_channels",)}


_KERAS_BN = {r: ("num_features",) for r in ("gamma", "beta", "moving_mean", "moving_variance")}
_KERAS_RNN_GATES = {"LSTM": "4*units (i,f,c,o)", "GRU": "3*units (z,r,h)", "SimpleRNN": "units"}

_KERAS: dict[str, dict[str, tuple[str, ...]]] = {
    "Dense": {"kernel": ("in_features", "out_features"), "bias": ("out_features",)},
    "Conv1D": _keras_conv(1),
    "Conv2D": _keras_conv(2),
    "Conv3D": _keras_conv(3),
    "Conv1DTranspose": _keras_conv(1, True),
    "Conv2DTranspose": _keras_conv(2, True),
    "Conv3DTranspose": _keras_conv(3, True),
    "DepthwiseConv1D": {
        "kernel": ("kernel_size", "in_channels", "depth_multiplier"),
        "bias": ("in_channels*depth_multiplier",),
    },
    "DepthwiseConv2D": {
        "kernel": ("kernel_h", "kernel_w", "in_channels", "depth_multiplier"),
        "bias": ("in_channels*depth_multiplier",),
    },
    "SeparableConv1D": {
        "depthwise_kernel": ("kernel_size", "in_channels", "depth_multiplier"),
        "pointwise_kernel": ("1", "in_channels*depth_multiplier", "out_channels"),
        "bias": ("out_channels",),
    },
    "SeparableConv2D": {
        "depthwise_kernel": ("kernel_h", "kernel_w", "in_channels", "depth_multiplier"),
        "pointwise_kernel": ("1", "1", "in_channels*depth_multiplier", "out_channels"),
        "bias": ("out_channels",),
    },
    "BatchNormalization": _KERAS_BN,
    "LayerNormalization": {"gamma": ("normalized_shape",), "beta": ("normalized_shape",)},
    "RMSNormalization": {"scale": ("normalized_shape",)},
    "GroupNormalization": {"gamma": ("num_channels",), "beta": ("num_channels",)},
    "Embedding": {"embeddings": ("input_dim", "output_dim")},
    "PReLU": {"alpha": ("features",)},
    # the preprocessing layer: statistics of the normalised axis (set by adapt(), not trained)
    "Normalization": {"mean": ("features",), "variance": ("features",), "count": ()},
}

_KERAS_MHA = {
    "query": {"kernel": ("embed_dim", "num_heads", "key_dim"), "bias": ("num_heads", "key_dim")},
    "key": {"kernel": ("key_embed_dim", "num_heads", "key_dim"), "bias": ("num_heads", "key_dim")},
    "value": {"kernel": ("value_embed_dim", "num_heads", "value_dim"), "bias": ("num_heads", "value_dim")},
    "attention_output": {"kernel": ("num_heads", "value_dim", "output_dim"), "bias": ("output_dim",)},
}


def _keras_conv_lstm_axes(kind: str, role: str) -> tuple[str, ...] | None:
    """ConvLSTM1D/2D/3D: convolution kernels whose output channels are the four gates."""
    k = _KERNEL_DIMS.get(int(kind[-2])) if kind[-2:-1].isdigit() else None
    gates = "4*filters (i,f,c,o)"
    if k is None:
        return None
    return {"kernel": (*k, "in_channels", gates), "recurrent_kernel": (*k, "filters", gates),
            "bias": (gates,)}.get(role)


def _keras_rnn_axes(kind: str, role: str, ndim: int, facts: LayerFacts) -> tuple[str, ...] | None:
    gates = _KERAS_RNN_GATES.get(kind)
    if gates is None:
        return None
    if role == "kernel":
        return ("input_size", gates)
    if role == "recurrent_kernel":
        return ("units", gates)
    if role == "bias":
        return ("input/recurrent", gates) if ndim == 2 else (gates,)
    return None


# kinds that are special-cased by a function rather than a fixed table
_FUNCTIONAL: dict[str, Callable[..., tuple[str, ...] | None]] = {}


def list_kinds() -> list[str]:
    """Every layer kind whose axes weightkit knows."""
    rnn = [f"{k}{s}" for k in _RNN_GATES for s in ("", "Cell")]
    return sorted({*_TORCH, *_KERAS, *rnn, *_KERAS_RNN_GATES, "EinsumDense", "ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D"})


_RNN_NAME = re.compile(r"^(weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)(?:_l(\d+))?(_reverse)?$")


def split_rnn_name(role: str) -> tuple[str, int, bool] | None:
    """``weight_ih_l1_reverse`` -> ``("weight_ih", 1, True)``; None when not an RNN tensor name."""
    m = _RNN_NAME.match(role)
    if not m:
        return None
    return m.group(1), int(m.group(2) or 0), bool(m.group(3))


def axes_for(kind: str, role: str, shape: tuple[int, ...], facts: LayerFacts | None = None) -> tuple[str, ...]:
    """Meaning of each axis of a tensor with this ``role`` in a layer of this ``kind``.

    Unknown combinations, and shapes whose rank does not fit the table, give ``"?"`` per axis.
    """
    ndim = len(shape)
    facts = facts or LayerFacts(kind, frozenset({role}), {})
    axes = _lookup(kind, role, ndim, facts)
    if axes is None:
        return ("?",) * ndim
    if kind in ("LayerNorm", "RMSNorm", "LayerNormalization", "RMSNormalization") and ndim > 1:
        return tuple(f"normalized_shape[{i}]" for i in range(ndim))
    if len(axes) != ndim:
        return ("?",) * ndim
    return tuple(axes)


def _lookup(kind: str, role: str, ndim: int, facts: LayerFacts) -> tuple[str, ...] | None:
    rnn = split_rnn_name(role)
    if rnn is not None and kind.removesuffix("Cell") in _RNN_GATES:
        return _rnn_axes(kind, rnn[0], ndim, facts, rnn[1])
    if kind in _KERAS_RNN_GATES:
        return _keras_rnn_axes(kind, role, ndim, facts)
    if kind.startswith("ConvLSTM"):
        return _keras_conv_lstm_axes(kind, role)
    if kind == "EinsumDense":
        sub = facts.config.get("sublayer")
        if facts.config.get("parent") == "MultiHeadAttention" and sub in _KERAS_MHA:
            return _KERAS_MHA[sub].get(role)
        return None
    # "Conv1D" is both Hugging Face's GPT-2 layer (weight/bias) and Keras' (kernel/bias)
    keras_style = "kernel" in facts.roles or "depthwise_kernel" in facts.roles
    table = (_KERAS.get(kind) or _TORCH.get(kind)) if keras_style else (_TORCH.get(kind) or _KERAS.get(kind))
    if table is None:
        return None
    return table.get(role)


# --- inference for files -------------------------------------------------------------------

_EMBEDDING_HINT = re.compile(r"(^|[._])(emb|embed|embeds|embedding|embeddings|wte|wpe|tok_embeddings|shared)([._]|$)|_embeddings?$", re.I)
_NORM_HINT = re.compile(r"(norm|(^|[._])ln(_?\w*)?$|(^|[._])ln[._\d]|layernorm)", re.I)
_RMS_HINT = re.compile(r"rms", re.I)
_BN_HINT = re.compile(r"(^|[._])(bn\d*|batchnorm|batch_norm)([._\d]|$)", re.I)
_GN_HINT = re.compile(r"(group_?norm|(^|[._])gn\d*([._]|$))", re.I)
_TRANSPOSED_HINT = re.compile(r"(transpose|deconv)", re.I)
_GPT2_CONV1D = re.compile(r"(^|\.)(c_attn|c_proj|c_fc)$")


def infer_kind(layer: str, members: dict[str, tuple[int, ...]]) -> str:
    """Kind of a layer of a PyTorch-style state dict from its tensors' names and shapes.

    ``members`` maps each tensor's role (the last name component) to its shape.
    Returns ``"unknown"`` when the evidence does not decide.

    Example:
        >>> infer_kind("rnn", {"weight_ih_l0": (80, 10), "weight_hh_l0": (80, 20)})
        'LSTM'
        >>> infer_kind("bn1", {"weight": (8,), "bias": (8,), "running_mean": (8,), "running_var": (8,)})
        'BatchNorm'
    """
    roles = set(members)
    if any(split_rnn_name(r) for r in roles):
        return _infer_rnn(members)
    if "in_proj_weight" in roles or "q_proj_weight" in roles:
        return "MultiheadAttention"
    if "running_mean" in roles or "running_var" in roles:
        return "BatchNorm"
    if {"gamma", "beta"} & roles and roles <= {"gamma", "beta"}:
        return "LayerNorm" if _NORM_HINT.search(layer) else UNKNOWN
    w = members.get("weight")
    if w is None or not roles <= {"weight", "bias"}:
        return UNKNOWN
    b = members.get("bias")
    if len(w) in (3, 4, 5) and _TRANSPOSED_HINT.search(layer):
        # (in_channels, out_channels/groups, k…): the bias has out_channels, a multiple of axis 1
        if b is not None and (len(b) != 1 or b[0] % max(w[1], 1)):
            return UNKNOWN
        return f"ConvTranspose{len(w) - 2}d"
    if b is not None and (len(b) != 1 or (len(w) > 1 and b[0] not in (w[0], w[1]))):
        return UNKNOWN
    if len(w) == 1:
        if _BN_HINT.search(layer):
            return "BatchNorm"
        if _GN_HINT.search(layer):
            return "GroupNorm"
        if _RMS_HINT.search(layer) or (_NORM_HINT.search(layer) and b is None):
            return "RMSNorm"
        if _NORM_HINT.search(layer):
            return "LayerNorm"
        return UNKNOWN
    if len(w) == 2:
        if _GPT2_CONV1D.search(layer) and (b is None or b[0] == w[1]):
            return "Conv1D"
        if b is not None and b[0] != w[0]:
            return UNKNOWN
        if b is None and _EMBEDDING_HINT.search(layer):
            return "Embedding"
        return "Linear"
    if len(w) in (3, 4, 5):
        if b is not None and b[0] != w[0]:
            return UNKNOWN
        return f"Conv{len(w) - 2}d"
    return UNKNOWN


def _infer_rnn(members: dict[str, tuple[int, ...]]) -> str:
    ratios = set()
    for role, shape in members.items():
        parts = split_rnn_name(role)
        if parts is None:
            return UNKNOWN
        if parts[0] == "weight_hh" and len(shape) == 2:
            hr = members.get(role.replace("weight_hh", "weight_hr"))
            hidden = hr[1] if hr else shape[1]
            if hidden == 0 or shape[0] % hidden:
                return UNKNOWN
            ratios.add(shape[0] // hidden)
    if len(ratios) != 1:
        return UNKNOWN
    kind = {4: "LSTM", 3: "GRU", 1: "RNN"}.get(ratios.pop(), UNKNOWN)
    if kind != UNKNOWN and not any(r[1] for r in map(split_rnn_name, members) if r) and not any(
        "_l" in r for r in members
    ):
        kind += "Cell"
    return kind

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

__all__ = ["Axis", "AXIS_TOKENS", "KERNEL_TOKENS", "axis_spec", "spec_fields", "axes_for", "out_axis", "in_axis", "list_kinds", "split_rnn_name",
           "infer_kind", "infer_layer", "Inference", "ModelContext", "UNKNOWN", "LayerFacts"]

UNKNOWN = "unknown"

# --- axis meanings: a machine token beside each human label --------------------------------
#
# Consumers (per-channel quantisation, structured pruning, the doctor's fan-in, filter plots and
# heatmaps) read the token, never the label: rewording a label changes nothing they do.

AXIS_TOKENS = {
    "out": "output units: features, channels, filters",
    "out_per_group": "output channels of one group (a transposed convolution's axis 1)",
    "in": "input units: features, channels, an RNN's input",
    "in_per_group": "input channels of one group (a convolution's axis 1)",
    "kernel": "spatial kernel of a 1-D convolution",
    "kernel_d": "kernel depth",
    "kernel_h": "kernel height",
    "kernel_w": "kernel width",
    "gates": "stacked gate blocks of a recurrent layer (their order in Axis.order)",
    "qkv": "stacked query, key and value projections",
    "hidden": "recurrent state fed back into a recurrent layer",
    "vocab": "one row per token of an embedding table",
    "embed": "embedding vector",
    "heads": "attention heads",
    "head_dim": "size of one attention head",
    "features": "one value per normalised feature or channel",
    "depth_multiplier": "filters per input channel of a depthwise convolution",
    "direction": "input and recurrent bias of a Keras GRU (reset_after)",
    "one": "an axis of size one",
    "unknown": "not known",
}


@dataclass(frozen=True)
class Axis:
    """One axis of a tensor: ``token`` (one of :data:`AXIS_TOKENS`, for programs), ``label``
    (for people) and, for stacked blocks, their ``order`` (``"i,f,g,o"``)."""

    token: str
    label: str
    order: str | None = None


UNKNOWN_AXIS = Axis("unknown", "?")
KERNEL_TOKENS = ("kernel", "kernel_d", "kernel_h", "kernel_w")
_OUT_PREFERENCE = ("out", "out_per_group", "gates", "qkv", "heads", "vocab")
_IN_PREFERENCE = ("in", "in_per_group", "hidden")


def out_axis(tokens: tuple[str, ...] | list[str], *, among: tuple[str, ...] = _OUT_PREFERENCE) -> int | None:
    """Index of the output axis (output units, filters, gate block, vocabulary rows…) of a tensor
    with these axis tokens; ``None`` when unknown. ``among`` narrows which tokens count.

    Example:
        >>> out_axis(("in", "out")), out_axis(("in", "out_per_group", "kernel_h", "kernel_w"))
        (1, 1)
    """
    if len(tokens) == 1:
        return 0
    if not tokens or all(t == "unknown" for t in tokens):
        return None
    for token in among:
        if token in tokens:
            return list(tokens).index(token)
    if "depth_multiplier" in tokens and "in" in tokens:  # depthwise: one filter per input channel
        return list(tokens).index("in")
    return None


def in_axis(tokens: tuple[str, ...] | list[str]) -> int | None:
    """Index of the input axis (input units, input channels, the recurrent state); ``None`` for
    1-D tensors, embedding tables and unknown axes."""
    for token in _IN_PREFERENCE:
        if token in tokens and len(tokens) > 1:
            return list(tokens).index(token)
    return None


def _a(token: str, label: str | None = None, order: str | None = None) -> Axis:
    return Axis(token, label or token, order)


_KERNEL_DIMS = {1: (_a("kernel", "kernel_size"),), 2: (_a("kernel_h"), _a("kernel_w")),
                3: (_a("kernel_d"), _a("kernel_h"), _a("kernel_w"))}
_OUT_F, _IN_F = _a("out", "out_features"), _a("in", "in_features")
_OUT_C = _a("out", "out_channels")


@dataclass(frozen=True)
class LayerFacts:
    """What is known about one layer when its axes are named."""

    kind: str
    roles: frozenset[str]  # roles of all tensors of this layer
    config: dict[str, Any]  # facts from the source (bidirectional, reset_after, …)
    names: tuple[str, ...] = ()


Spec = tuple[Axis, ...]

# --- PyTorch -------------------------------------------------------------------------------

def _torch_conv(dims: int, transposed: bool = False) -> dict[str, Spec]:
    k = _KERNEL_DIMS[dims]
    w = ((_a("in", "in_channels"), _a("out_per_group", "out_channels/groups"), *k) if transposed
         else (_OUT_C, _a("in_per_group", "in_channels/groups"), *k))
    return {"weight": w, "bias": (_OUT_C,)}


_NORM_STATS = (_a("features", "num_features"),)
_BATCHNORM: dict[str, Spec] = {
    "weight": _NORM_STATS,
    "bias": _NORM_STATS,
    "running_mean": _NORM_STATS,
    "running_var": _NORM_STATS,
    "num_batches_tracked": (),
}

_RNN_GATES = {"LSTM": _a("gates", "4*hidden (i,f,g,o)", "i,f,g,o"), "GRU": _a("gates", "3*hidden (r,z,n)", "r,z,n"),
              "RNN": _a("gates", "hidden_size")}


def _rnn_axes(kind: str, role: str, ndim: int, facts: LayerFacts, layer_index: int) -> Spec | None:
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
        return (gates, _a("in", inp))
    if role == "weight_hh":
        return (gates, _a("hidden", state))
    if role in ("bias_ih", "bias_hh"):
        return (gates,)
    if role == "weight_hr":
        return (_a("out", "proj_size"), _a("in", "hidden_size"))
    return None


_EMBED_TORCH: dict[str, Spec] = {"weight": (_a("vocab", "num_embeddings"), _a("embed", "embedding_dim"))}
_EMBED_DIM_OUT = _a("out", "embed_dim")

_TORCH: dict[str, dict[str, Spec]] = {
    "Linear": {"weight": (_OUT_F, _IN_F), "bias": (_OUT_F,)},
    "Bilinear": {"weight": (_OUT_F, _a("in", "in1_features"), _a("in", "in2_features")), "bias": (_OUT_F,)},
    "Conv1D": {"weight": (_IN_F, _OUT_F), "bias": (_OUT_F,)},  # HF GPT-2 style
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
    "GroupNorm": {"weight": (_a("features", "num_channels"),), "bias": (_a("features", "num_channels"),)},
    "LayerNorm": {"weight": (_a("features", "normalized_shape"),), "bias": (_a("features", "normalized_shape"),)},
    "RMSNorm": {"weight": (_a("features", "normalized_shape"),)},
    "Embedding": _EMBED_TORCH,
    "EmbeddingBag": _EMBED_TORCH,
    "PReLU": {"weight": (_a("features", "num_parameters"),)},
    "MultiheadAttention": {
        "in_proj_weight": (_a("qkv", "3*embed_dim (q,k,v)", "q,k,v"), _a("in", "embed_dim")),
        "in_proj_bias": (_a("qkv", "3*embed_dim (q,k,v)", "q,k,v"),),
        "q_proj_weight": (_EMBED_DIM_OUT, _a("in", "embed_dim")),
        "k_proj_weight": (_EMBED_DIM_OUT, _a("in", "kdim")),
        "v_proj_weight": (_EMBED_DIM_OUT, _a("in", "vdim")),
        "bias_k": (_a("one", "1"), _a("one", "1"), _EMBED_DIM_OUT),
        "bias_v": (_a("one", "1"), _a("one", "1"), _EMBED_DIM_OUT),
    },
}

# --- Keras 3 -------------------------------------------------------------------------------

def _keras_conv(dims: int, transposed: bool = False) -> dict[str, Spec]:
    k = _KERNEL_DIMS[dims]
    w = ((*k, _OUT_C, _a("in", "in_channels")) if transposed
         else (*k, _a("in_per_group", "in_channels/groups"), _OUT_C))
    return {"kernel": w, "bias": (_OUT_C,)}


_KERAS_BN: dict[str, Spec] = {r: (_a("features", "num_features"),) for r in ("gamma", "beta", "moving_mean", "moving_variance")}
_KERAS_RNN_GATES = {"LSTM": _a("gates", "4*units (i,f,c,o)", "i,f,c,o"), "GRU": _a("gates", "3*units (z,r,h)", "z,r,h"),
                    "SimpleRNN": _a("gates", "units"),
                    # Keras 2's cuDNN layers: same kernels, the input and recurrent biases side by side
                    "CuDNNLSTM": _a("gates", "4*units (i,f,c,o)", "i,f,c,o"), "CuDNNGRU": _a("gates", "3*units (z,r,h)", "z,r,h")}
_CUDNN_BIAS = {"CuDNNLSTM": _a("gates", "2*4*units (input, recurrent; i,f,c,o)", "i,f,c,o"),
               "CuDNNGRU": _a("gates", "2*3*units (input, recurrent; z,r,h)", "z,r,h")}
_DEPTH_IN, _DEPTH_M = _a("in", "in_channels"), _a("depth_multiplier")
_DEPTH_BIAS = (_a("out", "in_channels*depth_multiplier"),)

_KERAS: dict[str, dict[str, Spec]] = {
    "Dense": {"kernel": (_IN_F, _OUT_F), "bias": (_OUT_F,)},
    "Conv1D": _keras_conv(1),
    "Conv2D": _keras_conv(2),
    "Conv3D": _keras_conv(3),
    "Conv1DTranspose": _keras_conv(1, True),
    "Conv2DTranspose": _keras_conv(2, True),
    "Conv3DTranspose": _keras_conv(3, True),
    "DepthwiseConv1D": {"kernel": (*_KERNEL_DIMS[1], _DEPTH_IN, _DEPTH_M), "bias": _DEPTH_BIAS},
    "DepthwiseConv2D": {"kernel": (*_KERNEL_DIMS[2], _DEPTH_IN, _DEPTH_M), "bias": _DEPTH_BIAS},
    "SeparableConv1D": {
        "depthwise_kernel": (*_KERNEL_DIMS[1], _DEPTH_IN, _DEPTH_M),
        "pointwise_kernel": (_a("one", "1"), _a("in", "in_channels*depth_multiplier"), _OUT_C),
        "bias": (_OUT_C,),
    },
    "SeparableConv2D": {
        "depthwise_kernel": (*_KERNEL_DIMS[2], _DEPTH_IN, _DEPTH_M),
        "pointwise_kernel": (_a("one", "1"), _a("one", "1"), _a("in", "in_channels*depth_multiplier"), _OUT_C),
        "bias": (_OUT_C,),
    },
    "BatchNormalization": _KERAS_BN,
    "LayerNormalization": {"gamma": (_a("features", "normalized_shape"),), "beta": (_a("features", "normalized_shape"),)},
    "RMSNormalization": {"scale": (_a("features", "normalized_shape"),)},
    "GroupNormalization": {"gamma": (_a("features", "num_channels"),), "beta": (_a("features", "num_channels"),)},
    "Embedding": {"embeddings": (_a("vocab", "input_dim"), _a("embed", "output_dim"))},
    "PReLU": {"alpha": (_a("features"),)},
    # the preprocessing layer: statistics of the normalised axis (set by adapt(), not trained)
    "Normalization": {"mean": (_a("features"),), "variance": (_a("features"),), "count": ()},
}

_HEADS = _a("heads", "num_heads")
_KERAS_MHA: dict[str, dict[str, Spec]] = {
    "query": {"kernel": (_a("in", "embed_dim"), _HEADS, _a("head_dim", "key_dim")), "bias": (_HEADS, _a("head_dim", "key_dim"))},
    "key": {"kernel": (_a("in", "key_embed_dim"), _HEADS, _a("head_dim", "key_dim")), "bias": (_HEADS, _a("head_dim", "key_dim"))},
    "value": {"kernel": (_a("in", "value_embed_dim"), _HEADS, _a("head_dim", "value_dim")),
              "bias": (_HEADS, _a("head_dim", "value_dim"))},
    "attention_output": {"kernel": (_HEADS, _a("head_dim", "value_dim"), _a("out", "output_dim")),
                         "bias": (_a("out", "output_dim"),)},
}


def _keras_conv_lstm_axes(kind: str, role: str) -> Spec | None:
    """ConvLSTM1D/2D/3D: convolution kernels whose output channels are the four gates."""
    k = _KERNEL_DIMS.get(int(kind[-2])) if kind[-2:-1].isdigit() else None
    gates = _a("gates", "4*filters (i,f,c,o)", "i,f,c,o")
    if k is None:
        return None
    return {"kernel": (*k, _a("in", "in_channels"), gates), "recurrent_kernel": (*k, _a("hidden", "filters"), gates),
            "bias": (gates,)}.get(role)


def _keras_rnn_axes(kind: str, role: str, ndim: int, facts: LayerFacts) -> Spec | None:
    gates = _KERAS_RNN_GATES.get(kind)
    if gates is None:
        return None
    if role == "kernel":
        return (_a("in", "input_size"), gates)
    if role == "recurrent_kernel":
        return (_a("hidden", "units"), gates)
    if role == "bias":
        return (_a("direction", "input/recurrent"), gates) if ndim == 2 else (_CUDNN_BIAS.get(kind, gates),)
    return None


# kinds that are special-cased by a function rather than a fixed table
_FUNCTIONAL: dict[str, Callable[..., Spec | None]] = {}


def list_kinds() -> list[str]:
    """Every layer kind whose axes weightkit knows."""
    rnn = [f"{k}{s}" for k in _RNN_GATES for s in ("", "Cell")]
    return sorted({*_TORCH, *_KERAS, *rnn, *_KERAS_RNN_GATES, "EinsumDense", "ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D"})


_RNN_NAME = re.compile(r"^(weight_ih|weight_hh|bias_ih|bias_hh|weight_hr|w_ih|w_hh|b_ih|b_hh)(?:_l(\d+))?(_reverse)?$")
_RNN_ALIAS = {"w_ih": "weight_ih", "w_hh": "weight_hh", "b_ih": "bias_ih", "b_hh": "bias_hh"}  # hand-written cells


def split_rnn_name(role: str) -> tuple[str, int, bool] | None:
    """``weight_ih_l1_reverse`` -> ``("weight_ih", 1, True)``; None when not an RNN tensor name."""
    m = _RNN_NAME.match(role)
    if not m:
        return None
    return _RNN_ALIAS.get(m.group(1), m.group(1)), int(m.group(2) or 0), bool(m.group(3))


def axis_spec(kind: str, role: str, shape: tuple[int, ...], facts: LayerFacts | None = None) -> Spec:
    """Each axis of a tensor with this ``role`` in a layer of this ``kind``: its token and label.

    Unknown combinations, and shapes whose rank does not fit the table, give the unknown axis.
    """
    ndim = len(shape)
    facts = facts or LayerFacts(kind, frozenset({role}), {})
    axes = _lookup(kind, role, ndim, facts)
    if axes is None:
        return (UNKNOWN_AXIS,) * ndim
    if kind in ("LayerNorm", "RMSNorm", "LayerNormalization", "RMSNormalization") and ndim > 1:
        return tuple(Axis("features", f"normalized_shape[{i}]") for i in range(ndim))
    if len(axes) != ndim:
        return (UNKNOWN_AXIS,) * ndim
    return tuple(axes)


def spec_fields(spec: Spec) -> dict[str, Any]:
    """The :class:`weightkit.Weight` fields of an axis spec: ``axes`` (labels), ``axis_tokens``,
    ``gate_order`` (of the axis that has one)."""
    return {"axes": tuple(a.label for a in spec), "axis_tokens": tuple(a.token for a in spec),
            "gate_order": next((a.order for a in spec if a.order), None)}


def axes_for(kind: str, role: str, shape: tuple[int, ...], facts: LayerFacts | None = None) -> tuple[str, ...]:
    """Meaning of each axis of a tensor with this ``role`` in a layer of this ``kind``, for people
    (``"?"`` per axis where unknown); programs read :func:`axis_spec`'s tokens instead."""
    return tuple(a.label for a in axis_spec(kind, role, shape, facts))


def _lookup(kind: str, role: str, ndim: int, facts: LayerFacts) -> Spec | None:
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
    # "Conv1D", "Embedding" and "PReLU" are classes of both Keras and torch (or Hugging Face):
    # the variable names tell which (kernel/embeddings/alpha against weight)
    keras_style = bool({"kernel", "depthwise_kernel", "embeddings", "alpha"} & facts.roles)
    tables = (_KERAS, _TORCH) if keras_style else (_TORCH, _KERAS)
    return next((t[kind][role] for t in tables if role in t.get(kind, {})), None)


# --- inference for files -------------------------------------------------------------------
#
# Evidence, strongest first: a config stored with the weights (readers give the kind then),
# structure (running statistics present or not, sibling tensors, shapes that must agree), and
# only then names. A name never overrules structure; where neither decides, the kind is
# ``unknown`` and the candidates are said.

_EMBEDDING_HINT = re.compile(r"(^|[._])(emb|embed|embeds|embedding|embeddings|wte|wpe|tok_embeddings|shared)([._]|$)|_embeddings?$", re.I)
# names only an embedding table has (a projection is never called ``word_embeddings``)
_EMBEDDING_STRONG = re.compile(r"(^|\.)(emb|embed|embeds|embedding|embeddings|wte|wpe|tok_embeddings|embed_tokens|"
                               r"shared|relative_attention_bias|(word|position|token_type|tok|pos|patch_?)_?embeddings?)$", re.I)
_NORM_HINT = re.compile(r"(norm|(^|[._])ln(_?\w*)?$|(^|[._])ln[._\d]|layernorm|(^|[._])n\d+$)", re.I)
_RMS_HINT = re.compile(r"rms", re.I)
_BN_HINT = re.compile(r"(^|[._])(bn\d*|batchnorm|batch_norm)([._\d]|$)", re.I)
_GN_HINT = re.compile(r"(group_?norm|(^|[._])gn\d*([._]|$))", re.I)
_IN_HINT = re.compile(r"(instance_?norm|(^|[._])in\d*$|norm([123])d([._]\d+)?$)", re.I)
_PRELU_HINT = re.compile(r"prelu", re.I)
_BILINEAR_HINT = re.compile(r"bilinear", re.I)
_TRANSPOSED_HINT = re.compile(r"(transpose|deconv)", re.I)
_GPT2_CONV1D = re.compile(r"(^|\.)(c_attn|c_proj|c_fc)$")
_NORM_CANDIDATES = ("LayerNorm", "InstanceNorm", "GroupNorm", "BatchNorm (no running statistics)")


@dataclass(frozen=True)
class Inference:
    """A kind inferred for one layer of a file, with the evidence it rests on; an ``unknown``
    kind names the ``candidates`` the evidence left open."""

    kind: str
    evidence: str
    candidates: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelContext:
    """Facts about the whole state dict that one layer's tensors do not hold: ``widths`` are the
    feature sizes other layers consume or normalise (input sizes of matrices, norm sizes)."""

    widths: frozenset[int] = frozenset()
    conv_only: frozenset[str] = frozenset()  # module paths whose layers hold kernels and no matrix

    @classmethod
    def of(cls, layers: dict[str, dict[str, tuple[int, ...]]]) -> ModelContext:
        widths: set[int] = set()
        ranks: dict[str, set[str]] = {}  # every ancestor path -> what its subtree holds
        for layer, members in layers.items():
            w, b = members.get("weight"), members.get("bias")
            if w is not None and len(w) == 2 and b is not None and b == (w[0],):
                widths.add(w[1])  # a Linear with bias: its input width
            elif w is not None and len(w) == 1 and b == w:
                widths.add(w[0])  # a normalisation: the width it normalises
            what = "matrix" if w is not None and len(w) == 2 else "kernel" if w is not None and len(w) in (3, 4, 5) else None
            if what:
                parts = layer.split(".")
                for k in range(len(parts)):
                    ranks.setdefault(".".join(parts[:k]), set()).add(what)
        return cls(frozenset(widths), frozenset(p for p, r in ranks.items() if r == {"kernel"}))

    def among_convolutions(self, layer: str) -> bool:
        """The module holding ``layer`` has convolution kernels and no matrix: a norm there is as
        often a GroupNorm (BiT-style backbones) as a LayerNorm."""
        return layer.rpartition(".")[0] in self.conv_only


def infer_kind(layer: str, members: dict[str, tuple[int, ...]]) -> str:
    """Kind of a layer of a PyTorch-style state dict from its tensors' names and shapes.

    ``members`` maps each tensor's role (the last name component) to its shape.
    Returns ``"unknown"`` when the evidence does not decide (:func:`infer_layer` says why).

    Example:
        >>> infer_kind("rnn", {"weight_ih_l0": (80, 10), "weight_hh_l0": (80, 20)})
        'LSTM'
        >>> infer_kind("bn1", {"weight": (8,), "bias": (8,), "running_mean": (8,), "running_var": (8,)})
        'BatchNorm'
        >>> infer_kind("bn1", {"weight": (8,), "bias": (8,)})  # no running statistics: not BatchNorm
        'unknown'
    """
    return infer_layer(layer, members).kind


def infer_layer(layer: str, members: dict[str, tuple[int, ...]], context: ModelContext | None = None) -> Inference:
    """:func:`infer_kind` with its evidence and, when unknown, the candidates.

    Example:
        >>> infer_layer("bn1", {"weight": (8,), "bias": (8,)}).candidates[0]
        'LayerNorm'
    """
    roles = set(members)
    if any(split_rnn_name(r) for r in roles):
        kind = _infer_rnn(members)
        return Inference(kind, "structure: gate blocks of the recurrent weights" if kind != UNKNOWN else "",
                         () if kind != UNKNOWN else ("LSTM", "GRU", "RNN"))
    if "in_proj_weight" in roles or "q_proj_weight" in roles:
        return Inference("MultiheadAttention", "structure: in_proj_weight")
    if "running_mean" in roles or "running_var" in roles:
        m = _IN_HINT.search(layer)
        if m:  # InstanceNorm(track_running_stats=True) keeps the same tensors as BatchNorm
            return Inference(f"InstanceNorm{m.group(3) or 1}d", "structure: running statistics; name: instance norm")
        return Inference("BatchNorm", "structure: running statistics")
    if {"gamma", "beta"} & roles and roles <= {"gamma", "beta"}:
        return _by_name("LayerNorm", layer, _NORM_HINT, "name: a norm with gamma/beta", _NORM_CANDIDATES)
    w = members.get("weight")
    gain = members.get("gain")
    if w is not None and len(w) in (3, 4, 5) and gain == (w[0],) + (1,) * (len(w) - 1) and roles <= {"weight", "bias", "gain"}:
        # a weight-standardised convolution (timm's StdConv/ScaledStdConv): a gain per output channel
        inferred = infer_layer(layer, {r: members[r] for r in roles - {"gain"}}, context)
        if inferred.kind.startswith("Conv"):
            return Inference(inferred.kind, f"{inferred.evidence}; a gain per output channel (weight standardisation)")
    if w is None or not roles <= {"weight", "bias"}:
        return Inference(UNKNOWN, "")
    b = members.get("bias")
    if len(w) in (3, 4, 5) and _TRANSPOSED_HINT.search(layer):
        # (in_channels, out_channels/groups, k…): the bias has out_channels, a multiple of axis 1
        if b is not None and (len(b) != 1 or b[0] % max(w[1], 1)):
            return Inference(UNKNOWN, "", ("ConvTranspose", "Conv"))
        return Inference(f"ConvTranspose{len(w) - 2}d", "name and shapes: a transposed convolution")
    if b is not None and b == w and len(w) >= 2 and _NORM_HINT.search(layer):
        return Inference("LayerNorm", "structure: weight and bias of one multi-dimensional shape, named a norm")
    if b is not None and (len(b) != 1 or (len(w) > 1 and b[0] not in (w[0], w[1]))):
        return Inference(UNKNOWN, "")
    if len(w) == 1:
        return _infer_1d(layer, b is not None, context or ModelContext())
    if len(w) == 2:
        return _infer_2d(layer, w, b, context or ModelContext())
    if len(w) == 3 and _BILINEAR_HINT.search(layer):
        return Inference("Bilinear", "name: bilinear, a (out, in1, in2) weight")
    if len(w) in (3, 4, 5):
        if b is not None and b[0] != w[0]:
            return Inference(UNKNOWN, "", (f"ConvTranspose{len(w) - 2}d",))
        return Inference(f"Conv{len(w) - 2}d", "structure: a kernel with a bias per output channel" if b is not None
                         else "structure: a rank-{} kernel".format(len(w)))
    return Inference(UNKNOWN, "")


def _by_name(kind: str, layer: str, hint: re.Pattern, evidence: str, candidates: tuple[str, ...]) -> Inference:
    return Inference(kind, evidence) if hint.search(layer) else Inference(UNKNOWN, "", candidates)


def _infer_1d(layer: str, has_bias: bool, context: ModelContext) -> Inference:
    """A 1-D weight (and bias) without running statistics: a norm's scale, or PReLU's slopes."""
    if _PRELU_HINT.search(layer) and not has_bias:
        return Inference("PReLU", "name: prelu, one slope per channel")
    if _BN_HINT.search(layer):
        # BatchNorm keeps running statistics in its state dict; without them the name is wrong
        # (chgnet's LayerNorm called bn1) or it is a BatchNorm made without them: say both
        return Inference(UNKNOWN, "", _NORM_CANDIDATES)
    if _GN_HINT.search(layer):
        return Inference("GroupNorm", "name: group norm")
    m = _IN_HINT.search(layer)
    if m and has_bias:
        return Inference(f"InstanceNorm{m.group(3) or 1}d", "name: instance norm, no running statistics")
    if _RMS_HINT.search(layer) or (_NORM_HINT.search(layer) and not has_bias):
        return Inference("RMSNorm", "name: a norm with a scale and no bias")
    if _NORM_HINT.search(layer):
        if context.among_convolutions(layer):  # a generic name beside convolutions does not decide
            return Inference(UNKNOWN, "", ("GroupNorm", "LayerNorm", "InstanceNorm"))
        return Inference("LayerNorm", "name: a norm with scale and bias, no running statistics")
    return Inference(UNKNOWN, "", ("LayerNorm", "PReLU", "a per-channel scale") if not has_bias else _NORM_CANDIDATES)


def _infer_2d(layer: str, w: tuple[int, ...], b: tuple[int, ...] | None, context: ModelContext) -> Inference:
    if _GPT2_CONV1D.search(layer) and (b is None or b[0] == w[1]):
        return Inference("Conv1D", "name: GPT-2 Conv1D, stored [in, out]")
    if b is not None and b[0] != w[0]:
        # the bias has as many values as axis 1: stored [in, out] (GPT-2's Conv1D, Keras-style)
        return Inference("Conv1D", "structure: bias size matches axis 1, a linear map stored [in, out]") \
            if b[0] == w[1] else Inference(UNKNOWN, "")
    if b is None and (_EMBEDDING_HINT.search(layer) or _EMBEDDING_STRONG.search(layer)):
        strong = _EMBEDDING_STRONG.search(layer) is not None
        fits_table = w[1] in context.widths  # the model consumes vectors of the table's width
        fits_linear = w[0] in context.widths and w[1] not in context.widths
        if fits_linear and not strong:
            return Inference("Linear", "structure: its output width is the model's, its input width is not")
        if strong or fits_table:
            return Inference("Embedding", "name: an embedding table" + (", width used by the model" if fits_table else ""))
        return Inference(UNKNOWN, "", ("Embedding", "Linear (bias-free)"))
    return Inference("Linear", "structure: a matrix with a bias per row" if b is not None else "structure: a bias-free matrix")


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

"""Layer inference for files without classes: transformer-style names (BERT, GPT-2, LLaMA),
the layer table (``axes_for``) and the inference (``infer_kind``) used directly, and
properties over random Linear/Conv shapes."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

import weightkit
from weightkit.layers import UNKNOWN, axes_for, infer_kind

H, V, I, P = 8, 50, 32, 16  # hidden, vocab, intermediate, max positions

LINEAR = ("out_features", "in_features")
LINEAR_BIAS = ("out_features",)
EMBEDDING = ("num_embeddings", "embedding_dim")
NORM = ("normalized_shape",)
HF_CONV1D = ("in_features", "out_features")  # transformers' GPT-2 Conv1D stores (in, out)
UNK1, UNK2 = ("?",), ("?", "?")


def r(*shape):
    return torch.randn(*shape)


# name -> (tensor, expected kind, expected axes)
BERT = {
    "bert.embeddings.word_embeddings.weight": (r(V, H), "Embedding", EMBEDDING),
    "bert.embeddings.position_embeddings.weight": (r(P, H), "Embedding", EMBEDDING),
    "bert.embeddings.token_type_embeddings.weight": (r(2, H), "Embedding", EMBEDDING),
    "bert.embeddings.LayerNorm.weight": (r(H), "LayerNorm", NORM),
    "bert.embeddings.LayerNorm.bias": (r(H), "LayerNorm", NORM),
    "bert.encoder.layer.0.attention.self.query.weight": (r(H, H), "Linear", LINEAR),
    "bert.encoder.layer.0.attention.self.query.bias": (r(H), "Linear", LINEAR_BIAS),
    "bert.encoder.layer.0.attention.self.key.weight": (r(H, H), "Linear", LINEAR),
    "bert.encoder.layer.0.attention.self.key.bias": (r(H), "Linear", LINEAR_BIAS),
    "bert.encoder.layer.0.attention.output.dense.weight": (r(H, H), "Linear", LINEAR),
    "bert.encoder.layer.0.attention.output.dense.bias": (r(H), "Linear", LINEAR_BIAS),
    "bert.encoder.layer.0.attention.output.LayerNorm.weight": (r(H), "LayerNorm", NORM),
    "bert.encoder.layer.0.attention.output.LayerNorm.bias": (r(H), "LayerNorm", NORM),
    # nn.Linear(H, I).weight is (out=I, in=H)
    "bert.encoder.layer.0.intermediate.dense.weight": (r(I, H), "Linear", LINEAR),
    "bert.encoder.layer.0.intermediate.dense.bias": (r(I), "Linear", LINEAR_BIAS),
    "bert.encoder.layer.0.output.dense.weight": (r(H, I), "Linear", LINEAR),
    "bert.encoder.layer.0.output.dense.bias": (r(H), "Linear", LINEAR_BIAS),
    "bert.encoder.layer.0.output.LayerNorm.weight": (r(H), "LayerNorm", NORM),
    "bert.encoder.layer.0.output.LayerNorm.bias": (r(H), "LayerNorm", NORM),
    "bert.pooler.dense.weight": (r(H, H), "Linear", LINEAR),
    "bert.pooler.dense.bias": (r(H), "Linear", LINEAR_BIAS),
}

GPT2 = {
    "wte.weight": (r(V, H), "Embedding", EMBEDDING),
    "wpe.weight": (r(P, H), "Embedding", EMBEDDING),
    "h.0.ln_1.weight": (r(H), "LayerNorm", NORM),
    "h.0.ln_1.bias": (r(H), "LayerNorm", NORM),
    # Conv1D(nf=3H, nx=H).weight is (nx, nf) = (in, out)
    "h.0.attn.c_attn.weight": (r(H, 3 * H), "Conv1D", HF_CONV1D),
    "h.0.attn.c_attn.bias": (r(3 * H), "Conv1D", ("out_features",)),
    "h.0.attn.c_proj.weight": (r(H, H), "Conv1D", HF_CONV1D),
    "h.0.attn.c_proj.bias": (r(H), "Conv1D", ("out_features",)),
    "h.0.mlp.c_fc.weight": (r(H, 4 * H), "Conv1D", HF_CONV1D),
    "h.0.mlp.c_fc.bias": (r(4 * H), "Conv1D", ("out_features",)),
    "h.0.mlp.c_proj.weight": (r(4 * H, H), "Conv1D", HF_CONV1D),
    "h.0.mlp.c_proj.bias": (r(H), "Conv1D", ("out_features",)),
    "ln_f.weight": (r(H), "LayerNorm", NORM),
    "ln_f.bias": (r(H), "LayerNorm", NORM),
}

LLAMA = {
    "model.embed_tokens.weight": (r(V, H), "Embedding", EMBEDDING),
    "model.layers.0.input_layernorm.weight": (r(H), "RMSNorm", NORM),
    "model.layers.0.self_attn.q_proj.weight": (r(H, H), "Linear", LINEAR),
    "model.layers.0.self_attn.k_proj.weight": (r(H // 2, H), "Linear", LINEAR),
    "model.layers.0.self_attn.o_proj.weight": (r(H, H), "Linear", LINEAR),
    "model.layers.0.post_attention_layernorm.weight": (r(H), "RMSNorm", NORM),
    "model.layers.0.mlp.gate_proj.weight": (r(I, H), "Linear", LINEAR),
    "model.layers.0.mlp.down_proj.weight": (r(H, I), "Linear", LINEAR),
    "model.norm.weight": (r(H), "RMSNorm", NORM),
    "lm_head.weight": (r(V, H), "Linear", LINEAR),
}

AMBIGUOUS = {
    "scale": (r(5), UNKNOWN, UNK1),  # a lone 1-D tensor: a gain? a bias? nothing says
    "gate.weight": (r(5), UNKNOWN, UNK1),  # 1-D weight without a norm-like name
    "foo.weight": (r(4, 6), UNKNOWN, UNK2),  # bias length (5) matches neither dimension
    "foo.bias": (r(5), UNKNOWN, UNK1),
    "h.0.attn.masked_bias": (r(1), UNKNOWN, UNK1),
    "model.layers.0.self_attn.rotary_emb.inv_freq": (r(H // 2), UNKNOWN, UNK1),
}

FAMILIES = {"bert": BERT, "gpt2": GPT2, "llama": LLAMA, "ambiguous": AMBIGUOUS}


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("how", ["state_dict", "safetensors"])
def test_transformer_names(tmp_path, family, how):
    table = FAMILIES[family]
    state = {k: t for k, (t, _, _) in table.items()}
    if how == "safetensors":
        source = tmp_path / f"{family}.safetensors"
        save_file(state, str(source))
    else:
        source = state
    ws = weightkit.open(source)
    assert set(ws.names) == set(table)
    for name, (t, kind, axes) in table.items():
        w = ws[name]
        assert (name, w.kind) == (name, kind)
        assert (name, w.axes) == (name, axes)
        assert w.shape == tuple(t.shape)
        assert w.kind_from == ("unknown" if kind == UNKNOWN else "inferred")
        np.testing.assert_array_equal(w.numpy(), t.numpy())


def test_older_bert_gamma_beta_layernorm():
    ws = weightkit.open({"bert.embeddings.LayerNorm.gamma": r(H), "bert.embeddings.LayerNorm.beta": r(H)})
    assert ws["bert.embeddings.LayerNorm.gamma"].kind == "LayerNorm"


def test_rnn_state_dict_names():
    lstm = torch.nn.LSTM(10, 20, num_layers=2, bidirectional=True)
    ws = weightkit.open({f"encoder.rnn.{k}": v for k, v in lstm.state_dict().items()})
    w = ws["encoder.rnn.weight_ih_l1_reverse"]
    assert (w.layer, w.kind, w.role) == ("encoder.rnn", "LSTM", "weight_ih")
    assert w.shape == (80, 40) and w.axes[0] == "4*hidden (i,f,g,o)" and w.axes[1].startswith("2*hidden")


# ---- infer_kind directly ------------------------------------------------------------------


@pytest.mark.parametrize("layer, members, kind", [
    ("fc", {"weight": (2, 3), "bias": (2,)}, "Linear"),
    ("fc", {"weight": (2, 3)}, "Linear"),
    ("encoder.embed", {"weight": (10, 4)}, "Embedding"),
    ("conv1", {"weight": (16, 3, 3, 3), "bias": (16,)}, "Conv2d"),
    ("conv1", {"weight": (16, 3, 5)}, "Conv1d"),
    ("conv1", {"weight": (16, 3, 1, 2, 3), "bias": (16,)}, "Conv3d"),
    ("up.deconv", {"weight": (4, 6, 3, 3), "bias": (6,)}, "ConvTranspose2d"),
    ("bn1", {"weight": (8,), "bias": (8,), "running_mean": (8,), "running_var": (8,),
             "num_batches_tracked": ()}, "BatchNorm"),
    ("attn", {"in_proj_weight": (24, 8), "in_proj_bias": (24,)}, "MultiheadAttention"),
    ("rnn", {"weight_ih_l0": (80, 10), "weight_hh_l0": (80, 20), "bias_ih_l0": (80,), "bias_hh_l0": (80,)}, "LSTM"),
    ("rnn", {"weight_ih_l0": (60, 10), "weight_hh_l0": (60, 20)}, "GRU"),
    ("rnn", {"weight_ih_l0": (20, 10), "weight_hh_l0": (20, 20)}, "RNN"),
    ("rnn", {"weight_ih_l0": (80, 10), "weight_hh_l0": (80, 5), "weight_hr_l0": (5, 20)}, "LSTM"),
    ("cell", {"weight_ih": (28, 5), "weight_hh": (28, 7), "bias_ih": (28,), "bias_hh": (28,)}, "LSTMCell"),
    ("cell", {"weight_ih": (21, 5), "weight_hh": (21, 7)}, "GRUCell"),
    ("ln_f", {"weight": (8,), "bias": (8,)}, "LayerNorm"),
    ("model.norm", {"weight": (8,)}, "RMSNorm"),
    ("", {"scale": (5,)}, UNKNOWN),
    ("foo", {"weight": (4, 6), "bias": (5,)}, UNKNOWN),
    # the bias fits axis 1: a linear map stored [in, out] (Hugging Face's Conv1D layout)
    ("foo", {"weight": (4, 6), "bias": (6,)}, "Conv1D"),
    # structure before names: no running statistics, so not a BatchNorm whatever the name
    ("block.bn1", {"weight": (8,), "bias": (8,)}, UNKNOWN),
    ("block.bn1", {"weight": (8,), "bias": (8,), "running_mean": (8,), "running_var": (8,)}, "BatchNorm"),
    ("enc.n1", {"weight": (8,), "bias": (8,)}, "LayerNorm"),
    ("sincnet.norm1d.0", {"weight": (8,), "bias": (8,)}, "InstanceNorm1d"),
    ("prelu1", {"weight": (8,)}, "PReLU"),
    ("ln", {"weight": (4, 5), "bias": (4, 5)}, "LayerNorm"),
    ("gru", {"w_ih": (21, 5), "w_hh": (21, 7), "b_ih": (21,), "b_hh": (21,)}, "GRUCell"),
    ("rnn", {"weight_ih_l0": (35, 10), "weight_hh_l0": (35, 20)}, UNKNOWN),  # 35 is no multiple of 20
    ("block", {"weight": (2, 3), "extra": (4,)}, UNKNOWN),
    # weight-standardised convolutions (timm's ScaledStdConv2d): a gain per output channel
    ("stem.conv1", {"weight": (16, 3, 3, 3), "bias": (16,), "gain": (16, 1, 1, 1)}, "Conv2d"),
    ("stem.conv1", {"weight": (16, 3, 3, 3), "bias": (16,), "gain": (3, 1, 1, 1)}, UNKNOWN),
])
def test_infer_kind(layer, members, kind):
    assert infer_kind(layer, members) == kind


# ---- axes_for directly --------------------------------------------------------------------


@pytest.mark.parametrize("kind, role, shape, axes", [
    ("Linear", "weight", (2, 3), ("out_features", "in_features")),
    ("Linear", "bias", (2,), ("out_features",)),
    ("Bilinear", "weight", (2, 3, 4), ("out_features", "in1_features", "in2_features")),
    ("Conv2d", "weight", (16, 3, 3, 3), ("out_channels", "in_channels/groups", "kernel_h", "kernel_w")),
    ("Conv1d", "weight", (16, 3, 5), ("out_channels", "in_channels/groups", "kernel_size")),
    ("ConvTranspose1d", "weight", (3, 16, 5), ("in_channels", "out_channels/groups", "kernel_size")),
    ("Embedding", "weight", (10, 4), ("num_embeddings", "embedding_dim")),
    ("LSTM", "weight_ih_l0", (80, 10), ("4*hidden (i,f,g,o)", "input_size")),
    ("LSTM", "weight_hh_l0_reverse", (80, 20), ("4*hidden (i,f,g,o)", "hidden_size")),
    ("GRU", "bias_hh_l0", (60,), ("3*hidden (r,z,n)",)),
    ("RNN", "weight_ih_l0", (20, 10), ("hidden_size", "input_size")),
    ("BatchNorm2d", "running_var", (8,), ("num_features",)),
    ("BatchNorm2d", "num_batches_tracked", (), ()),
    ("GroupNorm", "weight", (8,), ("num_channels",)),
    ("PReLU", "weight", (1,), ("num_parameters",)),
    ("MultiheadAttention", "in_proj_weight", (24, 8), ("3*embed_dim (q,k,v)", "embed_dim")),
    ("Conv1D", "weight", (8, 24), ("in_features", "out_features")),
    # unknown kinds, unknown roles and shapes of the wrong rank give "?" per axis
    ("unknown", "weight", (2, 3), ("?", "?")),
    ("MyBlock", "alpha", (5,), ("?",)),
    ("Linear", "scale", (5,), ("?",)),
    ("Linear", "weight", (2, 3, 4), ("?", "?", "?")),
    ("Conv2d", "weight", (16, 3, 3), ("?", "?", "?")),
])
def test_axes_for(kind, role, shape, axes):
    assert axes_for(kind, role, shape) == axes


def test_every_listed_kind_has_axes_for_something():
    kinds = weightkit.list_kinds()
    for kind in ("Linear", "Conv2d", "ConvTranspose2d", "LSTM", "GRU", "RNN", "LSTMCell", "Embedding",
                 "LayerNorm", "BatchNorm2d", "MultiheadAttention", "RMSNorm"):
        assert kind in kinds


# ---- properties ---------------------------------------------------------------------------

dim = st.integers(1, 64)
shapes = st.lists(st.integers(0, 9), min_size=0, max_size=6).map(tuple)
TORCH_KINDS = ["Linear", "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d"]


@settings(max_examples=60, deadline=None)
@given(kind=st.sampled_from(TORCH_KINDS), role=st.sampled_from(["weight", "bias"]), shape=shapes)
def test_axes_for_gives_one_axis_per_dimension(kind, role, shape):
    axes = axes_for(kind, role, shape)
    assert len(axes) == len(shape)
    assert all(isinstance(a, str) and a for a in axes)


@settings(max_examples=60, deadline=None)
@given(out=dim, inp=dim)
def test_linear_axes_and_inference(out, inp):
    assert axes_for("Linear", "weight", (out, inp)) == ("out_features", "in_features")
    assert infer_kind("fc", {"weight": (out, inp), "bias": (out,)}) == "Linear"


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 3), out=dim, inp=dim, data=st.data())
def test_conv_axes_and_inference(n, out, inp, data):
    kernel = tuple(data.draw(st.lists(st.integers(1, 7), min_size=n, max_size=n)))
    shape = (out, inp, *kernel)
    axes = axes_for(f"Conv{n}d", "weight", shape)
    assert len(axes) == n + 2 and "?" not in axes
    assert axes[:2] == ("out_channels", "in_channels/groups")
    assert all(a.startswith("kernel") for a in axes[2:])
    assert infer_kind("conv", {"weight": shape, "bias": (out,)}) == f"Conv{n}d"
    t_axes = axes_for(f"ConvTranspose{n}d", "weight", (inp, out, *kernel))
    assert t_axes[:2] == ("in_channels", "out_channels/groups") and len(t_axes) == n + 2


def test_embedding_name_does_not_beat_structure():
    # chgnet's bond_embedding is a bias-free Linear(31 -> 64) in a model whose width is 64: the
    # table would be 64 rows of 31-wide vectors that nothing in the model consumes
    from weightkit.layers import ModelContext, infer_layer

    layers = {"bond_embedding": {"weight": (64, 31)}, "fc": {"weight": (64, 64), "bias": (64,)},
              "norm": {"weight": (64,), "bias": (64,)}, "atom.embedding": {"weight": (94, 64)}}
    context = ModelContext.of(layers)
    linear = infer_layer("bond_embedding", layers["bond_embedding"], context)
    assert (linear.kind, linear.evidence.split(":")[0]) == ("Linear", "structure")
    assert infer_layer("atom.embedding", layers["atom.embedding"], context).kind == "Embedding"
    unsure = infer_layer("bond_embedding", {"weight": (64, 31)})  # no other layer to compare with
    assert unsure.kind == UNKNOWN and unsure.candidates == ("Embedding", "Linear (bias-free)")


def test_unknown_kind_names_its_candidates(tmp_path):
    import torch

    import weightkit

    path = tmp_path / "sd.pt"
    torch.save({"block.bn1.weight": torch.ones(8), "block.bn1.bias": torch.zeros(8)}, path)
    w = weightkit.open(path)["block.bn1.weight"]
    assert w.kind == UNKNOWN and "LayerNorm" in w.kind_candidates
    assert w.to_dict()["kind_candidates"] == list(w.kind_candidates)


def test_a_generic_norm_among_convolutions_is_left_open():
    """`norm1` beside convolutions and no matrix: GroupNorm in BiT-style backbones, LayerNorm in
    others; beside a Linear it is a LayerNorm."""
    from weightkit.layers import ModelContext, infer_layer

    conv_block = {"blocks.0.conv1": {"weight": (8, 4, 3, 3)}, "blocks.0.norm1": {"weight": (8,), "bias": (8,)}}
    ctx = ModelContext.of(conv_block)
    open_ = infer_layer("blocks.0.norm1", conv_block["blocks.0.norm1"], ctx)
    assert open_.kind == UNKNOWN and open_.candidates[:2] == ("GroupNorm", "LayerNorm")
    mixed = {**conv_block, "blocks.0.fc": {"weight": (8, 8), "bias": (8,)}}
    assert infer_layer("blocks.0.norm1", mixed["blocks.0.norm1"], ModelContext.of(mixed)).kind == "LayerNorm"

"""weightkit.open(live torch.nn.Module): names, kinds, roles, shapes and axis meanings as the
PyTorch documentation defines them; shared tensors; trainability; data; the summary API.

Expected shapes come from the torch docs (e.g. nn.Linear.weight is (out_features, in_features),
nn.LSTM.weight_ih_l0 is (4*hidden_size, input_size)), never from running weightkit."""

import fnmatch
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

import weightkit

CONV2D_AXES = ("out_channels", "in_channels/groups", "kernel_h", "kernel_w")
LSTM_GATES = "4*hidden (i,f,g,o)"
GRU_GATES = "3*hidden (r,z,n)"


def by_name(ws):
    return {w.name: w for w in ws}


def assert_data_matches(ws, module):
    """Every weight's data is exactly the module's tensor, and its metadata agrees with torch."""
    tensors = dict(module.named_parameters(remove_duplicate=False))
    tensors.update(dict(module.named_buffers(remove_duplicate=False)))
    for name, t in tensors.items():
        w = ws[name]
        assert w.shape == tuple(t.shape), name
        assert w.dtype == str(t.dtype).removeprefix("torch."), name
        assert w.numel == t.numel(), name
        assert w.nbytes == t.numel() * t.element_size(), name
        np.testing.assert_array_equal(w.numpy(), t.detach().float().numpy() if t.dtype == torch.bfloat16
                                      else t.detach().numpy())


# --- single layers -----------------------------------------------------------------------


def test_linear():
    m = nn.Linear(3, 2)
    ws = weightkit.open(m)
    assert ws.names == ["weight", "bias"]
    w, b = ws["weight"], ws["bias"]
    assert (w.kind, w.role, w.layer) == ("Linear", "weight", "")
    assert w.shape == (2, 3)  # (out_features, in_features)
    assert w.axes == ("out_features", "in_features")
    assert (b.role, b.shape, b.axes) == ("bias", (2,), ("out_features",))
    assert w.kind_from == "module"
    assert w.trainable is True and w.is_buffer is False
    assert w.ndim == 2 and w.numel == 6 and w.nbytes == 24
    assert ws.total_params == 3 * 2 + 2
    assert_data_matches(ws, m)


def test_numpy_is_a_copy_of_the_parameter():
    m = nn.Linear(3, 2)
    ws = weightkit.open(m)
    arr = ws["weight"].numpy()
    np.testing.assert_array_equal(arr, m.weight.detach().numpy())
    arr[:] = 123.0
    assert not torch.any(m.weight == 123.0), "numpy() must not alias the module's parameter"


def test_torch_returns_the_values():
    m = nn.Linear(3, 2)
    t = weightkit.open(m)["weight"].torch()
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    assert torch.equal(t, m.weight.detach())


def test_conv2d():
    m = nn.Conv2d(3, 16, 3)
    ws = weightkit.open(m)
    w = ws["weight"]
    assert w.kind == "Conv2d" and w.shape == (16, 3, 3, 3)
    assert w.axes == CONV2D_AXES
    assert ws["bias"].shape == (16,) and ws["bias"].axes == ("out_channels",)
    assert_data_matches(ws, m)


def test_conv2d_rectangular_kernel():
    m = nn.Conv2d(3, 4, (2, 5))
    w = weightkit.open(m)["weight"]
    assert w.shape == (4, 3, 2, 5) and w.axes == CONV2D_AXES


def test_grouped_conv2d():
    m = nn.Conv2d(4, 8, 3, groups=2)
    ws = weightkit.open(m)
    w = ws["weight"]
    # docs: weight is (out_channels, in_channels/groups, kH, kW)
    assert w.shape == (8, 2, 3, 3)
    assert w.axes == CONV2D_AXES
    assert ws["bias"].shape == (8,)


def test_depthwise_conv2d():
    m = nn.Conv2d(6, 6, 3, groups=6, bias=False)
    ws = weightkit.open(m)
    assert ws.names == ["weight"]
    assert ws["weight"].shape == (6, 1, 3, 3) and ws["weight"].axes == CONV2D_AXES


def test_conv1d_and_conv3d():
    w1 = weightkit.open(nn.Conv1d(2, 5, 7))["weight"]
    assert (w1.kind, w1.shape, w1.axes) == ("Conv1d", (5, 2, 7), ("out_channels", "in_channels/groups", "kernel_size"))
    w3 = weightkit.open(nn.Conv3d(2, 5, (1, 2, 3)))["weight"]
    assert w3.shape == (5, 2, 1, 2, 3)
    assert w3.axes == ("out_channels", "in_channels/groups", "kernel_d", "kernel_h", "kernel_w")


def test_conv_transpose2d():
    m = nn.ConvTranspose2d(4, 6, 3, groups=2)
    ws = weightkit.open(m)
    w = ws["weight"]
    # docs: weight is (in_channels, out_channels/groups, kH, kW)
    assert w.kind == "ConvTranspose2d"
    assert w.shape == (4, 3, 3, 3)
    assert w.axes == ("in_channels", "out_channels/groups", "kernel_h", "kernel_w")
    assert ws["bias"].shape == (6,) and ws["bias"].axes == ("out_channels",)
    assert_data_matches(ws, m)


def test_lstm():
    m = nn.LSTM(10, 20)
    ws = weightkit.open(m)
    assert ws.names == ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"]
    ih, hh = ws["weight_ih_l0"], ws["weight_hh_l0"]
    assert (ih.kind, ih.role) == ("LSTM", "weight_ih")
    assert ih.shape == (4 * 20, 10)
    assert ih.axes == (LSTM_GATES, "input_size")
    assert (hh.role, hh.shape, hh.axes) == ("weight_hh", (80, 20), (LSTM_GATES, "hidden_size"))
    for name in ("bias_ih_l0", "bias_hh_l0"):
        assert ws[name].shape == (80,) and ws[name].axes == (LSTM_GATES,)
        assert ws[name].role == name.removesuffix("_l0")
    assert ws.total_params == sum(p.numel() for p in m.parameters())
    assert_data_matches(ws, m)


def test_lstm_bidirectional_two_layers():
    hidden = 20
    m = nn.LSTM(10, hidden, num_layers=2, bidirectional=True)
    ws = weightkit.open(m)
    expected = [n for n, _ in m.named_parameters()]
    assert ws.names == expected
    assert "weight_ih_l0_reverse" in ws and "weight_hh_l1_reverse" in ws
    for name in expected:
        w = ws[name]
        assert w.kind == "LSTM"
        assert w.role == name.split("_l")[0]
    for direction in ("", "_reverse"):
        assert ws[f"weight_ih_l0{direction}"].axes == (LSTM_GATES, "input_size")
        l1 = ws[f"weight_ih_l1{direction}"]
        # layer 1 reads the concatenated forward and backward outputs of layer 0
        assert l1.shape == (4 * hidden, 2 * hidden)
        assert l1.axes[0] == LSTM_GATES
        assert l1.axes[1].startswith("2*hidden")
        assert ws[f"weight_hh_l1{direction}"].axes == (LSTM_GATES, "hidden_size")
    assert_data_matches(ws, m)


def test_lstm_with_projection():
    hidden, proj = 20, 5
    m = nn.LSTM(10, hidden, num_layers=2, proj_size=proj)
    ws = weightkit.open(m)
    assert ws.names == [n for n, _ in m.named_parameters()]
    # docs: weight_hh_l[k] is (4*hidden_size, proj_size); weight_hr_l[k] is (proj_size, hidden_size)
    assert ws["weight_hh_l0"].shape == (4 * hidden, proj)
    assert ws["weight_hh_l0"].axes == (LSTM_GATES, "proj_size")
    hr = ws["weight_hr_l0"]
    assert (hr.role, hr.shape, hr.axes) == ("weight_hr", (proj, hidden), ("proj_size", "hidden_size"))
    # layer 1's input is layer 0's projected output
    assert ws["weight_ih_l1"].shape == (4 * hidden, proj)
    assert ws["weight_ih_l1"].axes == (LSTM_GATES, "proj_size")
    assert_data_matches(ws, m)


def test_gru():
    m = nn.GRU(5, 7, num_layers=2)
    ws = weightkit.open(m)
    ih = ws["weight_ih_l0"]
    assert (ih.kind, ih.role, ih.shape) == ("GRU", "weight_ih", (3 * 7, 5))
    assert ih.axes == (GRU_GATES, "input_size")
    assert ws["weight_hh_l0"].axes == (GRU_GATES, "hidden_size")
    assert ws["weight_ih_l1"].shape == (21, 7) and ws["weight_ih_l1"].axes == (GRU_GATES, "hidden_size")
    assert ws["bias_hh_l1"].axes == (GRU_GATES,)
    assert_data_matches(ws, m)


def test_rnn():
    m = nn.RNN(5, 7)
    ws = weightkit.open(m)
    ih = ws["weight_ih_l0"]
    assert (ih.kind, ih.role, ih.shape) == ("RNN", "weight_ih", (7, 5))
    assert ih.axes == ("hidden_size", "input_size")
    assert ws["weight_hh_l0"].axes == ("hidden_size", "hidden_size")
    assert ws["bias_ih_l0"].axes == ("hidden_size",)


def test_lstm_cell():
    m = nn.LSTMCell(5, 7)
    ws = weightkit.open(m)
    assert ws.names == ["weight_ih", "weight_hh", "bias_ih", "bias_hh"]
    ih = ws["weight_ih"]
    assert (ih.kind, ih.role, ih.shape) == ("LSTMCell", "weight_ih", (28, 5))
    assert ih.axes == (LSTM_GATES, "input_size")
    assert ws["weight_hh"].axes == (LSTM_GATES, "hidden_size")
    assert ws["bias_hh"].axes == (LSTM_GATES,)


def test_gru_cell():
    ws = weightkit.open(nn.GRUCell(5, 7))
    assert ws["weight_ih"].kind == "GRUCell"
    assert ws["weight_ih"].shape == (21, 5) and ws["weight_ih"].axes == (GRU_GATES, "input_size")


def test_sequential():
    m = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    ws = weightkit.open(m)
    assert ws.names == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert list(ws.layers()) == ["0", "2"]
    assert ws["0.weight"].layer == "0" and ws["0.weight"].role == "weight"
    assert ws["2.weight"].shape == (2, 4) and ws["2.weight"].axes == ("out_features", "in_features")
    assert ws.total_params == sum(p.numel() for p in m.parameters())
    assert_data_matches(ws, m)


def test_embedding():
    m = nn.Embedding(10, 4)
    w = weightkit.open(m)["weight"]
    assert (w.kind, w.shape, w.axes) == ("Embedding", (10, 4), ("num_embeddings", "embedding_dim"))


def test_layernorm():
    ws = weightkit.open(nn.LayerNorm(6))
    assert ws["weight"].kind == "LayerNorm"
    assert ws["weight"].shape == (6,) and ws["weight"].axes == ("normalized_shape",)
    assert ws["bias"].axes == ("normalized_shape",)


def test_layernorm_with_two_dim_shape():
    w = weightkit.open(nn.LayerNorm((3, 4)))["weight"]
    assert w.shape == (3, 4)
    assert len(w.axes) == 2 and all("normalized_shape" in a for a in w.axes) and w.axes[0] != w.axes[1]


def test_batchnorm2d_running_stats_are_buffers():
    m = nn.BatchNorm2d(4)
    m.train()
    m(torch.randn(2, 4, 3, 3))
    ws = weightkit.open(m)
    assert ws.names == ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    for name in ("weight", "bias"):
        w = ws[name]
        assert w.kind == "BatchNorm2d" and w.shape == (4,) and w.axes == ("num_features",)
        assert w.is_buffer is False and w.trainable is True
    for name in ("running_mean", "running_var"):
        w = ws[name]
        assert w.is_buffer is True and w.trainable is False
        assert w.shape == (4,) and w.axes == ("num_features",)
    n = ws["num_batches_tracked"]
    assert n.is_buffer and n.shape == () and n.axes == () and n.dtype == "int64"
    assert n.numel == 1 and n.nbytes == 8
    assert int(n.numpy()) == 1
    assert ws.total_params == 8  # buffers are not parameters
    assert_data_matches(ws, m)


def test_multihead_attention():
    m = nn.MultiheadAttention(8, 2)
    ws = weightkit.open(m)
    w = ws["in_proj_weight"]
    assert (w.kind, w.layer, w.role) == ("MultiheadAttention", "", "in_proj_weight")
    assert w.shape == (3 * 8, 8)
    assert w.axes == ("3*embed_dim (q,k,v)", "embed_dim")
    assert ws["in_proj_bias"].axes == ("3*embed_dim (q,k,v)",)
    out = ws["out_proj.weight"]
    assert (out.kind, out.layer, out.role) == ("Linear", "out_proj", "weight")
    assert out.shape == (8, 8) and out.axes == ("out_features", "in_features")
    assert ws["out_proj.bias"].axes == ("out_features",)
    assert ws.total_params == sum(p.numel() for p in m.parameters())
    assert_data_matches(ws, m)


def test_multihead_attention_separate_kdim_vdim():
    m = nn.MultiheadAttention(8, 2, kdim=5, vdim=3)
    ws = weightkit.open(m)
    # docs: q_proj_weight (embed_dim, embed_dim), k_proj_weight (embed_dim, kdim), v_proj_weight (embed_dim, vdim)
    assert ws["q_proj_weight"].shape == (8, 8) and ws["q_proj_weight"].axes == ("embed_dim", "embed_dim")
    assert ws["k_proj_weight"].shape == (8, 5) and ws["k_proj_weight"].axes == ("embed_dim", "kdim")
    assert ws["v_proj_weight"].shape == (8, 3) and ws["v_proj_weight"].axes == ("embed_dim", "vdim")
    assert "in_proj_weight" not in ws


class Scaler(nn.Module):
    """A custom module with its own parameter and a buffer, and a child layer."""

    def __init__(self):
        super().__init__()
        self.gain = nn.Parameter(torch.randn(5))
        self.register_buffer("offset", torch.arange(5.0))
        self.fc = nn.Linear(5, 5)


def test_custom_module_with_own_parameter():
    m = Scaler()
    ws = weightkit.open(m)
    g = ws["gain"]
    assert g.layer == "" and g.role == "gain" and g.shape == (5,)
    assert g.kind == "Scaler"  # the module's own class
    assert g.axes == ("?",)  # weightkit does not guess what a custom parameter's axis means
    assert g.trainable is True and g.is_buffer is False
    off = ws["offset"]
    assert off.is_buffer is True and off.trainable is False
    assert ws["fc.weight"].kind == "Linear" and ws["fc.weight"].layer == "fc"
    assert ws.total_params == sum(p.numel() for p in m.parameters())
    assert_data_matches(ws, m)


def test_subclass_of_linear_is_linear():
    class MyLinear(nn.Linear):
        pass

    w = weightkit.open(nn.Sequential(MyLinear(3, 2)))["0.weight"]
    assert w.kind == "Linear" and w.axes == ("out_features", "in_features")


# --- shared tensors ------------------------------------------------------------------------


class Siamese(nn.Module):
    """One encoder registered under two names and applied to both inputs."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(4, 3), nn.Tanh())
        self.twin = self.encoder
        self.head = nn.Linear(3, 1)

    def forward(self, a, b):
        return self.head(self.encoder(a) - self.twin(b))


class TiedLM(nn.Module):
    def __init__(self, vocab=11, dim=4):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.body = nn.Linear(dim, dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.lm_head.weight = self.emb.weight


def test_siamese_shared_encoder_reported_once():
    m = Siamese()
    ws = weightkit.open(m)
    assert ws.names == ["encoder.0.weight", "encoder.0.bias", "head.weight", "head.bias"]
    assert ws["encoder.0.weight"].shared_with == ("twin.0.weight",)
    assert ws["encoder.0.bias"].shared_with == ("twin.0.bias",)
    assert ws["head.weight"].shared_with == ()
    # totals count the shared tensors once, like model.parameters() does
    assert ws.total_params == sum(p.numel() for p in m.parameters()) == 4 * 3 + 3 + 3 + 1
    s = weightkit.summary(m)
    assert s.totals.parameters == ws.total_params
    assert s.totals.shared_tensors == 2
    assert s.totals.bytes == sum(p.numel() * p.element_size() for p in m.parameters())
    # the alias works as a key, and gives the same tensor
    assert ws["twin.0.weight"] is ws["encoder.0.weight"]
    assert "twin.0.bias" in ws
    np.testing.assert_array_equal(ws["twin.0.weight"].numpy(), m.twin[0].weight.detach().numpy())


def test_shared_module_in_a_module_list():
    enc = nn.Linear(2, 2)
    m = nn.ModuleList([enc, enc, nn.Linear(2, 1)])
    ws = weightkit.open(m)
    assert ws.names == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert ws["0.weight"].shared_with == ("1.weight",)
    assert ws.total_params == sum(p.numel() for p in m.parameters())


def test_tied_embeddings_reported_once():
    m = TiedLM()
    ws = weightkit.open(m)
    assert "lm_head.weight" not in ws.names
    e = ws["emb.weight"]
    assert e.shared_with == ("lm_head.weight",)
    assert e.kind == "Embedding" and e.axes == ("num_embeddings", "embedding_dim")
    assert ws["lm_head.weight"] is e
    assert ws.total_params == sum(p.numel() for p in m.parameters()) == 11 * 4 + 4 * 4 + 4
    assert weightkit.select(ws, "lm_head.*") == [e]  # selectors match aliases too


def test_unknown_name_raises_key_error():
    ws = weightkit.open(nn.Linear(3, 2))
    with pytest.raises(KeyError, match="nope"):
        ws["nope"]
    assert "nope" not in ws


# --- trainability, dtypes ------------------------------------------------------------------


def test_requires_grad_false_is_not_trainable():
    m = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    m[0].weight.requires_grad_(False)
    ws = weightkit.open(m)
    assert ws["0.weight"].trainable is False
    assert ws["0.bias"].trainable is True
    assert ws["1.weight"].trainable is True
    assert ws["0.weight"].is_buffer is False  # frozen parameters are still parameters


def test_bfloat16_parameters():
    torch.manual_seed(1)
    m = nn.Linear(7, 5).to(torch.bfloat16)
    ws = weightkit.open(m)
    w = ws["weight"]
    assert w.dtype == "bfloat16"
    assert w.nbytes == 7 * 5 * 2
    arr = w.numpy()
    assert arr.dtype == np.float32
    np.testing.assert_array_equal(arr, m.weight.detach().float().numpy())
    t = w.torch()
    assert t.dtype == torch.bfloat16
    assert torch.equal(t, m.weight.detach())
    assert ws["bias"].torch().dtype == torch.bfloat16


def test_float16_and_float64_parameters():
    m = nn.Sequential(nn.Linear(3, 2).half(), nn.Linear(2, 2).double())
    ws = weightkit.open(m)
    assert ws["0.weight"].dtype == "float16" and ws["0.weight"].numpy().dtype == np.float16
    assert ws["1.weight"].dtype == "float64" and ws["1.weight"].nbytes == 4 * 8
    assert_data_matches(ws, m)


def test_non_contiguous_parameter():
    m = nn.Module()
    m.w = nn.Parameter(torch.randn(4, 3).t())  # shape (3, 4), stride (1, 3)
    w = weightkit.open(m)["w"]
    assert w.shape == (3, 4)
    np.testing.assert_array_equal(w.numpy(), m.w.detach().numpy())
    np.testing.assert_array_equal(np.concatenate(list(w.chunks(max_bytes=8))), m.w.detach().numpy().ravel())


# --- summary API ---------------------------------------------------------------------------

TENSOR_KEYS = {"name", "layer", "kind", "role", "shape", "axes", "dtype", "numel", "nbytes",
               "trainable", "is_buffer", "shared_with"}


def test_summary_to_dict_schema(small_net):
    d = weightkit.summary(small_net).to_dict()
    assert {"source", "tensors", "totals", "metadata"} <= set(d)
    assert len(d["tensors"]) == len(small_net.state_dict())
    for t in d["tensors"]:
        assert TENSOR_KEYS <= set(t), TENSOR_KEYS - set(t)
    conv = next(t for t in d["tensors"] if t["name"] == "features.0.weight")
    assert conv["layer"] == "features.0" and conv["kind"] == "Conv2d" and conv["role"] == "weight"
    assert conv["shape"] == [8, 3, 3, 3] and conv["axes"] == list(CONV2D_AXES)
    assert conv["dtype"] == "float32" and conv["numel"] == 8 * 3 * 9 and conv["nbytes"] == 8 * 3 * 9 * 4
    assert conv["trainable"] is False and conv["is_buffer"] is False and conv["shared_with"] == []
    # JSON round trip gives the same data
    assert json.loads(json.dumps(d)) == json.loads(weightkit.summary(small_net).to_json())


def test_summary_totals_with_frozen_part_and_batchnorm(small_net):
    params = list(small_net.parameters())
    buffers = list(small_net.buffers())
    s = weightkit.summary(small_net)
    t = s.totals
    assert t.parameters == sum(p.numel() for p in params)
    assert t.trainable == sum(p.numel() for p in params if p.requires_grad)
    assert t.frozen == sum(p.numel() for p in params if not p.requires_grad) == 8 * 3 * 9 + 8
    assert t.trainable + t.frozen == t.parameters
    assert t.buffers == sum(b.numel() for b in buffers) == 8 + 8 + 1
    assert t.bytes == sum(x.numel() * x.element_size() for x in params + buffers)
    assert t.tensors == len(params) + len(buffers)
    assert t.layers == 3  # features.0, features.1, head
    assert t.shared_tensors == 0
    d = s.to_dict()["totals"]
    assert d["parameters"] == t.parameters and d["frozen"] == t.frozen and d["buffers"] == t.buffers


def test_summary_filter(small_net):
    s = weightkit.summary(small_net, select="features.1.*")
    names = [t["name"] for t in s.tensors]
    assert names == [n for n in small_net.state_dict() if fnmatch.fnmatchcase(n, "features.1.*")]
    assert len(names) == 5
    bn = small_net.features[1]
    assert s.totals.parameters == bn.weight.numel() + bn.bias.numel()
    assert s.totals.buffers == sum(b.numel() for b in bn.buffers())
    assert s.totals.layers == 1
    assert weightkit.summary(small_net, select="*.bias").totals.tensors == 3
    with pytest.raises(weightkit.WeightkitError, match=r"matches select='nothing\*'; closest names: "):
        weightkit.summary(small_net, select="nothing*")  # a selection of nothing is an error, not an empty table


def test_summary_of_an_open_weightset(small_net):
    ws = weightkit.open(small_net)
    assert weightkit.summary(ws).to_dict() == weightkit.summary(small_net).to_dict()
    assert weightkit.summary(ws).totals.parameters == ws.total_params == sum(p.numel() for p in small_net.parameters())


def test_summary_counts_bfloat16_bytes():
    m = nn.Sequential(nn.Linear(4, 4).to(torch.bfloat16), nn.Linear(4, 2))
    t = weightkit.summary(m).totals
    assert t.bytes_by_dtype == {"bfloat16": 20 * 2, "float32": 10 * 4}
    assert t.bytes == sum(p.numel() * p.element_size() for p in m.parameters())
    assert math.isclose(t.parameters, 30)

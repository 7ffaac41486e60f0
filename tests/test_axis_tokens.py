"""Axis meanings are data: each axis carries a machine token beside its label, and every consumer
(per-channel quantisation, structured pruning, the doctor's fan-in, filter and heatmap pictures,
summary --json) reads the token. Renaming every label changes none of what they do."""

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

import weightkit
from weightkit import layers
from weightkit.analyses.doctor import rules
from weightkit.core.layout import conv_filters, matrix


class Zoo(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(11, 6)
        self.conv = nn.Conv2d(3, 8, 3)
        self.grouped = nn.Conv2d(8, 8, 3, groups=4)
        self.up = nn.ConvTranspose2d(8, 4, 3)
        self.rnn = nn.LSTM(6, 5, num_layers=2, bidirectional=True)
        self.gru = nn.GRU(6, 4)
        self.att = nn.MultiheadAttention(8, 2)
        self.fc = nn.Linear(10, 3)
        self.bn = nn.BatchNorm2d(8)
        self.ln = nn.LayerNorm(8)


def _per_weight(source):
    ws = weightkit.open(source)
    out = {}
    for w in ws:
        row = {"out": weightkit.edits._compress.output_axis(w), "in": w.in_axis,
               "doctor_out": rules._output_axis(w), "fan_in": rules._fan_in(w)}
        if any(t in layers.KERNEL_TOKENS for t in w.axis_tokens) and not w.is_buffer and w.role == "weight":
            row["filters"] = conv_filters(w).shape
        if w.ndim == 2 and not w.is_buffer:
            row["matrix"] = matrix(w).shape
        out[w.name] = row
    out["summary"] = [(t["name"], t["out_axis"], t["in_axis"]) for t in weightkit.summary(ws).tensors]
    q = weightkit.quantize_error(ws, granularity="channel")
    out["quantize_axes"] = [(t.name, t.axis, t.rel_error) for t in q.tensors]
    return out, [w.axes for w in ws]


def _keras_zoo():
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((6, 6, 3)),
        keras.layers.Conv2D(4, 3, name="conv"),
        keras.layers.DepthwiseConv2D(3, depth_multiplier=2, name="depthwise"),
        keras.layers.Conv2DTranspose(3, 2, name="up"),
        keras.layers.Reshape((-1, 3)),
        keras.layers.LSTM(5, return_sequences=True, name="lstm"),
        keras.layers.Dense(7, name="dense"),
    ], name="zoo")


def _behaviour(model):
    out, labels = _per_weight(model)
    out["keras"], keras_labels = _per_weight(_keras_zoo())
    live = Zoo()
    live.load_state_dict(model.state_dict())
    weightkit.prune(live, 0.5, method="l1-structured", select="re:^(conv|grouped|up|fc)\\.weight$")
    out["masks"] = {n: b.clone() for n, b in live.named_buffers() if n.endswith("_mask")}
    return out, labels + keras_labels


def _renamed(monkeypatch):
    """Every label of the layer table replaced by a meaningless one; tokens kept."""
    real = layers.axis_spec

    def renamed(*args, **kwargs):
        return tuple(dataclasses.replace(a, label=f"axis{i}-renamed") for i, a in enumerate(real(*args, **kwargs)))

    for module in ("weightkit.core.weightset", "weightkit.edits.prune"):
        monkeypatch.setattr(f"{module}.axis_spec", renamed)


def test_renaming_every_label_changes_no_behaviour(monkeypatch):
    model = Zoo()
    before, labels_before = _behaviour(model)
    with monkeypatch.context() as m:
        _renamed(m)
        after, labels_after = _behaviour(model)
    assert all("renamed" in a for axes in labels_after for a in axes) and labels_after != labels_before
    masks_b, masks_a = before.pop("masks"), after.pop("masks")
    assert masks_b.keys() == masks_a.keys() and masks_b
    assert all(torch.equal(masks_b[k], masks_a[k]) for k in masks_b)
    assert before == after


def test_every_axis_of_the_table_has_a_known_token():
    tables = [*layers._TORCH.values(), *layers._KERAS.values(), *layers._KERAS_MHA.values()]
    for roles in tables:
        for spec in roles.values():
            for axis in spec:
                assert axis.token in layers.AXIS_TOKENS, axis
    for kind in ("LSTM", "GRU", "RNN"):
        for role in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0"):
            spec = layers.axis_spec(kind, role, (6, 3) if role.startswith("weight") else (6,))
            assert spec[0].token == "gates" and all(a.token in layers.AXIS_TOKENS for a in spec)


@pytest.mark.parametrize("make,name,out,inp", [
    (lambda: nn.Linear(3, 2), "weight", 0, 1),
    (lambda: nn.Conv2d(3, 4, 3, groups=1), "weight", 0, 1),
    (lambda: nn.ConvTranspose2d(3, 4, 3), "weight", 1, 0),
    (lambda: nn.LSTM(3, 2), "weight_ih_l0", 0, 1),
    (lambda: nn.LSTM(3, 2), "weight_hh_l0", 0, 1),
    (lambda: nn.Embedding(5, 3), "weight", 0, None),
    (lambda: nn.MultiheadAttention(4, 2), "in_proj_weight", 0, 1),
    (lambda: nn.Linear(3, 2), "bias", 0, None),
])
def test_out_and_in_axes_in_summary_json(make, name, out, inp):
    tensor = next(t for t in weightkit.summary(make()).to_dict()["tensors"] if t["name"] == name)
    assert (tensor["out_axis"], tensor["in_axis"]) == (out, inp)
    assert len(tensor["axis_tokens"]) == len(tensor["shape"])


def test_lstm_gate_order_travels_with_the_gate_axis():
    w = weightkit.open(nn.LSTM(3, 2))["weight_ih_l0"]
    assert w.axis_tokens == ("gates", "in") and w.gate_order == "i,f,g,o"
    assert np.prod(w.shape) == 8 * 3

"""Keras 2 HDF5 files as Keras 2 wrote them (built here with h5py): a full model
(``model_config`` + ``model_weights`` + ``optimizer_weights``, weights scoped ``conv2d_1_1``
by TensorFlow, an old Sequential list config) and a weights-only file without any config
(``rnn_1`` cuDNN LSTM, ``output`` Dense, ``time_distributed_1``, Bidirectional, SeparableConv).
Kinds and axes come from the config, else from the variables; the CLI works on both."""

import json

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

import weightkit
from weightkit.cli import app

RNG = np.random.default_rng(0)


def _write(path, layers, *, config=None):
    """``layers``: layer name -> {stored weight name: shape}, in model order."""
    with h5py.File(path, "w") as f:
        root = f.create_group("model_weights") if config is not None else f
        root.attrs["keras_version"], root.attrs["backend"] = b"2.2.4", b"tensorflow"
        root.attrs["layer_names"] = np.array([n.encode() for n in layers], dtype="S")
        for lname, weights in layers.items():
            g = root.create_group(lname)
            g.attrs["weight_names"] = np.array([f"{w}:0".encode() for w in weights], dtype="S")
            for w, shape in weights.items():
                g.create_dataset(f"{w}:0", data=RNG.standard_normal(shape).astype("float32"))
        if config is not None:
            f.attrs["model_config"] = json.dumps(config).encode()
            f.attrs["training_config"] = json.dumps({"optimizer_config": {"class_name": "Adam"}}).encode()
            opt = f.create_group("optimizer_weights")
            opt.create_dataset("Adam/iterations:0", data=np.array(7, "int64"))


def _layer(cls, name, **cfg):
    return {"class_name": cls, "config": {"name": name, "trainable": True, **cfg}}


@pytest.fixture
def full_model(tmp_path):
    path = tmp_path / "full.h5"
    layers = {  # TensorFlow scoped each weight under a uniquified name (conv2d_1_1 in layer conv2d_1)
        "conv2d_1": {"conv2d_1_1/kernel": (3, 3, 1, 8), "conv2d_1_1/bias": (8,)},
        "batch_normalization_1": {f"batch_normalization_1_1/{r}": (8,) for r in
                                  ("gamma", "beta", "moving_mean", "moving_variance")},
        "flatten_1": {},
        "dense_1": {"dense_1_1/kernel": (32, 10), "dense_1_1/bias": (10,)},
    }
    config = {"class_name": "Sequential", "config": [  # Keras 2.1: a Sequential's config is its list of layers
        _layer("Conv2D", "conv2d_1", filters=8), _layer("BatchNormalization", "batch_normalization_1"),
        _layer("Flatten", "flatten_1"), _layer("Dense", "dense_1", units=10)]}
    _write(path, layers, config=config)
    return path


@pytest.fixture
def weights_only(tmp_path):
    path = tmp_path / "weights.h5"
    layers = {
        "embedding": {"embedding/embeddings": (50, 16)},
        "rnn_1": {"rnn_1/kernel": (16, 32), "rnn_1/recurrent_kernel": (8, 32), "rnn_1/bias": (64,)},  # CuDNNLSTM
        "bidirectional_1": {"bidirectional_1/forward_gru_1/kernel": (8, 12),
                            "bidirectional_1/forward_gru_1/recurrent_kernel": (4, 12),
                            "bidirectional_1/forward_gru_1/bias": (2, 12),
                            "bidirectional_1/backward_gru_1/kernel": (8, 12),
                            "bidirectional_1/backward_gru_1/recurrent_kernel": (4, 12),
                            "bidirectional_1/backward_gru_1/bias": (2, 12)},
        "time_distributed_1": {"time_distributed_1/kernel": (8, 5), "time_distributed_1/bias": (5,)},
        "separable_conv2d_1": {"separable_conv2d_1/depthwise_kernel": (3, 3, 4, 1),
                               "separable_conv2d_1/pointwise_kernel": (1, 1, 4, 6),
                               "separable_conv2d_1/bias": (6,)},
        "conv1d_7": {"conv1d_7/kernel": (5, 4, 6)},
        "attention": {"attention/attention_W": (8, 1)},
        "output": {"output/kernel": (8, 3), "output/bias": (3,)},
    }
    _write(path, layers)
    return path


def test_full_model_kinds_axes_and_count(full_model):
    ws = weightkit.open(full_model)
    rows = {w.name: (w.layer, w.kind, w.kind_from, w.out_axis) for w in ws}
    assert rows["conv2d_1/conv2d_1_1/kernel"] == ("conv2d_1", "Conv2D", "config", 3)
    assert rows["dense_1/dense_1_1/kernel"] == ("dense_1", "Dense", "config", 1)
    assert rows["batch_normalization_1/batch_normalization_1_1/moving_mean"][1] == "BatchNormalization"
    assert ws["conv2d_1/conv2d_1_1/kernel"].axes == ("kernel_h", "kernel_w", "in_channels/groups", "out_channels")
    # BatchNorm moving statistics are buffers, not parameters
    assert ws.total_params == 3 * 3 * 8 + 8 + 2 * 8 + 32 * 10 + 10
    assert ws.metadata["model_class"] == "Sequential" and ws.metadata["optimizer"]["class"] == "Adam"


def test_weights_only_kinds_from_variables(weights_only):
    ws = weightkit.open(weights_only)
    kinds = {w.layer: (w.kind, w.kind_from) for w in ws}
    assert kinds["embedding"] == ("Embedding", "name")
    assert kinds["rnn_1"] == ("CuDNNLSTM", "inferred")
    assert kinds["bidirectional_1/forward_gru_1"][0] == "GRU" == kinds["bidirectional_1/backward_gru_1"][0]
    assert kinds["time_distributed_1"] == ("Dense", "inferred")
    assert kinds["separable_conv2d_1"][0] == "SeparableConv2D"
    assert kinds["conv1d_7"][0] == "Conv1D"
    assert kinds["output"] == ("Dense", "inferred")
    assert kinds["attention"] == ("unknown", "unknown")  # a custom layer: no guess
    assert ws["embedding/embeddings"].axes == ("input_dim", "output_dim")
    assert ws["rnn_1/bias"].axis_tokens == ("gates",) and ws["rnn_1/kernel"].out_axis == 1
    assert ws["bidirectional_1/forward_gru_1/bias"].axis_tokens == ("direction", "gates")
    assert ws["output/kernel"].out_axis == 1 and ws["output/kernel"].in_axis == 0


def _cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "120"})


@pytest.mark.parametrize("which", ["full_model", "weights_only"])
def test_cli_on_keras2_files(which, request, tmp_path):
    path = request.getfixturevalue(which)
    summary = _cli("summary", path, "--json")
    assert summary.exit_code == 0, summary.output
    tensors = json.loads(summary.stdout)["tensors"]
    assert all(t["kind"] != "unknown" for t in tensors if "attention" not in t["name"])
    stats = _cli("stats", path, "--json")
    assert stats.exit_code == 0, stats.output
    quant = _cli("quantize", path, tmp_path / "q.safetensors", "--json")
    assert quant.exit_code == 0, quant.output
    assert weightkit.open(tmp_path / "q.safetensors") is not None
    if which == "full_model":
        plot = _cli("plot", "filters", path, "-o", tmp_path / "f.png")
        assert plot.exit_code == 0, plot.output
        assert (tmp_path / "f.png").stat().st_size > 0

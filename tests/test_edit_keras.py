"""Edits of live Keras 3 models (torch backend): get/set in list and dict form, set_weight, init,
freeze/unfreeze/trainable, and the torch-only edits refusing politely."""

import json
import math
import os
import random

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")
import torch  # noqa: E402  (the backend)
from keras import layers as L  # noqa: E402

import weightkit  # noqa: E402
from weightkit import WeightkitError  # noqa: E402
from weightkit.edits import values as values_mod  # noqa: E402


def transfer_model():
    """A pretrained-style backbone (a nested Sequential) and a new head."""
    keras.utils.set_random_seed(0)
    backbone = keras.Sequential([L.Dense(16, activation="relu", name="d1"), L.Dense(16, name="d2")], name="backbone")
    inp = keras.Input((6,))
    out = L.Dense(2, name="head")(backbone(inp))
    return keras.Model(inp, out)


def values(model):
    return [np.array(v.numpy(), copy=True) for v in model.weights]


def same_bits(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.dtype == y.dtype and x.tobytes() == y.tobytes()


# --- get / set ------------------------------------------------------------------------------------

def test_get_weights_list_and_dict_forms():
    model = transfer_model()
    got = weightkit.get_weights(model)
    for a, b in zip(got, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    as_dict = weightkit.get_weights(model, as_dict=True)
    assert list(as_dict) == ["backbone/d1/kernel", "backbone/d1/bias", "backbone/d2/kernel", "backbone/d2/bias",
                             "head/kernel", "head/bias"]
    as_dict["head/kernel"][:] = 99  # copies, not views
    got[0][:] = 99
    assert not (model.weights[4].numpy() == 99).any() and not (model.weights[0].numpy() == 99).any()


def test_set_first_weight_of_a_dense_layer_to_10_keeps_variable_and_optimizer():
    model = transfer_model()
    kernel = model.get_layer("head").kernel
    opt = keras.optimizers.Adam(learning_rate=0.5)
    opt.build(model.trainable_variables)
    w = weightkit.get_weights(model, as_dict=True)["head/kernel"]
    w[0, 0] = 10
    weightkit.set_weight(model, "head/kernel", w)
    assert model.get_layer("head").kernel is kernel and float(kernel.numpy()[0, 0]) == 10
    assert kernel.dtype == "float32" and kernel.value.requires_grad
    opt.apply([keras.ops.ones(v.shape) for v in model.trainable_variables], model.trainable_variables)
    assert float(kernel.numpy()[0, 0]) != 10  # the optimizer updated the same variable


def test_set_weights_list_form_like_keras():
    model = transfer_model()
    ws = model.get_weights()
    ws = [w * 2 + 1 for w in ws]
    assert weightkit.set_weights(model, ws) == [v.path for v in model.weights]
    for a, b in zip(ws, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(WeightkitError, match="list of 5 arrays but the model has 6 weights.*model.weights order"):
        weightkit.set_weights(model, ws[:5])


def test_bad_edits_leave_keras_model_unchanged():
    inp = keras.Input((3,))
    x = L.Dense(4, name="a")(inp)
    out = L.Dense(2, name="half", dtype="float16")(x)
    model = keras.Model(inp, out)
    before = values(model)
    good = {"a/kernel": np.zeros((3, 4)), "a/bias": np.ones(4)}
    for bad, message in [
        ({"a/kernal": np.zeros((3, 4))}, r"no weight named 'a/kernal' \(did you mean 'a/kernel'"),
        ({"half/bias": np.zeros(1)}, r"'half/bias'.*shape \(1,\).*would broadcast"),
        ({"half/bias": np.array([0.1, 0.2])}, r"'half/bias'.*float64 but the weight is float16"),
        ({"half/kernel": np.full((4, 2), np.nan)}, r"'half/kernel'.*8 NaN/Inf"),
    ]:
        with pytest.raises(WeightkitError, match=message):
            weightkit.set_weights(model, {**good, **bad})
        same_bits(before, values(model))


def test_bfloat16_keras_roundtrip_exact():
    model = keras.Sequential([keras.Input((3,)), L.Dense(5, dtype="bfloat16")])
    before = [v.value.detach().clone() for v in model.weights]
    got = weightkit.get_weights(model)
    assert got[0].dtype == np.float32
    weightkit.set_weights(model, got)
    weightkit.set_weights(model, model.get_weights())  # Keras' own arrays (ml_dtypes bfloat16) too
    for a, v in zip(before, model.weights):
        assert torch.equal(a.view(torch.int16), v.value.detach().view(torch.int16))


def test_failed_write_midway_restores_keras(monkeypatch):
    model = transfer_model()
    before = values(model)
    calls = []
    real = values_mod._write_one

    def flaky(slot, value):
        calls.append(slot.name)
        if len(calls) == 4:
            raise RuntimeError("boom")
        real(slot, value)

    monkeypatch.setattr(values_mod, "_write_one", flaky)
    with pytest.raises(WeightkitError, match="boom.*restored"):
        weightkit.set_weights(model, [np.zeros(w.shape) for w in before])
    same_bits(before, values(model))


# --- init -----------------------------------------------------------------------------------------

def test_xavier_and_kaiming_on_keras_follow_the_formulas():
    model = keras.Sequential([keras.Input((800,)), L.Dense(1200, name="big"), L.Dense(10, name="out")])
    out_before = model.get_layer("out").kernel.numpy().copy()
    report = weightkit.init(model, "xavier_uniform", select="*big/kernel", seed=0)
    assert report.framework == "keras" and len(report.tensors) == 1
    w = model.get_layer("big").kernel.numpy().astype(np.float64)
    bound = math.sqrt(6 / (800 + 1200))
    assert np.abs(w).max() <= bound
    assert abs(w.std() - bound / math.sqrt(3)) < 0.05 * bound / math.sqrt(3)
    np.testing.assert_array_equal(model.get_layer("out").kernel.numpy(), out_before)
    # Keras kernels are (in, out): fan_in is axis 0 (800 here)
    weightkit.init(model, "kaiming_normal", select="*big/kernel", nonlinearity="relu", seed=1)
    std = model.get_layer("big").kernel.numpy().std()
    assert abs(std - math.sqrt(2 / 800)) < 0.05 * math.sqrt(2 / 800)
    weightkit.init(model, "kaiming_uniform", select="*big/kernel", nonlinearity="relu", mode="fan_out", seed=1)
    assert np.abs(model.get_layer("big").kernel.numpy()).max() <= math.sqrt(2) * math.sqrt(3 / 1200)


def test_keras_init_seeded_repeatable_global_state_untouched():
    a, b = transfer_model(), transfer_model()
    states = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    for m in (a, b):
        weightkit.init(m, "orthogonal", seed=7)
        weightkit.init(m, "normal", role="bias", seed=7, mean=1.0, std=0.5)
    assert torch.equal(torch.get_rng_state(), states[0])
    assert (np.random.get_state()[1] == states[1]).all() and random.getstate() == states[2]
    same_bits(values(a), values(b))
    k = a.get_layer("head").kernel.numpy()
    np.testing.assert_allclose(k.T @ k, np.eye(2), atol=1e-5)  # (16, 2): orthonormal columns


def test_keras_init_schemes_and_errors():
    model = transfer_model()
    weightkit.init(model, "constant", select="head/bias", val=0.5)
    np.testing.assert_array_equal(model.get_layer("head").bias.numpy(), [0.5, 0.5])
    weightkit.init(model, "zeros", role="bias")
    assert all((v.numpy() == 0).all() for v in model.weights if v.path.endswith("bias"))
    weightkit.init(model, "eye", select="backbone/d2/kernel")
    np.testing.assert_array_equal(model.get_layer("backbone").get_layer("d2").kernel.numpy(), np.eye(16))
    weightkit.init(model, "trunc_normal", select="head/kernel", std=0.02, seed=0)
    assert np.abs(model.get_layer("head").kernel.numpy()).max() <= 0.04 + 1e-6
    before = values(model)
    for call, message in [
        (lambda: weightkit.init(model, "dirac"), r"'dirac' is torch-only"),
        (lambda: weightkit.init(model, "sparse", sparsity=0.1), r"'sparse' is torch-only"),
        (lambda: weightkit.init(model, "trunc_normal", std=0.02, a=-1, b=1), r"mean ± 2·std"),
        (lambda: weightkit.init(model, "he_normal"), r"unknown scheme 'he_normal'"),
        (lambda: weightkit.init(model, "xavier_uniform", select="head/*"), r"head/bias has shape \(2,\)"),
    ]:
        with pytest.raises(WeightkitError, match=message):
            call()
        same_bits(before, values(model))


def test_keras_init_default_reruns_layer_initializers():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((5, 3)), L.LSTM(4, name="lstm"), L.Dense(3, name="fc")])
    weightkit.set_weights(model, [np.full(w.shape, 9.0) for w in model.get_weights()])
    weightkit.init(model, "default", seed=0)
    fc = model.get_layer("fc")
    assert (fc.bias.numpy() == 0).all()
    assert np.abs(fc.kernel.numpy()).max() <= math.sqrt(6 / (4 + 3))  # GlorotUniform
    bias = model.weights[2].numpy()
    np.testing.assert_array_equal(bias, [0] * 4 + [1] * 4 + [0] * 8)  # unit_forget_bias
    rk = model.weights[1].numpy()
    np.testing.assert_allclose(rk @ rk.T, np.eye(4), atol=1e-5)  # Orthogonal recurrent kernel (4, 16)


# --- freeze ---------------------------------------------------------------------------------------

def test_freeze_backbone_train_head_with_fit():
    model = transfer_model()
    report = weightkit.freeze(model, select="backbone/*")
    assert report.trainable_names == ["head/kernel", "head/bias"]
    assert len(model.trainable_weights) == 2
    before = values(model)
    model.compile(optimizer=keras.optimizers.Adam(0.1), loss="mse")
    x, y = np.random.default_rng(0).standard_normal((8, 6)), np.ones((8, 2))
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    after = values(model)
    for v, a, b in zip(model.weights, before, after):
        if v.path.startswith("backbone/"):
            assert a.tobytes() == b.tobytes(), v.path
        else:
            assert a.tobytes() != b.tobytes(), v.path


def test_freeze_unfreeze_trainable_report_keras():
    model = transfer_model()
    weightkit.freeze(model)
    assert model.trainable_weights == []
    with pytest.raises(WeightkitError, match=r"Keras cannot unfreeze a single variable.*'backbone/d1'.*backbone/d1/bias"):
        weightkit.unfreeze(model, select="backbone/d1/kernel")
    report = weightkit.unfreeze(model, select="backbone/d1/*")
    assert report.trainable_names == ["backbone/d1/kernel", "backbone/d1/bias"]
    assert [v.path for v in model.trainable_weights] == report.trainable_names
    d = json.loads(json.dumps(report.to_dict()))
    assert d["total"] == {"trainable_params": 6 * 16 + 16, "frozen_params": 16 * 16 + 16 + 16 * 2 + 2,
                          "buffer_elements": 0}
    bn = keras.Sequential([keras.Input((3,)), L.BatchNormalization(name="bn")])
    r = weightkit.trainable(bn)
    assert r.buffer_elements == 6 and r.trainable_params == 6
    with pytest.raises(WeightkitError, match="only buffers"):
        weightkit.freeze(bn, select="*moving_*")
    with pytest.raises(WeightkitError, match="cannot freeze a single variable"):
        weightkit.freeze(bn, select="*gamma")


def test_torch_only_edits_refuse_keras():
    model = transfer_model()
    before = values(model)
    for fn in (weightkit.weight_norm, weightkit.spectral_norm, weightkit.remove_norm):
        with pytest.raises(WeightkitError, match="torch-only"):
            fn(model)
    with pytest.raises(WeightkitError, match="exclude_from_weight_decay"):
        weightkit.param_groups(model)
    same_bits(before, values(model))

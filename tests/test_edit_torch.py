"""Edits of live PyTorch models: get/set, init, freeze, param_groups, weight normalisation.

Written the way a user would write them; numbers are checked against NumPy."""

import inspect
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import weightkit
from weightkit import WeightkitError
from weightkit.edits import values as values_mod
from weightkit.edits.initialize import SCHEMES


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.bn = nn.BatchNorm1d(8)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.fc1(x))))


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_bits(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k].view(-1).view(torch.uint8), b[k].view(-1).view(torch.uint8)), k


# --- the everyday scenarios ---------------------------------------------------------------------

def test_set_first_weight_of_a_linear_layer_to_10():
    torch.manual_seed(0)
    model = Net()
    w = weightkit.get_weights(model, as_dict=True)["fc.weight"]
    w[0, 0] = 10
    weightkit.set_weight(model, "fc.weight", w)
    assert model.fc.weight[0, 0] == 10
    np.testing.assert_array_equal(model.fc.weight.detach().numpy(), w)


def test_xavier_initialise_a_layer():
    model = nn.Sequential()
    model.add_module("big", nn.Linear(800, 1200))
    model.add_module("out", nn.Linear(1200, 10))
    before_out = model.out.weight.detach().clone()
    report = weightkit.init(model, "xavier_uniform", select="big.weight", seed=0)
    assert report.tensors == ["big.weight"] and report.scheme == "xavier_uniform" and report.seed == 0
    w = model.big.weight.detach().numpy().astype(np.float64)
    bound = math.sqrt(6 / (800 + 1200))
    assert np.abs(w).max() <= bound
    assert abs(w.std() - bound / math.sqrt(3)) < 0.05 * bound / math.sqrt(3)
    assert abs(w.mean()) < 0.01 * bound
    assert torch.equal(model.out.weight, before_out)


def test_kaiming_initialise_for_relu():
    model = nn.Sequential()
    model.add_module("fc1", nn.Linear(1000, 1000))
    weightkit.init(model, "kaiming_normal", select="fc1.weight", nonlinearity="relu")
    w = model.fc1.weight.detach().numpy().astype(np.float64)
    assert abs(w.std() - math.sqrt(2 / 1000)) < 0.05 * math.sqrt(2 / 1000)
    # fan_out mode: the standard deviation follows the other axis
    model.add_module("wide", nn.Linear(100, 2000))
    weightkit.init(model, "kaiming_normal", select="wide.weight", nonlinearity="relu", mode="fan_out")
    std = model.wide.weight.detach().numpy().std()
    assert abs(std - math.sqrt(2 / 2000)) < 0.05 * math.sqrt(2 / 2000)


@pytest.mark.parametrize("via", ["param_groups", "requires_grad"])
def test_freeze_pretrained_backbone_and_train_only_a_new_head(via):
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Linear(6, 16), nn.LayerNorm(16), nn.ReLU(), nn.Linear(16, 16))
    model = nn.Sequential()
    model.add_module("backbone", backbone)
    model.add_module("head", nn.Linear(16, 2))  # the new head
    weightkit.freeze(model, select="backbone.*")
    before = snapshot(model)
    params = weightkit.param_groups(model, weight_decay=0.1) if via == "param_groups" else \
        filter(lambda p: p.requires_grad, model.parameters())
    opt = torch.optim.AdamW(params, lr=0.1)
    x, y = torch.randn(32, 6), torch.randint(0, 2, (32,))
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    after = snapshot(model)
    for k in before:
        if k.startswith("backbone."):
            assert torch.equal(before[k], after[k]), k
        else:
            assert not torch.equal(before[k], after[k]), k
    report = weightkit.trainable(model)
    assert report.trainable_names == ["head.weight", "head.bias"]
    assert report.frozen_params == sum(p.numel() for p in backbone.parameters())
    assert report.trainable_params == 16 * 2 + 2


def test_weight_normalise_a_layer():
    torch.manual_seed(0)
    model = Net().eval()
    x = torch.randn(5, 4)
    before = model(x)
    report = weightkit.weight_norm(model, select="fc.weight")
    assert report.tensors == ["fc.weight"]
    assert torch.nn.utils.parametrize.is_parametrized(model.fc, "weight")
    assert "fc.parametrizations.weight.original0" in model.state_dict()
    torch.testing.assert_close(model(x), before, rtol=0, atol=1e-6)
    g = model.fc.parametrizations.weight.original0.detach().numpy()
    w = model.fc.weight.detach().numpy()
    np.testing.assert_allclose(g[:, 0], np.linalg.norm(w, axis=1), rtol=1e-5)
    weightkit.remove_norm(model, select="fc.weight")
    assert not torch.nn.utils.parametrize.is_parametrized(model.fc)
    assert isinstance(model.fc.weight, nn.Parameter)
    torch.testing.assert_close(model(x), before, rtol=0, atol=1e-6)


# --- get / set ------------------------------------------------------------------------------------

def test_get_weights_follows_state_dict_and_copies():
    model = Net()
    got = weightkit.get_weights(model)
    sd = model.state_dict()
    assert len(got) == len(sd)
    for arr, (_k, t) in zip(got, sd.items()):
        np.testing.assert_array_equal(arr, t.numpy())
    as_dict = weightkit.get_weights(model, as_dict=True)
    assert list(as_dict) == list(sd)
    as_dict["fc.weight"][:] = 123
    got[0][:] = 7
    assert not (model.fc.weight == 123).any() and not (model.fc1.weight == 7).any()


def test_set_weights_keeps_parameter_object_device_dtype_and_optimizer():
    torch.manual_seed(0)
    model = Net()
    weight = model.fc.weight
    opt = torch.optim.Adam(model.parameters(), lr=0.5)
    new = np.full((3, 8), 0.25)  # float64: ordinary values round to float32
    names = weightkit.set_weights(model, {"fc.weight": new})
    assert names == ["fc.weight"]
    assert model.fc.weight is weight and weight.dtype == torch.float32 and weight.device.type == "cpu"
    assert weight.requires_grad and torch.equal(weight, torch.full((3, 8), 0.25))
    model(torch.randn(4, 4)).sum().backward()
    opt.step()
    assert opt.param_groups[0]["params"][4] is weight  # fc1.w, fc1.b, bn.w, bn.b, fc.w
    assert not torch.equal(weight, torch.full((3, 8), 0.25))  # the optimizer updated the same object


def test_list_form_roundtrip_and_dict_subset():
    model = Net()
    vals = weightkit.get_weights(model)
    vals = [v + 1 if v.dtype.kind == "f" else v for v in vals]
    weightkit.set_weights(model, vals)
    for v, t in zip(vals, model.state_dict().values()):
        np.testing.assert_array_equal(v, t.numpy())
    with pytest.raises(WeightkitError, match=r"list of 2 arrays but the model has 9 weights"):
        weightkit.set_weights(model, vals[:2])
    with pytest.raises(WeightkitError, match="list with one array per weight"):
        weightkit.set_weights(model, np.zeros(3))


def test_bad_edits_name_the_tensor_and_leave_the_model_unchanged():
    model = Net()
    model.fc.half()
    before = snapshot(model)
    good = {"fc1.weight": np.zeros((8, 4)), "bn.bias": np.ones(8)}
    cases = [
        ({"fc.wieght": np.zeros((3, 8))}, r"no weight named 'fc.wieght' \(did you mean 'fc.weight'"),
        ({"fc1.bias": np.zeros(4)}, r"'fc1.bias'.*shape \(4,\) but the weight has shape \(8,\)"),
        ({"fc1.weight": np.zeros(4)}, r"would broadcast, but weightkit never broadcasts"),
        ({"fc.bias": np.array([0.1, 0.2, 0.3])}, r"'fc.bias'.*float64 but the weight is float16.*0.1 → 0.0999"),
        ({"bn.num_batches_tracked": np.array(2.5)}, r"'bn.num_batches_tracked'.*int64.*2.5 → 2.0"),
        ({"bn.running_var": np.full(8, 1e39)}, r"'bn.running_var'.*overflow"),
        ({"bn.running_mean": np.full(8, 1e-46)}, r"'bn.running_mean'.*underflow"),
        ({"fc1.bias": np.array([1, np.nan, 2, 3, 4, 5, 6, np.inf])}, r"'fc1.bias'.*2 NaN/Inf \(first at index \(1,\)\)"),
        ({"fc1.bias": np.zeros(8) + 1j}, r"imaginary"),
        ({"fc1.bias": "abc"}, r"not an array of numbers"),
    ]
    for bad, message in cases:
        with pytest.raises(WeightkitError, match=message):
            weightkit.set_weights(model, {**good, **bad})  # the bad tensor comes last
        same_bits(before, snapshot(model))


def test_cast_rule():
    model = Net()
    model.fc.to(torch.bfloat16)
    weightkit.set_weights(model, {"fc1.weight": np.random.default_rng(0).standard_normal((8, 4))})  # f64 -> f32 rounds
    weightkit.set_weights(model, {"fc.bias": np.array([0.5, -2.0, 1024.0])})  # exact in bfloat16
    weightkit.set_weights(model, {"bn.num_batches_tracked": np.array(3.0)})  # integral
    assert int(model.bn.num_batches_tracked) == 3
    with pytest.raises(WeightkitError, match="bfloat16"):
        weightkit.set_weights(model, {"fc.bias": np.array([0.1, 0.2, 0.3])})
    weightkit.set_weights(model, {"fc.bias": np.array([0.1, 0.2, 0.3])}, allow_cast=True)
    assert model.fc.bias.dtype == torch.bfloat16
    assert torch.equal(model.fc.bias, torch.tensor([0.1, 0.2, 0.3]).to(torch.bfloat16))
    weightkit.set_weights(model, {"fc1.bias": np.full(8, np.inf)}, allow_nonfinite=True)
    assert torch.isinf(model.fc1.bias).all()


def test_bfloat16_roundtrip_is_exact():
    model = Net().to(torch.bfloat16)
    before = snapshot(model)
    vals = weightkit.get_weights(model)
    assert vals[0].dtype == np.float32
    weightkit.set_weights(model, vals)
    same_bits(before, snapshot(model))


def test_failed_write_midway_restores_written_tensors(monkeypatch):
    model = Net()
    before = snapshot(model)
    calls = []
    real = values_mod._write_one

    def flaky(slot, value):
        calls.append(slot.name)
        if len(calls) == 3:
            raise RuntimeError("disk on fire")
        real(slot, value)

    monkeypatch.setattr(values_mod, "_write_one", flaky)
    new = {k: np.zeros(v.shape) for k, v in weightkit.get_weights(model, as_dict=True).items()}
    with pytest.raises(WeightkitError, match="disk on fire.*restored"):
        weightkit.set_weights(model, new)
    assert len(calls) == 3
    same_bits(before, snapshot(model))


def test_tied_weights_and_aliasing_values():
    emb = nn.Embedding(5, 3)
    model = nn.Module()
    model.emb, model.out = emb, nn.Linear(3, 5, bias=False)
    model.out.weight = emb.weight
    names = list(weightkit.get_weights(model, as_dict=True))
    assert names == ["emb.weight", "out.weight"]
    assert weightkit.set_weights(model, {"out.weight": np.ones((5, 3))}) == ["emb.weight", "out.weight"]
    assert torch.equal(model.emb.weight, torch.ones(5, 3))
    with pytest.raises(WeightkitError, match="one tensor \\(tied weights\\)"):
        weightkit.set_weights(model, [np.zeros((5, 3)), np.ones((5, 3))])
    # swapping two layers' weights: values that are the model's own memory are copied first
    a, b = nn.Linear(3, 3), nn.Linear(3, 3)
    pair = nn.Sequential(a, b)
    wa, wb = a.weight.detach().clone(), b.weight.detach().clone()
    weightkit.set_weights(pair, {"0.weight": b.weight, "1.weight": a.weight})
    assert torch.equal(a.weight, wb) and torch.equal(b.weight, wa)


def test_not_a_model():
    with pytest.raises(WeightkitError, match="live model"):
        weightkit.get_weights({"a": np.zeros(2)})


# --- init -------------------------------------------------------------------------------------

def test_init_seed_is_repeatable_and_leaves_global_rng_alone():
    a, b = Net(), Net()
    state = torch.get_rng_state()
    weightkit.init(a, "normal", seed=0, std=0.1)
    weightkit.init(b, "normal", seed=0, std=0.1)
    assert torch.equal(torch.get_rng_state(), state)
    for k in ("fc1.weight", "fc1.bias", "fc.weight", "bn.weight"):
        assert torch.equal(a.state_dict()[k], b.state_dict()[k])
    weightkit.init(b, "normal", seed=1, std=0.1)
    assert not torch.equal(a.fc.weight, b.fc.weight)


def test_init_default_selection_and_errors():
    model = Net()
    before = snapshot(model)
    report = weightkit.init(model, "xavier_normal", seed=0)
    assert report.tensors == ["fc1.weight", "fc.weight"]  # 2-D parameters; biases and buffers left alone
    assert torch.equal(model.fc.bias, before["fc.bias"])
    state = snapshot(model)
    for call, message in [
        (lambda: weightkit.init(model, "glorot"), r"unknown scheme 'glorot'; choose one of uniform, normal"),
        (lambda: weightkit.init(model, "kaiming_normal", nonlinearity="relu", gain=2), r"unknown argument\(s\): gain"),
        (lambda: weightkit.init(model, "constant"), r"needs val="),
        (lambda: weightkit.init(model, "kaiming_normal", nonlinearity="swish"), r"unsupported nonlinearity 'swish'"),
        (lambda: weightkit.init(model, "kaiming_normal", mode="fan"), r"mode must be"),
        (lambda: weightkit.init(model, "xavier_uniform", select="fc.*"), r"fc.bias has shape \(3,\).*role='weight'"),
        (lambda: weightkit.init(model, "zeros", select="nothing.*"), r"no tensor .* matches select='nothing"),
        (lambda: weightkit.init(model, "normal", seed=-1), r"seed must be"),
        (lambda: weightkit.init(model, "eye", select="bn.weight"), r"needs a 2-D tensor"),
    ]:
        with pytest.raises(WeightkitError, match=message):
            call()
        same_bits(state, snapshot(model))
    # a scheme failing on the last tensor writes nothing
    with pytest.raises(WeightkitError, match="sparse"):
        weightkit.init(model, "sparse", sparsity=0.5, kind="Linear", role="weight", std=-1.0)
    same_bits(state, snapshot(model))


@pytest.mark.parametrize("scheme", [s for s in SCHEMES if s != "default"])
def test_every_torch_init_scheme_by_name(scheme):
    model = nn.Sequential(nn.Conv2d(4, 4, 3), nn.Linear(6, 6))
    args = {"constant": {"val": 0.3}, "sparse": {"sparsity": 0.5}}.get(scheme, {})
    pattern = "0.weight" if scheme == "dirac" else "1.weight"
    weight = model[0].weight if scheme == "dirac" else model[1].weight
    report = weightkit.init(model, scheme, select=pattern, seed=3, **args)
    assert report.tensors == [pattern] and weight is (model[0].weight if scheme == "dirac" else model[1].weight)
    ref = torch.empty_like(weight)
    with torch.random.fork_rng():
        torch.manual_seed(3)
        getattr(nn.init, scheme + "_")(ref, **args)
    assert torch.equal(weight.detach(), ref)


def test_scheme_arguments_are_torchs():
    for scheme, spec in SCHEMES.items():
        if scheme == "default":
            continue
        sig = inspect.signature(getattr(nn.init, scheme + "_"))
        names = [p for p in list(sig.parameters)[1:] if p != "generator"]
        assert names == list(spec), scheme
        for p in names:
            default = sig.parameters[p].default
            if default is not inspect.Parameter.empty:
                assert spec[p] == default, (scheme, p)


def test_init_default_resets_only_the_selection():
    torch.manual_seed(0)
    model = Net()
    with torch.no_grad():
        model.fc.weight.fill_(5)
        model.fc.bias.fill_(5)
        model.bn.running_mean.fill_(5)
    weightkit.init(model, "default", select="fc.weight", seed=0)
    bound = 1 / math.sqrt(8)  # nn.Linear's reset_parameters: kaiming_uniform(a=sqrt(5)) -> U(-1/sqrt(fan_in), ..)
    assert model.fc.weight.abs().max() <= bound
    assert (model.fc.bias == 5).all()
    weightkit.init(model, "default", kind="BatchNorm1d")  # parameters only: running stats stay
    assert (model.bn.weight == 1).all() and (model.bn.running_mean == 5).all()
    weightkit.init(model, "default", select="bn.running_*")  # buffers when the pattern names them
    assert (model.bn.running_mean == 0).all() and (model.bn.running_var == 1).all()
    weird = nn.Module()
    weird.p = nn.Parameter(torch.zeros(2))
    with pytest.raises(WeightkitError, match="Module, which has no reset_parameters"):
        weightkit.init(weird, "default")


# --- freeze / trainable / param_groups ----------------------------------------------------------

def test_freeze_unfreeze_trainable_report():
    model = Net()
    report = weightkit.freeze(model)
    assert report.trainable_params == 0 and not any(p.requires_grad for p in model.parameters())
    report = weightkit.unfreeze(model, kind="Linear", role="bias")
    assert report.trainable_names == ["fc1.bias", "fc.bias"]
    assert report["fc1.bias"] is True and report["fc1.weight"] is False
    d = json.loads(json.dumps(report.to_dict()))
    assert d["total"] == {"trainable_params": 11, "frozen_params": 32 + 16 + 24, "buffer_elements": 17}
    with pytest.raises(WeightkitError, match="only buffers"):
        weightkit.freeze(model, select="bn.running_*")
    with pytest.raises(WeightkitError, match="matches select='head"):
        weightkit.freeze(model, select="head.*")


def test_param_groups():
    model = nn.Module()
    model.emb = nn.Embedding(10, 4)
    model.fc = nn.Linear(4, 4)
    model.ln = nn.LayerNorm(4)
    model.bn = nn.BatchNorm2d(4)
    model.frozen = nn.Linear(4, 4)
    model.frozen.requires_grad_(False)
    decay, plain = weightkit.param_groups(model, weight_decay=0.05)
    assert decay["weight_decay"] == 0.05 and plain["weight_decay"] == 0.0
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    assert ids(decay["params"]) == ids([model.emb.weight, model.fc.weight])
    assert ids(plain["params"]) == ids([model.fc.bias, model.ln.weight, model.ln.bias, model.bn.weight, model.bn.bias])
    decay, plain = weightkit.param_groups(model, no_decay="emb.*")
    assert ids(decay["params"]) == ids([model.fc.weight])
    opt = torch.optim.AdamW(weightkit.param_groups(model), lr=1e-3)
    assert len(opt.param_groups) == 2
    with pytest.raises(WeightkitError, match="weight_decay must be"):
        weightkit.param_groups(model, weight_decay=-1)
    model.requires_grad_(False)
    with pytest.raises(WeightkitError, match="frozen"):
        weightkit.param_groups(model)


# --- normalisation ------------------------------------------------------------------------------

def test_spectral_norm_and_errors():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 2))
    report = weightkit.spectral_norm(model, n_power_iterations=50)
    assert report.tensors == ["0.weight", "2.weight"]
    for m in (model[0], model[2]):
        assert abs(torch.linalg.matrix_norm(m.weight.detach(), 2).item() - 1) < 1e-3
    with pytest.raises(WeightkitError, match="0.weight.*already parametrized; remove_norm first"):
        weightkit.weight_norm(model, select="0.weight")
    weightkit.remove_norm(model)
    with pytest.raises(WeightkitError, match="no weight of the model is parametrized"):
        weightkit.remove_norm(model)
    with pytest.raises(WeightkitError, match="dim=5 is out of range"):
        weightkit.weight_norm(model, select="0.weight", dim=5)
    assert not torch.nn.utils.parametrize.is_parametrized(model[0])
    tied = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    tied[1].weight = tied[0].weight
    with pytest.raises(WeightkitError, match="tied"):
        weightkit.weight_norm(tied)


def test_weight_norm_failure_midway_is_undone(monkeypatch):
    from torch.nn.utils import parametrizations

    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3), nn.Linear(3, 3))
    params = [m.weight for m in model]
    before = snapshot(model)
    real, calls = parametrizations.weight_norm, []

    def flaky(module, name, dim):
        calls.append(name)
        if len(calls) == 3:
            raise RuntimeError("boom")
        return real(module, name=name, dim=dim)

    monkeypatch.setattr(parametrizations, "weight_norm", flaky)
    with pytest.raises(WeightkitError, match="boom.*unchanged"):
        weightkit.weight_norm(model)
    assert [m.weight for m in model] == params and all(m.weight is p for m, p in zip(model, params))
    same_bits(before, snapshot(model))


# --- properties ---------------------------------------------------------------------------------

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


@st.composite
def mlps(draw):
    sizes = draw(st.lists(st.integers(1, 6), min_size=2, max_size=4))
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**16))
    torch.manual_seed(seed)
    layers = []
    for _i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Linear(a, b, bias=draw(st.booleans())))
        if draw(st.booleans()):
            layers.append(nn.LayerNorm(b))
    return nn.Sequential(*layers).to(dtype)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mlps())
def test_set_of_get_is_identity_bit_for_bit(model):
    before = snapshot(model)
    weightkit.set_weights(model, weightkit.get_weights(model))
    weightkit.set_weights(model, weightkit.get_weights(model, as_dict=True))
    same_bits(before, snapshot(model))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mlps(), st.data())
def test_invalid_edit_leaves_model_unchanged(model, data):
    before = snapshot(model)
    vals = weightkit.get_weights(model, as_dict=True)
    names = list(vals)
    victim = data.draw(st.sampled_from(names))
    how = data.draw(st.sampled_from(["shape", "nan", "name", "cast"]))
    new = {k: v * 0 + 1 for k, v in vals.items()}
    if how == "shape":
        new[victim] = np.zeros(vals[victim].shape + (1,))
    elif how == "nan":
        new[victim] = np.full(vals[victim].shape, np.nan)
    elif how == "name":
        new[victim + "x"] = new.pop(victim)
    else:
        new[victim] = np.full(vals[victim].shape, 1 / 3, dtype=np.float64)
        if model.state_dict()[victim].dtype in (torch.float32, torch.float64):
            new[victim] = np.full(vals[victim].shape, 1e300)  # overflows float32; float64 takes it, so make it NaN
            if model.state_dict()[victim].dtype == torch.float64:
                new[victim] = np.full(vals[victim].shape, np.inf)
    with pytest.raises(WeightkitError):
        weightkit.set_weights(model, new)
    same_bits(before, snapshot(model))


def test_importing_weightkit_edit_imports_no_framework():
    code = "import sys, weightkit, weightkit.edits; print('torch' in sys.modules, 'keras' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


@pytest.mark.parametrize("name", ["weightkit.edits.values", "weightkit.edits.initialize", "weightkit.edits.trainability",
                                  "weightkit.edits.normalize"])
def test_docstring_examples_run(name):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0

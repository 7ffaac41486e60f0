"""The doctor finds each planted problem (one per rule) and stays silent on a healthy trained model."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from torch import nn

import weightkit
from weightkit.analyses.doctor import list_rules


def trained_cnn(steps: int = 15) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3),
                          nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(steps):
        x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 10, (16,))
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model


def rules_found(report):
    return {f.rule for f in report.findings}


def test_healthy_trained_model_is_silent(tmp_path):
    model = trained_cnn()
    opt = torch.optim.Adam(model.parameters())
    assert weightkit.doctor(model, optimizer=opt).findings == []
    path = tmp_path / "ckpt.pt"
    torch.save({"epoch": 3, "state_dict": model.state_dict()}, path)
    assert weightkit.doctor(path).findings == []


def test_nan_and_inf_in_weights_and_buffers():
    model = trained_cnn(2)
    with torch.no_grad():
        model[0].weight[0, 0, 0, 0] = math.nan
        model[6].bias[3] = -math.inf
    model[1].running_mean[2] = math.inf
    r = weightkit.doctor(model)
    bad = {f.tensors[0] for f in r.by_rule("nan-inf")}
    assert bad == {"0.weight", "6.bias", "1.running_mean"}
    assert all(f.severity == "error" for f in r.by_rule("nan-inf")) and r.exit_code == 1


def test_all_zero_dead_units_and_identical_rows():
    model = trained_cnn(2)
    with torch.no_grad():
        model[6].weight.zero_()
        model[3].weight[[1, 5]] = 0  # two dead filters
        model[0].weight[:] = 0.1  # constant init: symmetry never broken
    r = weightkit.doctor(model)
    zero = r.by_rule("all-zero")
    assert [f.tensors for f in zero] == [["6.weight"]] and zero[0].severity == "warning"
    dead = r.by_rule("dead-units")
    assert [f.tensors for f in dead] == [["3.weight"]] and dead[0].details["dead"] == [1, 5]
    same = r.by_rule("identical-rows")
    assert [f.tensors for f in same] == [["0.weight"]]
    assert r.exit_code == 0  # warnings only


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(rows=st.integers(2, 40), cols=st.integers(2, 30), copies=st.lists(st.tuples(st.integers(0, 39), st.integers(0, 39)),
       max_size=12), dtype=st.sampled_from(["float32", "float64", "float16"]), negzero=st.booleans())
def test_identical_rows_counts_like_numpy_unique(rows, cols, copies, dtype, negzero):
    from weightkit.analyses.doctor.rules import _duplicate_rows

    a = np.random.default_rng(rows * 100 + cols).standard_normal((rows, cols)).astype(dtype)
    for src, dst in copies:
        a[dst % rows] = a[src % rows]
    if negzero:  # -0.0 and 0.0 are the same weight
        a[0, 0], a[rows - 1] = 0.0, a[0]
        a[rows - 1, 0] = -0.0
    _, counts = np.unique(a.astype(np.float64), axis=0, return_counts=True)
    assert _duplicate_rows(a) == (int((counts - 1).sum()), int((counts > 1).sum()))


def test_keras_style_dense_dead_units_use_the_last_axis():
    # a Dense kernel is (in_features, out_features): a dead unit is a zero *column*
    import numpy as np

    kernel = np.random.default_rng(0).standard_normal((6, 4)).astype("float32") * 0.3
    kernel[:, 2] = 0

    from weightkit.core.weightset import WeightSet
    from weightkit.sources import RawTensor, ReaderBase

    class DenseReader(ReaderBase):
        format, description = "test", "dense"

        def tensors(self):
            return [RawTensor("dense/kernel", "dense/kernel", (6, 4), "float32", layer="dense", kind="Dense",
                              role="kernel")]

        def read(self, key):
            return kernel

    dead = weightkit.doctor(WeightSet(DenseReader())).by_rule("dead-units")
    assert len(dead) == 1 and dead[0].details["dead"] == [2]


def test_exploding_and_vanishing_scale_states_the_threshold():
    model = nn.Sequential(nn.Linear(400, 50), nn.Linear(50, 10))
    with torch.no_grad():
        model[0].weight.normal_(0, 2.0)  # 1/sqrt(400)=0.05: 40x too large
        model[1].weight.normal_(0, 1e-5)
    found = {f.tensors[0]: f for f in weightkit.doctor(model).by_rule("scale")}
    assert set(found) == {"0.weight", "1.weight"}
    assert "exploding" in found["0.weight"].message and "10x" in found["0.weight"].message
    assert found["0.weight"].details["fan_in"] == 400
    assert "vanishing" in found["1.weight"].message


def test_batchnorm_invalid_variance_and_untrained_statistics(tmp_path):
    model = trained_cnn(2)
    model[1].running_var[0] = -1.0
    r = weightkit.doctor(model)
    assert [f.tensors for f in r.by_rule("batchnorm-variance")] == [["1.running_var"]] and r.exit_code == 1

    fresh = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    path = tmp_path / "claims_trained.pt"
    torch.save({"epoch": 10, "model_state_dict": fresh.state_dict()}, path)
    found = weightkit.doctor(path).by_rule("batchnorm-untrained")
    assert len(found) == 1 and found[0].severity == "warning" and "1.num_batches_tracked" in found[0].tensors
    # the same statistics in a file that makes no claim are only a note
    save_file(fresh.state_dict(), str(tmp_path / "plain.safetensors"))
    assert [f.severity for f in weightkit.doctor(tmp_path / "plain.safetensors").by_rule("batchnorm-untrained")] == ["info"]


def test_unregistered_tensor_attribute():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)
            self.scale = torch.ones(3, requires_grad=True)  # the classic mistake
            self.index = torch.arange(3)  # integer: a lookup table, not a weight

    found = weightkit.doctor(Net()).by_rule("unregistered-tensor")
    assert [f.tensors for f in found] == [["scale"]]
    assert "nn.Parameter" in found[0].fix and "register_buffer" in found[0].fix


def test_optimizer_rules():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    model[2].weight.requires_grad_(False)
    opt = torch.optim.SGD([
        {"params": [model[0].weight, model[0].bias, model[1].weight, model[2].weight], "weight_decay": 0.01},
    ], lr=0.1)
    opt.param_groups.append({**opt.param_groups[0], "params": [model[0].weight], "weight_decay": 0.0})
    r = weightkit.doctor(model, optimizer=opt)
    assert r.by_rule("optimizer-missing")[0].tensors == ["1.bias", "2.bias"]
    assert r.by_rule("optimizer-frozen")[0].tensors == ["2.weight"]
    assert r.by_rule("optimizer-duplicate")[0].tensors == ["0.weight"]
    assert r.by_rule("optimizer-decay-bias-norm")[0].tensors == ["0.bias", "1.weight"]
    assert r.exit_code == 1


def test_shared_weights_are_info_and_mixed_dtypes_warn():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 4)
            self.head = nn.Linear(4, 10, bias=False)
            self.head.weight = self.emb.weight
            self.mixed = nn.Linear(4, 4)
            self.mixed.bias.data = self.mixed.bias.data.half()

    r = weightkit.doctor(Tied())
    shared = r.by_rule("shared-weights")
    assert shared[0].severity == "info" and set(shared[0].tensors) == {"emb.weight", "head.weight"}
    assert r.by_rule("mixed-dtype-device")[0].tensors == ["mixed.weight", "mixed.bias"]


def test_bias_before_batchnorm(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3),
                          nn.BatchNorm2d(8 // 2), nn.Flatten(), nn.Linear(4 * 4 * 4, 6), nn.BatchNorm1d(6),
                          nn.Linear(6, 3), nn.BatchNorm1d(5))
    for source in (model, _saved(model, tmp_path / "m.safetensors")):
        found = weightkit.doctor(source).by_rule("bias-before-norm")
        assert len(found) == 1 and found[0].severity == "info"
        assert found[0].tensors == ["0.bias", "3.bias", "6.bias"]  # 8 -> 5 channels: not that BatchNorm's input
        assert found[0].details["pairs"] == [["0", "1"], ["3", "4"], ["6", "7"]]
    model[0] = nn.Conv2d(3, 8, 3, bias=False)
    assert weightkit.doctor(model).by_rule("bias-before-norm")[0].tensors == ["3.bias", "6.bias"]


def test_bias_before_batchnorm_when_a_file_lists_names_alphabetically(tmp_path):
    """safetensors lists "10" before "2" and "bn1" before "conv1": the pairs are still found."""

    class Block(nn.Module):  # torchvision ResNet's names
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4)
            self.conv2, self.bn2 = nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4)

    layers = [m for _ in range(6) for m in (nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4))]
    model = nn.Sequential(*layers, Block())
    expected = [[str(i), str(i + 1)] for i in range(0, 12, 2)] + [["12.conv1", "12.bn1"], ["12.conv2", "12.bn2"]]
    for source in (model, _saved(model, tmp_path / "m.safetensors")):
        (found,) = weightkit.doctor(source).by_rule("bias-before-norm")
        assert sorted(found.details["pairs"]) == sorted(expected)


def _saved(model, path):
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def test_bias_before_batchnorm_keras():
    keras = pytest.importorskip("keras")
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3), keras.layers.BatchNormalization(),
                              keras.layers.Conv2D(4, 3, use_bias=False), keras.layers.BatchNormalization()])
    found = weightkit.doctor(model).by_rule("bias-before-norm")
    assert len(found) == 1 and len(found[0].tensors) == 1 and found[0].tensors[0].endswith("bias")


def test_every_rule_is_exercised_above():
    ids = {r.id for r in list_rules()}
    assert ids == {"nan-inf", "all-zero", "dead-units", "identical-rows", "scale", "batchnorm-variance",
                   "batchnorm-untrained", "batchnorm-dead-channels", "untrained-layer", "unused-parameters",
                   "unregistered-tensor", "shared-weights", "mixed-dtype-device", "optimizer-missing",
                   "optimizer-frozen", "optimizer-duplicate", "optimizer-foreign", "optimizer-decay-bias-norm",
                   "bias-before-norm"}


def test_bad_requests():
    with pytest.raises(weightkit.WeightkitError, match="unknown doctor rule"):
        weightkit.doctor(nn.Linear(2, 2), rules=["nope"])
    with pytest.raises(weightkit.WeightkitError, match="optimizer"):
        weightkit.doctor({"w": torch.zeros(2)}, optimizer=torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=1))


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "weightkit", *map(str, args)], capture_output=True, text=True)


def test_cli_exit_codes_and_json(tmp_path):
    healthy = tmp_path / "healthy.safetensors"
    save_file({k: v.contiguous() for k, v in trained_cnn().state_dict().items()}, str(healthy))
    ok = _cli("doctor", healthy)
    assert ok.returncode == 0 and "No problems found" in ok.stdout

    broken = tmp_path / "broken.safetensors"
    sd = trained_cnn(2).state_dict()
    sd["0.weight"][0, 0, 0, 0] = math.nan
    save_file({k: v.contiguous() for k, v in sd.items()}, str(broken))
    bad = _cli("doctor", broken, "--json")
    assert bad.returncode == 1
    data = json.loads(bad.stdout)
    assert data["counts"]["error"] == 1 and data["findings"][0]["rule"] == "nan-inf"

    missing = _cli("doctor", tmp_path / "nope.pt")
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "nope.pt" in missing.stderr
    assert "Traceback" not in missing.stderr

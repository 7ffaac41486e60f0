"""Pruning and quantisation through the Python API: live torch models and files, checked against
torch's own pruning methods and an independent NumPy computation of the quantisation error."""

import copy
import importlib
import json
import tracemalloc

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from torch.nn.utils import prune as tprune

import weightkit
from weightkit import WeightkitError
from weightkit.core.weightset import Weight
from weightkit.edits._compress import output_axis
from weightkit.layers import axes_for


def cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 32, 3), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 3), nn.BatchNorm2d(64), nn.ReLU(),
        nn.Conv2d(64, 128, 3), nn.BatchNorm2d(128), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 10),
    )


def resnet_like():
    """A ResNet-style convolution stack, 64 to 512 channels (2.8 M parameters)."""
    torch.manual_seed(2)
    layers, c_in = [nn.Conv2d(3, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU()], 64
    for c in (64, 128, 128, 256, 256, 512):
        layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
        c_in = c
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 1000))


def mlp():
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))


def twin(model):
    return copy.deepcopy(model)


# ---- prune: live torch models ---------------------------------------------------------------------


def test_magnitude_masks_equal_torch_l1_unstructured_also_when_repeated():
    a = nn.Conv2d(8, 16, 3)
    b = twin(a)
    for _ in range(2):  # the second call prunes a fraction of what is left, as torch does
        weightkit.prune(a, 0.3)
        tprune.l1_unstructured(b, "weight", 0.3)
        assert torch.equal(a.weight_mask, b.weight_mask)
        assert torch.equal(a.weight, b.weight)
    assert isinstance(a.weight_orig, nn.Parameter) and "weight_mask" in dict(a.named_buffers())


@pytest.mark.parametrize("method,n", [("l1-structured", 1), ("l2-structured", 2)])
def test_structured_masks_equal_torch_ln_structured_on_output_channels(method, n):
    a = nn.Conv2d(8, 16, 3)
    b = twin(a)
    r = weightkit.prune(a, 0.25, method=method)
    tprune.ln_structured(b, "weight", 0.25, n=n, dim=0)
    assert torch.equal(a.weight_mask, b.weight_mask)
    assert r["weight"].dim == 0 and r["weight"].pruned == 4 * 8 * 9
    # whole output channels are zero
    dead = (a.weight.abs().sum((1, 2, 3)) == 0)
    assert int(dead.sum()) == 4


def test_structured_uses_the_output_axis_of_the_layer_table():
    conv_t = nn.ConvTranspose2d(6, 10, 3)  # weight (in, out, kh, kw): output channels are axis 1
    r = weightkit.prune(conv_t, 0.5, method="l2-structured")
    assert r["weight"].dim == 1
    dead = conv_t.weight.abs().sum((0, 2, 3)) == 0
    assert int(dead.sum()) == 5
    assert int((conv_t.weight.abs().sum((1, 2, 3)) == 0).sum()) == 0
    # a Keras Dense kernel is (in, out): its output axis is 1; Keras Conv2D's is the last
    dense = Weight("d/kernel", "d", "Dense", "kernel", (3, 2), axes_for("Dense", "kernel", (3, 2)), "float32", True, False)
    conv = Weight("c/kernel", "c", "Conv2D", "kernel", (3, 3, 4, 8), axes_for("Conv2D", "kernel", (3, 3, 4, 8)),
                  "float32", True, False)
    assert output_axis(dense) == 1 and output_axis(conv) == 3
    lstm = weightkit.open(nn.LSTM(4, 5))["weight_ih_l0"]
    assert output_axis(lstm) == 0


def test_global_magnitude_sparsity_is_exact_and_equals_torch_global_unstructured():
    a = cnn()
    for amount in (0.1, 0.37, 0.5, 0.9):
        m1, m2 = twin(a), twin(a)
        r = weightkit.prune(m1, amount, scope="global")
        weights = [(m, "weight") for m in m2.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        tprune.global_unstructured(weights, pruning_method=tprune.L1Unstructured, amount=amount)
        assert abs(r.sparsity - amount) <= 0.001, (amount, r.sparsity)
        prunable = sum(p.numel() for n, p in m1.named_parameters() if p.dim() >= 2)
        assert r.numel == prunable  # the 1-D BatchNorm scales are not prunable by default
        for (n1, x), (_n2, y) in zip(m1.named_buffers(), m2.named_buffers()):
            if n1.endswith("weight_mask"):
                assert torch.equal(x, y), n1


def test_prune_by_threshold_like_a_user():
    torch.manual_seed(0)
    layer = nn.Linear(64, 32)
    before = layer.weight.detach().clone()
    report = weightkit.prune(layer, threshold=0.1)
    small = before.abs() < 0.1
    assert torch.all(layer.weight[small] == 0)
    assert torch.equal(layer.weight[~small], before[~small])
    assert report.pruned == int(small.sum())
    assert report.sparsity == pytest.approx(small.float().mean().item())


def test_random_pruning_is_seeded_and_exact():
    a, b, c = nn.Linear(100, 50), nn.Linear(100, 50), nn.Linear(100, 50)
    b.load_state_dict(a.state_dict())
    c.load_state_dict(a.state_dict())
    weightkit.prune(a, 0.3, method="random", seed=7)
    weightkit.prune(b, 0.3, method="random", seed=7)
    weightkit.prune(c, 0.3, method="random", seed=8)
    assert torch.equal(a.weight_mask, b.weight_mask)
    assert not torch.equal(a.weight_mask, c.weight_mask)
    assert int((a.weight_mask == 0).sum()) == 1500


def test_make_permanent_and_report():
    net = mlp()
    r = weightkit.prune(net, 0.5, select="0.*")
    assert [t.name for t in r.tensors] == ["0.weight"]
    data = json.loads(json.dumps(r.to_dict()))
    t = data["tensors"][0]
    assert t["sparsity"] == 0.5 and t["pruned"] == 784 * 512 // 2
    # bitmask layout: non-zero values + one bit per element
    assert t["bytes_sparse"] == (784 * 512 // 2) * 4 + (784 * 512 + 7) // 8
    assert data["total"]["bytes_saved"] == t["bytes_dense"] - t["bytes_sparse"]
    assert "bitmask" in data["sparse_layout"]
    assert weightkit.make_permanent(net) == ["0.weight"]
    assert "0.weight_orig" not in dict(net.named_parameters())
    assert not dict(net.named_buffers())
    assert float((net[0].weight == 0).float().mean()) == 0.5
    assert weightkit.make_permanent(net) == []


def test_live_prune_leaves_what_torch_prune_leaves_and_make_permanent_equals_remove():
    a = mlp()
    b = twin(a)
    first = a[0].weight
    opt = torch.optim.SGD(a.parameters(), lr=0.1)  # built before pruning: must keep updating the same tensor
    weightkit.prune(a, 0.4, select="0.*")
    tprune.l1_unstructured(b[0], "weight", 0.4)
    assert list(a.state_dict()) == list(b.state_dict())
    assert a[0].weight_orig is first and not isinstance(a[0].weight, nn.Parameter)
    assert [type(h) for h in a[0]._forward_pre_hooks.values()] == [tprune.CustomFromMask]
    assert torch.equal(a[0].weight, b[0].weight)
    a[0].weight.pow(2).sum().backward()  # a penalty on the pruned weight reaches weight_orig, as in torch
    b[0].weight.pow(2).sum().backward()
    assert torch.equal(a[0].weight_orig.grad, b[0].weight_orig.grad)
    x = torch.randn(4, 784)
    assert torch.equal(a(x), b(x))
    weightkit.prune(a, 0.5, select="0.*")  # composes like torch's second call
    tprune.l1_unstructured(b[0], "weight", 0.5)
    assert torch.equal(a[0].weight_mask, b[0].weight_mask)
    assert weightkit.make_permanent(a) == ["0.weight"]
    tprune.remove(b[0], "weight")
    assert list(a.state_dict()) == list(b.state_dict()) and not a[0]._forward_pre_hooks
    assert a[0].weight is first and isinstance(a[0].weight, nn.Parameter)
    assert torch.equal(a[0].weight, b[0].weight)
    assert any(p is first for g in opt.param_groups for p in g["params"])


def test_pruned_model_still_trains_and_keeps_zeros():
    net = mlp()
    weightkit.prune(net, 0.5, scope="global")
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    loss = net(torch.randn(8, 784)).pow(2).mean()
    loss.backward()
    opt.step()
    assert float((net[0].weight == 0).float().mean()) >= 0.4  # masks hold through the update


@pytest.mark.parametrize("kwargs,needle", [
    ({"amount": 1.5}, "amount must be a fraction"),
    ({"amount": -0.1}, "amount must be a fraction"),
    ({"amount": 0.5, "method": "median"}, "unknown pruning method"),
    ({"amount": 0.5, "scope": "world"}, "unknown scope"),
    ({"amount": 0.5, "select": "nothing.*"}, "no prunable weight"),
    ({"amount": 0.5, "method": "l1-structured", "scope": "global"}, "no global structured"),
    ({"amount": 0.5, "threshold": 0.1}, "not both"),
    ({}, "give amount="),
    ({"amount": 0.5, "method": "l1-structured", "dim": 7}, "out of range"),
    ({"amount": 0.5, "dim": 1}, "structured pruning only"),
])
def test_bad_prune_requests_leave_the_model_unchanged(kwargs, needle):
    net = mlp()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(WeightkitError) as e:
        weightkit.prune(net, **kwargs)
    assert needle in str(e.value) and "\n" not in str(e.value)
    assert set(net.state_dict()) == set(before)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_tied_weights_are_refused():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 4)
            self.out = nn.Linear(4, 10, bias=False)
            self.out.weight = self.emb.weight

    with pytest.raises(WeightkitError, match="tied"):
        weightkit.prune(Tied(), 0.5)


# ---- prune: files -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [
    {"amount": 0.4},
    {"amount": 0.6, "scope": "global"},
    {"amount": 0.5, "method": "l1-structured"},
    {"amount": 0.3, "method": "l2-structured"},
    {"threshold": 0.05},
])
def test_pruning_a_file_gives_what_pruning_the_live_model_gives(tmp_path, kwargs):
    live = cnn()
    path = tmp_path / "in.safetensors"
    save_file({k: v.contiguous() for k, v in live.state_dict().items()}, str(path))
    out = tmp_path / "out.safetensors"
    r_file = weightkit.prune(path, out=out, **kwargs)
    r_live = weightkit.prune(live, **kwargs)
    weightkit.make_permanent(live)
    pruned = weightkit.open(out)
    for name, value in live.state_dict().items():
        assert np.array_equal(pruned[name].numpy(), value.numpy()), name
    assert r_file.sparsity == r_live.sparsity and r_file.pruned == r_live.pruned
    assert [t.name for t in r_file.tensors] == [t.name for t in r_live.tensors]
    assert weightkit.verify(out).ok
    assert r_file.out == str(out)


def test_pruning_a_bfloat16_file_keeps_its_dtype(tmp_path):
    torch.manual_seed(0)
    state = {"fc.weight": torch.randn(64, 32).to(torch.bfloat16), "fc.bias": torch.randn(64).to(torch.bfloat16)}
    save_file(state, str(tmp_path / "in.safetensors"))
    r = weightkit.prune(tmp_path / "in.safetensors", 0.5, out=tmp_path / "out.safetensors")
    ws = weightkit.open(tmp_path / "out.safetensors")
    assert ws["fc.weight"].dtype == "bfloat16" and r.sparsity == 0.5
    w = ws["fc.weight"].torch()
    ref = state["fc.weight"]
    kept = w != 0
    assert torch.equal(w[kept], ref[kept])
    assert ref[~kept].abs().max() <= ref[kept].abs().min()
    assert torch.equal(ws["fc.bias"].torch(), state["fc.bias"])


def test_file_pruning_streams(tmp_path):
    """Peak traced memory stays below 2x the largest tensor (here 32 MB tensors)."""
    rng = np.random.default_rng(0)
    state = {f"layers.{i}.weight": rng.standard_normal((2048, 4096), dtype=np.float32) for i in range(3)}
    from safetensors.numpy import save_file as np_save

    np_save(state, str(tmp_path / "big.safetensors"))
    largest = max(v.nbytes for v in state.values())
    del state
    # warm up: imports and loading numba's compiled kernels allocate once
    weightkit.prune({"fc.weight": np.ones((64, 64), np.float32)}, 0.5, out=tmp_path / "warm.safetensors")
    weightkit.quantize_error({"fc.weight": np.ones((64, 64), np.float32)})
    for op in (lambda: weightkit.prune(tmp_path / "big.safetensors", 0.5, scope="global", out=tmp_path / "p.safetensors"),
               lambda: weightkit.quantize(tmp_path / "big.safetensors", tmp_path / "q.safetensors", bits=4,
                                          granularity="group"),
               lambda: weightkit.quantize_error(tmp_path / "big.safetensors", granularity="channel")):
        tracemalloc.start()
        op()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak <= 2 * largest, (peak / largest)


def test_live_keras_models_are_refused_with_a_clear_message(monkeypatch):
    class FakeKeras:  # a stand-in: importing Keras would cost seconds
        name = "model"

    monkeypatch.setattr(importlib.import_module("weightkit.edits._backend"), "is_keras", lambda obj: isinstance(obj, FakeKeras))
    with pytest.raises(WeightkitError, match="torch only"):
        weightkit.prune(FakeKeras(), 0.5)


# ---- quantize_error ---------------------------------------------------------------------------------


def numpy_quant(w, bits, scheme, axis=None, group=None):
    """An independent reference: float64 arithmetic, explicit loops over channels and groups."""
    w = np.asarray(w, dtype=np.float64)
    rows = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1) if axis is not None else w.reshape(1, -1)
    out = np.empty_like(rows)
    nscales = 0
    for r in range(rows.shape[0]):
        g = group or rows.shape[1]
        for s in range(0, rows.shape[1], g):
            x = rows[r, s:s + g]
            nscales += 1
            if scheme == "symmetric":
                qmax = 2 ** (bits - 1) - 1
                scale = np.float32(np.abs(x).max() / qmax)
                q = np.clip(np.rint(x / scale), -qmax, qmax) if scale > 0 else np.zeros_like(x)
                out[r, s:s + g] = q * scale
            else:
                qmax = 2 ** bits - 1
                lo, hi = min(x.min(), 0), max(x.max(), 0)
                scale = np.float32((hi - lo) / qmax)
                zp = np.clip(np.rint(-lo / scale), 0, qmax)
                q = np.clip(np.rint(x / scale) + zp, 0, qmax)
                out[r, s:s + g] = (q - zp) * scale
    deq = np.moveaxis(out.reshape(np.moveaxis(w, axis, 0).shape), 0, axis) if axis is not None else out.reshape(w.shape)
    err = w - deq
    return {
        "rel_error": np.linalg.norm(err) / np.linalg.norm(w),
        "sqnr_db": 10 * np.log10((w ** 2).sum() / (err ** 2).sum()),
        "max_abs_error": np.abs(err).max(),
        "nscales": nscales,
        "deq": deq,
    }


def test_int8_per_channel_sqnr_matches_theory_and_numpy():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((256, 1024)).astype(np.float32) * 0.02
    r = weightkit.quantize_error({"fc.weight": w}, bits=8, granularity="channel")
    t = r["fc.weight"]
    # theory: 6.02·bits + 4.77 − 20·log10(absmax/std), with the channels' absmax combined in power
    absmax = np.abs(w).max(axis=1)
    ratio = np.sqrt(np.mean(absmax ** 2)) / w.std()
    theory = 6.02 * 8 + 4.77 - 20 * np.log10(ratio)
    assert abs(t.sqnr_db - theory) < 1.0, (t.sqnr_db, theory)
    ref = numpy_quant(w, 8, "symmetric", axis=0)
    assert t.axis == 0
    assert t.rel_error == pytest.approx(ref["rel_error"], rel=1e-4)
    assert t.sqnr_db == pytest.approx(ref["sqnr_db"], abs=1e-3)
    assert t.max_abs_error == pytest.approx(ref["max_abs_error"], rel=1e-4)
    assert t.bytes_before == w.nbytes and t.bytes_after == w.size + 256 * 4


@pytest.mark.parametrize("bits,scheme,granularity", [
    (8, "symmetric", "tensor"), (8, "asymmetric", "channel"), (4, "symmetric", "group"), (4, "asymmetric", "group"),
])
def test_quantize_error_equals_an_independent_numpy_computation(bits, scheme, granularity):
    rng = np.random.default_rng(1)
    w = (rng.standard_normal((64, 300)) * 0.05 + 0.01).astype(np.float32)  # 300: a last, shorter group
    r = weightkit.quantize_error({"fc.weight": w, "fc.bias": np.zeros(64, np.float32)}, bits=bits, scheme=scheme,
                                 granularity=granularity, group_size=128)
    t = r["fc.weight"]
    ref = numpy_quant(w, bits, scheme, axis=None if granularity == "tensor" else 0,
                      group=128 if granularity == "group" else None)
    assert t.rel_error == pytest.approx(ref["rel_error"], rel=1e-4)
    assert t.sqnr_db == pytest.approx(ref["sqnr_db"], abs=1e-3)
    assert t.max_abs_error == pytest.approx(ref["max_abs_error"], rel=1e-3)
    per_scale = 4 + (scheme == "asymmetric")
    codes = w.size if bits == 8 else (w.size + 1) // 2
    assert t.bytes_after == codes + ref["nscales"] * per_scale
    assert not r["fc.bias"].quantized and r["fc.bias"].reason == "bias"
    assert r.bytes_before == w.nbytes + 64 * 4 and r.bytes_after == t.bytes_after + 64 * 4
    json.dumps(r.to_dict(), allow_nan=False)


def test_channel_granularity_follows_the_layer_table_axis():
    # a ConvTranspose2d's output channels are axis 1
    conv_t = nn.ConvTranspose2d(16, 32, 3)
    t = weightkit.quantize_error(conv_t, granularity="channel")["weight"]
    ref = numpy_quant(conv_t.weight.detach().numpy(), 8, "symmetric", axis=1)
    assert t.axis == 1 and t.bytes_after == conv_t.weight.numel() + 32 * 4
    assert t.sqnr_db == pytest.approx(ref["sqnr_db"], abs=1e-3)


def test_quantize_error_changes_nothing_and_reads_files(tmp_path):
    net = mlp()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    r_live = weightkit.quantize_error(net, bits=4, granularity="group")
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "m.safetensors"))
    r_file = weightkit.quantize_error(tmp_path / "m.safetensors", bits=4, granularity="group")
    assert [(t.name, t.sqnr_db) for t in r_live.tensors] == [(t.name, t.sqnr_db) for t in r_file.tensors]
    assert r_file.rel_error == pytest.approx(r_live.rel_error)
    with pytest.raises(WeightkitError, match="bits must be 4 or 8"):
        weightkit.quantize_error(net, bits=3)
    with pytest.raises(WeightkitError, match="matches select"):
        weightkit.quantize_error(net, select="nothing*")


# ---- quantize ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits,scheme,granularity", [(8, "symmetric", "channel"), (4, "asymmetric", "group"),
                                                     (4, "symmetric", "tensor")])
def test_weight_only_checkpoint_reads_back_dequantised(tmp_path, bits, scheme, granularity):
    net = cnn()
    out = tmp_path / "q.safetensors"
    r = weightkit.quantize(net, out, bits=bits, scheme=scheme, granularity=granularity, group_size=128)
    ws = weightkit.open(out)
    live = weightkit.open(net)
    assert ws.format == "weightkit-quantized"
    assert sorted(ws.names) == sorted(live.names)
    for w in live:
        q = ws[w.name]
        assert q.shape == w.shape and q.kind == w.kind and q.axes == w.axes, w.name
        value = q.numpy()
        t = r[w.name]
        if t.quantized:
            assert q.dtype == "float32" and value.dtype == np.float32
            axis = None if granularity == "tensor" else t.axis
            ref = numpy_quant(w.numpy(), bits, scheme, axis=axis, group=128 if granularity == "group" else None)
            np.testing.assert_allclose(value, ref["deq"], rtol=0, atol=1e-6 * np.abs(w.numpy()).max())
            err = np.linalg.norm(value.astype(np.float64) - w.numpy()) / np.linalg.norm(w.numpy())
            assert err == pytest.approx(t.rel_error, rel=1e-5)
        else:
            assert np.array_equal(value, w.numpy()), w.name  # kept exactly
        assert np.array_equal(q.torch().numpy(), value)
    assert weightkit.verify(out).ok
    assert ws.metadata["quantization"]["bits"] == bits


@pytest.mark.parametrize("model", [mlp, resnet_like])
def test_quantised_checkpoint_sizes(tmp_path, model):
    net = model()
    float_bytes = sum(v.numel() * 4 for v in net.state_dict().values() if v.is_floating_point())
    r8 = weightkit.quantize(net, tmp_path / "q8.safetensors", bits=8, granularity="channel")
    r4 = weightkit.quantize(net, tmp_path / "q4.safetensors", bits=4, granularity="group", group_size=128)
    assert r8.file_bytes == (tmp_path / "q8.safetensors").stat().st_size
    assert r8.file_bytes <= 0.26 * float_bytes, r8.file_bytes / float_bytes
    assert r4.file_bytes <= 0.14 * float_bytes, r4.file_bytes / float_bytes


def test_dynamic_quantisation_of_a_live_model():
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(16, 32, batch_first=True)
            self.fc = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 4))

        def forward(self, x):
            return self.fc(self.lstm(x)[0][:, -1])

    net = Net().eval()
    for granularity in ("tensor", "channel"):
        q = weightkit.quantize(net, bits=8, granularity=granularity)
        assert q is not net and isinstance(net.fc[0], nn.Linear)  # the float model is not changed
        assert "quantized.dynamic" in type(q.fc[0]).__module__ and "quantized.dynamic" in type(q.lstm).__module__
        x = torch.randn(8, 5, 16)
        with torch.no_grad():
            ref, out = net(x), q(x)
        assert (out - ref).abs().max() <= 0.05 * ref.abs().max() + 1e-3
    with pytest.raises(WeightkitError, match="int8 symmetric"):
        weightkit.quantize(net, bits=4)
    with pytest.raises(WeightkitError, match="live torch"):
        weightkit.quantize({"w": np.zeros((4, 4), np.float32)}, mode="dynamic")


def test_quantize_refuses_to_overwrite_its_input(tmp_path):
    net = mlp()
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "m.safetensors"))
    before = (tmp_path / "m.safetensors").read_bytes()
    with pytest.raises(WeightkitError, match="is the input file"):
        weightkit.quantize(tmp_path / "m.safetensors", tmp_path / "m.safetensors")
    assert (tmp_path / "m.safetensors").read_bytes() == before
    r = weightkit.quantize(tmp_path / "m.safetensors", in_place=True, bits=8)
    assert r.out == str(tmp_path / "m.safetensors")
    assert weightkit.open(tmp_path / "m.safetensors").format == "weightkit-quantized"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


@pytest.mark.parametrize("name", ["weightkit.edits.prune", "weightkit.edits.quantize", "weightkit.edits.save", "weightkit.edits.load", "weightkit._atomic",
                                  "weightkit.edits._compress"])
def test_docstring_examples_run(name):
    import doctest

    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0


def test_a_directory_of_shards_is_pruned_into_one_file(tmp_path):
    net = mlp()
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    (tmp_path / "shards").mkdir()
    save_file({k: v for k, v in state.items() if k.startswith("0.")}, str(tmp_path / "shards" / "a.safetensors"))
    save_file({k: v for k, v in state.items() if not k.startswith("0.")}, str(tmp_path / "shards" / "b.safetensors"))
    r = weightkit.prune(tmp_path / "shards", 0.5, scope="global", out=tmp_path / "one.safetensors")
    ws = weightkit.open(tmp_path / "one.safetensors")
    assert sorted(ws.names) == sorted(state) and r.sparsity == 0.5


def test_keras_dense_kernels_use_their_output_axis_1(tmp_path):
    import os

    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    pytest.importorskip("h5py")
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32), keras.layers.Dense(16)])
    path = tmp_path / "m.weights.h5"
    model.save_weights(str(path))
    r = weightkit.prune(path, 0.5, method="l1-structured", role="kernel", out=tmp_path / "p.safetensors")
    assert [t.dim for t in r.tensors] == [1, 1]
    kernel = weightkit.open(tmp_path / "p.safetensors")[r.tensors[0].name].numpy()  # (in 64, out 32)
    assert int((np.abs(kernel).sum(0) == 0).sum()) == 16 and int((np.abs(kernel).sum(1) == 0).sum()) == 0
    e = weightkit.quantize_error(model, granularity="channel")
    first = e.tensors[0]
    assert first.quantized and first.axis == 1 and first.bytes_after == 64 * 32 + 32 * 4


def test_default_selection_covers_recurrent_and_keras_weight_matrices(tmp_path):
    # a user pruning "the weights" of an RNN expects its weight_ih/weight_hh matrices too
    lstm = nn.LSTM(6, 8, num_layers=2)
    matrices = sorted(n for n, p in lstm.named_parameters() if p.ndim == 2)
    report = weightkit.prune(lstm, amount=0.5)
    names = sorted(t.name for t in report.tensors)
    assert names == matrices
    for n in names:
        w = getattr(lstm, n)
        assert abs(float((w == 0).float().mean()) - 0.5) < 0.01
    assert all(float((getattr(lstm, b) == 0).float().mean()) < 0.5 for b in ("bias_ih_l0", "bias_hh_l1"))

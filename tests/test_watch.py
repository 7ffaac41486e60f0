"""weightkit.watch on PyTorch: what a user sees after adding two lines to a plain training loop.

Every measured value is checked against an independent computation on an unwatched twin of
the model (same seed), and watching must leave training bit-identical."""

import doctest
import importlib
import logging
import math
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import weightkit
import weightkit.tracking
from weightkit.errors import WeightkitError
from weightkit.tracking._torch import grad_stats, histogram


def mlp(seed=0, depth=2, width=16, act=nn.ReLU, n_in=8):
    torch.manual_seed(seed)
    layers, d = [], n_in
    for _ in range(depth):
        layers += [nn.Linear(d, width), act()]
        d = width
    return nn.Sequential(*layers, nn.Linear(d, 1))


def batch(step, n_in=8, n=32):
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(n, n_in, generator=g)
    return x, x.sum(1, keepdim=True).sin()


def train_step(net, opt, step):
    x, y = batch(step)
    opt.zero_grad()
    nn.functional.mse_loss(net(x), y).backward()
    opt.step()


def hooks_left(net, opt=None):
    n = sum(len(p._post_accumulate_grad_hooks or {}) for p in net.parameters())
    if opt is not None:
        n += len(opt._optimizer_step_pre_hooks) + len(opt._optimizer_step_post_hooks)
    return n


# ---- the measured values -----------------------------------------------------------------------


@pytest.fixture(params=["cpu", "gpu-path"])
def code_path(request, monkeypatch):
    """Run a test on the CPU code path and on the GPU one (device-side flags, no host reads; the
    CPU shortcuts off), so the GPU path is tested on machines without a GPU."""
    if request.param == "gpu-path":
        monkeypatch.setattr(weightkit.tracking._torch, "CPU_SHORTCUTS", False)
    return request.param


def test_norms_follow_a_weight_whose_storage_is_replaced(tmp_path):
    """The CPU path keeps flat views of each weight between measured steps: after
    ``p.data = ...`` (new storage) or a transposed layout, the norms are of the weight as it is."""
    net = mlp()
    opt = torch.optim.SGD(net.parameters(), lr=1e-2)
    p = net[0].weight
    expect_w, expect_u = [], []
    with weightkit.watch(net, optimizer=opt, every=1, run_dir=tmp_path, name="r"):
        for step in range(6):
            if step == 2:
                p.data = torch.randn(16, 8) * 3  # new storage
            if step == 4:
                p.data = p.data.reshape(8, 16).t()  # same storage, another layout (not contiguous)
            before = p.detach().clone()
            train_step(net, opt, step)
            expect_w.append(float(p.detach().double().norm()))
            expect_u.append(float((p.detach().double() - before.double()).norm()))
    run = weightkit.open_run("r", run_dir=tmp_path)
    np.testing.assert_allclose(run.metric("weight_norm", "0.weight"), expect_w, rtol=1e-5)
    np.testing.assert_allclose(run.metric("update_norm", "0.weight"), expect_u, rtol=1e-4)


def test_metrics_match_an_independent_computation(tmp_path, code_path):
    """Two lines in a loop; every value equals what an unwatched twin computes by hand."""
    net, twin = mlp(), mlp()
    opt, opt2 = torch.optim.Adam(net.parameters(), lr=1e-2), torch.optim.Adam(twin.parameters(), lr=1e-2)
    expect = {k: [] for k in ("grad_norm", "grad_mean", "grad_std", "grad_absmean", "grad_absmax", "weight_norm",
                              "update_norm", "update_ratio")}
    with weightkit.watch(net, optimizer=opt, every=2, run_dir=tmp_path, name="m") as w:
        for step in range(7):
            train_step(net, opt, step)
            # the twin, by hand
            x, y = batch(step)
            opt2.zero_grad()
            nn.functional.mse_loss(twin(x), y).backward()
            before = [p.detach().clone() for p in twin.parameters()]
            grads = [p.grad.detach().double() for p in twin.parameters()]
            opt2.step()
            if step % 2 == 0:
                after = [p.detach().double() for p in twin.parameters()]
                upd = [(b.double() - a).norm().item() for b, a in zip(before, after)]
                wn = [a.norm().item() for a in after]
                expect["grad_norm"].append([g.norm().item() for g in grads])
                expect["grad_mean"].append([g.mean().item() for g in grads])
                expect["grad_std"].append([g.std(correction=0).item() for g in grads])
                expect["grad_absmean"].append([g.abs().mean().item() for g in grads])
                expect["grad_absmax"].append([g.abs().max().item() for g in grads])
                expect["weight_norm"].append(wn)
                expect["update_norm"].append(upd)
                expect["update_ratio"].append([u / n for u, n in zip(upd, wn)])
    assert w.step == 7 and not w.running
    run = weightkit.open_run("m", run_dir=tmp_path)
    assert run.steps.tolist() == [0, 2, 4, 6]
    assert [p.name for p in run.params] == [n for n, _ in net.named_parameters()]
    assert [p.shape for p in run.params] == [tuple(p.shape) for p in net.parameters()]
    for metric, values in expect.items():
        np.testing.assert_allclose(run.metric(metric), np.array(values), rtol=2e-4, atol=1e-7, err_msg=metric)
    assert (run.metric("grad_nan") == 0).all() and (run.metric("grad_inf") == 0).all()
    # bit-identical training
    for a, b in zip(net.parameters(), twin.parameters()):
        assert torch.equal(a, b)
    assert run.meta["optimizer"] == "Adam" and run.meta["every"] == 2 and run.meta["status"] == "finished"
    assert hooks_left(net, opt) == 0


def test_watching_never_changes_training(tmp_path):
    """Same seed ⇒ bit-identical weights with and without watch (dropout draws random numbers;
    every=1 with histograms exercises every code path)."""

    def run(watched):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 1))
        opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
        w = weightkit.watch(net, optimizer=opt, every=1, histograms=1, run_dir=tmp_path) if watched else None
        for step in range(6):
            train_step(net, opt, step)
        if w:
            w.stop()
        return [p.detach().clone() for p in net.parameters()], torch.rand(3)

    (a, ra), (b, rb) = run(False), run(True)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert torch.equal(ra, rb)  # the global RNG is where it would have been


def test_gpu_path_moves_one_tensor_to_the_host_per_measured_step_and_none_otherwise(tmp_path, monkeypatch):
    """No per-tensor synchronisation: count every device→host read while training."""
    monkeypatch.setattr(weightkit.tracking._torch, "CPU_SHORTCUTS", False)
    net = mlp(depth=3)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    reads = []
    for name in ("item", "cpu", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__"):
        original = getattr(torch.Tensor, name)

        def spy(self, *a, _name=name, _original=original, **k):
            reads.append(_name)
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, spy)
    w = weightkit.watch(net, optimizer=opt, every=4, histograms=1, run_dir=tmp_path)
    per_step = []
    for step in range(9):
        reads.clear()
        train_step(net, opt, step)
        per_step.append(list(reads))
    reads.clear()
    w.stop()
    at_stop = list(reads)
    monkeypatch.undo()
    # .cpu() is the transfer; .numpy() then views the host copy
    assert per_step == [["cpu", "numpy"] if s % 4 == 0 else [] for s in range(9)], per_step
    assert at_stop == ["cpu", "numpy"]  # the NaN/Inf flags since the last measured step


def test_accumulation_and_eval_do_not_advance_steps(tmp_path):
    net = mlp()
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    accumulated = []
    with weightkit.watch(net, optimizer=opt, every=1, run_dir=tmp_path, name="acc") as w:
        for step in range(3):
            opt.zero_grad()
            for micro in range(3):
                x, y = batch(10 * step + micro)
                (nn.functional.mse_loss(net(x), y) / 3).backward()
            accumulated.append(net[0].weight.grad.norm().item())
            opt.step()
            with torch.no_grad():  # an evaluation pass
                net(batch(99)[0])
    assert w.step == 3
    run = weightkit.open_run("acc", run_dir=tmp_path)
    assert run.steps.tolist() == [0, 1, 2]
    np.testing.assert_allclose(run.metric("grad_norm", "0.weight"), accumulated, rtol=1e-5)


def test_without_optimizer_a_step_is_a_backward_pass(tmp_path):
    net = mlp()
    with weightkit.watch(net, every=2, run_dir=tmp_path, name="noopt") as w:
        for step in range(5):
            net.zero_grad()
            x, y = batch(step)
            nn.functional.mse_loss(net(x), y).backward()
            with torch.no_grad():  # a hand-written SGD step
                for p in net.parameters():
                    p -= 0.01 * p.grad
    assert w.step == 5
    run = weightkit.open_run("noopt", run_dir=tmp_path)
    assert run.steps.tolist() == [0, 2, 4]
    assert run.meta["steps_are"] == "backward passes"
    assert np.isfinite(run.metric("grad_norm")).all()
    assert not run.measured("update_norm").any()
    assert hooks_left(net) == 0


def test_histograms_are_stored_with_nan_and_inf_counted(tmp_path):
    net = mlp()
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    with weightkit.watch(net, optimizer=opt, every=1, histograms=2, bins=16, run_dir=tmp_path, name="h"):
        for step in range(5):
            train_step(net, opt, step)
    run = weightkit.open_run("h", run_dir=tmp_path)
    hs = run.histograms("0.weight", what="weight")
    assert [h.step for h in hs] == [0, 2, 4]
    w = net[0].weight.detach().numpy().ravel()
    assert hs[-1].counts.sum() == w.size and len(hs[-1].edges) == 17
    assert hs[-1].edges[0] == pytest.approx(w.min()) and hs[-1].edges[-1] == pytest.approx(w.max())
    g = run.histograms("0.bias", what="grad")
    assert len(g) == 3 and g[0].counts.sum() == 16


@pytest.mark.parametrize("device_path", ["cpu-fast", "general"])
def test_histogram_and_grad_stats_never_strip_nan_inf(device_path):
    x = torch.tensor([1.0, 2.0, 3.0, 4.0, float("nan"), float("inf"), -float("inf"), float("inf")])
    if device_path == "cpu-fast":
        x = x[:4]
    floats, ints = histogram(x, 4)
    lo, hi = floats[:2].tolist()
    assert (lo, hi) == (1.0, 4.0)
    nan, pinf, ninf, *counts = ints.tolist()
    assert counts == [1, 1, 1, 1]
    assert (nan, pinf, ninf) == ((0, 0, 0) if device_path == "cpu-fast" else (1, 2, 1))
    f, c = (torch.as_tensor(v).tolist() for v in grad_stats(x))
    assert c == ([0, 0] if device_path == "cpu-fast" else [1, 3])
    if device_path == "general":
        assert math.isnan(f[0])  # the norm is NaN, not the norm of the finite part


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(dtype=st.sampled_from([np.float32, np.float64]), n=st.integers(1, 5000), seed=st.integers(0, 2**32 - 1),
       scale=st.sampled_from([1e-6, 1.0, 1e6]), special=st.sampled_from(["none", "nan", "inf", "zeros"]),
       bins=st.sampled_from([1, 7, 64]))
def test_cpu_grad_stats_and_histogram_match_float64_numpy(dtype, n, seed, scale, special, bins):
    rng = np.random.default_rng(seed)
    a = (rng.standard_normal(n) * scale + rng.standard_normal() * scale).astype(dtype)
    if special == "nan":
        a[rng.integers(n)] = np.nan
    elif special == "inf":
        a[rng.integers(n)] = -np.inf
    elif special == "zeros":
        a[:] = 0
    x = torch.from_numpy(a)
    (norm, mean, std, absmean, absmax), (nan, inf) = grad_stats(x)
    r = a.astype(np.float64)
    if special in ("nan", "inf"):
        assert (nan, inf) == ((1, 0) if special == "nan" else (0, 1))
        assert not math.isfinite(norm) and not math.isfinite(absmean)
        assert math.isnan(absmax) if special == "nan" else absmax == math.inf
        return
    assert (nan, inf) == (0, 0)
    tol = dict(rel=1e-5, abs=1e-12 * scale)
    assert norm == pytest.approx(np.sqrt((r * r).sum()), **tol)
    assert mean == pytest.approx(r.mean(), rel=1e-4, abs=1e-5 * scale)
    assert std == pytest.approx(r.std(), rel=1e-4, abs=1e-5 * scale)
    assert absmean == pytest.approx(np.abs(r).mean(), **tol)
    assert absmax == np.abs(r).max()  # exact: a max is a value of the array
    floats, ints = histogram(x, bins)
    lo, hi, total, sq = floats.tolist()
    assert (lo, hi) == (r.min(), r.max())
    assert total == pytest.approx(r.sum(), rel=1e-4, abs=1e-5 * scale * n)
    assert sq == pytest.approx((r * r).sum(), **tol)
    idx = np.zeros(n, dtype=np.int64) if hi == lo else ((r - lo) * (bins / (hi - lo))).astype(np.int64)
    expect = np.bincount(np.clip(idx, 0, bins - 1), minlength=bins)
    assert ints.tolist() == [0, 0, 0, *expect.tolist()]


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(arrays=st.lists(st.tuples(st.sampled_from([np.float32, np.float64]), st.integers(0, 3000),
                                 st.sampled_from(["none", "nan", "+inf", "-inf"])), min_size=1, max_size=6),
       seed=st.integers(0, 2**32 - 1))
def test_one_call_checks_every_gradient_by_address(arrays, seed):
    """The per-step check of a backward pass's gradients (one compiled call over their addresses):
    each total is non-finite exactly when its array holds a NaN/Inf, and is the float64 sum."""
    from weightkit.tracking import _kernel

    rng = np.random.default_rng(seed)
    made = []
    for dtype, n, special in arrays:
        a = rng.standard_normal(n).astype(dtype)
        if n and special != "none":
            a[rng.integers(n)] = {"nan": np.nan, "+inf": np.inf, "-inf": -np.inf}[special]
        made.append(a)
    k = len(made)
    which = np.arange(k)[::-1].copy()  # the parameter index of the k-th address: any order
    addresses = np.array([made[j].ctypes.data for j in which], dtype=np.int64)
    sizes = np.array([a.size for a in made], dtype=np.int64)
    wide = np.array([a.dtype == np.float64 for a in made])
    out = np.full(k, 12345.0)
    got = _kernel.totals(addresses, which, sizes, wide, k, out)
    for pos, j in enumerate(which):
        a = made[j]
        assert math.isfinite(out[pos]) == bool(np.isfinite(a).all())
        if np.isfinite(a).all():
            assert out[pos] == pytest.approx(a.astype(np.float64).sum(), rel=1e-5, abs=1e-3)
    assert math.isfinite(got) == all(np.isfinite(a).all() for a in made)


# ---- alerts ---------------------------------------------------------------------------------------


def test_done_when_deep_sigmoid_gradients_vanish_toward_the_input(tmp_path):
    """A 10-layer sigmoid MLP: the first layers' gradients vanish; the run says so and the per-layer
    gradient norms fall toward the input."""
    net = mlp(depth=10, width=32, act=nn.Sigmoid)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with weightkit.watch(net, optimizer=opt, every=2, run_dir=tmp_path, name="sigmoid"):  # line 1
        for step in range(20):
            train_step(net, opt, step)
    run = weightkit.open_run("sigmoid", run_dir=tmp_path)
    vanishing = {a.param for a in run.alerts if a.kind == "vanishing"}
    assert {"0.weight", "0.bias", "2.weight"} <= vanishing
    assert "20.weight" not in vanishing  # the output layer learns
    weights = [i for i, p in enumerate(run.params) if p.name.endswith("weight")]
    med = np.median(run.metric("grad_norm")[:, weights], axis=0)
    assert (np.diff(med) > 0).all(), med  # input → output: every layer's gradient is larger
    rows = {r["name"]: r for r in run.layers()}
    assert rows["0.weight"]["grad_norm_latest"] < 1e-4 * rows["20.weight"]["grad_norm_latest"]


class BagOfWords(nn.Module):
    def __init__(self, vocab=200_000):
        super().__init__()
        self.emb = nn.Embedding(vocab, 16)
        self.head = nn.Linear(16, 2)

    def forward(self, tokens):
        return self.head(self.emb(tokens).mean(1))


def test_embedding_tables_are_not_called_vanishing(tmp_path):
    """A batch touches a handful of a 200 000-row table: the table's RMS gradient is tiny by design."""
    torch.manual_seed(0)
    net = BagOfWords()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    with weightkit.watch(net, optimizer=opt, every=1, run_dir=tmp_path, name="bow"):
        for _step in range(8):
            tokens = torch.randint(0, 200_000, (4, 3))
            opt.zero_grad()
            nn.functional.cross_entropy(net(tokens), torch.randint(0, 2, (4,))).backward()
            opt.step()
    run = weightkit.open_run("bow", run_dir=tmp_path)
    rms = run.metric("grad_norm") / np.sqrt([p.numel for p in run.params])
    emb = [p.name for p in run.params].index("emb.weight")
    others = np.delete(rms, emb, axis=1).max(axis=1)
    assert (rms[:, emb] < 1e-3 * others).all()  # what the vanishing rule would have flagged
    assert not [a for a in run.alerts if a.kind == "vanishing"]


def first_nonfinite_by_hand(make, lr, steps):
    """Rerun without watch: the first (step, parameter) whose gradient / weight is non-finite."""
    net = make()
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    first = {}
    for step in range(steps):
        x, y = batch(step)
        opt.zero_grad()
        nn.functional.mse_loss(net(x), y).backward()
        for n, p in net.named_parameters():
            if "grad" not in first and not torch.isfinite(p.grad).all():
                first["grad"] = (step, n)
        opt.step()
        for n, p in net.named_parameters():
            if "weight" not in first and not torch.isfinite(p).all():
                first["weight"] = (step, n)
        if len(first) == 2:
            return first
    return first


@pytest.mark.parametrize("nan_check", ["step", "all"])
@pytest.mark.parametrize("lr", [3.0, 100.0])
def test_done_when_absurd_learning_rate_nan_names_exact_step_and_parameter(tmp_path, lr, caplog, code_path,
                                                                           nan_check):
    def make():
        torch.manual_seed(3)
        return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 1))

    expected = first_nonfinite_by_hand(make, lr, 40)
    assert "grad" in expected  # lr=3: step 5, between measured steps (every=3); lr=100: step 3, a measured one
    net = make()
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    with caplog.at_level(logging.WARNING, logger="weightkit.watch"):
        with weightkit.watch(net, optimizer=opt, every=3, run_dir=tmp_path, name="nan", nan_check=nan_check) as w:
            for step in range(expected["grad"][0] + 3):
                train_step(net, opt, step)
    run = weightkit.open_run("nan", run_dir=tmp_path)
    got = {a.kind: a for a in run.alerts if a.kind.startswith("nonfinite")}
    for what in ("grad", "weight"):
        a = got[f"nonfinite_{what}"]
        assert (a.step, a.param) == expected[what]
        assert f"'{a.param}' at step {a.step}" in a.message
    assert [a.kind for a in w.alerts if a.kind.startswith("nonfinite")] == ["nonfinite_grad", "nonfinite_weight"]
    assert any(f"step {expected['grad'][0]}" in r.getMessage() and r.name == "weightkit.watch" for r in caplog.records)
    row = {r["name"]: r for r in run.layers()}[expected["grad"][1]]
    assert row["nonfinite_first_step"] == expected["grad"][0]


class Gated(nn.Module):
    """A weight that can turn -Inf without reaching the loss: relu(-inf) = 0, and so is its gradient."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 1)
        self.gate = nn.Parameter(torch.ones(8))

    def forward(self, x):
        return self.b(self.a(x) * (1 + torch.relu(self.gate)))


def break_at(opt, weight, at, value=-math.inf):
    """After optimizer step ``at``, write ``value`` into one element of ``weight``, as a buggy update would."""
    n = [0]

    def hook(*_):
        if n[0] == at:
            with torch.no_grad():
                weight.view(-1)[3] = value
        n[0] += 1

    opt.register_step_post_hook(hook)  # before watch's: runs first


@pytest.mark.parametrize("nan_check, steps, expected", [
    ("all", 8, (3, None)),  # summed on every step: exact
    ("step", 8, (5, 0)),  # no gradient turned non-finite: found on measured step 5, seen finite at 0
    ("step", 5, (4, 0)),  # stopped before step 5: found by the last check at stop()
])
def test_a_weight_that_never_reaches_the_loss(tmp_path, nan_check, steps, expected):
    net = Gated()
    opt = torch.optim.SGD(net.parameters(), lr=1e-2)
    break_at(opt, net.gate, 3)
    with weightkit.watch(net, optimizer=opt, every=5, run_dir=tmp_path, name="g", nan_check=nan_check):
        for step in range(steps):
            train_step(net, opt, step)
    alerts = {a.kind: a for a in weightkit.open_run("g", run_dir=tmp_path).alerts}
    assert "nonfinite_grad" not in alerts
    a = alerts["nonfinite_weight"]
    step, since = expected
    assert (a.step, a.param) == (step, "gate")
    assert f"'gate' at step {step}" in a.message
    assert (f"it appeared after step {since}" in a.message) == (since is not None)


@pytest.mark.parametrize("at", [2, 4])  # the next step: unmeasured, measured
def test_a_nan_weight_that_reaches_the_loss_is_named_at_its_exact_step(tmp_path, at):
    """nan_check="step" sums the weights when gradients turn non-finite: the weight that caused it
    is named at the step that broke it, not at the next measured step."""
    net = Gated()
    opt = torch.optim.SGD(net.parameters(), lr=1e-2)
    break_at(opt, net.a.weight, at, math.nan)
    with weightkit.watch(net, optimizer=opt, every=5, run_dir=tmp_path, name="w"):
        for step in range(8):
            train_step(net, opt, step)
    alerts = {a.kind: a for a in weightkit.open_run("w", run_dir=tmp_path).alerts}
    assert (alerts["nonfinite_weight"].step, alerts["nonfinite_weight"].param) == (at, "a.weight")
    assert "appeared after" not in alerts["nonfinite_weight"].message
    assert alerts["nonfinite_grad"].step == at + 1


@pytest.mark.parametrize("nan_check", ["step", "all", "measured"])
def test_huge_finite_values_are_not_called_non_finite(tmp_path, nan_check, code_path):
    """Sums and norms of float32 values near 3e38 overflow; the values themselves are finite."""

    class Huge(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(4096))  # its gradient: 3e38 everywhere
            self.big = nn.Parameter(torch.full((4096,), 3e38))

        def forward(self, x):
            return (self.w * 3e38).sum() + (self.big * 0).sum() + x.sum()

    net = Huge()
    opt = torch.optim.SGD(net.parameters(), lr=0.0)
    with weightkit.watch(net, optimizer=opt, every=3, run_dir=tmp_path, name="h", nan_check=nan_check) as w:
        for _ in range(5):
            opt.zero_grad()
            net(torch.ones(2)).backward()
            opt.step()
    assert torch.isfinite(net.w.grad).all() and torch.isfinite(net.big).all()
    assert not [a for a in w.alerts if a.kind.startswith("nonfinite")]


def test_nan_check_on_measured_steps_only_says_when_it_was_seen(tmp_path):
    def make():
        torch.manual_seed(3)
        return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 1))

    expected = first_nonfinite_by_hand(make, 3.0, 40)["grad"]  # step 5
    net = make()
    opt = torch.optim.SGD(net.parameters(), lr=3.0)
    with weightkit.watch(net, optimizer=opt, every=3, nan_check="measured", run_dir=tmp_path, name="m"):
        for step in range(expected[0] + 3):
            train_step(net, opt, step)
    a = [a for a in weightkit.open_run("m", run_dir=tmp_path).alerts if a.kind == "nonfinite_grad"][0]
    seen = (expected[0] // 3 + 1) * 3
    assert (a.step, a.param) == (seen, expected[1])
    assert f"at step {seen} (checked on measured steps only: it appeared after step {seen - 3})" in a.message


def test_nan_weight_from_the_optimizer_names_that_parameter(tmp_path, code_path):
    """Adam with eps=0 turns a gradient that is exactly zero into 0/0: the weight in the middle of
    the model goes NaN at step 0 while every gradient is finite; the next step's gradients follow."""

    class Dead(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(8))

        def forward(self, x):
            return x + 0.0 * self.weight  # its gradient is exactly 0

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.a, self.mid, self.b = nn.Linear(8, 8), Dead(), nn.Linear(8, 1)

        def forward(self, x):
            return self.b(self.mid(self.a(x)))

    net = Net()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, eps=0.0)
    with weightkit.watch(net, optimizer=opt, every=5, run_dir=tmp_path, name="eps"):
        for step in range(3):
            train_step(net, opt, step)
    got = {a.kind: (a.step, a.param) for a in weightkit.open_run("eps", run_dir=tmp_path).alerts}
    assert got["nonfinite_weight"] == (0, "mid.weight")
    assert got["nonfinite_grad"] == (1, "a.weight")


class NaNGradAt(torch.autograd.Function):
    """``x * w`` whose backward puts a NaN in ``w``'s gradient (only there) when asked."""

    @staticmethod
    def forward(ctx, x, w, bad):
        ctx.save_for_backward(x, w)
        ctx.bad = bad
        return x * w

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        gw = (g * x).sum(0)
        if ctx.bad:
            gw[0] = math.nan
        return g * w, gw, None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("nan_check", ["step", "all"])
def test_a_nan_gradient_is_named_where_it_began_even_when_clipping_spreads_it(tmp_path, nan_check, dtype, code_path):
    """clip_grad_norm_ of a NaN gradient makes every gradient NaN before the optimizer step; the
    check runs at the end of backward, so it names the one parameter where the NaN began."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.a, self.gate, self.b = nn.Linear(8, 8), nn.Parameter(torch.ones(8)), nn.Linear(8, 1)

        def forward(self, x, bad):
            return self.b(NaNGradAt.apply(self.a(x), self.gate, bad))

    net = Net().to(dtype)
    opt = torch.optim.SGD(net.parameters(), lr=1e-2)
    with weightkit.watch(net, optimizer=opt, every=5, run_dir=tmp_path, name="clip", nan_check=nan_check):
        for step in range(4):
            x, y = (t.to(dtype) for t in batch(step))
            opt.zero_grad()
            nn.functional.mse_loss(net(x, step == 2), y).backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            if step == 2:
                assert all(torch.isnan(p.grad).all() for p in net.parameters())  # clipping spread it
            opt.step()
    a = {a.kind: a for a in weightkit.open_run("clip", run_dir=tmp_path).alerts}["nonfinite_grad"]
    assert (a.step, a.param) == (2, "gate")
    assert "more parameter" not in a.message


def test_unused_parameter_exploding_and_learning_rate_alerts(tmp_path):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.body = mlp()
            self.forgotten = nn.Linear(4, 4)

        def forward(self, x):
            return self.body(x)

    net = Net()
    opt = torch.optim.SGD(net.parameters(), lr=1e-9)  # updates ~1e-10 of the weights: far too low
    with weightkit.watch(net, optimizer=opt, every=1, run_dir=tmp_path, name="al", unused_after=2) as w:
        for step in range(8):
            x, y = batch(step)
            opt.zero_grad()
            scale = 1e4 if step == 6 else 1.0  # one spike
            (scale * nn.functional.mse_loss(net(x), y)).backward()
            opt.step()
    kinds = {}
    for a in weightkit.open_run("al", run_dir=tmp_path).alerts:
        kinds.setdefault(a.kind, []).append(a)
    assert {a.param for a in kinds["unused"]} == {"forgotten.weight", "forgotten.bias"}
    assert all(a.step == 1 for a in kinds["unused"])
    assert {a.step for a in kinds["exploding"]} == {6}
    assert {a.param for a in kinds["lr_low"]} == {"body.0.weight", "body.2.weight", "body.4.weight"}
    assert "learning rate too low for layer 'body.0.weight'" in kinds["lr_low"][0].message
    assert len(w.alerts) == sum(len(v) for v in kinds.values())

    torch.manual_seed(0)
    net = mlp()
    opt = torch.optim.Adam(net.parameters(), lr=1.0)  # each step moves weights by ~their own size
    with weightkit.watch(net, optimizer=opt, every=1, run_dir=tmp_path, name="hi") as w:
        for step in range(4):
            train_step(net, opt, step)
    high = [a for a in w.alerts if a.kind == "lr_high"]
    assert high and "learning rate too high for layer '0.weight'" in high[0].message


# ---- store and crash safety -------------------------------------------------------------------------


def test_store_is_one_wal_sqlite_file_with_the_documented_schema(tmp_path):
    net = mlp()
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    with weightkit.watch(net, optimizer=opt, every=1, run_dir=tmp_path, name="s") as w:
        train_step(net, opt, 0)
    assert w.path == tmp_path / "s" / "watch.sqlite"
    con = sqlite3.connect(w.path)
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables == {"meta", "params", "steps", "samples", "alerts", "hists"}
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("SELECT COUNT(*) FROM samples").fetchone()[0] == 6
    assert weightkit.list_runs(tmp_path)[0].name == "s"


CHILD = textwrap.dedent("""
    import sys, torch, weightkit, weightkit.tracking
    from torch import nn
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    w = weightkit.watch(net, optimizer=opt, every=1, run_dir=sys.argv[1], name="killed")
    step = 0
    while True:
        opt.zero_grad(); net(torch.randn(4, 8)).square().mean().backward(); opt.step()
        if step == 10:
            w.flush()
            print("flushed", step, flush=True)
        elif step > 10:
            print("step", step, flush=True)
        step += 1
""")


def test_a_killed_training_process_leaves_every_committed_step_readable(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        lines = []
        deadline = time.time() + 60
        while time.time() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if line.startswith("step 40"):
                break
        assert lines[-1].startswith("step 40"), lines[-5:]
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    run = weightkit.open_run("killed", run_dir=tmp_path)
    n = len(run.steps)
    assert n >= 11  # every step up to the flush, at least
    assert run.steps.tolist() == list(range(n))  # a prefix: no step lost in the middle
    assert run.measured("grad_norm").all() and run.measured("update_norm").all()  # each step complete
    assert run.meta["status"] == "running"


# ---- bad input and faults ------------------------------------------------------------------------------


def test_bad_input_is_one_line_weightkit_error(tmp_path):
    frozen = mlp()
    for p in frozen.parameters():
        p.requires_grad_(False)
    with pytest.raises(WeightkitError, match="no trainable parameters"):
        weightkit.watch(frozen, run_dir=tmp_path)
    net, other = mlp(), mlp()
    with pytest.raises(WeightkitError, match="holds none of the 6 trainable parameters of Sequential"):
        weightkit.watch(net, optimizer=torch.optim.SGD(other.parameters(), lr=0.1), run_dir=tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(WeightkitError, match="cannot be written"):
        weightkit.watch(net, run_dir=blocker)
    with pytest.raises(WeightkitError, match="every=0"):
        weightkit.watch(net, every=0, run_dir=tmp_path)
    with pytest.raises(WeightkitError, match="not a torch.nn.Module"):
        weightkit.watch(object(), run_dir=tmp_path)
    weightkit.watch(net, run_dir=tmp_path, name="x").stop()
    with pytest.raises(WeightkitError, match="already exists"):
        weightkit.watch(net, run_dir=tmp_path, name="x")
    weightkit.watch(net, run_dir=tmp_path, name="x", overwrite=True).stop()
    with pytest.raises(WeightkitError, match="no such run"):
        weightkit.open_run("missing", run_dir=tmp_path)
    assert hooks_left(net) == 0
    for e in ():
        assert "\n" not in str(e)


def test_hooks_are_removed_even_when_training_raises(tmp_path):
    net = mlp()
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    with pytest.raises(RuntimeError, match="boom"):
        with weightkit.watch(net, optimizer=opt, every=1, run_dir=tmp_path, name="boom"):
            for step in range(5):
                train_step(net, opt, step)
                if step == 2:
                    raise RuntimeError("boom")
    assert hooks_left(net, opt) == 0
    run = weightkit.open_run("boom", run_dir=tmp_path)
    assert run.steps.tolist() == [0, 1, 2]
    assert run.meta["status"] == "failed: RuntimeError: boom"
    train_step(net, opt, 9)  # training goes on unwatched
    assert weightkit.open_run("boom", run_dir=tmp_path).steps.tolist() == [0, 1, 2]

    w = weightkit.watch(net, optimizer=opt, run_dir=tmp_path, name="startstop").start()
    train_step(net, opt, 0)
    w.stop()
    w.stop()  # idempotent
    assert hooks_left(net, opt) == 0
    with pytest.raises(WeightkitError, match="stopped"):
        w.start()


def test_import_weightkit_imports_neither_torch_nor_keras():
    code = ("import sys, weightkit, weightkit.tracking, weightkit.tracking.keras, weightkit.cli; "
            "print(sorted(m for m in ('torch', 'keras', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("name", ["weightkit.tracking", "weightkit.tracking.store", "weightkit.tracking.export",
                                  "weightkit.render.plots.grad_flow"])
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0


# ---- exports --------------------------------------------------------------------------------------------


@pytest.fixture
def small_run(tmp_path):
    net = mlp()
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    with weightkit.watch(net, optimizer=opt, every=2, histograms=1, run_dir=tmp_path, name="ex"):
        for step in range(4):
            train_step(net, opt, step)
    return weightkit.open_run("ex", run_dir=tmp_path)


def test_export_csv_is_long_format(small_run, tmp_path):
    from weightkit.tracking.export import export_run

    out = tmp_path / "ex.csv"
    result = export_run(small_run, out)
    lines = out.read_text().splitlines()
    assert lines[0] == "step,param,metric,value"
    assert result["rows"] == len(lines) - 1 == 2 * 6 * 10
    step, param, metric, value = lines[1].split(",")
    assert (step, param, metric) == ("0", "0.weight", "grad_norm")
    assert float(value) == pytest.approx(small_run.metric("grad_norm", "0.weight")[0])


def test_export_tensorboard(small_run, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from weightkit.tracking.export import export_run

    result = export_run(small_run, tmp_path / "tb", format="tensorboard")
    ea = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0, "histograms": 0})
    ea.Reload()
    assert [e.step for e in ea.Scalars("grad_norm/0.weight")] == [0, 2]
    assert ea.Scalars("grad_norm/0.weight")[0].value == pytest.approx(small_run.metric("grad_norm", "0.weight")[0])
    h = ea.Histograms("weight/0.weight")
    assert [e.step for e in h] == [0, 2] and h[0].histogram_value.num == 128
    assert result["histograms"] == 2 * 6 * 2


def test_export_parquet_or_clear_error(small_run, tmp_path):
    from weightkit.tracking.export import export_run

    try:
        import pyarrow.parquet as pq
    except ImportError:
        with pytest.raises(WeightkitError, match="pip install pyarrow"):
            export_run(small_run, tmp_path / "x.parquet", format="parquet")
        return
    export_run(small_run, tmp_path / "x.parquet", format="parquet")
    t = pq.read_table(tmp_path / "x.parquet")
    assert t.column_names == ["step", "param", "metric", "value"] and t.num_rows == 120


def _reference_alerts(shapes, steps, embeddings, t):
    """The alert rules of weightkit.tracking.alerts, written out plainly over Python lists."""
    n = len(shapes)
    numel = [max(1, math.prod(s)) for s in shapes]
    vanish, high, low = [0] * n, [0] * n, [0] * n
    history = [[] for _ in range(n)]
    reported, out = set(), []

    def emit(step, kind, i, value):
        if (kind, i) not in reported:
            reported.add((kind, i))
            out.append((step, kind, i, pytest.approx(value, rel=1e-12)))

    for step, (norms, ratios, received) in enumerate(steps):
        rms = {i: norms[i] / math.sqrt(numel[i]) for i in range(n)
               if math.isfinite(norms[i]) and not embeddings[i]}
        top = max(rms.values(), default=None)
        if top is not None and top > 0:
            for i in range(n):
                vanish[i] = vanish[i] + 1 if i in rms and (rms[i] / top < t["vanishing"] or rms[i] == 0) else 0
            for i in range(n):
                if vanish[i] >= t["patience"]:
                    emit(step, "vanishing", i, rms[i] / top)
        else:
            vanish = [0] * n
        for i in range(n):
            if not math.isfinite(norms[i]):
                continue
            recent = history[i][-20:]
            if len(history[i]) >= 3:
                med = float(np.median(recent))
                if med > 0 and norms[i] > t["exploding"] * med:
                    emit(step, "exploding", i, norms[i] / med)
            history[i].append(norms[i])
        for i in range(n):
            judged = len(shapes[i]) >= 2 and received[i] and math.isfinite(ratios[i])
            high[i] = high[i] + 1 if judged and ratios[i] > t["ratio_high"] else 0
            low[i] = low[i] + 1 if judged and ratios[i] < t["ratio_low"] else 0
        for i in range(n):
            if high[i] >= t["patience"]:
                emit(step, "lr_high", i, ratios[i])
        for i in range(n):
            if low[i] >= t["patience"]:
                emit(step, "lr_low", i, ratios[i])
    return out


_norm = st.one_of(st.just(math.nan), st.just(0.0), st.just(math.inf), st.floats(1e-9, 1e9))
_ratio = st.one_of(st.just(math.nan), st.floats(1e-8, 1.0))


@given(st.data())
@settings(max_examples=150, deadline=None)
def test_alert_judging_matches_a_plain_reference(data):
    from weightkit.tracking.alerts import AlertEngine, Thresholds

    n = data.draw(st.integers(1, 5))
    shapes = data.draw(st.lists(st.sampled_from([(3,), (4, 5), (2, 3, 3), (1000, 10)]), min_size=n, max_size=n))
    embeddings = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    t = {"vanishing": data.draw(st.sampled_from([1e-3, 0.5])), "exploding": data.draw(st.sampled_from([1.5, 10.0])),
         "ratio_high": 1e-1, "ratio_low": 1e-5, "patience": data.draw(st.integers(1, 3))}
    steps = data.draw(st.lists(st.tuples(st.lists(_norm, min_size=n, max_size=n),
                                         st.lists(_ratio, min_size=n, max_size=n),
                                         st.lists(st.booleans(), min_size=n, max_size=n)), min_size=1, max_size=45))
    engine = AlertEngine([f"p{i}" for i in range(n)], shapes, Thresholds(**t, unused_after=10**6),
                         embeddings=embeddings)
    got = []
    logging.disable(logging.WARNING)
    try:
        for step, (norms, ratios, received) in enumerate(steps):
            alerts = engine.measured_step(step, np.array(norms), np.array(ratios), np.array(received))
            got += [(a.step, a.kind, int(a.param[1:]), a.value) for a in alerts]
    finally:
        logging.disable(logging.NOTSET)
    assert got == _reference_alerts(shapes, steps, embeddings, t)


def test_exploding_median_covers_the_last_twenty_norms():
    from weightkit.tracking.alerts import AlertEngine, Thresholds

    t = {"vanishing": 1e-3, "exploding": 1.5, "ratio_high": 1e-1, "ratio_low": 1e-5, "patience": 3}
    steps = [([v], [math.nan], [True]) for v in [2.0] * 10 + [1.0] * 10 + [2.5]]  # median of the 20: 1.5
    engine = AlertEngine(["p0"], [(4, 5)], Thresholds(**t))
    logging.disable(logging.WARNING)
    try:
        got = [a for s, (g, r, rec) in enumerate(steps) for a in engine.measured_step(s, np.array(g), np.array(r),
                                                                                      np.array(rec))]
    finally:
        logging.disable(logging.NOTSET)
    assert [(a.step, a.kind, a.value) for a in got] == [(20, "exploding", pytest.approx(2.5 / 1.5))]
    assert _reference_alerts([(4, 5)], steps, [False], t) == [(20, "exploding", 0, pytest.approx(2.5 / 1.5))]


class _LastStepBiLSTM(nn.Module):
    """The classic mistake: a bidirectional LSTM read at its last time step only."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(4, 6, batch_first=True, bidirectional=True)
        self.head = nn.Linear(12, 2)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


def test_structurally_dead_gradients_say_why(tmp_path):
    """At out[:, -1] the backward direction has seen one token, from a zero state: its recurrent
    weights get a gradient of exactly 0, and the alert says what usually causes that. A conv bias
    followed by BatchNorm gets only rounding noise: a plain vanishing alert, and the doctor's
    bias-before-norm rule names the cause."""
    torch.manual_seed(0)
    rnn = _LastStepBiLSTM()
    cnn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    for net, shape, name in ((rnn, (8, 5, 4), "rnn"), (cnn, (8, 3, 8, 8), "cnn")):
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        with weightkit.watch(net, optimizer=opt, every=1, run_dir=tmp_path, name=name):
            for _ in range(5):
                opt.zero_grad()
                nn.functional.cross_entropy(net(torch.randn(*shape)), torch.randint(0, 2, (8,))).backward()
                opt.step()
    rnn_alerts = {a.param: a.message for a in weightkit.open_run("rnn", run_dir=tmp_path).alerts if a.kind == "vanishing"}
    assert "exactly zero" in rnn_alerts["lstm.weight_hh_l0_reverse"]
    assert "lstm.weight_hh_l0" not in rnn_alerts  # the forward direction learns
    cnn_alerts = {a.param: a.message for a in weightkit.open_run("cnn", run_dir=tmp_path).alerts if a.kind == "vanishing"}
    assert set(cnn_alerts) == {"0.bias"} and "exactly zero" not in cnn_alerts["0.bias"]
    assert weightkit.doctor(cnn).by_rule("bias-before-norm")[0].tensors == ["0.bias"]


def test_a_deep_sigmoid_stack_is_called_vanishing_without_a_structural_hint(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(*[m for _ in range(8) for m in (nn.Linear(32, 32), nn.Sigmoid())], nn.Linear(32, 1))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with weightkit.watch(net, optimizer=opt, every=1, run_dir=tmp_path, name="deep"):
        for _ in range(6):
            opt.zero_grad()
            nn.functional.mse_loss(net(torch.randn(64, 32)), torch.randn(64, 1)).backward()
            opt.step()
    alerts = {a.param: a.message for a in weightkit.open_run("deep", run_dir=tmp_path).alerts if a.kind == "vanishing"}
    assert "0.weight" in alerts and "16.weight" not in alerts
    assert not any("exactly zero" in m or "BatchNorm" in m for m in alerts.values())

"""weightkit.watch under mixed precision: a GradScaler's scaled gradients, its skipped steps, and
bf16 autocast without one. Every reference is computed in the test loop itself, in float64, from
the gradients the optimizer really applied (after ``scaler.unscale_``)."""

import math

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import weightkit
import weightkit.tracking._torch
from weightkit.cli import app

OPTIMIZERS = {"sgd": lambda ps: torch.optim.SGD(ps, lr=1e-2),
              # steps even on overflow, with the scaler's found_inf set on it, and changes nothing
              "adam-fused": lambda ps: torch.optim.Adam(ps, lr=1e-3, fused=True)}
GRAD_METRICS = ("grad_norm", "grad_mean", "grad_std", "grad_absmean", "grad_absmax")


@pytest.fixture(params=["cpu", "gpu-path"])
def code_path(request, monkeypatch):
    """The CPU code path and the GPU one (device-side tensors, one transfer per measured step)."""
    if request.param == "gpu-path":
        monkeypatch.setattr(weightkit.tracking._torch, "CPU_SHORTCUTS", False)
    return request.param


def make_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 1))


def batch(step, bad=False):
    g = torch.Generator().manual_seed(100 + step)
    x, y = torch.randn(64, 8, generator=g), torch.randn(64, 1, generator=g)
    if bad:
        x[5, 2] = math.nan
    return x, y


def reference(grads):
    """The five gradient statistics of each parameter, in float64."""
    out = []
    for g in grads:
        d = g.detach().double().reshape(-1)
        out.append([d.norm().item(), d.mean().item(), d.std(unbiased=False).item(), d.abs().mean().item(),
                    d.abs().max().item()])
    return np.array(out)


def assert_stats(run, ref):
    """Recorded gradient statistics equal the float64 reference to float32 rounding (a mean summed
    in float32 is good to a float32 ulp of the sum of |g|, not of itself)."""
    ref = np.array(ref)  # [steps, params, 5]
    for k, metric in enumerate(GRAD_METRICS):
        got = run.metric(metric)
        assert np.isfinite(got).all()
        atol = 1e-6 * ref[:, :, 3] if metric == "grad_mean" else 1e-12
        err = np.abs(got - ref[:, :, k]) - (2e-6 * np.abs(ref[:, :, k]) + atol)
        assert err.max() <= 0, (metric, got, ref[:, :, k])


def amp_loop(net, opt, scaler, steps, *, unscale, ref=None, half=torch.float16, bad_from=None, break_at=None):
    """A standard GradScaler loop (fp16 autocast on the CPU). Returns, per iteration, the scale its
    gradients had and whether the scaler skipped it; ``ref`` gets each taken step's unscaled
    gradient statistics (measured after ``scaler.unscale_``, as the optimizer sees them)."""
    log = []
    for it in range(steps):
        opt.zero_grad()
        x, y = batch(it, bad=bad_from is not None and it >= bad_from)
        with torch.autocast("cpu", dtype=half):
            loss = (net(x).float() - y).pow(2).mean()
        scale = scaler.get_scale()
        scaler.scale(loss).backward()
        if unscale:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1e9)  # the usual reason to unscale; clips nothing
        if ref is not None:  # after unscale_: what the optimizer applies
            assert unscale
            grads = [p.grad.clone() for p in net.parameters()]
        scaler.step(opt)
        scaler.update()
        taken = scaler.get_scale() >= scale  # a skip halves the scale (no growth within 2000 steps)
        if ref is not None and taken:
            ref.append(reference(grads))
        log.append((scale, not taken))
        if break_at is not None and taken and len([t for t in log if not t[1]]) == break_at + 1:
            with torch.no_grad():
                net[2].weight.view(-1)[3] = math.nan  # as a buggy update would, after step break_at
    return log


@pytest.mark.parametrize("unscale", [False, True], ids=["loop-does-not-unscale", "loop-unscales"])
@pytest.mark.parametrize("optim", ["sgd", "adam-fused"])
def test_statistics_are_of_the_unscaled_gradient(tmp_path, code_path, unscale, optim):
    # twin runs: the watched one, and one whose loop unscales before reading the gradients
    ref_net, net = make_net(), make_net()
    ref_opt, opt = OPTIMIZERS[optim](ref_net.parameters()), OPTIMIZERS[optim](net.parameters())
    ref = []
    ref_log = amp_loop(ref_net, ref_opt, torch.amp.GradScaler("cpu", init_scale=2.0 ** 12), 12, unscale=True, ref=ref)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12)
    with weightkit.watch(net, optimizer=opt, scaler=scaler, every=1, histograms=1, run_dir=tmp_path, name="amp") as w:
        log = amp_loop(net, opt, scaler, 12, unscale=unscale)
    assert log == ref_log and not any(skip for _, skip in log)  # the same training, no overflow at 2**12
    run = weightkit.open_run("amp", run_dir=tmp_path)
    assert run.steps.tolist() == list(range(12)) and w.step == 12
    assert_stats(run, ref)
    assert np.all(run.metric("grad_norm") < 100)  # ×4096 would be far above
    # histograms: the range and sums of the unscaled gradient
    first = [p.name for p in run.params][0]
    h = run.histograms(first)[0]
    g0 = ref[0][0]
    assert h.edges[-1] == pytest.approx(g0[4], rel=1e-6) or -h.edges[0] == pytest.approx(g0[4], rel=1e-6)
    assert math.sqrt(h.sumsq) == pytest.approx(g0[0], rel=1e-5)
    assert not [a for a in run.alerts if a.kind.startswith("nonfinite")]
    assert run.meta["scaler"] == "GradScaler"
    assert run.meta["amp"]["skipped"] == [] and run.meta["amp"]["loss_scale"] == [[0, 4096.0]]


@pytest.mark.parametrize("optim", list(OPTIMIZERS))
def test_overflow_steps_are_recorded_as_skipped_not_alerted(tmp_path, code_path, optim):
    torch.manual_seed(1)
    net = make_net()
    opt = OPTIMIZERS[optim](net.parameters())
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 40)
    with weightkit.watch(net, optimizer=opt, scaler=scaler, every=2, run_dir=tmp_path, name="ovf") as w:
        log = amp_loop(net, opt, scaler, 40, unscale=False)
    skipped = [s for s, skip in log if skip]
    assert len(skipped) >= 5  # several overflow steps at 2**40
    taken = len(log) - len(skipped)
    assert w.step == taken
    run = weightkit.open_run("ovf", run_dir=tmp_path)
    assert run.alerts == [] and w.alerts == []
    amp = run.meta["amp"]
    assert amp["skipped_total"] == len(skipped)
    # each skip at the step it was an attempt of, with the scale its gradients had
    expected, step = [], 0
    for scale, skip in log:
        if skip:
            expected.append([step, scale])
        else:
            step += 1
    assert amp["skipped"] == expected
    assert run.steps.tolist() == list(range(0, taken, 2))
    assert np.isfinite(run.metric("grad_norm")).all()
    assert amp["loss_scale"][0] == [0, 2.0 ** 40] and amp["loss_scale"][-1][1] <= expected[-1][1] / 2
    shown = CliRunner().invoke(app, ["runs", "show", "ovf", "--dir", str(tmp_path)], env={"COLUMNS": "200"})
    assert shown.exit_code == 0
    assert f"GradScaler: {len(skipped)} attempt(s) skipped for overflow" in shown.stdout
    assert "scales 2^40–" in shown.stdout and "at step 0 (×" in shown.stdout


def test_a_nan_weight_is_caught_at_its_step_though_the_scaler_skips(tmp_path, code_path):
    net = make_net()
    opt = torch.optim.SGD(net.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    with weightkit.watch(net, optimizer=opt, scaler=scaler, every=5, run_dir=tmp_path, name="nan") as w:
        log = amp_loop(net, opt, scaler, 12, unscale=False, break_at=3)
    assert [skip for _, skip in log] == [False] * 4 + [True] * 8  # every attempt after the break skips
    assert w.step == 4
    alerts = {a.kind: a for a in weightkit.open_run("nan", run_dir=tmp_path).alerts}
    assert (alerts["nonfinite_weight"].step, alerts["nonfinite_weight"].param) == (3, "2.weight")
    assert "'2.weight' at step 3" in alerts["nonfinite_weight"].message
    assert alerts["nonfinite_grad"].step == 4


def test_a_nan_that_persists_after_the_scale_dropped_is_caught(tmp_path, code_path):
    """NaN in the data from iteration 6 on: the scaler halves the scale on each attempt; once it is
    down to 1 the gradients are still NaN, so it is no overflow: an alert at that step."""
    net = make_net()
    opt = torch.optim.SGD(net.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 4)
    with weightkit.watch(net, optimizer=opt, scaler=scaler, every=5, run_dir=tmp_path, name="data") as w:
        log = amp_loop(net, opt, scaler, 14, unscale=False, bad_from=6)
    assert [skip for _, skip in log] == [False] * 6 + [True] * 8
    assert w.step == 6
    run = weightkit.open_run("data", run_dir=tmp_path)
    alerts = {a.kind: a for a in run.alerts}
    assert alerts["nonfinite_grad"].step == 6 and alerts["nonfinite_grad"].param == "0.weight"
    assert "nonfinite_weight" not in alerts
    assert [s for _, s in run.meta["amp"]["skipped"]] == [s for s, skip in log if skip]
    assert min(s for s, _ in log) <= 1.0


def test_scaler_is_checked(tmp_path):
    net = make_net()
    opt = torch.optim.SGD(net.parameters(), lr=1e-2)
    with pytest.raises(weightkit.errors.WeightkitError, match="not a torch.amp.GradScaler"):
        weightkit.watch(net, optimizer=opt, scaler=object(), run_dir=tmp_path)
    with pytest.raises(weightkit.errors.WeightkitError, match="optimizer="):
        weightkit.watch(net, scaler=torch.amp.GradScaler("cpu"), run_dir=tmp_path)


def test_bf16_autocast_without_a_scaler(tmp_path, code_path):
    net = make_net()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    ref = []
    with weightkit.watch(net, optimizer=opt, every=1, run_dir=tmp_path, name="bf16"):
        for it in range(6):
            opt.zero_grad()
            x, y = batch(it)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = net(x)
            assert out.dtype == torch.bfloat16
            (out.float() - y).pow(2).mean().backward()
            ref.append(reference([p.grad for p in net.parameters()]))
            opt.step()
    assert all(p.dtype == torch.float32 for p in net.parameters())  # master weights
    run = weightkit.open_run("bf16", run_dir=tmp_path)
    assert_stats(run, ref)
    assert run.alerts == []


def test_gradient_accumulation_under_a_scaler(tmp_path, code_path):
    """Two micro-batches per step: one attempt, one step, the unscaled accumulated gradient."""
    net = make_net()
    opt = torch.optim.SGD(net.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
    ref = []
    with weightkit.watch(net, optimizer=opt, scaler=scaler, every=1, run_dir=tmp_path, name="acc") as w:
        for it in range(4):
            opt.zero_grad()
            for micro in range(2):
                x, y = batch(10 * it + micro)
                with torch.autocast("cpu", dtype=torch.float16):
                    loss = (net(x).float() - y).pow(2).mean() / 2
                scaler.scale(loss).backward()
            scaler.unscale_(opt)
            ref.append(reference([p.grad for p in net.parameters()]))
            scaler.step(opt)
            scaler.update()
    assert w.step == 4 and scaler.get_scale() == 2.0 ** 8
    run = weightkit.open_run("acc", run_dir=tmp_path)
    assert_stats(run, ref)
    assert run.meta["amp"]["skipped_total"] == 0


def test_runs_show_reads_a_malformed_amp_entry_as_data():
    """A run file is input: an ``amp`` meta entry of the wrong shapes prints what is well formed."""
    from rich.console import Console

    from weightkit.render.runs import render_amp

    console = Console(width=200, record=True, color_system=None)
    for meta in ({"amp": {"skipped": "[red]x", "skipped_total": True, "loss_scale": [[1, "a"], [True, 2.0]]}},
                 {"amp": {"skipped": [[3, 8.0], ["[bold]", 1.0]], "skipped_total": 5, "loss_scale": [[2, 3.0]]}},
                 {"amp": "[blink]no"}, {}):
        for r in render_amp(meta):
            console.print(r)
    out = console.export_text()
    assert out.splitlines() == ["GradScaler: loss scale not recorded; no step skipped",
                                "GradScaler: 5 attempt(s) skipped for overflow (no step, no alert) at step 3, "
                                "scales 2^3–2^3; loss scale 3 (from step 2)"]


def test_a_scaler_watch_was_not_given_is_named(tmp_path, caplog):
    net = make_net()
    opt = torch.optim.SGD(net.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
    with caplog.at_level("WARNING", logger="weightkit.watch"):
        with weightkit.watch(net, optimizer=opt, run_dir=tmp_path, name="forgot"):
            amp_loop(net, opt, scaler, 3, unscale=False)
        with weightkit.watch(net, optimizer=opt, scaler=scaler, run_dir=tmp_path, name="given"):
            amp_loop(net, opt, scaler, 3, unscale=False)
        with weightkit.watch(net, optimizer=opt, run_dir=tmp_path, name="plain"):
            for it in range(3):
                opt.zero_grad()
                x, y = batch(it)
                (net(x) - y).pow(2).mean().backward()
                opt.step()
    warned = [r.getMessage() for r in caplog.records if "watch() was not given" in r.getMessage()]
    assert len(warned) == 1 and "pass watch(..., scaler=scaler)" in warned[0]


def test_a_model_that_starts_with_a_nan_weight_is_caught_at_step_0(tmp_path, code_path):
    net = make_net()
    with torch.no_grad():
        net[4].bias.fill_(math.nan)
    opt = torch.optim.SGD(net.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    with weightkit.watch(net, optimizer=opt, scaler=scaler, every=5, run_dir=tmp_path, name="born"):
        log = amp_loop(net, opt, scaler, 3, unscale=False)
    assert all(skip for _, skip in log)
    alerts = {a.kind: a for a in weightkit.open_run("born", run_dir=tmp_path).alerts}
    assert (alerts["nonfinite_weight"].step, alerts["nonfinite_weight"].param) == (0, "4.bias")
    assert alerts["nonfinite_grad"].step == 0

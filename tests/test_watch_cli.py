"""``weightkit runs list | show | plot | export`` on runs recorded by weightkit.watch: tables, JSON,
the gradient-flow picture, exports, and one-line errors with exit status 2."""

import json

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import weightkit
from weightkit.cli import app

ENV = {"COLUMNS": "200"}


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env=ENV)


def assert_one_line_error(result, *must_contain):
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for text in must_contain:
        assert str(text) in lines[0], (text, lines[0])


def train_step(net, opt, step):
    x = torch.randn(32, 8, generator=torch.Generator().manual_seed(step))
    opt.zero_grad()
    nn.functional.mse_loss(net(x), x.sum(1, keepdim=True).sin()).backward()
    opt.step()


def hot_model():
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 1))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two runs a user made with two added lines: a deep sigmoid MLP (vanishing gradients) and an
    absurd learning rate (NaN)."""
    d = tmp_path_factory.mktemp("runs")

    def loop(net, opt, name, steps):
        with weightkit.watch(net, optimizer=opt, every=2, run_dir=d, name=name):
            for step in range(steps):
                train_step(net, opt, step)

    torch.manual_seed(0)
    layers = []
    for i in range(10):
        layers += [nn.Linear(8 if i == 0 else 16, 16), nn.Sigmoid()]
    deep = nn.Sequential(*layers, nn.Linear(16, 1))
    loop(deep, torch.optim.SGD(deep.parameters(), lr=0.1), "sigmoid", 12)
    hot = hot_model()
    loop(hot, torch.optim.SGD(hot.parameters(), lr=100.0), "nan", 8)
    return d


def test_runs_list_table_and_json(runs):
    r = cli("runs", "list", "--dir", runs)
    assert r.exit_code == 0, r.stderr
    assert "sigmoid" in r.stdout and "nan" in r.stdout and "finished" in r.stdout
    j = json.loads(cli("runs", "list", "--run-dir", runs, "--json").stdout)  # the API's name works too
    by = {x["name"]: x for x in j["runs"]}
    assert by["sigmoid"]["steps"] == 6 and by["sigmoid"]["params"] == 22 and by["sigmoid"]["last_step"] == 10
    assert by["nan"]["alerts"] >= 2


def test_done_when_runs_show_names_the_vanishing_layers(runs):
    r = cli("runs", "show", "sigmoid", "--dir", runs)
    assert r.exit_code == 0, r.stderr
    out = r.stdout
    assert "vanishing gradient in '0.weight'" in out
    assert "grad norm" in out and "update/weight" in out
    j = json.loads(cli("runs", "show", "sigmoid", "--dir", runs, "--json").stdout)
    rows = [p for p in j["params"] if p["name"].endswith("weight")]
    latest = [p["grad_norm_latest"] for p in rows]
    assert latest == sorted(latest)  # smaller toward the input
    assert {"0.weight", "2.weight"} <= {a["param"] for a in j["alerts"] if a["kind"] == "vanishing"}


def test_done_when_runs_show_names_the_nan_step_and_parameter(runs):
    # by hand, unwatched: the first step and parameter (model order) with a non-finite gradient
    net = hot_model()
    opt = torch.optim.SGD(net.parameters(), lr=100.0)
    expected = None
    for step in range(8):
        train_step(net, opt, step)  # the gradients stay until the next zero_grad
        bad = [n for n, p in net.named_parameters() if not torch.isfinite(p.grad).all()]
        if bad:
            expected = (step, bad[0])
            break
    assert expected is not None
    j = json.loads(cli("runs", "show", "nan", "--dir", runs, "--json").stdout)
    first = [a for a in j["alerts"] if a["kind"] == "nonfinite_grad"][0]
    assert (first["step"], first["param"]) == expected
    row = {p["name"]: p for p in j["params"]}[expected[1]]
    assert row["nonfinite_first_step"] == expected[0] and row["grad_norm_latest"] == "nan"
    out = cli("runs", "show", "nan", "--dir", runs).stdout
    assert f"NaN/Inf first appeared in the gradient of '{expected[1]}' at step {expected[0]}" in out


def test_runs_plot_writes_the_gradient_flow_picture(runs, tmp_path):
    out = tmp_path / "grad_flow.png"
    r = cli("runs", "plot", "sigmoid", "--dir", runs, "-o", out, "--json")
    assert r.exit_code == 0, r.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(r.stdout)["panels"] == 3
    fig = weightkit.plot_grad_flow("sigmoid", run_dir=runs)
    bars, lines, ratio = fig.axes
    assert ratio.get_yscale() == "log" and any(np.allclose(l.get_ydata(), 1e-3) for l in ratio.get_lines())
    heights = [p.get_height() for p in bars.patches]
    assert heights[0] < heights[9]  # max |grad| bars: input side smaller than output side
    r = cli("runs", "plot", "nan", "--dir", runs, "-o", tmp_path / "nan.png")  # NaN runs draw too
    assert r.exit_code == 0, r.stderr


def test_runs_export_csv(runs, tmp_path):
    out = tmp_path / "x.csv"
    r = cli("runs", "export", "nan", "--dir", runs, "--format", "csv", "-o", out, "--json")
    assert r.exit_code == 0, r.stderr
    text = out.read_text().splitlines()
    assert text[0] == "step,param,metric,value" and json.loads(r.stdout)["rows"] == len(text) - 1
    assert any(line.endswith(",grad_norm,nan") for line in text)  # NaN kept, not stripped


def test_runs_errors_are_one_line_exit_2(runs, tmp_path):
    assert_one_line_error(cli("runs", "show", "nope", "--dir", runs), "nope", "no such run")
    assert_one_line_error(cli("runs", "show", "nope", "--dir", runs, "--json"), "no such run")
    assert_one_line_error(cli("runs", "list", "--dir", tmp_path / "missing"), "no such run directory")
    assert_one_line_error(cli("runs", "plot", "sigmoid", "--dir", runs, "-o", tmp_path / "no" / "x.png"),
                          "does not exist")
    assert_one_line_error(cli("runs", "plot", "sigmoid", "--dir", runs, "-o", tmp_path / "x.txt"), "unsupported")
    assert_one_line_error(cli("runs", "export", "sigmoid", "--dir", runs, "-f", "xls", "-o", tmp_path / "x"),
                          "unknown export format")
    assert_one_line_error(cli("runs", "export", "sigmoid", "--dir", runs, "-o", tmp_path / "no" / "x.csv"),
                          "does not exist")
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        assert_one_line_error(cli("runs", "export", "sigmoid", "--dir", runs, "-f", "tensorboard", "-o",
                                  tmp_path / "tb"), "pip install tensorboard")
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        assert_one_line_error(cli("runs", "export", "sigmoid", "--dir", runs, "-f", "parquet", "-o",
                                  tmp_path / "x.parquet"), "pip install pyarrow")

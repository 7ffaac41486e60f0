"""One selector: every function and command that narrows tensors picks the same set for the same
pattern, and a pattern that picks nothing is a one-line error naming the closest names."""

import json
import re
import subprocess
import sys

import pytest

import weightkit
from weightkit.core.selector import Selector

# What a user writes, and the names they mean, on conftest's SmallNet
# (features.0 Conv2d, features.1 BatchNorm2d, head Linear).
PATTERNS = [
    ("head.*", {"head.weight", "head.bias"}),
    ("re:^features\\.0", {"features.0.weight", "features.0.bias"}),
    ("kind:Linear", {"head.weight", "head.bias"}),
    ("kind:Conv2d,Linear", {"head.weight", "head.bias", "features.0.weight", "features.0.bias"}),
    ("role:running_mean", {"features.1.running_mean"}),
    ("*.bias", {"features.0.bias", "features.1.bias", "head.bias"}),
]
PY_ONLY = [
    (re.compile(r"weight$"), {"features.0.weight", "features.1.weight", "head.weight"}),
    (lambda w: w.ndim == 4, {"features.0.weight"}),
    (Selector("features.*", role="bias"), {"features.0.bias", "features.1.bias"}),
    (["head.bias", "kind:Conv2d"], {"head.bias", "features.0.weight", "features.0.bias"}),
]


def _api_sets(source, pattern):
    return {
        "plot_hist": {ax.get_title() for ax in weightkit.plot_hist(source, select=pattern).axes},
        "select": {w.name for w in weightkit.select(source, pattern)},
        "summary": {t["name"] for t in weightkit.summary(source, select=pattern).tensors},
        "stats": {t.name for t in weightkit.stats(source, select=pattern).tensors},
        "quantize_error": {t.name for t in weightkit.quantize_error(source, select=pattern).tensors if t.quantized
                           } | {t.name for t in weightkit.quantize_error(source, select=pattern).tensors
                                if not t.quantized and t.reason != "not selected"},
    }


@pytest.mark.parametrize("pattern,expected", PATTERNS + PY_ONLY, ids=lambda p: getattr(p, "__name__", str(p))[:30])
def test_every_function_selects_the_same_tensors(small_net_file, pattern, expected):
    path, _ = small_net_file
    for where, got in _api_sets(str(path), pattern).items():
        if where == "quantize_error":
            assert got <= expected, where  # non-float or 1-element tensors may be left out, never others
        else:
            assert got == expected, where


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "weightkit", *map(str, args)], capture_output=True, text=True)


@pytest.mark.parametrize("pattern,expected", PATTERNS, ids=str)
def test_every_command_selects_the_same_tensors(small_net_file, tmp_path, pattern, expected):
    path, _ = small_net_file
    summary = json.loads(_cli("summary", path, "--json", "--select", pattern).stdout)
    stats = json.loads(_cli("stats", path, "--json", "-s", pattern).stdout)
    assert {t["name"] for t in summary["tensors"]} == expected
    assert {t["name"] for t in stats["tensors"]} == expected
    hist = json.loads(_cli("plot", "hist", path, "-o", tmp_path / "h.png", "--json", "--select", pattern).stdout)
    assert hist["panels"] == len(expected)
    errors = json.loads(_cli("quantize-error", path, "--json", "--select", pattern).stdout)
    assert {t["name"] for t in errors["tensors"] if t["reason"] != "not selected"} <= expected
    # pruning's default role is the weights (and of those, the selected ones), never biases or buffers
    weights = {n for n in expected if n.endswith(".weight")}
    pruned = _cli("prune", path, tmp_path / "p.safetensors", "--amount", "0.5", "--json", "--select", pattern)
    if weights:
        assert {t["name"] for t in json.loads(pruned.stdout)["tensors"]} == weights
    else:
        assert pruned.returncode == 2 and "no prunable weight" in pruned.stderr


def test_nothing_selected_is_an_error_naming_the_closest_names(small_net_file):
    path, _ = small_net_file
    for call in (lambda: weightkit.select(str(path), "haed.*"), lambda: weightkit.summary(str(path), select="haed.*"),
                 lambda: weightkit.stats(str(path), select="haed.*"),
                 lambda: weightkit.quantize_error(str(path), select="haed.*"),
                 lambda: weightkit.prune(str(path), 0.5, select="haed.*", out=path.with_name("p.safetensors"))):
        with pytest.raises(weightkit.WeightkitError, match=r"matches select='haed\.\*'.*; closest names: head\."):
            call()
    for command in ("summary", "stats"):
        r = _cli(command, path, "--select", "haed.*")
        assert r.returncode == 2 and "Traceback" not in r.stderr
        assert r.stderr.count("\n") == 1 and "closest names: head." in r.stderr


EDIT_PATTERNS = [
    ("head.*", {"head.weight", "head.bias"}),
    ("re:^features\\.0", {"features.0.weight", "features.0.bias"}),
    ("kind:Linear", {"head.weight", "head.bias"}),
    (lambda w: w.ndim == 4, {"features.0.weight"}),
    (["head.bias", "kind:Conv2d"], {"head.bias", "features.0.weight", "features.0.bias"}),
]


@pytest.mark.parametrize("pattern,expected", EDIT_PATTERNS, ids=lambda p: getattr(p, "__name__", str(p))[:30])
def test_every_edit_selects_the_same_tensors(small_net, pattern, expected):
    from conftest import _small_net

    def fresh():
        net = _small_net()
        for p in net.parameters():
            p.requires_grad_(True)
        return net

    net = fresh()
    weightkit.freeze(net, select=pattern)
    assert {n for n, p in net.named_parameters() if not p.requires_grad} == expected
    assert set(weightkit.init(fresh(), "zeros", select=pattern).tensors) == expected
    # pruning narrows to weight matrices by default (its role= default); naming the roles prunes all
    assert {t.name for t in weightkit.prune(fresh(), 0.5, select=pattern).tensors} == {
        n for n in expected if not n.endswith("bias")}
    assert {t.name for t in weightkit.prune(fresh(), 0.5, select=pattern, role=["weight", "bias"]).tensors} == expected
    assert {t.name for t in weightkit.quantize_error(fresh(), select=pattern).tensors} == expected


def test_the_pictures_of_one_tensor_take_the_same_selector(small_net_file, tmp_path):
    path, _ = small_net_file
    fig = weightkit.plot_filters(str(path), select="kind:Conv2d")
    assert "features.0 (Conv2d)" in fig.texts[0].get_text()
    assert weightkit.plot_heatmap(str(path), select=re.compile("^head")).axes[0].get_title().startswith("head.weight")
    with pytest.raises(weightkit.WeightkitError, match="closest names: head.weight"):
        weightkit.plot_heatmap(str(path), select="haed.weight")
    r = _cli("plot", "heatmap", path, "-o", tmp_path / "h.png", "--select", "head.*", "--json")
    assert r.returncode == 0, r.stderr
    r = _cli("plot", "filters", path, "-o", tmp_path / "f.png", "--select", "nothing")
    assert r.returncode == 2 and r.stderr.count("\n") == 1

"""Output a user can trust: no number cut, distinct names shown distinctly, tables within the
terminal at 80, 100 and 140 columns; quantize's per-channel default and its SQNR warning; plots
that say what they left out; saved arguments shown as fields."""

from __future__ import annotations

import argparse
import json
import math
import re

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import weightkit
from weightkit.cli import app
from weightkit.render._text import cut_names

WIDTHS = (80, 100, 140)
# names that differ only in the middle, or only at the end, and are longer than any terminal here
STEM = "encoder.layers.{}.attention.self.query_projection_with_a_long_descriptive_name.{}"
VALUES = {
    STEM.format("block_alpha", "weight"): np.full((4, 4), -3.910e-04) + np.arange(16).reshape(4, 4) * 1e-9,
    STEM.format("block_beta_", "weight"): np.full((4, 4), 2.5e+07) + np.arange(16).reshape(4, 4),
    STEM.format("block_alpha", "bias"): np.linspace(-1e-30, 3e-30, 4),
    STEM.format("block_alpha", "weight_scale"): np.linspace(-123456.0, 7.0, 4),
    "fc.weight": np.linspace(-0.5, 0.25, 6).reshape(2, 3),
}
NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?:e[+-]\d+)?%?")


@pytest.fixture(scope="module")
def odd_file(tmp_path_factory):
    from safetensors.numpy import save_file

    path = tmp_path_factory.mktemp("odd") / "odd.safetensors"
    save_file({k: v.astype(np.float32) for k, v in VALUES.items()}, str(path))
    return path


def cli(width: int, *args):
    r = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": str(width), "NO_COLOR": "1"})
    assert r.exit_code == 0, (r.stdout, r.stderr, r.exception)
    return r.stdout


def _digits(token: str) -> int:
    mant = token.lstrip("-").split("e")[0]
    return len(mant.replace(".", "").lstrip("0")) or 1


def _name_lines(out: str) -> dict[str, str]:
    """Each name of ``VALUES`` -> the line of ``out`` that shows it, whole or cut with "…" (a cut
    line must match its name's head and tail and no other name's)."""
    found = {}
    for line in out.splitlines():
        text = line.strip().split("   ")[0]
        if "…" in text:
            pieces = text.split("…")
            owners = [n for n in VALUES if n.startswith(pieces[0]) and n.endswith(pieces[-1])
                      and all(p in n for p in pieces[1:-1])]
            assert len(owners) == 1, (text, owners)  # a cut text names one tensor, never two
            assert owners[0] not in found
            found[owners[0]] = line
        else:
            for n in VALUES:
                if text == n:
                    found[n] = line
    return found


@pytest.mark.parametrize("width", WIDTHS)
def test_stats_numbers_whole_names_distinct_lines_fit(odd_file, width):
    out = cli(width, "stats", odd_file)
    lines = out.splitlines()
    assert all(len(line) <= width for line in lines), max(lines, key=len)
    assert not re.search(r"\d…|…\d|e…|[-+]…", out), "a number was cut"
    shown = _name_lines(out)
    assert set(shown) == set(VALUES)  # every tensor shown, distinctly
    for name, v in VALUES.items():  # its numbers parse back within their printed precision
        v = v.astype(np.float32).astype(np.float64)
        at = lines.index(shown[name])
        label = shown[name].strip().split("   ")[0]
        rest = shown[name].strip()[len(label):]
        tokens = NUMBER.findall(rest if rest.strip() else lines[at + 1])
        assert len(tokens) >= 5, (name, rest, lines[at + 1])
        for token, exact in zip(tokens, (v.mean(), v.std(), v.min(), v.max(), np.sqrt((v ** 2).sum()))):
            tol = abs(exact) * 10.0 ** (1 - _digits(token)) + 1e-300
            assert abs(float(token) - exact) <= tol, (name, token, exact)


@pytest.mark.parametrize("width", WIDTHS)
def test_summary_fits_and_cuts_no_number(odd_file, width):
    out = cli(width, "summary", odd_file)
    assert all(len(line) <= width for line in out.splitlines())
    assert not re.search(r"\d…|…\d", out)
    for n in ("4×4", "16"):
        assert n in out


def test_cut_names_keep_the_distinguishing_part():
    names = [STEM.format(f"block_{c}", leaf) for c in ("alpha", "beta_") for leaf in ("weight", "bias")]
    names += [f"x{'a' * 70}{i}y{'b' * 70}" for i in range(3)]  # differ only in the very middle
    for width in (12, 20, 40, 79):
        shown = cut_names(names, width)
        assert len(set(shown.values())) == len(names), (width, shown)
        for name, text in shown.items():
            if text != name:
                assert len(text) <= width and "…" in text
                head = text.split("…")[0]
                assert name.startswith(head) and name.endswith(text.split("…")[-1])


def test_summary_wraps_between_words_and_fits_80(small_net_file):
    path, _ = small_net_file
    out = cli(80, "summary", path)
    assert all(len(line) <= 80 for line in out.splitlines())
    words = {"out_channels,", "in_channels/groups,", "kernel_h,", "kernel_w", "num_features"}
    seen = {w for line in out.splitlines() for w in line.split()}
    assert words <= seen  # no axis word broken across lines


# ---- quantize ---------------------------------------------------------------------------------

def _sqnr_per_channel(w: np.ndarray) -> float:
    x = w.astype(np.float64)
    scale = (np.abs(w).max(axis=1, keepdims=True).astype(np.float32) / np.float32(127)).astype(np.float64)
    q = np.clip(np.rint(x / scale), -127, 127) * scale
    return 10 * math.log10((x ** 2).sum() / ((x - q) ** 2).sum())


def test_quantize_defaults_to_one_scale_per_output_channel(tmp_path):
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((32, 512)) * np.exp(rng.standard_normal((32, 1)) * 2)).astype(np.float32)
    norm = rng.standard_normal(4096).astype(np.float32)
    bias = rng.standard_normal(4096).astype(np.float32)
    sd = {"fc.weight": w, "norm.weight": norm, "fc.bias": bias}
    r = weightkit.quantize(sd, tmp_path / "q.safetensors")
    assert r.granularity == "channel" and r["fc.weight"].axis == 0
    assert r["fc.weight"].sqnr_db == pytest.approx(_sqnr_per_channel(w), abs=1e-3)
    from safetensors.numpy import load_file

    stored = load_file(str(tmp_path / "q.safetensors"))
    assert stored["fc.weight::scale"].shape == (32, 1)
    # a 1-D weight of 4096 elements is a weight: quantised, with one scale
    assert r["norm.weight"].quantized and stored["norm.weight::scale"].shape == (1, 1)
    back = weightkit.open(tmp_path / "q.safetensors")["norm.weight"].numpy()
    assert np.abs(back - norm).max() <= np.abs(norm).max() / 127 / 2 * 1.0001
    assert not r["fc.bias"].quantized and r["fc.bias"].reason == "bias"
    assert r.warnings == []


def test_quantize_warns_below_30_db(tmp_path):
    rng = np.random.default_rng(1)
    w = rng.standard_normal((32, 512)).astype(np.float32)
    w[0] *= 100  # one loud channel sets the step of a single scale
    r = weightkit.quantize_error({"fc.weight": w}, granularity="tensor")
    assert r.sqnr_db < 30 and any("below 30 dB" in line and "channel" in line for line in r.warnings)
    assert r.to_dict()["warnings"] == r.warnings
    path = tmp_path / "w.safetensors"
    from safetensors.numpy import save_file

    save_file({"fc.weight": w}, str(path))
    out = cli(100, "quantize-error", path, "--granularity", "tensor")
    assert "warning:" in out and "below 30 dB" in out
    out = cli(100, "quantize-error", path)  # the default: per channel, no warning
    assert "per channel" in " ".join(out.split()) and "warning:" not in out


# ---- plots ------------------------------------------------------------------------------------

def test_filters_say_what_they_left_out_and_draw_1d_kernels_as_curves():
    net = torch.nn.Sequential(torch.nn.Conv1d(3, 128, 5), torch.nn.BatchNorm1d(128), torch.nn.Conv2d(128, 4, (7, 1)))
    fig = weightkit.plot_filters(net)
    assert fig.weightkit_shown == {"tensor": "0.weight", "filters": 64, "of": 128, "mode": "curves"}
    assert "64 of 128" in fig._suptitle.get_text()
    ax = fig.axes[5]
    assert not ax.images
    ys = [line.get_ydata() for line in ax.lines if len(line.get_ydata()) == 5]
    np.testing.assert_allclose(np.array(ys), net[0].weight[5].detach().numpy(), rtol=1e-6)
    k71 = weightkit.plot_filters(net, select="2.weight")  # (7, 1) kernels over 128 channels: a band and its mean
    ax = k71.axes[1]
    assert not ax.images and ax.collections
    mean = [line.get_ydata() for line in ax.lines if len(line.get_ydata()) == 7][0]
    np.testing.assert_allclose(mean, net[2].weight[1, :, :, 0].detach().numpy().mean(axis=0), rtol=1e-5)


def test_hist_skips_integer_buffers_and_says_so(tmp_path):
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    fig = weightkit.plot_hist(net)
    titles = [ax.get_title() for ax in fig.axes]
    assert "1.num_batches_tracked" not in titles and "1.running_var" in titles
    assert fig.weightkit_shown["skipped_integer"] == ["1.num_batches_tracked"]
    big = {f"t{i}.weight": np.ones((2, 2), np.float32) * i for i in range(30)}
    fig = weightkit.plot_hist(big)
    assert len(fig.axes) == 24 and "24 of 30" in fig._suptitle.get_text()
    from safetensors.numpy import save_file

    path = tmp_path / "m.safetensors"
    save_file({k: v.detach().numpy() for k, v in net.state_dict().items()}, str(path))
    r = CliRunner().invoke(app, ["plot", "hist", str(path), "-o", str(tmp_path / "h.png"), "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["shown"]["skipped_integer"] == ["1.num_batches_tracked"]


# ---- metadata ---------------------------------------------------------------------------------

def test_saved_arguments_and_hyperparameters_shown_as_fields(tmp_path):
    hparams = {f"param_{i}": i * 0.5 for i in range(75)}
    args = argparse.Namespace(lr=0.001, batch_size=32, model="resnet")
    path = tmp_path / "ckpt.pt"
    torch.save({"model": torch.nn.Linear(3, 4).state_dict(), "hparams": hparams, "args": args,
                "config": {"hidden": 64, "act": "gelu"}}, path)
    meta = json.loads(cli(100, "summary", path, "--json"))["metadata"]
    assert meta["hparams"] == hparams
    assert meta["args"]["state"] == {"lr": 0.001, "batch_size": 32, "model": "resnet"}
    out = cli(100, "summary", path)
    assert "argparse.Namespace(lr=0.001, batch_size=32, model=resnet)" in out
    assert "hidden=64, act=gelu" in out and "param_0=0.0, param_1=0.5" in out
    assert '{"entries"' not in out
    assert "more (--json shows them)" in " ".join(out.split())  # bounded: 75 fields do not all print
    assert len(out) < 4000

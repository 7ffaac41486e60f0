"""Plots checked by what the pictures contain: panel counts, image sizes, the values drawn."""

import io
import os
import subprocess
import sys
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

import weightkit

os.environ.setdefault("KERAS_BACKEND", "torch")
pytest.importorskip("matplotlib")


def images(fig):
    return [ax.images[0].get_array() for ax in fig.axes if ax.images]


def test_rgb_filters_of_a_first_conv_layer():
    conv = nn.Conv2d(3, 16, 5)
    fig = weightkit.plot_filters(conv)
    imgs = images(fig)
    assert len(fig.axes) == 16 and all(i.shape == (5, 5, 3) for i in imgs)
    # filter 4, normalised to [0, 1] per filter, channels last
    w = conv.weight[4].detach().numpy().transpose(1, 2, 0)
    np.testing.assert_allclose(imgs[4], (w - w.min()) / (w.max() - w.min()), rtol=1e-6)


def test_deeper_filters_averaged_or_per_channel():
    conv = nn.Conv2d(4, 6, 3)
    mean = weightkit.plot_filters(conv)
    assert len(mean.axes) == 6
    np.testing.assert_allclose(images(mean)[2], conv.weight[2].detach().numpy().mean(axis=0), rtol=1e-6)
    per_channel = weightkit.plot_filters(conv, mode="channels")
    assert len(per_channel.axes) == 6 * 4


def test_grouped_conv1d_and_transposed_layouts():
    grouped = nn.Conv2d(4, 8, 3, groups=2)  # weight (8, 2, 3, 3)
    assert len(weightkit.plot_filters(grouped, mode="channels").axes) == 8 * 2
    conv1d = nn.Conv1d(5, 7, 9)
    fig = weightkit.plot_filters(conv1d)  # 1-D filters: one curve per input channel, no image
    assert len(fig.axes) == 7 and not images(fig)
    curves = [line.get_ydata() for line in fig.axes[3].lines if len(line.get_ydata()) == 9]
    np.testing.assert_allclose(np.array(curves), conv1d.weight[3].detach().numpy(), rtol=1e-6)
    deconv = nn.ConvTranspose2d(3, 5, 3)  # weight (in=3, out=5, 3, 3): 5 filters over 3 channels
    imgs = images(weightkit.plot_filters(deconv))
    assert len(imgs) == 5 and imgs[0].shape == (3, 3, 3)


def test_max_filters_limits_panels():
    assert len(weightkit.plot_filters(nn.Conv2d(3, 100, 3), max_filters=10).axes) == 10


def test_keras_conv_kernels_are_transposed_like_torch():
    keras = pytest.importorskip("keras")
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(6, 3, name="conv")])
    kernel = model.layers[0].kernel.numpy()  # (kh, kw, in, out)
    torch_conv = nn.Conv2d(3, 6, 3)
    with torch.no_grad():
        torch_conv.weight.copy_(torch.from_numpy(kernel.transpose(3, 2, 0, 1)))
    ours = images(weightkit.plot_filters(model))
    theirs = images(weightkit.plot_filters(torch_conv))
    assert len(ours) == 6
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_keras_depthwise_filters():
    keras = pytest.importorskip("keras")
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.DepthwiseConv2D(3, depth_multiplier=2)])
    kernel = model.layers[0].kernel.numpy()  # (3, 3, in=3, mult=2)
    imgs = images(weightkit.plot_filters(model))
    assert len(imgs) == 6
    np.testing.assert_allclose(imgs[1], kernel[:, :, 0, 1], rtol=1e-6)  # channel 0, multiplier 1


def test_heatmap_rows_are_outputs_for_torch_and_keras():
    lin = nn.Linear(20, 5)
    img = images(weightkit.plot_heatmap(lin))[0]
    np.testing.assert_allclose(img, lin.weight.detach().numpy(), rtol=1e-6)
    keras = pytest.importorskip("keras")
    dense = keras.Sequential([keras.Input((20,)), keras.layers.Dense(5)])
    img = images(weightkit.plot_heatmap(dense))[0]
    np.testing.assert_allclose(img, dense.layers[0].kernel.numpy().T, rtol=1e-6)


def test_large_heatmap_is_block_averaged():
    lin = nn.Linear(1000, 600)
    img = images(weightkit.plot_heatmap(lin, max_size=100))[0]
    assert img.shape == (100, 100)
    w = lin.weight.detach().numpy()
    np.testing.assert_allclose(img[0, 0], w[:6, :10].astype(np.float64).mean(), rtol=1e-5, atol=1e-7)


def test_hist_and_norms_panels():
    net = nn.Sequential(nn.Linear(10, 10), nn.BatchNorm1d(10), nn.Linear(10, 2))
    fig = weightkit.plot_hist(net)  # every float tensor with finite values, buffers too; not the step counter
    assert len(fig.axes) == 8 and fig.weightkit_shown["skipped_integer"] == ["1.num_batches_tracked"]
    assert len(weightkit.plot_hist(net, select="*.weight").axes) == 3
    fig = weightkit.plot_norms(net)
    heights = [p.get_height() for p in fig.axes[0].patches]
    expected = [np.sqrt(sum((p.detach().numpy().astype(np.float64) ** 2).sum() for p in m.parameters()))
                for m in (net[0], net[1], net[2])]
    np.testing.assert_allclose(heights, expected, rtol=1e-9)


def test_feature_importance_against_numpy():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3), nn.Tanh(), nn.Linear(3, 2))
    imp = weightkit.feature_importance(net, feature_names=list("abcd"))
    w = [m.weight.detach().numpy().astype(np.float64) for m in (net[0], net[2], net[4])]
    first = np.abs(w[0]).sum(0)
    np.testing.assert_allclose(imp.first_layer, first / first.sum())
    np.testing.assert_allclose(imp.olden, (w[2] @ w[1] @ w[0]).sum(0))
    # Garson for one hidden layer and one output, from its textbook formula
    single = nn.Sequential(nn.Linear(4, 5), nn.Sigmoid(), nn.Linear(5, 1))
    wi, wo = single[0].weight.detach().numpy().astype(np.float64), single[2].weight.detach().numpy()[0]
    q = np.abs(wi) * np.abs(wo)[:, None] / np.abs(wi).sum(1, keepdims=True)
    np.testing.assert_allclose(weightkit.feature_importance(single).garson, q.sum(0) / q.sum())
    assert len(weightkit.plot_importance(net, feature_names=list("abcd")).axes) == 3


def test_diff_per_layer():
    net = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        net[1].weight.mul_(2)
    r = weightkit.diff(net, before)
    rel = {c.layer: c.relative for c in r.layers}
    b = np.concatenate([before["1.weight"].numpy().ravel(), before["1.bias"].numpy().ravel()]).astype(np.float64)
    assert rel["0"] == 0
    assert rel["1"] == pytest.approx(np.linalg.norm(before["1.weight"].numpy().astype(np.float64)) / np.linalg.norm(b))
    assert len(weightkit.plot_diff(net, before).axes[0].patches) == 2


def test_errors_are_one_line_weightkit_errors():
    with pytest.raises(weightkit.WeightkitError, match="no layer has weights"):
        weightkit.plot_filters(nn.Linear(3, 2))
    with pytest.raises(weightkit.WeightkitError, match="MLP"):
        weightkit.feature_importance(nn.Conv2d(3, 3, 3))
    with pytest.raises(weightkit.WeightkitError, match="feature names"):
        weightkit.feature_importance(nn.Linear(3, 1), feature_names=["a"])


def test_cli_writes_png_and_rejects_bad_input(tmp_path):
    path = tmp_path / "cnn.pt"
    torch.save(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4, 2)).state_dict(), path)
    out = tmp_path / "filters.png"
    run = subprocess.run([sys.executable, "-m", "weightkit", "plot", "filters", str(path), "-o", str(out), "--json"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for args in (["plot", "nope", str(path), "-o", str(out)],
                 ["plot", "filters", str(path), "-o", str(tmp_path / "missing" / "x.png")],
                 ["plot", "diff", str(path), "-o", str(out)]):
        bad = subprocess.run([sys.executable, "-m", "weightkit", *args], capture_output=True, text=True)
        assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr


def draw_everything(run_dir, tag=""):
    """Every plot function once, on layers whose names end in ``tag``."""
    net = nn.Sequential(OrderedDict([(f"conv{tag}", nn.Conv2d(3, 4, 3)), ("flat", nn.Flatten()),
                                     (f"fc{tag}", nn.Linear(4, 3)), ("act", nn.Tanh()), (f"out{tag}", nn.Linear(3, 2))]))
    mlp = nn.Sequential(OrderedDict([(f"fc{tag}", nn.Linear(3, 4)), ("act", nn.Tanh()), (f"out{tag}", nn.Linear(4, 2))]))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    opt = torch.optim.SGD(mlp.parameters(), lr=0.1)
    with weightkit.watch(mlp, optimizer=opt, every=1, run_dir=run_dir, name="run"):
        for _ in range(3):
            opt.zero_grad()
            mlp(torch.randn(8, 3)).square().mean().backward()
            opt.step()
    return [weightkit.plot_hist(net), weightkit.plot_norms(net), weightkit.plot_filters(net), weightkit.plot_heatmap(net),
            weightkit.plot_importance(mlp, feature_names=[f"a{tag}", "b", "c"]), weightkit.plot_diff(net, before),
            weightkit.plot_grad_flow("run", run_dir=run_dir)]


def test_plots_leave_the_users_backend_and_pyplot_alone(tmp_path):
    import matplotlib
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    before = matplotlib.get_backend()
    matplotlib.use("ps")  # a non-interactive backend a library must keep, though it cannot draw PNGs itself
    plt.close("all")
    try:
        figs = draw_everything(tmp_path)
        assert all(isinstance(f, Figure) for f in figs)
        png = io.BytesIO()
        figs[0].savefig(png, format="png")
        assert png.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"
        assert matplotlib.get_backend() == "ps"
        assert plt.get_fignums() == []  # nothing registered with pyplot, so nothing piles up
    finally:
        matplotlib.use(before)


def test_names_from_a_file_are_drawn_literally_never_as_mathtext(tmp_path):
    from matplotlib.text import Text

    tag = r"$\bogus$"  # as mathtext this fails to draw (unknown symbol)
    for fig in draw_everything(tmp_path, tag):
        for fmt in ("png", "svg"):
            fig.savefig(io.BytesIO(), format=fmt, bbox_inches="tight")
        shown = [t for t in fig.findobj(Text) if tag in t.get_text() and t.get_visible()]
        assert shown and not any(t.get_parse_math() or t.get_usetex() for t in shown)

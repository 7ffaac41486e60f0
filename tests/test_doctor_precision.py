"""The doctor stays silent where a file cannot show a problem, and still finds the planted ones.

Each model here used to raise a false alarm (issue 16) or plants a problem one of the newer
rules must find; every model is built and trained in the test.
"""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import weightkit
from weightkit.analyses.doctor import list_rules


def _train(model: nn.Module, shape: tuple, steps: int = 20, outputs: int | None = None) -> nn.Module:
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        out = model(torch.randn(16, *shape))
        loss = out.pow(2).mean() if outputs is None else nn.functional.cross_entropy(out, torch.randint(0, outputs, (16,)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def _save(model: nn.Module, path, **extra) -> str:
    if extra:
        torch.save({**extra, "state_dict": model.state_dict()}, path)
    else:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return str(path)


def test_batchnorm_with_trained_statistics_but_a_zero_counter_is_healthy(tmp_path):
    # models converted from Keras or Caffe store num_batches_tracked = 0 beside trained statistics
    model = _train(nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU()), (3, 8, 8))
    model[1].num_batches_tracked.zero_()
    found = weightkit.doctor(_save(model, tmp_path / "converted.pt", epoch=5))
    assert found.by_rule("batchnorm-untrained") == []
    # statistics really at their initial values are still found, from the statistics themselves
    fresh = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8))
    fresh[1].num_batches_tracked.fill_(100)  # the counter says trained: the statistics say otherwise
    (f,) = weightkit.doctor(_save(fresh, tmp_path / "fresh.pt", epoch=5)).by_rule("batchnorm-untrained")
    assert f.severity == "warning" and "1.running_var" in f.tensors


class Parallel(nn.Module):
    """Two branches side by side: the conv does not feed the BatchNorm."""

    def __init__(self):
        super().__init__()
        self.branch_a = nn.Conv2d(4, 4, 3, padding=1)
        self.branch_b = nn.BatchNorm2d(4)

    def forward(self, x):
        return self.branch_a(x) + self.branch_b(x)


def test_bias_before_norm_never_pairs_parallel_branches_or_conv_relu_bn(tmp_path):
    parallel = _train(Parallel(), (4, 6, 6))
    relu_between = _train(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4)), (3, 8, 8))
    for model in (parallel, relu_between):
        for source in (model, _save(model, tmp_path / f"{type(model).__name__}.safetensors")):
            assert weightkit.doctor(source).by_rule("bias-before-norm") == []
    # the direct pairing is still found, in the live model (traced) and in its file (Sequential order)
    direct = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    for source in (direct, _save(direct, tmp_path / "direct.safetensors")):
        (f,) = weightkit.doctor(source).by_rule("bias-before-norm")
        assert f.details["pairs"] == [["0", "1"]]


def test_keras_activation_inside_the_layer_is_not_a_direct_pairing():
    keras = pytest.importorskip("keras")
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, activation="relu"),
                              keras.layers.BatchNormalization()])
    assert weightkit.doctor(model).by_rule("bias-before-norm") == []


def _big_linear(fan_in: int, out: int) -> nn.Linear:
    lin = nn.Linear(fan_in, out)
    with torch.no_grad():
        lin.weight.normal_(0, 2.0)  # 40x above 1/sqrt(400)
    return lin


@pytest.mark.parametrize("norm", [nn.LayerNorm, nn.BatchNorm1d])
def test_large_scale_followed_by_a_normalisation_is_harmless(norm, tmp_path):
    model = nn.Sequential(_big_linear(400, 50), nn.ReLU(), norm(50), nn.Linear(50, 3))
    model.eval()
    assert weightkit.doctor(model).by_rule("scale") == []  # the traced graph shows the norm
    direct = nn.Sequential(_big_linear(400, 50), norm(50))
    in_file = weightkit.doctor(_save(direct, tmp_path / "d.safetensors")).by_rule("scale")
    assert all(f.severity == "info" for f in in_file)  # a file never warns on moderate scale
    if norm is nn.BatchNorm1d:  # running statistics prove a BatchNorm, Sequential order that it follows
        assert in_file == []
    # a file that does not show what follows: a note without learning-rate advice, never a warning
    unknown = nn.ModuleDict({"proj": _big_linear(400, 50)})
    (f,) = weightkit.doctor(_save(unknown, tmp_path / "u.safetensors")).by_rule("scale")
    assert f.severity == "info" and "learning rate" not in f.fix
    # the same weights in a live model with nothing normalising them: a warning
    (f,) = weightkit.doctor(nn.Sequential(_big_linear(400, 50), nn.ReLU(), nn.Linear(50, 3))).by_rule("scale")
    assert f.severity == "warning" and f.tensors == ["0.weight"]


def test_repeated_findings_are_one_row_with_a_count_and_the_names(tmp_path):
    model = nn.Sequential(*[_big_linear(400, 400) for _ in range(6)])
    report = weightkit.doctor(model)
    (row,) = report.by_rule("scale")
    assert row.details["count"] == 6 and row.tensors == [f"{i}.weight" for i in range(6)]
    assert len(row.details["items"]) == 6 and row.message.startswith("6 alike findings")
    assert len(weightkit.doctor(model, group=False).by_rule("scale")) == 6
    from rich.console import Console

    from weightkit.render.console import renderable

    console = Console(width=80, record=True, color_system=None)
    console.print(renderable(report))
    text = console.export_text()
    assert "6x:" in text and "5.weight" in text


def test_every_id_a_finding_carries_is_a_rule_id_that_rule_selects(tmp_path):
    ids = [r.id for r in list_rules()]
    assert len(ids) == len(set(ids))
    path = _save(nn.Sequential(nn.Linear(3, 3)), tmp_path / "m.safetensors")
    out = subprocess.run([sys.executable, "-m", "weightkit", "doctor", path, "--json",
                          *[a for i in ids for a in ("--rule", i)]], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    # each finding's id selects exactly that finding's rule
    model = _train(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                                 nn.Linear(36, 2)), (3, 5, 5), outputs=2)
    model[1].running_var[1] = -1.0
    with torch.no_grad():
        model[4].weight[1] = 0.0
    report = weightkit.doctor(model)
    assert {f.rule for f in report.findings} >= {"batchnorm-variance", "bias-before-norm", "dead-units"}
    for f in report.findings:
        assert f.rule in ids
        assert {g.rule for g in weightkit.doctor(model, rules=[f.rule]).findings} == {f.rule}
    assert json.loads(out.stdout)["rules_run"] == [i for i in ids if list_rules()[ids.index(i)].needs == "weights"]


def test_dead_batchnorm_channels_are_found(tmp_path):
    model = _train(nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU()), (3, 8, 8))
    model[1].running_var[[2, 6]] = torch.tensor([1e-36, 0.0])
    for source in (model, _save(model, tmp_path / "m.safetensors")):
        (f,) = weightkit.doctor(source).by_rule("batchnorm-dead-channels")
        assert f.severity == "warning" and f.details["dead"] == [2, 6] and f.details["channels"] == 8
    assert weightkit.doctor(model).by_rule("batchnorm-variance") == []  # 0 is not below 0


class WithUnused(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8)) for _ in range(4)])
        self.head = nn.Linear(8, 2)
        self.spare = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8))  # built, never called

    def forward(self, x):
        for block in self.blocks:
            x = torch.relu(block(x))
        return self.head(x)


def test_untouched_layer_in_a_trained_model_and_unused_parameters(tmp_path):
    model = WithUnused()
    nn.init.zeros_(model.spare[0].bias)
    for block in model.blocks:
        nn.init.zeros_(block[0].bias)
    _train(model, (8,), outputs=2)
    expected = {("spare.0.bias",), ("spare.1.weight", "spare.1.bias")}
    live = {tuple(f.tensors) for f in weightkit.doctor(model).by_rule("untrained-layer")}
    assert live == expected
    # a bare file does not always show that 1-D weight/bias pairs are LayerNorms: the bias is found
    in_file = {tuple(f.tensors) for f in weightkit.doctor(_save(model, tmp_path / "m.safetensors"))
               .by_rule("untrained-layer")}
    assert ("spare.0.bias",) in in_file and in_file <= expected
    (f,) = weightkit.doctor(model).by_rule("unused-parameters")
    assert f.tensors == ["spare.0.weight", "spare.0.bias", "spare.1.weight", "spare.1.bias"]
    # a model that is entirely at its initial values makes no such claim: nothing has trained
    assert weightkit.doctor(WithUnused()).by_rule("untrained-layer") == []


def test_untraceable_live_model_gives_no_unused_parameter_guesses():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(2, 2), nn.Linear(2, 2)

        def forward(self, x):
            return self.a(x) if x.sum() > 0 else self.b(x)  # data-dependent: fx cannot trace it

    assert weightkit.doctor(Branchy()).by_rule("unused-parameters") == []


def test_a_norm_of_open_kind_at_its_initial_values_is_found_in_a_file(tmp_path):
    """LayerNorms named `bn1` (no running statistics: the file leaves their exact norm kind open)
    are still norms: one left at weight 1, bias 0 while the others trained is found."""
    torch.manual_seed(0)
    sd = {}
    for i in range(5):
        sd[f"blocks.{i}.fc.weight"] = torch.randn(8, 8)
        sd[f"blocks.{i}.fc.bias"] = torch.randn(8)
        sd[f"blocks.{i}.bn1.weight"] = 1 + 0.1 * torch.randn(8) if i < 4 else torch.ones(8)
        sd[f"blocks.{i}.bn1.bias"] = 0.1 * torch.randn(8) if i < 4 else torch.zeros(8)
    path = tmp_path / "m.safetensors"
    save_file(sd, str(path))
    ws = weightkit.open(path)
    norm = next(w for w in ws if w.name == "blocks.4.bn1.weight")
    assert norm.kind == "unknown" and "LayerNorm" in norm.kind_candidates  # not called BatchNorm
    (f,) = weightkit.doctor(ws).by_rule("untrained-layer")
    assert f.tensors == ["blocks.4.bn1.weight", "blocks.4.bn1.bias"]


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_a_keras_file_is_judged_by_the_config_it_stores(tmp_path, suffix):
    """A Keras file holds its model's graph as data: a bias feeding a BatchNorm directly is found
    there as on the live model, and a convolution with its own ReLU before the norm is not."""
    import os
    import warnings

    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    layers = keras.layers
    model = keras.Sequential([keras.Input((8, 8, 3)), layers.Conv2D(4, 3, name="c1"), layers.BatchNormalization(name="bn1"),
                              layers.Conv2D(4, 3, name="c2", activation="relu"), layers.BatchNormalization(name="bn2"),
                              layers.Flatten(), layers.Dense(2, name="d")])
    path = tmp_path / f"m{suffix}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Keras calls .h5 legacy
        model.save(path)
    ws = weightkit.open(path)
    assert ws.model_config is not None and "Conv2D ×2" in ws.metadata["layers"]
    flagged = [f.tensors for f in weightkit.doctor(ws).by_rule("bias-before-norm")]
    assert len(flagged) == 1 and flagged[0][0].endswith("c1/bias")

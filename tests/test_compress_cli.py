"""``weightkit prune | quantize | quantize-error | verify`` on files: results, JSON, exit codes, and
bad input that ends with one line on stderr, exit 2 and nothing written."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

import weightkit
from weightkit.cli import app

ENV = {"COLUMNS": "200"}


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env=ENV)


@pytest.fixture
def ckpt(tmp_path):
    torch.manual_seed(0)
    state = {"enc.0.weight": torch.randn(64, 128), "enc.0.bias": torch.randn(64),
             "enc.1.weight": torch.randn(32, 64), "enc.1.bias": torch.randn(32),
             "head.weight": torch.randn(10, 32), "head.bias": torch.randn(10)}
    path = tmp_path / "in.safetensors"
    save_file(state, str(path))
    return path, state


def assert_bad_input(result, path, *needles):
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert str(path) in lines[0], lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_prune_a_file(ckpt, tmp_path):
    path, state = ckpt
    before = path.read_bytes()
    out = tmp_path / "out.safetensors"
    r = cli("prune", path, out, "--amount", "0.5", "--scope", "global", "--json")
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["total"]["sparsity"] == 0.5 and data["out"] == str(out)
    assert [t["name"] for t in data["tensors"]] == ["enc.0.weight", "enc.1.weight", "head.weight"]
    assert path.read_bytes() == before  # IN untouched
    ws = weightkit.open(out)
    assert np.array_equal(ws["enc.0.bias"].numpy(), state["enc.0.bias"].numpy())
    zeros = sum(int((ws[n].numpy() == 0).sum()) for n in ("enc.0.weight", "enc.1.weight", "head.weight"))
    assert zeros == (64 * 128 + 32 * 64 + 10 * 32) // 2
    assert cli("verify", out).exit_code == 0
    r = cli("prune", path, out, "--amount", "0.25", "--method", "l2-structured", "--filter", "enc.*")
    assert r.exit_code == 0, r.stderr
    assert "enc.0.weight" in r.stdout and "sparsity" in r.stdout
    w = weightkit.open(out)["enc.0.weight"].numpy()
    assert int((np.abs(w).sum(1) == 0).sum()) == 16  # whole output rows
    assert not (weightkit.open(out)["head.weight"].numpy() == 0).any()


def test_quantize_and_quantize_error(ckpt, tmp_path):
    path, state = ckpt
    out = tmp_path / "q.safetensors"
    r = cli("quantize", path, out, "--bits", "4", "--granularity", "group", "--group-size", "32", "--json")
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["bits"] == 4 and data["total"]["file_bytes"] == out.stat().st_size
    ws = weightkit.open(out)
    assert ws.format == "weightkit-quantized" and ws["enc.0.weight"].shape == (64, 128)
    err = cli("quantize-error", path, "--bits", "4", "--granularity", "group", "--group-size", "32", "--json")
    assert err.exit_code == 0, err.stderr
    measured = json.loads(err.stdout)
    api = weightkit.quantize_error(path, bits=4, granularity="group", group_size=32).to_dict()
    assert measured == json.loads(json.dumps(api))
    q = {t["name"]: t for t in data["tensors"]}
    for t in measured["tensors"]:
        assert t["rel_error"] == pytest.approx(q[t["name"]]["rel_error"])
    r = cli("quantize-error", path, "--bits", "8", "--granularity", "channel")
    assert r.exit_code == 0 and "SQNR" in r.stdout and "enc.0.weight" in r.stdout
    r = cli("quantize", path, tmp_path / "q8.safetensors", "--bits", "8", "--scheme", "asymmetric")
    assert r.exit_code == 0, r.stderr


def test_verify_exit_codes(ckpt, tmp_path):
    path, _ = ckpt
    good = weightkit.save(path, tmp_path / "saved.safetensors")
    r = cli("verify", good, "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["ok"] is True
    data = bytearray(good.read_bytes())
    data[-1] ^= 1
    good.write_bytes(bytes(data))
    r = cli("verify", good)
    assert r.exit_code == 1 and "MISMATCH" in r.stdout
    assert_bad_input(cli("verify", path), path, "no hashes recorded")


def test_in_place(ckpt):
    path, _ = ckpt
    r = cli("prune", path, "--amount", "0.5", "--in-place")
    assert r.exit_code == 0, r.stderr
    assert weightkit.verify(path).ok
    assert (weightkit.open(path)["enc.0.weight"].numpy() == 0).mean() == 0.5
    assert sorted(p.name for p in path.parent.iterdir()) == ["in.safetensors"]


@pytest.mark.parametrize("args,needles", [
    (["prune", "{IN}", "{OUT}", "--amount", "1.5"], ["amount must be a fraction", "1.5"]),
    (["prune", "{IN}", "{OUT}", "--amount", "-0.2"], ["amount must be a fraction"]),
    (["prune", "{IN}", "{OUT}", "--amount", "0.5", "--filter", "decoder.*"], ["no prunable weight", "decoder"]),
    (["prune", "{IN}", "{OUT}", "--amount", "0.5", "--method", "median"], ["unknown pruning method"]),
    (["prune", "{IN}", "{IN}", "--amount", "0.5"], ["is the input file", "--in-place"]),
    (["prune", "{IN}", "--amount", "0.5"], ["give OUT"]),
    (["prune", "{IN}", "{NODIR}", "--amount", "0.5"], ["does not exist"]),
    (["prune", "{IN}", "{FILEDIR}", "--amount", "0.5"], ["does not exist"]),
    (["quantize", "{IN}", "{OUT}", "--bits", "3"], ["bits must be 4 or 8", "3"]),
    (["quantize", "{IN}", "{OUT}", "--granularity", "row"], ["unknown granularity"]),
    (["quantize", "{IN}", "{OUT}", "--filter", "nothing*"], ["matches select"]),
    (["quantize", "{IN}", "{IN}"], ["is the input file"]),
    (["quantize-error", "{IN}", "--bits", "16"], ["bits must be 4 or 8"]),
])
def test_bad_input_writes_nothing(ckpt, tmp_path, args, needles):
    path, _ = ckpt
    before = path.read_bytes()
    (tmp_path / "afile").write_text("x")
    subs = {"{IN}": path, "{OUT}": tmp_path / "out.safetensors", "{NODIR}": tmp_path / "nodir" / "o.safetensors",
            "{FILEDIR}": tmp_path / "afile" / "o.safetensors"}
    args = [subs.get(a, a) for a in args]
    r = cli(*args)
    shown = {"{NODIR}": subs["{NODIR}"], "{FILEDIR}": subs["{FILEDIR}"]}
    named = next((shown[a] for a in shown if subs[a] in args), path)
    assert_bad_input(r, named, *needles)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "in.safetensors"]  # no OUT, no temp file


def test_missing_input(tmp_path):
    missing = tmp_path / "nope.safetensors"
    for args in (["prune", missing, tmp_path / "o.safetensors", "--amount", "0.5"],
                 ["quantize", missing, tmp_path / "o.safetensors"], ["quantize-error", missing], ["verify", missing]):
        assert_bad_input(cli(*args), missing, "no such file")


def test_convert_a_whole_model_pickle_whose_class_is_gone(tmp_path):
    import subprocess
    import sys

    # the class lives only in a process that has exited: nothing can import it now
    code = ("import sys, torch\nfrom torch import nn\nfrom safetensors.torch import save_file\n"
            "class Net(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
            "        self.fc = nn.Linear(5, 3)\n        self.bn = nn.BatchNorm1d(3)\n        self.note = {'lr': 0.1}\n"
            "torch.manual_seed(0)\nnet = Net()\ntorch.save(net, sys.argv[1] + '/whole.pt')\n"
            "save_file({k: v.contiguous() for k, v in net.state_dict().items()}, sys.argv[1] + '/expected.safetensors')\n")
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True)
    r = cli("convert", tmp_path / "whole.pt", tmp_path / "out.safetensors", "--json")
    assert r.exit_code == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["tensors"] == 7 and report["out"] == str(tmp_path / "out.safetensors")
    got, expected = weightkit.open(tmp_path / "out.safetensors"), weightkit.open(tmp_path / "expected.safetensors")
    assert sorted(got.names) == sorted(expected.names)
    for name in expected.names:
        np.testing.assert_array_equal(got[name].numpy(), expected[name].numpy())
    assert cli("verify", tmp_path / "out.safetensors").exit_code == 0
    before = (tmp_path / "whole.pt").read_bytes()
    assert_bad_input(cli("convert", tmp_path / "whole.pt", tmp_path / "whole.pt"), tmp_path / "whole.pt",
                     "is the input file")
    assert (tmp_path / "whole.pt").read_bytes() == before

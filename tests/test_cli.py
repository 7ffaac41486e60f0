"""The ``weightkit`` command: ``summary`` and ``formats`` work, and every bad input ends with
exit status 2 and exactly one line on stderr that names the input, with no traceback (and,
for checkpoints that carry code, without running it)."""

import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from typer.testing import CliRunner

import weightkit
from weightkit.cli import app

ENV = {"COLUMNS": "200"}


def cli(*args):
    result = CliRunner().invoke(app, [str(a) for a in args], env=ENV)
    return result


def assert_one_line_error(result, *must_contain):
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception  # not an unexpected exception
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for text in must_contain:
        assert str(text) in lines[0], (text, lines[0])
    return lines[0]


# ---- summary ------------------------------------------------------------------------------


def test_summary_shows_layers_and_axes(small_net_file):
    path, state = small_net_file
    r = cli("summary", path)
    assert r.exit_code == 0, r.stderr
    out = r.stdout
    for layer in ("features.0", "features.1", "head"):
        assert layer in out
    # the axes of each tensor, in order, on its row
    assert "out_channels, in_channels/groups, kernel_h, kernel_w" in out
    assert "out_features, in_features" in out
    assert "num_features" in out
    assert "Conv2d" in out and "Linear" in out
    assert str(path) in out
    assert r.stderr == ""


def test_summary_json_matches_api(small_net_file):
    path, state = small_net_file
    r = cli("summary", path, "--json")
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)
    api = json.loads(json.dumps(weightkit.summary(path).to_dict(), default=str))
    assert data == api
    assert {"source", "tensors", "totals", "metadata"} <= set(data)
    assert [t["name"] for t in data["tensors"]] == list(state)
    conv = data["tensors"][0]
    assert conv["shape"] == [8, 3, 3, 3] and conv["axes"] == ["out_channels", "in_channels/groups",
                                                              "kernel_h", "kernel_w"]
    assert data["totals"]["parameters"] == sum(v.numel() for k, v in state.items()
                                               if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))


def test_summary_filter(small_net_file):
    path, state = small_net_file
    r = cli("summary", path, "--json", "--filter", "head.*")
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)
    assert [t["name"] for t in data["tensors"]] == ["head.weight", "head.bias"]
    assert data["totals"]["parameters"] == 8 * 4 + 4
    r = cli("summary", path, "-f", "*.running_*")
    assert r.exit_code == 0
    rows = [line.strip() for line in r.stdout.splitlines()]
    assert any(row.startswith("features.1") for row in rows)
    assert any(row.startswith("running_mean") for row in rows)
    assert not any(row.startswith(("head", "features.0")) for row in rows)


def test_summary_of_a_torch_checkpoint_and_a_directory(tmp_path, small_net):
    torch.save(small_net.state_dict(), tmp_path / "model.pt")
    r = cli("summary", tmp_path / "model.pt", "--json")
    assert r.exit_code == 0, r.stderr
    assert [t["name"] for t in json.loads(r.stdout)["tensors"]] == list(small_net.state_dict())
    r = cli("summary", tmp_path, "--json")  # the directory holding it
    assert r.exit_code == 0, r.stderr
    assert len(json.loads(r.stdout)["tensors"]) == len(small_net.state_dict())


def test_summary_forced_format(small_net_file):
    path, _ = small_net_file
    r = cli("summary", path, "--format", "safetensors", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["format"] == "safetensors"


def test_formats_json():
    r = cli("formats", "--json")
    assert r.exit_code == 0, r.stderr
    specs = json.loads(r.stdout)
    by_name = {s["name"]: s for s in specs}
    for name in ("safetensors", "torch", "npz", "npy"):
        assert name in by_name
        assert by_name[name]["kind"] == "file"
    assert ".safetensors" in by_name["safetensors"]["suffixes"]
    assert {".pt", ".pth", ".bin", ".ckpt"} <= set(by_name["torch"]["suffixes"])
    assert by_name["torch-module"]["kind"] == "live object"
    assert set(by_name) == set(weightkit.list_readers())
    r = cli("formats")
    assert r.exit_code == 0 and "safetensors" in r.stdout


# ---- bad inputs ---------------------------------------------------------------------------


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 2)


class Payload:
    """Pickles as ``open(marker, "w")``: loading it would create the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _safetensors_bytes(tmp_path):
    p = tmp_path / "ok.safetensors"
    save_file({"fc.weight": torch.randn(50, 50), "fc.bias": torch.randn(50)}, str(p))
    return p.read_bytes()


def make_missing(tmp_path):
    return tmp_path / "nope.safetensors"


def make_empty_dir(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    return d


def make_dir_without_weights(tmp_path):
    d = tmp_path / "docs"
    d.mkdir()
    (d / "README.md").write_text("# a model card\n")
    (d / "config.json").write_text("{}")
    return d


def make_random_bytes(tmp_path):
    p = tmp_path / "weights.dat"
    p.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return p


def make_random_bytes_bin(tmp_path):
    p = tmp_path / "pytorch_model.bin"
    p.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return p


def make_empty_file(tmp_path):
    p = tmp_path / "model.safetensors"
    p.write_bytes(b"")
    return p


def make_truncated_safetensors(tmp_path):
    data = _safetensors_bytes(tmp_path)
    p = tmp_path / "cut.safetensors"
    p.write_bytes(data[: len(data) // 2])
    return p


def make_garbage_header(tmp_path):
    header = b'{"fc.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]'  # unterminated
    p = tmp_path / "garbage.safetensors"
    p.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)
    return p


def make_header_past_end(tmp_path):
    p = tmp_path / "short.safetensors"
    p.write_bytes(struct.pack("<Q", 1000) + b'{"a": 1}')
    return p


def _raw_safetensors(tmp_path, name, header, data):
    h = json.dumps(header).encode()
    p = tmp_path / name
    p.write_bytes(struct.pack("<Q", len(h)) + h + data)
    return p


def make_overlapping_tensors(tmp_path):
    header = {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
              "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}
    return _raw_safetensors(tmp_path, "overlap.safetensors", header, b"\0" * 24)


def make_shape_size_mismatch(tmp_path):
    header = {"a": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 16]}}
    return _raw_safetensors(tmp_path, "mismatch.safetensors", header, b"\0" * 16)


def make_unknown_dtype(tmp_path):
    header = {"a": {"dtype": "Q7", "shape": [4], "data_offsets": [0, 16]}}
    return _raw_safetensors(tmp_path, "dtype.safetensors", header, b"\0" * 16)


def make_truncated_pt(tmp_path):
    p = tmp_path / "cut.pt"
    torch.save({"fc.weight": torch.randn(50, 50)}, p)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    return p


def make_truncated_legacy_pt(tmp_path):
    p = tmp_path / "cut_legacy.pt"
    torch.save({"fc.weight": torch.randn(50, 50)}, p, _use_new_zipfile_serialization=False)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    return p


def make_object_npy(tmp_path):
    p = tmp_path / "objects.npy"
    np.save(p, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    return p


def make_checkpoint_without_tensors(tmp_path):
    p = tmp_path / "meta.pt"
    torch.save({"epoch": 3, "loss": 0.1}, p)
    return p


BAD_INPUTS = [make_missing, make_empty_dir, make_dir_without_weights, make_random_bytes, make_random_bytes_bin,
              make_empty_file, make_truncated_safetensors, make_garbage_header, make_header_past_end,
              make_overlapping_tensors, make_shape_size_mismatch, make_unknown_dtype,
              make_truncated_pt, make_truncated_legacy_pt, make_object_npy, make_checkpoint_without_tensors]


@pytest.mark.parametrize("make", BAD_INPUTS, ids=[f.__name__.removeprefix("make_") for f in BAD_INPUTS])
def test_bad_input_is_one_line_exit_2(tmp_path, make):
    path = make(tmp_path)
    assert_one_line_error(cli("summary", path), path)
    with pytest.raises(weightkit.WeightkitError):
        weightkit.open(path)


def test_empty_file_message_says_empty(tmp_path):
    line = assert_one_line_error(cli("summary", make_empty_file(tmp_path)))
    assert "empty" in line


def test_truncated_safetensors_message_says_truncated(tmp_path):
    line = assert_one_line_error(cli("summary", make_truncated_safetensors(tmp_path)))
    assert "truncated" in line


def test_whole_module_pickle_opens_without_running_its_code(tmp_path):
    # torch.save(model) needs the model's class to unpickle; weightkit extracts the tensors with
    # inert stubs instead (restricted unpickler) and says so in the metadata
    path = tmp_path / "model.pt"
    net = Net()
    torch.save(net, path)
    ws = weightkit.open(path)
    assert ws.names == list(net.state_dict())
    for name, t in net.state_dict().items():
        np.testing.assert_array_equal(ws[name].numpy(), t.numpy())
    assert ws.metadata.get("needs_code")
    assert cli("summary", path).exit_code == 0


@pytest.mark.parametrize("zipfile_format", [True, False], ids=["zip", "legacy"])
def test_reduce_payload_is_never_run(tmp_path, zipfile_format):
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.pt"
    torch.save({"x": Payload(marker), "w": torch.zeros(2)}, path, _use_new_zipfile_serialization=zipfile_format)
    assert not marker.exists()
    line = assert_one_line_error(cli("summary", path), path)
    assert "needs code" in line
    with pytest.raises(weightkit.UnsafeCheckpointError):
        weightkit.open(path)
    assert not marker.exists(), "weightkit ran code from the checkpoint"


def test_plain_pickle_payload_is_never_run(tmp_path):
    import pickle

    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"x": Payload(marker)}, protocol=2))
    assert_one_line_error(cli("summary", path), path)
    assert not marker.exists(), "weightkit ran code from the pickle"


def test_filter_matching_nothing(small_net_file):
    path, _ = small_net_file
    line = assert_one_line_error(cli("summary", path, "--filter", "no_such_layer.*"), path)
    assert "no_such_layer" in line


def test_unknown_format_name(small_net_file):
    path, _ = small_net_file
    line = assert_one_line_error(cli("summary", path, "--format", "nosuch"))
    assert "nosuch" in line and "safetensors" in line  # names the bad value and the choices


def _pt(tmp_path):
    p = tmp_path / "model.pt"
    torch.save({"fc.weight": torch.randn(2, 2)}, p)
    return p


def _npz(tmp_path):
    p = tmp_path / "model.npz"
    np.savez(p, w=np.zeros(3))
    return p


def _npy(tmp_path):
    p = tmp_path / "w.npy"
    np.save(p, np.zeros(3))
    return p


def _dir(tmp_path):
    d = tmp_path / "shards"
    d.mkdir()
    save_file({"w": torch.zeros(3)}, str(d / "model.safetensors"))
    return d


@pytest.mark.parametrize("make, fmt", [
    pytest.param(_pt, "safetensors", id="pt-as-safetensors"),
    pytest.param(_npy, "directory", id="npy-as-directory"),
    pytest.param(_pt, "npy", id="pt-as-npy"),
    pytest.param(_pt, "npz", id="pt-as-npz"),
    pytest.param(_npz, "npy", id="npz-as-npy"),
    pytest.param(_npy, "npz", id="npy-as-npz"),
    pytest.param(_dir, "safetensors", id="dir-as-safetensors"),
    pytest.param(_dir, "torch-module", id="dir-as-torch-module"),
    pytest.param(_dir, "state-dict", id="dir-as-state-dict"),
    pytest.param(_pt, "torch-module", id="pt-as-torch-module"),
])
def test_forced_format_that_does_not_fit(tmp_path, make, fmt):
    path = make(tmp_path)
    assert_one_line_error(cli("summary", path, "--format", fmt), path)


def test_forced_live_object_format_on_a_file_says_why(tmp_path):
    path = _pt(tmp_path)
    line = assert_one_line_error(cli("summary", path, "--format", "torch-module"), path)
    assert "torch-module" in line
    assert not line.rstrip().endswith(":")


# ---- the real process ---------------------------------------------------------------------


def run(*args, **kw):
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=60, **kw)


def test_process_exit_codes(tmp_path, small_net_file):
    path, state = small_net_file
    ok = run("-m", "weightkit", "summary", path, "--json")
    assert ok.returncode == 0, ok.stderr
    assert [t["name"] for t in json.loads(ok.stdout)["tensors"]] == list(state)
    bad = run("-m", "weightkit", "summary", make_garbage_header(tmp_path))
    assert bad.returncode == 2
    assert bad.stdout == ""
    assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr
    assert "garbage.safetensors" in bad.stderr


def test_import_weightkit_does_not_import_keras(small_net_file):
    path, _ = small_net_file
    code = (
        "import sys, weightkit\n"
        "assert 'keras' not in sys.modules, 'import weightkit imported keras'\n"
        f"weightkit.summary({str(path)!r})\n"
        "assert 'keras' not in sys.modules, 'reading a safetensors file imported keras'\n"
        "import torch\n"
        "weightkit.summary(torch.nn.Linear(2, 2))\n"
        "assert 'keras' not in sys.modules, 'reading a torch module imported keras'\n"
        "print('ok')\n"
    )
    r = run("-c", code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


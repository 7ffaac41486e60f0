"""weightkit.scan on benign files (no false alarms), on files that need code, on mutated input
(never raises, never calls a truncated pickle safe), and the ``weightkit scan`` command."""

import argparse
import doctest
import io
import json
import mmap
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import weightkit.cli.scan  # noqa: F401  (registers the command on the shared app)
import weightkit.scanner as scan_module
from weightkit.cli._app import app
from weightkit.errors import SourceNotFoundError, WeightkitError
from weightkit.scanner import scan, scan_bytes
from weightkit.scanner._allowlist import judge


class TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3, 2)
        self.bn = torch.nn.BatchNorm1d(2)


def _trained():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    opts = {"adam": torch.optim.Adam(net.parameters(), lr=1e-3),
            "sgd": torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)}
    for opt in opts.values():
        net(torch.randn(5, 4)).sum().backward()
        opt.step()
    return net, opts


def _benign_torch(d: Path) -> dict[str, Path]:
    net, opts = _trained()
    objs = {
        "state_dict": net.state_dict(),
        "adam": opts["adam"].state_dict(),
        "sgd_momentum": opts["sgd"].state_dict(),
        "training_ckpt": {"epoch": np.int64(3), "loss": np.float64(0.25), "acc": np.float32(0.5),
                          "flag": np.bool_(True), "model": net.state_dict(), "opt": opts["adam"].state_dict(),
                          "history": [{"step": 1, "lr": (1e-3, 2e-3)}], "rng": torch.get_rng_state(),
                          "np_rng": np.random.get_state(), "arr": np.arange(4.0), "sizes": torch.Size([2, 3]),
                          "dev": torch.device("cpu"), "dtype": torch.bfloat16, "set": {1, 2}, "c": 1 + 2j},
        "half_bf16": {"h": torch.ones(3, dtype=torch.float16), "b": torch.ones(3, dtype=torch.bfloat16),
                      "i8": torch.ones(2, dtype=torch.int8), "view": torch.arange(10.0)[2:5]},
        "parameter": {"p": torch.nn.Parameter(torch.ones(2)), "frozen": torch.nn.Parameter(torch.ones(1), False)},
    }
    out = {}
    for name, obj in objs.items():
        out[name] = d / f"{name}.pt"
        torch.save(obj, out[name])
    out["legacy"] = d / "legacy.pt"
    torch.save(objs["training_ckpt"], out["legacy"], _use_new_zipfile_serialization=False)
    return out


@pytest.fixture(scope="module")
def benign(tmp_path_factory):
    d = tmp_path_factory.mktemp("benign")
    files = _benign_torch(d)
    from safetensors.torch import save_file

    files["safetensors"] = d / "m.safetensors"
    save_file({"a": torch.ones(2, 3), "b": torch.zeros(4, dtype=torch.bfloat16)}, str(files["safetensors"]))
    files["npz"] = d / "m.npz"
    np.savez(files["npz"], a=np.ones(3), b=np.arange(4))
    files["npy"] = d / "m.npy"
    np.save(files["npy"], np.ones((2, 2)))
    files["pickle_proto5"] = d / "m.pkl"
    files["pickle_proto5"].write_bytes(pickle.dumps({"w": [1.0, 2.0], "t": (1, "x"), "b": b"raw"}, protocol=5))
    return files


def test_benign_torch_and_friends_are_safe(benign):
    bad = {name: scan(p).to_dict() for name, p in benign.items() if scan(p).verdict != "safe"}
    assert bad == {}
    assert scan(benign["legacy"]).format == "torch-legacy"
    r = scan(benign["training_ckpt"])
    assert {"numpy._core.multiarray.scalar", "_codecs.encode", "torch._utils._rebuild_tensor_v2"} <= set(r.globals) \
        or {"numpy.core.multiarray.scalar", "_codecs.encode"} <= set(r.globals)


def test_benign_keras_files_are_safe(tmp_path):
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    pytest.importorskip("h5py")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="relu"),
                              keras.layers.BatchNormalization(), keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss="mse")
    model.save(tmp_path / "m.keras")
    model.save_weights(tmp_path / "m.weights.h5")
    model.save(tmp_path / "legacy.h5")  # legacy full-model HDF5: model_config + training_config attributes
    for name in ("m.keras", "m.weights.h5", "legacy.h5"):
        r = scan(tmp_path / name)
        assert r.verdict == "safe", r.to_dict()
    assert scan(tmp_path / "m.keras").format == "keras"


def test_whole_model_needs_code_naming_the_class(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(TinyNet(), path)
    r = scan(path)
    assert r.verdict == "needs-code"
    assert f"{TinyNet.__module__}.TinyNet" in r.needs_code
    assert "torch.nn.modules.linear.Linear" in r.needs_code
    assert any(f.message == f"needs code: {TinyNet.__module__}.TinyNet (BUILD, NEWOBJ)" for f in r.findings)
    legacy = tmp_path / "model_legacy.pt"
    torch.save(TinyNet(), legacy, _use_new_zipfile_serialization=False)
    assert scan(legacy).verdict == "needs-code"


def test_namespace_needs_code_and_allow(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save({"args": argparse.Namespace(lr=0.1), "w": torch.ones(2)}, path)
    assert scan(path).verdict == "needs-code"
    assert scan(path).needs_code == ["argparse.Namespace"]
    allowed = scan(path, allow=["argparse.Namespace"])
    assert allowed.verdict == "safe" and allowed.findings[0].rule == "user-allowed"
    with pytest.raises(WeightkitError):
        scan(path, allow=["argparse"])  # must be an exact module.Name


def test_critical_gadgets_cannot_be_allowed():
    assert judge("os", "system", frozenset({"os.system"}))[0] == "critical"
    assert judge("builtins", "getattr", frozenset({"builtins.getattr"}))[0] == "critical"
    assert judge("__main__", "Net", frozenset({"__main__.Net"}))[0] == "user-allowed"


@pytest.mark.parametrize("module,name,status", [
    ("torch._utils", "_rebuild_tensor_v2", "allowed"), ("torch", "bfloat16", "allowed"),
    ("torch", "_utils._rebuild_tensor_v2", "critical"),  # not the exact spelling torch writes
    ("builtins", "eval.__call__", "critical"), ("os", "system.__call__", "critical"),
    ("torch", "os.system", "critical"), ("torch", "os", "critical"), ("pathlib", "Path.write_text", "critical"),
    ("numpy.testing._private.utils", "runstring", "critical"), ("collections", "namedtuple", "critical"),
    ("torch.serialization", "_get_layout", "allowed"), ("torch.serialization", "load", "critical"),
    ("datetime", "datetime", "needs-code"), ("my_project.config", "Cfg", "needs-code"),
    ("my_project.models", "Outer.Inner", "needs-code"), ("torch.fx.graph_module", "reduce_graph_module", "critical"),
])
def test_judge(module, name, status):
    assert judge(module, name)[0] == status


def test_missing_path_raises():
    with pytest.raises(SourceNotFoundError):
        scan("/nonexistent/model.pt")


class _CountingMMap(mmap.mmap):
    """Counts the bytes the scanner slices out of the mapped file."""

    touched = 0

    def __getitem__(self, key):
        out = super().__getitem__(key)
        _CountingMMap.touched += len(out) if isinstance(out, bytes) else 1
        return out


@pytest.mark.parametrize("legacy", [False, True])
def test_scan_cost_does_not_grow_with_tensor_bytes(tmp_path, monkeypatch, legacy):
    path = tmp_path / "big.pt"
    torch.save({f"w{i}": torch.ones(1024, 1024) for i in range(16)}, path,  # 64 MiB
               _use_new_zipfile_serialization=not legacy)
    monkeypatch.setattr(mmap, "mmap", _CountingMMap)
    _CountingMMap.touched = 0
    assert scan(path).verdict == "safe"
    assert 0 < _CountingMMap.touched < 256 * 1024  # the pickles and a zip-end probe, of a 64 MiB file


def test_module_doctests_and_entry_points(tmp_path):
    import weightkit

    for mod in (scan_module, __import__("weightkit.scanner._allowlist", fromlist=["x"])):
        assert doctest.testmod(mod, optionflags=doctest.ELLIPSIS).failed == 0
    path = tmp_path / "sd.pt"
    torch.save({"w": torch.ones(1)}, path)
    # weightkit.scan is the package and callable; scan_file is the name for loaders to use
    assert weightkit.scan(path).verdict == weightkit.scanner.scan_file(path).verdict == "safe"
    assert "scan" in weightkit.__all__ and weightkit.ScanReport is scan_module.ScanReport


# ---- mutated input --------------------------------------------------------------------------
def _benign_blobs():
    buf = io.BytesIO()
    torch.save({"w": torch.ones(2, 2), "n": np.float64(1.0), "s": "x"}, buf)
    zbytes = buf.getvalue()
    with zipfile.ZipFile(io.BytesIO(zbytes)) as zf:
        pkl = zf.read(next(n for n in zf.namelist() if n.endswith("data.pkl")))
    buf = io.BytesIO()
    torch.save({"w": torch.ones(2)}, buf, _use_new_zipfile_serialization=False)
    p4 = pickle.dumps({"a": [1, 2.5, "s", b"b", (None, True)], "n": {"x": 1}}, protocol=4)
    return {"zip": zbytes, "pkl": pkl, "legacy": buf.getvalue(), "p4": p4}


BLOBS = _benign_blobs()


@settings(max_examples=120, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(sorted(BLOBS)), flips=st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 7)),
                                                          max_size=4), cut=st.one_of(st.none(), st.integers(0, 1 << 20)))
def test_mutations_never_raise(kind, flips, cut):
    data = bytearray(BLOBS[kind])
    for pos, bit in flips:
        data[pos % len(data)] ^= 1 << bit
    if cut is not None:
        data = data[: cut % len(data)]
    r = scan_bytes(bytes(data))
    assert r.verdict in ("safe", "needs-code", "unreadable", "malicious")
    json.dumps(r.to_dict())


@settings(max_examples=60, deadline=2000)
@given(kind=st.sampled_from(["pkl", "p4", "legacy"]), data=st.data())
def test_truncated_pickles_are_never_safe(kind, data):
    blob = BLOBS[kind]
    cut = data.draw(st.integers(1, len(blob) - 1))
    if kind == "legacy":
        cut = min(cut, len(blob) - 200)  # inside the pickles, not the raw storage bytes after them
    assert scan_bytes(blob[:cut]).verdict != "safe"


# ---- CLI ------------------------------------------------------------------------------------
@pytest.fixture
def cli_files(tmp_path):
    good, ns = tmp_path / "good.pt", tmp_path / "ns.pt"
    torch.save({"w": torch.ones(2)}, good)
    torch.save({"args": argparse.Namespace(a=1)}, ns)
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(b"cos\nsystem\n(S'touch " + str(tmp_path / "MARKER").encode() + b"'\ntR.")
    return good, ns, evil


def _run(*args):
    return CliRunner().invoke(app, ["scan", *map(str, args)])


def test_cli_exit_codes(cli_files, tmp_path):
    good, ns, evil = cli_files
    r = _run(good)
    assert r.exit_code == 0 and "safe" in r.output
    r = _run(good, evil)
    assert r.exit_code == 1 and "malicious" in r.output and "os.system" in r.output
    assert _run(ns).exit_code == 1
    r = _run(good, tmp_path / "missing.pt")
    assert r.exit_code == 2 and "missing.pt" in r.output and "no such file" in r.output
    assert not (tmp_path / "MARKER").exists()


def test_cli_json_and_allow(cli_files):
    good, ns, evil = cli_files
    r = _run(good, ns, evil, "--json")
    data = json.loads(r.output)
    assert r.exit_code == 1 and [d["verdict"] for d in data] == ["safe", "needs-code", "malicious"]
    crit = data[2]["findings"][0]
    assert crit["severity"] == "critical" and crit["global"] == "os.system" and crit["ops"] == ["REDUCE"]
    assert _run(ns, "--allow", "argparse.Namespace").exit_code == 0
    assert _run(evil, "--allow", "os.system").exit_code == 1  # gadgets cannot be allowed
    assert _run(ns, "--allow", "not a name").exit_code == 2


def test_a_shard_index_is_judged_by_the_shards_it_lists(tmp_path):
    from safetensors.torch import save_file

    from _malicious import evil_p2, torch_zip

    save_file({"a": torch.zeros(2)}, str(tmp_path / "model-00001-of-00002.safetensors"))
    (tmp_path / "model-00002-of-00002.bin").write_bytes(torch_zip(evil_p2(str(tmp_path / "marker"))))
    index = {"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.bin"}}
    (tmp_path / "model.index.json").write_text(json.dumps(index))
    report = scan(tmp_path / "model.index.json")
    assert report.verdict == "malicious" and not (tmp_path / "marker").exists()
    assert any(f.member and f.member.startswith("model-00002-of-00002.bin") for f in report.findings if f.severity == "critical")
    index["weight_map"]["b"] = "model-00001-of-00002.safetensors"
    (tmp_path / "model.index.json").write_text(json.dumps(index))
    assert scan(tmp_path / "model.index.json").verdict == "safe"
    index["weight_map"]["b"] = "/etc/passwd"
    (tmp_path / "model.index.json").write_text(json.dumps(index))
    assert scan(tmp_path / "model.index.json").verdict == "unreadable"


def test_a_torchscript_archive_needs_code_and_is_not_malicious(tmp_path):
    """A `torch.jit.save` file: its pickles name TorchScript classes and the TorchScript pickler's
    list rebuilders (which return their argument); loading it runs its TorchScript code, so it
    needs code, but nothing in it is a gadget. `torch.jit.load` itself stays critical."""
    from weightkit.scanner._allowlist import judge

    path = tmp_path / "m.jit"
    torch.jit.save(torch.jit.script(torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU())), str(path))
    report = weightkit.scan(path)
    assert report.verdict == "needs-code", [(f.rule, f.global_name) for f in report.findings]
    assert judge("torch.jit", "load")[0] == "critical"
    assert judge("torch.jit._pickle", "build_intlist.__call__")[0] == "critical"

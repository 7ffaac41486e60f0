"""Loading goes through the scanner, and files that need code are read by the restricted
unpickler: whole pickled models are listed, measured and converted without their classes being
importable, and nothing from the file is imported or run."""

import argparse
import io
import json
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import weightkit
from weightkit.errors import CorruptFileError, UnsafeCheckpointError
from weightkit.sources._restricted import RestrictedUnpickler, Stub, unpickle

MODEL_SRC = textwrap.dedent("""
    import torch
    from torch import nn

    class Config:
        def __init__(self, depth):
            self.depth = depth

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, groups=1)
            self.bn = nn.BatchNorm2d(4)
            self.register_buffer("scratch", torch.ones(2), persistent=False)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = Block()
            self.emb = nn.Embedding(10, 4)
            self.lstm = nn.LSTM(4, 5, num_layers=2, bidirectional=True)
            self.head = nn.Linear(4, 10, bias=False)
            self.head.weight = self.emb.weight  # tied
            self.scale = nn.Parameter(torch.ones(3))
            self.seq = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2).to(torch.bfloat16))
            self.attn = nn.MultiheadAttention(4, 2)
            self.missing = None
""")

SAVE = textwrap.dedent("""
    import argparse, sys, torch
    sys.path.insert(0, sys.argv[1])
    import wk_hidden_model as m
    torch.manual_seed(0)
    net = m.Net()
    net.block.bn(torch.randn(2, 4, 3, 3))  # running statistics move
    net.block.conv.weight.requires_grad_(False)
    d = sys.argv[1]
    torch.save(net, f"{d}/whole.pt")
    torch.save(net, f"{d}/whole_legacy.pt", _use_new_zipfile_serialization=False)
    torch.save({"model": net, "args": argparse.Namespace(lr=0.1), "cfg": m.Config(3), "epoch": 7}, f"{d}/ckpt.pt")
    torch.save(net.state_dict(), f"{d}/reference.pt")
""")

CHECK = textwrap.dedent("""
    import json, sys, torch, weightkit
    from safetensors.torch import load_file
    d = sys.argv[1]
    try:
        import wk_hidden_model
        sys.exit("the model's module is importable")
    except ImportError:
        pass
    ref = torch.load(f"{d}/reference.pt", weights_only=True)
    out = {}
    for name in ("whole.pt", "whole_legacy.pt", "ckpt.pt"):
        ws = weightkit.open(f"{d}/{name}")
        listed = {n for w in ws for n in (w.name, *w.shared_with)}
        assert listed == set(ref), (name, listed ^ set(ref))
        assert ws.names == [n for n in ref if n in ws.names], name  # state_dict order
        for w in ws:
            for n in (w.name, *w.shared_with):
                assert w.shape == tuple(ref[n].shape) and w.dtype == str(ref[n].dtype).removeprefix("torch."), n
                assert torch.equal(w.torch(), ref[n]), n
        report = weightkit.stats(ws)
        assert len(report.tensors) == len(ws)
        weightkit.save(ws, f"{d}/{name}.safetensors")
        saved = load_file(f"{d}/{name}.safetensors")
        assert all(torch.equal(saved[k], ref[k]) for k in saved) and set(saved) <= set(ref)
        kinds = {w.name: [w.kind, w.kind_from, list(w.axes), w.trainable, w.is_buffer] for w in ws}
        out[name] = {"kinds": kinds, "metadata": ws.metadata}
    out["imported"] = sorted(m for m in sys.modules if "wk_hidden" in m)
    print(json.dumps(out, default=str))
""")


@pytest.fixture(scope="module")
def hidden_model(tmp_path_factory):
    """Files saved from a model whose module is deleted afterwards: ``(dir, result of CHECK)``."""
    d = tmp_path_factory.mktemp("hidden")
    (d / "wk_hidden_model.py").write_text(MODEL_SRC)
    subprocess.run([sys.executable, "-c", SAVE, str(d)], check=True, capture_output=True, timeout=120)
    (d / "wk_hidden_model.py").unlink()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-c", CHECK, str(d)], capture_output=True, text=True, timeout=180,
                       cwd=d.parent, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return d, json.loads(r.stdout.strip().splitlines()[-1])


def test_whole_model_weights_without_its_class(hidden_model):
    _, out = hidden_model
    assert out["imported"] == []
    for name in ("whole.pt", "whole_legacy.pt"):
        kinds, meta = out[name]["kinds"], out[name]["metadata"]
        assert kinds["block.conv.weight"] == ["Conv2d", "module", ["out_channels", "in_channels/groups", "kernel_h",
                                                                   "kernel_w"], False, False]
        assert kinds["block.bn.running_mean"][:2] == ["BatchNorm2d", "module"] and kinds["block.bn.running_mean"][4]
        assert kinds["lstm.weight_ih_l1_reverse"][:3] == ["LSTM", "module", ["4*hidden (i,f,g,o)",
                                                                              "2*hidden (fwd,bwd of layer 0)"]]
        assert kinds["attn.out_proj.weight"][0] == "Linear"  # NonDynamicallyQuantizableLinear
        assert kinds["scale"][:2] == ["Net", "module"]
        assert "block.scratch" not in kinds  # not persistent: not in state_dict()
        assert meta["class"] == "wk_hidden_model.Net"
        assert meta["loaded_with"] == "restricted unpickler (nothing executed)"
        assert {"wk_hidden_model.Net", "wk_hidden_model.Block", "torch.nn.modules.rnn.LSTM"} <= set(meta["needs_code"])


def test_checkpoint_with_config_objects_keeps_them_as_metadata(hidden_model):
    _, out = hidden_model
    meta = out["ckpt.pt"]["metadata"]
    assert meta["weights_from"] == "model" and meta["epoch"] == 7
    assert meta["args"] == {"needs_code": "argparse.Namespace", "state": {"lr": 0.1}}
    assert meta["cfg"] == {"needs_code": "wk_hidden_model.Config", "state": {"depth": 3}}
    assert {"argparse.Namespace", "wk_hidden_model.Config"} <= set(meta["needs_code"])


def test_summary_cli_shows_kinds_of_a_whole_model(hidden_model):
    d, _ = hidden_model
    r = subprocess.run([sys.executable, "-m", "weightkit", "summary", str(d / "whole.pt"), "--json"],
                       capture_output=True, text=True, timeout=120, cwd=d.parent)
    assert r.returncode == 0, r.stderr
    assert '"Conv2d"' in r.stdout and '"LSTM"' in r.stdout


# ---- the unpickler itself -------------------------------------------------------------------
def test_nothing_named_by_the_file_is_imported(tmp_path):
    """A needs-code global whose module would run code on import stays a stub."""
    marker = tmp_path / "IMPORTED"
    (tmp_path / "wk_side_effect.py").write_text(f"open({str(marker)!r}, 'w').close()\nclass Thing: pass\n")
    sys.path.insert(0, str(tmp_path))  # importable, so only the unpickler's restraint keeps it out
    try:
        data = b"\x80\x02cwk_side_effect\nThing\n)\x81}X\x01\x00\x00\x00aK\x01sb."
        obj = unpickle(io.BytesIO(data), "x")
    finally:
        sys.path.remove(str(tmp_path))
    assert isinstance(obj, Stub) and obj.qualname == "wk_side_effect.Thing" and obj.state == {"a": 1}
    assert type(obj).__module__ == "weightkit.sources._restricted"
    assert not marker.exists() and "wk_side_effect" not in sys.modules


def test_unpickler_refuses_gadgets_by_itself(tmp_path):
    marker = tmp_path / "MARKER"
    data = b"\x80\x02cos\nsystem\nX" + len(f"touch {marker}").to_bytes(4, "little") + f"touch {marker}".encode() + b"\x85R."
    with pytest.raises(UnsafeCheckpointError, match="os.system"):
        RestrictedUnpickler(io.BytesIO(data), "evil").load()
    for module, name in (("builtins", "eval"), ("__builtin__", "exec"), ("pathlib", "os.system"),
                         ("torch", "load"), ("importlib", "import_module")):
        blob = b"c" + module.encode() + b"\n" + name.encode() + b"\n."
        with pytest.raises(UnsafeCheckpointError):
            RestrictedUnpickler(io.BytesIO(blob), "evil").load()
    assert not marker.exists()


def test_build_never_sets_attributes_on_a_class():
    data = b"\x80\x02cargparse\nNamespace\nq\x00)\x81}X\x04\x00\x00\x00evilK\x01sb."
    obj = unpickle(io.BytesIO(data), "x")
    assert obj.state == {"evil": 1} and not hasattr(argparse.Namespace, "evil")
    assert type(obj).__name__ == "Namespace" and type(obj) is not argparse.Namespace


# ---- the loading path -----------------------------------------------------------------------
def test_malicious_checkpoint_is_refused_with_the_scanners_reason(tmp_path):
    path = tmp_path / "evil.pt"
    path.write_bytes(b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00true\x85R.")
    with pytest.raises(UnsafeCheckpointError) as e:
        weightkit.open(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: refused: the pickle calls os.system (critical)") and "\n" not in msg
    assert f"weightkit scan {path}" in msg


def test_truncated_checkpoint_is_refused_as_unreadable(tmp_path):
    path = tmp_path / "cut.pt"
    torch.save({"w": torch.ones(4)}, path, _use_new_zipfile_serialization=False)
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(CorruptFileError, match="refused: .*truncated"):
        weightkit.open(path)


def test_safe_files_load_with_torch_or_the_restricted_unpickler(tmp_path):
    path = tmp_path / "sd.pt"
    torch.save({"fc.weight": torch.ones(2, 2)}, path)
    assert "loaded_with" not in weightkit.open(path).metadata  # torch.load(weights_only=True)
    # safe to the scanner, refused by torch's own unpickler (numpy, range): read restricted
    other = tmp_path / "ckpt.pt"
    torch.save({"model": {"fc.weight": torch.ones(2, 2)}, "epoch": np.int64(3), "loss": np.float64(0.5),
                "arr": np.arange(3.0), "steps": range(3)}, other)
    ws = weightkit.open(other)
    assert ws.names == ["fc.weight"] and "needs_code" not in ws.metadata
    assert ws.metadata["loaded_with"].startswith("restricted") and ws.metadata["epoch"] == 3
    assert ws.metadata["steps"] == "range(0, 3)" and ws.metadata["loss"] == 0.5


def test_numpy_values_rebuild_like_pickle():
    obj = {"be": np.arange(4, dtype=">i4"), "str": np.array(["x", "yy"]), "bytes": np.array([b"ab"]),
           "f64": np.float64(2.5), "objects": np.array([1, None], dtype=object), "bool": np.bool_(True),
           "fortran": np.arange(6.0).reshape(2, 3).T, "f16": np.float16(1.5), "c64": np.complex64(1 + 2j),
           "empty": np.zeros((0, 3)), "rng": np.random.get_state()}
    for proto in (2, 4, 5):
        data = pickle.dumps(obj, protocol=proto)
        ref, out = pickle.loads(data), unpickle(io.BytesIO(data), "x")
        for k in obj:
            a, b = (ref[k][1], out[k][1]) if k == "rng" else (ref[k], out[k])
            assert type(a) is type(b) and np.asarray(a).dtype == np.asarray(b).dtype, k
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
            assert np.asarray(a).flags.f_contiguous == np.asarray(b).flags.f_contiguous, k


def test_numpy_state_is_checked_before_numpy_sees_it():
    """numpy's dtype.__setstate__ segfaults on a 6-item state (found by fuzzing); flags from a
    file would make numpy read floats as object pointers."""
    dtype = b"\x80\x02cnumpy\ndtype\nX\x02\x00\x00\x00f4\x89\x88\x87R"
    for state in (b"(K\x03X\x01\x00\x00\x00<NJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb.",  # 6 items
                  b"(K\x03X\x01\x00\x00\x00<NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK?tb."):  # object flags
        out = unpickle(io.BytesIO(dtype + state), "x") if state.endswith(b"K?tb.") else None
        if out is not None:  # rebuilt with float32's own flags, not the file's
            assert out == np.dtype("f4") and not out.hasobject
        else:
            with pytest.raises(CorruptFileError, match="numpy dtype state"):
                unpickle(io.BytesIO(dtype + state), "x")
    shared = b"\x80\x02cnumpy\ndtype\nX\x02\x00\x00\x00f4\x89\x89\x87R"  # copy=False: numpy's own float32
    swapped = unpickle(io.BytesIO(shared + b"(K\x03X\x01\x00\x00\x00>NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb."), "x")
    assert swapped.byteorder == ">" and np.dtype("f4").byteorder == "="  # a copy was changed, not numpy's
    with pytest.raises(CorruptFileError, match="not a number"):  # structured and void types are not rebuilt
        unpickle(io.BytesIO(b"\x80\x02cnumpy\ndtype\nX\x02\x00\x00\x00V8\x89\x88\x87R."), "x")


def test_raw_pickle_of_arrays(tmp_path):
    state = {"fc.weight": np.ones((2, 3), np.float32), "fc.bias": np.zeros(2, ">f8"), "step": 3}
    path = tmp_path / "weights.pkl"
    path.write_bytes(pickle.dumps(state, protocol=2))
    ws = weightkit.open(path)
    assert ws.format == "pickle" and ws.names == ["fc.weight", "fc.bias"] and ws["fc.weight"].kind == "Linear"
    np.testing.assert_array_equal(ws["fc.bias"].numpy(), state["fc.bias"])
    assert ws.metadata["step"] == 3 and ws.metadata["loaded_with"].startswith("restricted")

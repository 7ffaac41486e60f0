"""Saving (atomic, hashed, standard safetensors), loading into live models, verifying hashes, and
the atomic-write guarantee under SIGKILL."""

import importlib
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, load_model, save_file
from torch import nn

import weightkit
from weightkit import WeightkitError

save_module = importlib.import_module("weightkit.edits.save")


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4))


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.body = nn.Linear(4, 4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.emb.weight


def test_save_and_load_back_bit_exact(tmp_path):
    model = net()
    model(torch.randn(2, 3, 8, 8))  # BatchNorm statistics move
    path = weightkit.save(model, tmp_path / "m.safetensors")
    # a standard safetensors file
    loaded = load_file(str(path))
    assert set(loaded) == set(model.state_dict())
    for k, v in model.state_dict().items():
        assert torch.equal(loaded[k], v) and loaded[k].dtype == v.dtype, k
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["weightkit.framework"] == "pytorch" and meta["format"] == "pt"
    assert meta["weightkit.version"] == weightkit.__version__
    assert "Sequential" in meta["weightkit.source"]
    hashes = json.loads(meta["weightkit.sha256"])
    assert set(hashes) == set(loaded) and all(len(h) == 64 for h in hashes.values())
    # back into a fresh model, in place
    fresh = net()
    nn.init.zeros_(fresh[0].weight)
    param = fresh[0].weight
    report = weightkit.load_into(fresh, path)
    assert report.ok and sorted(report.loaded) == sorted(model.state_dict())
    assert fresh[0].weight is param  # the same Parameter object
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k


def test_bfloat16_and_metadata(tmp_path):
    state = {"a.weight": torch.randn(4, 4).to(torch.bfloat16), "a.step": torch.tensor(3)}
    path = weightkit.save(state, tmp_path / "s.safetensors", metadata={"epoch": "3"})
    loaded = load_file(str(path))
    assert torch.equal(loaded["a.weight"], state["a.weight"]) and torch.equal(loaded["a.step"], state["a.step"])
    assert weightkit.open(path).metadata["epoch"] == "3"
    with pytest.raises(WeightkitError, match="strings"):
        weightkit.save(state, tmp_path / "t.safetensors", metadata={"epoch": 3})
    assert not (tmp_path / "t.safetensors").exists()


def test_tied_weights_are_stored_once_like_save_model(tmp_path):
    model = Tied()
    path = weightkit.save(model, tmp_path / "tied.safetensors")
    with safe_open(str(path), "pt") as f:
        keys, meta = set(f.keys()), f.metadata()
    assert keys == {"emb.weight", "body.weight", "body.bias"}
    assert meta["head.weight"] == "emb.weight"  # the alias record of safetensors.torch.save_model
    ws = weightkit.open(path)
    assert ws["emb.weight"].shared_with == ("head.weight",) and "head.weight" in ws
    other = Tied()
    load_model(other, str(path))  # safetensors' own loader understands it
    assert torch.equal(other.head.weight, model.emb.weight)
    third = Tied()
    assert weightkit.load_into(third, path).ok
    assert torch.equal(third.head.weight, model.emb.weight) and third.head.weight is third.emb.weight


def test_save_streams_any_source(tmp_path):
    model = net()
    torch.save(model.state_dict(), tmp_path / "m.pt")
    a = weightkit.save(tmp_path / "m.pt", tmp_path / "from_pt.safetensors")
    b = weightkit.save({k: v.numpy() for k, v in model.state_dict().items()}, tmp_path / "from_np.safetensors")
    c = weightkit.save(weightkit.open(model), tmp_path / "from_ws.safetensors")
    for p in (a, b, c):
        loaded = load_file(str(p))
        assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())
        assert weightkit.verify(p).ok
    assert load_file(str(a)).keys() == model.state_dict().keys()
    with safe_open(str(b), "np") as f:
        assert f.metadata()["weightkit.framework"] == "numpy"


def test_load_into_strict_lists_every_problem_and_changes_nothing(tmp_path):
    state = net().state_dict()
    state.pop("0.bias")  # missing
    state["extra.weight"] = torch.zeros(2)  # unexpected
    state["4.weight"] = torch.zeros(5, 288)  # shape mismatch
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "bad.safetensors"))
    model = net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(WeightkitError) as e:
        weightkit.load_into(model, tmp_path / "bad.safetensors")
    msg = str(e.value)
    assert "\n" not in msg
    for needle in ("0.bias", "extra.weight", "4.weight", "(4, 288)", "(5, 288)", "nothing loaded"):
        assert needle in msg, needle
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    report = weightkit.load_into(model, tmp_path / "bad.safetensors", strict=False)
    assert report.missing == ["0.bias"] and report.unexpected == ["extra.weight"]
    assert [m["name"] for m in report.shape_mismatches] == ["4.weight"]
    assert "0.weight" in report.loaded and torch.equal(model[0].weight, state["0.weight"])
    assert torch.equal(model[0].bias, before["0.bias"]) and torch.equal(model[4].weight, before["4.weight"])
    json.dumps(report.to_dict())


def test_load_into_keeps_the_optimizer_working(tmp_path):
    src = net()
    path = weightkit.save(src, tmp_path / "m.safetensors")
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    weightkit.load_into(model, path)
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    opt.step()
    assert not torch.equal(model[4].weight, src[4].weight)  # the optimizer updated the loaded tensor


def test_load_into_casts_dtypes_and_refuses_lossy_ones(tmp_path):
    model = nn.Linear(3, 2)
    half = {k: v.to(torch.float16) for k, v in model.state_dict().items()}
    save_file(half, str(tmp_path / "h.safetensors"))
    r = weightkit.load_into(model, tmp_path / "h.safetensors")
    assert {c["name"] for c in r.cast} == {"weight", "bias"} and model.weight.dtype == torch.float32
    with pytest.raises(WeightkitError, match="needs a live"):
        weightkit.load_into({"weight": torch.zeros(2, 3)}, tmp_path / "h.safetensors")


def test_verify_detects_changed_bytes(tmp_path):
    path = weightkit.save(net(), tmp_path / "m.safetensors")
    r = weightkit.verify(path)
    assert r.ok and r.checked == len(net().state_dict()) and r.exit_code == 0
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # the last tensor's bytes
    path.write_bytes(bytes(data))
    r = weightkit.verify(path)
    assert not r.ok and len(r.mismatched) == 1 and r.exit_code == 1
    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(WeightkitError, match="no hashes recorded"):
        weightkit.verify(tmp_path / "plain.safetensors")
    torch.save({"w": torch.zeros(2)}, tmp_path / "x.pt")
    with pytest.raises(WeightkitError, match="not a safetensors file"):
        weightkit.verify(tmp_path / "x.pt")


def test_a_failed_write_leaves_the_destination_and_no_temp_file(tmp_path):
    dest = tmp_path / "m.safetensors"
    dest.write_bytes(b"old contents")

    def broken():
        yield np.zeros(4, np.float32)
        raise RuntimeError("disk on fire")

    entries = [save_module.Entry("a", "float32", (4,), lambda: [np.ones(4, np.float32)]),
               save_module.Entry("b", "float32", (8,), broken)]
    with pytest.raises(RuntimeError, match="disk on fire"):
        save_module.write_safetensors(dest, entries, {})
    assert dest.read_bytes() == b"old contents"
    assert os.listdir(tmp_path) == ["m.safetensors"]
    with pytest.raises(WeightkitError, match="does not exist"):
        weightkit.save(net(), tmp_path / "no" / "such" / "dir.safetensors")


WRITER = textwrap.dedent("""
    import sys, numpy as np, weightkit
    dest = sys.argv[1]
    rng = np.random.default_rng(0)
    state = {f"layer{i}.weight": rng.standard_normal((512, 1024), dtype=np.float32) for i in range(8)}  # 16 MB
    weightkit.save(state, dest + ".warm")  # imports and first write done before the signal
    print("ready", flush=True)
    version = 0
    while True:
        version += 1
        state["layer0.weight"][0, 0] = version
        weightkit.save(state, dest, metadata={"version": str(version)})
        print("saved", version, flush=True)
""")


def test_sigkill_never_leaves_a_half_written_file(tmp_path):
    """30 kills at random moments while a 16 MB checkpoint is rewritten in a loop: the
    destination is always the file as it was before the writer started (old) or the last
    version the writer completed (new), complete and with verifying hashes; never absent once
    written, never a mix."""
    dest = tmp_path / "ckpt.safetensors"
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    rng = random.Random(0)
    seen_versions, old = set(), None  # old: the destination's bytes before this writer ran
    mid_write = 0
    t0 = time.monotonic()
    for _ in range(30):
        proc = subprocess.Popen([sys.executable, str(script), str(dest)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.12))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # only whole lines: the kill can land while "saved N" is being printed
        lines = proc.stdout.read().split("\n")[:-1]
        done = [int(line.split()[1]) for line in lines if line.startswith("saved")]
        proc.stdout.close()
        if old is not None:
            assert dest.exists(), "a complete destination disappeared"
        if dest.exists():
            data = dest.read_bytes()
            report = weightkit.verify(dest)
            assert report.ok and report.checked == 8
            ws = weightkit.open(dest)
            version = int(ws.metadata["version"])
            assert ws["layer0.weight"].numpy()[0, 0] == version
            last = done[-1] if done else 0
            # old: untouched; new: the writer's last completed version, or the one it finished
            # just before the kill (replaced but not yet reported)
            assert data == old or version in (last, last + 1), (version, done)
            seen_versions.add(version)
            old = data
        leftovers = [p for p in tmp_path.iterdir() if p.name.endswith(".wktmp")]
        mid_write += bool(leftovers)
        for p in leftovers:  # a killed writer cannot remove its temporary file; it is never the destination
            p.unlink()
    assert time.monotonic() - t0 < 45
    assert seen_versions  # some kills landed after a complete write
    assert mid_write  # and some in the middle of one


def test_keras_save_and_load_into_a_fresh_instance(tmp_path):
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")

    def build(out=2):
        return keras.Sequential([keras.Input((4,)), keras.layers.Dense(8), keras.layers.Dense(out)])

    model = build()
    path = weightkit.save(model, tmp_path / "k.safetensors")
    assert weightkit.verify(path).ok
    assert weightkit.open(path).metadata["weightkit.framework"] == "keras"
    fresh = build()  # new auto-generated layer names: matched by the recorded order
    kernel = fresh.layers[0].kernel
    report = weightkit.load_into(fresh, path)
    assert report.ok and len(report.loaded) == 4 and fresh.layers[0].kernel is kernel
    x = np.random.default_rng(0).random((3, 4), dtype=np.float32)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(fresh(x)), keras.ops.convert_to_numpy(model(x)))
    wrong = build(out=3)
    with pytest.raises(WeightkitError, match="shape mismatches"):
        weightkit.load_into(wrong, path)
    with pytest.raises(WeightkitError, match="torch only"):
        weightkit.prune(model, 0.5)


def test_load_into_and_set_weights_share_one_dtype_rule(tmp_path):
    """A float32 file into a float16 model loses digits: refused by both write paths, with the same
    reason and nothing written; allow_cast=True rounds, in both."""
    src = nn.Linear(3, 2)
    with torch.no_grad():
        src.weight[0, 0] = 1.0 + 2.0 ** -20  # not a float16 value
    path = weightkit.save(src, tmp_path / "f32.safetensors")
    model = nn.Linear(3, 2).half()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(WeightkitError) as loading:
        weightkit.load_into(model, path)
    with pytest.raises(WeightkitError) as setting:
        weightkit.set_weights(model, {k: v.detach() for k, v in src.state_dict().items()})
    for e in (loading, setting):
        msg = str(e.value)
        assert "nothing was written" in msg and "float32 but the weight is float16" in msg and "allow_cast=True" in msg
        assert "\n" not in msg
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    report = weightkit.load_into(model, path, allow_cast=True)
    assert {c["name"] for c in report.cast} == {"weight", "bias"} and model.weight.dtype == torch.float16
    assert torch.equal(model.weight, src.weight.detach().half())


def test_load_into_takes_a_checkpoint_as_it_is_unless_told_otherwise(tmp_path):
    src = nn.Linear(3, 2)
    with torch.no_grad():
        src.bias[1] = float("inf")
    path = weightkit.save(src, tmp_path / "inf.safetensors")
    model = nn.Linear(3, 2)
    with pytest.raises(WeightkitError, match="NaN/Inf"):
        weightkit.load_into(model, path, allow_nonfinite=False)
    assert torch.isfinite(model.bias).all()
    weightkit.load_into(model, path)
    assert torch.isinf(model.bias[1])

"""Non-zip files that are not single weight files, and what readers must never read through
(issue 15): HDF5 objects that read outside the file, Keras model directories, special files, and
the two views of the polyglots in tests/_malicious_files.py. Each attack is built here and
proven with the real library (h5py reads the canary, Keras runs the Lambda, tarfile and
safetensors both accept the same bytes) before weightkit is shown to refuse or flag it."""

import io
import json
import os
import subprocess
import sys
import tarfile
import textwrap
import zipfile

import h5py
import numpy as np
import pytest

import _malicious  # noqa: F401  (defines the helpers _malicious_files imports)
import weightkit
from _malicious import lambda_code
from _malicious_files import _safetensors_tar, h5_bytes, keras_weights
from weightkit.errors import CorruptFileError, UnsafeCheckpointError, WeightkitError

CANARY = b"CANARY-passwd-root:x:0:0:secret"
RUN = [sys.executable, "-m", "weightkit"]


def _env():
    return {**os.environ, "KERAS_BACKEND": "torch", "PYTHONPATH": os.pathsep.join(sys.path)}


def _weights(path, **dataset):
    path.write_bytes(h5_bytes(lambda f: keras_weights(f, **dataset)))
    return path


# ---- HDF5 objects that read outside the file ------------------------------------------------
def test_external_storage_is_read_by_h5py_and_refused_by_weightkit(tmp_path):
    canary = tmp_path / "passwd"
    canary.write_bytes(CANARY[:16])
    path = _weights(tmp_path / "ext.weights.h5", external=[(str(canary), 0, 16)])
    with h5py.File(path, "r") as f:  # the attack is real: h5py hands out the canary as the weights
        assert f["layers/dense/vars/0"][()].tobytes() == CANARY[:16]
    with pytest.raises(UnsafeCheckpointError, match=r"external storage 'layers/dense/vars/0' points at .*passwd"):
        weightkit.open(path)
    report = weightkit.scan(path)
    assert report.verdict == "malicious"
    assert [(f.rule, f.member) for f in report.findings] == [("hdf5-external", "layers/dense/vars/0")]
    out = tmp_path / "out.safetensors"
    r = subprocess.run([*RUN, "convert", str(path), str(out)], capture_output=True, text=True, timeout=60, env=_env())
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "external storage" in r.stderr, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ext.weights.h5", "passwd"]  # nothing written


def test_external_dev_zero_is_refused_at_once_without_allocating(tmp_path):
    """132 KB declaring 2.6 GB of /dev/zero made ``stats`` take 5.3 GB: now refused on open."""
    n = 650_000_000
    path = tmp_path / "zero.weights.h5"
    path.write_bytes(h5_bytes(lambda f: f.create_group("layers/dense/vars").create_dataset(
        "0", shape=(n,), dtype="float32", external=[("/dev/zero", 0, 4 * n)])))
    assert path.stat().st_size < 200_000
    code = textwrap.dedent(f"""
        import resource, sys, time, weightkit
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t = time.perf_counter()
        try:
            weightkit.stats({str(path)!r})
        except weightkit.WeightkitError as e:
            print(type(e).__name__, time.perf_counter() - t,
                  resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before, file=sys.stderr)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=_env())
    name, seconds, grown_kib = r.stderr.split()[-3:]
    assert name == "UnsafeCheckpointError" and float(seconds) < 1 and int(grown_kib) < 100_000, r.stderr


@pytest.mark.parametrize("what", ["environ", "virtual", "external-link", "reference", "soft-link-loop"])
def test_every_way_out_of_the_file_is_refused_and_flagged(tmp_path, what):
    path = tmp_path / "w.weights.h5"

    def fill(f):
        keras_weights(f, **({"external": [("/proc/self/environ", 0, 16)]} if what == "environ" else {}))
        g = f["layers/dense"]
        if what == "virtual":
            layout = h5py.VirtualLayout(shape=(4,), dtype="float32")
            layout[:] = h5py.VirtualSource(str(tmp_path / "other.h5"), "x", shape=(4,))
            g.create_group("extra/vars").create_virtual_dataset("0", layout)
        elif what == "external-link":
            g["extra"] = h5py.ExternalLink(str(tmp_path / "other.h5"), "/")
        elif what == "reference":
            g.create_group("extra/vars").create_dataset("0", data=[f["layers"].ref], dtype=h5py.ref_dtype)
        else:  # two soft links back to the root: a walk that follows links would never end
            g["a"], g["b"] = h5py.SoftLink("/"), h5py.SoftLink("/layers")

    path.write_bytes(h5_bytes(fill))
    with pytest.raises(UnsafeCheckpointError) as e:
        weightkit.open(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)
    rules = {f.rule for f in weightkit.scan(path).findings}
    assert rules == (set() if what == "soft-link-loop" else {"hdf5-external"}), rules


def test_a_link_flood_is_bounded(tmp_path, monkeypatch):
    from weightkit.formats import hdf5

    path = tmp_path / "many.weights.h5"
    path.write_bytes(h5_bytes(lambda f: [f.create_group(f"g{i}") for i in range(50)]))
    with h5py.File(path, "r") as f, pytest.raises(CorruptFileError, match="more than 10 HDF5 links"):
        hdf5.reaches_outside(f, limit=10)


# ---- polyglots: both views are real ---------------------------------------------------------
def test_safetensors_v7_tar_is_both(tmp_path):
    from safetensors.numpy import load

    data = _safetensors_tar(str(tmp_path / "never"))
    assert list(load(data)) == ["t"]  # the safetensors library accepts it
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:", format=tarfile.PAX_FORMAT) as tf:
        assert {"sys_info", "pickle", "storages", "tensors"} <= set(tf.getnames())  # and so does tarfile
    path = tmp_path / "model.safetensors"
    path.write_bytes(data)
    with pytest.raises(UnsafeCheckpointError, match="at once safetensors and torch-tar"):
        weightkit.open(path)


def test_benign_hdf5_user_block_and_keras_h5_stay_safe(tmp_path):
    plain = tmp_path / "ub.h5"
    plain.write_bytes(h5_bytes(lambda f: f.create_dataset("w", data=np.ones(3)), userblock=512))
    assert weightkit.scan(plain).verdict == "safe"
    path = _weights(tmp_path / "ok.weights.h5")
    assert weightkit.scan(path).verdict == "safe"
    with weightkit.open(path) as ws:  # the reader's walk accepts what Keras writes
        assert len(ws) == 1


# ---- Keras configs outside zips -------------------------------------------------------------
def _keras3_lambda_config(marker):
    return {"module": "keras", "class_name": "Sequential", "registered_name": None, "config": {"name": "s", "layers": [
        {"module": "keras.layers", "class_name": "InputLayer", "registered_name": None,
         "config": {"batch_shape": [None, 4], "name": "in"}},
        {"module": "keras.layers", "class_name": "Lambda", "registered_name": None, "config": {"name": "l", "function": {
            "class_name": "__lambda__", "config": {"code": lambda_code(marker), "defaults": None,
                                                   "closure": None}}}}]}}


def test_keras_model_directory_with_a_lambda(tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    full, bare = tmp_path / "full", tmp_path / "bare"
    for d in (full, bare):
        d.mkdir()
        (d / "config.json").write_text(json.dumps(_keras3_lambda_config(str(markers / d.name))))
    (full / "metadata.json").write_text('{"keras_version": "3.3.0"}')
    _weights(full / "model.weights.h5")
    # the payload is live: Keras 3 loads a directory holding config.json, and builds the Lambda
    code = "import sys, keras\nfor p in sys.argv[1:]:\n    try: keras.models.load_model(p, safe_mode=False)\n" \
           "    except Exception: pass\n"
    subprocess.run([sys.executable, "-c", code, str(full), str(bare)], capture_output=True, timeout=120, env=_env())
    assert sorted(p.name for p in markers.iterdir()) == ["bare", "full"]
    for p in markers.iterdir():
        p.unlink()
    for d in (full, bare):
        report = weightkit.scan(d)
        assert report.verdict == "malicious"
        assert any(f.rule == "keras-lambda" and f.member == "config.json" for f in report.findings)
    assert weightkit.scan(bare / "config.json").verdict == "malicious"
    with weightkit.open(full) as ws:  # weights are read, the config is parsed as JSON: nothing runs
        assert len(ws) == 1
    with pytest.raises(WeightkitError):
        weightkit.open(bare)
    assert list(markers.iterdir()) == []


def test_json_that_is_not_a_keras_config_is_not_a_finding(tmp_path):
    (tmp_path / "tokenizer.json").write_text("not json")
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertModel"], "hidden_size": 8}))
    report = weightkit.scan(tmp_path)
    assert report.verdict == "safe", report.to_dict()


# ---- special files --------------------------------------------------------------------------
def test_special_files_are_refused_before_they_are_opened(tmp_path):
    fifo = tmp_path / "model.pt"
    os.mkfifo(fifo)
    code = textwrap.dedent(f"""
        import weightkit
        for call in (weightkit.scan, weightkit.open, weightkit.summary):
            for p in ({str(fifo)!r}, "/dev/zero"):
                try:
                    call(p)
                    print("opened", p)
                except weightkit.WeightkitError as e:
                    print(type(e).__name__, str(e).count(chr(10)), "FIFO" in str(e) or "device" in str(e))
        r = weightkit.scan({str(tmp_path)!r})
        print(r.verdict, [(f.rule, f.member) for f in r.findings])
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=_env())
    lines = r.stdout.splitlines()
    assert lines[:6] == ["UnsupportedFormatError 0 True"] * 6, r.stdout + r.stderr
    assert lines[6] == "unreadable [('special-file', 'model.pt')]"
    for command in ("scan", "summary"):
        r = subprocess.run([*RUN, command, str(fifo)], capture_output=True, text=True, timeout=60, env=_env())
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and "FIFO" in r.stderr, r.stderr


def _link_tar(links) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for name, target in links:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tf.addfile(info)
    return buf.getvalue()


def test_tar_link_chains_are_walked_once_and_a_way_out_is_reported_at_its_link():
    import time

    chain = _link_tar([(f"l{i}", f"l{i + 1}") for i in range(20_000)])
    t = time.perf_counter()
    assert weightkit.scanner.scan_bytes(chain).verdict == "safe"  # links to nothing load nothing
    assert time.perf_counter() - t < 5
    r = weightkit.scanner.scan_bytes(_link_tar([("a", "b"), ("b", "/etc/passwd")]))
    assert r.verdict == "malicious" and [(f.rule, f.member) for f in r.findings] == [("tar-link", "b")]
    r = weightkit.scanner.scan_bytes(_link_tar([("storages", "a"), ("a", "../x")]))
    assert {f.member for f in r.findings if f.rule == "tar-link"} == {"storages", "a"}


@pytest.mark.parametrize("compress", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_the_weights_inside_a_keras_zip_are_checked_for_ways_out(tmp_path, compress):
    """A ``.keras`` file's ``model.weights.h5`` with external storage: the Keras reader refuses it,
    and the scanner flags it without reading the member's datasets (in place when stored)."""
    canary = tmp_path / "canary"
    canary.write_bytes(b"secret!!" * 2)
    weights = h5_bytes(lambda f: keras_weights(f, external=[(str(canary), 0, 16)]))
    path = tmp_path / "m.keras"
    with zipfile.ZipFile(path, "w", compression=compress) as zf:
        zf.writestr("metadata.json", b'{"keras_version": "3.3.0"}')
        zf.writestr("config.json", json.dumps({"module": "keras", "class_name": "Sequential", "config": {
            "name": "s", "layers": []}, "registered_name": None}))
        zf.writestr("model.weights.h5", weights)
    r = weightkit.scan(path)
    assert r.verdict == "malicious", r.to_dict()
    assert any(f.rule == "hdf5-external" and f.member.startswith("model.weights.h5") for f in r.findings)
    with pytest.raises(WeightkitError):
        weightkit.open(path)


@pytest.mark.parametrize("container", ["tar", "zip"])
def test_raw_arrays_named_like_weights_are_data_and_a_pickle_among_them_is_not(tmp_path, container):
    """natasha's model tar holds raw float arrays as `arrays/<n>.bin`; one begins with the byte
    of EXT4, which imports a registry global: random bytes, not a pickle any loader reads. The
    same name holding a pickle that calls os.system is still found."""
    from _malicious import evil_p2, tar_of, zip_of

    raw = b"\x84\x3c\xbe\x9a\x03" + np.random.default_rng(0).standard_normal(64).astype("<f4").tobytes()
    plain = np.random.default_rng(1).standard_normal(64).astype("<f4").tobytes()
    pack = tar_of if container == "tar" else (lambda members: zip_of(list(members.items())))
    benign = pack({"arrays/0.bin": plain, "arrays/8.bin": raw, "meta.json": b"{}"})
    r = weightkit.scanner.scan_bytes(benign)
    assert r.verdict == "safe", r.to_dict()
    assert {f.member for f in r.findings if f.rule == "skipped"} >= {"arrays/8.bin"}
    evil = pack({"arrays/0.bin": plain, "arrays/8.bin": evil_p2(str(tmp_path / "marker")), "meta.json": b"{}"})
    r = weightkit.scanner.scan_bytes(evil)
    assert r.verdict == "malicious" and any(f.global_name == "os.system" for f in r.findings)

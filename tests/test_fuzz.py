"""Fuzzing every reader: valid files of each format (and a directory of shards), mutated
(truncation, bit flips, byte and integer overwrites, edited header numbers, spliced chunks; JSON
headers, shard indexes and Keras 2 model configs also edited as JSON), then opened, listed, read
tensor by tensor and scanned. Each must succeed or raise ``WeightkitError``: no other exception, no hang,
no unbounded memory. Inputs run in a worker process under ``RLIMIT_AS`` with a per-input time
limit (a hang or a crash kills only the worker). Zip bombs and huge declared sizes have their
own cases.

The normal run is short and deterministic; ``make fuzz`` (``HYPOTHESIS_PROFILE=fuzz``) runs
thousands of random examples per format.
"""

import copy
import functools
import io
import json
import os
import pickle
import re
import select
import shutil
import struct
import subprocess
import sys
import tarfile
import textwrap
import warnings
import zipfile
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "")
_HC = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture]
settings.register_profile("weightkit-quick", max_examples=20, derandomize=True, database=None, deadline=None,
                          suppress_health_check=_HC, print_blob=True)
settings.register_profile("fuzz", max_examples=int(os.environ.get("FUZZ_EXAMPLES", 2000)), deadline=None,
                          suppress_health_check=_HC, print_blob=True)
FUZZ = settings(parent=settings.get_profile("fuzz" if PROFILE == "fuzz" else "weightkit-quick"))
TIMEOUT = 20  # seconds per input
MEMORY = 1536 << 20  # address space a worker may add to what it holds after start-up

WORKER = textwrap.dedent("""
    import faulthandler, json, os, resource, sys, traceback, warnings
    warnings.simplefilter("ignore")
    import numpy as np, torch, h5py
    import weightkit, weightkit.sources, weightkit.scanner
    from weightkit.errors import WeightkitError
    torch.set_num_threads(1)
    weightkit.sources._load_all()

    def vm():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) << 10 for line in f if line.startswith("VmSize:"))

    limit = vm() + int(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    def exercise(path):
        refused = None
        try:
            with weightkit.open(path) as ws:
                json.dumps(ws.metadata, default=str)
                for w in ws:
                    (w.name, w.shape, w.dtype, w.kind, w.axes)
                    w.numpy()
        except WeightkitError as e:
            refused = str(e)
        assert weightkit.scan(path).verdict in ("safe", "needs-code", "unreadable", "malicious")
        return refused

    print("ready", flush=True)
    for line in sys.stdin:
        faulthandler.dump_traceback_later(int(sys.argv[2]) - 2)
        try:
            out = {"ok": True, "refused": exercise(line.rstrip("\\n"))}
        except BaseException as e:
            out = {"ok": False, "error": f"{type(e).__name__}: {e}"[:400], "trace": traceback.format_exc()[-2500:]}
        faulthandler.cancel_dump_traceback_later()
        print(json.dumps(out), flush=True)
""")


class Worker:
    """One long-lived process that exercises files; restarted after a hang or a crash."""

    def __init__(self, tmp):
        self.tmp, self.proc, self.n = tmp, None, 0

    def start(self):
        self.err = open(self.tmp / "worker.err", "w+")
        env = {**os.environ, "KERAS_BACKEND": "torch", "MALLOC_ARENA_MAX": "2", "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, "-c", WORKER, str(MEMORY), str(TIMEOUT)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.err, text=True, env=env)
        assert self._line(120) == "ready", self._stderr()

    def _line(self, timeout):
        if not select.select([self.proc.stdout], [], [], timeout)[0]:
            return None
        return self.proc.stdout.readline().strip()

    def _stderr(self):
        self.err.seek(0)
        return self.err.read()[-3000:]

    def run(self, data: bytes | dict, suffix: str) -> dict:
        """Exercise one file, or a directory given as ``{file name: bytes}``."""
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        self.n += 1
        path = self.tmp / f"input{self.n % 4}{suffix}"
        _write(path, data)
        self.proc.stdin.write(f"{path}\n")
        self.proc.stdin.flush()
        line = self._line(TIMEOUT)
        if line:
            return json.loads(line)
        self.proc.kill()
        rc = self.proc.wait()
        why = f"hang: no answer within {TIMEOUT}s" if line is None else f"the worker died (exit status {rc})"
        self.proc = None
        return {"ok": False, "error": why, "trace": self._stderr()}

    def keep(self, data: bytes | dict, suffix: str) -> str:
        """Save a failing input (a file or a directory) where a developer can rerun it."""
        crc = zlib.crc32(b"".join(k.encode() + v for k, v in sorted(data.items()))) if isinstance(data, dict) \
            else zlib.crc32(data)
        path = self.tmp / f"failing-{crc:08x}{suffix}"
        _write(path, data)
        return str(path)

    def stop(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()


def _write(path, data: bytes | dict) -> None:
    if isinstance(data, dict):
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir()
        for name, blob in data.items():
            (path / name).write_bytes(blob)
    else:
        path.write_bytes(data)


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    w = Worker(tmp_path_factory.mktemp("fuzz"))
    yield w
    w.stop()


def check(result, what=""):
    assert result["ok"], f"{what}: {result['error']}\n{result.get('trace', '')}"


# ---- seed files -----------------------------------------------------------------------------
class FuzzNet(nn.Module):
    """Pickled whole (torch.save(model)): read by the restricted unpickler in the worker, which
    cannot import this test module."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(2, 3, 2)
        self.bn = nn.BatchNorm1d(3)
        self.head = nn.Linear(3, 2)


def _torch_bytes(obj, **kw):
    buf = io.BytesIO()
    torch.save(obj, buf, **kw)
    return buf.getvalue()


def _tar(members) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def legacy_tar_checkpoint(state) -> bytes:
    """A checkpoint in the tar format of the earliest ``torch.save``, as
    ``torch.serialization.legacy_load`` still reads it: a tar of ``sys_info``, ``pickle`` (the object,
    tensors as persistent ids ``str(key)``), ``tensors`` (a count, then per tensor a pickled
    ``(key, storage key, tensor type)`` and ndim, sizes, strides, offset) and ``storages`` (a
    count, then per storage a pickled ``(key, location, storage type)``, an int64 element count
    and the bytes; then the storage views)."""
    types = {torch.float32: "Float", torch.float64: "Double", torch.int64: "Long"}
    keys = {name: 100 + 2 * i for i, name in enumerate(state)}  # a storage's key is its tensor's + 1

    class Ref:
        def __init__(self, key):
            self.key = key

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return str(obj.key) if isinstance(obj, Ref) else None

    def dump(obj):
        return pickle.dumps(obj, protocol=2)

    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump({name: Ref(k) for name, k in keys.items()})
    tensors, storages = bytearray(dump(len(state))), bytearray(dump(len(state)))
    for name, t in state.items():
        k, kind = keys[name], types[t.dtype]
        tensors += dump((k, k + 1, getattr(torch, kind + "Tensor"))) + struct.pack("<ii", t.dim(), 0)
        tensors += struct.pack(f"<{2 * t.dim() + 1}q", *t.shape, *t.stride(), 0)
        storages += dump((k + 1, "cpu", getattr(torch, kind + "Storage"))) + struct.pack("<q", t.numel())
        storages += t.contiguous().numpy().tobytes()
    storages += dump([])
    info = dump({"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 8}})
    return _tar([("sys_info", info), ("pickle", buf.getvalue()), ("tensors", bytes(tensors)),
                 ("storages", bytes(storages))])


def _sharded(state, tmp) -> dict[str, bytes]:
    """A Hugging Face style directory: two safetensors shards and their index."""
    from safetensors.torch import save_file

    names = list(state)
    files = {}
    for i, part in enumerate((names[:1], names[1:])):
        name = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({k: state[k] for k in part}, str(tmp / name), metadata={"format": "pt"})
        files[name] = (tmp / name).read_bytes()
    total = sum(v.numel() * v.element_size() for v in state.values())
    index = {"metadata": {"total_size": total},
             "weight_map": {k: f"model-0000{1 + (k != names[0])}-of-00002.safetensors" for k in names}}
    return {"model.safetensors.index.json": json.dumps(index, indent=2).encode(), **files}


def _keras2_h5(path) -> bytes:
    """A Keras 2 whole-model ``.h5`` (``model.save("m.h5")``): ``model_config`` and
    ``training_config`` attributes, weights under ``model_weights``, an ``optimizer_weights`` group."""
    import h5py

    from test_keras_sources import _legacy_file

    _legacy_file(path, with_config=True)
    with h5py.File(path, "a") as f:
        f.attrs["training_config"] = json.dumps({"loss": "mse", "optimizer_config": {
            "class_name": "Adam", "config": {"name": "Adam", "learning_rate": 0.001}}})
        opt = f.create_group("optimizer_weights")
        opt.attrs["weight_names"] = np.array([b"Adam/iter:0", b"Adam/dense/kernel/m:0"], dtype="S")
        opt.create_dataset("Adam/iter:0", data=np.int64(3))
        opt.create_dataset("Adam/dense/kernel/m:0", data=np.zeros((4, 3), "float32"))
    return path.read_bytes()


def _seeds(tmp):
    torch.manual_seed(0)
    state = {"fc.weight": torch.randn(3, 2), "fc.bias": torch.randn(3).to(torch.bfloat16),
             "n": torch.tensor(2, dtype=torch.int64)}
    np_state = {k: v.float().numpy() for k, v in state.items()}
    from safetensors.torch import save_file

    out = {}
    save_file(state, str(tmp / "s.safetensors"))
    out["safetensors"] = ((tmp / "s.safetensors").read_bytes(), ".safetensors")
    out["torch-zip"] = (_torch_bytes({"model": state, "epoch": 3, "np": np.float64(0.5)}), ".pt")
    out["torch-zip-model"] = (_torch_bytes(FuzzNet()), ".pt")
    out["torch-legacy"] = (_torch_bytes(state, _use_new_zipfile_serialization=False), ".pt")
    out["torch-legacy-model"] = (_torch_bytes(FuzzNet(), _use_new_zipfile_serialization=False), ".pt")
    out["pickle"] = (pickle.dumps(np_state, protocol=4), ".pkl")
    buf = io.BytesIO()
    np.savez(buf, **np_state)
    out["npz"] = (buf.getvalue(), ".npz")
    buf = io.BytesIO()
    np.save(buf, np_state["fc.weight"])
    out["npy"] = (buf.getvalue(), ".npy")
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2), keras.layers.BatchNormalization()])
    model.save(tmp / "m.keras")
    model.save_weights(tmp / "m.weights.h5")
    out["keras"] = ((tmp / "m.keras").read_bytes(), ".keras")
    out["weights-h5"] = ((tmp / "m.weights.h5").read_bytes(), ".weights.h5")
    ks = tmp / "keras-sharded"
    ks.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save_weights(ks / "k.weights.json", max_shard_size=0.00000003)  # GB (30 bytes): several shards
    out["keras-sharded"] = ({p.name: p.read_bytes() for p in sorted(ks.iterdir())}, "-sharded")
    out["keras2-h5"] = (_keras2_h5(tmp / "k2.h5"), ".h5")
    full = {"fc.weight": state["fc.weight"], "fc.bias": state["fc.bias"].float(), "n": state["n"]}
    out["torch-tar"] = (legacy_tar_checkpoint(full), ".pt")
    out["sharded"] = (_sharded(state, tmp), "-sharded")
    import weightkit

    # weights of >= 1024 elements are quantised; odd sizes give a half-filled int4 byte and short last groups
    net = nn.Sequential(nn.Conv1d(4, 9, 29), nn.Flatten(), nn.Linear(37, 29))
    weightkit.quantize(net, tmp / "q8.safetensors", bits=8)
    weightkit.quantize(net, tmp / "q4.safetensors", bits=4, scheme="asymmetric", granularity="group", group_size=32)
    out["quantized-int8"] = ((tmp / "q8.safetensors").read_bytes(), ".safetensors")
    out["quantized-int4-group"] = ((tmp / "q4.safetensors").read_bytes(), ".safetensors")
    return out


class Quiet(dict):
    """A dict of test files that does not print its bytes in a failure report."""

    def __repr__(self):
        return f"<{len(self)} files>"


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    with torch.random.fork_rng():  # leave the global RNG as other test modules expect it
        return Quiet(_seeds(tmp_path_factory.mktemp("seeds")))


FORMATS = ["safetensors", "torch-zip", "torch-zip-model", "torch-legacy", "torch-legacy-model", "pickle", "npz",
           "npy", "keras", "weights-h5", "keras2-h5", "torch-tar", "sharded", "keras-sharded", "quantized-int8",
           "quantized-int4-group"]
INTERESTING = [0, 1, 2, 7, 8, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**40,
               2**62, 2**63 - 1, 2**63, 2**64 - 1, -1, -2**31]


@functools.lru_cache(maxsize=64)
def _hot(data: bytes):
    """Regions that hold structure: headers, pickles, zip directories, tar members, HDF5 metadata
    (tensor data is cold)."""
    if data.startswith(b"PK"):
        regions = []
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            for i in zf.infolist():
                end = i.header_offset + 30 + len(i.filename) + 64
                if not re.search(r"data/\d+$", i.filename):
                    end += i.compress_size
                regions.append((i.header_offset, min(end, len(data))))
            regions.append((zf.start_dir, len(data)))
        return regions
    if data[257:262] == b"ustar":  # legacy torch tar: every member is pickles and size records
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
            return [(m.offset, min(len(data), m.offset_data + m.size)) for m in tf]
    if data[:8] == b"\x89HDF\r\n\x1a\n":  # all but the datasets' contiguous data
        import h5py

        spans = []
        with h5py.File(io.BytesIO(data), "r") as f:
            f.visititems(lambda _, o: spans.append((o.id.get_offset(), o.id.get_storage_size()))
                         if isinstance(o, h5py.Dataset) and o.id.get_offset() is not None else None)
        regions, pos = [], 0
        for off, size in sorted(spans):
            if off > pos:
                regions.append((pos, off))
            pos = max(pos, off + size)
        return regions + [(pos, len(data))] if pos < len(data) else regions
    if data[:1] == b"{":  # a JSON file (a shard index)
        return [(0, len(data))]
    if len(data) > 8 and data[8:9] == b"{":  # safetensors: the JSON header
        return [(0, min(len(data), 8 + struct.unpack_from("<Q", data)[0]))]
    return [(0, min(len(data), 2048))]


@st.composite
def mutations(draw, seed: bytes):
    data, hot = bytearray(seed), _hot(seed)
    for _ in range(draw(st.integers(1, 3))):
        if not data:
            break
        n = len(data)
        if draw(st.booleans()):
            a, b = draw(st.sampled_from(hot))
            pos = min(n - 1, draw(st.integers(a, max(a, b - 1))))
        else:
            pos = draw(st.integers(0, n - 1))
        op = draw(st.sampled_from(["truncate", "flip", "bytes", "int", "digits", "splice"]))
        if op == "truncate":
            del data[pos:]
        elif op == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "bytes":
            b = draw(st.binary(min_size=1, max_size=16))
            data[pos:pos + len(b)] = b
        elif op == "int":
            width = draw(st.sampled_from([1, 2, 4, 8]))
            v = draw(st.sampled_from(INTERESTING + [n, n - 8, n + 8])) % (1 << 8 * width)
            data[pos:pos + width] = v.to_bytes(width, "little")
        elif op == "digits":  # a number in a JSON/npy header or a protocol-0 pickle
            runs = list(re.finditer(rb"\d+", bytes(data)))
            if runs:
                m = runs[draw(st.integers(0, len(runs) - 1))]
                data[m.start():m.end()] = str(draw(st.sampled_from(INTERESTING))).encode()
        else:
            chunk = data[pos:pos + draw(st.integers(1, 64))]
            at = draw(st.integers(0, n))
            data[at:at] = chunk
    return bytes(data)


# ---- structured mutations of JSON headers ---------------------------------------------------
_DEEP = "\x00deep\x00"  # stands for a list nested 100,000 deep (json.dumps cannot write one)
JSON_VALUES = [None, True, False, 0, 1, -1, 2, 3, 4, 7, 8, 2**31, 2**32, 2**40, 2**63, 2**64, -2**63, 1e308, -0.0,
               0.5, float("nan"), float("inf"), "", "x", "F32", "I8", "U8", "BF16", "F8_E4M3", "symmetric",
               "asymmetric", "../model.safetensors", "/etc/hostname", "\ud800", [], [0], [-1], [1, 2], [2**40],
               [[1]], [0, 2**63], {}, {"a": 1}, {"shape": []}, _DEEP]


class _Nested:
    """A JSON document inside a JSON string (weightkit's quantisation metadata)."""

    def __init__(self, value):
        self.value = value


def _unnest(x):
    if isinstance(x, dict):
        return {k: _unnest(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_unnest(v) for v in x]
    if isinstance(x, str) and x[:1] in "{[":
        try:
            return _Nested(_unnest(json.loads(x)))
        except ValueError:
            pass
    return x


def _dumps(x, **kw) -> str:
    def nest(x):
        if isinstance(x, _Nested):
            return _dumps(x.value, separators=(",", ":"))
        if isinstance(x, dict):
            return {k: nest(v) for k, v in x.items()}
        return [nest(v) for v in x] if isinstance(x, list) else x

    return json.dumps(nest(x), **kw).replace(json.dumps(_DEEP), "[" * 100_000 + "]" * 100_000)


def _slots(x) -> list:
    """Every ``(container, key)`` of a document, nested documents included."""
    x = x.value if isinstance(x, _Nested) else x
    items = x.items() if isinstance(x, dict) else enumerate(x) if isinstance(x, list) else ()
    out = []
    for k, v in list(items):
        out += [(x, k), *_slots(v)]
    return out


@functools.lru_cache(maxsize=64)
def _json_doc(data: bytes):
    """``(document, rebuild)`` for files whose structure is JSON: a shard index, a safetensors
    header, the ``model_config`` of a Keras 2 ``.h5``; ``None`` for others."""
    if data[:1] == b"{":
        return _unnest(json.loads(data)), lambda doc: _dumps(doc, indent=2).encode()
    if len(data) > 8 and data[8:9] == b"{":
        n = struct.unpack_from("<Q", data)[0]

        def rebuild(doc):
            header = _dumps(doc, separators=(",", ":")).encode()
            return struct.pack("<Q", len(header)) + header + data[8 + n:]
        return _unnest(json.loads(data[8:8 + n])), rebuild
    if data[:8] == b"\x89HDF\r\n\x1a\n":
        import h5py

        with h5py.File(io.BytesIO(data), "r") as f:
            config = f.attrs.get("model_config")
        if config is None:
            return None

        def rebuild(doc):
            buf = io.BytesIO(data)
            with h5py.File(buf, "r+") as f:
                f.attrs["model_config"] = _dumps(doc)
            return buf.getvalue()
        return _unnest(json.loads(config)), rebuild
    return None


@st.composite
def json_mutations(draw, doc, rebuild):
    """The document with 1-3 edits (a value replaced, nudged, copied from elsewhere, deleted, or
    moved to another key), written back into the file."""
    doc = copy.deepcopy(doc)
    for _ in range(draw(st.integers(1, 3))):
        slots = _slots(doc)
        if not slots:
            break
        c, k = slots[draw(st.integers(0, len(slots) - 1))]
        op = draw(st.sampled_from(["value", "nudge", "copy", "delete", "rename"]))
        if op == "value" or (op == "nudge" and type(c[k]) is not int):
            c[k] = copy.deepcopy(draw(st.sampled_from(JSON_VALUES)))
        elif op == "nudge":
            c[k] += draw(st.sampled_from([-2, -1, 1, 2, 8, c[k], -c[k] - 1]))
        elif op == "copy":
            other = slots[draw(st.integers(0, len(slots) - 1))]
            c[k] = copy.deepcopy(other[0][other[1]])
        elif op == "delete":
            del c[k]
        elif isinstance(c, dict):  # rename: onto another key of the document (a collision), or a new one
            keys = sorted({str(kk) for cc, kk in slots if isinstance(cc, dict)})
            c[draw(st.sampled_from([*keys, "", "__metadata__", "x::q"]))] = c.pop(k)
    return rebuild(doc)


@st.composite
def mutated(draw, seed):
    """A mutated file; for a directory, one of its files mutated (the others as they are)."""
    if isinstance(seed, dict):
        name = draw(st.sampled_from(sorted(seed)))
        return {**seed, name: draw(mutated(seed[name]))}
    doc = _json_doc(seed)
    if doc is not None and draw(st.booleans()):
        return draw(json_mutations(*doc))
    return draw(mutations(seed))


@pytest.mark.parametrize("fmt", FORMATS)
def test_seed_files_are_valid(worker, seeds, fmt):
    data, suffix = seeds[fmt]
    check(worker.run(data, suffix), fmt)


@pytest.mark.parametrize("fmt", FORMATS)
@FUZZ
@given(data=st.data())
def test_mutated_files_open_or_raise_weightkit_error(worker, seeds, fmt, data):
    seed, suffix = seeds[fmt]
    blob = data.draw(mutated(seed))
    result = worker.run(blob, suffix)
    check(result, f"{fmt} (input saved as {worker.keep(blob, suffix)})" if not result["ok"] else fmt)


# ---- structured mutations of containers -----------------------------------------------------
# Random bytes rarely make a container that parses yet lies: these edits keep zip records, tar
# headers (checksum recomputed) and the HDF5 superblock well formed while changing what they
# point at, the way the red team's files disagree between readers.
CONTAINERS = {"torch-zip": "zip", "torch-zip-model": "zip", "npz": "zip", "keras": "zip", "torch-tar": "tar",
              "weights-h5": "hdf5", "keras2-h5": "hdf5"}
_EOCD = struct.Struct("<4s4H2IH")  # signature, disk, cd disk, entries here, entries, cd size, cd offset, comment
_EOCD64 = struct.Struct("<4sQ2H2I4Q")
_LOC64 = struct.Struct("<4sIQI")


def _pick_int(draw, n: int, width: int) -> int:
    return draw(st.sampled_from(INTERESTING + [n, n - 22, n - 98, n // 2])) % (1 << 8 * width)


@st.composite
def zip_structure(draw, seed: bytes):
    data = bytearray(seed)
    end = bytes(data).rfind(b"PK\x05\x06")
    sig, d0, d1, here, total, cd_size, cd_off, clen = _EOCD.unpack_from(data, end)
    op = draw(st.sampled_from(["eocd", "zip64", "second-cd", "cd-entry", "local", "prefix", "two-ends"]))
    if op == "eocd":
        fields = [sig, d0, d1, here, total, cd_size, cd_off, clen]
        i = draw(st.integers(1, 7))
        fields[i] = _pick_int(draw, len(data), 4 if i in (5, 6) else 2)
        data[end:end + _EOCD.size] = _EOCD.pack(*fields)
    elif op == "zip64":  # a zip64 record and locator before the end record, pointing anywhere
        rec_at = end
        rec = _EOCD64.pack(b"PK\x06\x06", 44, 45, 45, 0, 0, total, total, cd_size,
                           _pick_int(draw, len(data), 8) if draw(st.booleans()) else cd_off)
        loc = _LOC64.pack(b"PK\x06\x07", 0, _pick_int(draw, len(data), 8) if draw(st.booleans()) else rec_at, 1)
        data[end:end] = rec + loc
        eocd = end + len(rec) + len(loc)
        if draw(st.booleans()):
            data[eocd + 16:eocd + 20] = b"\xff\xff\xff\xff"  # cd offset deferred to the zip64 record
    elif op == "second-cd":  # a copy of the directory before the end record, either one declared
        cd = bytes(data[cd_off:cd_off + cd_size])
        data[end:end] = cd
        new_end = end + len(cd)
        if draw(st.booleans()):
            struct.pack_into("<I", data, new_end + 16, end)
    elif op == "cd-entry":
        entries = [m.start() for m in re.finditer(rb"PK\x01\x02", bytes(data[cd_off:end]))]
        if entries:
            at = cd_off + draw(st.sampled_from(entries))
            off, width = draw(st.sampled_from([(10, 2), (16, 4), (20, 4), (24, 4), (28, 2), (30, 2), (42, 4)]))
            data[at + off:at + off + width] = _pick_int(draw, len(data), width).to_bytes(width, "little")
    elif op == "local":
        heads = [m.start() for m in re.finditer(rb"PK\x03\x04", bytes(data[:cd_off]))]
        if heads:
            at = draw(st.sampled_from(heads))
            off, width = draw(st.sampled_from([(6, 2), (8, 2), (18, 4), (22, 4), (26, 2), (28, 2)]))
            data[at + off:at + off + width] = _pick_int(draw, len(data), width).to_bytes(width, "little")
    elif op == "prefix":
        data[:0] = draw(st.sampled_from([b"\x80\x02}q\x00.", b"x" * 512, bytes(seed[:draw(st.integers(30, 200))])]))
    else:
        data += bytes(data[end:end + _EOCD.size])
    return bytes(data)


def _tar_checksum(header: bytearray) -> None:
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\x00 " % sum(header)


@st.composite
def tar_structure(draw, seed: bytes):
    data = bytearray(seed)
    with tarfile.open(fileobj=io.BytesIO(seed), mode="r:") as tf:
        members = list(tf)
    m = draw(st.sampled_from(members))
    names = [x.name for x in members]
    op = draw(st.sampled_from(["link", "size", "name", "type", "append"]))
    h = bytearray(data[m.offset:m.offset + 512])
    if op == "link":  # this member becomes a hard or symbolic link to another name
        h[156:157] = draw(st.sampled_from([b"1", b"2"]))
        target = draw(st.sampled_from(names + ["../x", "/etc/hostname", m.name, "missing"]))
        h[157:257] = target.encode().ljust(100, b"\x00")[:100]
    elif op == "size":
        h[124:136] = b"%011o\x00" % (_pick_int(draw, len(data), 4) & 0o77777777777)
    elif op == "name":
        h[0:100] = draw(st.sampled_from(names + ["storages", "pickle", "x/../pickle", "/pickle"])).encode().ljust(100, b"\x00")
    elif op == "type":
        h[156:157] = draw(st.sampled_from([b"0", b"\x00", b"3", b"5", b"6", b"7", b"x", b"g", b"L", b"K", b"S"]))
    if op == "append":
        extra = bytearray(512)
        extra[0:7] = draw(st.sampled_from([b"pickle\x00", b"storage", b"sys_inf"]))
        extra[100:108], extra[108:116], extra[116:124] = b"0000644\x00", b"0000000\x00", b"0000000\x00"
        extra[124:136] = b"%011o\x00" % len(seed[:1024])
        extra[136:148], extra[156:157], extra[257:263] = b"00000000000\x00", b"0", b"ustar\x00"
        _tar_checksum(extra)
        at = len(data) - 1024 if data.endswith(bytes(1024)) else len(data)
        data[at:at] = bytes(extra) + seed[:1024]
    else:
        _tar_checksum(h)
        data[m.offset:m.offset + 512] = h
    return bytes(data)


@st.composite
def hdf5_structure(draw, seed: bytes):
    """Superblock version 0 (h5py's default): base, free-space, end-of-file, driver and root
    object header addresses at fixed offsets (no checksum guards them)."""
    data = bytearray(seed)
    assert data[8] == 0, "the seed's superblock is not version 0"
    off = draw(st.sampled_from([13, 14, 24, 32, 40, 48, 56, 64]))
    if off in (13, 14):  # size of offsets / lengths
        data[off] = draw(st.sampled_from([0, 1, 2, 3, 4, 8, 16, 255]))
    else:
        data[off:off + 8] = _pick_int(draw, len(data), 8).to_bytes(8, "little")
    if draw(st.booleans()):  # and a user block: the whole file moved by 512 bytes
        data[:0] = bytes(draw(st.sampled_from([bytes(512), _tar([("pickle", b"\x80\x02N.")])[:512]])))
    return bytes(data)


STRUCTURE = {"zip": zip_structure, "tar": tar_structure, "hdf5": hdf5_structure}


@pytest.mark.parametrize("fmt", sorted(CONTAINERS))
@FUZZ
@given(data=st.data())
def test_container_structure_mutations_open_or_raise_weightkit_error(worker, seeds, fmt, data):
    seed, suffix = seeds[fmt]
    blob = data.draw(STRUCTURE[CONTAINERS[fmt]](seed))
    result = worker.run(blob, suffix)
    check(result, f"{fmt} (input saved as {worker.keep(blob, suffix)})" if not result["ok"] else fmt)


# ---- regressions found by fuzzing -----------------------------------------------------------
def test_legacy_tar_checkpoint_is_refused_clearly(tmp_path):
    """torch's oldest format is not read (torch.load reads it only with weights_only=False): one
    clear error, whatever the file is called, and the scanner still judges it."""
    import weightkit
    from weightkit.errors import UnsupportedFormatError

    for name in ("old.pt", "old.tar"):
        path = tmp_path / name
        path.write_bytes(legacy_tar_checkpoint({"w": torch.ones(2, 3), "b": torch.zeros(3)}))
        with pytest.raises(UnsupportedFormatError, match="legacy tar checkpoint"):
            weightkit.open(path)
        assert weightkit.scan(path).verdict == "safe"


def _tensors(meta):
    return meta["weightkit.quantized.tensors"].value


@pytest.mark.parametrize("edit", [
    lambda m: m["weightkit.kinds"].value.update({"weight": True}),  # AttributeError in WeightSet
    lambda m: _tensors(m)["weight"].update(shape=None),  # TypeError listing the tensors
    lambda m: _tensors(m)["weight"].pop("axis"),  # KeyError in dequantize
    lambda m: _tensors(m)["weight"].update(rows=2),  # ValueError reshaping the codes
    lambda m: _tensors(m)["weight"].update(group_size=2**40, groups=1),  # padded to 2**40 columns
    lambda m: _tensors(m)["weight"].update(codes="weight::scale"),  # float codes
    lambda m: m.update({"weightkit.quantized.tensors": "[]"}),  # was refused, but only as "cannot be read"
], ids=["kind-not-a-string", "shape-null", "no-axis", "rows", "huge-group", "float-codes", "not-an-object"])
def test_damaged_quantisation_metadata_is_refused_on_open(tmp_path, edit):
    import weightkit
    from weightkit.errors import CorruptFileError

    weightkit.quantize(nn.Linear(64, 32), tmp_path / "q.safetensors", bits=8)
    doc, rebuild = _json_doc((tmp_path / "q.safetensors").read_bytes())
    doc = copy.deepcopy(doc)
    edit(doc["__metadata__"])
    path = tmp_path / "bad.safetensors"
    path.write_bytes(rebuild(doc))
    with pytest.raises(CorruptFileError, match="quantis"):
        weightkit.open(path)


# ---- zip bombs and huge declared sizes ------------------------------------------------------
def deflate_zeros(total: int) -> tuple[bytes, int]:
    """``(raw deflate stream, crc32)`` of ``total`` zero bytes, built in milliseconds: after a
    full flush the compressor's output for the same 1 MiB block repeats."""
    block, c = bytes(1 << 20), zlib.compressobj(9, zlib.DEFLATED, -15)
    first = c.compress(block) + c.flush(zlib.Z_FULL_FLUSH)
    again = c.compress(block) + c.flush(zlib.Z_FULL_FLUSH)
    assert again == c.compress(block) + c.flush(zlib.Z_FULL_FLUSH)
    k = total >> 20
    stream = first + again * (k - 2) + c.compress(block) + c.flush()
    crc = 0
    for _ in range(k):
        crc = zlib.crc32(block, crc)
    return stream, crc


def raw_zip(members) -> bytes:
    """A zip from ``(name, data, method, crc, declared_size)``: sizes and CRCs as given (forged)."""
    out, central = bytearray(), bytearray()
    for name, data, method, crc, usize in members:
        n = name.encode()
        off = len(out)
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0, crc, len(data), usize, len(n), 0) + n + data
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0, crc, len(data), usize,
                               len(n), 0, 0, 0, 0, 0, off) + n
    k = len(members)
    return bytes(out + central + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, k, k, len(central), len(out), 0))


def _stored(name, data):
    return (name, data, 0, zlib.crc32(data), len(data))


def _torch_members(numel):
    """data.pkl of ``{"w": <16 floats>}`` whose storage reference declares ``numel`` elements."""
    u = lambda t: b"X" + struct.pack("<I", len(t)) + t.encode()  # noqa: E731
    pkl = (b"\x80\x02}" + u("w") + b"ctorch._utils\n_rebuild_tensor_v2\n((" + u("storage") + b"ctorch\nFloatStorage\n"
           + u("0") + u("cpu") + b"\x8a\x08" + numel.to_bytes(8, "little") + b"tQK\x00K\x10\x85K\x01\x85\x89"
           + b"ccollections\nOrderedDict\n)RtRs.")
    return [_stored("archive/data.pkl", pkl), _stored("archive/byteorder", b"little"),
            _stored("archive/version", b"3\n")]


def _npy(shape, data=b"") -> bytes:
    header = f"{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}".encode()
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + data


def _bombs():
    gib3, crc3 = deflate_zeros(3 << 30)
    half, crch = deflate_zeros(512 << 20)
    st_huge = json.dumps({"w": {"dtype": "F32", "shape": [2**40], "data_offsets": [0, 2**42]}}).encode()
    return {
        # pickles that decompress past every limit: refused by the scanner before anything reads them
        "pickle-bomb": [("archive/data.pkl", gib3, 8, crc3, 3 << 30), *_torch_members(16)[1:]],
        # a 3 GiB tensor member behind a tensor of 16 floats: only 64 bytes are decompressed
        "data-bomb": [*_torch_members(16), ("archive/data/0", gib3, 8, crc3, 3 << 30)],
        # forged sizes: a member declaring 4 GiB (2 bytes of deflate), a tensor of 2 GiB
        "forged-data": [*_torch_members(2**29), ("archive/data/0", b"\x03\x00", 8, 0, 0xFFFFFFF0)],
        "forged-stored": [*_torch_members(2**38), _stored("archive/data/0", bytes(64))],
        "npz-huge-shape": [_stored("w.npy", _npy((2**40,), bytes(64)))],
        "npz-forged-size": [("w.npy", zlib.compress(_npy((2**36,)))[2:-4], 8, 0, 0xFFFFFFF0)],
        "npz-real-bomb": [("w.npy", *_prefixed_bomb(_npy((128 << 20,)), half, 512 << 20))],
        "keras-forged-weights": [_stored("metadata.json", b'{"keras_version": "3.3.0"}'),
                                 _stored("config.json", b'{"class_name": "Sequential", "config": {"layers": []}}'),
                                 ("model.weights.h5", b"\x03\x00", 8, 0, 0xFFFFFFF0)],
        "safetensors-header-length": struct.pack("<Q", 2**64 - 1) + b"{}",
        "safetensors-huge-shape": struct.pack("<Q", len(st_huge)) + st_huge + bytes(16),
        "npy-huge-shape": _npy((2**40, 2**20), bytes(64)),
        "keras-weights-bomb": [_stored("metadata.json", b'{"keras_version": "3.3.0"}'),
                               _stored("config.json", b'{"class_name": "Sequential", "config": {"layers": []}}'),
                               ("model.weights.h5", gib3, 8, crc3, 3 << 30)],
        "legacy-huge-storage": _legacy_huge(),
        "torch-expanded": _torch_bytes({"w": torch.zeros(1).expand(2**40)}),  # 2**40 floats over 4 bytes
    }


def _prefixed_bomb(prefix: bytes, zeros_stream: bytes, zeros: int):
    """A deflate member: ``prefix`` stored in a block of its own, then the zeros stream."""
    c = zlib.compressobj(0, zlib.DEFLATED, -15)
    head = c.compress(prefix) + c.flush(zlib.Z_FULL_FLUSH)
    crc = zlib.crc32(prefix)
    block = bytes(1 << 20)
    for _ in range(zeros >> 20):
        crc = zlib.crc32(block, crc)
    return head + zeros_stream, 8, crc, len(prefix) + zeros


def _legacy_huge() -> bytes:
    data = bytearray(_torch_bytes({"w": torch.ones(4)}, _use_new_zipfile_serialization=False))
    i = data.index(b"K\x04Nt")  # the storage's element count (4), then view_metadata None
    data[i:i + 2] = b"\x8a\x06" + (2**40).to_bytes(6, "little")
    return bytes(data)


@pytest.fixture(scope="module")
def bombs():
    return Quiet(_bombs())


BOMBS = ["pickle-bomb", "data-bomb", "forged-data", "forged-stored", "npz-huge-shape", "npz-forged-size",
         "npz-real-bomb", "keras-forged-weights", "keras-weights-bomb", "safetensors-header-length",
         "safetensors-huge-shape", "npy-huge-shape", "legacy-huge-storage", "torch-expanded"]


@pytest.mark.parametrize("case", BOMBS)
def test_bombs_and_huge_sizes_stay_bounded(worker, bombs, case):
    spec = bombs[case]
    data = spec if isinstance(spec, bytes) else raw_zip(spec)
    suffix = {"npz": ".npz", "ker": ".keras", "saf": ".safetensors", "npy": ".npy"}.get(case[:3], ".pt")
    result = worker.run(data, suffix)
    check(result, case)
    refused = (result["refused"] or "").lower()
    assert "memory" not in refused and "allocate" not in refused, refused  # sizes are checked before allocating


# ---- HDF5 global heaps ----------------------------------------------------------------------
def _looping_heap_h5(path):
    """A legacy Keras .h5 whose global heap holds an object of size 0: libhdf5 loops forever
    reading the vlen ``model_config`` attribute stored there (found by fuzzing .weights.h5)."""
    import h5py

    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = json.dumps({"class_name": "Sequential", "config": {"layers": []}})
        f.create_dataset("w", data=[1.0, 2.0])
    data = bytearray(path.read_bytes())
    i = data.index(b"GCOL\x01") + 16
    data[i:i + 2], data[i + 8:i + 16] = b"\x00\x00", bytes(8)
    path.write_bytes(bytes(data))
    return path


def test_looping_hdf5_heap_is_refused_before_h5py_reads_it(tmp_path):
    import weightkit
    from weightkit.errors import CorruptFileError

    with pytest.raises(CorruptFileError, match="global heap"):
        weightkit.open(_looping_heap_h5(tmp_path / "m.h5"))


def test_scanning_a_looping_hdf5_heap_ends(tmp_path):
    path = _looping_heap_h5(tmp_path / "m.h5")
    subprocess.run([sys.executable, "-c", f"import weightkit; weightkit.scan({str(path)!r})"], timeout=6,
                   capture_output=True)

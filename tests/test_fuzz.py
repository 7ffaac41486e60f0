"""Fuzzing every reader: valid files of each format, mutated (truncation, bit flips, byte and
integer overwrites, edited header numbers, spliced chunks), then opened, listed, read tensor by
tensor and scanned. Each must succeed or raise ``WeightkitError``: no other exception, no hang,
no unbounded memory. Inputs run in a worker process under ``RLIMIT_AS`` with a per-input time
limit (a hang or a crash kills only the worker). Zip bombs and huge declared sizes have their
own cases.

The normal run is short and deterministic; ``make fuzz`` (``HYPOTHESIS_PROFILE=fuzz``) runs
thousands of random examples per format.
"""

import io
import json
import os
import pickle
import re
import select
import struct
import subprocess
import sys
import textwrap
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
    import weightkit, weightkit.sources, weightkit.scan
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

    def run(self, data: bytes, suffix: str) -> dict:
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        self.n += 1
        path = self.tmp / f"input{self.n % 4}{suffix}"
        path.write_bytes(data)
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

    def keep(self, data: bytes, suffix: str) -> str:
        """Save a failing input where a developer can rerun it."""
        path = self.tmp / f"failing-{zlib.crc32(data):08x}{suffix}"
        path.write_bytes(data)
        return str(path)

    def stop(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()


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
           "npy", "keras", "weights-h5"]
INTERESTING = [0, 1, 2, 7, 8, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**40,
               2**62, 2**63 - 1, 2**63, 2**64 - 1, -1, -2**31]


def _hot(data: bytes):
    """Regions that hold structure: headers, pickles, zip directories (tensor data is cold)."""
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
    if data[:8] == b"\x89HDF\r\n\x1a\n":
        return [(0, min(len(data), 4096))]
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


@pytest.mark.parametrize("fmt", FORMATS)
def test_seed_files_are_valid(worker, seeds, fmt):
    data, suffix = seeds[fmt]
    check(worker.run(data, suffix), fmt)


@pytest.mark.parametrize("fmt", FORMATS)
@FUZZ
@given(data=st.data())
def test_mutated_files_open_or_raise_weightkit_error(worker, seeds, fmt, data):
    seed, suffix = seeds[fmt]
    blob = data.draw(mutations(seed))
    result = worker.run(blob, suffix)
    check(result, f"{fmt} (input saved as {worker.keep(blob, suffix)})" if not result["ok"] else fmt)


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

"""Zip structure (issue 15): archives that show zipfile and torch.load's miniz different
members are ``zip-ambiguous`` and refused; every zip torch, numpy, zipfile and Keras write stays
``safe``; pickles are found by content and Keras configs by name; zip bombs made of local
headers are scanned in bounded time and memory. The variants themselves are in
tests/_malicious_zip.py (scanned, refused and proven live by test_scan_corpus/test_open_hostile)."""

import io
import os
import pickle
import struct
import subprocess
import sys
import textwrap
import time
import zipfile

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import weightkit
from _malicious import benign_p2, evil_p2, zip_of
from _malicious_zip import (
    checkpoint,
    directory,
    end,
    end64,
    keras_config,
    local_name_mismatch,
    locator,
    p0_system,
    raw_members,
    two_directories,
    zip64_split,
)
from weightkit.cli import app
from weightkit.errors import UnsafeCheckpointError
from weightkit.formats.zip import MINIZ, ZIPFILE, layout
from weightkit.scanner import scan_bytes


def _torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _npz(compressed: bool) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, a=np.zeros(3), b=np.arange(5))
    return buf.getvalue()


class _Stream(io.RawIOBase):
    """An unseekable file: zipfile writes data descriptors (flag bit 3) into it."""

    def __init__(self):
        self.data = bytearray()

    def writable(self):
        return True

    def write(self, b):
        self.data += b
        return len(b)


def _zip64_by_zipfile() -> bytes:
    """A zip that zipfile writes with a zip64 end record, locator and zip64 extra fields (it does
    so past 65,535 members or 4 GiB; the limits are lowered while it is written)."""
    buf = io.BytesIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(zipfile, "ZIP_FILECOUNT_LIMIT", 2)
        mp.setattr(zipfile, "ZIP64_LIMIT", 200)
        with zipfile.ZipFile(buf, "w") as zf:
            for name, data in checkpoint(pickle.dumps({"w": [1.0] * 50}, protocol=2)):
                with zf.open(name, "w", force_zip64=True) as f:
                    f.write(data)
    data = buf.getvalue()
    assert b"PK\x06\x06" in data and b"PK\x06\x07" in data
    return data


def _streamed() -> bytes:
    s = _Stream()
    with zipfile.ZipFile(s, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in checkpoint(benign_p2()):
            zf.writestr(name, data)
        zf.comment = b"a comment"
    return bytes(s.data)


def _keras_file(tmp_path) -> bytes:
    import keras

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.save(tmp_path / "m.keras")
    return (tmp_path / "m.keras").read_bytes()


# ---- benign files stay safe -----------------------------------------------------------------
def test_every_zip_the_writers_make_is_safe_and_unambiguous(tmp_path):
    files = {
        "torch (zip64 end record, 64-byte aligned)": _torch_bytes({"w": torch.ones(3), "b": torch.zeros(100, 7)}),
        "torch model state (many members)": _torch_bytes(torch.nn.Sequential(*[torch.nn.Linear(4, 4)] * 8).state_dict()),
        "numpy savez (zip64 local extras)": _npz(False),
        "numpy savez_compressed": _npz(True),
        "zipfile zip64 records and offsets": _zip64_by_zipfile(),
        "zipfile streamed (data descriptors) with a comment": _streamed(),
        "keras 3": _keras_file(tmp_path),
    }
    for what, data in files.items():
        lay = layout(data)
        assert lay.problems == () and lay.damage == (), (what, lay.problems, lay.damage)
        assert all(v.error is None for v in lay.views), (what, lay.views)
        assert len({v.entries for v in lay.views}) == 1, what
        report = scan_bytes(data)
        assert report.verdict == "safe", (what, report.to_dict())


def test_a_stored_zip_inside_a_member_is_not_a_second_end_record():
    inner = zip_of([("arr_0.npy", b"\x93NUMPY")])  # its end record lies in the outer member's data
    outer = zip_of([("config.json", b'{"a": 1}'), ("model.weights.npz", inner)])
    assert layout(outer).problems == ()


# ---- readers that see different archives ----------------------------------------------------
@pytest.mark.parametrize("build", [zip64_split, two_directories], ids=["zip64_split", "two_directories"])
def test_zipfile_and_miniz_read_different_directories(tmp_path, build):
    data = build(str(tmp_path / "marker"))
    with zipfile.ZipFile(io.BytesIO(data)) as zf:  # what a zipfile-based scanner sees: the benign pickle
        assert zf.read("archive/data.pkl") == benign_p2()
    lay = layout(data)
    ours, torchs = lay.view(ZIPFILE), lay.view(MINIZ)
    assert ours.start != torchs.start and ours.entries != torchs.entries
    assert any("readers see different members" in m for m, _ in lay.problems)
    report = scan_bytes(data)
    assert report.verdict == "malicious"
    assert {"zip-ambiguous", "global-critical"} <= {f.rule for f in report.findings}
    assert any(f.global_name == "os.system" for f in report.findings)


def test_members_only_miniz_lists_are_scanned(tmp_path):
    """The payload of the zip64 split is in no member zipfile lists: it is found because the
    miniz view is scanned too."""
    data = zip64_split(str(tmp_path / "marker"))
    evil = [f for f in scan_bytes(data).findings if f.global_name == "os.system"]
    assert evil and evil[0].member == "archive/data.pkl"
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert all(b"system" not in zf.read(n) for n in zf.namelist())


def test_a_local_header_with_another_name_is_read_as_miniz_reads_it(tmp_path):
    data = local_name_mismatch(str(tmp_path / "marker"))
    with zipfile.ZipFile(io.BytesIO(data)) as zf, pytest.raises(zipfile.BadZipFile):
        zf.read("archive/data.pkl")
    report = scan_bytes(data)
    assert any(f.rule == "zip-ambiguous" and "notes.txt" in f.message for f in report.findings)
    assert any(f.global_name == "os.system" and f.member == "archive/data.pkl" for f in report.findings)


def test_overlapping_members_and_trailing_bytes_are_ambiguous():
    members = checkpoint(benign_p2())
    body, offsets = raw_members(members)
    cd = directory(members + [("archive/alias.pkl", members[0][1])], offsets + [0])  # two names, one header
    overlap = body + cd + end(len(members) + 1, len(cd), len(body))
    assert any("overlaps" in m or "names it" in m for m, _ in layout(overlap).problems)
    assert scan_bytes(overlap).verdict == "malicious"
    cd = directory(members, offsets)
    trailing = body + cd + end(len(members), len(cd), len(body)) + b"\0" * 64
    assert any("after the end record" in m for m, _ in layout(trailing).problems)
    assert scan_bytes(trailing).verdict == "malicious"


def test_a_zip64_locator_pointing_elsewhere_is_ambiguous():
    members = checkpoint(benign_p2())
    body, offsets = raw_members(members)
    cd = directory(members, offsets)
    rec = end64(len(members), len(cd), len(body))
    data = body + cd + rec + locator(0) + end(len(members), len(cd), len(body))  # locator at the first member
    lay = layout(data)
    assert lay.problems and scan_bytes(data).verdict == "malicious"


def test_prepended_bytes_keep_their_rule(tmp_path):
    data = b"\0" * 64 + zip_of(checkpoint(evil_p2(str(tmp_path / "m"))))
    rules = {f.rule for f in scan_bytes(data).findings}
    assert {"polyglot", "global-critical"} <= rules


def test_case_folded_duplicates_are_flagged(tmp_path):
    """miniz finds members regardless of case: ``archive/DATA.PKL`` is another data.pkl to it."""
    data = zip_of(checkpoint(benign_p2()) + [("archive/DATA.PKL", benign_p2())])
    report = scan_bytes(data)
    assert report.verdict == "malicious" and "zip-duplicate" in {f.rule for f in report.findings}


# ---- loading refuses them -------------------------------------------------------------------
def test_open_summary_and_convert_refuse_an_ambiguous_zip(tmp_path):
    path = tmp_path / "split.pt"
    path.write_bytes(zip64_split(str(tmp_path / "marker")))
    with pytest.raises(UnsafeCheckpointError) as e:
        weightkit.open(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)
    for args in (["summary", path], ["convert", path, tmp_path / "out.safetensors"]):
        r = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})
        assert r.exit_code == 2 and isinstance(r.exception, SystemExit), (r.output, r.exception)
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.output
    assert not (tmp_path / "out.safetensors").exists() and not (tmp_path / "marker").exists()


def test_the_refusal_names_the_gadget_and_each_finding_is_listed_once(tmp_path):
    """Both readers' views walk the same evil data.pkl: one finding, and the refusal names the
    call rather than the structure around it."""
    path = tmp_path / "two.pt"
    path.write_bytes(two_directories(str(tmp_path / "marker")))
    findings = [(f.rule, f.member, f.position, f.global_name) for f in weightkit.scan(path).findings]
    assert len(findings) == len(set(findings)) and ("global-critical", "archive/data.pkl", 2, "os.system") in findings
    with pytest.raises(UnsafeCheckpointError, match=r"refused: the pickle in archive/data.pkl calls os.system"):
        weightkit.open(path)


# ---- content, not names ---------------------------------------------------------------------
def test_a_pickle_under_any_name_is_scanned_and_is_live(tmp_path):
    marker = tmp_path / "marker"
    payload = p0_system(str(marker))
    assert payload[:1] != b"\x80"  # protocol 0: nothing marks it as a pickle but its opcodes
    data = zip_of(checkpoint(pickle.dumps({"w": 1}, protocol=2)) + [("archive/weights", payload)])
    report = scan_bytes(data)
    assert any(f.member == "archive/weights" and f.global_name == "os.system" for f in report.findings)
    assert "archive/weights@0" in report.members
    (tmp_path / "weights").write_bytes(zipfile.ZipFile(io.BytesIO(data)).read("archive/weights"))
    subprocess.run([sys.executable, "-c", "import pickle, sys; pickle.load(open(sys.argv[1], 'rb'))",
                    str(tmp_path / "weights")], cwd=tmp_path, timeout=60, capture_output=True)
    assert marker.exists()  # the member is a real payload for anything that unpickles it


def test_members_that_are_not_pickles_are_not_judged_as_pickles():
    data = zip_of([("archive/data.pkl", benign_p2()), ("archive/byteorder", b"little"), ("archive/notes", b"Loss 3.2\n"),
                   ("archive/blob", bytes(range(256)) * 64), ("archive/version", b"3\n")])
    report = scan_bytes(data)
    assert report.verdict == "safe", report.to_dict()


def test_any_config_json_in_a_zip_is_checked(tmp_path):
    config = keras_config(str(tmp_path / "marker"))
    for members in ([("config.json", config)], [("sub/config.json", config)], [("model.json", config)]):
        report = scan_bytes(zip_of(members))
        assert "keras-lambda" in {f.rule for f in report.findings}, members[0][0]
    plain = scan_bytes(zip_of([("config.json", b'{"architectures": ["Bert"], "hidden_size": 8}')]))
    assert plain.verdict == "safe"


# ---- bombs ----------------------------------------------------------------------------------
def _headers(total: int, name: str = "archive/data.pkl") -> bytes:
    n = name.encode()
    unit = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 0, 0, 0, 0, 0, 0, len(n), 0) + n
    return unit * (total // len(unit))


BOMB = textwrap.dedent("""
    import resource, sys, time
    import weightkit
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    r = weightkit.scan(sys.argv[1])
    print(time.perf_counter() - t, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) << 10, r.verdict)
""")


@pytest.mark.parametrize("kind", ["no end record", "behind a one-member archive"])
def test_a_local_header_bomb_is_scanned_in_bounded_time_and_memory(tmp_path, kind):
    data = _headers(40 << 20)
    if kind != "no end record":
        members = checkpoint(benign_p2())
        body, offsets = raw_members(members, len(data))
        cd = directory(members, offsets)
        data += body + cd + end(len(members), len(cd), len(data) + len(body))
    path = tmp_path / "bomb.pt"
    path.write_bytes(data)
    out = subprocess.run([sys.executable, "-c", BOMB, str(path)], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    seconds, grown, verdict = out.stdout.split()
    assert float(seconds) < 2 and int(grown) < 256 << 20, out.stdout
    assert verdict in ("unreadable", "malicious")
    r = CliRunner().invoke(app, ["summary", str(path)], env={"COLUMNS": "200"})
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1, r.output


# ---- structure mutations --------------------------------------------------------------------
def _fields(data: bytes) -> list[tuple[int, int]]:
    """``(offset, width)`` of every number in the end records and central directory entries."""
    out = []
    for sig, layout_ in ((b"PK\x05\x06", [(4, 2), (6, 2), (8, 2), (10, 2), (12, 4), (16, 4), (20, 2)]),
                         (b"PK\x06\x07", [(4, 4), (8, 8), (16, 4)]),
                         (b"PK\x06\x06", [(4, 8), (24, 8), (32, 8), (40, 8), (48, 8)]),
                         (b"PK\x01\x02", [(8, 2), (10, 2), (20, 4), (24, 4), (28, 2), (30, 2), (32, 2), (34, 2), (42, 4)]),
                         (b"PK\x03\x04", [(6, 2), (8, 2), (18, 4), (22, 4), (26, 2), (28, 2)])):
        at = data.find(sig)
        while at >= 0:
            out += [(at + o, w) for o, w in layout_]
            at = data.find(sig, at + 4)
    return out


@pytest.mark.parametrize("which", ["torch", "npz"])
def test_mutated_zip_structure_never_breaks_the_scanner(which):
    seed = _torch_bytes({"w": torch.ones(3)}) if which == "torch" else _npz(False)
    values = [0, 1, 0xFF, 0xFFFF, 0xFFFFFFFF, len(seed), len(seed) - 22, 2**63]
    slowest = 0.0
    for at, width in _fields(seed):
        for v in values:
            data = bytearray(seed)
            data[at:at + width] = (v % (1 << 8 * width)).to_bytes(width, "little")
            t = time.perf_counter()
            report = scan_bytes(bytes(data))
            slowest = max(slowest, time.perf_counter() - t)
            if layout(bytes(data)).problems:
                assert report.verdict == "malicious", (at, width, v)
            assert report.verdict in ("safe", "needs-code", "unreadable", "malicious")
    assert slowest < 2

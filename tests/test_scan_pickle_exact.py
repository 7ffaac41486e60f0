"""The pickle machine computes what CPython's unpickler computes, npy headers read as numpy reads
them, and hostile nesting, nested payloads and shared containers stay bounded (issue 15).

The operand tests are properties over benign operands: whatever ``pickle.loads`` makes of an
``INT``/``LONG``/``FLOAT``/memo index, the machine makes the same (value and type), and it refuses
exactly what the C unpickler refuses."""

import io
import math
import os
import pickle
import struct
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import weightkit
from weightkit.errors import CorruptFileError
from weightkit.formats import npy
from weightkit.scanner import scan_bytes
from weightkit.scanner._pickle import MAX_NESTING, _float_either, c_decimal, c_float, c_int, c_long, walk
from weightkit.sources._restricted import unpickle

try:  # numpy's own header reader (numpy 2 keeps it here; numpy 1 in numpy.lib.format)
    from numpy.lib._format_impl import _read_array_header
except ImportError:  # pragma: no cover
    from numpy.lib.format import _read_array_header  # type: ignore[attr-defined,no-redef]

QUICK = settings(max_examples=300, deadline=None, derandomize=True, database=None)

# the characters operand parsers care about, plus NUL (the C unpickler's line ends there)
_NUMERIC = st.lists(st.sampled_from(list(b"0123456789") * 3 + list(b"0189xXoObBaAfFeE_+-. \t\x00Ljn")),
                    min_size=0, max_size=12).map(bytes)
_SPECIAL = st.sampled_from([b"00", b"01", b" 1", b"+1", b"-0", b"1\x00", b"0x", b"0x1f", b"010", b"08", b"0b11",
                            b"1_000", b"9223372036854775807", b"9223372036854775808", b"-9223372036854775809",
                            b"0x8000000000000000", b"077777777777777777777777", b"\x00", b" \x00", b"1L", b"L",
                            b"inf", b"-Infinity", b"nan", b"1e500", b"1e-500", b"1.5\x00x", b" 1.5", b"1_0.5",
                            b".5", b"5.", b"1e", b"1e+", b"infin", b"1" * 5000])
OPERANDS = _NUMERIC | _SPECIAL


def _loads(op: bytes, operand: bytes, loader=pickle.loads):
    """``(ok, value)`` of the one-opcode pickle ``op operand \\n .``."""
    try:
        return True, loader(op + operand + b"\n.")
    except Exception:
        return False, None


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


def _ours(parse, operand):
    try:
        return True, parse(operand)
    except ValueError:
        return False, None


@QUICK
@given(operand=OPERANDS)
def test_int_long_float_operands_are_what_the_c_unpickler_makes(operand):
    for op, parse in ((b"I", c_int), (b"L", c_long), (b"F", c_float)):
        ok, value = _loads(op, operand)
        mine_ok, mine = _ours(parse, operand)
        assert mine_ok == ok and (not ok or _same(mine, value)), (op, operand, value, mine)
        if ok:  # and the walk carries that value to STOP
            r = walk(op + operand + b"\n.")
            assert r.ok and _same(r.value, value), (op, operand, r.value)


@QUICK
@given(operand=OPERANDS)
def test_float_operands_walk_as_far_as_either_unpickler_reads(operand):
    c_ok, c_value = _loads(b"F", operand)
    py_ok, py_value = _loads(b"F", operand, lambda d: pickle._Unpickler(io.BytesIO(d)).load())
    ok, value = _ours(_float_either, operand)
    assert ok == (c_ok or py_ok)
    if ok:
        assert _same(value, c_value if c_ok else py_value)


@QUICK
@given(operand=OPERANDS)
def test_memo_indexes_are_what_the_c_unpickler_reads(operand):
    operand = operand[:6]  # the C unpickler allocates a memo array as long as the index
    ok, _ = _loads(b"Np", operand)  # PUT: the C unpickler refuses bad or negative indexes
    mine_ok, idx = _ours(c_decimal, operand)
    assert ok == (mine_ok and idx >= 0), (operand, idx)
    if ok:
        got = pickle.loads(b"Np" + operand + b"\n0g" + operand + b"\n.")
        assert got is None and walk(b"Np" + operand + b"\n0g" + operand + b"\n.").ok


# ---- npy headers as numpy reads them --------------------------------------------------------
_DIM = st.tuples(st.integers(0, 40), st.sampled_from(["{}", "{:#x}", "{:#o}", "{:#b}"]),
                 st.sampled_from(["", "L", " L", "L L", "l"]))
_TAIL = st.sampled_from(["", " # it's 2L", "\n# '3L'\n", "  "])


def _npy_header(dims, tail, version):
    shape = "(" + "".join(fmt.format(n) + suffix + ", " for n, fmt, suffix in dims) + ")"
    h = "{'descr': '|u1', 'fortran_order': False, 'shape': %s, }%s" % (shape, tail)
    width = 2 if version == (1, 0) else 4
    h = h + " " * (63 - (8 + width + len(h)) % 64) + "\n"
    raw = h.encode("latin-1")
    return b"\x93NUMPY" + bytes(version) + len(raw).to_bytes(width, "little") + raw


@QUICK
@given(dims=st.lists(_DIM, max_size=3), tail=_TAIL, version=st.sampled_from([(1, 0), (2, 0), (3, 0)]))
def test_npy_headers_read_as_numpy_reads_them(dims, tail, version):
    blob = _npy_header(dims, tail, version)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # numpy warns about Python 2 headers
            shape = _read_array_header(io.BytesIO(blob[8:]), version)[0]
    except Exception:
        shape = None
    size = len(blob) + (math.prod(shape) if shape is not None else 0)
    try:
        mine = npy.parse("a.npy", blob, size).shape
    except CorruptFileError:
        mine = None
    assert mine == shape, (blob, shape, mine)


# ---- nesting: a deep tuple used as a dict key crashes CPython while it hashes -----------------
def _deep_key(n: int) -> bytes:
    """``{((((),),),)…: 1}``, the key nested ``n`` + 1 levels deep."""
    return b"\x80\x02}" + b")" + b"\x85" * n + b"K\x01s."


DEEP = 200_000


@pytest.fixture(scope="module")
def deep_files(tmp_path_factory):
    import torch  # noqa: F401  (the zip helper below is torch's layout)

    from _malicious import torch_zip

    d = tmp_path_factory.mktemp("deep")
    (d / "deep.pkl").write_bytes(_deep_key(DEEP))
    (d / "deep.pt").write_bytes(torch_zip(_deep_key(DEEP)))
    return d


def _run(code: str, *args, timeout=60):
    env = {**os.environ, "KERAS_BACKEND": "torch"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env)


def test_deep_tuple_key_really_crashes_the_loaders(deep_files):
    """Not a straw man: pickle.load and torch.load(weights_only=True), which weightkit calls on
    zips the scanner passes, die with SIGSEGV."""
    r = _run("import pickle, sys; pickle.load(open(sys.argv[1], 'rb'))", deep_files / "deep.pkl")
    assert r.returncode == -11, r
    r = _run("import torch, sys; torch.load(sys.argv[1], weights_only=True)", deep_files / "deep.pt")
    assert r.returncode == -11, r


def test_deep_nesting_is_unreadable_and_refused_in_one_line(deep_files):
    # in subprocesses, so that a crash would show as a signal instead of killing the test run
    r = _run("""
        import sys, time, weightkit
        t = time.perf_counter()
        report = weightkit.scan(sys.argv[1])
        print(report.verdict, " ".join(f.rule for f in report.findings), time.perf_counter() - t < 5)
        try:
            weightkit.open(sys.argv[1])
        except weightkit.WeightkitError as e:
            print(type(e).__name__, f"limit {1000}" if "more than 1000 levels" in str(e) else str(e))
    """, deep_files / "deep.pkl")
    assert (r.returncode, r.stdout.splitlines()) == (0, ["unreadable limit-exceeded True",
                                                         "CorruptFileError limit 1000"]), r
    r = subprocess.run([sys.executable, "-m", "weightkit", "summary", str(deep_files / "deep.pt")],
                       capture_output=True, text=True, timeout=60)
    out = (r.stdout + r.stderr).strip()
    assert r.returncode == 2 and len(out.splitlines()) == 1 and "Traceback" not in out, r
    assert "nested more than 1000 levels" in out and "archive/data.pkl" in out


def test_nesting_just_under_the_bound_is_read():
    data = _deep_key(MAX_NESTING - 2)  # the key tuple is MAX_NESTING - 1 deep, inside a dict
    assert scan_bytes(data).verdict == "safe"
    assert len(unpickle(io.BytesIO(data), "x")) == 1


@pytest.mark.parametrize("data", [
    _deep_key(MAX_NESTING + 1),
    _deep_key(DEEP),
    # the same depth through calls: builtins.tuple([t]) wraps t one level deeper each time
    b"\x80\x02)" + b"q\x00cbuiltins\ntuple\n]h\x00a\x85R" * (MAX_NESTING + 1) + b".",
], ids=["just-over", "crashing", "through-calls"])
def test_restricted_unpickler_refuses_deep_tuples_itself(data):
    """Defence in depth: even without the scanner in front, a one-line CorruptFileError."""
    with pytest.raises(CorruptFileError, match="nested more than 1000 levels") as e:
        unpickle(io.BytesIO(data), "deep.pkl")
    assert "\n" not in str(e.value)


# ---- nested payloads: one budget, each payload scanned once -----------------------------------
def _loads_bomb(levels: int, calls: int, marker: str) -> bytes:
    """``levels`` pickles nested in each other, each calling pickle.loads on its (memoised)
    inner pickle ``calls`` times: a naive scan walks ``calls ** levels`` pickles."""
    from _malicious import P, bb, evil_p2, g

    p = evil_p2(marker)
    for _ in range(levels):
        p = P(2) + bb(p) + b"q\x000" + (g("pickle", "loads") + b"h\x00\x85R0") * calls + b"N."
    return p


def test_nested_loads_bomb_scans_in_milliseconds(tmp_path):
    data = _loads_bomb(4, 200, str(tmp_path / "MARKER"))
    t = time.perf_counter()
    report = scan_bytes(data)
    assert time.perf_counter() - t < 2
    assert report.verdict == "malicious" and len(report.findings) < 20 and len(report.members) < 20
    # each level's payload is reported once, where it is first loaded
    nested = [f.member for f in report.findings if f.rule == "global-critical" and f.member]
    assert len(nested) == len(set(nested)) == 3
    assert not (tmp_path / "MARKER").exists()


def test_one_opcode_budget_for_all_nested_pickles(monkeypatch):
    """Distinct nested payloads are each scanned, but all of them from one budget."""
    import weightkit.scanner.report as report_mod
    from _malicious import P, bb, g

    inner = [P(2) + b"N" + b"0N" * (300 + i) + b"." for i in range(5)]  # ~600 opcodes each
    outer = P(2) + b"".join(g("pickle", "loads") + bb(p) + b"\x85R0" for p in inner) + b"N."
    assert not any(f.rule == "limit-exceeded" for f in scan_bytes(outer).findings)
    monkeypatch.setattr(report_mod, "MAX_OPS", 2000)
    findings = scan_bytes(outer).findings
    assert sum(f.rule == "limit-exceeded" for f in findings) == 1
    assert scan_bytes(outer).verdict == "malicious"  # pickle.loads itself is still seen


# ---- metadata walks linear in the file ------------------------------------------------------
def test_keys_sharing_one_list_open_in_linear_time(tmp_path):
    import torch

    shared = [torch.zeros(1) for _ in range(100)] + list(range(1000))
    path = tmp_path / "shared.pt"
    torch.save({f"k{i}": shared for i in range(8000)}, path)
    t = time.perf_counter()
    ws = weightkit.open(path)
    assert time.perf_counter() - t < 5  # 34 s when every key walked the shared list
    assert len(ws) == 100


def test_state_dict_search_through_shared_keys_is_not_exponential(tmp_path):
    import torch

    from weightkit.sources.torch_checkpoint import STATE_DICT_KEYS

    x: dict = {"leaf": 1}
    for _ in range(8):  # 12 ** 8 paths to a dict holding no tensor, through the keys searched first
        x = {k: x for k in STATE_DICT_KEYS}
    path = tmp_path / "keys.pt"
    torch.save({**x, "w": [torch.zeros(1)]}, path)
    t = time.perf_counter()
    ws = weightkit.open(path)
    assert time.perf_counter() - t < 5
    assert [t.name for t in ws] == ["w.0"]


def test_shared_submodules_are_named_within_a_budget(tmp_path):
    """A module shared twice per level names 2**k paths (state_dict() semantics): a 5 KB file
    of 16 levels took 200 s; now refused in one line, while a 12-level one still opens."""
    import torch
    from torch import nn

    def dag(k):
        m = nn.Linear(1, 1)
        for _ in range(k):
            p = nn.Module()
            p.a = p.b = m
            m = p
        return m

    torch.save(dag(12), tmp_path / "ok.pt")
    torch.save(dag(16), tmp_path / "dag.pt")
    assert len(weightkit.open(tmp_path / "ok.pt")) == 2
    t = time.perf_counter()
    with pytest.raises(CorruptFileError, match="names more than .* modules and tensors") as e:
        weightkit.open(tmp_path / "dag.pt")
    assert time.perf_counter() - t < 5 and "\n" not in str(e.value) and "dag.pt" in str(e.value)


def test_npy_header_length_counts_characters_like_numpy():
    # a 3.0 (UTF-8) header of 9,000 characters and 18,000 bytes: numpy reads it, so does the parser
    h = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }" + " " * 100 + "#" + "é" * 8900
    raw = (h + "\n").encode("utf-8")
    blob = b"\x93NUMPY\x03\x00" + struct.pack("<I", len(raw)) + raw + bytes(8)
    assert np.load(io.BytesIO(blob)).shape == (2,)
    assert npy.parse("a.npy", blob, len(blob)).shape == (2,)

"""The header parsers of ``weightkit.formats`` (safetensors, ``.npy``), which the readers and the
scanner share: tables of hostile and edge headers, each opened with ``weightkit.open`` and judged
with ``weightkit.scan``, and properties checked against the formats' own loaders.

The agreement asserted on every file, read from the code: a header the parser refuses makes
``weightkit.open`` raise ``CorruptFileError`` (with the parser's own message once the first bytes
start like the format) and ``weightkit.scan`` say ``unreadable`` (a ``container-error`` naming the
same problem, when the first bytes start like the format). A header it accepts opens, reads, and
scans ``safe``. Two exceptions, both
about content, not the header: an object dtype (open raises ``UnsafeCheckpointError``, scan says
``needs-code`` or worse: the data is a pickle) and a ``.npy`` dtype that numpy knows but that is no
weight (strings, records: open raises ``CorruptFileError`` "not a weight dtype", scan says ``safe``:
the data holds no code).
"""

import ast
import io
import json
import math
import pickle
import re
import struct
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import weightkit
from weightkit import _dtypes
from weightkit.errors import CorruptFileError, UnsafeCheckpointError
from weightkit.formats import npy, safetensors

QUICK = settings(max_examples=100, deadline=None, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.too_slow])


def judge(path: Path) -> tuple[str, str, str]:
    """``(how open ended, scan verdict, open's message)``: open lists and reads every tensor."""
    message = ""
    try:
        with weightkit.open(path) as ws:
            for w in ws:
                w.numpy()
        opened = "ok"
    except CorruptFileError as e:
        opened, message = "corrupt", str(e)
    except UnsafeCheckpointError as e:
        opened, message = "unsafe", str(e)
    return opened, weightkit.scan(path).verdict, message


def assert_agree(path: Path, refused: CorruptFileError | None, *, weight: bool = True, sniffed: bool = True) -> None:
    """The reader and the scanner agree with the parser's answer (``refused``) on ``path``; when
    the first bytes start like the format (``sniffed``) the scanner names the parser's problem."""
    opened, verdict, message = judge(path)
    if refused is None:
        assert (opened, verdict) == (("ok" if weight else "corrupt"), "safe"), message
        return
    assert (opened, verdict) == ("corrupt", "unreadable"), message
    assert "\n" not in message and str(path) in message
    if sniffed:
        problem = str(refused).split(": ", 1)[1][:100]
        findings = weightkit.scan(path).findings
        assert any(problem in f.message for f in findings if f.rule == "container-error"), (problem, findings)


# ---- safetensors ----------------------------------------------------------------------------
def st_bytes(header, data: bytes = b"", length: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


def f32(n: int, begin: int = 0) -> dict:
    return {"dtype": "F32", "shape": [n], "data_offsets": [begin, begin + 4 * n]}


GOOD_ST = [
    pytest.param(st_bytes({"a": f32(2), "b": {"dtype": "BF16", "shape": [2, 1], "data_offsets": [8, 12]},
                           "__metadata__": {"format": "pt"}}, bytes(12)), id="two-tensors-and-metadata"),
    pytest.param(st_bytes(b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}      ', bytes(4)),
                 id="header-padded-with-spaces"),  # safetensors pads its header to 8 bytes this way
    pytest.param(st_bytes({"a": f32(1), "z": {"dtype": "F32", "shape": [0, 3], "data_offsets": [4, 4]}}, bytes(4)),
                 id="empty-tensor-at-the-end"),
    pytest.param(st_bytes({}), id="no-tensors"),
    pytest.param(st_bytes({"s": {"dtype": "I64", "shape": [], "data_offsets": [0, 8]}}, bytes(8)), id="scalar"),
]

# (bytes, a phrase of the parser's message); every file here is refused by parser, reader and scanner
BAD_ST = [
    pytest.param(b"\x02\x00\x00\x00\x00", "no header", id="truncated-prefix"),
    pytest.param(st_bytes(b"{}", length=2**64 - 1), "more than the format allows", id="length-2**64-1"),
    pytest.param(st_bytes(b'{"a": 1}', length=1000), "but the file has", id="length-past-the-end"),
    pytest.param(st_bytes(b' {"a": ' + json.dumps(f32(1)).encode() + b"}", bytes(4)), "does not start with",
                 id="leading-space"),  # safetensors' own loader accepts it; weightkit never did
    pytest.param(st_bytes(b'{"fc.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]', bytes(16)),
                 "not valid JSON", id="unterminated-json"),
    pytest.param(st_bytes(b'{"a\xff": 1}'), "not valid JSON", id="not-utf-8"),
    pytest.param(st_bytes(json.dumps({"a": f32(1)}).encode("utf-16-le"), bytes(4)), "not valid JSON",
                 id="utf-16"),  # the reader's json.loads(bytes) used to guess UTF-16 and accept it
    pytest.param(st_bytes(b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"), "not valid JSON", id="nested-json-bomb"),
    pytest.param(st_bytes(b'{"a": {"dtype": "F32", "shape": [' + b"1" * 5000 + b'], "data_offsets": [0, 4]}}', bytes(4)),
                 "not valid JSON", id="5000-digit-integer"),  # json's ValueError used to escape the reader's checks
    pytest.param(st_bytes({"__metadata__": None, "a": f32(1)}, bytes(4)), "__metadata__",
                 id="metadata-null"),  # the reader took a null (or any false value) as no metadata
    pytest.param(st_bytes({"__metadata__": {"epoch": 3}, "a": f32(1)}, bytes(4)), "__metadata__", id="metadata-int"),
    pytest.param(st_bytes({"__metadata__": ["x"], "a": f32(1)}, bytes(4)), "__metadata__", id="metadata-list"),
    pytest.param(st_bytes({"a": 1}), "not a JSON object", id="entry-not-an-object"),
    pytest.param(st_bytes({"a": {"dtype": "Q7", "shape": [4], "data_offsets": [0, 16]}}, bytes(16)), "unknown dtype",
                 id="unknown-dtype"),
    pytest.param(st_bytes({"a": {"dtype": "F8_E8M0", "shape": [4], "data_offsets": [0, 4]}}, bytes(4)),
                 "unknown dtype", id="dtype-weightkit-cannot-read"),  # the scanner used to call it safe
    pytest.param(st_bytes({"a": {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}}, bytes(4)),
                 "unknown dtype", id="dtype-a-list"),
    pytest.param(st_bytes({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}}), "shape", id="negative-dim"),
    pytest.param(st_bytes({"a": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}, bytes(4)), "shape",
                 id="bool-dim"),
    pytest.param(st_bytes({"a": {"dtype": "F32", "shape": [1.0], "data_offsets": [0, 4]}}, bytes(4)), "shape",
                 id="float-dim"),
    pytest.param(st_bytes({"a": {"dtype": "F32", "shape": [1] * 65, "data_offsets": [0, 4]}}, bytes(4)), "at most 64",
                 id="65-dims"),  # used to open, then fail reading it (numpy holds 64 axes); the scanner said safe
    pytest.param(st_bytes({"w": {"dtype": "F32", "shape": [2**40], "data_offsets": [0, 2**42]}}, bytes(16)),
                 "truncated", id="huge-shape"),
    pytest.param(st_bytes({"a": {"dtype": "F32", "shape": [4]}}, bytes(16)), "data_offsets", id="no-offsets"),
    pytest.param(st_bytes({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4, 8]}}, bytes(8)), "data_offsets",
                 id="three-offsets"),
    pytest.param(st_bytes({"a": {"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]}}, bytes(4)), "byte range",
                 id="negative-offset"),
    pytest.param(st_bytes({"a": {"dtype": "F32", "shape": [0], "data_offsets": [8, 4]}}, bytes(8)), "byte range",
                 id="begin-after-end"),
    pytest.param(st_bytes({"a": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 16]}}, bytes(16)),
                 "declares 64 bytes", id="shape-size-mismatch"),
    pytest.param(st_bytes({"a": f32(4), "b": f32(4, 8)}, bytes(24)), "overlaps", id="overlap"),
    pytest.param(st_bytes({"a": f32(2), "z": {"dtype": "F32", "shape": [0], "data_offsets": [4, 4]}}, bytes(8)),
                 "overlaps", id="empty-tensor-inside-another"),
    pytest.param(st_bytes({"a": f32(1, 4)}, bytes(8)), "hole", id="hole"),
    pytest.param(st_bytes({"a": f32(1)}, bytes(8)), "trailing bytes", id="trailing-bytes"),
    pytest.param(st_bytes({"a": f32(4)}, bytes(10)), "truncated", id="data-truncated"),
]


@pytest.mark.parametrize("blob", GOOD_ST)
def test_safetensors_header_accepted_everywhere(tmp_path, blob):
    path = tmp_path / "ok.safetensors"
    path.write_bytes(blob)
    header = safetensors.parse(path, blob, len(blob))
    assert header == safetensors.read(path)
    assert_agree(path, None)


@pytest.mark.parametrize("blob, phrase", BAD_ST)
def test_safetensors_header_refused_everywhere(tmp_path, blob, phrase):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(blob)
    with pytest.raises(CorruptFileError) as e:
        safetensors.parse(path, blob, len(blob))
    assert phrase in str(e.value) and "\n" not in str(e.value) and str(e.value).startswith(f"{path}: ")
    sniffed = safetensors.looks_like(blob[:16])
    assert_agree(path, e.value, sniffed=sniffed)
    if sniffed:  # the reader's message is the parser's
        with pytest.raises(CorruptFileError, match="^" + re.escape(str(e.value)) + "$"):
            weightkit.open(path)


def test_safetensors_header_past_the_format_limit_is_not_read(tmp_path):
    """100,000,000 bytes is the safetensors crate's limit (weightkit allowed 100 MiB); a longer
    header is refused from its length, before a byte of it is read."""
    path = tmp_path / "big.safetensors"
    with open(path, "wb") as f:
        f.write(st_bytes(b"{", length=safetensors.MAX_HEADER_BYTES + 1))
        f.truncate(8 + safetensors.MAX_HEADER_BYTES + 1)  # sparse
    with pytest.raises(CorruptFileError, match="more than the format allows"):
        safetensors.read(path)
    assert judge(path)[:2] == ("corrupt", "unreadable")


@st.composite
def st_files(draw):
    """A safetensors file built from drawn entries: mostly valid, sometimes with a dtype weightkit
    does not read, a negative dimension, an offset or a data length off by one, bad metadata."""
    names = draw(st.lists(st.text(max_size=6).filter(lambda s: s != "__metadata__"), max_size=4, unique=True))
    codes = [*_dtypes.SAFETENSORS_CODES, "F8_E8M0"]
    entries, order = {}, draw(st.permutations(range(len(names))))
    pos = 0
    for i in order:
        code = draw(st.sampled_from(codes))
        shape = draw(st.lists(st.integers(-1, 3) if draw(st.integers(0, 9)) == 0 else st.integers(0, 3), max_size=3))
        size = math.prod(shape) * _dtypes.itemsize(_dtypes.SAFETENSORS_CODES.get(code, "uint8"))
        begin = max(0, pos + draw(st.sampled_from([0] * 8 + [-1, 1])))
        entries[names[i]] = {"dtype": code, "shape": shape, "data_offsets": [begin, begin + max(size, 0)]}
        pos = begin + max(size, 0)
    meta = draw(st.sampled_from(["absent"] * 3 + ["strings"] * 3 + ["null", "number"]))
    if meta != "absent":
        entries["__metadata__"] = {"strings": {"format": "pt", "k": "v"}, "null": None, "number": {"n": 1}}[meta]
    header = json.dumps(dict(draw(st.permutations(list(entries.items()))))).encode()
    header += b" " * draw(st.integers(0, 7))
    return st_bytes(header, bytes(max(0, pos + draw(st.sampled_from([0] * 8 + [-1, 1])))))


@QUICK
@given(blob=st_files())
def test_accepted_safetensors_headers_are_what_safetensors_reads(blob):
    """Whatever the parser accepts, ``safetensors.safe_open`` opens the same way (same tensors,
    dtypes, shapes, metadata); and the reader and scanner agree with the parser either way."""
    from safetensors import safe_open

    with tempfile.TemporaryDirectory() as d:
        path = Path(d, "m.safetensors")
        path.write_bytes(blob)
        try:
            header = safetensors.parse(path, blob, len(blob))
        except CorruptFileError as e:
            assert_agree(path, e, sniffed=safetensors.looks_like(blob[:16]))
            return
        codes = {v: k for k, v in _dtypes.SAFETENSORS_CODES.items()}
        with safe_open(str(path), framework="numpy") as f:
            assert sorted(f.keys()) == sorted(header.tensors)
            assert (f.metadata() or {}) == header.metadata
            for name, info in header.tensors.items():
                piece = f.get_slice(name)
                assert (piece.get_dtype(), tuple(piece.get_shape())) == (codes[info.dtype], info.shape)
        assert_agree(path, None)


# ---- .npy -----------------------------------------------------------------------------------
def npy_bytes(text: str, data: bytes = b"", version=(1, 0), length: int | None = None) -> bytes:
    """A ``.npy`` file whose header is ``text`` as written (numpy's padding not required)."""
    width, encoding = (2, "latin-1") if version[0] == 1 else (4, "utf-8" if version[0] == 3 else "latin-1")
    raw = text.encode(encoding)
    return npy.MAGIC + bytes(version) + (len(raw) if length is None else length).to_bytes(width, "little") + raw + data


def hdr(descr="'<f4'", fortran="False", shape="(2,)") -> str:
    return f"{{'descr': {descr}, 'fortran_order': {fortran}, 'shape': {shape}, }}\n"


GOOD_NPY = [
    pytest.param(npy_bytes(hdr(), bytes(8)), True, id="v1"),
    pytest.param(npy_bytes(hdr(shape="(2, 3)"), bytes(24), version=(2, 0)), True, id="v2"),
    pytest.param(npy_bytes(hdr(shape="()"), bytes(4), version=(3, 0)), True, id="v3-scalar"),
    pytest.param(npy_bytes(hdr(fortran="True", shape="(2, 3)"), bytes(24)), True, id="fortran-order"),
    pytest.param(npy_bytes(hdr(shape="(0, 5)")), True, id="empty"),
    # written by numpy under Python 2: numpy drops the L, and so does the parser now; the scanner
    # used to call these unreadable while the reader read them
    pytest.param(npy_bytes(hdr(shape="(2L, 3L)"), bytes(24)), True, id="python2-long-v1"),
    pytest.param(npy_bytes(hdr(shape="(2L,)"), bytes(8), version=(2, 0)), True, id="python2-long-v2"),
    pytest.param(npy_bytes(hdr(descr="[('xL', '<f4')]", shape="(2L,)"), bytes(8)), False,
                 id="python2-long-keeps-strings"),
    pytest.param(npy_bytes(hdr(descr="'<U2'"), bytes(16)), False, id="not-a-weight-dtype"),
]

BAD_NPY = [
    pytest.param(b"\x93NUMPY", "bad magic", id="truncated-magic"),
    pytest.param(npy_bytes(hdr(), bytes(8))[:-40], "ends inside", id="header-cut"),
    # the scanner used to call the version, key, shape and size cases below safe (it checked the dtype only)
    pytest.param(npy_bytes(hdr(), bytes(8), version=(0, 0)), "version 0.0", id="version-0"),
    pytest.param(npy_bytes(hdr(), bytes(8), version=(4, 0)), "version 4.0", id="version-4"),
    pytest.param(npy_bytes(hdr(), bytes(8), version=(1, 1)), "version 1.1", id="version-1.1"),
    pytest.param(npy_bytes(hdr()[:-1] + " " * 10_000 + "\n", bytes(8), version=(2, 0)), "at most 10000",
                 id="header-over-numpys-limit"),  # the scanner allowed 1 MiB and called it safe
    pytest.param(npy_bytes(hdr(), bytes(8), version=(2, 0), length=2**32 - 1), "at most 10000", id="length-4-GiB"),
    pytest.param(npy_bytes(hdr(shape="(2L,)"), bytes(8), version=(3, 0)), "bad .npy header",
                 id="python2-long-in-v3"),  # numpy refuses it too
    pytest.param(npy_bytes("[1, 2]\n", bytes(8)), "bad .npy header", id="not-a-dict"),
    pytest.param(npy_bytes(hdr()[:-3] + "'x': 1}\n", bytes(8)), "bad .npy header", id="extra-key"),
    pytest.param(npy_bytes("{'descr': '<f4', 'shape': (2,)}\n", bytes(8)), "bad .npy header", id="missing-key"),
    pytest.param(npy_bytes(hdr(shape="(-1,)")), "non-negative", id="negative-dim"),
    pytest.param(npy_bytes(hdr(shape="(True,)"), bytes(4)), "non-negative", id="bool-dim"),  # numpy's parser takes it
    pytest.param(npy_bytes(hdr(shape="[2]"), bytes(8)), "not a tuple", id="shape-a-list"),
    pytest.param(npy_bytes(hdr(shape="(1,) * 65"), bytes(4)), "bad .npy header", id="shape-an-expression"),
    pytest.param(npy_bytes(hdr(shape="(" + "1, " * 65 + ")"), bytes(4)), "at most 64", id="65-dims"),
    pytest.param(npy_bytes(hdr(fortran="1"), bytes(8)), "fortran_order", id="fortran-order-int"),
    pytest.param(npy_bytes(hdr(descr="'<q9'"), bytes(8)), "bad .npy header", id="bad-descr"),
    pytest.param(npy_bytes(hdr(descr="('<f4',)"), bytes(8)), "bad .npy header", id="descr-short-tuple"),
    pytest.param(npy_bytes(hdr(descr="__import__('os').system('touch PWNED')"), bytes(8)), "bad .npy header",
                 id="code-in-the-header"),
    pytest.param(npy_bytes(hdr(shape="(" + "[" * 300 + "]" * 300 + ",)"), bytes(8)), "bad .npy header",
                 id="nested-bomb"),
    pytest.param(npy_bytes(hdr(shape="(2**40, 2**20)"), bytes(64)), "bad .npy header", id="power-expression"),
    pytest.param(npy_bytes(hdr(shape="(1099511627776, 1048576)"), bytes(64)), "the data is truncated", id="huge-shape"),
    pytest.param(npy_bytes(hdr(), bytes(7)), "the data is truncated", id="data-truncated"),
    pytest.param(npy_bytes(hdr(), bytes(9)), "1 trailing bytes", id="trailing-bytes"),  # the reader accepted it
]


@pytest.mark.parametrize("blob, weight", GOOD_NPY)
def test_npy_header_accepted_everywhere(tmp_path, blob, weight):
    path = tmp_path / "ok.npy"
    path.write_bytes(blob)
    header = npy.parse(path, blob, len(blob))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numpy warns about Python 2 headers
        arr = np.load(io.BytesIO(blob), allow_pickle=False)
    assert (header.shape, header.dtype, header.fortran_order) == (arr.shape, arr.dtype, arr.flags.f_contiguous
                                                                  and not arr.flags.c_contiguous)
    assert_agree(path, None, weight=weight)
    if weight:
        np.testing.assert_array_equal(weightkit.open(path)[path.stem].numpy(), arr)


@pytest.mark.parametrize("blob, phrase", BAD_NPY)
def test_npy_header_refused_everywhere(tmp_path, blob, phrase, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "bad.npy"
    path.write_bytes(blob)
    with pytest.raises(CorruptFileError) as e:
        npy.parse(path, blob, len(blob))
    assert phrase in str(e.value) and "\n" not in str(e.value) and str(e.value).startswith(f"{path}: ")
    assert_agree(path, e.value)
    with pytest.raises(CorruptFileError, match="^" + re.escape(str(e.value)) + "$"):
        weightkit.open(path)
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("descr", ["'|O'", "[('a', '<f4'), ('b', '|O')]"])
def test_object_arrays_are_parsed_then_refused_or_flagged(tmp_path, descr):
    blob = npy_bytes(hdr(descr=descr, shape="(1,)"), pickle.dumps([{"a": 1}], protocol=2))
    path = tmp_path / "obj.npy"
    path.write_bytes(blob)
    header = npy.parse(path, blob, len(blob))  # no size check: the data is a pickle
    assert header.dtype.hasobject and header.data_start == len(blob) - len(pickle.dumps([{"a": 1}], protocol=2))
    assert judge(path)[:2] == ("unsafe", "needs-code")
    assert "numpy-object-array" in {f.rule for f in weightkit.scan(path).findings}


def npz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


@pytest.mark.parametrize("member, refused", [
    (npy_bytes(hdr(), bytes(8)), False),
    (npy_bytes(hdr(shape="(2L,)"), bytes(8)), False),
    (npy_bytes(hdr(), bytes(4)), True),  # the scanner used to judge only the dtype of a member
    (npy_bytes(hdr(shape="(-2,)"), bytes(8)), True),
    (npy_bytes(hdr() + " " * 10_000, bytes(8), version=(2, 0)), True),
], ids=["valid", "python2-long", "data-truncated", "negative-dim", "header-over-limit"])
def test_npz_members_agree(tmp_path, member, refused):
    path = tmp_path / "a.npz"
    path.write_bytes(npz({"w.npy": member}))
    error = None
    try:
        npy.parse("w.npy", member, len(member))
    except CorruptFileError as e:
        error = e
    assert (error is not None) == refused
    opened, verdict, message = judge(path)
    assert (opened, verdict) == (("corrupt", "unreadable") if refused else ("ok", "safe")), message


NPY_DESCRS = ["'<f4'", "'>f8'", "'|u1'", "'<i2'", "'|b1'", "'<c8'", "'<U2'", "'|S3'", "[('a', '<f4'), ('b', '<i2', (2,))]"]


@QUICK
@given(descr=st.sampled_from(NPY_DESCRS), shape=st.lists(st.integers(0, 3), max_size=3), fortran=st.booleans(),
       version=st.sampled_from([(1, 0), (2, 0), (3, 0)]), py2=st.booleans(), extra=st.sampled_from([0] * 4 + [-1, 1]))
def test_accepted_npy_headers_are_what_numpy_reads(descr, shape, fortran, version, py2, extra):
    """Whatever the parser accepts, ``np.load(allow_pickle=False)`` reads the same way (shape,
    dtype, order, values), including Python 2 ``L`` suffixes; and the reader and the scanner agree
    with the parser either way."""
    dims = ", ".join(f"{d}{'L' if py2 else ''}" for d in shape) + ("," if len(shape) == 1 else "")
    dtype = np.lib.format.descr_to_dtype(ast.literal_eval(descr))
    need = math.prod(shape) * dtype.itemsize
    data = np.random.default_rng(0).integers(0, 256, max(0, need + extra), dtype=np.uint8)
    blob = npy_bytes(hdr(descr, str(fortran), f"({dims})"), data.tobytes(), version)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d, "a.npy")
        path.write_bytes(blob)
        try:
            header = npy.parse(path, blob, len(blob))
        except CorruptFileError as e:
            assert data.size != need or (py2 and version == (3, 0) and shape)
            assert_agree(path, e)
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = np.load(io.BytesIO(blob), allow_pickle=False)
        assert (header.shape, header.dtype) == (arr.shape, arr.dtype)
        weight = descr in NPY_DESCRS[:6]
        assert_agree(path, None, weight=weight)
        if weight:
            np.testing.assert_array_equal(weightkit.open(path)["a"].numpy(), arr)


class _Marker:
    """Unpickles to a call of print: a stand-in for a gadget that np.load would run."""

    def __reduce__(self):
        return (print, ("np.load unpickled this",))


@pytest.mark.parametrize("shape, pad, version", [
    ("(-1,)", 0, (1, 0)),                 # a negative dimension
    ("(" + "1, " * 70 + ")", 0, (1, 0)),  # more axes than numpy can hold
    ("(True,)", 0, (1, 0)),               # a bool where an int belongs
    ("(1,)", 20_000, (2, 0)),             # a header past numpy's 10,000-byte limit
])
def test_object_arrays_numpy_still_unpickles_are_walked_although_their_header_is_refused(tmp_path, capsys, shape,
                                                                                          pad, version):
    """np.load(allow_pickle=True) unpickles an object array before it looks at the shape, and lifts
    its header limit: the readers refuse such a header, but the scanner must still walk the pickle."""
    import pickle

    text = hdr("'|O'", shape=shape).replace("}", " " * pad + "}")  # numpy pads inside the literal
    blob = npy_bytes(text, pickle.dumps(_Marker(), protocol=2), version=version)
    path = tmp_path / "x.npy"
    path.write_bytes(blob)
    np.load(path, allow_pickle=True)
    assert "np.load unpickled this" in capsys.readouterr().out  # numpy really does run it
    with pytest.raises(CorruptFileError):
        weightkit.open(path)
    report = weightkit.scan(path)
    rules = {f.rule for f in report.findings}
    assert report.verdict != "safe" and {"container-error", "numpy-object-array"} <= rules
    assert any(f.global_name == "builtins.print" for f in report.findings), report.findings
    zipped = tmp_path / "x.npz"
    zipped.write_bytes(npz({"x.npy": blob}))
    assert {"container-error", "numpy-object-array"} <= {f.rule for f in weightkit.scan(zipped).findings}


@pytest.mark.parametrize("header, why", [
    ('{"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}',
     "names 'w' twice"),
    ('{"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"shape":[1]}}', "names 'shape' twice"),
    ('{"__metadata__":{"a":"1","a":"2"},"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', "names 'a' twice"),
    ('{"\\ud800":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', "not valid Unicode"),
    ('{"__metadata__":{"k":"\\udfff"},"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', "not valid Unicode"),
])
def test_safetensors_headers_that_parsers_read_differently_are_refused(tmp_path, header, why):
    """Python's json keeps the last of two equal keys and accepts escaped lone surrogates; the
    Rust loader does neither, so such a header means different tensors to different loaders."""
    raw = header.encode()
    blob = struct.pack("<Q", len(raw)) + raw + b"x"
    with pytest.raises(CorruptFileError, match=why):
        safetensors.parse("m.safetensors", blob, len(blob))
    path = tmp_path / "m.safetensors"
    path.write_bytes(blob)
    assert weightkit.scan(path).verdict == "unreadable"
    with pytest.raises(CorruptFileError):
        weightkit.open(path)

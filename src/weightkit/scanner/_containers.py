"""Opening containers the way loaders do, reading only what can hold code.

``torch.load`` takes a file as a zip when it starts with ``PK\\x03\\x04``, else tries it as a
legacy tar, else unpickles it from byte 0 (magic number, protocol, sys_info, the object,
storage keys, then raw storage bytes). ``zipfile`` and miniz find a zip by its end record,
wherever it starts. The scanner looks at a file from every one of these angles, so a file that
is two things at once (a pickle with a zip appended) is seen as both, and flagged.

Tensor bytes are never read: zip members named ``data/<n>`` are skipped, legacy files stop
after their pickles, safetensors/npy are judged by their headers.
"""

from __future__ import annotations

import hashlib
import io
import re
import struct
import tarfile
import zipfile
import zlib
from collections import Counter
from pathlib import Path

from weightkit.errors import CorruptFileError
from weightkit.formats import npy, safetensors
from weightkit.formats.hdf5 import check_global_heaps, scan_global_heaps
from weightkit.scanner._allowlist import keras_findings, storage_element_size
from weightkit.scanner._pickle import OPCODES, PickleResult, _Global, walk
from weightkit.scanner.report import Ctx

MAX_DEPTH = 3  # nested archives / nested pickle payloads
MAX_MEMBERS = 100_000
MAX_MEMBER_BYTES = 512 << 20  # one pickle/config/nested archive read into memory
MAX_RATIO = 500  # compression ratio above which a big member is a bomb
MAX_SEQUENCE = 1_000_000  # pickles in a legacy stream
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_TENSOR_DATA = re.compile(r"(^|/)\.?data/\d+$")
_ARCHIVES = (".zip", ".pt", ".pth", ".bin", ".ckpt", ".tar", ".npz", ".keras", ".pkl", ".pickle", ".joblib")
_HDF5 = b"\x89HDF\r\n\x1a\n"


def run_pickle(ctx: Ctx, data, member, depth, start=0, end=None, base=0) -> PickleResult:
    """Walk one pickle into ``ctx``; constant payloads of nested deserialisers are scanned too,
    each distinct payload once (its findings are reported where it is first loaded)."""
    ctx.members.append(f"{member}@{start - base}" if member else f"pickle@{start}")

    def nested(payload: bytes, position: int, loader: str):
        digest = hashlib.sha256(payload).digest()
        if digest not in ctx.payloads:
            ctx.payloads.add(digest)
            scan_blob(ctx, payload, f"{member or 'pickle'}@{position}>{loader}", depth + 1)

    r = _walk(ctx, data, start, end, base=base, member=member, on_nested=nested)
    ctx.findings.extend(r.findings)
    ctx.globals.update(r.globals)
    return r


def _walk(ctx: Ctx, data, start=0, end=None, **kw) -> PickleResult:
    """:func:`walk` charged to the scan's opcode budget; once it is spent (one finding says so)
    further pickles are not walked."""
    if ctx.ops_left <= 0:
        return PickleResult(start, start, False, None, [], Counter(), "opcode budget exhausted")
    r = walk(data, start, end, allow=ctx.allow, max_ops=ctx.ops_left, **kw)
    ctx.ops_left -= r.ops
    return r


def _join(member, name):
    return name if member is None else f"{member}!{name}"


def _is_opcode(b: int) -> bool:
    return b in OPCODES and b != ord("P")  # a zip's "PK" would be PERSID, which loaders refuse


# ---- dispatch -------------------------------------------------------------------------------
def scan_blob(ctx: Ctx, data, member, depth: int, path=None) -> None:
    """Scan ``data`` (bytes or mmap of the whole file/member) as every loader would see it."""
    if depth > MAX_DEPTH:
        ctx.add("limit-exceeded", f"nested deeper than {MAX_DEPTH} levels; not inspected", member)
        return
    n = len(data)
    if n == 0:
        ctx.add("unknown-format", "empty file: not a weights file", member)
        return
    head = bytes(data[:16])
    if head.startswith(b"PK\x03\x04"):
        return scan_zip(ctx, data, member, depth, path)
    handled = True
    if npy.looks_like(head):
        ctx.kind("npy", depth)
        scan_npy(ctx, data, member, depth)
    elif safetensors.looks_like(head):
        ctx.kind("safetensors", depth)
        scan_safetensors(ctx, data, member)
    elif _hdf5_offset(data) is not None:
        ctx.kind("h5", depth)
        scan_h5(ctx, data, member, path)
    elif _is_tar(data):
        ctx.kind("torch-tar", depth)
        scan_tar(ctx, data, member, depth)
    elif _is_opcode(data[0]):
        handled = False
        scan_pickle_stream(ctx, data, member, depth)
    else:
        handled = False
        if _zip_end(data) is None:
            ctx.kind("unknown", depth)
            ctx.add("unknown-format", f"not a known weights format (first bytes {head[:8]!r})", member)
    if handled and _is_opcode(data[0]):  # the same bytes read as a pickle, as torch.load would
        r = _walk(ctx, data, 0, member=member)
        if r.ok or r.globals:
            ctx.add("polyglot", "the file also parses as a pickle from byte 0; torch.load would unpickle it", member, 0)
            ctx.findings.extend(f for f in r.findings if f.severity != "info")
            ctx.globals.update(r.globals)
    off = _zip_end(data)
    if off is not None:
        ctx.add("polyglot", "a zip archive is appended: zip readers see its members, torch.load reads the start",
                member, off)
        scan_zip(ctx, data, member, depth, path, embedded=True)


def scan_pickle_stream(ctx: Ctx, data, member, depth, start=0, end=None, base=0) -> None:
    """A raw pickle file, a legacy ``torch.save`` file, or a pickle member of a container."""
    end = len(data) if end is None else end
    r = run_pickle(ctx, data, member, depth, start, end, base)
    if not r.ok:
        ctx.kind("pickle", depth)
        return
    if r.value == LEGACY_MAGIC and type(r.value) is int:
        ctx.kind("torch-legacy", depth)
        pos = r.end
        for _ in range(4):  # protocol version, sys_info, the object, storage keys; raw bytes follow
            r = run_pickle(ctx, data, member, depth, pos, end, base)
            if not r.ok:
                return
            pos = r.end
        return
    ctx.kind("pickle", depth)
    rest = end - r.end
    if rest <= 0 or (bytes(data[r.end:r.end + 4]) == b"PK\x03\x04" and _zip_end(data) is not None):
        return
    if _is_opcode(data[r.end]):
        pos, k = r.end, 0
        while pos < end and k < 64:
            r = run_pickle(ctx, data, member, depth, pos, end, base)
            k += 1
            if not r.ok:
                break
            pos = r.end
        ctx.add("trailing-data", f"{rest} bytes after STOP hold more pickles; a loader that reads on runs them",
                member, r.start - base)
    else:
        ctx.add("trailing-data", f"{rest} bytes after the pickle's STOP", member, end - rest - base)


# ---- zip ------------------------------------------------------------------------------------
def _zip_end(data):
    """Offset of the first member of a zip found by its end record, for data not starting with one."""
    if bytes(data[:4]) == b"PK\x03\x04" or len(data) < 22:
        return None
    tail = bytes(data[max(0, len(data) - 65557):])
    i = tail.rfind(b"PK\x05\x06")
    if i < 0:
        return None
    try:
        with zipfile.ZipFile(_reader(data)) as zf:
            infos = zf.infolist()
        return min((z.header_offset for z in infos), default=len(data) - len(tail) + i)
    except Exception:
        return None


def _reader(data):
    return io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else _MMapFile(data)


class _MMapFile(io.RawIOBase):
    """A seekable read-only file over an mmap, without copying it."""

    readable = seekable = lambda self: True  # noqa: E731

    def __init__(self, mm):
        self.mm, self.pos = mm, 0

    def seek(self, off, whence=0):
        self.pos = (off, self.pos + off, len(self.mm) + off)[whence]
        return self.pos

    def tell(self):
        return self.pos

    def readinto(self, b):
        chunk = self.mm[self.pos:self.pos + len(b)]
        b[:len(chunk)] = chunk
        self.pos += len(chunk)
        return len(chunk)


def _read_member(ctx, zf, info, name) -> bytes | None:
    if info.file_size > MAX_MEMBER_BYTES or (info.compress_size and info.file_size > (1 << 20)
                                             and info.file_size / info.compress_size > MAX_RATIO):
        ctx.add("limit-exceeded", f"member declares {info.file_size} bytes (limit {MAX_MEMBER_BYTES}, "
                f"ratio {info.file_size / max(info.compress_size, 1):.0f}); not read (zip bomb?)", name)
        return None
    chunks, total = [], 0
    try:
        with zf.open(info) as f:
            while total <= MAX_MEMBER_BYTES:
                c = f.read(1 << 20)
                if not c:
                    break
                chunks.append(c)
                total += len(c)
    except Exception as e:  # CRC errors, encryption, bad compression
        ctx.add("container-error", f"member cannot be read ({type(e).__name__}: {str(e)[:80]})", name)
    if total > MAX_MEMBER_BYTES:
        ctx.add("limit-exceeded", f"member decompresses past {MAX_MEMBER_BYTES} bytes (zip bomb?)", name)
        return None
    return b"".join(chunks) if ctx.budget(total, name) else None


def scan_zip(ctx: Ctx, data, member, depth, path=None, embedded=False) -> None:
    try:
        zf = zipfile.ZipFile(_reader(data))
        infos = zf.infolist()
    except Exception as e:
        ctx.kind("zip", depth)
        ctx.add("container-error", f"zip central directory unreadable ({type(e).__name__}); "
                "members found by their local headers are scanned", member)
        _scan_local(ctx, data, 0, len(data), member, depth)
        return
    with zf:
        names = [i.filename for i in infos]
        is_keras = "config.json" in names and ("model.weights.h5" in names or "metadata.json" in names)
        if all(n.endswith(".npy") for n in names) and names:
            ctx.kind("npz", depth)
        elif is_keras:
            ctx.kind("keras", depth)
        else:
            ctx.kind("torch-zip" if any(n.endswith("data.pkl") for n in names) else "zip", depth)
        if len(infos) > MAX_MEMBERS:
            ctx.add("limit-exceeded", f"{len(infos)} members; only the first {MAX_MEMBERS} are scanned", member)
            infos = infos[:MAX_MEMBERS]
        for dup, k in Counter(names).items():
            if k > 1:
                ctx.add("zip-duplicate", f"{k} members named {dup!r}: readers disagree on which one counts",
                        _join(member, dup))
        first = min((i.header_offset for i in infos), default=0)
        if first > 0 and not embedded:
            ctx.add("polyglot", f"{first} bytes before the first listed member (hidden entries or another file)", member, 0)
            _scan_local(ctx, data, 0, first, member, depth)
        for info in infos:
            try:
                _scan_zip_member(ctx, zf, info, member, depth, is_keras)
            except Exception as e:  # one odd member must not hide the others
                ctx.add("container-error", f"member cannot be inspected ({type(e).__name__})", _join(member, info.filename))


def _scan_zip_member(ctx, zf, info, member, depth, is_keras):
    name, where = info.filename, _join(member, info.filename)
    if name.endswith("/") or _TENSOR_DATA.search(name):
        return
    low = name.lower()
    if low.endswith((".pkl", ".pickle")):
        blob = _read_member(ctx, zf, info, where)
        if blob is not None:
            scan_blob(ctx, blob, where, depth)
        return
    if low.endswith(".npy"):
        try:
            with zf.open(info) as f:
                head = f.read(npy.HEAD_BYTES)
        except Exception as e:
            ctx.add("container-error", f"member cannot be read ({type(e).__name__})", where)
            return
        if _npy_header(ctx, head, info.file_size, where, quiet=True) is None:
            return  # plain array: its data is not read
        blob = _read_member(ctx, zf, info, where)
        if blob is not None:
            scan_npy(ctx, blob, where, depth)
        return
    if is_keras and name == "config.json":
        blob = _read_member(ctx, zf, info, where)
        if blob is not None:
            ctx.members.append(where)
            _keras_json(ctx, blob, where)
        return
    try:
        with zf.open(info) as f:
            peek = f.read(8)
    except Exception:
        peek = b""
    looks = peek.startswith((b"PK\x03\x04", b"\x93NUMPY")) or (len(peek) > 1 and peek[0] == 0x80 and 1 <= peek[1] <= 5)
    if looks or (low.endswith(_ARCHIVES) and not low.endswith(".h5")):
        blob = _read_member(ctx, zf, info, where)
        if blob:
            scan_blob(ctx, blob, where, depth + 1)


def _scan_local(ctx, data, start, stop, member, depth):
    """Members found by walking local file headers (for damaged or prefixed zips)."""
    pos, seen = start, 0
    while seen < MAX_MEMBERS:
        i = data.find(b"PK\x03\x04", pos, stop)
        if i < 0 or i + 30 > stop:
            return
        _, _, flag, method, _, _, _, csize, usize, nlen, xlen = struct.unpack_from("<IHHHHHIIIHH", data, i)
        name = bytes(data[i + 30:i + 30 + nlen]).decode("utf-8", "replace")
        off = i + 30 + nlen + xlen
        pos, seen = off if not csize else off + csize, seen + 1
        if not name.lower().endswith((".pkl", ".pickle")) or off >= stop:
            continue
        raw = bytes(data[off:min(stop, off + (csize or MAX_MEMBER_BYTES))])
        where = _join(member, name)
        try:
            blob = raw if method == 0 else zlib.decompressobj(-15).decompress(raw, MAX_MEMBER_BYTES) if method == 8 else None
        except zlib.error:
            blob = None
        if blob is None:
            ctx.add("container-error", f"local entry with compression method {method} cannot be read", where, i)
        elif ctx.budget(len(blob), where):
            scan_pickle_stream(ctx, blob, where, depth)


# ---- tar (legacy torch) ---------------------------------------------------------------------
def _is_tar(data) -> bool:
    if len(data) < 512:
        return False
    try:
        tarfile.TarInfo.frombuf(bytes(data[:512]), "utf-8", "surrogateescape")
        return True
    except Exception:
        return False


def scan_tar(ctx, data, member, depth) -> None:
    try:
        tf = tarfile.open(fileobj=_reader(data), mode="r:")
        k = 0
        for m in tf:
            k += 1
            if k > MAX_MEMBERS:
                ctx.add("limit-exceeded", f"more than {MAX_MEMBERS} tar members", member)
                break
            if not m.isfile():
                continue
            start, end, where = m.offset_data, m.offset_data + m.size, _join(member, m.name)
            if end > len(data):
                ctx.add("container-error", "tar member runs past the end of the file", where)
                continue
            if m.name in ("storages", "tensors"):
                _legacy_sequence(ctx, data, start, end, where, depth, m.name)
            elif m.name in ("pickle", "sys_info") or m.name.lower().endswith((".pkl", ".pickle")):
                scan_pickle_stream(ctx, data, where, depth, start, end, start)
            elif end > start and (bytes(data[start:start + 4]) == b"PK\x03\x04" or m.name.lower().endswith(_ARCHIVES)):
                if m.size <= MAX_MEMBER_BYTES and ctx.budget(m.size, where):
                    scan_blob(ctx, bytes(data[start:end]), where, depth + 1)
    except Exception as e:
        ctx.add("container-error", f"tar archive unreadable ({type(e).__name__}: {str(e)[:80]})", member)


def _legacy_sequence(ctx, data, start, end, where, depth, kind) -> None:
    """``storages``/``tensors`` of a legacy tar checkpoint: a count, then per item a pickle
    followed by raw bytes whose length the loader computes; walked exactly."""
    r = run_pickle(ctx, data, where, depth, start, end, start)
    if not r.ok:
        return
    count, pos = r.value, r.end
    if type(count) is not int or not 0 <= count <= MAX_SEQUENCE:
        ctx.add("container-error", f"{kind}: bad item count {count!r}", where, r.start - start)
        return
    for _ in range(count):
        r = run_pickle(ctx, data, where, depth, pos, end, start)
        if not r.ok:
            return
        pos = r.end
        try:
            if kind == "storages":
                stype = r.value[2] if isinstance(r.value, tuple) and len(r.value) == 3 else None
                size = storage_element_size(stype.rec.name) if isinstance(stype, _Global) else None
                if size is None:
                    ctx.add("container-error", "storages: unknown storage type; raw data cannot be skipped",
                            where, r.start - start)
                    return
                pos += 8 + struct.unpack_from("<q", data, pos)[0] * size
            else:
                pos += 8 + 16 * struct.unpack_from("<i", data, pos)[0] + 8
        except struct.error:
            pos = end + 1
        if not start <= pos <= end:
            ctx.add("container-error", f"{kind}: raw data runs past the member", where)
            return
    if kind == "storages":
        run_pickle(ctx, data, where, depth, pos, end, start)


# ---- numpy ----------------------------------------------------------------------------------
def _npy_header(ctx, head, size, where, quiet=False):
    """Where the pickle starts when the array holds Python objects (its data is a pickle), else
    ``None``; a header the readers refuse is a finding. ``quiet`` (a zip member's first bytes):
    decide nothing but whether to read the whole member (0 when its header is refused: numpy may
    still unpickle it, see :func:`npy.pickle_start`)."""
    try:
        header = npy.parse(where, head, size)
    except CorruptFileError as e:
        if quiet:
            return 0
        ctx.add("container-error", _problem(e, where), where)
        start = npy.pickle_start(head)
        if start is not None:
            ctx.add("numpy-object-array", "numpy object array whose header the readers refuse: "
                    "np.load(allow_pickle=True) still unpickles its data", where, start)
        return start
    if not header.dtype.hasobject:
        return None
    if not quiet:
        ctx.add("numpy-object-array", f"numpy object array (dtype {str(header.dtype)[:60]}): "
                "np.load(allow_pickle=True) unpickles its data", where, header.data_start)
    return header.data_start


def scan_npy(ctx, data, member, depth) -> None:
    where = member or "array"
    ctx.members.append(where)
    end = _npy_header(ctx, data, len(data), where)
    if end is not None:
        scan_pickle_stream(ctx, data, where, depth, end)


# ---- safetensors ----------------------------------------------------------------------------
def scan_safetensors(ctx, data, member) -> None:
    """The header only, checked by the readers' own parser; tensor bytes hold no code."""
    where = _join(member, "header")
    ctx.members.append(where)
    try:
        safetensors.parse(where, data, len(data))
    except CorruptFileError as e:
        ctx.add("container-error", f"invalid safetensors header: {_problem(e, where)}", where)


def _problem(e: CorruptFileError, name: str) -> str:
    """What a ``formats`` parser found, without the name its message starts with."""
    return str(e).removeprefix(f"{name}: ")[:200]


# ---- Keras ----------------------------------------------------------------------------------
def _keras_json(ctx, raw, where) -> None:
    for rule, message, name in keras_findings(raw, ctx.allow):
        ctx.add(rule, message, where, global_name=name)


def _hdf5_offset(data):
    off = 0
    while off + 8 <= len(data) and off <= (1 << 24):
        if bytes(data[off:off + 8]) == _HDF5:
            return off
        off = 512 if off == 0 else off * 2
    return None


def scan_h5(ctx, data, member, path=None) -> None:
    where = _join(member, "attrs")
    try:
        import h5py
    except ImportError:
        ctx.add("container-error", "HDF5 file: install h5py to check its Keras config", member)
        return

    try:  # the readers' own guard: libhdf5 loops forever on some corrupt global heaps
        if path is not None:
            check_global_heaps(Path(path))
        else:
            scan_global_heaps(Path(member or "hdf5"), bytes(data), 0, len(data))
    except CorruptFileError as e:
        ctx.add("container-error", f"HDF5 file unreadable ({str(e)[:120]})", member)
        return
    try:
        with h5py.File(path if path is not None else io.BytesIO(bytes(data)), "r") as f:
            ctx.members.append(where)
            for attr in ("model_config", "training_config"):
                if attr in f.attrs:
                    v = f.attrs[attr]
                    _keras_json(ctx, v.encode() if isinstance(v, str) else bytes(v), _join(member, attr))
    except Exception as e:
        ctx.add("container-error", f"HDF5 file unreadable ({type(e).__name__}: {str(e)[:80]})", member)

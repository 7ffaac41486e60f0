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
from weightkit.formats import zip as zipfmt
from weightkit.formats.hdf5 import check_global_heaps, scan_global_heaps
from weightkit.scanner._allowlist import keras_findings, storage_element_size
from weightkit.scanner._pickle import OPCODES, PickleResult, _Global, walk
from weightkit.scanner.report import Ctx

MAX_DEPTH = 3  # nested archives / nested pickle payloads
MAX_MEMBERS = 100_000
MAX_MEMBER_BYTES = 512 << 20  # one pickle/config/nested archive read into memory
MAX_CONFIG_BYTES = 64 << 20  # one JSON config read into memory (json.loads needs several times that)
SNIFF_BYTES = 64 << 10  # first bytes of a member tried as a pickle
MAX_LOCAL_HEADERS = 4096  # local headers walked where no directory can be read
MAX_LOCAL_BYTES = 64 << 20  # member bytes copied in that walk
MAX_LOCAL_PICKLES = 64  # pickles scanned in that walk
MAX_UNKNOWN_BYTES = 1 << 20  # bytes taken for a member whose local header gives no size
MAX_RATIO = 500  # compression ratio above which a big member is a bomb
MAX_SEQUENCE = 1_000_000  # pickles in a legacy stream
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_TENSOR_DATA = re.compile(r"(^|/)\.?data/\d+$")
_ARCHIVES = (".zip", ".pt", ".pth", ".bin", ".ckpt", ".tar", ".npz", ".keras", ".pkl", ".pickle", ".joblib")
_HDF5 = b"\x89HDF\r\n\x1a\n"


def run_pickle(ctx: Ctx, data, member, depth, start=0, end=None, base=0) -> PickleResult:
    """Walk one pickle into ``ctx``; constant payloads of nested deserialisers are scanned too."""
    ctx.members.append(f"{member}@{start - base}" if member else f"pickle@{start}")

    def nested(payload: bytes, position: int, loader: str):
        scan_blob(ctx, payload, f"{member or 'pickle'}@{position}>{loader}", depth + 1)

    r = walk(data, start, end, base=base, member=member, allow=ctx.allow, on_nested=nested)
    ctx.findings.extend(r.findings)
    ctx.globals.update(r.globals)
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
        r = walk(data, 0, allow=ctx.allow, member=member)
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


class _Zipped:
    """A member as ``zipfile`` reads it (numpy, Keras); as miniz reads it (``raw``) when zipfile
    refuses its local header (another name there: miniz never compares them)."""

    def __init__(self, zf, info, raw=None):
        self.zf, self.info, self.raw = zf, info, raw
        self.filename, self.file_size, self.compress_size = info.filename, info.file_size, info.compress_size

    def read(self, limit: int) -> bytes:
        try:
            return self._read(limit)
        except zipfile.BadZipFile:
            if self.raw is None:
                raise
            return self.raw.read(limit)

    def _read(self, limit: int) -> bytes:
        chunks, total = [], 0
        with self.zf.open(self.info) as f:
            while total < limit:
                c = f.read(min(1 << 20, limit - total))
                if not c:
                    break
                chunks.append(c)
                total += len(c)
        return b"".join(chunks)


class _Raw:
    """A member that another reader lists and ``zipfile`` does not, read as miniz reads it."""

    def __init__(self, data, entry, local):
        self.data, self.entry, self.local = data, entry, local
        self.filename, self.file_size, self.compress_size = entry.filename, entry.usize, entry.csize

    def read(self, limit: int) -> bytes:
        return zipfmt.member_bytes(self.data, self.entry, self.local, limit=limit)


def _read_member(ctx, m, name, limit=MAX_MEMBER_BYTES) -> bytes | None:
    """The whole member, or ``None`` (and a finding) when it is too big, a bomb or unreadable."""
    if m.file_size > limit or (m.compress_size and m.file_size > (1 << 20) and m.file_size / m.compress_size > MAX_RATIO):
        ctx.add("limit-exceeded", f"member declares {m.file_size} bytes (limit {limit}, "
                f"ratio {m.file_size / max(m.compress_size, 1):.0f}); not read (zip bomb?)", name)
        return None
    try:
        blob = m.read(limit + 1)
    except Exception as e:  # CRC errors, encryption, bad compression
        ctx.add("container-error", f"member cannot be read ({type(e).__name__}: {str(e)[:80]})", name)
        return None
    if len(blob) > limit:
        ctx.add("limit-exceeded", f"member decompresses past {limit} bytes (zip bomb?)", name)
        return None
    return blob if ctx.budget(len(blob), name) else None


def _head(m, n: int) -> bytes:
    try:
        return m.read(n)
    except Exception:
        return b""


def scan_zip(ctx: Ctx, data, member, depth, path=None, embedded=False) -> None:
    """A zip, read the way every zip reader does (:mod:`weightkit.formats.zip`): where readers
    disagree the file is ``zip-ambiguous``, and the members of every reader's view are scanned."""
    lay = zipfmt.layout(data)
    for message, at in lay.problems:
        ctx.add("zip-ambiguous", f"{message}: readers see different content", member, at)
    for message, at in lay.damage:
        ctx.add("container-error", message, member, at)
    for start, stop in lay.unlisted:  # members hidden there are read by streaming readers
        _scan_local(ctx, data, start, stop, member, depth)
    try:
        zf = zipfile.ZipFile(_reader(data))
        infos = zf.infolist()
    except Exception as e:
        ctx.kind("zip", depth)
        if lay.members:
            ctx.add("container-error", f"zipfile cannot read the archive ({type(e).__name__}); the members "
                    "other readers list are scanned", member)
            _scan_members(ctx, [_Raw(data, x, lay.locals[x.offset]) for x in lay.members[:MAX_MEMBERS]
                                if not isinstance(lay.locals.get(x.offset), str)], member, depth)
        else:
            ctx.add("container-error", f"zip central directory unreadable ({type(e).__name__}); "
                    "members found by their local headers are scanned", member)
            _scan_local(ctx, data, 0, len(data), member, depth)
        return
    with zf:
        names = [i.filename for i in infos]
        if all(n.endswith(".npy") for n in names) and names:
            ctx.kind("npz", depth)
        elif "config.json" in names and ("model.weights.h5" in names or "metadata.json" in names):
            ctx.kind("keras", depth)
        else:
            ctx.kind("torch-zip" if any(n.endswith("data.pkl") for n in names) else
                     "keras" if "config.json" in names else "zip", depth)
        if len(infos) > MAX_MEMBERS:
            ctx.add("limit-exceeded", f"{len(infos)} members; only the first {MAX_MEMBERS} are scanned", member)
            infos = infos[:MAX_MEMBERS]
        for dup, k in Counter(names).items():
            if k > 1:
                ctx.add("zip-duplicate", f"{k} members named {dup!r}: readers disagree on which one counts",
                        _join(member, dup))
        folded = Counter(n.lower() for n in set(names))
        for dup in sorted({n for n in names if folded[n.lower()] > 1}, key=str.lower):
            ctx.add("zip-duplicate", f"{dup!r} differs from another member only in case: miniz (torch.load) "
                    "finds members regardless of case", _join(member, dup))
        first = min((i.header_offset for i in infos), default=0)
        if first > 0 and not embedded:
            ctx.add("polyglot", f"{first} bytes before the first listed member (hidden entries or another file)", member, 0)
            _scan_local(ctx, data, 0, first, member, depth)
        raw = {(x.offset, x.filename): _Raw(data, x, lay.locals[x.offset]) for x in lay.members
               if not isinstance(lay.locals.get(x.offset), str)}
        zipped = [_Zipped(zf, i, raw.pop((i.header_offset, i.orig_filename), None)) for i in infos]
        _scan_members(ctx, zipped + list(raw.values())[:max(0, MAX_MEMBERS - len(infos))], member, depth)


def _scan_members(ctx, members, member, depth) -> None:
    for m in members:
        try:
            _scan_zip_member(ctx, m, member, depth)
        except Exception as e:  # one odd member must not hide the others
            ctx.add("container-error", f"member cannot be inspected ({type(e).__name__})", _join(member, m.filename))


def _scan_zip_member(ctx, m, member, depth):
    name, where = m.filename, _join(member, m.filename)
    if (name.endswith("/") and not m.file_size) or _TENSOR_DATA.search(name):
        return
    low = name.lower()
    if low.endswith((".pkl", ".pickle")):
        blob = _read_member(ctx, m, where)
        if blob is not None:
            scan_blob(ctx, blob, where, depth)
        return
    if low.endswith(".npy"):
        head = _head(m, npy.HEAD_BYTES)
        if _npy_header(ctx, head, m.file_size, where, quiet=True) is None:
            return  # plain array: its data is not read
        blob = _read_member(ctx, m, where)
        if blob is not None:
            scan_npy(ctx, blob, where, depth)
        return
    head = _head(m, SNIFF_BYTES)
    if low.rsplit("/", 1)[-1] == "config.json" or (low.endswith(".json") and _keras_like(head)):
        blob = _read_member(ctx, m, where, MAX_CONFIG_BYTES)  # Keras reads config.json before its weights
        if blob is not None:
            ctx.members.append(where)
            _keras_json(ctx, blob, where)
        return
    looks = head.startswith((b"PK\x03\x04", b"\x93NUMPY")) or (len(head) > 1 and head[0] == 0x80 and 1 <= head[1] <= 5)
    if looks or (low.endswith(_ARCHIVES) and not low.endswith(".h5")):
        blob = _read_member(ctx, m, where)
        if blob:
            scan_blob(ctx, blob, where, depth + 1)
    elif head and _is_opcode(head[0]) and _pickle_like(head, complete=len(head) < SNIFF_BYTES):
        blob = _read_member(ctx, m, where)  # a pickle under another name (protocol 0/1 has no PROTO)
        if blob:
            scan_blob(ctx, blob, where, depth)


def _keras_like(head: bytes) -> bool:
    """JSON that names classes the way Keras configs do (``class_name``), by its first bytes."""
    return head.lstrip()[:1] == b"{" and b'"class_name"' in head


def _pickle_like(head: bytes, complete: bool) -> bool:
    """Whether bytes parse as a pickle: the walk reaches STOP or imports a global, or (``head``
    being the start of a longer member) runs to its end without an error."""
    r = walk(head, 0)
    return r.ok or bool(r.globals) or (not complete and any(f.rule == "pickle-truncated" for f in r.findings))


def _scan_local(ctx, data, start, stop, member, depth):
    """Members found by walking local file headers (for damaged or prefixed zips), as a streaming
    reader would: at most :data:`MAX_LOCAL_HEADERS` headers and :data:`MAX_LOCAL_BYTES` bytes read."""
    read = scanned = 0
    walked = zipfmt.local_headers(data, start, stop, limit=MAX_LOCAL_HEADERS + 1)
    for k, h in enumerate(walked):
        if k == MAX_LOCAL_HEADERS or read >= MAX_LOCAL_BYTES or scanned == MAX_LOCAL_PICKLES:
            ctx.add("limit-exceeded", f"{k} local headers ({scanned} pickles, {read >> 20} MiB) walked without a "
                    "central directory; the rest are not inspected", member, h.offset)
            return
        name = h.name.decode("utf-8", "replace")
        if h.data_start >= stop:
            continue
        size = h.csize if h.csize not in (0, 0xFFFFFFFF) else _unknown_size(data, h.data_start, stop)
        raw = bytes(data[h.data_start:min(stop, h.data_start + min(size, MAX_LOCAL_BYTES - read))])
        read += len(raw)
        if not (name.lower().endswith((".pkl", ".pickle")) or (raw and _is_opcode(raw[0]) and _pickle_like(raw[:SNIFF_BYTES], True))):
            continue
        where, scanned = _join(member, name), scanned + 1
        try:
            blob = raw if h.method == 0 else zlib.decompressobj(-15).decompress(raw, MAX_MEMBER_BYTES) if h.method == 8 else None
        except zlib.error:
            blob = None
        if blob is None:
            ctx.add("container-error", f"local entry with compression method {h.method} cannot be read", where, h.offset)
        elif ctx.budget(len(blob), where):
            scan_pickle_stream(ctx, blob, where, depth)


def _unknown_size(data, start, stop) -> int:
    """Bytes of a member whose local header gives no size: up to the next zip signature."""
    nxt = data.find(b"PK", start, min(stop, start + MAX_UNKNOWN_BYTES))
    while nxt >= 0 and bytes(data[nxt:nxt + 4]) not in (b"PK\x03\x04", b"PK\x01\x02", b"PK\x07\x08", b"PK\x05\x06"):
        nxt = data.find(b"PK", nxt + 2, min(stop, start + MAX_UNKNOWN_BYTES))
    return (nxt if nxt >= 0 else min(stop, start + MAX_UNKNOWN_BYTES)) - start


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

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

import bisect
import hashlib
import io
import posixpath
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
from weightkit.formats.hdf5 import check_global_heaps, reaches_outside, scan_global_heaps
from weightkit.scanner._allowlist import keras_findings, storage_element_size
from weightkit.scanner._pickle import OPCODES, PickleResult, _Global, walk
from weightkit.scanner.report import Ctx

MAX_DEPTH = 3  # nested archives / nested pickle payloads
MAX_MEMBERS = 100_000
MAX_MEMBER_BYTES = 512 << 20  # one pickle/config/nested archive read into memory
MAX_CONFIG_BYTES = 64 << 20  # one JSON config read into memory (the Keras readers' limit too)
SNIFF_BYTES = 64 << 10  # first bytes of a member tried as a pickle
MAX_LOCAL_HEADERS = 4096  # local headers walked where no directory can be read
MAX_LOCAL_BYTES = 64 << 20  # member bytes copied in that walk
MAX_LOCAL_PICKLES = 64  # pickles scanned in that walk
MAX_UNKNOWN_BYTES = 1 << 20  # bytes taken for a member whose local header gives no size
MAX_H5_IN_MEMORY = 256 << 20  # a compressed HDF5 member unpacked to check its objects
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


# ---- dispatch ----------------------------------------------------------------------------------
def scan_blob(ctx: Ctx, data, member, depth: int, path=None, *, by_name: bool = False) -> None:
    """Scan ``data`` (bytes or mmap of the whole file/member) as every loader would see it: as each
    format whose signature it carries (zip at byte 0, npy, safetensors, HDF5 at byte 0/512/1024/…,
    a tar ``tarfile`` opens), then as a pickle from byte 0 and as a zip found by its end record.
    Each view is judged; bytes that are two formats at once are a ``polyglot``. ``by_name``: a
    member looked at only because its name is a weights file's (``arrays/8.bin``): bytes that are
    no format and do not parse as a pickle are data (a loader that took them for a pickle would
    fail at once), not findings."""
    if depth > MAX_DEPTH:
        ctx.add("limit-exceeded", f"nested deeper than {MAX_DEPTH} levels; not inspected", member)
        return
    n = len(data)
    if n == 0:
        ctx.add("unknown-format", "empty file: not a weights file", member)
        return
    head = bytes(data[:16])
    views: list[str] = []  # formats whose own parser accepts the bytes
    candidates = 0
    for fmt, matches, scan in _VIEWS:
        if matches(data, head):
            candidates += 1
            if fmt != "zip":  # scan_zip names its kind (keras, torch-zip, npz…)
                ctx.kind(fmt, depth)
            if scan(ctx, data, member, depth, path) is not False and not (
                    fmt == "h5" and views == ["zip"] and _is_stored_member(data, _hdf5_offset(data))):
                views.append(fmt)
    if candidates and _is_opcode(data[0]):  # the same bytes read as a pickle, as torch.load would
        r = _walk(ctx, data, 0, member=member)
        if r.ok or r.globals:
            views.append("pickle")
            ctx.findings.extend(f for f in r.findings if f.severity != "info")
            ctx.globals.update(r.globals)
    elif not candidates and _is_opcode(data[0]):
        if by_name and not _pickle_like(bytes(data[:SNIFF_BYTES]), complete=n <= SNIFF_BYTES) and _zip_end(data) is None:
            ctx.add("skipped", f"named like a weights file but no format and not a pickle (first bytes "
                    f"{head[:8]!r}): data, not inspected", member)
            return
        scan_pickle_stream(ctx, data, member, depth)
    if len(views) > 1:
        ctx.add("polyglot", f"the file is at once {' and '.join(views)}: each loader that takes it for one of "
                "them reads different content", member, 0)
    off = _zip_end(data)
    if off is not None:
        ctx.add("polyglot", "a zip archive is appended: zip readers see its members, torch.load reads the start",
                member, off)
        scan_zip(ctx, data, member, depth, path, embedded=True)
    elif not candidates and not _is_opcode(data[0]):
        if by_name:
            ctx.add("skipped", f"named like a weights file but no format a loader reads (first bytes "
                    f"{head[:8]!r}): data, not inspected", member)
            return
        ctx.kind("unknown", depth)
        ctx.add("unknown-format", f"not a known weights format (first bytes {head[:8]!r})", member)


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


def _stored_span(data, info) -> tuple[int, int] | None:
    """``(start, end)`` of the bytes of a stored (uncompressed, unencrypted) zip member inside
    ``data``, from its local header, or ``None``: those bytes can be read in place."""
    if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 1:
        return None
    local = bytes(data[info.header_offset:info.header_offset + 30])
    if len(local) < 30 or local[:4] != b"PK\x03\x04":
        return None
    start = info.header_offset + 30 + sum(struct.unpack("<HH", local[26:30]))
    return (start, start + info.file_size) if start + info.file_size <= len(data) else None


def _is_stored_member(data, offset) -> bool:
    """Whether ``offset`` is where the data of a stored member of the zip ``data`` starts: an
    HDF5 signature there (a ``.keras`` weights member landing on byte 4096) is that member, the
    same bytes for every reader, not a second format."""
    try:
        with zipfile.ZipFile(_reader(data)) as zf:
            return any((span := _stored_span(data, info)) is not None and span[0] == offset
                       for info in zf.infolist())
    except Exception:
        return False


def _reader(data, start: int = 0, end: int | None = None):
    """A seekable read-only file over ``data[start:end]`` (bytes or a mapping), without copying."""
    if isinstance(data, (bytes, bytearray)) and start == 0 and end is None:
        return io.BytesIO(data)
    return _MMapFile(data, start, end)


class _MMapFile(io.RawIOBase):
    """A seekable read-only file over ``mm[start:end]`` (an mmap or bytes), without copying it."""

    readable = seekable = lambda self: True  # noqa: E731

    def __init__(self, mm, start: int = 0, end: int | None = None):
        self.mm, self.base = mm, start
        self.size = (len(mm) if end is None else min(end, len(mm))) - start
        self.pos = 0

    def seek(self, off, whence=0):
        self.pos = max(0, (off, self.pos + off, self.size + off)[whence])
        return self.pos

    def tell(self):
        return self.pos

    def read(self, size=-1):  # RawIOBase.read allocates ``size`` first: a tar header may declare 2**40
        stop = self.size if size is None or size < 0 else min(self.size, self.pos + size)
        chunk = bytes(self.mm[self.base + self.pos:self.base + stop]) if stop > self.pos else b""
        self.pos += len(chunk)
        return chunk

    def readinto(self, b):
        n = max(0, min(len(b), self.size - self.pos))
        b[:n] = self.mm[self.base + self.pos:self.base + self.pos + n]
        self.pos += n
        return n


class _Zipped:
    """A member as ``zipfile`` reads it (numpy, Keras); as miniz reads it (``raw``) when zipfile
    refuses its local header (another name there: miniz never compares them)."""

    def __init__(self, zf, info, raw=None, data=None):
        self.zf, self.info, self.raw, self.data = zf, info, raw, data
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
        zipped = [_Zipped(zf, i, raw.pop((i.header_offset, i.orig_filename), None), data) for i in infos]
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
    if head.startswith(_HDF5) or low.endswith((".h5", ".hdf5")):
        _scan_h5_member(ctx, m, where)
        return
    looks = head.startswith((b"PK\x03\x04", b"\x93NUMPY")) or (len(head) > 1 and head[0] == 0x80 and 1 <= head[1] <= 5)
    if looks or low.endswith(_ARCHIVES):
        blob = _read_member(ctx, m, where)
        if blob:
            scan_blob(ctx, blob, where, depth + 1, by_name=not looks)
    elif head and _is_opcode(head[0]) and _pickle_like(head, complete=len(head) < SNIFF_BYTES):
        blob = _read_member(ctx, m, where)  # a pickle under another name (protocol 0/1 has no PROTO)
        if blob:
            scan_blob(ctx, blob, where, depth)


def _scan_h5_member(ctx, m, where) -> None:
    """An HDF5 member (a ``.keras`` file's ``model.weights.h5``): its configs and objects that
    read outside the file, judged in place when it is stored (Keras writes it so; no byte of its
    datasets is read), else from memory up to :data:`MAX_H5_IN_MEMORY`."""
    span = _stored_span(m.data, m.info) if isinstance(m, _Zipped) and m.data is not None else None
    if span is not None:
        scan_h5(ctx, m.data, where, start=span[0], end=span[1])
        return
    if m.file_size > MAX_H5_IN_MEMORY:
        ctx.add("limit-exceeded", f"compressed HDF5 member of {m.file_size} bytes: its objects cannot be "
                f"checked without unpacking it (limit {MAX_H5_IN_MEMORY >> 20} MiB)", where)
        return
    blob = _read_member(ctx, m, where, MAX_H5_IN_MEMORY)
    if blob is not None:
        scan_h5(ctx, blob, where)


def _keras_like(head: bytes) -> bool:
    """JSON that names classes the way Keras configs do (``class_name``), by its first bytes."""
    return head.lstrip()[:1] == b"{" and b'"class_name"' in head


def _pickle_like(head: bytes, complete: bool) -> bool:
    """Whether bytes parse as a pickle: the walk reaches STOP, or calls or builds a global it
    imported, or (``head`` being the start of a longer member) runs to its end without an error.
    A global alone is not enough: random bytes starting with ``EXT4`` import one."""
    r = walk(head, 0)
    return (r.ok or any(f.global_name and f.ops for f in r.findings)
            or (not complete and any(f.rule == "pickle-truncated" for f in r.findings)))


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
_TAR_LOADED = ("sys_info", "pickle", "storages", "tensors")  # what torch's legacy loader reads, by name
_MAX_LINK_HOPS = 32


def is_tar_header(head) -> bool:
    """Whether 512 bytes are a tar header block ``tarfile`` accepts (V7, ustar, GNU or pax)."""
    try:
        tarfile.TarInfo.frombuf(bytes(head[:512]), "utf-8", "surrogateescape")
        return True
    except Exception:
        return False


def _is_tar(data) -> bool:
    """Whether ``tarfile.open(mode="r:")`` opens the bytes, as ``torch.load`` tries first for a
    file that does not start like a zip (it reads the first member's headers only)."""
    if len(data) < 512 or not is_tar_header(data[:512]):
        return False
    try:
        tarfile.open(fileobj=_reader(data), mode="r:", format=tarfile.PAX_FORMAT).close()
        return True
    except Exception:
        return False


def _link_target(members: list, by_name: dict, i: int):
    """``(index, outside)``: the member a link resolves to the way ``tarfile`` extracts it (a
    symlink relative to its own folder, searched in the whole archive; a hard link among the
    members before it), or ``None``; ``outside``: its path leaves the archive (absolute or
    ``..``), so an extracting loader reads a file of the machine instead. ``by_name`` maps each
    normalised name to the ascending indices of its members, so a link costs a bisection, not a
    pass over the archive."""
    m = members[i]
    name = posixpath.join(posixpath.dirname(m.name), m.linkname) if m.issym() else m.linkname
    norm = posixpath.normpath(name)
    outside = m.linkname.startswith("/") or norm == ".." or norm.startswith("../")
    found = by_name.get(norm, ())
    k = len(found) if m.issym() else bisect.bisect_left(found, i)
    return (found[k - 1] if k else None), outside


def scan_tar(ctx, data, member, depth) -> bool:
    """A tar (torch's oldest checkpoint format): what torch reads by name (``pickle``, ``storages``,
    ``tensors``, ``sys_info``), links resolved to the member they stand for, and any other member
    whose bytes parse as a pickle or that is an archive."""
    try:
        tf = tarfile.open(fileobj=_reader(data), mode="r:", format=tarfile.PAX_FORMAT)
        members: list[tarfile.TarInfo] = []
        for m in tf:
            if len(members) >= MAX_MEMBERS:
                ctx.add("limit-exceeded", f"more than {MAX_MEMBERS} tar members", member)
                break
            members.append(m)
    except Exception as e:
        ctx.add("container-error", f"tar archive unreadable ({type(e).__name__}: {str(e)[:80]})", member)
        return False
    by_name: dict[str, list[int]] = {}
    memo: dict[int, tuple] = {}
    for i, m in enumerate(members):
        by_name.setdefault(posixpath.normpath(m.name), []).append(i)
    for i, m in enumerate(members):
        where = _join(member, m.name)
        try:
            target = _resolve_links(ctx, members, by_name, i, member, memo)
            if target is not None and target.isfile():
                _scan_tar_member(ctx, tf, data, m.name, target, where, depth)
        except Exception as e:  # one odd member must not hide the others
            ctx.add("container-error", f"tar member cannot be inspected ({type(e).__name__})", where)
    return True


def _resolve_links(ctx, members, by_name, i, member, memo):
    """The member that member ``i`` stands for (itself unless a link), or ``None``; links that
    hide what torch reads, or that leave the archive, are findings. ``memo`` keeps each link's
    end (index or ``None``, and whether the chain left the archive), so chains are walked once."""
    m, where = members[i], _join(member, members[i].name)
    if not (m.islnk() or m.issym()):
        return m
    kind = "symlink" if m.issym() else "hard link"
    if m.name in _TAR_LOADED:
        ctx.add("tar-link", f"torch reads {m.name!r}, a {kind} to {m.linkname!r}: torch.save never "
                "writes links; the target is scanned as that member", where)
    path, j, end = [], i, None
    while j is not None and j not in memo and (members[j].islnk() or members[j].issym()):
        if len(path) > _MAX_LINK_HOPS:  # tarfile cannot resolve it either: extraction fails
            break
        path.append(j)
        nxt, outside = _link_target(members, by_name, j)
        if outside:  # reported at the link itself, once: it is memoised below
            ctx.add("tar-link", f"{'symlink' if members[j].issym() else 'hard link'} to {members[j].linkname!r}, "
                    "outside the archive: a loader that extracts it reads that file of the machine",
                    _join(member, members[j].name))
            end = (None, members[j].linkname)
            break
        j = nxt
    else:
        end = memo[j] if j in memo else (j, None)
    end = end or (None, None)
    for k in path:
        memo[k] = end
    target, left_to = end
    if left_to is not None and m.name in _TAR_LOADED and path[-1:] != [i]:
        ctx.add("tar-link", f"{kind} to {m.linkname!r} leads outside the archive ({left_to!r}): a loader that "
                "extracts it reads that file of the machine", where)
    return None if target is None else members[target]


def _scan_tar_member(ctx, tf, data, name, m, where, depth) -> None:
    """Member ``m``'s content, judged as what a loader reading it as ``name`` sees."""
    if m.issparse():  # the content has holes the raw bytes lack: read it the way tarfile does
        if m.size > MAX_MEMBER_BYTES or not ctx.budget(m.size, where):
            return
        fh = tf.extractfile(m)
        data, start, end = (fh.read(MAX_MEMBER_BYTES) if fh else b""), 0, m.size
    else:
        start, end = m.offset_data, m.offset_data + m.size
    if end > len(data):
        ctx.add("container-error", "tar member runs past the end of the file", where)
        return
    if name in ("storages", "tensors"):
        _legacy_sequence(ctx, data, start, end, where, depth, name)
    elif name in ("pickle", "sys_info") or name.lower().endswith((".pkl", ".pickle")):
        scan_pickle_stream(ctx, data, where, depth, start, end, start)
    elif end > start and _is_opcode(data[start]) and _pickle_like(
            bytes(data[start:min(end, start + SNIFF_BYTES)]), end - start <= SNIFF_BYTES):
        scan_pickle_stream(ctx, data, where, depth, start, end, start)
    elif end > start and ((zipped := bytes(data[start:start + 4]) == b"PK\x03\x04") or name.lower().endswith(_ARCHIVES)):
        if m.size <= MAX_MEMBER_BYTES and ctx.budget(m.size, where):
            scan_blob(ctx, bytes(data[start:end]), where, depth + 1, by_name=not zipped)


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
def scan_safetensors(ctx, data, member) -> bool:
    """The header only, checked by the readers' own parser; tensor bytes hold no code. False
    when the header is refused (a finding)."""
    where = _join(member, "header")
    ctx.members.append(where)
    try:
        safetensors.parse(where, data, len(data))
        return True
    except CorruptFileError as e:
        ctx.add("container-error", f"invalid safetensors header: {_problem(e, where)}", where)
        return False


def _problem(e: CorruptFileError, name: str) -> str:
    """What a ``formats`` parser found, without the name its message starts with."""
    return str(e).removeprefix(f"{name}: ")[:200]


# ---- Keras ----------------------------------------------------------------------------------
def _keras_json(ctx, raw, where) -> None:
    for rule, message, name in keras_findings(raw, ctx.allow):
        ctx.add(rule, message, where, global_name=name)


def _hdf5_offset(data):
    """Where libhdf5 finds the superblock: the signature at byte 0, 512, 1024, 2048, … (a user
    block before it may hold another format)."""
    off = 0
    while off + 8 <= len(data):
        if bytes(data[off:off + 8]) == _HDF5:
            return off
        off = 512 if off == 0 else off * 2
    return None


def scan_h5(ctx, data, member, path=None, start: int = 0, end: int | None = None) -> bool:
    """The Keras configs in the attributes, and every object that makes libhdf5 read outside the
    file (``formats.hdf5.reaches_outside``), of the HDF5 file ``data[start:end]`` (the whole
    file at ``path``, or a stored zip member read in place: its datasets are never read); False
    when h5py cannot open it (a finding)."""
    whole = path is not None and start == 0 and end is None
    end = len(data) if end is None else end
    where = _join(member, "attrs")
    try:
        import h5py
    except ImportError:
        ctx.add("container-error", "HDF5 file: install h5py to check its Keras config", member)
        return False

    try:  # the readers' own guard: libhdf5 loops forever on some corrupt global heaps
        if whole:
            check_global_heaps(Path(path))
        else:
            scan_global_heaps(Path(member or "hdf5"), data, start, end)
    except CorruptFileError as e:
        ctx.add("container-error", f"HDF5 file unreadable ({str(e)[:120]})", member)
        return False
    try:
        with h5py.File(path if whole else _reader(data, start, end), "r") as f:
            ctx.members.append(where)
            for attr in ("model_config", "training_config"):
                if attr in f.attrs:
                    v = f.attrs[attr]
                    _keras_json(ctx, v.encode() if isinstance(v, str) else bytes(v), _join(member, attr))
            for name, what, target in reaches_outside(f):
                if what != "soft link":  # stays in the file; only the readers refuse it (walks may loop)
                    ctx.add("hdf5-external", f"{what} pointing at {target!r}: reading it reads outside the file",
                            _join(member, name))
    except CorruptFileError as e:
        ctx.add("limit-exceeded", _problem(e, str(path or member)), member)
    except Exception as e:
        ctx.add("container-error", f"HDF5 file unreadable ({type(e).__name__}: {str(e)[:80]})", member)
        return False
    return True


def scan_json(ctx, fh, member, *, strict: bool) -> None:
    """A JSON file (``config.json`` of a Keras model directory, or any ``*.json``) judged as a
    Keras config: Keras deserialises ``config.json`` before it reads any weights. ``strict``:
    a file that is not JSON is a finding (else: not a config, nothing to judge)."""
    ctx.kind("json", 0)
    raw = fh.read(MAX_CONFIG_BYTES + 1)
    if len(raw) > MAX_CONFIG_BYTES:
        ctx.add("limit-exceeded", f"JSON file over {MAX_CONFIG_BYTES >> 20} MiB; not inspected", member)
        return
    ctx.members.append(member or "config")
    for rule, message, name in keras_findings(raw, ctx.allow):
        if strict or rule != "container-error":
            ctx.add(rule, message, member, global_name=name)


def signatures(data) -> list[str]:
    """The formats whose signature ``data`` carries (a tar only if ``tarfile`` opens it); more than
    one means loaders disagree on what the file is. Nothing past the first headers is read."""
    head = bytes(data[:16])
    return [fmt for fmt, matches, _ in _VIEWS if matches(data, head)]


def _view_npy(ctx, data, member, depth, path):
    scan_npy(ctx, data, member, depth)
    try:
        npy.parse(member or "array", data, len(data))
        return True
    except CorruptFileError:
        return False


# (format, whether the bytes carry its signature, its scan returning False when its parser refuses
# the bytes), in the order of ScanReport.format; torch.load's own order is zip, tar, pickle
_VIEWS = (
    ("zip", lambda data, head: head.startswith(b"PK\x03\x04"), scan_zip),
    ("npy", lambda data, head: npy.looks_like(head), _view_npy),
    ("safetensors", lambda data, head: safetensors.looks_like(head),
     lambda ctx, data, member, depth, path: scan_safetensors(ctx, data, member)),
    ("h5", lambda data, head: _hdf5_offset(data) is not None,
     lambda ctx, data, member, depth, path: scan_h5(ctx, data, member, path)),
    ("torch-tar", lambda data, head: _is_tar(data),
     lambda ctx, data, member, depth, path: scan_tar(ctx, data, member, depth)),
)

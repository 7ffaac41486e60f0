"""Zip structure as each reader of weight files finds it, and where the readers disagree.

A zip is found from its end: the end record (``PK\\x05\\x06``, followed by a comment), an
optional zip64 locator right before it pointing at a zip64 end record, and the central
directory those records describe, whose entries point at local headers. Readers resolve this
differently:

- CPython's ``zipfile`` (numpy, Keras) takes the end record at the file's end, else the last one
  in the final 64 KiB; it assumes the zip64 record sits right before the locator and the
  central directory right before that, and shifts every offset by the difference from the
  declared one (``concat``, bytes prepended to the archive). Newer CPythons first look where the
  locator points and require the directory to end there (both are modelled).
- miniz, inside ``torch.load``, takes the last end record with 22 bytes after it, follows the
  locator's offset to the zip64 record and reads the declared directory offset as it is; it
  reads exactly the declared number of entries and never compares local and central names.

:func:`layout` reads the structure the way each of them does (bounded: end records in the last
64 KiB, at most :data:`MAX_ENTRIES` entries per directory, one local header per entry; member
data is never read) and reports every disagreement, overlap and unlisted byte range. A file
written by a zip writer has none. :func:`member_bytes` reads one listed member, bounded;
:func:`local_headers` walks local headers for files without a usable directory.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from typing import Iterator, NamedTuple

from weightkit.errors import CorruptFileError

__all__ = ["Entry", "Local", "View", "Layout", "layout", "member_bytes", "local_headers",
           "MAX_ENTRIES", "READERS"]

MAX_ENTRIES = 100_000  # central directory entries read per directory
END, LOCATOR, END64, CENTRAL, LOCAL, DESCRIPTOR = (b"PK\x05\x06", b"PK\x06\x07", b"PK\x06\x06", b"PK\x01\x02",
                                                   b"PK\x03\x04", b"PK\x07\x08")
_GAP_SEARCH = 16 << 20  # bytes of an unlisted range searched for a hidden local header
_U32 = 0xFFFFFFFF
ZIPFILE, ZIPFILE_NEW, MINIZ = "zipfile", "zipfile (newer CPython)", "miniz (torch.load)"
READERS = (ZIPFILE, ZIPFILE_NEW, MINIZ)


class Entry(NamedTuple):
    """A central directory entry; ``offset`` is where its reader looks for the local header."""

    name: bytes
    method: int
    flags: int
    csize: int
    usize: int
    offset: int
    crc: int

    @property
    def filename(self) -> str:
        """The name as ``zipfile`` decodes it (UTF-8 when flagged, else cp437)."""
        return self.name.decode("utf-8" if self.flags & 0x800 else "cp437", "replace")


class Local(NamedTuple):
    """A local file header: what a reader finds at an entry's offset."""

    offset: int
    name: bytes
    method: int
    flags: int
    csize: int
    usize: int
    data_start: int


@dataclass(frozen=True)
class View:
    """One reader's idea of the archive: the records it uses and the entries it lists, or why it
    cannot read the archive (``stage``: ``"end"`` when it finds no end record or zip64 record,
    ``"directory"`` when the directory it finds is damaged)."""

    reader: str
    end: int | None = None
    end64: int | None = None
    start: int | None = None
    size: int = 0
    entries: tuple[Entry, ...] = ()
    error: str | None = None
    stage: str | None = None


@dataclass(frozen=True)
class Layout:
    """The structure of one zip: every reader's view, the members of all views together (by
    local header offset), their local headers, and what the readers disagree on (``(message,
    offset)`` in ``problems``; damage in ``damage``). ``first`` is where the first member or
    directory starts (bytes before it are prepended data, judged by the caller); ``unlisted``
    the byte ranges after it that no reader's structure covers."""

    size: int
    views: tuple[View, ...]
    members: tuple[Entry, ...]
    locals: dict[int, Local | str] = field(default_factory=dict)
    problems: tuple[tuple[str, int | None], ...] = ()
    damage: tuple[tuple[str, int | None], ...] = ()
    first: int = 0
    unlisted: tuple[tuple[int, int], ...] = ()

    def view(self, reader: str) -> View:
        return next(v for v in self.views if v.reader == reader)


def _u16(data, at):
    return struct.unpack_from("<H", data, at)[0]


def _u32(data, at):
    return struct.unpack_from("<I", data, at)[0]


def _u64(data, at):
    return struct.unpack_from("<Q", data, at)[0]


def _sig(data, at, sig) -> bool:
    return 0 <= at and at + 4 <= len(data) and data[at:at + 4] == sig


# ---- the end records ------------------------------------------------------------------------
def _zipfile_end(data) -> int | None:
    """``zipfile._EndRecData``: the end record at the very end (empty comment), else the last
    signature in the final 64 KiB, which must have 22 bytes after it."""
    n = len(data)
    if n < 22:
        return None
    if _sig(data, n - 22, END) and data[n - 2:n] == b"\0\0":
        return n - 22
    at = data.rfind(END, max(n - (1 << 16) - 22, 0), n)
    return at if at >= 0 and n - at >= 22 else None


def _miniz_end(data) -> int | None:
    """``mz_zip_reader_locate_header_sig``: the last signature with 22 bytes after it, searched
    backwards in 4 KiB chunks until about 64 KiB from the end."""
    n = len(data)
    if n < 22:
        return None
    cur = max(n - 4096, 0)
    while cur > 0 and n - cur < 0xFFFF + 22:
        cur = max(cur - 4093, 0)
    at = data.rfind(END, cur, n - 18)
    return at if at >= 0 else None


def _entries(data, start: int, size: int, count: int | None, shift: int, miniz: bool) -> tuple[Entry, ...]:
    """The central directory at ``start``: ``count`` entries (miniz) or entries until ``size``
    bytes are used (zipfile, ``count=None``); local offsets shifted by ``shift``."""
    n = len(data)
    if start < 0 or start + size > n:
        raise CorruptFileError("the central directory lies outside the file")
    out: list[Entry] = []
    pos, end = start, start + size
    while (len(out) < count) if count is not None else (pos < end):
        if len(out) >= MAX_ENTRIES:
            raise CorruptFileError(f"more than {MAX_ENTRIES} entries")
        if pos + 46 > end or data[pos:pos + 4] != CENTRAL:
            raise CorruptFileError(f"no central directory entry at offset {pos}")
        (flags, method, _, _, crc, csize, usize, nlen, xlen, clen, disk, _, _, offset) = struct.unpack_from(
            "<HHHHIIIHHHHHII", data, pos + 8)
        if pos + 46 + nlen + xlen + clen > end:
            raise CorruptFileError(f"central directory entry at offset {pos} runs past the directory")
        name = bytes(data[pos + 46:pos + 46 + nlen])
        extra = bytes(data[pos + 46 + nlen:min(pos + 46 + nlen + xlen, end)])
        if extra and (not miniz or _U32 in (csize, usize, offset)):  # zipfile decodes every extra field
            usize, csize, offset = _zip64_extra(extra, usize, csize, offset, miniz)
        if miniz:
            if csize != _U32 and usize != _U32 and ((method == 0 and usize != csize) or (usize and not csize)):
                raise CorruptFileError(f"entry {name!r}: sizes contradict its method")
            if disk == 0xFFFF or (disk not in (0, 1)):
                raise CorruptFileError(f"entry {name!r}: on another disk")
            if csize != _U32 and offset + 30 + csize > n:
                raise CorruptFileError(f"entry {name!r}: runs past the end of the file")
            if flags & 0x2000:
                raise CorruptFileError(f"entry {name!r}: masked local header")
        out.append(Entry(name, method, flags, csize, usize, offset + shift, crc))
        pos += 46 + nlen + xlen + clen
    return tuple(out)


def _zip64_extra(extra: bytes, usize: int, csize: int, offset: int, miniz: bool) -> tuple[int, int, int]:
    """Sizes and offset from the zip64 extra field (id 1), each read only when its 32-bit field
    is 0xFFFFFFFF, in the order usize, csize, offset."""
    pos = 0
    while pos + 4 <= len(extra):
        tag, ln = struct.unpack_from("<HH", extra, pos)
        if pos + 4 + ln > len(extra):
            raise CorruptFileError("extra field runs past its entry")
        if tag == 1:
            body, k = extra[pos + 4:pos + 4 + ln], 0
            vals = [usize, csize, offset]
            for i in range(3):
                if vals[i] == _U32:
                    if k + 8 > len(body):
                        if miniz:
                            break
                        raise CorruptFileError("zip64 extra field too short")
                    vals[i] = struct.unpack_from("<Q", body, k)[0]
                    k += 8
            return vals[0], vals[1], vals[2]
        pos += 4 + ln
    return usize, csize, offset


def _read(view: View, data, cache: dict, start: int, count: int | None, shift: int, miniz: bool) -> View:
    """``view`` with the entries of its directory (each directory parsed once), or its error."""
    key = (start, view.size, count, shift, miniz)
    if key not in cache:
        try:
            cache[key] = _entries(data, start, view.size, count, shift, miniz)
        except CorruptFileError as e:
            cache[key] = str(e)
        except struct.error:
            cache[key] = "truncated central directory"
    got = cache[key]
    if isinstance(got, str):
        return View(view.reader, view.end, view.end64, view.start, view.size, (), got, "directory")
    return View(view.reader, view.end, view.end64, view.start, view.size, got)


def _zipfile_view(data, newer: bool, cache: dict) -> View:
    reader = ZIPFILE_NEW if newer else ZIPFILE
    at = _zipfile_end(data)
    if at is None:
        return View(reader, error="no end record", stage="end")
    size, off = _u32(data, at + 12), _u32(data, at + 16)  # zipfile ignores the entry counts
    location, end64 = at, None
    loc = at - 20
    if loc >= 0 and data[loc:loc + 4] == LOCATOR:
        disk, reloff, disks = struct.unpack_from("<IQI", data, loc + 4)
        if disk != 0 or disks > 1:
            return View(reader, at, error="zip64 locator names several disks", stage="end")
        before = loc - 56
        if not newer:
            if before >= 0 and data[before:before + 4] == END64:
                end64 = before
                size, off = _u64(data, before + 40), _u64(data, before + 48)
                location = before
        else:
            if reloff > before:
                return View(reader, at, error="zip64 locator points past its place", stage="end")
            rec, extra = reloff, before - reloff
            if data[rec:rec + 4] != END64 and reloff != before:
                rec, extra = before, 0
            if rec < 0 or data[rec:rec + 4] != END64:
                return View(reader, at, error="no zip64 end record", stage="end")
            recsize, size, off = _u64(data, rec + 4), _u64(data, rec + 40), _u64(data, rec + 48)
            if off + size != reloff or recsize + 12 != 56 + extra:
                return View(reader, at, rec, error="zip64 end record does not match its locator", stage="end")
            end64, location = rec, before - extra
    concat = location - size - off
    start = off + concat
    base = View(reader, at, end64, start, size)
    if start < 0:
        return View(reader, at, end64, start, size, (), "bad central directory offset", "directory")
    return _read(base, data, cache, start, None, concat, False)


def _miniz_view(data, cache: dict) -> View:
    at = _miniz_end(data)
    if at is None:
        return View(MINIZ, error="no end record", stage="end")
    n = len(data)
    count, on_disk, disk, cd_disk = _u16(data, at + 10), _u16(data, at + 8), _u16(data, at + 4), _u16(data, at + 6)
    size, off, end64 = _u32(data, at + 12), _u32(data, at + 16), None
    if at >= 76 and data[at - 20:at - 16] == LOCATOR:
        rec = _u64(data, at - 12)
        if rec > n - 56:
            return View(MINIZ, at, error="zip64 locator points past the file", stage="end")
        if data[rec:rec + 4] == END64:
            end64 = rec
    if end64 is not None:
        if _u64(data, end64 + 4) < 44 or _u32(data, at - 4) != 1:
            return View(MINIZ, at, end64, error="bad zip64 end record", stage="end")
        count, on_disk, size = _u64(data, end64 + 32), _u64(data, end64 + 24), _u64(data, end64 + 40)
        disk, cd_disk, off = _u32(data, end64 + 16), _u32(data, end64 + 20), _u64(data, end64 + 48)
        if count > _U32 or on_disk > _U32 or size > _U32:
            return View(MINIZ, at, end64, error="zip64 end record declares too much", stage="end")
    base = View(MINIZ, at, end64, off, size)
    if count != on_disk or ((disk | cd_disk) != 0 and (disk != 1 or cd_disk != 1)):
        return View(MINIZ, at, end64, off, size, (), "entry counts or disk numbers disagree", "directory")
    if size < count * 46 or off + size > n:
        return View(MINIZ, at, end64, off, size, (), "central directory size does not fit", "directory")
    if count > MAX_ENTRIES:
        return View(MINIZ, at, end64, off, size, (), f"more than {MAX_ENTRIES} entries", "directory")
    return _read(base, data, cache, off, count, 0, True)


# ---- local headers --------------------------------------------------------------------------
def _local(data, at: int) -> Local | str:
    if at < 0 or at + 30 > len(data) or data[at:at + 4] != LOCAL:
        return f"no local header at offset {at}"
    _, flags, method, _, _, _, csize, usize, nlen, xlen = struct.unpack_from("<HHHHHIIIHH", data, at + 4)
    name = bytes(data[at + 30:at + 30 + nlen])
    if _U32 in (csize, usize) and xlen:
        try:  # readers skip the local extra field; it only serves to compare sizes
            usize, csize, _ = _zip64_extra(bytes(data[at + 30 + nlen:at + 30 + nlen + xlen]), usize, csize, 0, False)
        except CorruptFileError:
            pass
    return Local(at, name, method, flags, csize, usize, at + 30 + nlen + xlen)


def _descriptor(data, at: int, e: Entry) -> int:
    """Length of the data descriptor after a member written with flag bit 3 (0 when none)."""
    sig = data[at:at + 4] == DESCRIPTOR
    body = at + 4 if sig else at
    for width, fmt in ((4, "<III"), (8, "<IQQ")):
        if body + 4 + 2 * width <= len(data) and struct.unpack_from(fmt, data, body) == (e.crc, e.csize, e.usize):
            return body + 4 + 2 * width - at
    return 0


def local_headers(data, start: int, stop: int, *, limit: int) -> Iterator[Local]:
    """Local headers found by walking ``data[start:stop]`` as a streaming reader would (a header,
    its data when the size is known, the next signature otherwise); at most ``limit`` headers.
    Reads 30 bytes plus the name of each; never copies member data."""
    pos, seen = start, 0
    while seen < limit:
        at = data.find(LOCAL, pos, stop)
        if at < 0 or at + 30 > stop:
            return
        h = _local(data, at)
        if isinstance(h, str):
            return
        seen += 1
        yield h
        pos = max(at + 4, h.data_start + (h.csize if h.csize != _U32 else 0))


def member_bytes(data, e: Entry, local: Local, *, limit: int) -> bytes:
    """The uncompressed bytes of a stored or deflated member, as miniz reads it (sizes from the
    central directory, data after the local header); at most ``limit`` bytes are produced.

    Raises:
        CorruptFileError: unknown method, encrypted, data outside the file, bad deflate stream.
    """
    if e.flags & 1:
        raise CorruptFileError("member is encrypted")
    if local.data_start + e.csize > len(data):
        raise CorruptFileError("member data runs past the end of the file")
    if e.method == 0:
        return bytes(data[local.data_start:local.data_start + min(e.csize, limit)])
    if e.method != 8:
        raise CorruptFileError(f"compression method {e.method} is not read")
    d, out, total = zlib.decompressobj(-15), [], 0
    pos, end = local.data_start, local.data_start + e.csize
    try:
        while pos < end and total < limit and not d.eof:
            chunk = bytes(data[pos:min(end, pos + (1 << 20))])
            pos += len(chunk)
            while chunk and total < limit and not d.eof:
                got = d.decompress(chunk, limit - total)
                out.append(got)
                total += len(got)
                chunk = d.unconsumed_tail
    except zlib.error as err:
        raise CorruptFileError(f"bad deflate data ({err})") from None
    return b"".join(out)


# ---- the whole picture ----------------------------------------------------------------------
def _names(entries) -> str:
    shown = ", ".join(repr(e.filename) for e in entries[:3])
    return shown + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")


def _describe(v: View) -> str:
    return f"{v.reader} reads the central directory at {v.start} ({len(v.entries)} entries)"


def layout(data) -> Layout:
    """Every reader's view of the zip in ``data`` (bytes or mmap), and what they disagree on.

    Example:
        >>> import io, zipfile
        >>> buf = io.BytesIO()
        >>> with zipfile.ZipFile(buf, "w") as zf:
        ...     zf.writestr("a/data.pkl", b"N.")
        >>> lay = layout(buf.getvalue())
        >>> [e.filename for e in lay.members], lay.problems
        (['a/data.pkl'], ())
    """
    cache: dict = {}
    views = (_zipfile_view(data, False, cache), _zipfile_view(data, True, cache), _miniz_view(data, cache))
    problems: list[tuple[str, int | None]] = []
    damage: list[tuple[str, int | None]] = []
    good = [v for v in views if v.error is None]
    lists: dict[tuple, View] = {}
    for v in good:
        lists.setdefault(v.entries, v)
    if len(lists) > 1:
        a, b = list(lists.values())[:2]
        differ = [e for e in b.entries if e not in set(a.entries)] or [e for e in a.entries if e not in set(b.entries)]
        problems.append((f"readers see different members: {_describe(a)}, {_describe(b)}; "
                         f"they disagree on {_names(differ)}", b.start))
    for v in views if good else ():
        if v.stage == "end":
            problems.append((f"{v.reader} finds no archive ({v.error}) where {_describe(good[0])}", v.end))
        elif v.error:
            damage.append((f"{v.reader} cannot read the central directory at {v.start}: {v.error}", v.start))
    members: dict[tuple, Entry] = {}
    for v in good:
        for e in v.entries:
            members.setdefault((e.offset, e.name), e)
    locs: dict[int, Local | str] = {}
    spans: list[tuple[int, int, str | Entry]] = []
    for e in members.values():
        h = locs.setdefault(e.offset, _local(data, e.offset))
        if isinstance(h, str):
            damage.append((f"member {e.filename!r}: {h}", e.offset))
            continue
        what = _mismatch(e, h)
        if what:
            problems.append((f"member {e.filename!r}: the local header at {e.offset} {what}", e.offset))
        stop = h.data_start + e.csize
        spans.append((e.offset, stop + (_descriptor(data, stop, e) if e.flags & 8 else 0), e))
    inside = [(s, e) for s, e, _ in spans]
    for v in good:
        start = v.start or 0  # always set when the view has no error
        spans.append((start, start + v.size, f"the central directory of {v.reader}"))
    for v in views:
        if v.end64 is not None:
            spans.append((v.end64, v.end64 + 12 + _u64(data, v.end64 + 4), "the zip64 end record"))
        if v.end is not None:
            if v.end >= 20 and data[v.end - 20:v.end - 16] == LOCATOR:
                spans.append((v.end - 20, v.end, "the zip64 locator"))
            spans.append((v.end, min(len(data), v.end + 22 + _u16(data, v.end + 20)), "the end record"))
    if good:
        for at in _other_ends(data, {v.end for v in views}):
            if not any(s < at < e for s, e in inside):  # a zip stored inside a member is that member's
                problems.append((f"a second end record at offset {at} describes another central directory", at))
    first = min((s for s, _, _ in spans), default=0)
    unlisted: list[tuple[int, int]] = []
    if good:
        problems += _gaps(data, spans, first, unlisted)
    return Layout(len(data), views, tuple(members.values()), locs, tuple(dict.fromkeys(problems)),
                  tuple(dict.fromkeys(damage)), first, tuple(unlisted))


def _mismatch(e: Entry, h: Local) -> str | None:
    if h.name != e.name:
        return f"names it {h.name.decode('utf-8', 'replace')!r}"
    if h.method != e.method:
        return f"says compression method {h.method}, the central directory {e.method}"
    if not h.flags & 8 and (h.csize, h.usize) != (e.csize, e.usize):
        return f"declares {h.csize}/{h.usize} bytes, the central directory {e.csize}/{e.usize}"
    return None


def _label(what) -> str:
    return f"member {what.filename!r}" if isinstance(what, Entry) else what


def _gaps(data, spans, first, unlisted: list) -> list[tuple[str, int | None]]:
    """Spans that overlap, and bytes after ``first`` that no span covers (added to ``unlisted``;
    a local header there is named: a member that no directory lists)."""
    out: list[tuple[str, int | None]] = []
    pos, owner = first, ""
    for (s, e), what in sorted({(s, e): w for s, e, w in spans}.items()):
        if s < pos:
            out.append((f"{_label(what)} overlaps {_label(owner)} at offset {s}", s))
        elif s > pos:
            hidden = data.find(LOCAL, pos, min(s, pos + _GAP_SEARCH))
            note = f", holding a local header at {hidden}" if hidden >= 0 else ""
            out.append((f"{s - pos} bytes at offset {pos} belong to no listed member{note}", pos))
            unlisted.append((pos, s))
        if e > pos:
            pos, owner = e, what
    if pos < len(data):
        out.append((f"{len(data) - pos} bytes after the end record belong to no listed member", pos))
        unlisted.append((pos, len(data)))
    return out


def _other_ends(data, used: set) -> list[int]:
    """End records in the last 64 KiB other than those a reader used, whose central directory
    (at the declared offset, or right before them) starts with an entry: a second archive."""
    n, out = len(data), list[int]()
    lo = max(n - (1 << 16) - 22 - 4096, 0)
    at = data.rfind(END, lo, n)
    while at >= 0 and len(out) < 4:
        if at not in used and at + 22 <= n:
            size, off = _u32(data, at + 12), _u32(data, at + 16)
            if _sig(data, off, CENTRAL) or _sig(data, at - size, CENTRAL):
                out.append(at)
        at = data.rfind(END, lo, at)
    return out

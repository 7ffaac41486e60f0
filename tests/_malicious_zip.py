"""Round-two malicious corpus (issue 15): zip structure: central directories that loaders read differently, pickles under unusual member names, Keras configs in zips.

Each variant is built with the helpers of ``_malicious`` and added to its ``VARIANTS``;
``EXPECTED`` names the rules each variant must raise, on top of the verdict ``malicious``.

The zips are written byte by byte (``raw_members``, ``central``, ``end``, ``end64``,
``locator``) so that each reader can be shown its own archive: CPython's ``zipfile`` (numpy,
Keras, every scanner built on it) and miniz inside ``torch.load``.
"""

from __future__ import annotations

import json
import pickle
import struct
import zlib

from _malicious import Variant, benign_p2, evil_p2, g, lambda_code, s0, touch, zip_of


# ---- raw zip records ------------------------------------------------------------------------
def local(name: str, data: bytes, *, header_name: str | None = None) -> bytes:
    """A stored member: local header (named ``header_name`` if given) and data."""
    n = (header_name or name).encode()
    return struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 0, 0, 0, zlib.crc32(data), len(data), len(data),
                       len(n), 0) + n + data


def central(name: str, data: bytes, offset: int, *, comment: bytes = b"") -> bytes:
    n = name.encode()
    return struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 0, 0, 0, zlib.crc32(data), len(data), len(data),
                       len(n), 0, len(comment), 0, 0, 0, offset) + n + comment


def end(count: int, size: int, offset: int, comment: bytes = b"") -> bytes:
    return struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, count, count, size, offset, len(comment)) + comment


def end64(count: int, size: int, offset: int) -> bytes:
    return struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, count, count, size, offset)


def locator(offset: int) -> bytes:
    return struct.pack("<IIQI", 0x07064B50, 0, offset, 1)


def raw_members(members, base: int = 0, **kw) -> tuple[bytes, list[int]]:
    """Local headers and data of ``members`` written from offset ``base``; their offsets."""
    out, offsets = b"", []
    for name, data in members:
        offsets.append(base + len(out))
        out += local(name, data, **kw)
    return out, offsets


def directory(members, offsets, shift: int = 0) -> bytes:
    return b"".join(central(n, d, o - shift) for (n, d), o in zip(members, offsets))


def checkpoint(pkl: bytes) -> list[tuple[str, bytes]]:
    """The members torch.load needs: data.pkl, byteorder, version."""
    return [("archive/data.pkl", pkl), ("archive/byteorder", b"little"), ("archive/version", b"3\n")]


# ---- archives that show each reader another content -----------------------------------------
def zip64_split(m: str) -> bytes:
    """Two zip64 end records: zipfile takes the one right before the locator (the benign
    directory), miniz the one the locator points at (the evil directory)."""
    benign, evil = checkpoint(benign_p2()), checkpoint(evil_p2(m))
    lb, ob = raw_members(benign)
    le, oe = raw_members(evil, len(lb))
    body = lb + le
    cde, at_cde = directory(evil, oe), len(body)
    body += cde
    at_rec = len(body)
    body += end64(len(evil), len(cde), at_cde)
    cdb, at_cdb = directory(benign, ob), len(body)
    body += cdb + end64(len(benign), len(cdb), at_cdb) + locator(at_rec)
    return body + end(len(benign), len(cdb), at_cdb)


def two_directories(m: str) -> bytes:
    """A second directory right before the end record: zipfile reads it (shifting every offset
    by the bytes between), miniz reads the declared offset, which holds the evil directory."""
    evil, benign = checkpoint(evil_p2(m)), checkpoint(benign_p2())
    le, oe = raw_members(evil)
    lb, ob = raw_members(benign, len(le))
    body = le + lb
    cde, at_cde = directory(evil, oe), len(body)
    # zipfile reads entries until the declared size is used, miniz the declared count: pad the
    # benign directory (a comment on its last entry) to at least the evil one's size
    cdb = directory(benign[:-1], ob[:-1], shift=len(cde))
    name, data = benign[-1]
    cdb += central(name, data, ob[-1] - len(cde), comment=b" " * max(0, len(cde) - len(cdb) - 46 - len(name)))
    return body + cde + cdb + end(len(evil), len(cdb), at_cde)


def end_signature_in_comment(m: str) -> bytes:
    """An end-record signature at the end of the comment: zipfile finds no archive (too few
    bytes after the last signature), miniz skips it; the local header names the pickle
    ``archive/weights``, so a scanner walking local headers for ``*.pkl`` misses it too."""
    evil = checkpoint(evil_p2(m))
    body, offsets = raw_members(evil[:1], header_name="archive/weights")
    rest, more = raw_members(evil[1:], len(body))
    body += rest
    cd = directory(evil, offsets + more)
    return body + cd + end(len(evil), len(cd), len(body), comment=b"PK\x05\x06xx")


def local_name_mismatch(m: str) -> bytes:
    """The local header of data.pkl names another file: miniz never compares, zipfile refuses
    to open the member (a scanner on zipfile reads nothing of it)."""
    evil = checkpoint(evil_p2(m))
    body, offsets = raw_members(evil[:1], header_name="archive/notes.txt")
    rest, more = raw_members(evil[1:], len(body))
    body += rest
    cd = directory(evil, offsets + more)
    return body + cd + end(len(evil), len(cd), len(body))


def hidden_between(m: str) -> bytes:
    """An evil member between two listed ones that no directory lists (a streaming reader,
    which walks local headers, reads it)."""
    benign = checkpoint(benign_p2())
    first, o1 = raw_members(benign[:1])
    hidden, _ = raw_members([("archive/data.pkl", evil_p2(m))], len(first))
    rest, o2 = raw_members(benign[1:], len(first) + len(hidden))
    body = first + hidden + rest
    cd = directory(benign, o1 + o2)
    return body + cd + end(len(benign), len(cd), len(body))


# ---- pickles under other names, Keras configs -----------------------------------------------
def p0_system(m: str) -> bytes:
    """os.system in protocol 0: no PROTO opcode, so no ``\\x80`` first byte to sniff."""
    return g("os", "system") + b"(" + s0(touch(m)) + b"tR."


def keras_config(m: str) -> bytes:
    lam = {"module": "keras.layers", "class_name": "Lambda", "registered_name": None,
           "config": {"name": "l", "function": {"class_name": "__lambda__", "config": {
               "code": lambda_code(m), "defaults": None, "closure": None}}}}
    return json.dumps({"module": "keras", "class_name": "Sequential", "registered_name": None,
                       "config": {"name": "seq", "layers": [
                           {"module": "keras.layers", "class_name": "InputLayer", "registered_name": None,
                            "config": {"batch_shape": [None, 4], "name": "input"}}, lam]}}).encode()


EXPECTED: dict[str, set[str]] = {
    "zip64_split_directories": {"zip-ambiguous", "global-critical"},
    "zip_two_directories": {"zip-ambiguous", "global-critical"},
    "zip_end_signature_in_comment": {"zip-ambiguous", "global-critical"},
    "zip_local_name_mismatch": {"zip-ambiguous", "global-critical"},
    "zip_hidden_between_members": {"zip-ambiguous", "global-critical"},
    "zip_pickle_unusual_name": {"global-critical"},
    "keras_config_only": {"keras-lambda"},
    "keras_config_npz_weights": {"keras-lambda"},
    "keras_config_nested_json": {"keras-lambda"},
}


def variants() -> list[Variant]:
    V = Variant
    return [
        V("zip64_split_directories", "two zip64 end records: zipfile reads the benign directory, torch.load the evil "
          "one", "zip64_split.pt", zip64_split, "torch"),
        V("zip_two_directories", "second directory before the end record: zipfile reads it, torch.load reads the "
          "declared offset", "two_dirs.pt", two_directories, "torch"),
        V("zip_end_signature_in_comment", "end signature in the comment: zipfile sees no zip, torch.load reads it",
          "eocd_comment.pt", end_signature_in_comment, "torch"),
        V("zip_local_name_mismatch", "data.pkl's local header names another file (zipfile refuses, torch.load "
          "reads)", "local_name.pt", local_name_mismatch, "torch"),
        V("zip_hidden_between_members", "evil member between listed ones, in no directory", "hidden_mid.pt",
          hidden_between),
        V("zip_pickle_unusual_name", "protocol 0 pickle in a zip under the name archive/weights", "unusual.pt",
          lambda m: zip_of(checkpoint(pickle.dumps({"w": 1}, protocol=2)) + [("archive/weights", p0_system(m))])),
        V("keras_config_only", ".keras holding only config.json (Keras builds the model before it looks for "
          "weights)", "config_only.keras", lambda m: zip_of([("config.json", keras_config(m))]), "keras"),
        V("keras_config_npz_weights", ".keras with config.json and model.weights.npz", "config_npz.keras",
          lambda m: zip_of([("config.json", keras_config(m)), ("model.weights.npz", b"")]), "keras"),
        V("keras_config_nested_json", "Keras config under another .json name in a zip", "nested_cfg.zip",
          lambda m: zip_of([("models/model_config.json", keras_config(m)), ("README", b"weights")])),
    ]


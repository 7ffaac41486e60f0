"""Round-two malicious corpus (issue 15): non-zip files: tar polyglots and links, HDF5 user blocks and configs, safetensors polyglots.

Each variant is built with the helpers of ``_malicious`` and added to its ``VARIANTS``;
``EXPECTED`` names the rules each variant must raise, on top of the verdict ``malicious``.
Directories and special files (a Keras model directory, a FIFO) are not single files: their tests
are in tests/test_scan_files.py.
"""

from __future__ import annotations

import io
import json
import pickle
import struct
import tarfile

from _malicious import Variant, benign_p2, evil_p2, lambda_code, legacy_tar, tar_of

EXPECTED: dict[str, set[str]] = {
    "h5_userblock_tar": {"polyglot", "global-critical"},
    "safetensors_v7_tar": {"polyglot", "global-critical"},
    "tar_storages_hardlink": {"tar-link", "global-critical"},
    "tar_pickle_symlink": {"tar-link", "global-critical"},
    "tar_unnamed_pickle_member": {"global-critical"},
    "tar_storages_symlink_outside": {"tar-link"},
    "safetensors_h5_lambda": {"polyglot", "keras-lambda"},
    "h5_external_storage": {"hdf5-external"},
    "h5_virtual_dataset": {"hdf5-external"},
    "h5_external_link": {"hdf5-external"},
}

SYS_INFO = pickle.dumps({"protocol_version": 1001, "little_endian": True}, protocol=2)
NO_STORAGES = pickle.dumps(0, protocol=2) + pickle.dumps([], protocol=2)
NO_TENSORS = pickle.dumps(0, protocol=2)


def evil_storages(m: str) -> bytes:
    """A ``storages`` member whose first storage record is the payload (torch unpickles it)."""
    return pickle.dumps(1, protocol=2) + evil_p2(m)


def lambda_model_config(m: str) -> dict:
    """A Sequential model whose Lambda layer creates the marker when Keras builds it."""
    return {"class_name": "Sequential", "config": {"name": "s", "layers": [
        {"class_name": "InputLayer", "config": {"batch_shape": [None, 4], "name": "in"}},
        {"class_name": "Lambda", "config": {"name": "l", "function": {
            "class_name": "__lambda__", "config": {"code": lambda_code(m), "defaults": None, "closure": None}}}}]}}


def tar_with(entries: list[tarfile.TarInfo | tuple[str, bytes]]) -> bytes:
    """A pax tar (as torch wrote them) of regular members ``(name, data)`` and prepared link members."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for e in entries:
            if isinstance(e, tarfile.TarInfo):
                tf.addfile(e)
            else:
                info = tarfile.TarInfo(e[0])
                info.size = len(e[1])
                tf.addfile(info, io.BytesIO(e[1]))
    return buf.getvalue()


def link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def h5_bytes(fill, userblock: int = 0) -> bytes:
    """An HDF5 file written by h5py (``fill(f)`` adds its content), with a zeroed user block."""
    import h5py

    buf = io.BytesIO()
    with h5py.File(buf, "w", userblock_size=userblock) if userblock else h5py.File(buf, "w") as f:
        fill(f)
    return buf.getvalue()


def keras_weights(f, **dataset) -> None:
    """A Keras 3 ``.weights.h5`` layout with one variable, created with ``dataset`` options."""
    vars_ = f.create_group("layers/dense/vars")
    vars_.attrs["name"] = "dense"
    vars_.create_dataset("0", shape=(4,), dtype="float32", **dataset)


def safetensors_prefix(rest: int, size: int, tar_fields: bool = False) -> bytes:
    """``size`` bytes: a safetensors length and header whose one ``U8`` tensor is the ``rest``
    bytes after them. ``tar_fields``: the header is also a V7 tar header block (``size`` 512) of an
    empty member, its numeric fields blanks inside a ``__metadata__`` string (blanks read as 0),
    so tarfile goes on to the next block, the tensor's first byte."""
    tensor = {"dtype": "U8", "shape": [rest], "data_offsets": [0, rest]}
    if not tar_fields:
        head = json.dumps({"t": tensor}).encode()
        return struct.pack("<Q", size - 8) + head + b" " * (size - 8 - len(head))
    opening = b'{"__metadata__":{"x":"'
    value = bytearray(b" " * (400 - 8 - len(opening)))  # covers bytes 30..399: every numeric tar field
    value[156 - 8 - len(opening)] = ord("0")  # typeflag: regular file
    closing = b'"},"t":' + json.dumps(tensor).encode() + b"}"
    block = bytearray(struct.pack("<Q", size - 8) + opening + value + closing)
    block += b" " * (size - len(block))
    unsigned = 256 + sum(block[:148]) + sum(block[156:512])
    block[148:156] = b"%06o  " % unsigned  # the checksum tarfile verifies
    return bytes(block)


def _safetensors_tar(m: str) -> bytes:
    rest = legacy_tar(benign_p2(), evil_storages(m))
    return safetensors_prefix(len(rest), 512, tar_fields=True) + rest


def _safetensors_h5(m: str) -> bytes:
    def fill(f):
        f.attrs["model_config"] = json.dumps(lambda_model_config(m))
        f.attrs["keras_version"] = "2.15.0"

    h5 = h5_bytes(fill, userblock=512)
    return safetensors_prefix(len(h5) - 512, 512) + h5[512:]


def _h5_tar(m: str) -> bytes:
    tar = tar_of({"sys_info": SYS_INFO, "pickle": benign_p2(), "storages": evil_storages(m), "tensors": NO_TENSORS})
    h5 = h5_bytes(lambda f: f.create_dataset("w", data=[1.0, 2.0]), userblock=4096)
    return tar[:4096] + h5[4096:]  # four members fill the user block; tarfile stops at the HDF5 signature


def _virtual(m: str) -> bytes:
    import h5py

    def fill(f):
        layout = h5py.VirtualLayout(shape=(4,), dtype="float32")
        layout[:] = h5py.VirtualSource(m, "secret", shape=(4,))
        f.create_group("layers/dense/vars").create_virtual_dataset("0", layout)

    return h5_bytes(fill)


def _external_link(m: str) -> bytes:
    import h5py

    def fill(f):
        f.create_group("layers/dense/vars")["0"] = h5py.ExternalLink(m, "/secret")

    return h5_bytes(fill)


def variants() -> list[Variant]:
    V = Variant
    return [
        V("h5_userblock_tar", "HDF5 file whose user block is a tar of a legacy checkpoint (torch.load tries tar "
          "first)", "model.h5", _h5_tar, "torch"),
        V("safetensors_v7_tar", "valid safetensors that is also a V7 tar (header fields inside __metadata__, "
          "members in the tensor bytes)", "model.bin", _safetensors_tar, "torch"),
        V("tar_storages_hardlink", "legacy tar whose 'storages' is a hard link to an innocently named member",
          "hardlink.tar", lambda m: tar_with([("sys_info", SYS_INFO), ("pickle", benign_p2()),
                                              ("weights.bin", evil_storages(m)),
                                              link("storages", "weights.bin", tarfile.LNKTYPE),
                                              ("tensors", NO_TENSORS)]), "torch"),
        V("tar_pickle_symlink", "legacy tar whose 'pickle' is a symlink to an innocently named member",
          "symlink.tar", lambda m: tar_with([("sys_info", SYS_INFO), ("data/blob.bin", evil_p2(m)),
                                             link("pickle", "data/blob.bin"), ("storages", NO_STORAGES),
                                             ("tensors", NO_TENSORS)]), "torch"),
        V("tar_unnamed_pickle_member", "tar member of an innocent name whose bytes are an evil pickle",
          "extra.tar", lambda m: tar_with([("sys_info", SYS_INFO), ("pickle", benign_p2()), ("storages", NO_STORAGES),
                                           ("tensors", NO_TENSORS), ("README", evil_p2(m))])),
        V("tar_storages_symlink_outside", "legacy tar whose 'storages' is a symlink to a file of the machine",
          "outside.tar", lambda m: tar_with([("sys_info", SYS_INFO), ("pickle", benign_p2()),
                                             link("storages", m), ("tensors", NO_TENSORS)])),
        V("safetensors_h5_lambda", "safetensors whose tensor bytes hold an HDF5 file (user block) with a Lambda "
          "model_config (Keras loads .h5 paths as HDF5)", "model.h5", _safetensors_h5, "keras"),
        V("h5_external_storage", "Keras weights whose dataset keeps its data in an external file", "ext.weights.h5",
          lambda m: h5_bytes(lambda f: keras_weights(f, external=[(m, 0, 16)]))),
        V("h5_virtual_dataset", "Keras weights whose dataset is a virtual dataset of another file", "vds.weights.h5",
          _virtual),
        V("h5_external_link", "Keras weights whose variable is an external link to another file", "link.weights.h5",
          _external_link),
    ]

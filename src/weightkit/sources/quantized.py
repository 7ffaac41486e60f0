"""weightkit's weight-only quantised safetensors checkpoints (written by ``weightkit.quantize``).

Recognised only by the ``"weightkit.quantized": "1"`` entry that weightkit writes first in the
header's ``__metadata__``; any other safetensors file goes to the plain safetensors reader.
Tensors are shown under their original names, shapes and (recorded) layer kinds, as float32:
reading one dequantises it (codes × scales, minus zero points; int4 unpacked). The stored
parts (``name::q``, ``name::scale``, ``name::zero_point``) are what ``weightkit verify`` hashes;
``weightkit.open(path, format="safetensors")`` shows them raw.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, cast

import numpy as np

from weightkit.errors import CorruptFileError
from weightkit.formats.quantized import dequantize
from weightkit.formats.safetensors import TensorInfo
from weightkit.sources._base import _READERS, RawTensor, ReaderBase, model_order_key, register_reader
from weightkit.sources.safetensors_file import _Shard
from weightkit.sources.safetensors_file import _sniff as sniff_safetensors

MARKER = b'"weightkit.quantized"'
TENSORS_KEY = "weightkit.quantized.tensors"
KINDS_KEY = "weightkit.kinds"
_HIDDEN = (TENSORS_KEY, KINDS_KEY, "weightkit.sha256")


def _sniff(path: Path, head: bytes | None) -> bool:
    return head is not None and MARKER in head and sniff_safetensors(path, head)


def _check(info: Any, header: dict[str, TensorInfo]) -> str | None:
    """What is wrong with one ``weightkit.quantized.tensors`` entry (``None``: it dequantises
    into its shape, reading exactly its stored parts), in the layout ``weightkit.quantize`` writes."""
    if not isinstance(info, dict):
        return "its entry is not a JSON object"
    shape, axis = info.get("shape"), info.get("axis")
    ints = [info.get(k) for k in ("bits", "rows", "cols", "group_size", "groups")]
    if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)
            and all(type(v) is int for v in ints) and isinstance(info.get("dtype"), str)
            and info.get("scheme") in ("symmetric", "asymmetric") and "axis" in info
            and (axis is None or type(axis) is int)):
        return "malformed shape, bits, scheme, axis or layout"
    bits, rows, cols, group, groups = cast("list[int]", ints)  # checked above: every one is an int
    n = math.prod(shape)
    if not (bits in (4, 8) and rows >= 0 and cols >= 0 and rows * cols == n and 1 <= group <= max(cols, 1)
            and groups == max(1, -(-cols // group))
            and (rows == 1 if axis is None else 0 <= axis < len(shape) and rows == shape[axis])):
        return f"layout rows={rows} cols={cols} group_size={group} groups={groups} does not fit shape {shape}"
    parts = (("codes", ("uint8",) if bits == 4 else ("int8", "uint8"), n if bits == 8 else (n + 1) // 2),
             ("scale", ("float32",), rows * groups), ("zero_point", ("uint8",), rows * groups))
    for key, dtypes, numel in parts:
        part = info.get(key)
        if part is None and key == "zero_point":
            continue
        entry = header.get(part) if isinstance(part, str) else None
        if entry is None:
            return f"its stored part {part!r} ({key}) is missing"
        if entry.dtype not in dtypes or math.prod(entry.shape) != numel:
            return f"its {key} {part!r} is {entry.dtype} of {math.prod(entry.shape)} elements, expected " \
                   f"{'/'.join(dtypes)} of {numel}"
    return None


class QuantizedReader(ReaderBase):
    """A quantised checkpoint, dequantised on read (the last tensor read is cached, so chunked
    reads of one tensor dequantise it once)."""

    format = "weightkit-quantized"

    def __init__(self, path: Path):
        self.description = str(path)
        self._shard = _Shard(path)
        meta = self._shard.metadata
        try:
            self._q: dict[str, dict] = json.loads(meta.get(TENSORS_KEY, "{}"))
            self._kinds: dict[str, str] = json.loads(meta.get(KINDS_KEY, "{}"))
        except (ValueError, RecursionError) as e:
            raise CorruptFileError(f"{path}: the quantisation metadata is not valid JSON ({e}); the file is corrupt") from None
        if not (isinstance(self._q, dict) and isinstance(self._kinds, dict)
                and all(isinstance(v, str) for v in self._kinds.values())):
            raise CorruptFileError(f"{path}: malformed quantisation metadata (expected JSON objects); "
                                   "the file is corrupt")
        parts: set[str] = set()
        for name, info in self._q.items():
            problem = _check(info, self._shard.header)
            if problem:
                raise CorruptFileError(f"{path}: quantised tensor {name!r}: {problem}; the file is corrupt")
            parts.update(info[key] for key in ("codes", "scale", "zero_point") if info.get(key) is not None)
        self._plain = [n for n in self._shard.header if n not in parts]
        self._cache: tuple[str, np.ndarray] | None = None

    def _aliases(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        known = set(self._plain) | set(self._q)
        for removed, kept in self._shard.metadata.items():
            if isinstance(kept, str) and kept in known and removed not in known:
                out.setdefault(kept, []).append(removed)
        return out

    def tensors(self) -> list[RawTensor]:
        aliases = self._aliases()
        out = []
        for name in self._plain:
            plain = self._shard.header[name]
            out.append(RawTensor(name, name, plain.shape, plain.dtype,
                                 kind=self._kinds.get(name), kind_from="config" if name in self._kinds else None,
                                 shared_with=tuple(aliases.get(name, ()))))
        for name, info in self._q.items():
            out.append(RawTensor(name, name, tuple(info["shape"]), "float32", kind=self._kinds.get(name),
                                 kind_from="config" if name in self._kinds else None,
                                 shared_with=tuple(aliases.get(name, ()))))
        out.sort(key=lambda r: model_order_key(r.name))
        return out

    def read(self, key: str) -> np.ndarray:
        if key not in self._q:
            return self._shard.array(key)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]

        info = self._q[key]
        zp = self._shard.array(info["zero_point"]) if info.get("zero_point") else None
        values = dequantize(self._shard.array(info["codes"]), self._shard.array(info["scale"]), zp, info)
        values.setflags(write=False)
        self._cache = (key, values)
        return values

    def read_flat(self, key: str, start: int, stop: int) -> np.ndarray:
        if key not in self._q:
            return self._shard.flat(key, start, stop)
        return self.read(key).reshape(-1)[start:stop]

    def metadata(self) -> dict[str, Any]:
        aliased = {n for names in self._aliases().values() for n in names}
        meta: dict[str, Any] = {k: v for k, v in self._shard.metadata.items() if k not in aliased and k not in _HIDDEN}
        first = next(iter(self._q.values()), None)
        if first:
            meta["quantization"] = {"bits": first["bits"], "scheme": first["scheme"],
                                    "granularity": first.get("granularity"), "tensors": len(self._q),
                                    "original_dtypes": sorted({i["dtype"] for i in self._q.values()})}
        return meta

    def close(self) -> None:
        self._cache = None


register_reader("weightkit-quantized", sniff=_sniff,
                description="weightkit weight-only quantised safetensors (dequantised on read)")(QuantizedReader)


def _sniff_before_safetensors() -> None:
    """Quantised files are safetensors files too: this sniffer must run before the plain one,
    even when something imported the safetensors reader before this module."""
    names = list(_READERS)
    if "safetensors" in names and names.index("safetensors") < names.index("weightkit-quantized"):
        items = [(k, v) for k, v in _READERS.items() if k != "safetensors"]
        at = [k for k, _ in items].index("weightkit-quantized") + 1
        items.insert(at, ("safetensors", _READERS["safetensors"]))
        _READERS.clear()
        _READERS.update(items)


_sniff_before_safetensors()

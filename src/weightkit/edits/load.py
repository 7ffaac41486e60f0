"""Loading a checkpoint into a live model (:func:`load_into`) and checking a saved file's hashes
(:func:`verify`).

``load_into`` writes through the same validate-then-commit step as :func:`weightkit.set_weights`
(:func:`weightkit.edits.values.stage` and ``commit``), so it follows the same dtype rule: a file's
dtype may differ from the model's when no value changes (bfloat16 or float16 into float32, float64
rounded to float32); a lossy conversion (float32 into float16 or bfloat16, floats into integers)
is refused unless ``allow_cast=True``. Everything is read and checked before the first byte is
written, and a write that fails midway restores what was written.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from weightkit.edits import _backend
from weightkit.edits._backend import KERAS
from weightkit.edits.save import CHUNK_BYTES, HASH_KEY, KERAS_ORDER_KEY, open_source
from weightkit.edits.values import commit, slots_of, stage
from weightkit.errors import CorruptFileError, UnsupportedFormatError, WeightkitError
from weightkit.sources._base import sniff_head
from weightkit.sources.safetensors_file import _Shard, _sniff

__all__ = ["load_into", "LoadReport", "verify", "VerifyReport"]


@dataclass
class LoadReport:
    """What :func:`weightkit.load_into` found and did."""

    path: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    """In the model, not in the file."""
    unexpected: list[str] = field(default_factory=list)
    """In the file, not in the model."""
    shape_mismatches: list[dict[str, Any]] = field(default_factory=list)
    """``{"name", "model_shape", "file_shape"}`` per tensor whose shapes differ (not loaded)."""
    cast: list[dict[str, str]] = field(default_factory=list)
    """``{"name", "file_dtype", "model_dtype"}``: loaded with a dtype conversion."""

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.shape_mismatches)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}

    def problems(self) -> str:
        parts = []
        if self.missing:
            parts.append(f"missing in file: {', '.join(self.missing)}")
        if self.unexpected:
            parts.append(f"unexpected in file: {', '.join(self.unexpected)}")
        if self.shape_mismatches:
            parts.append("shape mismatches: " + ", ".join(
                f"{m['name']} (model {tuple(m['model_shape'])}, file {tuple(m['file_shape'])})"
                for m in self.shape_mismatches))
        return "; ".join(parts)


def load_into(model: Any, path: str | Path, *, strict: bool = True, allow_cast: bool = False,
              allow_nonfinite: bool = True) -> LoadReport:
    """Load a checkpoint into a live torch or Keras model in place (same ``Parameter`` / variable objects).

    Values are written like :func:`weightkit.set_weights` writes them, so device, dtype and every
    optimizer's references stay. Torch names are the model's ``state_dict`` keys; a tied tensor
    stored once (``alias: kept`` metadata) fills every name it has. Keras variables are matched by
    path, or by the saved model's variable order when no path matches (a new instance of the
    same architecture has new layer names).

    Args:
        model: a ``torch.nn.Module`` or a built Keras 3 model.
        path: any checkpoint weightkit opens (or a state dict / ``WeightSet``).
        strict: when ``True``, a missing key, an unexpected key or a shape mismatch raises
            ``WeightkitError`` listing all of them and nothing is loaded; when ``False``
            the matching tensors are loaded and the report lists the rest.
        allow_cast: round values the model's dtype cannot hold exactly (a float32 file into a
            float16 model); without it such a load is refused and nothing is written.
        allow_nonfinite: accept NaN/Inf from the file (default: a checkpoint is taken as it is;
            ``False`` refuses them, as :func:`weightkit.set_weights` does by default).

    Example:
        >>> import tempfile, torch, weightkit
        >>> a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
        >>> p = weightkit.save(a, tempfile.mkdtemp() + "/a.safetensors")
        >>> weightkit.load_into(b, p).loaded
        ['weight', 'bias']
        >>> bool(torch.equal(a.weight, b.weight))
        True
    """
    if not (_backend.is_keras(model) or _backend.is_torch_module(model)):
        raise UnsupportedFormatError(
            f"load_into needs a live torch.nn.Module or Keras model; received {type(model).__name__}")
    fw, slots = slots_of(model, "load_into")
    ws, _, owned = open_source(path)
    try:
        report = LoadReport(path=ws.source)
        if fw == KERAS:
            names = {n: n for n in slots if n in ws}
            order = ws.metadata.get(KERAS_ORDER_KEY) if not names else None
            if order:
                saved = json.loads(order)
                if len(saved) == len(slots):
                    names = {n: s for n, s in zip(slots, saved) if s in ws}
            used = set(names.values())
            report.unexpected = [w.name for w in ws if w.name not in used]
            where = f"Keras model {model.name!r}"
        else:
            names = {n: n for n in slots if n in ws}
            report.unexpected = [w.name for w in ws if not ({w.name, *w.shared_with} & set(slots))]
            where = type(model).__name__
        report.missing = [n for n in slots if n not in names]
        items = []
        for name, slot in slots.items():
            if name not in names:
                continue
            w = ws[names[name]]
            if tuple(w.shape) != slot.shape:
                report.shape_mismatches.append({"name": name, "model_shape": list(slot.shape), "file_shape": list(w.shape)})
                continue
            items.append((slot, w.torch(), repr(name)))
            if w.dtype != slot.dtype_name:
                report.cast.append({"name": name, "file_dtype": w.dtype, "model_dtype": slot.dtype_name})
        if strict and not report.ok:
            raise WeightkitError(f"{ws.source} does not fit {where} (nothing loaded): {report.problems()}")
        plan = stage(items, allow_cast=allow_cast, allow_nonfinite=allow_nonfinite, what=f"load_into {ws.source}")
        commit(plan, "load_into")
        report.loaded = [slot.name for slot, _, _ in items]
        return report
    finally:
        if owned:
            ws.close()


# --- verify --------------------------------------------------------------------------------

@dataclass
class VerifyReport:
    """The result of :func:`weightkit.verify`: every recorded sha256 recomputed."""

    path: str
    checked: int
    matched: list[str]
    mismatched: list[str]
    """Tensors whose bytes no longer hash to the recorded value."""
    missing: list[str]
    """Hash recorded, tensor absent from the file."""
    unrecorded: list[str]
    """Tensor in the file with no recorded hash."""

    @property
    def ok(self) -> bool:
        return not (self.mismatched or self.missing or self.unrecorded)

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def verify(path: str | Path) -> VerifyReport:
    """Recompute the sha256 of every tensor of a weightkit-written safetensors file.

    Raises:
        WeightkitError: not a safetensors file, damaged header, or no hashes recorded
            (a file weightkit did not write: there is nothing to compare against).

    Example:
        >>> import tempfile, torch, weightkit
        >>> p = weightkit.save(torch.nn.Linear(3, 2), tempfile.mkdtemp() + "/m.safetensors")
        >>> r = weightkit.verify(p)
        >>> r.ok, r.checked
        (True, 2)
    """

    p = Path(path)
    if not p.is_file():
        raise WeightkitError(f"{p}: no such file; check the path")
    if not _sniff(p, sniff_head(p)):
        raise UnsupportedFormatError(f"{p}: not a safetensors file; verify checks files written by weightkit.save")
    shard = _Shard(p)
    raw = shard.metadata.get(HASH_KEY)
    if raw is None:
        raise WeightkitError(f"{p}: no hashes recorded (not written by weightkit); nothing to verify")
    try:
        recorded = json.loads(raw)
        assert isinstance(recorded, dict) and all(isinstance(v, str) for v in recorded.values())
    except (ValueError, AssertionError):
        raise CorruptFileError(f"{p}: the recorded hashes ({HASH_KEY}) are not a JSON object of strings") from None
    matched: list[str] = []
    mismatched: list[str] = []
    for name in shard.header:
        if name not in recorded:
            continue
        n = math.prod(shard.header[name].shape)
        itemsize = max(1, shard.flat(name, 0, 0).dtype.itemsize)
        step = max(1, CHUNK_BYTES // itemsize)
        h = hashlib.sha256()
        for start in range(0, n, step):
            h.update(np.ascontiguousarray(shard.flat(name, start, min(n, start + step))).data)
        (matched if h.hexdigest() == recorded[name] else mismatched).append(name)
    return VerifyReport(
        path=str(p), checked=len(matched) + len(mismatched), matched=matched, mismatched=mismatched,
        missing=[n for n in recorded if n not in shard.header],
        unrecorded=[n for n in shard.header if n not in recorded],
    )


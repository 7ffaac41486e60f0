"""Quantisation: measure the error of int8/int4 weights without changing anything
(:func:`quantize_error`), and apply it (:func:`quantize`): torch dynamic quantisation of a live
model, or a weight-only quantised safetensors checkpoint that :func:`weightkit.open` reads back.

The arithmetic (one implementation, used by both):
- ``symmetric``: ``scale = absmax / qmax`` with ``qmax = 2^(bits-1) - 1`` (127, 7);
  ``q = clip(round(w / scale), -qmax, qmax)``; ``w ≈ q · scale``.
- ``asymmetric``: the range ``[min(w, 0), max(w, 0)]`` over ``2^bits - 1`` steps;
  ``zero_point = round(-lo / scale)``; ``q = clip(round(w / scale) + zero_point, 0, 2^bits - 1)``;
  ``w ≈ (q - zero_point) · scale``.
- ``granularity``: one scale per ``tensor``, per output ``channel`` (the output axis from the
  layer table: a Linear's axis 0, a Keras Dense kernel's axis 1), or per ``group`` of
  ``group_size`` consecutive elements of a channel (along the input axes).

Scales are float32, zero points uint8; ``round`` is half-to-even (``numpy.rint``).

The default is one scale per output channel: one scale per tensor lets a single large channel
set the step for all of them (a BERT's int8 weights fell to 21.8 dB SQNR that way). A 1-D weight
has one scale whatever the granularity (one scale per element would store more than it saves).
A report flags every tensor, and the whole, below ``SQNR_WARN_DB`` (30 dB) in ``warnings``.

What stays unquantised (float, unchanged): non-floating tensors, buffers (BatchNorm running
statistics), biases, and tensors with fewer than ``MIN_NUMEL`` (1024) elements: they are a
negligible share of a model's bytes and the most sensitive to error. A large 1-D weight (a norm
scale of thousands of features) is a weight, and quantised.

The checkpoint format (safetensors, ``__metadata__["weightkit.quantized"] = "1"``): each
quantised tensor ``name`` becomes ``name::q`` (int8 codes, uint8 for asymmetric; int4 as
uint8 with two codes per byte, the first in the low nibble, symmetric codes stored + 8),
``name::scale`` (float32, ``[channels, groups]``) and, when asymmetric, ``name::zero_point``
(uint8). ``weightkit.quantized.tensors`` (JSON) records per tensor the original shape and
dtype, bits, scheme, granularity, axis and group size; codes are laid out with the channel
axis moved first, flattened. Everything else is stored as it was.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from weightkit import _dtypes
from weightkit.core.selector import select as select_weights
from weightkit.edits import _backend
from weightkit.edits._compress import CHUNK_ELEMENTS, output_axis, ranged_reader
from weightkit.edits.prune import _check_out
from weightkit.edits.save import Entry, base_metadata, open_source, weight_entry, write_safetensors
from weightkit.errors import WeightkitError
from weightkit.formats.quantized import pack4

__all__ = ["quantize", "quantize_error", "QuantizeReport", "TensorQuant", "BITS", "SCHEMES", "GRANULARITIES",
           "MIN_NUMEL", "SQNR_WARN_DB"]

BITS = (4, 8)
SCHEMES = ("symmetric", "asymmetric")
GRANULARITIES = ("tensor", "channel", "group")
MODES = ("dynamic", "weight-only")
MIN_NUMEL = 1024
SQNR_WARN_DB = 30.0
MARKER = "weightkit.quantized"
TENSORS_KEY = "weightkit.quantized.tensors"
KINDS_KEY = "weightkit.kinds"
SUFFIXES = ("::q", "::scale", "::zero_point")


# --- report --------------------------------------------------------------------------------

@dataclass(frozen=True)
class TensorQuant:
    """Quantisation error and size of one tensor (``quantized=False``: kept as it was, see ``reason``)."""

    name: str
    kind: str
    shape: tuple[int, ...]
    dtype: str
    numel: int
    quantized: bool
    reason: str | None
    """Why the tensor stays unquantised (``None`` when quantised)."""
    axis: int | None
    """Channel axis of the scales (``None``: one scale for the tensor)."""
    rel_error: float
    """‖W − Q(W)‖ / ‖W‖ (0 for an unquantised or all-zero tensor)."""
    sqnr_db: float
    """10·log10(‖W‖² / ‖W − Q(W)‖²); ``inf`` when exact."""
    max_abs_error: float
    bytes_before: int
    bytes_after: int
    """Codes plus scales and zero points (or the unchanged bytes)."""
    bytes_scales: int
    sum_sq: float = field(default=0.0, repr=False)
    err_sq: float = field(default=0.0, repr=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("sum_sq"), d.pop("err_sq")
        d["shape"] = list(self.shape)
        d["sqnr_db"] = None if math.isinf(self.sqnr_db) else self.sqnr_db
        return d


@dataclass(frozen=True)
class QuantizeReport:
    """Per-tensor error and bytes, and totals. ``to_dict()`` gives the JSON (``inf`` as ``null``)."""

    source: str
    bits: int
    scheme: str
    granularity: str
    group_size: int | None
    tensors: list[TensorQuant]
    out: str | None = None
    file_bytes: int | None = None
    """Size of the written checkpoint (``quantize`` only)."""

    def __getitem__(self, name: str) -> TensorQuant:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(f"no tensor named {name!r} in the report")

    @property
    def quantized(self) -> list[TensorQuant]:
        return [t for t in self.tensors if t.quantized]

    @property
    def bytes_before(self) -> int:
        return sum(t.bytes_before for t in self.tensors)

    @property
    def bytes_after(self) -> int:
        return sum(t.bytes_after for t in self.tensors)

    @property
    def ratio(self) -> float:
        """bytes after / bytes before."""
        return self.bytes_after / self.bytes_before if self.bytes_before else 1.0

    @property
    def rel_error(self) -> float:
        """Overall ‖W − Q(W)‖ / ‖W‖ over the quantised tensors."""
        s = sum(t.sum_sq for t in self.quantized)
        return math.sqrt(sum(t.err_sq for t in self.quantized) / s) if s else 0.0

    @property
    def warnings(self) -> list[str]:
        """One line per quantised tensor below ``SQNR_WARN_DB``, and one for the whole when it is."""
        low = [t for t in self.quantized if t.sqnr_db < SQNR_WARN_DB]
        out = [f"{t.name}: SQNR {t.sqnr_db:.1f} dB, below {SQNR_WARN_DB:g} dB" for t in low]
        hint = ("; try granularity='channel' (one scale per output channel)" if self.granularity == "tensor"
                else "; try bits=8" if self.bits == 4 else "; try granularity='group'" if self.granularity == "channel"
                else "")
        if self.quantized and self.sqnr_db < SQNR_WARN_DB:
            out.append(f"overall SQNR {self.sqnr_db:.1f} dB is below {SQNR_WARN_DB:g} dB{hint}")
        elif low:
            out.append(f"{len(low)} tensor(s) below {SQNR_WARN_DB:g} dB{hint}")
        return out

    @property
    def sqnr_db(self) -> float:
        e = sum(t.err_sq for t in self.quantized)
        s = sum(t.sum_sq for t in self.quantized)
        return math.inf if e == 0 else 10 * math.log10(s / e) if s else -math.inf

    def to_dict(self) -> dict[str, Any]:
        sqnr = self.sqnr_db
        return {
            "source": self.source, "out": self.out, "bits": self.bits, "scheme": self.scheme,
            "granularity": self.granularity, "group_size": self.group_size,
            "tensors": [t.to_dict() for t in self.tensors],
            "total": {"tensors": len(self.tensors), "quantized": len(self.quantized),
                      "bytes_before": self.bytes_before, "bytes_after": self.bytes_after, "ratio": self.ratio,
                      "rel_error": self.rel_error, "sqnr_db": None if math.isinf(sqnr) else sqnr,
                      "file_bytes": self.file_bytes},
            "warnings": self.warnings,
        }


# --- the arithmetic --------------------------------------------------------------------------

@dataclass(frozen=True)
class Layout:
    """How a tensor is cut for its scales: ``rows`` channels (the channel axis moved first) of
    ``cols`` elements, each in ``groups`` groups of ``group`` elements (the last may be shorter)."""

    shape: tuple[int, ...]
    axis: int | None
    rows: int
    cols: int
    group: int
    groups: int

    @classmethod
    def of(cls, w, granularity: str, group_size: int) -> Layout:
        n = math.prod(w.shape)
        if granularity == "tensor" or len(w.shape) < 2:
            return cls(tuple(w.shape), None, 1, n, max(n, 1), 1)
        axis = output_axis(w)
        axis = 0 if axis is None else axis  # unknown axes: the torch convention (output first)
        rows = w.shape[axis]
        cols = n // rows if rows else 0
        group = cols if granularity == "channel" else min(group_size, cols)
        return cls(tuple(w.shape), axis, rows, cols, max(group, 1), max(1, -(-cols // max(group, 1))))


def _limits(bits: int, scheme: str) -> tuple[int, int]:
    if scheme == "symmetric":
        q = (1 << (bits - 1)) - 1
        return -q, q
    return 0, (1 << bits) - 1


def quantize_block(x: np.ndarray, bits: int, scheme: str, group: int, fixed: tuple | None = None):
    """Quantise rows ``x`` (float32, ``[r, cols]``) in groups of ``group``: returns ``(codes int16
    [r, cols], scale float32 [r, G], zero_point uint8 [r, G] or None, dequantised float32)``.
    ``fixed = (scale, zero_point)`` imposes one scale (per-tensor granularity)."""
    lo_q, hi_q = _limits(bits, scheme)
    r, cols = x.shape
    if fixed is None:
        g = max(1, -(-cols // group))
        padded = x if g * group == cols else np.pad(x, ((0, 0), (0, g * group - cols)))
        xg = padded.reshape(r, g, group)
        if scheme == "symmetric":
            scale = (np.max(np.abs(xg), axis=2) / np.float32(hi_q)).astype(np.float32)
            zp = None
        else:
            lo = np.minimum(xg.min(axis=2), 0)
            hi = np.maximum(xg.max(axis=2), 0)
            scale = ((hi - lo) / np.float32(hi_q)).astype(np.float32)
            safe = np.where(scale > 0, scale, np.float32(1))
            zp = np.clip(np.rint(-lo / safe), 0, hi_q).astype(np.uint8)
    else:
        scale, zp = fixed
        g, group = 1, cols
        xg = x.reshape(r, 1, cols)
        scale = np.full((r, 1), scale, dtype=np.float32)
        zp = None if zp is None else np.full((r, 1), zp, dtype=np.uint8)
    if not np.isfinite(scale).all():
        raise _NonFinite()
    safe = np.where(scale > 0, scale, np.float32(1))[:, :, None]
    q = np.rint(xg / safe)
    if zp is not None:
        q += zp[:, :, None]
    q = np.clip(q, lo_q, hi_q)
    deq = ((q - zp[:, :, None]) if zp is not None else q) * scale[:, :, None]
    q = q.reshape(r, g * group)[:, :cols].astype(np.int16)
    deq = deq.reshape(r, g * group)[:, :cols].astype(np.float32)
    return q, scale, zp, deq


class _NonFinite(Exception):
    pass


def _tensor_scale(w, bits: int, scheme: str) -> tuple[float, int | None]:
    """One scale (and zero point) for the whole tensor, from a streaming min/max pass."""
    lo, hi = 0.0, 0.0
    read = ranged_reader(w)
    for s in range(0, w.numel, CHUNK_ELEMENTS):
        v = _dtypes.decode(np.asarray(read(s, min(w.numel, s + CHUNK_ELEMENTS))), w.dtype)
        if v.size:
            if not np.isfinite(v).all():
                raise _NonFinite()
            lo, hi = min(lo, float(v.min())), max(hi, float(v.max()))
    _, hi_q = _limits(bits, scheme)
    if scheme == "symmetric":
        amax = np.float32(max(-lo, hi))
        return float(np.float32(amax) / np.float32(hi_q)), None
    scale = np.float32((np.float32(hi) - np.float32(lo)) / np.float32(hi_q))
    zp = int(np.clip(np.rint(-np.float32(lo) / scale), 0, hi_q)) if scale > 0 else 0
    return float(scale), zp


def blocks(w, layout: Layout, bits: int, scheme: str, fixed: tuple | None = None) -> Iterator[tuple[int, int, np.ndarray]]:
    """``(row_start, row_stop, float32 [rows, cols])`` pieces of the tensor in layout order; for
    per-tensor scales the single row is cut into column pieces (``row_start`` is then the column)."""
    read = ranged_reader(w)
    if layout.axis is None:
        step = CHUNK_ELEMENTS
        for s in range(0, w.numel, step):
            e = min(w.numel, s + step)
            piece = _dtypes.decode(np.asarray(read(s, e)), w.dtype).astype(np.float32, copy=False)
            yield s, e, piece.reshape(1, -1)
        return
    per = max(1, layout.cols)
    step = max(1, CHUNK_ELEMENTS // per)
    if bits == 4 and per % 2 and step % 2:
        step += 1  # keep every block an even number of codes, so two codes share a byte cleanly
    # output axis first: rows are contiguous ranges, each read (and mapped) on its own
    moved = None if layout.axis == 0 else np.moveaxis(w.raw(), layout.axis, 0)
    for r0 in range(0, layout.rows, step):
        r1 = min(layout.rows, r0 + step)
        raw = read(r0 * per, r1 * per) if moved is None else np.asarray(moved[r0:r1])
        piece = _dtypes.decode(np.asarray(raw), w.dtype).astype(np.float32, copy=False)
        yield r0, r1, piece.reshape(r1 - r0, layout.cols)


# --- per tensor ------------------------------------------------------------------------------

def _validate(bits, scheme, granularity, group_size) -> None:
    if bits not in BITS or isinstance(bits, bool):
        raise WeightkitError(f"bits must be 4 or 8; received bits={bits!r}")
    if scheme not in SCHEMES:
        raise WeightkitError(f"unknown scheme {scheme!r}; choose 'symmetric' or 'asymmetric'")
    if granularity not in GRANULARITIES:
        raise WeightkitError(f"unknown granularity {granularity!r}; choose 'tensor', 'channel' or 'group'")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise WeightkitError(f"group_size must be a positive integer; received group_size={group_size!r}")


def _reason(w) -> str | None:
    """Why ``w`` stays unquantised, or ``None``."""
    if not _dtypes.is_floating(w.dtype):
        return f"{w.dtype} is not floating point"
    if w.is_buffer:
        return "buffer"
    if w.role == "bias":
        return "bias"
    if w.numel < MIN_NUMEL:
        return f"fewer than {MIN_NUMEL} elements"
    return None


def _bytes_after(layout: Layout, n: int, bits: int, scheme: str) -> tuple[int, int]:
    codes = n if bits == 8 else (n + 1) // 2
    scales = layout.rows * layout.groups * (4 + (1 if scheme == "asymmetric" else 0))
    return codes + scales, scales


class _Quantizer:
    """Quantises one tensor block by block; collects error sums; optionally keeps codes bytes."""

    def __init__(self, w, bits: int, scheme: str, granularity: str, group_size: int):
        self.w, self.bits, self.scheme = w, bits, scheme
        self.layout = Layout.of(w, granularity, group_size)
        self.fixed = _tensor_scale(w, bits, scheme) if self.layout.axis is None else None
        self.sum_sq = self.err_sq = 0.0
        self.max_err = 0.0
        self.scales: list[np.ndarray] = []
        self.zps: list[np.ndarray] = []

    def run(self, emit: bool) -> Iterator[np.ndarray]:
        """Quantise every block; yields the stored code bytes of each block when ``emit``."""
        for _, _, x in blocks(self.w, self.layout, self.bits, self.scheme, self.fixed):
            if self.fixed is None and not np.isfinite(x).all():
                raise _NonFinite()
            q, scale, zp, deq = quantize_block(x, self.bits, self.scheme, self.layout.group, self.fixed)
            d = (x - deq).astype(np.float64)
            self.err_sq += float(np.dot(d.reshape(-1), d.reshape(-1)))
            x64 = x.astype(np.float64).reshape(-1)
            self.sum_sq += float(np.dot(x64, x64))
            if d.size:
                self.max_err = max(self.max_err, float(np.abs(d).max()))
            if self.fixed is None:
                self.scales.append(scale)
                if zp is not None:
                    self.zps.append(zp)
            if emit:
                if self.bits == 4:
                    yield pack4(q, self.scheme)
                else:
                    yield q.astype(np.int8 if self.scheme == "symmetric" else np.uint8).reshape(-1)

    def scale_array(self) -> np.ndarray:
        if self.fixed is not None:
            return np.array([[self.fixed[0]]], dtype=np.float32)
        return np.concatenate(self.scales).astype(np.float32) if self.scales else np.zeros((0, 1), np.float32)

    def zero_point_array(self) -> np.ndarray:
        if self.fixed is not None:
            return np.array([[self.fixed[1]]], dtype=np.uint8)
        return np.concatenate(self.zps).astype(np.uint8)

    def result(self) -> TensorQuant:
        w, layout = self.w, self.layout
        after, scales = _bytes_after(layout, w.numel, self.bits, self.scheme)
        rel = math.sqrt(self.err_sq / self.sum_sq) if self.sum_sq else 0.0
        sqnr = math.inf if self.err_sq == 0 else (10 * math.log10(self.sum_sq / self.err_sq) if self.sum_sq else -math.inf)
        return TensorQuant(w.name, w.kind, tuple(w.shape), w.dtype, w.numel, True, None, layout.axis, rel, sqnr,
                           self.max_err, w.nbytes, after, scales, self.sum_sq, self.err_sq)

    def info(self) -> dict[str, Any]:
        layout = self.layout
        return {"shape": list(layout.shape), "dtype": self.w.dtype, "bits": self.bits, "scheme": self.scheme,
                "axis": layout.axis, "rows": layout.rows, "cols": layout.cols, "group_size": layout.group,
                "groups": layout.groups}


def _kept(w, reason: str) -> TensorQuant:
    return TensorQuant(w.name, w.kind, tuple(w.shape), w.dtype, w.numel, False, reason, None, 0.0, math.inf, 0.0,
                       w.nbytes, w.nbytes, 0)


# --- public ----------------------------------------------------------------------------------

def quantize_error(source: Any, *, bits: int = 8, scheme: str = "symmetric", granularity: str = "channel",
                   group_size: int = 128, select: Any = None) -> QuantizeReport:
    """What quantising the weights would cost, without changing anything.

    Per tensor: relative error ‖W − Q(W)‖/‖W‖, SQNR in dB, max abs error, and bytes before and
    after (codes plus scales and zero points). Streams tensor by tensor, block by block, from
    any source :func:`weightkit.open` reads.

    Args:
        source: a model, checkpoint path, state dict or ``WeightSet``.
        bits: 8 or 4.
        scheme: ``"symmetric"`` or ``"asymmetric"`` (with a zero point).
        granularity: ``"channel"`` (the default: one scale per output channel, the output axis
            from the layer table; axis 0 when a tensor's axes are unknown, reported as ``axis``),
            ``"tensor"`` or ``"group"`` (``group_size`` consecutive elements of a channel).
            1-D weights get one scale.
        select: a glob, ``"re:<regex>"``, list of those, or predicate on ``Weight``.

    Example:
        >>> import torch, weightkit
        >>> _ = torch.manual_seed(0)
        >>> r = weightkit.quantize_error(torch.nn.Linear(256, 64), bits=8, granularity="channel")
        >>> r["weight"].sqnr_db > 35, r["bias"].quantized
        (True, False)
    """

    _validate(bits, scheme, granularity, group_size)
    ws, _, owned = open_source(source)
    try:
        out = []
        for w in select_weights(ws, select):
            reason = _reason(w)
            if reason:
                out.append(_kept(w, reason))
                continue
            try:
                qz = _Quantizer(w, bits, scheme, granularity, group_size)
                for _ in qz.run(emit=False):
                    pass
                out.append(qz.result())
            except _NonFinite:
                out.append(_kept(w, "holds NaN or Inf"))
        return QuantizeReport(ws.source, bits, scheme, granularity, group_size if granularity == "group" else None, out)
    finally:
        if owned:
            ws.close()


def quantize(model_or_source: Any, out: str | Path | None = None, *, bits: int = 8, scheme: str = "symmetric",
             granularity: str = "channel", group_size: int = 128, select: Any = None, mode: str | None = None,
             in_place: bool = False) -> QuantizeReport:
    """Quantise weights: torch dynamic quantisation of a live model, or a weight-only
    quantised safetensors checkpoint.

    ``mode="dynamic"`` (the default for a live ``torch.nn.Module`` without ``out``): returns a
    quantised copy of the model made by ``torch.ao.quantization.quantize_dynamic`` for its
    ``Linear`` and ``LSTM`` layers (int8; ``granularity="channel"`` gives per-channel Linear
    weights). The model passed in is not changed.

    ``mode="weight-only"`` (the default when ``out`` is given): streams the source tensor by
    tensor into ``out``: int8 or packed int4 codes plus scales (and zero points), with the
    metadata to dequantise. ``weightkit.open(out)`` shows the original names, shapes and
    kinds, and ``.numpy()`` returns dequantised float32. Returns a :class:`QuantizeReport`
    (the error, as :func:`quantize_error` measures it, and ``file_bytes``).

    Example:
        >>> import tempfile, torch, weightkit
        >>> net = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
        >>> path = tempfile.mkdtemp() + "/q.safetensors"
        >>> r = weightkit.quantize(net, path, bits=4, granularity="group", group_size=64)
        >>> ws = weightkit.open(path)
        >>> ws["0.weight"].shape, ws["0.weight"].kind, ws["0.weight"].numpy().dtype
        ((256, 256), 'Linear', dtype('float32'))
        >>> r.file_bytes < 0.16 * 4 * sum(p.numel() for p in net.parameters())  # float32 bytes
        True
    """
    _validate(bits, scheme, granularity, group_size)
    if mode is None:
        mode = "weight-only" if (out is not None or in_place) else "dynamic"
    if mode not in MODES:
        raise WeightkitError(f"unknown mode {mode!r}; choose 'dynamic' (live torch model) or 'weight-only' (a file)")
    if mode == "dynamic":
        if out is not None:
            raise WeightkitError("mode='dynamic' returns a quantised torch model; out= is for mode='weight-only'")
        return _dynamic(model_or_source, bits=bits, scheme=scheme, granularity=granularity)
    return _weight_only(model_or_source, out, bits=bits, scheme=scheme, granularity=granularity,
                        group_size=group_size, select=select, in_place=in_place)


def _dynamic(model, *, bits: int, scheme: str, granularity: str):
    if _backend.is_keras(model) or not _backend.is_torch_module(model):
        raise WeightkitError(f"mode='dynamic' quantises a live torch.nn.Module; received {type(model).__name__} "
                             "(for files use out= and mode='weight-only')")
    if bits != 8 or scheme != "symmetric" or granularity == "group":
        raise WeightkitError(f"torch dynamic quantisation is int8 symmetric per tensor or per channel; received "
                             f"bits={bits}, scheme={scheme!r}, granularity={granularity!r} (mode='weight-only' "
                             "does the rest)")
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.ao import quantization as tq

        linear = tq.per_channel_dynamic_qconfig if granularity == "channel" else tq.default_dynamic_qconfig
        spec = {torch.nn.Linear: linear, torch.nn.LSTM: tq.default_dynamic_qconfig}
        if not any(isinstance(m, (torch.nn.Linear, torch.nn.LSTM)) for m in model.modules()):
            raise WeightkitError(f"{type(model).__name__} has no Linear or LSTM layer for dynamic quantisation; "
                                 "use mode='weight-only' with out=")
        return tq.quantize_dynamic(model, spec, dtype=torch.qint8, inplace=False)


def _weight_only(source, out, *, bits, scheme, granularity, group_size, select, in_place) -> QuantizeReport:
    out = _check_out(source, out, in_place)
    ws, framework, owned = open_source(source)
    try:
        chosen = {w.name for w in select_weights(ws, select)}
        entries: list[Entry] = []
        infos: dict[str, dict] = {}
        kinds: dict[str, str] = {}
        quantizers: dict[str, _Quantizer] = {}
        rows: list[TensorQuant | str] = []
        for w in ws:
            if w.kind != "unknown":
                kinds[w.name] = w.kind
            reason = None if w.name in chosen else "not selected"
            reason = reason or _reason(w)
            if reason:
                entries.append(weight_entry(w))
                if w.name in chosen:
                    rows.append(_kept(w, reason))
                continue
            try:
                qz = _Quantizer(w, bits, scheme, granularity, group_size)
            except _NonFinite:
                raise WeightkitError(f"{ws.source}: tensor {w.name!r} holds NaN or Inf and cannot be quantised; "
                                     "exclude it with select=") from None
            quantizers[w.name] = qz
            info = qz.info()
            info["granularity"] = granularity if qz.layout.axis is not None else "tensor"
            n = w.numel
            codes_dtype = "uint8" if (bits == 4 or scheme == "asymmetric") else "int8"
            codes_n = n if bits == 8 else (n + 1) // 2
            scale_shape = (qz.layout.rows, qz.layout.groups) if qz.layout.axis is not None else (1, 1)
            info.update(codes=w.name + "::q", scale=w.name + "::scale",
                        zero_point=w.name + "::zero_point" if scheme == "asymmetric" else None)
            infos[w.name] = info

            def codes(qz=qz, name=w.name):
                try:
                    yield from qz.run(emit=True)
                except _NonFinite:
                    raise WeightkitError(f"{ws.source}: tensor {name!r} holds NaN or Inf and cannot be quantised; "
                                         "exclude it with select=") from None

            def scale(qz=qz):
                return [qz.scale_array()]

            def zero_point(qz=qz):
                return [qz.zero_point_array()]

            entries.append(Entry(w.name + "::q", codes_dtype, (codes_n,), codes))
            entries.append(Entry(w.name + "::scale", "float32", scale_shape, scale))
            if scheme == "asymmetric":
                entries.append(Entry(w.name + "::zero_point", "uint8", scale_shape, zero_point))
            rows.append(w.name)
        grain = granularity + (f" {group_size}" if granularity == "group" else "")
        meta = base_metadata(ws, framework, {"weightkit.operation": f"quantize int{bits} {scheme} per {grain}"},
                             carry=True)
        meta[TENSORS_KEY] = json.dumps(infos, separators=(",", ":"))
        meta[KINDS_KEY] = json.dumps(kinds, separators=(",", ":"))
        write_safetensors(out, entries, meta, first=(MARKER, "1"))
        tensors = [quantizers[r].result() if isinstance(r, str) else r for r in rows]
        return QuantizeReport(ws.source, bits, scheme, granularity, group_size if granularity == "group" else None,
                              tensors, out=str(out), file_bytes=Path(out).stat().st_size)
    finally:
        if owned:
            ws.close()

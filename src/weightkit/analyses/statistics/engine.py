"""The streaming statistics engine.

Each tensor is cut into pieces of at most ``CHUNK_BYTES``; worker threads read one piece at a
time from the lazy source (a zero-copy memory map for safetensors and torch checkpoints),
fold it into an accumulator in the compiled kernel (GIL released, so both cores work), and
drop it. Accumulators merge exactly (float64 sums, power-of-two histograms), so memory
stays at about ``threads × CHUNK_BYTES`` whatever the checkpoint's size.
"""

from __future__ import annotations

import itertools
import math
import os
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Callable, Iterable, cast

import numpy as np

from weightkit import _dtypes
from weightkit.analyses.statistics.result import GroupStats, StatsReport, TensorStats
from weightkit.core.selector import select as select_weights
from weightkit.errors import WeightkitError

CHUNK_BYTES = 16 << 20
SMALL_BYTES = 1 << 20  # pieces below this are folded by the calling thread (see compute)
FINE = 32  # fine histogram bins per reported bin (quantiles use the fine ones)
DEFAULT_QUANTILES = (0.001, 0.01, 0.25, 0.5, 0.75, 0.99, 0.999)


_K = None


def _kernel():
    """The compiled kernels (numba), loaded on first use: ``import weightkit`` stays light."""
    global _K
    if _K is None:
        from weightkit.analyses.statistics import _kernel

        _K = _kernel
    return _K


_LUTS: dict[str, np.ndarray] | None = None


def _luts() -> dict[str, np.ndarray]:
    global _LUTS
    cache = _LUTS
    if cache is None:
        u16 = np.arange(1 << 16, dtype=np.uint32)
        u8 = np.arange(256, dtype=np.uint8)
        cache = _LUTS = {
            "bfloat16": (u16 << 16).view(np.float32),
            "float16": u16.astype(np.uint16).view(np.float16).astype(np.float32),
            "int16": u16.astype(np.uint16).view(np.int16).astype(np.float32),
            "uint16": u16.astype(np.float32),
            "int8": u8.view(np.int8).astype(np.float32),
            "uint8": u8.astype(np.float32),
            "bool": (u8 != 0).astype(np.float32),
            "float8_e4m3fn": _dtypes.decode(u8, "float8_e4m3fn").astype(np.float32),
            "float8_e5m2": _dtypes.decode(u8, "float8_e5m2").astype(np.float32),
        }
    return cache


_GENERIC = {"float64", "int32", "int64", "uint32", "uint64"}


def supported(dtype: str) -> bool:
    return dtype == "float32" or dtype in _GENERIC or dtype in _luts()


@dataclass
class _Acc:
    mom: np.ndarray
    cnt: np.ndarray
    hist: np.ndarray
    geo: np.ndarray

    @classmethod
    def new(cls, nbins: int) -> _Acc:
        return cls(*_kernel().new_accumulator(nbins))

    def fold(self, raw: np.ndarray, dtype: str, shift: float, eps: float) -> None:
        K = _kernel()
        args = (shift, eps, self.mom, self.cnt, self.hist, self.geo)
        raw = np.ascontiguousarray(raw).reshape(-1)
        if dtype == "float32":
            K.process_f32(raw, *args)
        elif dtype in _GENERIC:
            K.process(raw, *args)
        else:
            lut = _luts()[dtype]
            K.process_table(raw.view(np.uint8 if lut.size == 256 else np.uint16), lut, *args)

    def merge(self, other: _Acc) -> None:
        _kernel().merge_into(self.mom, self.cnt, self.hist, self.geo,
                             other.mom, other.cnt, other.hist, other.geo)


def compute(
    weights: Iterable,
    *,
    bins: int = 64,
    eps: float = 1e-6,
    quantiles: tuple[float, ...] = DEFAULT_QUANTILES,
    threads: int | None = None,
    chunk_bytes: int = CHUNK_BYTES,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[TensorStats], int]:
    """Statistics of each weight (``weightkit.Weight``), in order; returns ``(stats, bytes_read)``."""
    if not isinstance(bins, int) or not 1 <= bins <= 4096:
        raise WeightkitError(f"bins must be an integer from 1 to 4096; received bins={bins!r}")
    if not (isinstance(eps, (int, float)) and eps >= 0):
        raise WeightkitError(f"eps must be a non-negative number; received eps={eps!r}")
    weights = list(weights)
    threads = threads or min(4, os.cpu_count() or 1)
    nbins = bins * FINE
    total_bytes = sum(w.nbytes for w in weights)
    accs: dict[int, _Acc] = {}
    errors: dict[int, str] = {}
    shifts: dict[int, float] = {}
    pieces: list[tuple[int, int, int]] = []  # (tensor, start, stop) in elements
    whole: set[int] = set()  # tensors read in one piece: shift chosen and folded by the worker
    for i, w in enumerate(weights):
        if not supported(w.dtype):
            errors[i] = f"dtype {w.dtype} is not measured"
            continue
        step = max(1, chunk_bytes // max(1, _dtypes.itemsize(w.dtype)))
        pieces.extend((i, start, min(start + step, w.numel)) for start in range(0, w.numel, step))
        if 0 < w.numel <= step:
            whole.add(i)
        else:
            accs[i] = _Acc.new(nbins)
        shifts[i] = 0.0

    def choose_shift(raw: np.ndarray, dtype: str) -> float:
        """The shift that keeps the float64 variance sums exact-ish, from the tensor's first 4096
        values (``raw``: its storage from the start): 0 when they are centred (|mean| <= std: no
        cancellation, and the kernel's cheaper unshifted loop), otherwise the first finite value."""
        head = raw[: 1 << 12]
        if dtype not in ("float32", "float64"):
            head = _dtypes.decode(head, dtype).astype(np.float64)
        return _kernel().head_shift(np.ascontiguousarray(head).reshape(-1))

    def run(job):
        """Fold each piece of a job; a piece that cannot be read is reported, not raised."""
        out = []
        for i, start, stop in job:
            w = weights[i]
            try:
                acc = _Acc.new(nbins)
                raw = w.raw_range(start, stop)
                if i in whole:
                    shifts[i] = choose_shift(raw, w.dtype)
                acc.fold(raw, w.dtype, shifts[i], eps)
                out.append((i, acc, (stop - start) * _dtypes.itemsize(w.dtype), None))
            except Exception as e:
                out.append((i, None, 0, _describe(e)))
        return out

    # the shift makes the float64 variance exact-ish when |mean| >> std; same for all pieces
    for i in list(accs):
        try:
            w = weights[i]
            shifts[i] = choose_shift(w.raw_range(0, min(w.numel, 1 << 12)), w.dtype)
        except Exception as e:  # unreadable bytes are reported, the rest are still measured
            errors[i] = _describe(e)
    done = 0

    def collect(results) -> None:
        nonlocal done
        for i, acc, nbytes, error in results:
            if error is not None:
                errors[i] = error
            elif i in whole:
                accs[i] = acc
            elif i not in errors:
                accs[i].merge(acc)
            done += nbytes
        if progress is not None:
            progress(done, total_bytes)

    # big pieces go to the worker threads; small ones (biases, norms: mostly Python around a short
    # kernel call) are folded here meanwhile: two threads taking turns with the GIL for thousands of
    # them ran 2.4x slower than one
    big: list[tuple[int, int, int]] = []
    small: list[tuple[int, int, int]] = []
    for p in pieces:
        if p[0] not in errors:
            nbytes = (p[2] - p[1]) * _dtypes.itemsize(weights[p[0]].dtype)
            (big if nbytes >= SMALL_BYTES and threads > 1 else small).append(p)
    batches = iter([small[k : k + 64] for k in range(0, len(small), 64)])
    with ThreadPoolExecutor(max_workers=threads) as pool:
        queue = iter(big)
        # a few jobs in flight: each maps its piece and holds an accumulator until collected
        pending = {pool.submit(run, [p]) for p in itertools.islice(queue, threads * 2)}
        while True:
            batch = next(batches, None)
            if batch:
                collect(run(batch))
            elif not pending:
                break
            finished, _ = wait(pending, timeout=0 if batch else None, return_when=FIRST_COMPLETED)
            for fut in finished:
                pending.remove(fut)
                collect(fut.result())
                pending.update(pool.submit(run, [p]) for p in itertools.islice(queue, 1))
    out = [_finish(w, accs.get(i), shifts.get(i, 0.0), errors.get(i), bins, quantiles) for i, w in enumerate(weights)]
    return out, done


def _describe(e: Exception) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return f"unreadable: {text}"


def _finish(w, acc: _Acc | None, shift: float, error: str | None, bins: int, quantiles) -> TensorStats:
    base = dict(name=w.name, layer=w.layer, kind=w.kind, role=w.role, dtype=w.dtype, shape=tuple(w.shape),
                is_buffer=w.is_buffer)
    if acc is None or error:
        return TensorStats(**base, count=w.numel, finite=0, mean=None, std=None, min=None, max=None, absmax=None,
                           l2_norm=math.nan, zeros=0, small=0, nan=0, posinf=0, neginf=0, hist_edges=[],
                           hist_counts=[], quantiles={}, quantile_error=math.nan, error=error or "not measured")
    K = _kernel()
    c, m = acc.cnt, acc.mom
    n = int(c[K.FINITE])
    if n:
        mean = float(shift + m[K.S] / n)
        var = max(0.0, float((m[K.SS] - m[K.S] * m[K.S] / n) / n))
        lo, hi = float(m[K.MIN]), float(m[K.MAX])
        stats: dict[str, Any] = dict(mean=mean, std=math.sqrt(var), min=lo, max=hi, absmax=max(abs(lo), abs(hi)))
    else:
        stats = dict(mean=None, std=None, min=None, max=None, absmax=None)
    edges, counts, qs, qerr = _histogram(acc.hist, acc.geo, bins, n, quantiles, stats["min"], stats["max"])
    return TensorStats(
        **base, count=int(c[K.TOTAL]) if c[K.TOTAL] else w.numel, finite=n, **stats,
        l2_norm=math.sqrt(float(m[K.SQ])), zeros=int(c[K.ZERO]), small=int(c[K.SMALL]), nan=int(c[K.NAN]),
        posinf=int(c[K.PINF]), neginf=int(c[K.NINF]), hist_edges=edges, hist_counts=counts, quantiles=qs,
        quantile_error=qerr,
    )


def _histogram(hist, geo, bins: int, n: int, quantiles, vmin, vmax):
    """``(edges, counts, quantiles, quantile_error)`` from the fine histogram, in one compiled call:
    at most ``bins`` coarse bins over the occupied range, each a whole number of fine bins (exact),
    and the quantiles (numpy's linear definition), each within one fine bin width of the exact
    value (the error reported)."""
    if not n:
        return [], [], {}, math.nan
    edges, counts, values = _kernel().histogram_summary(hist, float(geo[0]), float(geo[1]), bins, n,
                                                         np.asarray(quantiles, dtype=np.float64), vmin, vmax)
    return edges.tolist(), counts.tolist(), dict(zip((f"{q:g}" for q in quantiles), values.tolist())), float(geo[1])


def roll_up(name: str, kind: str, items: list[TensorStats]) -> GroupStats:
    """Combine tensor statistics exactly (Chan's parallel formula for mean and variance)."""
    ok = [t for t in items if t.error is None]
    n = sum(t.finite for t in ok)
    mean = var_sum = None
    if n:
        # a tensor with finite values has a mean and a std
        mean = float(sum(cast(float, t.mean) * t.finite for t in ok if t.finite) / n)
        var_sum = float(sum(t.finite * (cast(float, t.std) ** 2 + (cast(float, t.mean) - mean) ** 2)
                            for t in ok if t.finite))
    mins = [t.min for t in ok if t.min is not None]
    maxs = [t.max for t in ok if t.max is not None]
    return GroupStats(
        name=name, kind=kind, tensors=len(items), count=sum(t.count for t in items), finite=n,
        mean=mean, std=math.sqrt(var_sum / n) if var_sum is not None else None,  # var_sum: set when n
        min=min(mins) if mins else None, max=max(maxs) if maxs else None,
        absmax=max((t.absmax for t in ok if t.absmax is not None), default=None),
        l2_norm=math.sqrt(sum(t.l2_norm ** 2 for t in ok)),
        zeros=sum(t.zeros for t in ok), small=sum(t.small for t in ok), nan=sum(t.nan for t in ok),
        posinf=sum(t.posinf for t in ok), neginf=sum(t.neginf for t in ok), unreadable=len(items) - len(ok),
    )


def report(ws, *, select=None, bins: int = 64, eps: float = 1e-6,
           quantiles=DEFAULT_QUANTILES, threads: int | None = None, progress=None) -> StatsReport:
    """Run the engine over a WeightSet and roll the results up by layer and for the whole model."""
    weights = select_weights(ws, select)
    t0 = time.perf_counter()
    tensors, nbytes = compute(weights, bins=bins, eps=eps, quantiles=quantiles, threads=threads, progress=progress)
    seconds = time.perf_counter() - t0
    # roll-ups describe parameters; buffers (BatchNorm statistics, position ids) keep their own rows
    params = [t for t in tensors if not t.is_buffer]
    layers: dict[str, list[TensorStats]] = {}
    for t in params:
        layers.setdefault(t.layer, []).append(t)
    return StatsReport(
        source=ws.source, format=ws.format, eps=eps, bins=bins, tensors=tensors,
        layers=[roll_up(name, items[0].kind, items) for name, items in layers.items()],
        total=roll_up("(all)", "model", params), filter=select if isinstance(select, str) else None, bytes_read=nbytes, seconds=seconds,
    )

"""What pruning and quantisation share: the output axis of a tensor (from the layer table),
the selection of tensors, and the streaming k-th-smallest selection that picks which elements
to prune, for live models and files alike.

Selection works on 32-bit *keys* whose unsigned order is the order of ``|w|`` (the float32
bits of ``|w|``: for non-negative floats, bit patterns sort like values) or, for random
pruning, seeded random numbers. The k smallest keys are found with two histogram passes over
the chunks (high 16 bits, then low 16 bits inside the one bin that holds the k-th key), so
memory stays at one chunk whatever the tensor's (or the whole model's) size, and the count is
exact: keys below the threshold plus exactly as many keys equal to it as needed, taken in
stream order. Elements already pruned carry the key ``SENTINEL`` and are never counted.

The chunks are *parts*: functions returning the keys of one chunk, so every pass can run its
chunks on two threads (the compiled loops release the GIL), each with its own histogram.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence

import numpy as np

from weightkit import _dtypes

SENTINEL = np.uint32(0xFFFFFFFF)
CHUNK_ELEMENTS = 1 << 20  # 4 MB of float32 per chunk: temporaries stay a few MB

def output_axis(w) -> int | None:
    """Index of the output axis of a weight (output channels / features / units): the layer
    table's ``out`` token (or its gate block, q/k/v block, heads, vocabulary rows); ``None`` when
    the axes are unknown.

    Conv2d and Linear weights: axis 0; ConvTranspose: axis 1; a Keras Dense kernel: axis 1; an
    LSTM: the gates axis; an Embedding (torch or Keras): one row per token (axis 0). 1-D tensors: axis 0.

    Example:
        >>> import torch, weightkit
        >>> from weightkit.edits._compress import output_axis
        >>> output_axis(weightkit.open(torch.nn.ConvTranspose2d(3, 4, 3))["weight"])
        1
    """
    return w.out_axis


def ranged_reader(w) -> Callable[[int, int], np.ndarray]:
    """``read(start, stop)`` of raw flat elements: piece by piece from files and CPU tensors; a
    tensor on an accelerator is copied to the host once (not once per piece)."""
    if w.device not in (None, "cpu"):
        flat = np.asarray(w.raw()).reshape(-1)
        return lambda s, e: flat[s:e]
    return w.raw_range


# --- keys ----------------------------------------------------------------------------------

def abs_keys(raw: np.ndarray, dtype: str) -> np.ndarray:
    """uint32 keys ordered like ``|w|`` for a flat chunk of raw storage (NaN sorts above Inf)."""
    raw = np.asarray(raw).reshape(-1)
    if dtype == "float32":
        return raw.view(np.uint32) & np.uint32(0x7FFFFFFF)
    if dtype == "bfloat16":
        return (raw.view(np.uint16).astype(np.uint32) & np.uint32(0x7FFF)) << np.uint32(16)
    values = _dtypes.decode(raw, dtype)
    return np.abs(values.astype(np.float32)).view(np.uint32)


def float_key(t: float) -> int:
    """Key of the magnitude ``|t|`` (for threshold pruning: prune keys below it)."""
    return int(np.array([abs(t)], dtype=np.float32).view(np.uint32)[0])


def random_keys(seed: int, stream: int, chunk: int, size: int) -> np.ndarray:
    """Reproducible random keys for chunk ``chunk`` of tensor ``stream``: the same on every pass."""
    rng = np.random.default_rng([seed, stream, chunk])
    return rng.integers(0, 0xFFFFFFFF, size=size, dtype=np.uint32)  # never SENTINEL


# --- the compiled loops ----------------------------------------------------------------------

_K = None


def kernels():
    """The numba loops, compiled (and cached on disk) on first use, so ``import weightkit`` stays light."""
    global _K
    if _K is None:
        from weightkit.edits import _compress_kernel as K

        _K = K
    return _K


Part = Callable[[], np.ndarray]
"""The keys of one chunk; calling it again gives the same keys."""

THREADS = max(1, min(2, os.cpu_count() or 1))


def in_threads(fn: Callable[[int], Any], n: int, *, threads: int = THREADS) -> list:
    """``[fn(0), …, fn(n - 1)]``, run on ``threads`` threads (worker ``w`` takes ``w``,
    ``w + threads``, …, so at most ``threads`` chunks are in memory at once)."""
    if threads == 1 or n < 2:
        return [fn(i) for i in range(n)]
    out: list = [None] * n

    def worker(w: int) -> None:
        for i in range(w, n, threads):
            out[i] = fn(i)

    with ThreadPoolExecutor(threads) as pool:
        for f in [pool.submit(worker, w) for w in range(threads)]:
            f.result()
    return out


def _histogram(parts: Sequence[Part], fill: Callable[[np.ndarray, np.ndarray], None], threads: int) -> np.ndarray:
    hists = [np.zeros(1 << 16, dtype=np.int64) for _ in range(threads)]
    in_threads(lambda i: fill(np.ascontiguousarray(parts[i](), dtype=np.uint32), hists[i % threads]), len(parts),
               threads=threads)
    return np.sum(hists, axis=0)


def kth_threshold(parts: Sequence[Part], k: int, *, threads: int = 1) -> tuple[int, int]:
    """``(T, take)`` such that the ``k`` smallest keys are those ``< T`` plus the first ``take``
    keys ``== T`` in the order of ``parts`` (read by ``threads`` threads at once)."""
    if k <= 0:
        return 0, 0
    K = kernels()
    cum = np.cumsum(_histogram(parts, K.hist_hi, threads))
    if k > cum[-1]:
        raise ValueError(f"k={k} exceeds the {int(cum[-1])} candidates")
    b = int(np.searchsorted(cum, k))
    below = int(cum[b - 1]) if b else 0
    cum2 = np.cumsum(_histogram(parts, lambda keys, h: K.hist_lo(keys, np.uint32(b), h), threads))
    low = int(np.searchsorted(cum2, k - below))
    less = below + (int(cum2[low - 1]) if low else 0)
    return (b << 16) | low, k - less


class KeepMasker:
    """Turns key chunks into keep masks (1 keep, 0 prune) for one threshold, pruning the ``take``
    ties in the order chunks arrive (so a global threshold is shared across tensors)."""

    def __init__(self, threshold: int, take: int):
        self.threshold = np.uint32(threshold)
        self.take = int(take)

    def __call__(self, keys: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """The keep mask of the next chunk (uint8 unless ``out`` is given)."""
        keys = np.ascontiguousarray(keys, dtype=np.uint32)
        keep = np.empty(keys.size, dtype=np.uint8) if out is None else out
        if kernels().keep_above(keys, self.threshold, keep) and self.take:
            self.take = int(kernels().drop_ties(keys, self.threshold, np.int64(self.take), keep))
        return keep

    def fill(self, parts: Sequence[Part], outs: Sequence[np.ndarray]) -> None:
        """Write the masks of the next ``len(parts)`` chunks into ``outs``, on two threads."""
        K = kernels()
        ties = in_threads(lambda i: K.keep_above(np.ascontiguousarray(parts[i](), dtype=np.uint32), self.threshold,
                                                 outs[i]), len(parts))
        for i, n in enumerate(ties):
            if self.take and n:
                self.take = int(K.drop_ties(np.ascontiguousarray(parts[i](), dtype=np.uint32), self.threshold,
                                            np.int64(self.take), outs[i]))


def count_zeros(raw: np.ndarray, dtype: str) -> int:
    """Elements of raw storage whose value is zero (+0 or -0)."""
    raw = np.asarray(raw).reshape(-1)
    if dtype == "bfloat16":
        nonzero = np.count_nonzero(raw.view(np.uint16) & np.uint16(0x7FFF))
    elif dtype in ("float8_e4m3fn", "float8_e5m2"):
        nonzero = np.count_nonzero(raw.view(np.uint8) & np.uint8(0x7F))
    else:
        nonzero = np.count_nonzero(raw)
    return int(raw.size - nonzero)


def n_to_prune(amount: float, n: int) -> int:
    """How many of ``n`` candidates a fraction ``amount`` prunes: ``round(amount * n)``, the rule
    of ``torch.nn.utils.prune`` (Python's round, half to even)."""
    return min(n, int(round(amount * n)))

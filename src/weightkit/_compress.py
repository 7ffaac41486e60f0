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
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import numpy as np

from . import _dtypes

SENTINEL = np.uint32(0xFFFFFFFF)
CHUNK_ELEMENTS = 1 << 20  # 4 MB of float32 per chunk: temporaries stay a few MB

_OUT_FIRST = ("hidden_size", "num_embeddings", "input_dim", "embed_dim")


def output_axis(w) -> int | None:
    """Index of the output axis of a weight (output channels / features / units), read from the
    layer table's axis names; ``None`` when the axes are unknown.

    Conv2d and Linear weights: axis 0; ConvTranspose: axis 1; a Keras Dense kernel: axis 1; an
    LSTM: the gates axis; an Embedding: one row per token (axis 0). 1-D tensors: axis 0.

    Example:
        >>> import torch, weightkit
        >>> from weightkit._compress import output_axis
        >>> output_axis(weightkit.open(torch.nn.ConvTranspose2d(3, 4, 3))["weight"])
        1
    """
    axes = tuple(w.axes)
    if len(axes) == 1:
        return 0
    if not axes or all(a == "?" for a in axes):
        return None
    for i, a in enumerate(axes):
        if a.startswith(("out_", "output_")):
            return i
    for i, a in enumerate(axes):
        if "*hidden" in a or "*units" in a or a.startswith("3*embed_dim"):
            return i
    if "num_heads" in axes:
        return axes.index("num_heads")
    if "units" in axes:  # Keras SimpleRNN: x @ kernel, the units are the last axis
        return len(axes) - 1 - axes[::-1].index("units")
    for name in _OUT_FIRST:
        if name in axes:
            return axes.index(name)
    if "in_channels" in axes and "depth_multiplier" in axes:  # depthwise: one filter per input channel
        return axes.index("in_channels")
    return None


def selected(ws, select: Any) -> list:
    """Weights of ``ws`` chosen by ``select``: ``None`` (all), a glob or ``"re:<regex>"``, a list
    of those, or a predicate on :class:`weightkit.Weight`."""
    from .select import matches

    if select is None:
        return list(ws)
    if callable(select) and not isinstance(select, str):
        return [w for w in ws if select(w)]
    patterns = [select] if isinstance(select, str) else list(select)
    return [w for w in ws if any(matches(w, p) for p in patterns)]


def describe_select(select: Any) -> str:
    if callable(select) and not isinstance(select, str):
        return getattr(select, "__name__", "a predicate")
    return repr(select)


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
        from . import _compress_kernel as K

        _K = K
    return _K


def kth_threshold(chunks: Callable[[], Iterable[np.ndarray]], k: int) -> tuple[int, int]:
    """``(T, take)`` such that the ``k`` smallest keys are those ``< T`` plus the first ``take``
    keys ``== T`` in stream order. ``chunks()`` must yield the same key chunks on every call."""
    if k <= 0:
        return 0, 0
    K = kernels()
    hi = np.zeros(1 << 16, dtype=np.int64)
    for c in chunks():
        K.hist_hi(np.ascontiguousarray(c, dtype=np.uint32), hi)
    cum = np.cumsum(hi)
    if k > cum[-1]:
        raise ValueError(f"k={k} exceeds the {int(cum[-1])} candidates")
    b = int(np.searchsorted(cum, k))
    below = int(cum[b - 1]) if b else 0
    lo = np.zeros(1 << 16, dtype=np.int64)
    for c in chunks():
        K.hist_lo(np.ascontiguousarray(c, dtype=np.uint32), np.uint32(b), lo)
    cum2 = np.cumsum(lo)
    low = int(np.searchsorted(cum2, k - below))
    less = below + (int(cum2[low - 1]) if low else 0)
    return (b << 16) | low, k - less


class KeepMasker:
    """Turns key chunks into keep masks (uint8: 1 keep, 0 prune) for one threshold, consuming
    the ``take`` ties in the order chunks arrive (so a global threshold is shared across tensors)."""

    def __init__(self, threshold: int, take: int):
        self.threshold = np.uint32(threshold)
        self.take = int(take)

    def __call__(self, keys: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        keys = np.ascontiguousarray(keys, dtype=np.uint32)
        keep = np.empty(keys.size, dtype=np.uint8) if out is None else out
        self.take = int(kernels().keep_mask(keys, self.threshold, np.int64(self.take), keep))
        return keep


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

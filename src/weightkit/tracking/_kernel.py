"""Compiled one-pass reductions for watching CPU tensors (numba; cached on disk).

Per float32/float64 gradient or weight on the CPU, torch needs one call per statistic (sum,
dot, abs, …), each a pass over memory plus a dispatch; these loops do what a measured step
needs in one pass each. Sums run in the tensor's dtype within blocks of ``BLOCK`` elements
(vectorised: only re-association is allowed, so NaN and Inf propagate exactly as in plain
arithmetic) and in float64 across blocks.
"""

from __future__ import annotations

import math
from typing import Any

import numba as nb
import numpy as np
from numba import types
from numba.extending import intrinsic

BLOCK = 1024
_OPTS: dict[str, Any] = dict(nogil=True, cache=True, fastmath={"reassoc", "contract"})


@nb.njit(**_OPTS)
def _moments(a, bits, mask):
    # max |x| as the largest masked bit pattern: integer max vectorises where float max does not,
    # and orders |x| the same way, with NaN above Inf
    s = 0.0
    q = 0.0
    sa = 0.0
    m = bits.dtype.type(0)
    for start in range(0, a.size, BLOCK):
        c = a[start:start + BLOCK]
        cb = bits[start:start + BLOCK]
        s_b = c.dtype.type(0)
        q_b = c.dtype.type(0)
        a_b = c.dtype.type(0)
        m_b = bits.dtype.type(0)
        for i in range(c.size):
            v = c[i]
            s_b += v
            q_b += v * v
            a_b += abs(v)
            m_b = max(m_b, bits.dtype.type(cb[i] & mask))  # numba widens uint32 & to 64 bits: half the lanes
        s += s_b
        q += q_b
        sa += a_b
        m = max(m, m_b)
    return s, q, sa, m


_BITS = {np.dtype(np.float32): (np.uint32, np.uint32(0x7FFFFFFF)),
         np.dtype(np.float64): (np.uint64, np.uint64(0x7FFFFFFFFFFFFFFF))}


@nb.njit(**_OPTS)
def norms(w, before):
    """``(Σw², Σ(before − w)²)``: the weight's squared norm and its update's, in one pass."""
    q = 0.0
    d = 0.0
    for start in range(0, w.size, BLOCK):
        cw = w[start:start + BLOCK]
        cb = before[start:start + BLOCK]
        q_b = cw.dtype.type(0)
        d_b = cw.dtype.type(0)
        for i in range(cw.size):
            v = cw[i]
            q_b += v * v
            e = cb[i] - v
            d_b += e * e
        q += q_b
        d += d_b
    return q, d


@nb.njit(**_OPTS)
def centred(a, m):
    """``Σ(x − m)²``: the second pass of a two-pass variance (in the array's dtype, around ``m``
    rounded to it, corrected for that rounding)."""
    mr = a.dtype.type(m)
    q = 0.0
    for start in range(0, a.size, BLOCK):
        c = a[start:start + BLOCK]
        q_b = c.dtype.type(0)
        for i in range(c.size):
            e = c[i] - mr
            q_b += e * e
        q += q_b
    off = np.float64(mr) - m
    return q - a.size * off * off


@nb.njit(**_OPTS)
def histogram(a, lo, scale, counts):
    """Count finite ``a`` (all of it finite, in ``[lo, …]``) into ``counts.size`` equal bins from
    ``lo`` (``scale`` = bins / width); returns ``(Σx, Σx²)`` from the same pass.

    Bin indices are computed a block at a time (vectorised), then counted with unsigned indices,
    which spares the negative-index check of a signed one."""
    last = np.int64(counts.size - 1)
    keys = np.empty(BLOCK, np.uint32)
    s = 0.0
    q = 0.0
    for start in range(0, a.size, BLOCK):
        c = a[start:start + BLOCK]
        s_b = c.dtype.type(0)
        q_b = c.dtype.type(0)
        for i in range(c.size):
            v = c[i]
            s_b += v
            q_b += v * v
            k = np.int64((np.float64(v) - lo) * scale)
            keys[i] = np.uint32(min(max(k, np.int64(0)), last))
        s += s_b
        q += q_b
        for i in range(c.size):
            counts[keys[i]] += 1
    return s, q


@nb.njit(**_OPTS)
def total(a):
    """The sum of ``a`` in blocks of its own dtype folded in float64: non-finite exactly when ``a``
    holds a NaN or an Inf (a float32 block of values near 1e38 can overflow: check again then).
    The per-step NaN/Inf check of a gradient, with none of a torch call's dispatch."""
    s = 0.0
    for start in range(0, a.size, BLOCK):
        c = a[start : start + BLOCK]
        s_b = c[0] * 0  # the block's dtype
        for i in range(c.size):
            s_b += c[i]
        s += s_b
    return s


def _pointer_to(nbtype):
    @intrinsic
    def at(typingctx, address):
        sig = types.CPointer(nbtype)(types.int64)

        def codegen(context, builder, signature, args):
            return builder.inttoptr(args[0], context.get_value_type(signature.return_type))

        return sig, codegen

    return at


_f32_at = _pointer_to(types.float32)
_f64_at = _pointer_to(types.float64)


@nb.njit(**_OPTS)
def totals(addresses, which, sizes, wide, n, out):
    """:func:`total` of ``n`` flat float32 arrays (float64 where ``wide``) given by address: array
    ``k`` starts at ``addresses[k]`` and holds ``sizes[which[k]]`` values; each total goes to
    ``out[k]``, their sum is returned. One call for all of a step's gradients: per gradient, a
    ``data_ptr()`` instead of a NumPy view and a dispatch. The caller keeps the arrays alive."""
    s = 0.0
    for k in range(n):
        j = which[k]
        if wide[j]:
            v = total(nb.carray(_f64_at(addresses[k]), (sizes[j],)))
        else:
            v = total(nb.carray(_f32_at(addresses[k]), (sizes[j],)))
        out[k] = v
        s += v
    return s


@nb.njit(nogil=True, cache=True)
def _count_nonfinite(a):
    nan = 0
    inf = 0
    for i in range(a.size):
        v = a[i]
        if v != v:
            nan += 1
        elif v == np.inf or v == -np.inf:
            inf += 1
    return nan, inf


@nb.njit(nogil=True, cache=True)
def _summary(a, bits, mask, tmp):
    s, q, sa, m = _moments(a, bits, mask)
    tmp[0] = m
    amax = np.float64(tmp.view(a.dtype)[0])
    n = a.size
    if n == 0:
        return 0.0, np.nan, np.nan, np.nan, amax, 0, 0
    mean, am = s / n, sa / n
    # one pass (E[x²] − mean²) when mean² <= var: E[x²] is then at most twice the variance, and
    # the variance keeps all but a bit of the sums' precision; a second pass otherwise
    if math.isfinite(q) and mean * mean <= 0.5 * q / n:
        std = math.sqrt(max(q / n - mean * mean, 0.0))
    else:
        std = math.sqrt(centred(a, mean) / n)
    nan, inf = (0, 0) if math.isfinite(am) else _count_nonfinite(a)
    return math.sqrt(q) if q >= 0 else q, mean, std, am, amax, nan, inf


def summary(a: np.ndarray) -> tuple[list[float], list[int]]:
    """``([norm, mean, std, mean |x|, max |x|], [NaN count, Inf count])`` of a flat float32/float64
    array in one compiled call: a pass for the sums (and a second for the std when |mean| > std)."""
    ints, mask = _BITS[a.dtype]
    r = _summary(a, a.view(ints), mask, np.empty(1, ints))
    return list(r[:5]), list(r[5:])


def warm() -> None:
    """Compile (or load from the cache) every signature the watcher uses."""
    for dt in (np.float32, np.float64):
        a = np.zeros(4, dtype=dt)
        summary(a)
        total(a)
        norms(a, a)
        totals(np.array([a.ctypes.data]), np.zeros(1, dtype=np.int64), np.array([a.size]),
               np.array([dt == np.float64]), 1, np.empty(1))
        centred(a, 0.0)
        histogram(a, 0.0, 1.0, np.zeros(2, dtype=np.int64))

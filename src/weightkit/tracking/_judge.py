"""The numeric part of judging a measured step's alerts, compiled (numba): a handful of loops
over the parameters instead of some forty NumPy calls on tiny arrays. :mod:`.alerts` turns the
flags into messages."""

from __future__ import annotations

import math

import numba as nb
import numpy as np

VANISHING, EXPLODING, LR_HIGH, LR_LOW = range(4)


@nb.njit(nogil=True, cache=True)
def judge(grad_norm, ratio, received, sqrt_numel, dense, matrix, history, hist_len, vanish_streak,
          high_streak, low_streak, vanishing, exploding, ratio_high, ratio_low, patience, done, flags, values):
    """Update the streaks and the norm history in place; set ``flags[i, kind]`` for each alert due
    that ``done[i, kind]`` has not seen yet (each alert is raised once per parameter), and mark it done.

    ``values[i]``: gradient RMS, RMS relative to the top one, recent median norm. Returns the top
    RMS and its parameter (-1 when no parameter was judged for vanishing)."""
    n = grad_norm.size
    depth = history.shape[0]
    flags[:] = 0
    # vanishing: RMS relative to the largest RMS of the model at this step (first one on ties)
    top = 0.0
    jtop = -1
    for i in range(n):
        if dense[i] and math.isfinite(grad_norm[i]):
            r = grad_norm[i] / sqrt_numel[i]
            if jtop < 0 or r > top:
                top, jtop = r, i
    if jtop >= 0 and top > 0.0:
        for i in range(n):
            if dense[i] and math.isfinite(grad_norm[i]):
                r = grad_norm[i] / sqrt_numel[i]
                rel = r / top
                vanish_streak[i] = vanish_streak[i] + 1 if (rel < vanishing or r == 0.0) else 0
                if vanish_streak[i] >= patience and not done[i, VANISHING]:
                    flags[i, VANISHING] = done[i, VANISHING] = 1
                    values[i, 0], values[i, 1] = r, rel
            else:
                vanish_streak[i] = 0
    else:
        vanish_streak[:] = 0
    # exploding: a jump against the median of the parameter's recent measured norms
    for i in range(n):
        g = grad_norm[i]
        if not math.isfinite(g):
            continue
        count = hist_len[i]
        if count >= 3 and not done[i, EXPLODING]:
            k = min(count, depth)
            col = history[:k, i]
            # a jump over 'exploding' x median is also one over 'exploding' x the minimum
            if g > exploding * col.min():
                s = np.sort(col)
                med = 0.5 * (s[(k - 1) // 2] + s[k // 2])
                if med > 0.0 and g > exploding * med:
                    flags[i, EXPLODING] = done[i, EXPLODING] = 1
                    values[i, 2] = med
        history[count % depth, i] = g
        hist_len[i] = count + 1
    # learning rate per layer, from the update-to-weight ratio
    for i in range(n):
        judged = matrix[i] and received[i] and math.isfinite(ratio[i])
        high_streak[i] = high_streak[i] + 1 if (judged and ratio[i] > ratio_high) else 0
        low_streak[i] = low_streak[i] + 1 if (judged and ratio[i] < ratio_low) else 0
        if high_streak[i] >= patience and not done[i, LR_HIGH]:
            flags[i, LR_HIGH] = done[i, LR_HIGH] = 1
        if low_streak[i] >= patience and not done[i, LR_LOW]:
            flags[i, LR_LOW] = done[i, LR_LOW] = 1
    return top, jtop

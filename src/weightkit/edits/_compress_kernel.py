"""Compiled loops of the pruning selection (numba; cached on disk after the first compile).

See :mod:`weightkit.edits._compress`: two histogram passes find the k-th smallest 32-bit key, a
third pass writes the keep mask and a short fourth one drops the ties that are pruned. ``0xFFFFFFFF`` marks an element already pruned (skipped).
"""

from __future__ import annotations

from typing import Any

import numba as nb
import numpy as np

_OPTS: dict[str, Any] = dict(nogil=True, cache=True)
SENT = np.uint32(0xFFFFFFFF)


@nb.njit(**_OPTS)
def hist_hi(keys, h):
    for i in range(keys.size):
        k = keys[i]
        if k != SENT:
            h[k >> 16] += 1


@nb.njit(**_OPTS)
def hist_lo(keys, b, h):
    for i in range(keys.size):
        k = keys[i]
        if k != SENT and (k >> 16) == b:
            h[k & 0xFFFF] += 1


@nb.njit(**_OPTS)
def keep_above(keys, threshold, out):
    # branch-free (vectorised) pass; SENT is the largest key, so already-pruned elements stay kept.
    # Keys equal to the threshold are kept here and counted: drop_ties removes the right ones after.
    ties = 0
    for i in range(keys.size):
        out[i] = keys[i] >= threshold
        ties += keys[i] == threshold
    return ties


@nb.njit(**_OPTS)
def drop_ties(keys, threshold, take, out):
    for i in range(keys.size):
        if take == 0:
            break
        if keys[i] == threshold:
            out[i] = 0
            take -= 1
    return take

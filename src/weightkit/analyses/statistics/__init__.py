"""Streaming weight statistics: per tensor, per layer and for the whole model."""

from __future__ import annotations

from typing import Any, Callable

from weightkit.analyses.statistics.engine import DEFAULT_QUANTILES, report
from weightkit.analyses.statistics.result import GroupStats, StatsReport, TensorStats
from weightkit.core.opening import open as _open
from weightkit.core.weightset import WeightSet

__all__ = ["stats", "StatsReport", "TensorStats", "GroupStats"]


def stats(
    source: Any,
    *,
    select: Any = None,
    bins: int = 64,
    eps: float = 1e-6,
    quantiles: tuple[float, ...] | None = None,
    threads: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> StatsReport:
    """Measure every weight: count, mean, std, min, max, absmax, L2 norm, exact zeros, the
    fraction with ``|w| < eps``, NaN/±Inf counts, an exact histogram and quantiles.

    Streams one chunk at a time from the source, accumulates in float64, uses every core.

    Args:
        source: anything :func:`weightkit.open` accepts, or a ``WeightSet``.
        select: a glob on names (``"encoder.*"``), a list of globs, or a predicate on ``Weight``.
        bins: histogram bins (at most; the range is the occupied finite range).
        eps: threshold for the ``small`` count.
        quantiles: which quantiles to report (default 0.1%, 1%, 25%, 50%, 75%, 99%, 99.9%).
        threads: worker threads (default: the number of cores, at most 4).
        progress: ``callback(bytes_done, bytes_total)``.

    Example:
        >>> import torch, weightkit
        >>> lin = torch.nn.Linear(3, 2)
        >>> with torch.no_grad():
        ...     _ = lin.weight.fill_(0.5)
        >>> r = weightkit.stats(lin)
        >>> r["weight"].mean, r["weight"].count, r.total.tensors
        (0.5, 6, 2)
    """

    kwargs = dict(select=select, bins=bins, eps=eps, quantiles=quantiles or DEFAULT_QUANTILES,
                  threads=threads, progress=progress)
    if isinstance(source, WeightSet):
        return report(source, **kwargs)
    with _open(source) as ws:
        return report(ws, **kwargs)

"""Results of :func:`weightkit.stats`: plain dataclasses, JSON-serialisable."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from weightkit.errors import require

__all__ = ["TensorStats", "GroupStats", "StatsReport"]


@dataclass(frozen=True)
class _Measures:
    """Element counts and moments, shared by a tensor and a roll-up."""

    count: int
    finite: int
    mean: float | None
    std: float | None
    min: float | None
    max: float | None
    absmax: float | None
    l2_norm: float
    zeros: int
    """Elements exactly equal to zero."""
    small: int
    """Elements with ``|w| < eps`` (zeros included)."""
    nan: int
    posinf: int
    neginf: int


@dataclass(frozen=True)
class _TensorHead:
    name: str
    layer: str
    kind: str
    role: str
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class _GroupHead:
    name: str
    kind: str
    tensors: int


# dataclass fields run from the last base to the first, then the class's own: head, measures, rest
@dataclass(frozen=True)
class TensorStats(_Measures, _TensorHead):
    """Statistics of one tensor. Moments, extremes and the histogram are over its finite values.

    ``mean``/``std``/``min``/``max``/``absmax`` are ``None`` when the tensor has no finite
    value; ``std`` is the population standard deviation (``ddof=0``, as ``numpy.std``).
    Quantiles come from a histogram 32× finer than ``hist_counts`` and are within
    ``quantile_error`` of the exact value.
    """

    hist_edges: list[float]
    hist_counts: list[int]
    quantiles: dict[str, float]
    quantile_error: float
    is_buffer: bool = False
    error: str | None = None
    """Why the tensor could not be measured (unreadable bytes, unsupported dtype), else ``None``."""

    @property
    def small_fraction(self) -> float:
        return self.small / self.count if self.count else 0.0


@dataclass(frozen=True)
class GroupStats(_Measures, _GroupHead):
    """Roll-up over several tensors (a layer, or the whole model)."""

    unreadable: int = 0


@dataclass(frozen=True)
class StatsReport:
    """What ``weightkit stats`` shows; ``to_dict()`` is its ``--json`` output.

    ``tensors`` has every measured tensor, buffers included; ``layers`` and ``total`` roll up
    the parameters only (a layer with nothing but buffers has no roll-up).
    """

    source: str
    format: str
    eps: float
    bins: int
    tensors: list[TensorStats]
    layers: list[GroupStats]
    total: GroupStats
    filter: str | None = None
    bytes_read: int = 0
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> TensorStats:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(f"no statistics for {name!r}")

    def to_dict(self) -> dict[str, Any]:
        return _clean(asdict(self))

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    def to_pandas(self):
        """One row per tensor (needs pandas)."""

        pd = require("pandas", extra="all", purpose="StatsReport.to_pandas()")
        rows = []
        for t in self.tensors:
            row = {k: v for k, v in asdict(t).items() if k not in ("hist_edges", "hist_counts", "quantiles")}
            row.update({f"q{k}": v for k, v in t.quantiles.items()})
            rows.append(row)
        return pd.DataFrame(rows)


def _clean(obj):
    """JSON has no NaN/Inf: map them to None."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj

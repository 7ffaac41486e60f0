"""The summary of a WeightSet: a per-tensor table grouped by layer, and totals, as plain data."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from weightkit.core.opening import open as open_weights
from weightkit.core.selector import select as select_weights
from weightkit.core.weightset import WeightSet

__all__ = ["Summary", "Totals", "summarize", "summary"]

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Totals:
    """Counts over the (filtered) tensors; a shared tensor counts once."""

    tensors: int
    parameters: int
    """Elements of all parameters (not buffers)."""
    trainable: int
    """Parameter elements that train (``requires_grad`` / Keras ``trainable``)."""
    frozen: int
    """Parameter elements that do not train."""
    trainable_unknown: int
    """Parameter elements whose trainability the source does not record (plain state dicts)."""
    buffers: int
    """Elements of buffers and non-trainable state (BatchNorm running statistics…)."""
    bytes: int
    bytes_by_dtype: dict[str, int]
    shared_tensors: int
    """Tensors reachable under more than one name (tied or shared weights)."""
    layers: int


@dataclass(frozen=True)
class Summary:
    """What ``weightkit summary`` shows; ``to_dict()`` is its ``--json`` output."""

    source: str
    format: str
    tensors: list[dict[str, Any]]
    totals: Totals
    metadata: dict[str, Any] = field(default_factory=dict)
    filter: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA_VERSION, **asdict(self)}

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)


def summarize(ws: WeightSet, *, select: Any = None) -> Summary:
    """Summarise ``ws``, or only the tensors ``select`` names (see :class:`weightkit.core.selector.Selector`).

    Example:
        >>> import torch, weightkit
        >>> s = weightkit.summary(torch.nn.Linear(3, 2))
        >>> s.totals.parameters, s.totals.trainable
        (8, 8)
    """
    weights = select_weights(ws, select)
    params = [w for w in weights if not w.is_buffer]
    by_dtype: Counter[str] = Counter()
    for w in weights:
        by_dtype[w.dtype] += w.nbytes
    totals = Totals(
        tensors=len(weights),
        parameters=sum(w.numel for w in params),
        trainable=sum(w.numel for w in params if w.trainable is True),
        frozen=sum(w.numel for w in params if w.trainable is False),
        trainable_unknown=sum(w.numel for w in params if w.trainable is None),
        buffers=sum(w.numel for w in weights if w.is_buffer),
        bytes=sum(by_dtype.values()),
        bytes_by_dtype=dict(by_dtype),
        shared_tensors=sum(1 for w in weights if w.shared_with),
        layers=len({w.layer for w in weights}),
    )
    return Summary(
        source=ws.source,
        format=ws.format,
        tensors=[w.to_dict() for w in weights],
        totals=totals,
        metadata=ws.metadata,
        filter=select if isinstance(select, str) else None,
    )


def summary(source: Any, *, select: Any = None, format: str | None = None) -> Summary:
    """Summary of a model or checkpoint: per-tensor table and totals, as plain data.

    Example:
        >>> import torch, weightkit
        >>> weightkit.summary(torch.nn.Linear(3, 2)).totals.parameters
        8
    """
    if isinstance(source, WeightSet):
        return summarize(source, select=select)
    with open_weights(source, format=format) as ws:
        return summarize(ws, select=select)

"""What changed between two models or checkpoints, layer by layer."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from weightkit.core.opening import as_weightset

__all__ = ["DiffReport", "LayerChange", "diff"]


@dataclass(frozen=True)
class LayerChange:
    layer: str
    kind: str
    tensors: int
    norm_a: float
    norm_b: float
    change: float
    """‖A − B‖ over the layer's common tensors."""
    relative: float
    """‖A − B‖ / ‖B‖ (``inf`` when B is all zero and A is not)."""


@dataclass(frozen=True)
class DiffReport:
    a: str
    b: str
    layers: list[LayerChange]
    only_in_a: list[str] = field(default_factory=list)
    only_in_b: list[str] = field(default_factory=list)
    shape_mismatch: list[str] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return not (self.only_in_a or self.only_in_b or self.shape_mismatch) and all(c.change == 0 for c in self.layers)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for layer in d["layers"]:
            if not math.isfinite(layer["relative"]):
                layer["relative"] = None
        return {**d, "identical": self.identical}


def diff(a: Any, b: Any) -> DiffReport:
    """Per-layer relative change ‖A − B‖/‖B‖ between two sources (B is the reference),
    read tensor by tensor.

    Example:
        >>> import torch, weightkit
        >>> m = torch.nn.Linear(3, 2)
        >>> before = {k: v.clone() for k, v in m.state_dict().items()}
        >>> with torch.no_grad():
        ...     _ = m.weight.mul_(1.1)
        >>> r = weightkit.diff(m, before)
        >>> round(r.layers[0].relative, 3) > 0, r.only_in_a
        (True, [])
    """

    wa = as_weightset(a)
    wb = as_weightset(b)
    names_a, names_b = set(wa.names), set(wb.names)
    sums: dict[str, list[float]] = {}
    kinds: dict[str, str] = {}
    mismatch = []
    for w in wa:
        if w.name not in names_b:
            continue
        other = wb[w.name]
        if other.shape != w.shape:
            mismatch.append(w.name)
            continue
        if not w.numel:
            continue  # empty in both: nothing changed, nothing to read
        x = w.numpy().astype(np.float64)
        y = other.numpy().astype(np.float64)
        acc = sums.setdefault(w.layer, [0.0, 0.0, 0.0, 0])
        acc[0] += float(np.sum(x * x))
        acc[1] += float(np.sum(y * y))
        acc[2] += float(np.sum((x - y) ** 2))
        acc[3] += 1
        kinds.setdefault(w.layer, w.kind if w.kind != "unknown" else other.kind)
    layers = []
    for layer, (na, nb, d, n) in sums.items():
        na, nb, d = math.sqrt(na), math.sqrt(nb), math.sqrt(d)
        rel = d / nb if nb else (0.0 if d == 0 else math.inf)
        layers.append(LayerChange(layer, kinds[layer], int(n), na, nb, d, rel))
    return DiffReport(a=wa.source, b=wb.source, layers=layers, only_in_a=sorted(names_a - names_b),
                      only_in_b=sorted(names_b - names_a), shape_mismatch=mismatch)

"""Input-feature importance of an MLP read off its weights (first-layer |W|, Garson, Olden)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from weightkit.core.layout import matrix
from weightkit.core.opening import as_weightset
from weightkit.errors import WeightkitError

__all__ = ["FeatureImportance", "feature_importance"]


@dataclass(frozen=True)
class FeatureImportance:
    """Importance of each input feature by three weight-based methods.

    ``first_layer``: column sums of the first layer's |W|, normalised to sum 1.
    ``garson``: share of each input in every unit, propagated through all layers
    (|W| normalised per unit, multiplied along the chain, summed over outputs), sum 1.
    ``olden``: signed connection weights, the product of all weight matrices, summed over outputs.
    """

    features: list[str]
    layers: list[str]
    first_layer: list[float]
    garson: list[float]
    olden: list[float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _chain(ws) -> tuple[list[str], list[np.ndarray]]:

    names: list[str] = []
    mats: list[np.ndarray] = []
    for w in ws:
        if (w.is_buffer or w.ndim != 2 or not w.numel or w.role not in ("weight", "kernel")
                or w.kind not in ("Linear", "Dense")):
            continue
        m = matrix(w).astype(np.float64)  # (out, in)
        if mats and m.shape[1] != mats[-1].shape[0]:
            break
        names.append(w.layer)
        mats.append(m)
    if not mats:
        raise WeightkitError(f"{ws.source}: no Linear/Dense layers found; feature importance needs an MLP")
    return names, mats


def feature_importance(source: Any, *, feature_names: Sequence[str] | None = None) -> FeatureImportance:
    """Importance of each input feature of an MLP from its weights alone.

    Example:
        >>> import torch, weightkit
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
        >>> with torch.no_grad():
        ...     _ = net[0].weight[:, 2].mul_(10)  # feature 2 gets large weights
        >>> imp = weightkit.feature_importance(net, feature_names=["a", "b", "c", "d"])
        >>> max(zip(imp.first_layer, imp.features))[1]
        'c'
    """

    ws = as_weightset(source)
    names, mats = _chain(ws)
    n_in = mats[0].shape[1]
    if feature_names is None:
        feature_names = [f"x{i}" for i in range(n_in)]
    if len(feature_names) != n_in:
        raise WeightkitError(f"{len(feature_names)} feature names given but the first layer ({names[0]}) "
                             f"has {n_in} inputs")
    first = np.abs(mats[0]).sum(axis=0)
    share = np.eye(n_in)
    olden = np.eye(n_in)
    for m in mats:
        a = np.abs(m)
        share = (a / np.maximum(a.sum(axis=1, keepdims=True), 1e-300)) @ share
        olden = m @ olden
    garson = share.sum(axis=0)
    return FeatureImportance(
        features=list(feature_names), layers=names,
        first_layer=(first / max(first.sum(), 1e-300)).tolist(),
        garson=(garson / max(garson.sum(), 1e-300)).tolist(),
        olden=olden.sum(axis=0).tolist(),
    )

"""Weight normalisation and spectral normalisation of torch modules, by selector, through
``torch.nn.utils.parametrizations`` (so state dicts stay the standard
``<layer>.parametrizations.<name>.original0/1``), and their removal through
``torch.nn.utils.parametrize.remove_parametrizations(leave_parametrized=True)``.

Applying replaces the selected ``Parameter`` by new ones (``weight_norm``: ``original0`` = g,
``original1`` = v; ``spectral_norm``: ``original``): build the optimizer after this call.
Keras 3 has no such parametrization: on a Keras model these raise ``WeightkitError``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from weightkit.core.selector import Names, Selector
from weightkit.core.selector import select as select_weights
from weightkit.edits._backend import KERAS, framework, torch_owners
from weightkit.errors import WeightkitError
from weightkit.sources.torch_module import _kind

__all__ = ["weight_norm", "spectral_norm", "remove_norm", "NormReport"]


@dataclass(frozen=True)
class NormReport:
    """What :func:`weight_norm`, :func:`spectral_norm` or :func:`remove_norm` did."""

    action: str
    tensors: list[str]
    args: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action, "tensors": list(self.tensors), "args": dict(self.args)}


def weight_norm(model: Any, *, select: Any = None, kind: Names = None, role: Names = "weight", dim: int | None = 0) -> NormReport:
    """Re-parametrise the selected weights as ``g · v / ‖v‖`` (norm over every axis but ``dim``).

    The module computes the same outputs as before (up to rounding). Without ``select`` and
    ``kind``, every parameter named ``role`` with two or more dimensions is normalised.

    Args:
        model: a ``torch.nn.Module`` (Keras: ``WeightkitError``, torch only).
        select, kind, role: the selector of :func:`weightkit.select` (``role`` defaults to
            ``"weight"``; ``role=None`` for any).
        dim: the axis that keeps one norm per slice (0: one per output unit for ``Linear`` and
            ``Conv``); ``None`` for one norm over the whole tensor.

    Example:
        >>> import torch, weightkit
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 2))
        >>> weightkit.weight_norm(net, select="0.weight").tensors
        ['0.weight']
        >>> sorted(net.state_dict())
        ['0.bias', '0.parametrizations.weight.original0', '0.parametrizations.weight.original1']
    """
    from torch.nn.utils import parametrizations

    targets = _targets(model, select, kind, role, dim, "weight_norm")
    _apply(targets, lambda m, attr: parametrizations.weight_norm(m, name=attr, dim=dim))  # type: ignore[arg-type]  # torch takes None: the norm over the whole tensor
    return NormReport("weight_norm", [t[0] for t in targets], {"dim": dim})


def spectral_norm(model: Any, *, select: Any = None, kind: Names = None, role: Names = "weight", n_power_iterations: int = 1,
                  eps: float = 1e-12, dim: int | None = None) -> NormReport:
    """Re-parametrise the selected weights divided by their spectral norm (largest singular value,
    estimated by power iteration). Unlike :func:`weight_norm`, this changes the module's outputs.

    Args:
        model: a ``torch.nn.Module`` (Keras: ``WeightkitError``, torch only).
        select, kind, role: as for :func:`weight_norm`.
        n_power_iterations, eps: as in ``torch.nn.utils.parametrizations.spectral_norm``.
        dim: the output axis; ``None``: 1 for ``ConvTranspose*``, 0 otherwise (torch's rule).

    Example:
        >>> import torch, weightkit
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 4))
        >>> weightkit.spectral_norm(net).tensors
        ['0.weight']
    """
    from torch.nn.utils import parametrizations

    if isinstance(n_power_iterations, bool) or not isinstance(n_power_iterations, int) or n_power_iterations < 1:
        raise WeightkitError(f"spectral_norm: n_power_iterations must be an integer >= 1; received {n_power_iterations!r}")
    targets = _targets(model, select, kind, role, dim, "spectral_norm")
    _apply(targets, lambda m, attr: parametrizations.spectral_norm(
        m, name=attr, n_power_iterations=n_power_iterations, eps=eps, dim=dim))
    return NormReport("spectral_norm", [t[0] for t in targets],
                      {"n_power_iterations": n_power_iterations, "eps": eps, "dim": dim})


def remove_norm(model: Any, *, select: Any = None, kind: Names = None, role: Names = None) -> NormReport:
    """Remove the parametrizations (weight norm, spectral norm…) of the selected weights, keeping
    their current values as plain parameters again.

    Names are the parametrized ones (``fc.weight``, not ``fc.parametrizations.weight.original0``).
    Without a selector, every parametrized weight of the model.

    Example:
        >>> import torch, weightkit
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 2))
        >>> _ = weightkit.weight_norm(net)
        >>> weightkit.remove_norm(net).tensors
        ['0.weight']
        >>> sorted(net.state_dict())
        ['0.bias', '0.weight']
    """
    from torch.nn.utils import parametrize

    _torch_only(model, "remove_norm")
    present = _parametrized(model)
    if not present:
        raise WeightkitError("remove_norm: no weight of the model is parametrized (weight_norm / spectral_norm)")
    chosen_by = Selector.of(select, kind=kind, role=role)
    chosen = [(ns, m, attr) for ns, m, attr in present if chosen_by(ns)]
    if not chosen:
        asked = ", ".join(f"{k}={v!r}" for k, v in (("select", select), ("kind", kind), ("role", role)) if v is not None)
        raise WeightkitError(f"remove_norm: no parametrized weight matches {asked}; parametrized: "
                             f"{', '.join(ns.name for ns, _, _ in present)}")
    for _, m, attr in chosen:
        parametrize.remove_parametrizations(m, attr, leave_parametrized=True)
    return NormReport("remove_norm", [ns.name for ns, _, _ in chosen])


# --- shared -----------------------------------------------------------------------------------

def _torch_only(model, what: str) -> None:
    if framework(model, what) == KERAS:
        raise WeightkitError(f"{what} is torch-only: it works through torch.nn.utils.parametrizations, and Keras 3 "
                             "has no weight parametrizations; nothing was changed")


def _parametrized(model) -> list[tuple[SimpleNamespace, Any, str]]:
    from torch.nn.utils import parametrize

    out = []
    for mname, m in model.named_modules():
        if parametrize.is_parametrized(m):
            for attr in m.parametrizations:
                name = f"{mname}.{attr}" if mname else attr
                out.append((SimpleNamespace(name=name, shared_with=(), kind=_kind(m), role=attr), m, attr))
    return out


def _targets(model, select, kind, role, dim, what: str) -> list[tuple[str, Any, str, Any]]:
    """(name, module, attribute, parameter) of each selected weight, validated."""

    _torch_only(model, what)
    try:
        weights = select_weights(model, select, kind=kind, role=role)
    except WeightkitError:
        chosen_by = Selector.of(select, kind=kind, role=role)
        done = [ns.name for ns, _, _ in _parametrized(model) if chosen_by(ns)]
        if done:
            raise WeightkitError(f"{what}: {', '.join(done)} already parametrized; remove_norm first, then "
                                 f"apply {what}") from None
        raise
    explicit = select is not None or kind is not None
    owners = torch_owners(model)
    out, problems = [], []
    for w in weights:
        module, attr, t, is_buffer = owners[w.name]
        if is_buffer:
            if explicit:
                problems.append(f"{w.name} is a buffer, not a parameter")
            continue
        if not explicit and t.ndim < 2:
            continue
        if ".parametrizations." in f".{w.name}":
            problems.append(f"{w.name} is part of a parametrization already; select the parametrized name and "
                            "remove_norm first")
            continue
        if w.shared_with:
            problems.append(f"{w.name} is tied to {', '.join(w.shared_with)}; a parametrization would untie them")
            continue
        if not t.is_floating_point():
            problems.append(f"{w.name} is {w.dtype}, not floating point")
            continue
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or not -t.ndim <= dim < max(1, t.ndim)):
            problems.append(f"dim={dim!r} is out of range for {w.name} with shape {tuple(t.shape)}")
            continue
        out.append((w.name, module, attr, t))
    if problems:
        raise WeightkitError(f"{what}: nothing was changed; {'; '.join(problems)}")
    if not out:
        raise WeightkitError(f"{what}: no parameter with 2 or more dimensions matches role={role!r}; name the weights "
                             "with select= or kind=")
    return out


def _apply(targets, register) -> None:
    """Register on every target; if one fails, undo those done and put the original
    ``Parameter`` objects back."""
    from torch.nn.utils import parametrize

    done = []
    try:
        for name, module, attr, param in targets:  # noqa: B007  (the failing one is named after the loop)
            register(module, attr)
            done.append((module, attr, param))
    except Exception as e:
        for module, attr, param in reversed(done):
            parametrize.remove_parametrizations(module, attr, leave_parametrized=True)
            module._parameters[attr] = param
        raise WeightkitError(f"parametrizing {name} failed ({type(e).__name__}: {e}); the model is unchanged") from e

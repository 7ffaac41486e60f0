"""Choosing weights by name pattern, layer kind and role: the selector every edit takes."""

from __future__ import annotations

import fnmatch
import re
from typing import Any, Iterable

from weightkit.core.opening import open as _open
from weightkit.core.weightset import WeightSet
from weightkit.errors import WeightkitError

__all__ = ["select", "matches"]


def _compile(pattern: str | re.Pattern | None):
    if pattern is None:
        return lambda name: True
    if isinstance(pattern, re.Pattern):
        return lambda name: pattern.search(name) is not None
    if not isinstance(pattern, str):
        raise WeightkitError(f"pattern must be a glob string, 're:<regex>' or a compiled regex; received {pattern!r}")
    if pattern.startswith("re:"):
        try:
            rx = re.compile(pattern[3:])
        except re.error as e:
            raise WeightkitError(f"pattern {pattern!r} is not a valid regular expression ({e})") from None
        return lambda name: rx.search(name) is not None
    return lambda name: fnmatch.fnmatchcase(name, pattern)


def _as_set(value: str | Iterable[str] | None) -> set[str] | None:
    if value is None:
        return None
    return {value} if isinstance(value, str) else set(value)


def matches(weight, pattern=None, *, kind=None, role=None) -> bool:
    """True when ``weight`` (a :class:`weightkit.Weight`) passes the selector."""
    name_ok = _compile(pattern)
    kinds, roles = _as_set(kind), _as_set(role)
    return (any(name_ok(n) for n in (weight.name, *weight.shared_with))
            and (kinds is None or weight.kind in kinds) and (roles is None or weight.role in roles))


def select(source: Any, pattern: str | re.Pattern | None = None, *, kind=None, role=None) -> list:
    """The weights whose name matches ``pattern`` and whose layer kind and role match.

    Args:
        source: a model, checkpoint path or ``WeightSet`` (anything :func:`weightkit.open` takes).
        pattern: a glob on names (``"encoder.*.weight"``), ``"re:<regex>"`` (searched), or a
            compiled ``re.Pattern``; ``None`` selects every name.
        kind: a layer kind or several (``"Linear"``, ``("Conv2d", "Linear")``).
        role: a tensor role or several (``"bias"``, ``"weight"``, ``"kernel"``).

    Returns:
        A list of :class:`weightkit.Weight`, in model order.

    Raises:
        WeightkitError: nothing matches (the message says what is available).

    Example:
        >>> import torch, weightkit
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
        >>> [w.name for w in weightkit.select(net, role="bias")]
        ['0.bias', '2.bias']
        >>> [w.name for w in weightkit.select(net, "re:^2\\\\.")]
        ['2.weight', '2.bias']
    """

    ws = source if isinstance(source, WeightSet) else _open(source)
    chosen = [w for w in ws if matches(w, pattern, kind=kind, role=role)]
    if not chosen:
        asked = ", ".join(f"{k}={v!r}" for k, v in (("pattern", pattern), ("kind", kind), ("role", role)) if v is not None)
        present_kinds = sorted({w.kind for w in ws})
        present_roles = sorted({w.role for w in ws})
        raise WeightkitError(
            f"no weight in {ws.source} matches {asked or 'the selector'}; kinds present: {', '.join(present_kinds)}; "
            f"roles present: {', '.join(present_roles)}"
        )
    return chosen

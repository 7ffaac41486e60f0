"""Which tensors a pattern names: the one :class:`Selector` behind every ``select=``.

A selector is a glob on names (``"encoder.*.weight"``, matched against every alias of a tied
tensor too), ``"re:<regex>"`` (searched), ``"kind:Linear"`` / ``"role:bias"`` (comma-separated
alternatives), a compiled ``re.Pattern``, a callable on a :class:`weightkit.Weight`, a list of any
of these (a tensor matching one of them), or a :class:`Selector` combining a pattern with
``kind=`` and ``role=``. A selection that matches nothing is an error that names the closest
tensor names, never an empty result.

Example:
    >>> import torch, weightkit
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    >>> [w.name for w in weightkit.select(net, "re:^2")]
    ['2.weight', '2.bias']
    >>> [w.name for w in weightkit.select(net, "kind:Linear")] == [w.name for w in weightkit.select(net, "*")]
    True
    >>> [w.name for w in weightkit.select(net, Selector("0.*", role="bias"))]
    ['0.bias']
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from typing import Any, Callable, Iterable, Sequence, Union

from weightkit.core.opening import as_weightset
from weightkit.errors import WeightkitError

Names = Union[str, Iterable[str], None]
"""One name or several (a layer kind, a tensor role), or ``None`` for any."""

__all__ = ["Selector", "Names", "select"]

_FIELDS = ("kind:", "role:")


def _name_test(pattern: Any) -> Callable[[Any], bool]:
    """A test on one weight for one pattern (no list, no Selector)."""
    if isinstance(pattern, re.Pattern):
        rx = pattern
        return lambda w: any(rx.search(n) is not None for n in (w.name, *w.shared_with))
    if callable(pattern):
        return lambda w: bool(pattern(w))
    if not isinstance(pattern, str):
        raise WeightkitError(f"select: expected a glob, 're:<regex>', 'kind:<Kind>', 'role:<role>', a compiled regex, "
                             f"a callable on a Weight, or a list of those; received {pattern!r}")
    if pattern.startswith("re:"):
        try:
            rx = re.compile(pattern[3:])
        except re.error as e:
            raise WeightkitError(f"select {pattern!r} is not a valid regular expression ({e})") from None
        return lambda w: any(rx.search(n) is not None for n in (w.name, *w.shared_with))
    for field in _FIELDS:
        if pattern.startswith(field):
            wanted = {v.strip() for v in pattern[len(field):].split(",") if v.strip()}
            attr = field[:-1]
            return lambda w: getattr(w, attr) in wanted
    return lambda w: any(fnmatch.fnmatchcase(n, pattern) for n in (w.name, *w.shared_with))


def _as_set(value: str | Iterable[str] | None) -> set[str] | None:
    if value is None:
        return None
    return {value} if isinstance(value, str) else set(value)


class Selector:
    """A pattern (see the module docstring), optionally narrowed by layer ``kind`` and tensor ``role``.

    ``Selector(...)(weight)`` tells whether one weight is selected; :meth:`pick` selects from a
    :class:`weightkit.WeightSet` and refuses an empty selection.
    """

    def __init__(self, pattern: Any = None, *, kind: str | Iterable[str] | None = None,
                 role: str | Iterable[str] | None = None):
        if isinstance(pattern, Selector):
            inner: Selector = pattern
            pattern, kind, role = inner.pattern, _merge(inner.kind, kind), _merge(inner.role, role)
        self.pattern: Any = pattern
        self.kind: set[str] | None = _as_set(kind)
        self.role: set[str] | None = _as_set(role)
        if pattern is None:
            self._tests: Sequence[Callable[[Any], bool]] = ()
        elif isinstance(pattern, (list, tuple, set, frozenset)):
            self._tests = [_name_test(p) for p in pattern]
            if not self._tests:
                raise WeightkitError("select: an empty list selects nothing; give at least one pattern or None for all")
        else:
            self._tests = [_name_test(pattern)]

    @classmethod
    def of(cls, select: Any = None, *, kind: str | Iterable[str] | None = None,
           role: str | Iterable[str] | None = None) -> Selector:
        """``select`` as a Selector (itself when it already is one and nothing narrows it)."""
        if isinstance(select, Selector) and kind is None and role is None:
            return select
        return cls(select, kind=kind, role=role)

    def __call__(self, weight: Any) -> bool:
        return ((not self._tests or any(t(weight) for t in self._tests))
                and (self.kind is None or weight.kind in self.kind)
                and (self.role is None or weight.role in self.role))

    def _parts(self) -> list[str]:
        return [f"{k}={sorted(v)[0]!r}" if len(v) == 1 else f"{k}={sorted(v)!r}"
                for k, v in (("kind", self.kind), ("role", self.role)) if v is not None]

    def __repr__(self) -> str:
        return f"Selector({', '.join(([] if self.pattern is None else [_describe(self.pattern)]) + self._parts())})"

    def describe(self) -> str:
        """How the selector reads in a message: ``select='encoder.*'``, ``kind='Linear'``…"""
        parts = ([] if self.pattern is None else [f"select={_describe(self.pattern)}"]) + self._parts()
        return ", ".join(parts) or "everything"

    def pick(self, weights: Iterable[Any], *, source: str = "the source") -> list:
        """The selected weights, in order; a one-line :class:`WeightkitError` naming the closest
        tensor names (and the kinds and roles present) when none is selected."""
        weights = list(weights)
        chosen = [w for w in weights if self(w)]
        if not chosen and weights:
            raise WeightkitError(self.nothing_message(weights, source=source))
        return chosen

    def closest(self, names: Sequence[str], n: int = 3) -> list[str]:
        """The names nearest to a name pattern (none for kinds, roles, callables)."""
        if not isinstance(self.pattern, str) or self.pattern.startswith(_FIELDS):
            return []
        stem = self.pattern[3:] if self.pattern.startswith("re:") else self.pattern
        return difflib.get_close_matches(stem, list(names), n=n, cutoff=0.0)

    def nothing_message(self, weights: Sequence[Any], *, source: str) -> str:
        close = self.closest([w.name for w in weights])
        hint = f"; closest names: {', '.join(close)}" if close else ""
        kinds = ", ".join(sorted({w.kind for w in weights}))
        roles = ", ".join(sorted({w.role for w in weights}))
        return (f"no tensor in {source} matches {self.describe()}{hint}; kinds present: {kinds}; "
                f"roles present: {roles}")


def _merge(a: set[str] | None, b: str | Iterable[str] | None) -> set[str] | None:
    b = _as_set(b)
    if a is None or b is None:
        return a if b is None else b
    return a & b


def _describe(pattern: Any) -> str:
    if isinstance(pattern, re.Pattern):
        return f"re:{pattern.pattern!r}"
    if callable(pattern) and not isinstance(pattern, str):
        return getattr(pattern, "__name__", "a predicate")
    return repr(pattern)


def select(source: Any, select: Any = None, *, kind: Any = None, role: Any = None) -> list:
    """The weights of ``source`` that ``select`` names (see :class:`Selector`), narrowed by layer
    ``kind`` and tensor ``role``.

    Args:
        source: a model, checkpoint path or ``WeightSet`` (anything :func:`weightkit.open` takes).
        select: a glob on names (``"encoder.*.weight"``), ``"re:<regex>"`` (searched),
            ``"kind:Linear"``, ``"role:bias"``, a compiled ``re.Pattern``, a callable on a
            ``Weight``, a list of those, or a :class:`Selector`; ``None`` selects every tensor.
        kind: a layer kind or several (``"Linear"``, ``("Conv2d", "Linear")``).
        role: a tensor role or several (``"bias"``, ``"weight"``, ``"kernel"``).

    Returns:
        A list of :class:`weightkit.Weight`, in model order.

    Raises:
        WeightkitError: nothing matches (the message names the closest tensor names).

    Example:
        >>> import torch, weightkit
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
        >>> [w.name for w in weightkit.select(net, role="bias")]
        ['0.bias', '2.bias']
        >>> [w.name for w in weightkit.select(net, "re:^2\\\\.")]
        ['2.weight', '2.bias']
    """
    ws = as_weightset(source)
    return Selector.of(select, kind=kind, role=role).pick(ws, source=ws.source)

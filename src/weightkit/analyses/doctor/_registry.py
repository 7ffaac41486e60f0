"""Findings, the rule registry, and the context rules read from."""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any, Callable, Iterator, Literal

from weightkit.analyses.statistics import stats

Severity = Literal["error", "warning", "info"]
SEVERITIES = ("error", "warning", "info")

__all__ = ["Finding", "DoctorReport", "Rule", "rule", "list_rules", "Context", "group_findings"]

GROUP_AT = 4  # this many findings of one rule with the same fix become one row


@dataclass(frozen=True)
class Finding:
    """One problem: which rule, how bad, which tensors, what it means and how to fix it."""

    rule: str
    severity: Severity
    tensors: list[str]
    message: str
    """One sentence saying what is wrong, with the numbers and the threshold used."""
    fix: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DoctorReport:
    """All findings for one source; ``exit_code`` is 1 when any finding is an error."""

    source: str
    format: str
    findings: list[Finding]
    rules_run: list[str]

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def exit_code(self) -> int:
        return 1 if self.errors else 0

    def by_rule(self, rule_id: str) -> list[Finding]:
        return [f for f in self.findings if f.rule == rule_id]

    def to_dict(self) -> dict[str, Any]:
        counts = {s: sum(f.severity == s for f in self.findings) for s in SEVERITIES}
        return {**asdict(self), "counts": counts, "exit_code": self.exit_code}

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), default=str, **kwargs)


@dataclass(frozen=True)
class Rule:
    id: str
    title: str
    check: Callable[[Context], Iterator[Finding]]
    needs: str  # "weights", "module" (a live torch module) or "optimizer"
    knows: str = ""
    """What the rule can tell from a file, and what only from a live model."""


_RULES: dict[str, Rule] = {}  # rule id -> rule, in registration order


def rule(rule_id: str, *, title: str, needs: str = "weights", knows: str = ""):
    """Register a doctor rule: a function ``(ctx) -> iterator of Finding`` whose findings all carry
    ``rule_id``, the id ``--rule`` selects."""

    def deco(fn):
        if rule_id in _RULES:
            warnings.warn(f"doctor rule {rule_id!r} registered twice; the later one wins", stacklevel=2)
        _RULES[rule_id] = Rule(rule_id, title, fn, needs, knows)
        return fn

    return deco


def list_rules() -> list[Rule]:
    """Every registered rule, in the order they run."""

    return list(_RULES.values())


class Context:
    """What rules look at; statistics are computed once, on first use."""

    def __init__(self, ws, *, module=None, optimizer=None, eps: float = 1e-6, keras_model=None):
        self.ws = ws
        self.module = module
        self.optimizer = optimizer
        self.eps = eps
        self.keras_model = keras_model

    @property
    def live(self) -> bool:
        """A live model (not a file): its graph and training state can be known."""
        return self.module is not None or self.keras_model is not None

    @cached_property
    def flow(self):
        """What follows each layer (:mod:`._flow`), from the best evidence available."""
        from weightkit.analyses.doctor import _flow

        if self.keras_model is not None:
            try:
                config = self.keras_model.get_config()
            except Exception:  # noqa: BLE001 - a subclassed model without get_config: fall back to names
                config = None
            if isinstance(config, dict) and config.get("layers"):
                return _flow.from_keras_config(config, prefix=f"{self.keras_model.name}/")
        elif self.module is not None:
            traced = _flow.from_torch(self.module)
            if traced is not None:
                return traced
        else:
            stored = self.ws.model_config  # a Keras file's own config: its graph, as data
            inner = stored.get("config") if isinstance(stored, dict) else None
            layers = inner.get("layers") if isinstance(inner, dict) else inner  # Keras 2.1 Sequential: a list
            if isinstance(layers, list) and layers and all(isinstance(c, dict) for c in layers):
                return _flow.from_keras_config(layers, names_in_file=list(self.ws.layers()))
        return _flow.from_names({layer: ws[0].kind or "" for layer, ws in self.ws.layers().items()})

    @cached_property
    def stats(self):
        return stats(self.ws, eps=self.eps)

    @cached_property
    def claims_trained(self) -> bool:
        """The checkpoint says it was trained (an epoch, step or iteration above zero)."""
        meta = self.ws.metadata
        for key in ("epoch", "epochs", "step", "global_step", "iteration", "iter", "num_updates", "steps"):
            value = meta.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
                return True
        return False


def group_findings(findings: list[Finding]) -> list[Finding]:
    """Findings of one rule, severity and fix, when there are :data:`GROUP_AT` or more, as one
    finding naming every tensor; ``details`` keeps the count and each finding's message and details."""
    groups: dict[tuple[str, Severity, str], list[Finding]] = {}
    for f in findings:
        groups.setdefault((f.rule, f.severity, f.fix), []).append(f)
    out = []
    for (rule_id, severity, fix), members in groups.items():
        if len(members) < GROUP_AT:
            out.extend(members)
            continue
        tensors = list(dict.fromkeys(t for f in members for t in f.tensors))
        out.append(Finding(
            rule_id, severity, tensors,
            f"{len(members)} alike findings; the first: {members[0].message}",
            fix,
            {"grouped": True, "count": len(members),
             "items": [{"tensors": f.tensors, "message": f.message, "details": f.details} for f in members]},
        ))
    return out

"""The doctor: checks a model or checkpoint for problems; each rule is one small function."""

from __future__ import annotations

from typing import Any

from weightkit.analyses.doctor import rules as _builtin_rules  # noqa: F401  (registers the built-in rules)
from weightkit.analyses.doctor._registry import (
    Context,
    DoctorReport,
    Finding,
    Rule,
    group_findings,
    list_rules,
    rule,
)
from weightkit.core.opening import as_weightset
from weightkit.errors import WeightkitError
from weightkit.sources._base import module_loaded

__all__ = ["doctor", "DoctorReport", "Finding", "Rule", "rule", "list_rules"]


def doctor(source: Any, *, optimizer: Any = None, rules: list[str] | None = None, eps: float = 1e-6,
           group: bool = True) -> DoctorReport:
    """Check weights for problems and return the findings (``report.exit_code`` is 1 on errors).

    Rules that need to know what follows a layer use a live model's graph; on a file they use
    only what its structure proves, and stay silent otherwise (each rule's ``knows``).

    Args:
        source: anything :func:`weightkit.open` accepts. Rules about unregistered tensors, unused
            parameters and the optimizer need a live ``torch.nn.Module``.
        optimizer: a ``torch.optim.Optimizer`` to check against the model's parameters.
        rules: run only these rule ids (see :func:`list_rules`; each finding's ``rule``).
        group: four or more findings of one rule with the same fix become one finding that
            names every tensor (``details["count"]``, ``details["items"]``).

    Example:
        >>> import torch, weightkit
        >>> lin = torch.nn.Linear(4, 3)
        >>> with torch.no_grad():
        ...     lin.weight[1] = float("nan")
        >>> report = weightkit.doctor(lin)
        >>> [(f.rule, f.severity) for f in report.findings]
        [('nan-inf', 'error')]
        >>> report.exit_code
        1
    """

    known = {r.id: r for r in list_rules()}
    if rules is not None:
        unknown = [r for r in rules if r not in known]
        if unknown:
            raise WeightkitError(f"unknown doctor rule(s) {', '.join(unknown)}; known rules: {', '.join(known)}")
    module = None
    if module_loaded("torch"):
        import torch

        module = source if isinstance(source, torch.nn.Module) else None
    keras_model = None
    if module_loaded("keras"):  # with the torch backend a Keras model is a torch.nn.Module too
        import keras

        keras_model = source if isinstance(source, keras.Model) else None
    if optimizer is not None and module is None:
        raise WeightkitError("optimizer checks need the live torch.nn.Module the optimizer was built for; "
                             "pass the model as the source")
    ws = as_weightset(source)
    ctx = Context(ws, module=module, optimizer=optimizer, eps=eps, keras_model=keras_model)
    findings: list[Finding] = []
    ran = []
    for r in known.values():
        if rules is not None and r.id not in rules:
            continue
        if (r.needs == "module" and module is None) or (r.needs == "optimizer" and optimizer is None):
            continue
        ran.append(r.id)
        findings.extend(r.check(ctx))
    order = {"error": 0, "warning": 1, "info": 2}
    if group:
        findings = group_findings(findings)
    findings.sort(key=lambda f: order[f.severity])
    return DoctorReport(source=ws.source, format=ws.format, findings=findings, rules_run=ran)

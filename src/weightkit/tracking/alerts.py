"""Alerts: judged on the host from the few numbers a measured step brings back.

Each alert goes to the ``weightkit.watch`` logger as a warning and into the run's store. Each
kind is raised at most once per parameter (a run that explodes does not print a warning per step).

Kinds and the keyword options of :func:`weightkit.watch` that set them:

``nonfinite_grad`` / ``nonfinite_weight``
    the first NaN/Inf in a gradient (as backward produced it) or in a weight (after the optimizer
    step). With ``nan_check="step"`` (the default) every gradient is checked on every step (one
    reduction each, at the end of backward, before any clipping), and the weights whenever that
    could matter (see :func:`weightkit.watch`), so the step and the parameter (the first in model
    order among those hit at that step) are exact even between measured steps; ``nan_check="measured"`` checks
    only measured steps (cheaper on CPU loops whose steps take a few milliseconds) and says after
    which step it appeared.
``vanishing``
    a parameter's gradient RMS (‖g‖/√n) stays below ``vanishing`` (default 1e-3) times the largest
    gradient RMS of the model at the same step, or is exactly zero, for ``patience`` checks.
    Embedding tables are not judged (nor set the reference): only the rows of the tokens in a
    batch get a gradient, so their RMS over the whole table is small by design.
``exploding``
    a gradient norm jumps above ``exploding`` (default 10) times the median of that parameter's
    previous (up to 20) measured norms (at least 3 of them).
``lr_high`` / ``lr_low``
    the update-to-weight ratio ‖Δw‖/‖w‖ (rule of thumb ≈ 1e-3) stays above ``ratio_high`` (1e-1) or
    below ``ratio_low`` (1e-5) for ``patience`` checks. Only weights with two or more dimensions are
    judged: zero-initialised biases and normalisation scales have large ratios at first by design.
``unused``
    a trainable parameter received no gradient in any backward pass of the first ``unused_after``
    measured steps (default 3): it is not connected to the loss.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from weightkit.errors import WeightkitError
from weightkit.tracking.store import Alert

log = logging.getLogger("weightkit.watch")
HISTORY = 20  # measured norms the exploding-gradient median looks back on


@dataclass(frozen=True)
class Thresholds:
    """The alert thresholds (keyword options of :func:`weightkit.watch`)."""

    vanishing: float = 1e-3
    exploding: float = 10.0
    ratio_high: float = 1e-1
    ratio_low: float = 1e-5
    patience: int = 3
    unused_after: int = 3

    def check(self) -> "Thresholds":

        for name in ("vanishing", "exploding", "ratio_high", "ratio_low"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and v >= 0 and np.isfinite(v)):
                raise WeightkitError(f"watch({name}={v!r}): expected a finite number >= 0")
        for name in ("patience", "unused_after"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 1):
                raise WeightkitError(f"watch({name}={v!r}): expected an integer >= 1")
        if self.ratio_low >= self.ratio_high:
            raise WeightkitError(f"watch(ratio_low={self.ratio_low}, ratio_high={self.ratio_high}): "
                                 "ratio_low must be below ratio_high")
        return self


def _structural_hint(rel: float) -> str:
    """A gradient of exactly zero is seldom a slow fade: the loss does not depend on the
    parameter. (Tiny but non-zero ratios are not told apart: a deep sigmoid stack fades to 1e-8
    as legitimately as a bias before BatchNorm sits at rounding noise; the doctor's
    ``bias-before-norm`` rule finds the latter from the weights.)"""
    if rel == 0:
        return ("; it is exactly zero: the loss does not depend on this parameter (the backward "
                "direction of a bidirectional RNN read only at its last time step, ReLUs that are all "
                "dead, an unused branch?)")
    return ""


class AlertEngine:
    """Keeps the per-parameter state the alerts need (streaks, recent norms, what was reported)."""

    def __init__(self, names: list[str], shapes: list[tuple], thresholds: Thresholds, *, run: str = "",
                 embeddings: list[bool] | None = None):
        self.names = names
        # embedding tables: row-sparse gradients, not judged for vanishing
        self.dense_grad = ~np.array(embeddings if embeddings is not None else [False] * len(names), dtype=bool)
        self.t = thresholds
        self.run = run
        self.numel = np.array([max(1, int(np.prod(s))) for s in shapes], dtype=np.float64)
        self.sqrt_numel = np.sqrt(self.numel)
        self.matrix = np.array([len(s) >= 2 for s in shapes], dtype=bool)
        n = len(names)
        self.low_streak = np.zeros(n, dtype=np.int64)
        self.high_streak = np.zeros(n, dtype=np.int64)
        self.vanish_streak = np.zeros(n, dtype=np.int64)
        self.history = np.full((HISTORY, n), np.nan)  # ring buffer of recent finite norms
        self.hist_len = np.zeros(n, dtype=np.int64)
        self.reported: set[tuple[str, int]] = set()
        self.nonfinite_done = {"grad": False, "weight": False}
        self.measured = 0
        self.unused_done = False
        self.emitted: list[Alert] = []
        from weightkit.tracking import _judge  # numba: loaded with the first watch, not with ``import weightkit``

        self._judge = _judge.judge
        self._done = np.zeros((n, 4), dtype=np.int8)  # judged kinds already raised, per parameter
        self._flags = np.zeros((n, 4), dtype=np.int8)
        self._values = np.zeros((n, 3))

    def _emit(self, out: list, step: int, kind: str, i: int | None, message: str, value: float | None = None):
        if i is not None:
            if (kind, i) in self.reported:
                return
            self.reported.add((kind, i))
        a = Alert(int(step), None if i is None else self.names[i], kind, message,
                  None if value is None else float(value))
        log.warning("weightkit watch%s: step %d: %s", f" [{self.run}]" if self.run else "", a.step, message)
        out.append(a)
        self.emitted.append(a)

    # -- NaN / Inf --------------------------------------------------------------------------------

    def nonfinite(self, first_grad: np.ndarray, first_weight: np.ndarray, *, counts: np.ndarray | None = None,
                  count_step: int | None = None, since: int | None = None,
                  weight_since: np.ndarray | None = None) -> list[Alert]:
        """``first_*``: per parameter, the first step whose gradient/weight was non-finite (-1: never).
        ``since``: with ``nan_check="measured"``, the previous checked step (the step is then an
        upper bound). ``weight_since``: per parameter, the step after which a weight was last seen
        finite when that is more than one step before ``first_weight`` (-2: the step is exact)."""
        out: list[Alert] = []
        for what, first in (("grad", first_grad), ("weight", first_weight)):
            if self.nonfinite_done[what] or not (first >= 0).any():
                continue
            step = int(first[first >= 0].min())
            hit = np.nonzero(first == step)[0]
            i = int(hit[0])
            self.nonfinite_done[what] = True
            where = "gradient" if what == "grad" else "weight (after the optimizer step)"
            detail = ""
            if what == "grad" and counts is not None and count_step == step:
                detail = f" ({int(counts[i, 0])} NaN, {int(counts[i, 1])} Inf values)"
            more = f"; {len(hit) - 1} more parameter(s) hit at this step" if len(hit) > 1 else ""
            when = f"at step {step}" if since is None else \
                f"at step {step} (checked on measured steps only: it appeared after step {since})"
            if since is None and what == "weight" and weight_since is not None and weight_since[i] > -2:
                when = (f"at step {step} (found when checking the weights, which happens on measured steps, "
                        f"when gradients turn non-finite and at the end: it appeared after step {weight_since[i]})")
            self._emit(out, step, f"nonfinite_{what}", i,
                       f"NaN/Inf first appeared in the {where} of '{self.names[i]}' {when}{detail}{more}")
        return out

    # -- per measured step ----------------------------------------------------------------------

    def measured_step(self, step: int, grad_norm: np.ndarray, ratio: np.ndarray, received: np.ndarray) -> list[Alert]:
        """Judge one measured step. ``grad_norm``/``ratio``: NaN where not measured; ``received``:
        which parameters got a gradient in any backward pass so far."""
        t = self.t
        out: list[Alert] = []
        self.measured += 1
        flags, values = self._flags, self._values
        grad_norm = np.ascontiguousarray(grad_norm, dtype=np.float64)
        ratio = np.ascontiguousarray(ratio, dtype=np.float64)
        top, j = self._judge(grad_norm, ratio, np.ascontiguousarray(received, dtype=bool), self.sqrt_numel,
                       self.dense_grad, self.matrix, self.history, self.hist_len, self.vanish_streak,
                       self.high_streak, self.low_streak, float(t.vanishing), float(t.exploding),
                       float(t.ratio_high), float(t.ratio_low), int(t.patience), self._done, flags, values)
        if flags.any():
            for i in np.nonzero(flags[:, 0])[0]:  # columns: see _judge (VANISHING, EXPLODING, LR_HIGH, LR_LOW)
                self._emit(out, step, "vanishing", int(i),
                           f"vanishing gradient in '{self.names[i]}': gradient RMS {values[i, 0]:.3g} is "
                           f"{values[i, 1]:.2g}× that of '{self.names[j]}' ({top:.3g}) for {t.patience} checks"
                           f"{_structural_hint(values[i, 1])}", values[i, 1])
            for i in np.nonzero(flags[:, 1])[0]:
                m = float(values[i, 2])
                self._emit(out, step, "exploding", int(i),
                           f"exploding gradient in '{self.names[i]}': norm {grad_norm[i]:.3g} is "
                           f"{grad_norm[i] / m:.3g}× its recent median {m:.3g}", grad_norm[i] / m)
            for i in np.nonzero(flags[:, 2])[0]:
                self._emit(out, step, "lr_high", int(i),
                           f"learning rate too high for layer '{self.names[i]}': update/weight ratio {ratio[i]:.3g} "
                           f"(> {t.ratio_high:g}, rule of thumb 1e-3) for {t.patience} checks", ratio[i])
            for i in np.nonzero(flags[:, 3])[0]:
                self._emit(out, step, "lr_low", int(i),
                           f"learning rate too low for layer '{self.names[i]}': update/weight ratio {ratio[i]:.3g} "
                           f"(< {t.ratio_low:g}, rule of thumb 1e-3) for {t.patience} checks", ratio[i])

        # never connected to the loss
        if not self.unused_done and self.measured >= t.unused_after:
            self.unused_done = True
            for i in np.nonzero(~received)[0]:
                self._emit(out, step, "unused", int(i),
                           f"'{self.names[i]}' is trainable but received no gradient in the first {self.measured} "
                           "measured steps: it is not connected to the loss (freeze it with requires_grad_(False) "
                           "or check the forward pass)")
        return out

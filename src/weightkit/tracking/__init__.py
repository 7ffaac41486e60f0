"""Watch weights and gradients while a model trains, cheaply, and catch trouble as it happens.

``weightkit.watch`` is a callable module: ``weightkit.watch(model, optimizer=opt)`` starts
watching; ``weightkit.open_run``/``list_runs`` read what was recorded.

Two lines in a plain PyTorch loop::

    with weightkit.watch(model, optimizer=opt):          # or w = weightkit.watch(...); ...; w.stop()
        for x, y in data:
            opt.zero_grad(); loss_fn(model(x), y).backward(); opt.step()

**Steps** are optimizer steps, counted from 0: gradient accumulation (several backward passes
per step) and evaluation passes do not advance them; a step the optimizer does not take (a
``GradScaler`` skipping an overflow) is not one: pass the scaler (``watch(model, optimizer=opt,
scaler=scaler)``) and the gradient statistics are of the unscaled gradient, the skipped attempts
are recorded with their loss scale (run meta ``amp``) and raise no NaN/Inf alert unless the
overflow is real (see :mod:`weightkit.tracking._torch`). Without an optimizer, a step is a backward pass
that reached the watched parameters, and there are no update statistics. Steps ``0, every,
2·every, …`` are *measured*: per parameter, the gradient's norm, mean, std, mean |g|, max |g|,
NaN and Inf counts, the weight norm, and with an optimizer the norm of the real update
``Δw = w_after − w_before`` and the ratio ‖Δw‖/‖w‖ (rule of thumb ≈ 1e-3). Every ``histograms``-th
measured step also stores histograms of each gradient and weight (``bins`` equal bins over the
finite range, NaN/±Inf counted). NaN/Inf are looked for on *every* step (see
:mod:`weightkit.tracking.alerts` for all alerts and thresholds).

**Cost.** Statistics are reduced on the device and a measured step moves one small tensor to
the host; the store is written by a background thread, in SQLite transactions of whole steps
handed over every 0.25 s (a killed process loses at most that last fraction of a second). With
``every=10`` a CPU training loop of a small CNN or MLP spends about 3% more CPU time per step
(``bench/watch_bench.py``, ``BENCHMARKS.md``); the per-step NaN/Inf check is one compiled sum over
the gradients at the end of each backward pass (``nan_check="measured"`` drops it).
Watching never changes training: nothing is written to a parameter or gradient, no random
numbers are drawn. On the CPU the weight copies of measured steps live in buffers reused until
``stop()`` (one copy of the watched parameters).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from weightkit._version import __version__
from weightkit.errors import WeightkitError
from weightkit.tracking.alerts import Thresholds
from weightkit.tracking.store import FILE_NAME, METRICS, Alert, Histogram, ParamInfo, Run, RunInfo, Store, list_runs, open_run

__all__ = ["watch", "Watch", "open_run", "list_runs", "Run", "RunInfo", "ParamInfo", "Alert",
           "Histogram", "Thresholds", "METRICS"]

_RUN_SUFFIXES = (".sqlite", ".sqlite3", ".db")
log = logging.getLogger("weightkit.watch")


def _warn_if_scaled() -> Any:
    """A step pre-hook that acts once: when the first step comes from a ``torch.amp.GradScaler``
    that ``watch`` was not given, say so (its gradients are recorded scaled, and its skipped steps
    look like NaN/Inf). The caller's frames are looked at once, on the first step (a hook cannot
    remove itself while the optimizer iterates over its hooks)."""
    done: list[bool] = []

    def hook(opt, *_):
        if done:
            return
        done.append(True)
        import torch

        frame = sys._getframe(1)
        for _ in range(6):
            if frame is None:
                break
            if isinstance(frame.f_locals.get("self"), torch.amp.GradScaler):
                log.warning("%s is stepped by a torch.amp.GradScaler that watch() was not given: gradient "
                            "statistics are recorded times the loss scale and steps the scaler skips look like "
                            "NaN/Inf; pass watch(..., scaler=scaler)", type(opt).__name__)
                break
            frame = frame.f_back

    return hook


def _check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise WeightkitError(f"watch({name}={value!r}): expected an integer {bound}")
    return value


def _check_nan_check(value: Any) -> str:
    if value not in ("step", "all", "measured"):
        raise WeightkitError(f"watch(nan_check={value!r}): choose 'step' (the default), 'all' or 'measured'")
    return value


def _store_path(store, name: str | None, run_dir, model_name: str) -> tuple[Path, str]:
    if store is not None:
        p = Path(store)
        if p.suffix.lower() in _RUN_SUFFIXES:
            return p, name or (p.parent.name if p.name == FILE_NAME else p.stem)
        return p / FILE_NAME, name or p.name
    root = Path(run_dir)
    if name is not None:
        if not name or "/" in name or "\\" in name or name in (".", ".."):
            raise WeightkitError(f"watch(name={name!r}): a run name must be a plain directory name")
        return root / name / FILE_NAME, name
    base = f"{time.strftime('%Y%m%d-%H%M%S')}-{model_name}"
    candidate, k = base, 1
    while (root / candidate).exists():
        k += 1
        candidate = f"{base}-{k}"
    return root / candidate / FILE_NAME, candidate


class Watch:
    """A running watch (returned by :func:`watch`): a context manager, or call :meth:`stop`.

    Attributes: ``name`` (the run), ``path`` (its ``watch.sqlite``), ``step`` (optimizer steps so
    far), ``alerts`` (the :class:`Alert` list raised so far).
    """

    def __init__(self, core, store: Store, name: str, handles: list, *, finish_meta: dict):
        self._core = core
        self._store = store
        self.name = name
        self.path = store.path
        self._handles = handles
        self._running = True
        self._meta = finish_meta

    def __repr__(self) -> str:
        state = "running" if self._running else "stopped"
        return f"<weightkit Watch {self.name!r} ({state}): step {self.step}, {len(self.alerts)} alerts, {self.path}>"

    @property
    def step(self) -> int:
        return self._core.step

    @property
    def alerts(self) -> list[Alert]:
        return list(self._core.alerts.emitted)

    @property
    def running(self) -> bool:
        return self._running

    def start(self) -> "Watch":
        """Watching starts in :func:`watch`; ``start()`` is there for symmetry (a stopped watch
        cannot restart: call :func:`watch` again for a new run)."""
        if not self._running:
            raise WeightkitError(f"watch {self.name!r} was stopped; call weightkit.watch(...) again for a new run")
        return self

    def flush(self) -> None:
        """Wait until every measured step so far is committed to the store."""
        self._store.flush()

    def stop(self, *, status: str = "finished") -> None:
        """Remove every hook, record the last NaN/Inf flags, flush and close the store (idempotent)."""
        if not self._running:
            return
        self._running = False
        try:
            self._core.finish()
        finally:
            for h in self._handles:
                h.remove()
            self._handles.clear()
            self._core.remove_hooks()
            self._store.set_meta(status=status, stopped=time.strftime("%Y-%m-%dT%H:%M:%S"), steps=self._core.step)
            self._store.close()
        if self._store.error is not None:
            raise WeightkitError(f"{self.path}: the watch store could not be written ({self._store.error}); "
                                 "steps after the failure were not recorded")

    def __enter__(self) -> "Watch":
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.stop()
            return
        try:
            self.stop(status=f"failed: {exc_type.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": "))
        except WeightkitError:
            pass  # the training error is the one to see


def watch(model: Any, *, optimizer: Any = None, scaler: Any = None, every: int = 10, histograms: int = 10, bins: int = 64, store: Any = None,
          name: str | None = None, run_dir: str | os.PathLike = "runs", overwrite: bool = False,
          nan_check: str = "step", vanishing: float = 1e-3, exploding: float = 10.0, ratio_high: float = 1e-1,
          ratio_low: float = 1e-5, patience: int = 3, unused_after: int = 3) -> Watch:
    """Watch a PyTorch model's gradients, weights and updates while it trains (starts at once).

    Args:
        model: a ``torch.nn.Module`` with trainable parameters (for Keras use
            :class:`weightkit.tracking.keras.WatchCallback`).
        optimizer: the ``torch.optim.Optimizer`` training it; steps are its steps, and updates
            ``Δw`` are measured around them. Without one, a step is a backward pass.
        scaler: the ``torch.amp.GradScaler`` scaling the loss (mixed precision): gradient
            statistics are then of the unscaled gradient (what the optimizer applies, whether or
            not the loop calls ``scaler.unscale_``), and steps the scaler skips for overflow are
            recorded (meta ``amp``: step and loss scale) instead of raising a NaN/Inf alert; a
            non-finite weight, or gradients still non-finite once the scale is down to 1, still
            raise one at their step. bf16/fp16 autocast without a scaler needs nothing.
        every: measure every ``every`` optimizer steps (0, every, 2·every, …).
        histograms: store gradient and weight histograms every ``histograms`` measured steps
            (0: never); ``bins`` equal-width bins over the finite range.
        store: the run's directory or ``.sqlite`` file; default ``run_dir/name/watch.sqlite``.
        name: the run's name (default: the time and the model's class); an existing run is an
            error unless ``overwrite=True``.
        nan_check: ``"step"`` looks for NaN/Inf in every gradient on every step (one sum each:
            the first step and parameter are exact), and in the weights on measured steps and
            around any step whose gradients are non-finite (on a GPU, where it costs no sync: on
            every step); a weight that turns non-finite reaches the next loss and gradients, so
            its step is exact too, and when it did not (a row of an embedding no batch reads),
            the alert says after which step it appeared. ``"all"`` sums every weight on every
            step as well (exact in every case; on the CPU one more read of every weight per
            step); ``"measured"`` checks on measured steps only.
        vanishing, exploding, ratio_high, ratio_low, patience, unused_after: alert thresholds,
            see :mod:`weightkit.tracking.alerts`.

    Raises:
        WeightkitError: no trainable parameters, an optimizer holding none of them, a store that
            cannot be written, bad options.

    Example:
        >>> import tempfile, torch, weightkit
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
        >>> opt = torch.optim.SGD(net.parameters(), lr=0.01)
        >>> with weightkit.watch(net, optimizer=opt, every=5, run_dir=tempfile.mkdtemp()) as w:
        ...     for _ in range(12):
        ...         opt.zero_grad(); net(torch.randn(16, 4)).pow(2).mean().backward(); opt.step()
        >>> w.step, weightkit.open_run(w.path).steps.tolist()
        (12, [0, 5, 10])
    """
    every = _check_int("every", every, 1)
    histograms = _check_int("histograms", histograms, 0)
    bins = _check_int("bins", bins, 2, 4096)
    thresholds = Thresholds(vanishing, exploding, ratio_high, ratio_low, patience, unused_after).check()
    nan_check = _check_nan_check(nan_check)
    if type(model).__module__.startswith("keras") or hasattr(model, "trainable_weights") and not hasattr(model, "named_parameters"):
        raise WeightkitError(f"{type(model).__name__}: a Keras model; use weightkit.tracking.keras.WatchCallback in model.fit(callbacks=[...])")
    import torch

    from weightkit.tracking._torch import Core  # imports torch: loaded with the first watch, not with weightkit

    if not isinstance(model, torch.nn.Module):
        raise WeightkitError(f"{type(model).__name__}: not a torch.nn.Module; watch() needs the model being trained")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad and p.numel() > 0]
    if not named:
        raise WeightkitError(f"{type(model).__name__}: the model has no trainable parameters (all frozen or none); "
                             "nothing to watch")
    updates = None
    if optimizer is not None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise WeightkitError(f"optimizer={type(optimizer).__name__}: not a torch.optim.Optimizer")
        held = {id(p) for g in optimizer.param_groups for p in g["params"]}
        updates = [id(p) in held for _, p in named]
        if not any(updates):
            raise WeightkitError(f"{type(optimizer).__name__} holds none of the {len(named)} trainable parameters of "
                                 f"{type(model).__name__}; pass the optimizer that trains this model")
    if scaler is not None:
        if not isinstance(scaler, torch.amp.GradScaler):
            raise WeightkitError(f"scaler={type(scaler).__name__}: not a torch.amp.GradScaler")
        if optimizer is None:
            raise WeightkitError("watch(scaler=...) needs the optimizer the scaler steps: pass optimizer=")
        if not scaler.is_enabled():
            scaler = None  # a disabled scaler scales nothing and skips nothing
    path, run_name = _store_path(store, name, run_dir, type(model).__name__)

    meta = {
        "framework": "torch", "torch": torch.__version__, "weightkit": __version__,
        "model": type(model).__name__, "optimizer": type(optimizer).__name__ if optimizer is not None else None,
        "lr": [g.get("lr") for g in optimizer.param_groups] if optimizer is not None else None,
        "steps_are": "optimizer steps" if optimizer is not None else "backward passes",
        "scaler": type(scaler).__name__ if scaler is not None else None,
        "every": every, "histograms": histograms, "bins": bins, "nan_check": nan_check,
        "thresholds": thresholds.__dict__, "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "status": "running",
        "devices": sorted({str(p.device) for _, p in named}),
        "not_in_optimizer": [n for (n, _), u in zip(named, updates or [True] * len(named)) if not u],
    }
    st = Store(path, meta=meta, params=[(n, tuple(p.shape), p.numel()) for n, p in named], overwrite=overwrite)
    tables = {id(m.weight) for m in model.modules() if isinstance(m, (torch.nn.Embedding, torch.nn.EmbeddingBag))}
    core = Core([n for n, _ in named], [p for _, p in named], every=every, histograms=histograms, bins=bins,
                thresholds=thresholds, store=st, run=run_name, updates=updates, nan_check=nan_check,
                embeddings=[id(p) in tables for _, p in named], scaler=scaler)
    handles: list = []
    try:
        if optimizer is not None and scaler is not None:
            core.install()
            handles.append(optimizer.register_step_pre_hook(lambda opt, *_: core.scaled_pre_step(opt)))
            handles.append(optimizer.register_step_post_hook(lambda *_: core.scaled_post_step()))
        elif optimizer is not None:
            core.install()
            handles.append(optimizer.register_step_pre_hook(_warn_if_scaled()))
            handles.append(optimizer.register_step_pre_hook(lambda *_: core.pre_step()))
            handles.append(optimizer.register_step_post_hook(lambda *_: core.post_step()))
        else:
            core.install(on_backward=core.backward_step)
    except BaseException:
        core.remove_hooks()
        for h in handles:
            h.remove()
        st.close()
        raise
    return Watch(core, st, run_name, handles, finish_meta=meta)


"""Keras 3 integration: :class:`WatchCallback` watches ``model.fit`` like :func:`weightkit.watch`.

Keras is imported only when ``WatchCallback`` is first used (``import weightkit`` never imports it).
Keras must run on the torch backend (``KERAS_BACKEND=torch``): each trainable variable's value is
then a ``torch.nn.Parameter`` whose gradient ``loss.backward()`` fills, so the callback records the
same metrics as the torch watcher — gradients (through the same ``post_accumulate_grad`` hooks),
weights and the real update ``Δw = w_after − w_before`` of each measured batch — into the same
store, read by the same API and CLI. Parameters are named by ``variable.path``.

A step is a training batch (``on_train_batch_begin``/``on_train_batch_end``; with
``steps_per_execution > 1`` one call covers several batches). Calling ``fit`` again with the same
callback continues the same run and step count. With a ``LossScaleOptimizer`` (mixed precision)
gradient statistics are of the scaled gradients.

Hooks are removed at ``on_train_end``, when a training step raises (the callback wraps the model's
train function for the duration of ``fit``), at :meth:`WatchCallback.close` and at exit.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from weightkit._version import __version__
from weightkit.edits._backend import keras_layers
from weightkit.errors import WeightkitError, require
from weightkit.tracking import _check_int, _check_nan_check, _store_path
from weightkit.tracking.alerts import Thresholds
from weightkit.tracking.store import Store

if TYPE_CHECKING:
    from weightkit.tracking._torch import Core

__all__ = ["WatchCallback"]  # noqa: F822  (built on first use by __getattr__, so Keras loads only then)


def _build():
    keras = require("keras", extra="keras", purpose="weightkit.tracking.keras.WatchCallback")

    class WatchCallback(keras.callbacks.Callback):
        """Record gradients, weights and updates of a Keras 3 model during ``model.fit``.

        Options are those of :func:`weightkit.watch` (``every``, ``histograms``, ``bins``,
        ``store``, ``name``, ``run_dir``, ``overwrite``, ``nan_check`` and the alert thresholds).

        Example:
            >>> import os, tempfile, numpy as np
            >>> os.environ.setdefault("KERAS_BACKEND", "torch")
            'torch'
            >>> import keras, weightkit
            >>> from weightkit.tracking.keras import WatchCallback
            >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="hidden"),
            ...                           keras.layers.Dense(1, name="out")], name="net")
            >>> model.compile(optimizer="sgd", loss="mse")
            >>> cb = WatchCallback(every=2, run_dir=tempfile.mkdtemp(), name="k")
            >>> _ = model.fit(np.ones((32, 4)), np.ones((32, 1)), batch_size=8, epochs=1, verbose=0, callbacks=[cb])
            >>> run = weightkit.open_run(cb.path)
            >>> run.steps.tolist(), [p.name for p in run.params][:2]
            ([0, 2], ['net/hidden/kernel', 'net/hidden/bias'])
        """

        def __init__(self, *, every: int = 10, histograms: int = 10, bins: int = 64, store=None,
                     name: str | None = None, run_dir: str | os.PathLike = "runs", overwrite: bool = False,
                     nan_check: str = "step", vanishing: float = 1e-3, exploding: float = 10.0,
                     ratio_high: float = 1e-1, ratio_low: float = 1e-5, patience: int = 3, unused_after: int = 3):
            super().__init__()

            self._options: dict[str, Any] = dict(every=_check_int("every", every, 1), histograms=_check_int("histograms", histograms, 0),
                                 bins=_check_int("bins", bins, 2, 4096), nan_check=_check_nan_check(nan_check))
            self._thresholds = Thresholds(vanishing, exploding, ratio_high, ratio_low, patience, unused_after).check()
            self._where = (store, name, run_dir, overwrite)
            self._core: Core | None = None
            self._store: Store | None = None
            self._wrapped: tuple[Any, Any] | None = None  # (model, its own train_function) while fit runs
            self.path: Path | None = None
            self.name = name

        # -- public -----------------------------------------------------------------------------

        @property
        def step(self) -> int:
            return self._core.step if self._core is not None else 0

        @property
        def alerts(self):
            return list(self._core.alerts.emitted) if self._core is not None else []

        def flush(self) -> None:
            """Wait until every measured batch so far is committed."""
            if self._store is not None:
                self._store.flush()

        def close(self) -> None:
            """Remove the hooks and close the store (a later ``fit`` with this callback is refused)."""
            self._detach("finished")
            if self._store is not None:
                self._store.close()

        # -- Keras callbacks --------------------------------------------------------------------

        def on_train_begin(self, logs=None):
            if keras.backend.backend() != "torch":
                raise WeightkitError(f"WatchCallback needs Keras on the torch backend (set KERAS_BACKEND=torch); "
                                     f"this Keras runs on {keras.backend.backend()!r}")
            if self._core is None:
                self._setup()
            elif self._store._closed:
                raise WeightkitError(f"WatchCallback for run {self.name!r} was closed; create a new WatchCallback")
            self._core.install()
            self._store.set_meta(status="running")
            self._wrap_train_function()

        def on_train_batch_begin(self, batch, logs=None):
            self._core.pre_step()

        def on_train_batch_end(self, batch, logs=None):
            self._core.post_step()

        def on_train_end(self, logs=None):
            self._detach("finished")
            if self._store is not None:
                self._store.flush()

        # -- internals --------------------------------------------------------------------------

        def _setup(self) -> None:
            import torch

            from weightkit.tracking._torch import Core  # imports torch, like Keras on its torch backend

            model = self.model
            variables = [v for v in model.trainable_weights if int(getattr(v, "size", 1) or 0) > 0]
            if not variables:
                raise WeightkitError(f"{type(model).__name__}: the model has no trainable weights; nothing to watch")
            params = [v.value for v in variables]
            if not all(isinstance(p, torch.Tensor) for p in params):
                raise WeightkitError("WatchCallback needs Keras on the torch backend (set KERAS_BACKEND=torch)")
            names = [v.path for v in variables]
            store, name, run_dir, overwrite = self._where
            path, run_name = _store_path(store, name, run_dir, type(model).__name__)
            opt = getattr(model, "optimizer", None)
            meta = {
                "framework": "keras", "keras": keras.__version__, "torch": torch.__version__, "weightkit": __version__,
                "model": type(model).__name__, "optimizer": type(opt).__name__ if opt is not None else None,
                "lr": _lr(opt), "steps_are": "training batches (Keras on_train_batch_end)",
                **self._options, "thresholds": self._thresholds.__dict__,
                "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "status": "running",
                "devices": sorted({str(p.device) for p in params}), "not_in_optimizer": [],
            }
            self._store = Store(path, meta=meta, params=[(n, tuple(p.shape), p.numel()) for n, p in zip(names, params)],
                                overwrite=overwrite)

            tables = {id(getattr(layer, "embeddings", None)) for layer in keras_layers(model)
                      if isinstance(layer, keras.layers.Embedding)}
            self._core = Core(names, params, thresholds=self._thresholds, store=self._store, run=run_name,
                              updates=[True] * len(params), embeddings=[id(v) in tables for v in variables],
                              **self._options)
            self.path, self.name = path, run_name

        def _wrap_train_function(self) -> None:
            model, callback = self.model, self
            original = getattr(model, "train_function", None)
            if original is None or self._wrapped is not None:
                return

            def train_function(*args, **kwargs):
                try:
                    return original(*args, **kwargs)
                except BaseException as e:
                    callback._detach(f"failed: {type(e).__name__}")
                    if callback._store is not None:
                        callback._store.flush()
                    raise

            self._wrapped = (model, original)
            model.train_function = train_function

        def _detach(self, status: str) -> None:
            if self._wrapped is not None:
                model, original = self._wrapped
                model.train_function = original
                self._wrapped = None
            if self._core is not None and self._core._handles:
                assert self._store is not None  # _setup makes the store before the core
                self._core.finish()
                self._store.set_meta(status=status, stopped=time.strftime("%Y-%m-%dT%H:%M:%S"), steps=self._core.step)

    return WatchCallback


def _lr(opt):
    try:
        return float(opt.learning_rate) if opt is not None else None
    except (TypeError, ValueError, AttributeError):
        return None


def __getattr__(name: str):
    if name == "WatchCallback":
        cls = _build()
        globals()["WatchCallback"] = cls
        return cls
    raise AttributeError(f"module 'weightkit.tracking.keras' has no attribute {name!r}")

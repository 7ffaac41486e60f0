"""weightkit.tracking.keras.WatchCallback on Keras 3 (torch backend): model.fit records what the torch
watcher records, checked against Keras' own gradients and weights."""

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np
import pytest

keras = pytest.importorskip("keras")
import torch  # noqa: E402

import weightkit  # noqa: E402
from weightkit.errors import WeightkitError  # noqa: E402

pytestmark = pytest.mark.skipif(keras.backend.backend() != "torch", reason="weightkit watches Keras on torch only")


def data(n=64):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 6)).astype("float32")
    return x, np.tanh(x[:, :2].sum(1, keepdims=True)).astype("float32")


def model(seed=0):
    keras.utils.set_random_seed(seed)
    m = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1)])
    m.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    return m


class Spy(keras.callbacks.Callback):
    """Keras' own view, by hand: gradients at batch end, weights before and after each batch."""

    def __init__(self):
        super().__init__()
        self.grads, self.before, self.after = [], [], []

    def on_train_batch_begin(self, batch, logs=None):
        self.before.append([v.numpy().copy() for v in self.model.trainable_weights])

    def on_train_batch_end(self, batch, logs=None):
        self.grads.append([v.value.grad.detach().numpy().copy() for v in self.model.trainable_weights])
        self.after.append([v.numpy().copy() for v in self.model.trainable_weights])


def hooks_left(m):
    return sum(len(v.value._post_accumulate_grad_hooks or {}) for v in m.trainable_weights)


def test_fit_records_gradients_weights_and_updates(tmp_path):
    from weightkit.tracking.keras import WatchCallback

    x, y = data()
    m, spy = model(), Spy()
    cb = WatchCallback(every=3, run_dir=tmp_path, name="fit")
    m.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[cb, spy])
    assert cb.step == 8 and hooks_left(m) == 0
    run = weightkit.open_run("fit", run_dir=tmp_path)
    assert run.steps.tolist() == [0, 3, 6]
    assert [p.name for p in run.params] == [v.path for v in m.trainable_weights]
    assert run.meta["framework"] == "keras" and run.meta["status"] == "finished"
    for row, step in enumerate(run.steps):
        g = [np.linalg.norm(a.astype(np.float64)) for a in spy.grads[step]]
        w = [np.linalg.norm(a.astype(np.float64)) for a in spy.after[step]]
        u = [np.linalg.norm(a.astype(np.float64) - b) for a, b in zip(spy.after[step], spy.before[step])]
        np.testing.assert_allclose(run.metric("grad_norm")[row], g, rtol=1e-5)
        np.testing.assert_allclose(run.metric("weight_norm")[row], w, rtol=1e-5)
        np.testing.assert_allclose(run.metric("update_norm")[row], u, rtol=1e-4, atol=1e-9)
    # a second fit continues the same run
    m.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[cb])
    assert weightkit.open_run("fit", run_dir=tmp_path).steps.tolist() == [0, 3, 6, 9]
    cb.close()


def test_callback_never_changes_training(tmp_path):
    from weightkit.tracking.keras import WatchCallback

    x, y = data()
    a, b = model(), model()
    a.fit(x, y, batch_size=16, epochs=2, verbose=0, shuffle=True)
    keras.utils.set_random_seed(0)
    b.fit(x, y, batch_size=16, epochs=2, verbose=0, shuffle=True,
          callbacks=[WatchCallback(every=1, histograms=1, run_dir=tmp_path)])
    for va, vb in zip(a.trainable_weights, b.trainable_weights):
        assert np.array_equal(va.numpy(), vb.numpy())


def test_hooks_removed_when_fit_raises(tmp_path):
    from weightkit.tracking.keras import WatchCallback

    x, y = data()
    cb = WatchCallback(every=1, run_dir=tmp_path, name="boom")

    class Fail(keras.layers.Layer):
        """Raises in the forward pass of the third training batch."""

        calls = 0

        def call(self, t):
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                Fail.calls += 1
                if Fail.calls == 3:
                    raise RuntimeError("boom")
            return t

    m = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4), Fail(), keras.layers.Dense(1)])
    m.compile(optimizer="sgd", loss="mse")
    with pytest.raises(RuntimeError, match="boom"):
        m.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[cb])
    assert hooks_left(m) == 0
    run = weightkit.open_run("boom", run_dir=tmp_path)
    assert run.steps.tolist() == [0, 1] and run.meta["status"].startswith("failed: RuntimeError")


def test_model_without_trainable_weights_is_refused(tmp_path):
    from weightkit.tracking.keras import WatchCallback

    m = model()
    m.trainable = False
    m.compile(optimizer="sgd", loss="mse")
    x, y = data()
    with pytest.raises(WeightkitError, match="no trainable weights"):
        m.fit(x, y, epochs=1, verbose=0, callbacks=[WatchCallback(run_dir=tmp_path)])
    with pytest.raises(WeightkitError, match="Keras model; use weightkit.tracking.keras.WatchCallback"):
        weightkit.watch(m, run_dir=tmp_path)


def test_docstring_example_runs():
    import doctest

    import weightkit.tracking.keras

    _ = weightkit.tracking.keras.WatchCallback  # built on first use
    result = doctest.testmod(weightkit.tracking.keras, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0


def test_embedding_tables_are_not_called_vanishing(tmp_path):
    from weightkit.tracking.keras import WatchCallback

    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((3,), dtype="int32"), keras.layers.Embedding(200_000, 16),
                          keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(2)])
    m.compile(optimizer=keras.optimizers.Adam(1e-3), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 200_000, (32, 3)).astype("int32"), rng.integers(0, 2, 32)
    m.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[WatchCallback(every=1, run_dir=tmp_path, name="bow")])
    run = weightkit.open_run("bow", run_dir=tmp_path)
    names = [p.name for p in run.params]
    rms = run.metric("grad_norm") / np.sqrt([p.numel for p in run.params])
    emb = next(i for i, n in enumerate(names) if n.endswith("embeddings"))
    low = rms[:, emb] < 1e-3 * np.delete(rms, emb, axis=1).max(axis=1)  # what the vanishing rule would judge
    assert max(len(r) for r in "".join("x" if b else " " for b in low).split()) >= 3  # 3 checks in a row
    assert not [a for a in run.alerts if a.kind == "vanishing"]

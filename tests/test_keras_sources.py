"""The Keras readers: live models, ``.weights.h5``, ``.keras`` archives and Keras 2 HDF5 files.

Every fixture model is read live and from both files it saves; all three must agree on names,
shapes, dtypes, kinds, roles and bytes."""

import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")
h5py = pytest.importorskip("h5py")
from keras import layers as L  # noqa: E402

from weightkit.errors import CorruptFileError, UnsupportedFormatError  # noqa: E402
from weightkit.sources import open_reader  # noqa: E402
from weightkit.sources.keras_file import open_keras_archive, open_keras_h5  # noqa: E402
from weightkit.sources.keras_model import KerasModelReader, roles_for  # noqa: E402


def _docs():
    return keras.Sequential([L.Input((784,)), L.Dense(64, name="enc"), L.Dense(10)])


def _conv_bn():
    return keras.Sequential([L.Input((8, 8, 3)), L.Conv2D(4, 3), L.BatchNormalization(), L.Flatten(), L.Dense(2)])


def _rnns():
    return keras.Sequential([L.Input((5, 3)), L.LSTM(4, return_sequences=True), L.GRU(3, return_sequences=True),
                             L.GRU(2, reset_after=False)])


def _bilstm():
    return keras.Sequential([L.Input((5, 3)), L.Bidirectional(L.LSTM(4))])


def _embedding():
    return keras.Sequential([L.Input((5,), dtype="int32"), L.Embedding(10, 3)])


def _mha():
    x = L.Input((5, 8))
    y = L.MultiHeadAttention(num_heads=2, key_dim=4)(x, x)
    return keras.Model(x, L.LayerNormalization()(L.Add()([x, y])))


def _frozen():
    return keras.Sequential([L.Input((4,)), L.Dense(3, trainable=False), L.Dense(2)])


def _shared():
    x = L.Input((4,))
    dense = L.Dense(4)
    return keras.Model(x, dense(dense(x)))


def _nested():
    inner = keras.Sequential([L.Input((4,)), L.Dense(3)], name="inner")
    return keras.Sequential([L.Input((4,)), inner, L.Dense(2)])


def _misc():
    return keras.Sequential([
        L.Input((6, 6, 3)), L.SeparableConv2D(4, 3), L.DepthwiseConv2D(3, use_bias=False),
        L.GroupNormalization(2), L.PReLU(), L.Flatten(), L.Dense(2, use_bias=False, dtype="bfloat16"),
    ])


def _wrappers():
    return keras.Sequential([
        L.Input((3, 5)), L.TimeDistributed(L.Dense(2)), L.RNN([L.LSTMCell(2), L.GRUCell(3)], return_sequences=True),
        L.RNN(L.SimpleRNNCell(2)), L.RepeatVector(2),
        L.Bidirectional(L.GRU(2), backward_layer=L.GRU(2, go_backwards=True)),
    ])


def _conv_lstm():
    return keras.Sequential([L.Input((2, 4, 4, 2)), L.ConvLSTM2D(2, 3)])


MODELS = {f.__name__[1:]: f for f in (_docs, _conv_bn, _rnns, _bilstm, _embedding, _mha, _frozen, _shared,
                                      _nested, _misc, _wrappers, _conv_lstm)}


def _build(name, tmp_path):
    """The model with distinct random values in every variable (so a role mix-up shows in the
    bytes), and its .weights.h5 and .keras files."""
    model = MODELS[name]()
    rng = np.random.default_rng(0)
    for v in model.weights:
        v.assign(rng.standard_normal(tuple(v.shape)).astype("float32"))
    h5, archive = tmp_path / f"{name}.weights.h5", tmp_path / f"{name}.keras"
    model.save_weights(h5)
    model.save(archive)
    return model, h5, archive


def _row(t, trainable=True):
    return (t.name, t.layer, t.shape, t.dtype, t.kind, t.role, t.is_buffer, t.layer_config,
            t.trainable if trainable else None)


@pytest.mark.parametrize("name", MODELS)
def test_live_and_files_agree(name, tmp_path):
    model, h5, archive = _build(name, tmp_path)
    live = KerasModelReader(model)
    want = [_row(t) for t in live.tensors()]
    assert [t.name for t in live.tensors()] == [v.path for v in model.weights]
    assert all(t.kind and t.role for t in live.tensors())
    from_keras, from_h5 = open_keras_archive(archive), open_keras_h5(h5)
    try:
        assert [_row(t) for t in from_keras.tensors()] == want
        # without a config a .weights.h5 cannot know frozen layers
        assert [_row(t, False) for t in from_h5.tensors()] == [_row(t, False) for t in live.tensors()]
        variables = {v.path: v for v in model.weights}
        for reader in (live, from_keras, from_h5):
            for t in reader.tensors():
                raw, value = reader.read(t.key), variables[t.name].numpy()
                assert raw.shape == value.shape and raw.tobytes() == value.tobytes(), (reader.format, t.name)
                assert raw.dtype == (np.uint16 if t.dtype == "bfloat16" else value.dtype)
    finally:
        from_keras.close()
        from_h5.close()


def test_docs_example_and_metadata(tmp_path):
    model, h5, archive = _build("docs", tmp_path)
    model.compile(optimizer="adam", loss="mse")
    model.fit(np.ones((4, 784)), np.ones((4, 10)), verbose=0)
    model.save(archive)
    live = open_reader(model)
    assert live.format == "keras-model" and live.description == f"Keras Sequential '{model.name}'"
    assert [(t.name, t.kind, t.role) for t in live.tensors()][:2] == [
        (f"{model.name}/enc/kernel", "Dense", "kernel"), (f"{model.name}/enc/bias", "Dense", "bias")]
    reader = open_reader(archive)
    meta = reader.metadata()
    assert reader.format == "keras" and len(reader.tensors()) == 4  # no optimizer variables
    assert meta["keras_version"] == keras.__version__ and meta["date_saved"]
    assert (meta["model_class"], meta["model_name"]) == ("Sequential", model.name)
    assert meta["optimizer"]["class"] == "Adam" and meta["optimizer"]["variables"] == len(model.optimizer.variables)
    assert meta["optimizer"]["bytes"] == sum(np.prod(v.shape) * 4 for v in model.optimizer.variables)
    json.dumps(meta), json.dumps(live.metadata())
    assert live.metadata()["optimizer"]["class"] == "Adam"
    reader.close()


def test_kinds_and_roles(tmp_path):
    _, h5, archive = _build("rnns", tmp_path)
    for reader in (open_reader(h5), open_reader(archive)):
        rows = [(t.layer.split("/")[-1], t.kind, t.role, t.layer_config) for t in reader.tensors()]
        assert rows[0][0].startswith("lstm") and rows[0][1:3] == ("LSTM", "kernel") and rows[2][2] == "bias"
        assert {r[3]["reset_after"] for r in rows if r[1] == "GRU"} == {True, False}
        reader.close()
    _, _, archive = _build("bilstm", tmp_path)
    reader = open_reader(archive)
    assert [t.layer_config["direction"] for t in reader.tensors()] == ["forward"] * 3 + ["backward"] * 3
    _, h5, _ = _build("mha", tmp_path)
    subs = [t.layer_config.get("sublayer") for t in open_reader(h5).tensors() if t.kind == "EinsumDense"]
    assert subs == [s for s in ("query", "key", "value", "attention_output") for _ in (0, 1)]


def test_frozen_layer_and_buffers(tmp_path):
    model, _, archive = _build("frozen", tmp_path)
    reader = open_reader(archive)
    assert [t.trainable for t in reader.tensors()] == [False, False, True, True]
    assert not any(t.is_buffer for t in reader.tensors())
    _, _, archive = _build("conv_bn", tmp_path)
    stats = {t.role: (t.trainable, t.is_buffer) for t in open_reader(archive).tensors()}
    assert stats["moving_mean"] == stats["moving_variance"] == (False, True) and stats["gamma"] == (True, False)


def test_unbuilt_and_dropout_models():
    with pytest.raises(UnsupportedFormatError, match="not built"):
        open_reader(keras.Sequential([L.Dense(2)]))
    model = keras.Sequential([L.Input((3,)), L.Dropout(0.5), L.Dense(2)])
    reader = open_reader(model)
    assert len(reader.tensors()) == 2 and reader.metadata()["seed_generator_states"] == 1


def test_shared_layer_and_tied_variable():
    model = _shared()
    assert len(KerasModelReader(model).tensors()) == 2  # a layer called twice is listed once

    class Tied(L.Layer):
        def __init__(self, embedding, **kw):
            super().__init__(**kw)
            self.embedding = embedding

        def build(self, shape):
            self.w = self.embedding.embeddings

        def call(self, x):
            return keras.ops.matmul(x, keras.ops.transpose(self.w))

    emb = L.Embedding(10, 4)
    x = L.Input((3,), dtype="int32")
    tied = Tied(emb)
    model = keras.Model(x, tied(emb(x)))
    (t,) = KerasModelReader(model).tensors()
    assert (t.name, t.kind, t.shared_with) == (f"{emb.name}/embeddings", "Embedding", (f"{tied.name}/w",))


def _strip_names(f):
    """Make a weights file look like one of older Keras 3 releases: no name attributes, no vars
    groups without variables."""
    groups = []
    f.visititems(lambda n, o: groups.append(n) if isinstance(o, h5py.Group) and n.endswith("vars") else None)
    for n in sorted(groups, key=len, reverse=True):
        f[n].attrs.pop("name", None)
        if not len(f[n]):
            del f[n]


def test_files_from_older_keras_3(tmp_path):
    x = L.Input((5, 3))
    h = L.Bidirectional(L.LSTM(4, return_sequences=True))(x)
    model = keras.Model(x, L.Conv1D(3, 2)(L.MultiHeadAttention(2, 4)(h, h)))
    h5, archive, old = tmp_path / "m.weights.h5", tmp_path / "m.keras", tmp_path / "old.keras"
    model.save_weights(h5)
    model.save(archive)
    with h5py.File(h5, "a") as f:
        _strip_names(f)
    with zipfile.ZipFile(archive) as src, zipfile.ZipFile(old, "w") as dst:
        weights = tmp_path / "w.h5"
        weights.write_bytes(src.read("model.weights.h5"))
        with h5py.File(weights, "a") as f:
            _strip_names(f)
        for member in ("metadata.json", "config.json"):
            dst.writestr(member, src.read(member))
        dst.write(weights, "model.weights.h5")
    live = [_row(t) for t in KerasModelReader(model).tensors()]
    assert [_row(t) for t in open_reader(old).tensors()] == live  # the config gives the names back
    # without names nor config: group names, kinds from the structure, the LSTM from its gates
    rows = [(t.kind, t.role, t.layer_config) for t in open_reader(h5).tensors()]
    assert rows == [r[4:6] + (r[7],) for r in live]


def test_roles_without_config():
    assert roles_for("Dense", 1) == ["kernel"] and roles_for("Dense", 3) is None
    assert roles_for("BatchNormalization", 3) == [None, "moving_mean", "moving_variance"]
    assert roles_for("BatchNormalization", 3, {"center": False}) == ["gamma", "moving_mean", "moving_variance"]
    assert roles_for("EinsumDense", 1, {}) == ["kernel"] and roles_for("Nope", 1) is None


def test_unknown_group_names_are_not_guessed(tmp_path):
    path = tmp_path / "odd.weights.h5"
    with h5py.File(path, "w") as f:
        f.create_group("vars").attrs["name"] = "model"
        for group, shapes in (("layers/dense", [(3,), (3,), (3,)]), ("layers/my_block", [(2, 2)])):
            vg = f.create_group(f"{group}/vars")
            vg.attrs["name"] = group.split("/")[-1]
            for i, shape in enumerate(shapes):
                vg.create_dataset(str(i), data=np.zeros(shape, "float32"))
    rows = [(t.name, t.kind, t.role) for t in open_reader(path).tensors()]
    assert rows == [("model/dense/0", None, "0"), ("model/dense/1", None, "1"), ("model/dense/2", None, "2"),
                    ("model/my_block/0", None, "0")]


def _legacy_file(path, with_config):
    rng = np.random.default_rng(1)
    layers = {
        "dense": {"dense/kernel:0": (4, 3), "dense/bias:0": (3,)},
        "batch_normalization": {f"batch_normalization/{r}:0": (3,) for r in
                                ("gamma", "beta", "moving_mean", "moving_variance")},
        "lstm": {"lstm/lstm_cell/kernel:0": (3, 8), "lstm/lstm_cell/recurrent_kernel:0": (2, 8),
                 "lstm/lstm_cell/bias:0": (8,)},
        "flatten": {},
    }
    with h5py.File(path, "w") as f:
        root = f.create_group("model_weights") if with_config else f
        root.attrs["backend"], root.attrs["keras_version"] = b"tensorflow", b"2.15.0"
        root.attrs["layer_names"] = [n.encode() for n in layers]
        for layer, weights in layers.items():
            g = root.create_group(layer)
            g.attrs["weight_names"] = np.array([w.encode() for w in weights], dtype="S")
            for w, shape in weights.items():
                g.create_dataset(w, data=rng.standard_normal(shape).astype("float32"))
        if with_config:
            cfg = [{"class_name": c, "config": {"name": n, "trainable": n != "dense"}}
                   for c, n in (("Dense", "dense"), ("BatchNormalization", "batch_normalization"),
                                ("LSTM", "lstm"), ("Flatten", "flatten"))]
            f.attrs["model_config"] = json.dumps({"class_name": "Sequential", "config": {"name": "seq", "layers": cfg}})


@pytest.mark.parametrize("with_config", [False, True])
def test_keras2_hdf5(tmp_path, with_config):
    path = tmp_path / "legacy.h5"
    _legacy_file(path, with_config)
    reader = open_reader(path)
    rows = [(t.name, t.layer, t.kind, t.role, t.trainable, t.is_buffer) for t in reader.tensors()]
    assert rows[0] == ("dense/kernel", "dense", "Dense", "kernel", not with_config, False)
    assert rows[4] == ("batch_normalization/moving_mean", "batch_normalization", "BatchNormalization",
                       "moving_mean", False, True)
    assert rows[6] == ("lstm/lstm_cell/kernel", "lstm", "LSTM", "kernel", True, False)
    assert {t.kind_from for t in reader.tensors()} == {"config" if with_config else "name"}
    with h5py.File(path) as f:
        root = f["model_weights"] if with_config else f
        assert np.array_equal(reader.read(reader.tensors()[7].key), root["lstm/lstm/lstm_cell/recurrent_kernel:0"][()])
    assert reader.metadata()["keras_version"] == "2.15.0"
    assert reader.metadata().get("model_class") == ("Sequential" if with_config else None)
    reader.close()


def test_content_not_suffix(tmp_path):
    model, h5, archive = _build("docs", tmp_path)
    model.save(tmp_path / "unzipped", zipped=False)
    unzipped = open_reader(tmp_path / "unzipped")
    assert unzipped.format == "keras" and [_row(t) for t in unzipped.tensors()] == [
        _row(t) for t in KerasModelReader(model).tensors()]
    renamed = archive.rename(tmp_path / "model.bin")
    assert open_reader(renamed).format == "keras"
    assert open_reader(h5.rename(tmp_path / "weights.data")).format == "keras-h5"


def test_corrupt_files(tmp_path):
    _, h5, archive = _build("docs", tmp_path)
    cut = tmp_path / "cut.weights.h5"
    cut.write_bytes(h5.read_bytes()[: h5.stat().st_size // 2])
    with pytest.raises(CorruptFileError, match="cut.weights.h5"):
        open_reader(cut)
    cut_archive = tmp_path / "cut.keras"
    cut_archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(CorruptFileError, match="cut.keras"):
        open_reader(cut_archive)
    stripped = tmp_path / "stripped.keras"
    with zipfile.ZipFile(archive) as src, zipfile.ZipFile(stripped, "w") as dst:
        for member in ("metadata.json", "config.json"):
            dst.writestr(member, src.read(member))
    with pytest.raises(CorruptFileError, match="holds no weights"):
        open_reader(stripped)
    for name, error in (("other.zip", UnsupportedFormatError), ("other.keras", CorruptFileError)):
        with zipfile.ZipFile(tmp_path / name, "w") as zf:
            zf.writestr("hello.txt", "hi")
        with pytest.raises(error):
            open_reader(tmp_path / name)
    with pytest.raises(CorruptFileError, match="not a Keras archive"):
        open_keras_archive(tmp_path / "other.zip")
    empty = tmp_path / "empty.weights.h5"
    keras.Sequential([L.Input((3,)), L.Flatten()]).save_weights(empty)
    with pytest.raises(CorruptFileError, match="without weights"):
        open_reader(empty)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(UnsupportedFormatError, match="not Keras"):
        open_reader(other)


def test_no_keras_import_without_keras():
    code = ("import sys; from weightkit.sources import keras_model, keras_file; "
            "assert not keras_model._is_keras_layer(object()); assert 'keras' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "KERAS_BACKEND": "torch"})


@pytest.mark.parametrize("bad", ['{"class_name": "Sequential", "config": {', "[1, 2]", "\udcff"])
def test_keras2_unreadable_config_still_lists_the_weights(tmp_path, bad):
    # a hand-edited or truncated model_config must not hide weights that do not depend on it
    path = tmp_path / "legacy.h5"
    _legacy_file(path, with_config=True)
    with h5py.File(path, "a") as f:
        f.attrs["model_config"] = bad.encode("utf-8", "surrogateescape")
        f.attrs["training_config"] = b"not json"
        f.create_group("optimizer_weights")
    reader = open_reader(path)
    rows = [(t.name, t.kind, t.kind_from) for t in reader.tensors()]
    assert rows[0] == ("dense/kernel", "Dense", "name") and len(rows) == 9
    notes = reader.metadata().get("notes", [])
    if bad.startswith("{") or bad.startswith("\udcff"):
        assert any("model_config is not valid JSON" in n for n in notes)
    assert any("training_config is not valid JSON" in n for n in notes)
    with h5py.File(path) as f:
        assert np.array_equal(reader.read(reader.tensors()[0].key), f["model_weights/dense/dense/kernel:0"][()])
    reader.close()


def test_keras_sharded_weights_json_reads_like_the_unsharded_file(tmp_path):
    import warnings

    import weightkit
    from weightkit.errors import SourceNotFoundError

    model = keras.Sequential([keras.Input((10, 6)), L.LSTM(16, return_sequences=True), L.BatchNormalization(),
                              L.Flatten(), L.Dense(32), L.Dense(4)], name="seq")
    model.save_weights(tmp_path / "one.weights.h5")
    shards = tmp_path / "shards"
    shards.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save_weights(shards / "m.weights.json", max_shard_size=0.000022)  # GB: the Dense kernel alone is 20 KB
    assert len(list(shards.glob("m_*.weights.h5"))) >= 2
    one, sharded = weightkit.open(tmp_path / "one.weights.h5"), weightkit.open(shards / "m.weights.json")
    assert sharded.format == "keras-h5-sharded"
    assert sharded.names == one.names and len(sharded.names) == len(model.weights)
    assert [(w.kind, w.role, w.shape) for w in sharded] == [(w.kind, w.role, w.shape) for w in one]
    for w, v in zip(sharded, model.weights):
        np.testing.assert_array_equal(w.numpy(), keras.ops.convert_to_numpy(v))
    assert weightkit.open(shards).names == one.names  # the directory, through its index
    next(shards.glob("m_*.weights.h5")).unlink()
    with pytest.raises(SourceNotFoundError, match="missing"):
        weightkit.open(shards / "m.weights.json")


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_conv_lstm_and_normalization_axes(dims):
    import weightkit

    conv_lstm = {1: L.ConvLSTM1D, 2: L.ConvLSTM2D, 3: L.ConvLSTM3D}[dims](5, 3)
    model = keras.Sequential([keras.Input((2, *(6,) * dims, 3)), conv_lstm, L.Normalization(axis=-1)])
    model.layers[1].adapt(np.random.default_rng(0).random((4, *(4,) * dims, 5)).astype("float32"))
    ws = weightkit.open(model)
    kernel, recurrent, bias = (ws[v.path] for v in conv_lstm.weights)
    spatial = {1: ("kernel_size",), 2: ("kernel_h", "kernel_w"), 3: ("kernel_d", "kernel_h", "kernel_w")}[dims]
    assert kernel.axes == (*spatial, "in_channels", "4*filters (i,f,c,o)") and kernel.shape[-1] == 4 * 5
    assert recurrent.axes == (*spatial, "filters", "4*filters (i,f,c,o)") and recurrent.shape[-2] == 5
    assert bias.axes == ("4*filters (i,f,c,o)",)
    mean = ws[model.layers[1].weights[0].path]
    assert mean.kind == "Normalization" and mean.axes == ("features",) and mean.is_buffer

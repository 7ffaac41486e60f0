"""weightkit.open(path): the models of test_torch_module saved in every PyTorch-side format
come back with the names, shapes, dtypes, data, kinds and axes of the live module, as far as
the format can know them (a state dict has no classes: kinds are inferred from names and
shapes, and trainability is not recorded)."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file, save_model
from torch import nn

import weightkit

# ---- the models --------------------------------------------------------------------------


class Scaler(nn.Module):
    def __init__(self):
        super().__init__()
        self.gain = nn.Parameter(torch.randn(5))
        self.fc = nn.Linear(5, 5)


class Siamese(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(4, 3), nn.Tanh())
        self.twin = self.encoder
        self.head = nn.Linear(3, 1)


class TiedLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(11, 4)
        self.body = nn.Linear(4, 4)
        self.lm_head = nn.Linear(4, 11, bias=False)
        self.lm_head.weight = self.emb.weight


def _frozen():
    m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    m[0].requires_grad_(False)
    m.train()
    m(torch.randn(5, 3))
    return m


def _bn():
    m = nn.BatchNorm2d(4)
    m.train()
    m(torch.randn(2, 4, 3, 3))
    return m


# A state dict has no classes: layers whose kind is only told by the layer's name (Embedding vs
# bias-free Linear, LayerNorm vs a bias, ConvTranspose vs Conv) are named as real models name them.
MODELS = {
    "linear": lambda: nn.Linear(3, 2),
    "conv2d": lambda: nn.Conv2d(3, 16, 3),
    "conv2d_grouped": lambda: nn.Conv2d(4, 8, 3, groups=2),
    "conv_transpose2d": lambda: nn.ModuleDict({"deconv": nn.ConvTranspose2d(4, 6, 3)}),
    "conv_transpose2d_grouped": lambda: nn.ModuleDict({"up_deconv": nn.ConvTranspose2d(4, 6, 3, groups=2)}),
    "lstm": lambda: nn.LSTM(10, 20),
    "lstm_bidirectional_2_layers": lambda: nn.LSTM(10, 20, num_layers=2, bidirectional=True),
    "lstm_proj": lambda: nn.LSTM(10, 20, num_layers=2, proj_size=5),
    "gru": lambda: nn.GRU(5, 7, num_layers=2),
    "rnn": lambda: nn.RNN(5, 7),
    "lstm_cell": lambda: nn.LSTMCell(5, 7),
    "sequential": lambda: nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)),
    "embedding": lambda: nn.ModuleDict({"embed": nn.Embedding(10, 4), "proj": nn.Linear(4, 3, bias=False)}),
    "layernorm": lambda: nn.ModuleDict({"norm": nn.LayerNorm(6)}),
    "batchnorm2d": _bn,
    "multihead_attention": lambda: nn.MultiheadAttention(8, 2),
    "custom_parameter": Scaler,
    "frozen_part": _frozen,
    "bfloat16": lambda: nn.Sequential(nn.Conv2d(2, 3, 3), nn.Linear(3, 2)).to(torch.bfloat16),
    "float16": lambda: nn.Sequential(nn.Linear(3, 2)).half(),
    "siamese": Siamese,
    "tied_embeddings": TiedLM,
}
SHARED = {"siamese", "tied_embeddings"}

# live class -> what a state dict can tell
FILE_KIND = {"BatchNorm1d": "BatchNorm", "BatchNorm2d": "BatchNorm"}

FORMATS = ["safetensors", "torch", "training_checkpoint", "lightning", "npz"]


def _state_dict(model):
    return model.state_dict()


def _optimizer(model):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=0.01)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()  # creates exp_avg / exp_avg_sq tensors in the optimizer state
    opt.zero_grad()
    return opt


def save(model, fmt, tmp_path):
    """Save ``model`` as users do; return (path, name prefix of the weights in the file)."""
    if fmt == "safetensors":
        path = tmp_path / "model.safetensors"
        if any(True for _ in _shared_names(model)):
            save_model(model, str(path))
        else:
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
        return path, ""
    if fmt == "torch":
        path = tmp_path / "model.pt"
        torch.save(model.state_dict(), path)
        return path, ""
    if fmt == "training_checkpoint":
        opt = _optimizer(model)
        path = tmp_path / "checkpoint.pth"
        torch.save({"epoch": 3, "model_state_dict": model.state_dict(),
                    "optimizer_state_dict": opt.state_dict(), "loss": 0.1}, path)
        return path, ""
    if fmt == "lightning":
        opt = _optimizer(model)
        path = tmp_path / "last.ckpt"
        torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                    "global_step": 10, "epoch": 1, "optimizer_states": [opt.state_dict()],
                    "pytorch-lightning_version": "2.4.0"}, path)
        return path, "model."
    if fmt == "npz":
        path = tmp_path / "model.npz"
        np.savez(path, **{k: v.numpy() for k, v in model.state_dict().items()})
        return path, ""
    raise AssertionError(fmt)


def _shared_names(model):
    seen = {}
    for name, t in model.state_dict(keep_vars=True).items():
        if id(t) in seen:
            yield name
        seen[id(t)] = name


def torch_values(t):
    t = t.detach()
    return t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()


def _cases():
    for model in MODELS:
        for fmt in FORMATS:
            if fmt == "npz" and (model in SHARED or model == "bfloat16"):
                continue  # npz has no bfloat16 and cannot record that two names are one tensor
            yield pytest.param(model, fmt, id=f"{model}-{fmt}")


@pytest.mark.parametrize("model_name, fmt", list(_cases()))
def test_file_matches_live_module(tmp_path, model_name, fmt):
    torch.manual_seed(0)
    model = MODELS[model_name]()
    path, prefix = save(model, fmt, tmp_path)
    state = model.state_dict()
    live = weightkit.open(model)
    ws = weightkit.open(path)

    # -- the file holds the state dict's tensors, each once, and nothing else
    file_names = {w.name.removeprefix(prefix) for w in ws}
    assert all(w.name.startswith(prefix) for w in ws)
    all_file_names = file_names | {n.removeprefix(prefix) for w in ws for n in w.shared_with}
    assert all_file_names == set(state)
    assert file_names == set(live.names)
    assert len(ws) == len(live)
    if fmt != "safetensors":  # torch.save and np.savez keep the state dict's order
        assert [w.name.removeprefix(prefix) for w in ws] == live.names

    for w in ws:
        name = w.name.removeprefix(prefix)
        t, lw = state[name], live[name]
        # -- metadata against torch itself
        assert w.shape == tuple(t.shape), name
        assert w.dtype == str(t.dtype).removeprefix("torch."), name
        assert w.nbytes == t.numel() * t.element_size(), name
        # -- data, exactly
        np.testing.assert_array_equal(w.numpy(), torch_values(t), err_msg=name)
        assert w.numpy().dtype == lw.numpy().dtype
        if fmt != "npz":
            assert w.torch().dtype == t.dtype
            assert torch.equal(w.torch(), t.detach())
        # -- meaning: as the live module, where a state dict can know it
        assert sorted(n.removeprefix(prefix) for n in w.shared_with) == sorted(lw.shared_with), name
        if w.shared_with:
            assert ws[w.shared_with[0]] is w
        assert w.role == lw.role, name
        assert w.layer.removeprefix(prefix.rstrip(".")).lstrip(".") == lw.layer, name
        assert w.is_buffer == lw.is_buffer, name
        known_kind = lw.kind in weightkit.list_kinds()
        if known_kind:
            assert w.kind == FILE_KIND.get(lw.kind, lw.kind), name
            assert w.kind_from == "inferred"
            assert w.axes == lw.axes, name
        else:  # a custom module's own parameter: nothing to infer
            assert w.kind == "unknown" and w.axes == ("?",) * w.ndim, name
        # -- a file does not record requires_grad; buffers never train
        assert w.trainable is (False if lw.is_buffer else None), name

    totals, live_totals = weightkit.summary(ws).totals, weightkit.summary(live).totals
    assert totals.parameters == live_totals.parameters == sum(p.numel() for p in model.parameters())
    assert totals.buffers == live_totals.buffers
    assert totals.bytes == live_totals.bytes
    assert totals.trainable_unknown == totals.parameters


def _save_scalar(fmt, tmp_path):
    t = torch.tensor(7, dtype=torch.int64)
    if fmt == "safetensors":
        save_file({"bn.num_batches_tracked": t}, str(tmp_path / "s.safetensors"))
        return tmp_path / "s.safetensors"
    if fmt == "torch":
        torch.save({"bn.num_batches_tracked": t}, tmp_path / "s.pt")
        return tmp_path / "s.pt"
    if fmt == "npz":
        np.savez(tmp_path / "s.npz", **{"bn.num_batches_tracked": t.numpy()})
        return tmp_path / "s.npz"
    np.save(tmp_path / "num_batches_tracked.npy", t.numpy())
    return tmp_path / "num_batches_tracked.npy"


@pytest.mark.parametrize("fmt", ["torch", "safetensors", "npz", "npy"])
def test_scalar_tensor_torch_keeps_its_shape(tmp_path, fmt):
    (w,) = list(weightkit.open(_save_scalar(fmt, tmp_path)))
    assert w.shape == () and w.numpy().shape == ()
    assert int(w.numpy()) == 7
    t = w.torch()
    assert t.shape == torch.Size([]) and t.dtype == torch.int64 and int(t) == 7


def test_grouped_conv_transpose_in_a_file(tmp_path):
    model = nn.ModuleDict({"deconv": nn.ConvTranspose2d(4, 6, 3, groups=2)})
    path = tmp_path / "deconv.pt"
    torch.save(model.state_dict(), path)
    ws = weightkit.open(path)
    # docs: weight (in_channels, out_channels/groups, kH, kW) = (4, 3, 3, 3); bias (out_channels,) = (6,)
    assert ws["deconv.weight"].shape == (4, 3, 3, 3)
    assert ws["deconv.weight"].kind == "ConvTranspose2d"
    assert ws["deconv.weight"].axes == ("in_channels", "out_channels/groups", "kernel_h", "kernel_w")
    assert ws["deconv.bias"].axes == ("out_channels",)


# ---- checkpoints with more than weights ---------------------------------------------------


def _find(obj, key):
    """Values of ``key`` anywhere in nested dicts and lists."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == key:
                yield v
            yield from _find(v, key)
    elif isinstance(obj, list):
        for v in obj:
            yield from _find(v, key)


def test_training_checkpoint_metadata_and_no_optimizer_tensors(tmp_path):
    model = _frozen()
    path, _ = save(model, "training_checkpoint", tmp_path)
    ws = weightkit.open(path)
    assert set(ws.names) == set(model.state_dict())
    assert not any("exp_avg" in n or n.startswith(("optimizer", "state.")) for n in ws.names)
    meta = ws.metadata
    json.dumps(meta)  # plain data
    assert meta["epoch"] == 3
    assert meta["loss"] == pytest.approx(0.1)
    opt = meta["optimizer_state_dict"]
    assert isinstance(opt, dict)
    assert 0.01 in list(_find(opt, "lr")), opt
    assert "model_state_dict" not in meta or not isinstance(meta["model_state_dict"], dict)
    # the summary carries the metadata too
    assert weightkit.summary(path).metadata["epoch"] == 3


def test_lightning_checkpoint(tmp_path):
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4))
    path, prefix = save(model, "lightning", tmp_path)
    ws = weightkit.open(path)
    assert ws.names == [f"model.{k}" for k in model.state_dict()]
    assert ws.metadata["global_step"] == 10
    assert ws["model.0.weight"].kind == "Conv2d"
    assert ws["model.1.running_var"].is_buffer
    assert not any("exp_avg" in n for n in ws.names)
    json.dumps(ws.metadata)


def test_checkpoint_with_several_nested_models(tmp_path):
    enc, dec = nn.Linear(3, 4), nn.Linear(4, 3)
    opt = _optimizer(nn.Sequential(enc, dec))
    path = tmp_path / "gan.pt"
    torch.save({"encoder": enc.state_dict(), "decoder": dec.state_dict(), "optim": opt.state_dict(), "step": 5},
               path)
    ws = weightkit.open(path)
    assert ws.names == ["encoder.weight", "encoder.bias", "decoder.weight", "decoder.bias"]
    np.testing.assert_array_equal(ws["decoder.weight"].numpy(), dec.weight.detach().numpy())
    assert ws["encoder.weight"].kind == "Linear"
    assert ws.metadata["step"] == 5
    assert 0.01 in list(_find(ws.metadata["optim"], "lr"))
    assert ws.total_params == 3 * 4 + 4 + 4 * 3 + 3  # no optimizer state counted


def test_shared_tensors_saved_with_torch_save_are_reported_once(tmp_path):
    model = TiedLM()
    path = tmp_path / "tied.pt"
    torch.save(model.state_dict(), path)
    ws = weightkit.open(path)
    assert ws.names == ["emb.weight", "body.weight", "body.bias"]
    assert ws["emb.weight"].shared_with == ("lm_head.weight",)
    assert ws["lm_head.weight"] is ws["emb.weight"]
    assert ws.total_params == sum(p.numel() for p in model.parameters())
    s = weightkit.summary(ws)
    assert s.totals.bytes == sum(p.numel() * p.element_size() for p in model.parameters())
    assert s.totals.shared_tensors == 1


def test_equal_but_distinct_tensors_are_not_shared(tmp_path):
    path = tmp_path / "twins.pt"
    torch.save({"a.weight": torch.zeros(3, 3), "b.weight": torch.zeros(3, 3)}, path)
    ws = weightkit.open(path)
    assert ws.names == ["a.weight", "b.weight"]
    assert ws["a.weight"].shared_with == ()


@pytest.mark.parametrize("model_cls", [TiedLM, Siamese], ids=["tied_embeddings", "siamese"])
def test_safetensors_save_model_counts_shared_once(tmp_path, model_cls):
    model = model_cls()
    path = tmp_path / "shared.safetensors"
    save_model(model, str(path))
    ws = weightkit.open(path)
    assert ws.total_params == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("model_cls", [TiedLM, Siamese], ids=["tied_embeddings", "siamese"])
def test_safetensors_save_model_keeps_every_name(tmp_path, model_cls):
    model = model_cls()
    path = tmp_path / "shared.safetensors"
    save_model(model, str(path))
    ws = weightkit.open(path)
    reachable = {n for w in ws for n in (w.name, *w.shared_with)}
    assert reachable == set(model.state_dict())
    for name in model.state_dict():
        assert name in ws
        np.testing.assert_array_equal(ws[name].numpy(), model.state_dict()[name].numpy())


def test_safetensors_tensors_come_in_model_order(tmp_path):
    model = nn.Sequential(*[nn.Linear(2, 2) for _ in range(12)], nn.BatchNorm1d(2))
    path = tmp_path / "deep.safetensors"
    save_file(model.state_dict(), str(path))
    assert weightkit.open(path).names == list(model.state_dict())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
def test_half_precision_round_trips_exactly_through_safetensors(tmp_path, dtype):
    torch.manual_seed(2)
    t = (torch.randn(33, 17) * 1000).to(dtype)
    t[0, :4] = torch.tensor([0.0, -0.0, float("inf"), 1e-40], dtype=torch.float32).to(dtype)
    path = tmp_path / "half.safetensors"
    save_file({"w": t, "v": t[1].clone()}, str(path))
    ws = weightkit.open(path)
    w = ws["w"]
    assert w.dtype == str(dtype).removeprefix("torch.")
    assert w.nbytes == t.numel() * 2
    np.testing.assert_array_equal(w.numpy(), t.float().numpy() if dtype == torch.bfloat16 else t.numpy())
    assert w.numpy().dtype == (np.float32 if dtype == torch.bfloat16 else np.float16)
    assert np.signbit(w.numpy()[0, 1])  # -0.0 stays negative
    back = w.torch()
    assert back.dtype == dtype
    assert torch.equal(back.view(torch.int16), t.view(torch.int16))  # bit for bit
    raw = np.concatenate(list(w.chunks(max_bytes=64)))
    assert raw.tobytes() == t.view(torch.int16).numpy().tobytes()


def test_bfloat16_in_torch_checkpoint(tmp_path):
    t = torch.randn(4, 5).to(torch.bfloat16)
    path = tmp_path / "bf16.pt"
    torch.save({"fc.weight": t}, path)
    w = weightkit.open(path)["fc.weight"]
    assert w.dtype == "bfloat16"
    np.testing.assert_array_equal(w.numpy(), t.float().numpy())
    assert w.torch().dtype == torch.bfloat16 and torch.equal(w.torch(), t)


def test_legacy_torch_save_format(tmp_path):
    model = nn.Sequential(nn.Linear(3, 2))
    path = tmp_path / "legacy.pt"
    torch.save(model.state_dict(), path, _use_new_zipfile_serialization=False)
    ws = weightkit.open(path)
    assert ws.names == ["0.weight", "0.bias"]
    np.testing.assert_array_equal(ws["0.weight"].numpy(), model[0].weight.detach().numpy())


# ---- sharded directories ------------------------------------------------------------------


def _write_shards(tmp_path):
    model = nn.ModuleDict({"embed": nn.Embedding(10, 4), "fc": nn.Linear(4, 3), "out": nn.Linear(3, 2)})
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    # weight and bias of "fc" land in different shards
    shard_of = {"embed.weight": 1, "fc.weight": 1, "fc.bias": 2, "out.weight": 2, "out.bias": 2}
    d = tmp_path / "sharded"
    d.mkdir()
    files = {i: f"model-0000{i}-of-00002.safetensors" for i in (1, 2)}
    for i, fname in files.items():
        save_file({k: v for k, v in state.items() if shard_of[k] == i}, str(d / fname))
    total = sum(v.numel() * v.element_size() for v in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": {k: files[i] for k, i in shard_of.items()}}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    return d, model, state


def test_sharded_safetensors_directory_reads_as_one_set(tmp_path):
    d, model, state = _write_shards(tmp_path)
    ws = weightkit.open(d)
    assert ws.names == list(state)
    for name, t in state.items():
        assert ws[name].shape == tuple(t.shape)
        np.testing.assert_array_equal(ws[name].numpy(), t.numpy())
    # kinds are inferred across shards
    assert ws["fc.weight"].kind == "Linear" and ws["fc.bias"].kind == "Linear"
    assert ws["fc.weight"].axes == ("out_features", "in_features")
    assert ws["embed.weight"].kind == "Embedding"
    assert ws.total_params == sum(p.numel() for p in model.parameters())
    assert weightkit.summary(ws).totals.bytes == sum(t.numel() * t.element_size() for t in state.values())
    # the index file itself is opened the same way through its directory
    assert weightkit.open(str(d)).names == ws.names


def test_sharded_directory_with_a_missing_shard_names_it(tmp_path):
    d, _, _ = _write_shards(tmp_path)
    (d / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(weightkit.WeightkitError, match="model-00002-of-00002.safetensors"):
        weightkit.open(d)


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/etc/hostname", "sub/../../outside.safetensors", 7, ""])
def test_shard_index_cannot_point_outside_its_directory(tmp_path, shard):
    d, _, state = _write_shards(tmp_path)
    save_file({"fc.bias": state["fc.bias"]}, str(tmp_path / "outside.safetensors"))
    index = json.loads((d / "model.safetensors.index.json").read_text())
    index["weight_map"]["fc.bias"] = shard
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(weightkit.WeightkitError, match="not a file name inside the directory") as e:
        weightkit.open(d)
    assert "\n" not in str(e.value)


def test_shards_in_a_subfolder_and_symlinked_shards_are_read(tmp_path):
    d, _, state = _write_shards(tmp_path)
    (d / "part").mkdir()
    (d / "model-00002-of-00002.safetensors").rename(d / "part" / "b.safetensors")
    blob = tmp_path / "blob"  # the Hugging Face cache links shards in a snapshot to blobs elsewhere
    (d / "model-00001-of-00002.safetensors").rename(blob)
    (d / "model-00001-of-00002.safetensors").symlink_to(blob)
    index = json.loads((d / "model.safetensors.index.json").read_text())
    index["weight_map"] = {k: ("part/b.safetensors" if v.startswith("model-00002") else v)
                           for k, v in index["weight_map"].items()}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    ws = weightkit.open(d)
    assert sorted(ws.names) == sorted(state)
    np.testing.assert_array_equal(ws["fc.bias"].numpy(), state["fc.bias"].numpy())


# ---- numpy files, sniffing -----------------------------------------------------------------


def test_single_npy_array(tmp_path):
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    path = tmp_path / "fc_weight.npy"
    np.save(path, arr)
    ws = weightkit.open(path)
    assert len(ws) == 1
    (w,) = list(ws)
    assert w.shape == (3, 4) and w.dtype == "float32" and w.nbytes == 48
    np.testing.assert_array_equal(w.numpy(), arr)
    assert ws.format == "npy"


def test_npz_of_numpy_state_dict_keeps_dtypes(tmp_path):
    state = {"a.weight": np.ones((2, 3), np.float64), "a.bias": np.zeros(2, np.float64),
             "ids": np.arange(4, dtype=np.int32)}
    path = tmp_path / "arrays.npz"
    np.savez(path, **state)
    ws = weightkit.open(path)
    assert ws.names == list(state)
    for k, v in state.items():
        assert ws[k].dtype == v.dtype.name
        np.testing.assert_array_equal(ws[k].numpy(), v)
    assert ws["a.weight"].kind == "Linear"


def test_safetensors_renamed_to_bin_is_sniffed_by_content(tmp_path):
    state = {"fc.weight": torch.randn(2, 3), "fc.bias": torch.randn(2)}
    path = tmp_path / "pytorch_model.bin"
    save_file(state, str(path))
    ws = weightkit.open(path)
    assert ws.format == "safetensors"
    assert ws.names == ["fc.weight", "fc.bias"]
    np.testing.assert_array_equal(ws["fc.weight"].numpy(), state["fc.weight"].numpy())


def test_torch_checkpoint_with_odd_suffix_is_sniffed_by_content(tmp_path):
    path = tmp_path / "weights.data"
    torch.save({"fc.weight": torch.randn(2, 3)}, path)
    ws = weightkit.open(path)
    assert ws.format == "torch" and ws.names == ["fc.weight"]


def test_open_accepts_str_and_pathlike(tmp_path, small_net_file):
    path, state = small_net_file
    assert weightkit.open(str(path)).names == weightkit.open(path).names == list(state)


def test_in_memory_state_dict(small_net):
    state = small_net.state_dict()
    ws = weightkit.open(state)
    assert ws.names == list(state)
    assert ws["features.0.weight"].kind == "Conv2d"
    assert ws["features.1.running_mean"].is_buffer
    np.testing.assert_array_equal(ws["head.weight"].numpy(), state["head.weight"].numpy())


def test_object_npy_is_refused_as_unsafe(tmp_path):
    path = tmp_path / "objects.npy"
    np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(weightkit.UnsafeCheckpointError, match="object"):
        weightkit.open(path)


def test_object_npz_is_refused_as_unsafe(tmp_path):
    path = tmp_path / "objects.npz"
    np.savez(path, w=np.zeros(3), meta=np.array([{"a": 1}], dtype=object))
    with pytest.raises(weightkit.UnsafeCheckpointError):
        weightkit.open(path)


def test_a_shard_index_file_opens_the_shards_it_lists(tmp_path):
    d, _, state = _write_shards(tmp_path)
    ws = weightkit.open(d / "model.safetensors.index.json")
    assert ws.names == list(state) and ws.format == "safetensors-sharded"
    np.testing.assert_array_equal(ws["fc.bias"].numpy(), state["fc.bias"].numpy())
    assert ws.metadata["index"] == "model.safetensors.index.json"
    index = json.loads((d / "model.safetensors.index.json").read_text())
    index["weight_map"]["fc.bias"] = "../elsewhere.safetensors"
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(weightkit.WeightkitError, match="not a file name inside the directory"):
        weightkit.open(d / "model.safetensors.index.json")


@pytest.mark.parametrize("index", ['{"weight_map": {}}', '{"weight_map": []}', '{"weight_map": {"a": [{"x": 1}]}}',
                                   '{"weight_map": {"a": [["m.weights.h5"]]}}', '{"weight_map": {"a": null}}',
                                   '{"weight_map": 5, "metadata": {}}', '{"weight_map": {"a": "m.weights.json"}}'])
def test_a_broken_shard_index_is_one_clear_error(tmp_path, index):
    path = tmp_path / "m.weights.json"
    path.write_text(index)
    with pytest.raises(weightkit.WeightkitError, match="m.weights.json") as e:
        weightkit.open(path)
    assert "\n" not in str(e.value)

"""Fidelity harness: how often weightkit's kind and output axis for a tensor *in a file* match
the truth of the live module that owns it.

Builds models with random initialisation (no download): every ``torch.nn`` layer with weights,
every torchvision architecture and a seeded sample of timm's (when installed; built on the meta
device, so size costs nothing, and written as safetensors from their shapes), Hugging Face
transformers families from small configs (when transformers is installed), and Keras 3 layers
and applications (``weights=None``). Each is saved as its users save it
(a torch state dict, safetensors, ``save_pretrained``, ``.keras``), opened with weightkit, and
every tensor compared with the class of the module that owns it (and with the output axis the
layer table gives for that class). Prints right / wrong / unknown per family.

    python bench/fidelity.py [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")
warnings.filterwarnings("ignore")

import weightkit  # noqa: E402

# classes a file cannot tell apart, and the kind weightkit gives for each (same axes)
SAME = {"BatchNorm1d": "BatchNorm", "BatchNorm2d": "BatchNorm", "BatchNorm3d": "BatchNorm", "SyncBatchNorm": "BatchNorm",
        "InstanceNorm1d": "InstanceNorm", "InstanceNorm2d": "InstanceNorm", "InstanceNorm3d": "InstanceNorm",
        "LazyLinear": "Linear", "EmbeddingBag": "Embedding", "NonDynamicallyQuantizableLinear": "Linear"}


def canon(kind: str) -> str:
    kind = SAME.get(kind, kind)
    if kind.endswith("RMSNorm") or kind == "T5LayerNorm":  # Hugging Face's own RMS norm classes
        return "RMSNorm"
    return "InstanceNorm" if kind.startswith("InstanceNorm") else kind


def judge(file_ws, live_ws, family: str, tally: dict, wrongs: list, accept=None) -> None:
    """Compare every tensor of a file with the live model's weight of the same name."""
    live = {}
    for w in live_ws:
        live[w.name] = w
        for a in w.shared_with:
            live[a] = w
    known = {canon(k) for k in weightkit.layers.list_kinds()}
    for w in file_ws:
        truth = live.get(w.name)
        if truth is None:
            continue
        t = tally[family]
        exp = canon(truth.kind)
        if exp not in known:  # a parameter a model's own module holds (ConvNeXt's layer_scale): no layer kind to get right
            t["custom"] += 1
            continue
        if w.kind == "unknown":
            t["unknown"] += 1
        elif canon(w.kind) == exp or (accept and accept(w, truth)):
            t["right"] += 1
        else:
            t["wrong"] += 1
            wrongs.append((family, w.name, truth.kind, w.kind, w.kind_evidence))
        want = truth.out_axis
        if w.ndim >= 2 and want is not None and truth.kind != "unknown":
            t["axis_defined"] += 1
            t["axis_right"] += int(w.out_axis == want)


# --- torch.nn ------------------------------------------------------------------------------

def torch_layers():
    import torch.nn as nn

    return {
        "linear": nn.ModuleDict({"fc": nn.Linear(12, 8), "proj": nn.Linear(8, 8, bias=False),
                                 "bilinear": nn.Bilinear(4, 5, 6)}),
        "conv": nn.Sequential(nn.Conv1d(3, 8, 3), nn.Conv2d(3, 8, 3), nn.Conv3d(3, 8, 3), nn.Conv2d(8, 8, 3, groups=8),
                              nn.Conv2d(8, 16, 1, bias=False)),
        "conv_transpose": nn.ModuleDict({"deconv1": nn.ConvTranspose1d(8, 4, 3), "up_transpose": nn.ConvTranspose2d(8, 4, 3),
                                         "deconv3": nn.ConvTranspose3d(8, 4, 3)}),
        "norms": nn.ModuleDict({"bn1": nn.BatchNorm1d(8), "bn2": nn.BatchNorm2d(8), "bn3": nn.BatchNorm3d(8),
                                "ln": nn.LayerNorm(8), "ln2d": nn.LayerNorm((4, 5)), "norm": nn.RMSNorm(8),
                                "gn": nn.GroupNorm(2, 8), "in1": nn.InstanceNorm1d(8, affine=True),
                                "in2": nn.InstanceNorm2d(8, affine=True, track_running_stats=True),
                                "n1": nn.LayerNorm(8), "post_norm": nn.LayerNorm(8)}),
        "rnn": nn.ModuleDict({"lstm": nn.LSTM(6, 8, num_layers=2, bidirectional=True), "gru": nn.GRU(6, 8),
                              "rnn": nn.RNN(6, 8), "lstm_proj": nn.LSTM(6, 8, proj_size=4),
                              "lstm_cell": nn.LSTMCell(6, 8), "gru_cell": nn.GRUCell(6, 8), "rnn_cell": nn.RNNCell(6, 8)}),
        "embedding": nn.ModuleDict({"embedding": nn.Embedding(100, 16), "embeddings": nn.EmbeddingBag(50, 16),
                                    "proj": nn.Linear(16, 16)}),
        "activation": nn.ModuleDict({"prelu1": nn.PReLU(8), "act_prelu": nn.PReLU()}),
        "attention": nn.ModuleDict({"attn": nn.MultiheadAttention(16, 4), "xattn": nn.MultiheadAttention(16, 4, kdim=8, vdim=8)}),
        "transformer": nn.Transformer(d_model=16, nhead=2, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=32),
    }


def module_kinds(model):
    """A live torch model opened by weightkit: kinds from the owning module's class."""
    return weightkit.open(model)


def run_torch(tally, wrongs, tmp: Path, quick: bool) -> None:
    import torch
    from safetensors.torch import save_file

    for family, model in torch_layers().items():
        live = module_kinds(model)
        sd = {k: v.contiguous() for k, v in model.state_dict().items()}
        path = tmp / f"{family}.pt"
        torch.save(sd, path)
        judge(weightkit.open(path), live, f"torch.nn {family}", tally, wrongs)
        if not quick:
            st = tmp / f"{family}.safetensors"
            save_file({k: v.clone() for k, v in sd.items()}, st)
            judge(weightkit.open(st), live, f"torch.nn {family} (safetensors)", tally, wrongs)


# --- torchvision and timm (every architecture / a seeded sample) ----------------------------

_ST_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64", "int64": "I64",
              "int32": "I32", "uint8": "U8", "int8": "I8", "bool": "BOOL"}


def shapes_file(model, path: Path) -> Path:
    """A safetensors file of the model's state dict as its names, dtypes and shapes give it, the
    data a sparse hole of zeros: kinds come from names, shapes and siblings, not values, and a
    model on the meta device has no values to write."""
    import struct

    header, at = {}, 0
    for name, t in model.state_dict(keep_vars=True).items():
        size = t.numel() * t.element_size()
        header[name] = {"dtype": _ST_DTYPES[str(t.dtype).removeprefix("torch.")], "shape": list(t.shape),
                        "data_offsets": [at, at + size]}
        at += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + at)
    return path


def _build(make):
    """The model on the meta device when its constructor allows (nothing allocated), else on the CPU."""
    import torch

    try:
        with torch.device("meta"):
            return make()
    except (NotImplementedError, RuntimeError):  # constructors that copy values (regnet's init)
        return make()


def _vision_imports():
    # PyPI's torchvision is built against its own torch; beside another build its C++ operators do
    # not load and registering their meta kernels fails at import. The model definitions are plain
    # Python and need neither: skip that registration module.
    import types

    sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))


def run_vision(tally, wrongs, tmp: Path, quick: bool, *, library: str) -> None:
    import importlib.util
    import random

    if importlib.util.find_spec(library) is None:
        print(f"{library} not installed: its architectures skipped", file=sys.stderr)
        return
    _vision_imports()
    if library == "torchvision":
        import inspect

        import torchvision

        names = torchvision.models.list_models()

        def make(name):
            builder = torchvision.models.get_model_builder(name)
            # detection and segmentation builders fetch backbone weights unless told not to
            extra = {"weights_backbone": None} if "weights_backbone" in inspect.signature(builder).parameters else {}
            return builder(weights=None, **extra)
    else:
        import timm

        names = sorted(random.Random(0).sample(timm.list_models(), 120))

        def make(name):
            return timm.create_model(name, pretrained=False)
    if quick:
        names = names[:8]
    for name in names:
        model = _build(lambda name=name: make(name)).eval()
        family = f"{library} {type(model).__name__}"
        judge(weightkit.open(shapes_file(model, tmp / "vision.safetensors")), weightkit.open(model), family,
              tally, wrongs)
        del model


# --- Hugging Face transformers ---------------------------------------------------------------

def hf_models():
    # a torchvision wheel built for another torch breaks transformers' model imports; these
    # families do not need it
    sys.modules.setdefault("torchvision", None)  # type: ignore[arg-type]
    import transformers as T

    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=99)
    llama = dict(small, num_key_value_heads=2, max_position_embeddings=64)
    return {
        "BERT": lambda: T.BertForMaskedLM(T.BertConfig(**small)),
        "RoBERTa": lambda: T.RobertaForMaskedLM(T.RobertaConfig(**small)),
        "GPT-2": lambda: T.GPT2LMHeadModel(T.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=99, n_positions=64)),
        "LLaMA": lambda: T.LlamaForCausalLM(T.LlamaConfig(**llama)),
        "Mistral": lambda: T.MistralForCausalLM(T.MistralConfig(**llama)),
        "Qwen2": lambda: T.Qwen2ForCausalLM(T.Qwen2Config(**llama)),
        "T5": lambda: T.T5ForConditionalGeneration(T.T5Config(d_model=32, d_ff=64, num_layers=2, num_heads=4, d_kv=8,
                                                              vocab_size=99)),
        "ViT": lambda: T.ViTModel(T.ViTConfig(**{**small, "image_size": 32, "patch_size": 8})),
        "CLIP": lambda: T.CLIPModel(T.CLIPConfig(
            text_config=dict(small, max_position_embeddings=32),
            vision_config=dict(small, image_size=32, patch_size=8), projection_dim=16)),
        "Whisper": lambda: T.WhisperForConditionalGeneration(T.WhisperConfig(
            d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4,
            encoder_ffn_dim=64, decoder_ffn_dim=64, vocab_size=99, num_mel_bins=16, max_source_positions=32,
            max_target_positions=32, pad_token_id=1, bos_token_id=2, eos_token_id=3, decoder_start_token_id=2)),
    }


def run_hf(tally, wrongs, tmp: Path, quick: bool) -> None:
    import importlib.util

    if importlib.util.find_spec("transformers") is None:
        print("transformers not installed: Hugging Face families skipped", file=sys.stderr)
        return
    for family, build in hf_models().items():
        if quick and family not in ("BERT", "GPT-2", "LLaMA"):
            continue
        model = build().eval()
        live = weightkit.open(model)
        out = tmp / family
        model.save_pretrained(out)
        judge(weightkit.open(out), live, f"transformers {family}", tally, wrongs)


# --- Keras 3 -------------------------------------------------------------------------------

def keras_models(quick: bool):
    import keras
    from keras import layers as L

    zoo = {
        "layers": lambda: keras.Sequential([
            keras.Input((16, 16, 3)), L.Conv2D(8, 3), L.BatchNormalization(), L.DepthwiseConv2D(3),
            L.SeparableConv2D(8, 3), L.Conv2DTranspose(4, 3), L.LayerNormalization(), L.GroupNormalization(2),
            L.PReLU(), L.Reshape((-1, 4)), L.Conv1D(6, 3), L.Bidirectional(L.LSTM(5, return_sequences=True)),
            L.GRU(4, return_sequences=True), L.SimpleRNN(3, return_sequences=True),
            L.MultiHeadAttention(2, 3) if False else L.Identity(), L.Flatten(), L.Dense(7)]),
        "embedding": lambda: keras.Sequential([keras.Input((5,), dtype="int32"), L.Embedding(40, 8), L.Flatten(),
                                               L.Dense(3)]),
    }
    if not quick:
        apps = keras.applications
        zoo.update({
            "MobileNetV2": lambda: apps.MobileNetV2(weights=None, input_shape=(32, 32, 3), classes=10),
            "ResNet50": lambda: apps.ResNet50(weights=None, input_shape=(32, 32, 3), classes=10),
            "EfficientNetB0": lambda: apps.EfficientNetB0(weights=None, input_shape=(32, 32, 3), classes=10),
            "DenseNet121": lambda: apps.DenseNet121(weights=None, input_shape=(32, 32, 3), classes=10),
            "ConvNeXtTiny": lambda: apps.ConvNeXtTiny(weights=None, input_shape=(32, 32, 3), classes=10),
        })
    return zoo


def run_keras(tally, wrongs, tmp: Path, quick: bool) -> None:
    for family, build in keras_models(quick).items():
        model = build()
        live = weightkit.open(model)
        for how in ("keras", "weights.h5"):
            path = tmp / f"{family}.{how}"
            model.save(path) if how == "keras" else model.save_weights(path)
            judge(weightkit.open(path), live, f"keras {family} ({how})", tally, wrongs)


def measure(*, quick: bool = False, parts=("torch", "torchvision", "timm", "hf", "keras")) -> tuple[dict, list]:
    tally: dict = collections.defaultdict(collections.Counter)
    wrongs: list = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for part, fn in (("torch", run_torch), ("torchvision", lambda *a: run_vision(*a, library="torchvision")),
                         ("timm", lambda *a: run_vision(*a, library="timm")), ("hf", run_hf), ("keras", run_keras)):
            if part in parts:
                fn(tally, wrongs, tmp, quick)
    return tally, wrongs


def table(tally: dict) -> str:
    lines = ["| family | tensors | right | wrong | unknown | out axis right | owned by a model's own module |",
             "|---|---|---|---|---|---|---|"]
    total: collections.Counter = collections.Counter()
    for fam, t in sorted(tally.items()):
        n = t["right"] + t["wrong"] + t["unknown"]
        total.update(t)
        axis = f"{t['axis_right']}/{t['axis_defined']}" if t["axis_defined"] else "-"
        lines.append(f"| {fam} | {n} | {t['right']} | {t['wrong']} | {t['unknown']} | {axis} | {t['custom']} |")
    n = total["right"] + total["wrong"] + total["unknown"]
    lines.append(f"| **all** | {n} | {total['right']} ({total['right'] / n:.1%}) | {total['wrong']} ({total['wrong'] / n:.1%}) "
                 f"| {total['unknown']} ({total['unknown'] / n:.1%}) | {total['axis_right']}/{total['axis_defined']} "
                 f"({total['axis_right'] / max(1, total['axis_defined']):.1%}) | {total['custom']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json")
    ap.add_argument("--parts", default="torch,torchvision,timm,hf,keras", help="comma-separated")
    args = ap.parse_args()
    tally, wrongs = measure(quick=args.quick, parts=tuple(args.parts.split(",")))
    print(table(tally))
    for w in wrongs:
        print("WRONG", *w)
    if args.json:
        Path(args.json).write_text(json.dumps({"tally": tally, "wrong": wrongs}, indent=1))


if __name__ == "__main__":
    main()

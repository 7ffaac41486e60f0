"""What follows each layer, as far as the evidence shows it, for the rules that depend on it.

Evidence, strongest first: a live torch module's traced graph (``torch.fx``), a live Keras
model's own config (Sequential order or functional inbound nodes), then the structure a file's
names prove: consecutive children of a ``torch.nn.Sequential`` (``block.3`` runs straight into
``block.4``; an activation would sit at an index of its own) and torchvision/timm ResNet blocks
(``conv1`` → ``bn1``). Anything else is unknown, and the rules that need it stay silent.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

NORM = re.compile(r"(Batch|Layer|Group|Instance|RMS|SyncBatch)Norm")
# Ops through which a normalisation further on still undoes a layer's scale: positively
# homogeneous activations, dropout, pooling, padding and reshapes.
_PASS_MODULES = {"ReLU", "ReLU6", "LeakyReLU", "PReLU", "ELU", "GELU", "SiLU", "Mish", "Dropout", "Dropout1d",
                 "Dropout2d", "Dropout3d", "AlphaDropout", "Identity", "Flatten", "MaxPool1d", "MaxPool2d",
                 "MaxPool3d", "AvgPool1d", "AvgPool2d", "AvgPool3d", "AdaptiveAvgPool1d", "AdaptiveAvgPool2d",
                 "AdaptiveMaxPool2d", "ZeroPad1d", "ZeroPad2d", "ConstantPad1d", "ConstantPad2d",
                 "Activation", "MaxPooling1D", "MaxPooling2D", "AveragePooling1D", "AveragePooling2D",
                 "SpatialDropout1D", "SpatialDropout2D", "ZeroPadding1D", "ZeroPadding2D", "Reshape"}
_PASS_FUNCTIONS = {"relu", "relu_", "relu6", "leaky_relu", "gelu", "silu", "elu", "mish", "dropout", "flatten",
                   "max_pool1d", "max_pool2d", "avg_pool1d", "avg_pool2d", "pad", "view", "reshape", "contiguous"}


def is_norm(kind: str) -> bool:
    return bool(NORM.search(kind or "")) or kind in ("BatchNormalization", "LayerNormalization", "GroupNormalization")


class Flow:
    """``edges[layer]``: the layers (or ``"op:<name>"`` / ``"<output>"``) its output feeds directly.

    ``kinds`` gives each node's class name; ``known`` is False when no evidence was found, and
    ``complete`` is True only for a whole traced graph (a layer missing from it is never reached).
    """

    def __init__(self, edges: dict[str, list[str]], kinds: dict[str, str], *, complete: bool, source: str):
        self.edges, self.kinds, self.complete, self.source = edges, kinds, complete, source
        self.called: set[str] | None = None  # traced graphs: the modules the forward pass calls
        self.attrs: set[str] = set()  # and the parameters/buffers it reads directly

    def direct_norm(self, layer: str) -> str | None:
        """The normalisation layer that takes this layer's output, and nothing else does."""
        nxt = self.edges.get(layer)
        if nxt is None or len(nxt) != 1 or not is_norm(self.kinds.get(nxt[0], "")):
            return None
        return nxt[0]

    def normalised_after(self, layer: str, depth: int = 6) -> bool | None:
        """True when every path from this layer reaches a normalisation through scale-preserving
        ops only; False when the graph shows a path that does not; None when unknown."""
        if layer not in self.edges:
            return None
        frontier, seen = list(self.edges[layer]), set()
        for _ in range(depth):
            nxt = []
            for node in frontier:
                if node in seen:
                    continue
                seen.add(node)
                kind = self.kinds.get(node, "")
                if is_norm(kind):
                    continue
                if kind in _PASS_MODULES or kind in _PASS_FUNCTIONS:
                    if node not in self.edges:
                        return None if not self.complete else False
                    nxt += self.edges[node]
                    continue
                return False if self.complete else None
            if not nxt:
                return True
            frontier = nxt
        return None


def _natural_children(names: Iterable[str]) -> dict[str, dict[int, str]]:
    out: dict[str, dict[int, str]] = {}
    for name in names:
        parent, _, leaf = name.rpartition(".")
        if leaf.isdigit():
            out.setdefault(parent, {})[int(leaf)] = name
    return out


def from_names(layers: dict[str, str]) -> Flow:
    """What a file's layer names prove (``layers``: layer -> kind, in file order)."""
    edges: dict[str, list[str]] = {}
    for children in _natural_children(layers).values():
        for i, name in children.items():
            if i + 1 in children:
                edges[name] = [children[i + 1]]
    for name in layers:
        parent, dot, leaf = name.rpartition(".")
        m = re.fullmatch(r"conv(\d+)", leaf)
        norm = f"{parent}{dot}bn{m.group(1)}" if m else None
        if norm in layers and is_norm(layers[norm]):
            edges[name] = [norm]  # torchvision / timm ResNet blocks: conv{n} -> bn{n} -> act
    return Flow(edges, dict(layers), complete=False, source="layer names")


def from_torch(module: Any) -> Flow | None:
    """The traced graph of a live torch module; None when it cannot be traced symbolically."""
    import torch.fx

    try:
        gm = torch.fx.symbolic_trace(module)
    except Exception:  # noqa: BLE001 - data-dependent control flow and the like: no graph, no guesses
        return None
    mods = dict(module.named_modules())
    names: dict[Any, str] = {}
    kinds: dict[str, str] = {}
    attrs: set[str] = set()
    for node in gm.graph.nodes:
        if node.op == "call_module":
            names[node] = node.target
            kinds[node.target] = type(mods[node.target]).__name__ if node.target in mods else ""
        elif node.op in ("call_function", "call_method"):
            names[node] = f"op:{node.name}"
            kinds[names[node]] = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
        elif node.op == "get_attr":
            names[node] = f"attr:{node.target}"
            attrs.add(node.target)
        else:
            names[node] = f"<{node.op}:{node.name}>"
    edges: dict[str, list[str]] = {}
    for node, name in names.items():
        edges.setdefault(name, []).extend(names[u] for u in node.users)  # a module called twice: all its uses
    flow = Flow(edges, kinds, complete=True, source="traced graph")
    flow.called = {n for n in kinds if not n.startswith("op:")}
    flow.attrs = attrs
    return flow


def _keras_inbound(layer_cfg: dict) -> list[str]:
    """Names of the layers feeding a functional Keras layer (Keras 2 and Keras 3 configs)."""
    found: list[str] = []

    def walk(x):
        if isinstance(x, dict):
            hist = x.get("config", {}).get("keras_history") if isinstance(x.get("config"), dict) else None
            if hist:
                found.append(hist[0])
                return
            for v in x.values():
                walk(v)
        elif isinstance(x, (list, tuple)):
            if len(x) >= 3 and isinstance(x[0], str) and isinstance(x[1], int):  # Keras 2 [name, node, tensor, kw]
                found.append(x[0])
                return
            for v in x:
                walk(v)

    walk(layer_cfg.get("inbound_nodes", []))
    return found


def _keras_activation(act: Any) -> str:
    """"Activation" (scale-preserving) for ReLU-like activations, else the activation's name."""
    return "Activation" if act in ("relu", "elu", "gelu", "swish", "silu", "linear", "leaky_relu") else str(act)


def _file_names(paths: list[str]) -> dict[str, str]:
    """Config layer name -> the file's layer path, where exactly one path begins or ends with it."""
    found: dict[str, set[str]] = {}
    for path in paths:
        parts = path.split("/")
        for part in {parts[0], parts[-1]}:
            found.setdefault(part, set()).add(path)
    return {name: next(iter(p)) for name, p in found.items() if len(p) == 1}


def from_keras_config(config: dict | list, *, prefix: str = "", names_in_file: list[str] | None = None) -> Flow:
    """The graph a Keras model config describes; a layer with an activation of its own feeds it.
    ``names_in_file``: the layer paths of a file holding that config (``model/c1`` in a ``.keras``
    file, ``c1/c1`` in a Keras 2 ``.h5``), each config layer named by the one path it begins or
    ends with."""
    layers = config.get("layers", config) if isinstance(config, dict) else config
    edges: dict[str, list[str]] = {}
    kinds: dict[str, str] = {}
    names = []
    where = _file_names(names_in_file) if names_in_file is not None else {}
    for cfg in layers:
        raw = cfg.get("config", {}).get("name", cfg.get("name", ""))
        name = where.get(raw, prefix + raw)
        names.append(name)
        kinds[name] = cfg.get("class_name", "")
        if kinds[name] == "Activation":
            kinds[name] = _keras_activation(cfg.get("config", {}).get("activation"))
        act = cfg.get("config", {}).get("activation")
        if cfg.get("class_name") != "Activation" and isinstance(act, str) and act != "linear":
            kinds[name + ":act"] = act
    functional = any("inbound_nodes" in cfg for cfg in layers)
    if functional:
        for cfg, name in zip(layers, names):
            for src in _keras_inbound(cfg):
                edges.setdefault(where.get(src, prefix + src), []).append(name)
    else:
        for a, b in zip(names, names[1:]):
            edges[a] = [b]
    for name in names:  # Conv2D(activation="relu"): the activation sits between the layer and its consumers
        if name + ":act" in kinds:
            act = kinds.pop(name + ":act")
            edges[f"{name}:act"] = edges.get(name, [])
            kinds[f"{name}:act"] = _keras_activation(act)
            edges[name] = [f"{name}:act"]
    return Flow(edges, kinds, complete=True, source="model config")

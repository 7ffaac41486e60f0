"""The built-in doctor rules: one small function each, registered with :func:`rule`."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Iterator

import numpy as np

from weightkit import _dtypes
from weightkit.analyses.doctor._flow import is_norm
from weightkit.analyses.doctor._registry import Context, Finding, Severity, rule
from weightkit.layers import out_axis

SCALE_FACTOR = 10.0  # std more than this many times above 1/sqrt(fan_in) is "exploding"
VANISH_FACTOR = 100.0  # std more than this many times below it is "vanishing"
_LIST = 8  # names or indices listed in a message before "…"


def _names(items) -> str:
    items = list(items)
    return ", ".join(map(str, items[:_LIST])) + (f" … ({len(items)} in all)" if len(items) > _LIST else "")


def _output_axis(w) -> int | None:
    """Axis of a weight's output units, filters or gates, from the layer table's tokens (None when
    unknown, and for embedding rows, attention heads and q/k/v blocks, which are not units)."""
    return out_axis(w.axis_tokens, among=("out", "out_per_group", "gates")) if w.ndim >= 2 else None


def _fan_in(w) -> int | None:
    """Inputs feeding each output unit: all axes but the output one (Linear, Conv, Dense…)."""
    out = _output_axis(w)
    if out is None or w.ndim < 2 or w.kind.startswith(("Embedding", "LSTM", "GRU", "RNN")):
        return None
    if "unknown" in w.axis_tokens:
        return None
    return math.prod(d for i, d in enumerate(w.shape) if i != out)


def _matrices(ctx: Context):
    """Weights with a known output axis, as (weight, rows) with one row per output unit."""
    for w in ctx.ws:
        if w.is_buffer or w.ndim < 2 or not w.numel or not _dtypes.is_floating(w.dtype):
            continue  # an empty tensor has no units to check
        axis = _output_axis(w)
        if axis is None:
            continue
        data = w.numpy()
        yield w, np.moveaxis(data, axis, 0).reshape(data.shape[axis], -1)


@rule("nan-inf", title="NaN or Inf in a weight or buffer")
def nan_inf(ctx: Context) -> Iterator[Finding]:
    for t in ctx.stats.tensors:
        bad = t.nan + t.posinf + t.neginf
        if bad:
            yield Finding(
                "nan-inf", "error", [t.name],
                f"{t.name} holds {t.nan} NaN, {t.posinf} +Inf and {t.neginf} -Inf values out of {t.count}.",
                "Find the step where training diverged, lower the learning rate or clip gradients, and "
                "restore this tensor from an earlier checkpoint.",
                {"nan": t.nan, "posinf": t.posinf, "neginf": t.neginf, "count": t.count},
            )


@rule("all-zero", title="A tensor that is entirely zero")
def all_zero(ctx: Context) -> Iterator[Finding]:
    by_name = {w.name: w for w in ctx.ws}
    for t in ctx.stats.tensors:
        w = by_name[t.name]
        if t.error or not t.count or t.zeros != t.count or w.is_buffer or not _dtypes.is_floating(t.dtype):
            continue
        if w.ndim < 2:
            continue  # biases and shifts start at zero: the untrained-layer rule judges them against the rest
        yield Finding(
            "all-zero", "warning", [t.name],
            f"{t.name} ({w.kind} {w.role}, {t.count} values) is entirely zero; the layer outputs nothing and "
            "its inputs get no gradient.",
            "Check that the weights were loaded (load_state_dict with strict=True) and initialised, "
            "and that this layer is connected to the loss.",
        )


@rule("dead-units", title="Output units or filters whose whole row is zero")
def dead_units(ctx: Context) -> Iterator[Finding]:
    for w, rows in _matrices(ctx):
        dead = np.flatnonzero(~rows.any(axis=1))
        if 0 < dead.size < rows.shape[0]:
            yield Finding(
                "dead-units", "warning", [w.name],
                f"{w.name}: {dead.size} of {rows.shape[0]} output units ({w.axes[_output_axis(w)]}) have all-zero "
                f"weights (indices {_names(dead)}); they are dead unless their bias carries them.",
                "Re-initialise them, or prune them deliberately; if pruning was not intended, look for too "
                "strong L1 regularisation or dying ReLUs.",
                {"dead": dead.tolist(), "units": int(rows.shape[0])},
            )


def _duplicate_rows(rows: np.ndarray) -> tuple[int, int]:
    """``(rows equal to an earlier row, groups of equal rows)``: candidates by a row hash, then
    compared exactly (as values: -0.0 equals 0.0)."""
    from weightkit.analyses.doctor._kernel import row_hashes  # numba: compiled on first use, not on import

    _, inverse, counts = np.unique(row_hashes(rows), return_inverse=True, return_counts=True)
    dup = groups = 0
    for h in np.flatnonzero(counts > 1):
        members = np.flatnonzero(inverse == h)
        distinct: list[np.ndarray] = []  # one representative per group of equal rows under this hash
        sizes: list[int] = []
        for m in members:
            for k, rep in enumerate(distinct):
                if np.array_equal(rows[m], rep):
                    sizes[k] += 1
                    break
            else:
                distinct.append(rows[m])
                sizes.append(1)
        dup += sum(n - 1 for n in sizes)
        groups += sum(n > 1 for n in sizes)
    return dup, groups


@rule("identical-rows", title="Output units with identical weights (symmetry never broken)")
def identical_rows(ctx: Context) -> Iterator[Finding]:
    for w, rows in _matrices(ctx):
        if rows.shape[0] < 2 or rows.shape[1] < 2:
            continue
        nonzero = rows[rows.any(axis=1)]
        if nonzero.shape[0] < 2:
            continue
        dup, groups = _duplicate_rows(nonzero)
        if dup:
            yield Finding(
                "identical-rows", "warning", [w.name],
                f"{w.name}: {dup + groups} of {nonzero.shape[0]} output units share identical "
                f"weights with another unit (in {groups} groups); identical units get identical "
                "gradients and never become different.",
                "Initialise with a random scheme (torch.nn.init.kaiming_uniform_, or the layer's "
                "reset_parameters()), never a constant.",
                {"duplicate_units": dup, "groups": groups},
            )


EXTREME = 1000.0  # this far from the reference, no layer is healthy whatever follows it


def _scale_reason(ctx: Context, w) -> tuple[Severity | None, str]:
    """How much a weight's scale matters, from what follows its layer: a normalisation after it
    (through ReLU-like activations, dropout or pooling) undoes any scale; only a live model's
    graph shows that none does."""
    after = ctx.flow.normalised_after(w.layer)
    if after:
        return None, ""
    if after is False and ctx.live:
        return "warning", f"the {ctx.flow.source} shows no normalisation after this layer"
    return "info", "a file does not show whether a normalisation follows this layer, which would make its scale harmless"


@rule("scale", title="Weight scale far from its initialisation range for the fan-in",
      knows="file: the scale of each weight; only a live model's graph (or a model config) shows whether a "
            "normalisation follows, so on a file it is a note unless the scale is extreme")
def scale(ctx: Context) -> Iterator[Finding]:
    by_name = {t.name: t for t in ctx.stats.tensors}
    for w in ctx.ws:
        fan_in = _fan_in(w) if not w.is_buffer else None
        t = by_name.get(w.name)
        if not fan_in or t is None or not t.std or t.zeros == t.count:
            continue
        ref = 1.0 / math.sqrt(fan_in)
        ratio = t.std / ref
        if ratio <= SCALE_FACTOR and ratio >= 1.0 / VANISH_FACTOR:
            continue
        big = ratio > SCALE_FACTOR
        severity, why = _scale_reason(ctx, w)
        if (ratio >= EXTREME or ratio <= 1.0 / EXTREME) and ctx.flow.normalised_after(w.layer) is not True:
            severity, why = "warning", f"beyond {EXTREME:g}x no initialisation or normalisation explains it"
        if severity is None:
            continue
        if big:
            fix = ("Lower the learning rate or add weight decay/normalisation" if ctx.live else
                   "If the model's outputs overflow, check the layers after this one for a normalisation; "
                   "a healthy published model often sits this far from its initial scale")
        else:
            fix = "Check the initialisation (Kaiming or Xavier for this fan-in) and for too strong weight decay"
        yield Finding(
            "scale", severity, [w.name],
            f"{w.name}: std {t.std:.3g} is {ratio if big else 1 / ratio:.3g}x {'above' if big else 'below'} "
            f"1/sqrt(fan_in) = {ref:.3g} for fan-in {fan_in} (threshold: {SCALE_FACTOR:g}x above, "
            f"{VANISH_FACTOR:g}x below): {'exploding' if big else 'vanishing'} weights; {why}.",
            fix,
            {"std": t.std, "reference": ref, "fan_in": fan_in, "ratio": ratio, "evidence": ctx.flow.source},
        )


_VAR_ROLES = ("running_var", "moving_variance")
_MEAN_ROLES = ("running_mean", "moving_mean")
DEAD_VAR = 1e-12  # a channel whose running variance is below this had (almost) constant input


def _batchnorms(ctx: Context):
    """(layer, roles, mean, var) for each layer with running statistics."""
    for layer, weights in ctx.ws.layers().items():
        roles = {w.role: w for w in weights}
        var = next((roles[r] for r in _VAR_ROLES if r in roles), None)
        if var is not None and var.numel and _dtypes.is_floating(var.dtype):
            yield layer, roles, next((roles[r] for r in _MEAN_ROLES if r in roles), None), var


@rule("batchnorm-variance", title="BatchNorm running variance below zero",
      knows="file and live model alike: the running statistics are stored")
def batchnorm_variance(ctx: Context) -> Iterator[Finding]:
    stats = {t.name: t for t in ctx.stats.tensors}
    for _, _, _, var in _batchnorms(ctx):
        vs = stats.get(var.name)
        if vs and vs.min is not None and vs.min < 0:
            yield Finding(
                "batchnorm-variance", "error", [var.name],
                f"{var.name}: running variance has values < 0 (min {vs.min:.3g}); normalisation divides by "
                "sqrt(var + eps), so outputs blow up or turn NaN.",
                "Recompute the statistics: run the model in train mode over some batches without stepping "
                "the optimizer (or torch.optim.swa_utils.update_bn), then save again.",
                {"min": vs.min},
            )


@rule("batchnorm-untrained", title="BatchNorm running statistics still at their initial values",
      knows="file and live model alike, from the running mean and variance themselves; num_batches_tracked "
            "is not evidence (models converted from Keras or Caffe always store 0)")
def batchnorm_untrained(ctx: Context) -> Iterator[Finding]:
    stats = {t.name: t for t in ctx.stats.tensors}
    for layer, roles, mean, var in _batchnorms(ctx):
        ms, vs = stats.get(mean.name) if mean is not None else None, stats.get(var.name)
        if ms is None or vs is None or not (ms.min == 0 == ms.max and vs.min == 1 == vs.max):
            continue
        severity: Severity = "warning" if ctx.claims_trained else "info"
        yield Finding(
            "batchnorm-untrained", severity, [w.name for w in (mean, var, roles.get("num_batches_tracked")) if w],
            f"{layer}: BatchNorm running statistics are still at their initial values (mean all 0, variance "
            "all 1)" + (" in a checkpoint that says it was trained." if ctx.claims_trained else "."),
            "Make sure the model ran in train mode (model.train()) while training, and that these "
            "buffers were saved (state_dict includes them).",
        )


@rule("batchnorm-dead-channels", title="BatchNorm channels whose input never varied (output a constant)",
      knows="file and live model alike, from the running variance")
def batchnorm_dead_channels(ctx: Context) -> Iterator[Finding]:
    for layer, _, _, var in _batchnorms(ctx):
        v = var.numpy().astype(np.float64).reshape(-1)
        dead = np.flatnonzero((v >= 0) & (v < DEAD_VAR))
        if 0 < dead.size:
            yield Finding(
                "batchnorm-dead-channels", "warning", [var.name],
                f"{layer}: {dead.size} of {v.size} channels have running variance below {DEAD_VAR:g} (indices "
                f"{_names(dead)}; smallest {v[dead].min():.3g}): their input never varied, so they output a "
                "constant and carry no information.",
                "Look at the layer feeding these channels for dead filters (all-negative before a ReLU); prune "
                "the channels or re-initialise them and fine-tune.",
                {"dead": dead.tolist(), "channels": int(v.size)},
            )


_BIASED = ("Conv", "Linear", "Dense", "DepthwiseConv", "SeparableConv")


@rule("bias-before-norm", title="A layer bias that the BatchNorm right after it cancels",
      knows="where the pairing is known: a live model's traced graph or config, consecutive layers of a "
            "torch Sequential, ResNet blocks (conv{n} -> bn{n}); never from name order alone")
def bias_before_norm(ctx: Context) -> Iterator[Finding]:
    layers: dict[str, tuple[str, dict]] = {}  # layer -> (kind, role -> weight), in model order
    for w in ctx.ws:
        layers.setdefault(w.layer, (w.kind or "", {}))[1][w.role] = w
    hits = []
    for name, (kind, roles) in layers.items():
        bias = roles.get("bias")
        if bias is None or not kind.startswith(_BIASED) or "Transpose" in kind:
            continue
        norm = ctx.flow.direct_norm(name)
        if norm is None or norm not in layers or not layers[norm][0].startswith(("BatchNorm", "SyncBatchNorm")):
            continue  # LayerNorm/GroupNorm subtract a mean over other axes: a per-channel bias survives
        norm_roles = layers[norm][1]
        scale = next((norm_roles[r] for r in ("weight", "gamma", "running_mean", "moving_mean") if r in norm_roles), None)
        if scale is not None and scale.numel == bias.numel:
            hits.append((bias.name, name, norm))
    if hits:
        pairs = ", ".join(f"{layer} → {norm}" for _, layer, norm in hits[:8]) + (" …" if len(hits) > 8 else "")
        yield Finding(
            "bias-before-norm", "info", [b for b, _, _ in hits],
            f"{len(hits)} layer(s) with a bias feed straight into a BatchNorm with as many channels ({pairs}; "
            f"known from the {ctx.flow.source}): BatchNorm subtracts each channel's batch mean, which removes "
            "a constant bias, so it gets (almost) no gradient and does nothing.",
            "Create the layer without a bias (Conv2d(..., bias=False) / Conv2D(..., use_bias=False)); "
            "BatchNorm's own shift (bias / beta) plays its role.",
            details={"pairs": [[layer, norm] for _, layer, norm in hits]},
        )


def _exactly(w, value: float) -> bool:
    data = w.numpy()
    return bool(data.size) and bool(np.all(data == value))


@rule("untrained-layer", title="A layer still exactly at its initial values while the rest has trained",
      knows="file and live model alike, for initial values that are known exactly: normalisation weight 1 "
            "and bias 0, a bias of 0; random initial weights cannot be told apart from trained ones")
def untrained_layer(ctx: Context) -> Iterator[Finding]:
    by_kind: dict[str, list[tuple[str, bool, list[str]]]] = defaultdict(list)  # kind -> (layer, at init, names)
    for layer, weights in ctx.ws.layers().items():
        params = {w.role: w for w in weights if not w.is_buffer and _dtypes.is_floating(w.dtype)}
        kind, candidates = weights[0].kind or "", weights[0].kind_candidates
        # a norm whose exact kind the file leaves open (a `bn1` without running statistics) has
        # the same initial values whichever norm it is
        if is_norm(kind) or (candidates and all(is_norm(c) for c in candidates)):
            scale_w = next((params[r] for r in ("weight", "gamma", "scale") if r in params), None)
            shift = next((params[r] for r in ("bias", "beta") if r in params), None)
            if scale_w is None and shift is None:
                continue
            at_init = (scale_w is None or _exactly(scale_w, 1.0)) and (shift is None or _exactly(shift, 0.0))
            by_kind["norm"].append((layer, at_init, [w.name for w in (scale_w, shift) if w is not None]))
        elif kind.startswith(_BIASED) and "bias" in params and params["bias"].ndim == 1:
            norm = ctx.flow.direct_norm(layer)
            if norm is not None and ctx.flow.kinds.get(norm, "").startswith(("BatchNorm", "SyncBatchNorm")):
                continue  # BatchNorm right after cancels the bias: no gradient reaches it, by design
            by_kind["biased"].append((layer, _exactly(params["bias"], 0.0), [params["bias"].name]))
    for group, entries in by_kind.items():
        untouched = [e for e in entries if e[1]]
        trained = len(entries) - len(untouched)
        # "the rest has trained": most layers of this group moved, and at least three did
        if not untouched or trained < 3 or trained < 2 * len(untouched):
            continue
        what = "weight all 1 and bias all 0" if group == "norm" else "bias all exactly 0"
        for layer, _, names in untouched:
            yield Finding(
                "untrained-layer", "warning", names,
                f"{layer}: still exactly at its initial values ({what}) while {trained} of {len(entries)} "
                f"such layers in this model have trained: it got no gradient, so it is probably not used by "
                "the forward pass, frozen, or was never loaded.",
                "Check that the layer is connected to the loss (or drop it from the model), and that it was "
                "not frozen or skipped when loading the weights.",
                {"trained_like_it": trained, "layers_like_it": len(entries)},
            )


@rule("unused-parameters", title="Parameters the forward pass never reaches", needs="module",
      knows="live torch models only, from the traced graph (torch.fx); silent when the model cannot be traced")
def unused_parameters(ctx: Context) -> Iterator[Finding]:
    flow = ctx.flow
    if flow.called is None:
        return
    used_prefixes = tuple(f"{m}." for m in flow.called if m) + tuple(flow.attrs)
    if "" in flow.called:
        return  # the whole model is one leaf module
    unused = [n for n, p in ctx.module.named_parameters()
              if not n.startswith(used_prefixes) and n not in flow.attrs]
    if unused:
        yield Finding(
            "unused-parameters", "warning", unused,
            f"{len(unused)} parameters are never reached by the traced forward pass: {_names(unused)}; they "
            "get no gradient, never train, and still cost memory and optimizer state.",
            "Remove the unused layers, or wire them into forward(); if they are used only in some modes, "
            "ignore this.",
        )


@rule("unregistered-tensor", title="Tensor attribute that is neither a Parameter nor a buffer", needs="module")
def unregistered_tensor(ctx: Context) -> Iterator[Finding]:
    import torch

    for path, module in ctx.module.named_modules():
        for attr, value in vars(module).items():
            if attr.startswith("_") or not isinstance(value, torch.Tensor):
                continue
            if isinstance(value, torch.nn.Parameter) or not value.is_floating_point():
                continue
            name = f"{path}.{attr}" if path else attr
            yield Finding(
                "unregistered-tensor", "warning", [name],
                f"{name} is a plain torch.Tensor attribute ({tuple(value.shape)}, requires_grad="
                f"{value.requires_grad}) on {type(module).__name__}: parameters() and state_dict() ignore it, "
                "so it never trains, is never saved, and .to(device) does not move it.",
                f"Wrap it: self.{attr} = nn.Parameter(tensor) if it should train, or "
                f"self.register_buffer('{attr}', tensor) if it is state.",
            )


@rule("shared-weights", title="Shared or tied weights")
def shared_weights(ctx: Context) -> Iterator[Finding]:
    for w in ctx.ws:
        if w.shared_with:
            yield Finding(
                "shared-weights", "info", [w.name, *w.shared_with],
                f"{w.name} is the same tensor as {_names(w.shared_with)} (tied or shared); an edit to one "
                "changes all, and it is counted once.",
                "Nothing to do if intended (tied embeddings, Siamese networks).",
            )


@rule("mixed-dtype-device", title="Mixed dtypes or devices within one layer")
def mixed_dtype_device(ctx: Context) -> Iterator[Finding]:
    for layer, weights in ctx.ws.layers().items():
        floats = [w for w in weights if _dtypes.is_floating(w.dtype)]
        dtypes = sorted({w.dtype for w in floats})
        devices = sorted({w.device for w in weights if w.device})
        if len(dtypes) > 1 or len(devices) > 1:
            what = []
            if len(dtypes) > 1:
                what.append("dtypes " + ", ".join(f"{w.role}={w.dtype}" for w in floats))
            if len(devices) > 1:
                what.append("devices " + ", ".join(f"{w.role}={w.device}" for w in weights))
            yield Finding(
                "mixed-dtype-device", "warning", [w.name for w in weights],
                f"{layer or '(top level)'}: tensors of one layer have different {' and '.join(what)}; the layer "
                "will fail or silently cast at run time.",
                "Move the whole module once: model.to(device, dtype).",
            )


def _param_names(ctx: Context) -> dict[int, str]:
    return {id(p): n for n, p in ctx.module.named_parameters()}


def _optimizer_findings(ctx: Context) -> list[Finding]:
    """Every optimizer finding, computed once per context (each id is its own rule)."""
    cached = getattr(ctx, "_optimizer_findings", None)
    if cached is None:
        cached = list(_optimizer_checks(ctx))
        ctx._optimizer_findings = cached  # type: ignore[attr-defined]
    return cached


def _optimizer_checks(ctx: Context) -> Iterator[Finding]:
    names = _param_names(ctx)
    params = dict(ctx.module.named_parameters())
    seen: dict[int, list[int]] = defaultdict(list)
    for g, group in enumerate(ctx.optimizer.param_groups):
        for p in group["params"]:
            seen[id(p)].append(g)
    missing = [n for n, p in params.items() if p.requires_grad and id(p) not in seen]
    if missing:
        yield Finding(
            "optimizer-missing", "error", missing,
            f"{len(missing)} trainable parameters are in no optimizer group and will never update: {_names(missing)}.",
            "Build the optimizer after adding all layers, from model.parameters().",
        )
    frozen = [n for n, p in params.items() if not p.requires_grad and id(p) in seen]
    if frozen:
        yield Finding(
            "optimizer-frozen", "warning", frozen,
            f"{len(frozen)} frozen parameters (requires_grad=False) sit in optimizer groups: {_names(frozen)}; "
            "weight decay or momentum may still change them.",
            "Build the optimizer from [p for p in model.parameters() if p.requires_grad].",
        )
    twice = [names.get(pid, "?") for pid, groups in seen.items() if len(groups) > 1]
    if twice:
        yield Finding(
            "optimizer-duplicate", "error", twice,
            f"{len(twice)} parameters appear in more than one optimizer group: {_names(twice)}; they are "
            "updated twice per step.",
            "Give every parameter to exactly one group.",
        )
    foreign = [pid for pid in seen if pid not in names]
    if foreign:
        yield Finding(
            "optimizer-foreign", "warning", [],
            f"the optimizer holds {len(foreign)} parameters that are not in this model.",
            "Build the optimizer from this model's parameters.",
        )
    for g, group in enumerate(ctx.optimizer.param_groups):
        if not group.get("weight_decay"):
            continue
        decayed = [names[id(p)] for p in group["params"] if id(p) in names and p.ndim <= 1]
        if decayed:
            yield Finding(
                "optimizer-decay-bias-norm", "warning", decayed,
                f"group {g} applies weight_decay={group['weight_decay']} to {len(decayed)} biases and "
                f"normalisation weights ({_names(decayed)}), which is usually unintended.",
                "Put biases and normalisation weights in a parameter group with weight_decay=0.",
            )


def _optimizer_rule(rule_id: str, title: str) -> None:
    def check(ctx: Context) -> Iterator[Finding]:
        return iter([f for f in _optimizer_findings(ctx) if f.rule == rule_id])

    rule(rule_id, title=title, needs="optimizer", knows="live model and its optimizer only")(check)


for _id, _title in (("optimizer-missing", "Trainable parameters in no optimizer group"),
                    ("optimizer-frozen", "Frozen parameters inside optimizer groups"),
                    ("optimizer-duplicate", "Parameters in more than one optimizer group"),
                    ("optimizer-foreign", "Optimizer parameters that are not the model's"),
                    ("optimizer-decay-bias-norm", "Weight decay on biases and normalisation weights")):
    _optimizer_rule(_id, _title)

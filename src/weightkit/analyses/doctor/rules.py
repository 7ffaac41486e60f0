"""The built-in doctor rules: one small function each, registered with :func:`rule`."""

from __future__ import annotations

import math
import re
from collections import defaultdict
from typing import Iterator

import numpy as np

from weightkit import _dtypes
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
        bias = w.ndim == 1
        yield Finding(
            "all-zero", "info" if bias else "warning", [t.name],
            f"{t.name} ({w.kind} {w.role}, {t.count} values) is entirely zero"
            + ("; biases often start at zero, but a trained one rarely stays there." if bias else
               "; the layer outputs nothing and its inputs get no gradient."),
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


@rule("scale", title="Weight scale far from its initialisation range for the fan-in")
def scale(ctx: Context) -> Iterator[Finding]:
    by_name = {t.name: t for t in ctx.stats.tensors}
    for w in ctx.ws:
        fan_in = _fan_in(w) if not w.is_buffer else None
        t = by_name.get(w.name)
        if not fan_in or t is None or not t.std or t.zeros == t.count:
            continue
        ref = 1.0 / math.sqrt(fan_in)
        ratio = t.std / ref
        if ratio > SCALE_FACTOR or ratio < 1.0 / VANISH_FACTOR:
            big = ratio > SCALE_FACTOR
            yield Finding(
                "scale", "warning", [w.name],
                f"{w.name}: std {t.std:.3g} is {ratio if big else 1 / ratio:.3g}x {'above' if big else 'below'} "
                f"1/sqrt(fan_in) = {ref:.3g} for fan-in {fan_in} (threshold: {SCALE_FACTOR:g}x above, "
                f"{VANISH_FACTOR:g}x below): {'exploding' if big else 'vanishing'} weights.",
                "Lower the learning rate or add weight decay/normalisation" if big else
                "Check the initialisation (Kaiming or Xavier for this fan-in) and for too strong weight decay",
                {"std": t.std, "reference": ref, "fan_in": fan_in, "ratio": ratio},
            )


_VAR_ROLES = ("running_var", "moving_variance")
_MEAN_ROLES = ("running_mean", "moving_mean")


@rule("batchnorm", title="BatchNorm statistics invalid or never updated")
def batchnorm(ctx: Context) -> Iterator[Finding]:
    stats = {t.name: t for t in ctx.stats.tensors}
    for layer, weights in ctx.ws.layers().items():
        roles = {w.role: w for w in weights}
        var = next((roles[r] for r in _VAR_ROLES if r in roles), None)
        mean = next((roles[r] for r in _MEAN_ROLES if r in roles), None)
        if var is None:
            continue
        vs = stats.get(var.name)
        if vs and vs.min is not None and vs.min <= 0:
            yield Finding(
                "batchnorm-variance", "error", [var.name],
                f"{var.name}: running variance has values <= 0 (min {vs.min:.3g}); normalisation divides by "
                "sqrt(var + eps), so outputs blow up or turn NaN.",
                "Recompute the statistics: run the model in train mode over some batches without stepping "
                "the optimizer (or torch.optim.swa_utils.update_bn), then save again.",
                {"min": vs.min},
            )
        tracked = roles.get("num_batches_tracked")
        untouched_counter = tracked is not None and tracked.numel > 0 and int(tracked.numpy().reshape(-1)[0]) == 0
        ms = stats.get(mean.name) if mean is not None else None
        initial_values = (ms is not None and vs is not None and ms.min == 0 == ms.max and vs.min == 1 == vs.max)
        if untouched_counter or initial_values:
            severity: Severity = "warning" if ctx.claims_trained else "info"
            why = "num_batches_tracked is 0" if untouched_counter else "running mean is all 0 and variance all 1"
            yield Finding(
                "batchnorm-untrained", severity, [n.name for n in (mean, var, tracked) if n is not None],
                f"{layer}: BatchNorm statistics are still at their initial values ({why})"
                + (" in a checkpoint that says it was trained." if ctx.claims_trained else "."),
                "Make sure the model ran in train mode (model.train()) while training, and that these "
                "buffers were saved (state_dict includes them).",
            )


_NORMS = ("BatchNorm", "SyncBatchNorm")  # kinds starting with these normalise each channel over the batch
_BIASED = ("Conv", "Linear", "Dense", "DepthwiseConv", "SeparableConv")


def _natural(name: str) -> list:
    """Sort key that orders ``features.2`` before ``features.10``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _layer_pairs(names: list[str]) -> list[tuple[str, str]]:
    """Pairs (layer, the layer after it): neighbours in model order and in natural name order
    (files list names alphabetically), and siblings named alike with the same number
    (``conv1``/``bn1``, as in torchvision's ResNet), since those are listed apart."""
    pairs = list(zip(names, names[1:]))
    ordered = sorted(names, key=_natural)
    pairs += zip(ordered, ordered[1:])
    by_number: dict[tuple[str, str], list[str]] = defaultdict(list)
    for name in names:
        parent, _, leaf = name.rpartition(".")
        m = re.fullmatch(r"([A-Za-z_]+?)_?(\d+)", leaf)
        if m:
            by_number[(parent, m.group(2))].append(name)
    for group in by_number.values():
        pairs += [(a, b) for a in group for b in group if a != b]
    return list(dict.fromkeys(pairs))


@rule("bias-before-norm", title="A layer bias that the BatchNorm right after it cancels")
def bias_before_norm(ctx: Context) -> Iterator[Finding]:
    layers: dict[str, tuple[str, dict]] = {}  # layer -> (kind, role -> weight), in model order
    for w in ctx.ws:
        layers.setdefault(w.layer, (w.kind or "", {}))[1][w.role] = w
    hits = []
    for name, norm in _layer_pairs(list(layers)):
        (kind, roles), (norm_kind, norm_roles) = layers[name], layers[norm]
        bias = roles.get("bias")
        if bias is None or not kind.startswith(_BIASED) or "Transpose" in kind or not norm_kind.startswith(_NORMS):
            continue
        scale = next((norm_roles[r] for r in ("weight", "gamma", "running_mean", "moving_mean") if r in norm_roles), None)
        if scale is not None and scale.numel == bias.numel:
            hits.append((bias.name, name, norm))
    if hits:
        pairs = ", ".join(f"{layer} → {norm}" for _, layer, norm in hits[:8]) + (" …" if len(hits) > 8 else "")
        yield Finding(
            "bias-before-norm", "info", [b for b, _, _ in hits],
            f"{len(hits)} layer(s) with a bias feed a BatchNorm with as many channels ({pairs}): BatchNorm "
            "subtracts each channel's batch mean, which removes a constant bias, so it gets (almost) no "
            "gradient and does nothing, if that layer's output goes straight into that BatchNorm.",
            "Create the layer without a bias (Conv2d(..., bias=False) / Conv2D(..., use_bias=False)); "
            "BatchNorm's own shift (bias / beta) plays its role.",
            details={"pairs": [[layer, norm] for _, layer, norm in hits]},
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


@rule("optimizer", title="Parameters missing from, frozen in, duplicated in or decayed by the optimizer",
      needs="optimizer")
def optimizer_groups(ctx: Context) -> Iterator[Finding]:
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

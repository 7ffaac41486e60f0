"""Pruning: zero the least important weights of a live torch model (standard
``torch.nn.utils.prune`` masks) or of a checkpoint file (streamed into a new safetensors file).

``weightkit.make_permanent`` bakes the masks into the weights (``torch.nn.utils.prune.remove``
on every pruned parameter).

Which elements go is decided once, by the same code, for live models and files
(:mod:`weightkit.edits._compress`): an exact streaming selection of the ``round(amount·n)`` smallest
``|w|`` (or seeded random keys), per tensor or across all selected tensors (``scope="global"``),
or of whole output channels by L1/L2 norm. On a live model the result is applied with
``torch.nn.utils.prune.custom_from_mask``, so the module gets the standard ``weight_orig``
parameter, ``weight_mask`` buffer and forward pre-hook, and pruning again composes with the
earlier masks exactly as torch's own methods do (the amount is a fraction of what is still
unpruned). The masks equal those of ``l1_unstructured`` / ``ln_structured`` /
``global_unstructured`` (tests check it), but the selection is linear-time: on a
100-million-parameter layer it takes a fraction of a second where ``l1_unstructured``'s
``topk`` takes about 20 s.

Bytes saved are for a *bitmask* sparse layout: the non-zero values in their dtype plus one bit
per element (``nnz·itemsize + ceil(numel/8)``); at 50 % sparsity a float32 tensor shrinks to
53 %. (COO with int64 indices would need more than the dense tensor below ~83 % sparsity.)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Iterator, cast

import numpy as np

from weightkit import _dtypes
from weightkit._atomic import check_writable
from weightkit.core.opening import open as _open
from weightkit.core.selector import Selector
from weightkit.core.weightset import _base_role
from weightkit.edits import _backend
from weightkit.edits._compress import (
    CHUNK_ELEMENTS,
    SENTINEL,
    THREADS,
    KeepMasker,
    Part,
    abs_keys,
    count_zeros,
    float_key,
    in_threads,
    kth_threshold,
    n_to_prune,
    output_axis,
    random_keys,
    ranged_reader,
)
from weightkit.edits.save import Entry, base_metadata, open_source, weight_entry, write_safetensors
from weightkit.errors import WeightkitError
from weightkit.layers import axis_spec, spec_fields
from weightkit.sources._base import fspath
from weightkit.sources.torch_module import torch_raw

__all__ = ["prune", "make_permanent", "PruneReport", "TensorPrune", "METHODS", "SCOPES"]

METHODS = ("magnitude", "random", "l1-structured", "l2-structured")
SCOPES = ("layer", "global")
SPARSE_LAYOUT = "bitmask: non-zero values + 1 bit per element"


# --- report --------------------------------------------------------------------------------

@dataclass(frozen=True)
class TensorPrune:
    """One pruned tensor after the call."""

    name: str
    kind: str
    shape: tuple[int, ...]
    dtype: str
    numel: int
    zeros: int
    """Elements equal to zero after pruning (zeros the tensor already had included)."""
    pruned: int
    """Elements this call masked (set to zero)."""
    dim: int | None = None
    """The axis whose slices were pruned (structured methods)."""

    @property
    def sparsity(self) -> float:
        return self.zeros / self.numel if self.numel else 0.0

    @property
    def bytes_dense(self) -> int:
        return self.numel * _dtypes.itemsize(self.dtype)

    @property
    def bytes_sparse(self) -> int:
        return (self.numel - self.zeros) * _dtypes.itemsize(self.dtype) + (self.numel + 7) // 8


@dataclass(frozen=True)
class PruneReport:
    """What :func:`weightkit.prune` did: sparsity per tensor and overall, elements removed, and
    bytes saved if stored sparse (``sparse_layout``). ``to_dict()`` gives the JSON."""

    source: str
    method: str
    scope: str
    amount: float | None
    threshold: float | None
    tensors: list[TensorPrune]
    out: str | None = None
    sparse_layout: str = SPARSE_LAYOUT

    @property
    def numel(self) -> int:
        return sum(t.numel for t in self.tensors)

    @property
    def zeros(self) -> int:
        return sum(t.zeros for t in self.tensors)

    @property
    def pruned(self) -> int:
        """Parameters removed (masked to zero) by this call."""
        return sum(t.pruned for t in self.tensors)

    @property
    def sparsity(self) -> float:
        """Zeros over elements of the pruned (prunable) tensors."""
        return self.zeros / self.numel if self.numel else 0.0

    @property
    def bytes_dense(self) -> int:
        return sum(t.bytes_dense for t in self.tensors)

    @property
    def bytes_sparse(self) -> int:
        return sum(t.bytes_sparse for t in self.tensors)

    @property
    def bytes_saved(self) -> int:
        """Dense bytes minus sparse bytes of the pruned tensors (negative: sparse would be larger)."""
        return self.bytes_dense - self.bytes_sparse

    def __getitem__(self, name: str) -> TensorPrune:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(f"no pruned tensor named {name!r}; pruned: {', '.join(t.name for t in self.tensors)}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source, "out": self.out, "method": self.method, "scope": self.scope,
            "amount": self.amount, "threshold": self.threshold,
            "tensors": [{**asdict(t), "shape": list(t.shape), "sparsity": t.sparsity,
                         "bytes_dense": t.bytes_dense, "bytes_sparse": t.bytes_sparse} for t in self.tensors],
            "total": {"tensors": len(self.tensors), "numel": self.numel, "zeros": self.zeros, "pruned": self.pruned,
                      "sparsity": self.sparsity, "bytes_dense": self.bytes_dense, "bytes_sparse": self.bytes_sparse,
                      "bytes_saved": self.bytes_saved},
            "sparse_layout": self.sparse_layout,
        }


# --- targets: one tensor to prune, live or in a file ----------------------------------------

class _Target:
    """A tensor's raw storage (flat chunks and the whole array) and, for a live parameter
    already pruned, its current mask (elements with mask 0 are not candidates)."""

    def __init__(self, weight, index: int, array: np.ndarray | None = None, old_mask: np.ndarray | None = None):
        self.w = weight
        self.index = index
        self._array = array  # a live tensor's storage; None for files (read on demand, see raw())
        self._read = ranged_reader(weight) if array is None else None
        self.old_mask = old_mask  # same shape, float, or None
        self.numel = weight.numel

    def spans(self) -> Iterator[tuple[int, int]]:
        for s in range(0, self.numel, CHUNK_ELEMENTS):
            yield s, min(self.numel, s + CHUNK_ELEMENTS)

    def raw(self, s: int, e: int) -> np.ndarray:
        """Raw flat elements ``[s, e)``; from a file each piece is mapped and released on its own,
        so resident memory stays at one chunk."""
        if self._array is None:
            assert self._read is not None  # made in __init__ when there is no array
            return self._read(s, e)
        return self._array.reshape(-1)[s:e]

    def array(self) -> np.ndarray:
        return self.w.raw() if self._array is None else self._array

    def parts(self, method: str, seed: int) -> list[Part]:
        """The keys of each span, as functions (the same keys on every call)."""
        def keys(ci: int, s: int, e: int) -> np.ndarray:
            if method == "random":
                k = random_keys(seed, self.index, ci, e - s)
            else:
                k = abs_keys(self.raw(s, e), self.w.dtype)  # always a new array
            if self.old_mask is not None:
                k[self.old_mask.reshape(-1)[s:e] == 0] = SENTINEL
            return k

        return [partial(keys, ci, s, e) for ci, (s, e) in enumerate(self.spans())]

    def candidates(self) -> int:
        if self.old_mask is None:
            return self.numel
        return int(np.count_nonzero(self.old_mask))

    def channel_norms(self, dim: int, p: int) -> np.ndarray:
        c = self.w.shape[dim]
        per = max(1, self.numel // max(1, c))
        step = max(1, CHUNK_ELEMENTS // per)
        # axis 0: channels are contiguous ranges, read piece by piece; otherwise a strided view
        moved = None if dim == 0 else np.moveaxis(self.array(), dim, 0)
        out = np.empty(c, dtype=np.float64)
        for c0 in range(0, c, step):
            c1 = min(c, c0 + step)
            raw = self.raw(c0 * per, c1 * per).reshape(c1 - c0, per) if moved is None else moved[c0:c1]
            block = np.abs(_dtypes.decode(np.asarray(raw), self.w.dtype).astype(np.float64))
            block = block.reshape(block.shape[0], -1)
            out[c0:c0 + step] = block.sum(1) if p == 1 else np.sqrt((block * block).sum(1))
        return out

    def channel_candidates(self, dim: int) -> np.ndarray:
        c = self.w.shape[dim]
        if self.old_mask is None:
            return np.ones(c, dtype=bool)
        m = np.moveaxis(self.old_mask, dim, 0).reshape(c, -1)
        return cast(np.ndarray, m.any(axis=1))  # 2-D, so an array (the stub allows a scalar)


class Keeper:
    """The keep masks of one target: chunk by chunk (uint8, for files, in order) or all at once
    into a flat array (for live tensors, on two threads)."""

    def __init__(self, t: _Target, masker: KeepMasker | None = None, parts: list[Part] | None = None,
                 channels: tuple[np.ndarray, int, int] | None = None):
        self.t, self.masker, self.channels = t, masker, channels
        self._parts: list[Part] = parts if parts is not None else []  # given with a masker

    def _channel_mask(self, s: int, e: int) -> np.ndarray:
        assert self.channels is not None  # given when there is no masker
        keep_ch, inner, c = self.channels
        return keep_ch[(np.arange(s, e, dtype=np.int64) // inner) % c]

    def chunks(self) -> Iterator[np.ndarray]:
        for i, (s, e) in enumerate(self.t.spans()):
            yield self._channel_mask(s, e) if self.masker is None else self.masker(self._parts[i]())

    def fill(self, into: np.ndarray) -> None:
        spans = list(self.t.spans())
        if self.masker is not None:
            self.masker.fill(self._parts, [into[s:e] for s, e in spans])
        else:
            in_threads(lambda i: into.__setitem__(slice(*spans[i]), self._channel_mask(*spans[i])), len(spans))


def _structured_keep(norms: np.ndarray, candidates: np.ndarray, amount: float) -> np.ndarray:
    """Output channels to keep: the ``round(amount·n)`` candidates of smallest norm go."""
    k = n_to_prune(amount, int(candidates.sum()))
    ranked = np.argsort(np.where(candidates, norms, np.inf), kind="stable")
    keep = np.ones(norms.size, dtype=bool)
    keep[ranked[:k]] = False
    return keep & candidates | ~candidates  # channels already pruned stay as their mask says


def _plan(targets: list[_Target], *, method: str, scope: str, amount: float | None, threshold: float | None,
          dim: int | None, seed: int, threads: int = 1) -> tuple[dict[int, Keeper], dict[int, int]]:
    """For each target its :class:`Keeper`, and the structured axis used per target. ``threads``:
    how many threads may read the targets at once (file readers are read from one)."""
    keepers: dict[int, Keeper] = {}
    dims: dict[int, int] = {}
    parts = {t.index: t.parts(method if threshold is None else "magnitude", seed) for t in targets}
    if threshold is not None:
        for t in targets:
            keepers[t.index] = Keeper(t, KeepMasker(float_key(threshold), 0), parts[t.index])
    elif method in ("magnitude", "random") and scope == "global":
        assert amount is not None  # amount= or threshold=, checked by the caller
        n = sum(t.candidates() for t in targets)
        thr, take = kth_threshold([p for t in targets for p in parts[t.index]], n_to_prune(amount, n), threads=threads)
        shared = KeepMasker(thr, take)
        for t in targets:
            keepers[t.index] = Keeper(t, shared, parts[t.index])
    elif method in ("magnitude", "random"):
        assert amount is not None
        for t in targets:
            thr, take = kth_threshold(parts[t.index], n_to_prune(amount, t.candidates()), threads=threads)
            keepers[t.index] = Keeper(t, KeepMasker(thr, take), parts[t.index])
    else:
        assert amount is not None
        p = 1 if method == "l1-structured" else 2
        for t in targets:
            d = _resolve_dim(t.w, dim)
            dims[t.index] = d
            keep_ch = _structured_keep(t.channel_norms(d, p), t.channel_candidates(d), amount).astype(np.uint8)
            keepers[t.index] = Keeper(t, channels=(keep_ch, math.prod(t.w.shape[d + 1:]), t.w.shape[d]))
    return keepers, dims


def _resolve_dim(w, dim: int | None) -> int:
    if dim is None:
        d = output_axis(w)
        if d is None:
            raise WeightkitError(
                f"the axes of {w.name} ({w.kind}, shape {tuple(w.shape)}) are unknown, so its output axis is too; "
                f"pass dim= (0..{w.ndim - 1}) for structured pruning")
        return d
    if not -w.ndim <= dim < w.ndim:
        raise WeightkitError(f"dim={dim} is out of range for {w.name} with shape {tuple(w.shape)}")
    return dim % w.ndim


# --- validation and selection ---------------------------------------------------------------

def _validate(amount, method, scope, dim, threshold, seed) -> tuple[float | None, int]:
    if method not in METHODS:
        raise WeightkitError(f"unknown pruning method {method!r}; choose one of {', '.join(METHODS)}")
    if scope not in SCOPES:
        raise WeightkitError(f"unknown scope {scope!r}; choose 'layer' (each tensor) or 'global' (all selected tensors)")
    if threshold is not None:
        if amount is not None:
            raise WeightkitError(f"give amount= or threshold=, not both (received amount={amount!r}, threshold={threshold!r})")
        if method != "magnitude":
            raise WeightkitError(f"threshold= prunes by magnitude; it does not combine with method={method!r}")
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not threshold >= 0 or math.isinf(threshold):
            raise WeightkitError(f"threshold must be a finite number >= 0; received threshold={threshold!r}")
    else:
        if amount is None:
            raise WeightkitError("give amount= (a fraction from 0 to 1) or threshold= (prune every |w| below it)")
        if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not 0 <= amount <= 1:
            raise WeightkitError(f"amount must be a fraction from 0 to 1; received amount={amount!r}")
        amount = float(amount)
    if method.endswith("structured") and scope == "global":
        raise WeightkitError(f"{method} pruning is per tensor (torch has no global structured pruning); use scope='layer'")
    if dim is not None and not method.endswith("structured"):
        raise WeightkitError(f"dim= applies to structured pruning only; method={method!r} prunes single elements")
    if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int)):
        raise WeightkitError(f"dim must be an integer axis; received dim={dim!r}")
    if seed is None:
        seed = int(np.random.SeedSequence().generate_state(1)[0])
    elif isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise WeightkitError(f"seed must be a non-negative integer; received seed={seed!r}")
    return amount, seed


# the weight matrices of every layer kind weightkit knows (biases, norm scales and buffers are not)
WEIGHT_ROLES = ("weight", "kernel", "weight_ih", "weight_hh", "weight_hr", "recurrent_kernel", "in_proj_weight",
                "q_proj_weight", "k_proj_weight", "v_proj_weight", "depthwise_kernel", "pointwise_kernel",
                "embeddings")


def _choose(weights, select, kind, role, source: str) -> list:
    role = WEIGHT_ROLES if role is None else role
    explicit = select is not None or kind is not None
    chosen_by = Selector.of(select, kind=kind, role=role)
    chosen = [w for w in weights if not w.is_buffer and _dtypes.is_floating(w.dtype)
              and chosen_by(w) and (explicit or w.ndim >= 2)]
    if not chosen:
        asked = ", ".join(f"{k}={v!r}" for k, v in (("select", select), ("kind", kind), ("role", role)) if v is not None)
        floating = [w for w in weights if not w.is_buffer and _dtypes.is_floating(w.dtype)]
        close = Selector.of(select).closest([w.name for w in floating])
        roles = sorted({w.role for w in floating})
        kinds = sorted({w.kind for w in floating})
        raise WeightkitError(
            f"no prunable weight in {source} matches {asked or 'the selector'} (prunable: floating-point parameters, "
            f"2-D or more unless select/kind names them)" + (f"; closest names: {', '.join(close)}" if close else "")
            + f"; roles present: {', '.join(roles) or 'none'}; kinds present: {', '.join(kinds) or 'none'}")
    return chosen


# --- live torch models -----------------------------------------------------------------------

def _prune_live(model, amount, *, select, kind, role, scope, method, dim, threshold, seed) -> PruneReport:
    import torch
    from torch.nn.utils import prune as tprune

    ws = _open(model)
    modules = dict(model.named_modules())
    views = []  # (weight as the user sees it, module, parameter name, orig tensor, mask tensor or None)
    for w in ws:
        if w.is_buffer or w.role.endswith("_mask"):
            continue
        module = modules[w.layer]
        pname = w.name[len(w.layer) + 1:] if w.layer else w.name
        base, old_mask = pname, None
        if pname.endswith("_orig") and f"{pname[:-5]}_mask" in module._buffers:
            base = pname[:-5]
            old_mask = module._buffers[f"{base}_mask"]
        name = f"{w.layer}.{base}" if w.layer else base
        shown = replace(w, name=name, role=_base_role(base), **spec_fields(axis_spec(w.kind, base, tuple(w.shape))),
                        shared_with=tuple(a.removesuffix("_orig") for a in w.shared_with))
        views.append((shown, module, base, module._parameters[pname], old_mask))
    chosen = {w.name for w in _choose([v[0] for v in views], select, kind, role, ws.source)}
    picked = [v for v in views if v[0].name in chosen]
    for shown, *_ in picked:
        if shown.shared_with:
            raise WeightkitError(f"{shown.name} is tied to {', '.join(shown.shared_with)}; torch pruning would untie "
                                 "them; exclude it with select=")
    targets = []
    for i, (shown, _module, _base, orig, old_mask) in enumerate(picked):
        array = torch_raw(orig.detach())
        mask = None if old_mask is None else old_mask.detach().cpu().numpy()
        targets.append(_Target(shown, i, array.reshape(tuple(shown.shape)), mask))
    keepers, dims = _plan(targets, method=method, scope=scope, amount=amount, threshold=threshold, dim=dim, seed=seed,
                          threads=THREADS)
    results = []
    for t, (shown, module, base, orig, old_mask) in zip(targets, picked):
        # the mask is written in place, in the weight's dtype when NumPy has it, else as float32 then cast
        direct = orig.device.type == "cpu" and orig.dtype in (torch.float32, torch.float64)
        mask = torch.empty(tuple(shown.shape), dtype=orig.dtype if direct else torch.float32)
        flat = mask.numpy().reshape(-1)
        keepers[t.index].fill(flat)
        newly = int(t.numel - np.count_nonzero(flat))
        mask = mask.to(device=orig.device, dtype=orig.dtype)
        if old_mask is None:
            _apply_first_mask(module, base, mask)
        else:  # composes with the earlier mask through torch's PruningContainer
            tprune.custom_from_mask(module, base, mask)
        zeros = count_zeros(torch_raw(getattr(module, base).detach()), shown.dtype)
        results.append(TensorPrune(shown.name, shown.kind, tuple(shown.shape), shown.dtype, t.numel, zeros, newly,
                                   dims.get(t.index)))
    return PruneReport(ws.source, method, scope, amount, threshold, results)


_MASKED = None


def _masked_product():
    """``orig * mask`` as torch's ``apply_mask`` computes it (with the gradient ``grad * mask``
    to ``orig``)."""
    global _MASKED
    if _MASKED is None:
        import torch

        class MaskedProduct(torch.autograd.Function):
            @staticmethod
            def forward(ctx, orig, mask):
                ctx.save_for_backward(mask)
                return torch.mul(mask, orig)

            @staticmethod
            def backward(ctx, grad):
                (mask,) = ctx.saved_tensors
                return grad * mask, None

        _MASKED = MaskedProduct
    return _MASKED


def _apply_first_mask(module, name: str, mask) -> None:
    """What ``torch.nn.utils.prune.custom_from_mask`` leaves on a parameter pruned for the first
    time (``name_orig`` parameter, ``name_mask`` buffer, ``name = name_orig * name_mask``, the
    ``CustomFromMask`` forward pre-hook), without its ``ones_like`` default mask and extra
    product: on a 100-M-parameter layer those cost more than the whole selection."""
    from torch.nn.utils import prune as tprune

    orig = getattr(module, name)
    method = tprune.CustomFromMask(mask)
    method._tensor_name = name
    module.register_parameter(name + "_orig", orig)
    del module._parameters[name]
    module.register_buffer(name + "_mask", mask)
    try:
        setattr(module, name, _masked_product().apply(orig, mask))
        module.register_forward_pre_hook(method)
    except BaseException:
        del module._buffers[name + "_mask"]
        del module._parameters[name + "_orig"]
        module.register_parameter(name, orig)
        raise


# --- files -----------------------------------------------------------------------------------

def _prune_source(source, out, amount, *, select, kind, role, scope, method, dim, threshold, seed,
                  in_place: bool = False) -> PruneReport:
    out = _check_out(source, out, in_place)
    ws, framework, owned = open_source(source)
    try:
        chosen = _choose(list(ws), select, kind, role, ws.source)
        index = {w.name: i for i, w in enumerate(chosen)}
        targets = {w.name: _Target(w, i) for w, i in ((w, index[w.name]) for w in chosen)}
        keepers, dims = _plan(list(targets.values()), method=method, scope=scope, amount=amount, threshold=threshold,
                              dim=dim, seed=seed)
        results: dict[str, TensorPrune] = {}

        def produce(t: _Target):
            zeros = pruned = 0
            for (s, e), keep in zip(t.spans(), keepers[t.index].chunks()):
                chunk = np.array(t.raw(s, e), copy=True)
                drop = keep == 0
                pruned += int(np.count_nonzero(drop))
                np.putmask(chunk, drop, 0)
                zeros += count_zeros(chunk, t.w.dtype)
                yield chunk
            results[t.w.name] = TensorPrune(t.w.name, t.w.kind, tuple(t.w.shape), t.w.dtype, t.numel, zeros, pruned,
                                            dims.get(t.index))

        entries = [Entry(w.name, w.dtype, tuple(w.shape), partial(produce, targets[w.name]))
                   if w.name in targets else weight_entry(w) for w in ws]
        what = f"threshold={threshold}" if threshold is not None else f"amount={amount}"
        meta = base_metadata(ws, framework, {"weightkit.operation": f"prune {method} scope={scope} {what}"}, carry=True)
        write_safetensors(out, entries, meta)
        return PruneReport(ws.source, method, scope, amount, threshold, [results[w.name] for w in chosen], out=str(out))
    finally:
        if owned:
            ws.close()


def _check_out(source, out, in_place: bool) -> Path:
    """The output path of a file operation, refused when it would overwrite the input."""

    src = fspath(source)
    if out is None:
        if in_place and src is not None and src.is_file():
            return check_writable(src)
        raise WeightkitError("out= is required to write the result (or in_place=True to replace a single input file)")
    out = check_writable(out)
    if src is not None and not in_place and _same_file(src, out):
        raise WeightkitError(f"{out}: is the input file; write to another path or pass --in-place / in_place=True")
    return out


def _same_file(a: Path, b: Path) -> bool:
    try:
        return b.exists() and a.exists() and a.samefile(b)
    except OSError:
        return a.resolve() == b.resolve()


# --- public ----------------------------------------------------------------------------------

def prune(model: Any, amount: float | None = None, *, select: Any = None, kind: Any = None, role: Any = None,
          scope: str = "layer", method: str = "magnitude", dim: int | None = None, threshold: float | None = None,
          seed: int | None = None, out: str | Path | None = None, in_place: bool = False) -> PruneReport:
    """Prune weights: zero the smallest (or random, or whole low-norm output channels).

    On a live ``torch.nn.Module`` the model is pruned in place through
    ``torch.nn.utils.prune`` (standard ``weight_orig`` / ``weight_mask`` and forward
    pre-hook; call ``weightkit.make_permanent(model)`` to bake them in). Any other source
    (a checkpoint path, a state dict, a ``WeightSet``) is streamed tensor by tensor into a new
    safetensors file ``out``, with the same selection.

    Args:
        model: a ``torch.nn.Module``, or a source with ``out=``.
        amount: fraction from 0 to 1 of the candidates to prune: elements (``magnitude``,
            ``random``) or output channels (structured); ``round(amount·n)`` of them, like torch.
        select, kind, role: the selector (see :func:`weightkit.select`). By default every
            floating-point weight matrix (roles in ``WEIGHT_ROLES``: ``weight``, ``kernel``,
            ``weight_ih``, ``recurrent_kernel``…) with at least 2 dimensions (1-D norm
            scales are skipped unless ``select`` or ``kind`` names them).
        scope: ``"layer"`` (each tensor loses ``amount`` of itself) or ``"global"`` (the
            smallest across all selected tensors: the overall sparsity is exactly ``amount``).
        method: ``"magnitude"``, ``"random"``, ``"l1-structured"``, ``"l2-structured"``.
        dim: axis of the slices removed by structured pruning; default the output axis from the
            layer table (a Conv2d's or Linear's axis 0, a ConvTranspose's axis 1, a Keras Dense
            kernel's axis 1).
        threshold: prune every ``|w| < threshold`` instead of a fraction.
        seed: makes ``random`` pruning repeatable.
        out, in_place: for sources other than live models: the safetensors file to write
            (never the input unless ``in_place=True``).

    Returns:
        A :class:`PruneReport`.

    Raises:
        WeightkitError: bad amount/method/scope/dim, a selector matching nothing, a Keras
            model (torch only), an output that would overwrite the input.

    Example:
        >>> import torch, weightkit
        >>> net = torch.nn.Sequential(torch.nn.Linear(10, 10), torch.nn.ReLU(), torch.nn.Linear(10, 2))
        >>> r = weightkit.prune(net, 0.5, scope="global")
        >>> r.sparsity, sorted(dict(net.named_buffers()))
        (0.5, ['0.weight_mask', '2.weight_mask'])
        >>> weightkit.make_permanent(net)
        ['0.weight', '2.weight']
    """
    amount, seed = _validate(amount, method, scope, dim, threshold, seed)
    opts = dict(select=select, kind=kind, role=role, scope=scope, method=method, dim=dim, threshold=threshold, seed=seed)
    if _backend.is_keras(model):  # first: with the torch backend a Keras layer is also a torch.nn.Module
        raise WeightkitError(f"pruning live models is torch only; save the Keras model {model.name!r} with "
                             "weightkit.save and prune the file (out=...)")
    if _backend.is_torch_module(model):
        if out is not None or in_place:
            raise WeightkitError("out=/in_place= are for checkpoint files; a live model is pruned in place "
                                 "(then weightkit.save(model, path))")
        return _prune_live(model, amount, **opts)
    return _prune_source(model, out, amount, in_place=in_place, **opts)


def make_permanent(model: Any) -> list[str]:
    """Bake every pruning mask of a torch model into its weights (``torch.nn.utils.prune.remove``):
    ``weight_orig``/``weight_mask`` and the hook go, ``weight`` is a plain parameter again, with
    the zeros. Returns the names made permanent (empty when nothing was pruned).

    Example:
        >>> import torch, weightkit
        >>> lin = torch.nn.Linear(4, 4)
        >>> _ = weightkit.prune(lin, 0.25)
        >>> weightkit.make_permanent(lin), sorted(n for n, _ in lin.named_parameters())
        (['weight'], ['bias', 'weight'])
    """
    if not _backend.is_torch_module(model):
        raise WeightkitError(f"make_permanent needs a live torch.nn.Module; received {type(model).__name__}")
    import torch
    from torch.nn.utils import prune as tprune

    done = []
    for layer, module in model.named_modules():
        hooks = [(k, h) for k, h in module._forward_pre_hooks.items() if isinstance(h, tprune.BasePruningMethod)]
        for key, hook in hooks:
            name = hook._tensor_name
            # torch's remove() recomputes orig * mask into a new tensor and swaps it in via .data; multiplying
            # in place gives the same values and the same Parameter object without a second copy of the weight
            orig = module._parameters[name + "_orig"]
            mask = module._buffers[name + "_mask"]
            with torch.no_grad():
                orig.mul_(mask.to(orig.dtype))
            delattr(module, name)
            del module._parameters[name + "_orig"]
            del module._buffers[name + "_mask"]
            setattr(module, name, orig)
            del module._forward_pre_hooks[key]
            done.append(f"{layer}.{name}" if layer else name)
    return done



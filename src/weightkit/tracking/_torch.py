"""Hooks and measurement on torch tensors (PyTorch models, and Keras 3 on the torch backend).

Per backward pass, a ``post_accumulate_grad`` hook on each trainable parameter:

* on every step: one cheap reduction of the gradient (non-finite exactly when the gradient holds
  a NaN/Inf), so the first NaN/Inf is found at its exact step and parameter: on a GPU in the hook,
  kept on the device; on the CPU a compiled sum of every gradient the pass reached, all together
  at the end of the backward pass (an autograd engine callback), before any clipping;
* on measured steps: norm, mean, std, mean |g|, max |g| and the NaN/Inf counts, and a histogram
  on histogram steps: on a GPU a few fast reductions in the hook, stacked into one small tensor;
  on the CPU one compiled pass per gradient, one gradient after the other at the end of the
  backward pass (the same callback).

Around the optimizer step (``register_step_pre_hook``/``register_step_post_hook``): on measured
steps a copy of the weights is taken before the step and ``‖w_before − w_after‖`` after it, then
freed. The weights are checked for NaN/Inf the same cheap way: on a GPU on every step; on the
CPU, where that read is a few percent of a small model's step, on measured steps, before and
after any step whose gradients are non-finite (a weight that turned non-finite has reached the
loss: the step is exact), and at ``stop()``; ``nan_check="all"`` checks them on every step. Everything a measured step
needs is concatenated on the device and moved to the host with a single ``.cpu()`` per device: no
per-tensor synchronisation. On a GPU the per-step NaN/Inf flags stay on the device (a running
"first bad step" per parameter) and are read at the next measured step or ``stop()`` — still
naming the exact step; on the CPU, where reading costs nothing, they are read at once.

Statistics are of the gradient as backward produced it, accumulated over micro-batches, before
clipping (clipping a NaN gradient spreads NaN to every parameter; the hooks still name the one
where it began).

With a ``torch.amp.GradScaler`` (``watch(..., scaler=scaler)``) backward produces the gradient
times the loss scale; the statistics are divided by the scale the gradients were made with
(norms, means, std and max |g| scale linearly, sums of squares with its square, counts and
histogram bins not at all), so they are of the unscaled gradient the optimizer applies whether or
not the loop calls ``scaler.unscale_`` (they are taken before it, at the end of backward). The
scale is read when a step's first gradient arrives (a float on the CPU; a copy of the scaler's
device tensor elsewhere, read with the measured step's one transfer). An *attempt* is the
backward passes between two optimizer steps; ``scaler.update()`` replaces the scaler's
per-optimizer state, so an attempt whose state was replaced with no optimizer step in between
was skipped for overflow. A skipped attempt is no step (it is retried under the same step
number): it is recorded in the run's meta (``amp``: each skip with its step and loss scale) and
raises no alert unless the overflow is real: a weight is non-finite (checked on each skip, as
the last step left them), or the scale is down to 1 or less (it no longer multiplies anything)
and the gradients are still non-finite.
"""

from __future__ import annotations

import math
import threading
from typing import Any, Callable, Sequence, cast

import numpy as np
import torch

from weightkit.tracking.alerts import AlertEngine, Thresholds
from weightkit.tracking.store import Store

INF = float("inf")
MAX_SKIPS_KEPT = 1000  # GradScaler: skipped attempts and loss-scale changes kept in the run's meta
N_GRAD = 5  # norm, mean, std, absmean, absmax
_ZEROS: dict[tuple, torch.Tensor] = {}
# CPU shortcuts (reading a scalar on the CPU is free, so branch on values there). Tests turn them
# off to run the GPU code path — device-side flags, no host reads — on a machine without a GPU.
CPU_SHORTCUTS = True


def _host(device: torch.device) -> bool:
    return CPU_SHORTCUTS and device.type == "cpu"


_K = None


def kernels():
    """The compiled one-pass CPU loops (:mod:`weightkit.tracking._kernel`), loaded on first use."""
    global _K
    if _K is None:
        from weightkit.tracking import _kernel

        _kernel.warm()
        _K = _kernel
    return _K


_HOST_DTYPES = (torch.float32, torch.float64)


def _compiled(x: torch.Tensor) -> bool:
    """A CPU tensor the compiled loops take as a flat array (float32/float64, dense, contiguous,
    on the CPU path)."""
    return _host(x.device) and x.dtype in _HOST_DTYPES and x.layout == torch.strided and x.is_contiguous()


def _zeros(n: int | tuple[int, ...], dtype, device) -> torch.Tensor:
    key = (n, dtype, device)
    z = _ZEROS.get(key)
    if z is None:
        z = _ZEROS[key] = torch.zeros(n, dtype=dtype, device=device)
    return z


def _flat(t: torch.Tensor) -> torch.Tensor:
    x = t.detach()
    if x.is_sparse:
        x = x.to_dense()
    x = x.reshape(-1)
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    return x


def check_value(t: torch.Tensor) -> torch.Tensor:
    """One reduction that is non-finite exactly when ``t`` holds a NaN or an Inf, on the device:
    max |t| (a sum would also overflow on finite values near the dtype's maximum)."""
    t = t.detach()
    if t.is_sparse:
        t = t.coalesce().values()
    if t.numel() == 0:
        return torch.zeros((), dtype=t.dtype, device=t.device)
    return torch.linalg.vector_norm(t, INF)


_SCRATCH: dict[tuple, torch.Tensor] = {}


def _scratch(x: torch.Tensor) -> torch.Tensor:
    """A reusable CPU buffer shaped like flat ``x`` (per thread): a fresh allocation of a large
    tensor costs page faults on the CPU. GPUs get a plain temporary (the caching allocator makes
    it cheap and gives the memory back)."""
    if not _host(x.device):
        return torch.empty_like(x)
    key = (x.dtype, threading.get_ident())
    buf = _SCRATCH.get(key)
    if buf is None or buf.numel() < x.numel():
        buf = _SCRATCH[key] = torch.empty(x.numel(), dtype=x.dtype, device=x.device)
    return buf[: x.numel()]


def release_scratch() -> None:
    """Drop this thread's CPU scratch buffers (at the end of a watch)."""
    me = threading.get_ident()
    for key in [k for k in _SCRATCH if k[1] == me]:
        _SCRATCH.pop(key, None)


def grad_stats(g: torch.Tensor):
    """``([norm, mean, std, mean|g|, max|g|], [nan, inf])``: device tensors (no host sync) on GPU,
    Python numbers on the CPU (where reading a scalar is free).

    On the CPU, one compiled pass (:mod:`weightkit.tracking._kernel`); elsewhere, reductions that are
    fast on every device (``sum``, ``dot``, ``amax``; ``std_mean`` and ``vector_norm`` are 2-50×
    slower). The std is two-pass on GPU; on CPU it comes from the same pass when |mean| <= std,
    and from a second compiled pass otherwise."""
    if _compiled(g):
        return _array_stats(g.detach().view(-1).numpy())  # the common case, with the least Python
    x = _flat(g)
    if _host(x.device):
        return _array_stats(x.numpy())
    n = x.numel()
    buf = _scratch(x)
    a = torch.abs(x, out=buf)
    asum = a.sum()
    amax = a.amax()
    total = x.sum()
    sq = torch.dot(x, x)
    mean = total / n
    d = torch.sub(x, mean, out=buf)
    std = (torch.dot(d, d) / n).sqrt()
    counts = torch.stack([torch.isnan(x).sum(), torch.isinf(x).sum()])
    return torch.stack([sq.sqrt(), mean, std, asum / n, amax]), counts


def _confirmed(v: float, t: torch.Tensor) -> float:
    """A non-finite check value (sum or norm) of ``t``, confirmed: 0.0 when it only overflowed on
    finite values near the dtype's maximum, ``v`` when ``t`` really holds a NaN or an Inf."""
    return v if math.isfinite(v) or not bool(torch.isfinite(t).all()) else 0.0


def _array_stats(a: np.ndarray):
    """:func:`grad_stats` of a flat float32/float64 array, as Python numbers (one compiled call)."""
    return kernels().summary(a)


def host_norm(t: torch.Tensor) -> float:
    """The L2 norm of a CPU tensor (``dot``: 2-3× faster there than ``vector_norm``)."""
    x = _flat(t)
    q = torch.dot(x, x).item()
    return math.sqrt(q) if q >= 0 else q


def histogram(t: torch.Tensor, bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Equal-width histogram over the finite range, NaN/+Inf/-Inf counted apart; no host sync on GPU.

    Returns ``([lo, hi, sum, sumsq], [nan, posinf, neginf, count_0 … count_{bins-1}])`` (finite values)."""
    x = _flat(t)
    if _host(x.device):
        lo, hi = torch.aminmax(x)
        if math.isfinite(lo.item()) and math.isfinite(hi.item()):  # the common case, fast on CPU
            span = hi.item() - lo.item()
            scale = bins / span if span > 0 else 0.0  # all values equal: everything in bin 0
            if _compiled(x):
                a = x.numpy()
                hist = np.zeros(bins + 3, dtype=np.int64)
                total, q = kernels().histogram(a, lo.item(), scale, hist[3:])
                return torch.tensor([lo.item(), hi.item(), total, q], dtype=torch.float64), torch.from_numpy(hist)
            idx = x.sub(lo).mul_(scale).to(torch.int64).clamp_(0, bins - 1)
            counts = torch.bincount(idx, minlength=bins)
            floats = torch.stack([lo, hi, x.sum(), torch.dot(x, x)])
            return floats, torch.cat([_zeros(3, torch.int64, x.device), counts])
    fin = torch.isfinite(x)
    lo = torch.where(fin, x, INF).min()
    hi = torch.where(fin, x, -INF).max()
    any_fin = torch.isfinite(lo)
    lo = torch.where(any_fin, lo, 0.0)
    hi = torch.where(any_fin, hi, 0.0)
    width = (hi - lo).clamp_min(torch.finfo(x.dtype).tiny)
    idx = ((x - lo) * (bins / width)).nan_to_num(0.0, 0.0, 0.0).to(torch.int64).clamp_(0, bins - 1)
    idx = torch.where(fin, idx, bins)  # non-finite values go to a spare bin, counted apart below
    counts = torch.zeros(bins + 1, dtype=torch.int64, device=x.device).scatter_add_(0, idx, torch.ones_like(idx))
    xf = torch.where(fin, x, 0.0)
    floats = torch.stack([lo, hi, xf.sum(), torch.dot(xf, xf)])
    ints = torch.cat([torch.stack([torch.isnan(x).sum(), (x == INF).sum(), (x == -INF).sum()]), counts[:bins]])
    return floats, ints


def _l2_norms(ts: list[torch.Tensor]) -> torch.Tensor:
    """The L2 norm of each tensor, fused per dtype, stacked in float64: float64 tensors in float64,
    the others accumulated in float32 (a float16 norm would overflow past 65504)."""
    wide = [t.dtype == torch.float64 for t in ts]
    if not any(wide):
        return torch.stack(torch._foreach_norm(ts, 2, dtype=torch.float32)).to(torch.float64)
    out: list[torch.Tensor | None] = [None] * len(ts)
    for flag, kw in ((True, {}), (False, {"dtype": torch.float32})):
        pos = [k for k, w in enumerate(wide) if w == flag]
        if pos:
            for k, n in zip(pos, torch._foreach_norm([ts[k] for k in pos], 2, **kw)):
                out[k] = n.to(torch.float64)
    return torch.stack(cast("list[torch.Tensor]", out))  # every slot filled: each tensor is wide or not


def _unscaled_hist(row: tuple, scale: float) -> tuple:
    """A gradient's ``hists`` row divided by the loss scale (range and sum by it, the sum of squares by
    its square; the bins are equal-width over the range, so the counts stay)."""
    if row[1] != "grad":
        return row
    i, what, lo, hi, nan, pinf, ninf, total, sq, counts = row
    return i, what, lo / scale, hi / scale, nan, pinf, ninf, total / scale, sq / scale / scale, counts


def _hist_row(i: int, what: str, f, c) -> tuple:
    """A ``hists`` row from ``[lo, hi, sum, sumsq]`` and ``[nan, posinf, neginf, counts…]``."""
    c = np.asarray(c).astype(np.int64)
    return (i, what, float(f[0]), float(f[1]), int(c[0]), int(c[1]), int(c[2]), float(f[2]), float(f[3]),
            c[3:].tobytes())


class Core:
    """The measurement engine: per-parameter hooks, per-step checks, one transfer per measured step.

    The caller drives steps: ``pre_step()`` before the weights change and ``post_step()`` after
    (the torch optimizer hooks, or a Keras callback), or ``backward_step()`` when there is no
    optimizer.
    """

    def __init__(self, names: Sequence[str], params: Sequence[torch.Tensor], *, every: int, histograms: int,
                 bins: int, thresholds: Thresholds, store: Store, run: str, updates: Sequence[bool] | None,
                 nan_check: str = "step", embeddings: Sequence[bool] | None = None, scaler: Any = None):
        self.names = list(names)
        self.params = list(params)
        self.n = len(self.params)
        self.every = every
        self.histograms = histograms
        self.bins = bins
        self.store = store
        self.updates = list(updates) if updates is not None else [False] * self.n
        self.alerts = AlertEngine(self.names, [tuple(p.shape) for p in self.params], thresholds, run=run,
                                  embeddings=list(embeddings) if embeddings is not None else None)
        self.per_step = nan_check in ("step", "all")
        # CPU, nan_check="step": weights are summed on measured steps and around steps whose
        # gradients are non-finite, not on every step (see _check_host)
        self.weights_per_step = nan_check == "all"
        self.step = 0
        self.measured = 0
        self._prev_measured: int | None = None
        self.received = np.zeros(self.n, dtype=bool)
        # per-device groups: foreach calls and the one transfer per step are per device
        groups: dict[torch.device, list[int]] = {}
        for i, p in enumerate(self.params):
            groups.setdefault(p.device, []).append(i)
        self.groups = {d: (ix, [self.params[i] for i in ix]) for d, ix in groups.items()}
        # first step at which each parameter's gradient (row 0) / weight (row 1) was non-finite
        self.first = np.full((2, self.n), -1, dtype=np.int64)
        # CPU: the last step after which each weight was seen finite (-1: the start), and for a
        # weight first seen non-finite later than one step after that, that step (-2: exact)
        self._w_ok = np.full(self.n, -1, dtype=np.int64)
        self.w_since = np.full(self.n, -2, dtype=np.int64)
        self._gbad: dict[int, bool] = {}
        self._seen_nonfinite = False  # any entry of self.first set: spares a reduction per measured step
        self._step_arrays = (np.full((self.n, N_GRAD), np.nan), np.full((self.n, 2), -1, dtype=np.int64),
                             np.full(self.n, np.nan), np.full(self.n, np.nan), np.zeros(self.n, dtype=bool))
        self._first_dev = {d: torch.full((2, len(ix)), -1, dtype=torch.int64, device=d)
                           for d, (ix, _) in self.groups.items() if not _host(d)}
        # dtypes whose plain sum is the check (half types sum in float32)
        self._fast = {id(ps): [p.dtype in (torch.float32, torch.float64) for p in ps] for _, ps in self.groups.values()}
        self._handles: list[Any] = []
        self._first_known = 0
        self._queued = False
        self._scan_queued = False
        self._fired: list[int] = []  # CPU: parameters whose gradient this backward pass accumulated into
        self._compiled = [_compiled(p.detach()) for p in self.params]
        # steps whose gradient sums are all finite need nothing more after the optimizer step
        self._quiet = not self._first_dev and not self.weights_per_step
        self._scan_arrays = (np.zeros(self.n, dtype=np.int64), np.zeros(self.n, dtype=np.int64),
                             np.array([p.numel() for p in self.params], dtype=np.int64),
                             np.array([p.dtype == torch.float64 for p in self.params]), np.zeros(self.n))
        self._before: list[torch.Tensor | None] | None = None
        self._keep: dict[int, torch.Tensor] = {}  # CPU: reused weight copies (see pre_step)
        self._views: dict[int, tuple] = {}  # CPU: flat NumPy views of a weight and its copy (_flat_pair)
        # GradScaler: the scaler's per-optimizer state when this attempt's first gradient arrived
        # (None: no gradient since the last step), and the loss scale of the attempt's gradients
        self.scaler = scaler
        self._attempt: Any = None
        self._gscale: Any = 1.0
        self._scale_host = 1.0
        self._fused_skip = False
        self._amp: dict[str, Any] = {"scaler": type(scaler).__name__, "skipped": [], "skipped_total": 0,
                                     "loss_scale": []} if scaler is not None else {}
        self._reset_step()

    # -- step state -------------------------------------------------------------------------------

    def _reset_step(self) -> None:
        was_measuring = getattr(self, "measuring", True)
        self.measuring = self.step % self.every == 0
        self.hist_now = self.measuring and self.histograms > 0 and self.measured % self.histograms == 0
        self._gchk: list[Any] = [None] * self.n
        self._gbad.clear()
        self._gsum = 0.0  # CPU: the sum of the float checks, so one isfinite answers for all
        self._gtensors = False  # some check is a tensor (a GPU, or a gradient the loops do not take)
        if was_measuring:  # the per-step path touches only _gchk
            self._gstats: list[tuple | None] = [None] * self.n
            self._ghist: list[tuple | None] = [None] * self.n

    # -- hooks ------------------------------------------------------------------------------------

    def install(self, on_backward: Callable[[], None] | None = None) -> None:
        """Register the gradient hooks; ``on_backward`` (no optimizer) runs once at the end of each
        backward pass that reached a watched parameter."""
        if any(_compiled(p.detach().reshape(-1)) for p in self.params):
            kernels()  # load the compiled loops now, not inside the first measured step
        for i, p in enumerate(self.params):
            self._handles.append(p.register_post_accumulate_grad_hook(self._make_hook(i, on_backward)))

    def _make_hook(self, i: int, on_backward):
        state = self
        received = self.received
        # CPU: this step's gradients are checked together at the end of the backward pass
        # (_scan_grads), not one by one here, between the backward kernels that evict what a
        # compiled call needs (a quarter to a third cheaper on the MLP of bench/watch_bench.py)
        scanned = _host(self.params[i].device)
        fired = self._fired
        engine = torch.autograd.Variable._execution_engine
        scan = self._scan_grads
        scaler = self.scaler

        def hook(p: torch.Tensor) -> None:
            g = p.grad
            if g is None:
                return
            if scaler is not None and state._attempt is not scaler._per_optimizer_states:
                state._new_attempt()
            received[i] = True
            if scanned:  # CPU: measured or checked at the end of the backward pass (_scan_grads)
                if state.per_step or state.measuring:
                    fired.append(i)
                    if not state._scan_queued:
                        state._scan_queued = True
                        engine.queue_callback(scan)
            elif not state.measuring:  # every step: one reduction, kept on the device
                if state.per_step:
                    state._gchk[i] = check_value(g)
                    state._gtensors = True
            else:
                st = state._gstats[i] = grad_stats(g)
                state._gchk[i] = st[0][4]  # max |g|, on the device
                state._gtensors = True
                if state.hist_now:
                    state._ghist[i] = histogram(g, state.bins)
            if on_backward is not None and not state._queued:
                state._queued = True
                engine.queue_callback(on_backward)

        return hook

    def _scan_grads(self) -> None:
        """CPU, at the end of a backward pass (before any clipping, which would spread a NaN to
        every parameter): the check value of each gradient this pass accumulated into, compiled
        sums in one call (:func:`~weightkit.tracking._kernel.totals`; inside a training step a torch
        call costs 5-20 us), added to a running sum so one isfinite answers for all. Over
        micro-batches the accumulated gradient is checked after each: a NaN/Inf stays in it.
        The per-gradient values are kept only when the sum is non-finite."""
        self._scan_queued = False
        if self.measuring:
            self._measure_grads()
            return
        fired, params, compiled = self._fired, self.params, self._compiled
        addresses, which, sizes, wide, out = self._scan_arrays
        strided = torch.strided
        grads, k = [], 0
        for i in fired:
            g = params[i].grad
            if g is None:
                continue
            # a gradient has its parameter's dtype, device and size: only layout and strides can differ
            if compiled[i] and g.layout == strided and g.is_contiguous():
                addresses[k] = g.data_ptr()
                which[k] = i
                grads.append(g)  # alive until the call returns
                k += 1
            else:
                self._gchk[i] = check_value(g)
                self._gtensors = True
        fired.clear()
        if k:
            s = kernels().totals(addresses, which, sizes, wide, k, out)
            if not math.isfinite(s):  # a NaN/Inf, or finite values whose sum overflowed
                s = 0.0
                for j, g in enumerate(grads):
                    v = self._gchk[int(which[j])] = _confirmed(float(out[j]), g)
                    s += v
            self._gsum += s

    def _measure_grads(self) -> None:
        """CPU, a measured step, at the end of a backward pass: each gradient's statistics (and
        histogram when due), one after the other (in each hook, between backward kernels, the
        same calls cost three times as much). Their NaN/Inf counts are the check."""
        gstats, gchk, params = self._gstats, self._gchk, self.params
        for i in self._fired:
            g = params[i].grad
            if g is None:
                continue
            st = gstats[i] = grad_stats(g)
            c = st[1]
            gchk[i] = v = math.nan if c[0] or c[1] else 0.0
            self._gsum += v
            if self.hist_now:
                self._ghist[i] = histogram(g, self.bins)
        self._fired.clear()

    # -- GradScaler ---------------------------------------------------------------------------------

    def _new_attempt(self) -> None:
        """The first gradient since the last optimizer step or ``scaler.update()``: an attempt that
        had gradients and was closed by ``update()`` with no optimizer step was skipped."""
        if self._attempt is not None:
            self._skipped()
        sc = self.scaler
        self._attempt = sc._per_optimizer_states
        s = getattr(sc, "_scale", None)
        self._gscale = 1.0 if s is None else s.item() if _host(s.device) else s.detach().clone()

    def scaled_pre_step(self, optimizer) -> None:
        """:meth:`pre_step` under a scaler. An optimizer that handles the scaling itself (``fused=True``
        Adam/AdamW/SGD: ``_step_supports_amp_scaling``) is stepped even on overflow, with the
        scaler's ``found_inf`` set on it, and then changes nothing: that attempt is skipped (reading
        the flag is a host sync on a GPU, once per step, only for those optimizers)."""
        found_inf = getattr(optimizer, "found_inf", None)
        self._fused_skip = isinstance(found_inf, torch.Tensor) and bool(found_inf.item() > 0)
        if not self._fused_skip:
            self.pre_step()

    def scaled_post_step(self) -> None:
        if self._fused_skip:
            self._fused_skip = False
            self._skipped()
        else:
            self.post_step()

    def _scale_now(self) -> float:
        s = self._gscale
        return float(s.item()) if isinstance(s, torch.Tensor) else float(s)

    def _skipped(self) -> None:
        """The scaler skipped this step's last attempt (its gradients overflowed): no step, no
        measurement; record it with its scale. Only a real overflow is an alert: a non-finite
        weight (as the last step left it), or non-finite gradients at a scale of 1 or less."""
        step, s = self.step, self._scale_now()
        found = False
        with torch.no_grad():
            for ix, ps in self.groups.values():
                # as the last step left them (before step 0: as they came)
                weight_bad = self._check_weights_host(max(step - 1, 0), ix, ps, fed=True)
                found |= weight_bad
                if weight_bad or s <= 1.0:
                    found |= self._flag(0, step, ix, [self._gchk[i] for i in ix])
        if found:
            self._record_first()
            self._report(self.alerts.nonfinite(self.first[0], self.first[1], weight_since=self.w_since))
        amp = self._amp
        amp["skipped_total"] += 1
        if len(amp["skipped"]) < MAX_SKIPS_KEPT:
            amp["skipped"].append([step, s])
        self._log_scale(step, s, write=True)
        self._attempt = None
        self._fired.clear()
        self._before = None
        self._reset_step()

    def _log_scale(self, step: int, s: float, *, write: bool = False) -> None:
        """Keep the loss scale in the run's meta when it changed (a log of ``[step, scale]``)."""
        log = self._amp["loss_scale"]
        if (not log or log[-1][1] != s) and len(log) < MAX_SKIPS_KEPT:
            log.append([step, s])
            write = True
        if write:  # a copy: the store's thread writes it later, while this one keeps appending
            self.store.set_meta(amp={k: list(v) if isinstance(v, list) else v for k, v in self._amp.items()})

    def add_handle(self, handle) -> None:
        self._handles.append(handle)

    def remove_hooks(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    # -- the steps --------------------------------------------------------------------------------

    def pre_step(self) -> None:
        """Before the optimizer changes the weights: keep a copy on measured steps.

        On a GPU the copies are allocated here and freed after the step (the caching allocator
        makes that cheap). On the CPU a fresh allocation of that size costs a page fault per 4 KiB
        on every measured step (0.35 ms for 2.7 MB), so the copies go to buffers reused from one
        measured step to the next, freed at ``stop()``."""
        if not self.measuring and (not self.per_step or self._calm()):
            return
        if self.per_step and not self.weights_per_step:
            for dev, (ix, ps) in self.groups.items():
                if dev not in self._first_dev and self._grads_bad(ix):
                    with torch.no_grad():
                        self._check_weights_host(self.step - 1, ix, ps, fed=True)  # as the last step left them
        if not (self.measuring and any(self.updates)):
            return
        with torch.no_grad():
            before: list[torch.Tensor | None] = []
            host_dst, host_src = [], []
            for i, (p, u) in enumerate(zip(self.params, self.updates)):
                if not u:
                    before.append(None)
                elif _host(p.device):
                    buf = self._keep.get(i)
                    if buf is None or buf.shape != p.shape or buf.dtype != p.dtype:
                        buf = self._keep[i] = torch.empty_like(p, memory_format=torch.contiguous_format)
                    host_dst.append(buf)
                    host_src.append(p)
                    before.append(buf)
                else:
                    before.append(p.detach().clone())
            if host_dst:
                torch._foreach_copy_(host_dst, host_src)
            self._before = before

    def backward_step(self) -> None:
        """No optimizer: a step is a backward pass that reached the watched parameters."""
        self._queued = False
        self.post_step()

    def post_step(self) -> None:
        """After the optimizer step: the per-step NaN/Inf check; on measured steps, measure and commit."""
        if not self.measuring and (not self.per_step or self._calm()):
            self._attempt = None
            self.step += 1  # the common step on the CPU: every gradient finite, nothing else to do
            self._reset_step()
            return
        step = self.step
        new_bad = False
        with torch.no_grad():
            if self.per_step or self.measuring:
                for dev, (ix, ps) in self.groups.items():
                    if dev in self._first_dev:
                        self._check_device(step, dev, ix, ps)
                    else:
                        new_bad |= self._check_host(step, ix, ps)
            if self.measuring:
                self._commit(step)
        if not self.measuring and new_bad:
            self._record_first()
            self._report(self.alerts.nonfinite(self.first[0], self.first[1], weight_since=self.w_since))
        self._before = None
        self._attempt = None
        self.step += 1
        self._reset_step()

    def _calm(self) -> bool:
        """CPU, one device, weights not checked every step: every gradient sum of this step is
        finite, so neither optimizer hook has anything to check."""
        return self._quiet and not self._gtensors and math.isfinite(self._gsum)

    def _grads_bad(self, ix: list[int]) -> bool:
        """CPU: whether this step's gradient sums hold a NaN/Inf (one stacked sum, once per step)."""
        if not self._gtensors:  # the one host group, all floats: their sum is already there
            return not math.isfinite(self._gsum)
        bad = self._gbad.get(id(ix))
        if bad is None:
            total, t = 0.0, []
            for i in ix:
                c = self._gchk[i]
                if isinstance(c, torch.Tensor):
                    t.append(c)
                elif c is not None:
                    total += c  # finite floats can only overflow to a false alarm, which _flag clears
            if t:
                total += torch.stack(t).sum().item()
            bad = self._gbad[id(ix)] = not math.isfinite(total)
        return bad

    def _flag(self, row: int, step: int, ix: list[int], values: list, *, fed: bool = False) -> bool:
        """Mark the parameters whose check value is non-finite as first bad at ``step``; weights
        seen finite are recorded as such. ``fed``: the weights were checked because the gradients
        they led to are non-finite, while the previous step's were finite: so the weights were
        finite one step before (the step is exact); otherwise a weight last seen finite more than
        one step before keeps that step in ``w_since``."""
        found = False
        for k, i in enumerate(ix):
            v = values[k]
            if v is None:
                continue
            ok = math.isfinite(v.item() if isinstance(v, torch.Tensor) else v)
            if row == 1 and ok:
                self._w_ok[i] = step
            elif not ok and self.first[row, i] < 0:
                self.first[row, i] = step
                if row == 1 and not fed and self._w_ok[i] < step - 1:
                    self.w_since[i] = self._w_ok[i]
                self._seen_nonfinite = True
                found = True
        return found

    def _check_weights_host(self, step: int, ix: list[int], ps: list[torch.Tensor], *, fed: bool = False) -> bool:
        """Sum each weight as it is after ``step``; flag the non-finite ones (``fed``: see :meth:`_flag`)."""
        weights = [p.sum() if fast else check_value(p) for p, fast in zip(ps, self._fast[id(ps)])]
        if math.isfinite(torch.stack(weights).sum().item()):
            self._w_ok[ix] = step
            return False
        return self._flag(1, step, ix, [_confirmed(w.item(), p) for w, p in zip(weights, ps)], fed=fed)

    def _flat_pair(self, i: int, p: torch.Tensor, b: torch.Tensor):
        """Flat NumPy views of weight ``i`` and of its pre-step copy ``b`` for the compiled loop, made
        once and reused while the weight keeps its storage and layout (None: the loop can't take
        them). Making them costs more than the loop itself on a small layer."""
        ptr = p.data_ptr()
        v = self._views.get(i)
        if v is not None and v[0] == ptr and v[3] is b and p.is_contiguous() and v[1].size == p.numel():
            return v[1], v[2]
        x = p.detach()
        if not (_compiled(x) and b.is_contiguous()):
            return None
        v = self._views[i] = (ptr, x.reshape(-1).numpy(), b.reshape(-1).numpy(), b)
        return v[1], v[2]

    def _check_host(self, step: int, ix: list[int], ps: list[torch.Tensor]) -> bool:
        """CPU: the gradients' sums on every step, stacked into one; the weights' on measured steps
        (their norms, computed anyway), on every step with ``nan_check="all"``, and otherwise only
        around a step whose gradients are non-finite: a weight that turns non-finite reaches the
        next step's loss and so its gradients, almost always (``bench/watch_split.py
        --nan-check all`` shows what summing them on every step costs)."""
        found = False
        if self.measuring:
            self._wnorm, self._unorm = {}, {}
            before = self._before
            norms = kernels().norms
            for i, p in zip(ix, ps):
                b = before[i] if before is not None else None
                pair = self._flat_pair(i, p, b) if b is not None else None
                if pair is not None:  # both norms in one pass
                    q, d = norms(*pair)
                    self._wnorm[i], self._unorm[i] = math.sqrt(q), math.sqrt(d)
                else:
                    self._wnorm[i] = host_norm(p)
            # a norm overflows to Inf (|w| > 1e19) while every value is finite: _confirmed looks
            found |= self._flag(1, step, ix, [_confirmed(self._wnorm[i], p) for i, p in zip(ix, ps)])
        elif self.weights_per_step or self._grads_bad(ix):
            found |= self._check_weights_host(step, ix, ps, fed=True)
        if self._grads_bad(ix):
            found |= self._flag(0, step, ix, [self._gchk[i] for i in ix])
        return found

    def _check_device(self, step: int, dev, ix: list[int], ps: list[torch.Tensor]) -> None:
        """GPU: fused max|w| over the weights, flags folded into a device tensor; no sync."""
        wchk = torch.stack(torch._foreach_norm(ps, INF))
        zero = _zeros((), wchk.dtype, dev)
        gchk = torch.stack([zero if self._gchk[i] is None else self._gchk[i] for i in ix]).to(wchk.dtype)
        bad = ~torch.isfinite(torch.stack([gchk, wchk]))
        first = self._first_dev[dev]
        first.masked_fill_(bad & (first < 0), step)

    def _commit(self, step: int) -> None:
        """Gather a measured step on the host (one transfer per device), judge alerts, queue the rows."""
        if not self._first_dev:
            return self._commit_host(step)
        n = self.n
        G, C, W, U, has_u = self._step_arrays  # reused from step to step: only rows leave (as lists)
        G.fill(np.nan)
        C.fill(-1)  # -1: no gradient at this step
        W.fill(np.nan)
        U.fill(np.nan)
        has_u.fill(False)
        hists: list[tuple] = []
        before = self._before
        self._scale_host = self._gscale if not isinstance(self._gscale, torch.Tensor) else math.nan
        for dev, (ix, ps) in self.groups.items():
            upd = [i for i in ix if before is not None and before[i] is not None]
            if dev in self._first_dev:
                self._gather_device(dev, ix, ps, upd, G, C, W, U, hists)
            else:
                for i in ix:
                    st = self._gstats[i]
                    if st is not None:
                        G[i], C[i] = st
                    W[i] = self._wnorm[i]
                for i in upd:
                    if i in self._unorm:
                        U[i] = self._unorm[i]
                    else:
                        b = cast("list[torch.Tensor]", before)[i]  # upd: parameters with a copy
                        b.sub_(self.params[i])
                        U[i] = host_norm(b)
                if self.hist_now:
                    hists += self._host_hists(ix, ps)
            has_u[upd] = True
        s = self._scale_host
        if s != 1.0:
            G /= s
            hists = [_unscaled_hist(h, s) for h in hists]
        if (W > 0).all() and np.isfinite(W).all():  # as always but for a zero or non-finite weight
            ratio = U / W
        else:
            with np.errstate(divide="ignore", invalid="ignore"):  # a costly context manager, inside a step
                ratio = U / W
        Gl, Cl, Wl, Ul, Rl, Hl = G.tolist(), C.tolist(), W.tolist(), U.tolist(), ratio.tolist(), has_u.tolist()
        rows = []
        for i in range(n):
            grad = (*Gl[i], *Cl[i]) if Cl[i][0] >= 0 else (None,) * (N_GRAD + 2)
            rows.append((i, *grad, Wl[i], Ul[i] if Hl[i] else None, Rl[i] if Hl[i] else None))
        self._judge_and_put(step, rows, hists, G[:, 0], ratio, lambda: C)

    def _judge_and_put(self, step: int, rows: list, hists: list, grad_norm, ratio, counts: Callable) -> None:
        """Judge the alerts of a measured step (``counts()``: the ``[NaN, Inf]`` counts per
        parameter, needed only once something was non-finite) and queue it for the store."""
        since = None if self.per_step else (self._prev_measured if self._prev_measured is not None else -1)
        alerts = []
        if self._seen_nonfinite:
            self._record_first()
            alerts = self.alerts.nonfinite(self.first[0], self.first[1], counts=counts(), count_step=step,
                                           since=since, weight_since=self.w_since)
        self._prev_measured = step
        if self.scaler is not None:
            self._log_scale(step, self._scale_host)
        alerts += self.alerts.measured_step(step, grad_norm, ratio, self.received)
        self.store.put(step, rows, [(a.step, a.param, a.kind, a.message, a.value) for a in alerts], hists)
        self.measured += 1

    def _commit_host(self, step: int) -> None:
        """:meth:`_commit` when every parameter is on the CPU: the values are Python numbers
        already, so the rows are built from them directly (inside a training step each NumPy call
        on a few numbers costs microseconds)."""
        before, gstats, wnorm, unorm = self._before, self._gstats, self._wnorm, self._unorm
        rows, gnorm, ratio = [], [math.nan] * self.n, [math.nan] * self.n
        s = self._scale_host = self._gscale
        none = (None,) * (N_GRAD + 2)
        for i in range(self.n):
            w = wnorm[i]
            u = r = None
            b = before[i] if before is not None else None
            if b is not None:
                u = unorm[i] if i in unorm else host_norm(b.sub_(self.params[i]))
                # as NumPy divides: u/0 is Inf, 0/0 and NaN/0 are NaN
                r = ratio[i] = u / w if w else (math.inf if u > 0 else math.nan)
            st = gstats[i]
            if st is not None:
                g = st[0] if s == 1.0 else [v / s for v in st[0]]
                gnorm[i] = g[0]
                rows.append((i, *g, *st[1], w, u, r))
            else:
                rows.append((i, *none, w, u, r))
        hists = self._host_hists(range(self.n), self.params) if self.hist_now else []
        if s != 1.0:
            hists = [_unscaled_hist(h, s) for h in hists]
        self._judge_and_put(step, rows, hists, np.array(gnorm), np.array(ratio), lambda: np.array(
            [st[1] if st is not None else (-1, -1) for st in gstats], dtype=np.int64))

    def _host_hists(self, ix, ps) -> list[tuple]:
        """The ``hists`` rows of CPU parameters ``ix``: each gradient's (computed with its
        statistics) and each weight's (computed now)."""
        rows = []
        for i, p in zip(ix, ps):
            for what, h in (("grad", self._ghist[i]), ("weight", histogram(p, self.bins))):
                if h is not None:
                    rows.append(_hist_row(i, what, h[0].tolist(), h[1].numpy()))
        return rows

    def _gather_device(self, dev, ix, ps, upd, G, C, W, U, hists) -> None:
        """Everything of one device in one tensor, moved to the host with a single ``.cpu()``."""
        parts: list[torch.Tensor] = []
        lay: list[tuple[str, int]] = []

        def add(kind: str, t: torch.Tensor) -> None:
            t = t.reshape(-1)
            parts.append(t)
            lay.append((kind, t.numel()))

        have = [i for i in ix if self._gstats[i] is not None]
        if have:
            add("gfloat", torch.stack([self._gstats[i][0] for i in have]))
            add("gcount", torch.stack([self._gstats[i][1] for i in have]))
        add("wnorm", _l2_norms(ps))
        if upd:
            copies = cast("list[torch.Tensor]", self._before)  # upd: parameters with a copy
            before = [copies[i] for i in upd]
            torch._foreach_sub_(before, [self.params[i] for i in upd])
            add("unorm", _l2_norms(before))
        hist_g = [i for i in ix if self._ghist[i] is not None] if self.hist_now else []
        if self.hist_now:
            for i in hist_g:
                add("hf", self._ghist[i][0])
                add("hi", self._ghist[i][1])
            for p in ps:
                hw = histogram(p, self.bins)
                add("hf", hw[0])
                add("hi", hw[1])
        add("first", self._first_dev[dev])
        if isinstance(self._gscale, torch.Tensor) and self._gscale.device == dev:
            add("scale", self._gscale)
        flat = torch.cat([p.to(torch.float64) for p in parts]).cpu().numpy()  # the one transfer
        pos = 0
        hf: list = []
        hi: list = []
        for kind, size in lay:
            chunk = flat[pos:pos + size]
            pos += size
            if kind == "gfloat":
                G[have] = chunk.reshape(len(have), N_GRAD)
            elif kind == "gcount":
                C[have] = chunk.reshape(len(have), 2).astype(np.int64)
            elif kind == "wnorm":
                W[ix] = chunk
            elif kind == "unorm":
                U[upd] = chunk
            elif kind == "first":
                f = chunk.reshape(2, len(ix)).astype(np.int64)
                cur = self.first[:, ix]
                self.first[:, ix] = np.where(cur >= 0, cur, f)
                self._seen_nonfinite |= bool((f >= 0).any())
            elif kind == "scale":
                self._scale_host = float(chunk[0])
            elif kind == "hf":
                hf.append(chunk.tolist())
            else:
                hi.append(chunk)
        owners = [("grad", i) for i in hist_g] + [("weight", i) for i in ix]
        for (what, i), f, c in zip(owners, hf, hi):
            hists.append(_hist_row(i, what, f, c))

    def _first_host(self) -> np.ndarray:
        """Fold the device-side first-bad-step flags into ``self.first`` (one read per device)."""
        for dev, t in self._first_dev.items():
            ix = self.groups[dev][0]
            f = t.cpu().numpy()
            cur = self.first[:, ix]
            self.first[:, ix] = np.where(cur >= 0, cur, f)
            self._seen_nonfinite |= bool((f >= 0).any())
        return self.first

    def _record_first(self) -> None:
        """Keep every parameter's first non-finite gradient/weight step in the run's meta."""
        known = int((self.first >= 0).sum())
        if known != self._first_known:
            self._first_known = known
            self.store.set_meta(nonfinite_first={
                self.names[i]: {"grad": int(self.first[0, i]) if self.first[0, i] >= 0 else None,
                                "weight": int(self.first[1, i]) if self.first[1, i] >= 0 else None}
                for i in np.nonzero((self.first >= 0).any(axis=0))[0]})

    def _report(self, alerts: list) -> None:
        if alerts:
            self.store.put_alerts([(a.step, a.param, a.kind, a.message, a.value) for a in alerts])

    def finish(self) -> None:
        """Report NaN/Inf flags raised since the last measured step (GPU), then remove the hooks."""
        try:
            sc = self.scaler
            if sc is not None and self._attempt is not None and self._attempt is not sc._per_optimizer_states:
                self._skipped()
            last = self.step - 1
            host = [(ix, ps) for dev, (ix, ps) in self.groups.items() if dev not in self._first_dev]
            if self.per_step and not self.weights_per_step and last >= 0 and host:
                with torch.no_grad():
                    for ix, ps in host:
                        if (self._w_ok[ix] < last).any():
                            self._check_weights_host(last, ix, ps)
            if self._first_dev:
                self._first_host()
            if self._seen_nonfinite:
                self._record_first()
                self._report(self.alerts.nonfinite(self.first[0], self.first[1], weight_since=self.w_since))
        finally:
            self.remove_hooks()
            release_scratch()
            self._keep.clear()
            self._views.clear()

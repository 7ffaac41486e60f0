"""Initialising weights by name: every ``torch.nn.init`` scheme (and ``"default"``) on torch
and Keras 3 models.

Values are drawn into new tensors first and written with the same all-or-nothing path as
:func:`weightkit.set_weights`, so the ``Parameter`` / Keras variable objects stay.

**Torch.** ``torch.nn.init.<scheme>_`` itself; ``"default"`` calls the owning module's own
``reset_parameters()`` (on a copy of the module, so tensors you did not select keep their values).

**Keras.** The same names map to Keras initializers, which know Keras' layouts (a ``Dense``
kernel is ``(in, out)``: fan-in is axis 0; conv kernels ``(*k, in, out)``):

=================  ===========================================================================
torch scheme        Keras initializer
=================  ===========================================================================
uniform(a, b)       ``RandomUniform(minval=a, maxval=b)``
normal(mean, std)   ``RandomNormal(mean, stddev=std)``
trunc_normal        ``TruncatedNormal(mean, stddev=std)``: Keras cuts at mean ± 2·std, so ``a``/``b``
                    must be those bounds (or left out)
constant/ones/zeros ``Constant(val)`` / ``Ones`` / ``Zeros``
eye                 ``Identity`` (2-D)
xavier_uniform      ``VarianceScaling(gain², "fan_avg", "uniform")`` = ``GlorotUniform`` for gain 1
xavier_normal       ``VarianceScaling(gain², "fan_avg", "untruncated_normal")``
kaiming_uniform     ``VarianceScaling(gain², mode, "uniform")`` = ``HeUniform`` for ReLU, fan_in
kaiming_normal      ``VarianceScaling(gain², mode, "untruncated_normal")``
orthogonal(gain)    ``Orthogonal(gain)``
default             the layer's own ``<role>_initializer`` (``kernel_initializer``…)
dirac, sparse       not available (no Keras counterpart)
=================  ===========================================================================

``gain`` is torch's ``calculate_gain(nonlinearity, a)``, so bounds and standard deviations are
torch's formulas with Keras' fans. Keras' ``GlorotNormal``/``HeNormal`` draw a truncated normal;
weightkit draws an untruncated one, as torch does (same standard deviation either way).
``orthogonal`` follows Keras: the shape is flattened to ``(prod(shape[:-1]), shape[-1])`` (torch:
``(shape[0], prod(shape[1:]))``).

**Seeds.** ``seed=`` makes a call repeatable and leaves the global random state as it was:
torch draws inside ``torch.random.fork_rng`` (CPU and the CUDA devices of the tensors) after
seeding it; Keras initializers get seeds derived from ``seed`` (their own generators, no global
state). The tensors are drawn in model order. The same seed on another device or framework
gives different numbers.
"""

from __future__ import annotations

import copy
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from weightkit import _dtypes
from weightkit.core.selector import Names
from weightkit.core.selector import select as select_weights
from weightkit.edits._backend import KERAS, TORCH, Slot, framework, keras_owners, keras_slots, to_torch, torch_owners
from weightkit.edits.values import commit
from weightkit.errors import WeightkitError

__all__ = ["init", "InitReport", "SCHEMES"]

_REQUIRED = object()

# every scheme's arguments and defaults, as torch.nn.init spells them (tests compare with torch)
SCHEMES: dict[str, dict[str, Any]] = {
    "uniform": {"a": 0.0, "b": 1.0},
    "normal": {"mean": 0.0, "std": 1.0},
    "trunc_normal": {"mean": 0.0, "std": 1.0, "a": -2.0, "b": 2.0},
    "constant": {"val": _REQUIRED},
    "ones": {},
    "zeros": {},
    "eye": {},
    "dirac": {"groups": 1},
    "xavier_uniform": {"gain": 1.0},
    "xavier_normal": {"gain": 1.0},
    "kaiming_uniform": {"a": 0, "mode": "fan_in", "nonlinearity": "leaky_relu"},
    "kaiming_normal": {"a": 0, "mode": "fan_in", "nonlinearity": "leaky_relu"},
    "orthogonal": {"gain": 1},
    "sparse": {"sparsity": _REQUIRED, "std": 0.01},
    "default": {},
}
# (min, max) number of dimensions a scheme takes
_DIMS = {"xavier_uniform": (2, None), "xavier_normal": (2, None), "kaiming_uniform": (2, None),
         "kaiming_normal": (2, None), "orthogonal": (2, None), "eye": (2, 2), "sparse": (2, 2), "dirac": (3, 5)}
_ANY_DTYPE = {"zeros", "ones", "constant", "default"}
_KERAS_MISSING = {"dirac": "Keras has no Dirac initializer", "sparse": "Keras has no sparse initializer"}


@dataclass(frozen=True)
class InitReport:
    """What :func:`weightkit.init` did. ``to_dict()`` gives JSON."""

    scheme: str
    tensors: list[str]
    args: dict[str, Any]
    """Every argument of the scheme, defaults included."""
    seed: int | None
    framework: str
    initializer: dict[str, str] = field(default_factory=dict)
    """Per tensor, what drew its values (``torch.nn.init.xavier_uniform_``, a Keras initializer…)."""

    def to_dict(self) -> dict[str, Any]:
        return {"scheme": self.scheme, "tensors": list(self.tensors), "args": dict(self.args), "seed": self.seed,
                "framework": self.framework, "initializer": dict(self.initializer)}


def init(model: Any, scheme: str, *, select: Any = None, kind: Names = None, role: Names = None, seed: int | None = None,
         **args: Any) -> InitReport:
    """Initialise weights of a live torch or Keras 3 model in place with a ``torch.nn.init`` scheme.

    Args:
        model: a ``torch.nn.Module`` or a built Keras 3 model or layer.
        scheme: ``uniform``, ``normal``, ``trunc_normal``, ``constant`` (``val=``), ``ones``,
            ``zeros``, ``eye``, ``dirac``, ``xavier_uniform``, ``xavier_normal``,
            ``kaiming_uniform``, ``kaiming_normal`` (``nonlinearity=``, ``mode=``, ``a=``),
            ``orthogonal``, ``sparse`` (``sparsity=``), or ``default`` (the layer's own
            initialisation: ``reset_parameters()`` in torch, the layer's initializers in Keras).
        select, kind, role: the selector of :func:`weightkit.select`. With none of them, every
            floating-point parameter the scheme can take (2-D or more for the fan-based schemes,
            so biases are left alone) — buffers never. With a selector every selected tensor must
            take the scheme (a bias under ``xavier_uniform`` is an error: add ``role="weight"``);
            buffers are included only when ``select`` matches them.
        seed: make the draw repeatable without touching the global random state.
        **args: the scheme's arguments, named as in ``torch.nn.init``. On Keras the same names
            map to Keras initializers that know Keras' ``(in, out)`` layouts (table in
            :mod:`weightkit.edits.initialize`); ``dirac`` and ``sparse`` are torch-only.

    Returns:
        An :class:`InitReport`: the tensors, scheme, every argument, the seed.

    Raises:
        WeightkitError: unknown scheme (lists them), unknown or missing argument, a selected
            tensor the scheme cannot take; the model is unchanged.

    Example:
        >>> import torch, weightkit
        >>> net = torch.nn.Sequential()
        >>> net.add_module("fc1", torch.nn.Linear(100, 50))
        >>> weightkit.init(net, "kaiming_normal", select="fc1.weight", nonlinearity="relu", seed=0).tensors
        ['fc1.weight']
        >>> weightkit.init(net, "zeros", role="bias").tensors
        ['fc1.bias']
    """
    fw = framework(model, "init")
    full = _check_args(scheme, args)
    scheme = scheme.rstrip("_")  # "xavier_uniform_" (torch's spelling) is accepted too
    seed = _check_seed(seed)

    weights = select_weights(model, select, kind=kind, role=role)
    chosen = _applicable(weights, scheme, explicit=any(x is not None for x in (select, kind, role)),
                         buffers=select is not None, fw=fw)
    if fw == TORCH:
        plan, used = _torch_plan(model, chosen, scheme, full, seed)
    else:
        plan, used = _keras_plan(model, chosen, scheme, full, seed, given=args)
    commit(plan, "init")
    return InitReport(scheme, [w.name for w in chosen], {k: v for k, v in full.items()}, seed, fw, used)


# --- checks -----------------------------------------------------------------------------------

def _check_args(scheme: Any, args: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(scheme, str) or scheme.rstrip("_") not in SCHEMES:
        raise WeightkitError(f"init: unknown scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    spec = SCHEMES[scheme.rstrip("_")]
    unknown = [k for k in args if k not in spec]
    if unknown:
        accepted = ", ".join(f"{k}=" for k in spec) or "no arguments"
        raise WeightkitError(f"init: scheme {scheme!r} takes {accepted}; unknown argument(s): "
                             f"{', '.join(unknown)}" + ("; pass the seed as seed=" if "generator" in unknown else ""))
    full = {k: args.get(k, d) for k, d in spec.items()}
    missing = [k for k, v in full.items() if v is _REQUIRED]
    if missing:
        raise WeightkitError(f"init: scheme {scheme!r} needs {', '.join(f'{k}=' for k in missing)} "
                             f"(e.g. weightkit.init(model, {scheme!r}, {missing[0]}=0.1))")
    if "mode" in full and full["mode"] not in ("fan_in", "fan_out"):
        raise WeightkitError(f"init: mode must be 'fan_in' or 'fan_out'; received mode={full['mode']!r}")
    if "nonlinearity" in full:
        _gain(full["nonlinearity"], full.get("a", 0))  # raises for an unknown one
    return full


def _check_seed(seed: Any) -> int | None:
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2**63:
        raise WeightkitError(f"init: seed must be a non-negative integer; received seed={seed!r}")
    return int(seed)


def _gain(nonlinearity: Any, a: Any) -> float:
    """torch.nn.init.calculate_gain, without importing torch."""
    linear = {"linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
              "sigmoid"}
    if nonlinearity in linear:
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if a is None else a
        if isinstance(slope, bool) or not isinstance(slope, (int, float)):
            raise WeightkitError(f"init: a (the negative slope) must be a number; received a={a!r}")
        return math.sqrt(2.0 / (1 + slope ** 2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise WeightkitError(f"init: unsupported nonlinearity {nonlinearity!r}; choose one of "
                         f"{', '.join(sorted(linear | {'tanh', 'relu', 'leaky_relu', 'selu'}))}")


def _why_not(w, scheme: str) -> str | None:
    lo, hi = _DIMS.get(scheme, (0, None))
    if w.ndim < lo or (hi is not None and w.ndim > hi):
        need = f"{lo}-D" if lo == hi else (f"{lo}- to {hi}-D" if hi else f"{lo}-D or more")
        return f"{w.name} has shape {tuple(w.shape)} but {scheme} needs a {need} tensor"
    if scheme not in _ANY_DTYPE and not _dtypes.is_floating(w.dtype):
        return f"{w.name} is {w.dtype}; {scheme} draws floating-point values"
    return None


def _applicable(weights: list, scheme: str, *, explicit: bool, buffers: bool, fw: str) -> list:
    scheme = scheme.rstrip("_")
    if fw == KERAS and scheme in _KERAS_MISSING:
        raise WeightkitError(f"init: scheme {scheme!r} is torch-only ({_KERAS_MISSING[scheme]}); for Keras choose one "
                             f"of {', '.join(s for s in SCHEMES if s not in _KERAS_MISSING)}")
    if not explicit:
        chosen = [w for w in weights if not w.is_buffer and _dtypes.is_floating(w.dtype) and _why_not(w, scheme) is None]
        if not chosen:
            raise WeightkitError(f"init: no parameter of the model can take {scheme!r}"
                                 + (f" ({_why_not(weights[0], scheme)})" if weights else ""))
        return chosen
    chosen = [w for w in weights if buffers or not w.is_buffer]
    if not chosen:
        raise WeightkitError(f"init: the selector matches only buffers ({', '.join(w.name for w in weights[:5])}); "
                             "name them with select= to initialise buffers")
    bad = [r for r in (_why_not(w, scheme) for w in chosen) if r]
    if bad:
        hint = "; narrow the selector (e.g. role='weight')" if _DIMS.get(scheme, (0,))[0] >= 2 else ""
        raise WeightkitError(f"init: nothing was initialised; {'; '.join(bad[:5])}"
                             + (f"; and {len(bad) - 5} more" if len(bad) > 5 else "") + hint)
    return chosen


# --- torch ------------------------------------------------------------------------------------

@contextmanager
def _seeded(seed: int | None, devices):
    if seed is None:
        yield
        return
    import torch

    cuda = sorted({d.index if d.index is not None else torch.cuda.current_device() for d in devices
                   if d.type == "cuda"})
    with torch.random.fork_rng(devices=cuda):
        torch.random.default_generator.manual_seed(seed)
        for i in cuda:
            with torch.cuda.device(i):
                torch.cuda.manual_seed(seed)
        yield


def _torch_plan(model, chosen: list, scheme: str, args: dict, seed: int | None):
    import torch

    scheme = scheme.rstrip("_")
    owners = torch_owners(model)
    targets = [(w, *owners[w.name]) for w in chosen]
    plan: list[tuple[Slot, Any]] = []
    used: dict[str, str] = {}
    with _seeded(seed, {t.device for *_, t, _ in targets}), torch.no_grad():
        if scheme == "default":
            by_module: dict[int, list] = {}
            for entry in targets:
                by_module.setdefault(id(entry[1]), []).append(entry)
            for entries in by_module.values():
                module = entries[0][1]
                reset = getattr(module, "reset_parameters", None) or getattr(module, "_reset_parameters", None)
                if not callable(reset):
                    raise WeightkitError(
                        f"init: {entries[0][0].name} belongs to a {type(module).__name__}, which has no "
                        "reset_parameters(); choose a scheme (e.g. 'xavier_uniform')")
                fresh = copy.deepcopy(module)
                try:
                    getattr(fresh, reset.__name__)()
                except Exception as e:  # noqa: BLE001 - a user module's own code
                    raise WeightkitError(f"init: {type(module).__name__}.{reset.__name__}() failed for "
                                         f"{entries[0][0].name}: {e}") from e
                for w, _, attr, t, is_buffer in entries:
                    new = (fresh._buffers if is_buffer else fresh._parameters)[attr]
                    plan.append((Slot(w.name, t, TORCH, is_buffer=is_buffer), new.detach().to(t.dtype)))
                    used[w.name] = f"{type(module).__name__}.{reset.__name__}"
        else:
            fn = getattr(torch.nn.init, scheme + "_")
            for w, _module, _attr, t, is_buffer in targets:
                new = torch.empty_like(t.detach())
                try:
                    fn(new, **args)
                except (ValueError, RuntimeError, TypeError) as e:
                    raise WeightkitError(f"init: {scheme} cannot initialise {w.name} (shape {tuple(t.shape)}): "
                                         f"{e}") from e
                plan.append((Slot(w.name, t, TORCH, is_buffer=is_buffer), new))
                used[w.name] = f"torch.nn.init.{scheme}_"
    return plan, used


# --- Keras ------------------------------------------------------------------------------------

def _keras_initializer(scheme: str, args: dict, seed: int | None):
    from keras import initializers as I

    if scheme == "uniform":
        return I.RandomUniform(minval=args["a"], maxval=args["b"], seed=seed)
    if scheme == "normal":
        return I.RandomNormal(mean=args["mean"], stddev=args["std"], seed=seed)
    if scheme == "trunc_normal":
        return I.TruncatedNormal(mean=args["mean"], stddev=args["std"], seed=seed)
    if scheme == "constant":
        return I.Constant(value=args["val"])
    if scheme == "ones":
        return I.Ones()
    if scheme == "zeros":
        return I.Zeros()
    if scheme == "eye":
        return I.Identity()
    if scheme == "orthogonal":
        return I.Orthogonal(gain=args["gain"], seed=seed)
    if scheme.startswith(("xavier", "kaiming")):
        gain = args["gain"] if scheme.startswith("xavier") else _gain(args["nonlinearity"], args["a"])
        mode = "fan_avg" if scheme.startswith("xavier") else args["mode"]
        dist = "uniform" if scheme.endswith("uniform") else "untruncated_normal"
        return I.VarianceScaling(scale=float(gain) ** 2, mode=mode, distribution=dist, seed=seed)
    raise AssertionError(scheme)


def _describe(initializer) -> str:
    cfg = initializer.get_config() if hasattr(initializer, "get_config") else {}
    shown = ", ".join(f"{k}={v!r}" for k, v in cfg.items() if k != "seed" and v is not None)
    where = "keras.initializers." if type(initializer).__module__.startswith("keras") else ""
    return f"{where}{type(initializer).__name__}({shown})"


_ROLE_INITIALIZER = {"recurrent_kernel": "recurrent_initializer", "depthwise_kernel": "depthwise_initializer",
                     "pointwise_kernel": "pointwise_initializer"}


# variables whose initializer a Keras layer hard-codes instead of keeping as an attribute
_FIXED_INITIALIZER = {("RMSNormalization", "scale"): "ones"}


def _layer_initializer(layer, role: str, name: str):
    """The initializer a Keras layer created variable ``role`` with."""
    attrs = [_ROLE_INITIALIZER.get(role, f"{role}_initializer"), f"_{role}_initializer"]
    if role == "kernel":
        attrs.append("depthwise_initializer")  # DepthwiseConv*D names its kernel "kernel"
    for attr in attrs:
        found = getattr(layer, attr, None)
        if found is not None and callable(found):
            return found
    fixed = _FIXED_INITIALIZER.get((type(layer).__name__, role))
    if fixed:
        from keras import initializers

        return initializers.get(fixed)
    raise WeightkitError(f"init: the Keras {type(layer).__name__} layer that owns {name} has no initializer for "
                         f"{role!r} (looked for {', '.join(attrs)}); choose a scheme (e.g. 'xavier_uniform')")


def _reseeded(initializer, seed: int):
    cfg = initializer.get_config() if hasattr(initializer, "get_config") else None
    if cfg is None or "seed" not in cfg:
        return initializer  # deterministic initializers (Zeros, Ones, Constant…) or plain functions
    return type(initializer).from_config({**cfg, "seed": seed})


def _keras_plan(model, chosen: list, scheme: str, args: dict, seed: int | None, *, given: dict):
    scheme = scheme.rstrip("_")
    if scheme == "trunc_normal" and ("a" in given or "b" in given):
        lo, hi = args["mean"] - 2 * args["std"], args["mean"] + 2 * args["std"]
        if not (math.isclose(args["a"], lo, abs_tol=1e-12) and math.isclose(args["b"], hi, abs_tol=1e-12)):
            raise WeightkitError(f"init: Keras' TruncatedNormal cuts at mean ± 2·std = [{lo}, {hi}]; received a={args['a']}, "
                                 f"b={args['b']}; leave a/b out or use those bounds")
    slots = keras_slots(model)
    owners = keras_owners(model)
    seeds = [int(s) for s in np.random.SeedSequence(seed).generate_state(max(1, len(chosen)))]
    plan: list[tuple[Slot, Any]] = []
    used: dict[str, str] = {}
    for w, s in zip(chosen, seeds):
        slot = slots[w.name]
        v = slot.obj
        if scheme == "default":
            layer = owners.get(id(v))
            if layer is None:
                raise WeightkitError(f"init: no layer of the model owns {w.name}, so its own initializer is unknown")
            role = v.path.rpartition("/")[2]
            if role == "bias" and getattr(layer, "unit_forget_bias", False) and getattr(layer, "use_bias", True):
                initializer = LSTMForgetBias(_reseeded(layer.bias_initializer, s), layer.units)
            else:
                initializer = _reseeded(_layer_initializer(layer, role, w.name), s)
        else:
            initializer = _keras_initializer(scheme, args, s)
        try:
            value = initializer(tuple(slot.shape), dtype=slot.dtype_name)
        except (ValueError, TypeError, RuntimeError) as e:
            raise WeightkitError(f"init: {scheme} cannot initialise {w.name} (shape {slot.shape}): {e}") from e
        plan.append((slot, to_torch(value).to(device=slot.device, dtype=slot.torch_dtype)))
        used[w.name] = _describe(initializer)
    return plan, used


class LSTMForgetBias:
    """Keras LSTM's ``unit_forget_bias``: the forget gate's bias starts at one."""

    def __init__(self, bias_initializer, units: int):
        self.inner, self.units = bias_initializer, units

    def __call__(self, shape, dtype=None):
        from keras import ops

        u = self.units
        return ops.concatenate([self.inner((u,), dtype=dtype), ops.ones((u,), dtype=dtype),
                                self.inner((2 * u,), dtype=dtype)])

    def get_config(self):
        return {"bias_initializer": type(self.inner).__name__, "unit_forget_bias": True}

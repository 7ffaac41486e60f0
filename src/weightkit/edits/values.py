"""Reading and writing the values of a live model: ``get_weights``, ``set_weights``,
``set_weight``.

Every write is validated in full before the first byte changes (names, shapes, lossy casts,
NaN/Inf), then done in place under ``torch.no_grad()`` with ``copy_`` (torch) or
``variable.assign`` (Keras), so the same ``nn.Parameter`` / Keras variable object stays and an
optimizer built earlier keeps updating it; device and dtype are kept. A write of many tensors is
all-or-nothing: should one fail midway, the tensors already written are restored.

**Casts.** A value whose dtype differs from the weight's is accepted when the cast loses
nothing that the weight's dtype could have held:

- into ``float32``/``float64`` (and complex of those): rounding to the nearest representable
  value is accepted — every finite value must come back within half a unit in the last place
  (relative error ≤ 2⁻²⁴ for float32); overflow to ±Inf, and underflow to zero or to a subnormal
  that loses digits, are lossy. So ``np.random.randn`` (float64) into a float32 layer just works.
- into ``float16``, ``bfloat16``, float8, integer and ``bool`` weights: every value must be
  exactly representable (a value from ``get_weights`` of such a weight always is). Rounding
  float64 data to 8–11 significant bits, or 2.5 to an integer, is not done silently.
- complex into a real weight: only when every imaginary part is zero.

``allow_cast=True`` rounds whatever comes (torch's ``.to(dtype)``). NaN and ±Inf in a new value
are refused unless ``allow_nonfinite=True``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from weightkit.edits._backend import KERAS, TORCH, Slot, framework, keras_slots, to_torch, torch_slots
from weightkit.errors import WeightkitError

__all__ = ["get_weights", "set_weights", "set_weight"]

_CHUNK = 1 << 18  # elements per piece when checking casts: temporaries stay small and in cache


def slots_of(model, what: str) -> tuple[str, dict[str, Slot]]:
    fw = framework(model, what)
    return fw, (torch_slots(model) if fw == TORCH else keras_slots(model))


def get_weights(model: Any, *, as_dict: bool = False) -> list[np.ndarray] | dict[str, np.ndarray]:
    """Every weight of a live model as NumPy arrays: a list, or a name → array dict.

    Order and names: for a Keras model, ``model.weights`` (the order of Keras'
    ``model.get_weights()``), named by ``variable.path``; for a torch module, its
    ``state_dict()`` — parameters and persistent buffers, module by module — named by the
    ``state_dict`` keys (a tied tensor appears under each of its names).

    Every array is a new copy: changing it never changes the model. bfloat16 and float8 weights
    come back as float32 holding the same values exactly (NumPy has no such types); writing them
    back with :func:`set_weights` is exact.

    Args:
        model: a ``torch.nn.Module`` or a built Keras 3 model or layer.
        as_dict: return ``{name: array}`` instead of a list.

    Example:
        >>> import torch, weightkit
        >>> net = torch.nn.Linear(3, 2)
        >>> [w.shape for w in weightkit.get_weights(net)]
        [(2, 3), (2,)]
        >>> list(weightkit.get_weights(net, as_dict=True))
        ['weight', 'bias']
    """
    _, slots = slots_of(model, "get_weights")
    if as_dict:
        return {name: s.numpy() for name, s in slots.items()}
    return [s.numpy() for s in slots.values()]


def set_weights(model: Any, values: Mapping[str, Any] | Iterable[Any], *, allow_cast: bool = False,
                allow_nonfinite: bool = False) -> list[str]:
    """Write new values into a live model, in place, all or nothing.

    Args:
        model: a ``torch.nn.Module`` or a built Keras 3 model or layer.
        values: either a list with one array per weight, in :func:`get_weights`' order, or a
            dict ``{name: array}`` naming any subset of :func:`get_weights`' names. Arrays may be
            NumPy arrays, torch tensors, Keras variables or nested lists.
        allow_cast: round values that the weight's dtype cannot hold exactly (see the module
            notes for what is accepted without it).
        allow_nonfinite: accept NaN and ±Inf in the new values.

    Returns:
        The names written, in model order (a tied weight under each of its names).

    Raises:
        WeightkitError: an unknown name (with close names), a wrong shape (values are never
            broadcast), a lossy cast or NaN/Inf; nothing has been written then. Should a write
            itself fail, the tensors already written are restored before the error is raised.

    Example:
        >>> import numpy as np, torch, weightkit
        >>> net = torch.nn.Linear(3, 2)
        >>> weightkit.set_weights(net, {"bias": np.array([1.0, 2.0])})
        ['bias']
        >>> net.bias.tolist()
        [1.0, 2.0]
    """
    fw, slots = slots_of(model, "set_weights")
    items = _pair(values, slots, fw)
    plan = stage(items, allow_cast=allow_cast, allow_nonfinite=allow_nonfinite, what="set_weights")
    commit(plan)
    written = {s.key for s, _ in plan}
    return [n for n, s in slots.items() if s.key in written]


def set_weight(model: Any, name: str, value: Any, *, allow_cast: bool = False, allow_nonfinite: bool = False) -> None:
    """Write one weight of a live model in place (same checks as :func:`set_weights`).

    Example:
        >>> import torch, weightkit
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 2))
        >>> w = weightkit.get_weights(net, as_dict=True)["0.weight"]
        >>> w[0, 0] = 10
        >>> weightkit.set_weight(net, "0.weight", w)
        >>> bool(net[0].weight[0, 0] == 10)
        True
    """
    if not isinstance(name, str):
        raise WeightkitError(f"set_weight: the name must be a string such as 'fc.weight'; received {name!r}")
    set_weights(model, {name: value}, allow_cast=allow_cast, allow_nonfinite=allow_nonfinite)


# --- validation -------------------------------------------------------------------------------

def unknown_names(asked: Iterable[str], known: Iterable[str], where: str) -> WeightkitError:
    known = list(known)
    parts = []
    for name in asked:
        close = difflib.get_close_matches(str(name), known, n=3, cutoff=0.5)
        parts.append(f"{name!r}" + (f" (did you mean {', '.join(map(repr, close))}?)" if close else ""))
    shown = ", ".join(known[:8]) + (f", … ({len(known)} in all)" if len(known) > 8 else "")
    return WeightkitError(f"{where}: no weight named {'; '.join(parts)}; the model has: {shown}")


def _pair(values, slots: dict[str, Slot], fw: str) -> list[tuple[Slot, Any, str]]:
    """(slot, value, label) for every value given."""
    order = "model.weights" if fw == KERAS else "state_dict()"
    if isinstance(values, Mapping):
        missing = [k for k in values if k not in slots]
        if missing:
            raise unknown_names(missing, slots, "set_weights")
        return [(slots[k], v, repr(k)) for k, v in values.items()]
    if isinstance(values, (str, bytes, np.ndarray)) or not isinstance(values, Iterable) or _is_tensor(values):
        raise WeightkitError(
            f"set_weights: values must be a list with one array per weight (in {order} order, as get_weights "
            f"returns them) or a dict {{name: array}}; received {type(values).__name__}")
    values = list(values)
    if len(values) != len(slots):
        names = list(slots)
        shown = ", ".join(names[:6]) + (", …" if len(names) > 6 else "")
        raise WeightkitError(
            f"set_weights: received a list of {len(values)} arrays but the model has {len(slots)} weights "
            f"({shown}), in {order} order; give all of them, or a dict {{name: array}} for a subset")
    return [(s, v, f"{name!r} (position {i})") for i, ((name, s), v) in enumerate(zip(slots.items(), values))]


def _is_tensor(x) -> bool:
    return type(x).__name__ in ("Tensor", "Parameter", "Variable") and hasattr(x, "shape")


def stage(items: list[tuple[Slot, Any, str]], *, allow_cast: bool, allow_nonfinite: bool,
          what: str) -> list[tuple[Slot, Any]]:
    """Validate every value and convert it to its slot's dtype and device; nothing is written.
    Raises ``WeightkitError`` listing every problem."""
    import torch

    if isinstance(allow_cast, str) or isinstance(allow_nonfinite, str):
        raise WeightkitError(f"{what}: allow_cast and allow_nonfinite are booleans")
    targets = [_storage_range(s.live()) for s, _, _ in items]
    problems: list[str] = []
    staged: dict[int, tuple[Slot, Any, str]] = {}
    for slot, value, label in items:
        try:
            t = to_torch(value)
        except (TypeError, ValueError, RuntimeError) as e:
            problems.append(f"{label}: the value is not an array of numbers ({e})")
            continue
        problem = check_value(slot, t, allow_cast=allow_cast, allow_nonfinite=allow_nonfinite)
        if problem:
            problems.append(f"{label}: {problem}")
            continue
        if t.is_complex() and not slot.torch_dtype.is_complex:
            t = t.real
        out = t.to(device=slot.device, dtype=slot.torch_dtype)
        if out is t and _overlaps(_storage_range(t), targets):
            out = t.clone()  # the value is (a view of) model memory: copy it before anything is written
        if slot.key in staged:  # a tied tensor given under two names
            prev_slot, prev, prev_label = staged[slot.key]
            same = torch.equal(prev, out) or (out.is_floating_point() and bool(
                ((prev == out) | (torch.isnan(prev) & torch.isnan(out))).all()))
            if not same:
                problems.append(f"{label} and {prev_label} are one tensor (tied weights) but received different "
                                "values; give equal values or name only one of them")
            continue
        staged[slot.key] = (slot, out, label)
    if problems:
        raise WeightkitError(f"{what}: nothing was written; {'; '.join(problems)}")
    return [(slot, out) for slot, out, _ in staged.values()]


def check_value(slot: Slot, t, *, allow_cast: bool, allow_nonfinite: bool) -> str | None:
    """What is wrong with writing tensor ``t`` into ``slot``, or None."""
    import torch

    shape = tuple(t.shape)
    if shape != slot.shape:
        hint = " (it would broadcast, but weightkit never broadcasts)" if _broadcasts(shape, slot.shape) else ""
        return (f"the value has shape {shape} but the weight has shape {slot.shape}{hint}; give an array of "
                f"shape {slot.shape}")
    if (t.is_floating_point() or t.is_complex()) and not allow_nonfinite and not all_finite(t):
        bad = ~torch.isfinite(t if t.is_complex() or t.dtype in (torch.float16, torch.bfloat16, torch.float32,
                                                                  torch.float64) else t.to(torch.float32))
        n = int(bad.sum())
        first = tuple(int(i) for i in bad.nonzero()[0]) if t.ndim else ()
        return (f"the value holds {n} NaN/Inf (first at index {first}); fix the value, or pass "
                "allow_nonfinite=True if that is intended")
    if allow_cast or t.dtype == slot.torch_dtype:
        return None
    return cast_problem(t, slot.torch_dtype, slot.dtype_name)


_HALF_ULP: dict[Any, float] = {}  # target dtype -> unit roundoff (filled on first use: torch is imported lazily)


def all_finite(t) -> bool:
    """No NaN or ±Inf in ``t``: one reduction (min and max propagate both), no temporary."""
    import torch

    if t.numel() == 0:
        return True
    if t.is_complex():
        t = torch.view_as_real(t)
    try:
        lo, hi = torch.aminmax(t)
    except (RuntimeError, NotImplementedError):  # float8 and other types without the reduction
        return bool(torch.isfinite(t.to(torch.float32)).all())
    return bool(torch.isfinite(lo)) and bool(torch.isfinite(hi))


def cast_problem(t, target, target_name: str) -> str | None:
    """Why casting ``t`` to ``target`` loses values (see the module notes), or None."""
    import torch

    src_name = str(t.dtype).removeprefix("torch.")
    if t.is_complex() and not target.is_complex:
        if bool((t.imag != 0).any()):
            return (f"the value is {src_name} with non-zero imaginary parts but the weight is {target_name}; "
                    "pass the real part, or allow_cast=True to drop the imaginary parts")
        t = t.real
    if not _HALF_ULP:
        _HALF_ULP.update({torch.float32: 2.0 ** -24, torch.complex64: 2.0 ** -24,
                          torch.float64: 2.0 ** -53, torch.complex128: 2.0 ** -53})
    rounding = target in _HALF_ULP
    flat = t.reshape(-1)
    for start in range(0, flat.numel(), _CHUNK):
        piece = flat[start:start + _CHUNK]
        got = piece.to(target)
        if rounding:  # only overflow and underflow exceed half an ulp; NaN - NaN and Inf - Inf compare False
            wide = torch.complex128 if (target.is_complex or piece.is_complex()) else torch.float64
            ref = piece.to(wide)
            if wide.is_complex:
                diff = (got.to(wide) - ref).abs()
            else:
                diff = got.to(wide, copy=True).sub_(ref).abs_()
            bad = diff > ref.abs().mul_(_HALF_ULP[target])
        else:
            back = got.to(piece.dtype)
            bad = back != piece
            if piece.is_floating_point() and bool(bad.any()):
                bad &= ~(torch.isnan(back) & torch.isnan(piece))
        if bool(bad.any()):
            idx = int(bad.nonzero()[0])
            n = int(bad.sum())
            was, became = piece[idx].item(), got[idx].to(torch.float64 if not target.is_complex else target).item()
            what = ("cannot be held exactly" if not rounding else "lose precision beyond rounding (overflow or underflow)")
            more = " (at least)" if flat.numel() > _CHUNK else ""
            return (f"the value is {src_name} but the weight is {target_name}, and {n}{more} values {what}, e.g. "
                    f"{was!r} → {became!r}; give {target_name} values, or pass allow_cast=True to round them")
    return None


def _broadcasts(src: tuple[int, ...], dst: tuple[int, ...]) -> bool:
    if len(src) > len(dst):
        return False
    return all(a in (1, b) for a, b in zip(reversed(src), reversed(dst)))


def _storage_range(t) -> tuple[int, int]:
    try:
        s = t.untyped_storage()
        return s.data_ptr(), s.data_ptr() + s.nbytes()
    except (RuntimeError, NotImplementedError):
        return 0, 0


def _overlaps(r: tuple[int, int], ranges: list[tuple[int, int]]) -> bool:
    return r[1] > r[0] and any(a < r[1] and r[0] < b for a, b in ranges)


# --- writing --------------------------------------------------------------------------------

def _write_one(slot: Slot, value) -> None:
    """Write one staged value (the only place edits write values; tests patch it)."""
    slot.assign(value)


def commit(plan: list[tuple[Slot, Any]], what: str = "set_weights") -> None:
    """Write every staged value; if any write fails, restore those already written, then raise."""
    done: list[tuple[Slot, Any]] = []
    try:
        for i, (slot, value) in enumerate(plan):
            # a backup of every tensor but the last: one copy_ of a validated value either raises before it
            # writes or completes, so only tensors written before a failure need restoring
            done.append((slot, slot.live().clone() if i < len(plan) - 1 else None))
            _write_one(slot, value)
    except BaseException as e:
        for slot, backup in reversed(done):
            if backup is not None:
                slot.assign(backup)
        if isinstance(e, Exception) and not isinstance(e, WeightkitError):
            raise WeightkitError(
                f"{what}: writing {done[-1][0].name!r} failed ({type(e).__name__}: {e}); the {len(done) - 1} "
                "tensor(s) written before it were restored, the model is unchanged") from e
        raise

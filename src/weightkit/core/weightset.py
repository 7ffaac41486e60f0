"""The WeightSet: every weight of a model or checkpoint with its meaning, data read lazily."""

from __future__ import annotations

import fnmatch
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from weightkit import _dtypes
from weightkit.errors import CorruptFileError
from weightkit.layers import (
    UNKNOWN,
    LayerFacts,
    ModelContext,
    axis_spec,
    in_axis,
    infer_layer,
    out_axis,
    spec_fields,
    split_rnn_name,
)

if TYPE_CHECKING:
    from weightkit.sources import RawTensor, Reader

__all__ = ["Weight", "WeightSet"]

DEFAULT_CHUNK_BYTES = 16 << 20


@dataclass(frozen=True)
class Weight:
    """One tensor: its metadata, and its data on demand (``numpy()``, ``torch()``, ``chunks()``)."""

    name: str
    """Full name, as the source spells it (``fc.weight``, ``sequential/dense/kernel``)."""
    layer: str
    """Path of the layer that owns the tensor (``fc``, ``sequential/dense``)."""
    kind: str
    """Layer class (``Linear``, ``Conv2d``, ``Dense``…) or ``"unknown"``."""
    role: str
    """Role of the tensor within its layer (``weight``, ``bias``, ``weight_ih``, ``kernel``…)."""
    shape: tuple[int, ...]
    axes: tuple[str, ...]
    """Meaning of each dimension, ``"?"`` where unknown."""
    dtype: str
    """Canonical dtype name (``float32``, ``bfloat16``…)."""
    trainable: bool | None
    """``None`` when the source does not say (plain state dicts)."""
    is_buffer: bool
    shared_with: tuple[str, ...] = ()
    """Other names of the same tensor (tied or shared weights), reported once under ``name``."""
    kind_from: str = "inferred"
    """How ``kind`` was found: ``module`` (live class), ``config`` (file config), ``inferred``, ``name``."""
    device: str | None = None
    axis_tokens: tuple[str, ...] = ()
    """The machine meaning of each axis (:data:`weightkit.layers.AXIS_TOKENS`); programs read these,
    never ``axes``. Taken from the layer table when not given."""
    gate_order: str | None = None
    """Order of the stacked blocks of a gate or q/k/v axis (``"i,f,g,o"``), if there is one."""
    kind_evidence: str = ""
    """What ``kind`` rests on, for people (``structure: running statistics``, ``config: model_config``)."""
    kind_candidates: tuple[str, ...] = ()
    """When ``kind`` is unknown: the kinds the evidence left open (``LayerNorm``, ``BatchNorm``…)."""
    _reader: Any = field(default=None, repr=False, compare=False)
    _key: str = field(default="", repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.axis_tokens and self.shape:
            fields = spec_fields(axis_spec(self.kind, self.role, tuple(self.shape)))
            object.__setattr__(self, "axis_tokens", fields["axis_tokens"])
            object.__setattr__(self, "gate_order", fields["gate_order"])

    @property
    def out_axis(self) -> int | None:
        """Index of the output axis (units, filters, gate block, vocabulary rows…), from the tokens.

        Example:
            >>> import torch, weightkit
            >>> ws = weightkit.open(torch.nn.ConvTranspose2d(3, 4, 3))
            >>> ws["weight"].axes, ws["weight"].out_axis, ws["weight"].in_axis
            (('in_channels', 'out_channels/groups', 'kernel_h', 'kernel_w'), 1, 0)
        """
        return out_axis(self.axis_tokens)

    @property
    def in_axis(self) -> int | None:
        """Index of the input axis (input units or channels, the recurrent state), from the tokens."""
        return in_axis(self.axis_tokens)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * _dtypes.itemsize(self.dtype)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def raw(self) -> np.ndarray:
        """Storage as stored (bfloat16 as ``uint16``, float8 as ``uint8``); may be a read-only view."""
        if self.numel == 0 and self.dtype in _dtypes.DTYPES:
            return self._empty()
        return self._reader.read(self._key)

    def _empty(self) -> np.ndarray:
        """A tensor with no elements, read from nothing. numpy refuses shapes whose non-zero
        dimensions multiply past 2**63 bytes (``[2**63, 0, 3, 3]``, valid in a safetensors header)."""
        try:
            return np.empty(self.shape, dtype=_dtypes.DTYPES[self.dtype][1])
        except ValueError:
            raise CorruptFileError(
                f"{self._reader.description}: tensor {self.name!r} has shape {list(self.shape)}, which no numpy "
                "or torch array can hold (sizes are 64-bit integers); it has no values: re-save the file "
                "without it") from None

    def raw_range(self, start: int, stop: int) -> np.ndarray:
        """Raw storage of flat elements ``[start, stop)``, read without loading the rest."""
        return self._reader.read_flat(self._key, start, stop)

    def numpy(self) -> np.ndarray:
        """The values as a new NumPy array (bfloat16 and float8 come back as float32, exactly).

        Example:
            >>> import torch, weightkit
            >>> weightkit.open(torch.nn.Linear(3, 2))["weight"].numpy().shape
            (2, 3)
        """
        return np.array(_dtypes.decode(self.raw(), self.dtype), copy=True)

    def torch(self):
        """The tensor as ``torch.Tensor`` in its own dtype (bfloat16 stays bfloat16)."""
        if self.numel == 0 and self.dtype in _dtypes.DTYPES:
            self._empty()  # refuses a shape no array can hold with a one-line error
        return self._reader.read_torch(self._key)

    def chunks(self, *, max_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[np.ndarray]:
        """Flat pieces of the raw storage, each at most ``max_bytes``, read one at a time."""
        step = max(1, max_bytes // max(1, _dtypes.itemsize(self.dtype)))
        for start in range(0, self.numel, step):
            yield self.raw_range(start, min(start + step, self.numel))

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable metadata (the ``tensors`` items of ``summary --json``)."""
        return {
            "name": self.name,
            "layer": self.layer,
            "kind": self.kind,
            "role": self.role,
            "shape": list(self.shape),
            "axes": list(self.axes),
            "axis_tokens": list(self.axis_tokens),
            "out_axis": self.out_axis,
            "in_axis": self.in_axis,
            "gate_order": self.gate_order,
            "dtype": self.dtype,
            "numel": self.numel,
            "nbytes": self.nbytes,
            "trainable": self.trainable,
            "is_buffer": self.is_buffer,
            "shared_with": list(self.shared_with),
            "kind_from": self.kind_from,
            "kind_evidence": self.kind_evidence,
            "kind_candidates": list(self.kind_candidates),
        }


class WeightSet:
    """Ordered weights of one source. Metadata is in memory; bytes are read only when asked.

    Example:
        >>> import torch, weightkit
        >>> ws = weightkit.open(torch.nn.LSTM(10, 20))
        >>> ws["weight_ih_l0"].axes
        ('4*hidden (i,f,g,o)', 'input_size')
        >>> len(ws), ws.total_params
        (4, 2560)
    """

    def __init__(self, reader: Reader):
        self._reader = reader
        self._weights: dict[str, Weight] = {}
        self._aliases: dict[str, str] = {}
        for w in _annotate(reader, reader.tensors()):
            self._weights[w.name] = w
            for alias in w.shared_with:
                self._aliases[alias] = w.name

    # --- container protocol ---
    def __iter__(self) -> Iterator[Weight]:
        return iter(self._weights.values())

    def __len__(self) -> int:
        return len(self._weights)

    def __contains__(self, name: object) -> bool:
        return name in self._weights or name in self._aliases

    def __getitem__(self, name: str) -> Weight:
        if name in self._weights:
            return self._weights[name]
        if name in self._aliases:
            return self._weights[self._aliases[name]]
        close = fnmatch.filter(self._weights, f"*{name}*")[:5]
        hint = f"; did you mean {', '.join(close)}?" if close else f"; {len(self)} names are available (see .names)"
        raise KeyError(f"no weight named {name!r} in {self.source}{hint}")

    def __repr__(self) -> str:
        return f"<WeightSet {self.source!r} format={self.format} tensors={len(self)} params={self.total_params:,}>"

    def __enter__(self) -> WeightSet:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- facts ---
    @property
    def source(self) -> str:
        """What was opened: a path or a description of a live model."""
        return self._reader.description

    @property
    def format(self) -> str:
        """Registry name of the reader (``safetensors``, ``torch``, ``torch-module``…)."""
        return self._reader.format

    @property
    def names(self) -> list[str]:
        return list(self._weights)

    @property
    def metadata(self) -> dict[str, Any]:
        """Everything in the source that is not a weight (epoch, metrics, optimizer summary…)."""
        return self._reader.metadata()

    @property
    def model_config(self) -> dict[str, Any] | None:
        """The architecture stored with the weights (a Keras config), or ``None``: data, never run."""
        get = getattr(self._reader, "model_config", None)
        return get() if get is not None else None

    @property
    def total_params(self) -> int:
        """Elements of all parameters (buffers excluded), shared tensors counted once."""
        return sum(w.numel for w in self if not w.is_buffer)

    def layers(self) -> dict[str, list[Weight]]:
        """Weights grouped by layer path, in source order."""
        groups: dict[str, list[Weight]] = defaultdict(list)
        for w in self:
            groups[w.layer].append(w)
        return dict(groups)

    def close(self) -> None:
        self._reader.close()


def _annotate(reader: Reader, raws: list[RawTensor]) -> list[Weight]:
    """Fill in layer, kind, role and axes for every raw tensor."""
    groups: dict[str, list[tuple[RawTensor, str]]] = defaultdict(list)
    for raw in raws:
        if raw.layer is not None and raw.role is not None:
            layer, role = raw.layer, raw.role
        else:
            layer, _, role = raw.name.rpartition(".")
            layer = raw.layer if raw.layer is not None else layer
            role = raw.role or role
        groups[layer].append((raw, role))

    shapes = {layer: {role: tuple(r.shape) for r, role in members} for layer, members in groups.items()}
    context = ModelContext.of(shapes)
    out = []
    for layer, members in groups.items():
        given = next((r.kind for r, _ in members if r.kind), None)
        candidates: tuple[str, ...] = ()
        if given:
            kind_from = next((r.kind_from for r, _ in members if r.kind_from), "module")
            kind = given
            evidence = {"module": "module: the live class", "config": "config: stored with the weights",
                        "name": "name: the layer's class name"}.get(kind_from, kind_from)
        else:
            inferred = infer_layer(layer, shapes[layer], context)
            kind, evidence, candidates = inferred.kind, inferred.evidence, inferred.candidates
            kind_from = "inferred" if kind != UNKNOWN else "unknown"
        config: dict[str, Any] = {}
        for r, _ in members:
            config.update(r.layer_config)
        facts = LayerFacts(kind, frozenset(_base_role(role) for _, role in members), config,
                           tuple(role for _, role in members))
        for raw, role in members:
            kind_here = raw.kind or kind
            spec = axis_spec(kind_here, role, tuple(raw.shape), facts)
            # torch parameters are always floating point: an integer tensor in a file is a buffer
            stat = role in ("running_mean", "running_var", "num_batches_tracked") or (
                raw.trainable is None and not _dtypes.is_floating(raw.dtype) and not raw.dtype.startswith("complex"))
            out.append(
                Weight(
                    name=raw.name,
                    layer=layer,
                    kind=kind_here,
                    role=_base_role(role) if kind_here.removesuffix("Cell") in ("LSTM", "GRU", "RNN") else role,
                    shape=tuple(raw.shape),
                    **spec_fields(spec),
                    dtype=raw.dtype,
                    trainable=False if stat and raw.trainable is None else raw.trainable,
                    is_buffer=raw.is_buffer or stat,
                    shared_with=tuple(raw.shared_with),
                    kind_from=kind_from if kind_here != UNKNOWN else "unknown",
                    kind_evidence=evidence if kind_here != UNKNOWN else "",
                    kind_candidates=candidates if kind_here == UNKNOWN else (),
                    device=raw.device,
                    _reader=reader,
                    _key=raw.key,
                )
            )
    order = {raw.name: i for i, raw in enumerate(raws)}
    out.sort(key=lambda w: order[w.name])
    return out


def _base_role(role: str) -> str:
    parts = split_rnn_name(role)
    return parts[0] if parts else role

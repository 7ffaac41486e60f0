"""The reader protocol and the registry of sources.

A *reader* turns one kind of thing a user has (a live model, a file format) into a list of
:class:`RawTensor` records plus lazy access to their bytes. It knows nothing about layer
semantics: :mod:`weightkit.layers` fills in kind, role and axes from the hints a reader gives.
Adding a format is adding one module that registers a reader with :func:`register_reader`.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, runtime_checkable

import numpy as np

from weightkit._dtypes import is_viewed
from weightkit.formats.special import open_regular
from weightkit.layers import split_rnn_name

__all__ = ["RawTensor", "Reader", "ReaderSpec", "register_reader", "list_readers", "sniff_head"]


# Modules that register readers, in the order their sniffers are tried.
_MODULES = (
    "quantized",
    "safetensors_file",
    "torch_checkpoint",
    "numpy_file",
    "keras_file",
    "keras_model",  # before torch_module: Keras 3 layers on the torch backend are nn.Modules too
    "torch_module",
    "mapping",
    "directory",
)
_loaded = False


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in _MODULES:
        try:
            importlib.import_module(f"weightkit.sources.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"weightkit.sources.{mod}":
                raise



@dataclass
class RawTensor:
    """What a reader knows about one tensor before any layer inference.

    ``key`` is how the reader finds the bytes; ``name`` is what users see. Optional hints
    (``kind``, ``layer``, ``role``, ``trainable``…) are filled by readers that know them
    (a live model knows its module classes; a ``.keras`` file has its config).
    """

    key: str
    name: str
    shape: tuple[int, ...]
    dtype: str
    layer: str | None = None
    kind: str | None = None
    role: str | None = None
    trainable: bool | None = None
    is_buffer: bool = False
    shared_with: tuple[str, ...] = ()
    device: str | None = None
    # how ``kind`` was found: "module" (live class), "config" (file config), "name" (naming convention)
    kind_from: str | None = None
    # per-kind facts from the source itself (e.g. LSTM hidden_size, bidirectional, groups)
    layer_config: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Reader(Protocol):
    """What every source implements."""

    format: str  # registry name, e.g. "safetensors"
    description: str  # what was opened, for humans: a path or "torch.nn.Module Net"

    def tensors(self) -> list[RawTensor]:
        """Metadata of every tensor, in the source's order. Cheap: reads no tensor bytes."""

    def read(self, key: str) -> np.ndarray:
        """Raw storage of one tensor with its full shape (bfloat16 as uint16, see _dtypes)."""

    def read_flat(self, key: str, start: int, stop: int) -> np.ndarray:
        """Raw elements ``[start, stop)`` of the flattened tensor, without reading the rest."""

    def read_torch(self, key: str) -> Any:
        """The tensor as ``torch.Tensor`` in its own dtype."""

    def metadata(self) -> dict[str, Any]:
        """Everything in the source that is not a weight, JSON-serialisable."""

    def model_config(self) -> dict[str, Any] | None:
        """The architecture stored with the weights (a Keras config, parsed as JSON, never run),
        or ``None``."""

    def close(self) -> None: ...


class ReaderBase:
    """Defaults shared by readers; subclasses set ``format`` and implement the rest."""

    format = "?"
    description = "?"

    def metadata(self) -> dict[str, Any]:
        return {}

    def model_config(self) -> dict[str, Any] | None:
        return None

    def tensors(self) -> list[RawTensor]:
        raise NotImplementedError

    def read(self, key: str) -> np.ndarray:
        raise NotImplementedError

    def read_flat(self, key: str, start: int, stop: int) -> np.ndarray:
        """Raw elements ``[start, stop)`` of the flattened tensor."""
        return self.read(key).reshape(-1)[start:stop]

    def read_torch(self, key: str):
        """The tensor as torch (raw views are reinterpreted, values stay exact)."""
        import torch

        raw = self.read(key)
        info = self._info(key)
        # a copy: the storage may be a read-only memory map, and torch wants writable, contiguous data
        t = torch.from_numpy(np.array(raw, copy=True, order="C"))
        if is_viewed(info.dtype):
            t = t.view(getattr(torch, info.dtype))
        return t

    def _info(self, key: str) -> RawTensor:
        cache = getattr(self, "_info_cache", None)
        if cache is None:
            cache = self._info_cache = {t.key: t for t in self.tensors()}
        return cache[key]

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class ReaderSpec:
    """One registered source: how to recognise it and how to open it."""

    name: str
    open: Callable[..., Reader]
    suffixes: tuple[str, ...] = ()
    # sniff(path, head) -> True when the file's first bytes are of this format
    sniff: Callable[[Path, bytes], bool] | None = None
    # accepts(obj) -> True for a live object this reader handles; never imports a framework
    accepts: Callable[[Any], bool] | None = None
    description: str = ""


_READERS: dict[str, ReaderSpec] = {}  # registry name -> spec, in registration order


def register_reader(
    name: str,
    *,
    suffixes: tuple[str, ...] = (),
    sniff: Callable[[Path, bytes], bool] | None = None,
    accepts: Callable[[Any], bool] | None = None,
    description: str = "",
):
    """Register a reader factory under ``name`` (used as a decorator)."""

    def deco(factory):
        if name in _READERS:
            warnings.warn(f"weightkit reader {name!r} registered twice; the later one wins", stacklevel=2)
        _READERS[name] = ReaderSpec(name, factory, suffixes, sniff, accepts, description)
        return factory

    return deco


def list_readers() -> list[str]:
    """Names of every registered source format.

    Example:
        >>> import weightkit
        >>> "safetensors" in weightkit.list_readers()
        True
    """

    _load_all()
    return list(_READERS)


def reader_specs() -> Iterator[ReaderSpec]:
    _load_all()
    return iter(list(_READERS.values()))


HEAD_BYTES = 4096


def sniff_head(path: Path) -> bytes:
    with open_regular(path) as fh:
        return fh.read(HEAD_BYTES)


def module_loaded(name: str) -> bool:
    """True when the user has already imported framework ``name`` (we never import it to check)."""
    return name in sys.modules


def fspath(obj) -> Path | None:
    if isinstance(obj, (str, os.PathLike)):
        return Path(obj)
    return None


def natural_key(name: str) -> tuple:
    """Sort key that orders ``layers.2`` before ``layers.10``."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", name))


_ROLE_RANK = {"weight": 0, "kernel": 0, "bias": 1, "running_mean": 8, "running_var": 9, "num_batches_tracked": 10}
_RNN_RANK = {"weight_ih": 0, "weight_hh": 1, "bias_ih": 2, "bias_hh": 3, "weight_hr": 4}


def model_order_key(name: str) -> tuple:
    """Sort key for names from a format that does not keep the model's order (safetensors):
    layers in natural order, and within a layer weight before bias, RNN tensors by layer and
    direction, BatchNorm statistics last."""

    layer, _, role = name.rpartition(".")
    rnn = split_rnn_name(role)
    if rnn is not None:
        base, index, reverse = rnn
        rank: tuple = (5, index, reverse, _RNN_RANK[base])
    else:
        rank = (_ROLE_RANK.get(role, 5), 0, False, 0)
    return natural_key(layer), rank, natural_key(role)

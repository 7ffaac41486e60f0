"""Opening anything weightkit reads as a :class:`WeightSet`."""

from __future__ import annotations

from typing import Any

from weightkit.core.weightset import WeightSet
from weightkit.sources import open_reader

__all__ = ["open", "as_weightset"]


def open(source: Any, *, format: str | None = None) -> WeightSet:
    """Open a model or checkpoint and list its weights with their meaning.

    Args:
        source: a live ``torch.nn.Module``; a Keras 3 model or layer; a dict of tensors;
            or a path to a ``.safetensors`` file (or a directory of shards), a PyTorch
            checkpoint (``.pt``/``.pth``/``.bin``/``.ckpt``), ``.npz``/``.npy``, or a Keras
            ``.weights.h5``/``.keras`` file. Files are recognised by content, not by name.
        format: force a reader by name (see :func:`weightkit.list_readers`).

    Returns:
        A :class:`WeightSet`; only metadata is read until you ask for data.

    Raises:
        WeightkitError: the path is missing, the format is unknown or damaged, or the file
            is malicious (scanned first; code in a file is never executed).

    Example:
        >>> import torch, weightkit
        >>> ws = weightkit.open(torch.nn.Conv2d(3, 16, 3))
        >>> ws["weight"].shape, ws["weight"].axes
        ((16, 3, 3, 3), ('out_channels', 'in_channels/groups', 'kernel_h', 'kernel_w'))
    """
    return WeightSet(open_reader(source, format=format))


def as_weightset(source: Any) -> WeightSet:
    """``source`` itself when it is a :class:`WeightSet`, else :func:`open` of it."""
    return source if isinstance(source, WeightSet) else open(source)

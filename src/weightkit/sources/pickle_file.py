"""Raw pickle files (``.pkl``/``.pickle``) holding a state dict of numpy arrays or tensors.

Never unpickled with ``pickle.load``: the file is scanned first (malicious or unreadable files
are refused) and then read by the restricted unpickler, in which only data rebuilders run and
every other class is an inert stub. Numeric numpy arrays become the weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from weightkit.scanner._pickle import OPCODES
from weightkit.sources._base import register_reader
from weightkit.sources._restricted import load_pickle
from weightkit.sources.torch_checkpoint import _LEGACY_MAGIC, RESTRICTED, TorchCheckpointReader, _restricted_errors

# a protocol-0 pickle may start with any opcode (``I0x1\n0…``): a .pkl file starting with one is
# a pickle as far as pickle.load is concerned, so the scanner judges it ("P" would be a zip's "PK")
_PICKLE_FIRST = frozenset(OPCODES) - {ord("P")}


def _sniff(path: Path, head: bytes | None) -> bool:
    if head is None or len(head) < 2 or _LEGACY_MAGIC in head[:32]:
        return False
    if head[0] == 0x80:
        return 2 <= head[1] <= 5
    return path.name.lower().endswith((".pkl", ".pickle")) and head[0] in _PICKLE_FIRST


@register_reader("pickle", suffixes=(".pkl", ".pickle"), sniff=_sniff,
                 description="raw pickle of arrays (read without executing it)")
class PickleFileReader(TorchCheckpointReader):
    """A raw pickle: scanned, then read by the restricted unpickler."""

    format = "pickle"

    def _load(self, path: Path, report) -> tuple[Any, str]:
        with _restricted_errors(path, "pickle"):
            return load_pickle(path), RESTRICTED

    def _materialize(self, obj: Any, depth: int) -> Any:
        if isinstance(obj, np.ndarray) and obj.dtype.kind in "biufc":
            import torch

            arr = obj.astype(obj.dtype.newbyteorder("="), copy=not obj.flags.writeable or not obj.dtype.isnative)
            return torch.from_numpy(arr)
        return super()._materialize(obj, depth)

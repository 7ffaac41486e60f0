"""Safe, validated edits of live torch and Keras 3 models.

- :mod:`.values`: ``get_weights`` / ``set_weights`` / ``set_weight`` (validate everything, then
  write in place, all or nothing)
- :mod:`.initialize`: ``init`` with every ``torch.nn.init`` scheme by name, on torch and Keras
- :mod:`.trainability`: ``freeze`` / ``unfreeze`` / ``trainable`` / ``param_groups``
- :mod:`.normalize`: ``weight_norm`` / ``spectral_norm`` / ``remove_norm`` (torch only)

Every edit takes the selector of :func:`weightkit.select` (``pattern``, ``kind=``, ``role=``).
Nothing here imports torch or Keras before the caller has (see :mod:`._backend`).
"""

from weightkit.edits.initialize import InitReport, init
from weightkit.edits.normalize import NormReport, remove_norm, spectral_norm, weight_norm
from weightkit.edits.trainability import TensorTrainable, TrainableReport, freeze, param_groups, trainable, unfreeze
from weightkit.edits.values import get_weights, set_weight, set_weights

__all__ = [
    "get_weights",
    "set_weights",
    "set_weight",
    "init",
    "InitReport",
    "freeze",
    "unfreeze",
    "trainable",
    "TrainableReport",
    "TensorTrainable",
    "param_groups",
    "weight_norm",
    "spectral_norm",
    "remove_norm",
    "NormReport",
]

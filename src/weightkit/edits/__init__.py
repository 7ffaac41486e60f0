"""Changes to weights: safe, validated edits of live torch and Keras 3 models, pruning,
quantisation, saving and loading.

- :mod:`.values`: ``get_weights`` / ``set_weights`` / ``set_weight``, and the one validate-then-
  commit step (``stage``/``commit``) every live write goes through
- :mod:`.initialize`: ``init`` with every ``torch.nn.init`` scheme by name, on torch and Keras
- :mod:`.trainability`: ``freeze`` / ``unfreeze`` / ``trainable`` / ``param_groups``
- :mod:`.normalize`: ``weight_norm`` / ``spectral_norm`` / ``remove_norm`` (torch only)
- :mod:`.prune`, :mod:`.quantize` (sharing :mod:`._compress`), :mod:`.save`, :mod:`.load`

Every edit narrows tensors with ``select=`` (see :class:`weightkit.core.selector.Selector`) and
``kind=``/``role=``. Nothing here imports torch or Keras before the caller has (see :mod:`._backend`).
The public names are exported by :mod:`weightkit`; this package re-exports nothing, so that each
``weightkit.edits.<module>`` is the module.
"""

"""The centre: :class:`WeightSet` and :class:`Weight`, opening sources, the one selector, layouts by axis meaning."""

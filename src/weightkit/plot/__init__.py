"""Pictures of weights (matplotlib): each function returns a Figure; ``save`` writes PNG/SVG."""

from .charts import plot_diff, plot_hist, plot_importance, plot_norms
from .filters import plot_filters, plot_heatmap

__all__ = ["plot_filters", "plot_heatmap", "plot_hist", "plot_norms", "plot_importance", "plot_diff"]

"""Pictures of weights (matplotlib): each function returns a Figure; ``save`` writes PNG/SVG."""

from weightkit.render.plots.charts import plot_diff, plot_hist, plot_importance, plot_norms
from weightkit.render.plots.filters import plot_filters, plot_heatmap
from weightkit.render.plots.grad_flow import plot_grad_flow

__all__ = ["plot_filters", "plot_heatmap", "plot_hist", "plot_norms", "plot_importance", "plot_diff", "plot_grad_flow"]

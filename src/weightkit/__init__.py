"""weightkit: open any neural-network model or checkpoint and see every weight with its meaning.

Example:
    >>> import torch, weightkit
    >>> ws = weightkit.open(torch.nn.Linear(3, 2))
    >>> [(w.name, w.shape, w.axes) for w in ws]
    [('weight', (2, 3), ('out_features', 'in_features')), ('bias', (2,), ('out_features',))]
"""

from ._api import open, summary
from .errors import (
    CorruptFileError,
    MissingDependencyError,
    SourceNotFoundError,
    UnsafeCheckpointError,
    UnsupportedFormatError,
    WeightkitError,
)
from .doctor import DoctorReport, Finding, doctor
from .diff import DiffReport, diff
from .importance import FeatureImportance, feature_importance
from .layers import list_kinds
from .report import report
from .plot import plot_diff, plot_filters, plot_heatmap, plot_hist, plot_importance, plot_norms
from .select import select
from . import scan  # a callable module: weightkit.scan(path), weightkit.scan.scan_bytes(...)
from .scan import ScanReport
from .statistics import GroupStats, StatsReport, TensorStats, stats
from .sources._base import list_readers
from .summary import Summary, Totals
from .weightset import Weight, WeightSet
from .io import LoadReport, VerifyReport, load_into, save, verify
from .prune import PruneReport, prune
from .quantize import QuantizeReport, quantize, quantize_error
from .edit import (InitReport, NormReport, TrainableReport, freeze, get_weights, init, param_groups, remove_norm,
                   set_weight, set_weights, spectral_norm, trainable, unfreeze, weight_norm)
from . import watch  # a callable module: weightkit.watch(model, optimizer=opt), weightkit.watch.open_run(...)
from .watch import Run, list_runs, open_run, plot_grad_flow

__version__ = "0.1.0"

__all__ = [
    "open",
    "summary",
    "report",
    "diff",
    "DiffReport",
    "feature_importance",
    "FeatureImportance",
    "plot_filters",
    "plot_heatmap",
    "plot_hist",
    "plot_norms",
    "plot_importance",
    "plot_diff",
    "select",
    "scan",
    "ScanReport",
    "stats",
    "doctor",
    "DoctorReport",
    "Finding",
    "StatsReport",
    "TensorStats",
    "GroupStats",
    "list_readers",
    "list_kinds",
    "WeightSet",
    "Weight",
    "Summary",
    "Totals",
    "WeightkitError",
    "SourceNotFoundError",
    "UnsupportedFormatError",
    "CorruptFileError",
    "UnsafeCheckpointError",
    "MissingDependencyError",
    "prune",
    "PruneReport",
    "quantize",
    "quantize_error",
    "QuantizeReport",
    "save",
    "load_into",
    "LoadReport",
    "verify",
    "VerifyReport",
    "get_weights",
    "set_weights",
    "set_weight",
    "init",
    "InitReport",
    "freeze",
    "unfreeze",
    "trainable",
    "TrainableReport",
    "param_groups",
    "weight_norm",
    "spectral_norm",
    "remove_norm",
    "NormReport",
    "watch",
    "open_run",
    "list_runs",
    "Run",
    "plot_grad_flow",
    "__version__",
]

"""weightkit: open any neural-network model or checkpoint and see every weight with its meaning.

Example:
    >>> import torch, weightkit
    >>> ws = weightkit.open(torch.nn.Linear(3, 2))
    >>> [(w.name, w.shape, w.axes) for w in ws]
    [('weight', (2, 3), ('out_features', 'in_features')), ('bias', (2,), ('out_features',))]
"""

from weightkit._version import __version__
from weightkit.analyses.diff import DiffReport, diff
from weightkit.analyses.doctor import DoctorReport, Finding, doctor
from weightkit.analyses.importance import FeatureImportance, feature_importance
from weightkit.analyses.statistics import GroupStats, StatsReport, TensorStats, stats
from weightkit.analyses.summary import Summary, Totals, summary
from weightkit.core.opening import open
from weightkit.core.selector import select
from weightkit.core.weightset import Weight, WeightSet
from weightkit.edits.initialize import InitReport, init
from weightkit.edits.load import LoadReport, VerifyReport, load_into, verify
from weightkit.edits.normalize import NormReport, remove_norm, spectral_norm, weight_norm
from weightkit.edits.prune import PruneReport, make_permanent, prune
from weightkit.edits.quantize import QuantizeReport, quantize, quantize_error
from weightkit.edits.save import save
from weightkit.edits.trainability import TrainableReport, freeze, param_groups, trainable, unfreeze
from weightkit.edits.values import get_weights, set_weight, set_weights
from weightkit.errors import (
    CorruptFileError,
    MissingDependencyError,
    SourceNotFoundError,
    UnsafeCheckpointError,
    UnsupportedFormatError,
    WeightkitError,
)
from weightkit.layers import list_kinds
from weightkit.render.plots import (
    plot_diff,
    plot_filters,
    plot_grad_flow,
    plot_heatmap,
    plot_hist,
    plot_importance,
    plot_norms,
)
from weightkit.render.report import report
from weightkit.scanner import ScanReport, safe_globals, scan, scan_bytes
from weightkit.sources._base import list_readers
from weightkit.tracking import Run, list_runs, open_run, watch

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
    "scan_bytes",
    "safe_globals",
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
    "make_permanent",
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

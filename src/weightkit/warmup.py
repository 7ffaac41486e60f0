"""Compile and cache every numba kernel once (``make venv`` runs ``python -m weightkit.warmup``), so
that the first ``weightkit stats``, ``doctor``, ``prune`` or ``weightkit.watch`` does not pay numba's
compile time. The kernels are imported here, not at module top, so that importing this module
stays cheap for the import-contract and lint tools."""

import numpy as np

from weightkit.analyses.statistics.engine import _Acc, _luts
from weightkit.edits._compress import KeepMasker, kth_threshold
from weightkit.tracking.alerts import AlertEngine, Thresholds


def main() -> None:

    for dtype in ("float32", "float64", "int64", "int32", *_luts()):
        raw = np.zeros(16, dtype=np.float32 if dtype == "float32" else
                       np.float64 if dtype == "float64" else np.int64 if dtype == "int64" else
                       np.int32 if dtype == "int32" else (np.uint8 if _luts()[dtype].size == 256 else np.uint16))
        a, b = _Acc.new(64), _Acc.new(64)
        a.fold(raw, dtype, 0.0, 1e-6)
        b.fold(raw + 1, dtype, 0.0, 1e-6)
        a.merge(b)
    from weightkit.analyses.statistics import _kernel as K

    hist = np.ones(64, dtype=np.int64)
    K.histogram_summary(hist, 0.0, 1.0, 8, 64, np.array([0.5]), 0.0, 64.0)
    for dt in (np.float32, np.float64):
        K.head_shift(np.zeros(4, dtype=dt))
    from weightkit.analyses.doctor._kernel import row_hashes
    from weightkit.tracking import _kernel

    _kernel.warm()
    for dt in (np.float16, np.float32, np.float64):
        row_hashes(np.zeros((2, 2), dtype=dt))
    keys = np.arange(64, dtype=np.uint32)
    threshold, take = kth_threshold([lambda: keys], 10)
    KeepMasker(threshold, take)(keys)
    AlertEngine(["w"], [(4, 4)], Thresholds()).measured_step(1, np.ones(1), np.ones(1), np.ones(1, dtype=bool))


if __name__ == "__main__":
    main()

"""Compile and cache the numba kernels once (``make venv`` runs this), so that the first
``weightkit stats``, ``doctor`` or ``weightkit.watch`` does not pay numba's compile time."""

import numpy as np


def main() -> None:
    from .engine import _Acc, _luts

    for dtype in ("float32", "float64", "int64", "int32", *_luts()):
        raw = np.zeros(16, dtype=np.float32 if dtype == "float32" else
                       np.float64 if dtype == "float64" else np.int64 if dtype == "int64" else
                       np.int32 if dtype == "int32" else (np.uint8 if _luts()[dtype].size == 256 else np.uint16))
        a, b = _Acc.new(64), _Acc.new(64)
        a.fold(raw, dtype, 0.0, 1e-6)
        b.fold(raw + 1, dtype, 0.0, 1e-6)
        a.merge(b)
    from . import _kernel as K

    hist = np.ones(64, dtype=np.int64)
    K.histogram_summary(hist, 0.0, 1.0, 8, 64, np.array([0.5]), 0.0, 64.0)
    for dt in (np.float32, np.float64):
        K.head_shift(np.zeros(4, dtype=dt))
    from ..doctor._kernel import row_hashes
    from ..watch import _kernel

    _kernel.warm()
    for dt in (np.float16, np.float32, np.float64):
        row_hashes(np.zeros((2, 2), dtype=dt))


if __name__ == "__main__":
    main()

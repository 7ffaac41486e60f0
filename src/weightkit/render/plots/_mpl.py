"""matplotlib, imported only when a plot is drawn, always with a non-interactive backend."""

from __future__ import annotations

from weightkit.errors import WeightkitError, require


def pyplot():
    mpl = require("matplotlib", extra="all", purpose="plotting")
    if mpl.get_backend().lower() not in ("agg", "svg", "pdf", "cairo", "module://matplotlib_inline.backend_inline"):
        mpl.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def grid(n: int, *, max_cols: int = 8):
    cols = min(max_cols, max(1, n))
    rows = -(-n // cols)
    return rows, cols


def save(fig, path) -> None:
    """Save a figure as PNG or SVG (by suffix); a path that cannot be written is a WeightkitError."""
    from pathlib import Path

    path = Path(path)
    if path.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise WeightkitError(f"{path}: unsupported picture format {path.suffix or '(none)'}; use .png, .svg or .pdf")
    if not path.parent.exists():
        raise WeightkitError(f"{path}: the directory {path.parent} does not exist; create it or choose another path")
    import io
    import os

    buf = io.BytesIO()
    fig.savefig(buf, format=path.suffix.lower()[1:], dpi=110, bbox_inches="tight")
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_bytes(buf.getvalue())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise WeightkitError(f"{path}: cannot be written ({e.strerror}); choose a writable path") from None

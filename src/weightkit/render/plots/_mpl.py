"""What every plot shares: a new Figure, literal text, and writing a figure to bytes or a file.

Figures are built with matplotlib's object API, never pyplot: pyplot keeps every figure it made
until closed and draws through the user's backend, so a library that used it would pile figures
up in long runs and have to switch the user's backend to draw headless.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from weightkit._atomic import atomic_write
from weightkit.errors import WeightkitError, require

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Text properties for strings that come from a file or a caller (tensor names, paths, feature
# names): matplotlib would read "$...$" in them as mathtext (a wrong picture, or an error at draw
# time) and, under the user's rcParams text.usetex, the whole string as LaTeX. The strings
# themselves pass through render._text.literal first: a control character would be a missing
# glyph, quoted raw in matplotlib's warning, and invalid XML in an SVG.
LITERAL: dict[str, Any] = {"parse_math": False, "usetex": False}


def figure(figsize: tuple[float, float]) -> Figure:
    """A new Figure on its own Agg canvas, unknown to pyplot; the caller's backend is left alone."""
    require("matplotlib", extra="all", purpose="plotting")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)  # so fig.canvas.draw() and buffer_rgba() work as on a pyplot figure under Agg
    return fig


def record_shown(fig, **shown: Any) -> None:
    """What a figure drew of what it was given (``fig.weightkit_shown``), so a caller can tell a
    user what was left out."""
    fig.weightkit_shown = shown


def grid(n: int, *, max_cols: int = 8):
    cols = min(max_cols, max(1, n))
    rows = -(-n // cols)
    return rows, cols


def encode(fig, fmt: str, *, dpi: int = 110) -> bytes:
    """The figure as PNG, SVG or PDF bytes, cropped to what is drawn."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def save(fig, path) -> None:
    """Save a figure as PNG, SVG or PDF (by suffix); a path that cannot be written is a WeightkitError."""
    from pathlib import Path

    path = Path(path)
    if path.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise WeightkitError(f"{path}: unsupported picture format {path.suffix or '(none)'}; use .png, .svg or .pdf")
    if not path.parent.exists():
        raise WeightkitError(f"{path}: the directory {path.parent} does not exist; create it or choose another path")
    with atomic_write(path) as fh:
        fig.savefig(fh, format=path.suffix.lower()[1:], dpi=110, bbox_inches="tight")

"""Display strings of numbers, sizes and shapes: the one place they are spelled, for tables and
the HTML report alike (no rich here, so the report needs no terminal library)."""

from __future__ import annotations


def human_bytes(n: int) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def human_count(n: int) -> str:
    """``1234567`` -> ``"1.23M"`` (exact below ten thousand)."""
    if n < 10_000:
        return f"{n:,}"
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return str(n)


def num(value: float | None) -> str:
    """A statistic in at most four significant digits; ``None`` -> ``"—"``."""
    if value is None:
        return "—"
    if value == 0:
        return "0"
    if abs(value) >= 1e4 or abs(value) < 1e-3:
        return f"{value:.3e}"
    return f"{value:.4g}"


def shape_str(shape) -> str:
    return "×".join(str(d) for d in shape) if shape else "scalar"


def tristate(value: bool | None) -> str:
    return {True: "yes", False: "no", None: "?"}[value]

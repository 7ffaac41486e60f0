"""Small formatting helpers shared by renderers (display strings live here, never in results)."""

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


def shape_str(shape) -> str:
    return "×".join(str(d) for d in shape) if shape else "scalar"


def tristate(value: bool | None) -> str:
    return {True: "yes", False: "no", None: "?"}[value]

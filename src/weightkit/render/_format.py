"""Small formatting helpers shared by renderers (display strings live here, never in results)
and the table style of the terminal renderers."""

from __future__ import annotations

from rich import box
from rich.table import Table


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


def plain_table() -> Table:
    """An empty table: bold header over a rule, no outer edge."""
    return Table(show_edge=False, header_style="bold", pad_edge=False, box=box.SIMPLE_HEAD, padding=(0, 1))


def right_columns(table: Table, *headers: str) -> None:
    """Add right-justified columns (numbers) to ``table``."""
    for header in headers:
        table.add_column(header, justify="right")

"""Terminal rendering of a :class:`weightkit.analyses.statistics.StatsReport` with rich."""

from __future__ import annotations

from typing import Iterator

from rich.console import RenderableType
from rich.text import Text

from weightkit.analyses.statistics.result import StatsReport, TensorStats
from weightkit.render._format import Col, FitTable, LiteralTable, line, text
from weightkit.render._text import human_bytes, human_count, num

SPARK = " ▁▂▃▄▅▆▇█"
NUMBERS = ("mean", "std", "min", "max", "L2 norm", "zeros", "nan/inf")


def sparkline(counts: list[int], width: int = 16) -> str:
    """A histogram as a row of block characters (``width`` cells at most)."""
    if not counts:
        return ""
    group = max(1, -(-len(counts) // width))
    cells = [sum(counts[i : i + group]) for i in range(0, len(counts), group)]
    top = max(cells) or 1
    return "".join(SPARK[min(8, round(8 * c / top))] if c else " " for c in cells)


def render_stats(r: StatsReport, width: int = 120) -> Iterator[RenderableType]:
    yield line(("weightkit stats ", "bold"), (r.source, "cyan"), f"  ({r.format})")
    table = FitTable(Col("tensor", role="name"), *(Col(h, justify="right") for h in NUMBERS),
                     Col("histogram", optional=True))
    for t in r.tensors:
        cells, error = _row(t)
        table.add_row(*cells, note=error)
    yield table
    tot = r.total
    grid = LiteralTable.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("parameters", f"{human_count(tot.count)} values in {tot.tensors} tensors: mean {num(tot.mean)}, "
                 f"std {num(tot.std)}, absmax {num(tot.absmax)}, L2 norm {num(tot.l2_norm)}")
    bad = tot.nan + tot.posinf + tot.neginf
    grid.add_row("non-finite", text(f"{tot.nan:,} NaN, {tot.posinf:,} +Inf, {tot.neginf:,} -Inf",
                                    style="bold red" if bad else ""))
    grid.add_row("zeros", f"{tot.zeros:,} exact zeros; {tot.small:,} with |w| < {r.eps:g}")
    if tot.unreadable:
        grid.add_row("unreadable", text(f"{tot.unreadable} tensors could not be measured (see 'error')", style="red"))
    grid.add_row("read", f"{human_bytes(r.bytes_read)} in {r.seconds:.2f} s")
    yield grid
    yield text("Moments, min/max and histograms are over finite values; std is the population std (ddof=0). "
               "histogram: the finite range, low to high.", style="dim")


def _row(t: TensorStats) -> tuple[list, Text | None]:
    """The cells of ``t``'s row, and its error (written across the row) when it has one."""
    if t.error:
        return [text(t.name)], text(t.error, style="red")
    bad = t.nan + t.posinf + t.neginf
    cells = [
        text(t.name, style="dim" if t.is_buffer else ""),
        num(t.mean), num(t.std), num(t.min), num(t.max), num(t.l2_norm),
        f"{100 * t.zeros / t.count:.1f}%" if t.count else "—",
        text(f"{t.nan}/{t.posinf + t.neginf}", style="bold red") if bad else text("0", style="dim"),
    ]
    return [*cells, text(sparkline(t.hist_counts), style="cyan")], None

"""The one way to draw a result in a terminal: :func:`renderable` turns any weightkit result into
something ``rich`` prints, laid out for the console's width when it is printed.

The CLI, notebooks and scripts use the same call.

Example:
    >>> import io, torch, weightkit
    >>> from rich.console import Console
    >>> from weightkit.render.console import renderable
    >>> con = Console(file=io.StringIO(), width=100, color_system=None)
    >>> con.print(renderable(weightkit.doctor(torch.nn.Linear(3, 2))))
    >>> "No problems found" in con.file.getvalue()
    True
"""

from __future__ import annotations

from functools import singledispatch
from typing import Any, Callable, Iterable

from rich.console import Console, ConsoleOptions, RenderableType, RenderResult

from weightkit.analyses.doctor import DoctorReport
from weightkit.analyses.statistics.result import StatsReport
from weightkit.analyses.summary import Summary
from weightkit.edits.load import VerifyReport
from weightkit.edits.prune import PruneReport
from weightkit.edits.quantize import QuantizeReport
from weightkit.render._format import shown
from weightkit.render.compress_table import render_prune, render_quantize, render_verify
from weightkit.render.doctor_table import render_doctor
from weightkit.render.scan_table import render_scans
from weightkit.render.stats_table import render_stats
from weightkit.render.summary_table import render_summary
from weightkit.scanner import ScanReport

__all__ = ["renderable", "parts"]


class _AtWidth:
    """Draws ``parts(width)`` with the width of the console that prints it."""

    def __init__(self, parts: Callable[[int], Iterable[RenderableType]]):
        self._parts = parts

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        # every part as literal text: names and messages come from files (see render._format)
        yield from map(shown, self._parts(options.max_width))


def parts(items: Iterable[RenderableType]) -> RenderableType:
    """Renderables a terminal renderer yielded (``render.runs``), shown as :func:`renderable` shows
    a result: as literal text."""
    items = list(items)
    return _AtWidth(lambda width: items)


@singledispatch
def renderable(result: Any) -> RenderableType:
    """A ``rich`` renderable of ``result`` (a Summary, StatsReport, DoctorReport, PruneReport,
    QuantizeReport, VerifyReport or ScanReport, or a list of ScanReports)."""
    raise TypeError(f"weightkit has no terminal rendering for {type(result).__name__}")


@renderable.register
def _(result: Summary) -> RenderableType:
    return _AtWidth(lambda width: render_summary(result, width=width))


@renderable.register
def _(result: StatsReport) -> RenderableType:
    return _AtWidth(lambda width: render_stats(result, width=width))


@renderable.register
def _(result: DoctorReport) -> RenderableType:
    return _AtWidth(lambda width: render_doctor(result))


@renderable.register
def _(result: PruneReport) -> RenderableType:
    return _AtWidth(lambda width: render_prune(result))


@renderable.register
def _(result: QuantizeReport) -> RenderableType:
    return _AtWidth(lambda width: render_quantize(result))


@renderable.register
def _(result: VerifyReport) -> RenderableType:
    return _AtWidth(lambda width: render_verify(result))


@renderable.register
def _(result: ScanReport) -> RenderableType:
    return _AtWidth(lambda width: render_scans([result]))


@renderable.register(list)
def _(result: list) -> RenderableType:
    if result and all(isinstance(r, ScanReport) for r in result):
        return _AtWidth(lambda width: render_scans(result))
    raise TypeError("weightkit renders a list only of ScanReports")



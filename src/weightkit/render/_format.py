"""The table style of the terminal renderers, and ``LongTable`` for tables of thousands of rows
(display strings of numbers and sizes are in :mod:`weightkit.render._text`)."""

from __future__ import annotations

from rich import box
from rich.table import Table


def plain_table() -> Table:
    """An empty table: bold header over a rule, no outer edge."""
    return Table(show_edge=False, header_style="bold", pad_edge=False, box=box.SIMPLE_HEAD, padding=(0, 1))


def right_columns(table: Table, *headers: str) -> None:
    """Add right-justified columns (numbers) to ``table``."""
    for header in headers:
        table.add_column(header, justify="right")


class LongTable:
    """A rich table that renders its rows as plain lines once it has more than ``limit`` rows.

    rich lays out every cell (measure, wrap, crop: ~90 µs a cell), which made a 3000-tensor
    ``weightkit stats`` spend 2.5 s printing. Past ``limit`` rows the columns take their widest
    cell (the widest folding column shrinks to fit the terminal, cutting cells with "…"), with the
    same header, rule and gaps as a ``box.SIMPLE_HEAD`` table without edge and padding (0, 1).
    """

    def __init__(self, table: Table, *, limit: int = 200):
        self.table, self.limit = table, limit

    def __rich_console__(self, console, options):
        from rich.cells import cell_len
        from rich.text import Text

        table = self.table
        if table.row_count <= self.limit:
            yield table
            return
        cols = table.columns
        cells = [list(c.cells) for c in cols]
        heads = [_plain(c.header).split("\n") for c in cols]
        widths = [max([*map(cell_len, h), *(cell_len(_plain(x)) for x in cs)]) for h, cs in zip(heads, cells)]
        gap = "   "
        total = sum(widths) + len(gap) * (len(cols) - 1)
        if total > options.max_width:
            foldable = [k for k, c in enumerate(cols) if c.overflow in ("fold", "ellipsis")] or [0]
            k = max(foldable, key=lambda j: widths[j])
            shrunk = max(widths[k] - (total - options.max_width), min(widths[k], cols[k].min_width or 8))
            total -= widths[k] - shrunk
            widths[k] = shrunk
        depth = max(map(len, heads))
        heads = [[""] * (depth - len(h)) + h for h in heads]  # headers of several lines sit at the bottom, as in rich
        for n in range(depth):
            yield Text(gap.join(_fit(h[n], w, c.justify) for c, h, w in zip(cols, heads, widths)).rstrip(),
                       style=table.header_style or "")
        yield Text("─" * total)
        for r in range(table.row_count):
            line = Text(no_wrap=True, overflow="ellipsis")
            for k, (c, w) in enumerate(zip(cols, widths)):
                if k:
                    line.append(gap)
                cell = cells[k][r]
                if isinstance(cell, Text) and cell.spans:
                    part = cell.copy()
                    part.truncate(w, overflow="ellipsis")
                    part.align(c.justify if c.justify in ("left", "center", "right") else "left", w)
                    line.append_text(part)
                else:
                    line.append(_fit(_plain(cell), w, c.justify), style=cell.style if isinstance(cell, Text) else "")
            line.rstrip()
            yield line


def _plain(cell) -> str:
    return cell.plain if hasattr(cell, "plain") else str(cell)


def _fit(text: str, width: int, justify) -> str:
    from rich.cells import cell_len, set_cell_size

    if cell_len(text) > width:
        return set_cell_size(text, width - 1) + "…"
    pad = width - cell_len(text)
    if justify == "right":
        return " " * pad + text
    if justify == "center":
        return " " * (pad // 2) + text + " " * (pad - pad // 2)
    return text + " " * pad

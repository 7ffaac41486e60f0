"""What every terminal renderer shares: literal text, the table that holds only literal text, the
table style, and ``LongTable`` for tables of thousands of rows (display strings of numbers, sizes
and names are in :mod:`weightkit.render._text`).

Names, metadata, paths and messages come from files and run stores, so nothing here lets rich
read a string as markup (``[/x]`` raises MarkupError, ``[link=…]`` makes a hyperlink) or emoji
codes, and every control character is shown escaped (:func:`weightkit.render._text.literal`).
"""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from weightkit.render._text import literal


def text(value: Any, style: str = "") -> Text:
    """``value`` as literal text: no markup, no emoji codes, control characters made visible (rich's
    ``Text`` alone would drop CR, BEL and backspace but pass ESC)."""
    return Text(literal(value), style=style)


def line(*parts: str | tuple[str, str]) -> Text:
    """``Text.assemble`` of literal parts, each ``"text"`` or ``("text", "style")``."""
    return Text.assemble(*((literal(p[0]), p[1]) if isinstance(p, tuple) else literal(p) for p in parts))


def literal_text(t: Text) -> Text:
    """``t`` with its control characters made visible and its styles kept on the same characters."""
    plain = t.plain
    if literal(plain) == plain:
        return t
    ends = [0]
    for ch in plain:
        ends.append(ends[-1] + len(literal(ch)))
    out = t.blank_copy(literal(plain))
    for span in t.spans:
        out.stylize(span.style, ends[span.start], ends[span.end])
    return out


def _cell(value):
    if value is None:
        return None
    if isinstance(value, str):
        return text(value)
    if isinstance(value, Text):
        return literal_text(value)
    if isinstance(value, Group):
        return Group(*map(_cell, value.renderables), fit=value.fit)
    raise TypeError(f"a table cell must be str, Text or a Group of them, not {type(value).__name__}")


class LiteralTable(Table):
    """A rich Table whose cells are always literal text: a ``str`` cell becomes :func:`text`, a
    ``Text`` cell :func:`literal_text`, a ``Group`` of them (several lines in one cell) has each made
    literal, and nothing else is accepted; so a new column cannot forget it (rich would read a str
    cell as markup)."""

    def add_row(self, *renderables, style=None, end_section: bool = False) -> None:
        super().add_row(*map(_cell, renderables), style=style, end_section=end_section)


def shown(part: RenderableType) -> RenderableType:
    """A part a renderer yields, made literal: strings and Text as above; a table must be a
    :class:`LiteralTable` (a plain rich Table would read its string cells as markup)."""
    if isinstance(part, str):
        return text(part)
    if isinstance(part, Text):
        return literal_text(part)
    table = part.table if isinstance(part, LongTable) else part
    if isinstance(table, Table) and not isinstance(table, LiteralTable):
        raise TypeError("a terminal renderer yielded a rich Table; build it as LiteralTable so its cells stay literal")
    return part


def plain_table() -> LiteralTable:
    """An empty table: bold header over a rule, no outer edge."""
    return LiteralTable(show_edge=False, header_style="bold", pad_edge=False, box=box.SIMPLE_HEAD, padding=(0, 1))


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

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
from rich.cells import cell_len
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from weightkit.render._text import cut_names, literal


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


class Col:
    """A column of a :class:`FitTable`: ``role`` says how it may give way on a narrow terminal:
    ``"name"`` (the one name column: a name longer than the column moves to a line of its own,
    cut in the middle only past the whole width, distinct names kept distinct), ``"fixed"`` (never
    cut: numbers), ``"wrap"`` (wrapped between words). ``optional`` columns go first when the name
    column would get fewer than ``FitTable.min_name`` characters."""

    def __init__(self, header: str, *, justify: str = "left", role: str = "fixed", optional: bool = False,
                 min_width: int = 0):
        self.header, self.justify, self.role, self.optional, self.min_width = header, justify, role, optional, min_width


class FitTable:
    """A table laid out for the terminal's width without cutting a number: fixed columns keep their
    widest cell, wrap columns wrap between words, and the name column takes what is left; a name
    that does not fit it is printed on a line of its own above its row (and, only when longer than
    the whole line, cut in the middle so that distinct names stay distinct). Past the point where the
    other columns leave no room for names at all, every name gets its own line. Cells are literal
    text (see :func:`text`); one plain line per table line, so thousands of rows print quickly."""

    gap = "   "
    min_name = 20

    def __init__(self, *columns: Col, header_style: str = "bold"):
        self.columns = list(columns)
        self.rows: list[list[Text]] = []
        self.notes: dict[int, Text] = {}
        self.header_style = header_style

    def add_row(self, *cells: str | Text | None, note: str | Text | None = None) -> None:
        """A row of cells (missing ones empty); ``note`` (an error, say) is written across the
        columns after the first, wrapped, instead of in one of them."""
        row = [_cell(c) if c is not None else Text("") for c in cells]
        if note is not None:
            self.notes[len(self.rows)] = _cell(note)
        self.rows.append(row + [Text("")] * (len(self.columns) - len(row)))

    def layout(self, width: int) -> tuple[list[int], list[int], bool]:
        """``(columns shown, their widths, names on lines of their own)`` at ``width``: the name
        column is as wide as the longest name that fits beside the others (none: every name on a
        line of its own)."""
        cols = list(range(len(self.columns)))
        natural = [max([cell_len(self.columns[k].header), *(r[k].cell_len for r in self.rows)]) for k in cols]
        low = [natural[k] if self.columns[k].role == "fixed" else
               min(natural[k], max(self.columns[k].min_width, 8, self._longest_word(k))) for k in cols]
        name = next((k for k in cols if self.columns[k].role == "name"), None)
        dropped = []
        while True:  # optional columns go while the names and wrapped text lack room
            others = [k for k in cols if k != name]
            room = width - sum(low[k] for k in others) - len(self.gap) * (len(cols) - 1)
            roomy = room - sum(natural[k] - low[k] for k in others)
            optional = [k for k in others if self.columns[k].optional]
            if name is None or roomy >= natural[name] or not optional:
                break
            cols.remove(optional[-1])
            dropped.append(optional[-1])
        stacked = False
        if name is not None:
            fits = [n for r in self.rows if (n := r[name].cell_len) <= room]
            stacked = room < min(self.min_name, natural[name]) or not fits
        for k in reversed(dropped) if stacked else ():  # under their names, the rows may have room again
            if room + len(self.gap) - low[k] - len(self.gap) >= 0:
                room -= low[k] + len(self.gap)
                cols.append(k)
        cols.sort()
        others = [k for k in cols if k != name]
        widths = {k: low[k] for k in cols}
        spare = room
        if name is not None:
            # the wrap columns take their widest cell first, if the names keep their minimum
            wanted = sum(natural[k] - low[k] for k in others)
            limit = room - wanted if room - wanted >= self.min_name else room
            fits = [n for r in self.rows if (n := r[name].cell_len) <= limit]
            widths[name] = 0 if stacked else max([min(cell_len(self.columns[name].header), limit), *fits])
            spare = room - widths[name] + (len(self.gap) if stacked else 0)
        for k in others:  # what the names leave goes to the wrap columns, up to their widest cell
            extra = max(0, min(spare, natural[k] - widths[k]))
            widths[k] += extra
            spare -= extra
        return cols, [widths[k] for k in cols], stacked

    def _longest_word(self, k: int) -> int:
        """The widest word of column ``k``'s wrap cells (wrapping never breaks one), at most 40."""
        if self.columns[k].role != "wrap":
            return 0
        return min(40, max((cell_len(word) for r in self.rows for word in r[k].plain.split()), default=0))

    def __rich_console__(self, console, options):
        width = options.max_width
        cols, widths, stacked = self.layout(width)
        if stacked:  # the rows under their names are indented
            cols, widths, stacked = self.layout(width - 2)
        name = next((k for k in cols if self.columns[k].role == "name"), None)
        cut = cut_names((r[name].plain for r in self.rows), width) if name is not None else {}
        shown = [k for k in cols if not (stacked and k == name)]
        shown_w = [w for k, w in zip(cols, widths) if not (stacked and k == name)]
        indent = "  " if stacked else ""
        if len(indent) + sum(shown_w) + len(self.gap) * (len(shown) - 1) > width:
            yield from self._records(console, width, name, cut)
            return
        if stacked:
            yield Text(self.columns[name].header, style=self.header_style)
        heads = [self.columns[k].header.split("\n") for k in shown]
        depth = max(map(len, heads))
        heads = [[""] * (depth - len(h)) + h for h in heads]  # multi-line headers sit at the bottom
        for n in range(depth):
            yield Text(indent + self.gap.join(_fit(h[n], w, self.columns[k].justify)
                                              for k, h, w in zip(shown, heads, shown_w)).rstrip(),
                       style=self.header_style)
        yield Text("─" * (len(indent) + sum(shown_w) + len(self.gap) * (len(shown) - 1)))
        for r, row in enumerate(self.rows):
            cells = list(row)
            if name is not None and (stacked or cells[name].cell_len > widths[cols.index(name)]):
                yield self._name(cells[name], cut)
                cells[name] = Text("")
                if not any(c.plain for k, c in enumerate(cells) if k != name) and r not in self.notes:
                    continue
            if r in self.notes:
                first = shown_w[0] + len(self.gap) if shown[0] == name else 0
                lead = Text(indent) + (cells[name] if shown[0] == name else Text(""))
                lead.align("left", len(indent) + first)
                for n, part in enumerate(self.notes[r].wrap(console, max(width - len(lead), 20), overflow="fold")):
                    yield (lead if n == 0 else Text(" " * len(lead))) + part
                continue
            yield from self._lines(console, indent, [cells[k] for k in shown], shown, shown_w)

    @staticmethod
    def _name(cell: Text, cut: dict[str, str]) -> Text:
        label = cell.plain
        return Text(cut[label], style=cell.style) if cut.get(label, label) != label else cell.copy()

    def _records(self, console, width: int, name: int | None, cut: dict[str, str]):
        """Too narrow for the columns side by side: each row as its name, then ``header value``
        pairs wrapped between pairs."""
        for r, row in enumerate(self.rows):
            if name is not None:
                yield self._name(row[name], cut)
            pairs = [Text.assemble((self.columns[k].header.replace("\n", " "), "dim"), " ", cell)
                     for k, cell in enumerate(row) if k != name and cell.plain]
            if r in self.notes:
                pairs.append(self.notes[r])
            line = Text("  ")
            for pair in pairs:
                if line.cell_len > 2 and line.cell_len + len(self.gap) + pair.cell_len > width:
                    yield line
                    line = Text("  ")
                line += (Text(self.gap) if line.cell_len > 2 else Text("")) + pair
            if line.cell_len > 2:
                yield line

    def _lines(self, console, indent: str, cells: list[Text], shown: list[int], widths: list[int]):
        parts = []
        for cell, k, w in zip(cells, shown, widths):
            if cell.cell_len <= w or self.columns[k].role == "fixed":
                parts.append([cell])
            else:
                parts.append(list(cell.wrap(console, w, overflow="fold")))
        for n in range(max(map(len, parts))):
            line = Text(indent, no_wrap=True)
            for i, (lines, k, w) in enumerate(zip(parts, shown, widths)):
                if i:
                    line.append(self.gap)
                part = lines[n].copy() if n < len(lines) else Text("")
                part.rstrip()
                justify = self.columns[k].justify
                part.align(justify if justify in ("left", "center", "right") else "left", w)  # type: ignore[arg-type]
                line.append_text(part)
            line.rstrip()
            yield line

"""The long-table fast path renders what rich renders, and fits a narrow terminal."""

import io

from rich.console import Console
from rich.table import Table
from rich.text import Text

from weightkit.render._format import LongTable, plain_table, right_columns


def _table() -> Table:
    table = plain_table()
    table.add_column("tensor", overflow="fold", min_width=14)
    right_columns(table, "mean", "grad norm\nlatest")
    table.add_column("kind", justify="center")
    table.add_column("note")
    for i in range(40):
        kind = Text("Linear", style="green")
        kind.append("*", style="dim")  # a cell with spans
        table.add_row(Text(f"encoder.layers.{i}.attention.self.query.weight", style="dim" if i % 3 else ""),
                      f"{i * 0.125:.3g}", Text(f"{i}e-3", style="bold red"), kind, "" if i % 2 else "tied")
    return table


def _render(renderable, width: int) -> list[str]:
    con = Console(file=io.StringIO(), width=width, color_system=None)
    con.print(renderable)
    return [line.rstrip() for line in con.file.getvalue().splitlines()]


def test_long_table_lines_equal_rich_on_a_wide_terminal():
    rich_lines = _render(LongTable(_table(), limit=10**9), 200)  # under the limit: rich itself
    fast_lines = _render(LongTable(_table(), limit=0), 200)
    assert fast_lines == rich_lines
    assert len(fast_lines) == 2 + 1 + 40  # two header lines, the rule, the rows


def test_long_table_fits_a_narrow_terminal():
    lines = _render(LongTable(_table(), limit=0), 60)
    assert all(len(line) <= 60 for line in lines)
    assert lines[3].startswith("encoder.layers.0.") and "…" in lines[3]
    assert lines[3].split()[-1] == "tied" and "0e-3" in lines[3]  # the other columns are whole

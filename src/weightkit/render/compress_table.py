"""Terminal rendering of :class:`PruneReport`, :class:`QuantizeReport` and :class:`VerifyReport`."""

from __future__ import annotations

import math
from typing import Iterator, Literal

from rich import box
from rich.console import RenderableType

from weightkit.edits.load import VerifyReport
from weightkit.edits.prune import PruneReport
from weightkit.edits.quantize import QuantizeReport
from weightkit.render._format import LiteralTable, line, text
from weightkit.render._text import human_bytes

_Justify = Literal["left", "right"]


def render_prune(r: PruneReport) -> Iterator[RenderableType]:
    what = f"amount={r.amount}" if r.threshold is None else f"threshold={r.threshold}"
    title = line(("weightkit prune ", "bold"), (r.source, "cyan"),
                          f"  {r.method}, scope={r.scope}, {what}",
                          *((("  →  ", ""), (r.out, "green")) if r.out else ()))
    table = LiteralTable(box=box.SIMPLE_HEAD, show_edge=False, header_style="bold", pad_edge=False)
    columns: tuple[tuple[str, _Justify], ...] = (("tensor", "left"), ("kind", "left"), ("shape", "left"),
                                                 ("pruned", "right"), ("sparsity", "right"))
    for col, just in columns:
        table.add_column(col, justify=just)
    for t in r.tensors:
        table.add_row(t.name, t.kind, "×".join(map(str, t.shape)) or "scalar", f"{t.pruned:,}", f"{t.sparsity:.2%}")
    foot = text(f"{len(r.tensors)} tensors, {r.pruned:,} of {r.numel:,} elements pruned; "
                f"sparsity {r.sparsity:.2%}; stored sparse ({r.sparse_layout}): "
                f"{human_bytes(r.bytes_sparse)} instead of {human_bytes(r.bytes_dense)} "
                f"(saves {human_bytes(r.bytes_saved)})")
    yield from (title, table, foot)


def render_quantize(r: QuantizeReport) -> Iterator[RenderableType]:
    grain = r.granularity + (f" {r.group_size}" if r.granularity == "group" else "")
    command = "weightkit quantize " if r.out else "weightkit quantize-error "
    title = line((command, "bold"), (r.source, "cyan"),
                          f"  int{r.bits} {r.scheme}, per {grain}",
                          *((("  →  ", ""), (r.out, "green")) if r.out else ()))
    table = LiteralTable(box=box.SIMPLE_HEAD, show_edge=False, header_style="bold", pad_edge=False)
    columns: tuple[tuple[str, _Justify], ...] = (
        ("tensor", "left"), ("kind", "left"), ("shape", "left"), ("rel. error", "right"), ("SQNR dB", "right"),
        ("max |err|", "right"), ("before", "right"), ("after", "right"))
    for col, just in columns:
        table.add_column(col, justify=just)
    for t in r.tensors:
        shape = "×".join(map(str, t.shape)) or "scalar"
        if t.quantized:
            table.add_row(t.name, t.kind, shape, f"{t.rel_error:.3e}",
                          "inf" if math.isinf(t.sqnr_db) else f"{t.sqnr_db:.2f}", f"{t.max_abs_error:.3e}",
                          human_bytes(t.bytes_before), human_bytes(t.bytes_after))
        else:
            table.add_row(t.name, t.kind, shape, text(f"kept: {t.reason}", style="dim"), "", "",
                          human_bytes(t.bytes_before), human_bytes(t.bytes_after))
    sq = r.sqnr_db
    foot = text(f"{len(r.quantized)} of {len(r.tensors)} tensors quantised; "
                f"{human_bytes(r.bytes_before)} → {human_bytes(r.bytes_after)} ({r.ratio:.1%}); "
                f"overall rel. error {r.rel_error:.3e}, SQNR {'inf' if math.isinf(sq) else f'{sq:.2f}'} dB"
                + (f"; file {human_bytes(r.file_bytes)}" if r.file_bytes is not None else ""))
    yield from (title, table, foot)
    yield from (line(("warning: ", "bold yellow"), (w, "yellow")) for w in r.warnings)


def render_verify(r: VerifyReport) -> Iterator[RenderableType]:
    """One line per tensor that failed, then the verdict."""
    lines = [line(("MISMATCH", "red"), " ", name) for name in r.mismatched]
    lines += [line(("MISSING", "red"), "  ", name, " (hash recorded, tensor absent)") for name in r.missing]
    lines += [line(("UNRECORDED", "red"), " ", name, " (no hash recorded)") for name in r.unrecorded]
    state = ("OK", "green") if r.ok else ("FAILED", "red")
    lines.append(line(state, f" {r.path}: {len(r.matched)} of {r.checked} tensors match their sha256"))
    yield from lines

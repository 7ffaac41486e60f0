"""Terminal rendering of a :class:`weightkit.summary.Summary` with rich."""

from __future__ import annotations

from typing import Iterator

from rich.console import RenderableType
from rich.table import Table

from weightkit.analyses.summary import Summary
from weightkit.render._format import Col, FitTable, LiteralTable, line, text
from weightkit.render._text import human_bytes, human_count, literal, shape_str, tristate

LEGEND = (
    "axes: what each dimension of the shape means, in order (e.g. Linear weight is out_features × in_features). "
    "kind: the layer class{inferred}. train: yes = trained by the optimizer, no = frozen, "
    "? = the file does not record it. Buffers (BatchNorm running stats) are state, not parameters."
)


def render_summary(s: Summary, width: int = 120) -> Iterator[RenderableType]:
    yield line(("weightkit summary ", "bold"), (s.source, "cyan"), f"  ({s.format})")
    if s.filter:
        yield text(f"select: {s.filter}  ({s.totals.tensors} tensors match)", style="dim")
    yield _tensor_table(s)
    yield _totals_table(s)
    if s.metadata:
        yield _metadata_table(s.metadata)
    inferred = any(t["kind_from"] in ("inferred", "name") for t in s.tensors)
    note = ", inferred from names and shapes where the file has no classes (unknown when unsure)" if inferred else ""
    yield text(LEGEND.format(inferred=note), style="dim")


def _tensor_table(s: Summary) -> FitTable:
    """One section per layer: a layer row (path and kind, totals), then one row per tensor. On a
    narrow terminal the bytes column goes first (the totals still give sizes), then long layer
    paths move to lines of their own."""
    table = FitTable(Col("layer / tensor", role="name"), Col("shape", justify="right"),
                     Col("axes", role="wrap", min_width=14), Col("dtype"), Col("params", justify="right"),
                     Col("bytes", justify="right", optional=True), Col("train", justify="center"))
    for layer, tensors in _by_layer(s.tensors):
        kind = tensors[0]["kind"]
        head = text(layer or "(top level)", style="bold")
        head.append("  ")
        head.append(literal(kind), style="dim" if kind == "unknown" else "green")
        if tensors[0]["kind_from"] in ("inferred", "name"):
            head.append("*", style="dim")
        params = human_count(sum(t["numel"] for t in tensors if not t["is_buffer"]))
        size = human_bytes(sum(t["nbytes"] for t in tensors))
        table.add_row(head, "", "", "", params, size, "")
        for t in tensors:
            name = text("  " + _short_name(t["name"], layer))
            if t["shared_with"]:
                name.append(literal(f" = {', '.join(t['shared_with'])}"), style="magenta")
            table.add_row(
                name,
                shape_str(t["shape"]),
                ", ".join(t["axes"]),
                t["dtype"],
                text(human_count(t["numel"]), style="dim" if t["is_buffer"] else ""),
                human_bytes(t["nbytes"]),
                "buffer" if t["is_buffer"] else tristate(t["trainable"]),
            )
    return table


def _by_layer(tensors: list[dict]) -> list[tuple[str, list[dict]]]:
    groups: dict[str, list[dict]] = {}
    for t in tensors:
        groups.setdefault(t["layer"], []).append(t)
    return list(groups.items())


def _short_name(name: str, layer: str) -> str:
    for sep in (".", "/"):
        if layer and name.startswith(layer + sep):
            return name[len(layer) + 1 :]
    return name


def _totals_table(s: Summary) -> Table:
    tot = s.totals
    grid = LiteralTable.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    parts = [f"{n:,} {what}" for n, what in ((tot.trainable, "trainable"), (tot.frozen, "frozen")) if n]
    if tot.trainable_unknown:
        parts.append("trainability not recorded in the source" if not parts
                     else f"{tot.trainable_unknown:,} not recorded")
    count = f"{tot.parameters:,}" + (f" ({human_count(tot.parameters)})" if tot.parameters >= 10_000 else "")
    grid.add_row("parameters", f"{count}: {', '.join(parts) or 'none'}")
    grid.add_row("buffers", f"{tot.buffers:,} elements")
    grid.add_row("size", f"{human_bytes(tot.bytes)} in {tot.tensors} tensors, {tot.layers} layers; "
                 + ", ".join(f"{d} {human_bytes(b)}" for d, b in tot.bytes_by_dtype.items()))
    if tot.shared_tensors:
        grid.add_row("shared", f"{tot.shared_tensors} tensors are shared or tied (counted once)")
    return grid


def _metadata_table(meta: dict) -> Table:
    grid = LiteralTable.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    for key, value in meta.items():
        if isinstance(value, dict) and value.get("optimizer_state"):
            groups = value.get("param_groups", [])
            hyper = ", ".join(f"{k}={v}" for k, v in (groups[0] if groups else {}).items()
                              if k in ("lr", "momentum", "betas", "weight_decay", "eps"))
            shown = (f"optimizer state: {len(groups)} param group(s) ({hyper}), "
                     f"{value.get('state_tensors', 0)} state tensors, {human_bytes(value.get('state_bytes', 0))}")
        else:
            shown = readable(value)
        grid.add_row(str(key), shown)
    return grid


def readable(value, limit: int = 600) -> str:
    """A metadata value as ``key=value`` fields (saved arguments, hyper-parameters, a config; an
    object the file would need code for, such as an argparse Namespace, as ``Class(field=…)``), at
    most about ``limit`` characters: cut only between fields, saying how many more there are."""
    fields = _fields(value)
    out: list[str] = []
    used = 0
    for n, part in enumerate(fields):
        if out and used + len(part) > limit:
            return ", ".join(out) + f", … {len(fields) - n} more (--json shows them)"
        out.append(part if len(part) <= limit else part[: limit - 1] + "…")
        used += len(part) + 2
    return ", ".join(out)


def _fields(value) -> list[str]:
    """The top-level fields of ``value`` as text (a mapping's items, a stub's state and arguments)."""
    if isinstance(value, dict) and "needs_code" in value:
        inner = _fields(value.get("state") or {}) + [_inline(a) for a in value.get("args") or []]
        return [f"{value['needs_code']}({', '.join(inner)})"] if len(inner) <= 8 else \
            [f"{value['needs_code']}:", *inner]
    if isinstance(value, dict):
        if set(value) >= {"entries", "tensors"}:
            return [f"{value['entries']:,} entries" + (f" ({value['tensors']} tensors)" if value["tensors"] else "")]
        return [f"{k}={_inline(v)}" for k, v in value.items()]
    if isinstance(value, list):
        return [_inline(value)]
    return [str(value)]


def _inline(value, depth: int = 0) -> str:
    if isinstance(value, dict) and "needs_code" in value:
        return f"{value['needs_code']}(…)" if depth > 2 else \
            f"{value['needs_code']}({', '.join(_inline_fields(value.get('state') or {}, depth))})"
    if isinstance(value, dict):
        return "{…}" if depth > 2 else "{" + ", ".join(_inline_fields(value, depth)) + "}"
    if isinstance(value, list):
        items = [_inline(v, depth + 1) for v in value[:16]]
        return "[" + ", ".join(items) + (f", … {len(value) - 16} more" if len(value) > 16 else "") + "]"
    if isinstance(value, str):
        return value if len(value) <= 120 else value[:119] + "…"
    return repr(value) if isinstance(value, float) else str(value)


def _inline_fields(mapping: dict, depth: int) -> list[str]:
    items = list(mapping.items())
    shown = [f"{k}={_inline(v, depth + 1)}" for k, v in items[:32]]
    return shown + ([f"… {len(items) - 32} more"] if len(items) > 32 else [])

"""Terminal rendering of recorded watch runs (``weightkit runs list`` / ``runs show``) with rich."""

from __future__ import annotations

import math
import time
from typing import Iterator

from rich.console import RenderableType
from rich.text import Text

from weightkit.render._format import LongTable, line, plain_table, right_columns, text
from weightkit.render._text import num, shape_str

KIND_STYLE = {"nonfinite_grad": "bold red", "nonfinite_weight": "bold red", "exploding": "red", "vanishing": "yellow",
              "lr_high": "yellow", "lr_low": "yellow", "unused": "magenta"}


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "—"


def _ratio(v: float | None) -> Text:
    if v is None:
        return text("—", style="dim")
    style = "yellow" if v == v and (v > 1e-1 or v < 1e-5) else ""
    return text(num(v), style=style)


def render_run_list(runs, run_dir: str) -> Iterator[RenderableType]:
    """The ``runs list`` table: name, steps, params, alerts, status, last modified."""
    if not runs:
        yield text(f"no runs in {run_dir}", style="dim")
        return
    table = plain_table()
    table.add_column("run", overflow="fold")
    right_columns(table, "steps", "last step", "params", "alerts")
    table.add_column("status")
    table.add_column("last modified")
    for r in runs:
        table.add_row(text(r.name, style="cyan"), f"{r.steps:,}", "—" if r.last_step is None else f"{r.last_step:,}",
                      f"{r.params:,}", text(str(r.alerts), style="bold red" if r.alerts else "dim"),
                      text(r.status, style="red" if r.status.startswith("failed") else ""), _when(r.modified))
    yield line(("weightkit runs in ", "bold"), (run_dir, "cyan"), f"  ({len(runs)})")
    yield table


def _pairs(value, limit: int = 10_000) -> list[tuple[int, float]]:
    """``[[step, scale], …]`` from a run's meta, keeping only well-formed entries (a run file is input)."""
    if not isinstance(value, list):
        return []
    ok = (int, float)
    return [(int(v[0]), float(v[1])) for v in value[:limit] if isinstance(v, list) and len(v) == 2
            and isinstance(v[0], int) and not isinstance(v[0], bool) and isinstance(v[1], ok)
            and not isinstance(v[1], bool)]


def _steps_text(steps: list[int], most: int = 12) -> str:
    """Distinct steps, with how many times each repeats (a step can be skipped several times)."""
    counts: dict[int, int] = {}
    for s in steps:
        counts[s] = counts.get(s, 0) + 1
    shown = [f"{s}" if n == 1 else f"{s} (×{n})" for s, n in list(counts.items())[:most]]
    return ", ".join(shown) + (f", … ({len(counts) - most} more)" if len(counts) > most else "")


def _scale(v: float) -> str:
    """A loss scale: ``2^k`` for the powers of two a GradScaler uses, else the number."""
    m, e = math.frexp(v)
    return f"2^{e - 1}" if m == 0.5 else num(v)


def render_amp(meta: dict) -> Iterator[RenderableType]:
    """The GradScaler line of ``runs show``: attempts skipped for overflow (at which steps, with
    which loss scale) and the loss scale's log."""
    amp = meta.get("amp")
    if not isinstance(amp, dict):
        return
    skipped = _pairs(amp.get("skipped"))
    total = amp.get("skipped_total")
    total = total if isinstance(total, int) and not isinstance(total, bool) else len(skipped)
    scales = _pairs(amp.get("loss_scale"))
    now = f"loss scale {_scale(scales[-1][1])} (from step {scales[-1][0]})" if scales else "loss scale not recorded"
    if not total:
        yield line(("GradScaler: ", "bold"), f"{now}; no step skipped")
        return
    yield line(("GradScaler: ", "bold"), (f"{total} attempt(s) skipped for overflow", "yellow"),
               f" (no step, no alert) at step {_steps_text([s for s, _ in skipped])}, "
               f"scales {_scale(max(v for _, v in skipped))}–{_scale(min(v for _, v in skipped))}; {now}"
               if skipped else f"; {now}")


def render_run(run) -> Iterator[RenderableType]:
    """The ``runs show`` view: header, the per-parameter table of latest and worst values, the alerts."""
    m = run.meta
    steps = run.steps
    span = f"steps {steps[0]}–{steps[-1]}" if len(steps) else "no measured step yet"
    yield line(("weightkit run ", "bold"), (run.name, "cyan"),
                        f"  {m.get('framework', '?')} {m.get('model', '?')}, optimizer {m.get('optimizer') or 'none'}, "
                        f"every {m.get('every', '?')} {m.get('steps_are', 'steps')}; {len(steps)} measured ({span}); "
                        f"status {m.get('status', '?')}")
    yield from render_amp(m)
    table = plain_table()
    table.add_column("parameter", overflow="fold", min_width=14)
    right_columns(table, "shape", "grad norm\nlatest", "grad norm\nmax (step)", "update/weight\nlatest",
                  "update/weight\nmedian", "weight norm\nlatest", "NaN/Inf\nfrom step", "alerts")
    for row in run.layers():
        gmax = row["grad_norm_max"]
        table.add_row(
            row["name"], shape_str(row["shape"]),
            num(row["grad_norm_latest"]) if row["grad_norm_latest"] is not None else text("no grad", style="magenta"),
            "—" if gmax is None else f"{num(gmax)} ({row['grad_norm_max_step']})",
            _ratio(row["update_ratio_latest"]), _ratio(row["update_ratio_median"]),
            num(row["weight_norm_latest"]),
            text(str(row["nonfinite_first_step"]), style="bold red") if row["nonfinite_first_step"] is not None
            else text("no", style="dim"),
            text(str(row["alerts"]), style="bold red") if row["alerts"] else text("0", style="dim"))
    yield LongTable(table)
    alerts = run.alerts
    if not alerts:
        yield text("no alerts", style="green")
    else:
        at = plain_table()
        at.add_column("step", justify="right")
        at.add_column("kind")
        at.add_column("parameter", overflow="fold")
        at.add_column("message", overflow="fold")
        for a in alerts:
            at.add_row(str(a.step), text(a.kind, style=KIND_STYLE.get(a.kind, "")), a.param or "—", a.message)
        yield text(f"{len(alerts)} alert(s)", style="bold red")
        yield at
    yield text("update/weight: ‖Δw‖/‖w‖ of the optimizer step (rule of thumb ≈ 1e-3); NaN/Inf from step: the first "
               "step with a non-finite gradient or weight. NaN values print as 'nan'.", style="dim")

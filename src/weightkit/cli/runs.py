"""``weightkit runs list | show | plot | export``: read the runs ``weightkit.watch`` recorded."""

from __future__ import annotations

from pathlib import Path

import typer

from weightkit.cli._app import app, console, error_line, guard, print_json, say
from weightkit.errors import WeightkitError
from weightkit.render.console import parts
from weightkit.render.plots._mpl import save
from weightkit.render.plots.grad_flow import plot_grad_flow
from weightkit.render.runs import render_run, render_run_list
from weightkit.tracking.export import FORMATS, export_run
from weightkit.tracking.store import list_runs, open_run

runs_app = typer.Typer(name="runs", help="Recorded training runs (weightkit.watch): list, show, plot, export.",
                       no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
app.add_typer(runs_app, name="runs")

DIR_HELP = "Directory holding the runs (each in <dir>/<name>/watch.sqlite)."
RUN_HELP = "Run name (in --dir), run directory or watch.sqlite file."


@runs_app.command("list")
def list_(
    dir: Path = typer.Option(Path("runs"), "--dir", "--run-dir", "-d", help=DIR_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the runs as JSON."),
) -> None:
    """List the runs: name, measured steps, parameters, alerts, status, last modified."""

    refused: list[WeightkitError] = []

    def run():
        runs = list_runs(dir, on_error=refused.append)
        if as_json:
            print_json({"dir": str(dir), "runs": [r.to_dict() for r in runs]})
        else:
            console().print(parts(render_run_list(runs, str(dir))))
        # the runs that can be read are listed; each store refused is one line, and exit 2
        for e in refused[:-1]:
            error_line(str(e))
        if refused:
            raise refused[-1]

    guard(run)


@runs_app.command("show")
def show(
    run_name: str = typer.Argument(..., metavar="RUN", help=RUN_HELP),
    dir: Path = typer.Option(Path("runs"), "--dir", "--run-dir", "-d", help=DIR_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the run's summary and alerts as JSON."),
) -> None:
    """Per-layer table of the latest and worst values (grad norm, update ratio, NaN), and the alerts."""

    def run():
        with open_run(run_name, run_dir=dir) as r:
            if as_json:
                print_json(r.to_dict())
            else:
                console().print(parts(render_run(r)))

    guard(run)


@runs_app.command("plot")
def plot(
    run_name: str = typer.Argument(..., metavar="RUN", help=RUN_HELP),
    output: Path = typer.Option(Path("grad_flow.png"), "--output", "-o", help="Picture to write (.png, .svg or .pdf)."),
    dir: Path = typer.Option(Path("runs"), "--dir", "--run-dir", "-d", help=DIR_HELP),
    include_bias: bool = typer.Option(False, "--include-bias", help="Also draw biases and other 1-D parameters."),
    as_json: bool = typer.Option(False, "--json", help="Print what was drawn as JSON."),
) -> None:
    """Draw the gradient flow: mean and max |grad| per layer, and the update ratio over steps (log, 1e-3 line)."""

    def run():
        _check_picture(output)
        with open_run(run_name, run_dir=dir) as r:
            fig = plot_grad_flow(r, include_bias=include_bias)
            save(fig, output)
            name, steps = r.name, len(r.steps)
        if as_json:
            print_json({"run": name, "output": str(output), "panels": len(fig.axes), "steps": steps})
        else:
            say(f"wrote {output}")

    guard(run)


@runs_app.command("export")
def export(
    run_name: str = typer.Argument(..., metavar="RUN", help=RUN_HELP),
    format: str = typer.Option("csv", "--format", "-f", help="csv, tensorboard (a log directory) or parquet."),
    output: Path = typer.Option(..., "--output", "-o", help="File (csv, parquet) or directory (tensorboard) to write."),
    dir: Path = typer.Option(Path("runs"), "--dir", "--run-dir", "-d", help=DIR_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print what was written as JSON."),
) -> None:
    """Export a run: CSV (step,param,metric,value), TensorBoard event files, or Parquet."""

    def run():
        if format not in FORMATS:
            raise WeightkitError(f"unknown export format {format!r}; choose one of: {', '.join(FORMATS)}")
        with open_run(run_name, run_dir=dir) as r:
            result = export_run(r, output, format=format)
        if as_json:
            print_json({"run": run_name, **result})
        else:
            what = f"{result['rows']} rows" if "rows" in result else \
                f"{result['scalars']} scalars, {result['histograms']} histograms"
            say(f"wrote {output} ({format}, {what})")

    guard(run)


def _check_picture(path: Path) -> None:
    """Fail before drawing when the picture cannot be written."""
    import os

    if path.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise WeightkitError(f"{path}: unsupported picture format {path.suffix or '(none)'}; use .png, .svg or .pdf")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise WeightkitError(f"{path}: the directory {parent} does not exist; create it or choose another path")
    if path.is_dir() or not os.access(parent, os.W_OK):
        raise WeightkitError(f"{path}: cannot be written; choose a writable path")

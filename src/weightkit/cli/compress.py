"""``weightkit convert``, ``prune``, ``quantize``, ``quantize-error``, ``verify``.

All work on files (any format weightkit opens), stream tensor by tensor, and write OUT
atomically as safetensors; OUT never replaces IN unless ``--in-place``. Bad input exits 2 with
one line on stderr and writes nothing; ``verify`` exits 1 when a hash does not match.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Optional

import typer

from weightkit.analyses.summary import summary
from weightkit.cli._app import EXIT_FINDINGS, SELECT, app, console, guard, print_json
from weightkit.core.opening import open as open_weights
from weightkit.edits.load import verify as check
from weightkit.edits.prune import prune as do_prune
from weightkit.edits.quantize import quantize as do_quantize
from weightkit.edits.quantize import quantize_error as measure
from weightkit.edits.save import save
from weightkit.errors import WeightkitError
from weightkit.render._format import text
from weightkit.render._text import human_bytes
from weightkit.render.console import renderable

_IN = typer.Argument(..., help="Checkpoint file or directory of shards (any format weightkit opens).")
_OUT = typer.Argument(None, help="The safetensors file to write (optional with --in-place).")
_IN_PLACE = typer.Option(False, "--in-place", help="Replace IN itself (atomically).")
_JSON = typer.Option(False, "--json", help="Print the report as JSON.")
_BITS = typer.Option(8, "--bits", "-b", help="8 or 4.")
_SCHEME = typer.Option("symmetric", "--scheme", help="symmetric or asymmetric.")
_GRANULARITY = typer.Option("channel", "--granularity", "-g",
                            help="channel (one scale per output channel), tensor or group.")
_GROUP_SIZE = typer.Option(128, "--group-size", help="Elements per group (--granularity group).")


@contextlib.contextmanager
def _naming(source: Path, *others):
    """Every error line names the input: messages that mention neither it nor the output path
    get the input as a prefix."""
    try:
        yield
    except WeightkitError as e:
        if any(str(p) in str(e) for p in (source, *others) if p is not None):
            raise
        raise type(e)(f"{source}: {e}") from None


def _paths(source: Path, out: Optional[Path], in_place: bool) -> tuple[str, str]:
    if not source.exists():
        raise WeightkitError(f"{source}: no such file or directory; check the path")
    if out is None:
        if not in_place:
            raise WeightkitError(f"{source}: give OUT, the file to write (or --in-place to replace {source})")
        if not source.is_file():
            raise WeightkitError(f"{source}: --in-place needs a single file; give OUT for a directory of shards")
        out = source
    return str(source), str(out)


def _show(report, as_json: bool) -> None:
    if as_json:
        print_json(report.to_dict())
    else:
        console().print(renderable(report))


def _rewrite(source: Path, out: Optional[Path], in_place: bool, as_json: bool, write) -> None:
    """Check the paths, run ``write(src, dst)`` and print the report it returns (prune, quantize)."""

    def run():
        src, dst = _paths(source, out, in_place)
        with _naming(source, out):
            report = write(src, dst)
        _show(report, as_json)

    guard(run)


@app.command()
def prune(
    source: Path = _IN,
    out: Optional[Path] = _OUT,
    amount: Optional[float] = typer.Option(None, "--amount", "-a", help="Fraction to prune, 0..1."),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="Prune every |w| below this instead."),
    scope: str = typer.Option("layer", "--scope", help="layer (each tensor) or global (across selected tensors)."),
    method: str = typer.Option("magnitude", "--method", help="magnitude, random, l1-structured, l2-structured."),
    select: Optional[str] = SELECT,
    kind: Optional[str] = typer.Option(None, "--kind", help="Only layers of this kind (Linear, Conv2d…)."),
    role: Optional[str] = typer.Option(None, "--role", help="Tensor role to prune (default: the weight matrices of every layer kind: weight, kernel, weight_ih, …)."),
    dim: Optional[int] = typer.Option(None, "--dim", help="Structured: axis of the removed slices (default: output axis)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed for --method random."),
    in_place: bool = _IN_PLACE,
    as_json: bool = _JSON,
) -> None:
    """Prune a checkpoint into OUT (safetensors): zero the smallest weights, or whole channels."""

    def write(src, dst):
        return do_prune(src, amount, select=select, kind=kind, role=role, scope=scope, method=method, dim=dim,
                        threshold=threshold, seed=seed, out=dst, in_place=in_place)

    _rewrite(source, out, in_place, as_json, write)


@app.command()
def quantize(
    source: Path = _IN,
    out: Optional[Path] = _OUT,
    bits: int = _BITS,
    scheme: str = _SCHEME,
    granularity: str = _GRANULARITY,
    group_size: int = _GROUP_SIZE,
    select: Optional[str] = SELECT,
    in_place: bool = _IN_PLACE,
    as_json: bool = _JSON,
) -> None:
    """Write a weight-only quantised checkpoint (int8 / packed int4 + scales) that weightkit reads back."""

    def write(src, dst):
        return do_quantize(src, dst, bits=bits, scheme=scheme, granularity=granularity, group_size=group_size,
                           select=select, mode="weight-only", in_place=in_place)

    _rewrite(source, out, in_place, as_json, write)


@app.command("quantize-error")
def quantize_error(
    source: Path = _IN,
    bits: int = _BITS,
    scheme: str = _SCHEME,
    granularity: str = _GRANULARITY,
    group_size: int = _GROUP_SIZE,
    select: Optional[str] = SELECT,
    as_json: bool = _JSON,
) -> None:
    """Measure what quantising would cost (relative error, SQNR, max error, bytes); changes nothing."""

    def run():
        if not source.exists():
            raise WeightkitError(f"{source}: no such file or directory; check the path")
        with _naming(source):
            report = measure(str(source), bits=bits, scheme=scheme, granularity=granularity, group_size=group_size,
                             select=select)
        _show(report, as_json)

    guard(run)


@app.command()
def convert(
    source: Path = _IN,
    out: Path = typer.Argument(..., help="The safetensors file to write."),
    as_json: bool = _JSON,
) -> None:
    """Write any checkpoint (a pickled whole model, a training checkpoint, npz, Keras, shards) as one
    safetensors file, atomically, with a sha256 per tensor; nothing from IN is executed."""

    def run():
        src, dst = _paths(source, out, False)
        if Path(src).resolve() == Path(dst).resolve():
            raise WeightkitError(f"{out}: is the input file; write the safetensors file to another path")
        with _naming(source, out):
            ws = open_weights(src)
            kept = {"format": ws.format, "tensors": len(ws), "bytes": summary(ws).totals.bytes}
            path = save(ws, dst, metadata={"converted_from": Path(src).name})
        result = {"source": src, "out": str(path), **kept}
        if as_json:
            print_json(result)
        else:
            console().print(text(f"wrote {path}: {kept['tensors']} tensors, {human_bytes(kept['bytes'])} "
                                 f"(from {src}, {kept['format']}); check it with: weightkit verify {path}"))

    guard(run)


@app.command()
def verify(
    path: Path = typer.Argument(..., help="A safetensors file written by weightkit."),
    as_json: bool = _JSON,
) -> None:
    """Recompute every tensor's sha256 and compare with the recorded one. Exit 1 on a mismatch."""

    def run():
        with _naming(path):
            report = check(path)
        if as_json:
            print_json(report.to_dict())
        else:
            console().print(renderable(report))
        return 0 if report.ok else EXIT_FINDINGS

    guard(run)

"""Export a recorded run to the tools people already use: TensorBoard, CSV, Parquet.

* ``tensorboard``: event files through ``torch.utils.tensorboard`` (needs the ``tensorboard``
  package): a scalar ``<metric>/<param>`` per measured step, the stored gradient and weight
  histograms (``grad/<param>``, ``weight/<param>``, with their exact bins), and the alerts as text.
* ``csv``: long format, one row per measured value: ``step,param,metric,value`` (a NaN that was
  measured is written ``nan``; values that were not measured are left out).
* ``parquet``: the same long table, written with ``pyarrow``.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np

from weightkit._atomic import atomic_files, atomic_write, check_writable
from weightkit.errors import MissingDependencyError, WeightkitError
from weightkit.tracking.store import COUNT_METRICS, METRICS, Run, iter_long

__all__ = ["export_run", "FORMATS"]

FORMATS = ("csv", "tensorboard", "parquet")


def export_run(run: Run, output: str | os.PathLike, *, format: str = "csv") -> dict:
    """Write ``run`` to ``output`` as ``csv``, ``tensorboard`` (a log directory) or ``parquet``.

    Returns a small summary (``format``, ``output``, ``rows`` or ``scalars``/``histograms``).

    Example:
        >>> import os, tempfile, torch, weightkit
        >>> from weightkit.tracking.export import export_run
        >>> net = torch.nn.Linear(2, 1); opt = torch.optim.SGD(net.parameters(), lr=0.1)
        >>> d = tempfile.mkdtemp()
        >>> with weightkit.watch(net, optimizer=opt, every=1, run_dir=d, name="e"):
        ...     opt.zero_grad(); net(torch.ones(1, 2)).sum().backward(); opt.step()
        >>> export_run(weightkit.open_run("e", run_dir=d), os.path.join(d, "e.csv"))["rows"]
        20
    """
    if format not in FORMATS:
        raise WeightkitError(f"unknown export format {format!r}; choose one of: {', '.join(FORMATS)}")
    out = Path(output)
    if format == "tensorboard":
        return _tensorboard(run, out)

    check_writable(out)
    if format == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(("step", "param", "metric", "value"))
        n = 0
        for step, param, metric, value in iter_long(run):
            w.writerow((step, param, metric, _fmt(metric, value)))
            n += 1
        try:
            with atomic_write(out) as f:
                f.write(buf.getvalue().encode())
        except OSError as e:
            raise WeightkitError(f"{out}: cannot be written ({e.strerror}); choose a writable path") from None
        return {"format": "csv", "output": str(out), "rows": n}
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise MissingDependencyError("exporting to Parquet needs the Python package 'pyarrow', which is not "
                                     "installed; install it with: pip install pyarrow (or export --format csv)") from None
    steps, params, metrics, values = [], [], [], []
    for step, param, metric, value in iter_long(run):
        steps.append(step)
        params.append(param)
        metrics.append(metric)
        values.append(value)
    table = pa.table({"step": pa.array(steps, pa.int64()), "param": pa.array(params, pa.string()),
                      "metric": pa.array(metrics, pa.string()), "value": pa.array(values, pa.float64())})
    try:
        with atomic_write(out) as f:
            pq.write_table(table, f)
    except OSError as e:
        raise WeightkitError(f"{out}: cannot be written ({e.strerror}); choose a writable path") from None
    return {"format": "parquet", "output": str(out), "rows": len(steps)}


def _fmt(metric: str, v: float) -> str:
    if v != v:
        return "nan"
    return str(int(v)) if metric in COUNT_METRICS else repr(float(v))


def _tensorboard(run: Run, out: Path) -> dict:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise MissingDependencyError("exporting to TensorBoard needs the Python package 'tensorboard', which is not "
                                     "installed; install it with: pip install tensorboard") from None
    if out.exists() and not out.is_dir():
        raise WeightkitError(f"{out}: exists and is not a directory; TensorBoard writes a log directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WeightkitError(f"{out}: cannot be written ({e.strerror}); choose a writable directory") from None
    # the writer names its event file itself (time, host, pid: guessable), so it writes into a
    # private directory and the finished file is moved in
    with atomic_files(out) as tmp:
        scalars, hists = _write_events(run, SummaryWriter(log_dir=str(tmp)))
    return {"format": "tensorboard", "output": str(out), "scalars": scalars, "histograms": hists}


def _write_events(run: Run, writer) -> tuple[int, int]:
    scalars = hists = 0
    try:
        for m in METRICS:
            values, present = run._load(m)
            for pi, p in enumerate(run.params):
                for si in np.nonzero(present[:, pi])[0]:
                    writer.add_scalar(f"{m}/{p.name}", float(values[si, pi]), int(run.steps[si]))
                    scalars += 1
        for p in run.params:
            for what in ("grad", "weight"):
                for h in run.histograms(p.name, what=what):
                    num = int(h.counts.sum())
                    if num == 0:
                        continue
                    # TensorBoard buckets are (left edge, right edge]; give each bin its right edge
                    writer.add_histogram_raw(f"{what}/{p.name}", min=float(h.edges[0]), max=float(h.edges[-1]),
                                             num=num, sum=h.sum, sum_squares=h.sumsq,
                                             bucket_limits=h.edges[1:].tolist(), bucket_counts=h.counts.tolist(),
                                             global_step=h.step)
                    hists += 1
        for a in run.alerts:
            writer.add_text("alerts", f"step {a.step}: [{a.kind}] {a.message}", a.step)
    finally:
        writer.close()
    return scalars, hists

"""The run store: one SQLite file per run (``runs/<name>/watch.sqlite``, WAL mode), and its reader.

Schema (version 1)::

    meta(key TEXT PRIMARY KEY, value TEXT)            -- model, optimizer, every, start/stop time, version, status
    params(id INTEGER PRIMARY KEY, name TEXT UNIQUE, shape TEXT, numel INTEGER)   -- shape as JSON
    steps(step INTEGER PRIMARY KEY, time REAL)        -- one row per committed measured step
    samples(step, param_id, grad_norm, grad_mean, grad_std, grad_absmean, grad_absmax, grad_nan,
            grad_inf, weight_norm, update_norm, update_ratio,
            PRIMARY KEY (step, param_id)) WITHOUT ROWID        -- one wide row per (step, parameter)
    alerts(id INTEGER PRIMARY KEY, step INTEGER, param TEXT, kind TEXT, message TEXT, value REAL, time REAL)
    hists(step, param_id, what, lo, hi, nan, posinf, neginf, sum, sumsq, counts BLOB,
          PRIMARY KEY (step, param_id, what)) WITHOUT ROWID   -- what: 'grad' | 'weight'; counts: int64

One wide row per (step, parameter) keeps a measured step to a single ``executemany`` of P rows in
one transaction. SQLite stores a NaN REAL as NULL, so a NaN norm reads back as NaN but so does a
value that was not measured (a parameter without a gradient, updates without an optimizer): the
``grad_nan``/``grad_inf`` counts say which. Histogram bins are equal-width over the finite range
``[lo, hi]``; NaN, +Inf and -Inf are counted apart, never dropped.

Crash safety: measured steps are committed in transactions of whole steps (``synchronous=NORMAL``
in WAL mode survives a killed process; only a power loss can drop the last transactions). The
writer runs in a background thread; the training thread hands it the steps gathered over
``BATCH_SECONDS`` at a time (and at once anything with an alert), so it wakes a few times a second
rather than once per step. A killed process loses at most the steps of that last fraction of a
second; ``flush()``, ``stop()`` and interpreter exit write everything.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import sqlite3
import threading
import time
import weakref
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from weightkit._atomic import atomic_path
from weightkit.errors import SourceNotFoundError, WeightkitError
from weightkit.tracking._store_guard import CheckedStore, uri

__all__ = ["METRICS", "COUNT_METRICS", "Store", "Run", "RunInfo", "ParamInfo", "Alert", "Histogram",
           "open_run", "list_runs", "resolve_run", "FILE_NAME", "SCHEMA_VERSION"]

SCHEMA_VERSION = 1
FILE_NAME = "watch.sqlite"
BATCH_SECONDS = 0.25  # the longest a measured step waits before it goes to the writer
METRICS = ("grad_norm", "grad_mean", "grad_std", "grad_absmean", "grad_absmax", "grad_nan", "grad_inf",
           "weight_norm", "update_norm", "update_ratio")
COUNT_METRICS = ("grad_nan", "grad_inf")
ALERT_KINDS = ("nonfinite_grad", "nonfinite_weight", "vanishing", "exploding", "lr_high", "lr_low", "unused")

# What a run store may make a reader build (a hostile file gets a one-line refusal instead):
MAX_PARAMS = 1 << 16  # parameter tensors (the largest models have tens of thousands)
MAX_TEXT_BYTES = 128 << 20  # names and alert messages together
MAX_BINS = 4096  # histogram bins (watch(bins=) allows 2..4096)
_MAX_META, _MAX_META_BYTES = 10_000, 16 << 20  # weightkit writes a few dozen short entries
# A metric is read into a [steps, params] float64 array; a real store spends more than 20
# bytes on each (step, parameter) row (22 with only the weight norm measured), so beyond MIN_CELLS
# the file must hold at least BYTES_PER_CELL bytes per cell.
MIN_CELLS, BYTES_PER_CELL = 1 << 22, 12

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS params(id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL, shape TEXT NOT NULL,
                                  numel INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS steps(step INTEGER PRIMARY KEY, time REAL NOT NULL);
CREATE TABLE IF NOT EXISTS samples(step INTEGER NOT NULL, param_id INTEGER NOT NULL,
    {", ".join(f"{m} {'INTEGER' if m in COUNT_METRICS else 'REAL'}" for m in METRICS)},
    PRIMARY KEY (step, param_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS alerts(id INTEGER PRIMARY KEY, step INTEGER NOT NULL, param TEXT, kind TEXT NOT NULL,
                                  message TEXT NOT NULL, value REAL, time REAL NOT NULL);
CREATE TABLE IF NOT EXISTS hists(step INTEGER NOT NULL, param_id INTEGER NOT NULL, what TEXT NOT NULL,
    lo REAL, hi REAL, nan INTEGER, posinf INTEGER, neginf INTEGER, sum REAL, sumsq REAL, counts BLOB NOT NULL,
    PRIMARY KEY (step, param_id, what)) WITHOUT ROWID;
"""

_COMPANIONS = ("-wal", "-shm", "-journal")  # the files SQLite keeps beside a database

_INSERT_SAMPLE = f"INSERT OR REPLACE INTO samples VALUES (?, ?, {', '.join('?' for _ in METRICS)})"
_INSERT_ALERT = "INSERT INTO alerts(step, param, kind, message, value, time) VALUES (?, ?, ?, ?, ?, ?)"
_INSERT_HIST = "INSERT OR REPLACE INTO hists VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"

log = logging.getLogger("weightkit.watch")


# ---- writing ------------------------------------------------------------------------------------


class Store:
    """Writer of one run file. Opening validates the path (a ``WeightkitError`` when it cannot be
    written); ``put`` queues one measured step for the background writer; ``close`` flushes."""

    def __init__(self, path: str | os.PathLike, *, meta: dict[str, Any], params: Sequence[tuple[str, tuple, int]],
                 background: bool = True, overwrite: bool = False):
        self.path = Path(path)
        self.error: BaseException | None = None
        self._closed = False
        if os.path.lexists(self.path) and not overwrite:  # lexists: a dangling link counts too
            raise WeightkitError(f"{self.path}: a run already exists there; choose another name= or pass overwrite=True")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = _create(self.path, meta, params, overwrite=overwrite)
        except (OSError, sqlite3.Error) as e:
            reason = getattr(e, "strerror", None) or str(e)
            raise WeightkitError(f"{self.path}: the watch store cannot be written ({reason}); "
                                 "pass run_dir= or store= a writable location") from None
        self._conn = conn
        self._queue: queue.Queue | None = None
        self._pending: list[tuple] = []  # measured steps not yet handed to the writer
        self._handed = time.time()
        self._thread: threading.Thread | None = None
        if background:
            self._queue = queue.Queue()
            self._thread = threading.Thread(target=self._drain, name=f"weightkit-watch-writer:{self.path.parent.name}",
                                            daemon=True)
            self._thread.start()
        # a process that forgets stop() still gets its queued steps written at exit
        # (weakref.finalize runs at interpreter exit, before daemon threads are stopped)
        self._finalizer = weakref.finalize(self, _close_at_exit, weakref.ref(self))

    # -- public ---------------------------------------------------------------------------------

    def put(self, step: int, rows: list[tuple], alerts: Sequence[tuple] = (), hists: Sequence[tuple] = ()) -> None:
        """Queue one measured step: ``rows`` are ``(param_id, *METRICS)``; one transaction on disk."""
        if self._closed:
            return
        now = time.time()
        record = (int(step), now, rows, list(alerts), list(hists))
        if self._queue is None:
            self._write(record)
            return
        self._pending.append(record)
        if alerts or now - self._handed >= BATCH_SECONDS:
            self._hand_over()

    def _hand_over(self) -> None:
        """Give the steps gathered so far to the writer, as one transaction."""
        if self._pending:
            assert self._queue is not None  # only called with a writer thread
            self._queue.put(("steps", self._pending))
            self._pending = []
        self._handed = time.time()

    def put_alerts(self, alerts: list[tuple]) -> None:
        """Queue alerts found outside a measured step (``(step, param, kind, message, value)``)."""
        if self._closed or not alerts:
            return
        record = ("alerts", list(alerts))
        if self._queue is None:
            self._write(record)
        else:
            self._hand_over()
            self._queue.put(record)

    def set_meta(self, **items: Any) -> None:
        """Queue meta updates (``status``, ``stopped``) behind the steps already queued."""
        if self._closed:
            return
        if self._queue is None:
            self._write(("meta", items))
        else:
            self._hand_over()
            self._queue.put(("meta", items))

    def flush(self) -> None:
        """Wait until every queued step is committed."""
        if self._queue is not None:
            self._hand_over()
            self._queue.join()

    def close(self) -> None:
        """Flush the queue, stop the writer and close the file (idempotent)."""
        if self._closed:
            return
        if self._queue is not None and self._thread is not None:
            self._hand_over()
            self._queue.put(None)
            self._thread.join()
        self._closed = True
        try:
            self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            self._conn.close()
        except sqlite3.Error:  # pragma: no cover - closing a broken file
            pass
        self._finalizer.detach()

    # -- writer ---------------------------------------------------------------------------------

    def _drain(self) -> None:
        q = self._queue
        assert q is not None  # the writer thread runs only with a queue
        while True:
            record = q.get()
            try:
                if record is None:
                    return
                self._write(record)
            finally:
                q.task_done()

    def _write(self, record) -> None:
        if self.error is not None:
            return
        conn = self._conn
        try:
            conn.execute("BEGIN")
            for step_record in (record[1] if record[0] == "steps" else (record,)):
                self._insert(conn, step_record)
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            self.error = e
            log.warning("weightkit watch: %s could not be written (%s); later steps are not recorded", self.path, e)
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass

    @staticmethod
    def _insert(conn, record) -> None:
        if record[0] == "meta":
            conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                             [(k, json.dumps(v)) for k, v in record[1].items()])
        elif record[0] == "alerts":
            conn.executemany(_INSERT_ALERT, [(*map(_nan, a), time.time()) for a in record[1]])
        else:
            step, t, rows, alerts, hists = record
            conn.execute("INSERT OR REPLACE INTO steps VALUES (?, ?)", (step, t))
            conn.executemany(_INSERT_SAMPLE, [(step, *map(_nan, r)) for r in rows])
            if alerts:
                conn.executemany(_INSERT_ALERT, [(*map(_nan, a), t) for a in alerts])
            if hists:
                conn.executemany(_INSERT_HIST, [(step, *map(_nan, h)) for h in hists])


def _create(path: Path, meta: dict[str, Any], params: Sequence[tuple[str, tuple, int]], *,
            overwrite: bool) -> sqlite3.Connection:
    """A new store at ``path``, opened for writing in WAL mode.

    The schema, meta and params are written under an unguessable temporary name (its rollback
    journal too) and the finished file is moved in whole, so a reader never sees half a store
    and nothing planted at ``path`` or its ``-journal`` name is opened. Stale ``-wal``/``-shm``
    files at the name are removed first (SQLite would replay an old WAL into the new store);
    SQLite opens them with ``O_NOFOLLOW`` and ``nofollow=1`` refuses a link at ``path``.
    """
    with atomic_path(path, exclusive=not overwrite) as tmp:
        build = sqlite3.connect(uri(tmp, nofollow="1"), uri=True, isolation_level=None)
        try:
            build.executescript(_SCHEMA)
            build.execute("BEGIN")
            build.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                              [(k, json.dumps(v)) for k, v in {**meta, "schema": SCHEMA_VERSION}.items()])
            build.executemany("INSERT INTO params(id, name, shape, numel) VALUES (?, ?, ?, ?)",
                              [(i, n, json.dumps(list(s)), int(k)) for i, (n, s, k) in enumerate(params)])
            build.execute("COMMIT")
        finally:
            build.close()
        for suffix in _COMPANIONS:
            Path(str(path) + suffix).unlink(missing_ok=True)  # unlink removes a link, never its target
    conn = sqlite3.connect(uri(path, nofollow="1"), uri=True, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def _nan(v):
    """SQLite turns a NaN REAL into NULL; keep it apart from 'not measured' as the text 'NaN'."""
    return "NaN" if isinstance(v, float) and v != v else v


def _num(v) -> float:
    """A stored value as a float: NULL (not measured) and 'NaN' both read as NaN."""
    if v is None or v == "NaN":
        return np.nan
    if type(v) not in (int, float):
        raise TypeError(f"{type(v).__name__} where a number belongs")
    return float(v)


def _text(v) -> str:
    """A stored name or message: text, as weightkit writes it."""
    if type(v) is not str:
        raise TypeError(f"{type(v).__name__} where text belongs")
    return v


def _close_at_exit(ref) -> None:
    store = ref()
    if store is not None:
        store.close()


# ---- reading ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParamInfo:
    """A watched parameter: its name (model order), shape and number of elements."""

    name: str
    shape: tuple[int, ...]
    numel: int


@dataclass(frozen=True)
class Alert:
    """One alert: the optimizer step it was seen at, the parameter (or None), its kind and message.

    Kinds: ``nonfinite_grad``, ``nonfinite_weight``, ``vanishing``, ``exploding``, ``lr_high``,
    ``lr_low``, ``unused``."""

    step: int
    param: str | None
    kind: str
    message: str
    value: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Histogram:
    """A histogram of one tensor at one step: ``counts`` over ``edges`` (finite values), plus the
    NaN/+Inf/-Inf counts, which are never dropped."""

    step: int
    edges: np.ndarray
    counts: np.ndarray
    nan: int
    posinf: int
    neginf: int
    sum: float
    sumsq: float


@dataclass(frozen=True)
class RunInfo:
    """One line of :func:`list_runs`."""

    name: str
    path: str
    steps: int
    last_step: int | None
    params: int
    alerts: int
    modified: float
    status: str

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_run(run: str | os.PathLike, *, run_dir: str | os.PathLike = "runs") -> Path:
    """The store file of a run given as a name in ``run_dir``, a run directory or the file itself."""
    p = Path(run)
    for candidate in (p, p / FILE_NAME, Path(run_dir) / p / FILE_NAME):
        if candidate.is_file():
            return candidate
    raise SourceNotFoundError(f"{run}: no such run (looked for {Path(run_dir) / p / FILE_NAME} and {p}); "
                              "see 'weightkit runs list'")


class Run:
    """A recorded run, read from its store (it may still be being written).

    Attributes: ``name``, ``path``, ``meta`` (dict), ``params`` (list of :class:`ParamInfo`,
    model order), ``steps`` (int64 array of the measured optimizer steps), ``alerts``.
    ``metric(name)`` gives a float64 array ``[len(steps), len(params)]`` (NaN where not measured).

    Example:
        >>> import tempfile, torch, weightkit
        >>> net = torch.nn.Linear(4, 2); opt = torch.optim.SGD(net.parameters(), lr=0.1)
        >>> d = tempfile.mkdtemp()
        >>> with weightkit.watch(net, optimizer=opt, every=1, run_dir=d, name="demo"):
        ...     for _ in range(3):
        ...         opt.zero_grad(); net(torch.randn(8, 4)).square().mean().backward(); opt.step()
        >>> run = weightkit.open_run("demo", run_dir=d)
        >>> run.steps.tolist(), [p.name for p in run.params], run.metric("grad_norm").shape
        ([0, 1, 2], ['weight', 'bias'], (3, 2))
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.name = self.path.parent.name if self.path.name == FILE_NAME else self.path.stem
        self._db = CheckedStore(self.path, _SCHEMA)
        try:
            self._read_header()
        except BaseException:
            self._db.close()
            raise
        self._index = {p.name: i for i, p in enumerate(self.params)}
        self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._alerts: list[Alert] | None = None

    def _read_header(self) -> None:
        """Meta, params and steps, each count checked before anything is built from it."""
        db = self._db
        n, size = db.one("SELECT COUNT(*), TOTAL(length(key)) + TOTAL(length(value)) FROM meta")
        if n > _MAX_META or size > _MAX_META_BYTES:
            raise db.refuse(f"its meta table holds {n} entries of {int(size)} bytes (weightkit writes a few dozen)")
        with db.values_of("meta"):
            self.meta = {_text(k): json.loads(v) for k, v in db.rows("SELECT key, value FROM meta")}
        n, size = db.one("SELECT COUNT(*), TOTAL(length(name)) + TOTAL(length(shape)) FROM params")
        if n > MAX_PARAMS or size > MAX_TEXT_BYTES:
            raise db.refuse(f"it lists {n:,} parameters in {int(size):,} bytes (at most {MAX_PARAMS:,})")
        self.params = []
        with db.values_of("params"):
            for i, (pid, name, shape, numel) in enumerate(db.rows("SELECT id, name, shape, numel FROM params ORDER BY id")):
                shape = tuple(json.loads(shape))
                if pid != i or len(shape) > 64 or not all(type(d) is int and d >= 0 for d in shape) or \
                        type(numel) is not int or numel < 0:
                    raise ValueError(f"parameter row {pid}")
                self.params.append(ParamInfo(_text(name), shape, numel))
            self.steps = np.fromiter((s for (s,) in db.rows("SELECT step FROM steps ORDER BY step")), dtype=np.int64)
        # the [steps, params] arrays of a metric: sized by the file, as a real store's rows are
        cells = len(self.steps) * len(self.params)
        if cells > max(MIN_CELLS, db.size // BYTES_PER_CELL):
            raise db.refuse(f"it claims {len(self.steps):,} steps × {len(self.params):,} parameters, far more than "
                            f"its {db.size:,} bytes can hold")

    def __repr__(self) -> str:
        return f"<weightkit Run {self.name!r}: {len(self.steps)} steps, {len(self.params)} params, {len(self.alerts)} alerts>"

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    @property
    def metrics(self) -> tuple[str, ...]:
        return METRICS

    def param_index(self, param: str) -> int:
        try:
            return self._index[param]
        except KeyError:
            raise WeightkitError(f"{self.name}: no parameter {param!r}; it has {', '.join(self._index) or 'none'}") from None

    def metric(self, name: str, param: str | None = None) -> np.ndarray:
        """``[steps, params]`` float64 values of one metric (one column when ``param`` is given).

        Metrics: ``grad_norm``, ``grad_mean``, ``grad_std``, ``grad_absmean`` (mean |g|),
        ``grad_absmax``, ``grad_nan``, ``grad_inf`` (counts), ``weight_norm``, ``update_norm``
        (‖Δw‖ of the optimizer step), ``update_ratio`` (‖Δw‖/‖w‖)."""
        values = self._load(name)[0]
        return values[:, self.param_index(param)].copy() if param is not None else values.copy()

    def measured(self, name: str) -> np.ndarray:
        """``[steps, params]`` booleans: where ``metric(name)`` was measured (its NaN is a real NaN)."""
        return self._load(name)[1].copy()

    def _load(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        if name not in METRICS:
            raise WeightkitError(f"unknown metric {name!r}; choose one of: {', '.join(METRICS)}")
        if name not in self._cache:
            out = np.full((len(self.steps), len(self.params)), np.nan)
            present = np.zeros(out.shape, dtype=bool)
            with self._db.values_of("samples"):
                for rows in self._db.batches(f"SELECT step, param_id, {name} FROM samples WHERE {name} IS NOT NULL"):
                    a = np.array([(s, p, _num(v)) for s, p, v in rows], dtype=np.float64)
                    si = np.searchsorted(self.steps, a[:, 0].astype(np.int64))
                    pi = a[:, 1].astype(np.int64)
                    ok = (si < len(self.steps)) & (pi >= 0) & (pi < len(self.params))
                    ok[ok] = self.steps[si[ok]] == a[ok, 0]
                    out[si[ok], pi[ok]] = a[ok, 2]
                    present[si[ok], pi[ok]] = True
            self._cache[name] = (out, present)
        return self._cache[name]

    @property
    def alerts(self) -> list[Alert]:
        if self._alerts is None:
            db = self._db
            n, size = db.one("SELECT COUNT(*), TOTAL(length(param)) + TOTAL(length(kind)) + TOTAL(length(message)) "
                             "FROM alerts")
            # each kind is raised at most once per parameter
            if n > 2 * len(ALERT_KINDS) * len(self.params) + 10_000 or size > MAX_TEXT_BYTES:
                raise db.refuse(f"it holds {n:,} alerts ({int(size):,} bytes) for {len(self.params):,} parameters")
            with db.values_of("alerts"):
                self._alerts = [Alert(int(s), None if p is None else _text(p), _text(k), _text(m),
                                      None if v is None else _num(v))
                                for s, p, k, m, v in db.rows("SELECT step, param, kind, message, value FROM alerts "
                                                             "ORDER BY step, id")]
        return list(self._alerts)

    def histograms(self, param: str, *, what: str = "grad") -> list[Histogram]:
        """The histograms recorded for one parameter (``what``: ``"grad"`` or ``"weight"``)."""
        if what not in ("grad", "weight"):
            raise WeightkitError(f"histograms(what={what!r}): choose 'grad' or 'weight'")
        pid = self.param_index(param)
        out = []
        with self._db.values_of("hists"):
            for step, lo, hi, nan, pinf, ninf, s, ss, blob in self._db.rows(
                    "SELECT step, lo, hi, nan, posinf, neginf, sum, sumsq, "
                    "CASE WHEN length(counts) <= ? THEN counts END FROM hists "  # length() reads no blob
                    "WHERE param_id = ? AND what = ? ORDER BY step", (8 * MAX_BINS, pid, what)):
                if not isinstance(blob, bytes) or not 0 < len(blob) <= 8 * MAX_BINS:
                    raise ValueError("counts are not the int64 bins weightkit writes")
                counts = np.frombuffer(blob, dtype=np.int64).copy()
                lo = 0.0 if lo is None else _num(lo)
                hi = lo if hi is None else _num(hi)
                out.append(Histogram(int(step), np.linspace(lo, hi, len(counts) + 1), counts, int(nan), int(pinf),
                                     int(ninf), _num(s), _num(ss)))
        return out

    def histogram_steps(self) -> list[int]:
        with self._db.values_of("hists"):
            return [int(s) for (s,) in self._db.rows("SELECT DISTINCT step FROM hists ORDER BY step")]

    def layers(self) -> list[dict]:
        """Per-parameter summary (the ``runs show`` table): latest and worst values, first non-finite step."""
        (g, gm), (r, rm), (w, wm) = self._load("grad_norm"), self._load("update_ratio"), self._load("weight_norm")
        nan, inf = self.metric("grad_nan"), self.metric("grad_inf")
        first_bad = self.meta.get("nonfinite_first")
        first_bad = first_bad if isinstance(first_bad, dict) else {}
        per_param = Counter(a.param for a in self.alerts)
        out = []
        for i, p in enumerate(self.params):
            bad = np.nonzero((np.nan_to_num(nan[:, i]) > 0) | (np.nan_to_num(inf[:, i]) > 0) |
                             (wm[:, i] & ~np.isfinite(w[:, i])))[0]
            firsts = [int(self.steps[bad[0]])] if len(bad) else []
            seen = first_bad.get(p.name)
            firsts += [v for v in (seen.values() if isinstance(seen, dict) else ()) if type(v) is int and v >= 0]
            out.append({
                "name": p.name, "shape": list(p.shape), "numel": p.numel,
                "grad_norm_latest": _last(g[:, i], gm[:, i]),
                "grad_norm_max": _nanmax(g[:, i]),
                "grad_norm_max_step": _argmax_step(g[:, i], self.steps),
                "update_ratio_latest": _last(r[:, i], rm[:, i]),
                "update_ratio_median": _nanmedian(r[:, i]),
                "weight_norm_latest": _last(w[:, i], wm[:, i]),
                "nonfinite_first_step": min(firsts) if firsts else None,
                "alerts": per_param[p.name],
            })
        return out

    def info(self) -> RunInfo:
        (n_alerts,) = self._db.one("SELECT COUNT(*) FROM alerts")
        mtime = max((os.path.getmtime(f) for f in (self.path, Path(str(self.path) + "-wal")) if f.exists()),
                    default=0.0)
        return RunInfo(self.name, str(self.path), len(self.steps), int(self.steps[-1]) if len(self.steps) else None,
                       len(self.params), int(n_alerts), mtime, str(self.meta.get("status", "unknown")))

    def to_dict(self) -> dict:
        """The ``runs show --json`` document."""
        return {"run": self.name, "path": str(self.path), "meta": self.meta, "steps": len(self.steps),
                "first_step": int(self.steps[0]) if len(self.steps) else None,
                "last_step": int(self.steps[-1]) if len(self.steps) else None,
                "params": [_clean(row) for row in self.layers()],
                "alerts": [a.to_dict() for a in self.alerts]}


def _last(col: np.ndarray, present: np.ndarray) -> float | None:
    """The value at the last step where it was measured (NaN stays NaN)."""
    return float(col[present][-1]) if present.any() else None


def _nanmax(col: np.ndarray) -> float | None:
    ok = ~np.isnan(col)
    return float(col[ok].max()) if ok.any() else None


def _argmax_step(col: np.ndarray, steps: np.ndarray) -> int | None:
    ok = ~np.isnan(col)
    if not ok.any():
        return None
    return int(steps[np.nanargmax(np.where(ok, col, -np.inf))])


def _nanmedian(col: np.ndarray) -> float | None:
    ok = ~np.isnan(col)
    return float(np.median(col[ok])) if ok.any() else None


def _clean(row: dict) -> dict:
    """JSON has no NaN/Inf: write them as the strings 'nan', 'inf', '-inf'."""
    return {k: (str(v) if isinstance(v, float) and not np.isfinite(v) else v) for k, v in row.items()}


def open_run(run: str | os.PathLike, *, run_dir: str | os.PathLike = "runs") -> Run:
    """Open a recorded run by name (in ``run_dir``), run directory or ``watch.sqlite`` path.

    Example:
        >>> import tempfile, torch, weightkit
        >>> net = torch.nn.Linear(3, 1); opt = torch.optim.Adam(net.parameters())
        >>> d = tempfile.mkdtemp()
        >>> with weightkit.watch(net, optimizer=opt, every=2, run_dir=d, name="r1"):
        ...     for _ in range(5):
        ...         opt.zero_grad(); net(torch.ones(2, 3)).sum().backward(); opt.step()
        >>> weightkit.open_run("r1", run_dir=d).steps.tolist()
        [0, 2, 4]
    """
    return Run(resolve_run(run, run_dir=run_dir))


def list_runs(run_dir: str | os.PathLike = "runs", *,
              on_error: Callable[[WeightkitError], None] | None = None) -> list[RunInfo]:
    """Every run under ``run_dir`` (directories holding a ``watch.sqlite``), newest first.

    A store that cannot be read (damaged, or not one weightkit wrote) is left out and its one-line
    error goes to ``on_error`` (default: a warning on the ``weightkit.watch`` logger).

    Example:
        >>> import tempfile, weightkit
        >>> weightkit.list_runs(tempfile.mkdtemp())
        []
    """
    root = Path(run_dir)
    if not root.is_dir():
        raise SourceNotFoundError(f"{root}: no such run directory; runs are written to runs/ by default (see --dir)")
    out = []
    for f in sorted(root.glob(f"*/{FILE_NAME}")):
        try:
            with Run(f) as r:
                out.append(r.info())
        except WeightkitError as e:
            if on_error is None:
                log.warning("%s", e)
            else:
                on_error(e)
    return sorted(out, key=lambda r: r.modified, reverse=True)


def iter_long(run: Run) -> Iterable[tuple[int, str, str, float]]:
    """(step, param, metric, value) rows in step and model order; values that were not measured
    are left out, a NaN that was measured is kept."""
    names = [p.name for p in run.params]
    with run._db.values_of("samples"):
        for step, pid, *values in run._db.rows("SELECT * FROM samples ORDER BY step, param_id"):
            if type(pid) is not int or not 0 <= pid < len(names):
                raise IndexError(f"param_id {pid!r}")
            for m, v in zip(METRICS, values):
                if v is not None:
                    yield int(step), names[pid], m, _num(v)

"""Every write is atomic and never follows a planted link; hostile run stores get one line, fast.

Links to a canary file outside the output directory are planted at every name weightkit writes or
once wrote beside an output (``.NAME.tmp``, ``.NAME.tmp<pid>``, ``.weightkit-probe``, SQLite's
``-journal``/``-wal``/``-shm``, TensorBoard's event file name, the destination itself); each
writing command must leave the canary's bytes and mtime alone and write a complete output. A
crash inside a writer leaves the destination as it was and no temporary file. Run stores built
by hand with views, triggers, foreign columns, huge row counts or values weightkit never writes
are refused by ``weightkit runs list|show|plot|export`` with one line and exit 2, in seconds and
under 1 GiB (in a subprocess, so a hang fails the test instead of blocking it).
"""

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import weightkit
from weightkit.cli import app
from weightkit.errors import WeightkitError
from weightkit.tracking.store import FILE_NAME, METRICS, Store

CANARY = b"canary: weightkit must never write here\n"


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


@pytest.fixture
def canary(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    f = outside / "canary"
    f.write_bytes(CANARY)
    os.utime(f, ns=(1_000_000_000, 1_000_000_000))
    return f


def plant(canary: Path, directory: Path, names) -> list[Path]:
    links = []
    for name in names:
        link = directory / name
        if not os.path.lexists(link):
            os.symlink(canary, link)
            links.append(link)
    return links


def temp_names(dest: Path) -> list[str]:
    """Every name beside ``dest`` that weightkit could write through (its own old temporary names,
    SQLite's companions, the TensorBoard probe) and the destination itself."""
    n = dest.name
    return [n, f".{n}.tmp", f".{n}.tmp{os.getpid()}", f"{n}-journal", f"{n}-wal", f"{n}-shm", ".weightkit-probe"]


def tensorboard_names() -> list[str]:
    """The event file names the TensorBoard writer will choose in the next seconds (time, host, pid, uid)."""
    from tensorboard.summary.writer import event_file_writer

    uid, now = event_file_writer._global_uid._value, int(time.time())
    return [f"events.out.tfevents.{t:010d}.{socket.gethostname()}.{os.getpid()}.{u}"
            for t in range(now - 1, now + 15) for u in range(uid, uid + 3)]


def untouched(canary: Path) -> None:
    assert canary.read_bytes() == CANARY
    assert canary.stat().st_mtime_ns == 1_000_000_000


def no_leftovers(directory: Path, expected) -> None:
    left = sorted(p.name for p in directory.iterdir() if p.name not in expected and not p.is_symlink())
    assert left == [], left


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 64),
                              torch.nn.ReLU(), torch.nn.Linear(64, 4))
    p = tmp_path_factory.mktemp("model") / "net.pt"
    torch.save(net.state_dict(), p)
    return p, {k: v.clone() for k, v in net.state_dict().items()}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A small recorded run, written through Store (no training needed)."""
    d = tmp_path_factory.mktemp("runs")
    write_store(d / "r" / FILE_NAME, steps=6, params=3)
    return d


def write_store(path: Path, *, steps: int, params: int) -> None:
    rng = np.random.default_rng(0)
    st = Store(path, meta={"model": "Net", "framework": "torch", "every": 1, "status": "finished"},
               params=[(f"layer{i}.weight", (4, 4), 16) for i in range(params)], background=False)
    for s in range(steps):
        rows = [(i, *rng.random(5).tolist(), 0, 0, *rng.random(3).tolist()) for i in range(params)]
        hists = [(i, what, -1.0, 1.0, 0, 0, 0, 0.5, 2.0, np.arange(8, dtype=np.int64).tobytes())
                 for i in range(params) for what in ("grad", "weight")]
        alerts = [(s, "layer0.weight", "vanishing", "gradient RMS small", 1e-9)] if s == 2 else []
        st.put(s, rows, alerts, hists)
    st.close()


# ---- planted links ---------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["convert", "save", "prune", "quantize", "report", "plot-png", "plot-svg"])
def test_model_writers_never_follow_a_planted_link(command, model_file, canary, tmp_path):
    src, state = model_file
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    suffix = {"report": ".html", "plot-png": ".png", "plot-svg": ".svg"}.get(command, ".safetensors")
    out = out_dir / f"result{suffix}"
    plant(canary, out_dir, temp_names(out))
    assert out.is_symlink()

    if command == "save":
        weightkit.save(weightkit.open(src), out)
    else:
        args = {"convert": ("convert", src, out), "prune": ("prune", src, out, "--amount", "0.5"),
                "quantize": ("quantize", src, out), "report": ("report", src, "-o", out),
                "plot-png": ("plot", "hist", src, "-o", out), "plot-svg": ("plot", "hist", src, "-o", out)}[command]
        r = cli(*args)
        assert r.exit_code == 0, (r.stdout, r.stderr, r.exception)

    untouched(canary)
    assert out.is_file() and not out.is_symlink()  # the link itself was replaced by the new file
    data = out.read_bytes()
    if suffix == ".safetensors":
        with weightkit.open(out) as ws:
            assert sorted(w.name for w in ws) == sorted(state)
            if command in ("convert", "save"):
                for name, t in state.items():
                    np.testing.assert_array_equal(ws[name].numpy(), t.numpy())
    elif suffix == ".html":
        assert data.rstrip().endswith(b"</html>")
    elif suffix == ".png":
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and data.endswith(b"IEND\xaeB`\x82")
    else:
        assert data.rstrip().endswith(b"</svg>")
    no_leftovers(out_dir, {out.name})


@pytest.mark.parametrize("fmt", ["csv", "parquet", "tensorboard", "plot"])
def test_run_exports_never_follow_a_planted_link(fmt, run_dir, canary, tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    if fmt == "tensorboard":
        out = out_dir
        names = [".weightkit-probe", *tensorboard_names()]
    else:
        out = out_dir / {"csv": "r.csv", "parquet": "r.parquet", "plot": "r.png"}[fmt]
        names = temp_names(out)
    plant(canary, out_dir, names)
    args = ("plot", "r", "--dir", run_dir, "-o", out) if fmt == "plot" else \
        ("export", "r", "--dir", run_dir, "-f", fmt, "-o", out)
    r = cli("runs", *args)
    assert r.exit_code == 0, (r.stdout, r.stderr, r.exception)
    untouched(canary)
    if fmt == "csv":
        lines = out.read_text().splitlines()
        assert lines[0] == "step,param,metric,value" and len(lines) == 1 + 6 * 3 * len(METRICS)
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        assert pq.read_table(out).num_rows == 6 * 3 * len(METRICS)
    elif fmt == "plot":
        assert out.read_bytes().endswith(b"IEND\xaeB`\x82")
    else:
        events = [p for p in out.iterdir() if p.name.startswith("events.") and not p.is_symlink()]
        assert len(events) == 1 and events[0].stat().st_size > 1000
    no_leftovers(out_dir, {out.name} if fmt != "tensorboard" else {e.name for e in out.iterdir()
                                                                    if e.name.startswith("events.")})


def test_a_new_run_store_never_follows_a_planted_link(canary, tmp_path):
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    store = run / FILE_NAME
    links = plant(canary, run, [f"{FILE_NAME}-journal", f"{FILE_NAME}-wal", f"{FILE_NAME}-shm"])
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with weightkit.watch(net, optimizer=opt, every=1, run_dir=tmp_path / "runs", name="r"):
        for _ in range(3):
            opt.zero_grad()
            net(torch.ones(4, 3)).sum().backward()
            opt.step()
    untouched(canary)
    assert not any(p.is_symlink() for p in links)  # stale companions removed, their target untouched
    assert store.is_file() and not store.is_symlink()
    assert weightkit.open_run("r", run_dir=tmp_path / "runs").steps.tolist() == [0, 1, 2]

    # a link at the store's own name is an existing run; with overwrite it is replaced, never followed
    other = tmp_path / "runs" / "s"
    other.mkdir()
    os.symlink(canary, other / FILE_NAME)
    with pytest.raises(WeightkitError, match="already exists"):
        weightkit.watch(net, run_dir=tmp_path / "runs", name="s")
    weightkit.watch(net, run_dir=tmp_path / "runs", name="s", overwrite=True).stop()
    untouched(canary)
    assert (other / FILE_NAME).is_file() and not (other / FILE_NAME).is_symlink()
    no_leftovers(other, {FILE_NAME, f"{FILE_NAME}-wal", f"{FILE_NAME}-shm"})


def test_a_link_at_the_destination_is_replaced_not_followed(canary, tmp_path):
    from weightkit._atomic import atomic_write

    dest = tmp_path / "dest.bin"
    os.symlink(canary, dest)
    with atomic_write(dest) as fh:
        fh.write(b"new")
    assert not dest.is_symlink() and dest.read_bytes() == b"new"
    untouched(canary)
    os.symlink(canary, tmp_path / "excl.bin")  # exclusive: an existing link is refused, not replaced
    with pytest.raises(WeightkitError, match="already exists"):
        with atomic_write(tmp_path / "excl.bin", exclusive=True) as fh:
            fh.write(b"new")
    assert (tmp_path / "excl.bin").is_symlink()
    untouched(canary)
    no_leftovers(tmp_path, {"dest.bin", "outside"})


# ---- a crash inside a writer -----------------------------------------------------------------------


def test_a_crash_while_drawing_leaves_the_picture_as_it_was(run_dir, tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    out = tmp_path / "flow.png"
    out.write_bytes(b"OLD")

    def broken(self, fh, **kw):
        fh.write(b"\x89PNG half a picture")
        raise RuntimeError("renderer crashed")

    monkeypatch.setattr(Figure, "savefig", broken)
    r = cli("runs", "plot", "r", "--dir", run_dir, "-o", out)
    assert isinstance(r.exception, RuntimeError)
    assert out.read_bytes() == b"OLD"
    no_leftovers(tmp_path, {"flow.png"})


def test_a_failing_disk_leaves_the_report_as_it_was(model_file, tmp_path, monkeypatch):
    import weightkit._atomic as atomic

    out = tmp_path / "report.html"
    out.write_bytes(b"OLD")

    def fsync(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    r = cli("report", model_file[0], "-o", out)
    assert r.exit_code == 2 and "Input/output error" in r.stderr and "unchanged" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert out.read_bytes() == b"OLD"
    no_leftovers(tmp_path, {"report.html"})


def test_a_crash_while_exporting_to_tensorboard_leaves_nothing(run_dir, tmp_path, monkeypatch):
    from torch.utils.tensorboard import SummaryWriter

    out = tmp_path / "tb"
    out.mkdir()

    def broken(self, *a, **kw):
        raise RuntimeError("writer crashed")

    monkeypatch.setattr(SummaryWriter, "add_histogram_raw", broken)
    with pytest.raises(RuntimeError, match="writer crashed"):
        weightkit.tracking.export.export_run(weightkit.open_run("r", run_dir=run_dir), out, format="tensorboard")
    assert list(out.iterdir()) == []


def test_a_crash_while_creating_a_store_leaves_no_store(tmp_path, monkeypatch):
    import weightkit.tracking.store as store

    monkeypatch.setattr(store, "_SCHEMA", store._SCHEMA + "\nSELECT no_such_function();")
    with pytest.raises(WeightkitError, match="cannot be written"):
        Store(tmp_path / "r" / FILE_NAME, meta={}, params=[("w", (2,), 2)], background=False)
    assert list((tmp_path / "r").iterdir()) == []


# ---- hostile run stores ----------------------------------------------------------------------------

RECURSIVE = "WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r) SELECT x"
COUNT = "WITH RECURSIVE r(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM r WHERE x < {n} - 1) SELECT x FROM r"

HOSTILE = {  # name -> (SQL run on a copy of a real store, or bytes for the whole file; what the one line says)
    "recursive-view": ("DROP TABLE steps; CREATE VIEW steps AS " + RECURSIVE + " AS step, 0.0 AS time FROM r",
                       "view 'steps'"),
    "huge-view": ("DROP TABLE params; CREATE VIEW params AS SELECT a.x AS id, 'p' || a.x AS name, '[1]' AS shape, "
                  "1 AS numel FROM (" + COUNT.format(n=100000) + ") a, (" + COUNT.format(n=100000) + ") b",
                  "view 'params'"),
    "trigger": ("CREATE TRIGGER t AFTER INSERT ON alerts BEGIN DELETE FROM steps; END", "trigger 't'"),
    "extra-column": ("ALTER TABLE params ADD COLUMN note TEXT", "table 'params' has other columns"),
    "extra-table": ("CREATE TABLE evil(x)", "table 'evil'"),
    "expression-index": ("CREATE INDEX i ON samples(grad_norm * 2)", "index 'i'"),
    "huge-row-count": ("DELETE FROM samples; DELETE FROM hists; "
                       "INSERT OR REPLACE INTO steps " + COUNT.format(n=400000).replace("SELECT x FROM r",
                                                                                       "SELECT x, 0.0 FROM r") + "; "
                       "INSERT OR REPLACE INTO params " + COUNT.format(n=20000).replace(
                           "SELECT x FROM r", "SELECT x, 'p' || x, '[1]', 1 FROM r"),
                       "claims 400,000 steps × 20,000 parameters"),
    "blob-name": ("UPDATE params SET name = x'00ff' WHERE id = 0", "table 'params' holds a value"),
    "deep-json": ("UPDATE meta SET value = '" + "[" * 200000 + "' WHERE key = 'model'", "table 'meta'"),
    "long-value": ("UPDATE meta SET value = '\"' || hex(zeroblob(4700000)) || '\"' WHERE key = 'model'",
                   "longer than 8 MiB"),
    "missing-table": ("DROP TABLE hists", "table 'hists' is missing"),
    "not-sqlite": (b"\x89HDF\r\n" + bytes(range(256)) * 16, "not a readable weightkit run store"),
    "truncated": (2048, "not a readable weightkit run store"),
}

CHILD = textwrap.dedent("""
    import json, os, resource, sys, time
    from typer.testing import CliRunner
    from weightkit.cli import app

    def vm():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) << 10 for line in f if line.startswith("VmSize:"))

    limit = vm() + (1 << 30)  # 1 GiB above what the imports took
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    root, out = sys.argv[1], sys.argv[2]
    for case in sorted(os.listdir(root)):
        d = os.path.join(root, case)
        for args in (["list"], ["show", "r"], ["show", "r", "--json"], ["plot", "r", "-o", os.path.join(out, case + ".png")],
                     ["export", "r", "-f", "csv", "-o", os.path.join(out, case + ".csv")]):
            t = time.perf_counter()
            r = CliRunner().invoke(app, ["runs", *args, "--dir", d])
            print(json.dumps({"case": case, "args": args, "code": r.exit_code, "stderr": r.stderr,
                              "stdout": r.stdout[-300:], "error": repr(r.exception),
                              "seconds": time.perf_counter() - t}), flush=True)
    print(json.dumps({"maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss << 10, "limit": limit}))
""")


@pytest.fixture(scope="module")
def hostile_runs(tmp_path_factory, run_dir):
    root = tmp_path_factory.mktemp("hostile")
    real = run_dir / "r" / FILE_NAME
    for case, (how, _) in HOSTILE.items():
        path = root / case / "r" / FILE_NAME
        path.parent.mkdir(parents=True)
        if isinstance(how, bytes):
            path.write_bytes(how)
        elif isinstance(how, int):
            path.write_bytes(real.read_bytes()[:how])
        else:
            shutil.copyfile(real, path)
            con = sqlite3.connect(path)
            con.executescript(how)
            con.commit()
            con.close()
    return root


def test_hostile_run_stores_get_one_line_in_seconds(hostile_runs, tmp_path):
    proc = subprocess.run([sys.executable, "-c", CHILD, str(hostile_runs), str(tmp_path)], capture_output=True,
                          text=True, timeout=180, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    *results, mem = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(results) == 5 * len(HOSTILE)
    for r in results:
        where = (r["case"], r["args"], r["stderr"], r["stdout"], r["error"])
        lines = r["stderr"].strip().splitlines()
        assert r["code"] == 2, where
        assert len(lines) == 1 and lines[0].startswith("weightkit: error: "), where
        assert f"{r['case']}/r/{FILE_NAME}" in lines[0] and HOSTILE[r["case"]][1] in lines[0], where
        assert r["seconds"] < 5, where
    assert mem["maxrss"] < mem["limit"]
    print(f"slowest {max(r['seconds'] for r in results):.2f} s; peak RSS {mem['maxrss'] >> 20} MiB")


def test_a_run_list_shows_the_readable_runs_and_refuses_the_hostile_one(run_dir, tmp_path):
    d = tmp_path / "runs"
    shutil.copytree(run_dir / "r", d / "good")
    (d / "evil").mkdir()
    shutil.copyfile(run_dir / "r" / FILE_NAME, d / "evil" / FILE_NAME)
    con = sqlite3.connect(d / "evil" / FILE_NAME)
    con.executescript("DROP TABLE alerts; CREATE VIEW alerts AS " + RECURSIVE +
                      " AS id, x AS step, NULL AS param, 'k' AS kind, 'm' AS message, NULL AS value, 0.0 AS time FROM r")
    con.close()
    r = cli("runs", "list", "--dir", d, "--json")
    assert r.exit_code == 2
    assert [x["name"] for x in json.loads(r.stdout)["runs"]] == ["good"]
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "view 'alerts'" in r.stderr


def test_values_weightkit_never_writes_are_refused_where_they_are_read(run_dir, tmp_path):
    shutil.copytree(run_dir / "r", tmp_path / "r")
    path = tmp_path / "r" / FILE_NAME
    con = sqlite3.connect(path)
    con.executescript("UPDATE hists SET counts = x'010203' WHERE param_id = 0; "
                      "UPDATE samples SET param_id = -1 WHERE step = 3 AND param_id = 0")
    con.close()
    run = weightkit.open_run(path)
    assert len(run.layers()) == 3  # the stray row is ignored by the dense read
    with pytest.raises(WeightkitError, match="table 'hists' holds a value weightkit never writes"):
        run.histograms("layer0.weight")
    with pytest.raises(WeightkitError, match="table 'samples' holds a value weightkit never writes"):
        list(weightkit.tracking.store.iter_long(run))
    assert len(run.histograms("layer1.weight")) == 6

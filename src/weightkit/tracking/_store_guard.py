"""Reading a run store as data: a hostile SQLite file gets one line, in bounded time and memory.

A run store is a file anyone can hand over (a shared ``runs/`` directory, a run downloaded with a
model), and SQLite runs what a file's schema says: a view named like one of weightkit's tables
can be a recursive query that never ends, a huge join, or rows that claim sizes nothing backs.
So before any table is read:

* the file is opened read-only (``mode=ro``; ``immutable=1`` where the directory is read-only
  and SQLite cannot open the WAL index), with strings and blobs capped at
  :data:`MAX_VALUE_BYTES` (``SQLITE_LIMIT_LENGTH``);
* ``sqlite_master`` must hold exactly weightkit's tables and their automatic indexes, each table
  with exactly weightkit's columns: a view, a trigger, any other table or index, or a column
  weightkit does not define is refused with one line naming it, and nothing is read;
* every query runs under one instruction budget for the connection (a progress handler),
  proportional to the size of the file and its WAL, so no query outlives the work the file's
  data can justify;
* the counts that size an allocation are checked by the reader (``store.Run``) before numpy
  allocates.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path
from typing import Any, Iterator

from weightkit.errors import WeightkitError

__all__ = ["CheckedStore", "MAX_VALUE_BYTES", "uri"]

MAX_VALUE_BYTES = 8 << 20  # the longest string or blob read (a histogram of 4096 bins is 32 KiB)
OPS_BASE = 50_000_000  # SQLite VM instructions any store may use (well under a second)
OPS_PER_BYTE = 32  # and more per byte of file and WAL (reading a real store whole takes about 2)
_TICK = 10_000  # instructions between two calls of the progress handler
_FETCH = 4096  # rows fetched from SQLite at a time
_MAX_SCHEMA_ROWS = 1000


def uri(path: Path, **params: str) -> str:
    """An SQLite URI for ``path`` as given: no symlink in it is resolved here (SQLite decides)."""
    return Path(os.path.abspath(path)).as_uri() + "?" + "&".join(f"{k}={v}" for k, v in params.items())


def _layout(conn: sqlite3.Connection) -> tuple[set[tuple[str, str, str]], dict[str, list[tuple]]]:
    """What ``sqlite_master`` lists (type, name, table) and every table's columns."""
    entries = conn.execute(f"SELECT type, name, tbl_name FROM sqlite_master LIMIT {_MAX_SCHEMA_ROWS + 1}").fetchall()
    columns = {name: conn.execute("SELECT * FROM pragma_table_xinfo(?)", (name,)).fetchall()
               for kind, name, _ in entries if kind == "table"}
    return {tuple(map(str, e)) for e in entries}, columns  # type: ignore[misc]


def _expected(schema: str) -> tuple[set[tuple[str, str, str]], dict[str, list[tuple]]]:
    ref = sqlite3.connect(":memory:")
    try:
        ref.executescript(schema)
        return _layout(ref)
    finally:
        ref.close()


class CheckedStore:
    """A read-only connection to a store whose schema is exactly ``schema``, with bounded queries."""

    _expected_cache: dict[str, tuple[set, dict]] = {}

    def __init__(self, path: Path, schema: str):
        self.path = path
        if schema not in self._expected_cache:
            self._expected_cache[schema] = _expected(schema)
        try:
            size = sum(os.path.getsize(f) for f in (path, Path(f"{path}-wal")) if f.exists())
        except OSError as e:
            raise WeightkitError(f"{path}: cannot be read ({e.strerror}); nothing was read") from None
        self.size = size  # bytes of the file and its WAL: what the data can justify
        self._budget = OPS_BASE + OPS_PER_BYTE * size
        self._exhausted = False
        self._conn = self._open(schema)

    def _open(self, schema: str) -> sqlite3.Connection:
        last: Exception | None = None
        # a read-only directory cannot hold the WAL index (-shm): read the committed file as it is
        for params in ({"mode": "ro"}, {"mode": "ro", "immutable": "1"}):
            try:
                conn = sqlite3.connect(uri(self.path, **params), uri=True)
            except sqlite3.Error as e:
                last = e
                continue
            if hasattr(conn, "setlimit"):  # Python 3.11+; before, SQLite's own 1e9-byte cap holds
                conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)  # type: ignore[attr-defined]
            conn.set_progress_handler(self._tick, _TICK)
            try:
                found = _layout(conn)
            except sqlite3.Error as e:
                conn.close()
                if self._exhausted:
                    raise self._error(e) from None
                last = e
                continue
            self._check(found, self._expected_cache[schema])
            return conn
        raise self._error(last) from None

    def _tick(self) -> int:
        self._budget -= _TICK
        if self._budget < 0:
            self._exhausted = True
            return 1  # interrupts the statement
        return 0

    def _check(self, found: tuple[set, dict], expected: tuple[set, dict]) -> None:
        entries, columns = found
        if len(entries) > _MAX_SCHEMA_ROWS:
            raise self.refuse(f"its schema lists more than {_MAX_SCHEMA_ROWS} objects")
        for kind, name, _ in sorted(entries - expected[0]):
            raise self.refuse(f"it holds a {kind} {name!r} that weightkit's schema does not define")
        for kind, name, _ in sorted(expected[0] - entries):
            raise self.refuse(f"its {kind} {name!r} is missing")
        for name, cols in expected[1].items():
            if columns.get(name) != cols:
                have = ", ".join(str(c[1]) for c in columns.get(name, []))
                raise self.refuse(f"its table {name!r} has other columns than weightkit's schema ({have})")

    def refuse(self, why: str) -> WeightkitError:
        """The one-line error for a file that is not a store weightkit wrote."""
        return WeightkitError(f"{self.path}: not a weightkit run store: {why}; nothing was read")

    def _error(self, e: Exception | None) -> WeightkitError:
        if self._exhausted:
            return WeightkitError(f"{self.path}: reading this run store needs far more work than its size justifies "
                                  "(a hostile or damaged file?); it was stopped")
        if isinstance(e, sqlite3.DataError) or "too big" in str(e):
            return self.refuse(f"it holds a value longer than {MAX_VALUE_BYTES >> 20} MiB")
        return WeightkitError(f"{self.path}: not a readable weightkit run store ({e})")

    def batches(self, sql: str, args: tuple = ()) -> Iterator[list[tuple[Any, ...]]]:
        """The rows of one query, a batch at a time; SQLite errors become one line."""
        try:
            cur = self._conn.execute(sql, args)
            while batch := cur.fetchmany(_FETCH):
                yield batch
        except sqlite3.Error as e:
            raise self._error(e) from None

    def rows(self, sql: str, args: tuple = ()) -> Iterator[tuple[Any, ...]]:
        """The rows of one query, one at a time (fetched in batches)."""
        for batch in self.batches(sql, args):
            yield from batch

    @contextlib.contextmanager
    def values_of(self, table: str) -> Iterator[None]:
        """Turn a value weightkit never writes (wrong type, out of range) into the one-line refusal."""
        try:
            yield
        except WeightkitError:
            raise
        except (TypeError, ValueError, OverflowError, RecursionError, KeyError, IndexError, AttributeError) as e:
            raise self.refuse(f"its table {table!r} holds a value weightkit never writes "
                              f"({type(e).__name__}: {str(e)[:80]})") from None

    def one(self, sql: str, args: tuple = ()) -> tuple[Any, ...]:
        for row in self.rows(sql, args):
            return row
        raise self.refuse(f"{sql!r} returned no row")

    def close(self) -> None:
        self._conn.close()

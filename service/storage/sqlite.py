"""The archive in one SQLite file: the embedded default that needs no server.

WAL mode, so readers (the service's read-only connections) never wait for the writer
(a pipeline stage); writes take the lock at ``BEGIN IMMEDIATE`` rather than half-way through.
The connection is in autocommit, as PostgreSQL sessions are: a statement outside
:meth:`~SQLiteDatabase.transaction` commits on its own.
"""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from service.storage import (
    Database,
    DatabaseError,
    QuerySession,
    QueryStopped,
    arrays,
    column_upgrades,
    schema_script,
)
from service.storage import quote_identifier as _quote

_TYPES = {"double": "REAL", "integer": "INTEGER", "text": "TEXT", "floats": "BLOB"}
#: Seconds a writer waits for another writer's lock before giving up.
BUSY_TIMEOUT = 10.0
#: SQLite virtual-machine steps between two looks at the clock while a client's query runs.
PROGRESS_STEPS = 10_000


def great_circle_degrees(ra1: float | None, dec1: float | None, ra2: float, dec2: float) -> float | None:
    """Great-circle distance in degrees (haversine); None when a position is unknown. PostgreSQL's
    ``latentvo_sep`` (service/storage/postgres.py) is the same formula in SQL."""
    if ra1 is None or dec1 is None:
        return None
    p1, p2 = math.radians(dec1), math.radians(dec2)
    h = (
        math.sin((p2 - p1) / 2) ** 2
        + math.cos(p1) * math.cos(p2) * math.sin(math.radians(ra2 - ra1) / 2) ** 2
    )
    return math.degrees(2 * math.asin(min(1.0, math.sqrt(h))))


class SQLiteDatabase(Database):
    dialect = "sqlite"
    types = _TYPES

    def __init__(self, path: Path, readonly: bool = False, schema: str = "archive") -> None:
        self.path = path
        self.readonly = readonly
        if readonly or schema == "jobs":
            if not path.exists():
                raise FileNotFoundError(path)
            mode = "ro" if readonly else "rw"
            self.connection = sqlite3.connect(
                f"{path.resolve().as_uri()}?mode={mode}",
                uri=True,
                timeout=BUSY_TIMEOUT,
                isolation_level=None,
                check_same_thread=False,
            )
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.connection = sqlite3.connect(
                path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
            )
        if not readonly:
            self.connection.execute("PRAGMA journal_mode=WAL")
            script = schema_script(self.dialect, jobs_only=schema == "jobs")
            for statement in column_upgrades(script, self.columns):
                self.connection.execute(statement)
            self.connection.executescript(script)
        self.connection.row_factory = sqlite3.Row
        self.connection.execute("PRAGMA foreign_keys=ON")
        self.connection.create_function("latentvo_sep", 4, great_circle_degrees, deterministic=True)

    def execute(self, sql: str, args: Sequence[Any] = ()) -> sqlite3.Cursor:
        try:
            return self.connection.execute(sql, args)
        except sqlite3.Error as exc:
            raise _error(exc) from exc

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        try:
            self.connection.executemany(sql, rows)
        except sqlite3.Error as exc:
            raise _error(exc) from exc

    def insert_rows(self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        names = ", ".join(f'"{c}"' for c in columns)
        self.executemany(f"INSERT INTO {table} ({names}) VALUES ({', '.join('?' * len(columns))})", rows)

    def update_rows(
        self, table: str, keys: Sequence[str], values: Sequence[str], rows: Iterable[Sequence[Any]]
    ) -> None:
        sets = ", ".join(f'"{c}" = ?' for c in values)
        where = " AND ".join(f'"{c}" = ?' for c in keys)
        n = len(keys)
        self.executemany(f"UPDATE {table} SET {sets} WHERE {where}", ((*r[n:], *r[:n]) for r in rows))

    @contextmanager
    def transaction(self) -> Iterator[SQLiteDatabase]:
        """All or nothing; inside another transaction, part of it (as PostgreSQL's savepoints are)."""
        if self.connection.in_transaction:
            yield self
            return
        self.execute("BEGIN IMMEDIATE")
        try:
            yield self
        except BaseException:
            self.connection.execute("ROLLBACK")
            raise
        self.execute("COMMIT")

    def column_kinds(self, table: str) -> dict[str, str]:
        quoted = table.replace('"', '""')
        kinds = {"INTEGER": "integer", "REAL": "double", "BLOB": "floats"}
        rows = self.connection.execute(f'PRAGMA table_info("{quoted}")')
        return {row[1].lower(): kinds.get(str(row[2]).upper(), "text") for row in rows}

    def pack_floats(self, values: np.ndarray | Sequence[float], dtype: str = "<f4") -> bytes:
        return arrays.pack(values, dtype)

    def add_columns(self, table: str, names: Sequence[str], kind: str = "double") -> None:
        have = set(self.columns(table))
        with self.transaction():
            for name in names:
                if name.lower() not in have:
                    self.connection.execute(f'ALTER TABLE {table} ADD COLUMN "{name}" {self.types[kind]}')

    @contextmanager
    def query_session(
        self,
        timeout: float | None,
        interrupt: Callable[[], bool] | None = None,
        prepare: Callable[[Any], None] | None = None,
        role: str = "",
    ) -> Iterator[QuerySession]:
        if prepare is not None:
            prepare(self.connection)
        yield _SQLiteQuery(self.connection, timeout, interrupt)

    def end_request(self) -> None:
        try:
            if self.connection.in_transaction:
                self.connection.execute("ROLLBACK")
            temporary = self.connection.execute(
                "SELECT name FROM temp.sqlite_master WHERE type = 'table'"
            ).fetchall()
            for (name,) in temporary:
                self.connection.execute(f"DROP TABLE temp.{_quote(name)}")
        except sqlite3.Error as exc:
            raise DatabaseError(str(exc)) from exc

    def close(self) -> None:
        self.connection.close()


def _error(exc: sqlite3.Error) -> DatabaseError:
    message = str(exc)
    return DatabaseError(message, transient="locked" in message or "busy" in message)


class _SQLiteQuery(QuerySession):
    """A query on the read-only connection; a progress handler looks at the clock and the interrupt."""

    def __init__(
        self, connection: sqlite3.Connection, timeout: float | None, interrupt: Callable[[], bool] | None
    ) -> None:
        self.connection = connection
        self.timeout = timeout
        self.interrupt = interrupt

    def temp_table(self, name: str, columns: Sequence[tuple[str, str]], rows: Iterable[Sequence[Any]]) -> str:
        definition = ", ".join(f"{_quote(column)} {_TYPES[kind]}" for column, kind in columns)
        marks = ", ".join("?" * len(columns))
        conn = self.connection
        conn.execute("BEGIN")  # one transaction for all rows (the connection is in autocommit)
        try:
            conn.execute(f"DROP TABLE IF EXISTS temp.{_quote(name)}")
            conn.execute(f"CREATE TEMP TABLE {_quote(name)} ({definition})")
            conn.executemany(f"INSERT INTO temp.{_quote(name)} VALUES ({marks})", rows)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return f"temp.{name}"

    def read(self, sql: str) -> list[tuple]:
        try:
            return [tuple(row) for row in self.connection.execute(sql)]
        except sqlite3.Error as exc:
            raise DatabaseError(str(exc)) from exc

    def run(self, sql: str, limit: int) -> tuple[list[tuple], bool]:
        deadline = time.monotonic() + self.timeout if self.timeout else None
        asked = self.interrupt
        stopped: list[bool] = []  # what stopped it: True for the clock, False for the interrupt

        def progress() -> int:
            if deadline is not None and time.monotonic() > deadline:
                stopped.append(True)
            elif asked is not None and asked():
                stopped.append(False)
            return int(bool(stopped))

        if deadline is not None or asked is not None:
            self.connection.set_progress_handler(progress, PROGRESS_STEPS)
        try:
            cursor = self.connection.execute(sql)
            rows = cursor.fetchmany(limit + 1)
            cursor.close()
        except sqlite3.Error as exc:  # OperationalError mostly; DataError for values SQLite cannot hold
            if stopped and str(exc) == "interrupted":
                raise QueryStopped(timed_out=stopped[0]) from None
            raise DatabaseError(str(exc)) from exc
        finally:
            self.connection.set_progress_handler(None, 0)
        return [tuple(r) for r in rows[:limit]], len(rows) > limit

"""One storage layer for the archive database: SQLite (the embedded default) or PostgreSQL.

``[archive] database`` names a SQLite file inside the archive root or a PostgreSQL URL
(``postgresql://user@host/db``). Everything above this package (the archive, the pipeline
stages, the protocol modules) talks to a :class:`Database` and writes one SQL for both:
``?`` placeholders, standard functions, ``ON CONFLICT`` upserts. What differs between the
engines (placeholders, column types, DDL, temporary tables, read-only sessions, pooling)
lives in the two back-end modules, and the schema comes from ``resources/schema.sql`` for
both (:func:`schema_script`).

Functions the SQL of the service uses beyond the standard (``latentvo_sep``, the great-circle
distance) exist on both engines: registered in Python on SQLite, created in SQL on PostgreSQL. So do
the ADQL functions a translated query calls (``service/tap/adql.py``; on PostgreSQL
``resources/postgres/adql_functions.sql``). A client's query runs in a :class:`QuerySession`:
read-only, time-limited, with the temporary tables it brings along.
"""

from __future__ import annotations

import re
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import numpy as np

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "resources" / "schema.sql"
#: Where the UWS job table begins in resources/schema.sql (the job store creates that part itself).
JOBS_MARK = "-- == UWS jobs =="
_URL = re.compile(r"^postgres(ql)?://", re.I)


class Row(Protocol):
    """A result row, read by position or by column name (``dict(row)`` gives name → value)."""

    def __getitem__(self, key: int | str) -> Any: ...

    def keys(self) -> list[str]: ...


class Cursor(Protocol):
    rowcount: int

    def fetchone(self) -> Row | None: ...

    def fetchall(self) -> list[Row]: ...

    def __iter__(self) -> Iterator[Row]: ...


class DatabaseError(Exception):
    """The database refused or failed a statement; ``transient`` when trying again may succeed
    (a lock, a lost connection), as opposed to a statement that can never work."""

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class QueryStopped(DatabaseError):
    """A query stopped before its end: its time ran out (``timed_out``), or its caller interrupted it."""

    def __init__(self, timed_out: bool) -> None:
        super().__init__("the query ran out of time" if timed_out else "the query was interrupted")
        self.timed_out = timed_out


class QuerySession(ABC):
    """One read-only query run for a client (a TAP request or job): the temporary tables it brings
    along, then the query itself, under a time limit. Nothing it runs can change the archive:
    SQLite's connection is read-only (temporary tables live in its separate TEMP database);
    PostgreSQL's transaction turns read-only once the temporary tables are filled, and it is rolled
    back at the end, taking them with it."""

    @abstractmethod
    def temp_table(self, name: str, columns: Sequence[tuple[str, str]], rows: Iterable[Sequence[Any]]) -> str:
        """Create temporary table ``name`` (columns: name and "double", "integer" or "text"; on PostgreSQL
        also "doubles", an array) holding ``rows``; the SQL name to query it by."""

    @abstractmethod
    def read(self, sql: str) -> list[tuple]:
        """Rows of a query of the service's own (never a client's) among the temporary tables, before
        the client's query runs."""

    @abstractmethod
    def run(self, sql: str, limit: int) -> tuple[list[tuple], bool]:
        """At most ``limit`` rows of a query, and whether it had more. Raises QueryStopped when the
        time limit passes or the interrupt asks, DatabaseError when the engine refuses the query."""


class Database(ABC):
    """A connection to the archive database, with the few things that differ between engines."""

    #: "sqlite" or "postgres": what sqlglot calls the dialect.
    dialect: str
    readonly: bool
    #: The column type for "double", "integer" and "text" values, and "floats" (numeric arrays).
    types: dict[str, str]

    @abstractmethod
    def execute(self, sql: str, args: Sequence[Any] = ()) -> Cursor:
        """Run one statement with ``?`` placeholders (outside a transaction each one commits)."""

    @abstractmethod
    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None: ...

    @abstractmethod
    def insert_rows(self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        """Append many rows at once (PostgreSQL: COPY, ~10x faster than INSERTs); inside a transaction
        when the caller needs all or nothing."""

    @abstractmethod
    def update_rows(
        self, table: str, keys: Sequence[str], values: Sequence[str], rows: Iterable[Sequence[Any]]
    ) -> None:
        """Set ``values`` columns of the rows found by ``keys``; each row gives the keys, then the values."""

    @abstractmethod
    def transaction(self) -> Any:
        """A context manager: all statements inside commit together or not at all."""

    def columns(self, table: str) -> list[str]:
        """The column names of a table or view, lower case; empty when there is none."""
        return list(self.column_kinds(table))

    @abstractmethod
    def column_kinds(self, table: str) -> dict[str, str]:
        """Column name (lower case) → "double", "integer", "text" or "floats", in the table's order."""

    @abstractmethod
    def add_columns(self, table: str, names: Sequence[str], kind: str = "double") -> None:
        """Add the columns a table lacks (``kind``: "double", "integer", "text" or "floats")."""

    @abstractmethod
    def pack_floats(self, values: np.ndarray | Sequence[float], dtype: str = "<f4") -> Any:
        """A numeric array as a "floats" column holds it (service/storage/arrays.py); read it back
        with :func:`service.storage.arrays.unpack`."""

    #: Extensions the SQL may use beyond the engine's own (PostgreSQL: ``q3c`` where installed).
    extensions: frozenset[str] = frozenset()

    @abstractmethod
    def query_session(
        self,
        timeout: float | None,
        interrupt: Callable[[], bool] | None = None,
        prepare: Callable[[Any], None] | None = None,
        role: str = "",
    ) -> AbstractContextManager[QuerySession]:
        """A :class:`QuerySession` on this connection: stopped after ``timeout`` seconds of running or as
        soon as ``interrupt()`` is true. ``prepare`` gets the SQLite connection first, to register the
        functions the query calls (PostgreSQL has them in the schema); PostgreSQL runs the session as
        ``role`` when one is given (``[archive] tap_role``)."""

    @abstractmethod
    def end_request(self) -> None:
        """Leave the connection as a new request expects it: no open transaction, no temporary tables.
        Raises DatabaseError when the connection is unusable (the caller then drops it)."""

    @abstractmethod
    def close(self) -> None: ...

    def one(self, sql: str, args: Sequence[Any] = ()) -> Row | None:
        return self.execute(sql, args).fetchone()

    def all(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        return self.execute(sql, args).fetchall()

    def scalar(self, sql: str, args: Sequence[Any] = ()) -> Any:
        row = self.one(sql, args)
        return None if row is None else row[0]


def quote_identifier(identifier: str) -> str:
    """An SQL delimited identifier (the same spelling on both engines)."""
    return '"' + identifier.replace('"', '""') + '"'


def close_connections() -> None:
    """Close every pooled server connection of this process (before a fork: a child must not share them)."""
    postgres = sys.modules.get("service.storage.postgres")
    if postgres is not None:
        postgres.close_pools()


def is_server_url(location: str) -> bool:
    """Whether ``[archive] database`` names a PostgreSQL server rather than a SQLite file."""
    return bool(_URL.match(location.strip()))


def describe(location: str) -> str:
    """The database for messages: a file name, or a URL without its password."""
    if not is_server_url(location):
        return Path(location).name
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", location.strip())


def open_database(location: str, root: Path, readonly: bool = False, schema: str = "archive") -> Database:
    """Open the archive database. A writable one gets its schema created or completed: the whole
    archive (``schema="archive"``, which creates a SQLite file) or only the UWS job table of an
    archive that exists (``"jobs"``: the SQLite file must be there).

    Raises FileNotFoundError for a SQLite file that must exist and does not, DatabaseError for a
    server that cannot be reached.
    """
    if schema not in ("archive", "jobs"):
        raise ValueError(f"unknown schema part {schema!r}")
    if is_server_url(location):
        from service.storage.postgres import PostgresDatabase

        return PostgresDatabase(location.strip(), readonly=readonly, schema=schema)
    from service.storage.sqlite import SQLiteDatabase

    return SQLiteDatabase(Path(root) / location, readonly=readonly, schema=schema)


def schema_script(dialect: str, jobs_only: bool = False) -> str:
    """resources/schema.sql for ``dialect`` (the archive's part, or only the UWS job table)."""
    text = SCHEMA_FILE.read_text()
    if JOBS_MARK not in text:
        raise RuntimeError(f"{SCHEMA_FILE} has no {JOBS_MARK!r} section")
    if jobs_only:
        text = text.split(JOBS_MARK, 1)[1]
    if dialect == "postgres":
        from service.storage.postgres import postgres_ddl

        return postgres_ddl(text)
    return text


_TABLE = re.compile(r"CREATE TABLE IF NOT EXISTS (\w+) \((.*?)\n\);", re.S)
_COLUMN = re.compile(r"^\s+(\w+)\s+(TEXT|REAL|INTEGER|BLOB)\b", re.M)


def column_upgrades(script: str, existing: Callable[[str], list[str]]) -> list[str]:
    """``ALTER TABLE … ADD COLUMN`` for every column the CREATE TABLEs of ``script`` (SQLite's spelling)
    declare that an existing table lacks: an archive built by an older release gains a newer one's
    columns when it is opened for writing. Columns added to resources/schema.sql after a release
    must therefore be nullable and without a default."""
    statements = []
    for table, body in _TABLE.findall(script):
        have = set(existing(table))
        if not have:
            continue  # not there yet: the script creates it whole
        statements += [
            f"ALTER TABLE {table} ADD COLUMN {column} {kind}"
            for column, kind in _COLUMN.findall(body)
            if column.lower() not in have
        ]
    return statements


def view_definitions(dialect: str) -> list[tuple[str, str]]:
    """(name, SELECT …) of every view in resources/schema.sql, for re-creating them."""
    pattern = re.compile(
        r"CREATE (?:OR REPLACE )?VIEW (?:IF NOT EXISTS )?(\w+) AS\s(.*?);[ \t]*$", re.S | re.M
    )
    return pattern.findall(schema_script(dialect))

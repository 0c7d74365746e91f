"""TAP ``/tap/sync``: run one ADQL query on the read-only archive and answer with the result table.

:func:`run_tap` is the one way a TAP query request is answered, synchronously here and by an
asynchronous job (service.tap.jobs): check the parameters (:func:`tap_request`), load the
TAP_UPLOAD tables (service.tap.upload), run the query under a time limit (:func:`run_query`:
translate, execute, turn cells into DALI values) and write the result (:func:`result_response`).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from astropy.io.votable.tree import Resource, VOTableFile
from flask import Response, request

from service.archive import Archive
from service.dali import OutputFormat, maxrec, output_format, write_result
from service.datalink import links_descriptor
from service.errors import DALIError, UsageError
from service.params import Params, request_params
from service.state import ServedModel, state
from service.tables import TableMeta, TableSet
from service.tap import geometry, upload
from service.tap.adql import (
    ADQLError,
    OutputColumn,
    Translation,
    function_error,
    register_functions,
    translate,
)
from service.tap.blueprint import bp
from service.tap.schema import current_tableset
from service.votable import Column

#: LANG values TAP-02 requires us to take (compared case-insensitively).
LANGUAGES = {"ADQL", "ADQL-2.0", "ADQL-2.1"}
#: XML ID of the obs_publisher_did FIELD, which the DataLink descriptor's ID parameter refers to.
PUBDID_FIELD_ID = "pubdid"
#: SQLite virtual-machine steps between two looks at the clock.
_PROGRESS_STEPS = 10_000
_INTEGERS = {"short", "int", "long", "unsignedByte"}
_GEOMETRY_XTYPES = {"point", "circle", "polygon"}


@dataclass
class QueryResult:
    columns: list[Column]
    rows: list[list]
    overflow: bool


class QueryInterrupted(UsageError):
    """SQLite stopped the query: its time ran out, or (for a job) the job was aborted or deleted."""


@dataclass(frozen=True)
class TapRequest:
    """A TAP query request with its parameters checked (TAP-02, DALI-01/02/04)."""

    query: str
    fmt: OutputFormat
    limit: int
    runid: str | None
    uploads: list[upload.UploadSpec]


@bp.route("/sync", methods=["GET", "POST"])
def sync() -> Response:
    """TAP-01/02: LANG and QUERY required; MAXREC, RESPONSEFORMAT (or FORMAT), RUNID, UPLOAD optional."""
    params = request_params(request)
    timeout = float(state().config["service"]["sync_timeout"])
    return run_tap(params, upload.request_parts(params), timeout)


def tap_request(params: Params) -> TapRequest:
    """The checked parameters of a query request; a usage error names the first bad one."""
    query = adql_query(params)
    fmt = output_format(params, ("RESPONSEFORMAT", "FORMAT"))
    config = state().config["service"]
    limit = maxrec(params, config["default_maxrec"], config["hard_maxrec"])
    uploads = upload.upload_specs(params.getlist("UPLOAD"))
    return TapRequest(query, fmt, limit, params.get("RUNID"), uploads)


def run_tap(
    params: Params,
    parts: upload.PartReader,
    timeout: float | None,
    interrupt: Callable[[], bool] | None = None,
) -> Response:
    """Answer a TAP query request: uploads loaded into this connection, the query run, the result written.

    ``parts`` gives the multipart parts ``param:`` uploads name; ``interrupt`` (polled while SQLite
    runs) stops the query early, as ``timeout`` does.
    """
    tap = tap_request(params)
    extra = upload.load_uploads(
        query_connection(state().archive()), tap.uploads, parts, state().config["service"]
    )
    result = run_query(tap.query, tap.limit, timeout, extra_tables=extra, interrupt=interrupt)
    return result_response(result, tap.fmt, runid=tap.runid, query=tap.query)


def adql_query(params: Params) -> str:
    """The QUERY of a request whose LANG is one of ours (else a usage error, as taplint expects)."""
    lang = params.get("LANG")
    if lang is None or not lang.strip():
        raise UsageError("LANG is required: use LANG=ADQL")
    if lang.strip().upper() not in LANGUAGES:
        raise UsageError(f"unknown query language {lang!r}: this service speaks ADQL (ADQL-2.0, ADQL-2.1)")
    query = params.get("QUERY")
    if query is None or not query.strip():
        raise UsageError("QUERY is required: an ADQL query")
    return query


def run_query(
    adql: str,
    limit: int,
    timeout: float | None = None,
    extra_tables: Sequence[TableMeta] = (),
    interrupt: Callable[[], bool] | None = None,
) -> QueryResult:
    """Translate and run ``adql`` on this request's archive connection; at most ``limit`` rows.

    ``extra_tables`` are queryable besides the published ones (TAP_UPLOAD tables the caller
    has loaded into the connection's temporary schema). ``limit`` 0 returns the columns only.
    """
    archive = state().archive()
    published = current_tableset(archive)
    tables = TableSet(published.schemas, [*published.tables, *extra_tables])
    similarity = ModelSimilarity()
    translation = translate(adql, tables, limit, similarity)
    if limit == 0:
        rows, overflow = [], True  # MAXREC=0: metadata only, flagged as overflow (DALI-02)
    else:
        rows, overflow = execute(query_connection(archive), translation, timeout, similarity, interrupt)
    columns, cells = result_table(translation.columns, rows)
    return QueryResult(columns, cells, overflow)


def query_connection(archive: Archive) -> sqlite3.Connection:
    """The driver connection ADQL runs on: the translation targets SQLite and its registered functions."""
    if archive.db.dialect != "sqlite":
        raise DALIError("ADQL queries are not yet answered on an archive kept in PostgreSQL", 501)
    return archive.db.connection


def execute(
    conn: sqlite3.Connection,
    translation: Translation,
    timeout: float | None,
    similarity: ModelSimilarity,
    interrupt: Callable[[], bool] | None = None,
) -> tuple[list[tuple], bool]:
    """Rows of a translated query (one more than the limit tells overflow), aborted after ``timeout`` s
    or as soon as ``interrupt()`` says so."""
    register_functions(conn, similarity)
    function_error()  # forget anything left from an earlier statement on this thread
    stop = _stopper(timeout, interrupt)
    if stop is not None:
        conn.set_progress_handler(stop, _PROGRESS_STEPS)
    try:
        cursor = conn.execute(translation.sql)
        rows = cursor.fetchmany(translation.limit + 1)
        cursor.close()
    except sqlite3.Error as exc:  # OperationalError mostly; DataError for values SQLite cannot hold
        raise _query_error(exc, timeout) from None
    finally:
        conn.set_progress_handler(None, 0)
    return [tuple(r) for r in rows[: translation.limit]], len(rows) > translation.limit


def _stopper(timeout: float | None, interrupt: Callable[[], bool] | None) -> Callable[[], int] | None:
    """The progress handler: non-zero (stop) once the deadline has passed or ``interrupt()`` is true."""
    if not timeout and interrupt is None:
        return None
    deadline = time.monotonic() + timeout if timeout else float("inf")
    asked = interrupt or (lambda: False)
    return lambda: int(time.monotonic() > deadline or asked())


def _query_error(exc: sqlite3.Error, timeout: float | None) -> DALIError:
    """What the client is told when SQLite stops: a timeout, a function's complaint, or SQLite's."""
    message = str(exc)
    if message == "interrupted":
        if not timeout:
            return QueryInterrupted("the query was interrupted")
        return QueryInterrupted(
            f"the query ran longer than the {timeout:g} s allowed for synchronous queries; "
            "narrow it down (TOP, WHERE) or run it asynchronously"
        )
    cause = function_error()
    if cause is not None:
        return cause
    if message == "parser stack overflow" or message.startswith("Expression tree is too large"):
        return ADQLError(
            "the query nests operations or function calls deeper than the database engine allows "
            f"({message}); simplify it"
        )
    if message.startswith(("no such table", "no such column")):
        return DALIError(f"the archive database does not match its table metadata ({message})", 500)
    return ADQLError(f"the query cannot be run: {message}")


def result_table(outputs: list[OutputColumn], rows: Sequence[Sequence]) -> tuple[list[Column], list[list]]:
    """FIELDs and DALI cell values; a FIELD whose values do not fit its declared type is widened."""
    cells = [list(row) for row in rows]
    columns = []
    pubdid_seen = False
    for i, output in enumerate(outputs):
        column = output.to_column()
        values = [_dali(column, row[i]) for row in cells]
        values = _fit(column, values)
        for row, value in zip(cells, values, strict=True):
            row[i] = value
        if not pubdid_seen and column.name.lower() == "obs_publisher_did":
            column.ID = PUBDID_FIELD_ID
            pubdid_seen = True
        columns.append(column)
    return columns, cells


def _dali(column: Column, value):
    """A cell in its DALI form: geometry as number arrays, timestamps with a ``T`` (X-15)."""
    if value is None:
        return None
    if column.xtype in _GEOMETRY_XTYPES and isinstance(value, str):
        return geometry.dali_value(value)
    if column.xtype == "timestamp" and isinstance(value, str):
        return value.strip().replace(" ", "T").removesuffix("Z")
    if column.datatype == "boolean" and isinstance(value, int):
        return bool(value)
    if isinstance(value, bytes):
        return value.hex()
    return value


def _fit(column: Column, values: list) -> list:
    """Make the FIELD describe the values SQLite really returned (it types cells, not columns)."""
    present = [v for v in values if v is not None]
    if column.datatype in ("char", "unicodeChar"):
        if any(not isinstance(v, str) for v in present):
            return [None if v is None else str(v) for v in values]
        return values
    if column.arraysize or column.datatype == "boolean":
        return values
    if any(isinstance(v, str) for v in present):
        column.datatype, column.arraysize, column.xtype = "char", "*", None
        return [None if v is None else str(v) for v in values]
    if column.datatype in _INTEGERS and any(isinstance(v, float) for v in present):
        if all(v.is_integer() for v in present if isinstance(v, float)):
            return [None if v is None else int(v) for v in values]
        column.datatype = "double"
    return values


def result_response(
    result: QueryResult, fmt: OutputFormat, runid: str | None = None, query: str | None = None
) -> Response:
    """The result in the requested format; VOTables get the DataLink descriptor when DIDs are in it."""
    infos = []
    if runid:
        infos.append(("RUNID", runid))
    if query:
        infos.append(("QUERY", query))
    decorate = None
    if any(c.ID == PUBDID_FIELD_ID for c in result.columns):
        decorate = _datalink_descriptor
    return write_result(result.columns, result.rows, fmt, result.overflow, decorate, infos)


def _datalink_descriptor(document: VOTableFile, _resource: Resource) -> None:
    """DL-12: the {links} service descriptor, its ID parameter bound to the obs_publisher_did FIELD."""
    document.resources.append(links_descriptor(document, PUBDID_FIELD_ID))


class ModelSimilarity:
    """:class:`~service.tap.adql.SimilarityHooks` over the model in service, loaded on first use."""

    def __init__(self) -> None:
        self._served: ServedModel | None = None

    @property
    def served(self) -> ServedModel:
        if self._served is None:
            self._served = state().served_model()
        return self._served

    def knn(self, ref_did: str, k: int, dims: Sequence[int] | None) -> list[str] | None:
        """The same neighbours DataLink and the pipeline give: :meth:`LatentModel.neighbours`."""
        served = self.served
        row = served.row_of(ref_did)
        if row is None:
            return None
        self._check_dims(dims)
        rows, _ = served.model.neighbours(row=row, k=min(k, len(served.dids)), dims=dims)
        return [served.dids[int(r)] for r in rows]

    def distance(self, did: str, ref_did: str, dims: Sequence[int] | None) -> float | None:
        """Euclidean latent distance over ``dims`` (default: the dimensions the similarity index uses)."""
        served = self.served
        rows = served.row_of(did), served.row_of(ref_did)
        if rows[0] is None or rows[1] is None:
            return None
        self._check_dims(dims)
        chosen = list(dims) if dims is not None else served.model.similarity_dims
        latents = served.model.latents
        a, b = latents[rows[0]], latents[rows[1]]
        total = 0.0
        for d in chosen:  # summed in dimension order in float64, as model.similarity does
            diff = float(a[d]) - float(b[d])
            total += diff * diff
        return total**0.5

    def _check_dims(self, dims: Sequence[int] | None) -> None:
        size = self.served.model.latent_dim
        if dims is not None and any(not 0 <= d < size for d in dims):
            raise ValueError(f"dims must be latent dimensions from 0 to {size - 1}; got {list(dims)}")

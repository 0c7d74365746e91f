"""TAP ``/tap/sync``: run one ADQL query on the read-only archive and answer with the result table.

:func:`run_tap` is the one way a TAP query request is answered, synchronously here and by an
asynchronous job (service.uws.jobs): check the parameters (:func:`tap_request`), open a query
session on the archive (:meth:`~service.storage.Database.query_session`: read-only, time-limited,
on SQLite or PostgreSQL), load the TAP_UPLOAD tables into it (service.tap.upload), run the query
(:func:`run_query`: translate for that engine, execute, turn cells into DALI values) and write the
result (:func:`result_response`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from astropy.io.votable.tree import Resource, VOTableFile
from flask import Response, request

from model.similarity import exact_search
from service.dali import OutputFormat, maxrec, output_format, write_result
from service.datalink import links_descriptor
from service.errors import DALIError, UsageError, WorkInterrupted
from service.params import Params, request_params
from service.state import ServedModel, state
from service.storage import DatabaseError, QuerySession, QueryStopped, arrays
from service.tables import TableMeta, TableSet
from service.tap import geometry, upload
from service.tap.adql import (
    LATENT_TABLE,
    NEIGHBOUR_REFERENCES_MAX,
    SIMILARITY_DIMS_TABLE,
    ADQLError,
    Engine,
    OutputColumn,
    Translation,
    VectorSearch,
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
_INTEGERS = {"short", "int", "long", "unsignedByte"}
_GEOMETRY_XTYPES = {"point", "circle", "polygon"}


@dataclass
class QueryResult:
    columns: list[Column]
    rows: list[list]
    overflow: bool


class QueryInterrupted(WorkInterrupted):
    """The database stopped the query: its time ran out, or (for a job) the job was aborted or deleted."""


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
    """Answer a TAP query request: uploads loaded into a query session, the query run, the result written.

    ``parts`` gives the multipart parts ``param:`` uploads name; ``interrupt`` (polled while the
    query runs) stops the query early, as ``timeout`` does.
    """
    tap = tap_request(params)
    similarity = ModelSimilarity()
    prepare = lambda connection: register_functions(connection, similarity)  # noqa: E731 (SQLite only)
    role = state().config["archive"]["tap_role"]
    with state().archive().db.query_session(timeout, interrupt, prepare, role) as session:
        extra = upload.load_uploads(session, tap.uploads, parts, state().config["service"])
        result = run_query(session, tap.query, tap.limit, timeout, extra, similarity)
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
    session: QuerySession,
    adql: str,
    limit: int,
    timeout: float | None = None,
    extra_tables: Sequence[TableMeta] = (),
    similarity: ModelSimilarity | None = None,
) -> QueryResult:
    """Translate ``adql`` for the archive's engine and run it in ``session``; at most ``limit`` rows.

    ``extra_tables`` are queryable besides the published ones (TAP_UPLOAD tables the caller
    has loaded into the session). ``limit`` 0 returns the columns only.
    """
    archive = state().archive()
    published = current_tableset(archive)
    tables = TableSet(published.schemas, [*published.tables, *extra_tables])
    similarity = similarity or ModelSimilarity()
    engine = Engine(archive.db.dialect, q3c="q3c" in archive.db.extensions)
    translation = translate(adql, tables, limit, similarity, engine)
    if limit == 0:
        rows, overflow = [], True  # MAXREC=0: metadata only, flagged as overflow (DALI-02)
    else:
        deadline = None if not timeout else time.monotonic() + timeout
        similarity_tables(session, translation, similarity, deadline)
        if deadline is not None and time.monotonic() > deadline:
            raise _query_error(QueryStopped(timed_out=True), timeout)
        sql = translation.sql
        if translation.vector_search is not None and nearest_candidates(
            session, translation.vector_search, similarity
        ):
            sql = translation.vector_search.sql
        function_error()  # forget anything left from an earlier statement on this thread
        try:
            rows, overflow = session.run(sql, translation.limit)
        except DatabaseError as exc:
            raise _query_error(exc, timeout) from None
    columns, cells = result_table(translation.columns, rows)
    return QueryResult(columns, cells, overflow)


def similarity_tables(
    session: QuerySession,
    translation: Translation,
    similarity: ModelSimilarity,
    deadline: float | None = None,
) -> None:
    """What ``ml_knn`` and ``ml_distance`` read on PostgreSQL, computed here from the model in service
    (SQLite calls Python for them row by row instead). Neighbour searches stop at ``deadline``
    (time.monotonic()), as SQLite's would at the query's time limit; the caller says so."""
    for table in translation.distances:
        dids, distances = similarity.distances(table.ref_did, table.dims)
        rows = zip(dids, distances, strict=True)
        session.temp_table(table.name, [("did", "text"), ("distance", "double")], rows)
    for table in translation.neighbours:
        refs = session.read(table.references)
        if len(refs) > NEIGHBOUR_REFERENCES_MAX:
            raise ADQLError(
                f"ml_knn: its reference column holds more than {NEIGHBOUR_REFERENCES_MAX} DIDs under the "
                "query's conditions; narrow them with a condition on the reference's own table "
                "(WHERE a.obs_publisher_did IN (…), a range of a label, a cone)"
            )
        pairs = []
        for number, (ref,) in enumerate(refs):
            if deadline is not None and number % 256 == 0 and time.monotonic() > deadline:
                return
            try:
                found = similarity.knn(str(ref), table.k, table.dims)
            except ValueError as exc:
                raise ADQLError(f"ml_knn: {exc}") from None
            pairs += [(str(ref), did) for did in found or ()]
        session.temp_table(table.name, [("ref", "text"), ("did", "text")], pairs)
    if translation.latents:
        dids, vectors, dims = similarity.latent_rows()
        session.temp_table(LATENT_TABLE, [("did", "text"), ("z", "doubles")], zip(dids, vectors, strict=True))
        session.temp_table(SIMILARITY_DIMS_TABLE, [("dims", "text")], [(" ".join(map(str, dims)),)])


def nearest_candidates(session: QuerySession, search: VectorSearch, similarity: ModelSimilarity) -> bool:
    """Fill the candidate table of an ``ORDER BY arr_dot(…)`` query by exact search over the memory-mapped
    latent matrix; False (run the query row by row) where that matrix cannot answer it: no single
    reference row, or rows of a model version other than the one in service."""
    try:
        references = session.read(search.reference_sql)
    except DatabaseError:
        return False  # the query itself will say what is wrong
    if len(references) != 1 or references[0][1] is None:
        return False
    version, vector = references[0][0], arrays.unpack(references[0][1])
    try:
        served = similarity.served
    except DALIError:  # no model in service (yet): the query runs row by row
        return False
    latents = served.model.latents
    if served.version != version or len(vector) != latents.shape[1]:
        return False
    if not search.same_version and session.read(  # other versions' rows: one index probe per version
        f"SELECT 1 FROM ml_model AS m WHERE m.model_version <> {int(version)} AND EXISTS "
        "(SELECT 1 FROM ml_latent AS l WHERE l.model_version = m.model_version) LIMIT 1"
    ):
        return False
    dims = None if search.dims is None else [d for d in search.dims if d < latents.shape[1]]
    if dims == []:
        return False
    rows, _ = exact_search(latents, vector, min(search.k, len(latents)), dims=dims)
    session.temp_table(
        search.table,
        [("model_version", "integer"), ("row_index", "integer")],
        [(version, int(r)) for r in rows],
    )
    return True


def _query_error(exc: DatabaseError, timeout: float | None) -> DALIError:
    """What the client is told when the database stops: a timeout, a function's complaint, or its own."""
    message = str(exc)
    if isinstance(exc, QueryStopped):
        if not exc.timed_out or not timeout:
            return QueryInterrupted("the query was interrupted")
        return QueryInterrupted(
            f"the query ran longer than the {timeout:g} s allowed for synchronous queries; "
            "narrow it down (TOP, WHERE) or run it asynchronously"
        )
    if exc.transient:
        return DALIError(f"the archive database is unavailable ({message}); try again", 503)
    cause = function_error()
    if cause is not None:
        return cause
    if message == "parser stack overflow" or message.startswith("Expression tree is too large"):
        return ADQLError(
            "the query nests operations or function calls deeper than the database engine allows "
            f"({message}); simplify it"
        )
    if message.startswith(("no such table", "no such column", "relation ", "column ")) and (
        not message.startswith(("relation ", "column ")) or message.endswith("does not exist")
    ):
        return DALIError(f"the archive database does not match its table metadata ({message})", 500)
    if message.startswith("function ") and message.endswith("does not exist"):
        return ADQLError(
            "the query gives a function arguments of types it does not take "
            "(text where numbers belong, or numbers where a geometry belongs)"
        )
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
    if column.arraysize and column.datatype in ("float", "double") and isinstance(value, bytes | list):
        return arrays.unpack(value)  # a vector (VECTORMATH): a SQLite BLOB or a PostgreSQL array
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
    if column.arraysize and column.xtype is None and column.datatype in ("float", "double"):
        size = column.arraysize.rstrip("*")
        if size and any(len(v) != int(size) for v in present):  # vectors of another model version
            column.arraysize = "*"
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
        return math.sqrt(total)

    def distances(self, ref_did: str, dims: Sequence[int] | None) -> tuple[list[str], list[float]]:
        """:meth:`distance` from ``ref_did`` for every encoded spectrum at once: the same float64
        operations in the same order, over columns instead of one pair."""
        served = self.served
        row = served.row_of(ref_did)
        if row is None:
            return [], []
        self._check_dims(dims)
        chosen = list(dims) if dims is not None else served.model.similarity_dims
        latents = served.model.latents
        reference = latents[row]
        total = np.zeros(len(latents), dtype=np.float64)
        for d in chosen:
            diff = latents[:, d].astype(np.float64) - float(reference[d])
            total += diff * diff
        return list(served.dids), np.sqrt(total).tolist()

    def latent_rows(self) -> tuple[list[str], list[list[float]], list[int]]:
        """Every encoded spectrum's DID and latent vector (float64, exactly the stored float32 values),
        and the dimensions the similarity index uses."""
        served = self.served
        vectors = np.asarray(served.model.latents, dtype=np.float64).tolist()
        return list(served.dids), vectors, list(served.model.similarity_dims)

    def _check_dims(self, dims: Sequence[int] | None) -> None:
        size = self.served.model.latent_dim
        if dims is not None and any(not 0 <= d < size for d in dims):
            raise ValueError(f"dims must be latent dimensions from 0 to {size - 1}; got {list(dims)}")

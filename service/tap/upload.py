"""TAP_UPLOAD (TAP-07, DALI-04): tables a query brings along, queried as ``TAP_UPLOAD.<name>``.

``UPLOAD=name,URI`` with URI ``param:x`` (the multipart part named x, sent in the same
request) or an ``http(s)://`` URL (fetched here, size- and time-limited). Several UPLOAD
parameters accumulate, and pyvo's ``t1,param:t1;t2,param:t2`` is split at the ``;``.

Each VOTable (TABLEDATA, BINARY or BINARY2) becomes a temporary table of the query's
:class:`~service.storage.QuerySession`, so the table lives exactly as long as that one request
(or job run), is never in TAP_SCHEMA, and joins with archive tables like any other. Column names are the
FIELD names, so odd ones are queried as ADQL delimited identifiers (``"RA (deg)"``).
Timestamps are stored in the DALI form; points, circles and polygons as the STC-S text the
geometry functions take, so ``CONTAINS``/``DISTANCE`` work on uploaded positions too.
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
from astropy.io.votable import parse as parse_votable
from astropy.io.votable.tree import Field, TableElement

from service.dali import text_value
from service.errors import LimitError, UsageError
from service.fetch import bounded, fetch_url
from service.params import Params
from service.storage import QuerySession
from service.tables import ColumnMeta, TableMeta
from service.tap import geometry

SCHEMA = "TAP_UPLOAD"
#: DALI-04: the table name rule.
NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
#: The most tables one query may upload.
MAX_TABLES = 16
#: ``;`` separates pyvo's packed uploads only where a new ``name,`` follows (URLs may hold ``;``).
_SEPARATOR = re.compile(r";(?=\s*[A-Za-z][A-Za-z0-9_]*\s*,)")
_CHUNK = 1 << 16
_INTEGERS = {"short", "int", "long", "unsignedByte"}
_REALS = {"float", "double"}
_GEOMETRY = {"point": "2", "circle": "3", "polygon": "*"}

#: The multipart part of a given form-field name as a binary stream, or None if there is none.
PartReader = Callable[[str], BinaryIO | None]


@dataclass(frozen=True)
class UploadSpec:
    """One ``name,URI`` of an UPLOAD parameter."""

    name: str
    uri: str

    @property
    def part(self) -> str | None:
        """The multipart field name of a ``param:`` upload (None for URLs)."""
        return self.uri[len("param:") :] if self.uri.startswith("param:") else None

    def __str__(self) -> str:
        return f"{self.name},{self.uri}"


def split_uploads(values: Iterable[str]) -> list[tuple[str, str]]:
    """``(name, uri)`` pairs of UPLOAD values as given, pyvo's ``;``-packed form split; nothing checked."""
    pairs = []
    for value in values:
        for item in _SEPARATOR.split(value):
            if item.strip():
                name, _, uri = item.partition(",")
                pairs.append((name.strip(), uri.strip()))
    return pairs


def upload_specs(values: Iterable[str]) -> list[UploadSpec]:
    """The checked UPLOAD specifications: name syntax, distinct names, a URI we can read, a count limit."""
    specs = []
    for name, uri in split_uploads(values):
        if not NAME.fullmatch(name):
            raise UsageError(
                f"UPLOAD table name {name!r} is not allowed: use a letter followed by letters, digits or _ "
                "(UPLOAD=name,param:part or UPLOAD=name,https://…)"
            )
        if not uri.startswith("param:") and not uri.lower().startswith(("http://", "https://")):
            raise UsageError(
                f"UPLOAD {name}: unsupported URI {uri!r}; use param:<multipart part> or an http(s) URL"
            )
        if uri == "param:":
            raise UsageError(f"UPLOAD {name}: param: needs the name of a multipart part")
        specs.append(UploadSpec(name, uri))
    seen: set[str] = set()
    for spec in specs:
        if spec.name.lower() in seen:
            raise UsageError(f"UPLOAD table name {spec.name!r} is given twice")
        seen.add(spec.name.lower())
    if len(specs) > MAX_TABLES:
        raise LimitError(f"at most {MAX_TABLES} tables can be uploaded with one query, not {len(specs)}")
    return specs


def request_parts(params: Params) -> PartReader:
    """Multipart parts of the current request (for ``param:`` uploads)."""

    def part(field: str) -> BinaryIO | None:
        storage = params.files.get(field)
        return None if storage is None else storage.stream

    return part


# -- reading ---------------------------------------------------------------------------------


def read_upload(
    spec: UploadSpec, parts: PartReader, limit: int, timeout: float, allow: Sequence[str]
) -> bytes:
    """The bytes of one uploaded table, at most ``limit`` of them; URLs only from hosts ``allow`` admits."""
    field = spec.part
    if field is None:
        what = f"UPLOAD {spec.name}"
        return fetch_url(spec.uri, what, limit, timeout, allow, lambda: too_large(spec.name, limit))
    stream = parts(field)
    if stream is None:
        raise UsageError(
            f"UPLOAD {spec.name}: the request has no multipart part named {field!r}; "
            "send the table as a file part of that name (multipart/form-data)"
        )
    return read_stream(stream, limit, spec.name)


def read_stream(stream: BinaryIO, limit: int, name: str) -> bytes:
    """All of a multipart part (then closed), refused beyond ``limit`` bytes."""
    with stream:
        return bounded(iter(lambda: stream.read(_CHUNK), b""), limit, lambda: too_large(name, limit))


def too_large(name: str, limit: int) -> LimitError:
    return LimitError(
        f"UPLOAD {name}: the uploaded tables exceed the upload limit of {limit} bytes "
        "(uploadLimit in /tap/capabilities)"
    )


def read_votable(data: bytes, name: str) -> TableElement:
    """The first TABLE of an uploaded VOTable; anything unreadable is the client's error."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return parse_votable(io.BytesIO(data), verify="ignore").get_first_table()
    except Exception as exc:  # astropy raises many kinds for bad input; all mean "not a VOTable we can read"
        raise UsageError(f"UPLOAD {name}: not a readable VOTable ({exc})") from None


# -- loading into the connection --------------------------------------------------------------


@dataclass
class _Column:
    meta: ColumnMeta
    convert: Callable[[object], object]
    kind: str  # the storage kind: "double", "integer" or "text"


def load_uploads(
    session: QuerySession, specs: list[UploadSpec], parts: PartReader, config: dict
) -> list[TableMeta]:
    """Read every upload and create its temporary table in ``session``; the TableMeta to query it with.

    ``config`` is the ``[service]`` section: upload_limit, upload_timeout, upload_url_allow.
    """
    limit, timeout = int(config["upload_limit"]), float(config["upload_timeout"])
    tables = []
    used = 0
    for spec in specs:
        data = read_upload(spec, parts, limit - used, timeout, config["upload_url_allow"])
        used += len(data)
        tables.append(create_table(session, spec.name, read_votable(data, spec.name)))
    return tables


def create_table(session: QuerySession, name: str, table: TableElement) -> TableMeta:
    """``TAP_UPLOAD.<name>`` as a temporary table holding the VOTable's rows."""
    columns = [_column(f) for f in table.fields]
    names = [c.meta.name.lower() for c in columns]
    if len(set(names)) != len(names):
        raise UsageError(f"UPLOAD {name}: column names must differ (ignoring case)")
    definition = [(c.meta.name, c.kind) for c in columns]
    sql_name = session.temp_table(f"tap_upload_{name.lower()}", definition, _rows(table, columns, name))
    return TableMeta(
        name=f"{SCHEMA}.{name}",
        sql=sql_name,
        description=f"table uploaded with this query (UPLOAD={name},…)",
        columns=[c.meta for c in columns],
    )


def _rows(table: TableElement, columns: list[_Column], name: str) -> Iterator[list]:
    array = table.array
    keys = array.dtype.names or ()
    data = [array.data[k] for k in keys]
    masks = [np.ma.getmaskarray(array[k]) for k in keys]
    for i in range(len(array)):
        row = []
        for column, values, mask in zip(columns, data, masks, strict=True):
            value = values[i]
            missing = bool(np.all(mask[i])) or value is np.ma.masked
            try:
                row.append(None if missing else column.convert(value))
            except (ValueError, TypeError, OverflowError) as exc:
                raise UsageError(f"UPLOAD {name}: row {i + 1}, column {column.meta.name}: {exc}") from None
        yield row


def _column(field: Field) -> _Column:
    """How one FIELD is stored and published: scalars as they are, geometry as STC-S, other arrays as text."""
    name = field.name or field.ID
    datatype, arraysize, xtype = field.datatype, field.arraysize, field.xtype

    def meta(datatype: str, arraysize: str | None, xtype: str | None) -> ColumnMeta:
        return ColumnMeta(
            name=name,
            datatype=datatype,
            arraysize=arraysize,
            xtype=xtype,
            unit=str(field.unit) if field.unit is not None else None,
            ucd=field.ucd,
            utype=field.utype,
            description=field.description,
        )

    if datatype in ("char", "unicodeChar"):
        convert = _timestamp if xtype in ("timestamp", "adql:TIMESTAMP") else _text
        stored_xtype = "timestamp" if convert is _timestamp else xtype
        return _Column(meta(datatype, arraysize, stored_xtype), convert, "text")
    if xtype in _GEOMETRY and datatype in _REALS and arraysize:
        return _Column(meta("double", _GEOMETRY[xtype], xtype), _geometry(xtype), "text")
    if arraysize and arraysize != "1":
        return _Column(meta("char", "*", None), text_value, "text")
    if datatype in _INTEGERS:
        return _Column(meta(datatype, None, xtype), _scalar(int), "integer")
    if datatype in _REALS:
        return _Column(meta(datatype, None, xtype), _real, "double")
    if datatype == "boolean":
        return _Column(meta("boolean", None, None), _scalar(lambda v: int(bool(v))), "integer")
    return _Column(meta("char", "*", None), text_value, "text")  # bit, complex: their DALI text


def _scalar(kind: Callable) -> Callable[[object], object]:
    return lambda value: kind(np.asarray(value).reshape(-1)[0])


def _real(value) -> float | None:
    number = float(np.asarray(value).reshape(-1)[0])
    return None if np.isnan(number) else number


def _text(value) -> str:
    if isinstance(value, bytes | np.bytes_):
        return value.decode("utf-8", "replace")
    return str(value)


def _timestamp(value) -> str | None:
    """DALI's ``YYYY-MM-DDThh:mm:ss[.sss]``: a space becomes ``T``, a trailing ``Z`` goes (X-15)."""
    text = _text(value).strip().replace(" ", "T").removesuffix("Z")
    return text or None


def _geometry(xtype: str) -> Callable[[object], str | None]:
    def convert(value) -> str | None:
        numbers = np.asarray(value, dtype=float).reshape(-1)
        if numbers.size == 0 or np.all(np.isnan(numbers)):
            return None
        if xtype == "point":
            return geometry.encode(geometry.make_point(numbers[0], numbers[1]))
        if xtype == "circle":
            center = geometry.make_point(numbers[0], numbers[1])
            return geometry.encode(geometry.make_circle(center, numbers[2]))
        points = [geometry.make_point(numbers[i], numbers[i + 1]) for i in range(0, numbers.size - 1, 2)]
        return geometry.encode(geometry.make_polygon(points))

    return convert

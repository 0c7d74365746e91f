"""DALI rules shared by TAP, SSAP and DataLink: MAXREC, RESPONSEFORMAT, and writing a result table."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from astropy.io.votable.tree import Resource, VOTableFile
from flask import Response

from service.errors import UsageError
from service.params import Params
from service.votable import VOTABLE_MIME, Column, add_table, info, new_document, results_resource, serialise


@dataclass(frozen=True)
class OutputFormat:
    mime: str  # what the response's Content-Type says
    kind: str  # votable | csv | tsv
    serialization: str = "tabledata"  # for VOTables: tabledata | binary | binary2


#: Accepted RESPONSEFORMAT values (lower case, MIME parameters other than ones listed stripped).
FORMATS: dict[str, OutputFormat] = {
    "votable": OutputFormat(VOTABLE_MIME, "votable"),
    "application/x-votable+xml": OutputFormat(VOTABLE_MIME, "votable"),
    "text/xml": OutputFormat("text/xml", "votable"),
    "votable/td": OutputFormat(VOTABLE_MIME, "votable"),
    "application/x-votable+xml;serialization=tabledata": OutputFormat(VOTABLE_MIME, "votable"),
    "votable/b2": OutputFormat(VOTABLE_MIME, "votable", "binary2"),
    "application/x-votable+xml;serialization=binary2": OutputFormat(VOTABLE_MIME, "votable", "binary2"),
    "votable/b": OutputFormat(VOTABLE_MIME, "votable", "binary"),
    "application/x-votable+xml;serialization=binary": OutputFormat(VOTABLE_MIME, "votable", "binary"),
    "csv": OutputFormat("text/csv;header=present", "csv"),
    "text/csv": OutputFormat("text/csv;header=present", "csv"),
    "tsv": OutputFormat("text/tab-separated-values", "tsv"),
    "text/tab-separated-values": OutputFormat("text/tab-separated-values", "tsv"),
}


def output_format(params: Params, synonyms: Sequence[str] = ("RESPONSEFORMAT",)) -> OutputFormat:
    """The requested format (VOTable when absent); an unknown one is a usage error (DALI-01)."""
    raw = next((params.get(name) for name in synonyms if params.get(name)), None)
    if raw is None:
        return FORMATS["votable"]
    key = raw.strip().lower().replace(" ", "")
    if key in FORMATS:
        chosen = FORMATS[key]
        # Answer with exactly the media type that was asked for; votable/b2 is an alias, not one.
        media_type = "/" in key and not key.startswith("votable/")
        return OutputFormat(raw.strip(), chosen.kind, chosen.serialization) if media_type else chosen
    base = key.split(";", 1)[0]
    if base in FORMATS:
        chosen = FORMATS[base]
        return OutputFormat(
            base if base != "application/x-votable+xml" else VOTABLE_MIME, chosen.kind, chosen.serialization
        )
    raise UsageError(f"unsupported RESPONSEFORMAT {raw!r}; use one of votable, votable/b2, csv, tsv")


def maxrec(params: Params, default: int, hard: int) -> int:
    """MAXREC clipped to the hard limit (DALI-02); absent means the configured default."""
    value = params.get_int("MAXREC", default=default, minimum=0)
    return min(value, hard)


def write_result(
    columns: Sequence[Column],
    rows: Sequence[Sequence],
    fmt: OutputFormat,
    overflow: bool = False,
    decorate: Callable[[VOTableFile, Resource], None] | None = None,
    infos: Sequence[tuple[str, str]] = (),
) -> Response:
    """A result table in the chosen format; ``decorate`` adds descriptors or PARAMs to VOTables."""
    if fmt.kind in ("csv", "tsv"):
        buffer = io.StringIO()
        writer = csv.writer(buffer, delimiter="," if fmt.kind == "csv" else "\t", lineterminator="\r\n")
        writer.writerow([c.name for c in columns])
        for row in rows:
            writer.writerow([text_value(v) for v in row])
        return Response(buffer.getvalue(), mimetype=fmt.mime.split(";")[0], content_type=fmt.mime)
    document = new_document()
    resource = results_resource(document, "OVERFLOW" if overflow else "OK")
    for name, value in infos:
        resource.infos.append(info(name, value))
    add_table(resource, document, columns, rows)
    if decorate:
        decorate(document, resource)
    return Response(serialise(document, fmt.serialization), content_type=fmt.mime)


def text_value(value) -> str:
    """DALI text form of a cell for CSV/TSV: arrays space-separated, nulls empty."""
    if value is None:
        return ""
    if hasattr(value, "__len__") and not isinstance(value, str | bytes):
        return " ".join(repr(float(v)) if isinstance(v, float) else str(v) for v in value)
    if isinstance(value, float):
        return "" if value != value else repr(value)
    return str(value)

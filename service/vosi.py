"""VOSI 1.1 documents shared by every protocol: capabilities, availability, tables.

Each protocol blueprint (TAP, SSAP, DataLink) serves its own ``capabilities`` and
``availability`` siblings (X-01) built from these helpers:

- :func:`capability` makes one ``<capability>`` element (``xsi:type`` for TAP/SSA, any number
  of interfaces); protocol-specific children go in with :func:`sub`;
  :func:`vosi_capabilities` adds the VOSI capabilities/availability(/tables) capabilities of an
  endpoint; :func:`capabilities_document` wraps them in ``vosi:capabilities``.
- :func:`availability_document` and :func:`probe_service` (really checks the archive database
  and the model in service, DALI-07).
- :func:`tableset_document` / :func:`table_document` describe tables (VODataService 1.1).
- :func:`xml_response` answers ``text/xml`` with ``Last-Modified`` and conditional GET.

Elements carry literal prefixes (``vr:``, ``vs:``, ``tr:``, ``ssa:``) and the root declares all
of them, because ``xsi:type`` values name types by prefix: VOSI-01 wants the capability
children unqualified and no default namespace on the root.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from flask import Response, request

from service.state import state
from service.tables import ColumnMeta, TableMeta, TableSet

log = logging.getLogger(__name__)

NAMESPACES = {
    "vosi": "http://www.ivoa.net/xml/VOSICapabilities/v1.0",
    "xsi": "http://www.w3.org/2001/XMLSchema-instance",
    "vr": "http://www.ivoa.net/xml/VOResource/v1.0",
    "vs": "http://www.ivoa.net/xml/VODataService/v1.1",
    "tr": "http://www.ivoa.net/xml/TAPRegExt/v1.0",
    "ssa": "http://www.ivoa.net/xml/SSA/v1.1",
}
AVAILABILITY_NS = "http://www.ivoa.net/xml/VOSIAvailability/v1.0"
TABLES_NS = "http://www.ivoa.net/xml/VOSITables/v1.0"

VOSI_CAPABILITIES = "ivo://ivoa.net/std/VOSI#capabilities"
VOSI_AVAILABILITY = "ivo://ivoa.net/std/VOSI#availability"
VOSI_TABLES = "ivo://ivoa.net/std/VOSI#tables-1.1"
DALI_EXAMPLES = "ivo://ivoa.net/std/DALI#examples"

XML_MIME = "text/xml"
#: When this process started: availability's upSince and Last-Modified of capabilities.
STARTED = datetime.now(UTC).replace(microsecond=0)


# -- building elements ----------------------------------------------------------------------


def sub(parent: ET.Element, tag: str, text: str | int | None = None, **attrs: str | None) -> ET.Element:
    """Append a child element; None attributes are left out, ``xsi_type`` becomes ``xsi:type``."""
    child = ET.SubElement(parent, tag)
    for name, value in attrs.items():
        if value is not None:
            child.set("xsi:type" if name == "xsi_type" else name.replace("_", "-"), str(value))
    if text is not None:
        child.text = str(text)
    return child


@dataclass
class Interface:
    """One ``<interface>`` of a capability."""

    access_url: str
    #: ``vs:ParamHTTP`` (protocol and VOSI endpoints) or ``vr:WebBrowser`` (pages).
    type: str = "vs:ParamHTTP"
    #: ``full`` for endpoints called as they are, ``base`` for protocol bases (TAP).
    use: str = "full"
    role: str | None = None
    version: str | None = None
    result_type: str | None = None
    query_types: Sequence[str] = field(default_factory=tuple)


def capability(
    standard_id: str | None,
    interfaces: Sequence[Interface],
    xsi_type: str | None = None,
    description: str | None = None,
) -> ET.Element:
    """A ``<capability>``; append protocol children (TAPRegExt, SSA) to it with :func:`sub`."""
    element = ET.Element("capability")
    if standard_id:
        element.set("standardID", standard_id)
    if xsi_type:
        element.set("xsi:type", xsi_type)
    if description:
        sub(element, "description", description)
    for spec in interfaces:
        interface = sub(element, "interface", xsi_type=spec.type, role=spec.role, version=spec.version)
        sub(interface, "accessURL", spec.access_url, use=spec.use)
        if spec.type == "vs:ParamHTTP":
            for query_type in spec.query_types:
                sub(interface, "queryType", query_type)
            if spec.result_type:
                sub(interface, "resultType", spec.result_type)
    return element


def vosi_capabilities(base_url: str, tables: bool = False) -> list[ET.Element]:
    """The VOSI capabilities of an endpoint whose VOSI resources are ``{base_url}/capabilities`` etc."""
    base = base_url.rstrip("/")
    found = [
        capability(VOSI_CAPABILITIES, [Interface(f"{base}/capabilities")]),
        capability(VOSI_AVAILABILITY, [Interface(f"{base}/availability")]),
    ]
    if tables:
        found.append(capability(VOSI_TABLES, [Interface(f"{base}/tables")]))
    return found


def capabilities_document(capabilities: Iterable[ET.Element]) -> bytes:
    """``vosi:capabilities`` holding the given capability elements."""
    root = ET.Element("vosi:capabilities")
    for prefix, uri in NAMESPACES.items():
        root.set(f"xmlns:{prefix}", uri)
    root.extend(capabilities)
    return serialise(root)


def availability_document(
    available: bool, notes: Sequence[str] = (), up_since: datetime | None = None
) -> bytes:
    """``vosi:availability`` (VOSI-03: children qualified)."""
    root = ET.Element("vosi:availability", {"xmlns:vosi": AVAILABILITY_NS})
    sub(root, "vosi:available", "true" if available else "false")
    if available and up_since is not None:
        sub(root, "vosi:upSince", isoformat(up_since))
    for note in notes:
        sub(root, "vosi:note", note)
    return serialise(root)


def probe_service() -> tuple[bool, list[str]]:
    """Is the service able to answer? Opens the archive, reads it, loads the model in service."""
    try:
        archive = state().archive()
        archive.db.execute("SELECT obs_publisher_did FROM spectrum LIMIT 1").fetchall()
        served = state().served_model()
    except Exception as exc:  # anything that stops queries makes the service unavailable
        message = getattr(exc, "message", None) or "the archive or the model cannot be read (see the log)"
        log.warning("availability probe failed: %s", message, exc_info=not hasattr(exc, "message"))
        return False, [f"service unavailable: {message}"]
    return True, [f"archive readable; model version {served.version} in service ({len(served.dids)} spectra)"]


# -- tables (VODataService 1.1 as used by VOSI-tables 1.1) ------------------------------------------


def tableset_document(tableset: TableSet, detail: str = "max") -> bytes:
    """``vosi:tableset``: every schema and table; columns and keys unless ``detail="min"``."""
    root = ET.Element("vosi:tableset", {"xmlns:vosi": TABLES_NS, "xmlns:vs": NAMESPACES["vs"]})
    root.set("xmlns:xsi", NAMESPACES["xsi"])
    for schema in tableset.schemas:
        element = sub(root, "schema")
        sub(element, "name", schema.name)
        if schema.description:
            sub(element, "description", schema.description)
        if schema.utype:
            sub(element, "utype", schema.utype)
        for table in tableset.schema_tables(schema.name):
            _table(sub(element, "table"), table, tableset, detail != "min")
    return serialise(root)


def table_document(table: TableMeta, tableset: TableSet) -> bytes:
    """``vosi:table``: one table in full detail (the ``/tables/{name}`` child resource)."""
    root = ET.Element("vosi:table", {"xmlns:vosi": TABLES_NS, "xmlns:vs": NAMESPACES["vs"]})
    root.set("xmlns:xsi", NAMESPACES["xsi"])
    _table(root, table, tableset, True)
    return serialise(root)


def _table(element: ET.Element, table: TableMeta, tableset: TableSet, full: bool) -> None:
    element.set("type", table.type)
    sub(element, "name", table.name)
    if table.description:
        sub(element, "description", table.description)
    if table.utype:
        sub(element, "utype", table.utype)
    if not full:
        return
    for column in table.columns:
        _column(sub(element, "column", std="true" if column.std else None), column)
    for key in table.foreign_keys:
        fk = sub(element, "foreignKey")
        sub(fk, "targetTable", tableset.table(key.target).name)
        target = tableset.table(key.target)
        for source, goal in zip(key.from_columns, key.to_columns, strict=True):
            pair = sub(fk, "fkColumn")
            sub(pair, "fromColumn", table.column(source).adql_name)
            sub(pair, "targetColumn", target.column(goal).adql_name)
        if key.description:
            sub(fk, "description", key.description)


def _column(element: ET.Element, column: ColumnMeta) -> None:
    sub(element, "name", column.adql_name)
    for tag in ("description", "unit", "ucd", "utype"):
        value = getattr(column, tag)
        if value:
            sub(element, tag, value)
    sub(
        element,
        "dataType",
        column.datatype,
        xsi_type="vs:VOTableType",
        arraysize=column.arraysize or None,
        extendedType=column.xtype or None,
    )
    for flag, on in (("indexed", column.indexed), ("primary", column.primary), ("nullable", column.nullable)):
        if on:
            sub(element, "flag", flag)


# -- serialisation and responses ----------------------------------------------------------------


def serialise(root: ET.Element) -> bytes:
    ET.indent(root, space=" ")
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="utf-8")


def isoformat(moment: datetime) -> str:
    """An xs:dateTime in UTC with a trailing Z."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def xml_response(body: bytes, last_modified: datetime | None = None) -> Response:
    """A ``text/xml`` VOSI answer; with ``last_modified`` it honours If-Modified-Since (304)."""
    response = Response(body, mimetype=XML_MIME)
    if last_modified is not None:
        response.last_modified = last_modified
        response.make_conditional(request)
    return response

"""VOTable documents for every protocol: results, errors, service descriptors.

Built with astropy.io.votable so the output is what astropy (and so pyvo) reads back; one
place decides the VOTable version, the status INFOs and the serialisation.
"""

from __future__ import annotations

import copy
import io
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache

import numpy as np
from astropy.io.votable import converters
from astropy.io.votable.exceptions import W03, VOWarning
from astropy.io.votable.tree import (
    Field,
    Group,
    Info,
    Link,
    Param,
    Resource,
    TableElement,
    Values,
    VOTableFile,
)
from astropy.utils.collections import HomogeneousList
from astropy.utils.xml.writer import XMLWriter

VOTABLE_VERSION = "1.4"
VOTABLE_MIME = "application/x-votable+xml"
DATALINK_MIME = "application/x-votable+xml;content=datalink"


def new_document() -> VOTableFile:
    return VOTableFile(version=VOTABLE_VERSION)


def element_config(document: VOTableFile) -> dict:
    """The version checks astropy would recompute for every FIELD and PARAM (a fifth of /similar's
    time), made once per VOTable version; elements only read them."""
    return _version_config(document.version)


@cache
def _version_config(version: str) -> dict:
    return _blank_document(version)._get_version_checks()


@cache
def _blank_document(version: str) -> VOTableFile:
    """One empty document per version: what the version checks and element prototypes come from (so
    a prototype keeps no request's document alive)."""
    return VOTableFile(version=version)


def info(name: str, value: str, content: str | None = None, **attrs: str) -> Info:
    """An INFO without the XML ID astropy would add (IDs must be unique in a document)."""
    element = Info(name=name, value=value, **attrs)
    element.ID = None
    if content:
        element.content = content
    return element


def results_resource(document: VOTableFile, status: str = "OK", message: str | None = None) -> Resource:
    """The one ``RESOURCE type="results"`` with its leading QUERY_STATUS INFO."""
    resource = Resource(type="results")
    resource.infos.append(info("QUERY_STATUS", status, message))
    document.resources.append(resource)
    return resource


def error_document(message: str) -> bytes:
    """A DALI error document: QUERY_STATUS=ERROR with the message as INFO content, no TABLE."""
    document = new_document()
    results_resource(document, "ERROR", message or "error")
    return serialise(document)


@dataclass
class Column:
    """What a FIELD needs; built from table metadata (resources/) or by protocol code."""

    name: str
    datatype: str
    arraysize: str | None = None
    unit: str | None = None
    ucd: str | None = None
    utype: str | None = None
    xtype: str | None = None
    description: str | None = None
    ID: str | None = None

    def field(self, document: VOTableFile) -> Field:
        return _fresh(_field_prototype(document.version, tuple(vars(self).values())))


@lru_cache(maxsize=4096)
def _field_prototype(version: str, spec: tuple) -> Field:
    column = Column(*spec)
    document = _blank_document(version)
    element = CachedField(
        document,
        name=column.name,
        datatype=column.datatype,
        arraysize=column.arraysize,
        unit=column.unit,
        ucd=column.ucd,
        utype=column.utype,
        xtype=column.xtype,
        ID=column.ID,
        config=element_config(document),
    )
    return _prototype(element, column.description)


def _prototype(element, description: str | None):
    """A FIELD or PARAM to copy from: its description, and the box its copies share a converter in."""
    element._plain = []
    if description:
        element.description = description
    return element


def _fresh(prototype):
    """A copy of a FIELD or PARAM prototype with lists of its own: building an astropy element
    (converter, unit parsing, UCD checks) costs far more than copying one."""
    element = copy.copy(prototype)
    element._links = HomogeneousList(Link)
    element.values = Values(prototype._votable, element)
    return element


#: Stands for a PARAM's value in its cached XML (a private-use character: no text of ours holds it).
_VALUE = "\ue000"
#: XML of FIELDs and PARAMs (with _VALUE for the value), by element, attributes and indentation.
_RENDERED: dict[tuple, str] = {}
_RENDERED_MAX = 20000


class _CachedXML:
    """FIELD and PARAM elements that write their XML from a cache (astropy writes each through
    several layers of its XMLWriter: a quarter of /similar's time). The text is astropy's own,
    rendered once per element shape and indentation; tests compare the bytes with astropy's.

    Before writing, astropy sets every FIELD and PARAM of a TABLE up again with an empty
    configuration, which builds a new converter each time; copies of one prototype share that
    converter (``_plain``, a box the copies share), as they share every attribute it depends on.
    """

    _attr_list: list[str]
    _plain: list

    def _setup(self, config, pos) -> None:
        if config or pos is not None or self.values._ref is not None:
            super()._setup(config, pos)
            return
        if not self._plain:
            self._plain.append(converters.get_converter(self, config, pos))
        self.converter = self._plain[0]
        if isinstance(self, Param):
            self.value = self._value

    def _cached_xml(self, w: XMLWriter, render: Callable[[XMLWriter], None]) -> str | None:
        if not self.values.is_defaults() or len(self.links) or _VALUE in (self.description or ""):
            return None
        depth = len(w._tags)
        key = (self._element_name, depth, self.description, *(getattr(self, a) for a in self._attr_list))
        text = _RENDERED.get(key)
        if text is None:
            buffer = io.StringIO()
            writer = XMLWriter(buffer)
            writer._tags = ["_"] * depth
            render(writer)
            text = buffer.getvalue()
            if len(_RENDERED) >= _RENDERED_MAX:
                _RENDERED.clear()
            _RENDERED[key] = text
        return text


class CachedField(_CachedXML, Field):
    def to_xml(self, w: XMLWriter, **kwargs) -> None:
        text = self._cached_xml(w, lambda writer: Field.to_xml(self, writer, **kwargs))
        if text is None:
            Field.to_xml(self, w, **kwargs)
            return
        w._flush()
        w.write(text)


class CachedParam(_CachedXML, Param):
    def to_xml(self, w: XMLWriter, **kwargs) -> None:
        value = self._value
        self._value = _VALUE  # the attributes (and so the cache key) without the value
        try:
            text = self._cached_xml(w, lambda writer: Field.to_xml(self, writer, **kwargs))
        finally:
            self._value = value
        if text is None:
            Param.to_xml(self, w, **kwargs)
            return
        shown = self.converter.output(value, False)
        w._flush()
        w.write(text.replace(_VALUE, w.xml_escape(shown if shown is not None else "")))


def add_table(
    resource: Resource,
    document: VOTableFile,
    columns: Sequence[Column],
    rows: Iterable[Sequence],
    name: str = "results",
) -> TableElement:
    """A TABLE with these FIELDs and rows (None = null) appended to ``resource``.

    Filled column by column (one numpy assignment each), which for a hundred rows is several times
    faster than assigning record by record.
    """
    table = ResultTable(document, name=name, config=element_config(document))
    table.fields.extend(c.field(document) for c in columns)
    rows = list(rows)
    table.create_arrays(nrows=len(rows))
    data, mask = table.array.data, table.array.mask
    for i, column in enumerate(columns):
        values, masks = [], []
        for row in rows:
            value = row[i]
            missing = value is None or (isinstance(value, float) and value != value)
            values.append(_default(column) if missing else value)
            masks.append(missing)
        key = data.dtype.names[i]
        target = data[key]
        if target.dtype == object:  # variable-length cells: numpy must not broadcast them
            for j, value in enumerate(values):
                target[j] = value
        else:
            target[...] = np.asarray(values, dtype=target.dtype).reshape(target.shape)
        flags = np.asarray(masks, dtype=bool)
        mask[key] = flags.reshape(flags.shape + (1,) * (mask[key].ndim - 1))
    resource.tables.append(table)
    return table


class ResultTable(TableElement):
    """A TABLE whose TABLEDATA is written row by row as one string per row.

    The cells are the converters' own text, exactly as astropy's Python writer writes them (its C
    writer can overrun its buffer; see :func:`serialise`), without that writer's per-cell numpy
    reductions and per-cell file writes, which made a hundred-row answer cost tens of milliseconds.
    """

    def _write_tabledata(self, w, **kwargs) -> None:
        with w.tag("TABLEDATA"):
            w._flush()
            indent = w.get_indentation_spaces()
            tr_start, tr_end = indent + "<TR>\n", indent + "</TR>\n"
            td_start, td_end, td_empty = indent + " <TD>", "</TD>\n", indent + " <TD/>\n"
            data, mask = self.array.data, self.array.mask
            columns = []
            for field, key in zip(self.fields, data.dtype.names, strict=True):
                flags = mask[key]
                empty = flags.reshape(len(flags), -1).all(axis=1) if flags.ndim > 1 else flags
                empty = (
                    empty.tolist() if field.converter.supports_empty_values(kwargs) else [False] * len(flags)
                )
                columns.append((field.converter.output, data[key], flags, empty))
            write = w.write
            for row in range(len(data)):
                parts = [tr_start]
                for output, values, flags, empty in columns:
                    if empty[row]:
                        parts.append(td_empty)
                        continue
                    text = output(values[row], flags[row])
                    parts.append(td_start + text + td_end if text else td_empty)
                parts.append(tr_end)
                write("".join(parts))


def _default(column: Column):
    """A placeholder of the right type for a null cell (masked on output)."""
    if column.datatype in ("char", "unicodeChar"):
        return ""
    if column.arraysize and column.datatype not in ("char", "unicodeChar"):
        size = column.arraysize.rstrip("*") or "0"
        return np.zeros(int(size) if size.isdigit() else 0)
    if column.datatype == "boolean":
        return False
    return 0


def param(
    document: VOTableFile,
    name: str,
    value: str = "",
    datatype: str = "char",
    arraysize: str | None = "*",
    ucd: str | None = None,
    utype: str | None = None,
    unit: str | None = None,
    ref: str | None = None,
    description: str | None = None,
    xtype: str | None = None,
) -> Param:
    element = _fresh(
        _param_prototype(
            document.version, name, datatype, arraysize, ucd, utype, unit, ref, description, xtype
        )
    )
    element.value = value
    return element


@lru_cache(maxsize=4096)
def _param_prototype(
    version: str,
    name: str,
    datatype: str,
    arraysize: str | None,
    ucd: str | None,
    utype: str | None,
    unit: str | None,
    ref: str | None,
    description: str | None,
    xtype: str | None,
) -> Param:
    document = _blank_document(version)
    with warnings.catch_warnings():  # W03: astropy derives an ID from names like INPUT:POS; dropped below
        warnings.simplefilter("ignore", W03)
        element = CachedParam(
            document,
            name=name,
            datatype=datatype,
            arraysize=arraysize,
            ucd=ucd,
            utype=utype,
            unit=unit,
            ref=ref,
            xtype=xtype,
            config=element_config(document),
        )
    element.ID = None
    return _prototype(element, description)


@dataclass
class InputParam:
    """One input parameter of a service descriptor (DataLink 1.1 §4)."""

    name: str
    datatype: str = "char"
    arraysize: str | None = "*"
    value: str = ""
    ref: str | None = None
    unit: str | None = None
    ucd: str | None = None
    xtype: str | None = None
    description: str | None = None
    minimum: str | None = None
    maximum: str | None = None
    options: Sequence[str] = ()


class _BlankOutput:
    """A PARAM converter that writes the empty value as "" (floating-point converters cannot)."""

    def __init__(self, converter) -> None:
        self._converter = converter

    def output(self, value, mask):
        return "" if isinstance(value, str) and value == "" else self._converter.output(value, mask)

    def __getattr__(self, name: str):
        return getattr(self._converter, name)


def input_param(document: VOTableFile, spec: InputParam) -> Param:
    """The PARAM of one input parameter, with MIN/MAX/OPTIONs (descriptors, SSAP's INPUT: PARAMs)."""
    element = param(
        document,
        spec.name,
        spec.value,
        spec.datatype,
        spec.arraysize,
        ucd=spec.ucd,
        unit=spec.unit,
        ref=spec.ref,
        description=spec.description,
        xtype=spec.xtype,
    )
    if spec.value == "" and spec.datatype not in ("char", "unicodeChar"):
        # A user-chosen numeric input has the empty value="" (DL-11); astropy would write "0" or "NaN".
        element._value = ""
        element.converter = _BlankOutput(element.converter)
    if spec.minimum is not None or spec.maximum is not None or spec.options:
        values = Values(document, element, config=element_config(document))
        if spec.minimum is not None:
            values.min = spec.minimum
        if spec.maximum is not None:
            values.max = spec.maximum
        for option in spec.options:
            values.options.append((option, option) if isinstance(option, str) else option)
        element.values = values
    return element


def service_descriptor(
    document: VOTableFile,
    ID: str,
    access_url: str,
    description: str,
    inputs: Sequence[InputParam],
    standard_id: str | None = None,
    content_type: str | None = None,
    example_url: str | None = None,
    name: str | None = None,
) -> Resource:
    """A ``RESOURCE type="meta" utype="adhoc:service"`` describing how to call a service."""
    resource = Resource(type="meta", utype="adhoc:service", ID=ID)
    resource.name = name or ID
    # astropy's Resource.to_xml writes only ID/type/utype, so ``name`` goes out as an extra attribute.
    resource.extra_attributes["name"] = resource.name
    resource.description = description
    resource.params.append(param(document, "accessURL", access_url, ucd="meta.ref.url"))
    if standard_id:
        resource.params.append(param(document, "standardID", standard_id))
    if content_type:
        resource.params.append(param(document, "contentType", content_type))
    if example_url:
        resource.params.append(param(document, "exampleURL", example_url))
    group = Group(document, name="inputParams", config=element_config(document))
    group.ID = None  # astropy derives ID="inputParams" from the name; XML IDs must be unique
    for spec in inputs:
        element = input_param(document, spec)
        group.entries.append(element)
    resource.groups.append(group)
    return resource


def serialise(document: VOTableFile, tabledata_format: str = "tabledata") -> bytes:
    """Write the document; ``tabledata_format`` is ``tabledata``, ``binary`` or ``binary2``.

    TABLEDATA goes through astropy's Python writer, not its C one: the C writer overruns its row
    buffer by one byte when a row's text fills it exactly (astropy issue 20419, open in astropy
    8.0.2), which corrupts the heap and later kills the worker at a random point. A query's rows
    are the client's to shape, so any query could trigger it. The two writers write the same bytes.
    """
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VOWarning)
        document.to_xml(buffer, tabledata_format=tabledata_format, _debug_python_based_parser=True)
    return buffer.getvalue()

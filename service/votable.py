"""VOTable documents for every protocol: results, errors, service descriptors.

Built with astropy.io.votable so the output is what astropy (and so pyvo) reads back; one
place decides the VOTable version, the status INFOs and the serialisation.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from itertools import repeat

import numpy as np
from astropy.io.votable import converters
from astropy.io.votable.exceptions import W03, VOWarning
from astropy.io.votable.tree import (
    CooSys,
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
    element._shape_key()
    return element


def _fresh(prototype):
    """A copy of a FIELD or PARAM prototype with lists of its own: building an astropy element
    (converter, unit parsing, UCD checks) costs far more than copying one, and copying its
    attributes directly costs a fraction of ``copy.copy`` and a new Values element."""
    element = _copy_of(prototype)
    values = _copy_of(prototype._values, _config={}, _field=element, _options=[])
    element.__dict__.update(_links=HomogeneousList(Link), _values=values)
    return element


def _copy_of(prototype, cls: type | None = None, **changed):
    """A shallow copy of an astropy element (its attribute dict, bypassing __init__ and
    __setattr__), as ``cls`` when given, with ``changed`` attributes set."""
    element = object.__new__(cls or type(prototype))
    element.__dict__.update(prototype.__dict__, **changed)
    return element


def coordinate_system(ID: str, system: str) -> CooSys:
    """A COOSYS element (a copy of one built once: astropy checks the system against its list of
    reference frames on every construction)."""
    return _copy_of(_coosys_prototype(ID, system))


@cache
def _coosys_prototype(ID: str, system: str) -> CooSys:
    return CooSys(ID=ID, system=system)


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
        self.__dict__["converter"] = self._plain[0]
        if isinstance(self, Param) and isinstance(self._value, str):  # else parsed already
            self.value = self._value

    def __setattr__(self, name: str, value) -> None:
        if name not in _SHAPE_FREE:  # the element's XML shape may change: its key is made afresh
            self.__dict__.pop("_shape", None)
        super().__setattr__(name, value)

    def _shape_key(self) -> tuple:
        """What the element's XML depends on besides its depth (a PARAM's value stands as _VALUE);
        kept with the element, so copies of a prototype share it until one of them is changed."""
        shape = self.__dict__.get("_shape")
        if shape is None:
            attributes = (_VALUE if a == "value" else getattr(self, a) for a in self._attr_list)
            shape = (self._element_name, self.description, *attributes)
            self.__dict__["_shape"] = shape
        return shape

    def _cached_xml(self, w: XMLWriter, render: Callable[[XMLWriter], None]) -> str | None:
        if not self.values.is_defaults() or len(self.links) or _VALUE in (self.description or ""):
            return None
        depth = len(w._tags)
        key = (self._shape_key(), depth)
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


#: Attributes whose writing leaves an element's XML shape as it was: its value, converter and
#: lists (VALUES and LINKs are checked on every write).
_SHAPE_FREE = frozenset({"_value", "value", "converter", "_links", "_values", "values"})


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
        text = self._cached_xml(w, lambda writer: self._write_shape(writer, kwargs))
        if text is None:
            Param.to_xml(self, w, **kwargs)
            return
        shown = self.converter.output(self._value, False)
        w._flush()
        w.write(text.replace(_VALUE, w.xml_escape(shown if shown is not None else "")))

    def _write_shape(self, writer: XMLWriter, kwargs: dict) -> None:
        """The PARAM's XML with _VALUE for its value."""
        value = self._value
        self._value = _VALUE
        try:
            Field.to_xml(self, writer, **kwargs)
        finally:
            self._value = value


def add_table(
    resource: Resource,
    document: VOTableFile,
    columns: Sequence[Column],
    rows: Iterable[Sequence],
    name: str = "results",
) -> TableElement:
    """A TABLE with these FIELDs and rows (None or NaN = null) appended to ``resource``.

    The rows are kept as given: :func:`serialise` writes TABLEDATA straight from them, and the
    table's masked array is built only when something asks for it (a binary serialisation).
    """
    table = ResultTable(document, name=name, config=element_config(document))
    list.extend(table.fields, [c.field(document) for c in columns])  # FIELDs all: no checks needed
    table.hold(list(columns), list(rows))
    resource.tables.append(table)
    return table


class ResultTable(TableElement):
    """A TABLE that keeps its rows as Python values until an array is needed.

    TABLEDATA is written from them column by column, with the converters' own text (what astropy's
    Python writer writes, byte for byte) and plain ``repr`` where that is the same text (doubles,
    integers), without the per-cell numpy reductions and per-cell writes of astropy's writer.
    """

    _pending: tuple[list[Column], list[Sequence]] | None = None

    def hold(self, columns: list[Column], rows: list[Sequence]) -> None:
        self._pending = (columns, rows)

    @property
    def array(self):
        if self._pending is not None:
            columns, rows = self._pending
            self._pending = None
            self._fill(columns, rows)
        return self._array

    @array.setter
    def array(self, value) -> None:
        self._array = value

    def _fill(self, columns: list[Column], rows: list[Sequence]) -> None:
        """The masked record array astropy's writers and readers expect, one column at a time."""
        self.create_arrays(nrows=len(rows))
        data, mask = self._array.data, self._array.mask
        for i, (column, key) in enumerate(zip(columns, data.dtype.names, strict=True)):
            values, flags = _column_values(column, data[key], [row[i] for row in rows])
            data[key] = values
            mask[key] = flags.reshape(flags.shape + (1,) * (mask[key].ndim - 1))

    def to_xml(self, w, **kwargs) -> None:
        """TableElement.to_xml's steps for TABLEDATA rows still held (it would build the array to
        count them); anything else is astropy's own."""
        chosen = kwargs.get("tabledata_format") or self.format
        if self._pending is None or chosen not in ("tabledata", "fits") or self.ref is not None:
            super().to_xml(w, **kwargs)
            return
        with w.tag("TABLE", attrib=w.object_attrs(self, ("ID", "name", "ref", "ucd", "utype", "nrows"))):
            if self.description is not None:
                w.element("DESCRIPTION", self.description, wrap=True)
            for element_set in (self.fields, self.params):
                for element in element_set:
                    element._setup({}, None)
            for element_set in (self.fields, self.params, self.groups, self.links):
                for element in element_set:
                    element.to_xml(w, **kwargs)
            if self._pending[1]:
                with w.tag("DATA"):
                    self._write_tabledata(w, **kwargs)
            if kwargs["version_1_2_or_later"]:
                for element in self._infos:
                    element.to_xml(w, **kwargs)

    def _write_tabledata(self, w, **kwargs) -> None:
        with w.tag("TABLEDATA"):
            w._flush()
            w.write(self._tabledata_text(w.get_indentation_spaces(), kwargs))

    def _tabledata_text(self, indent: str, config: dict) -> str:
        """TABLEDATA's rows as astropy's Python writer writes them, at this indentation."""
        td_start, td_end, td_empty = indent + " <TD>", "</TD>\n", indent + " <TD/>\n"
        if self._pending is not None:
            columns, rows = self._pending
            cells = [
                _column_text(field, column, [row[i] for row in rows], config)
                for i, (field, column) in enumerate(zip(self.fields, columns, strict=True))
            ]
        else:
            data, mask = self._array.data, self._array.mask
            cells = [
                _array_text(field.converter, data[key], mask[key], config)
                for field, key in zip(self.fields, data.dtype.names, strict=True)
            ]
        tr_start, tr_end = indent + "<TR>\n", indent + "</TR>\n"
        out = []
        for row in zip(*cells, strict=True):
            out.append(tr_start)
            out.extend(td_empty if text is None else td_start + text + td_end for text in row)
            out.append(tr_end)
        return "".join(out)


def _is_null(value) -> bool:
    """A null cell: None, or a float NaN."""
    return value is None or (isinstance(value, float) and value != value)


def _column_values(column: Column, target: np.ndarray, values: list) -> tuple[np.ndarray, np.ndarray]:
    """One column's cells as an array shaped like ``target`` (the column of the record array),
    with its null flags: None and NaN are null, and hold a placeholder of the right type."""
    flags = np.fromiter(map(_is_null, values), dtype=bool, count=len(values))
    filled = [_default(column) if flag else value for value, flag in zip(values, flags.tolist(), strict=True)]
    if target.dtype == object:  # variable-length cells: numpy must not broadcast them
        array = np.empty(len(filled), dtype=object)
        for j, value in enumerate(filled):
            array[j] = value
        return array, flags
    return np.asarray(filled, dtype=target.dtype).reshape(target.shape), flags


def _column_text(field: Field, column: Column, values: list, config: dict) -> list[str | None]:
    """A column's TABLEDATA cells (None = the empty <TD/>) from its Python values."""
    converter = field.converter
    kind = _plain_number_kind(converter)
    if kind is not None and converter.supports_empty_values(config):  # nulls are <TD/>
        try:
            return _plain_number_text(kind, values)
        except (TypeError, ValueError, OverflowError):
            pass  # not plainly a number: as the record array would hold it
    dtype = np.dtype(converter.format)
    if dtype.kind == "O":  # variable-size cells: the record array would hold the values as given
        return _object_text(converter, column, values, config)
    array, flags = _column_values(column, np.empty(len(values), dtype=dtype), values)
    if array.ndim > 1:  # a fixed-size array's mask has its shape, as in the record array
        flags = np.broadcast_to(flags.reshape(flags.shape + (1,) * (array.ndim - 1)), array.shape)
    return _array_text(converter, array, flags, config)


def _object_text(converter, column: Column, values: list, config: dict) -> list[str | None]:
    """Variable-size cells (text, arrays) through the converter, straight from their values."""
    empty_allowed = converter.supports_empty_values(config)
    output = converter.output
    out: list[str | None] = []
    for value in values:
        missing = _is_null(value)
        if missing and empty_allowed:
            out.append(None)
            continue
        text = output(_default(column) if missing else value, missing)
        out.append(text if text else None)
    return out


#: Integer ranges by numpy type code of the scalar integer converters.
_INTEGER_RANGES = {"i2": (-(2**15), 2**15 - 1), "i4": (-(2**31), 2**31 - 1), "i8": (-(2**63), 2**63 - 1)}


def _plain_number_kind(converter) -> str | None:
    """``f8`` for a double column written as astropy writes it by default, ``i2``/``i4``/``i8`` for an
    integer one without a null value; None for any other (written through its converter)."""
    kind = getattr(converter, "format", None)
    if getattr(converter, "null", None) is not None:
        return None
    if kind == "f8" and getattr(converter, "output_format", None) == "{!s:>}":
        return kind
    return kind if kind in _INTEGER_RANGES else None


def _plain_number_text(kind: str, values: list) -> list[str | None]:
    """Doubles and integers as astropy writes them (numpy's shortest repr of a double is Python's
    ``repr``; ``.0`` dropped as astropy drops it), nulls (None, NaN) empty; without numpy scalars,
    which cost more per cell than the text. Raises on a value numpy would convert differently."""
    kinds = set(map(type, values))
    if kind == "f8" and kinds <= {float}:  # the common case, at C speed: no nulls, no infinities
        texts = list(map(float.__repr__, values))
        if "n" not in "".join(texts):  # nan and inf are the only float reprs with an "n"
            return list(map(str.removesuffix, texts, repeat(".0", len(texts))))
    elif kind != "f8" and kinds <= {int} and values:
        low, high = _INTEGER_RANGES[kind]
        if low <= min(values) and max(values) <= high:
            return list(map(int.__repr__, values))
    out: list[str | None] = []
    if kind == "f8":
        for value in values:
            if _is_null(value):
                out.append(None)
                continue
            if isinstance(value, bool | str | bytes):
                raise TypeError("not plainly a number")
            value = float(value)
            if value - value == 0:  # finite
                text = repr(value)
                out.append(text[:-2] if text.endswith(".0") else text)
            else:
                out.append("NaN" if value != value else "+InF" if value > 0 else "-InF")
        return out
    low, high = _INTEGER_RANGES[kind]
    for value in values:
        if _is_null(value):
            out.append(None)
            continue
        if not isinstance(value, int | np.integer) or isinstance(value, bool) or not low <= value <= high:
            raise TypeError("not plainly an integer")
        out.append(str(int(value)))
    return out


def _array_text(converter, data: np.ndarray, mask: np.ndarray, config: dict) -> list[str | None]:
    """A column's cells through its converter, as astropy's Python writer writes them."""
    empty = mask.reshape(len(mask), -1).all(axis=1) if mask.ndim > 1 else mask
    empty = empty.tolist() if converter.supports_empty_values(config) else [False] * len(mask)
    output = converter.output
    out: list[str | None] = []
    for row in range(len(data)):
        if empty[row]:
            out.append(None)
            continue
        text = output(data[row], mask[row])
        out.append(text if text else None)
    return out


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


class PrewrittenResource(Resource):
    """A RESOURCE written from the XML astropy wrote for it once: descriptors that are the same in
    every answer of a kind (the {links} descriptor) cost a tenth of a DataLink answer to build and
    write afresh. Only a top-level resource (document.resources) is written this way."""

    _text: str

    def to_xml(self, w, **kwargs) -> None:
        if len(w._tags) != 1:
            raise ValueError("a prewritten RESOURCE goes at the top level of a document")
        w._flush()
        w.write(self._text)


#: Prewritten resources by (VOTable version, key); a few kinds and service URLs at most.
_PREWRITTEN: dict[tuple, tuple[Resource, str]] = {}
_PREWRITTEN_MAX = 256


def prewritten(document: VOTableFile, key: tuple, build: Callable[[VOTableFile], Resource]) -> Resource:
    """The resource ``build`` makes, written once per ``key`` (everything its XML depends on) and
    given to every later document as that text."""
    cache_key = (document.version, *key)
    found = _PREWRITTEN.get(cache_key)
    if found is None:
        template = build(VOTableFile(version=document.version))
        text = io.StringIO()
        writer = XMLWriter(text)
        writer._tags.append("VOTABLE")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", VOWarning)
            template.to_xml(writer, **_writer_kwargs(document.version, None))
        writer._flush()
        if len(_PREWRITTEN) >= _PREWRITTEN_MAX:
            _PREWRITTEN.clear()
        found = _PREWRITTEN[cache_key] = (template, text.getvalue())
    template, text = found
    return _copy_of(template, PrewrittenResource, _text=text)


def serialise(document: VOTableFile, tabledata_format: str = "tabledata") -> bytes:
    """Write the document; ``tabledata_format`` is ``tabledata``, ``binary`` or ``binary2``.

    TABLEDATA goes through astropy's Python writer, not its C one: the C writer overruns its row
    buffer by one byte when a row's text fills it exactly (astropy issue 20419, open in astropy
    8.0.2), which corrupts the heap and later kills the worker at a random point. A query's rows
    are the client's to shape, so any query could trigger it. The two writers write the same bytes.

    A document with content at its top is written by the steps of astropy's VOTableFile.to_xml,
    with the version checks it would recompute on every call (a tenth of a similarity answer's
    time) made once per version; tests compare the bytes with astropy's.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VOWarning)
        if not len(document.resources):
            buffer = io.BytesIO()
            document.to_xml(buffer, tabledata_format=tabledata_format, _debug_python_based_parser=True)
            return buffer.getvalue()
        kwargs = _writer_kwargs(document.version, tabledata_format)
        text = io.StringIO()
        w = XMLWriter(text)
        head, tail = _document_frame(document.version)
        text.write(head)
        w._tags.append("VOTABLE")
        if document.description is not None:
            w.element("DESCRIPTION", document.description, wrap=True)
        element_sets = [
            document.coordinate_systems,
            document.time_systems,
            document.params,
            document.infos,
            document.resources,
            document.groups,
        ]
        for element_set in element_sets:
            for element in element_set:
                element.to_xml(w, **kwargs)
        w._flush()
        text.write(tail)
    return text.getvalue().encode("utf-8")


def _writer_kwargs(version: str, tabledata_format: str | None) -> dict:
    """What astropy's VOTableFile.to_xml passes every element it writes (the Python TABLEDATA writer)."""
    return {
        **_version_config(version),
        "version": version,
        "tabledata_format": tabledata_format,
        "_debug_python_based_parser": True,
        "_group_number": 1,
    }


@cache
def _document_frame(version: str) -> tuple[str, str]:
    """What astropy writes around a document's content: the XML declaration, its comment and the
    VOTABLE start tag; and the end tag. Taken from astropy's own writing of an empty document."""
    buffer = io.BytesIO()
    _blank_document(version).to_xml(buffer)
    empty = buffer.getvalue().decode("utf-8")
    if not empty.endswith("/>\n"):
        raise RuntimeError("astropy wrote an empty VOTABLE in an unexpected form")
    return empty[: -len("/>\n")] + ">\n", "</VOTABLE>\n"

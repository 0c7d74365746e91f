"""TAP metadata resources: ``/tap`` (HTML), ``capabilities``, ``availability``, ``tables``, ``examples``.

Everything published here is built from the same sources as the query engine: table metadata
from ``resources/tables`` (the same TableSet TAP_SCHEMA is written from, TAP-13), limits from
the configuration, examples from ``resources/tap_examples.toml`` filled with identifiers from
the archive so that every example returns rows (DALI-08).
"""

from __future__ import annotations

import html
import tomllib
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from string import Template

from flask import Response, request

from service import vosi
from service.archive import Archive
from service.errors import DALIError, NotFoundError
from service.params import request_params
from service.state import state
from service.tables import TableSet
from service.tap import schema
from service.tap.blueprint import bp
from service.votable import VOTABLE_MIME

EXAMPLES_FILE = Path(__file__).resolve().parents[2] / "resources" / "tap_examples.toml"
TAP_STANDARD = "ivo://ivoa.net/std/TAP"
TAPREGEXT = "ivo://ivoa.net/std/TAPRegExt"
XHTML_MIME = "application/xhtml+xml"

#: ADQL optional features we implement (TAP-23); forms are upper case, pyvo compares them exactly.
LANGUAGE_FEATURES: dict[str, tuple[str, ...]] = {
    f"{TAPREGEXT}#features-adqlgeo": (
        "POINT",
        "CIRCLE",
        "BOX",
        "POLYGON",
        "CONTAINS",
        "INTERSECTS",
        "DISTANCE",
        "AREA",
        "COORD1",
        "COORD2",
        "CENTROID",
    ),
    f"{TAPREGEXT}#features-adql-string": ("LOWER", "UPPER", "ILIKE"),
    f"{TAPREGEXT}#features-adql-offset": ("OFFSET",),
    f"{TAPREGEXT}#features-adql-type": ("CAST",),
    f"{TAPREGEXT}#features-adql-unit": ("IN_UNIT",),
    # COALESCE works but is not declared: #features-adql-conditional is an ADQL 2.1 key that
    # TAPRegExt-1.0 validators in the field (STILTS 3.4.7, Debian's) reject as unknown.
    f"{TAPREGEXT}#features-adql-sets": ("UNION", "EXCEPT", "INTERSECT"),
    f"{TAPREGEXT}#features-adql-common-table": ("WITH",),
}
_KNN = (
    "1 if the spectrum did is among the k spectra nearest to the spectrum ref_did in the latent "
    "space of the model in service (ref_did itself counts as the nearest), else 0. Both are "
    "obs_publisher_did values. Use it as WHERE 1 = ml_knn(obs_publisher_did, '<did>', 20): the "
    "neighbours are found once through the similarity index and the rest is an indexed lookup."
)
_DISTANCE = (
    "Euclidean distance between the latent posterior means of the spectra did and ref_did "
    "(dimensionless, prior units); NULL if either is not encoded by the model in service. "
    "Use it to order ml_knn results or to rank spectra against a reference."
)
_DEFAULT_DIMS = (
    " Distances use the model's similarity dimensions: the informative ones, without the "
    "radial-velocity dimension z0 of Doppler-equivariant models."
)
_DIMS = (
    " Only the latent dimensions listed in dims count: a space-separated list of dimension "
    "numbers such as '1 2' (the columns z1, z2 of ml.latent), for 'similar in these respects only'."
)
#: GAVO's extension keywords (as DaCHS declares them): VECTORMATH, computing with array columns.
EXTRA_KEYWORDS = "ivo://org.gavo.dc/std/exts#extra-adql-keywords"
VECTORMATH = (
    "You can compute with vectors here (the arrays ml.latent.z and ml.latent.z_var): see "
    "https://wiki.ivoa.net/twiki/bin/view/IVOA/ADQLVectorMath. Elements a[i] and slices a[lo:hi] "
    "(counted from 1, both ends included; NULL outside the array); + - * / component by component "
    "between arrays (the shorter padded with NaN) and with numbers; arr_dot(a, b), arr_count(a), "
    "arr_sum(a), arr_avg(a), arr_min(a), arr_max(a); arr_map(f(x), a) applies f to every element x; "
    "SUM, AVG, MIN, MAX of an array over rows work component by component. An ORDER BY over "
    "arr_dot(l.z - r.z, l.z - r.z) for one reference row r is answered by exact search."
)
#: User-defined functions (features-udf): form and description.
UDFS: tuple[tuple[str, str], ...] = (
    ("ml_knn(did VARCHAR, ref_did VARCHAR, k INTEGER) -> INTEGER", _KNN + _DEFAULT_DIMS),
    ("ml_knn(did VARCHAR, ref_did VARCHAR, k INTEGER, dims VARCHAR) -> INTEGER", _KNN + _DIMS),
    ("ml_distance(did VARCHAR, ref_did VARCHAR) -> DOUBLE PRECISION", _DISTANCE + _DEFAULT_DIMS),
    ("ml_distance(did VARCHAR, ref_did VARCHAR, dims VARCHAR) -> DOUBLE PRECISION", _DISTANCE + _DIMS),
)


@dataclass(frozen=True)
class OutputFormatSpec:
    mime: str
    aliases: tuple[str, ...]
    ivo_id: str | None = None


#: RESPONSEFORMAT values service.dali.output_format accepts, as TAPRegExt output formats (TAP-24).
OUTPUT_FORMATS = (
    OutputFormatSpec(VOTABLE_MIME, ("votable", "votable/td"), f"{TAPREGEXT}#output-votable-td"),
    OutputFormatSpec(
        f"{VOTABLE_MIME};serialization=binary2", ("votable/b2",), f"{TAPREGEXT}#output-votable-binary2"
    ),
    OutputFormatSpec(
        f"{VOTABLE_MIME};serialization=binary", ("votable/b",), f"{TAPREGEXT}#output-votable-binary"
    ),
    OutputFormatSpec("text/csv;header=present", ("csv",)),
    OutputFormatSpec("text/tab-separated-values", ("tsv",)),
)
#: Upload methods (TAP-25): multipart parts (param:x) and http(s) URLs (service.tap.upload).
UPLOAD_METHODS: tuple[str, ...] = (
    f"{TAPREGEXT}#upload-inline",
    f"{TAPREGEXT}#upload-http",
    f"{TAPREGEXT}#upload-https",
)


# -- capabilities and availability --------------------------------------------------------------


def tap_base() -> str:
    """The TAP base URL exactly as users type it (X-02: configured, no trailing slash)."""
    return state().url("tap")


def tap_capability(config: dict) -> ET.Element:
    """The ``tr:TableAccess`` capability (TAP-20…26), children in TAPRegExt schema order."""
    section = config["service"]
    element = vosi.capability(
        TAP_STANDARD,
        [vosi.Interface(tap_base(), use="base", role="std", version="1.1")],
        xsi_type="tr:TableAccess",
    )
    vosi.sub(element, "dataModel", "ObsCore-1.1", ivo_id="ivo://ivoa.net/std/ObsCore#core-1.1")
    language = vosi.sub(element, "language")
    vosi.sub(language, "name", "ADQL")
    vosi.sub(language, "version", "2.0", ivo_id="ivo://ivoa.net/std/ADQL#v2.0")
    vosi.sub(language, "version", "2.1", ivo_id="ivo://ivoa.net/std/ADQL#v2.1")
    vosi.sub(
        language,
        "description",
        "ADQL 2.1 (2.0 queries run unchanged) over SQLite or PostgreSQL, with geometry on the sphere, "
        "the latent-space similarity functions ml_knn and ml_distance, and vector math (VECTORMATH) "
        "on the latent vectors.",
    )
    for feature_type, forms in LANGUAGE_FEATURES.items():
        features = vosi.sub(language, "languageFeatures", type=feature_type)
        for form in forms:
            vosi.sub(vosi.sub(features, "feature"), "form", form)
    udfs = vosi.sub(language, "languageFeatures", type=f"{TAPREGEXT}#features-udf")
    for form, description in UDFS:
        feature = vosi.sub(udfs, "feature")
        vosi.sub(feature, "form", form)
        vosi.sub(feature, "description", description)
    feature = vosi.sub(vosi.sub(language, "languageFeatures", type=EXTRA_KEYWORDS), "feature")
    vosi.sub(feature, "form", "VECTORMATH")
    vosi.sub(feature, "description", VECTORMATH)
    for spec in OUTPUT_FORMATS:
        output = vosi.sub(element, "outputFormat", ivo_id=spec.ivo_id)
        vosi.sub(output, "mime", spec.mime)
        for alias in spec.aliases:
            vosi.sub(output, "alias", alias)
    for method in UPLOAD_METHODS:
        vosi.sub(element, "uploadMethod", ivo_id=method)
    _limits(element, "retentionPeriod", section["job_retention"], section["job_retention"])
    # Async jobs' limits (pyvo waits this long for a job); sync queries stop after sync_timeout.
    _limits(element, "executionDuration", section["job_duration"], section["job_max_duration"])
    _limits(element, "outputLimit", section["default_maxrec"], section["hard_maxrec"], unit="row")
    if UPLOAD_METHODS:
        vosi.sub(vosi.sub(element, "uploadLimit"), "hard", section["upload_limit"], unit="byte")
    return element


def _limits(parent: ET.Element, tag: str, default: int, hard: int, unit: str | None = None) -> None:
    limits = vosi.sub(parent, tag)
    vosi.sub(limits, "default", int(default), unit=unit)
    vosi.sub(limits, "hard", int(hard), unit=unit)


def capabilities() -> list[ET.Element]:
    """Everything /tap/capabilities lists: TAP, the VOSI endpoints and the examples (TAP-27)."""
    base = tap_base()
    found = [tap_capability(state().config), *vosi.vosi_capabilities(base, tables=True)]
    if EXAMPLES_FILE.exists():
        found.append(
            vosi.capability(vosi.DALI_EXAMPLES, [vosi.Interface(f"{base}/examples", type="vr:WebBrowser")])
        )
    return found


@bp.get("/capabilities")
def capabilities_resource() -> Response:
    return vosi.xml_response(vosi.capabilities_document(capabilities()), last_modified=vosi.STARTED)


@bp.get("/availability")
def availability_resource() -> Response:
    available, notes = vosi.probe_service()
    return vosi.xml_response(vosi.availability_document(available, notes, up_since=vosi.STARTED))


# -- tables --------------------------------------------------------------------------------------


def published_tables() -> tuple[Archive, TableSet]:
    archive = state().archive()
    return archive, schema.current_tableset(archive)


def tables_modified(archive: Archive) -> datetime:
    """Metadata changes when the process (re)loads resources/ or ``latentvo index`` rewrites TAP_SCHEMA."""
    written = schema.last_modified(archive)
    return max(vosi.STARTED, written) if written else vosi.STARTED


@bp.get("/tables")
def tables_resource() -> Response:
    """VOSI-04/05: ``detail=min`` lists tables only (pyvo then asks per table); otherwise full detail."""
    archive, tableset = published_tables()
    detail = (request_params(request).get("DETAIL") or "max").strip().lower()
    body = vosi.tableset_document(tableset, "min" if detail == "min" else "max")
    return vosi.xml_response(body, last_modified=tables_modified(archive))


@bp.get("/tables/<path:name>")
def table_resource(name: str) -> Response:
    archive, tableset = published_tables()
    table = tableset.table(name)
    if table is None:
        raise NotFoundError(f"no table {name!r}; /tap/tables lists the tables of this service")
    return vosi.xml_response(vosi.table_document(table, tableset), last_modified=tables_modified(archive))


# -- examples ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Example:
    id: str
    name: str
    description: str
    query: str
    tables: tuple[str, ...]


def load_examples(values: dict[str, str], path: Path = EXAMPLES_FILE) -> list[Example]:
    """The examples of ``path`` with ``$did``, ``$ra``… replaced by values from the archive."""
    with open(path, "rb") as handle:
        raw = tomllib.load(handle)["example"]

    def fill(text: str) -> str:
        return Template(text).substitute(values)

    return [
        Example(
            item["id"],
            fill(item["name"]),
            " ".join(fill(item.get("description", "")).split()),
            fill(item["query"]).strip(),
            tuple(item.get("tables", ())),
        )
        for item in raw
    ]


def example_values(archive: Archive) -> dict[str, str]:
    """Real identifiers for the examples: a spectrum with latents, a position, a collection, dimensions."""
    config = state().config["archive"]
    values = {
        "did": archive.did(config["default_collection"], "example"),
        "collection": config["default_collection"],
        "ra": "66.75",
        "dec": "15.87",
        "version": "0",
        "dims": "0",
        "zx": "z0",
        "zy": "z0",
        "ix": "1",
        "iy": "1",
        "did2": archive.did(config["default_collection"], "example"),
    }
    try:
        model = archive.current_model()
    except LookupError:
        model = None
    if model is not None:
        values["version"] = str(model["model_version"])
        encoded = archive.db.execute(
            "SELECT s.obs_publisher_did, s.obs_collection FROM ml_latent AS l "
            "JOIN spectrum AS s ON s.obs_publisher_did = l.obs_publisher_did "
            "WHERE l.model_version = ? ORDER BY l.row_index LIMIT 2",
            (model["model_version"],),
        ).fetchall()
        if encoded:
            values["did"], values["collection"] = encoded[0][0], encoded[0][1]
            values["did2"] = encoded[-1][0]
        dims = _label_dims(archive, model["model_version"], int(model["latent_dim"]))
        values["dims"] = " ".join(str(d) for d in dims)
        values["zx"], values["zy"] = f"z{dims[0]}", f"z{dims[-1]}"
        values["ix"], values["iy"] = str(dims[0] + 1), str(dims[-1] + 1)  # their places in the array z
    placed = archive.db.execute(
        "SELECT s_ra, s_dec FROM spectrum WHERE s_ra IS NOT NULL AND s_dec IS NOT NULL "
        "ORDER BY row_id LIMIT 1"
    ).fetchone()
    if placed is not None:
        values["ra"], values["dec"] = f"{placed[0]:.5f}", f"{placed[1]:.5f}"
    return values


def _label_dims(archive: Archive, version: int, latent_dim: int) -> list[int]:
    """The dimensions that carry most information on temperature and gravity ('similar in Teff and log g')."""
    rows = archive.db.execute(
        "SELECT label, dim FROM ml_label_correlation WHERE model_version = ? AND label IN ('teff', 'logg') "
        "AND mi IS NOT NULL ORDER BY mi DESC",
        (version,),
    ).fetchall()
    best: list[int] = []
    for label in ("teff", "logg"):
        dim = next((r[1] for r in rows if r[0] == label and r[1] not in best), None)
        if dim is not None:
            best.append(int(dim))
    if len(best) < 2:
        best = list(range(min(latent_dim, 2))) or [0]
    return sorted(best)


def examples_document(examples: list[Example]) -> bytes:
    """DALI-08 examples as XHTML with RDFa: one vocab element, typeof="example", name/query/table."""
    parts = []
    for example in examples:
        tables = ", ".join(f'<span property="table">{html.escape(t)}</span>' for t in example.tables)
        parts.append(
            f'<div typeof="example" id="{example.id}" resource="#{example.id}">\n'
            f'<h2 property="name">{html.escape(example.name)}</h2>\n'
            f"<p>{html.escape(example.description)}</p>\n"
            f'<pre property="query">{html.escape(example.query, quote=False)}</pre>\n'
            f"<p>Tables: {tables}</p>\n</div>"
        )
    title = "latentvo TAP examples"
    page = (
        '<?xml version="1.0" encoding="UTF-8"?>\n<!DOCTYPE html>\n'
        '<html xmlns="http://www.w3.org/1999/xhtml" xml:lang="en" lang="en">\n'
        f"<head><title>{title}</title></head>\n<body>\n<h1>{title}</h1>\n"
        f"<p>ADQL queries for the TAP service at {html.escape(tap_base())}: run them in TOPCAT "
        "(TAP window, Examples menu), with pyvo (TAPService.examples) or by POSTing LANG=ADQL and "
        "QUERY to /tap/sync.</p>\n"
        '<div vocab="http://www.ivoa.net/rdf/examples#">\n'
        + "\n".join(parts)
        + "\n</div>\n</body>\n</html>\n"
    )
    return page.encode()


@bp.get("/examples")
def examples_resource() -> Response:
    archive = state().archive()
    body = examples_document(load_examples(example_values(archive)))
    return Response(body, mimetype=XHTML_MIME)


# -- the human page ------------------------------------------------------------------------------


@bp.get("")
def home() -> Response:
    """TAP-01: the base URL answers with a page describing the service."""
    st = state()
    base = tap_base()
    try:
        _archive, tableset = published_tables()
        tables = "".join(
            f"<li><a href='{base}/tables/{html.escape(t.name)}'><code>{html.escape(t.name)}</code></a>: "
            f"{html.escape(t.description or '')}</li>"
            for t in tableset.tables
        )
    except DALIError as exc:
        tables = f"<li>The archive is not available: {html.escape(exc.message)}</li>"
    udfs = "".join(f"<li><code>{html.escape(form)}</code>: {html.escape(text)}</li>" for form, text in UDFS)
    links = "".join(
        f"<li><a href='{base}/{path}'>{base}/{path}</a>: {what}</li>"
        for path, what in (
            ("sync", "synchronous queries (LANG=ADQL, QUERY, MAXREC, RESPONSEFORMAT)"),
            ("tables", "table metadata (VOSI tables)"),
            ("capabilities", "service capabilities (VOSI)"),
            ("availability", "availability (VOSI)"),
            ("examples", "example queries"),
        )
    )
    title = html.escape(st.config["service"].get("title", "latentvo"))
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"/><title>{title}: TAP</title></head>
<body>
<h1>{title}: Table Access Protocol (TAP 1.1)</h1>
<p>Query the archive in ADQL. The TAP base URL for TOPCAT, pyvo or STILTS is
<code>{html.escape(base)}</code>.</p>
<ul>{links}</ul>
<h2>Tables</h2><ul>{tables}</ul>
<h2>Latent-space similarity in ADQL</h2><ul>{udfs}</ul>
</body></html>
"""
    return Response(page, mimetype="text/html")

"""VOSI and TAP metadata resources of the live service: schema-valid, truthful, usable by pyvo (VOSI-01…05,
TAP-20…27, DALI-07/08, X-01/02/06)."""

from __future__ import annotations

import re
import warnings
from email.utils import format_datetime, parsedate_to_datetime

import pytest
import pyvo
import requests
from lxml import etree

from service import create_app
from tests.conftest import small_config
from tests.xsd import validate

NS = {
    "vosi": "http://www.ivoa.net/xml/VOSICapabilities/v1.0",
    "avail": "http://www.ivoa.net/xml/VOSIAvailability/v1.0",
    "tables": "http://www.ivoa.net/xml/VOSITables/v1.0",
    "xsi": "http://www.w3.org/2001/XMLSchema-instance",
    "xhtml": "http://www.w3.org/1999/xhtml",
}
XSI_TYPE = f"{{{NS['xsi']}}}type"
TAPREGEXT = "ivo://ivoa.net/std/TAPRegExt"
#: Feature types TAPRegExt and ADQL 2.1 define (taplint errors on unknown TAPRegExt keys).
KNOWN_FEATURE_TYPES = {
    f"{TAPREGEXT}#features-{k}"
    for k in (
        "udf", "adqlgeo", "adql-string", "adql-offset", "adql-type", "adql-unit",
        "adql-conditional", "adql-sets", "adql-common-table",
    )
} | {"ivo://org.gavo.dc/std/exts#extra-adql-keywords"}  # fmt: skip
UDF_FORM = re.compile(r"^[a-z][a-z0-9_]*\((\w+ [A-Z][A-Z ]*)(, \w+ [A-Z][A-Z ]*)*\) -> [A-Z][A-Z ]*$")


def get(live_server, path: str, **params) -> requests.Response:
    response = requests.get(f"{live_server.url}{path}", params=params, timeout=60)
    assert response.status_code == 200, f"{path}: {response.status_code} {response.text[:500]}"
    return response


@pytest.fixture(scope="module")
def capabilities(live_server) -> etree._Element:
    return etree.fromstring(get(live_server, "/tap/capabilities").content)


def tap_capability(capabilities) -> etree._Element:
    (found,) = [c for c in capabilities.iter("capability") if c.get("standardID") == "ivo://ivoa.net/std/TAP"]
    return found


def sync(live_server, query: str, **params) -> requests.Response:
    return requests.post(
        f"{live_server.url}/tap/sync", data={"LANG": "ADQL", "QUERY": query, **params}, timeout=60
    )


def query_status(response: requests.Response) -> str:
    found = re.findall(rb'name="QUERY_STATUS" value="(\w+)"', response.content)
    return found[-1].decode() if found else ""


# -- schema validity -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/tap/capabilities",
        "/tap/availability",
        "/tap/tables",
        "/tap/tables?detail=min",
        "/tap/tables?detail=max",
        "/tap/tables/ivoa.obscore",
        "/tap/tables/ml.latent",
        "/tap/tables/TAP_SCHEMA.columns",
    ],
)
def test_documents_are_schema_valid_xml(live_server, path):
    """VOSI-01/03/04: what taplint's XSD stages check, against the vendored schemas (offline)."""
    response = requests.get(f"{live_server.url}{path}", timeout=60)
    assert response.status_code == 200
    assert response.headers["Content-Type"].split(";")[0] == "text/xml"
    assert validate(response.content) == []


def test_validation_catches_a_broken_document(live_server):
    """The vendored schemas really check: a capability with its children out of order is rejected."""
    document = get(live_server, "/tap/capabilities").content
    broken = document.replace(b"<dataModel", b"<outputFormat><mime>x/y</mime></outputFormat><dataModel", 1)
    assert validate(broken)
    assert validate(get(live_server, "/tap/availability").content.replace(b">true<", b">yes<"))


# -- capabilities --------------------------------------------------------------------------------


def test_one_tap_capability_at_the_configured_base_url(live_server, capabilities):
    """TAP-20, X-02: tr:TableAccess, ParamHTTP role=std version 1.1, accessURL = base URL byte for byte."""
    tap = tap_capability(capabilities)
    assert tap.get(XSI_TYPE) == "tr:TableAccess"
    (interface,) = tap.findall("interface")
    assert interface.get(XSI_TYPE) == "vs:ParamHTTP"
    assert (interface.get("role"), interface.get("version")) == ("std", "1.1")
    (url,) = interface.findall("accessURL")
    assert url.text == f"{live_server.url}/tap" and url.get("use") == "base"
    assert interface.find("securityMethod") is None
    assert capabilities.nsmap.get(None) is None  # VOSI-01: no default namespace, unqualified children
    assert all(c.tag == "capability" for c in capabilities)


def test_vosi_and_examples_capabilities(live_server, capabilities):
    """TAP-27, X-01: VOSI siblings of the TAP base with use="full"; examples as a web page."""
    found = {c.get("standardID"): c for c in capabilities.iter("capability")}
    for standard, path in (
        ("ivo://ivoa.net/std/VOSI#capabilities", "capabilities"),
        ("ivo://ivoa.net/std/VOSI#availability", "availability"),
        ("ivo://ivoa.net/std/VOSI#tables-1.1", "tables"),
    ):
        url = found[standard].find("interface/accessURL")
        assert (url.text, url.get("use")) == (f"{live_server.url}/tap/{path}", "full")
        get(live_server, f"/tap/{path}")
    examples = found["ivo://ivoa.net/std/DALI#examples"].find("interface")
    assert examples.get(XSI_TYPE) == "vr:WebBrowser"
    assert examples.findtext("accessURL") == f"{live_server.url}/tap/examples"


def test_capability_children_in_schema_order(capabilities):
    """TAP-21, TAP-22: dataModel (ObsCore 1.1) first, then languages, formats, uploads, limits."""
    order = ["interface", "dataModel", "language", "outputFormat", "uploadMethod", "retentionPeriod",
             "executionDuration", "outputLimit", "uploadLimit"]  # fmt: skip
    tags = [child.tag for child in tap_capability(capabilities)]
    assert tags == sorted(tags, key=order.index)
    (model,) = tap_capability(capabilities).findall("dataModel")
    assert (model.text, model.get("ivo-id")) == ("ObsCore-1.1", "ivo://ivoa.net/std/ObsCore#core-1.1")


def test_adql_language_and_features(capabilities):
    """TAP-23: ADQL 2.0 and 2.1 with ivo-ids; known feature types; upper-case forms; UDF forms well shaped."""
    (language,) = tap_capability(capabilities).findall("language")
    assert language.findtext("name") == "ADQL"
    versions = {v.text: v.get("ivo-id") for v in language.findall("version")}
    assert versions == {"2.0": "ivo://ivoa.net/std/ADQL#v2.0", "2.1": "ivo://ivoa.net/std/ADQL#v2.1"}
    assert language.findtext("description")
    features = {
        f.get("type"): [x.findtext("form") for x in f.findall("feature")]
        for f in language.iter("languageFeatures")
    }
    assert set(features) <= KNOWN_FEATURE_TYPES
    assert set(features[f"{TAPREGEXT}#features-adqlgeo"]) >= {"POINT", "CIRCLE", "CONTAINS", "DISTANCE"}
    for feature_type, forms in features.items():
        if feature_type.endswith("#features-udf"):
            assert all(UDF_FORM.match(form) for form in forms), forms
        else:
            assert all(form == form.upper() for form in forms)
    assert (
        "ml_knn(did VARCHAR, ref_did VARCHAR, k INTEGER) -> INTEGER" in features[f"{TAPREGEXT}#features-udf"]
    )
    for udf in language.iter("feature"):
        if udf.findtext("form").startswith("ml_"):
            assert len(udf.findtext("description")) > 80
    assert features["ivo://org.gavo.dc/std/exts#extra-adql-keywords"] == ["VECTORMATH"]


#: A query needing each declared optional feature (only what works may be declared, TAP-23).
OBSCORE = "FROM ivoa.obscore"
FEATURE_QUERIES = {
    "POINT": "SELECT TOP 1 POINT('ICRS', 10, 20) AS p FROM ivoa.obscore",
    "CIRCLE": "SELECT TOP 1 CIRCLE('ICRS', 10, 20, 1) AS c FROM ivoa.obscore",
    "BOX": f"SELECT TOP 1 obs_id {OBSCORE} WHERE 1 = CONTAINS(POINT('ICRS', 1, 2), BOX('ICRS', 1, 2, 2, 2))",
    "POLYGON": "SELECT TOP 1 POLYGON('ICRS', 9, 19, 11, 19, 11, 21, 9, 21) AS p FROM ivoa.obscore",
    "CONTAINS": f"SELECT TOP 1 CONTAINS(POINT('ICRS', 10, 20), CIRCLE('ICRS', 10, 20, 1)) AS c {OBSCORE}",
    "INTERSECTS": f"SELECT TOP 1 INTERSECTS(CIRCLE('ICRS', 1, 2, 1), CIRCLE('ICRS', 2, 2, 1)) AS i {OBSCORE}",
    "DISTANCE": "SELECT TOP 1 DISTANCE(POINT('ICRS', 0, 0), POINT('ICRS', 1, 0)) AS d FROM ivoa.obscore",
    "AREA": "SELECT TOP 1 AREA(CIRCLE('ICRS', 10, 20, 1)) AS a FROM ivoa.obscore",
    "COORD1": "SELECT TOP 1 COORD1(POINT('ICRS', 10, 20)) AS x FROM ivoa.obscore",
    "COORD2": "SELECT TOP 1 COORD2(POINT('ICRS', 10, 20)) AS y FROM ivoa.obscore",
    "CENTROID": "SELECT TOP 1 CENTROID(CIRCLE('ICRS', 10, 20, 1)) AS c FROM ivoa.obscore",
    "LOWER": "SELECT TOP 1 LOWER(obs_collection) AS c FROM ivoa.obscore",
    "UPPER": "SELECT TOP 1 UPPER(obs_collection) AS c FROM ivoa.obscore",
    "ILIKE": "SELECT TOP 1 obs_id FROM ivoa.obscore WHERE obs_collection ILIKE 'MIL%'",
    "OFFSET": "SELECT obs_id FROM ivoa.obscore ORDER BY obs_id OFFSET 5",
    "CAST": "SELECT TOP 1 CAST(em_xel AS DOUBLE PRECISION) AS n FROM ivoa.obscore",
    "IN_UNIT": "SELECT TOP 1 IN_UNIT(em_min, 'Angstrom') AS w FROM ivoa.obscore",
    "COALESCE": "SELECT TOP 1 COALESCE(target_name, obs_id) AS t FROM ivoa.obscore",
    "UNION": "SELECT obs_id FROM ivoa.obscore UNION SELECT obs_id FROM ivoa.obscore",
    "EXCEPT": "SELECT obs_id FROM ivoa.obscore EXCEPT SELECT obs_id FROM ivoa.obscore WHERE teff > 6000",
    "INTERSECT": f"SELECT obs_id {OBSCORE} INTERSECT SELECT obs_id {OBSCORE} WHERE teff > 6000",
    "WITH": "WITH t AS (SELECT obs_id FROM ivoa.obscore) SELECT TOP 3 obs_id FROM t",
    "VECTORMATH": "SELECT TOP 3 obs_publisher_did, arr_dot(z[2:3], z[2:3]) AS n2 FROM ml.latent ORDER BY n2",
}


def test_every_declared_feature_works(live_server, capabilities):
    (language,) = tap_capability(capabilities).findall("language")
    did = f"ivo://{live_server.config['archive']['authority']}/~?miles/m0005"
    for features in language.iter("languageFeatures"):
        for form in (f.findtext("form") for f in features.iter("feature")):
            if features.get("type").endswith("#features-udf"):
                name, args = form.split("(")[0], form.split("(")[1].split(")")[0].split(", ")
                values = {"did": "obs_publisher_did", "ref_did": f"'{did}'", "k": "5", "dims": "'0 1'"}
                call = f"{name}({', '.join(values[a.split()[0]] for a in args)})"
                near = f"1 = ml_knn(obs_publisher_did, '{did}', 5)"
                query = f"SELECT TOP 5 obs_id, {call} AS v {OBSCORE} WHERE {near}"
            else:
                query = FEATURE_QUERIES[form]
            response = sync(live_server, query)
            assert response.status_code == 200 and query_status(response) == "OK", (form, response.text[:400])
            assert b"<TR>" in response.content, form


def test_output_formats_work(live_server, capabilities):
    """TAP-24: each declared MIME type and alias is accepted and answered with its media type."""
    formats = tap_capability(capabilities).findall("outputFormat")
    assert {f.findtext("mime").split(";")[0] for f in formats} >= {
        "application/x-votable+xml", "text/csv", "text/tab-separated-values",
    }  # fmt: skip
    ivo_ids = {f.get("ivo-id") for f in formats}
    assert f"{TAPREGEXT}#output-votable-binary2" in ivo_ids
    for output in formats:
        mime = output.findtext("mime")
        for value in [mime, *(a.text for a in output.findall("alias"))]:
            response = sync(live_server, "SELECT TOP 2 obs_id FROM ivoa.obscore", RESPONSEFORMAT=value)
            assert response.status_code == 200, (value, response.text[:300])
            assert response.headers["Content-Type"].split(";")[0] == mime.split(";")[0], value


def test_limits_are_the_configured_ones(live_server, capabilities):
    """TAP-26: outputLimit, executionDuration (jobs), retentionPeriod, uploadLimit from the configuration."""
    section = live_server.config["service"]
    tap = tap_capability(capabilities)
    limit = tap.find("outputLimit")
    assert int(limit.findtext("default")) == section["default_maxrec"]
    assert int(limit.findtext("hard")) == section["hard_maxrec"]
    assert {e.get("unit") for e in limit} == {"row"}
    assert int(tap.findtext("executionDuration/default")) == section["job_duration"]
    assert int(tap.findtext("executionDuration/hard")) == section["job_max_duration"]
    assert int(tap.findtext("retentionPeriod/default")) == section["job_retention"]
    assert int(tap.findtext("uploadLimit/hard")) == section["upload_limit"]


def test_capabilities_headers(live_server):
    """X-06: Server header; Last-Modified with a working conditional GET; HEAD works."""
    response = get(live_server, "/tap/capabilities")
    assert "latentvo/" in response.headers["Server"]  # the dev server prepends its own name
    modified = parsedate_to_datetime(response.headers["Last-Modified"])
    again = requests.get(
        f"{live_server.url}/tap/capabilities",
        headers={"If-Modified-Since": format_datetime(modified, usegmt=True)},
        timeout=30,
    )
    assert again.status_code == 304
    head = requests.head(f"{live_server.url}/tap/capabilities", timeout=30)
    assert head.status_code == 200 and head.headers["Content-Type"].startswith("text/xml")


# -- availability --------------------------------------------------------------------------------


def test_availability_probes_archive_and_model(live_server):
    root = etree.fromstring(get(live_server, "/tap/availability").content)
    assert root.tag == f"{{{NS['avail']}}}availability"
    assert root.findtext("avail:available", namespaces=NS) == "true"
    assert root.findtext("avail:upSince", namespaces=NS).endswith("Z")
    assert "model version" in root.findtext("avail:note", namespaces=NS)


def test_availability_says_false_when_the_archive_is_missing(tmp_path):
    """DALI-07: a service without its database is up but not available, and says why."""
    app = create_app(small_config(tmp_path / "nothing-here"))
    response = app.test_client().get("/tap/availability")
    assert response.status_code == 200
    assert validate(response.data) == []
    root = etree.fromstring(response.data)
    assert root.findtext("avail:available", namespaces=NS) == "false"
    assert "does not exist" in root.findtext("avail:note", namespaces=NS)


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_availability_only_reads(live_server, method):
    """VOSI-03: anything but GET/HEAD is 405."""
    response = requests.request(method, f"{live_server.url}/tap/availability", timeout=30)
    assert response.status_code == 405
    assert "GET" in response.headers["Allow"]
    assert requests.head(f"{live_server.url}/tap/availability", timeout=30).status_code == 200


# -- tables --------------------------------------------------------------------------------------


def test_tables_detail_levels(live_server):
    """VOSI-05: detail=min has no columns or keys; max has both; the default is full detail."""
    minimal = etree.fromstring(get(live_server, "/tap/tables", detail="min").content)
    full = etree.fromstring(get(live_server, "/tap/tables", detail="max").content)
    default = etree.fromstring(get(live_server, "/tap/tables").content)
    names = [t.findtext("name") for t in minimal.iter("table")]
    assert {"ivoa.obscore", "ml.latent", "ml.label_correlation", "ml.model", "TAP_SCHEMA.columns"} <= set(
        names
    )
    assert not list(minimal.iter("column")) and not list(minimal.iter("foreignKey"))
    assert [t.findtext("name") for t in full.iter("table")] == names
    assert len(list(full.iter("column"))) == len(list(default.iter("column"))) > 100
    keys = {
        (t.findtext("name"), k.findtext("targetTable"))
        for t in full.iter("table")
        for k in t.iter("foreignKey")
    }
    assert ("ml.latent", "ivoa.obscore") in keys


def test_single_table_resource(live_server):
    root = etree.fromstring(get(live_server, "/tap/tables/ml.latent").content)
    assert root.tag == f"{{{NS['tables']}}}table"
    assert root.findtext("name") == "ml.latent"
    assert root.find("column/name").text == "obs_publisher_did"
    assert {k.findtext("targetTable") for k in root.iter("foreignKey")} == {"ivoa.obscore", "ml.model"}
    assert get(live_server, "/tap/tables/IVOA.ObsCore").status_code == 200  # names are case-insensitive


def test_unknown_table_is_404(live_server):
    response = requests.get(f"{live_server.url}/tap/tables/ivoa.nothing", timeout=30)
    assert response.status_code == 404


def test_tables_last_modified(live_server):
    response = get(live_server, "/tap/tables")
    modified = parsedate_to_datetime(response.headers["Last-Modified"])
    assert modified >= parsedate_to_datetime(get(live_server, "/tap/capabilities").headers["Last-Modified"])


# -- examples ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def examples(live_server) -> etree._Element:
    response = get(live_server, "/tap/examples")
    assert response.headers["Content-Type"].split(";")[0] in ("application/xhtml+xml", "text/html")
    return etree.fromstring(response.content)  # well-formed XML or this fails


def example_elements(examples) -> list[etree._Element]:
    return examples.xpath("//*[@typeof='example']")


def test_examples_markup(examples, db_tables):
    """DALI-08: one vocab element; each example with id, resource="#id", one name, one plain-text query."""
    assert len(examples.xpath("//*[@vocab]")) == 1
    assert examples.xpath("//*[@vocab]")[0].get("vocab") == "http://www.ivoa.net/rdf/examples#"
    found = example_elements(examples)
    assert len(found) >= 8
    ids = [e.get("id") for e in found]
    assert len(set(ids)) == len(ids)
    for element in found:
        assert element.get("resource") == f"#{element.get('id')}"
        (name,) = element.xpath(".//*[@property='name']")
        (query,) = element.xpath(".//*[@property='query']")
        assert name.text and len(name) == 0
        assert query.tag == f"{{{NS['xhtml']}}}pre" and len(query) == 0 and query.text.strip()
        tables = [t.text for t in element.xpath(".//*[@property='table']")]
        assert tables and set(tables) <= db_tables
        assert not element.xpath(".//*[@property][@href or @src]")


@pytest.fixture(scope="module")
def db_tables(live_server) -> set[str]:
    root = etree.fromstring(get(live_server, "/tap/tables", detail="min").content)
    return {t.findtext("name") for t in root.iter("table")}


def test_every_example_runs(live_server, examples):
    """Each query runs as taplint runs it (MAXREC=10); the similarity examples find neighbours.

    Like taplint, queries of TAP_UPLOAD tables are left out (test_upload runs that one with a table).
    """
    for element in example_elements(examples):
        query = element.xpath(".//*[@property='query']")[0].text
        if "TAP_UPLOAD" in query.upper():
            continue
        response = sync(live_server, query, MAXREC="10")
        assert response.status_code == 200, (element.get("id"), response.text[:500])
        assert query_status(response) in ("OK", "OVERFLOW"), element.get("id")
        if "ml_knn" in query or "label_correlation" in query or "ml.latent" in query:
            assert b"<TR>" in response.content, element.get("id")
    authority = live_server.config["archive"]["authority"]
    assert any(
        f"'ivo://{authority}/~?miles/" in e.xpath(".//*[@property='query']")[0].text
        for e in example_elements(examples)
    )


# -- pyvo ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def service(live_server) -> pyvo.dal.TAPService:
    return pyvo.dal.TAPService(f"{live_server.url}/tap")


def test_pyvo_reads_capabilities_and_limits(live_server, service):
    assert service.get_tap_capability().standardid == "ivo://ivoa.net/std/TAP"
    assert service.maxrec == live_server.config["service"]["default_maxrec"]
    assert service.hardlimit == live_server.config["service"]["hard_maxrec"]
    language = service.get_tap_capability().get_adql()
    assert language.get_udf("ML_KNN") is not None
    assert language.get_feature(f"{TAPREGEXT}#features-adqlgeo", "DISTANCE") is not None
    assert {m.ivo_id for m in service.upload_methods} >= {
        "ivo://ivoa.net/std/TAPRegExt#upload-inline",
        "ivo://ivoa.net/std/TAPRegExt#upload-http",
    }


def test_pyvo_reads_tables_min_then_per_table(service):
    """pyvo asks /tables?detail=min, then /tables/{name} for the columns of a column-less entry."""
    tables = service.tables
    assert "ivoa.obscore" in list(tables.keys())
    columns = {c.name: c for c in tables["ivoa.obscore"].columns}
    assert columns["s_ra"].unit == "deg" and columns["s_ra"].ucd == "pos.eq.ra"
    assert "obs_publisher_did" in [c.name for c in tables["ml.latent"].columns]
    assert [k.targettable for k in tables["ml.latent"].foreignkeys] == ["ivoa.obscore", "ml.model"]


def test_pyvo_runs_the_examples(service):
    examples = service.examples
    assert len(examples) >= 8
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        runnable = [e["QUERY"] for e in examples if "TAP_UPLOAD" not in e["QUERY"].upper()]  # need a table
        results = [service.run_sync(query, maxrec=10) for query in runnable]
    assert sum(len(r) for r in results) > 20


# -- the human page ------------------------------------------------------------------------------


def test_tap_base_is_a_page(live_server):
    response = get(live_server, "/tap")
    assert response.headers["Content-Type"].startswith("text/html")
    assert f"<code>{live_server.url}/tap</code>" in response.text
    assert "ml.latent" in response.text and "ml_knn" in response.text

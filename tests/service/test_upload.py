"""TAP_UPLOAD over the live server: taplint's round trip, pyvo uploads, URLs, a cross-match, the limits."""

from __future__ import annotations

import io
import time
import warnings
import xml.etree.ElementTree as ET
from contextlib import closing
from urllib.parse import quote

import numpy as np
import pytest
import requests
from astropy.io.votable import parse
from astropy.io.votable.tree import Field, Resource, TableElement, VOTableFile
from astropy.table import Table
from pyvo.dal import DALQueryError, TAPService

from tests.conftest import SKY_WRAP

pytestmark = pytest.mark.filterwarnings("ignore::astropy.units.UnitsWarning")

UWS = "{http://www.ivoa.net/xml/UWS/v1.0}"
ROWS = 23
#: taplint's upload table (UploadStage): name, datatype, arraysize, xtype.
COLUMNS = (
    ("d_short", "short", None, None),
    ("d_int", "int", None, None),
    ("d_long", "long", None, None),
    ("d_float", "float", None, None),
    ("d_double", "double", None, None),
    ("d_char", "char", "1", None),
    ("d_string", "char", "*", None),
    ("d_time", "char", "*", "timestamp"),
)


def values(i: int) -> tuple:
    """Row i of the round-trip table; the last row is all nulls (empty strings for text)."""
    if i == ROWS - 1:
        return (None,) * 5 + ("", "", "")
    return (
        i - 11,
        i * 100_003,
        i * 10_000_000_019,
        i / 8 - 1.25,
        i / 3 - 2.0,
        chr(ord("a") + i),
        f"string {i} with <markup> & 'quotes'",
        f"2015-0{1 + i % 9}-{1 + i:02d}T{i % 24:02d}:30:{i:02d}" + (".5" if i % 2 else ""),
    )


def round_trip_votable(serialization: str) -> bytes:
    """A VOTable 1.2 like taplint's: 23 rows of every scalar type and a timestamp, nulls in the last."""
    document = VOTableFile(version="1.2")
    resource = Resource()
    document.resources.append(resource)
    table = TableElement(document)
    resource.tables.append(table)
    for name, datatype, arraysize, xtype in COLUMNS:
        field = Field(document, name=name, datatype=datatype, arraysize=arraysize, xtype=xtype)
        if datatype in ("short", "int", "long"):
            field.values.null = -99  # BINARY needs a null value for integers
        table.fields.append(field)
    table.create_arrays(ROWS)
    for i in range(ROWS):
        row = values(i)
        table.array[i] = tuple(0 if v is None else v for v in row)
        table.array.mask[i] = tuple(v is None for v in row)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        document.to_xml(buffer, tabledata_format=serialization)
    return buffer.getvalue()


def sync_post(server, data: dict, files: dict | None = None) -> requests.Response:
    return requests.post(f"{server.url}/tap/sync", data={"LANG": "ADQL", **data}, files=files, timeout=60)


def result_table(response: requests.Response) -> TableElement:
    assert response.status_code == 200, response.text[:500]
    return parse(io.BytesIO(response.content)).get_first_table()


def error_text(response: requests.Response) -> str:
    status = parse(io.BytesIO(response.content)).resources[0].infos[0]
    assert status.name == "QUERY_STATUS" and status.value == "ERROR"
    return status.content


def check_round_trip(table: TableElement) -> None:
    """What taplint compares: names, datatypes, xtype, and every cell (timestamps in DALI form)."""
    assert [f.name for f in table.fields] == [c[0] for c in COLUMNS]
    assert [f.datatype for f in table.fields] == [c[1] for c in COLUMNS]
    assert table.get_field_by_id_or_name("d_time").xtype == "timestamp"
    assert len(table.array) == ROWS
    for i in range(ROWS):
        expected = values(i)
        for j, (name, *_rest) in enumerate(COLUMNS):
            got = table.array[name][i]
            masked = bool(np.ma.getmaskarray(table.array[name])[i])
            if expected[j] is None:
                assert masked, (i, name)
            elif isinstance(expected[j], float):
                assert not masked and float(got) == pytest.approx(expected[j], rel=1e-7), (i, name, got)
            else:
                assert (got if not masked else "") == expected[j], (i, name, got)


# -- taplint's round trip (TAP-07) ---------------------------------------------------------------


@pytest.mark.parametrize("serialization", ["tabledata", "binary", "binary2"])
def test_round_trip_sync(live_server, serialization):
    table = round_trip_votable(serialization)
    response = sync_post(
        live_server,
        {"QUERY": "SELECT * FROM TAP_UPLOAD.t1", "UPLOAD": "t1,param:t1"},
        files={"t1": ("t1.vot", table, "application/x-votable+xml")},
    )
    check_round_trip(result_table(response))


def test_round_trip_async_with_the_upload_by_reference(live_server):
    """TAP-07/UWS-06: an inline upload is kept with the job; the job document shows it by reference."""
    table = round_trip_votable("binary")
    response = requests.post(
        f"{live_server.url}/tap/async",
        data={"LANG": "ADQL", "QUERY": "SELECT * FROM TAP_UPLOAD.t1", "UPLOAD": "t1,param:upfile"},
        files={"upfile": ("t1.vot", table, "application/x-votable+xml")},
        allow_redirects=False,
        timeout=60,
    )
    assert response.status_code == 303
    url = response.headers["Location"]
    job = ET.fromstring(requests.get(url, timeout=30).content)
    (parameter,) = [p for p in job.find(f"{UWS}parameters") if p.get("id") == "UPLOAD"]
    assert parameter.get("byReference") == "true"
    assert parameter.text == f"{url}/uploads/t1"
    assert requests.get(parameter.text, timeout=30).content == table
    requests.post(f"{url}/phase", data={"PHASE": "RUN"}, timeout=30)
    deadline = time.monotonic() + 60
    while requests.get(f"{url}/phase", timeout=30).text not in ("COMPLETED", "ERROR", "ABORTED"):
        assert time.monotonic() < deadline
        requests.get(url, params={"WAIT": "5"}, timeout=30)
    check_round_trip(result_table(requests.get(f"{url}/results/result", timeout=30)))
    requests.delete(url, timeout=30)
    assert requests.get(parameter.text, timeout=30).status_code == 404


# -- pyvo --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tap(live_server) -> TAPService:
    return TAPService(f"{live_server.url}/tap")


def stars(live_server) -> Table:
    """Three archive DIDs with a label, as an astropy table (what a user uploads from pyvo)."""
    response = sync_post(
        live_server,
        {
            "QUERY": "SELECT TOP 3 obs_publisher_did FROM ivoa.obscore ORDER BY obs_publisher_did",
            "FORMAT": "csv",
        },
    )
    dids = response.text.splitlines()[1:]
    return Table({"did": dids, "label": ["a", "b", "c"], "weight": [1.5, 2.5, np.nan]})


def test_pyvo_run_sync_with_upload_joins_archive_tables(live_server, tap):
    uploaded = stars(live_server)
    result = tap.run_sync(
        "SELECT u.label, u.weight, o.obs_publisher_did, o.teff FROM TAP_UPLOAD.mine AS u "
        "JOIN ivoa.obscore AS o ON o.obs_publisher_did = u.did ORDER BY u.label",
        uploads={"mine": uploaded},
    )
    assert list(result["label"]) == ["a", "b", "c"]
    assert list(result["obs_publisher_did"]) == list(uploaded["did"])
    assert result["weight"][0] == 1.5 and np.ma.is_masked(result["weight"][2])
    assert "teff" in result.fieldnames


def test_pyvo_run_async_with_two_uploads(live_server, tap):
    """pyvo packs both into one UPLOAD parameter: ``a,param:a;b,param:b``."""
    uploaded = stars(live_server)
    other = Table({"label": ["b", "c", "z"], "rank": np.array([2, 3, 26], dtype=np.int16)})
    result = tap.run_async(
        "SELECT a.label, b.rank FROM TAP_UPLOAD.a AS a JOIN TAP_UPLOAD.b AS b ON a.label = b.label "
        "ORDER BY b.rank",
        uploads={"a": uploaded, "b": other},
    )
    assert list(result["label"]) == ["b", "c"] and list(result["rank"]) == [2, 3]


def test_uploads_are_visible_to_their_query_only(live_server, tap):
    """TAP-07: never in TAP_SCHEMA, gone after the query."""
    uploaded = stars(live_server)
    result = tap.run_sync(
        "SELECT COUNT(*) AS n FROM TAP_SCHEMA.tables "
        "WHERE schema_name = 'TAP_UPLOAD' OR table_name LIKE '%t1%'",
        uploads={"t1": uploaded},
    )
    assert int(result["n"][0]) == 0
    with pytest.raises(DALQueryError, match="t1"):
        tap.run_sync("SELECT * FROM TAP_UPLOAD.t1")


# -- URLs, names, odd columns --------------------------------------------------------------------


def allow_urls(monkeypatch, server, *entries: str) -> None:
    """Let uploads be fetched from these non-public hosts (``[service] upload_url_allow``)."""
    monkeypatch.setitem(server.config["service"], "upload_url_allow", list(entries))


def test_upload_by_url_of_the_service_itself(live_server, monkeypatch):
    """DALI-04 http: the table is fetched from a URL (here a /tap/sync query of this very service, on a
    loopback address the operator has allowed)."""
    allow_urls(monkeypatch, live_server, "127.0.0.1")
    query = "SELECT TOP 4 obs_publisher_did, teff FROM ivoa.obscore ORDER BY obs_publisher_did"
    source = f"{live_server.url}/tap/sync?LANG=ADQL&QUERY={quote(query)}"
    response = sync_post(
        live_server,
        {
            "QUERY": "SELECT COUNT(*) AS n, MAX(teff) AS hottest FROM TAP_UPLOAD.remote",
            "UPLOAD": f"remote,{source}",
        },
    )
    table = result_table(response)
    assert int(table.array["n"][0]) == 4


def test_several_upload_parameters_accumulate(live_server):
    first = round_trip_votable("tabledata")
    response = sync_post(
        live_server,
        {
            "QUERY": "SELECT COUNT(*) AS n FROM TAP_UPLOAD.one AS a "
            "JOIN TAP_UPLOAD.two AS b ON a.d_int = b.d_int",
            "UPLOAD": ["one,param:x", "two,param:y"],
        },
        files={"x": ("x.vot", first), "y": ("y.vot", first)},
    )
    assert int(result_table(response).array["n"][0]) == ROWS - 1  # the null row joins nothing


@pytest.mark.filterwarnings("ignore::astropy.io.votable.exceptions.W03")  # IDs made from odd names
def test_odd_column_names_are_delimited_identifiers(live_server):
    odd = Table({"RA (deg)": [10.0, 20.0], "select": [1, 2], "Name": ["x", "y"]})
    buffer = io.BytesIO()
    odd.write(buffer, format="votable")
    response = sync_post(
        live_server,
        {
            "QUERY": 'SELECT "RA (deg)", "select", name FROM TAP_UPLOAD.odd WHERE "select" = 2',
            "UPLOAD": "odd,param:f",
        },
        files={"f": ("odd.vot", buffer.getvalue())},
    )
    table = result_table(response)
    assert [f.name.lower() for f in table.fields] == ["ra (deg)", "select", "name"]
    ra, selected, name = (table.array[key][0] for key in table.array.dtype.names)
    assert (ra, selected, name) == (20.0, 2, "y")


def test_crossmatch_example_with_an_uploaded_source_list(sky_server):
    """The upload example of /tap/examples: a cone cross-match of a source list against ivoa.obscore."""
    examples = ET.fromstring(requests.get(f"{sky_server.url}/tap/examples", timeout=30).content)
    xhtml = "{http://www.w3.org/1999/xhtml}"
    (example,) = [e for e in examples.iter() if e.get("id") == "upload-crossmatch"]
    query = next(e for e in example.iter(f"{xhtml}pre") if e.get("property") == "query").text
    sources = Table(
        {
            "src_name": ["A", "B", "C"],
            "ra": [150.0, 0.0, 10.0],
            "dec": [2.0, SKY_WRAP[0][1], 80.0],
        }
    )
    result = TAPService(f"{sky_server.url}/tap").run_sync(query, uploads={"sources": sources})
    names = list(result["src_name"])
    assert names.count("A") == 4 and names.count("B") == 2 and "C" not in names
    assert all(d <= 0.01 for d in result["dist_deg"])


# -- errors and limits -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "upload, expected",
    [
        ("1table,param:f", "not allowed"),
        ("t-1,param:f", "not allowed"),
        ("t1", "unsupported URI"),
        ("t1,ftp://example.org/t.vot", "unsupported URI"),
        ("t1,param:missing", "no multipart part named 'missing'"),
        ("t1,param:f;T1,param:f", "given twice"),
    ],
)
def test_bad_upload_parameters_are_usage_errors(live_server, upload, expected):
    response = sync_post(
        live_server,
        {"QUERY": "SELECT * FROM TAP_UPLOAD.t1", "UPLOAD": upload},
        files={"f": ("t.vot", round_trip_votable("tabledata"))},
    )
    assert response.status_code == 400
    assert expected in error_text(response)


def test_unreadable_and_unreachable_uploads(live_server, monkeypatch):
    allow_urls(monkeypatch, live_server, "127.0.0.0/8")
    response = sync_post(
        live_server,
        {"QUERY": "SELECT * FROM TAP_UPLOAD.t1", "UPLOAD": "t1,param:f"},
        files={"f": ("t.vot", b"this is not a VOTable")},
    )
    assert response.status_code == 400 and "not a readable VOTable" in error_text(response)
    missing = f"{live_server.url}/tap/no-such-table.vot"
    response = sync_post(live_server, {"QUERY": "SELECT * FROM TAP_UPLOAD.t1", "UPLOAD": f"t1,{missing}"})
    assert response.status_code == 400 and "HTTP 404" in error_text(response)


def test_upload_limit(live_server, monkeypatch):
    """DALI-04/TAP-26: beyond uploadLimit (capabilities) the request is refused with a clear message."""
    table = round_trip_votable("tabledata")
    capabilities = requests.get(f"{live_server.url}/tap/capabilities", timeout=30).text
    assert f'<hard unit="byte">{live_server.config["service"]["upload_limit"]}</hard>' in capabilities
    monkeypatch.setitem(live_server.config["service"], "upload_limit", len(table) - 1)
    data = {"QUERY": "SELECT * FROM TAP_UPLOAD.t1", "UPLOAD": "t1,param:f"}
    response = sync_post(live_server, data, files={"f": ("t.vot", table)})
    assert response.status_code == 413
    assert f"upload limit of {len(table) - 1} bytes" in error_text(response)
    response = requests.post(
        f"{live_server.url}/tap/async",
        data={"LANG": "ADQL", **data},
        files={"f": ("t.vot", table)},
        allow_redirects=False,
        timeout=30,
    )
    assert response.status_code == 413
    monkeypatch.setitem(live_server.config["service"], "upload_limit", len(table))
    assert sync_post(live_server, data, files={"f": ("t.vot", table)}).status_code == 200


def test_capabilities_declare_uploads(live_server, tap):
    """TAP-25: inline and http (and https) upload methods, as pyvo reads them."""
    methods = {m.ivo_id for m in tap.upload_methods}
    base = "ivo://ivoa.net/std/TAPRegExt#upload-"
    assert {base + "inline", base + "http"} <= methods


def test_a_kept_connection_carries_nothing_of_one_request_into_the_next(client):
    """Each thread keeps its archive connection between requests; an upload's TEMP table and the
    transaction that filled it end with the request that made them, whatever the next one asks."""
    from service.state import ServiceState

    files = {"t1": (io.BytesIO(round_trip_votable("tabledata")), "t1.xml")}
    data = {"LANG": "ADQL", "QUERY": "SELECT COUNT(*) AS n FROM TAP_UPLOAD.t1", "UPLOAD": "t1,param:t1"}
    assert client.post("/tap/sync", data={**data, **files}).status_code == 200
    service = client.application.extensions["latentvo"]
    assert isinstance(service, ServiceState)
    kept = service._connections.held.archive
    assert kept.db.connection.execute("SELECT COUNT(*) FROM temp.sqlite_master").fetchone()[0] == 0
    assert not kept.db.connection.in_transaction
    again = client.post("/tap/sync", data={"LANG": "ADQL", "QUERY": "SELECT * FROM TAP_UPLOAD.t1"})
    assert again.status_code == 400 and b"t1" in again.data
    assert service._connections.held.archive is kept  # the same connection served both


def test_a_replaced_archive_file_is_opened_afresh(tmp_path, live_server):
    """A database file replaced under a running server (a rebuilt archive: another inode) is read
    from the next request on, not from the connection kept to the old file."""
    import copy
    import shutil
    import sqlite3

    from service.app import create_app

    root = tmp_path / "archive"
    shutil.copytree(live_server.config["archive"]["root"], root)
    config = copy.deepcopy(live_server.config)
    config["archive"]["root"] = str(root)
    client = create_app(config).test_client()
    count = {"LANG": "ADQL", "QUERY": "SELECT COUNT(*) AS n FROM ivoa.obscore", "RESPONSEFORMAT": "csv"}
    before = int(client.get("/tap/sync", query_string=count).data.split()[-1])
    database = root / config["archive"]["database"]
    rebuilt = root / "rebuilt.sqlite"
    with closing(sqlite3.connect(database)) as source, closing(sqlite3.connect(rebuilt)) as target:
        source.backup(target)
        target.execute("PRAGMA foreign_keys=OFF")
        target.execute("DELETE FROM spectrum WHERE row_id % 2 = 0")
        target.commit()
    rebuilt.replace(database)
    after = int(client.get("/tap/sync", query_string=count).data.split()[-1])
    assert before > after > 0

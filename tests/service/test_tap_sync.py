"""TAP /tap/sync over the live server, read by real clients: pyvo, requests, astropy, the csv module."""

from __future__ import annotations

import csv
import io
import re
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import requests
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io.votable import parse
from pyvo.dal import DALQueryError, TAPService

from model.api import LatentModel
from service import create_app
from service.archive import Archive
from service.state import state
from service.tables import load_tableset
from service.tap.adql import translate
from service.tap.schema import current_tableset
from service.tap.sync import ModelSimilarity
from service.votable import VOTABLE_MIME
from tests.conftest import small_config

pytestmark = pytest.mark.filterwarnings("ignore::astropy.units.UnitsWarning")

FIRST_FIVE = "SELECT TOP 5 obs_publisher_did, target_name, teff FROM ivoa.obscore ORDER BY obs_publisher_did"


@pytest.fixture(scope="module")
def tap(live_server) -> TAPService:
    return TAPService(live_server.url + "/tap")


@pytest.fixture(scope="module")
def sync_url(live_server) -> str:
    return live_server.url + "/tap/sync"


@pytest.fixture(scope="module")
def model(live_server):
    """The model version in service, loaded independently of the server, with its DIDs in row order."""
    archive = Archive.from_config(live_server.config, readonly=True)
    version = archive.current_model()["model_version"]
    found = SimpleNamespace(
        version=version, model=LatentModel(archive.model_dir(version)), dids=archive.latent_dids(version)
    )
    spectra = {r["obs_publisher_did"]: dict(r) for r in archive.spectra()}
    archive.close()
    found.spectra = spectra
    return found


@pytest.fixture(scope="module")
def limited(live_server):
    """A second app on the same archive with tiny limits: 2 rows by default, 4 at most, 0.3 s per query."""
    config = small_config(
        Path(live_server.config["archive"]["root"]),
        service={"base_url": live_server.url, "default_maxrec": 2, "hard_maxrec": 4, "sync_timeout": 0.3},
    )
    return create_app(config).test_client()


def votable(content: bytes):
    return parse(io.BytesIO(content))


def status(document) -> tuple[str, str | None]:
    """QUERY_STATUS value and text of the results resource (the INFO before the TABLE)."""
    resource = next(r for r in document.resources if r.type == "results")
    found = next(i for i in resource.infos if i.name == "QUERY_STATUS")
    return found.value, found.content


def assert_error(response: requests.Response, *fragments: str, code: int = 400) -> str:
    """A DALI error document (X-13): status, VOTable type, QUERY_STATUS=ERROR, a message, no TABLE."""
    assert response.status_code == code, response.text[:500]
    assert response.headers["Content-Type"].split(";")[0] == VOTABLE_MIME
    document = votable(response.content)
    value, message = status(document)
    assert value == "ERROR" and message
    assert not list(document.iter_tables())
    for fragment in fragments:
        assert fragment.lower() in message.lower(), message
    return message


# -- queries through pyvo ------------------------------------------------------------------------


def test_pyvo_cone_search(tap, model):
    query = (
        "SELECT obs_publisher_did, s_ra, s_dec FROM ivoa.obscore "
        "WHERE 1 = CONTAINS(POINT('ICRS', s_ra, s_dec), CIRCLE('ICRS', 10.0, 20.0, 5.0))"
    )
    result = tap.run_sync(query)
    placed = [s for s in model.spectra.values() if s["s_ra"] is not None]
    centre = SkyCoord(10 * u.deg, 20 * u.deg)
    expected = {
        s["obs_publisher_did"]
        for s in placed
        if SkyCoord(s["s_ra"] * u.deg, s["s_dec"] * u.deg).separation(centre).deg <= 5.0
    }
    assert set(result["obs_publisher_did"]) == expected
    assert [f.name for f in result.fielddescs] == ["obs_publisher_did", "s_ra", "s_dec"]
    assert result.query_status == "OK"


def test_geometry_values_are_dali(tap):
    result = tap.run_sync(
        "SELECT TOP 1 POINT('ICRS', 10, 20) AS p, CIRCLE(10, 20, 1) AS c, "
        "DISTANCE(POINT(10, 20), POINT(11, 21)) AS d, AREA(CIRCLE(0, 0, 1)) AS a FROM ivoa.obscore"
    )
    fields = {f.name: f for f in result.fielddescs}
    assert (fields["p"].xtype, fields["p"].datatype, fields["p"].arraysize) == ("point", "double", "2")
    assert (fields["c"].xtype, fields["c"].arraysize) == ("circle", "3")
    row = result.to_table()[0]
    assert list(row["p"]) == [10.0, 20.0] and list(row["c"]) == [10.0, 20.0, 1.0]
    expected = SkyCoord(10 * u.deg, 20 * u.deg).separation(SkyCoord(11 * u.deg, 21 * u.deg)).deg
    assert row["d"] == pytest.approx(expected, rel=1e-12)
    assert row["a"] == pytest.approx(2 * np.pi * (1 - np.cos(np.radians(1))) * (180 / np.pi) ** 2, rel=1e-12)


def test_join_obscore_and_latent(tap, model):
    result = tap.run_sync(
        "SELECT TOP 5 o.obs_publisher_did, o.target_name, l.z0, l.z3 AS third "
        "FROM ivoa.obscore AS o JOIN ml.latent AS l ON o.obs_publisher_did = l.obs_publisher_did "
        f"WHERE l.model_version = {model.version} ORDER BY o.obs_publisher_did DESC"
    ).to_table()
    assert list(result.colnames) == ["obs_publisher_did", "target_name", "z0", "third"]
    assert list(result["obs_publisher_did"]) == sorted(model.dids, reverse=True)[:5]
    rows = [model.dids.index(d) for d in result["obs_publisher_did"]]
    assert np.allclose(result["z0"], model.model.latents[rows, 0], rtol=0, atol=1e-6)
    assert np.allclose(result["third"], model.model.latents[rows, 3], rtol=0, atol=1e-6)
    assert list(result["target_name"]) == [
        model.spectra[d]["target_name"] for d in result["obs_publisher_did"]
    ]


def test_ml_knn_gives_the_model_neighbours(tap, model):
    ref = model.dids[7]
    rows, _ = model.model.neighbours(row=7, k=6)
    expected = {model.dids[r] for r in rows}
    query = (
        "SELECT o.obs_publisher_did FROM ivoa.obscore AS o "
        f"WHERE 1 = ml_knn(o.obs_publisher_did, '{ref}', 6) AND o.obs_collection = 'miles'"
    )
    assert set(tap.run_sync(query)["obs_publisher_did"]) == expected
    rows, _ = model.model.neighbours(row=7, k=4, dims=[0, 2])
    chosen = (
        "SELECT obs_publisher_did, ml_knn(obs_publisher_did, '{ref}', 4, '{dims}') AS near FROM ivoa.obscore"
    )
    for dims in ("0 2", "0,2"):
        table = tap.run_sync(chosen.format(ref=ref, dims=dims), maxrec=1000).to_table()
        assert {d for d, near in zip(table["obs_publisher_did"], table["near"], strict=True) if near} == {
            model.dids[r] for r in rows
        }
    # Per row, when the reference comes from the data: every spectrum has k neighbours (itself included).
    per_row = (
        "SELECT COUNT(*) AS n FROM ivoa.obscore AS r, ivoa.obscore AS o "
        "WHERE r.obs_publisher_did IN ('{0}', '{1}') "
        "AND 1 = ml_knn(o.obs_publisher_did, r.obs_publisher_did, 3)"
    )
    assert tap.run_sync(per_row.format(model.dids[0], model.dids[1]))["n"][0] == 6


def test_ml_knn_in_where_uses_the_did_index(live_server, model):
    """ADQL-05: with literal arguments the neighbours are found once and the DID index does the rest."""
    query = f"SELECT obs_id FROM ivoa.obscore WHERE 1 = ml_knn(obs_publisher_did, '{model.dids[0]}', 5)"
    with live_server.app.app_context():
        archive = state().archive()
        translation = translate(query, current_tableset(archive), 100, ModelSimilarity())
        plan = " ".join(
            row[-1] for row in archive.db.connection.execute("EXPLAIN QUERY PLAN " + translation.sql)
        )
    assert "ml_knn" not in translation.sql.lower()
    assert "USING INDEX sqlite_autoindex_spectrum" in plan


def test_ml_distance_is_the_latent_distance(tap, model):
    ref, others = model.dids[3], model.dids[10:14]
    dims = model.model.similarity_dims
    listed = ", ".join(f"'{d}'" for d in others)
    result = tap.run_sync(
        f"SELECT obs_publisher_did, ml_distance(obs_publisher_did, '{ref}') AS d, "
        f"ml_distance(obs_publisher_did, '{ref}', '1 4') AS d14 "
        f"FROM ivoa.obscore WHERE obs_publisher_did IN ({listed}) ORDER BY obs_publisher_did"
    ).to_table()
    latents = np.asarray(model.model.latents, dtype=np.float64)
    for did, d, d14 in zip(result["obs_publisher_did"], result["d"], result["d14"], strict=True):
        diff = latents[model.dids.index(did)] - latents[3]
        assert d == pytest.approx(np.sqrt(np.sum(diff[dims] ** 2)), rel=1e-12)
        assert d14 == pytest.approx(np.hypot(diff[1], diff[4]), rel=1e-12)
    # The index's own distances (float32) agree with ml_distance.
    rows, distances = model.model.neighbours(row=3, k=3)
    near = ", ".join(f"'{model.dids[r]}'" for r in rows)
    table = tap.run_sync(
        f"SELECT obs_publisher_did, ml_distance(obs_publisher_did, '{ref}') AS d FROM ivoa.obscore "
        f"WHERE obs_publisher_did IN ({near}) ORDER BY d"
    ).to_table()
    assert np.allclose(table["d"], distances, rtol=1e-6, atol=1e-7)
    unknown = tap.run_sync(
        f"SELECT TOP 1 ml_distance('ivo://nowhere/x', '{ref}') AS d FROM ivoa.obscore"
    ).to_table()
    assert np.ma.is_masked(unknown["d"][0])


def test_ml_knn_with_unknown_reference_is_a_clear_error(tap, sync_url):
    query = (
        "SELECT obs_publisher_did FROM ivoa.obscore WHERE 1 = ml_knn(obs_publisher_did, 'ivo://nowhere/x', 5)"
    )
    with pytest.raises(DALQueryError, match="unknown reference DID 'ivo://nowhere/x'"):
        tap.run_sync(query)
    assert_error(requests.post(sync_url, data={"LANG": "ADQL", "QUERY": query}), "ivo://nowhere/x")


def test_field_metadata_comes_from_tap_schema(tap, model):
    result = tap.run_sync("SELECT TOP 1 s_ra, em_min AS wl, obs_publisher_did, 2 * teff FROM ivoa.obscore")
    fields = result.fielddescs
    assert [f.name for f in fields] == ["s_ra", "wl", "obs_publisher_did", "expr"]
    obscore = load_tableset(model.model.latent_dim).table("ivoa.obscore")
    for field, name in zip(fields[:3], ("s_ra", "em_min", "obs_publisher_did"), strict=True):
        meta = obscore.column(name)
        assert (field.datatype, field.unit and str(field.unit), field.ucd, field.utype) == (
            meta.datatype,
            meta.unit,
            meta.ucd,
            meta.utype,
        )
    assert (fields[3].datatype, fields[3].ucd) == ("double", None)


def test_tap_schema_is_queryable(tap):
    for table in ("schemas", "tables", "columns", "keys", "key_columns"):
        assert tap.run_sync(f"SELECT COUNT(*) AS nr FROM TAP_SCHEMA.{table}")["nr"][0] > 0
    sizes = tap.run_sync(
        "SELECT column_name, \"size\", arraysize FROM TAP_SCHEMA.columns WHERE table_name = 'ivoa.obscore'"
    ).to_table()
    assert "size" in sizes.colnames and len(sizes) > 20


def test_timestamps_are_dali(tap):
    created = tap.run_sync("SELECT created FROM ml.model")
    assert created.fielddescs[0].xtype == "timestamp"
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?", str(v)) for v in created["created"])


# -- protocol rules --------------------------------------------------------------------------------


def test_get_and_post_agree(sync_url):
    params = {"LANG": "ADQL", "QUERY": FIRST_FIVE}
    got, posted = requests.get(sync_url, params=params), requests.post(sync_url, data=params)
    assert got.status_code == posted.status_code == 200
    assert got.headers["Content-Type"] == posted.headers["Content-Type"] == VOTABLE_MIME
    first, second = votable(got.content).get_first_table(), votable(posted.content).get_first_table()
    assert list(first.array["obs_publisher_did"]) == list(second.array["obs_publisher_did"])
    assert len(first.array) == 5


def test_maxrec_overflow(tap, sync_url):
    result = tap.run_sync("SELECT obs_publisher_did FROM ivoa.obscore", maxrec=3)
    assert len(result) == 3 and result.query_status == "OVERFLOW"
    response = requests.post(
        sync_url, data={"LANG": "ADQL", "QUERY": "SELECT obs_id FROM ivoa.obscore", "MAXREC": "3"}
    )
    assert re.search(
        rb'<INFO name="QUERY_STATUS" value="OVERFLOW"/>\s*(<INFO[^>]*/>\s*)*<TABLE', response.content
    )
    assert len(votable(response.content).get_first_table().array) == 3


def test_top_against_maxrec(tap):
    ten = tap.run_sync("SELECT TOP 10 obs_id FROM ivoa.obscore", maxrec=5)
    assert len(ten) == 5 and ten.query_status == "OVERFLOW"
    five = tap.run_sync("SELECT TOP 5 obs_id FROM ivoa.obscore", maxrec=10)
    assert len(five) == 5 and five.query_status == "OK"
    exact = tap.run_sync("SELECT TOP 5 obs_id FROM ivoa.obscore", maxrec=5)
    assert len(exact) == 5 and exact.query_status == "OK"


def test_maxrec_zero_gives_metadata_only(sync_url):
    response = requests.get(sync_url, params={"LANG": "ADQL", "QUERY": FIRST_FIVE, "MAXREC": "0"})
    document = votable(response.content)
    table = document.get_first_table()
    assert [f.name for f in table.fields] == ["obs_publisher_did", "target_name", "teff"]
    assert len(table.array) == 0 and status(document)[0] == "OVERFLOW"


def test_unknown_and_legacy_parameters_are_ignored(sync_url):
    plain = requests.post(sync_url, data={"LANG": "ADQL", "QUERY": FIRST_FIVE})
    extra = requests.post(
        sync_url, data={"lang": "ADQL", "query": FIRST_FIVE, "DUMMY": "ignore-me", "REQUEST": "doQuery"}
    )
    assert extra.status_code == 200 and extra.content == plain.content


@pytest.mark.parametrize("lang", ["ADQL", "ADQL-2.0", "ADQL-2.1", "adql-2.1"])
def test_lang_variants(sync_url, lang):
    response = requests.get(sync_url, params={"LANG": lang, "QUERY": FIRST_FIVE})
    assert response.status_code == 200
    assert len(votable(response.content).get_first_table().array) == 5


@pytest.mark.parametrize(
    ("params", "fragments"),
    [
        ({"LANG": "OOBLECK", "QUERY": FIRST_FIVE}, ["unknown query language", "OOBLECK"]),
        ({"LANG": "ADQL", "QUERY": "DUFF QUERY"}, ["DUFF QUERY"]),
        ({"QUERY": FIRST_FIVE}, ["LANG"]),
        ({"LANG": "ADQL"}, ["QUERY"]),
        ({"LANG": "ADQL", "QUERY": "SELECT obs_id FROM ivoa.nowhere"}, ["ivoa.nowhere"]),
        ({"LANG": "ADQL", "QUERY": "SELECT no_such_col FROM ivoa.obscore"}, ["no_such_col"]),
        ({"LANG": "ADQL", "QUERY": "SELECT obs_id FROM spectrum"}, ["unknown table 'spectrum'"]),
        ({"LANG": "ADQL", "QUERY": "SELECT obs_id FROM ivoa.obscore WHERE"}, ["syntax error"]),
        ({"LANG": "ADQL", "QUERY": FIRST_FIVE, "MAXREC": "many"}, ["MAXREC"]),
        ({"LANG": "ADQL", "QUERY": FIRST_FIVE, "MAXREC": "-1"}, ["MAXREC"]),
        (
            {"LANG": "ADQL", "QUERY": FIRST_FIVE, "RESPONSEFORMAT": "application/x-unknown"},
            ["RESPONSEFORMAT"],
        ),
    ],
)
def test_usage_errors_are_error_documents(sync_url, params, fragments):
    assert_error(requests.post(sync_url, data=params), *fragments)
    assert_error(requests.get(sync_url, params=params), *fragments)


def test_pyvo_reports_query_errors(tap):
    with pytest.raises(DALQueryError, match="unknown column 'no_such_col'"):
        tap.run_sync("SELECT no_such_col FROM ivoa.obscore")


def test_runid_is_echoed(sync_url):
    response = requests.post(sync_url, data={"LANG": "ADQL", "QUERY": FIRST_FIVE, "RUNID": "run-42"})
    resource = votable(response.content).resources[0]
    assert ("RUNID", "run-42") in [(i.name, i.value) for i in resource.infos]


@pytest.mark.parametrize(
    "fmt", ["votable", "votable/b2", "application/x-votable+xml", "csv", "text/csv", "tsv"]
)
def test_formats_round_trip(sync_url, fmt):
    query = (
        "SELECT TOP 4 obs_publisher_did, teff, em_xel, POINT(10.5, -20.25) AS p FROM ivoa.obscore "
        "ORDER BY obs_publisher_did"
    )
    reference = votable(requests.post(sync_url, data={"LANG": "ADQL", "QUERY": query}).content)
    expected = reference.get_first_table().to_table(use_names_over_ids=True)
    response = requests.post(sync_url, data={"LANG": "ADQL", "QUERY": query, "RESPONSEFORMAT": fmt})
    assert response.status_code == 200
    if fmt in ("csv", "text/csv", "tsv"):
        assert response.headers["Content-Type"].startswith(
            "text/csv" if "csv" in fmt else "text/tab-separated"
        )
        rows = list(csv.reader(io.StringIO(response.text), delimiter="," if "csv" in fmt else "\t"))
        assert rows[0] == ["obs_publisher_did", "teff", "em_xel", "p"]
        assert [r[0] for r in rows[1:]] == list(expected["obs_publisher_did"])
        assert [float(r[1]) for r in rows[1:]] == pytest.approx(list(expected["teff"]))
        assert [int(r[2]) for r in rows[1:]] == list(expected["em_xel"])
        assert all(r[3] == "10.5 -20.25" for r in rows[1:])  # DALI text form of a point
    else:
        assert response.headers["Content-Type"] == (fmt if "/" in fmt and "b2" not in fmt else VOTABLE_MIME)
        table = votable(response.content).get_first_table()
        assert (b"<BINARY2>" in response.content) == (fmt == "votable/b2")
        got = table.to_table(use_names_over_ids=True)
        for name in expected.colnames:
            assert np.array_equal(np.asarray(got[name]), np.asarray(expected[name])), name


def test_format_is_a_synonym_of_responseformat(sync_url):
    response = requests.get(sync_url, params={"LANG": "ADQL", "QUERY": FIRST_FIVE, "FORMAT": "csv"})
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/csv")


def test_datalink_descriptor_accompanies_dids(sync_url):
    response = requests.post(sync_url, data={"LANG": "ADQL", "QUERY": FIRST_FIVE})
    document = votable(response.content)
    field = document.get_first_table().fields[0]
    assert field.name == "obs_publisher_did" and field.ID == "pubdid"
    (descriptor,) = [r for r in document.resources if r.utype == "adhoc:service"]
    params = {p.name: p.value for p in descriptor.params}
    assert params["standardID"].lower().startswith("ivo://ivoa.net/std/datalink")
    (group,) = descriptor.groups
    assert [(p.name, p.ref) for p in group.entries] == [("ID", "pubdid")]
    plain = votable(
        requests.post(
            sync_url, data={"LANG": "ADQL", "QUERY": "SELECT TOP 1 obs_id FROM ivoa.obscore"}
        ).content
    )
    assert [r.type for r in plain.resources] == ["results"]


# -- limits ------------------------------------------------------------------------------------------


def test_maxrec_default_and_hard_limit(limited):
    query = "SELECT obs_id FROM ivoa.obscore"
    default = votable(limited.post("/tap/sync", data={"LANG": "ADQL", "QUERY": query}).data)
    assert len(default.get_first_table().array) == 2 and status(default)[0] == "OVERFLOW"
    clipped = votable(limited.post("/tap/sync", data={"LANG": "ADQL", "QUERY": query, "MAXREC": "1000"}).data)
    assert len(clipped.get_first_table().array) == 4 and status(clipped)[0] == "OVERFLOW"


def test_slow_query_stops_with_an_error_document(limited):
    slow = "SELECT COUNT(*) FROM ivoa.obscore AS a, ivoa.obscore AS b, ivoa.obscore AS c, ivoa.obscore AS d"
    started = time.monotonic()
    response = limited.post("/tap/sync", data={"LANG": "ADQL", "QUERY": slow})
    assert time.monotonic() - started < 10
    assert response.status_code == 400
    document = votable(response.data)
    value, message = status(document)
    assert value == "ERROR" and "0.3 s" in message and "longer" in message
    # The connection is usable again afterwards.
    fine = limited.post("/tap/sync", data={"LANG": "ADQL", "QUERY": "SELECT TOP 1 obs_id FROM ivoa.obscore"})
    assert fine.status_code == 200

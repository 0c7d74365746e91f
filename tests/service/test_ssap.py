"""SSAP 1.1 at /ssa/query over real HTTP: pyvo's SSAService, raw GETs, the archive as the oracle.

The demo archive (MILES) has no positions or times, so POS and TIME are tested on the ``sky_server``
archive of synthetic spectra placed on the sky (see ``tests/conftest.py``).
"""

from __future__ import annotations

import io
import warnings
import xml.etree.ElementTree as ET
from datetime import timedelta

import astropy.units as u
import numpy as np
import pytest
import requests
from astropy.coordinates import SkyCoord
from astropy.io.votable import parse
from astropy.time import Time
from pyvo.dal import DALOverflowWarning, DALQueryError, SSAService
from pyvo.io import vosi as pyvo_vosi

from model.api import LatentModel
from service import ssap
from service.archive import Archive
from service.storage.sqlite import great_circle_degrees
from tests.conftest import SKY_CLUSTER

VOTABLE_MIME = "application/x-votable+xml"


# -- helpers -----------------------------------------------------------------------------------


def get(server, **params) -> requests.Response:
    response = requests.get(f"{server.url}/ssa/query", params={"REQUEST": "queryData", **params}, timeout=60)
    assert response.status_code == 200, response.text[:500]
    assert response.headers["Content-Type"] == VOTABLE_MIME
    return response


def document(response: requests.Response):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return parse(io.BytesIO(response.content), verify="ignore")


def results(doc):
    found = [r for r in doc.resources if r.type == "results"]
    assert len(found) == 1, "exactly one results RESOURCE (X-11)"
    return found[0]


def status(doc) -> tuple[str, str]:
    first = results(doc).infos[0]
    assert first.name == "QUERY_STATUS"
    return first.value, first.content or ""


def dids(doc) -> list[str]:
    table = results(doc).tables[0]
    return [str(v) for v in table.array["publisher_did"]]


def query_dids(server, **params) -> list[str]:
    doc = document(get(server, **params))
    assert status(doc)[0] == "OK", status(doc)
    return dids(doc)


def error_message(server, **params) -> str:
    doc = document(get(server, **params))
    value, message = status(doc)
    assert value == "ERROR"
    assert message.strip()
    assert not results(doc).tables, "an error document has no TABLE (X-13)"
    return message


@pytest.fixture(scope="module")
def archive(live_server):
    archive = Archive.from_config(live_server.config, readonly=True)
    yield archive
    archive.close()


@pytest.fixture(scope="module")
def sky_archive(sky_server):
    archive = Archive.from_config(sky_server.config, readonly=True)
    yield archive
    archive.close()


@pytest.fixture(scope="module")
def served(archive):
    """The model in service, loaded independently of the service."""
    record = archive.current_model()
    version = record["model_version"]
    return LatentModel(archive.model_dir(version)), archive.latent_dids(version), record


# -- the SSA response --------------------------------------------------------------------------


def test_fields_carry_ssa_utypes_ucds_and_the_datalink_descriptor(live_server):
    response = get(live_server, MAXREC=3)
    assert b"<TABLEDATA>" in response.content
    doc = document(response)
    resource = results(doc)
    assert [i.name for i in resource.infos][:2] == ["QUERY_STATUS", "SERVICE_PROTOCOL"]
    protocol = resource.infos[1]
    assert (protocol.value, protocol.content) == ("1.1", "SSAP")
    table = resource.tables[0]
    by_utype = {(f.utype or "").lower(): f for f in table.fields}
    expected = {
        "Access.Reference": "meta.ref.url",
        "Access.Format": "meta.code.mime",
        "Access.Size": "phys.size;meta.file",
        "Dataset.Length": "meta.number",
        "DataID.Title": "meta.title;meta.dataset",
        "Curation.PublisherDID": "meta.ref.url;meta.curation",
        "DataID.Collection": "meta.id",
        "DataID.Date": "time;meta.dataset",
        "Target.Name": "meta.id;src",
        "Target.Pos": "pos.eq;src",
        "Target.Class": "src.class",
        "Char.SpectralAxis.Coverage.Bounds.Start": "em.wl;stat.min",
        "Char.SpectralAxis.Coverage.Bounds.Stop": "em.wl;stat.max",
        "Char.TimeAxis.Coverage.Location.Value": "time.epoch",
        "Derived.SNR": "stat.snr",
    }
    for utype, ucd in expected.items():
        assert by_utype[f"ssa:{utype}".lower()].ucd == ucd, utype
    pubdid = by_utype["ssa:curation.publisherdid"]
    assert pubdid.ID == "pubdid"
    target = by_utype["ssa:target.pos"]
    assert (target.datatype, target.arraysize, str(target.unit)) == ("double", "2", "deg")
    assert str(by_utype["ssa:char.spectralaxis.coverage.bounds.start"].unit) == "m"
    assert by_utype["ssa:dataid.date"].xtype == "timestamp"
    classes = {row[by_utype["ssa:target.class"].name] for row in table.array}
    assert classes <= set("OBAFGKM") | {None} and len(classes - {None}) >= 1  # the demo stars' classes
    fields = {f.name: f for f in table.fields}
    assert fields["ra"].ucd == "pos.eq.ra;meta.main" and fields["dec"].ucd == "pos.eq.dec;meta.main"
    coosys = resource.coordinate_systems[0]
    assert coosys.system == "ICRS"
    assert fields["ra"].ref == fields["dec"].ref == target.ref == coosys.ID
    assert fields["t_min"].ref == resource.time_systems[0].ID
    params = {p.utype: p.value for p in resource.params}
    assert params["ssa:Dataset.DataModel"] == "Spectrum-1.0"
    assert params["ssa:CoordSys.SpaceFrame.Name"] == "ICRS"
    assert params["ssa:Curation.Publisher"]
    descriptors = [r for r in doc.resources if r.type == "meta" and r.utype == "adhoc:service"]
    links = [
        r
        for r in descriptors
        if any(
            p.name == "standardID" and p.value.lower().startswith("ivo://ivoa.net/std/datalink")
            for p in r.params
        )
    ]
    assert len(links) == 1, "one DataLink {links} descriptor (SSA-06)"
    (id_param,) = [p for g in links[0].groups for p in g.entries if p.name == "ID"]
    assert id_param.ref == "pubdid"


def test_every_response_kind_is_valid_votable(live_server):
    from tests import stilts

    assert stilts.stilts_available(), "STILTS is not installed (apt-get install stilts; .ci/run does it)"
    base = f"{live_server.url}/ssa/query?REQUEST=queryData"
    for query in ("&MAXREC=2&FORMAT=fits", "&MAXREC=0", "&FORMAT=graphic", "&POS=10,95"):
        report = stilts.votlint(base + query)
        assert report.ok, f"{query}: {report.errors}"


def test_rows_carry_informative_latents_anomaly_score_and_the_mi_table(live_server, archive, served):
    model, latent_dids, record = served
    version = record["model_version"]
    informative = [int(d) for d in record["informative_dims"].split()]
    doc = document(get(live_server, MAXREC=10))
    table = results(doc).tables[0]
    latent_fields = [f for f in table.fields if f.name.startswith("z")]
    assert [f.name for f in latent_fields] == [f"z{d}" for d in informative]
    correlations = archive.db.execute(
        "SELECT dim, label, mi FROM ml_label_correlation WHERE model_version = ? ORDER BY mi DESC", (version,)
    ).fetchall()
    for element in latent_fields:
        best = next(r for r in correlations if f"z{r['dim']}" == element.name)
        text = " ".join(element.description.split())  # astropy wraps long DESCRIPTIONs
        assert f"carries {best['label']} most: mutual information {best['mi']:.2f}" in text
    anomaly = dict(
        archive.db.execute(
            "SELECT obs_publisher_did, anomaly_score FROM ml_latent WHERE model_version = ?", (version,)
        ).fetchall()
    )
    for i, did in enumerate(dids(doc)):
        row = latent_dids.index(did)
        for d in informative:
            assert table.array[f"z{d}"][i] == pytest.approx(float(model.latents[row, d]), rel=1e-6)
        assert table.array["anomaly_score"][i] == pytest.approx(anomaly[did])
    (mi,) = [r for r in doc.resources if r.type == "meta" and r.tables]
    mi_table = mi.tables[0]
    assert [f.name for f in mi_table.fields][:4] == ["dim", "label", "informative", "mi"]
    assert len(mi_table.array) == len(correlations)
    # pyvo reads the results table, not the MI table beside it.
    with pytest.warns(DALOverflowWarning):
        records = SSAService(f"{live_server.url}/ssa/query").search(MAXREC=10)
    assert len(records) == 10 and "z" + str(informative[0]) in records.fieldnames


def test_pyvo_follows_the_descriptor_to_datalink_and_the_file(live_server, datalink_vocabulary):
    with pytest.warns(DALOverflowWarning):
        found = SSAService(f"{live_server.url}/ssa/query").search(MAXREC=3, TARGETNAME="HD")
    links = list(found.iter_datalinks())
    assert len(links) == 3
    for record, datalink in zip(found, links, strict=True):
        this = [row.access_url for row in datalink.bysemantics("#this")]
        assert record.getdataurl() in this
        assert set(datalink["ID"]) == {record["publisher_did"]}


# -- query parameters ----------------------------------------------------------------------------


def test_pyvo_search_by_band_matches_coverage_overlap(live_server, archive):
    service = SSAService(f"{live_server.url}/ssa/query")
    rows = archive.spectra(columns="obs_publisher_did, em_min, em_max")
    lowest, highest = min(r["em_min"] for r in rows), max(r["em_max"] for r in rows)
    found = service.search(band=(4.5e-7, 4.6e-7) * u.m)
    assert sorted(r["publisher_did"] for r in found) == sorted(
        r["obs_publisher_did"] for r in rows if r["em_min"] <= 4.6e-7 and r["em_max"] >= 4.5e-7
    )
    record = found[0]
    assert record.format == VOTABLE_MIME
    assert record.getdataurl().startswith(f"{live_server.url}/data/")
    assert record.title
    eps = 1e-10

    def expected(ranges):
        return sorted(
            r["obs_publisher_did"]
            for r in rows
            if any(
                (lo is None or r["em_max"] >= lo) and (hi is None or r["em_min"] <= hi) for lo, hi in ranges
            )
        )

    cases = {
        f"/{lowest - eps}": [(None, lowest - eps)],
        f"/{lowest + eps}": [(None, lowest + eps)],
        f"{highest + eps}/": [(highest + eps, None)],
        f"{highest - eps}": [(highest - eps, highest - eps)],
        f"{highest + eps}": [(highest + eps, highest + eps)],
        f"8e-7/9e-7,{lowest}/{lowest + eps};source": [(8e-7, 9e-7), (lowest, lowest + eps)],
    }
    outcomes = set()
    for band, ranges in cases.items():
        got = sorted(query_dids(live_server, BAND=band))
        assert got == expected(ranges), band
        outcomes.add(len(got))
    assert outcomes == {0, len(rows)}, "the cases include empty and full answers"


def test_pyvo_cone_search_finds_exactly_the_spectra_within_the_radius(sky_server, sky_archive):
    service = SSAService(f"{sky_server.url}/ssa/query")
    rows = [r for r in sky_archive.spectra() if r["s_ra"] is not None]
    coords = SkyCoord([r["s_ra"] for r in rows] * u.deg, [r["s_dec"] for r in rows] * u.deg)

    def within(ra, dec, radius):
        separation = coords.separation(SkyCoord(ra * u.deg, dec * u.deg)).deg
        return sorted(r["obs_publisher_did"] for r, s in zip(rows, separation, strict=True) if s <= radius)

    ra, dec = SKY_CLUSTER[0]
    found = service.search(pos=(ra, dec), diameter=0.02)
    assert sorted(r["publisher_did"] for r in found) == within(ra, dec, 0.01)
    assert len(found) == 4
    for record in found:
        row = next(r for r in rows if r["obs_publisher_did"] == record["publisher_did"])
        assert (record.ra, record.dec) == (row["s_ra"], row["s_dec"])
        assert record["ra"] == row["s_ra"]
    assert sorted(query_dids(sky_server, POS=f"{ra},{dec};ICRS")) == within(ra, dec, ssap.DEFAULT_SIZE / 2)
    wrapped = query_dids(sky_server, POS="0,-30", SIZE="0.02")
    assert sorted(wrapped) == within(0.0, -30.0, 0.01) and len(wrapped) == 2
    assert query_dids(sky_server, SIZE="0.02") == query_dids(sky_server), "SIZE without POS is ignored"


def test_time_ranges_cover_whole_periods_and_overlap_exposures(sky_server, sky_archive):
    rows = [r for r in sky_archive.spectra() if r["t_min"] is not None]

    def overlapping(start, end):
        lo = Time(start, scale="utc").mjd if start else -np.inf
        hi = Time(end, scale="utc").mjd if end else np.inf
        return sorted(r["obs_publisher_did"] for r in rows if r["t_min"] < hi and r["t_max"] >= lo)

    # Row 1 was exposed from 03:00 to 03:15 UT on ``day`` (see write_sky_sample).
    start = Time(rows[1]["t_min"], format="mjd", scale="utc").to_datetime()
    day, month, year = start.strftime("%Y-%m-%d"), start.strftime("%Y-%m"), start.year
    next_month = f"{year + start.month // 12}-{start.month % 12 + 1:02d}"
    after = (start + timedelta(days=1)).strftime("%Y-%m-%d")
    service = SSAService(f"{sky_server.url}/ssa/query")
    found = service.search(time=Time([f"{month}-01T00:00:00", f"{next_month}-01T00:00:00"]))
    assert sorted(r["publisher_did"] for r in found) == overlapping(f"{month}-01", f"{next_month}-01")
    assert 1 <= len(found) < len(rows)
    assert found[0].dateobs is not None  # pyvo parses DataID.Date
    cases = {
        month: (f"{month}-01", f"{next_month}-01"),
        str(year): (f"{year}-01-01", f"{year + 1}-01-01"),
        day: (day, after),
        f"{day}T03:10/{day}T04": (f"{day}T03:10:00", f"{day}T05:00:00"),
        f"{day}T03:20/": (f"{day}T03:20:00", None),
        f"/{day}": (None, after),
        f"1990,{day}": (day, after),
    }
    for value, (low, high) in cases.items():
        assert sorted(query_dids(sky_server, TIME=value)) == overlapping(low, high), value
    assert query_dids(sky_server, TIME=f"{day}T03:10/{day}T04") == [rows[1]["obs_publisher_did"]]
    assert rows[1]["obs_publisher_did"] not in query_dids(sky_server, TIME=f"{day}T03:20/")


def test_name_collection_did_and_snr_filters(sky_server, sky_archive):
    rows = sky_archive.spectra()
    by_name = query_dids(sky_server, TARGETNAME="hd 100")
    assert sorted(by_name) == sorted(r["obs_publisher_did"] for r in rows if "HD 100" in r["target_name"])
    assert len(by_name) == 10
    assert len(query_dids(sky_server, COLLECTION="sky")) == len(rows)
    assert query_dids(sky_server, COLLECTION="miles") == []
    chosen = [rows[3]["obs_publisher_did"], rows[7]["obs_publisher_did"]]
    assert query_dids(sky_server, PUBDID=",".join(chosen)) == chosen
    assert query_dids(sky_server, ID=chosen[1]) == chosen[1:]
    bright = query_dids(sky_server, SNR="100")
    assert sorted(bright) == sorted(r["obs_publisher_did"] for r in rows if r["snr"] >= 100)
    assert 0 < len(bright) < len(rows)


def test_format_picks_the_file_format_of_each_row(live_server):
    fits_doc = document(get(live_server, FORMAT="FITS", MAXREC=3))
    table = results(fits_doc).tables[0]
    assert set(table.array["access_format"]) == {"application/fits"}
    assert all(str(url).endswith("?format=fits") for url in table.array["access_url"])
    for value in ("all", "compliant", "votable", "application/x-votable+xml", "fits,votable"):
        doc = document(get(live_server, FORMAT=value, MAXREC=1))
        expected = "application/fits" if value.startswith("fits") else VOTABLE_MIME
        assert set(results(doc).tables[0].array["access_format"]) == {expected}, value
    for value in ("graphic", "xml", "image/png"):
        assert query_dids(live_server, FORMAT=value) == [], value
    assert "FORMAT" in error_message(live_server, FORMAT="bogus")


def test_format_metadata_describes_fields_and_input_parameters(live_server):
    service = SSAService(f"{live_server.url}/ssa/query")
    full = document(get(live_server, MAXREC=1))
    names = [c.name for c in service.columns]  # pyvo lists PARAMs too (astropy's Param is a Field)
    fields = [f.name for f in results(full).tables[0].fields]
    assert [n for n in names if n in fields] == fields
    assert "dim" not in names, "the MI table stays out of FORMAT=METADATA"
    doc = document(get(live_server, FORMAT="METADATA"))
    assert status(doc)[0] == "OK"
    assert len(results(doc).tables[0].array) == 0
    inputs = {p.name: p for p in results(doc).params if p.name.startswith("INPUT:")}
    for name in ("POS", "SIZE", "BAND", "TIME", "FORMAT", "MAXREC", "SIMILAR_TO", "K", "DIMS"):
        assert f"INPUT:{name}" in inputs, name
    assert "fits" in [o[0] for o in inputs["INPUT:FORMAT"].values.options]
    assert inputs["INPUT:SIZE"].value == pytest.approx(ssap.DEFAULT_SIZE)


def test_maxrec_and_top_limit_rows_and_flag_overflow(live_server):
    def answer(**params):
        doc = document(get(live_server, **params))
        return status(doc)[0], len(results(doc).tables[0].array)

    assert answer(MAXREC=5) == ("OVERFLOW", 5)
    assert answer(TOP=3) == ("OK", 3)
    assert answer(TOP=3, MAXREC=2) == ("OVERFLOW", 2)
    assert answer(TOP=3, MAXREC=10) == ("OK", 3)
    assert answer(MAXREC=0) == ("OVERFLOW", 0)
    assert answer(MAXREC=500) == ("OK", 200)
    with pytest.warns(DALOverflowWarning):
        SSAService(f"{live_server.url}/ssa/query").search(MAXREC=5, TARGETNAME="HD")


# -- similarity ------------------------------------------------------------------------------------


def test_similar_to_returns_the_latent_neighbours_in_distance_order(live_server, served):
    model, latent_dids, _ = served
    did = latent_dids[17]
    doc = document(get(live_server, SIMILAR_TO=did, K=7))
    rows, distances = model.neighbours(row=17, k=7)
    assert dids(doc) == [latent_dids[i] for i in rows]
    table = results(doc).tables[0]
    assert np.allclose(table.array["distance"], distances, rtol=1e-5, atol=1e-6)
    assert dids(doc)[0] == did and table.array["distance"][0] == pytest.approx(0.0, abs=1e-6)
    exact_rows, exact_distances = model.neighbours(row=17, k=5, dims=[1, 3])
    doc = document(get(live_server, SIMILAR_TO=did, K=5, DIMS="1 3"))
    assert dids(doc) == [latent_dids[i] for i in exact_rows]
    assert np.allclose(results(doc).tables[0].array["distance"], exact_distances, rtol=1e-5, atol=1e-6)
    assert dids(document(get(live_server, SIMILAR_TO=did, K=5, DIMS="1,3"))) == dids(doc)
    found = SSAService(f"{live_server.url}/ssa/query").search(SIMILAR_TO=did, K=4)
    assert [r["publisher_did"] for r in found] == [latent_dids[i] for i in model.neighbours(row=17, k=4)[0]]
    doc = document(get(live_server, SIMILAR_TO=did, K=7, MAXREC=3))
    assert status(doc)[0] == "OVERFLOW" and dids(doc) == [latent_dids[i] for i in rows[:3]]
    assert query_dids(live_server, SIMILAR_TO=did, K=7, BAND="8e-7/") == []


# -- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params, words",
    [
        ({"POS": "abc"}, "POS"),
        ({"POS": "10,20;GALACTIC"}, "ICRS"),
        ({"POS": "10,95"}, "POS"),
        ({"POS": "10,20", "SIZE": "-1"}, "SIZE"),
        ({"BAND": "V"}, "BAND"),
        ({"BAND": "6e-7/5e-7"}, "BAND"),
        ({"TIME": "yesterday"}, "TIME"),
        ({"MAXREC": "ten"}, "MAXREC"),
        ({"MAXREC": "-1"}, "MAXREC"),
        ({"REQUEST": "getData"}, "REQUEST"),
        ({"SIMILAR_TO": "ivo://nowhere/x"}, "SIMILAR_TO"),
        ({"SIMILAR_TO": "ivo://latentvo.example/~?miles/m0005", "DIMS": "99"}, "DIMS"),
        ({"K": "0"}, "K"),
        ({"MAXREC": ["1", "2"]}, "MAXREC"),
    ],
)
def test_bad_parameters_give_error_documents(live_server, params, words):
    assert words in error_message(live_server, **params)


def test_pyvo_raises_the_error_message(live_server):
    service = SSAService(f"{live_server.url}/ssa/query")
    with pytest.raises(DALQueryError, match="SIMILAR_TO"):
        service.search(SIMILAR_TO="ivo://nowhere/x")
    with pytest.raises(DALQueryError, match="ICRS"):
        service.search(POS="10,20;FK4")


# -- VOSI ------------------------------------------------------------------------------------------

XSI_TYPE = "{http://www.w3.org/2001/XMLSchema-instance}type"


def test_capabilities_declare_ssa_with_a_test_query_that_returns_rows(sky_server):
    response = requests.get(f"{sky_server.url}/ssa/capabilities", timeout=30)
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/xml")
    root = ET.fromstring(response.content)
    assert root.tag == "{http://www.ivoa.net/xml/VOSICapabilities/v1.0}capabilities"
    caps = {c.get("standardID"): c for c in root.findall("capability")}
    ssa_cap = caps["ivo://ivoa.net/std/SSA"]
    assert ssa_cap.get(XSI_TYPE) == "ssa:SimpleSpectralAccess"
    interface = ssa_cap.find("interface")
    assert (interface.get(XSI_TYPE), interface.get("role")) == ("vs:ParamHTTP", "std")
    assert interface.find("accessURL").text == f"{sky_server.url}/ssa/query"
    children = [c.tag for c in ssa_cap if c.tag not in ("description", "interface")]
    assert children == [
        "complianceLevel",
        "dataSource",
        "creationType",
        "supportedFrame",
        "maxSearchRadius",
        "maxRecords",
        "defaultMaxRecords",
        "maxAperture",
        "maxFileSize",
        "testQuery",
    ]
    assert ssa_cap.find("maxRecords").text == str(sky_server.config["service"]["hard_maxrec"])
    command = ssa_cap.find("testQuery/queryDataCmd").text
    assert "POS=" in command
    test = requests.get(f"{sky_server.url}/ssa/query?{command}", timeout=30)
    assert len(results(document(test)).tables[0].array) >= 1
    assert f"{sky_server.url}/ssa/availability" in {
        c.find("interface/accessURL").text for c in caps.values() if c is not ssa_cap
    }
    with warnings.catch_warnings():  # pyvo knows no SSA capability type and says so
        warnings.simplefilter("ignore")
        parsed = pyvo_vosi.parse_capabilities(io.BytesIO(response.content))
    assert {c.standardid for c in parsed} == set(caps)


def test_availability_reports_the_model_in_service(live_server):
    response = requests.get(f"{live_server.url}/ssa/availability", timeout=30)
    root = ET.fromstring(response.content)
    ns = "{http://www.ivoa.net/xml/VOSIAvailability/v1.0}"
    assert root.find(f"{ns}available").text == "true"
    assert "model version" in root.find(f"{ns}note").text
    assert requests.post(f"{live_server.url}/ssa/availability", timeout=30).status_code == 405


def test_cone_conditions_keep_every_spectrum_within_the_radius_whatever_its_ra_form():
    """The RA box narrows the cone but never drops a spectrum inside it: across RA 0, and for an RA
    written outside [0, 360] (-0.2 is 359.8)."""
    import sqlite3

    connection = sqlite3.connect(":memory:")
    connection.create_function("latentvo_sep", 4, great_circle_degrees, deterministic=True)
    connection.execute("CREATE TABLE spectrum (name TEXT, s_ra REAL, s_dec REAL)")
    positions = {"minus": (-0.2, 0.1), "wrap": (359.95, 0.0), "east": (0.3, -0.2), "far": (10.0, 0.0)}
    positions |= {"high": (360.2, 0.0), "north": (359.9, 0.7), "none": (None, 0.0)}
    connection.executemany("INSERT INTO spectrum VALUES (?, ?, ?)", [(k, *v) for k, v in positions.items()])
    where, args = ssap.conditions(ssap.SSAQuery(pos=(359.9, 0.0), radius=0.5), None)
    found = connection.execute(f"SELECT name FROM spectrum AS s WHERE {' AND '.join(where)}", args)
    assert sorted(r[0] for r in found) == ["east", "high", "minus", "wrap"]

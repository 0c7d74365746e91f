"""DataLink over the live server, read by real clients: pyvo, requests, astropy's VOTable parser."""

from __future__ import annotations

import io
import struct
import xml.etree.ElementTree as ET
from urllib.parse import parse_qs, urlencode, urlparse

import numpy as np
import pytest
import pyvo
import requests
from astropy.io.votable import parse
from astropy.io.votable.tree import Field, Resource, TableElement
from pyvo.dal import DALResults
from pyvo.dal.adhoc import DatalinkResults, DatalinkResultsMixin, DatalinkService

from model.api import LatentModel
from model.similarity import exact_search
from service import datalink, preview
from service.archive import Archive
from service.votable import DATALINK_MIME, VOTABLE_MIME, new_document, serialise
from tests.xsd import validate

pytestmark = pytest.mark.filterwarnings("ignore::astropy.units.UnitsWarning")

UNKNOWN = "ivo://latentvo.example/~?miles/no-such-star"
VO = "{http://www.ivoa.net/xml/VOTable/v1.3}"
#: DL-03: name → (datatype, arraysize, UCD, unit).
DL03 = {
    "ID": ("char", "*", "meta.id;meta.main", None),
    "access_url": ("char", "*", "meta.ref.url", None),
    "service_def": ("char", "*", "meta.ref", None),
    "error_message": ("char", "*", "meta.code.error", None),
    "description": ("char", "*", "meta.note", None),
    "semantics": ("char", "*", "meta.code", None),
    "content_type": ("char", "*", "meta.code.mime", None),
    "content_length": ("long", None, "phys.size;meta.file", "byte"),
    "content_qualifier": ("char", "*", None, None),
    "local_semantics": ("char", "*", "meta.id.assoc", None),
    "link_auth": ("char", "*", "meta.code", None),
    "link_authorized": ("boolean", None, "meta.code", None),
}


pytestmark = pytest.mark.usefixtures("datalink_vocabulary")


class Results(DatalinkResultsMixin, DALResults):
    """Any VOTable result with pyvo's DataLink support (what TAP and SSAP results get)."""


@pytest.fixture(scope="module")
def dids(live_server) -> list[str]:
    """The archive's DIDs in row order."""
    archive = Archive.from_config(live_server.config, readonly=True)
    found = [r[0] for r in archive.spectra(columns="obs_publisher_did")]
    archive.close()
    return found


@pytest.fixture(scope="module")
def model(live_server):
    """The model version in service, loaded independently of the server, with its DIDs in row order."""
    archive = Archive.from_config(live_server.config, readonly=True)
    version = archive.current_model()["model_version"]
    latent_model = LatentModel(archive.model_dir(version))
    latent_model.dids = archive.latent_dids(version)
    latent_model.version = version
    archive.close()
    return latent_model


def links_url(live_server, *dids: str) -> str:
    return f"{live_server.url}/datalink/links?" + urlencode([("ID", d) for d in dids])


def table_of(content: bytes):
    """Parse strictly (any VOTable warning fails) and return the document and its first table."""
    document = parse(io.BytesIO(content), verify="exception")
    return document, document.get_first_table()


def rows_of(content: bytes) -> list[dict]:
    """Rows as dicts; masked cells and empty strings (an empty TD, what STIL reads as null) are None."""
    _, table = table_of(content)
    names = [f.name for f in table.fields]
    return [{n: _value(row[n]) for n in names} for row in table.array]


def _value(cell):
    return None if np.ma.is_masked(cell) or (isinstance(cell, str) and cell == "") else cell


def error_text(response: requests.Response) -> str:
    document = parse(io.BytesIO(response.content), verify="exception")
    status = document.resources[0].infos[0]
    assert status.name == "QUERY_STATUS" and status.value == "ERROR"
    assert not document.resources[0].tables
    return status.content


# -- {links} through pyvo ---------------------------------------------------------------------------


def test_pyvo_reads_this_and_preview_and_downloads_both(live_server, dids):
    did = dids[10]
    links = DatalinkResults.from_result_url(links_url(live_server, did))
    this = list(links.bysemantics("#this"))
    assert {r.content_type for r in this} == {VOTABLE_MIME, "application/fits"}
    assert all(r.id == did for r in links)

    dataset = parse(io.BytesIO(links.getdataset().read()), verify="warn")
    ids = [p.value for p in dataset.get_first_table().params if p.name == "PublisherDID"]
    assert ids == [did]

    (plot,) = links.bysemantics("#preview")
    assert plot.content_type == "image/png"
    row = (
        Archive.from_config(live_server.config, readonly=True)
        .db.execute("SELECT source_sha256 FROM spectrum WHERE obs_publisher_did = ?", (did,))
        .fetchone()
    )
    cached = preview.preview_path(live_server.config["archive"]["root"], did, row[0])
    cached.unlink(missing_ok=True)  # whatever another test left: this one renders it
    first = requests.get(plot.access_url, timeout=30)
    assert first.status_code == 200 and first.headers["Content-Type"] == "image/png"
    assert first.content[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", first.content[16:24])
    assert (width, height) == (800, 300)
    assert cached.read_bytes() == first.content
    mtime = cached.stat().st_mtime_ns
    second = requests.get(plot.access_url, timeout=30)
    assert second.content == first.content
    assert cached.stat().st_mtime_ns == mtime
    assert not list(cached.parent.glob(".*.tmp"))


def test_several_ids_in_one_post_keep_request_order(live_server, dids):
    ids = [dids[30], UNKNOWN, dids[5], dids[30]]
    response = requests.post(f"{live_server.url}/datalink/links", data={"ID": ids}, timeout=30)
    assert response.status_code == 200
    rows = rows_of(response.content)
    order = [r["ID"] for i, r in enumerate(rows) if i == 0 or rows[i - 1]["ID"] != r["ID"]]
    assert order == [dids[30], UNKNOWN, dids[5]]  # consecutive, request order, no repeats
    (missing,) = [r for r in rows if r["ID"] == UNKNOWN]
    assert missing["error_message"].startswith("NotFoundFault:")
    assert missing["semantics"] == "#this"
    assert missing["access_url"] is None and missing["service_def"] is None


def test_unknown_id_is_a_not_found_row_with_http_200(live_server):
    response = requests.get(links_url(live_server, UNKNOWN), timeout=30)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == DATALINK_MIME
    (row,) = rows_of(response.content)
    assert row["ID"] == UNKNOWN and row["semantics"] == "#this"
    assert row["error_message"].startswith("NotFoundFault: ")


def test_no_id_gives_an_empty_table_describing_the_service(live_server):
    response = requests.get(f"{live_server.url}/datalink/links", timeout=30)
    assert response.status_code == 200
    document, table = table_of(response.content)
    assert len(table.array) == 0
    assert [f.name for f in table.fields] == list(DL03)
    (this,) = [r for r in document.resources if r.utype == "adhoc:this"]
    params = {p.name: p.value for p in this.params}
    assert params["accessURL"] == f"{live_server.url}/datalink/links"


def test_id_as_obscore_access_url_writes_it(live_server, dids):
    """ObsCore's access_url puts the DID unencoded after ?ID= (pyvo follows it verbatim)."""
    did = dids[12]
    links = DatalinkResults.from_result_url(f"{live_server.url}/datalink/links?ID={did}")
    assert {r.id for r in links} == {did}
    assert len(list(links.bysemantics("#this"))) == 2


# -- the document itself ----------------------------------------------------------------------------


def test_columns_status_and_serialisation_follow_dl02_dl03(live_server, dids):
    response = requests.get(links_url(live_server, dids[1]), timeout=30)
    assert response.headers["Content-Type"] == "application/x-votable+xml;content=datalink"
    assert b"<TABLEDATA>" in response.content and b"BINARY" not in response.content
    document, table = table_of(response.content)
    results = [r for r in document.resources if r.type == "results"]
    assert len(results) == 1 and len(results[0].tables) == 1
    infos = [(i.name, i.value) for i in results[0].infos]
    assert infos[0] == ("QUERY_STATUS", "OK")
    assert ("standardID", "ivo://ivoa.net/std/DataLink#links-1.1") in infos
    found = {
        f.name: (f.datatype, f.arraysize, f.ucd, None if f.unit is None else str(f.unit))
        for f in table.fields
    }
    assert list(found) == list(DL03)
    assert found == DL03


def test_every_row_has_exactly_one_target_and_known_semantics(live_server, dids, datalink_vocabulary):
    response = requests.get(links_url(live_server, dids[2], UNKNOWN, dids[3]), timeout=30)
    rows = rows_of(response.content)
    assert len(rows) > 3
    similar = f"{live_server.url}/rdf/latentvo#similar"
    for row in rows:
        assert sum(row[c] is not None for c in ("access_url", "service_def", "error_message")) == 1, row
        assert row["ID"] and row["semantics"]
        if row["semantics"].startswith("#"):
            assert row["semantics"][1:] in datalink_vocabulary["terms"]
        else:
            assert row["semantics"] == similar
    page = requests.get(similar.split("#")[0], timeout=30)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    root = ET.fromstring(page.content.split(b"\n", 1)[1])  # skip the doctype
    assert root.find(".//*[@id='similar']") is not None


def test_xml_ids_are_unique_and_service_defs_resolve(live_server, dids):
    response = requests.get(links_url(live_server, dids[2], dids[3]), timeout=30)
    root = ET.fromstring(response.content)
    ids = [e.get("ID") for e in root.iter() if e.get("ID") is not None]
    assert len(ids) == len(set(ids))
    descriptors = {r.get("ID"): r for r in root.iter(f"{VO}RESOURCE") if r.get("utype") == "adhoc:service"}
    used = [r["service_def"] for r in rows_of(response.content) if r["service_def"]]
    assert len(used) == 2 and set(used) == set(descriptors)
    for resource in descriptors.values():
        assert resource.get("name") and resource.find(f"{VO}DESCRIPTION").text.strip()
        inputs = {p.get("name"): p for p in resource.find(f"{VO}GROUP").findall(f"{VO}PARAM")}
        assert inputs["K"].get("value") == "" and inputs["DIMS"].get("value") == ""  # user-chosen (DL-11)


@pytest.mark.parametrize(
    "fmt, mime",
    [
        ("votable", DATALINK_MIME),
        ("application/x-votable+xml", VOTABLE_MIME),
        ("application/x-votable+xml;content=datalink", DATALINK_MIME),
    ],
)
def test_votable_responseformats(live_server, dids, fmt, mime):
    response = requests.get(links_url(live_server, dids[1]) + "&" + urlencode({"RESPONSEFORMAT": fmt}))
    assert response.status_code == 200 and response.headers["Content-Type"] == mime
    assert len(rows_of(response.content)) > 3


@pytest.mark.parametrize("fmt", ["csv", "text/html", "fits"])
def test_other_responseformats_are_usage_errors(live_server, dids, fmt):
    response = requests.get(links_url(live_server, dids[1]) + "&" + urlencode({"RESPONSEFORMAT": fmt}))
    assert response.status_code == 400
    assert error_text(response).startswith("UsageFault:")


def test_too_many_ids_stop_between_ids_and_pyvo_asks_again(live_server, dids, monkeypatch):
    monkeypatch.setattr(datalink, "MAX_IDS", 2)
    ids = [dids[7], dids[8], dids[9]]
    response = requests.post(f"{live_server.url}/datalink/links", data={"ID": ids}, timeout=30)
    document, _ = table_of(response.content)
    assert document.resources[0].infos[0].value == "OVERFLOW"
    rows = rows_of(response.content)
    assert [r["ID"] for r in rows if r["local_semantics"] == "this-votable"] == ids[:2]
    complete = [r for r in rows if r["ID"] == ids[1]]
    assert [r["local_semantics"] for r in complete][-1] == f"similar-{live_server.config['index']['k']}"

    results = Results(parse(io.BytesIO(_table_with_descriptor(live_server, ids)), verify="exception"))
    with pytest.warns(pyvo.dal.DALOverflowWarning):
        answered = {next(iter(links)).id for links in results.iter_datalinks()}
    assert answered == set(ids)


# -- neighbours, reconstruction and the similarity service ----------------------------------------


def test_neighbour_links_are_the_models_neighbours(live_server, dids, model):
    did = dids[40]
    k = live_server.config["index"]["k"]
    row = model.dids.index(did)
    rows, distances = model.neighbours(row=row, k=k + 1)
    expected = [(model.dids[r], d) for r, d in zip(rows, distances, strict=True) if r != row][:k]

    links = DatalinkResults.from_result_url(links_url(live_server, did))
    similar = [r for r in links if r.semantics == f"{live_server.url}/rdf/latentvo#similar"]
    got = [parse_qs(urlparse(r.access_url).query)["ID"][0] for r in similar]
    assert got == [d for d, _ in expected]
    assert [r["local_semantics"] for r in similar] == [f"similar-{i}" for i in range(1, k + 1)]
    assert {r.content_type for r in similar} == {DATALINK_MIME}
    for record, (_, distance) in zip(similar, expected, strict=True):
        assert f"latent distance {distance:.4g}" in record.description

    neighbour = DatalinkResults.from_result_url(similar[0].access_url)
    assert {r.id for r in neighbour} == {expected[0][0]}


def test_reconstruction_is_the_decoded_posterior_mean_on_the_model_grid(live_server, dids, model):
    did = dids[50]
    (link,) = DatalinkResults.from_result_url(links_url(live_server, did)).bysemantics("#derivation")
    assert link.content_type == VOTABLE_MIME
    response = requests.get(link.access_url, timeout=30)
    assert response.status_code == 200
    document, table = table_of(response.content)
    assert [f.name for f in table.fields] == ["wavelength", "flux_model", "flux_observed", "good"]
    assert len(table.array) == model.grid.n_pixels
    np.testing.assert_allclose(table.array["wavelength"], model.grid.wavelength, rtol=1e-12)
    decoded = model.reconstruct(np.array(model.latents[model.dids.index(did)]))[0]
    np.testing.assert_allclose(table.array["flux_model"], decoded, rtol=1e-5, atol=1e-6)
    good = np.asarray(table.array["good"])
    assert good.mean() > 0.5
    assert np.ma.getmaskarray(table.array["flux_observed"])[~good].all()
    params = {p.name: p.value for p in table.params}
    assert params["obs_publisher_did"] == did and params["model_version"] == model.version


@pytest.mark.parametrize("endpoint", ["reconstruction", "preview"])
def test_unknown_or_missing_id_on_products_are_error_documents(live_server, endpoint):
    response = requests.get(
        f"{live_server.url}/datalink/{endpoint}?" + urlencode({"ID": UNKNOWN}), timeout=30
    )
    assert response.status_code == 404
    assert error_text(response).startswith("NotFoundFault:")
    response = requests.get(f"{live_server.url}/datalink/{endpoint}", timeout=30)
    assert response.status_code == 400
    assert error_text(response).startswith("UsageFault:")


def test_similarity_descriptor_and_pyvo_process(live_server, dids, model):
    did = dids[60]
    links = DatalinkResults.from_result_url(links_url(live_server, did))
    (proc,) = links.iter_procs()
    assert proc.semantics == "#proc"
    descriptor = links.get_adhocservice_by_id(proc.service_def)
    params = {p.name: p for p in descriptor.params}
    assert "standardID" not in params
    assert params["accessURL"].value == f"{live_server.url}/datalink/similar"
    inputs = {p.name: p for p in descriptor.groups[0].entries}
    assert inputs["ID"].value == did
    assert inputs["K"].datatype == "int" and inputs["K"].values.min == 1
    assert inputs["K"].values.max == datalink.MAX_K
    dims_help = inputs["DIMS"].description
    assert all(str(d) in dims_help for d in model.informative_dims) and "teff" in dims_help

    answer = parse(io.BytesIO(proc.process(K=3).read()), verify="exception").get_first_table()
    row = model.dids.index(did)
    rows, _ = model.neighbours(row=row, k=4)
    assert list(answer.array["obs_publisher_did"]) == [model.dids[r] for r in rows if r != row][:3]


def test_similar_along_chosen_dimensions_is_exact_search(live_server, dids, model):
    did = dids[70]
    row = model.dids.index(did)
    url = f"{live_server.url}/datalink/similar?" + urlencode({"ID": did, "K": 5, "DIMS": "1,3"})
    response = requests.get(url, timeout=30)
    assert response.status_code == 200
    rows = rows_of(response.content)
    expected_rows, expected_d = exact_search(np.asarray(model.latents), model.latents[row], 6, dims=[1, 3])
    keep = expected_rows != row
    assert [r["obs_publisher_did"] for r in rows] == [model.dids[r] for r in expected_rows[keep][:5]]
    np.testing.assert_allclose([r["distance"] for r in rows], expected_d[keep][:5], rtol=1e-6)
    assert [r["rank"] for r in rows] == [1, 2, 3, 4, 5]
    np.testing.assert_allclose(
        [[r[f"z{i}"] for i in range(model.latent_dim)] for r in rows],
        model.latents[expected_rows[keep][:5]],
        rtol=1e-6,
    )
    assert rows[0]["teff"] is not None and rows[0]["target_name"]


def test_similar_results_carry_the_links_descriptor_for_pyvo(live_server, dids):
    url = f"{live_server.url}/datalink/similar?" + urlencode({"ID": dids[80], "K": 4})
    results = Results.from_result_url(url)
    assert len(results) == 4
    expected = [r["obs_publisher_did"] for r in results]
    found = []
    for links in results.iter_datalinks():
        (this,) = [r for r in links.bysemantics("#this") if r.content_type == VOTABLE_MIME]
        found.append(this.id)
    assert sorted(found) == sorted(expected)


@pytest.mark.parametrize(
    "query, status, fault",
    [
        ({"ID": "KNOWN", "K": "0"}, 400, "UsageFault"),
        ({"ID": "KNOWN", "K": "ten"}, 400, "UsageFault"),
        ({"ID": "KNOWN", "K": str(datalink.MAX_K + 1)}, 400, "UsageFault"),
        ({"ID": "KNOWN", "DIMS": "99"}, 400, "UsageFault"),
        ({"ID": "KNOWN", "DIMS": "one"}, 400, "UsageFault"),
        ({"K": "3"}, 400, "UsageFault"),
        ({"ID": UNKNOWN}, 404, "NotFoundFault"),
    ],
)
def test_similar_errors_are_dali_error_documents(live_server, dids, query, status, fault):
    query = {name: dids[1] if value == "KNOWN" else value for name, value in query.items()}
    response = requests.get(f"{live_server.url}/datalink/similar?" + urlencode(query), timeout=30)
    assert response.status_code == status
    assert error_text(response).startswith(f"{fault}:")


# -- the descriptor other protocols embed -----------------------------------------------------------


def _table_with_descriptor(live_server, dids: list[str]) -> bytes:
    """A VOTable such as an SSAP or TAP response: DIDs in a FIELD with ID=pubdid, plus links_descriptor."""
    document = new_document()
    resource = Resource(type="results")
    document.resources.append(resource)
    table = TableElement(document, name="spectra")
    table.fields.append(
        Field(document, name="obs_publisher_did", ID="pubdid", datatype="char", arraysize="*")
    )
    table.create_arrays(nrows=len(dids))
    for i, did in enumerate(dids):
        table.array[i] = (did,)
    resource.tables.append(table)
    with live_server.app.app_context():
        document.resources.append(datalink.links_descriptor(document, "pubdid"))
    return serialise(document)


def test_links_descriptor_is_what_dl12_asks_for(live_server, dids):
    content = _table_with_descriptor(live_server, [dids[1]])
    parse(io.BytesIO(content), verify="exception")
    root = ET.fromstring(content)
    (descriptor,) = root.findall(f"{VO}RESOURCE[@type='meta']")
    assert descriptor.get("utype") == "adhoc:service" and descriptor.get("ID") and descriptor.get("name")
    assert descriptor.find(f"{VO}DESCRIPTION").text.strip()
    params = {p.get("name"): p for p in descriptor.findall(f"{VO}PARAM")}
    assert params["accessURL"].get("value") == f"{live_server.url}/datalink/links"
    assert params["standardID"].get("value") == "ivo://ivoa.net/std/DataLink#links-1.1"
    assert params["contentType"].get("value") == DATALINK_MIME
    for element in params.values():
        assert (element.get("datatype"), element.get("arraysize")) == ("char", "*")
    (group,) = descriptor.findall(f"{VO}GROUP")
    assert group.get("name") == "inputParams" and group.get("ID") is None
    (id_param,) = group.findall(f"{VO}PARAM")
    assert (id_param.get("name"), id_param.get("value"), id_param.get("ref")) == ("ID", "", "pubdid")
    assert id_param.find(f"{VO}VALUES") is None


def test_pyvo_iter_datalinks_over_a_table_with_the_descriptor(live_server, dids):
    asked = [dids[20], UNKNOWN, dids[21]]
    results = Results(parse(io.BytesIO(_table_with_descriptor(live_server, asked)), verify="exception"))
    seen = {}
    for links in results.iter_datalinks():
        ids = {r.id for r in links}
        assert len(ids) == 1
        seen[ids.pop()] = links
    assert set(seen) == set(asked)
    (missing,) = seen[UNKNOWN]
    assert missing.error_message.startswith("NotFoundFault:")
    for did in (dids[20], dids[21]):
        assert seen[did].original_row["obs_publisher_did"] == did
        assert len(list(seen[did].bysemantics("#this"))) == 2


# -- VOSI ---------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::astropy.utils.exceptions.AstropyWarning")
def test_capabilities_declare_links_and_vosi_siblings(live_server):
    response = requests.get(f"{live_server.url}/datalink/capabilities", timeout=30)
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/xml")
    assert validate(response.content) == []
    service = DatalinkService(f"{live_server.url}/datalink/links")  # pyvo finds the sibling
    found = {c.standardid: c for c in service.capabilities}
    assert set(found) == {
        "ivo://ivoa.net/std/DataLink#links-1.1",
        "ivo://ivoa.net/std/VOSI#capabilities",
        "ivo://ivoa.net/std/VOSI#availability",
    }
    (interface,) = found["ivo://ivoa.net/std/DataLink#links-1.1"].interfaces
    assert interface.accessurls[0].content == f"{live_server.url}/datalink/links"
    assert interface.resulttype.content == DATALINK_MIME
    for standard_id, path in (("capabilities", "capabilities"), ("availability", "availability")):
        (vosi_interface,) = found[f"ivo://ivoa.net/std/VOSI#{standard_id}"].interfaces
        assert vosi_interface.accessurls[0].content == f"{live_server.url}/datalink/{path}"


def test_availability_probes_archive_and_model(live_server, model):
    response = requests.get(f"{live_server.url}/datalink/availability", timeout=30)
    assert response.status_code == 200
    assert validate(response.content) == []
    root = ET.fromstring(response.content)
    ns = "{http://www.ivoa.net/xml/VOSIAvailability/v1.0}"
    assert root.find(f"{ns}available").text == "true"
    assert f"model version {model.version}" in root.find(f"{ns}note").text

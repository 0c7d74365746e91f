"""Dataset delivery at /data/<key>: what SSAP Access.Reference points at, read back by the readers."""

from __future__ import annotations

import io
import warnings
from urllib.parse import quote

import numpy as np
import pytest
import requests
from astropy.io import fits
from astropy.io.votable import parse
from pyvo.dal import SSAService

from model.readers import read_spectra
from service.archive import Archive
from service.data import dataset_key, dataset_url

VOTABLE_MIME = "application/x-votable+xml"


def source_spectrum(config: dict, did: str):
    """The archive spectrum as the readers give it from the source file."""
    archive = Archive.from_config(config, readonly=True)
    try:
        row = archive.db.execute("SELECT * FROM spectrum WHERE obs_publisher_did = ?", (did,)).fetchone()
    finally:
        archive.close()
    return read_spectra(row["source_path"], row["source_index"])[0]


def download(url: str) -> requests.Response:
    response = requests.get(url, timeout=60)
    assert response.status_code == 200, response.text[:300]
    assert int(response.headers["Content-Length"]) == len(response.content)
    return response


def read_back(tmp_path, content: bytes, suffix: str):
    path = tmp_path / f"spectrum{suffix}"
    path.write_bytes(content)
    (spectrum,) = read_spectra(path)
    return spectrum


def votable(content: bytes):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return parse(io.BytesIO(content), verify="ignore")


def test_pyvo_getdataset_gives_an_sdm_votable_the_readers_read_back(
    live_server, tmp_path, datalink_vocabulary
):
    (record,) = SSAService(f"{live_server.url}/ssa/query").search(
        PUBDID="ivo://latentvo.example/~?miles/m0010"
    )
    assert record.getdataurl().startswith(f"{live_server.url}/data/")
    content = record.getdataset(timeout=60).read()
    spectrum = read_back(tmp_path, content, ".vot")
    source = source_spectrum(live_server.config, record["publisher_did"])
    assert source.medium == "air" and spectrum.medium == "vacuum"
    np.testing.assert_array_equal(spectrum.wavelength, source.vacuum_wavelength())
    np.testing.assert_array_equal(spectrum.flux, source.flux)
    assert spectrum.identifier == record["publisher_did"]
    assert spectrum.target_name == source.target_name
    assert spectrum.labels == pytest.approx(source.labels)


def test_sdm_votable_identifies_axes_and_metadata_by_utype(live_server):
    did = "ivo://latentvo.example/~?miles/m0005"
    response = download(dataset_url_for(live_server, did))
    assert response.headers["Content-Type"] == VOTABLE_MIME
    doc = votable(response.content)
    (table,) = [t for r in doc.resources for t in r.tables]
    fields = {f.utype: f for f in table.fields}
    wave = fields["spec:Spectrum.Data.SpectralAxis.Value"]
    assert (wave.ucd, str(wave.unit)) == ("em.wl", "Angstrom")
    assert "vacuum" in wave.description
    assert fields["spec:Spectrum.Data.FluxAxis.Value"].ucd == "phot.flux.density;em.wl"
    params = {p.utype: p.value for p in table.params if p.utype}
    assert params["spec:Spectrum.Curation.PublisherDID"] == did
    assert params["spec:Spectrum.Target.Name"] == "HD000249"
    assert params["spec:Spectrum.DataID.Title"] == "HD000249 (miles)"
    assert params["spec:Spectrum.Char.FluxAxis.Calibration"] == "RELATIVE"  # MILES states no flux unit
    assert params["spec:Spectrum.Char.SpectralAxis.Coverage.Bounds.Start"] == pytest.approx(
        table.array["wavelength"].min()
    )
    from tests import stilts

    assert stilts.stilts_available(), "STILTS is not installed (apt-get install stilts; .ci/run does it)"
    report = stilts.votlint(dataset_url_for(live_server, did))
    assert report.ok, report.errors


def test_fits_row_of_ssap_leads_to_a_fits_table_the_readers_read_back(live_server, tmp_path):
    service = SSAService(f"{live_server.url}/ssa/query")
    (record,) = service.search(format="fits", PUBDID="ivo://latentvo.example/~?miles/m0010")
    assert record.format == "application/fits"
    response = download(record.getdataurl())
    assert response.headers["Content-Type"] == "application/fits"
    with fits.open(io.BytesIO(response.content)) as hdul:
        assert hdul[1].name == "SPECTRUM"
        assert hdul[1].columns.names[:2] == ["WAVELENGTH", "FLUX"]
        assert hdul[0].header["PUBDID"] == record["publisher_did"]
        assert hdul[0].header["AIRORVAC"] == "vac"
    spectrum = read_back(tmp_path, response.content, ".fits")
    source = source_spectrum(live_server.config, record["publisher_did"])
    np.testing.assert_array_equal(spectrum.wavelength, source.vacuum_wavelength())
    np.testing.assert_array_equal(spectrum.flux, source.flux)
    assert spectrum.labels == pytest.approx(source.labels)


@pytest.mark.parametrize("fmt, suffix", [("votable", ".vot"), ("fits", ".fits")])
def test_errors_positions_and_times_survive_both_formats(sky_server, tmp_path, fmt, suffix):
    did = "ivo://latentvo.example/~?sky/sky-0003"
    source = source_spectrum(sky_server.config, did)
    content = download(dataset_url_for(sky_server, did, fmt)).content
    spectrum = read_back(tmp_path, content, suffix)
    np.testing.assert_array_equal(spectrum.wavelength, source.wavelength)
    np.testing.assert_array_equal(spectrum.flux, source.flux)
    assert source.ivar is not None and (source.ivar > 0).all()
    np.testing.assert_allclose(spectrum.ivar, source.ivar, rtol=1e-12)
    assert (spectrum.ra, spectrum.dec) == (source.ra, source.dec)
    assert spectrum.obs_time.mjd == pytest.approx(source.obs_time.mjd, abs=1e-9)
    assert spectrum.exptime == source.exptime
    assert spectrum.resolving_power == source.resolving_power
    assert spectrum.target_name == source.target_name == "HD 1003"
    assert spectrum.labels == pytest.approx(source.labels)
    if fmt == "votable":
        (table,) = [t for r in votable(content).resources for t in r.tables]
        error = next(f for f in table.fields if f.utype == "spec:Spectrum.Data.FluxAxis.Accuracy.StatError")
        np.testing.assert_allclose(table.array[error.name], 1 / np.sqrt(source.ivar))


def test_unknown_keys_and_formats_are_error_documents(live_server):
    for key in ("miles/nope", "nope", "miles/m0005/extra", "..%2F..%2Fetc%2Fpasswd", "sky/sky-0003"):
        response = requests.get(f"{live_server.url}/data/{key}", timeout=30)
        assert response.status_code == 404, key
        assert response.headers["Content-Type"].startswith(VOTABLE_MIME)
        (info,) = [
            i for r in votable(response.content).resources for i in r.infos if i.name == "QUERY_STATUS"
        ]
        assert info.value == "ERROR" and "NotFoundFault" in info.content
    response = requests.get(f"{live_server.url}/data/miles/m0005?format=png", timeout=30)
    assert response.status_code == 400 and b"FORMAT" in response.content


def test_head_and_conditional_get(live_server):
    url = dataset_url_for(live_server, "ivo://latentvo.example/~?miles/m0008", "fits")
    full = download(url)
    head = requests.head(url, timeout=30)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["Content-Length"] == full.headers["Content-Length"]
    again = requests.get(url, headers={"If-None-Match": full.headers["ETag"]}, timeout=30)
    assert again.status_code == 304


def test_dataset_url_is_an_absolute_public_url_built_from_the_did(live_server):
    did = "ivo://latentvo.example/~?miles/m0005"
    with live_server.app.app_context():
        assert dataset_url(did) == f"{live_server.url}/data/miles/m0005"
        assert (
            dataset_url({"obs_publisher_did": did}, "fits")
            == f"{live_server.url}/data/miles/m0005?format=fits"
        )
        with pytest.raises(ValueError):
            dataset_url(did, "png")
    assert dataset_key(did) == "miles/m0005"
    with pytest.raises(ValueError):
        dataset_key("ivo://elsewhere/no-query-part")


def dataset_url_for(server, did: str, fmt: str = "votable") -> str:
    with server.app.app_context():
        url = dataset_url(did, fmt)
    assert quote(url, safe=":/?=~") == url
    return url

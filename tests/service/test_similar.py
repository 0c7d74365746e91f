"""/similar over the live server with real HTTP: a held-out MILES star uploaded in five formats.

The star (the held-out one nearest 5800 K, never in the demo archive) is written as users and
other archives write spectra: a FITS image with a linear air-wavelength WCS, the FITS binary table
and the Spectrum-DM VOTable that /data delivers, a CSV of vacuum wavelengths, an SDSS-like spec
file (vacuum log10 wavelengths, resampled). They are one spectrum, so the server must find one set
of latent coordinates and one list of neighbours for all of them.
"""

from __future__ import annotations

import io
from pathlib import Path
from urllib.parse import quote, urlencode

import numpy as np
import pytest
import requests
from astropy.io import fits
from astropy.io.votable import parse
from pyvo.dal import TAPService
from pyvo.dal.adhoc import DatalinkResults
from urllib3 import encode_multipart_formdata

from bench.heldout import MilesStar, heldout_stars, write_csv, write_fits_image, write_flux_csv
from model.preprocess import C_KMS
from model.resolution import CANDIDATES, ladder
from model.similarity import exact_search
from model.spectrum import Spectrum, air_to_vacuum
from model.velocity import fine_grid
from service import data
from service.datalink import MAX_K
from tests import stilts
from tests.conftest import free_url, serving
from tests.service import test_datalink
from tests.service.test_datalink import Results, error_text, table_of

#: Fixtures of the DataLink tests: the archive's DIDs in row order, and the model in service loaded
#: apart from the server (with ``dids`` and ``version``).
dids = test_datalink.dids
model = test_datalink.model

pytestmark = pytest.mark.usefixtures("datalink_vocabulary")

UNKNOWN = "ivo://latentvo.example/~?miles/no-such-star"
FORMATS = ("fits-image", "fits-table", "votable", "csv", "sdss")


# -- the held-out star in five formats ----------------------------------------------------------


@pytest.fixture(scope="module")
def star(miles_dir, demo_dir) -> MilesStar:
    """The held-out star nearest 5800 K among those without bad pixels (m0072, HD 11397, G6IV/V)."""
    stars = heldout_stars(miles_dir, demo_dir / "miles_demo.fits")
    usable = [s for s in stars if np.isfinite(s.teff) and (s.flux > 0).all()]
    return min(usable, key=lambda s: abs(s.teff - 5800))


def held_out_row(star: MilesStar) -> dict:
    """What the /data writers want to know of a spectrum: it is none of ours, so a foreign DID."""
    return {
        "obs_publisher_did": f"ivo://elsewhere.example/~?miles/{star.miles_id}",
        "obs_id": star.miles_id,
        "obs_collection": "miles",
        "target_name": star.name,
        "medium": "air",
        "s_ra": None,
        "s_dec": None,
        "t_min": None,
        "t_exptime": None,
        "instrument_name": None,
        "em_res_power": None,
        **{name: None for name in data.LABEL_PARAMS},
    }


def write_sdss(path: Path, star: MilesStar) -> None:
    """An SDSS spec file: COADD table of loglam (vacuum log10, 1e-4 steps), flux, ivar, and_mask; SPALL."""
    vacuum = air_to_vacuum(star.wave_air)
    loglam = np.arange(np.log10(vacuum[0]) + 1e-4, np.log10(vacuum[-1]), 1e-4)
    flux = np.interp(10**loglam, vacuum, star.flux)
    coadd = fits.BinTableHDU.from_columns(
        [
            fits.Column("flux", "E", array=flux),
            fits.Column("loglam", "E", array=loglam),
            fits.Column("ivar", "E", array=np.full(len(flux), 1e4)),
            fits.Column("and_mask", "J", array=np.zeros(len(flux), int)),
        ],
        name="COADD",
    )
    spall = fits.BinTableHDU.from_columns(
        [fits.Column("PLATE", "J", array=[1234]), fits.Column("MJD", "J", array=[56000])], name="SPALL"
    )
    primary = fits.PrimaryHDU()
    primary.header["TELESCOP"] = "SDSS 2.5-M"
    primary.header["PLATEID"] = 1234
    primary.header["MJD"] = 56000
    primary.header["FIBERID"] = 42
    fits.HDUList([primary, coadd, spall]).writeto(path)


@pytest.fixture(scope="module")
def files(star, live_server, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("uploads")
    paths = {
        "fits-image": folder / f"{star.miles_id}.fits",
        "fits-table": folder / f"{star.miles_id}_table.fits",
        "votable": folder / f"{star.miles_id}.vot",
        "csv": folder / f"{star.miles_id}.csv",
        "sdss": folder / "spec-1234-56000-0042.fits",
    }
    write_fits_image(paths["fits-image"], star)
    write_csv(paths["csv"], star)
    write_sdss(paths["sdss"], star)
    spectrum = Spectrum(star.wave_air, star.flux, medium="air")
    with live_server.app.app_context():
        paths["fits-table"].write_bytes(data.spectrum_fits(held_out_row(star), spectrum))
        paths["votable"].write_bytes(data.sdm_votable(held_out_row(star), spectrum))
    return paths


# -- helpers ----------------------------------------------------------------------------------------


def post(live_server, path: Path | None = None, **params) -> requests.Response:
    files = None
    if path is not None:
        files = {"FILE": (path.name, path.read_bytes())}
    return requests.post(f"{live_server.url}/similar", data=params, files=files, timeout=60)


def answer(response: requests.Response) -> tuple[list[dict], dict]:
    """Rows and table PARAMs of a successful answer, parsed strictly (any VOTable warning fails)."""
    assert response.status_code == 200, response.text[:1000]
    assert response.headers["Content-Type"] == "application/x-votable+xml"
    document, table = table_of(response.content)
    assert document.resources[0].infos[0].value == "OK"
    names = [f.name for f in table.fields]
    rows = [{n: (None if np.ma.is_masked(r[n]) else r[n]) for n in names} for r in table.array]
    return rows, {p.name: p.value for p in table.params}


def query_z(params: dict, latent_dim: int) -> np.ndarray:
    return np.array([params[f"query_z{d}"] for d in range(latent_dim)])


def refused(response: requests.Response, status: int, fault: str = "UsageFault") -> str:
    assert response.status_code == status, response.text[:1000]
    assert response.headers["Content-Type"] == "application/x-votable+xml"
    text = error_text(response)
    assert text.startswith(f"{fault}: "), text
    return text


# -- one spectrum, five formats -----------------------------------------------------------------


@pytest.fixture(scope="module")
def answers(live_server, files) -> dict[str, tuple[list[dict], dict]]:
    return {fmt: answer(post(live_server, files[fmt], K=10)) for fmt in FORMATS}


def test_every_format_gives_one_encoding_and_one_list_of_neighbours(answers, model):
    reference_rows, reference = answers["fits-image"]
    z = query_z(reference, model.latent_dim)
    top = [r["obs_publisher_did"] for r in reference_rows]
    assert len(top) == 10
    for fmt in FORMATS:
        rows, params = answers[fmt]
        assert params["coverage"] > 0.95, fmt
        np.testing.assert_allclose(query_z(params, model.latent_dim), z, atol=0.02, err_msg=fmt)
        # The SDSS file is resampled by interpolation, a little smoothing that the flux ranking at the
        # upload's resolution sees: near-ties may swap below the first.
        same = 1 if fmt == "sdss" else 5
        assert [r["obs_publisher_did"] for r in rows[:same]] == top[:same], fmt
        assert len(set(r["obs_publisher_did"] for r in rows) & set(top)) >= 8, fmt
    # Without resampling (all but the SDSS-like file) the model sees the same pixels.
    for fmt in ("fits-table", "votable", "csv"):
        np.testing.assert_allclose(query_z(answers[fmt][1], model.latent_dim), z, atol=1e-4, err_msg=fmt)


def test_upload_is_encoded_as_the_model_encodes_it_and_searched_by_the_index(answers, star, model):
    rows, params = answers["fits-image"]
    spectrum = Spectrum(star.wave_air, star.flux, medium="air")
    encoded = model.encode_spectra([spectrum], continuum="checked")  # an upload's continuum is checked
    np.testing.assert_allclose(query_z(params, model.latent_dim), encoded.mean[0], atol=1e-5)
    assert "continuum_used" not in params  # a model without continuum channels compares lines alone
    sigma = [params[f"query_z{d}_sigma"] for d in range(model.latent_dim)]
    np.testing.assert_allclose(sigma, np.sqrt(encoded.var[0]), rtol=1e-4)
    assert params["coverage"] == pytest.approx(encoded.coverage[0])
    assert params["recon_error"] == pytest.approx(encoded.recon_error[0], rel=1e-5)
    assert params["search"] == "index" and params["K"] == 10
    assert params["DIMS"] == " ".join(map(str, model.similarity_dims))
    assert params["model_version"] == model.version and params["query"] == f"{star.miles_id}.fits"

    # Compared by its lines alone: the index's nearest, ordered by flux at the upload's resolution.
    assert params["ranking"] == "flux" and params["query_resolving_power"] in np.round(ladder(2000.0), 1)
    assert model.flux_rankable(encoded)
    candidates, distances = model.neighbours(vector=encoded.mean[0], k=CANDIDATES)
    match = model.rank_by_flux(encoded, model.velocity(spectrum, encoded.mean[0]).rv_kms, candidates)
    assert params["query_resolving_power"] == pytest.approx(match.resolving_power, abs=0.1)
    expected_rows, expected_distances = candidates[match.order[:10]], distances[match.order[:10]]
    assert [r["obs_publisher_did"] for r in rows] == [model.dids[i] for i in expected_rows]
    # The distance column stays the latent distance.
    np.testing.assert_allclose([r["distance"] for r in rows], expected_distances, rtol=1e-4, atol=1e-6)
    assert [r["rank"] for r in rows] == list(range(1, 11))
    for row, i in zip(rows, expected_rows, strict=True):
        latent = [row[f"z{d}"] for d in model.similarity_dims]
        np.testing.assert_allclose(latent, model.latents[i, model.similarity_dims], rtol=1e-6)


def test_neighbours_carry_ssa_fields_labels_and_links(answers, live_server, model):
    rows, _ = answers["csv"]
    first = rows[0]
    assert first["obs_collection"] == "miles" and first["target_name"]
    assert 3e-7 < first["em_min"] < first["em_max"] < 8e-7
    assert all(r["teff"] > 0 for r in rows)
    key = data.dataset_key(first["obs_publisher_did"])
    assert first["dataset_url"] == f"{live_server.url}/data/{key}"
    assert (
        first["access_url"]
        == f"{live_server.url}/datalink/links?ID={quote(first['obs_publisher_did'], safe='')}"
    )
    assert requests.get(first["dataset_url"], timeout=30).status_code == 200


def test_the_neighbours_of_a_sun_like_star_are_sun_like(answers, star):
    """A loose physical check: the G6 IV/V star's 10 neighbours have a median Teff within 10 %."""
    rows, _ = answers["fits-image"]
    teff = np.median([r["teff"] for r in rows])
    assert abs(teff - star.teff) < 0.1 * star.teff, (teff, star.teff)


def test_raw_body_with_a_content_type_and_pyvo_style_upload(live_server, files, answers, model):
    _, reference = answers["fits-image"]
    z = query_z(reference, model.latent_dim)
    for fmt, mime in (
        ("fits-image", "application/fits"),
        ("csv", "text/csv"),
        ("votable", "application/x-votable+xml"),
    ):
        response = requests.post(
            f"{live_server.url}/similar?K=3",
            data=files[fmt].read_bytes(),
            headers={"Content-Type": mime},
            timeout=60,
        )
        rows, params = answer(response)
        assert len(rows) == 3 and params["query"] == "upload", fmt
        np.testing.assert_allclose(query_z(params, model.latent_dim), z, atol=1e-4, err_msg=fmt)
    response = requests.post(
        f"{live_server.url}/similar",
        data={"UPLOAD": "spec,param:spec", "K": "4"},
        files={"spec": ("star.fits", files["fits-image"].read_bytes())},
        timeout=60,
    )
    rows, params = answer(response)
    assert len(rows) == 4
    np.testing.assert_allclose(query_z(params, model.latent_dim), z, atol=1e-6)


def test_a_file_of_many_spectra_needs_index(live_server, demo_dir, model):
    demo = demo_dir / "miles_demo.fits"
    text = refused(post(live_server, demo, K=3), 400)
    assert "more than one spectrum" in text and "INDEX" in text
    with fits.open(demo) as hdus:
        miles_id = str(hdus["SPECTRA"].data["miles_id"][7]).strip()
    rows, params = answer(post(live_server, demo, K=3, INDEX=7))
    assert rows[0]["obs_publisher_did"].endswith(f"/{miles_id}")
    assert rows[0]["distance"] < 1e-3
    text = refused(post(live_server, demo, K=3, INDEX=999), 400)
    assert "index 999 out of range" in text


def test_a_spectrum_delivered_by_data_finds_itself(live_server, dids, tmp_path):
    did = dids[33]
    path = tmp_path / "downloaded.vot"
    path.write_bytes(requests.get(f"{live_server.url}/data/{data.dataset_key(did)}", timeout=30).content)
    rows, params = answer(post(live_server, path, K=5))
    assert rows[0]["obs_publisher_did"] == did and rows[0]["distance"] < 1e-3
    assert params["coverage"] > 0.95


# -- ID= and the search options -----------------------------------------------------------------


def test_archive_id_returns_itself_first_and_matches_the_model(live_server, dids, model):
    did = dids[40]
    row = model.dids.index(did)
    rows, params = answer(requests.get(f"{live_server.url}/similar", params={"ID": did, "K": 8}, timeout=60))
    expected_rows, expected_distances = model.neighbours(row=row, k=8)
    assert rows[0]["obs_publisher_did"] == did and rows[0]["distance"] == 0
    assert [r["obs_publisher_did"] for r in rows] == [model.dids[i] for i in expected_rows]
    np.testing.assert_allclose([r["distance"] for r in rows], expected_distances, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(query_z(params, model.latent_dim), model.latents[row], atol=1e-5)
    assert params["query"] == did and params["coverage"] > 0.95


def test_archive_id_answers_from_what_encode_stored(live_server, dids, model):
    """An ID query reports the coverage, reconstruction error and velocity ``encode`` stored for the
    row (the file is not encoded again); a version encoded before those were kept measures them anew,
    and the figures agree."""
    did = dids[17]
    row = model.dids.index(did)
    quality, velocity = np.asarray(model.archive_quality), np.asarray(model.archive_velocities)
    request = {"ID": did, "K": 5}
    params = answer(requests.get(f"{live_server.url}/similar", params=request, timeout=60))[1]
    assert params["coverage"] == pytest.approx(float(quality[row, 0]), rel=1e-6)
    assert params["recon_error"] == pytest.approx(float(quality[row, 1]), rel=1e-6)
    assert params["query_rv"] == pytest.approx(round(float(velocity[row, 0]), 3), abs=1e-3)
    assert params["query_rv_err"] == pytest.approx(round(float(velocity[row, 1]), 3), abs=1e-3)
    stored = model.directory / "quality.npy"
    aside = stored.with_suffix(".aside")
    stored.rename(aside)
    try:
        fresh = answer(requests.get(f"{live_server.url}/similar", params=request, timeout=60))[1]
    finally:
        aside.rename(stored)
    assert fresh["coverage"] == pytest.approx(params["coverage"], rel=1e-4)
    assert fresh["recon_error"] == pytest.approx(params["recon_error"], rel=1e-3)
    assert fresh["query_rv"] == pytest.approx(params["query_rv"], abs=0.01)


def test_dims_and_weights_rank_as_exact_search_says(live_server, dids, model, files):
    did = dids[90]
    row = model.dids.index(did)
    dims = [model.similarity_dims[-1], model.similarity_dims[0]]  # order matters: weights follow it
    weights = [3.0, 0.5]
    request = {"ID": did, "K": 10, "DIMS": f"{dims[0]},{dims[1]}", "WEIGHTS": "3 0.5"}
    rows, params = answer(requests.get(f"{live_server.url}/similar", params=request, timeout=60))
    expected, distances = exact_search(model.latents, model.latents[row], 10, dims=dims, weights=weights)
    assert [r["obs_publisher_did"] for r in rows] == [model.dids[i] for i in expected]
    np.testing.assert_allclose([r["distance"] for r in rows], distances, rtol=1e-5, atol=1e-7)
    assert params["search"] == "exact" and params["DIMS"] == f"{dims[0]} {dims[1]}"
    assert params["WEIGHTS"] == "3.0 0.5"
    assert [n for n in rows[0] if n.startswith("z")] == [f"z{d}" for d in dims]
    default, _ = answer(requests.get(f"{live_server.url}/similar", params={"ID": did, "K": 10}, timeout=60))
    # Two weighted dimensions measure another distance than all of them (the neighbours
    # themselves may coincide when the first dimension dominates both).
    assert not np.allclose([r["distance"] for r in rows], [r["distance"] for r in default])

    # An upload with DIMS alone: exact, unweighted, over those dimensions of the upload's own vector.
    uploaded, params = answer(post(live_server, files["csv"], K=6, DIMS=str(dims[1])))
    z = query_z(params, model.latent_dim)
    expected, _ = exact_search(model.latents, z, 6, dims=[dims[1]])
    assert [r["obs_publisher_did"] for r in uploaded] == [model.dids[i] for i in expected]
    assert params["ranking"] == "latent" and "query_resolving_power" not in params  # chosen dimensions
    assert default_params_of(live_server, did)["ranking"] == "latent"  # an archive spectrum: the latent


def default_params_of(live_server, did: str) -> dict:
    return answer(requests.get(f"{live_server.url}/similar", params={"ID": did, "K": 3}, timeout=60))[1]


def test_weights_without_dims_weight_the_similarity_dims(live_server, dids, model):
    did = dids[5]
    weights = np.linspace(1.0, 2.0, len(model.similarity_dims))
    request = {"ID": did, "K": 5, "WEIGHTS": " ".join(map(str, weights))}
    rows, params = answer(requests.get(f"{live_server.url}/similar", params=request, timeout=60))
    row = model.dids.index(did)
    expected, _ = exact_search(
        model.latents, model.latents[row], 5, dims=model.similarity_dims, weights=weights
    )
    assert [r["obs_publisher_did"] for r in rows] == [model.dids[i] for i in expected]
    assert params["search"] == "exact"


def test_csv_responseformat(live_server, dids):
    response = requests.get(
        f"{live_server.url}/similar", params={"ID": dids[3], "K": 2, "RESPONSEFORMAT": "csv"}, timeout=60
    )
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/csv")
    lines = response.text.splitlines()
    assert lines[0].startswith("rank,obs_publisher_did,distance,") and len(lines) == 3


# -- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params, wanted",
    [
        ({"K": "0"}, "K must be at least 1"),
        ({"K": "many"}, "K must be an integer"),
        ({"K": str(MAX_K + 1)}, f"K must be at most {MAX_K}"),
        ({"DIMS": "99"}, "DIMS must lie between 0 and"),
        ({"DIMS": "1 x"}, "DIMS must be latent dimension numbers"),
        ({"DIMS": "1 1"}, "more than once"),
        ({"DIMS": "1 2", "WEIGHTS": "1"}, "one value per dimension"),
        ({"DIMS": "1 2", "WEIGHTS": "1 -2"}, "WEIGHTS must be finite, at least 0"),
        ({"DIMS": "1 2", "WEIGHTS": "0 0"}, "not all 0"),
        ({"DIMS": "1", "WEIGHTS": "heavy"}, "WEIGHTS must be numbers"),
        ({"RESPONSEFORMAT": "image/png"}, "unsupported RESPONSEFORMAT"),
        ({"INDEX": "-1"}, "INDEX must be at least 0"),
    ],
)
def test_bad_parameters_are_usage_errors(live_server, files, params, wanted):
    assert wanted in refused(post(live_server, files["csv"], **params), 400)


def test_id_and_file_together_or_neither_are_usage_errors(live_server, files, dids):
    assert "not both" in refused(post(live_server, files["csv"], ID=dids[0]), 400)
    assert "send a spectrum file" in refused(requests.get(f"{live_server.url}/similar", timeout=30), 400)
    response = requests.post(
        f"{live_server.url}/similar", data={"UPLOAD": "spec,param:other"}, files={"spec": ("a.csv", b"1,2")}
    )
    assert "does not hold" in refused(response, 400)


def test_unknown_id_is_not_found(live_server):
    text = refused(
        requests.get(f"{live_server.url}/similar", params={"ID": UNKNOWN}, timeout=30), 404, "NotFoundFault"
    )
    assert UNKNOWN in text


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, "neither FITS nor a text table"),
        (b"<html><body>not a spectrum</body></html>", "XML/HTML that is not a VOTable"),
        (b"colour,size\nred,3\nblue,4\n", "no flux column"),
        (b"SIMPLE  =                    T" + b" " * 100, "broken FITS file"),
    ],
)
@pytest.mark.filterwarnings("ignore::astropy.io.fits.verify.VerifyWarning")
def test_unreadable_files_are_usage_errors_naming_the_reason(live_server, tmp_path, content, reason):
    path = tmp_path / "broken.dat"
    path.write_bytes(content)
    text = refused(post(live_server, path), 400)
    assert "cannot be read as a spectrum" in text and reason in text
    assert str(tmp_path) not in text and "latentvo-upload" not in text  # no server paths leak


@pytest.mark.filterwarnings("ignore::astropy.utils.exceptions.AstropyUserWarning")
def test_a_truncated_fits_file_is_named_so(live_server, files, tmp_path):
    path = tmp_path / "cut.fits"
    path.write_bytes(files["fits-image"].read_bytes()[:10_000])
    assert "truncated FITS file" in refused(post(live_server, path), 400)


def test_too_little_overlap_is_refused_with_the_coverage(live_server, star, tmp_path, model):
    path = tmp_path / "red.csv"
    wave = np.arange(8000.0, 9001.0, 1.0)
    path.write_text("wavelength,flux\n" + "".join(f"{w},{1 + 0.01 * np.sin(w)}\n" for w in wave))
    text = refused(post(live_server, path), 400)
    assert "covers 0.0% of the model's grid" in text and "8000-9000 Angstrom" in text

    blue = MilesStar(**{**star.__dict__, "wave_air": star.wave_air[:700], "flux": star.flux[:700]})
    write_csv(path, blue)  # 3540-4170 A: about a fifth of the grid
    text = refused(post(live_server, path), 400)
    assert "at least 30% is needed" in text
    coverage = float(text.split("coverage=")[1].rstrip(")"))
    assert 0.1 < coverage < 0.3

    half = MilesStar(**{**star.__dict__, "wave_air": star.wave_air[:2500], "flux": star.flux[:2500]})
    write_csv(path, half)  # 3540-5790 A: more than half of the grid, accepted
    _, params = answer(post(live_server, path, K=3))
    assert 0.4 < params["coverage"] < 0.7


@pytest.mark.filterwarnings("ignore::astropy.utils.exceptions.AstropyUserWarning")
def test_too_large_bodies_get_a_413_error_document(live_server, files, dids):
    """A server over the same archive with a 10 kB limit: the 20 kB FITS file is refused, however sent."""
    config = {**live_server.config, "service": {**live_server.config["service"], "base_url": free_url()}}
    config["service"]["max_request_bytes"] = 10_000
    body = files["fits-image"].read_bytes()
    assert len(body) > 10_000
    with serving(config) as small:
        text = refused(post(small, files["fits-image"]), 413)
        assert "at most 10000" in text
        response = requests.post(
            f"{small.url}/similar", data=body, headers={"Content-Type": "application/fits"}, timeout=30
        )
        assert "at most 10000" in refused(response, 413)
        chunked = requests.post(  # no Content-Length: Flask stops reading at the limit
            f"{small.url}/similar",
            data=iter([body[:8000], body[8000:]]),
            headers={"Content-Type": "application/fits"},
            timeout=30,
        )
        assert "reached the limit of 10000 bytes" in refused(chunked, 413)
        form, content_type = encode_multipart_formdata({"FILE": ("star.fits", body), "K": "3"})
        chunked_form = requests.post(  # Flask's own refusal, as a DALI document rather than an HTML page
            f"{small.url}/similar",
            data=iter([form[:5000], form[5000:]]),
            headers={"Content-Type": content_type},
            timeout=30,
        )
        refused(chunked_form, 413)
        rows, _ = answer(requests.get(f"{small.url}/similar", params={"ID": dids[0], "K": 2}, timeout=60))
        assert len(rows) == 2  # small requests still pass


# -- clients and validators -----------------------------------------------------------------------


def test_pyvo_follows_datalink_from_the_answer(live_server, files):
    response = post(live_server, files["fits-image"], K=3)
    results = Results(parse(io.BytesIO(response.content), verify="exception"))
    expected = [r["obs_publisher_did"] for r in results]
    # Batched, pyvo gives the datalinks in no set order (it collects the IDs in a set).
    seen = [next(iter(links)).id for links in results.iter_datalinks()]
    assert sorted(seen) == sorted(expected)
    in_order = [next(iter(links)).id for links in results.iter_datalinks(preserve_order=True)]
    assert in_order == expected
    assert results[0].getdataurl() == f"{live_server.url}/data/{data.dataset_key(expected[0])}"


def test_descriptor_in_the_datalink_self_description_and_the_landing_page(live_server, files):
    links = DatalinkResults.from_result_url(f"{live_server.url}/datalink/links")
    service = links.get_adhocservice_by_id("latentvo_similar_upload")
    params = {p.name: p.value for p in service.params}
    assert params["accessURL"] == f"{live_server.url}/similar"
    inputs = {p.name for p in service.groups[0].entries}
    assert {"FILE", "ID", "K", "DIMS", "WEIGHTS", "INDEX"} <= inputs
    rows, _ = answer(post(live_server, files["csv"], K=2))  # the advertised URL answers
    assert len(rows) == 2
    page = requests.get(f"{live_server.url}/", timeout=30).text
    assert f"{live_server.url}/similar" in page


def test_votlint_accepts_answers(live_server, dids, files):
    assert stilts.stilts_available(), "STILTS is not installed"
    url = f"{live_server.url}/similar?" + urlencode({"ID": dids[8], "K": 5, "DIMS": "1 2", "WEIGHTS": "1 2"})
    for report in (
        stilts.votlint(url),
        stilts.votlint_content(post(live_server, files["sdss"], K=5).content, "upload"),
        stilts.votlint_content(
            post(live_server, files["csv"], K=5, RESPONSEFORMAT="votable/b2").content, "b2"
        ),
    ):
        assert report.ok, f"{report.target}:\n" + "\n".join(report.errors)


# -- how typical the upload is (ood_score) -----------------------------------------------------------


def warnings_of(response: requests.Response) -> list[str]:
    document, _ = table_of(response.content)
    return [i.content or "" for i in document.resources[0].infos if i.name == "warning"]


def test_ood_score_ranks_garbage_above_a_real_star(live_server, files, star, tmp_path):
    """A flat line and pure noise over the same wavelengths are unlike any star: they score above the
    held-out star (a real spectrum the archive never saw) and above 90 % of the archive's own spectra
    (score 0.8), and from 0.9 on the answer carries a warning that says why."""
    wave = air_to_vacuum(star.wave_air)
    rng = np.random.default_rng(3)
    garbage = {
        "flat": write_flux_csv(tmp_path / "flat.csv", wave, np.ones_like(wave)),
        "noise": write_flux_csv(tmp_path / "noise.csv", wave, 1 + rng.normal(0, 0.5, wave.size)),
    }
    real = post(live_server, files["fits-image"], K=5)
    real_score = answer(real)[1]["ood_score"]
    assert 0.0 <= real_score < 0.8
    assert warnings_of(real) == []
    for name, path in garbage.items():
        response = post(live_server, path, K=5)
        score = answer(response)[1]["ood_score"]
        assert score > real_score and score >= 0.8, name
        warnings = warnings_of(response)
        unlike = [w for w in warnings if "unlike the spectra of this archive" in w]
        assert len(unlike) == (1 if score >= 0.9 else 0), name
        assert all(w in unlike or "the neighbours disagree" in w for w in warnings)  # see below
    assert "ood_score" not in answer(post(live_server, ID=answer(real)[0][0]["obs_publisher_did"]))[1]


def test_neighbours_of_widely_different_teff_make_a_weak_answer(live_server, files):
    """The hottest star of the archive has few like it: its neighbours' Teff spans more than 30 % of
    their median, and the answer says so and why; a sun-like star's neighbours agree (no warning)."""
    tap = TAPService(f"{live_server.url}/tap")
    hottest = tap.search("SELECT TOP 1 obs_publisher_did FROM ivoa.obscore ORDER BY teff DESC")[0]
    response = post(live_server, ID=hottest["obs_publisher_did"], K=5)
    rows, _ = answer(response)
    teff = [r["teff"] for r in rows]
    assert (max(teff) - min(teff)) / np.median(teff) > 0.3
    (warning,) = [w for w in warnings_of(response) if "the neighbours disagree" in w]
    assert f"{min(teff):,.0f} to {max(teff):,.0f} K" in warning
    sun_like = post(live_server, files["fits-image"], K=5)
    assert not [w for w in warnings_of(sun_like) if "the neighbours disagree" in w]


# -- the query's velocity -------------------------------------------------------------------------


VELOCITY_PARAMS = ("query_rv", "query_rv_err", "query_rv_xcorr", "query_rv_xcorr_err")


def shifted_csv(path: Path, star: MilesStar, rv_kms: float, snr: float, seed: int = 5) -> Path:
    """The held-out star (MILES spectra are at rest) as a source receding at ``rv_kms`` would show it."""
    rng = np.random.default_rng(seed)
    flux = star.flux + rng.normal(0, np.median(star.flux) / snr, star.flux.shape)
    return write_flux_csv(path, air_to_vacuum(star.wave_air) * (1 + rv_kms / C_KMS), flux)


@pytest.mark.parametrize("rv_kms", [-140.0, 95.0])
def test_query_rv_recovers_a_known_shift_within_its_stated_error(live_server, star, tmp_path, model, rv_kms):
    """Both velocities find the injected shift: the model's (against its reconstruction at rest) and the
    cross-correlation with the nearest archive spectrum, each to within twice its stated error; the
    errors are positive and below a pixel of the cross-correlation grid (the test model's grid is
    coarse, 867 km/s a pixel, so 217 km/s on the cross-correlation grid; the demo's is 4 times finer)."""
    _, params = answer(post(live_server, shifted_csv(tmp_path / "moving.csv", star, rv_kms, snr=40.0), K=5))
    pixel = fine_grid(model.grid).velocity_step_kms
    for name in ("query_rv", "query_rv_xcorr"):
        error = params[f"{name}_err"]
        assert 0 < error < pixel, (name, error, params[name])
        assert abs(params[name] - rv_kms) <= 2 * error, (name, params[name], error)


def test_velocity_params_and_columns_are_declared_and_votlint_clean(live_server, star, tmp_path, files):
    response = post(live_server, shifted_csv(tmp_path / "moving.csv", star, 60.0, snr=40.0), K=3)
    document, table = table_of(response.content)
    declared = {p.name: p for p in table.params}
    for name in VELOCITY_PARAMS:
        assert declared[name].unit == "km/s" and "spect.dopplerVeloc.opt" in declared[name].ucd
        assert "receding" in (declared[name].description or "") or name.endswith("_err")
    assert "stellar rest frame" in declared["query_rv"].description
    fields = {f.name: f for f in table.fields}
    assert fields["rv_model"].unit == "km/s" and fields["rv_model"].ucd == "spect.dopplerVeloc.opt"
    rows = answer(response)[0]
    # The archive's spectra are at rest: their own model velocities are zero within their errors.
    assert all(abs(r["rv_model"]) <= 2 * r["rv_model_err"] for r in rows), [
        (r["rv_model"], r["rv_model_err"]) for r in rows
    ]
    report = stilts.votlint_content(response.content, "velocities")
    assert report.ok, "\n".join(report.errors)


def test_what_a_model_load_leaves_is_kept_out_of_full_collections(client, dids):
    """The served model and what the process imported are frozen out of the cyclic collector once
    loaded (its full collections held requests for 160 ms at 10^6 spectra); requests still work
    and what they allocate is collected as usual."""
    import gc

    assert client.get("/similar", query_string={"ID": dids[0], "K": 3}).status_code == 200
    frozen = gc.get_freeze_count()
    assert frozen > 10_000
    assert client.get("/similar", query_string={"ID": dids[1], "K": 3}).status_code == 200
    # The same version: nothing reloaded or frozen again (frozen objects freed by refcount drop out).
    assert frozen - 1000 < gc.get_freeze_count() <= frozen


def test_an_archive_spectrums_neighbour_velocity_is_the_one_index_measured(live_server, client, dids):
    """/similar?ID= takes query_rv_xcorr from what ``latentvo index`` measured, without reading
    files; measured afresh (the stored figures taken away), the answer is the same to the byte."""
    from model.api import NEIGHBOUR_VELOCITY_FILE

    queries = [{"ID": did, "K": 4} for did in dids[:40:9]]
    stored = [client.get("/similar", query_string=q).data for q in queries]
    model = live_server.app.extensions["latentvo"]._served.model  # loaded by those requests
    assert model.archive_neighbour_velocities is not None
    for body in stored:
        params = {p.name: p.value for p in table_of(body)[1].params}
        assert np.isfinite(params["query_rv_xcorr"]) and params["query_rv_xcorr_err"] > 0
    model._mapped[NEIGHBOUR_VELOCITY_FILE] = None
    try:
        fresh = [client.get("/similar", query_string=q).data for q in queries]
    finally:
        del model._mapped[NEIGHBOUR_VELOCITY_FILE]
    assert fresh == stored

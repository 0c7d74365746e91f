"""The whole pipeline on a real (small) archive: ingest → train → encode → analyse → index."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from model.api import LatentModel, continuum_mismatch
from model.preprocess import prepare_many
from model.similarity import exact_search
from service import pipeline
from service.archive import Archive
from service.cli import main
from tests.conftest import small_config


def dump(archive: Archive) -> list:
    return [tuple(r) for r in archive.db.execute("SELECT * FROM spectrum ORDER BY row_id")]


@pytest.fixture(scope="module")
def built(tmp_path_factory, demo_dir):
    root = tmp_path_factory.mktemp("archive")
    config = small_config(root)
    archive = Archive.from_config(config)
    summary = pipeline.ingest(archive, [demo_dir / "miles_demo.fits"], collection="miles", progress=False)
    version = pipeline.train_model(archive, config, progress=False)
    pipeline.encode(archive, version, progress=False)
    analysis = pipeline.analyse(archive, config, version, progress=False)
    index = pipeline.build_index(archive, config, version, progress=False)
    return archive, config, summary, version, analysis, index


def test_ingest_puts_every_spectrum_with_labels_in_the_archive(built):
    archive, _, summary, *_ = built
    assert (summary.added, summary.updated, summary.failed) == (200, 0, [])
    row = archive.db.execute("SELECT * FROM ivoa_obscore WHERE obs_id = 'm0005'").fetchone()
    assert row["obs_publisher_did"] == "ivo://latentvo.example/~?miles/m0005"
    assert row["dataproduct_type"] == "spectrum"
    assert row["access_url"].endswith("/datalink/links?ID=ivo%3A%2F%2Flatentvo.example%2F~%3Fmiles%2Fm0005")
    assert 3.54e-7 < row["em_min"] < 3.56e-7 and 7.40e-7 < row["em_max"] < 7.42e-7  # vacuum metres
    labels = archive.db.execute("SELECT teff, logg, feh FROM spectrum WHERE obs_id = 'm0005'").fetchone()
    assert all(v is not None for v in labels)


def test_reingest_updates_instead_of_duplicating(built, demo_dir):
    archive, *_ = built
    before = archive.count()
    summary = pipeline.ingest(archive, [demo_dir / "miles_demo.fits"], collection="miles", progress=False)
    assert (summary.added, summary.updated) == (0, 200)
    assert archive.count() == before


def test_broken_file_is_reported_skipped_and_leaves_archive_unchanged(built, demo_dir, tmp_path):
    archive, *_ = built
    broken = tmp_path / "broken.fits"
    broken.write_bytes((demo_dir / "miles_demo.fits").read_bytes()[:100_000])
    garbage = tmp_path / "notes.csv"
    garbage.write_text("a,b\n1,2\n")
    before = dump(archive)
    summary = pipeline.ingest(archive, [broken, garbage, tmp_path / "missing.fits"], progress=False)
    assert summary.files == 3 and len(summary.failed) == 3
    assert all(name in reason for (name, reason) in ((str(p), r) for p, r in summary.failed))
    assert dump(archive) == before


def test_labels_file_adds_labels_by_identifier(tmp_path, demo_dir):
    archive = Archive(tmp_path / "a")
    labels = tmp_path / "labels.csv"
    labels.write_text("miles_id,rv,snr,colour\nm0005,12.5,80,0.3\n")
    pipeline.ingest(archive, [demo_dir / "miles_demo.fits"], labels_file=str(labels), progress=False)
    row = archive.db.execute("SELECT rv, snr, extra_labels FROM spectrum WHERE obs_id = 'm0005'").fetchone()
    assert (row["rv"], row["snr"]) == (12.5, 80.0) and '"colour": 0.3' in row["extra_labels"]


def test_model_version_row_and_checkpoint(built):
    archive, _, _, version, *_ = built
    row = archive.model(version)
    assert row["stage"] == "indexed" and row["is_current"] == 1
    assert row["latent_dim"] == 6 and row["n_train"] > 0 and len(row["training_set_hash"]) == 64
    assert (archive.model_dir(version) / "model.pt").exists()


def test_encode_fills_latent_table_and_matrix(built):
    archive, _, _, version, *_ = built
    model = LatentModel(archive.model_dir(version))
    assert model.latents.shape == (200, 6) and model.latents.dtype == np.float32
    did = "ivo://latentvo.example/~?miles/m0005"
    row = archive.row_of(version, did)
    db = archive.db.execute(
        "SELECT z0, z5, z0_var, recon_error, anomaly_score FROM ml_latent WHERE obs_publisher_did = ?", (did,)
    ).fetchone()
    assert db["z0"] == pytest.approx(float(model.latents[row, 0]), rel=1e-6)
    assert db["z0_var"] > 0 and db["recon_error"] > 0 and db["anomaly_score"] is not None
    # Each spectrum on the grid with its continuum (what uploads are ranked against by flux), NaN
    # where masked: under median normalisation, the flux as the encoder saw it.
    grid_flux = model.archive_grid_flux
    assert grid_flux.shape == (200, model.grid.n_pixels) and grid_flux.dtype == np.float16
    rows = archive.spectra(columns="obs_publisher_did, source_path, source_index")
    assert rows[row]["obs_publisher_did"] == did
    on_grid = prepare_many(pipeline.read_rows([rows[row]]), model.grid, model.matching)
    expected = on_grid.calibrated()[0].astype(np.float16)
    np.testing.assert_array_equal(grid_flux[row], expected)
    good = on_grid.good[0]
    assert model.matching.normalise == "median"
    np.testing.assert_allclose(grid_flux[row][good], on_grid.flux[0][good], rtol=2e-3)
    assert np.isfinite(grid_flux).mean() > 0.9


def test_analysis_stores_mi_for_model_and_pca(built):
    archive, _, _, version, analysis, _ = built
    rows = archive.db.execute(
        "SELECT * FROM ml_label_correlation WHERE model_version = ? AND label = 'teff'", (version,)
    ).fetchall()
    assert len(rows) == 6
    assert max(r["mi"] for r in rows) > 0.3 and all(r["pca_mi"] is not None for r in rows)
    assert analysis["informative_dims"] and "teff" in analysis["concentration"]
    informative = archive.model(version)["informative_dims"].split()
    assert [int(d) for d in informative] == analysis["informative_dims"]


def test_analysis_maps_every_encoded_spectrum_by_its_similarity_dimensions(built):
    archive, _, _, version, analysis, _ = built
    assert analysis["map_methods"][0] == "pca"
    rows = archive.map_points(version, "pca")
    assert [r["obs_publisher_did"] for r in rows] == archive.latent_dids(version)
    model = LatentModel(archive.model_dir(version))
    latents = np.asarray(model.latents)[:, model.similarity_dims]
    xy = np.array([[r["x"], r["y"]] for r in rows])
    # The map's first axis is the similarity space's first principal direction: the two agree.
    centred = latents - latents.mean(axis=0)
    direction = np.linalg.svd(centred, full_matrices=False)[2][0]
    assert abs(np.corrcoef(centred @ direction, xy[:, 0])[0, 1]) > 0.999
    assert archive.map_methods(version) == analysis["map_methods"]


def test_index_recall_equals_stored_figure_and_self_is_first_neighbour(built):
    archive, _, _, version, _, index = built
    model = LatentModel(archive.model_dir(version))
    stored = archive.model(version)["index_recall_at_10"]
    assert stored >= 0.99 and stored == index["recall_at_k"]
    assert model.index.measure_recall(k=10, n_queries=100) == stored
    for row in range(0, 200, 17):
        rows, distances = model.neighbours(row=row, k=5)
        assert rows[0] == row and distances[0] == 0
        exact_rows, _ = exact_search(model.latents, model.latents[row], 5, dims=model.similarity_dims)
        assert exact_rows[0] == row


def test_interrupted_index_build_keeps_previous_in_service(built, monkeypatch):
    archive, config, _, version, *_ = built
    from model import similarity

    def boom(*args, **kwargs):
        raise RuntimeError("killed")

    monkeypatch.setattr(similarity.LatentIndex, "build", boom)
    with pytest.raises(RuntimeError):
        pipeline.build_index(archive, config, version, progress=False)
    assert archive.current_model()["model_version"] == version
    assert LatentModel(archive.model_dir(version)).neighbours(row=3, k=3)[0][0] == 3


def test_cli_runs_each_stage(tmp_path, demo_dir, monkeypatch, capsys):
    root = tmp_path / "cli"
    monkeypatch.setenv("LATENTVO_ARCHIVE_ROOT", str(root))
    monkeypatch.setenv("LATENTVO_GRID_N_PIXELS", "128")
    monkeypatch.setenv("LATENTVO_MODEL_EPOCHS", "3")
    monkeypatch.setenv("LATENTVO_MODEL_LATENT_DIM", "4")
    monkeypatch.setenv("LATENTVO_MODEL_CHANNELS", "[4, 8]")
    monkeypatch.setenv("LATENTVO_ANALYSIS_MI_SUBSAMPLES", "2")
    subset = tmp_path / "subset.fits"
    shutil.copy(demo_dir / "miles_demo.fits", subset)
    assert main(["--quiet", "ingest", str(subset), "--collection", "miles"]) == 0
    for verb in ("train", "encode", "analyse", "index"):
        assert main(["--quiet", verb]) == 0, verb
    out = capsys.readouterr().out
    assert "200 spectra added" in out and "recall@10=" in out and "informative dimensions" in out
    assert main(["--quiet", "encode", "--model-version", "99"]) == 2


def test_analysis_on_a_sample_of_a_larger_archive(built):
    """With more spectra than analysis.max_rows, MI and PCA use a sample; anomaly scores cover all."""
    archive, config, _, version, *_ = built
    sampled = {**config, "analysis": {**config["analysis"], "max_rows": 60}}
    summary = pipeline.analyse(archive, sampled, version, progress=False)
    assert summary["informative_dims"]
    n = archive.db.execute(
        "SELECT MAX(n_spectra) FROM ml_label_correlation WHERE model_version = ? AND label = 'teff'",
        (version,),
    ).fetchone()[0]
    assert n <= 60
    scored = archive.db.execute(
        "SELECT COUNT(*) FROM ml_latent WHERE model_version = ? AND anomaly_score IS NOT NULL", (version,)
    ).fetchone()[0]
    assert scored == 200


@pytest.mark.parametrize(
    ("ra", "stored"), [(-10.0, 350.0), (360.0, 0.0), (725.5, 5.5), (12.25, 12.25), (None, None)]
)
def test_ingest_stores_right_ascension_in_the_obscore_range(tmp_path, ra, stored):
    """s_ra is in [0, 360) whatever form the file gave (ObsCore; cone boxes rely on it)."""
    from model.spectrum import Spectrum

    wave = np.linspace(4000.0, 5000.0, 50)
    spectrum = Spectrum(wave, np.ones(50), identifier="s1", ra=ra, dec=10.0, source=str(tmp_path / "s1.fits"))
    row = pipeline.spectrum_row("latentvo.example", spectrum, "test", "0", {})
    assert row["s_ra"] == (pytest.approx(stored) if stored is not None else None)


def test_a_continuum_model_is_trained_encoded_and_given_its_tolerance(tmp_path, demo_dir):
    """Continuum channels through every stage: the archive's spectra are encoded with their continuum,
    and ``index`` writes the tolerance the archive's own spectra need (at least the configured floor)."""
    config = small_config(
        tmp_path,
        grid={"normalise": "continuum"},
        model={"continuum_channel": True, "continuum_tolerance": 0.08, "epochs": 4},
    )
    archive = Archive.from_config(config)
    pipeline.ingest(archive, [demo_dir / "miles_demo.fits"], collection="miles", progress=False)
    version = pipeline.train_model(archive, config, progress=False)
    pipeline.encode(archive, version, progress=False)
    pipeline.build_index(archive, config, version, progress=False)
    model = LatentModel(archive.model_dir(version))
    assert model.continuum_channel
    rows = archive.spectra(columns="obs_publisher_did, source_path, source_index")[:20]
    spectra = pipeline.read_rows(rows)
    given = model.encode_spectra(spectra, continuum="given")
    assert np.allclose(given.mean, model.latents[:20], atol=1e-5)  # what encode stored
    withheld = model.encode_spectra(spectra, continuum="withheld")
    assert not np.allclose(withheld.mean, given.mean, atol=1e-3)  # the continuum counts
    _, sample = pipeline.reference_sample(archive, model)
    lines_only = model.encode_arrays(sample.flux, sample.good)
    mismatch = continuum_mismatch(sample.log_continuum, model.continua(lines_only.mean), sample.good)
    expected = max(0.08, float(np.percentile(mismatch[np.isfinite(mismatch)], 95)))
    assert model.continuum_tolerance == pytest.approx(expected)
    # What uploads are ranked against by flux: the continuum-normalised flux the encoder saw times the
    # continuum it divided out (divided by a constant), NaN where masked.
    on_grid = prepare_many(spectra[:1], model.grid, model.matching)
    good = on_grid.good[0]
    kept = model.archive_grid_flux[archive.row_of(version, rows[0]["obs_publisher_did"])]
    assert np.isnan(kept[~good]).all()
    continuum = np.exp(on_grid.log_continuum[0][good])
    np.testing.assert_allclose(kept[good] / continuum, on_grid.flux[0][good], rtol=2e-3, atol=1e-3)
    assert np.ptp(np.log(continuum)) > 0.3  # the continuum kept is not a constant
    checked = model.encode_spectra(spectra, continuum="checked")
    assert (checked.continuum_used == (checked.continuum_mismatch <= model.continuum_tolerance)).all()
    archive.close()


def test_index_measures_each_spectrums_velocity_against_its_nearest_neighbour(built, monkeypatch):
    """``latentvo index`` stores, per archive row, the neighbour /similar?ID= cross-correlates with by
    default (the index's nearest other row) and the velocity against it, as measured pair by pair;
    worker processes (spawned, as for a large archive) give the same figures as one process."""
    archive, config, _, version, *_ = built
    model = LatentModel(archive.model_dir(version))
    stored = np.array(model.archive_neighbour_velocities)
    rows = archive.spectra(columns="source_path, source_index")
    assert stored.shape == (len(rows), 3) and np.isfinite(stored).all()
    for row in range(0, len(rows), 23):
        nearest = model.index.query_row(row, config["index"]["k"])[0]
        assert stored[row, 2] == nearest[1] != row
        pair = [pipeline.read_rows([rows[i]])[0] for i in (row, int(nearest[1]))]
        velocity = model.velocity_from(*pair, 0.0)
        assert stored[row, :2] == pytest.approx([velocity.rv_kms, velocity.error_kms], rel=1e-9, abs=1e-9)
    monkeypatch.setattr(pipeline, "NEIGHBOUR_PARALLEL_FROM", 0)
    monkeypatch.setattr(pipeline, "NEIGHBOUR_CHUNK", 64)
    in_workers = pipeline.write_neighbour_velocities(archive, model, model.index, config["index"]["k"])
    np.testing.assert_array_equal(in_workers, stored)


def test_neighbour_groups_keep_each_spectrum_with_its_nearest():
    """Rows linked by "nearest of" in either direction share a group, so a task that measures a
    group reads each of its spectra once; rows without a neighbour stand alone."""
    rows = np.array([0, 1, 2, 3, 4, 6])
    nearest = np.array([1, 0, 1, 4, 3, 5])  # 0<->1 with 2 pointing in; 3<->4; 6 -> 5
    groups = pipeline.neighbour_groups(8, rows, nearest)
    assert groups[0] == groups[1] == groups[2]
    assert groups[3] == groups[4] != groups[0]
    assert groups[5] == groups[6] not in (groups[0], groups[3])
    assert len(set(groups.tolist())) == 4  # row 7 has no link: a group of its own

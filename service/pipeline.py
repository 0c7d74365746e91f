"""The pipeline stages behind the CLI: ingest → train → encode → analyse → index.

Each stage reads what the previous one wrote to the archive, is safe to re-run, and writes
its outputs atomically (a transaction, or a temp file renamed into place).
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np
import scipy.sparse
import scipy.sparse.csgraph
import torch
from astropy.table import Table
from tqdm.auto import tqdm

from model import analysis
from model.api import (
    ANALYSIS_FILE,
    CONTINUUM_PERCENTILE,
    CONTINUUM_TOLERANCE_FILE,
    GRID_FLUX_FILE,
    INDEX_FILE,
    MEAN_FILE,
    NEIGHBOUR_VELOCITY_FILE,
    QUALITY_FILE,
    VAR_FILE,
    VELOCITY_FILE,
    LatentModel,
    continuum_mismatch,
)
from model.atomic import write_json_atomic, write_npy_atomic
from model.augment import degrade
from model.checkpoint import grid_of, load_checkpoint, save_checkpoint
from model.ood import OOD_FILE, OODReference, sample_rows
from model.preprocess import Grid, Matching, OnGrid, prepare_augmented, prepare_many
from model.readers import iter_spectra, label_key, read_spectra, stellar_class
from model.similarity import LatentIndex
from model.spectrum import KNOWN_LABELS, Spectrum, SpectrumReadError
from model.training import TrainConfig, train
from model.velocity import pairs_from_files
from service.archive import Archive, publisher_did, safe_key, utc_now
from service.tap.schema import tableset_for, write_tap_schema

log = logging.getLogger(__name__)
SPECTRUM_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".vot", ".xml", ".csv", ".ecsv", ".txt")
ID_COLUMNS = ("obs_id", "identifier", "id", "obsid", "specid", "miles_id", "name", "filename", "file")


# -- ingest -----------------------------------------------------------------------------


@dataclass
class IngestSummary:
    files: int = 0
    added: int = 0
    updated: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        text = (
            f"{self.files} file(s): {self.added} spectra added, {self.updated} updated, "
            f"{len(self.failed)} file(s) failed"
        )
        return "\n".join([text, *(f"  failed: {reason}" for _, reason in self.failed)])


def expand_paths(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Files as given, and spectrum files found recursively in directories, sorted."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found += sorted(
                p for p in path.rglob("*") if p.is_file() and p.name.lower().endswith(SPECTRUM_SUFFIXES)
            )
        else:
            found.append(path)
    return found


def read_label_table(path: str | os.PathLike) -> dict[str, dict[str, float]]:
    """Labels keyed by identifier from any table astropy reads (ECSV, CSV, VOTable, FITS)."""
    table = Table.read(path)
    names = {n.lower(): n for n in table.colnames}
    id_col = next((names[c] for c in ID_COLUMNS if c in names), None)
    if id_col is None:
        raise ValueError(f"{path}: no identifier column (one of {', '.join(ID_COLUMNS)})")
    label_cols = {name: label_key(name) for name in table.colnames if name != id_col}
    labels: dict[str, dict[str, float]] = {}
    for row in table:
        values = {}
        for name, key in label_cols.items():
            value = row[name]
            if key and not np.ma.is_masked(value) and np.isscalar(value):
                try:
                    value = float(value)
                except (TypeError, ValueError):
                    continue
                if np.isfinite(value):
                    values[key] = value
        labels[str(row[id_col]).strip()] = values
    return labels


def spectrum_row(
    authority: str, spectrum: Spectrum, collection: str, sha256: str, labels: dict[str, float]
) -> dict:
    """The archive row of one spectrum (ObsCore-style units: metres, MJD, seconds)."""
    wave = spectrum.vacuum_wavelength()[spectrum.good]
    all_labels = {**spectrum.labels, **labels}
    known = {k: all_labels.get(k) for k in KNOWN_LABELS}
    extra = {k: v for k, v in all_labels.items() if k not in KNOWN_LABELS}
    target_class, spectral_type = stellar_class(spectrum.extra)
    mjd = spectrum.obs_time.mjd if spectrum.obs_time is not None else None
    return {
        "obs_publisher_did": publisher_did(authority, collection, spectrum.identifier),
        "obs_id": safe_key(spectrum.identifier),
        "obs_collection": collection,
        "target_name": spectrum.target_name or None,
        "s_ra": None if spectrum.ra is None else float(spectrum.ra) % 360.0,  # ObsCore: [0, 360)
        "s_dec": spectrum.dec,
        "t_min": mjd,
        "t_max": mjd + spectrum.exptime / 86400 if mjd is not None and spectrum.exptime else mjd,
        "t_exptime": spectrum.exptime,
        "em_min": float(wave.min()) * 1e-10,
        "em_max": float(wave.max()) * 1e-10,
        "em_res_power": spectrum.resolving_power,
        "em_xel": int(spectrum.good.sum()),
        "medium": spectrum.medium,
        "flux_unit": spectrum.flux_unit or None,
        "instrument_name": spectrum.instrument or None,
        "source_path": str(Path(spectrum.source).resolve()),
        "source_format": spectrum.source_format,
        "source_index": spectrum.source_index,
        "source_sha256": sha256,
        **known,
        "extra_labels": json.dumps(extra) if extra else None,
        "target_class": target_class,
        "spectral_type": spectral_type,
        "ingested_at": utc_now(),
    }


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def ingest(
    archive: Archive,
    paths: Sequence[str | os.PathLike],
    labels_file: str | None = None,
    collection: str = "default",
    progress: bool = True,
    dask: str | None | bool = False,
) -> IngestSummary:
    """Put spectra into the archive; broken files are reported and skipped.

    In one process each file is its own transaction. With ``dask`` (None: a LocalCluster; an address:
    that scheduler's cluster) the files are read on the workers and every file's rows land in one
    transaction at the end, in file order, so the rows are numbered as in one process.
    """
    collection = safe_key(collection)
    labels = read_label_table(labels_file) if labels_file else {}
    files = expand_paths(paths)
    summary = IngestSummary(files=len(files))
    bar = tqdm(desc="ingest", unit="spectrum", disable=not progress)

    def land(number: int, path: Path, rows: list[dict] | str) -> None:
        if isinstance(rows, str):
            summary.failed.append((str(path), rows))
            log.warning("skipped %s", rows)
        else:
            added, updated = archive.upsert_spectra(rows)
            summary.added += added
            summary.updated += updated
            bar.update(len(rows))
        bar.set_postfix(files=f"{number}/{len(files)}", failed=len(summary.failed))

    if dask is False:
        for number, path in enumerate(files, 1):
            land(number, path, read_file_rows(path, collection, archive.authority, labels))
    else:
        from service.cluster import cluster_client, read_on_cluster

        with cluster_client(dask if isinstance(dask, str) else None) as client, archive.transaction():
            for number, path, rows in read_on_cluster(client, files, collection, archive.authority, labels):
                land(number, path, rows)
    bar.close()
    return summary


def read_file_rows(path: Path, collection: str, authority: str, labels: dict[str, dict]) -> list[dict] | str:
    """The archive rows of one file's spectra, or what makes the file unusable (a message: it travels
    back from Dask workers, where an exception would arrive as another one)."""
    try:
        if not path.is_file():
            raise SpectrumReadError(path, "no such file")
        sha, size = file_sha256(path), path.stat().st_size
        rows = []
        for spectrum in iter_spectra(path):
            extra = labels.get(spectrum.identifier) or labels.get(path.name) or labels.get(path.stem)
            rows.append(spectrum_row(authority, spectrum, collection, sha, extra or {}))
        if not rows:
            raise SpectrumReadError(path, "no spectra in file")
    except (SpectrumReadError, ValueError) as exc:
        return str(exc)
    for row in rows:
        row["access_estsize"] = max(1, size // len(rows) // 1024)
    return rows


# -- reading archive spectra back ----------------------------------------------------------


#: A file is read row by row (each by its index, from the handle model.readers keeps open) when fewer
#: than 1 in this many of its rows from the first wanted to the last are wanted; otherwise those rows
#: are walked, which costs less per row (a Dask partition, a slice of one file, reads only its slice).
SPARSE_READ = 4


def load_spectra(rows: Sequence) -> Iterator[tuple[int, Spectrum]]:
    """Yield (position in ``rows``, spectrum) reading each source file once, in file order."""
    by_file: dict[str, dict[int, int]] = defaultdict(dict)
    for position, row in enumerate(rows):
        by_file[row["source_path"]][row["source_index"]] = position
    for path, wanted in by_file.items():
        first, last = min(wanted), max(wanted)
        if len(wanted) == 1 or len(wanted) * SPARSE_READ < last - first + 1:  # a sample of a big table
            for index in sorted(wanted):
                yield wanted[index], read_spectra(path, index=index)[0]
            continue
        for spectrum in iter_spectra(path, range(first, last + 1)):
            if spectrum.source_index in wanted:
                yield wanted[spectrum.source_index], spectrum


def read_rows(rows: Sequence, progress: bool = False) -> list[Spectrum]:
    """The spectra of ``rows`` in row order (each source file read once)."""
    spectra: list[Spectrum | None] = [None] * len(rows)
    for position, spectrum in tqdm(load_spectra(rows), total=len(rows), desc="read", disable=not progress):
        spectra[position] = spectrum
    return spectra


def fit_grid(archive: Archive, config: dict) -> Grid:
    """The configured grid, or one fitted to the range most of the archive covers."""
    section = config["grid"]
    if section["wave_min"] > 0 and section["wave_max"] > 0:
        return Grid(section["wave_min"], section["wave_max"], section["n_pixels"])
    ranges = [(r["em_min"] * 1e10, r["em_max"] * 1e10) for r in archive.spectra(columns="em_min, em_max")]
    return Grid.fit(ranges, section["n_pixels"], section["coverage_fraction"])


# -- train ------------------------------------------------------------------------------

VELOCITY_FRAMES = ("rest", "labels", "free")


def archive_matching(archive: Archive, config: dict) -> Matching:
    """How uploads are brought to this archive: the configured normalisation, and the archive's
    resolving power (``[grid] resolving_power``, or the median its spectra declare; 0 if none do)."""
    power = float(config["grid"].get("resolving_power") or 0.0)
    if power <= 0:
        declared = [r["em_res_power"] for r in archive.spectra(columns="em_res_power") if r["em_res_power"]]
        power = float(np.median(declared)) if declared else 0.0
    return Matching(config["grid"]["normalise"], power)


def velocity_anchor(
    frame: str, rv_labels: Sequence[float | None], groups: np.ndarray, rv_added: np.ndarray
) -> np.ndarray | None:
    """Each training row's velocity in the archive's frame (km/s, NaN where unknown), which z0 is
    taught to give: "rest" - the archive's spectra are at rest (a stellar library), so a row's
    velocity is the shift the augmentation gave it; "labels" - each spectrum's ``rv`` label is
    the velocity its wavelengths show (an observed-frame survey), plus the added shift;
    "free" - no anchor (z0 then measures velocity up to a constant)."""
    if frame not in VELOCITY_FRAMES:
        raise ValueError(f"[model] velocity_frame must be one of {', '.join(VELOCITY_FRAMES)}, not {frame!r}")
    if frame == "free":
        return None
    if frame == "rest":
        return np.asarray(rv_added, dtype=np.float64)
    own = np.array([np.nan if v is None else v for v in rv_labels], dtype=np.float64)
    return own[np.asarray(groups)] + np.asarray(rv_added, dtype=np.float64)


def train_model(
    archive: Archive,
    config: dict,
    progress: bool = True,
    *,
    dids: Sequence[str] | None = None,
    overrides: dict | None = None,
    from_version: int | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    provenance: dict | None = None,
) -> int:
    """Train a new model version; returns its version number.

    On the whole archive, or on the spectra ``dids`` names. ``overrides`` replace ``[model]`` settings
    (TrainConfig names: epochs, latent_dim, kl_weight, seed). ``from_version`` fine-tunes that
    version: its weights, grid, matching and training settings are the start, ``overrides`` on top
    (its latent dimension cannot change). ``on_epoch`` gets each epoch's losses; ``provenance`` is
    kept in the version's checkpoint beside the training-set hash.
    """
    rows = archive.spectra(columns="obs_publisher_did, source_path, source_index, rv")
    if dids is not None:
        wanted = set(dids)
        rows = [row for row in rows if row["obs_publisher_did"] in wanted]
    if len(rows) < 2:
        raise ValueError("training needs at least two spectra")
    section = config["model"]
    initial_state = None
    if from_version is None:
        train_config = TrainConfig.from_mapping({**section, **(overrides or {})})
        grid = fit_grid(archive, config)
        matching = archive_matching(archive, config)
    else:
        source_model, source = load_checkpoint(archive.model_dir(from_version))
        train_config = TrainConfig.from_mapping({**source["train"], **(overrides or {})})
        if train_config.latent_dim != source["train"]["latent_dim"]:
            raise ValueError(
                f"fine-tuning keeps the latent dimension of version {from_version} "
                f"({source['train']['latent_dim']}); train a new model for another one"
            )
        grid, matching = grid_of(source), Matching.from_dict(source.get("matching"))
        initial_state = source_model.state_dict()
    limit = section["max_train_spectra"]
    if 0 < limit < len(rows):
        chosen = np.random.default_rng(train_config.seed).choice(len(rows), size=limit, replace=False)
        rows = [rows[i] for i in np.sort(chosen)]
    spectra = read_rows(rows, progress)
    data = prepare_augmented(
        spectra,
        grid,
        copies=section["augment_copies"],
        rv_max=section["augment_rv_max"],
        snr_range=None
        if train_config.augment_instrument
        else (section["augment_snr_min"], section["augment_snr_max"]),
        seed=train_config.seed,
        matching=matching,
    )
    result = train(
        data.flux,
        data.good,
        train_config,
        groups=data.groups,
        progress=progress,
        pixel_kms=grid.velocity_step_kms,
        noise=data.noise,
        rv_anchor=velocity_anchor(
            section["velocity_frame"], [r["rv"] for r in rows], data.groups, data.rv_added
        ),
        resolving_power=matching.resolving_power,
        log_continuum=data.log_continuum,
        initial_state=initial_state,
        on_epoch=on_epoch,
    )
    version = archive.next_model_version()
    checkpoint = {
        "grid": grid.to_dict(),
        "train": train_config.to_dict(),
        "normalise": matching.normalise,
        "matching": matching.to_dict(),
        "velocity_frame": section["velocity_frame"],
        "augmentation": {k: section[k] for k in section if k.startswith("augment_")},
        "training_set_hash": result.training_set_hash,
        "training_set": {"n_spectra": len(rows), "n_rows": len(data.flux)},
        "metrics": result.metrics,
        "history": result.history,
        "created": utc_now(),
    }
    if provenance:
        checkpoint["provenance"] = provenance
    save_checkpoint(archive.model_dir(version), result.model, checkpoint)
    archive.add_model(version, checkpoint, result.metrics)
    return version


# -- encode -----------------------------------------------------------------------------


#: Spectra per encoding batch; partitions of a Dask run are whole multiples of it.
ENCODE_BATCH = 1024


@dataclass
class Encoded:
    """What encoding gives for a run of archive rows, in their order."""

    mean: np.ndarray
    var: np.ndarray
    recon: np.ndarray
    coverage: np.ndarray
    velocity: np.ndarray  # (n, 2): km/s and its error, NaN where none was measured
    grid_flux: np.ndarray  # (n, pixels) float16: the spectra on the model's grid (OnGrid.calibrated)

    @classmethod
    def concatenate(cls, parts: Sequence[Encoded]) -> Encoded:
        return cls(*(np.concatenate([getattr(p, name) for p in parts]) for name in cls.__dataclass_fields__))


def encode_rows(
    latent_model: LatentModel, rows: Sequence, batch_size: int = ENCODE_BATCH, progress: bool = False
) -> Encoded:
    """Encode the spectra of archive ``rows`` (source_path, source_index), reading each file once.

    The same computation runs in one process (:func:`encode`) and on Dask workers
    (service/cluster.py): a spectrum's encoding does not depend on what else is in its batch.
    """
    n, dim = len(rows), latent_model.latent_dim
    found = Encoded(
        np.empty((n, dim), np.float32),
        np.empty((n, dim), np.float32),
        np.empty(n, np.float32),
        np.empty(n, np.float32),
        np.full((n, 2), np.nan, np.float32),
        np.empty((n, latent_model.grid.n_pixels), np.float16),
    )
    for positions, batch in _batches(load_spectra(rows), batch_size, n, progress):
        encoded = latent_model.encode_spectra(batch)
        found.mean[positions], found.var[positions] = encoded.mean, encoded.var
        found.recon[positions], found.coverage[positions] = encoded.recon_error, encoded.coverage
        found.grid_flux[positions] = encoded.on_grid.calibrated()
        for position, measured in zip(
            positions, latent_model.velocities(batch, encoded.mean, encoded.rest), strict=True
        ):
            if measured is not None:
                found.velocity[position] = measured.rv_kms, measured.error_kms
    return found


def encode(
    archive: Archive,
    version: int | None = None,
    batch_size: int = ENCODE_BATCH,
    progress: bool = True,
    dask: str | None | bool = False,
) -> int:
    """Posterior means and variances of every archive spectrum, into the DB and .npy matrices.

    ``dask``: False runs here; None a LocalCluster of this machine; an address that scheduler's cluster
    (service/cluster.py). Either way the version's files and rows are written only at the end.
    """
    version = archive.model(version)["model_version"]
    directory = archive.model_dir(version)
    rows = archive.spectra(columns="obs_publisher_did, source_path, source_index")
    if dask is False:
        encoded = encode_rows(LatentModel(directory), rows, batch_size, progress)
    else:
        from service.cluster import cluster_client, encode_on_cluster

        with cluster_client(dask if isinstance(dask, str) else None) as client:
            encoded = encode_on_cluster(client, directory, rows, batch_size, progress=progress)
    write_encoding(archive, version, [r["obs_publisher_did"] for r in rows], encoded)
    return version


def write_encoding(archive: Archive, version: int, dids: Sequence[str], encoded: Encoded) -> None:
    """A version's encoding, landed: matrices renamed into place, then its rows in one transaction."""
    directory = archive.model_dir(version)
    write_npy_atomic(directory / MEAN_FILE, encoded.mean)
    write_npy_atomic(directory / VAR_FILE, encoded.var)
    write_npy_atomic(directory / VELOCITY_FILE, encoded.velocity)
    write_npy_atomic(directory / QUALITY_FILE, np.column_stack([encoded.coverage, encoded.recon]))
    write_npy_atomic(directory / GRID_FLUX_FILE, encoded.grid_flux)
    archive.write_latents(version, dids, encoded.mean, encoded.var, encoded.recon)
    archive.update_model(version, stage="encoded")


def _batches(items: Iterator[tuple[int, Spectrum]], size: int, total: int, progress: bool):
    bar = tqdm(total=total, desc="encode", unit="spectrum", disable=not progress)
    positions, batch = [], []
    for position, spectrum in items:
        positions.append(position)
        batch.append(spectrum)
        if len(batch) == size:
            yield np.array(positions), batch
            bar.update(len(batch))
            positions, batch = [], []
    if batch:
        yield np.array(positions), batch
        bar.update(len(batch))
    bar.close()


# -- analyse ----------------------------------------------------------------------------


def analyse(
    archive: Archive,
    config: dict,
    version: int | None = None,
    progress: bool = True,
    dask: str | None | bool = False,
) -> dict:
    """Informative dimensions, label mutual information (model and PCA), anomaly scores.

    With ``dask`` (None: a LocalCluster; an address: that scheduler's cluster) the MI estimates, one task
    per label for the model and for PCA, run on the workers, with the same random draws and results.
    """
    if dask is False:
        return _analyse(archive, config, version, progress)
    from service.cluster import cluster_client

    with cluster_client(dask if isinstance(dask, str) else None) as client:
        return _analyse(archive, config, version, progress, client)


def _analyse(archive: Archive, config: dict, version: int | None, progress: bool, client=None) -> dict:
    section = config["analysis"]
    version = archive.model(version)["model_version"]
    directory = archive.model_dir(version)
    latent_model = LatentModel(directory)
    mean = np.asarray(latent_model.latents)
    var = np.load(directory / VAR_FILE, mmap_mode="r")
    dids = archive.latent_dids(version)
    informative, kl = analysis.informative_dimensions(
        mean, np.asarray(var), kl_threshold=section["kl_threshold"]
    )
    if not informative:
        informative = [int(np.argmax(kl))]
    rng = np.random.default_rng(0)
    sample = np.sort(rng.choice(len(dids), size=min(section["max_rows"], len(dids)), replace=False))
    labels = archive.label_arrays([dids[i] for i in sample])
    rows = archive.spectra(columns="obs_publisher_did, source_path, source_index")
    by_did = {r["obs_publisher_did"]: r for r in rows}
    sample_rows = [by_did[dids[i]] for i in sample]
    flux, good, *_ = prepare_many(read_rows(sample_rows), latent_model.grid, latent_model.matching)
    pca_scores, _ = analysis.pca_baseline(flux, latent_model.latent_dim, mask=~good)
    mi_args = {"n_neighbors": section["mi_neighbors"], "n_bootstrap": section["mi_subsamples"]}
    if client is None:
        model_mi = analysis.mutual_information(mean[sample], labels, **mi_args)
        pca_rows = analysis.mutual_information(pca_scores, labels, **mi_args)
    else:
        from service.cluster import information_on_cluster

        model_mi, pca_rows = (
            information_on_cluster(client, latents, labels, **mi_args)
            for latents in (mean[sample], pca_scores)
        )
    pca_mi = {(r["dim"], r["label"]): r for r in pca_rows}
    correlations = []
    for row in model_mi:
        pca = pca_mi.get((row["dim"], row["label"]), {})
        correlations.append(
            {
                "dim": row["dim"],
                "label": row["label"],
                "informative": int(row["dim"] in informative),
                "mi": row["mi"],
                "mi_error": row["mi_err"],
                "pearson": row["pearson"],
                "spearman": row["spearman"],
                "pca_mi": pca.get("mi"),
                "pca_mi_error": pca.get("mi_err"),
                "pca_pearson": pca.get("pearson"),
                "pca_spearman": pca.get("spearman"),
                "n_spectra": row["n"],
            }
        )
    recon = recon_errors(archive, version)
    scores = analysis.anomaly_scores(mean[:, informative], recon, n_neighbors=section["lof_neighbors"])
    archive.write_analysis(version, informative, correlations, scores["lof"], scores["anomaly_score"])
    summary = {
        "informative_dims": [int(d) for d in informative],
        "kl_per_dim": [float(x) for x in kl],
        "concentration": {label: analysis.concentration(model_mi, label) for label in labels},
        "pca_concentration": {
            label: analysis.concentration(list(pca_mi.values()), label) for label in labels
        },
    }
    write_json_atomic(directory / ANALYSIS_FILE, summary)
    similarity = LatentModel(directory).similarity_dims  # reads the informative dimensions just written
    summary["map_methods"] = write_maps(archive, version, dids, mean[:, similarity])
    return summary


def write_maps(archive: Archive, version: int, dids: Sequence[str], latents: np.ndarray) -> list[str]:
    """Store ml.map for every projection this installation can make; the methods written."""
    methods = analysis.available_map_methods()
    for method in methods:
        archive.write_map(version, method, dids, analysis.map_projection(latents, method))
    return methods


# -- index ------------------------------------------------------------------------------


def recon_errors(archive: Archive, version: int) -> np.ndarray:
    """Each archive spectrum's reconstruction error under ``version``, in row order."""
    rows = archive.db.execute(
        "SELECT recon_error FROM ml_latent WHERE model_version = ? ORDER BY row_index", (version,)
    )
    return np.array([r["recon_error"] for r in rows], dtype=np.float64)


def reference_sample(archive: Archive, model: LatentModel) -> tuple[np.ndarray, OnGrid]:
    """A seeded sample of the archive's rows (positions) and their spectra on the model's grid: what
    the model's reference figures (ood_score, the continuum tolerance) are measured on."""
    rows = archive.spectra(columns="obs_publisher_did, source_path, source_index")
    chosen = sample_rows(len(rows))
    return chosen, prepare_many(read_rows([rows[i] for i in chosen]), model.grid, model.matching)


def ood_reference(chosen: np.ndarray, sample: OnGrid, index: LatentIndex, model: LatentModel) -> OODReference:
    """What a typical upload looks like to this model: a sample of archive spectra (rows ``chosen``)
    as another instrument would deliver them (the training's instrument augmentation, every one
    degraded), with their structured residuals and their distances to the nearest *other* archive
    spectrum - as a star the archive does not hold would be. Without instrument augmentation, the
    archive as it is.
    """
    flux, good = sample.flux, sample.good
    train_config = TrainConfig.from_mapping(model.config.get("train", {}))
    if train_config.augment_instrument:
        flux, good = degraded_copies(flux, good, train_config, model, seed=int(train_config.seed))
    encoded = model.encode_arrays(flux, good, ood=True)
    nearest = np.empty(len(chosen))
    for n, (row, vector) in enumerate(zip(chosen, encoded.mean, strict=True)):
        found, distances = index.query_vector(vector, 2)
        nearest[n] = distances[1] if found[0] == row else distances[0]
    return OODReference.build(encoded.structured, nearest, encoded.line_signal)


#: Rows per task of :func:`write_neighbour_velocities` in worker processes, and the archive size from
#: which starting workers (each imports numpy, scipy and astropy afresh) pays for itself.
NEIGHBOUR_CHUNK = 2000
NEIGHBOUR_PARALLEL_FROM = 20000


def write_neighbour_velocities(
    archive: Archive, model: LatentModel, index: LatentIndex, k: int, progress: bool = False
) -> np.ndarray:
    """Each archive spectrum's velocity against its nearest other archive spectrum by the index, the
    one ``/similar?ID=`` cross-correlates it with by default (``query_rv_xcorr``), so that answer
    reads no files. Measured as if the neighbour were at rest; the service adds the neighbour's own
    velocity. Large archives are measured in worker processes started fresh (spawned, never forked:
    this process has torch loaded).

    Rows are measured in groups linked by "nearest of" (a spectrum and its neighbour always share
    one), so that a task reads each spectrum of its group once, for its own pair and for the pairs
    it is the neighbour in, instead of once per pair it is in.
    """
    rows = archive.spectra(columns="source_path, source_index")
    n = len(rows)
    found = np.full((n, 3), np.nan)
    for row in tqdm(range(n), desc="neighbours", unit="spectrum", disable=not progress):
        nearest = index.query_row(row, k)[0]
        if len(nearest) > 1:
            found[row, 2] = nearest[1]
    measured = np.flatnonzero(np.isfinite(found[:, 2]))
    neighbour = np.full(n, -1, dtype=np.int64)
    neighbour[measured] = found[measured, 2]
    measured = measured[
        np.argsort(neighbour_groups(n, measured, neighbour[measured])[measured], kind="stable")
    ]
    chunks = [measured[start : start + NEIGHBOUR_CHUNK] for start in range(0, len(measured), NEIGHBOUR_CHUNK)]
    tasks = ([], [])
    for chunk in chunks:  # each task: the files it reads once, and its pairs as positions among them
        pairs = np.stack([chunk, neighbour[chunk]], axis=1)
        needed, positions = np.unique(pairs, return_inverse=True)
        tasks[0].append([(rows[int(i)]["source_path"], rows[int(i)]["source_index"]) for i in needed])
        tasks[1].append(positions.reshape(pairs.shape).tolist())
    bar = tqdm(total=len(measured), desc="xcorr", unit="spectrum", disable=not progress)
    measure = partial(pairs_from_files, grid=model.grid, matching=model.matching)
    if len(measured) < NEIGHBOUR_PARALLEL_FROM:
        results = map(measure, *tasks)
        pool = None
    else:
        pool = ProcessPoolExecutor(os.cpu_count() or 1, mp_context=multiprocessing.get_context("spawn"))
        results = pool.map(measure, *tasks)
    try:
        for chunk, velocities in zip(chunks, results, strict=True):
            found[chunk, :2] = velocities
            bar.update(len(velocities))
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    write_npy_atomic(model.directory / NEIGHBOUR_VELOCITY_FILE, found)
    return found


def neighbour_groups(n: int, rows: np.ndarray, neighbours: np.ndarray) -> np.ndarray:
    """A group number for each of ``n`` rows: rows linked by "``rows[i]``'s nearest is
    ``neighbours[i]``", in either direction, share one (weakly connected components)."""
    graph = scipy.sparse.coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, neighbours)), shape=(n, n))
    return scipy.sparse.csgraph.connected_components(graph, directed=True, connection="weak")[1]


def write_continuum_tolerance(model: LatentModel, sample: OnGrid) -> float:
    """How far an upload's continuum may stray from the one the model expects of it and still be
    compared (model/api.py): as far as most of the archive's own spectra (``sample``) stray, encoded
    from their lines alone (the CONTINUUM_PERCENTILE-th percentile), and no less than ``[model]
    continuum_tolerance``. So an archive spectrum uploaded again is, as a rule, compared as the
    archive holds it."""
    floor = TrainConfig.from_mapping(model.config.get("train", {})).continuum_tolerance
    lines_only = model.encode_arrays(sample.flux, sample.good)
    mismatch = continuum_mismatch(sample.log_continuum, model.continua(lines_only.mean), sample.good)
    found = mismatch[np.isfinite(mismatch)]
    tolerance = max(floor, float(np.percentile(found, CONTINUUM_PERCENTILE))) if len(found) else floor
    write_npy_atomic(model.directory / CONTINUUM_TOLERANCE_FILE, np.array([tolerance]))
    return tolerance


def degraded_copies(
    flux: np.ndarray, good: np.ndarray, config: TrainConfig, model: LatentModel, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Every spectrum through the training's instrument augmentation (seeded, all degraded)."""
    augmentation = replace(config.instrument_augmentation, probability=1.0)
    generator = torch.Generator().manual_seed(seed)
    out_flux, out_good = degrade(
        torch.from_numpy(flux),
        torch.from_numpy(good),
        augmentation,
        model.matching.resolving_power,
        model.grid.velocity_step_kms,
        generator,
    )
    return out_flux.numpy(), out_good.numpy()


def build_index(
    archive: Archive,
    config: dict,
    version: int | None = None,
    progress: bool = True,
    make_current: bool = True,
) -> dict:
    """Annoy index over the similarity dimensions, tuned to the recall target, then swapped in
    (unless ``make_current`` is False: the version is ready to serve, and waits for promotion)."""
    section = config["index"]
    version = archive.model(version)["model_version"]
    directory = archive.model_dir(version)
    latent_model = LatentModel(directory)
    index = LatentIndex.build(
        np.asarray(latent_model.latents),
        latent_model.similarity_dims,
        directory / INDEX_FILE,
        k=section["k"],
        target_recall=section["target_recall"],
        n_queries=section["recall_queries"],
        progress=progress,
    )
    meta = index.meta
    chosen, sample = reference_sample(archive, latent_model)
    ood_reference(chosen, sample, index, latent_model).save(directory / OOD_FILE)
    if latent_model.velocity_dim is not None:
        write_neighbour_velocities(archive, latent_model, index, section["k"], progress)
    if latent_model.continuum_channel:
        write_continuum_tolerance(latent_model, sample)
    archive.update_model(
        version,
        index_n_trees=meta.n_trees,
        index_search_k=meta.search_k,
        index_recall_at_10=meta.recall_at_k,
        stage="indexed",
    )
    archive.fill_latent_arrays()  # versions encoded before ml.latent had its arrays
    if make_current:
        promote(archive, version)
    return {
        "version": version,
        "n_trees": meta.n_trees,
        "search_k": meta.search_k,
        "recall_at_k": meta.recall_at_k,
    }


def promote(archive: Archive, version: int) -> None:
    """Put an indexed version in service, and TAP_SCHEMA's ml.latent columns (z0 … z<d-1>) with it."""
    archive.make_current(version)
    write_tap_schema(archive, tableset_for(archive.model(version)["latent_dim"]))

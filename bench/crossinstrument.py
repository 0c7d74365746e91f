"""Spectra from other instruments through /similar: neighbours' labels, velocities, and the OOD score.

Every MILES star that the demo archive does not hold (785 of 985) is turned into what two other
instruments would deliver, with known truth (the star's catalogue labels; MILES spectra are at
rest, so the velocity is the one injected):

- ``R1800``: a survey spectrograph - smoothed to R = 1800, vacuum wavelengths sampled every
  69 km/s over 3800-7400 Å, a random relative flux calibration, S/N 10-100, velocity ±150 km/s;
  written as CSV (vacuum wavelength, flux, error).
- ``R500``: a low-resolution library - smoothed to R = 500, air wavelengths every 5 Å over
  3600-7300 Å, its own flux calibration, S/N 10-100, velocity ±150 km/s; written as a FITS image
  with a linear air-wavelength WCS.

Flux calibrations are random smooth curves exp(Σ a_k P_k(log λ)), k ≤ 4, log-RMS 0.1-0.5 (a
factor of up to ~2 across the range). Garbage uploads: Gaussian noise, flat lines, linear ramps
and galaxy-like composites from the synthetic generator (three stars, 250 km/s dispersion,
z ≈ 0.05-0.1, emission lines).

Each file is POSTed to ``/similar`` (K = 5) of the demo archive served by gunicorn. A star is
"within 500 K" when the median catalogue Teff of its 5 neighbours is. Beside the model, two
baselines answer the same uploads with the same matching (vacuum, the model's grid, the
velocity and resolving power the service found): k-NN over the whole archive on the gridded flux
("raw flux", compared as the service's flux ranking compares: continua kept, a calibration curve
fitted) and on a PCA of the continuum-normalised flux with as many components as the model has
latent dimensions. "raw flux (archive resolution)" is k-NN on continuum-normalised flux with no
resolution or velocity matching, and "raw flux (median)" the matching the service had first
(median normalisation only). Velocities: ``query_rv`` (the model's z0) and
``query_rv_xcorr`` (cross-correlation with the reconstruction) against the injected velocity.
``ood_score``: ROC AUC of garbage against the valid uploads.

The archive is the demo's (200 stars) unless ``--holdout-every N`` asks for one of the rest of
MILES: every N-th star by Teff rank is held out (so the held-out stars span the library) and the
others are ingested and trained on with the demo's settings. The demo archive is too sparse for
the targets to be reachable by any similarity space (see "ceilings" in the report).

Usage: python bench/crossinstrument.py [--miles DIR] [--root DIR] [--rebuild] [--limit N]
       [--holdout-every N]
Writes bench/results/crossinstrument.json and crossinstrument.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import requests
from astropy.io import fits
from scipy.ndimage import gaussian_filter1d
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import NearestNeighbors

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.heldout import (  # noqa: E402
    DEMO_CONFIG,
    MilesStar,
    build_demo,
    gunicorn,
    heldout_stars,
    miles_dir_default,
    similar,
)
from model import analysis, resolution, synthetic  # noqa: E402
from model.api import LatentModel  # noqa: E402
from model.preprocess import C_KMS, Matching, prepare_many, smooth_to_resolution  # noqa: E402
from model.readers import read_spectra  # noqa: E402
from model.spectrum import Spectrum, air_to_vacuum, vacuum_to_air  # noqa: E402
from service import pipeline  # noqa: E402
from service.archive import Archive  # noqa: E402
from service.config import load_config  # noqa: E402

K = 5
TEFF_TOLERANCE = 500.0
#: Resolving power of MILES (FWHM 2.5 Å, quoted at 5000 Å).
MILES_POWER = 2000.0
TEFF_RANGES = ((3500, 10000), (10000, 1e6), (0, 3500))


@dataclass(frozen=True)
class Setting:
    name: str
    resolving_power: float
    wave_min: float
    wave_max: float
    vacuum: bool
    log_step_kms: float = 0.0  # log-λ sampling when > 0, else linear_step_aa
    linear_step_aa: float = 0.0


SETTINGS = (
    Setting("R1800", 1800.0, 3800.0, 7400.0, vacuum=True, log_step_kms=69.0),
    Setting("R500", 500.0, 3600.0, 7300.0, vacuum=False, linear_step_aa=5.0),
)


@dataclass
class Upload:
    path: Path
    setting: str
    star: MilesStar | None
    rv: float
    snr: float


def response_curve(log_wave: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random smooth flux calibration: exp of Legendre terms up to order 4, log-RMS 0.1-0.5."""
    x = 2 * (log_wave - log_wave.min()) / np.ptp(log_wave) - 1
    order = int(rng.integers(2, 5))
    coefficients = np.concatenate([[0.0], rng.normal(size=order)])
    curve = np.polynomial.legendre.legval(x, coefficients)
    return np.exp(curve / curve.std() * rng.uniform(0.1, 0.5))


def observe(star: MilesStar, setting: Setting, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """What ``setting``'s instrument records of ``star``: (wave in its medium, flux, error, rv, snr)."""
    rv = float(rng.uniform(-150, 150))
    snr = float(np.exp(rng.uniform(np.log(10), np.log(100))))
    vacuum = air_to_vacuum(star.wave_air)
    wave, flux, bad = smooth_to_resolution(
        vacuum, star.flux, ~np.isfinite(star.flux) | (star.flux <= 0), MILES_POWER, setting.resolving_power
    )
    wave = wave * (1 + rv / C_KMS)
    if setting.log_step_kms:
        step = setting.log_step_kms / C_KMS
        out = np.exp(np.arange(np.log(setting.wave_min), np.log(setting.wave_max), step))
    else:
        out_medium = np.arange(setting.wave_min, setting.wave_max, setting.linear_step_aa)
        out = air_to_vacuum(out_medium)
    sampled = np.interp(out, wave, np.where(bad, np.nan, flux), left=np.nan, right=np.nan)
    sampled *= response_curve(np.log(out), rng)
    sigma = np.nanmedian(sampled) / snr
    sampled = sampled + rng.normal(0, sigma, sampled.shape)
    medium_wave = out if setting.vacuum else vacuum_to_air(out)
    return medium_wave, sampled, np.full(sampled.shape, sigma), rv, snr


def write_upload(path: Path, wave: np.ndarray, flux: np.ndarray, error: np.ndarray, vacuum: bool) -> Path:
    """CSV (vacuum wavelength, flux, error) or a FITS image with a linear air-wavelength WCS."""
    if vacuum:
        lines = ["wavelength,flux,error"] + [
            f"{w!r},{f!r},{e!r}" for w, f, e in zip(wave.tolist(), flux.tolist(), error.tolist(), strict=True)
        ]
        path = path.with_suffix(".csv")
        path.write_text("\n".join(lines).replace("nan", "") + "\n")
        return path
    image = fits.PrimaryHDU(np.nan_to_num(flux, nan=0.0).astype(np.float32))
    header = image.header
    header["CTYPE1"], header["CUNIT1"], header["CRPIX1"] = "AWAV", "Angstrom", 1.0
    header["CRVAL1"], header["CDELT1"] = float(wave[0]), float(wave[1] - wave[0])
    path = path.with_suffix(".fits")
    image.writeto(path, overwrite=True)
    return path


def garbage(folder: Path, rng: np.random.Generator, n_each: int) -> list[Upload]:
    """Uploads no archive of stars should claim: noise, flat lines, ramps, galaxy-like composites."""
    wave = np.exp(np.arange(np.log(3700.0), np.log(7500.0), 69.0 / C_KMS))
    made = []
    config = synthetic.SyntheticConfig()
    for i in range(n_each):
        level = rng.uniform(0.5, 5)
        kinds = {
            "noise": level + rng.normal(0, level / rng.uniform(2, 10), wave.shape),
            "flat": np.full(wave.shape, level) + rng.normal(0, level / 100, wave.shape),
            "ramp": level * np.linspace(1, rng.uniform(0.2, 3), wave.size)
            + rng.normal(0, level / 50, wave.shape),
            "galaxy": galaxy_like(wave, config, rng),
        }
        for kind, flux in kinds.items():
            path = write_upload(
                folder / f"garbage-{kind}-{i}", wave, flux, np.full(wave.shape, level / 50), True
            )
            made.append(Upload(path, kind, None, np.nan, np.nan))
    return made


def galaxy_like(wave: np.ndarray, config: synthetic.SyntheticConfig, rng: np.random.Generator) -> np.ndarray:
    """Three synthetic stars summed, broadened by a 250 km/s dispersion, redshifted, with emission lines."""
    labels = {
        "teff": np.array([4200.0, 5600.0, 8500.0]),
        "logg": np.array([2.5, 4.3, 4.0]),
        "feh": np.zeros(3),
        "rv": np.zeros(3),
        "vsini": np.zeros(3),
        "snr": np.full(3, 1e4),
        "airmass": np.zeros(3),
    }
    flux, _ = synthetic.render(labels, config, noise=False)
    weights = rng.dirichlet(np.ones(3))
    rest = synthetic.wavelength_grid(config)
    combined = weights @ flux
    step = np.log(rest[1] / rest[0]) * C_KMS
    combined = gaussian_filter1d(combined, 250.0 / step)
    z = rng.uniform(0.05, 0.1)
    observed = np.interp(wave, rest * (1 + z), combined, left=np.nan, right=np.nan)
    for line, strength in ((6564.6, 3.0), (5008.2, 2.0), (4862.7, 1.0), (3727.4, 1.5), (6585.3, 1.0)):
        centre = line * (1 + z)
        observed += strength * np.exp(-0.5 * ((wave - centre) / (centre * 150 / C_KMS)) ** 2)
    return observed + rng.normal(0, 0.03, wave.shape)


def make_uploads(stars: list[MilesStar], folder: Path, seed: int, n_garbage: int) -> list[Upload]:
    rng = np.random.default_rng(seed)
    uploads = []
    for setting in SETTINGS:
        for star in stars:
            wave, flux, error, rv, snr = observe(star, setting, rng)
            path = write_upload(folder / f"{setting.name}-{star.miles_id}", wave, flux, error, setting.vacuum)
            uploads.append(Upload(path, setting.name, star, rv, snr))
    return uploads + garbage(folder, rng, n_garbage)


# -- baselines ---------------------------------------------------------------------------------------


class Baselines:
    """k-NN on gridded flux and on its PCA, over the demo archive's spectra, matched like the model's."""

    def __init__(self, root: Path, matching: Matching, grid, n_components: int) -> None:
        archive = Archive.from_config(load_config(DEMO_CONFIG, {"archive": {"root": str(root)}}, environ={}))
        rows = archive.spectra(columns="obs_publisher_did, source_path, source_index, teff, logg, feh")
        self.labels = {
            name: np.array([r[name] if r[name] is not None else np.nan for r in rows])
            for name in ("teff", "logg", "feh")
        }
        spectra = pipeline.read_rows(rows)
        archive.close()
        self.grid, self.matchings = grid, {"continuum": matching, "median": Matching("median", 0.0)}
        on_grids = {name: prepare_many(spectra, grid, m) for name, m in self.matchings.items()}
        self.flux = {name: g.flux for name, g in on_grids.items()}
        self.good = {name: g.good for name, g in on_grids.items()}
        self.calibrated = on_grids[matching.normalise].calibrated()
        _, self.pca = analysis.pca_baseline(
            self.flux[matching.normalise], n_components, mask=~self.good[matching.normalise]
        )
        self.pca_scores = self.pca.transform(
            np.where(self.good[matching.normalise], self.flux[matching.normalise], 0)
        )
        self.normalise = matching.normalise
        self.archive_power = matching.resolving_power

    def masked(self, which: str) -> np.ndarray:
        """The archive's gridded flux as ``which`` normalisation prepared it, NaN where masked."""
        return np.where(self.good[which], self.flux[which], np.nan)

    def matched(self, flux: np.ndarray, params: dict | None) -> np.ndarray:
        """The archive's gridded ``flux`` (NaN where masked) brought to an upload's velocity and
        resolving power as the service found them (PARAMs query_rv, query_resolving_power): the same
        matching as the model's flux ranking (model/resolution.py). As it is without them."""
        if not params or params.get("query_resolving_power") is None:
            return flux
        step = self.grid.velocity_step_kms
        moved = resolution.shifted(flux, np.full(len(flux), (params.get("query_rv") or 0.0) / step))
        sigma = resolution.blur_width(params["query_resolving_power"], self.archive_power, step)
        return resolution.blurred(moved, sigma)

    def raw(self, spectrum: Spectrum, which: str, params: dict | None = None) -> np.ndarray:
        """k-NN on flux: with an upload's ``params``, matched as the service's flux ranking matches
        (resolution, velocity, calibration curve, the continuum kept); without, as prepared."""
        on_grid = prepare_many([spectrum], self.grid, self.matchings[which])
        if params and params.get("query_resolving_power") is not None:
            archive = self.matched(self.calibrated, params)
            misfit = resolution.misfits(on_grid.calibrated()[0], on_grid.good[0], archive)
        else:
            misfit = resolution.misfits(on_grid.flux[0], on_grid.good[0], self.masked(which), degree=None)
        return np.argsort(misfit, kind="stable")[:K]

    def pca_knn(self, spectrum: Spectrum, params: dict | None = None) -> np.ndarray:
        flux, good, *_ = prepare_many([spectrum], self.grid, self.matchings[self.normalise])
        components = self.pca.components_[:, good[0]]
        centred = flux[0, good[0]] - self.pca.mean_[good[0]]
        scores, *_ = np.linalg.lstsq(components.T, centred, rcond=None)
        archive = self.pca_scores
        if params and params.get("query_resolving_power") is not None:
            matched = self.matched(self.masked(self.normalise), params)
            archive = self.pca.transform(np.where(np.isfinite(matched), matched, self.pca.mean_))
        distance = ((archive - scores) ** 2).sum(1)
        return np.argsort(distance)[:K]


# -- scoring -----------------------------------------------------------------------------------------


def label_errors(uploads: list[Upload], voted: list[dict]) -> dict:
    """Teff within 500 K by range, median |ΔTeff|, |Δlog g|, |Δ[Fe/H]| of the neighbours' medians."""
    teff = np.array([u.star.teff for u in uploads])
    out = {}
    d_teff = np.abs(np.array([v["teff"] for v in voted]) - teff)
    for low, high in TEFF_RANGES:
        chosen = (teff >= low) & (teff < high) & np.isfinite(d_teff)
        key = f"{low:.0f}-{high:.0f}" if high < 1e6 else f">{low:.0f}"
        out[f"within_500K_{key}"] = float((d_teff[chosen] <= TEFF_TOLERANCE).mean()) if chosen.any() else None
        out[f"n_{key}"] = int(chosen.sum())
    out["median_abs_dteff_K"] = float(np.nanmedian(d_teff))
    out["median_abs_dlogg"] = float(
        np.nanmedian(np.abs([v["logg"] - u.star.logg for v, u in zip(voted, uploads, strict=True)]))
    )
    out["median_abs_dfeh"] = float(
        np.nanmedian(np.abs([v["feh"] - u.star.feh for v, u in zip(voted, uploads, strict=True)]))
    )
    return out


def vote(labels: dict[str, np.ndarray], rows: np.ndarray) -> dict:
    return {name: float(np.nanmedian(values[rows])) for name, values in labels.items()}


def velocity_errors(uploads: list[Upload], values: list[float | None]) -> dict:
    error = np.array([np.nan if v is None else v - u.rv for v, u in zip(values, uploads, strict=True)])
    snr = np.array([u.snr for u in uploads])
    out = {"n": int(np.isfinite(error).sum())}
    for name, chosen in (("all", np.ones(len(error), bool)), ("snr_ge_20", snr >= 20)):
        e = np.abs(error[chosen & np.isfinite(error)])
        out[f"median_abs_{name}"] = float(np.median(e)) if len(e) else None
        out[f"p90_abs_{name}"] = float(np.percentile(e, 90)) if len(e) else None
    out["median_signed_all"] = float(np.nanmedian(error))
    return out


def write_fold_sample(miles_dir: Path, path: Path, every: int) -> None:
    """MILES without every ``every``-th star by Teff rank, in the MILES layout (as the demo sample is)."""
    with fits.open(Path(miles_dir) / "miles_spectra.fits") as hdus:
        table = hdus["SPECTRA"].data
        by_teff = np.argsort(np.nan_to_num(table["teff"], nan=np.inf), kind="stable")
        held = by_teff[every // 2 :: every]
        kept = np.setdiff1d(np.arange(len(table)), held)
        spectra = fits.BinTableHDU(data=table[kept], header=hdus["SPECTRA"].header, name="SPECTRA")
        fits.HDUList([hdus[0].copy(), spectra, hdus["WAVELENGTH"].copy()]).writeto(path, overwrite=True)


def build_fold(miles_dir: Path, root: Path, every: int, rebuild: bool) -> tuple[dict, Path]:
    """MILES less every ``every``-th star as an archive, built with the demo's settings (or reused)."""
    sample = root.parent / f"{root.name}-sample.fits"
    config = load_config(DEMO_CONFIG, {"archive": {"root": str(root)}})
    archive = Archive.from_config(config)
    started = time.perf_counter()
    try:
        built = rebuild or archive.current_model() is None
    except LookupError:
        built = True
    if built:
        archive.close()
        for leftover in (root, sample):
            if leftover.is_dir():
                shutil.rmtree(leftover)
        write_fold_sample(miles_dir, sample, every)
        archive = Archive.from_config(config)
        pipeline.ingest(archive, [sample], None, config["archive"]["default_collection"], False)
        version = pipeline.train_model(archive, config, progress=True)
        pipeline.encode(archive, version, progress=False)
        pipeline.analyse(archive, config, version, progress=False)
        pipeline.build_index(archive, config, version, False)
    record = dict(archive.current_model())
    n_spectra = archive.count("spectrum")
    archive.close()
    return {
        "built": built,
        "build_s": time.perf_counter() - started,
        "model": record,
        "n_spectra": n_spectra,
    }, sample


def run(args: argparse.Namespace) -> dict:
    if args.holdout_every:
        build, sample = build_fold(args.miles, args.root, args.holdout_every, args.rebuild)
        stars = heldout_stars(args.miles, sample)
    else:
        build = build_demo(args.root, args.rebuild)
        stars = heldout_stars(args.miles)
    print(f"archive {'built' if build['built'] else 'reused'} in {build['build_s']:.0f} s at {args.root}")
    if args.limit:
        stars = stars[:: max(1, len(stars) // args.limit)][: args.limit]
    folder = args.root.parent / f"{args.root.name}-uploads"
    folder.mkdir(parents=True, exist_ok=True)
    uploads = make_uploads(stars, folder, args.seed, args.garbage)
    print(f"{len(uploads)} uploads written to {folder}")

    archive = Archive.from_config(load_config(DEMO_CONFIG, {"archive": {"root": str(args.root)}}, environ={}))
    version = archive.current_model()["model_version"]
    model = LatentModel(archive.model_dir(version))
    archive.close()
    baselines = Baselines(args.root, model.matching, model.grid, model.latent_dim)

    answers = []
    started = time.perf_counter()
    with gunicorn(args.root, workers=2) as url, requests.Session() as session:
        for upload in uploads:
            rows, params = similar(session, url, upload.path, K)
            answers.append((rows, params))
    upload_s = time.perf_counter() - started
    print(f"{len(uploads)} uploads answered in {upload_s:.0f} s")

    result = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "k": K,
        "archive": {
            "n_spectra": build["n_spectra"],
            "model_version": version,
            "latent_dim": model.latent_dim,
            "matching": model.matching.to_dict(),
            "velocity_frame": model.velocity_frame,
        },
        "n_stars": len(stars),
        "archive_kind": f"an archive of MILES less every {args.holdout_every}th star by Teff"
        if args.holdout_every
        else "the demo archive",
        "command": " ".join(["python", "bench/crossinstrument.py", *map(shown_path, sys.argv[1:])]),
        "settings": {},
    }
    for setting in SETTINGS:
        chosen = [(u, a) for u, a in zip(uploads, answers, strict=True) if u.setting == setting.name]
        ups = [u for u, _ in chosen]
        spectra = [read_spectra(u.path)[0] for u in ups]
        voted = {
            "model": [
                {
                    n: float(np.nanmedian([np.nan if r[n] is None else r[n] for r in rows]))
                    for n in ("teff", "logg", "feh")
                }
                for _, (rows, _) in chosen
            ],
            "raw flux": [
                vote(baselines.labels, baselines.raw(s, baselines.normalise, p))
                for s, (_, (_, p)) in zip(spectra, chosen, strict=True)
            ],
            "PCA": [
                vote(baselines.labels, baselines.pca_knn(s, p))
                for s, (_, (_, p)) in zip(spectra, chosen, strict=True)
            ],
            "raw flux (archive resolution)": [
                vote(baselines.labels, baselines.raw(s, baselines.normalise)) for s in spectra
            ],
            "raw flux (median)": [vote(baselines.labels, baselines.raw(s, "median")) for s in spectra],
        }
        result["settings"][setting.name] = {
            "labels": {space: label_errors(ups, v) for space, v in voted.items()},
            "velocity": {
                "query_rv": velocity_errors(ups, [p.get("query_rv") for _, (_, p) in chosen]),
                "query_rv_xcorr": velocity_errors(ups, [p.get("query_rv_xcorr") for _, (_, p) in chosen]),
            },
            "rv_err_coverage": coverage_of_errors(ups, [p for _, (_, p) in chosen]),
            "continuum_used": used_share([p for _, (_, p) in chosen]),
        }
    valid = [a[1].get("ood_score") for u, a in zip(uploads, answers, strict=True) if u.star is not None]
    hits = []
    for u, (rows, _) in zip(uploads, answers, strict=True):
        if u.star is not None and np.isfinite(u.star.teff):
            voted = np.nanmedian([np.nan if r["teff"] is None else r["teff"] for r in rows])
            hits.append(abs(voted - u.star.teff) <= TEFF_TOLERANCE)
    scores = np.array(
        [
            a[1].get("ood_score")
            for u, a in zip(uploads, answers, strict=True)
            if u.star is not None and np.isfinite(u.star.teff)
        ]
    )
    hits = np.array(hits)
    warned = scores >= 0.9
    junk = {}
    for u, a in zip(uploads, answers, strict=True):
        if u.star is None:
            junk.setdefault(u.setting, []).append(a[1].get("ood_score"))
    all_junk = [s for scores in junk.values() for s in scores]
    result["ood"] = {
        "auc": float(roc_auc_score([0] * len(valid) + [1] * len(all_junk), valid + all_junk)),
        "auc_by_kind": {
            kind: float(roc_auc_score([0] * len(valid) + [1] * len(s), valid + s)) for kind, s in junk.items()
        },
        "valid_median": float(np.median(valid)),
        "valid_flagged": float(np.mean(np.array(valid) >= 0.9)),
        "garbage_flagged": float(np.mean(np.array(all_junk) >= 0.9)),
        "n_valid": len(valid),
        "within_500K_warned": float(hits[warned].mean()) if warned.any() else None,
        "within_500K_not_warned": float(hits[~warned].mean()) if (~warned).any() else None,
        "n_garbage": len(all_junk),
    }
    result["label_warning"] = label_warnings(uploads, answers)
    result["in_distribution"] = in_distribution(model, baselines)
    result["ceilings"] = ceilings(stars, baselines)
    result["upload_s"] = upload_s
    return result


def shown_path(argument: str) -> str:
    """A command-line argument as the results may show it: a path outside the repository (this
    machine's) as its last component."""
    if not argument.startswith("/"):
        return argument
    path = Path(argument)
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else f"<{path.name} dir>"


def label_warnings(uploads: list[Upload], answers: list[tuple[list[dict], dict]]) -> dict:
    """How the answers' ``labels`` warning (the neighbours' Teff spans widely) sorts valid uploads:
    the share warned, overall and above 10,000 K, and the share within 500 K of those warned and not."""
    warned, hits, hot = [], [], []
    for upload, (rows, params) in zip(uploads, answers, strict=True):
        if upload.star is None or not np.isfinite(upload.star.teff):
            continue
        voted = np.nanmedian([np.nan if r["teff"] is None else r["teff"] for r in rows])
        warned.append("labels" in params.get("warnings", []))
        hits.append(abs(voted - upload.star.teff) <= TEFF_TOLERANCE)
        hot.append(upload.star.teff > 10_000)
    warned, hits, hot = np.array(warned), np.array(hits), np.array(hot)
    return {
        "warned": float(warned.mean()),
        "hot_warned": float(warned[hot].mean()) if hot.any() else None,
        "cooler_warned": float(warned[~hot].mean()) if (~hot).any() else None,
        "within_500K_warned": float(hits[warned].mean()) if warned.any() else None,
        "within_500K_not_warned": float(hits[~warned].mean()) if (~warned).any() else None,
        "n_valid": int(len(warned)),
    }


def in_distribution(model, baselines: Baselines, k: int = 10) -> dict:
    """10-NN leave-one-out over the archive's own spectra: median |label − neighbours' median| per space."""
    spaces = {
        "model (similarity dims)": np.asarray(model.latents)[:, model.similarity_dims],
        "raw flux": baselines.flux[baselines.normalise],
        "PCA": baselines.pca_scores,
        "raw flux (median)": baselines.flux["median"],
    }
    out = {}
    for space, vectors in spaces.items():
        _, found = NearestNeighbors(n_neighbors=k + 1).fit(vectors).kneighbors(vectors)
        found = found[:, 1:]  # leave the spectrum itself out
        out[space] = {
            name: float(np.nanmedian(np.abs(np.nanmedian(values[found], axis=1) - values)))
            for name, values in baselines.labels.items()
        }
    return out


def used_share(params: list[dict]) -> float | None:
    """The share of answers whose query continuum was compared too (PARAM continuum_used)."""
    used = [bool(p["continuum_used"]) for p in params if "continuum_used" in p]
    return float(np.mean(used)) if used else None


def ceilings(stars: list[MilesStar], baselines: Baselines) -> dict:
    """What this archive allows at best, whatever the space: the K archive stars nearest each held-out
    star in true Teff ("label oracle"), and raw-flux k-NN on the held-out stars exactly as MILES
    gives them (same instrument, no degradation) under each normalisation."""
    teff = np.array([s.teff for s in stars])
    archive_teff = baselines.labels["teff"]
    known = np.flatnonzero(np.isfinite(archive_teff))
    oracle = []
    for t in teff:
        nearest = known[np.argsort(np.abs(archive_teff[known] - t))[:K]]
        oracle.append({name: float(np.nanmedian(v[nearest])) for name, v in baselines.labels.items()})
    as_given = [Spectrum(wavelength=s.wave_air, flux=s.flux, medium="air") for s in stars]
    uploads = [Upload(Path(s.miles_id), "as given", s, 0.0, np.inf) for s in stars]
    out = {"label oracle (teff)": label_errors(uploads, oracle)}
    for which in baselines.matchings:
        voted = [vote(baselines.labels, baselines.raw(spectrum, which)) for spectrum in as_given]
        out[f"raw flux ({which}), undegraded"] = label_errors(uploads, voted)
    return out


def coverage_of_errors(uploads: list[Upload], params: list[dict]) -> dict:
    """How often the truth lies within the stated 1σ: query_rv_err and query_rv_xcorr_err."""
    out = {}
    for name in ("query_rv", "query_rv_xcorr"):
        inside = [
            abs(p[name] - u.rv) <= p[f"{name}_err"]
            for p, u in zip(params, uploads, strict=True)
            if p.get(name) is not None and p.get(f"{name}_err") is not None
        ]
        out[name] = float(np.mean(inside)) if inside else None
    return out


def fmt(value, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def markdown(result: dict) -> str:
    a = result["archive"]
    lines = [
        "# Spectra from other instruments through /similar",
        "",
        f"{result['n_stars']} held-out MILES stars, each as seen by two other instruments, uploaded to "
        f"{result['archive_kind']} ({a['n_spectra']} spectra, model version {a['model_version']}, "
        f"{a['latent_dim']} latent dims, matching {a['matching']}, velocity frame {a['velocity_frame']}). "
        f"K = {result['k']}; "
        f'"within 500 K": the neighbours\' median Teff. Run {result["when"]}.',
        "",
        "| setting | space | within 500 K, 3500-10000 K | within 500 K, >10000 K | within 500 K, <3500 K "
        "| median abs dTeff (K) | median abs dlogg | median abs d[Fe/H] |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, s in result["settings"].items():
        for space, r in s["labels"].items():
            lines.append(
                f"| {name} | {space} | {fmt(r['within_500K_3500-10000'], '.1%')} (n={r['n_3500-10000']}) "
                f"| {fmt(r['within_500K_>10000'], '.1%')} (n={r['n_>10000']}) "
                f"| {fmt(r['within_500K_0-3500'], '.1%')} (n={r['n_0-3500']}) "
                f"| {r['median_abs_dteff_K']:.0f} | {r['median_abs_dlogg']:.2f} "
                f"| {r['median_abs_dfeh']:.2f} |"
            )
    for name, s in result["settings"].items():
        if s.get("continuum_used") is not None:
            lines.append(f"\n{name}: the upload's continuum was compared too for {s['continuum_used']:.1%}.")
    lines += [
        "",
        "## Velocity (km/s, against the injected velocity)",
        "",
        "| setting | estimate | median abs dRV, all | p90 | median abs dRV, S/N >= 20 | p90 | median signed "
        "| truth within stated 1 sigma |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, s in result["settings"].items():
        for estimate, v in s["velocity"].items():
            lines.append(
                f"| {name} | {estimate} | {fmt(v['median_abs_all'], '.1f')} | {fmt(v['p90_abs_all'], '.1f')} "
                f"| {fmt(v['median_abs_snr_ge_20'], '.1f')} | {fmt(v['p90_abs_snr_ge_20'], '.1f')} "
                f"| {fmt(v['median_signed_all'], '+.1f')} | {fmt(s['rv_err_coverage'][estimate], '.0%')} |"
            )
    lines += [
        "",
        "## In distribution: the demo archive itself, 10-NN leave-one-out",
        "",
        "| space | median abs dTeff (K) | dlogg | d[Fe/H] |",
        "|---|---|---|---|",
    ]
    for space, r in result["in_distribution"].items():
        lines.append(f"| {space} | {r['teff']:.0f} | {r['logg']:.3f} | {r['feh']:.3f} |")
    lines += [
        "",
        "## What this archive allows: ceilings on the same held-out stars",
        "",
        "Label oracle: the K archive stars nearest in true Teff. Undegraded: the held-out spectra exactly as "
        "MILES gives them (same instrument), k-NN on raw flux.",
        "",
        "| bound | within 500 K, 3500-10000 K | within 500 K, >10000 K | median abs dTeff (K) |",
        "|---|---|---|---|",
    ]
    for name, r in result.get("ceilings", {}).items():
        lines.append(
            f"| {name} | {fmt(r['within_500K_3500-10000'], '.1%')} | {fmt(r['within_500K_>10000'], '.1%')} "
            f"| {r['median_abs_dteff_K']:.0f} |"
        )
    o = result["ood"]
    lines += [
        "",
        "## ood_score",
        "",
        f"ROC AUC, garbage ({o['n_garbage']}) against valid degraded uploads ({o['n_valid']}): "
        f"**{o['auc']:.3f}**; "
        + ", ".join(f"{k} {v:.3f}" for k, v in o["auc_by_kind"].items())
        + f". Valid uploads: median score {o['valid_median']:.2f}, {o['valid_flagged']:.1%} warned (>= 0.9); "
        f"garbage warned: {o['garbage_flagged']:.1%}. Valid uploads with the Teff of their neighbours within "
        f"500 K: {fmt(o['within_500K_not_warned'], '.1%')} of those without a warning, "
        f"{fmt(o['within_500K_warned'], '.1%')} of those warned.",
    ]
    w = result.get("label_warning")
    if w:
        lines += [
            "",
            "## The neighbours disagree: INFO warning `labels`",
            "",
            f"Given when the neighbours' Teff spans more than 30 % of their median: {w['warned']:.1%} of the "
            f"{w['n_valid']} valid uploads ({fmt(w['hot_warned'], '.1%')} of those above 10,000 K, "
            f"{fmt(w['cooler_warned'], '.1%')} of the others). Within 500 K: "
            f"{fmt(w['within_500K_warned'], '.1%')} of those warned, "
            f"{fmt(w['within_500K_not_warned'], '.1%')} of the rest.",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--miles", type=Path, default=miles_dir_default())
    parser.add_argument("--root", type=Path, default=REPO / "var" / "bench-crossinstrument")
    parser.add_argument("--rebuild", action="store_true", help="build the demo archive again")
    parser.add_argument("--limit", type=int, default=0, help="at most N held-out stars (0 = all)")
    parser.add_argument("--garbage", type=int, default=25, help="garbage uploads of each kind")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--name", default="crossinstrument", help="stem of the result files")
    parser.add_argument(
        "--holdout-every",
        type=int,
        default=0,
        help="archive of MILES less every N-th star by Teff (0: the demo archive)",
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    result = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=2))
    text = markdown(result)
    (args.out / f"{args.name}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()

"""The whole MILES library through the real pipeline, augmented with radial velocities and noise.

MILES spectra are in the stellar rest frame and nearly noiseless, so every star is written
COPIES times into a multi-spectrum FITS table with a random radial velocity (uniform in
±300 km/s) and Gaussian noise (S/N per pixel log-uniform in 10–200), with those values as
the `rv` and `snr` labels. The table is ingested, and the model trained, encoded, analysed
and indexed with the ordinary pipeline. Then:

- reconstruction error and informative dimensions;
- mutual information of each latent dimension (and each PCA component) with Teff, log g,
  [Fe/H], RV and S/N;
- the median absolute error of Teff, log g and [Fe/H] voted by the 10 nearest neighbours,
  leave-one-star-out (the other copies of the query star do not count), in the model's
  latent space, in a PCA space of the same size, and in raw (gridded) flux; once with the
  10 nearest spectra voting and once with the 10 nearest stars (each star once), with
  intervals from resampling stars and the paired latent − baseline difference.

Usage: python bench/miles.py [--miles DIR] [--copies 5] [--epochs 120] [--out bench/results]
Writes bench/results/miles.json and miles.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from astropy.io import fits
from sklearn.neighbors import NearestNeighbors

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from model import analysis  # noqa: E402
from model.api import LatentModel  # noqa: E402
from model.preprocess import C_KMS  # noqa: E402
from service import pipeline  # noqa: E402
from service.archive import Archive  # noqa: E402
from service.config import load_config  # noqa: E402

LABELS = ("teff", "logg", "feh", "rv", "snr")


def write_augmented(
    miles_dir: Path,
    path: Path,
    copies: int,
    seed: int,
    alter: Callable[[int, np.ndarray, np.ndarray], np.ndarray] | None = None,
) -> None:
    """COPIES Doppler-shifted, noisy versions of every MILES star, on the original air grid.

    ``alter(row, wavelength, flux)`` may change a row's rest-frame flux first (bench/bestars.py
    adds emission lines)."""
    rng = np.random.default_rng(seed)
    with fits.open(miles_dir / "miles_spectra.fits") as hdus:
        table = hdus["SPECTRA"].data
        wave = np.asarray(hdus["WAVELENGTH"].data["wavelength"], float)
        primary = hdus[0].header.copy()
        n = len(table)
        total = n * copies
        flux = np.empty((total, len(wave)), np.float32)
        ivar = np.empty_like(flux)
        star = np.repeat(np.arange(n), copies)
        rv = rng.uniform(-300, 300, total)
        snr = np.exp(rng.uniform(np.log(10), np.log(200), total))
        for i in range(total):
            source = np.asarray(table["flux"][star[i]], float)
            if alter is not None:
                source = alter(i, wave, source)
            shifted = np.interp(wave, wave * (1 + rv[i] / C_KMS), source, left=np.nan, right=np.nan)
            sigma = np.nanmedian(np.abs(source)) / snr[i]
            flux[i] = shifted + rng.normal(0, sigma, len(wave))
            ivar[i] = np.where(np.isfinite(shifted) & (source > 0), 1 / sigma**2, 0)
        flux = np.nan_to_num(flux, nan=0.0)
        ids = np.array([f"{table['miles_id'][s]}_{i % copies}" for i, s in enumerate(star)])
        columns = [
            fits.Column("obsid", "12A", array=ids),
            fits.Column("star", "5A", array=table["miles_id"][star]),
            fits.Column("teff", "D", array=table["teff"][star], unit="K"),
            fits.Column("logg", "D", array=table["logg"][star]),
            fits.Column("feh", "D", array=table["feh"][star]),
            fits.Column("rv", "D", array=rv, unit="km/s"),
            fits.Column("snr", "D", array=snr),
            fits.Column("flux", f"{len(wave)}E", array=flux),
            fits.Column("ivar", f"{len(wave)}E", array=ivar),
        ]
    hdul = fits.HDUList(
        [
            fits.PrimaryHDU(header=primary),
            fits.BinTableHDU.from_columns(columns, name="SPECTRA"),
            fits.BinTableHDU.from_columns(
                [fits.Column("wavelength", "D", array=wave, unit="Angstrom")], name="WAVELENGTH"
            ),
        ]
    )
    hdul.writeto(path, overwrite=True)


VOTED = ("teff", "logg", "feh")
#: How neighbours vote: the k nearest spectra (copies of one star count separately), or the
#: k nearest stars, each through its nearest copy (see analysis.knn_label_vote).
PROTOCOLS = {"spectra": False, "stars": True}


def vote_abs_errors(space: np.ndarray, labels: dict, groups: np.ndarray, k: int = 10) -> dict:
    """|voted − true| per spectrum, per protocol and label (NaN where either is missing)."""
    return {
        protocol: {
            name: np.abs(
                analysis.knn_label_vote(space, labels[name], groups, k=k, one_per_group=per_star)
                - labels[name]
            )
            for name in VOTED
        }
        for protocol, per_star in PROTOCOLS.items()
    }


def resampled_stars(groups: np.ndarray, n: int = 200, seed: int = 7) -> list[np.ndarray]:
    """Row indices of ``n`` bootstrap samples of whole stars (copies stay together)."""
    rng = np.random.default_rng(seed)
    rows_of = [np.flatnonzero(groups == g) for g in np.unique(groups)]
    return [
        np.concatenate([rows_of[i] for i in rng.integers(0, len(rows_of), len(rows_of))]) for _ in range(n)
    ]


def voting_stars(space: np.ndarray, groups: np.ndarray, k: int = 10) -> float:
    """Mean number of distinct stars among the k nearest spectra of other stars: a space that
    maps the copies of a star together (velocity-invariant) gets fewer independent votes."""
    largest = int(np.bincount(groups).max())
    _, idx = NearestNeighbors(n_neighbors=k + largest).fit(space).kneighbors(space)
    others = [groups[row][groups[row] != groups[i]][:k] for i, row in enumerate(idx)]
    return float(np.mean([len(set(o)) for o in others]))


def vote_summary(errors: dict, reference: dict, samples: list[np.ndarray]) -> dict:
    """Median absolute errors with 95 % intervals, and the paired difference from ``reference``
    (the latent space) on the same resampled stars: negative means the latent votes better."""
    summary = {}
    for protocol, by_label in errors.items():
        out = summary[protocol] = {}
        for name, error in by_label.items():
            ours = reference[protocol][name]
            medians = [np.nanmedian(error[rows]) for rows in samples]
            differences = [np.nanmedian(ours[rows]) - np.nanmedian(error[rows]) for rows in samples]
            out[name] = float(np.nanmedian(error))
            out[f"{name}_ci95"] = [float(np.percentile(medians, q)) for q in (2.5, 97.5)]
            out[f"{name}_latent_minus_this"] = float(np.nanmedian(ours) - np.nanmedian(error))
            out[f"{name}_latent_minus_this_ci95"] = [
                float(np.percentile(differences, q)) for q in (2.5, 97.5)
            ]
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--miles", default=os.environ.get("LATENTVO_MILES_DIR", REPO.parent / "shared/data/miles")
    )
    parser.add_argument("--copies", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=120)
    parser.add_argument("--latent-dim", type=int, default=16)
    parser.add_argument("--n-pixels", type=int, default=2048)
    parser.add_argument("--kl-weight", type=float, default=None)
    parser.add_argument(
        "--instrument",
        action="store_true",
        help="train for other instruments' uploads as the demo does: continuum normalisation with the "
        "continuum channels, instrument augmentation, velocities anchored to the rv labels",
    )
    parser.add_argument("--work", default=REPO / "var" / "bench-miles")
    parser.add_argument("--out", default=REPO / "bench" / "results")
    parser.add_argument(
        "--reuse", action="store_true", help="evaluate the archive a previous run left in --work"
    )
    args = parser.parse_args()

    work, out = Path(args.work), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = work / "miles_augmented.fits"
    started = time.perf_counter()
    if not args.reuse:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        write_augmented(Path(args.miles), table, args.copies, seed=1)
    model_overrides = {"epochs": args.epochs, "latent_dim": args.latent_dim, "augment_copies": 0}
    if args.kl_weight is not None:
        model_overrides["kl_weight"] = args.kl_weight
    grid_overrides = {"n_pixels": args.n_pixels}
    if args.instrument:
        grid_overrides |= {"normalise": "continuum", "resolving_power": 2000.0}
        model_overrides |= {"augment_instrument": True, "velocity_frame": "labels", "continuum_channel": True}
    config = load_config(
        environ={},
        overrides={
            "archive": {"root": str(work / "archive")},
            "grid": grid_overrides,
            "model": model_overrides,
        },
    )
    archive = Archive.from_config(config)
    if args.reuse:
        version = archive.current_model()["model_version"]
        saved = json.loads((work / "run.json").read_text())
        timings, summary = saved["timings"], saved["ingest"]
        summary_analysis = json.loads((archive.model_dir(version) / "analysis.json").read_text())
    else:
        timings = {}
        t0 = time.perf_counter()
        summary = str(pipeline.ingest(archive, [table], collection="miles_aug")).splitlines()[0]
        timings["ingest_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        version = pipeline.train_model(archive, config)
        timings["train_s"] = time.perf_counter() - t0
        for stage, run in (
            ("encode_s", lambda: pipeline.encode(archive, version)),
            ("analyse_s", lambda: pipeline.analyse(archive, config, version)),
            ("index_s", lambda: pipeline.build_index(archive, config, version)),
        ):
            t0 = time.perf_counter()
            result = run()
            timings[stage] = time.perf_counter() - t0
            if stage == "analyse_s":
                summary_analysis = result
        (work / "run.json").write_text(json.dumps({"timings": timings, "ingest": summary}))

    model = LatentModel(archive.model_dir(version))
    dids = archive.latent_dids(version)
    labels = archive.label_arrays(dids)
    stars = np.array([d.rsplit("/", 1)[1].rsplit("_", 1)[0] for d in dids])
    groups = np.unique(stars, return_inverse=True)[1]
    latents = np.asarray(model.latents)
    informative = summary_analysis["informative_dims"]
    rows_all = archive.spectra(columns="obs_publisher_did, source_path, source_index")
    by_did = {r["obs_publisher_did"]: r for r in rows_all}
    spectra = pipeline.read_rows([by_did[d] for d in dids])
    from model.preprocess import prepare_many

    flux, good, *_ = prepare_many(spectra, model.grid, model.matching)
    pca, _ = analysis.pca_baseline(flux, args.latent_dim, mask=~good)
    similarity = model.similarity_dims
    spaces = {
        "latent (similarity dims: informative, without the velocity z0)": latents[:, similarity],
        "latent (all informative dims)": latents[:, informative],
        f"PCA ({args.latent_dim} components)": pca,
        "raw flux": flux,
    }
    errors = {name: vote_abs_errors(space, labels, groups) for name, space in spaces.items()}
    reference = next(iter(errors.values()))
    samples = resampled_stars(groups)
    votes = {name: vote_summary(e, reference, samples) for name, e in errors.items()}
    mi_rows = archive.db.execute(
        "SELECT dim, label, mi, mi_error, pca_mi, pca_mi_error, informative FROM ml_label_correlation "
        "WHERE model_version = ? ORDER BY label, dim",
        (version,),
    ).fetchall()
    model_row = archive.model(version)
    recon = np.array(
        [
            r[0]
            for r in archive.db.execute(
                "SELECT recon_error FROM ml_latent WHERE model_version = ?", (version,)
            )
        ]
    )
    result = {
        "n_stars": int(groups.max() + 1),
        "n_spectra": len(dids),
        "copies": args.copies,
        "grid": model.grid.to_dict(),
        "latent_dim": args.latent_dim,
        "kl_weight": config["model"]["kl_weight"],
        "matching": model.matching.to_dict(),
        "augment_instrument": bool(config["model"]["augment_instrument"]),
        "continuum_channel": bool(config["model"]["continuum_channel"]),
        "epochs_run": json.loads(model_row["metrics"])["epochs_run"],
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "total_s": round(time.perf_counter() - started, 1),
        "recon_rmse_median": float(np.median(recon)),
        "val_rmse": model_row["recon_rmse"],
        "informative_dims": informative,
        "similarity_dims": similarity,
        "recall_at_10": model_row["index_recall_at_10"],
        "concentration": summary_analysis["concentration"],
        "pca_concentration": summary_analysis["pca_concentration"],
        "mi": [dict(r) for r in mi_rows if r["label"] in LABELS],
        "knn_vote_median_abs_error": votes,
        "voting_stars_among_10_spectra": {name: voting_stars(sp, groups) for name, sp in spaces.items()},
        "ingest": summary,
    }
    (out / "miles.json").write_text(json.dumps(result, indent=2))
    (out / "miles.md").write_text(markdown(result))
    print(markdown(result))


def markdown(r: dict) -> str:
    lines = [
        f"# MILES benchmark: {r['n_stars']} stars × {r['copies']} augmented copies "
        f"= {r['n_spectra']} spectra",
        "",
        f"grid {r['grid']['n_pixels']} px {r['grid']['wave_min']:.1f}–{r['grid']['wave_max']:.1f} Å; "
        f"latent {r['latent_dim']}, β={r['kl_weight']}, {r['epochs_run']} epochs; timings {r['timings_s']}; "
        f"matching {r.get('matching')}, instrument augmentation {r.get('augment_instrument', False)}, "
        f"continuum channels {r.get('continuum_channel', False)}",
        f"reconstruction RMSE (median, normalised flux): {r['recon_rmse_median']:.4f}; "
        f"validation RMSE {r['val_rmse']:.4f}; recall@10 {r['recall_at_10']:.4f}",
        f"informative dimensions: {r['informative_dims']}; similarity dimensions: {r['similarity_dims']}",
        "",
        "Gap: the best dimension's MI less the second best's (nats).",
        "",
        "| label | best latent dim | MI (nats) | gap | share of label's MI "
        "| best PCA comp. | PCA MI | PCA gap | PCA share |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    pca_rows = [{**m, "mi": m["pca_mi"]} for m in r["mi"]]
    for name in LABELS:
        c, p = analysis.concentration(r["mi"], name), analysis.concentration(pca_rows, name)
        if c["dim"] is not None:
            lines.append(
                f"| {name} | z{c['dim']} | {c['mi']:.2f} | {c['gap']:.2f} | {c['fraction']:.0%} "
                f"| PC{p['dim']} | {p['mi']:.2f} | {p['gap']:.2f} | {p['fraction']:.0%} |"
            )
    for protocol, heading in (
        ("spectra", "the 10 nearest spectra (copies of one star vote separately)"),
        ("stars", "the 10 nearest stars (each votes once, through its nearest copy)"),
    ):
        lines += [
            "",
            f"Median absolute error of labels voted by {heading}; leave-one-star-out; 95 % "
            "intervals from resampling stars; Δ = latent − this space on the same resamples "
            "(negative: the latent votes better):",
            "",
            "| space | Teff (K) | Δ Teff | log g | Δ log g | [Fe/H] | Δ [Fe/H] |",
            "|---|---|---|---|---|---|---|",
        ]
        for space, by_protocol in r["knn_vote_median_abs_error"].items():
            e = by_protocol[protocol]
            cells = []
            for name, fmt in (("teff", ".0f"), ("logg", ".3f"), ("feh", ".3f")):
                lo, hi = e[f"{name}_ci95"]
                d, (dlo, dhi) = e[f"{name}_latent_minus_this"], e[f"{name}_latent_minus_this_ci95"]
                cells.append(f"{e[name]:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]")
                cells.append(
                    "—"
                    if space.startswith("latent (similarity")
                    else f"{d:+{fmt}} [{dlo:+{fmt}}, {dhi:+{fmt}}]"
                )
            lines.append(f"| {space} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Distinct stars among the 10 nearest spectra that vote: "
        + "; ".join(f"{name} {n:.1f}" for name, n in r.get("voting_stars_among_10_spectra", {}).items()),
    ]
    lines += [
        "",
        "Full MI table (nats; model / PCA component of the same number):",
        "",
        "| label | dim | informative | MI model | MI PCA |",
        "|---|---|---|---|---|",
    ]
    for m in r["mi"]:
        lines.append(
            f"| {m['label']} | {m['dim']} | {m['informative']} | {m['mi']:.3f} ± {m['mi_error']:.3f} "
            f"| {m['pca_mi']:.3f} ± {m['pca_mi_error']:.3f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

"""Finding Be stars from five labels: label propagation and active learning, with known truth.

The MILES library, augmented ``--copies`` times (radial velocity and noise, as bench/miles.py
does: 11 copies of 909 stars ≈ 10,000 spectra), gets Balmer emission injected into 2 % of its
spectra before the Doppler shift: Hα with an equivalent width drawn uniformly in −30 … −2 Å and
Hβ at 0.3 of it, single-peaked (a Gaussian, σ 2–5 Å) or double-peaked (two Gaussians 150–400 km/s
apart, as a disc gives), half each. The archive is built with the ordinary pipeline; its model is
the one of ``--model-from`` (an archive bench/miles.py trained on the plain library: it never saw
an emission line), encoded, analysed and indexed here. Or, with ``--train``, one trained on this
archive itself.

Then, for ``--seeds`` draws: 5 Be stars and ``--negatives`` other spectra are labelled, and the
other spectra ranked by P(Be):

- propagation: label spreading over the served index's 10-nearest-neighbour graph (what
  /ml/propagate does);
- the anomaly score alone (``ml.latent.anomaly_score``), which needs no labels;

each scored by precision@50 (Be among the 50 ranked first) and recall@200 (of the Be stars not
labelled, those among the first 200). Then 5 active-learning rounds of 10 answers, answered from
the truth: the 10 spectra of smallest margin (query_rank 1–10), against 10 random spectra a
round; the scores after each round, and the Be stars met among the answers.

Usage: python bench/bestars.py --miles DIR (--model-from ARCHIVE | --train [--epochs 40]
       [--train-spectra 5000]) [--copies 11] [--seeds 10] [--name bestars]
Writes bench/results/<name>.json and <name>.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from astropy.io import fits

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.miles import write_augmented  # noqa: E402
from model.api import LatentModel  # noqa: E402
from model.checkpoint import CONFIG_FILE, WEIGHTS_FILE  # noqa: E402
from model.propagation import index_graph, propagate  # noqa: E402
from service import pipeline  # noqa: E402
from service.archive import Archive  # noqa: E402
from service.config import load_config  # noqa: E402

BE, OTHER = "Be", "other"
FRACTION = 0.02
LINES = {"H alpha": (6562.8, 1.0), "H beta": (4861.3, 0.3)}  # air Å, share of the Hα equivalent width
C_KMS = 299_792.458
ROUNDS, ANSWERS = 5, 10


def emission_plan(n: int, seed: int) -> dict[int, dict]:
    """Which rows get emission, and how: {row: {ew, kind, sigma, split_kms}}."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(n, size=round(FRACTION * n), replace=False)
    return {
        int(row): {
            "ew": float(rng.uniform(-30, -2)),
            "kind": "double" if i % 2 else "single",
            "sigma": float(rng.uniform(2, 5)),
            "split_kms": float(rng.uniform(150, 400)),
        }
        for i, row in enumerate(rows)
    }


def add_emission(plan: dict[int, dict]):
    """The ``alter`` hook of bench.miles.write_augmented: the planned lines on the local continuum."""

    def alter(row: int, wave: np.ndarray, flux: np.ndarray) -> np.ndarray:
        line = plan.get(row)
        if line is None:
            return flux
        out = flux.copy()
        for centre, share in LINES.values():
            near = np.abs(wave - centre) < 60
            continuum = float(np.nanmedian(flux[near]))
            area = -line["ew"] * share * continuum  # EW < 0 is emission: flux added above the continuum
            if line["kind"] == "single":
                peaks = [(centre, 1.0)]
            else:
                half = centre * line["split_kms"] / 2 / C_KMS
                peaks = [(centre - half, 0.5), (centre + half, 0.5)]
            for at, weight in peaks:
                profile = np.exp(-0.5 * ((wave - at) / line["sigma"]) ** 2)
                out += weight * area * profile / (line["sigma"] * np.sqrt(2 * np.pi))
        return out

    return alter


def scores(order: np.ndarray, truth: np.ndarray, labelled: set[int]) -> dict[str, float]:
    """precision@50 and recall@200 of a ranking (row numbers, best first), labelled rows left out."""
    ranked = [r for r in order if r not in labelled]
    hidden_be = sum(1 for r in np.flatnonzero(truth) if r not in labelled)
    top50, top200 = ranked[:50], ranked[:200]
    return {
        "precision_at_50": float(np.mean(truth[top50])),
        "recall_at_200": float(np.sum(truth[top200]) / max(1, hidden_be)),
    }


def by_probability(result, n: int) -> np.ndarray:
    column = result.classes.index(BE)
    return np.argsort(-result.probability[:, column], kind="stable")[:n]


def run_seed(seed: int, truth: np.ndarray, graph, anomaly: np.ndarray, negatives: int) -> dict:
    rng = np.random.default_rng(1000 + seed)
    be_rows, other_rows = np.flatnonzero(truth), np.flatnonzero(~truth)
    start = {int(r) for r in rng.choice(be_rows, 5, replace=False)}
    start |= {int(r) for r in rng.choice(other_rows, negatives, replace=False)}
    n = len(truth)

    def labels_of(rows: set[int]) -> list[str | None]:
        column: list[str | None] = [None] * n
        for r in rows:
            column[r] = BE if truth[r] else OTHER
        return column

    first = propagate(labels_of(start), graph=graph)
    found = {
        "propagation": scores(by_probability(first, n), truth, start),
        "anomaly_score": scores(np.argsort(-anomaly, kind="stable"), truth, start),
    }
    curves = {}
    for strategy in ("margin", "random"):
        labelled, met, curve = set(start), 0, []
        pick_rng = np.random.default_rng(2000 + seed)
        for _ in range(ROUNDS):
            result = propagate(labels_of(labelled), graph=graph)
            if strategy == "margin":
                asked = [int(r) for r in np.argsort(result.query_rank) if result.query_rank[r] > 0][:ANSWERS]
            else:
                free = np.array(sorted(set(range(n)) - labelled))
                asked = [int(r) for r in pick_rng.choice(free, ANSWERS, replace=False)]
            met += int(truth[asked].sum())
            labelled |= set(asked)
            after = propagate(labels_of(labelled), graph=graph)
            curve.append(scores(by_probability(after, n), truth, labelled) | {"be_met": met})
        curves[strategy] = curve
    return {"start": found, "rounds": curves}


def adopt_model(archive: Archive, source: Path) -> int:
    """Register the current model of the archive at ``source`` as this archive's version 1."""
    donor = Archive(source, readonly=True)
    row = donor.current_model()
    directory = donor.model_dir(row["model_version"])
    donor.close()
    version = archive.next_model_version()
    archive.model_dir(version).mkdir(parents=True)
    for name in (CONFIG_FILE, WEIGHTS_FILE):  # the trained model only: encode, analyse, index write the rest
        shutil.copy2(directory / name, archive.model_dir(version) / name)
    checkpoint = json.loads((archive.model_dir(version) / CONFIG_FILE).read_text())
    archive.add_model(version, checkpoint, checkpoint["metrics"])
    return version


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--miles", default=os.environ.get("LATENTVO_MILES_DIR", REPO.parent / "shared/data/miles")
    )
    parser.add_argument("--model-from", type=Path, help="archive whose model in service is used")
    parser.add_argument("--train", action="store_true", help="train a model on this archive instead")
    parser.add_argument("--epochs", type=int, default=40, help="with --train")
    parser.add_argument("--train-spectra", type=int, default=5000, help="with --train: a sample of this many")
    parser.add_argument("--copies", type=int, default=11)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--negatives", type=int, default=20, help="labelled spectra that are not Be stars")
    parser.add_argument("--work", type=Path, default=REPO / "var" / "bench-bestars")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--name", default="bestars")
    args = parser.parse_args()
    if not args.train and args.model_from is None:
        parser.error("give --model-from ARCHIVE (a trained MILES archive, bench/miles.py) or --train")

    started = time.perf_counter()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    table = args.work / "miles_be.fits"
    n_stars = fits.getheader(Path(args.miles) / "miles_spectra.fits", "SPECTRA")["NAXIS2"]
    plan = emission_plan(n_stars * args.copies, seed=3)
    write_augmented(Path(args.miles), table, args.copies, seed=2, alter=add_emission(plan))
    overrides = {"archive": {"root": str(args.work / "archive")}}
    if args.train:  # as bench/miles.py trains on the library: 2048 pixels, 16 dimensions
        overrides |= {
            "grid": {"n_pixels": 2048},
            "model": {"epochs": args.epochs, "max_train_spectra": args.train_spectra, "latent_dim": 16},
        }
    config = load_config(environ={}, overrides=overrides)
    archive = Archive.from_config(config)
    timings = {}
    t0 = time.perf_counter()
    pipeline.ingest(archive, [table], collection="miles_be", progress=False)
    timings["ingest_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if args.train:
        version = pipeline.train_model(archive, config, progress=False)
    else:
        version = adopt_model(archive, args.model_from)
    timings["model_s"] = time.perf_counter() - t0
    for stage, step in (
        ("encode_s", lambda: pipeline.encode(archive, version, progress=False)),
        ("analyse_s", lambda: pipeline.analyse(archive, config, version, progress=False)),
        ("index_s", lambda: pipeline.build_index(archive, config, version, progress=False)),
    ):
        t0 = time.perf_counter()
        step()
        timings[stage] = time.perf_counter() - t0
    dids = archive.latent_dids(version)
    spectra = archive.spectra(columns="obs_publisher_did, source_index")
    rows = {r["obs_publisher_did"]: r["source_index"] for r in spectra}
    truth = np.array([rows[d] in plan for d in dids])
    anomaly = np.array(
        [r[0] for r in archive.db.execute(
            "SELECT anomaly_score FROM ml_latent WHERE model_version = ? ORDER BY row_index", (version,)
        )],
        dtype=float,
    )  # fmt: skip
    anomaly = np.nan_to_num(anomaly, nan=-np.inf)
    model = LatentModel(archive.model_dir(version))
    t0 = time.perf_counter()
    graph = index_graph(model.index, 11)
    timings["graph_s"] = time.perf_counter() - t0
    archive.close()
    runs = [run_seed(seed, truth, graph, anomaly, args.negatives) for seed in range(args.seeds)]
    result = {
        "n_spectra": len(dids),
        "n_be": int(truth.sum()),
        "single_peaked": sum(1 for p in plan.values() if p["kind"] == "single"),
        "model": (
            f"trained on this archive ({args.epochs} epochs at most, {args.train_spectra} spectra)"
            if args.train
            else f"adopted from {args.model_from}"
        ),
        "negatives": args.negatives,
        "seeds": args.seeds,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "total_s": round(time.perf_counter() - started, 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "start": summarise([r["start"] for r in runs]),
        "rounds": {
            strategy: [summarise([r["rounds"][strategy][i] for r in runs]) for i in range(ROUNDS)]
            for strategy in ("margin", "random")
        },
        "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=2))
    (args.out / f"{args.name}.md").write_text(markdown(result))
    print(markdown(result))


def summarise(items: list[dict]) -> dict:
    """Mean and standard deviation over the seeds of every number (nested one level)."""
    keys = items[0].keys()
    out = {}
    for key in keys:
        if isinstance(items[0][key], dict):
            out[key] = summarise([item[key] for item in items])
        else:
            values = np.array([item[key] for item in items], dtype=float)
            out[key] = {"mean": float(values.mean()), "std": float(values.std())}
    return out


def markdown(r: dict) -> str:
    def cell(v: dict) -> str:
        return f"{v['mean']:.2f} ± {v['std']:.2f}"

    lines = [
        f"# Be stars from five labels: {r['n_spectra']} augmented MILES spectra, "
        f"{r['n_be']} with Balmer emission",
        "",
        f"Model {r['model']}; {r['seeds']} draws of 5 Be stars and {r['negatives']} other spectra labelled; "
        f"{r['single_peaked']} single- and {r['n_be'] - r['single_peaked']} double-peaked emitters, Hα "
        f"EW −2 … −30 Å. {r['machine']}; stages (s): "
        + ", ".join(f"{k[:-2]} {v}" for k, v in r["timings_s"].items()),
        "",
        "| ranking | precision@50 | recall@200 |",
        "|---|---|---|",
    ]
    for name, found in r["start"].items():
        lines.append(f"| {name} | {cell(found['precision_at_50'])} | {cell(found['recall_at_200'])} |")
    lines += [
        "",
        f"Active learning, {ROUNDS} rounds of {ANSWERS} answers (from the truth); scores after each round:",
        "",
        "| round | margin: precision@50 | margin: recall@200 | margin: Be met | random: precision@50 | "
        "random: recall@200 | random: Be met |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, (margin, random) in enumerate(zip(r["rounds"]["margin"], r["rounds"]["random"], strict=True), 1):
        lines.append(
            f"| {i} | {cell(margin['precision_at_50'])} | {cell(margin['recall_at_200'])} | "
            f"{cell(margin['be_met'])} | {cell(random['precision_at_50'])} | "
            f"{cell(random['recall_at_200'])} | {cell(random['be_met'])} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

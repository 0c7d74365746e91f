"""Few labels, real classes: label propagation over MILES in the learned latent space, raw flux and PCA.

Takes an archive of the MILES library with a model in service (``bench/miles.py`` leaves one: the
library augmented five times, ``<star>_<copy>``), keeps one copy of each star (``_0``), and gives
each star its temperature class from the MILES table (``spclass``, or the first letter of ``sptype``
as the archive reads it; see model.readers.stellar_class). Then, for 5, 10, 20 and 50 labelled stars
per class (at most half of a class, so the rest is left to score) and ``--seeds`` draws of them,
propagates the labels (model/propagation.py, label spreading over the k-nearest-neighbour graph,
and the inverse-distance kNN vote) in three spaces built from the same spectra:

- latent: the model's posterior means along its similarity dimensions;
- raw flux: the spectra themselves, each divided by its median (unmeasured pixels at 1);
- PCA: as many principal components of that flux as the latent space has dimensions.

Reported per space, method and labels per class: accuracy and macro-F1 over the unlabelled stars,
mean and standard deviation over the draws (the same draws in every space).

Usage: python bench/propagation.py --archive DIR --spectra FITS --labels ECSV [--seeds 10] [--k 10]
(``--spectra`` the augmented table the archive was built from; ``--labels`` the MILES label table).
Writes bench/results/propagation.json and propagation.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table
from sklearn.decomposition import PCA
from sklearn.metrics import accuracy_score, f1_score

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from model.propagation import propagate  # noqa: E402
from model.readers import stellar_class  # noqa: E402
from service.archive import Archive  # noqa: E402

LABELS_PER_CLASS = (5, 10, 20, 50)
METHODS = ("spreading", "knn")


def latent_space(root: Path) -> tuple[list[str], np.ndarray]:
    """(obs_id, latent vector along the similarity dims) of every spectrum the model encoded."""
    from model.api import LatentModel

    archive = Archive(root, readonly=True)
    model = archive.current_model()
    ids = [did.rsplit("/", 1)[-1] for did in archive.latent_dids(model["model_version"])]
    archive.close()
    latent = LatentModel(root / model["directory"])
    return ids, np.asarray(latent.latents, dtype=np.float64)[:, latent.similarity_dims]


def flux_space(path: Path) -> tuple[list[str], np.ndarray]:
    """(obsid, median-normalised flux) of every spectrum of the augmented table."""
    with fits.open(path) as hdul:
        data = hdul["SPECTRA"].data
        ids = [str(v).strip() for v in data["obsid"]]
        flux = np.asarray(data["flux"], dtype=np.float64)
        good = np.asarray(data["ivar"]) > 0
    normalised = np.ones_like(flux)
    for i in range(len(flux)):
        scale = np.median(flux[i][good[i]]) if good[i].any() else 1.0
        normalised[i][good[i]] = flux[i][good[i]] / scale
    return ids, normalised


def classes_of(path: Path) -> dict[str, str]:
    table = Table.read(path)
    found = {}
    for row in table:
        meta = {key: "" if np.ma.is_masked(row[key]) else str(row[key]) for key in ("sptype", "spclass")}
        target_class, _ = stellar_class(meta)
        if target_class:
            found[str(row["miles_id"]).strip()] = target_class
    return found


def draws(truth: np.ndarray, per_class: int, seeds: int) -> list[np.ndarray]:
    """Boolean masks of the labelled stars: ``per_class`` of each class (at most half of it)."""
    masks = []
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        mask = np.zeros(len(truth), dtype=bool)
        for name in np.unique(truth):
            members = np.flatnonzero(truth == name)
            mask[rng.choice(members, min(per_class, len(members) // 2), replace=False)] = True
        masks.append(mask)
    return masks


def score(space: np.ndarray, truth: np.ndarray, masks: list[np.ndarray], method: str, k: int) -> dict:
    accuracy, macro_f1 = [], []
    for mask in masks:
        labels = [str(t) if m else None for t, m in zip(truth, mask, strict=True)]
        result = propagate(labels, latents=space, method=method, k=k)
        predicted = np.array(result.classes)[result.label[~mask]]
        accuracy.append(accuracy_score(truth[~mask], predicted))
        macro_f1.append(f1_score(truth[~mask], predicted, average="macro"))
    return {
        "accuracy": round(float(np.mean(accuracy)), 4),
        "accuracy_std": round(float(np.std(accuracy)), 4),
        "macro_f1": round(float(np.mean(macro_f1)), 4),
        "macro_f1_std": round(float(np.std(macro_f1)), 4),
    }


def markdown(report: dict) -> str:
    lines = [
        "# Label propagation on MILES: latent space against raw flux and PCA",
        "",
        f"Machine: {report['machine']}. {report['n_stars']} stars, classes {report['class_counts']}; "
        f"k = {report['k']}; mean ± standard deviation over {report['seeds']} draws of the labelled stars "
        f"(at most half of a class). Command: `{report['command']}`",
        "",
    ]
    for method in METHODS:
        lines += [
            f"## {method}",
            "",
            "| labels per class | latent: accuracy | latent: macro-F1 | raw flux: accuracy "
            "| raw flux: macro-F1 | PCA: accuracy | PCA: macro-F1 |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for per_class in LABELS_PER_CLASS:
            cells = []
            for space in ("latent", "raw flux", "PCA"):
                r = report["results"][method][space][str(per_class)]
                cells += [
                    f"{r['accuracy']:.3f} ± {r['accuracy_std']:.3f}",
                    f"{r['macro_f1']:.3f} ± {r['macro_f1_std']:.3f}",
                ]
            lines.append(f"| {per_class} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--archive", type=Path, required=True, help="archive root with the MILES model in service"
    )
    parser.add_argument("--spectra", type=Path, required=True, help="the augmented table the archive holds")
    parser.add_argument(
        "--labels", type=Path, required=True, help="the MILES label table (miles_labels.ecsv)"
    )
    parser.add_argument("--copy", default="_0", help="which augmented copy of each star to keep")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--name", default="propagation")
    args = parser.parse_args()

    classes = classes_of(args.labels)
    latent_ids, latents = latent_space(args.archive)
    flux_ids, flux = flux_space(args.spectra)
    stars = sorted(
        i for i in set(latent_ids) & set(flux_ids) if i.endswith(args.copy) and i.split("_")[0] in classes
    )
    latent_rows = {i: n for n, i in enumerate(latent_ids)}
    flux_rows = {i: n for n, i in enumerate(flux_ids)}
    truth = np.array([classes[i.split("_")[0]] for i in stars])
    flux = flux[[flux_rows[i] for i in stars]]
    spaces = {
        "latent": latents[[latent_rows[i] for i in stars]],
        "raw flux": flux,
        "PCA": PCA(n_components=latents.shape[1], random_state=0).fit_transform(flux),
    }
    names, counts = np.unique(truth, return_counts=True)
    results: dict = {method: {space: {} for space in spaces} for method in METHODS}
    for per_class in LABELS_PER_CLASS:
        masks = draws(truth, per_class, args.seeds)
        for method in METHODS:
            for space, vectors in spaces.items():
                results[method][space][str(per_class)] = score(vectors, truth, masks, method, args.k)
                r = results[method][space][str(per_class)]
                print(f"{method:9s} {space:8s} {per_class:2d}/class: accuracy {r['accuracy']:.3f}, "
                      f"macro-F1 {r['macro_f1']:.3f}", flush=True)  # fmt: skip
    report = {
        "machine": f"{platform.machine()}, Python {platform.python_version()}",
        "command": "python bench/propagation.py " + " ".join(sys.argv[1:]),
        "n_stars": len(stars),
        "class_counts": dict(zip(names.tolist(), counts.tolist(), strict=True)),
        "k": args.k,
        "seeds": args.seeds,
        "latent_dims": int(latents.shape[1]),
        "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(report, indent=2))
    (args.out / f"{args.name}.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()

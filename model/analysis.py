"""What the latent space means: informative dimensions, label information, baselines, anomalies.

Everything here works on plain arrays (posterior means and variances, labels, reconstruction
errors), so it serves the trained β-VAE, the PCA baseline and synthetic test cases alike.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata
from sklearn.decomposition import PCA
from sklearn.feature_selection import mutual_info_regression
from sklearn.neighbors import LocalOutlierFactor, NearestNeighbors

#: Fewer finite values than this and a label is not analysed: k-NN MI is meaningless there.
MIN_LABEL_ROWS = 20
#: MAD → σ for a normal distribution.
MAD_TO_SIGMA = 1.4826


def kl_per_dimension(mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    """Mean over rows of KL(N(mean, var) ‖ N(0, 1)) per latent dimension, in nats.

    A dimension the encoder ignores has a posterior equal to the prior for every input and
    KL ≈ 0; this is the standard way to tell active from collapsed dimensions of a VAE.
    """
    mean = np.asarray(mean, dtype=np.float64)
    var = np.clip(np.asarray(var, dtype=np.float64), 1e-30, None)
    if mean.shape != var.shape or mean.ndim != 2:
        raise ValueError(f"mean {mean.shape} and var {var.shape} must be equal (n, d) arrays")
    return 0.5 * np.mean(var + mean**2 - 1.0 - np.log(var), axis=0)


def informative_dimensions(
    mean: np.ndarray, var: np.ndarray | None, kl_threshold: float = 0.05, var_threshold: float = 0.01
) -> tuple[list[int], np.ndarray]:
    """Latent dimensions that carry information, in ascending order, and the KL per dimension.

    A dimension is informative when its mean KL to the prior exceeds ``kl_threshold``. When
    none does, or no variances are given (a deterministic encoder such as PCA; the KL is
    then NaN), the fallback is the variance of the posterior means across rows above
    ``var_threshold``: an unused dimension maps every input to the same point.
    """
    mean = np.asarray(mean, dtype=np.float64)
    if var is None:
        kl = np.full(mean.shape[1], np.nan)
        chosen = np.array([], dtype=int)
    else:
        kl = kl_per_dimension(mean, var)
        chosen = np.flatnonzero(kl > kl_threshold)
    if chosen.size == 0:
        chosen = np.flatnonzero(np.var(mean, axis=0) > var_threshold)
    return [int(j) for j in chosen], kl


def _standardise(a: np.ndarray) -> np.ndarray:
    """Columns scaled to zero mean and unit variance (constant columns → zeros)."""
    a = a - a.mean(axis=0)
    sd = a.std(axis=0)
    return np.divide(a, sd, out=np.zeros_like(a), where=sd > 0)


def _correlations(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r of every column of x (n, d) with y (n,); 0 for a constant column."""
    return _standardise(x).T @ _standardise(y[:, None])[:, 0] / x.shape[0]


def _mi(x: np.ndarray, y: np.ndarray, n_neighbors: int, seed: int) -> np.ndarray:
    return mutual_info_regression(x, y, discrete_features=False, n_neighbors=n_neighbors, random_state=seed)


def mutual_information(
    latents: np.ndarray,
    labels: Mapping[str, np.ndarray],
    n_neighbors: int = 3,
    n_bootstrap: int = 20,
    subsample: float = 0.8,
    seed: int = 0,
    max_rows: int | None = None,
) -> list[dict]:
    """Mutual information (nats) between every latent dimension and every label, with errors.

    MI uses the Kraskov k-NN estimator (``sklearn.feature_selection.mutual_info_regression``,
    fixed ``random_state``), which sees non-linear and non-monotone dependence that Pearson
    and Spearman (also reported) miss. Rows where the label is NaN are dropped per label;
    labels with fewer than ``MIN_LABEL_ROWS`` finite values or no variance are skipped.

    The uncertainty comes from ``n_bootstrap`` subsamples of a fraction ``subsample`` drawn
    **without** replacement. The classic bootstrap (with replacement) is wrong here:
    duplicated points sit at zero k-NN distance and bias the Kraskov estimate upward. The
    spread of the subsample estimates is scaled by sqrt(f/(1-f)) (delete-d jackknife,
    Shao & Wu 1989) so that ``mi_err`` estimates the standard error of ``mi`` from all n rows,
    not of a smaller sample; the raw spread would understate it (by 2× at f = 0.8).

    ``max_rows``: analyse a random subset of at most this many rows (the k-NN estimator costs
    O(n log n) per dimension and repetition); None uses all rows.

    Repeated label values (repeat observations of one star, augmented copies) are reduced to
    one randomly chosen row per value: the estimator assumes continuous variables, and tied
    labels make copies each other's nearest neighbours in the joint space, which inflates MI
    (by ~2 nats for PCA scores of 5 copies per star in MILES).

    Returns one dict per (dimension, label): ``dim``, ``label``, ``mi``, ``mi_err``,
    ``pearson``, ``spearman``, ``n`` (rows used).
    """
    latents = np.asarray(latents, dtype=np.float64)
    rows: list[dict] = []
    for plan in mi_plans(latents, labels, n_neighbors, n_bootstrap, subsample, seed, max_rows):
        rows += label_information(latents[plan.keep], plan, n_neighbors, seed)
    return rows


@dataclass
class LabelPlan:
    """One label's share of :func:`mutual_information`: its values, the rows it uses (``keep``) and the
    subsamples (indices into ``keep``) the uncertainty comes from. The random draws are all made when
    the plans are, in order, so the estimates can then run anywhere (Dask workers) with the same result."""

    name: str
    y: np.ndarray
    keep: np.ndarray
    subsamples: list[np.ndarray]


def mi_plans(
    latents: np.ndarray,
    labels: Mapping[str, np.ndarray],
    n_neighbors: int = 3,
    n_bootstrap: int = 20,
    subsample: float = 0.8,
    seed: int = 0,
    max_rows: int | None = None,
) -> list[LabelPlan]:
    """The labels :func:`mutual_information` can estimate, with every random draw it makes for them."""
    if not 0.0 < subsample < 1.0:
        raise ValueError("subsample must be a fraction in (0, 1)")
    if latents.ndim != 2:
        raise ValueError(f"latents must be (n, d), not {latents.shape}")
    rng = np.random.default_rng(seed)
    plans = []
    for name, values in labels.items():
        y = np.asarray(np.ma.filled(np.ma.asarray(values, dtype=np.float64), np.nan))
        if y.shape != (latents.shape[0],):
            raise ValueError(f"label {name!r} has shape {y.shape}, latents have {latents.shape[0]} rows")
        keep = _one_row_per_value(y, rng)
        if max_rows is not None and keep.size > max_rows:
            keep = np.sort(rng.choice(keep, max_rows, replace=False))
        if keep.size < MIN_LABEL_ROWS or np.ptp(y[keep]) == 0:
            continue
        m = min(max(int(round(subsample * keep.size)), n_neighbors + 2), keep.size - 1)
        subsamples = [rng.choice(keep.size, m, replace=False) for _ in range(n_bootstrap)]
        plans.append(LabelPlan(name, y[keep], keep, subsamples))
    return plans


def label_information(x: np.ndarray, plan: LabelPlan, n_neighbors: int = 3, seed: int = 0) -> list[dict]:
    """MI, its error and the correlations of every column of ``x`` (the latents of ``plan.keep``) with
    the label: the rows :func:`mutual_information` returns for it."""
    y = plan.y
    mi = _mi(x, y, n_neighbors, seed)
    repeats = np.array([_mi(x[idx], y[idx], n_neighbors, seed) for idx in plan.subsamples])
    if len(plan.subsamples) > 1:
        m = len(plan.subsamples[0])
        mi_err = repeats.std(axis=0, ddof=1) * np.sqrt(m / (y.size - m))
    else:
        mi_err = np.full_like(mi, np.nan)
    pearson = _correlations(x, y)
    spearman = _correlations(rankdata(x, axis=0), rankdata(y))
    return [
        {
            "dim": j,
            "label": plan.name,
            "mi": float(mi[j]),
            "mi_err": float(mi_err[j]),
            "pearson": float(pearson[j]),
            "spearman": float(spearman[j]),
            "n": int(y.size),
        }
        for j in range(x.shape[1])
    ]


def _one_row_per_value(y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices of finite ``y`` keeping one random row for each distinct value."""
    finite = np.flatnonzero(np.isfinite(y))
    order = rng.permutation(finite)
    _, first = np.unique(y[order], return_index=True)
    return np.sort(order[first])


def concentration(mi_rows: list[dict], label: str) -> dict:
    """How much of a label's information sits in its best dimension.

    Returns ``label``, ``dim`` (the best dimension; None when the label has no rows), ``mi``
    (its MI), ``total_mi`` (sum over dimensions), ``fraction`` = mi / total_mi: near 1
    means the label is concentrated in one dimension (disentangled), where PCA typically
    spreads it; and ``gap``, the best dimension's MI less the second best's (nats; the
    numerator of the mutual information gap of Chen et al. 2018). The fraction understates
    a label such as Teff that every dimension knows something of because the other labels
    correlate with it; the gap says whether one dimension stands out. Undefined values are NaN.
    """
    rows = sorted((r for r in mi_rows if r["label"] == label), key=lambda r: r["mi"], reverse=True)
    if not rows:
        nan = float("nan")
        return {"label": label, "dim": None, "mi": nan, "total_mi": 0.0, "fraction": nan, "gap": nan}
    best = rows[0]
    total = float(sum(r["mi"] for r in rows))
    return {
        "label": label,
        "dim": best["dim"],
        "mi": best["mi"],
        "total_mi": total,
        "fraction": best["mi"] / total if total > 0 else float("nan"),
        "gap": float(best["mi"] - rows[1]["mi"]) if len(rows) > 1 else float(best["mi"]),
    }


def pca_baseline(
    data: np.ndarray, n_components: int, mask: np.ndarray | None = None, seed: int = 0
) -> tuple[np.ndarray, PCA]:
    """PCA scores (n, n_components) and the fitted PCA: the linear baseline for the latents.

    ``mask`` is True where a pixel is bad (as :class:`model.spectrum.Spectrum` has it); bad
    and non-finite values are replaced by the mean of that pixel's good values (0 where a
    pixel has none), so they neither pull components nor drop rows. sklearn's ``auto``
    solver switches to randomised SVD for large inputs; ``seed`` makes that repeatable.
    """
    data = np.array(data, dtype=np.float32)
    if data.ndim != 2:
        raise ValueError(f"data must be (n, p), not {data.shape}")
    bad = ~np.isfinite(data)
    if mask is not None:
        bad |= np.asarray(mask, dtype=bool)
    if bad.any():
        good = ~bad
        counts = good.sum(axis=0)
        sums = np.where(good, data, 0.0).sum(axis=0, dtype=np.float64)
        fill = np.divide(sums, counts, out=np.zeros(data.shape[1]), where=counts > 0)
        data[bad] = np.broadcast_to(fill, data.shape)[bad]
    n_components = min(n_components, *data.shape)
    pca = PCA(n_components=n_components, svd_solver="auto", random_state=seed)
    return pca.fit_transform(data), pca


def robust_z(values: np.ndarray) -> np.ndarray:
    """(x - median) / (1.4826 MAD): a z-score that a few outliers cannot inflate.

    Falls back to the standard deviation when over half the values are equal (MAD = 0), and
    to zeros when all are.
    """
    values = np.asarray(values, dtype=np.float64)
    centre = np.median(values)
    scale = MAD_TO_SIGMA * np.median(np.abs(values - centre))
    if scale == 0:
        scale = values.std()
    return (values - centre) / scale if scale > 0 else np.zeros_like(values)


def anomaly_scores(
    latents: np.ndarray, recon_error: np.ndarray, n_neighbors: int = 20
) -> dict[str, np.ndarray]:
    """Outlier scores from latent density and from reconstruction error.

    - ``lof``: Local Outlier Factor in latent space (≈ 1 for inliers, larger = stranger):
      catches spectra in empty regions of the latent space.
    - ``recon_z``: robust z-score of the reconstruction error: catches spectra the model
      cannot reproduce (artefacts, unseen types).
    - ``anomaly_score``: the larger of the two robust z-scores (of ``lof`` and of the
      reconstruction error), so a spectrum is flagged if either view finds it strange,
      on a common scale (≈ number of robust σ from the typical spectrum).

    With fewer rows than ``n_neighbors + 1`` LOF uses ``n - 1`` neighbours; with fewer than
    3 rows every ``lof`` is 1.
    """
    latents = np.asarray(latents, dtype=np.float64)
    recon_error = np.asarray(recon_error, dtype=np.float64)
    n = latents.shape[0]
    if recon_error.shape != (n,):
        raise ValueError(f"recon_error {recon_error.shape} must have one value per latent row ({n})")
    k = min(n_neighbors, n - 1)
    lof = local_outlier_factor(latents, k) if k >= 2 else np.ones(n)
    recon_z = robust_z(recon_error)
    return {"lof": lof, "recon_z": recon_z, "anomaly_score": np.maximum(robust_z(lof), recon_z)}


#: Up to this many rows LOF is exact (scikit-learn); beyond, its cost grows faster than the rows
#: (50,000 rows in 14 dimensions: 32 s; 200,000: 460 s on 2 cores), and the neighbours come from Annoy.
EXACT_LOF_ROWS = 50_000
#: Annoy's trees and search breadth for those neighbours: bench/pipeline.py reports the agreement.
LOF_TREES = 10
LOF_SEARCH_K = 2000


def local_outlier_factor(latents: np.ndarray, k: int, exact_rows: int = EXACT_LOF_ROWS) -> np.ndarray:
    """LOF of every row against its k nearest others (≈ 1 inside a cluster, larger = more isolated).

    Exact up to ``exact_rows`` rows; beyond, the same formula over approximate neighbours from an
    Annoy forest (:func:`approximate_neighbours`), which scales as n log n.
    """
    latents = np.asarray(latents, dtype=np.float64)
    if len(latents) <= exact_rows:
        return -LocalOutlierFactor(n_neighbors=k).fit(latents).negative_outlier_factor_
    indices, distances = approximate_neighbours(latents, k)
    return lof_from_neighbours(indices, distances)


def lof_from_neighbours(indices: np.ndarray, distances: np.ndarray) -> np.ndarray:
    """LOF from each row's k nearest other rows (n, k) and their distances, as scikit-learn computes it
    (Breunig et al. 2000: reachability distances, local reachability density, their ratio)."""
    k_distance = distances[:, -1]
    reach = np.maximum(distances, k_distance[indices])
    density = 1.0 / (reach.mean(axis=1) + 1e-10)
    return (density[indices] / density[:, None]).mean(axis=1)


def approximate_neighbours(
    latents: np.ndarray, k: int, n_trees: int = LOF_TREES, search_k: int = LOF_SEARCH_K
) -> tuple[np.ndarray, np.ndarray]:
    """Each row's k nearest other rows and their Euclidean distances, from an in-memory Annoy forest;
    queries run in threads (Annoy releases the GIL)."""
    from annoy import AnnoyIndex

    n, dim = latents.shape
    forest = AnnoyIndex(dim, "euclidean")
    for row, vector in enumerate(latents):
        forest.add_item(row, vector)
    forest.build(n_trees, n_jobs=-1)
    indices = np.empty((n, k), np.int64)
    distances = np.empty((n, k), np.float64)

    def query(rows: range) -> None:
        for row in rows:
            found, dist = forest.get_nns_by_item(row, k + 1, search_k=search_k, include_distances=True)
            others = [(f, d) for f, d in zip(found, dist, strict=True) if f != row][:k]
            if len(others) < k:  # duplicates crowding out: pad with the farthest found
                others += [others[-1]] * (k - len(others))
            indices[row] = [f for f, _ in others]
            distances[row] = [d for _, d in others]

    chunk = 10_000
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(query, (range(start, min(start + chunk, n)) for start in range(0, n, chunk))))
    forest.unload()
    return indices, distances


def knn_label_vote(
    latents: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray | None = None,
    k: int = 10,
    one_per_group: bool = False,
) -> np.ndarray:
    """Leave-one-star-out k-NN prediction of a label from the latents: how well does the
    neighbourhood in latent space know the label?

    Each row gets the median label of its ``k`` nearest rows that have a finite label and
    belong to a different group (``groups``: e.g. the star id shared by augmented copies of
    one spectrum, so that a copy cannot vote for itself); ``groups=None`` is plain
    leave-one-out. NaN where no such neighbour exists.

    ``one_per_group`` lets each other group vote once, through its nearest row. Without it a
    space that maps the copies of a star onto one point (as a velocity-invariant latent
    should) gets k votes from only k / copies stars, while a space that scatters the copies
    gets k different stars: the vote then measures invariance, not what the space knows.
    """
    latents = np.asarray(latents, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    n = latents.shape[0]
    groups = np.arange(n) if groups is None else np.asarray(groups)
    if labels.shape != (n,) or groups.shape != (n,):
        raise ValueError("latents, labels and groups must have the same number of rows")
    ref = np.flatnonzero(np.isfinite(labels))
    out = np.full(n, np.nan)
    if ref.size == 0 or n == 0:
        return out
    _, group_codes = np.unique(groups, return_inverse=True)
    largest_group = int(np.bincount(group_codes[ref]).max())
    wanted = k * largest_group if one_per_group else k
    n_query = min(wanted + largest_group, ref.size)
    _, idx = NearestNeighbors(n_neighbors=n_query).fit(latents[ref]).kneighbors(latents)
    idx = ref[idx]  # (n, n_query) row numbers, nearest first
    neighbour_groups = group_codes[idx]
    usable = neighbour_groups != group_codes[:, None]
    if one_per_group:
        usable &= first_occurrence(neighbour_groups)
    usable &= np.cumsum(usable, axis=1) <= k  # the first k usable neighbours of each row
    votes = np.where(usable, labels[idx], np.nan)
    has_vote = usable.any(axis=1)
    out[has_vote] = np.nanmedian(votes[has_vote], axis=1)
    return out


def first_occurrence(values: np.ndarray) -> np.ndarray:
    """True where a value appears for the first time in its row of the 2D array ``values``."""
    order = np.argsort(values, axis=1, kind="stable")
    ordered = np.take_along_axis(values, order, axis=1)
    first_sorted = np.ones_like(ordered, dtype=bool)
    first_sorted[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    first = np.empty_like(first_sorted)
    np.put_along_axis(first, order, first_sorted, axis=1)
    return first


#: Projections :func:`map_projection` knows; "umap" needs the optional umap-learn package.
MAP_METHODS = ("pca", "umap")


def available_map_methods() -> list[str]:
    """The projections this installation can compute: PCA always, UMAP when umap-learn imports."""
    if importlib.util.find_spec("umap") is None:
        return ["pca"]
    try:
        from umap import UMAP  # noqa: F401  (a broken or partial install is no UMAP)
    except (ImportError, AttributeError):
        return ["pca"]
    return ["pca", "umap"]


def map_projection(latents: np.ndarray, method: str = "pca", seed: int = 0) -> np.ndarray:
    """A 2-D map (n, 2) of latent vectors, for people to look at the archive.

    PCA keeps large distances (its axes are the directions the archive varies most in); UMAP keeps
    neighbourhoods, which shows clusters better but distorts distances between them.
    """
    data = np.asarray(latents, dtype=np.float64)
    if data.ndim != 2 or len(data) == 0:
        raise ValueError(f"latents must be a non-empty (n, d) matrix, not {data.shape}")
    if method == "pca":
        if data.shape[1] == 1 or len(data) < 2:
            xy = np.zeros((len(data), 2))
            xy[:, 0] = data[:, 0] - data[:, 0].mean()
            return xy
        return PCA(n_components=2, random_state=seed).fit_transform(data)
    if method == "umap":
        import umap  # optional dependency: only reached where available_map_methods() lists it

        neighbours = max(2, min(15, len(data) - 1))
        reducer = umap.UMAP(n_components=2, n_neighbors=neighbours, random_state=seed, n_jobs=1)
        return reducer.fit_transform(data)
    raise ValueError(f"unknown map method {method!r}; use one of {', '.join(MAP_METHODS)}")

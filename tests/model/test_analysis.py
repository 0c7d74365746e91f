"""Latent-space analysis on hand-built cases whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr
from sklearn.neighbors import NearestNeighbors

from model.analysis import (
    anomaly_scores,
    concentration,
    first_occurrence,
    informative_dimensions,
    kl_per_dimension,
    knn_label_vote,
    local_outlier_factor,
    lof_from_neighbours,
    map_projection,
    mutual_information,
    pca_baseline,
    robust_z,
)


@pytest.fixture(scope="module")
def planted():
    """400 rows, 4 latent dims; dim 2 is a monotone function of the label plus small noise."""
    rng = np.random.default_rng(0)
    label = rng.uniform(3500, 9000, 400)
    latents = rng.standard_normal((400, 4))
    latents[:, 2] = np.tanh((label - 6000) / 1500) + 0.02 * rng.standard_normal(400)
    return latents, label


def by_dim(rows, label):
    return {r["dim"]: r for r in rows if r["label"] == label}


# --- KL and informative dimensions ----------------------------------------------------------------


def test_kl_matches_the_closed_form():
    mean = np.array([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    var = np.array([[1.0, 1.0, np.e**-2], [1.0, 1.0, np.e**-2]])
    # KL = (var + mean² - 1 - ln var) / 2
    np.testing.assert_allclose(kl_per_dimension(mean, var), [0.0, 0.5, 0.5 * (np.e**-2 + 1)])


def test_informative_dimensions_are_those_whose_posterior_leaves_the_prior():
    rng = np.random.default_rng(1)
    n, d = 500, 6
    mean = 0.01 * rng.standard_normal((n, d))
    var = np.ones((n, d))
    for j in (4, 1):  # used dimensions: means spread like the prior, posteriors narrow
        mean[:, j] = rng.standard_normal(n)
        var[:, j] = 0.01
    dims, kl = informative_dimensions(mean, var)
    assert dims == [1, 4]
    assert kl.shape == (d,) and kl[[1, 4]].min() > 1.0 and np.delete(kl, [1, 4]).max() < 1e-3
    # Without variances (a deterministic encoder) the spread of the means decides.
    dims_no_var, kl_no_var = informative_dimensions(mean, None)
    assert dims_no_var == [1, 4] and np.isnan(kl_no_var).all()


def test_informative_dimensions_fall_back_to_mean_variance():
    rng = np.random.default_rng(2)
    mean = np.zeros((300, 3))
    mean[:, 0] = 0.2 * rng.standard_normal(300)  # KL tiny (0.02) but the means clearly vary
    var = np.ones((300, 3))
    dims, kl = informative_dimensions(mean, var, kl_threshold=0.05, var_threshold=0.01)
    assert kl.max() < 0.05 and dims == [0]


# --- mutual information ---------------------------------------------------------------------------


def test_mutual_information_finds_the_planted_dimension(planted):
    latents, label = planted
    rows = mutual_information(latents, {"teff": label}, n_bootstrap=10)
    assert len(rows) == 4
    mi = by_dim(rows, "teff")
    assert mi[2]["mi"] > 1.0
    assert max(mi[j]["mi"] for j in (0, 1, 3)) < 0.1
    assert all(r["n"] == 400 for r in rows)
    assert 0 < mi[2]["mi_err"] < 0.3
    assert mi[2]["spearman"] > 0.99 and mi[2]["pearson"] > 0.9
    assert abs(mi[0]["spearman"]) < 0.2
    best = concentration(rows, "teff")
    assert best["dim"] == 2 and best["mi"] == mi[2]["mi"] and best["fraction"] > 0.8
    assert best["total_mi"] == pytest.approx(sum(r["mi"] for r in rows))
    assert best["gap"] == pytest.approx(mi[2]["mi"] - max(mi[j]["mi"] for j in (0, 1, 3)))
    assert concentration(rows, "logg")["dim"] is None


def test_mutual_information_finds_nothing_in_shuffled_labels(planted):
    latents, label = planted
    shuffled = np.random.default_rng(3).permutation(label)
    rows = mutual_information(latents, {"teff": shuffled}, n_bootstrap=10)
    assert max(r["mi"] for r in rows) < 0.05
    assert all(r["mi_err"] > 0 for r in rows)


def test_mutual_information_is_deterministic_and_handles_missing_labels(planted):
    latents, label = planted
    with_nan = label.copy()
    with_nan[::4] = np.nan
    labels = {
        "teff": with_nan,
        "constant": np.ones(400),
        "sparse": np.where(np.arange(400) < 10, label, np.nan),  # too few values
    }
    rows = mutual_information(latents, labels, n_bootstrap=5, seed=4)
    assert {r["label"] for r in rows} == {"teff"}
    assert all(r["n"] == 300 for r in rows)
    assert rows == mutual_information(latents, labels, n_bootstrap=5, seed=4)
    assert by_dim(rows, "teff")[2]["mi"] > 1.0


def test_mutual_information_max_rows_subsamples(planted):
    latents, label = planted
    rows = mutual_information(latents, {"teff": label}, n_bootstrap=3, max_rows=200)
    assert all(r["n"] == 200 for r in rows)
    assert by_dim(rows, "teff")[2]["mi"] > 1.0


# --- PCA baseline ---------------------------------------------------------------------------------


def test_pca_baseline_recovers_a_low_rank_structure():
    rng = np.random.default_rng(5)
    data = rng.standard_normal((200, 3)) @ rng.standard_normal((3, 60))
    data += 0.01 * rng.standard_normal(data.shape)
    scores, pca = pca_baseline(data, 3)
    assert scores.shape == (200, 3)
    assert pca.explained_variance_ratio_.sum() > 0.99
    assert np.all(np.diff(pca.explained_variance_ratio_) <= 0)


def test_pca_baseline_fills_masked_pixels_with_the_pixel_mean():
    rng = np.random.default_rng(6)
    data = rng.standard_normal((100, 20))
    mask = np.zeros_like(data, dtype=bool)
    mask[rng.integers(0, 100, 30), rng.integers(0, 20, 30)] = True
    garbage = data.copy()
    garbage[mask] = 1e6
    garbage[5, 7] = np.nan  # non-finite counts as bad too
    mask_all = mask.copy()
    mask_all[5, 7] = True
    filled = data.copy()
    for j in range(20):
        filled[mask_all[:, j], j] = data[~mask_all[:, j], j].mean()
    scores, _ = pca_baseline(garbage, 4, mask=mask)
    expected, _ = pca_baseline(filled, 4)
    # Up to component signs, and float32 rounding (the garbage would be off by ~1e6).
    np.testing.assert_allclose(np.abs(scores), np.abs(expected), atol=2e-3)


# --- anomalies ------------------------------------------------------------------------------------


def test_anomaly_score_ranks_planted_outliers_first():
    rng = np.random.default_rng(7)
    latents = rng.standard_normal((300, 5))
    recon = rng.gamma(5.0, 0.01, 300)
    far = [10, 50, 90]
    latents[far] += 8.0  # far from the cloud
    bad_fit = [20, 200]
    recon[bad_fit] *= 20  # normal latents, but the model cannot reproduce them
    scores = anomaly_scores(latents, recon)
    assert set(np.argsort(scores["anomaly_score"])[-5:]) == set(far + bad_fit)
    assert set(np.argsort(scores["lof"])[-3:]) == set(far)
    assert set(np.argsort(scores["recon_z"])[-2:]) == set(bad_fit)
    inliers = np.delete(scores["lof"], far)
    assert np.median(inliers) == pytest.approx(1.0, abs=0.1)


@pytest.mark.parametrize("n", [1, 2, 5])
def test_anomaly_scores_with_fewer_rows_than_neighbours(n):
    rng = np.random.default_rng(8)
    scores = anomaly_scores(rng.standard_normal((n, 3)), rng.uniform(size=n), n_neighbors=20)
    assert all(v.shape == (n,) and np.isfinite(v).all() for v in scores.values())


def test_lof_beyond_the_exact_limit_agrees_with_exact_lof():
    """The formula over exact neighbours is scikit-learn's LOF; over Annoy's neighbours it ranks alike."""
    rng = np.random.default_rng(10)
    latents = rng.standard_normal((3000, 8)) * np.linspace(1.0, 0.1, 8)
    latents[:15] += 4.0 * rng.standard_normal((15, 8))
    exact = local_outlier_factor(latents, 20)
    distances, indices = NearestNeighbors(n_neighbors=21).fit(latents).kneighbors(latents)
    np.testing.assert_allclose(lof_from_neighbours(indices[:, 1:], distances[:, 1:]), exact, rtol=1e-9)
    approximate = local_outlier_factor(latents, 20, exact_rows=0)
    assert spearmanr(exact, approximate)[0] > 0.99
    assert set(np.argsort(approximate)[-15:]) == set(np.argsort(exact)[-15:])


def test_robust_z_ignores_the_outliers_it_measures():
    values = np.r_[np.random.default_rng(9).standard_normal(1000), 1e6]
    z = robust_z(values)
    assert z[-1] > 1e5 and np.abs(z[:-1]).max() < 5
    np.testing.assert_array_equal(robust_z(np.ones(5)), 0.0)


# --- leave-one-star-out k-NN ----------------------------------------------------------------------


def test_knn_vote_excludes_copies_of_the_same_star():
    rng = np.random.default_rng(10)
    n_stars, copies = 30, 3
    star = np.repeat(np.arange(n_stars), copies)
    latents = star[:, None] * np.ones((1, 2)) + 1e-3 * rng.standard_normal((star.size, 2))
    label = star.astype(float) * 100  # the nearest copy would give the exact answer
    loo = knn_label_vote(latents, label, groups=None, k=1)
    np.testing.assert_array_equal(loo, label)  # plain leave-one-out finds its own copy
    lso = knn_label_vote(latents, label, groups=star, k=1)
    assert np.all(lso != label)
    np.testing.assert_array_equal(np.abs(lso - label), 100.0)  # a neighbouring star instead
    # With k = 2 × copies the votes are the copies of both neighbours: median = own label,
    # but the ends of the line only have one side.
    both = knn_label_vote(latents, label, groups=star, k=2 * copies)
    inner = (star > 0) & (star < n_stars - 1)
    np.testing.assert_array_equal(both[inner], label[inner])


def test_knn_vote_skips_missing_labels_and_big_groups():
    latents = np.arange(12, dtype=float)[:, None]
    groups = np.array([0] * 8 + [1, 2, 3, 4])  # one star with 8 copies
    label = np.arange(12, dtype=float)
    label[9] = np.nan
    pred = knn_label_vote(latents, label, groups=groups, k=2)
    assert pred[0] == pytest.approx(np.median([8, 10]))  # group 0 skipped, NaN row 9 never votes
    assert pred[9] == pytest.approx(np.median([8, 10]))  # rows without a label still get a prediction
    assert np.isnan(knn_label_vote(latents, np.full(12, np.nan))).all()


def test_repeated_label_values_do_not_inflate_mi():
    """Five near-identical copies per object (as augmented or repeat spectra) give the MI of one copy."""
    rng = np.random.default_rng(4)
    label = rng.uniform(0, 1, 400)
    x = (label + rng.normal(0, 0.3, 400))[:, None]
    once = mutual_information(x, {"t": label}, n_bootstrap=2)[0]["mi"]
    copies_x = np.repeat(x, 5, axis=0) + rng.normal(0, 1e-3, (2000, 1))
    copies = mutual_information(copies_x, {"t": np.repeat(label, 5)}, n_bootstrap=2)[0]["mi"]
    assert copies == pytest.approx(once, abs=0.1)


def test_knn_vote_one_per_group_counts_stars_not_copies():
    # Stars on a line; each has 5 identical copies. Star 0 has label 0, the others 100 × id.
    copies, n_stars = 5, 8
    star = np.repeat(np.arange(n_stars), copies)
    latents = star[:, None].astype(float)
    label = star * 100.0
    # Per copy: the 4 nearest other rows are copies of one neighbouring star ...
    per_copy = knn_label_vote(latents, label, groups=star, k=4)
    assert per_copy[0] == 100.0
    # ... per star: the 4 nearest other stars, 1–4, median 250.
    per_star = knn_label_vote(latents, label, groups=star, k=4, one_per_group=True)
    assert per_star[0] == pytest.approx(250.0)
    assert np.isfinite(per_star).all()


def test_first_occurrence_marks_each_value_once_per_row():
    values = np.array([[3, 1, 3, 2, 1], [0, 0, 0, 5, 5]])
    expected = np.array([[1, 1, 0, 1, 0], [1, 0, 0, 1, 0]], dtype=bool)
    np.testing.assert_array_equal(first_occurrence(values), expected)


# --- the 2-D map ------------------------------------------------------------------------------------


def test_pca_map_keeps_the_two_largest_directions(planted):
    latents, _ = planted
    stretched = latents * np.array([5.0, 0.1, 3.0, 0.1])
    xy = map_projection(stretched, "pca")
    assert xy.shape == (len(latents), 2)
    # the map's axes are the two stretched dimensions, in order of size
    assert abs(np.corrcoef(xy[:, 0], stretched[:, 0])[0, 1]) > 0.99
    assert abs(np.corrcoef(xy[:, 1], stretched[:, 2])[0, 1]) > 0.99


def test_map_of_one_dimension_or_one_row_and_unknown_method():
    line = np.arange(5.0)[:, None]
    np.testing.assert_allclose(map_projection(line)[:, 0], line[:, 0] - 2.0)
    assert map_projection(np.ones((1, 3))).shape == (1, 2)
    with pytest.raises(ValueError, match="unknown map method"):
        map_projection(np.ones((4, 2)), "tsne")
    with pytest.raises(ValueError, match="non-empty"):
        map_projection(np.ones((0, 2)))

"""Label spreading over the latent neighbour graph (model/propagation.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.semi_supervised import LabelSpreading

from model.propagation import UNLABELLED, exact_graph, index_graph, propagate, spread
from model.similarity import LatentIndex

CENTRES = np.array([[0, 0, 0, 0], [5, 0, 0, 0], [0, 6, 0, 0]], dtype=float)


def blobs(per_class: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    latents = np.concatenate([rng.normal(c, 1.0, (per_class, 4)) for c in CENTRES]).astype(np.float32)
    return latents, np.repeat(np.arange(len(CENTRES)), per_class)


def few_labels(truth: np.ndarray, per_class: int) -> list[str | None]:
    labels: list[str | None] = [None] * len(truth)
    for c in np.unique(truth):
        for i in np.flatnonzero(truth == c)[:per_class]:
            labels[i] = "abc"[c]
    return labels


def test_spreading_equals_scikit_learn_on_the_same_graph():
    latents, truth = blobs()
    coded = np.full(len(truth), UNLABELLED)
    coded[[0, 1, 60, 61, 120, 121]] = truth[[0, 1, 60, 61, 120, 121]]
    reference = LabelSpreading(kernel="knn", n_neighbors=7, alpha=0.2).fit(latents.astype(np.float64), coded)
    ours = spread(exact_graph(latents, 7), coded, 3)
    np.testing.assert_allclose(ours, reference.label_distributions_, rtol=0, atol=1e-12)


@pytest.mark.parametrize("method", ["spreading", "knn"])
def test_two_labels_per_class_recover_the_classes(method):
    latents, truth = blobs()
    result = propagate(few_labels(truth, 2), latents=latents, method=method, k=10)
    assert result.classes == ["a", "b", "c"]
    unlabelled = result.query_rank > 0
    assert (result.label[unlabelled] == truth[unlabelled]).mean() > 0.9
    np.testing.assert_allclose(result.probability.sum(axis=1), 1.0)


def test_query_rank_asks_first_where_the_classes_meet():
    latents, truth = blobs()
    labels = few_labels(truth, 3)
    result = propagate(labels, latents=latents, k=10)
    known = np.array([label is not None for label in labels])
    assert (result.query_rank[known] == 0).all() and (result.margin[known] == 1).all()
    ranks = result.query_rank[~known]
    assert sorted(ranks) == list(range(1, len(ranks) + 1))
    order = np.argsort(np.where(known, np.inf, result.query_rank))
    margins = result.margin[order[: len(ranks)]]
    assert (np.diff(margins) >= -1e-12).all()  # ranked by growing margin
    first = order[:10]  # the ten questions to ask first lie between the classes
    distance_to_own = np.linalg.norm(latents[first] - CENTRES[truth[first]], axis=1)
    assert np.median(distance_to_own) > np.median(np.linalg.norm(latents - CENTRES[truth], axis=1))


def test_the_graph_can_come_from_the_served_index(tmp_path: Path):
    latents, truth = blobs()
    index = LatentIndex.build(latents, [0, 1, 2, 3], tmp_path / "index.ann", k=10, target_recall=0.99, seed=3)
    graph = index_graph(index, 11)
    assert graph.shape == (len(truth), len(truth)) and graph.nnz == len(truth) * 11
    exact = exact_graph(latents, 11)
    assert abs(graph - exact).sum() / exact.nnz < 0.05  # Annoy finds (nearly) the exact neighbours
    result = propagate(few_labels(truth, 2), graph=graph)
    unlabelled = result.query_rank > 0
    assert (result.label[unlabelled] == truth[unlabelled]).mean() > 0.9


def test_bad_requests_are_value_errors():
    latents, truth = blobs(10)
    with pytest.raises(ValueError, match="at least two classes"):
        propagate(["a"] + [None] * 29, latents=latents)
    with pytest.raises(ValueError, match="unknown method"):
        propagate(few_labels(truth, 2), latents=latents, method="magic")
    with pytest.raises(ValueError, match="needs the neighbour graph"):
        propagate(few_labels(truth, 2))

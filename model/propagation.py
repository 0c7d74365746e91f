"""Teaching the archive with few labels: label spreading over the latent k-nearest-neighbour graph.

A handful of spectra labelled by an astronomer ("Be star", "not Be", a spectral class) spread their
labels along the graph that joins every spectrum to its k nearest neighbours in latent space, the
graph the similarity index already answers (Zhou et al. 2004, "Learning with local and global
consistency", as scikit-learn's ``LabelSpreading`` computes it, but over a sparse graph given from
outside: the served Annoy index, or exact search for small archives; never a dense N × N matrix).
``method="knn"`` is the plain alternative: the class shares among the k nearest labelled spectra,
weighted by inverse distance.

Every result ranks the unlabelled spectra for the next question to ask (margin sampling: the
smaller the gap between the two most probable classes, the more an answer teaches; Settles 2009),
the loop of an active-learning session.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import sparse

from model.similarity import LatentIndex, exact_neighbours_batch

#: Unlabelled, in the label array :func:`propagate` takes.
UNLABELLED = -1


@dataclass
class Propagation:
    """Labels for every spectrum: probabilities per class, the most probable class, what to ask next."""

    classes: list[str]
    probability: np.ndarray  # (n, classes) rows sum to 1 (0 everywhere: nothing reached the spectrum)
    label: np.ndarray  # (n,) index into classes of the most probable one (-1 where nothing reached)
    margin: np.ndarray  # (n,) top probability minus the second (1 for a labelled spectrum)
    query_rank: np.ndarray  # (n,) 1 = the unlabelled spectrum to ask about first; 0 for labelled ones


def knn_graph(neighbours: np.ndarray) -> sparse.csr_matrix:
    """The connectivity matrix of ``neighbours`` ((n, k) row numbers, each row's own first or among
    them): 1 where j is among i's k nearest, self included, as scikit-learn's kneighbors_graph."""
    n, k = neighbours.shape
    rows = np.repeat(np.arange(n), k)
    return sparse.csr_matrix((np.ones(n * k), (rows, neighbours.ravel())), shape=(n, n))


def index_graph(index: LatentIndex, k: int) -> sparse.csr_matrix:
    """:func:`knn_graph` of the k nearest neighbours (self included) that the served Annoy index finds:
    one query per spectrum, memory O(n k)."""
    return knn_graph(index_neighbours(index, k))


def index_neighbours(
    index: LatentIndex, k: int, check: Callable[[], None] | None = None, every: int = 4096
) -> np.ndarray:
    """Row numbers ``(n, k)`` of each spectrum's k nearest neighbours in the index (self included);
    ``check`` is called every ``every`` rows (to stop a long build by raising)."""
    n = index.meta.n_items
    neighbours = np.empty((n, min(k, n)), dtype=np.int64)
    for row in range(n):
        if check is not None and row % every == 0:
            check()
        neighbours[row] = index.query_row(row, k)[0]
    return neighbours


def exact_graph(latents: np.ndarray, k: int, dims: Sequence[int] | None = None) -> sparse.csr_matrix:
    """:func:`knn_graph` of the exact k nearest neighbours (self included) along ``dims``."""
    return knn_graph(exact_neighbours_batch(latents, np.asarray(latents, dtype=np.float64), k, dims))


def spread(
    graph: sparse.spmatrix,
    labels: np.ndarray,
    n_classes: int,
    alpha: float = 0.2,
    max_iter: int = 30,
    tol: float = 1e-3,
) -> np.ndarray:
    """Label spreading: ``F ← α S F + (1 − α) Y`` until it settles, with ``S`` the normalised graph
    (the negated normalised Laplacian without its diagonal, as scikit-learn builds it); the class
    distributions of every row, normalised to sum to 1."""
    graph = sparse.csr_matrix(graph, dtype=np.float64)
    graph.setdiag(0)  # the Laplacian's diagonal is dropped below; self-loops must not count in degrees
    graph.eliminate_zeros()
    # As scipy's laplacian(normed=True): column sums (how often a spectrum is someone's neighbour),
    # 1 for a spectrum nobody lists, so that it still hears its own neighbours.
    degree = np.asarray(graph.sum(axis=0)).ravel()
    scale = 1.0 / np.sqrt(np.where(degree > 0, degree, 1.0))
    normalised = sparse.diags(scale) @ graph @ sparse.diags(scale)
    seeds = np.zeros((len(labels), n_classes))
    known = labels != UNLABELLED
    seeds[np.flatnonzero(known), labels[known]] = 1.0
    current = seeds.copy()
    for _ in range(max_iter):
        previous = current
        current = alpha * (normalised @ current) + (1 - alpha) * seeds
        if np.abs(current - previous).sum() < tol:
            break
    totals = current.sum(axis=1, keepdims=True)
    return np.divide(current, totals, out=np.zeros_like(current), where=totals > 0)


def nearest_labelled(
    latents: np.ndarray,
    labels: np.ndarray,
    n_classes: int,
    k: int,
    dims: Sequence[int] | None = None,
    chunk_rows: int = 8192,
) -> np.ndarray:
    """Each class's share among every spectrum's k nearest labelled spectra, weighted by inverse
    distance (so that a few labels per class do not tie)."""
    known = np.flatnonzero(labels != UNLABELLED)
    probability = np.zeros((len(labels), n_classes))
    if not len(known):
        return probability
    columns = slice(None) if dims is None else list(dims)
    reference = np.asarray(latents[known], dtype=np.float64)[:, columns]
    k = min(k, len(known))
    for start in range(0, len(labels), chunk_rows):
        block = np.asarray(latents[start : start + chunk_rows], dtype=np.float64)[:, columns]
        squared = (block**2).sum(axis=1)[:, None] - 2 * block @ reference.T + (reference**2).sum(axis=1)
        distance = np.sqrt(np.maximum(squared, 0.0))  # (chunk, labelled): never (n, labelled, dims)
        nearest = np.argsort(distance, axis=1, kind="stable")[:, :k]
        weight = 1.0 / (np.take_along_axis(distance, nearest, axis=1) + 1e-12)
        votes = labels[known][nearest]
        for c in range(n_classes):
            probability[start : start + len(block), c] = (weight * (votes == c)).sum(axis=1)
    return probability / probability.sum(axis=1, keepdims=True)


def propagate(
    labels: Sequence[str | None],
    *,
    graph: sparse.spmatrix | None = None,
    latents: np.ndarray | None = None,
    method: str = "spreading",
    k: int = 10,
    dims: Sequence[int] | None = None,
    alpha: float = 0.2,
) -> Propagation:
    """Labels for every spectrum from the few in ``labels`` (None where unlabelled).

    ``method="spreading"`` needs ``graph`` (or ``latents`` to build the exact one); ``"knn"`` needs
    ``latents``. Raises ValueError for an unknown method or fewer than two classes.
    """
    classes = sorted({label for label in labels if label is not None})
    if len(classes) < 2:
        raise ValueError("label propagation needs spectra of at least two classes")
    index = {name: i for i, name in enumerate(classes)}
    coded = np.array([UNLABELLED if label is None else index[label] for label in labels], dtype=np.int64)
    if method == "spreading":
        if graph is None:
            if latents is None:
                raise ValueError("label spreading needs the neighbour graph or the latent vectors")
            graph = exact_graph(latents, k + 1, dims)
        probability = spread(graph, coded, len(classes), alpha=alpha)
    elif method == "knn":
        if latents is None:
            raise ValueError("the knn method needs the latent vectors")
        probability = nearest_labelled(latents, coded, len(classes), k, dims)
    else:
        raise ValueError(f"unknown method {method!r}: use spreading or knn")
    probability[coded != UNLABELLED] = np.eye(len(classes))[coded[coded != UNLABELLED]]
    return _ranked(classes, probability, coded)


def _ranked(classes: list[str], probability: np.ndarray, coded: np.ndarray) -> Propagation:
    reached = probability.sum(axis=1) > 0
    label = np.where(reached, probability.argmax(axis=1), -1)
    ordered = np.sort(probability, axis=1)
    margin = ordered[:, -1] - ordered[:, -2]
    unlabelled = np.flatnonzero(coded == UNLABELLED)
    # Smallest margin first; spectra nothing reached (margin 0, no information) before them all.
    order = unlabelled[np.lexsort((unlabelled, margin[unlabelled] + reached[unlabelled]))]
    query_rank = np.zeros(len(coded), dtype=np.int64)
    query_rank[order] = np.arange(1, len(order) + 1)
    margin[coded != UNLABELLED] = 1.0
    return Propagation(classes, probability, label, margin, query_rank)

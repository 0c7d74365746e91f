"""Nearest neighbours in latent space: an Annoy index tuned to a measured recall, and exact search.

Each archive spectrum has a latent vector (row i of a memory-mapped float32 ``(n, d)`` matrix).
The default similarity is euclidean distance over the model's informative dimensions, answered by
an Annoy forest whose size (``n_trees``) and effort (``search_k``) are chosen at build time so that
recall@k against exact search reaches a target. Custom dimensions or weights go to
:func:`exact_search`, which streams the matrix in chunks.

All distances handed out are computed the same way, ``sqrt(sum_j w_j (x_j - q_j)**2)`` in float64
from the stored latents, returned as float32, with ties ordered by row number; so results of the
index and of exact search can be compared and merged directly.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
from annoy import AnnoyIndex

from model.atomic import atomic_path, write_json_atomic

#: Rows per chunk when streaming one query over the matrix: at 16 dims a chunk's float64 copy
#: (8 MB) stays in cache; measured about twice as fast as million-row chunks.
DEFAULT_CHUNK_ROWS = 65_536
#: Distance-matrix elements per chunk when many queries share a pass (32 MB of float64).
_BATCH_ELEMENTS = 1 << 22
#: Annoy takes ``search_k`` as a C int.
_MAX_SEARCH_K = 2**31 - 1
#: Relative slack for candidates picked from the expanded (matrix-product) distances, whose
#: rounding error is far below this; candidates are then re-ranked on exact distances.
_EXPANSION_SLACK = 1e-9


# -- validation ---------------------------------------------------------------------------------


def _check_latents(latents: np.ndarray) -> np.ndarray:
    if not hasattr(latents, "ndim") or latents.ndim != 2 or latents.shape[0] == 0 or latents.shape[1] == 0:
        shape = getattr(latents, "shape", None)
        raise ValueError(f"latents must be a non-empty 2-D array (n, d); got shape {shape}")
    return latents


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return int(value)


def _check_dims(dims: Sequence[int] | np.ndarray | None, n_dims: int) -> np.ndarray:
    """Dimension numbers as int64; each must be a distinct integer in ``[0, n_dims)``."""
    if dims is None:
        return np.arange(n_dims, dtype=np.int64)
    values = list(np.asarray(dims).ravel()) if isinstance(dims, np.ndarray) else list(dims)
    if not values:
        raise ValueError("dims must name at least one latent dimension")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise ValueError(f"dims must be integers; got {value!r}")
        if not 0 <= value < n_dims:
            raise ValueError(f"dim {value} is out of range for {n_dims} latent dimensions")
    if len(set(values)) != len(values):
        raise ValueError(f"dims must be unique; got {values}")
    return np.asarray(values, dtype=np.int64)


def _check_weights(weights: Sequence[float] | np.ndarray | None, n_dims: int) -> np.ndarray:
    """Per-dimension weights as float64, one per chosen dim, finite and >= 0, not all zero."""
    if weights is None:
        return np.ones(n_dims)
    try:
        w = np.asarray(weights, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"weights must be numbers; got {weights!r}") from err
    if w.shape != (n_dims,):
        raise ValueError(f"weights must have one value per chosen dim ({n_dims}); got shape {w.shape}")
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError(f"weights must be finite and >= 0; got {w.tolist()}")
    if not (w > 0).any():
        raise ValueError("at least one weight must be positive")
    return w


def _check_rows(rows: Sequence[int] | np.ndarray, n: int, name: str) -> np.ndarray:
    """Archive row numbers as sorted unique int64, each in ``[0, n)``."""
    values = np.unique(np.asarray(rows, dtype=np.int64).ravel())
    if values.size and (values[0] < 0 or values[-1] >= n):
        raise ValueError(f"{name} rows must be in [0, {n}); got {values[0]}..{values[-1]}")
    return values


def _subvectors(queries: np.ndarray, n_dims: int, dims: np.ndarray) -> np.ndarray:
    """Queries ``(m, d)`` or ``(m, len(dims))`` → float64 ``(m, len(dims))``; full width wins a tie."""
    queries = np.asarray(queries, dtype=np.float64)
    if queries.ndim != 2:
        raise ValueError(f"query vectors must be 1-D (one) or 2-D (many); got shape {queries.shape}")
    if queries.shape[1] == n_dims:
        queries = queries[:, dims]
    elif queries.shape[1] != len(dims):
        raise ValueError(
            f"query vectors need {n_dims} values (all dims) or {len(dims)} (the chosen dims); "
            f"got {queries.shape[1]}"
        )
    if not np.isfinite(queries).all():
        raise ValueError("query vectors must be finite")
    return queries


# -- exact search -------------------------------------------------------------------------------


def _columns(dims: np.ndarray, n_dims: int) -> slice | np.ndarray:
    """A plain slice when all dims are used in order, so chunks are read without fancy indexing."""
    return slice(None) if np.array_equal(dims, np.arange(n_dims)) else dims


def _take(latents: np.ndarray, index: slice | np.ndarray, cols: slice | np.ndarray) -> np.ndarray:
    """Rows of the chosen dims as a fresh float64 array (safe to modify; memmaps stay read-only)."""
    return np.array(latents[index][:, cols], dtype=np.float64)


def _sq_dist(diff: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``sum_j w_j diff_j**2`` per row, summed in dim order so a row's value never depends on batch shape.

    Every distance handed out comes from here, which keeps the index, exact search and the recall
    figure bit-for-bit consistent.
    """
    sq = diff * diff
    total = sq[:, 0] * w[0]
    for j in range(1, sq.shape[1]):
        total += sq[:, j] * w[j]
    return total


def _scan(
    latents: np.ndarray,
    queries: np.ndarray,
    k: int,
    dims: np.ndarray,
    w: np.ndarray,
    exclude: np.ndarray,
    chunk_rows: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest rows of each query by streaming ``latents``: rows ``(m, k')`` and squared distances.

    Candidates in a chunk are the rows within the k-th best distance held so far (until k are held,
    within the chunk's own k-th), plus a rounding slack, so ties at the boundary are all kept and
    later chunks cost one comparison pass. Candidates are re-scored with :func:`_sq_dist` and the
    best are kept ordered by (distance, row). One query uses the direct difference (centred on the
    query, the expansion below *is* the direct form); many use ``|x|² - 2x·q + |q|²``, one matrix
    product per chunk. ``k' = min(k, rows not excluded)``.
    """
    n, n_dims = latents.shape
    m = len(queries)
    cols = _columns(dims, n_dims)
    center = queries.mean(axis=0)
    qc = queries - center
    qn = _sq_dist(qc, w)
    step = chunk_rows if m == 1 else min(chunk_rows, max(1024, _BATCH_ELEMENTS // m))
    best_q = np.empty(0, np.int64)
    best_r = np.empty(0, np.int64)
    best_d = np.empty(0, np.float64)
    held_kth = np.full(m, np.inf)
    for start in range(0, n, step):
        stop = min(start + step, n)
        block = _take(latents, slice(start, stop), cols)
        centred = block - center
        xn = (centred * centred) @ w
        if m == 1:
            d2 = xn[None, :]
        else:  # in place: the (m, chunk) matrix is the biggest thing in memory
            d2 = (qc * (-2.0 * w)) @ centred.T
            d2 += xn
            d2 += qn[:, None]
        slack = _EXPANSION_SLACK * (qn + xn.max())
        local = exclude[np.searchsorted(exclude, start) : np.searchsorted(exclude, stop)] - start
        d2[:, local] = np.inf
        bound = held_kth
        if not np.isfinite(held_kth).all():
            kk = min(k, stop - start - len(local))
            if kk <= 0:
                continue
            bound = np.minimum(held_kth, np.partition(d2, kk - 1, axis=1)[:, kk - 1])
        qi, ci = np.nonzero(d2 <= (bound + slack)[:, None])
        if not len(qi):
            continue
        best_q = np.concatenate([best_q, qi])
        best_r = np.concatenate([best_r, ci + start])
        best_d = np.concatenate([best_d, _sq_dist(block[ci] - queries[qi], w)])
        order = np.lexsort((best_r, best_d, best_q))
        ranked_q = best_q[order]
        keep = order[np.arange(len(order)) - np.searchsorted(ranked_q, ranked_q) < k]
        best_q, best_r, best_d = best_q[keep], best_r[keep], best_d[keep]
        counts = np.bincount(best_q, minlength=m)
        held_kth = np.where(counts >= k, best_d[np.cumsum(counts) - 1], np.inf)
    width = len(best_q) // m
    return best_r.reshape(m, width), best_d.reshape(m, width)


def exact_search(
    latents: np.ndarray,
    query: np.ndarray,
    k: int,
    dims: Sequence[int] | None = None,
    weights: Sequence[float] | np.ndarray | None = None,
    exclude: Sequence[int] = (),
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> tuple[np.ndarray, np.ndarray]:
    """The k archive rows nearest ``query`` by weighted euclidean distance over ``dims`` (default all).

    ``latents`` may be a memmap of any size: it is streamed ``chunk_rows`` at a time. ``query``
    has all ``d`` values or one per chosen dim. Distances are ``sqrt(sum w_j (x_j - q_j)**2)``
    computed in float64, returned as float32; equal distances are ordered by row number, so results
    are deterministic. Rows in ``exclude`` are skipped; fewer than k rows come back only when fewer
    remain. Returns ``(rows int64, distances float32)``, nearest first.
    """
    latents = _check_latents(latents)
    n, n_dims = latents.shape
    k = _check_int(k, "k", 1)
    chunk_rows = _check_int(chunk_rows, "chunk_rows", 1)
    chosen = _check_dims(dims, n_dims)
    w = _check_weights(weights, len(chosen))
    q = _subvectors(np.atleast_2d(query), n_dims, chosen)
    if len(q) != 1:
        raise ValueError(f"exact_search takes one query vector; got shape {np.shape(query)}")
    rows, d2 = _scan(latents, q, k, chosen, w, _check_rows(exclude, n, "exclude"), chunk_rows)
    return rows[0], np.sqrt(d2[0]).astype(np.float32)


def exact_neighbours_batch(
    latents: np.ndarray,
    queries: np.ndarray,
    k: int,
    dims: Sequence[int] | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> np.ndarray:
    """Row numbers ``(m, k)`` of the exact k nearest neighbours of each query (unweighted, ``dims``).

    One pass over ``latents`` serves all queries (a matrix product per chunk), so measuring recall
    on a thousand queries costs about one streaming pass. Same distances and tie order as
    :func:`exact_search`.
    """
    latents = _check_latents(latents)
    n, n_dims = latents.shape
    k = _check_int(k, "k", 1)
    if k > n:
        raise ValueError(f"k={k} exceeds the {n} archive rows")
    chosen = _check_dims(dims, n_dims)
    q = _subvectors(queries, n_dims, chosen)
    rows, _ = _scan(latents, q, k, chosen, np.ones(len(chosen)), np.empty(0, np.int64), chunk_rows)
    return rows


# -- the Annoy index ----------------------------------------------------------------------------


@dataclass
class IndexMeta:
    """What was built and how well it does; stored beside the Annoy file as JSON."""

    dims: list[int]
    n_items: int
    latent_dim: int
    n_trees: int
    search_k: int
    recall_at_k: float
    k: int
    n_queries: int
    seed: int
    build_seconds: float
    query_ms: float
    metric: str = "euclidean"
    #: Every configuration tried: n_trees, search_k, recall, query_ms, work (modelled cost).
    tuning: list[dict[str, float]] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IndexMeta:
        names = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in names})


@dataclass
class _Trial:
    n_trees: int
    search_k: int
    recall: float
    query_ms: float
    work: float


def _query_work(n_trees: int, search_k: int, n_items: int, n_dims: int) -> float:
    """Modelled Annoy query cost, in candidate-distance units, for choosing a configuration reproducibly.

    A query scores ``search_k`` candidates and descends every tree (~log2(n / leaf size) levels, leaves
    holding ``n_dims + 2`` items); a tree costs about 3 candidates per level. Fitted to query times
    measured on 50k-200k clustered latents of 8-16 dims, where it picks the fastest configuration or
    one within timing noise, while a choice by measured time can differ between runs.
    """
    depth = math.log2(max(2.0, n_items / (n_dims + 2)))
    return search_k + 3.0 * depth * n_trees


def _meta_path(path: Path) -> Path:
    return Path(path).with_suffix(".json")


def _sample_rows(n: int, n_queries: int, seed: int) -> np.ndarray:
    """The archive rows used as recall queries: a seeded sample, so the figure can be re-measured."""
    if n_queries >= n:
        return np.arange(n, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(n, size=n_queries, replace=False)).astype(np.int64)


def _kth_exact(latents: np.ndarray, sample: np.ndarray, k: int, dims: np.ndarray) -> np.ndarray:
    """Exact squared distance from each sampled row to its k-th nearest row (itself included)."""
    cols = _columns(dims, latents.shape[1])
    queries = _take(latents, sample, cols)
    _, d2 = _scan(latents, queries, k, dims, np.ones(len(dims)), np.empty(0, np.int64), DEFAULT_CHUNK_ROWS)
    return d2[:, k - 1]


def _annoy_recall(
    annoy: AnnoyIndex,
    latents: np.ndarray,
    dims: np.ndarray,
    sample: np.ndarray,
    kth: np.ndarray,
    k: int,
    search_k: int,
) -> tuple[float, float]:
    """Recall@k of Annoy on the sampled rows, and the mean query time in ms.

    A returned row is a hit when its exact distance is within the k-th exact distance, so rows
    tied at the boundary (duplicate spectra) count, and recall 1.0 stays reachable.
    """
    started = time.perf_counter()
    found = [annoy.get_nns_by_item(int(row), k, search_k) for row in sample]
    query_ms = 1000.0 * (time.perf_counter() - started) / len(sample)
    owner = np.repeat(np.arange(len(sample)), [len(rows) for rows in found])
    returned = np.fromiter((row for rows in found for row in rows), dtype=np.int64, count=len(owner))
    cols = _columns(dims, latents.shape[1])
    d2 = _sq_dist(_take(latents, returned, cols) - _take(latents, sample, cols)[owner], np.ones(len(dims)))
    hits = np.count_nonzero(d2 <= kth[owner])
    return float(hits) / (len(sample) * k), query_ms


def _add_items(annoy: AnnoyIndex, latents: np.ndarray, dims: np.ndarray, say: Callable[[str], None]) -> None:
    """Feed the chosen dims to Annoy chunk by chunk (a 10M-row memmap never sits in memory as float64)."""
    cols = _columns(dims, latents.shape[1])
    n = latents.shape[0]
    for start in range(0, n, DEFAULT_CHUNK_ROWS):
        block = _take(latents, slice(start, start + DEFAULT_CHUNK_ROWS), cols)
        bad = np.flatnonzero(~np.isfinite(block).all(axis=1))
        if bad.size:
            raise ValueError(f"latent row {start + bad[0]} is not finite; cannot index it")
        for offset, vector in enumerate(block.tolist()):
            annoy.add_item(start + offset, vector)
        if start and start % (16 * DEFAULT_CHUNK_ROWS) == 0:
            say(f"added {start:,}/{n:,} items")


class LatentIndex:
    """An Annoy forest over the informative latent dims, memory-mapped, with its tuned settings.

    Queries re-score Annoy's candidates exactly (see the module docstring), so its distances equal
    :func:`exact_search`'s on the same dims.
    """

    def __init__(self, annoy: AnnoyIndex, meta: IndexMeta, latents: np.ndarray) -> None:
        self._annoy = annoy
        self.meta = meta
        self.latents = latents
        self._dims = np.asarray(meta.dims, dtype=np.int64)
        self._cols = _columns(self._dims, latents.shape[1])

    # -- building and loading

    @classmethod
    def build(
        cls,
        latents: np.ndarray,
        dims: Sequence[int],
        path: Path,
        k: int = 10,
        target_recall: float = 0.99,
        n_queries: int = 1000,
        seed: int = 0,
        trees_candidates: Sequence[int] = (10, 20, 40, 80),
        progress: bool = False,
        n_jobs: int = 1,
        select: str = "model",
    ) -> LatentIndex:
        """Build, tune, write (atomically) and load an index over ``latents[:, dims]``.

        For each ``n_trees`` candidate, ``search_k`` doubles from ``k * n_trees`` until recall@k on
        ``n_queries`` seeded sample rows reaches ``target_recall`` or the search is exhaustive
        (``n_items * n_trees``). The cheapest passing configuration wins; if none passes, the one
        with the best recall. Cost is modelled by :func:`_query_work` by default, so the same seed
        always gives the same index; ``select="time"`` uses the measured mean query time instead
        (both are kept in ``meta.tuning``). ``n_jobs=1`` keeps the forest identical for a given
        seed (threads interleave node numbers). The Annoy file goes to ``path`` and the
        :class:`IndexMeta` to ``path.with_suffix(".json")``, each replaced whole: a failed build
        leaves the previous index in place, and workers that mapped it keep their copy.
        """
        started = time.perf_counter()
        latents = _check_latents(latents)
        n, n_dims = latents.shape
        chosen_dims = _check_dims(dims, n_dims)
        k = min(_check_int(k, "k", 1), n)
        n_queries = _check_int(n_queries, "n_queries", 1)
        candidates = sorted({_check_int(t, "trees_candidates", 1) for t in trees_candidates})
        if not candidates:
            raise ValueError("trees_candidates must name at least one forest size")
        if not 0.0 < target_recall <= 1.0:
            raise ValueError(f"target_recall must be in (0, 1]; got {target_recall}")
        if select not in ("model", "time"):
            raise ValueError(f"select must be 'model' or 'time'; got {select!r}")

        def say(message: str) -> None:
            if progress:
                print(f"[similarity] {message}", file=sys.stderr, flush=True)

        def cost(trial: _Trial) -> tuple[bool, float, float, int]:
            passes = trial.recall >= target_recall
            spent = trial.work if select == "model" else trial.query_ms
            return (not passes, 0.0 if passes else -trial.recall, spent, trial.n_trees)

        annoy = AnnoyIndex(len(chosen_dims), "euclidean")
        annoy.set_seed(seed)
        _add_items(annoy, latents, chosen_dims, say)
        sample = _sample_rows(n, n_queries, seed)
        kth = _kth_exact(latents, sample, k, chosen_dims)
        say(f"exact neighbours of {len(sample)} sample rows found ({time.perf_counter() - started:.1f} s)")

        tried: list[_Trial] = []
        finals: list[_Trial] = []
        built = 0
        for n_trees in candidates:
            best = min(finals, key=cost) if finals else None
            if (
                select == "model"
                and best is not None
                and best.recall >= target_recall
                and _query_work(n_trees, k * n_trees, n, len(chosen_dims)) >= best.work
            ):
                break  # even at the least effort, this and every larger forest costs more than the best
            if built:
                annoy.unbuild()
            annoy.build(n_trees, n_jobs)
            built = n_trees
            exhaustive = min(n * n_trees, _MAX_SEARCH_K)
            search_k = min(k * n_trees, exhaustive)
            while True:
                recall, query_ms = _annoy_recall(annoy, latents, chosen_dims, sample, kth, k, search_k)
                work = _query_work(n_trees, search_k, n, len(chosen_dims))
                tried.append(_Trial(n_trees, search_k, recall, query_ms, work))
                say(f"{n_trees} trees, search_k {search_k}: recall {recall:.4f}, {query_ms:.3f} ms/query")
                if recall >= target_recall or search_k >= exhaustive:
                    break
                search_k = min(2 * search_k, exhaustive)
            finals.append(tried[-1])
        winner = min(finals, key=cost)
        if winner.recall < target_recall:
            say(f"no configuration reached recall {target_recall}; using the best ({winner.recall:.4f})")
        if built != winner.n_trees:
            annoy.unbuild()
            annoy.build(winner.n_trees, n_jobs)

        path = Path(path)
        with atomic_path(path) as tmp:
            annoy.save(str(tmp))  # Annoy then maps the temp file; it is dropped once renamed
        annoy.unload()
        meta = IndexMeta(
            dims=chosen_dims.tolist(),
            n_items=n,
            latent_dim=n_dims,
            n_trees=winner.n_trees,
            search_k=winner.search_k,
            recall_at_k=winner.recall,
            k=k,
            n_queries=n_queries,
            seed=seed,
            build_seconds=0.0,
            query_ms=winner.query_ms,
            tuning=[asdict(trial) for trial in tried],
        )
        index = cls(cls._map(path, meta), meta, latents)
        # The stored figure is that of the file as written, computed as measure_recall() repeats it.
        meta.recall_at_k, _ = _annoy_recall(
            index._annoy, latents, chosen_dims, sample, kth, k, index._search_k(k)
        )
        meta.build_seconds = round(time.perf_counter() - started, 3)
        write_json_atomic(_meta_path(path), asdict(meta))
        say(
            f"index written to {path}: {meta.n_trees} trees, search_k {meta.search_k}, "
            f"recall@{k} {meta.recall_at_k:.4f}, {meta.build_seconds:.1f} s"
        )
        return index

    @staticmethod
    def _map(path: Path, meta: IndexMeta) -> AnnoyIndex:
        """Memory-map the Annoy file (no prefault: workers share pages and fault them in lazily)."""
        annoy = AnnoyIndex(len(meta.dims), meta.metric)
        annoy.load(str(path), prefault=False)
        items, trees = annoy.get_n_items(), annoy.get_n_trees()
        if (items, trees) != (meta.n_items, meta.n_trees):
            annoy.unload()
            raise ValueError(
                f"{path} holds {items} items in {trees} trees but its metadata says "
                f"{meta.n_items} in {meta.n_trees}; rebuild the index"
            )
        return annoy

    @classmethod
    def load(cls, path: Path, latents: np.ndarray) -> LatentIndex:
        """Open an index written by :meth:`build` for these latents (the matrix it was built from)."""
        path = Path(path)
        try:
            meta = IndexMeta.from_dict(json.loads(_meta_path(path).read_text()))
        except TypeError as err:
            raise ValueError(f"{_meta_path(path)} is not index metadata: {err}") from err
        latents = _check_latents(latents)
        if latents.shape != (meta.n_items, meta.latent_dim):
            raise ValueError(
                f"index {path} was built for latents of shape "
                f"({meta.n_items}, {meta.latent_dim}); got {latents.shape}"
            )
        return cls(cls._map(path, meta), meta, latents)

    def close(self) -> None:
        """Unmap the Annoy file."""
        self._annoy.unload()

    # -- queries

    def _search_k(self, k: int) -> int:
        """The tuned effort, scaled up for larger k (Annoy's own default grows with k too)."""
        scaled = math.ceil(self.meta.search_k * max(1.0, k / self.meta.k))
        return min(scaled, self.meta.n_items * self.meta.n_trees, _MAX_SEARCH_K)

    def _ranked(self, rows: list[int], query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Annoy's candidates re-scored exactly and ordered by (distance, row)."""
        rows_arr = np.asarray(rows, dtype=np.int64)
        d2 = _sq_dist(_take(self.latents, rows_arr, self._cols) - query, np.ones(len(self._dims)))
        order = np.lexsort((rows_arr, d2))
        return rows_arr[order], np.sqrt(d2[order]).astype(np.float32)

    def query_row(self, row: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k archive rows most like archive row ``row``; the row itself comes first (distance 0)."""
        row = _check_int(row, "row", 0)
        if row >= self.meta.n_items:
            raise ValueError(f"row {row} is out of range for {self.meta.n_items} archive rows")
        k = min(_check_int(k, "k", 1), self.meta.n_items)
        found = self._annoy.get_nns_by_item(row, k, self._search_k(k))
        found = [row] + [other for other in found if other != row][: k - 1]
        rows, distances = self._ranked(found, _take(self.latents, np.array([row]), self._cols)[0])
        first = np.flatnonzero(rows == row)[0]  # exact duplicates tie at 0; the query row leads
        keep = np.r_[first, np.delete(np.arange(len(rows)), first)]
        return rows[keep], distances[keep]

    def query_vector(self, vector: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k archive rows nearest a latent vector (all ``d`` values, or one per indexed dim)."""
        query = _subvectors(np.atleast_2d(vector), self.meta.latent_dim, self._dims)[0]
        k = min(_check_int(k, "k", 1), self.meta.n_items)
        found = self._annoy.get_nns_by_vector(query.tolist(), k, self._search_k(k))
        return self._ranked(found, query)

    def measure_recall(
        self, k: int | None = None, n_queries: int | None = None, seed: int | None = None
    ) -> float:
        """Recall@k of this index against exact search on a seeded sample of archive rows.

        Defaults are the build's, so ``measure_recall()`` reproduces ``meta.recall_at_k`` exactly.
        """
        k = self.meta.k if k is None else min(_check_int(k, "k", 1), self.meta.n_items)
        n_queries = self.meta.n_queries if n_queries is None else _check_int(n_queries, "n_queries", 1)
        seed = self.meta.seed if seed is None else seed
        sample = _sample_rows(self.meta.n_items, n_queries, seed)
        kth = _kth_exact(self.latents, sample, k, self._dims)
        recall, _ = _annoy_recall(self._annoy, self.latents, self._dims, sample, kth, k, self._search_k(k))
        return recall

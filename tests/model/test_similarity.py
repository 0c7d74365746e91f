"""Atomic writes, exact latent search and the tuned Annoy index."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from model import similarity
from model.atomic import atomic_path, write_json_atomic, write_npy_atomic
from model.similarity import IndexMeta, LatentIndex, exact_neighbours_batch, exact_search

DIMS = [0, 1, 2, 4, 5, 7, 9, 11, 13, 15]


def clustered(n: int, d: int = 16, seed: int = 0) -> np.ndarray:
    """Latent-like data: tight clusters around spread-out centres, float32 like the real matrices."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=4.0, size=(40, d))
    return (centres[rng.integers(0, len(centres), n)] + rng.normal(size=(n, d))).astype(np.float32)


def brute_force(latents: np.ndarray, query: np.ndarray, k: int, dims=None, weights=None):
    """The definition, spelled out: weighted euclidean over dims in float64, ties by row."""
    dims = list(range(latents.shape[1])) if dims is None else list(dims)
    w = np.ones(len(dims)) if weights is None else np.asarray(weights, float)
    diff = latents[:, dims].astype(np.float64) - np.asarray(query, np.float64)[dims]
    dist = np.sqrt((diff**2 * w).sum(axis=1))
    order = np.lexsort((np.arange(len(dist)), dist))[:k]
    return order, dist[order].astype(np.float32)


def leftovers(directory: Path) -> list[Path]:
    return sorted(directory.glob(".*.tmp"))


@pytest.fixture(scope="module")
def latents() -> np.ndarray:
    return clustered(20_000)


@pytest.fixture(scope="module")
def index_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("index") / "index.ann"


@pytest.fixture(scope="module")
def index(latents: np.ndarray, index_path: Path) -> LatentIndex:
    return LatentIndex.build(latents, DIMS, index_path, k=10, target_recall=0.99, seed=3)


# -- atomic writes


def test_atomic_path_replaces_on_success(tmp_path: Path) -> None:
    target = tmp_path / "data.bin"
    target.write_bytes(b"old")
    target.chmod(0o640)
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".") and tmp.name.endswith(".tmp")
        tmp.write_bytes(b"new")
        assert target.read_bytes() == b"old"  # nothing visible until the block ends
    assert target.read_bytes() == b"new"
    assert target.stat().st_mode & 0o777 == 0o640
    assert leftovers(tmp_path) == []


def test_atomic_path_keeps_old_file_when_the_writer_fails(tmp_path: Path) -> None:
    target = tmp_path / "data.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk full"), atomic_path(target) as tmp:
        tmp.write_bytes(b"half-writ")
        raise RuntimeError("disk full")
    assert target.read_bytes() == b"old"
    assert leftovers(tmp_path) == []


def test_atomic_path_creates_a_new_file_and_fails_cleanly_without_one(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt), atomic_path(tmp_path / "never.bin") as tmp:
        tmp.write_bytes(b"x")
        raise KeyboardInterrupt
    assert not (tmp_path / "never.bin").exists() and leftovers(tmp_path) == []
    with atomic_path(tmp_path / "fresh.bin") as tmp:
        tmp.write_bytes(b"x")
    assert (tmp_path / "fresh.bin").read_bytes() == b"x"


def test_write_json_and_npy_atomic(tmp_path: Path) -> None:
    write_json_atomic(tmp_path / "meta.json", {"b": [1, 2], "a": 0.5})
    assert json.loads((tmp_path / "meta.json").read_text()) == {"a": 0.5, "b": [1, 2]}
    array = np.arange(12, dtype=np.float32).reshape(4, 3)
    write_npy_atomic(tmp_path / "latents.npy", array)
    np.testing.assert_array_equal(np.load(tmp_path / "latents.npy", mmap_mode="r"), array)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latents.npy", "meta.json"]


# -- exact search


def test_exact_search_matches_brute_force_with_dims_and_weights() -> None:
    data = clustered(3000, d=8, seed=1)
    query = data[17] + 0.1
    for dims, weights in [(None, None), ([1, 3, 6], None), ([6, 0, 2, 5], [0.5, 2.0, 1.0, 3.0])]:
        rows, dist = exact_search(data, query, 25, dims=dims, weights=weights)
        ref_rows, ref_dist = brute_force(data, query, 25, dims, weights)
        np.testing.assert_array_equal(rows, ref_rows)
        np.testing.assert_allclose(dist, ref_dist, rtol=1e-6)
        assert rows.dtype == np.int64 and dist.dtype == np.float32


def test_zero_weight_makes_a_dim_irrelevant() -> None:
    data = clustered(2000, d=6, seed=2)
    query = data[5].copy()
    rows, dist = exact_search(data, query, 15, dims=[0, 2, 3, 5], weights=[1.0, 0.0, 2.0, 1.0])
    query[2] += 100.0  # moving the query along the zero-weight dim changes nothing
    rows2, dist2 = exact_search(data, query, 15, dims=[0, 2, 3, 5], weights=[1.0, 0.0, 2.0, 1.0])
    same_rows, same_dist = exact_search(data, query, 15, dims=[0, 3, 5], weights=[1.0, 2.0, 1.0])
    np.testing.assert_array_equal(rows, rows2)
    np.testing.assert_array_equal(rows, same_rows)
    np.testing.assert_array_equal(dist, dist2)
    np.testing.assert_allclose(dist, same_dist, rtol=1e-6)


def test_chunked_scan_equals_unchunked_and_memmap_works(tmp_path: Path) -> None:
    data = clustered(5000, seed=4)
    data[100:110] = data[3]  # exact duplicates: ties must be broken by row number in every path
    np.save(tmp_path / "latents.npy", data)
    mapped = np.load(tmp_path / "latents.npy", mmap_mode="r")
    whole = exact_search(data, data[3], 20, dims=[0, 3, 8], chunk_rows=len(data))
    for source, chunk in [(data, 7), (data, 333), (mapped, 1000), (mapped, 10**6)]:
        rows, dist = exact_search(source, data[3], 20, dims=[0, 3, 8], chunk_rows=chunk)
        np.testing.assert_array_equal(rows, whole[0])
        np.testing.assert_array_equal(dist, whole[1])
    assert whole[0][:11].tolist() == [3, *range(100, 110)] and not whole[1][:11].any()


def test_exclude_and_short_results() -> None:
    data = clustered(50, d=4, seed=5)
    rows, _ = exact_search(data, data[7], 5, exclude=[7, 8])
    assert 7 not in rows and 8 not in rows and len(rows) == 5
    rows, dist = exact_search(data, data[0], 100, exclude=range(10))
    assert len(rows) == len(dist) == 40 and set(rows.tolist()) == set(range(10, 50))


def test_batch_neighbours_equal_single_searches() -> None:
    data = clustered(4000, seed=6)
    queries = data[[0, 99, 1234, 3999]]
    batch = exact_neighbours_batch(data, queries, 12, dims=DIMS, chunk_rows=500)
    for query, rows in zip(queries, batch, strict=True):
        np.testing.assert_array_equal(rows, exact_search(data, query, 12, dims=DIMS)[0])


@pytest.mark.parametrize(
    ("dims", "weights", "message"),
    [
        ([0, 16], None, "out of range"),
        ([-1, 2], None, "out of range"),
        ([1, 1], None, "unique"),
        ([], None, "at least one"),
        ([0.5], None, "integers"),
        ([0, 1], [1.0], "one value per chosen dim"),
        ([0, 1], [1.0, -1.0], ">= 0"),
        ([0, 1], [1.0, np.nan], "finite"),
        ([0, 1], [0.0, 0.0], "positive"),
        (None, [1.0] * 3, "one value per chosen dim"),
    ],
)
def test_bad_dims_and_weights_raise(dims, weights, message: str) -> None:
    data = clustered(100, seed=7)
    with pytest.raises(ValueError, match=message):
        exact_search(data, data[0], 5, dims=dims, weights=weights)


def test_bad_queries_raise() -> None:
    data = clustered(100, seed=7)
    with pytest.raises(ValueError, match="16 values"):
        exact_search(data, data[0, :5], 3, dims=[0, 1])
    with pytest.raises(ValueError, match="finite"):
        exact_search(data, np.full(16, np.nan), 3)
    with pytest.raises(ValueError, match="exclude"):
        exact_search(data, data[0], 3, exclude=[100])


# -- the Annoy index


def test_recall_meets_target_and_is_reproducible(index: LatentIndex) -> None:
    meta = index.meta
    assert meta.recall_at_k >= 0.99 and meta.k == 10 and meta.dims == DIMS and meta.n_items == 20_000
    assert index.measure_recall() == meta.recall_at_k
    first = meta.tuning[0]
    assert first["search_k"] == meta.k * first["n_trees"]  # the search starts at Annoy's default effort
    assert index.measure_recall(k=10, n_queries=1000, seed=3) == meta.recall_at_k
    chosen = [t for t in meta.tuning if (t["n_trees"], t["search_k"]) == (meta.n_trees, meta.search_k)]
    assert chosen and chosen[0]["recall"] == meta.recall_at_k


def test_meta_is_written_beside_the_index(index: LatentIndex, index_path: Path) -> None:
    stored = json.loads(index_path.with_suffix(".json").read_text())
    assert IndexMeta.from_dict({**stored, "added_by_a_later_version": 1}) == index.meta
    assert leftovers(index_path.parent) == []


def test_every_item_is_its_own_first_neighbour(index: LatentIndex, latents: np.ndarray) -> None:
    for row in np.random.default_rng(0).choice(len(latents), 200, replace=False):
        rows, dist = index.query_row(int(row), 10)
        assert rows[0] == row and dist[0] == 0.0
        assert len(rows) == 10 and np.all(np.diff(dist[1:]) >= 0)


def test_query_vector_matches_query_row_and_exact_distances(index: LatentIndex, latents: np.ndarray) -> None:
    for row in (0, 123, 9_999, 19_999):
        by_row = index.query_row(row, 10)
        for vector in (latents[row], latents[row, DIMS]):
            by_vector = index.query_vector(vector, 10)
            np.testing.assert_array_equal(by_vector[0], by_row[0])
            np.testing.assert_array_equal(by_vector[1], by_row[1])
        exact_rows, exact_dist = exact_search(latents, latents[row], 10, dims=DIMS)
        common = np.isin(by_row[0], exact_rows)
        assert common.mean() >= 0.9
        lookup = dict(zip(exact_rows.tolist(), exact_dist.tolist(), strict=True))
        assert [lookup[r] for r in by_row[0][common]] == by_row[1][common].tolist()


def test_load_checks_the_latents(index: LatentIndex, latents: np.ndarray, tmp_path: Path) -> None:
    path = tmp_path / "index.ann"
    small = latents[:3000]
    LatentIndex.build(small, DIMS, path, trees_candidates=(5,))
    assert LatentIndex.load(path, small).query_row(5, 3)[0][0] == 5
    with pytest.raises(ValueError, match="shape"):
        LatentIndex.load(path, latents)


def test_exhaustive_search_reaches_full_recall(tmp_path: Path) -> None:
    data = clustered(300, seed=11)
    small = LatentIndex.build(data, DIMS, tmp_path / "tiny.ann", target_recall=1.0, trees_candidates=(2,))
    assert small.meta.recall_at_k == 1.0 and small.meta.search_k <= 300 * 2


def test_a_rebuild_does_not_disturb_a_worker_holding_the_old_index(tmp_path: Path) -> None:
    data = clustered(3000, seed=12)
    path = tmp_path / "index.ann"
    _build_small(path, data)
    worker = LatentIndex.load(path, data)
    before = _answers(worker, data)
    other = clustered(3000, seed=13)
    _build_small(path, other)  # replaces the files the worker has mapped
    assert _answers(worker, data) == before
    assert _answers(LatentIndex.load(path, other), other) != before


def test_choice_by_measured_time_and_bad_settings(tmp_path: Path) -> None:
    data = clustered(3000, seed=14)
    timed = LatentIndex.build(data, DIMS, tmp_path / "t.ann", k=5, n_queries=200, select="time")
    assert timed.meta.recall_at_k >= 0.99 and len({t["n_trees"] for t in timed.meta.tuning}) == 4
    with pytest.raises(ValueError, match="select"):
        LatentIndex.build(data, DIMS, tmp_path / "x.ann", select="fastest")
    with pytest.raises(ValueError, match="target_recall"):
        LatentIndex.build(data, DIMS, tmp_path / "x.ann", target_recall=1.5)
    with pytest.raises(ValueError, match="out of range"):
        timed.query_row(3000, 5)
    with pytest.raises(ValueError, match="16 values"):
        timed.query_vector(data[0, :3], 5)
    assert not (tmp_path / "x.ann").exists()


def _build_small(path: Path, data: np.ndarray) -> LatentIndex:
    return LatentIndex.build(data, DIMS, path, k=5, n_queries=200, trees_candidates=(5, 10))


def _answers(index: LatentIndex, data: np.ndarray) -> list[list[int]]:
    return [index.query_row(row, 5)[0].tolist() for row in range(0, len(data), 97)] + [
        index.query_vector(data[row] + 0.3, 5)[0].tolist() for row in range(0, len(data), 131)
    ]


def test_interrupted_build_leaves_previous_index_usable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = clustered(4000, seed=8)
    path = tmp_path / "index.ann"
    before = _answers(_build_small(path, data), data)
    files = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    class FailingBuild(similarity.AnnoyIndex):
        def build(self, n_trees: int, n_jobs: int = -1) -> bool:
            raise MemoryError("out of memory while building trees")

    class FailingSave(similarity.AnnoyIndex):
        def save(self, fn: str, prefault: bool = False) -> bool:
            Path(fn).write_bytes(b"\0" * 1000)  # a torn file, then the disk fills up
            raise OSError("no space left on device")

    for broken, error in [(FailingBuild, MemoryError), (FailingSave, OSError)]:
        monkeypatch.setattr(similarity, "AnnoyIndex", broken)
        with pytest.raises(error):
            _build_small(path, clustered(4000, seed=9))
        monkeypatch.undo()
        assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == files
        assert _answers(LatentIndex.load(path, data), data) == before

    with pytest.raises(ValueError, match="not finite"):
        bad = data.copy()
        bad[10, DIMS[0]] = np.nan
        _build_small(path, bad)
    assert _answers(LatentIndex.load(path, data), data) == before


def test_same_seed_gives_identical_indexes(tmp_path: Path) -> None:
    data = clustered(5000, seed=10)
    first = _build_small(tmp_path / "a.ann", data)
    second = _build_small(tmp_path / "b.ann", data)
    assert (tmp_path / "a.ann").read_bytes() == (tmp_path / "b.ann").read_bytes()
    assert (first.meta.n_trees, first.meta.search_k, first.meta.recall_at_k) == (
        second.meta.n_trees,
        second.meta.search_k,
        second.meta.recall_at_k,
    )
    assert _answers(first, data) == _answers(second, data)

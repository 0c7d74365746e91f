"""The encode stage on a real Dask LocalCluster: one process's bits, whatever happens to a worker."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from model.api import MEAN_FILE, QUALITY_FILE, VAR_FILE, VELOCITY_FILE
from service import pipeline
from service.archive import Archive
from service.cluster import cluster_client, encode_on_cluster, partitions


@pytest.fixture(scope="module")
def cluster():
    """Two worker processes, one thread each (spawned: this process has torch loaded)."""
    with cluster_client(workers=2) as client:
        yield client


@pytest.fixture(scope="module")
def encoded_archive(live_server):
    """The live server's archive, its rows and the single-process encoding of its model in service."""
    archive = Archive.from_config(live_server.config, readonly=True)
    version = archive.current_model()["model_version"]
    rows = archive.spectra(columns="obs_publisher_did, source_path, source_index")
    directory = archive.model_dir(version)
    reference = pipeline.encode_rows(pipeline.LatentModel(directory), rows)
    yield archive, directory, rows, reference
    archive.close()


def _same(one: pipeline.Encoded, other: pipeline.Encoded) -> None:
    for name in pipeline.Encoded.__dataclass_fields__:
        np.testing.assert_array_equal(getattr(one, name), getattr(other, name), err_msg=name)


def test_partitions_are_whole_batches_in_row_order():
    parts = partitions(10_000, 1024, 4)
    assert [len(p) for p in parts] == [4096, 4096, 1808]
    assert [i for p in parts for i in p] == list(range(10_000))
    assert partitions(0, 1024) == []


def test_the_cluster_gives_the_bits_one_process_gives_and_reports_progress(cluster, encoded_archive):
    _, directory, rows, reference = encoded_archive
    seen: list[tuple[int, int]] = []
    found = encode_on_cluster(
        cluster,
        directory,
        rows,
        batch_size=16,
        progress=False,
        report=lambda *a: seen.append(a),
        batches_per_partition=2,
    )
    _same(found, reference)
    assert len(seen) == len(partitions(len(rows), 16, 2)) and seen[-1] == (len(seen), len(seen))
    assert [done for done, _ in seen] == list(range(1, len(seen) + 1))
    assert np.isfinite(found.velocity[:, 0]).any()  # the velocities were measured on the workers too


def test_a_worker_killed_mid_run_still_gives_the_whole_result(cluster, encoded_archive):
    """SIGKILL to a worker process once the first partitions are back: its tasks run again elsewhere."""
    _, directory, rows, reference = encoded_archive
    pids = sorted(cluster.run(os.getpid).values())
    killed: list[int] = []

    def kill_one(done: int, total: int) -> None:
        if done == 2 and not killed:
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])

    found = encode_on_cluster(
        cluster, directory, rows, batch_size=8, progress=False, report=kill_one, batches_per_partition=1
    )
    assert killed
    _same(found, reference)
    cluster.wait_for_workers(2, timeout=120)  # the nanny started another worker
    assert pids[0] not in cluster.run(os.getpid).values()


def test_encode_with_dask_lands_the_same_files_and_rows(tmp_path, live_server, cluster):
    """`pipeline.encode(dask=...)` against the scheduler of a running cluster writes what the
    single-process stage wrote, file for file and row for row."""
    import shutil

    root = tmp_path / "archive"
    shutil.copytree(live_server.config["archive"]["root"], root)
    archive = Archive(root)
    version = archive.current_model()["model_version"]
    directory = archive.model_dir(version)
    before = {name: np.load(directory / name) for name in (MEAN_FILE, VAR_FILE, VELOCITY_FILE, QUALITY_FILE)}
    rows_before = [tuple(r) for r in archive.db.all("SELECT * FROM ml_latent ORDER BY row_index")]
    for name in before:
        (directory / name).unlink()
    archive.db.execute("DELETE FROM ml_latent")
    pipeline.encode(archive, version, progress=False, dask=cluster.scheduler.address)
    for name, array in before.items():
        np.testing.assert_array_equal(np.load(directory / name), array, err_msg=name)
    assert [tuple(r) for r in archive.db.all("SELECT * FROM ml_latent ORDER BY row_index")] == [
        tuple(r[:4]) + (None, None) + tuple(r[6:]) for r in rows_before
    ]
    archive.close()


def test_ingest_with_dask_stores_the_rows_one_process_stores(tmp_path, cluster, demo_dir, miles_dir):
    """Files read on the workers, landed in file order in one transaction: the same rows with the same
    numbers as one process gives, and the same broken files reported."""
    from tests.conftest import write_sky_sample

    write_sky_sample(tmp_path / "sky.fits", n=12)
    broken = tmp_path / "broken.fits"
    broken.write_bytes((demo_dir / "miles_demo.fits").read_bytes()[:100_000])
    files = [demo_dir / "miles_demo.fits", broken, miles_dir / "miles_spectra.fits", tmp_path / "sky.fits"]
    found = []
    for name, dask in (("one", False), ("dask", cluster.scheduler.address)):
        archive = Archive(tmp_path / name)
        summary = pipeline.ingest(archive, files, collection="mixed", progress=False, dask=dask)
        columns = [c for c in archive.db.columns("spectrum") if c != "ingested_at"]
        rows = archive.db.all(f"SELECT {', '.join(columns)} FROM spectrum ORDER BY row_id")
        found.append(
            (summary.added, summary.updated, [f for f, _ in summary.failed], [tuple(r) for r in rows])
        )
        archive.close()
    assert found[0] == found[1]
    assert found[0][0] == 220 and found[0][2] == [str(broken)]


def test_analyse_with_dask_stores_the_same_figures(tmp_path, live_server, cluster):
    """MI estimates on the workers, one task per label: the stored correlations and scores are those of
    one process, to the last bit."""
    import shutil

    root = tmp_path / "archive"
    shutil.copytree(live_server.config["archive"]["root"], root)
    archive = Archive(root)
    version = archive.current_model()["model_version"]
    query = "SELECT * FROM ml_label_correlation WHERE model_version = ? ORDER BY dim, label"
    before = [tuple(r) for r in archive.db.all(query, (version,))]
    scores = [
        tuple(r) for r in archive.db.all("SELECT lof_score, anomaly_score FROM ml_latent ORDER BY row_index")
    ]
    archive.db.execute("DELETE FROM ml_label_correlation")
    summary = pipeline.analyse(
        archive, live_server.config, version, progress=False, dask=cluster.scheduler.address
    )
    assert [tuple(r) for r in archive.db.all(query, (version,))] == before
    assert [
        tuple(r) for r in archive.db.all("SELECT lof_score, anomaly_score FROM ml_latent ORDER BY row_index")
    ] == scores
    assert summary["informative_dims"] == [
        int(d) for d in archive.current_model()["informative_dims"].split()
    ]
    archive.close()


def test_a_local_cluster_leaves_this_process_environment_as_it_found_it(monkeypatch):
    """Dask's nannies write OMP_NUM_THREADS=1 (and more) into the starting process's environment; what
    that process starts afterwards (a server, a demo build) must not inherit a single thread."""
    monkeypatch.delenv(
        "OMP_NUM_THREADS", raising=False
    )  # as a user's shell has it (the module's cluster runs)
    before = dict(os.environ)
    with cluster_client(workers=1) as client:
        assert set(client.run(lambda: os.environ.get("OMP_NUM_THREADS")).values()) == {"1"}
        assert os.environ.get("OMP_NUM_THREADS") == "1"  # the fault is real: written here too
    assert dict(os.environ) == before

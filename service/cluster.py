"""The batch stages on a Dask cluster: ``latentvo ingest|encode|analyse --dask [ADDRESS]``.

Without an address the cluster is a LocalCluster of this machine (one single-threaded worker
process per core, spawned, never forked: the calling process has torch loaded); with one, the
scheduler at ADDRESS and its workers, which must see the archive's files and model directory at the
same paths. Ingest reads one file per task and lands every file's rows in one transaction at the
end. Encode cuts the archive's rows into partitions of whole encoding batches; each task reads
its rows' files, encodes them on its worker (on the worker's GPU where it has one) and sends the
arrays back. Nothing is written until every partition is back: then the matrices and the database
rows land as a single-process run lands them, so a failed run leaves the archive as it was. Analyse
sends its mutual-information estimates, one task per label, to the workers (the random draws are
made first, in order, so the figures are the same); LOF and the maps stay in this process. A worker
that dies mid-run loses only its tasks, which the scheduler runs again on another worker (up to
``distributed.scheduler.allowed-failures`` times).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from service.pipeline import ENCODE_BATCH, Encoded

#: Encoding batches per partition: big enough that a task outweighs its scheduling, small enough that
#: a lost worker costs little and progress moves.
BATCHES_PER_PARTITION = 4


@contextmanager
def cluster_client(address: str | None = None, workers: int | None = None) -> Iterator:
    """A Dask client: of the scheduler at ``address``, or of a LocalCluster made for the block."""
    from distributed import Client, LocalCluster

    if address:
        with Client(address) as client:
            yield client
        return
    # The nannies set their workers' environment (OMP_NUM_THREADS=1, …) in this process's own and
    # leave it there: every process this one starts afterwards would run single-threaded.
    environment = dict(os.environ)
    cluster = LocalCluster(
        n_workers=workers or os.cpu_count() or 1,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
    )
    try:
        with Client(cluster) as client:
            yield client
    finally:
        cluster.close()
        os.environ.clear()
        os.environ.update(environment)


def partitions(n: int, batch_size: int, batches: int = BATCHES_PER_PARTITION) -> list[range]:
    """Consecutive row ranges of ``batches`` whole batches each (the last one shorter)."""
    size = max(1, batch_size * batches)
    return [range(start, min(n, start + size)) for start in range(0, n, size)]


def encode_on_cluster(
    client,
    directory: Path,
    rows: Sequence,
    batch_size: int = ENCODE_BATCH,
    progress: bool = True,
    report: Callable[[int, int], None] | None = None,
    batches_per_partition: int = BATCHES_PER_PARTITION,
) -> Encoded:
    """Encode ``rows`` (obs_publisher_did, source_path, source_index) on the cluster's workers; the
    parts in row order. ``report(done, total)`` is called as partitions come back."""
    from distributed import as_completed

    plain = [(row["source_path"], int(row["source_index"])) for row in rows]
    parts = partitions(len(plain), batch_size, batches_per_partition)
    futures = {
        client.submit(
            encode_partition,
            str(directory),
            plain[part.start : part.stop],
            batch_size,
            key=f"latentvo-encode-{directory.name}-{number:06d}-{os.getpid()}",
            pure=False,
        ): number
        for number, part in enumerate(parts)
    }
    found: dict[int, Encoded] = {}
    with tqdm(total=len(plain), desc="encode", unit="spectrum", disable=not progress) as bar:
        for future in as_completed(futures):
            number = futures[future]
            found[number] = future.result()
            bar.update(len(parts[number]))
            if report is not None:
                report(len(found), len(parts))
    return Encoded.concatenate([found[number] for number in range(len(parts))])


def read_on_cluster(
    client, files: Sequence[Path], collection: str, authority: str, labels: dict
) -> Iterator[tuple[int, Path, list[dict] | str]]:
    """(file number from 1, path, its rows or the error that makes it unusable) in file order, each
    as soon as it and every file before it are read."""
    from distributed import as_completed

    from service.pipeline import read_file_rows

    [shared] = client.scatter([labels], broadcast=True) if labels else [{}]
    futures = {
        client.submit(read_file_rows, path, collection, authority, shared, pure=False): number
        for number, path in enumerate(files, 1)
    }
    waiting: dict[int, list[dict] | str] = {}
    following = 1
    for future in as_completed(futures):
        waiting[futures[future]] = future.result()
        while following in waiting:
            yield following, files[following - 1], waiting.pop(following)
            following += 1


def information_on_cluster(
    client, latents: np.ndarray, labels: dict[str, np.ndarray], n_neighbors: int = 3, n_bootstrap: int = 20
) -> list[dict]:
    """model.analysis.mutual_information with one task per label: the draws are made here, in order."""
    from model.analysis import label_information, mi_plans

    latents = np.asarray(latents, dtype=np.float64)
    plans = mi_plans(latents, labels, n_neighbors, n_bootstrap)
    futures = [
        client.submit(label_information, latents[plan.keep], plan, n_neighbors, pure=False) for plan in plans
    ]
    return [row for rows in client.gather(futures) for row in rows]


def encode_partition(directory: str, rows: list[tuple[str, int]], batch_size: int) -> Encoded:
    """One task: a partition's spectra read and encoded on this worker."""
    from service.pipeline import encode_rows

    table = [{"source_path": path, "source_index": index} for path, index in rows]
    return encode_rows(_model(directory), table, batch_size)


@lru_cache(maxsize=2)
def _model(directory: str):
    """The model, loaded once per worker process (tasks of one run share it)."""
    from model.api import LatentModel

    return LatentModel(Path(directory))

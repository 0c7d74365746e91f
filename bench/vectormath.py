"""VECTORMATH's exact-search path: ``ORDER BY arr_dot(l.z[a:b] - r.z[a:b], …)`` for one reference, timed
against the same query run row by row, at the size of a built archive and at larger sizes.

Copies ``--root`` (an archive with a model in service, e.g. the 10^5 one ``bench/pipeline.py --keep``
leaves) to ``--work`` once per size and, for a size beyond the archive's, makes the model's latent
matrix and ml.latent that many rows long: the archive's own latents repeated with a small jitter
(0.01 prior standard deviations), the extra rows under made-up DIDs. Only ml.latent and the latent
matrix enter this query, so its time at that size is what an archive of that many spectra sees.

Per size and query: the fast path (reference lookup, exact search over the memory-mapped matrix,
the candidate table, the query over the candidates) and the row-by-row plan (the distance computed
by the VECTORMATH SQL functions for every row), each the median of ``--repeat`` runs (row by row:
``--slow-repeat``) in one process; and the whole request through the Flask app (/tap/sync, VOTable
written), fast path only. The rows of both plans are checked to be the same.

``--database URL`` measures on PostgreSQL: a copy of the prepared archive of one size made with
``latentvo copy-database --to URL`` (the model files stay under ``--work``).

Usage: python bench/vectormath.py [--root DIR] [--sizes 100000 1000000] [--work DIR] [--database URL]
Writes bench/results/vectormath.json and vectormath.md (``--name`` sets the stem).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.heldout import DEMO_CONFIG  # noqa: E402
from service.archive import Archive  # noqa: E402
from service.config import load_config  # noqa: E402

#: Files of a model version that have one row per archive spectrum (made as long as the latents).
PER_ROW = ("latent_mean.npy", "latent_var.npy")
QUERIES = {
    "slice z[2:4], TOP 20": (
        "SELECT TOP 20 l.obs_publisher_did, arr_dot(l.z[2:4] - r.z[2:4], l.z[2:4] - r.z[2:4]) AS d2 "
        "FROM ml.latent AS l, ml.latent AS r WHERE r.obs_publisher_did = '{did}' ORDER BY d2"
    ),
    "all of z, TOP 100": (
        "SELECT TOP 100 l.obs_publisher_did, arr_dot(l.z - r.z, l.z - r.z) AS d2 "
        "FROM ml.latent AS l, ml.latent AS r WHERE r.obs_publisher_did = '{did}' "
        "AND l.model_version = r.model_version ORDER BY d2"
    ),
}


def prepare(root: Path, work: Path, size: int) -> Path:
    """A copy of ``root`` whose model in service has ``size`` latent rows (arrays filled in)."""
    target = work / f"vectormath-{size}"
    if (target / "ready").exists():
        return target
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    shutil.copy2(root / "archive.sqlite", target / "archive.sqlite")
    archive = Archive(target)
    model = archive.current_model()
    version, source = model["model_version"], root / model["directory"]
    directory = target / model["directory"]
    directory.mkdir(parents=True)
    for path in source.iterdir():
        if path.name not in PER_ROW:
            (directory / path.name).symlink_to(path.resolve())
    means = np.load(source / "latent_mean.npy")
    variances = np.load(source / "latent_var.npy")
    own = archive.latent_dids(version)
    rng = np.random.default_rng(11)
    copies = -(-size // len(means))
    means = np.concatenate([means + (rng.normal(0, 0.01, means.shape) if c else 0) for c in range(copies)])
    means = means[:size].astype(np.float32)
    variances = np.concatenate([variances] * copies)[:size].astype(np.float32)
    dids = [own[i % len(own)] + (f"_copy{i // len(own)}" if i >= len(own) else "") for i in range(size)]
    np.save(directory / "latent_mean.npy", means)
    np.save(directory / "latent_var.npy", variances)
    recon = np.zeros(size)
    archive.write_latents(version, dids, means, variances, recon)
    archive.db.execute("DELETE FROM ml_latent WHERE model_version <> ?", (version,))
    archive.db.execute("ANALYZE")
    archive.close()
    (target / "ready").write_text("")
    return target


def settings_for(root: Path, database: str = "archive.sqlite") -> dict:
    return load_config(DEMO_CONFIG, {"archive": {"root": str(root), "database": database}}, environ={})


def timed(function, repeat: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000, result


def measure(root: Path, repeat: int, slow_repeat: int, database: str = "archive.sqlite") -> dict:
    from service.app import create_app
    from service.state import state
    from service.tap.adql import Engine, register_functions, translate
    from service.tap.schema import current_tableset
    from service.tap.sync import ModelSimilarity, nearest_candidates

    app = create_app(settings_for(root, database))
    client = app.test_client()
    results = {}
    with app.app_context():
        archive = state().archive()
        dids = archive.latent_dids(archive.current_version())
        did = dids[len(dids) // 3]
        tables = current_tableset(archive)
        similarity = ModelSimilarity()
        n_rows = len(similarity.served.dids)
        prepare_connection = lambda connection: register_functions(connection, similarity)  # noqa: E731
        for name, template in QUERIES.items():
            adql = template.format(did=did)
            engine = Engine(archive.db.dialect, q3c="q3c" in archive.db.extensions)
            translation = translate(adql, tables, 1000, engine=engine)
            search = translation.vector_search
            assert search is not None, name

            def fast(search=search, translation=translation):
                with archive.db.query_session(None, None, prepare_connection) as session:
                    assert nearest_candidates(session, search, similarity)
                    return session.run(search.sql, translation.limit)[0]

            def slow(translation=translation):
                with archive.db.query_session(None, None, prepare_connection) as session:
                    return session.run(translation.sql, translation.limit)[0]

            fast()  # the memory map and the function registrations warm
            fast_ms, fast_rows = timed(fast, repeat)
            slow_ms, slow_rows = timed(slow, slow_repeat)
            same = [r[0] for r in fast_rows] == [r[0] for r in slow_rows]  # type: ignore[union-attr]
            http_ms, response = timed(
                lambda adql=adql: client.post(
                    "/tap/sync", data={"REQUEST": "doQuery", "LANG": "ADQL", "QUERY": adql}
                ),
                repeat,
            )
            assert response.status_code == 200 and b"<TR>" in response.data, name  # type: ignore[union-attr]
            results[name] = {
                "query": adql,
                "rows": n_rows,
                "fast_ms": round(fast_ms, 2),
                "row_by_row_ms": round(slow_ms, 1),
                "speedup": round(slow_ms / fast_ms, 1),
                "http_fast_ms": round(http_ms, 2),
                "same_rows": same,
            }
            print(f"{n_rows} rows, {name}: fast {fast_ms:.1f} ms, row by row {slow_ms:.0f} ms, "
                  f"HTTP {http_ms:.1f} ms, same rows: {same}", flush=True)  # fmt: skip
    return results


def markdown(report: dict) -> str:
    lines = [
        "# VECTORMATH: ORDER BY arr_dot by exact search against row by row",
        "",
        f"Machine: {report['machine']}. Engine: {report.get('engine', 'SQLite')}. "
        f"Median of {report['repeat']} runs "
        f"(row by row: {report['slow_repeat']}). Command: `{report['command']}`",
        "",
        "| latent rows | query | fast path (ms) | row by row (ms) | speed-up | /tap/sync, fast (ms) "
        "| same rows |",
        "|---:|---|---:|---:|---:|---:|---|",
    ]
    for size in report["sizes"]:
        for name, r in report["results"][str(size)].items():
            lines.append(
                f"| {r['rows']:,} | {name} | {r['fast_ms']} | {r['row_by_row_ms']} | {r['speedup']}x | "
                f"{r['http_fast_ms']} | {'yes' if r['same_rows'] else 'NO'} |"
            )
    lines += ["", "Queries (the reference DID varies):", ""]
    lines += [f"- {name}: `{template}`" for name, template in QUERIES.items()]
    lines += [
        "",
        "Sizes beyond the archive's own repeat its latents with a 0.01 jitter (see the script's docstring).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", type=Path, default=REPO / "var" / "bench-100k" / "archive")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--work", type=Path, default=REPO / "var" / "bench-vectormath")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--slow-repeat", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--name", default="vectormath")
    parser.add_argument(
        "--database",
        help="measure on this archive database instead (a PostgreSQL URL; one size: the copy that "
        "`latentvo copy-database` made of that size's prepared archive)",
    )
    args = parser.parse_args()
    results = {}
    for size in args.sizes:
        root = prepare(args.root, args.work, size)
        results[str(size)] = measure(root, args.repeat, args.slow_repeat, args.database or "archive.sqlite")
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "command": "python bench/vectormath.py " + " ".join(sys.argv[1:]),
        "repeat": args.repeat,
        "slow_repeat": args.slow_repeat,
        "engine": "PostgreSQL" if args.database else "SQLite",
        "sizes": args.sizes,
        "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(report, indent=2))
    (args.out / f"{args.name}.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()

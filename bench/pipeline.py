"""Pipeline throughput at scale: ingest, encode, analyse and index on synthetic spectra.

Writes N synthetic spectra with known labels (model/synthetic.py) into one multi-spectrum
FITS table, then runs the ordinary pipeline stages on it and reports spectra per second for
each, the index's recall and query latency, exact-search latency, and peak memory.
Training is on a sample (``--train-spectra``), as an operator of a large archive would do.

``--files K`` writes the spectra as K tables (a Dask ingest reads one file per task);
``--dask [SCHEDULER]`` runs ingest, encode and analyse on Dask (a LocalCluster without an address);
``--database URL`` keeps the archive database on PostgreSQL.

Usage: python bench/pipeline.py [--n 100000] [--pixels 3000] [--files 1] [--dask [SCHEDULER]]
       [--database URL] [--work DIR] [--out bench/results] [--name pipeline]
Writes bench/results/<name>.json and <name>.md.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from model.api import LatentModel  # noqa: E402
from model.similarity import exact_search  # noqa: E402
from model.synthetic import SyntheticConfig, write_fits_table  # noqa: E402
from service import pipeline  # noqa: E402
from service.archive import Archive  # noqa: E402
from service.config import load_config  # noqa: E402


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def latency_ms(call, queries) -> dict:
    times = []
    for q in queries:
        t0 = time.perf_counter()
        call(q)
        times.append((time.perf_counter() - t0) * 1e3)
    return {"p50": float(np.percentile(times, 50)), "p95": float(np.percentile(times, 95))}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--pixels", type=int, default=3000)
    parser.add_argument("--train-spectra", type=int, default=5000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--work", default=REPO / "var" / "bench-pipeline")
    parser.add_argument("--out", default=REPO / "bench" / "results")
    parser.add_argument("--keep", action="store_true", help="keep the synthetic table and archive")
    parser.add_argument("--files", type=int, default=1, help="spectra written as this many tables")
    parser.add_argument(
        "--dask", nargs="?", const="", metavar="SCHEDULER", help="ingest, encode, analyse on Dask"
    )
    parser.add_argument("--database", help="[archive] database (default: SQLite under the work directory)")
    parser.add_argument("--name", default="pipeline", help="stem of the result files")
    args = parser.parse_args()

    work, out = Path(args.work), Path(args.out)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    out.mkdir(parents=True, exist_ok=True)
    tables = [work / f"synthetic-{i:03d}.fits" for i in range(args.files)]
    dask = False if args.dask is None else (args.dask or None)
    result: dict = {
        "n_spectra": args.n,
        "n_pixels_input": args.pixels,
        "files": args.files,
        "dask": "no" if dask is False else (dask or "LocalCluster"),
        "database": "postgresql" if args.database else "sqlite",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "stages": {},
    }

    def stage(name: str, run, count: int | None = None):
        t0 = time.perf_counter()
        value = run()
        seconds = time.perf_counter() - t0
        result["stages"][name] = {
            "seconds": round(seconds, 2),
            "per_second": round((count or args.n) / seconds, 1),
            "peak_rss_mb": round(peak_rss_mb()),
        }
        print(f"{name}: {seconds:.1f} s, {(count or args.n) / seconds:.0f} spectra/s", flush=True)
        return value

    sizes = [args.n // args.files + (i < args.n % args.files) for i in range(args.files)]

    def generate() -> None:
        for i, (table, size) in enumerate(zip(tables, sizes, strict=True)):
            first = sum(sizes[:i])
            write_fits_table(
                table, size, seed=i, config=SyntheticConfig(n_pixels=args.pixels), first_id=first
            )

    stage("generate", generate)
    result["table_mb"] = round(sum(t.stat().st_size for t in tables) / 2**20)
    storage = {"database": args.database} if args.database else {}
    config = load_config(
        environ={},
        overrides={
            "archive": {"root": str(work / "archive"), **storage},
            "grid": {"n_pixels": 1024},
            "model": {"epochs": args.epochs, "max_train_spectra": args.train_spectra, "latent_dim": 16},
        },
    )
    archive = Archive.from_config(config)
    summary = stage(
        "ingest", lambda: pipeline.ingest(archive, tables, collection="synth", progress=False, dask=dask)
    )
    assert summary.added == args.n, summary
    if archive.db.dialect == "sqlite":
        result["database_mb"] = round(archive.db.path.stat().st_size / 2**20)
    else:
        result["database_mb"] = round(
            archive.db.scalar("SELECT pg_database_size(current_database())") / 2**20
        )
    version = stage(
        "train", lambda: pipeline.train_model(archive, config, progress=False), args.train_spectra
    )
    stage("encode", lambda: pipeline.encode(archive, version, progress=False, dask=dask))
    stage("analyse", lambda: pipeline.analyse(archive, config, version, progress=False, dask=dask))
    index = stage("index", lambda: pipeline.build_index(archive, config, version, progress=False))
    result["index"] = index

    model = LatentModel(archive.model_dir(version))
    rng = np.random.default_rng(1)
    rows = rng.choice(args.n, size=500, replace=False)
    dims3 = model.informative_dims[:3]
    result["query_ms"] = {
        "annoy_k10": latency_ms(lambda r: model.neighbours(row=int(r), k=10), rows),
        "exact_all_dims_k10": latency_ms(
            lambda r: exact_search(model.latents, model.latents[r], 10), rows[:100]
        ),
        "exact_3_dims_k10": latency_ms(
            lambda r: exact_search(model.latents, model.latents[r], 10, dims=dims3), rows[:100]
        ),
    }
    result["peak_rss_mb"] = round(peak_rss_mb())
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=2))
    (out / f"{args.name}.md").write_text(markdown(result))
    print(markdown(result))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


def markdown(r: dict) -> str:
    lines = [
        f"# Pipeline throughput: {r['n_spectra']} synthetic spectra × {r['n_pixels_input']} pixels",
        "",
        f"Run {r.get('when', '?')}: {r.get('files', 1)} file(s), Dask {r.get('dask', 'no')}, "
        f"archive database on {r.get('database', 'sqlite')}.",
        "",
        f"table {r['table_mb']} MB, archive database {r['database_mb']} MB, peak RSS {r['peak_rss_mb']} MB",
        "",
        "| stage | seconds | spectra/s | peak RSS (MB) |",
        "|---|---|---|---|",
    ]
    for name, s in r["stages"].items():
        lines.append(f"| {name} | {s['seconds']} | {s['per_second']} | {s['peak_rss_mb']} |")
    i = r["index"]
    lines += [
        "",
        f"index: n_trees {i['n_trees']}, search_k {i['search_k']}, recall@10 {i['recall_at_k']:.4f}",
        "",
        "| query | p50 ms | p95 ms |",
        "|---|---|---|",
    ]
    for name, q in r["query_ms"].items():
        lines.append(f"| {name} | {q['p50']:.3f} | {q['p95']:.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

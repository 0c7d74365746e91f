"""ADQL cone searches on PostgreSQL at 10^7 spectra: q3c's index against the (s_dec, s_ra) B-tree.

Fills the archive's ``spectrum`` table on a PostgreSQL database (``--database``, created with the
archive's schema, so with q3c's index where the server has q3c) with ``--rows`` positions spread
evenly over the sky (the other columns constant), then runs the ADQL cone
``1 = CONTAINS(POINT(s_ra, s_dec), CIRCLE(ra, dec, r))`` over ``ivoa.obscore`` through the service's
own path (translation for PostgreSQL, a read-only query session) at random centres, translated once
with q3c and once without it (the declination band and RA box on the B-tree). Rows are kept between
runs: a second run with the same ``--rows`` only measures. ``--cluster`` first orders the table by
q3c's index (``CLUSTER``), so the rows of one cone share pages, as DaCHS advises for large catalogues.

Usage: python bench/cone_postgres.py --database postgresql://… [--rows 10000000] [--queries 40]
       [--cluster]
Writes bench/results/cone-postgres-<rows>[-clustered].json and .md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.report import machine  # noqa: E402
from service.storage.postgres import PostgresDatabase  # noqa: E402
from service.tables import load_tableset  # noqa: E402
from service.tap.adql import Engine, translate  # noqa: E402

RADII = (0.05, 0.5, 2.0)
_FILL = """
INSERT INTO spectrum (obs_publisher_did, obs_id, obs_collection, s_ra, s_dec, em_min, em_max, em_xel,
                      medium, source_path, source_format, source_index, source_sha256, ingested_at)
SELECT 'ivo://bench/~?sky/' || i, 's' || i, 'sky', 360.0 * random(), degrees(asin(2.0 * random() - 1.0)),
       3.6e-7, 7.4e-7, 4300, 'vacuum', 'sky.fits', 'fits', i, '0', '2026-01-01T00:00:00'
FROM generate_series(?, ?) AS i
"""


def fill(database: PostgresDatabase, rows: int, batch: int = 1_000_000) -> float:
    """Add rows until the table holds ``rows``; the seconds it took (0 when it already did)."""
    have = database.scalar("SELECT count(*) FROM spectrum")
    started = time.perf_counter()
    for first in range(have, rows, batch):
        last = min(rows, first + batch) - 1
        database.execute(_FILL, (first, last))
        print(f"  {last + 1} rows", flush=True)
    if have < rows:
        database.execute("ANALYZE spectrum")
    return time.perf_counter() - started if have < rows else 0.0


def measure(database: PostgresDatabase, engine: Engine, radius: float, queries: int) -> dict:
    tables = load_tableset(0)
    rng = np.random.default_rng(int(radius * 1000))
    seconds, found = [], []
    for _ in range(queries):
        ra, dec = rng.uniform(0, 360), np.degrees(np.arcsin(rng.uniform(-0.95, 0.95)))
        adql = (
            "SELECT obs_publisher_did, s_ra, s_dec FROM ivoa.obscore "
            f"WHERE 1 = CONTAINS(POINT(s_ra, s_dec), CIRCLE({ra:.6f}, {dec:.6f}, {radius}))"
        )
        started = time.perf_counter()
        translation = translate(adql, tables, 1_000_000, engine=engine)
        with database.query_session(60.0) as session:
            rows, _ = session.run(translation.sql, translation.limit)
        seconds.append(time.perf_counter() - started)
        found.append(len(rows))
    ms = np.array(seconds) * 1000
    return {
        "radius_deg": radius,
        "queries": queries,
        "rows_mean": float(np.mean(found)),
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database", required=True, help="a PostgreSQL URL (the schema is created there)")
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--queries", type=int, default=40)
    parser.add_argument("--cluster", action="store_true", help="CLUSTER the table on q3c's index first")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()

    database = PostgresDatabase(args.database)
    if "q3c" not in database.extensions:
        sys.exit("q3c is not installed in that database: the comparison needs it")
    fill_seconds = fill(database, args.rows)
    if args.cluster:
        started = time.perf_counter()
        database.execute("CLUSTER spectrum USING spectrum_q3c")
        database.execute("ANALYZE spectrum")
        print(f"clustered in {time.perf_counter() - started:.0f} s")
    index_mb = database.scalar("SELECT pg_relation_size('spectrum_q3c')") / 2**20
    btree_mb = database.scalar("SELECT pg_relation_size('spectrum_sky')") / 2**20
    database.execute("SELECT count(*) FROM spectrum WHERE s_dec > 89")  # warm the catalogue
    results = []
    for radius in RADII:
        for name, engine in (("q3c", Engine("postgres", q3c=True)), ("B-tree", Engine("postgres"))):
            row = measure(database, engine, radius, args.queries) | {"index": name}
            print(f"r = {radius}°, {name}: p50 {row['p50_ms']:.1f} ms, p95 {row['p95_ms']:.1f} ms, "
                  f"{row['rows_mean']:.0f} rows")  # fmt: skip
            results.append(row)
    database.close()

    report = {
        "rows": args.rows,
        "clustered": args.cluster,
        "fill_seconds": fill_seconds,
        "q3c_index_mb": index_mb,
        "sky_btree_mb": btree_mb,
        "machine": machine(),
        "cones": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"cone-postgres-{args.rows}{'-clustered' if args.cluster else ''}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        f"# ADQL cones on PostgreSQL, {args.rows:,} spectra"
        + (", table clustered on q3c's index" if args.cluster else ", rows in random sky order"),
        "",
        f"`python bench/cone_postgres.py --database URL --rows {args.rows}"
        + (" --cluster" if args.cluster else "")
        + f"` on {report['machine']}.",
        f"q3c index {index_mb:.0f} MB, (s_dec, s_ra) B-tree {btree_mb:.0f} MB. Each figure: "
        f"{args.queries} cones at random centres, ADQL translated and run through a query session.",
        "",
        "| radius | index | rows found (mean) | p50 | p95 |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['radius_deg']}° | {r['index']} | {r['rows_mean']:.0f} "
        f"| {r['p50_ms']:.1f} ms | {r['p95_ms']:.1f} ms |"
        for r in results
    ]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {stem}.json and .md")


if __name__ == "__main__":
    main()

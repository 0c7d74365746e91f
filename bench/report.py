"""bench/RESULTS.md from the JSON that `make bench` leaves: the pipeline on a synthetic archive
(bench/pipeline.py) and serving it under load (bench/load.py), beside the targets at 10^6 spectra;
with, where they exist, encoding part by part (bench/encode.py, encode.json), the index against N
(bench/index_scale.py) and the record of the fixes the profiles led to, each with its before and
after figures (bench/results/fixes.md).

Usage: python bench/report.py [--results bench/results] [--out bench/RESULTS.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.load import rss_line, run_cells  # noqa: E402

#: (query, connections) -> (what, target) for the figures the targets at 10^6 spectra name.
TARGETS = {
    ("/similar?ID=", "1"): ("p50 ≤ 5 ms, p99 ≤ 20 ms", lambda r: r["p50_ms"] <= 5 and r["p99_ms"] <= 20),
    ("/datalink/similar", "1"): ("p50 ≤ 5 ms, p99 ≤ 20 ms", lambda r: r["p50_ms"] <= 5 and r["p99_ms"] <= 20),
    ("/similar?ID=", "16"): ("≥ 500 req/s", lambda r: r["requests_per_s"] >= 500),
    ("/similar?ID=", "64"): ("≥ 500 req/s", lambda r: r["requests_per_s"] >= 500),
    ("/datalink/similar", "16"): ("≥ 500 req/s", lambda r: r["requests_per_s"] >= 500),
    ("/datalink/similar", "64"): ("≥ 500 req/s", lambda r: r["requests_per_s"] >= 500),
    ("upload /similar", "1"): ("p50 ≤ 50 ms", lambda r: r["p50_ms"] <= 50),
    ("TAP TOP 10", "1"): ("p50 ≤ 65 ms (DaCHS, TAP TOP 10)", lambda r: r["p50_ms"] <= 65),
    ("SSAP cone", "1"): ("p50 ≤ 68 ms (DaCHS, SSAP cone)", lambda r: r["p50_ms"] <= 68),
    # DaCHS was measured on these two; the rest of the TAP/SSAP/DataLink set is held to its TOP 10.
    **{
        (name, "1"): ("p50 ≤ 65 ms (DaCHS's TAP TOP 10)", lambda r: r["p50_ms"] <= 65)
        for name in ("TAP TOP 100", "TAP ml_knn", "SSAP SIMILAR_TO", "DataLink {links}")
    },
}


def machine() -> str:
    memory = ""
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        total = next(x for x in meminfo.read_text().splitlines() if x.startswith("MemTotal:"))
        memory = f", {int(total.split()[1]) / 2**20:.0f} GiB RAM"
    cores = f"{os.cpu_count()} CPU cores{memory}"
    return f"{platform.system()} {platform.machine()}, {cores}, Python {platform.python_version()}"


def report(results: Path) -> str:
    pipeline = json.loads((results / "pipeline.json").read_text())
    load = json.loads((results / "load.json").read_text())
    n = pipeline["n_spectra"]
    lines = [
        "# Benchmark results",
        "",
        f"From the run `make bench BENCH_N={n}` of {load['when']} (its serving part) on {machine()}.",
        "Every figure is from the run itself (bench/results/pipeline.json, load.json).",
        "",
        f"## Pipeline: {n} synthetic spectra × {pipeline['n_pixels_input']} pixels (model/synthetic.py)",
        "",
        "| stage | seconds | spectra/s | peak RSS (MB) |",
        "|---|---|---|---|",
    ]
    total = 0.0
    for name, stage in pipeline["stages"].items():
        total += stage["seconds"] if name != "generate" else 0.0
        lines.append(f"| {name} | {stage['seconds']} | {stage['per_second']} | {stage['peak_rss_mb']} |")
    encode = pipeline["stages"]["encode"]["per_second"]
    lines += [
        "",
        f"Ingest to index: {total / 60:.1f} min (target at 10^6: ≤ 60 min). Encoding: {encode} spectra/s "
        "(target ≥ 5,000).",
        "",
        "## Annoy against exact search",
        "",
        f"n_trees {pipeline['index']['n_trees']}, search_k {pipeline['index']['search_k']}: "
        f"recall@10 {pipeline['index']['recall_at_k']:.4f}",
        "",
        "| query | p50 ms | p95 ms |",
        "|---|---|---|",
        *(f"| {k} | {q['p50']:.3f} | {q['p95']:.3f} |" for k, q in pipeline["query_ms"].items()),
        "",
        f"## Serving under load: {load['n_spectra']} spectra, {load['workers']} gunicorn workers, wrk "
        f"{load['duration_s']} s per run",
        "",
        "| query | connections | req/s | p50 ms | p95 ms | p99 ms | errors | target at 10^6 | met here |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, connections, run, cells in run_cells(load):
        target = TARGETS.get((name, connections))
        met = "" if target is None else ("yes" if target[1](run) else "**no**")
        lines.append("| " + " | ".join([*cells, target[0] if target else "", met]) + " |")
    lines += ["", f"{rss_line(load)} (target ≤ 1,536 MB).", ""]
    lines += floors(load)
    if (results / "encode.json").exists():
        lines += encode_parts(json.loads((results / "encode.json").read_text()))
    if (results / "index_scale.md").exists():
        lines += ["", "#" + (results / "index_scale.md").read_text().strip(), ""]
    for name in ("vectormath", "propagation", "bestars", "retrain", "bestars-trained"):
        if (results / f"{name}.md").exists():
            lines += ["", "#" + (results / f"{name}.md").read_text().strip().replace("\n## ", "\n### "), ""]
    lines += beyond_one_machine(results)
    if (results / "fixes.md").exists():
        lines += ["", (results / "fixes.md").read_text().strip(), ""]
    return "\n".join(lines)


#: Runs on Dask and on PostgreSQL (bench/pipeline.py --dask/--database, bench/load.py --database,
#: bench/cone_postgres.py, bench/vectormath.py --database), each kept as its own Markdown, shown in
#: this order where present.
BEYOND = (
    "pipeline-1m-dask",
    "pipeline-20k-*",
    "inprocess-100k-*",
    "cone-postgres-*",
    "vectormath-postgres-*",
)


def beyond_one_machine(results: Path) -> list[str]:
    """The Dask and PostgreSQL runs, each under its own heading."""
    found = [path for pattern in BEYOND for path in sorted(results.glob(f"{pattern}.md"))]
    if not found:
        return []
    lines = ["", "## Beyond one machine: Dask and PostgreSQL", ""]
    for path in found:
        lines += ["##" + path.read_text().strip(), ""]
    return lines


FLOOR = "HTTP floor (/tap/availability)"


def floors(load: dict) -> list[str]:
    """What every answer pays before any work: a few hundred bytes through gunicorn, Flask and TCP."""
    floor = load["runs"].get(FLOOR)
    if not floor:
        return []
    sequential = floor.get("1")
    busiest = max(floor.values(), key=lambda run: run["requests_per_s"])
    lines = ["## Floors", ""]
    if sequential:
        lines.append(
            f"- HTTP handling alone ({FLOOR}, sequential): p50 {sequential['p50_ms']:.1f} ms, "
            f"p99 {sequential['p99_ms']:.1f} ms."
        )
    lines.append(
        f"- The most requests/s the {load['workers']} workers answer for it: {busiest['requests_per_s']:.0f} "
        "(any endpoint's ceiling on this machine, client included)."
    )
    return [*lines, ""]


def encode_parts(encode: dict) -> list[str]:
    """Where encoding's time goes (bench/encode.py)."""
    return [
        f"## Encoding, part by part ({encode['n_spectra']} archive spectra, {encode['machine']})",
        "",
        "| part | spectra/s |",
        "|---|---|",
        *(f"| {part} | {rate} |" for part, rate in encode["parts_per_second"].items()),
        f"| **all parts in one process** | **{encode['one_process_per_second']}** |",
        "",
        f"The model alone by batch size (encode uses {encode['encode_batch']}): "
        + ", ".join(f"{batch}: {rate}/s" for batch, rate in encode["model_by_batch"].items()),
        "",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--results", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "RESULTS.md")
    args = parser.parse_args()
    text = report(args.results)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()

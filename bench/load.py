"""Serving under load: the benchmark query set against a built archive through gunicorn, with wrk.

Serves ``--root`` (an archive with a model in service, e.g. the one ``bench/pipeline.py --keep``
leaves) with `latentvo serve` on 127.0.0.1 and runs wrk for ``--duration`` seconds per endpoint and
connection count (1 = sequential, then 16 and 64 by default). Requests cycle through ``--ids``
different archive spectra, so caches see what many users would ask. Reported per run: requests/s,
p50, p95 and p99 latency, non-2xx answers and socket errors, and afterwards the RSS of each worker.

The query set: similarity by ID (/similar?ID=, /datalink/similar, DataLink {links}, SSAP
SIMILAR_TO), ml_knn through TAP sync, an SSAP cone, a TAP TOP 100 and TOP 10 and an upload to
/similar (a CSV of one archive spectrum's flux); and, as the floor every answer pays, VOSI
availability (a few hundred bytes through the same gunicorn, Flask and network stack).

Needs wrk (Debian: apt-get install wrk).

``--in-process N`` times N sequential requests of each query through Flask's test client instead
(no gunicorn, no wrk): what the application itself costs, as the fixes in bench/results/fixes.md
are measured.

``--database`` serves the archive database from elsewhere than ``root/archive.sqlite``, e.g. a
PostgreSQL copy made by ``latentvo copy-database`` (the model files stay under ``--root``).

Usage: python bench/load.py --root DIR [--database URL] [--duration 30] [--connections 1 16 64]
       [--workers 2] [--only NAME ...] [--in-process N]
Writes bench/results/load.json and load.md (``--name`` sets the stem).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlencode

import numpy as np
import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.heldout import DEMO_CONFIG, gunicorn, write_flux_csv  # noqa: E402
from model.readers import read_spectra  # noqa: E402
from service.archive import Archive  # noqa: E402
from service.config import load_config  # noqa: E402

#: The wrk script: cycles through the request lines in PATHS (GET) or sends one POST body, and
#: prints the run's figures as one JSON line at the end.
WRK_SCRIPT = """
local paths = {%(paths)s}
local i = 0
local body = %(body)s
request = function()
  i = i %% #paths + 1
  if body then
    return wrk.format("POST", paths[i], {["Content-Type"] = "%(content_type)s"}, body)
  end
  return wrk.format("GET", paths[i])
end
done = function(summary, latency, requests)
  io.write(string.format(
    'RESULT {"requests": %%d, "seconds": %%.3f, "p50_ms": %%.3f, "p95_ms": %%.3f, "p99_ms": %%.3f, ' ..
    '"max_ms": %%.3f, "non_2xx": %%d, "socket_errors": %%d}\\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1e3, latency:percentile(95) / 1e3,
    latency:percentile(99) / 1e3, latency.max / 1e3, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
"""

BOUNDARY = "latentvo-bench-boundary"


def lua_string(text: str) -> str:
    return "[==[" + text + "]==]"


def query_set(dids: list[str], ra_dec: tuple[float, float] | None, upload: bytes) -> dict[str, dict]:
    """Each benchmark query: its GET paths (one per archive spectrum) or its POST body."""
    knn = "SELECT o.obs_publisher_did FROM ivoa.obscore AS o WHERE 1 = ml_knn(o.obs_publisher_did, '{}', 10)"
    cone = {"REQUEST": "queryData", "POS": "0,0", "SIZE": "1", "MAXREC": "100"}
    if ra_dec is not None:
        cone["POS"] = f"{ra_dec[0]},{ra_dec[1]}"
    return {
        "/similar?ID=": {"paths": [f"/similar?{urlencode({'ID': d, 'K': 10})}" for d in dids]},
        "/datalink/similar": {"paths": [f"/datalink/similar?{urlencode({'ID': d, 'K': 10})}" for d in dids]},
        "DataLink {links}": {"paths": [f"/datalink/links?ID={quote(d, safe='')}" for d in dids]},
        "SSAP SIMILAR_TO": {
            "paths": [
                f"/ssa/query?{urlencode({'REQUEST': 'queryData', 'SIMILAR_TO': d, 'K': 10})}" for d in dids
            ]
        },
        "TAP ml_knn": {
            "paths": [f"/tap/sync?{urlencode({'LANG': 'ADQL', 'QUERY': knn.format(d)})}" for d in dids]
        },
        "SSAP cone": {"paths": [f"/ssa/query?{urlencode(cone)}"]},
        "TAP TOP 100": {
            "paths": [
                f"/tap/sync?{urlencode({'LANG': 'ADQL', 'QUERY': 'SELECT TOP 100 * FROM ivoa.obscore'})}"
            ]
        },
        "TAP TOP 10": {
            "paths": [
                f"/tap/sync?{urlencode({'LANG': 'ADQL', 'QUERY': 'SELECT TOP 10 * FROM ivoa.obscore'})}"
            ]
        },
        "upload /similar": {"paths": ["/similar"], "body": upload},
        # The floor: what gunicorn, Flask and the network stack cost for a few hundred bytes of XML.
        "HTTP floor (/tap/availability)": {"paths": ["/tap/availability"]},
    }


def multipart(name: str, content: bytes) -> bytes:
    return (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="K"\r\n\r\n10\r\n'
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="FILE"; filename="{name}"\r\n'
            "Content-Type: text/csv\r\n\r\n"
        ).encode()
        + content
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )


def run_wrk(url: str, query: dict, connections: int, duration: int, work: Path) -> dict:
    body = query.get("body")
    script = work / "bench.lua"
    script.write_text(
        WRK_SCRIPT
        % {
            "paths": ", ".join(lua_string(p) for p in query["paths"]),
            "body": "nil" if body is None else lua_string(body.decode("latin-1")),
            "content_type": f"multipart/form-data; boundary={BOUNDARY}",
        }
    )
    threads = max(1, min(2, connections))
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
    ]
    done = subprocess.run([*command, url], capture_output=True, text=True, timeout=duration + 60)
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result:\n{done.stdout}\n{done.stderr}")
    result = json.loads(line.removeprefix("RESULT "))
    result["requests_per_s"] = result["requests"] / result["seconds"]
    return result


def worker_rss_mb(url: str) -> list[float]:
    """RSS of each gunicorn worker serving ``url`` (children of the master listening on its port)."""
    port = url.rsplit(":", 1)[1]
    masters = subprocess.run(
        ["pgrep", "-f", f"serve --port {port}"], capture_output=True, text=True
    ).stdout.split()
    sizes = []
    for master in masters:
        children = subprocess.run(["pgrep", "-P", master], capture_output=True, text=True).stdout.split()
        for pid in children:
            status = Path(f"/proc/{pid}/status")
            if status.exists():
                rss = next(x for x in status.read_text().splitlines() if x.startswith("VmRSS:"))
                sizes.append(int(rss.split()[1]) / 1024)
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", type=Path, required=True, help="archive root with a model in service")
    parser.add_argument("--database", help="[archive] database (default: the SQLite file under --root)")
    parser.add_argument("--duration", type=int, default=30)
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--ids", type=int, default=1000)
    parser.add_argument("--only", nargs="*", help="names of the queries to run (default: all)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--name", default="load")
    parser.add_argument(
        "--in-process",
        type=int,
        default=0,
        metavar="N",
        help="instead: N sequential requests of each query through Flask's test client (p50, p95)",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("bench/load.py needs wrk: apt-get install wrk")

    archive_settings = {"root": str(args.root)} | ({"database": args.database} if args.database else {})
    if args.database:
        os.environ["LATENTVO_ARCHIVE_DATABASE"] = args.database  # for the gunicorn it starts
    chosen, positioned, spectrum, n_spectra = archive_sample(archive_settings, args.ids)
    results: dict = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, {os.cpu_count()} cores",
        "n_spectra": n_spectra,
        "database": "postgresql" if args.database and args.database.startswith("postgres") else "sqlite",
        "workers": args.workers,
        "duration_s": args.duration,
        "runs": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        csv = write_flux_csv(work / "upload.csv", spectrum.wavelength, spectrum.flux)
        queries = query_set(chosen, positioned, multipart("upload.csv", csv.read_bytes()))
        queries = {name: query for name, query in queries.items() if not args.only or name in args.only}
        if args.in_process:
            results["in_process"] = in_process(archive_settings, queries, args.in_process)
        else:
            with gunicorn(args.root, workers=args.workers) as url:
                serve_under_load(url, queries, args, work, results)
                results["worker_rss_mb"] = worker_rss_mb(url)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(results, indent=2) + "\n")
    text = markdown(results)
    (args.out / f"{args.name}.md").write_text(text)
    print(text)


def archive_sample(settings: dict, ids: int) -> tuple[list[str], tuple[float, float] | None, object, int]:
    """``ids`` archive DIDs drawn with a fixed seed, a position for the cone, the first one's
    spectrum (the upload) and the archive's size."""
    archive = Archive.from_config(load_config(DEMO_CONFIG, {"archive": settings}, environ={}))
    version = archive.current_model()["model_version"]
    dids = archive.latent_dids(version)
    rng = np.random.default_rng(0)
    chosen = [dids[i] for i in rng.choice(len(dids), size=min(ids, len(dids)), replace=False)]
    row = archive.db.execute(
        "SELECT source_path, source_index FROM spectrum WHERE obs_publisher_did = ?", (chosen[0],)
    ).fetchone()
    positioned = archive.db.execute(
        "SELECT s_ra, s_dec FROM spectrum WHERE s_ra IS NOT NULL LIMIT 1"
    ).fetchone()
    spectrum = read_spectra(row["source_path"], row["source_index"])[0]  # ingest stores absolute paths
    archive.close()
    return chosen, tuple(positioned) if positioned else None, spectrum, len(dids)


def serve_under_load(url: str, queries: dict, args: argparse.Namespace, work: Path, results: dict) -> None:
    for name, query in queries.items():
        check(send(url, query, query["paths"][0]), name)
        for connections in args.connections:
            run = run_wrk(url, query, connections, args.duration, work)
            results["runs"].setdefault(name, {})[str(connections)] = run
            errors = run["non_2xx"] + run["socket_errors"]
            print(
                f"{name:18s} c={connections:<3d} {run['requests_per_s']:8.1f} req/s  "
                f"p50 {run['p50_ms']:7.1f} ms  p95 {run['p95_ms']:7.1f}  p99 {run['p99_ms']:7.1f}  "
                f"errors {errors}",
                flush=True,
            )


def send(target, query: dict, path: str):
    """One request of ``query`` to a server URL (requests) or a Flask test client."""
    if isinstance(target, str):
        if "body" in query:
            headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
            return requests.post(target + path, data=query["body"], headers=headers, timeout=60)
        return requests.get(target + path, timeout=60)
    if "body" in query:
        return target.post(path, data=query["body"], content_type=f"multipart/form-data; boundary={BOUNDARY}")
    return target.get(path)


def check(answer, name: str) -> None:
    if answer.status_code != 200:
        raise RuntimeError(f"{name}: HTTP {answer.status_code}: {answer.text[:500]}")


def in_process(settings: dict, queries: dict, n: int) -> dict:
    """p50 and p95 of ``n`` sequential requests of each query through Flask's test client (no HTTP,
    no gunicorn): what the application itself costs, the figure the fixes are measured by."""
    from service.app import create_app

    client = create_app(load_config(DEMO_CONFIG, {"archive": settings}, environ={})).test_client()
    found = {}
    for name, query in queries.items():
        paths = query["paths"]
        for path in paths[:5]:  # warm up: model, index, open files
            check(send(client, query, path), name)
        seconds = []
        for i in range(n):
            started = time.perf_counter()
            answer = send(client, query, paths[i % len(paths)])
            seconds.append(time.perf_counter() - started)
            check(answer, name)
        ms = 1000 * np.asarray(seconds)
        found[name] = {"n": n, "p50_ms": float(np.median(ms)), "p95_ms": float(np.percentile(ms, 95))}
        print(f"{name:32s} in process  p50 {found[name]['p50_ms']:7.2f} ms  p95 {found[name]['p95_ms']:7.2f}")
    return found


def run_cells(r: dict) -> Iterator[tuple[str, str, dict, list[str]]]:
    """(query, connections, run, table cells) of every run, the cells as the result tables show them."""
    for name, runs in r["runs"].items():
        for connections, run in runs.items():
            errors = run["non_2xx"] + run["socket_errors"]
            figures = [f"{run[key]:.1f}" for key in ("requests_per_s", "p50_ms", "p95_ms", "p99_ms")]
            yield name, connections, run, [name, connections, *figures, str(errors)]


def markdown(r: dict) -> str:
    if "in_process" in r:
        lines = [
            f"# In process (Flask's test client, no HTTP): {r['n_spectra']} spectra "
            f"on {r.get('database', 'sqlite')}",
            "",
            f"Run {r['when']} on {r['machine']}; sequential requests, cycling through archive spectra.",
            "",
            "| query | requests | p50 ms | p95 ms |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {name} | {run['n']} | {run['p50_ms']:.2f} | {run['p95_ms']:.2f} |"
            for name, run in r["in_process"].items()
        ]
        return "\n".join(lines + [""])
    lines = [
        f"# Serving under load: {r['n_spectra']} spectra on {r.get('database', 'sqlite')}, "
        f"{r['workers']} gunicorn workers",
        "",
        f"Run {r['when']} on {r['machine']}; wrk, {r['duration_s']} s per run, client and server on one "
        "machine.",
        "",
        "| query | connections | req/s | p50 ms | p95 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(cells) + " |" for _, _, _, cells in run_cells(r)]
    lines += ["", rss_line(r), ""]
    return "\n".join(lines)


def rss_line(r: dict) -> str:
    sizes = ", ".join(f"{x:.0f} MB" for x in r.get("worker_rss_mb") or []) or "not found"
    return f"RSS per worker after the runs: {sizes}"


if __name__ == "__main__":
    main()

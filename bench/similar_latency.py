"""Latency of /similar over real HTTP: a FITS upload, a CSV upload, and a request by ID.

Serves the demo archive (built or reused as bench/heldout.py does, same root) with gunicorn in a
subprocess and times N sequential requests of each kind from one client, after a few warm-up
requests: uploads of held-out MILES stars (a different star each time, written beforehand as a
FITS image with an air-wavelength WCS or as a CSV) and ``ID=`` requests for archive spectra. Every
request asks for K neighbours by the index (no DIMS). Wall-clock time from sending to having the
whole answer; the server and the client share the machine.

Usage: python bench/similar_latency.py [--n 200] [--k 10] [--miles DIR] [--workers 2]
Writes bench/results/similar_latency.json and similar_latency.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.heldout import WRITERS, build_demo, gunicorn, heldout_stars, miles_dir_default  # noqa: E402

WARM_UP = 5


def timed(request: Callable[[], requests.Response], n: int) -> list[float]:
    """Seconds of each of n calls (after WARM_UP untimed ones); any non-200 answer stops the run."""
    seconds = []
    for i in range(WARM_UP + n):
        started = time.perf_counter()
        response = request()
        elapsed = time.perf_counter() - started
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {response.text[:500]}")
        if i >= WARM_UP:
            seconds.append(elapsed)
    return seconds


def summary(seconds: list[float], size: float | None = None) -> dict:
    ms = 1000 * np.asarray(seconds)
    result = {
        "n": len(ms),
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "mean_ms": float(ms.mean()),
        "max_ms": float(ms.max()),
    }
    if size is not None:
        result["mean_upload_bytes"] = size
    return result


def uploads(
    session: requests.Session, url: str, paths: list[Path], k: int
) -> Callable[[], requests.Response]:
    """A request maker that uploads the next file of ``paths`` each call (round robin)."""
    counter = iter(range(10**9))

    def send() -> requests.Response:
        path = paths[next(counter) % len(paths)]
        return session.post(f"{url}/similar", files={"FILE": (path.name, path.read_bytes())}, data={"K": k})

    return send


def by_id(session: requests.Session, url: str, dids: list[str], k: int) -> Callable[[], requests.Response]:
    counter = iter(range(10**9))

    def send() -> requests.Response:
        did = dids[next(counter) % len(dids)]
        return session.get(f"{url}/similar", params={"ID": did, "K": k})

    return send


def archive_dids(url: str, n: int) -> list[str]:
    response = requests.get(
        f"{url}/tap/sync",
        params={
            "LANG": "ADQL",
            "QUERY": f"SELECT TOP {n} obs_publisher_did FROM ivoa.obscore",
            "RESPONSEFORMAT": "csv",
        },
        timeout=60,
    )
    response.raise_for_status()
    return [line.strip() for line in response.text.splitlines()[1:] if line.strip()]


def markdown(result: dict) -> str:
    lines = [
        "# /similar latency",
        "",
        f"{result['n']} sequential requests of each kind (after {WARM_UP} warm-up), K = {result['k']}, "
        f"index search, against the demo archive ({result['n_spectra']} spectra) served by gunicorn "
        f"({result['workers']} workers x 4 threads) on the same machine ({result['machine']}). "
        f"Run {result['when']}.",
        "",
        "| request | p50 (ms) | p95 (ms) | mean (ms) | max (ms) |",
        "|---|---|---|---|---|",
    ]
    for name, r in result["requests"].items():
        lines.append(
            f"| {name} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['mean_ms']:.1f} | {r['max_ms']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=200, help="timed requests of each kind")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--miles", type=Path, default=miles_dir_default())
    parser.add_argument("--root", type=Path, default=REPO / "var" / "bench-heldout")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()

    build = build_demo(args.root)
    stars = heldout_stars(args.miles)[:50]
    results: dict[str, dict] = {}
    with (
        tempfile.TemporaryDirectory() as folder,
        gunicorn(args.root, args.workers) as url,
        requests.Session() as session,
    ):
        for fmt in ("fits", "csv"):
            suffix, write = WRITERS[fmt]
            paths = [Path(folder) / f"{star.miles_id}{suffix}" for star in stars]
            for star, path in zip(stars, paths, strict=True):
                write(path, star)
            size = float(np.mean([p.stat().st_size for p in paths]))
            seconds = timed(uploads(session, url, paths, args.k), args.n)
            results[f"{fmt.upper()} upload"] = summary(seconds, size)
        seconds = timed(by_id(session, url, archive_dids(url, 200), args.k), args.n)
        results["ID= request"] = summary(seconds)
    result = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs",
        "n": args.n,
        "k": args.k,
        "workers": args.workers,
        "n_spectra": build["n_spectra"],
        "model_version": build["model"]["model_version"],
        "requests": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "similar_latency.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "similar_latency.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()

"""Round trip of the slider explorer's decode endpoint through gunicorn: p50 and p95 (target < 100 ms).

Builds (or reuses) the demo archive, serves it with `latentvo serve`, and POSTs latent vectors - an
archive spectrum's, with one dimension moved as a slider would move it - to /explore/decode one
after another over a kept-alive connection, as a page does.

Usage: python bench/decode_latency.py [--root DIR] [--n 500]
Writes bench/results/decode_latency.json and decode_latency.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.heldout import build_demo, gunicorn  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", type=Path, default=REPO / "var" / "bench-heldout")
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    build = build_demo(args.root)
    latent_dim = int(build["model"]["latent_dim"])
    rng = np.random.default_rng(0)
    times = []
    with gunicorn(args.root, workers=2) as url, requests.Session() as session:
        for i in range(args.n + 20):
            z = rng.normal(0, 1, latent_dim)
            z[i % latent_dim] = np.sin(i / 10) * 2  # a slider sweeping
            started = time.perf_counter()
            response = session.post(f"{url}/explore/decode", json={"z": z.tolist()}, timeout=30)
            elapsed = time.perf_counter() - started
            response.raise_for_status()
            if i >= 20:  # warm-up left out
                times.append(elapsed * 1000)
    result = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "n": len(times),
        "latent_dim": latent_dim,
        "n_pixels": len(response.json()["flux"]),
        "p50_ms": float(np.percentile(times, 50)),
        "p95_ms": float(np.percentile(times, 95)),
        "max_ms": float(np.max(times)),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "decode_latency.json").write_text(json.dumps(result, indent=2))
    text = (
        "# /explore/decode round trip\n\n"
        f"{result['n']} sequential POSTs through gunicorn (2 workers), demo model ({latent_dim} dims, "
        f"{result['n_pixels']} pixels), run {result['when']}: p50 **{result['p50_ms']:.1f} ms**, "
        f"p95 **{result['p95_ms']:.1f} ms**, max {result['max_ms']:.1f} ms (target < 100 ms).\n"
    )
    (args.out / "decode_latency.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()

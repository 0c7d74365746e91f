"""The map page at 10^5 points: how long the map takes to load and how fast it redraws.

Builds (or reuses) the demo archive, copies it, and adds synthetic catalogue rows to the copy until
it holds ``--n`` spectra on the map (spectrum, ml.latent and ml.map rows with labels drawn from the
demo's own ranges; no files behind them, which the map never reads). Serves the copy with
`latentvo serve` and measures, with headless Chromium (Playwright, the system's chromium):

- GET /explore/map: server time and bytes (median of 5);
- the map page, from navigation to every point drawn (median of 3 fresh page loads);
- a redraw while zooming (wheel step; a fixed random 25,000 of the points while the map moves),
  a redraw of every point (as when it rests) and a recolouring, each waited for (one pixel read back), and a
  hover lookup, in the page (median of 50; hover: mean of 50).

Headless Chromium renders WebGL in software (SwiftShader), so redraw times are an upper bound of
what a desktop browser with a GPU shows.

Usage: python bench/map_load.py [--root DIR] [--n 100000]
Writes bench/results/map_load.json and map_load.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.heldout import DEMO_CONFIG, build_demo, gunicorn  # noqa: E402
from service.archive import Archive, utc_now  # noqa: E402
from service.config import load_config  # noqa: E402

#: Waits until the first drawing is on the canvas (reading a pixel back waits for the GL queue).
DRAWN = """() => {
  const s = window.latentvoMap.scatter;
  s.gl.readPixels(0, 0, 1, 1, s.gl.RGBA, s.gl.UNSIGNED_BYTE, new Uint8Array(4));
}"""

IN_PAGE = """async () => {
  const s = window.latentvoMap.scatter;
  const pixel = new Uint8Array(4);  // reading one pixel waits for the drawing to finish
  const timed = (f, count) => {
    const t = [];
    for (let i = 0; i < 50; i++) {
      const t0 = performance.now();
      f(i); s.drawNow(count); s.gl.readPixels(0, 0, 1, 1, s.gl.RGBA, s.gl.UNSIGNED_BYTE, pixel);
      t.push(performance.now() - t0);
    }
    t.sort((a, b) => a - b); return t[25];
  };
  const zoom = timed((i) => s.zoom(i % 2 ? 1 / 1.05 : 1.05, 400, 300), 25000);
  const full = timed(() => {});
  const t0 = performance.now();
  for (let i = 0; i < 50; i++) s.nearest(200 + i, 250 + i);
  const hover = (performance.now() - t0) / 50;
  const select = document.getElementById('colour-by');
  const names = Array.from(select.options).map((o) => o.value);
  const recolour = timed((i) => {
    select.value = names[i % names.length]; select.dispatchEvent(new Event('change'));
  });
  return { zoom, full, hover, recolour };
}"""


def grow(root: Path, target: Path, n: int) -> int:
    """Copy the archive at ``root`` to ``target`` and add synthetic mapped spectra up to ``n``."""
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(root, target, ignore=shutil.ignore_patterns("jobs", "*.log"))
    archive = Archive.from_config(load_config(DEMO_CONFIG, {"archive": {"root": str(target)}}, environ={}))
    version = archive.current_model()["model_version"]
    real = archive.db.execute("SELECT * FROM spectrum LIMIT 1").fetchone()
    have = archive.count()
    extra = n - have
    rng = np.random.default_rng(1)
    teff = rng.uniform(3500, 12000, extra)
    logg = rng.uniform(0.5, 5.0, extra)
    feh = rng.normal(-0.2, 0.4, extra)
    rows = []
    for i in range(extra):
        row = dict(real)
        row.pop("row_id")
        row.update(
            obs_publisher_did=f"{real['obs_publisher_did']}_synthetic_{i:07d}",
            obs_id=f"synthetic_{i:07d}",
            obs_collection="synthetic",
            target_name=f"SYN {i:07d}",
            teff=float(teff[i]),
            logg=float(logg[i]),
            feh=float(feh[i]),
            ingested_at=utc_now(),
        )
        rows.append(row)
    archive.upsert_spectra(rows)
    start = archive.db.execute("SELECT MAX(row_index) FROM ml_latent WHERE model_version = ?", (version,))
    first = start.fetchone()[0] + 1
    xy = np.column_stack(
        [np.log10(teff) * 8 + rng.normal(0, 0.2, extra), logg + feh + rng.normal(0, 0.2, extra)]
    )
    with archive.transaction() as conn:
        conn.executemany(
            "INSERT INTO ml_latent (obs_publisher_did, model_version, row_index, recon_error, anomaly_score) "
            "VALUES (?, ?, ?, ?, ?)",
            (
                (r["obs_publisher_did"], version, first + i, 0.01, float(rng.normal()))
                for i, r in enumerate(rows)
            ),
        )
        conn.executemany(
            "INSERT INTO ml_map (model_version, method, obs_publisher_did, row_index, x, y) "
            "VALUES (?, 'pca', ?, ?, ?, ?)",
            (
                (version, r["obs_publisher_did"], first + i, float(xy[i, 0]), float(xy[i, 1]))
                for i, r in enumerate(rows)
            ),
        )
    total = archive.db.execute(
        "SELECT COUNT(*) FROM ml_map WHERE model_version = ? AND method = 'pca'", (version,)
    ).fetchone()[0]
    archive.close()
    return total


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", type=Path, default=REPO / "var" / "bench-heldout")
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    build_demo(args.root)
    big = args.root.parent / f"{args.root.name}-map-{args.n}"
    points = grow(args.root, big, args.n)
    with gunicorn(big, workers=2) as url, sync_playwright() as playwright:
        endpoint, size = [], 0
        for _ in range(5):
            started = time.perf_counter()
            response = requests.get(f"{url}/explore/map", timeout=120)
            endpoint.append(time.perf_counter() - started)
            size = len(response.content)
            assert response.json()["n"] == points
        browser = playwright.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
        loads, in_page = [], {}
        for _ in range(3):
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            page = context.new_page()
            started = time.perf_counter()
            page.goto(f"{url}/explore")
            page.wait_for_selector("body[data-map-ready='true']", timeout=300_000)
            page.evaluate(DRAWN)
            loads.append(time.perf_counter() - started)
            assert page.evaluate("window.latentvoMap.drawn()") == points
            in_page = page.evaluate(IN_PAGE)
            context.close()
        browser.close()
    result = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "points": points,
        "map_json_bytes": size,
        "map_json_s": float(np.median(endpoint)),
        "page_ready_s": float(np.median(loads)),
        "page_ready_all_s": loads,
        "zoom_redraw_ms": in_page["zoom"],
        "full_redraw_ms": in_page["full"],
        "hover_lookup_ms": in_page["hover"],
        "recolour_ms": in_page["recolour"],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "map_load.json").write_text(json.dumps(result, indent=2))
    text = (
        f"# Map page at {points} points\n\n"
        f"Run {result['when']} (`python bench/map_load.py --n {args.n}`), gunicorn with 2 workers, "
        "headless Chromium (software WebGL):\n\n"
        f"| what | median |\n|---|---|\n"
        f"| GET /explore/map ({size / 1e6:.1f} MB JSON) | {result['map_json_s']:.2f} s |\n"
        f"| page load to every point drawn | {result['page_ready_s']:.2f} s |\n"
        f"| redraw on a zoom step (moving: 25,000 points) | {result['zoom_redraw_ms']:.1f} ms |\n"
        f"| redraw of every point (once the map rests) | {result['full_redraw_ms']:.1f} ms |\n"
        f"| hover lookup (nearest point) | {result['hover_lookup_ms']:.1f} ms |\n"
        f"| recolour by another label | {result['recolour_ms']:.1f} ms |\n"
    )
    (args.out / "map_load.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()

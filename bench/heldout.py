"""Held-out MILES stars through /similar: do an upload's neighbours have the star's temperature?

Builds (or reuses) the demo archive with ``latentvo demo --no-serve`` (resources/demo/demo.toml;
root var/bench-heldout), serves it with ``latentvo serve`` (gunicorn) in a subprocess, and uploads
every MILES star that is NOT in the demo sample (785 of 985) to ``/similar`` as a file a user would
write (a FITS image with a linear air-wavelength WCS, or a CSV of vacuum wavelength and flux), for
each K asked. A star counts as a hit when the median catalogue Teff of its K neighbours is within
300 K of its own. Reports the hit fraction (target >= 80 %) overall and by Teff range, the median
|dTeff|, and the same for log g and [Fe/H] as context.

Usage: python bench/heldout.py [--miles DIR] [--k 5 10] [--format fits|csv] [--rebuild]
Writes bench/results/heldout.json and heldout.md.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import requests
from astropy.io import fits
from astropy.io.votable import parse

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from model.spectrum import air_to_vacuum  # noqa: E402

DEMO_DIR = REPO / "resources" / "demo"
DEMO_CONFIG = DEMO_DIR / "demo.toml"
TEFF_TOLERANCE = 300.0
TARGET = 0.80
#: Teff ranges of the breakdown, K (lower edge inclusive).
TEFF_BINS = (0, 4000, 5000, 6000, 7500, 10000, 20000, 1e6)


# -- the stars and the files a user would upload --------------------------------------------------


@dataclass
class MilesStar:
    miles_id: str
    name: str
    teff: float
    logg: float
    feh: float
    wave_air: np.ndarray  # Angstrom, air, linear 0.9 A steps
    flux: np.ndarray


def miles_dir_default() -> Path:
    return Path(os.environ.get("LATENTVO_MILES_DIR", REPO.parent / "shared" / "data" / "miles"))


def heldout_stars(miles_dir: Path, demo_file: Path = DEMO_DIR / "miles_demo.fits") -> list[MilesStar]:
    """Every star of the MILES library that the demo sample (and so the demo archive) leaves out."""
    with fits.open(demo_file) as hdus:
        in_demo = {str(m).strip() for m in hdus["SPECTRA"].data["miles_id"]}
    with fits.open(Path(miles_dir) / "miles_spectra.fits") as hdus:
        table = hdus["SPECTRA"].data
        wave = np.asarray(hdus["WAVELENGTH"].data["wavelength"], np.float64)
        return [
            MilesStar(
                str(row["miles_id"]).strip(),
                str(row["name"]).strip(),
                float(row["teff"]),
                float(row["logg"]),
                float(row["feh"]),
                wave,
                np.asarray(row["flux"], np.float64),
            )
            for row in table
            if str(row["miles_id"]).strip() not in in_demo
        ]


def write_fits_image(path: Path, star: MilesStar) -> None:
    """A 1-D FITS image with a linear air-wavelength WCS (CTYPE1 = AWAV), as MILES distributes stars."""
    step = (star.wave_air[-1] - star.wave_air[0]) / (len(star.wave_air) - 1)
    image = fits.PrimaryHDU(star.flux.astype(np.float32))
    header = image.header
    header["CTYPE1"] = ("AWAV", "air wavelength")
    header["CUNIT1"] = "Angstrom"
    header["CRPIX1"] = 1.0
    header["CRVAL1"] = float(star.wave_air[0])
    header["CDELT1"] = float(step)
    header["OBJECT"] = star.name
    image.writeto(path, overwrite=True)


def write_csv(path: Path, star: MilesStar) -> None:
    """A plain CSV of vacuum wavelength and flux, what a user exports from a notebook."""
    write_flux_csv(path, air_to_vacuum(star.wave_air), star.flux)


def write_flux_csv(path: Path, wave: np.ndarray, flux: np.ndarray) -> Path:
    """Columns wavelength (Å) and flux, every value written exactly."""
    buffer = io.StringIO()
    buffer.write("wavelength,flux\n")
    for w, f in zip(wave, flux, strict=True):
        buffer.write(f"{float(w)!r},{float(f)!r}\n")
    path.write_text(buffer.getvalue())
    return path


WRITERS: dict[str, tuple[str, Callable[[Path, MilesStar], None]]] = {
    "fits": (".fits", write_fits_image),
    "csv": (".csv", write_csv),
}


# -- the demo archive and its server --------------------------------------------------------------


def build_demo(root: Path, rebuild: bool = False) -> dict:
    """`latentvo demo --no-serve --root ROOT`: build the demo archive, or reuse it when complete."""
    from service.archive import Archive
    from service.config import load_config

    command = [sys.executable, "-m", "service.cli", "--quiet", "demo", "--no-serve", "--root", str(root)]
    started = time.perf_counter()
    done = subprocess.run(command + ["--rebuild"] * rebuild, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"latentvo demo failed:\n{done.stdout[-2000:]}{done.stderr[-3000:]}")
    archive = Archive.from_config(load_config(DEMO_CONFIG, {"archive": {"root": str(root)}}, environ={}))
    record = dict(archive.current_model())
    n_spectra = archive.count("spectrum")
    archive.close()
    return {
        "built": "already built" not in done.stdout,
        "build_s": time.perf_counter() - started,
        "model": record,
        "n_spectra": n_spectra,
    }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def gunicorn(root: Path, workers: int = 2, log_path: Path | None = None) -> Iterator[str]:
    """`latentvo --config demo.toml serve` (gunicorn) over the archive at ``root``; yields the base URL.

    The server's log goes to ``log_path`` when given (else to a temporary file).
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "service.cli", "--config", str(DEMO_CONFIG), "serve"]
    command += ["--port", str(port), "--workers", str(workers)]
    env = os.environ | {"LATENTVO_ARCHIVE_ROOT": str(root)}
    with open(log_path, "w+b") if log_path else tempfile.TemporaryFile() as log:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=log)
        try:
            wait_until_available(url, process, log)
            yield url
        finally:
            process.terminate()
            process.wait(timeout=30)


def wait_until_available(url: str, process: subprocess.Popen, log, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"the server exited:\n{log.read().decode(errors='replace')[-3000:]}")
        try:
            if requests.get(f"{url}/datalink/availability", timeout=5).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the server at {url} did not answer within {timeout:.0f} s")


# -- one upload -----------------------------------------------------------------------------------


def similar(session: requests.Session, url: str, path: Path, k: int) -> tuple[list[dict], dict]:
    """POST one file to /similar; the rows (teff, logg, feh, distance, DID) and the PARAMs, with the
    values of its INFO name="warning" (why the answer is weak: ``ood``, ``labels``) as "warnings"."""
    with path.open("rb") as handle:
        response = session.post(
            f"{url}/similar", files={"FILE": (path.name, handle)}, data={"K": k}, timeout=60
        )
    if response.status_code != 200:
        raise RuntimeError(f"{path.name}: HTTP {response.status_code}: {response.text[:500]}")
    document = parse(io.BytesIO(response.content))
    table = document.get_first_table()
    names = ("obs_publisher_did", "distance", "teff", "logg", "feh")
    rows = [{n: (None if np.ma.is_masked(row[n]) else row[n]) for n in names} for row in table.array]
    warnings = [i.value for i in document.resources[0].infos if i.name == "warning"]
    return rows, {p.name: p.value for p in table.params} | {"warnings": warnings}


# -- scoring --------------------------------------------------------------------------------------


def score(stars: list[MilesStar], answers: list[list[dict]]) -> dict:
    """Hit fraction (median neighbour Teff within 300 K), |dTeff| percentiles, and the Teff breakdown."""
    truth = np.array([s.teff for s in stars])
    known = np.isfinite(truth)
    median = {
        name: np.array(
            [np.nanmedian([np.nan if r[name] is None else r[name] for r in rows]) for rows in answers]
        )
        for name in ("teff", "logg", "feh")
    }
    error = np.abs(median["teff"] - truth)
    hits = error <= TEFF_TOLERANCE
    result = {
        "n_stars": int(known.sum()),
        "n_without_teff": int((~known).sum()),
        "hit_fraction": float(hits[known].mean()),
        "median_abs_dteff_K": float(np.median(error[known])),
        "p90_abs_dteff_K": float(np.percentile(error[known], 90)),
        "median_abs_dteff_over_teff": float(np.median(error[known] / truth[known])),
        "median_abs_dlogg": float(np.nanmedian(np.abs(median["logg"] - [s.logg for s in stars]))),
        "median_abs_dfeh": float(np.nanmedian(np.abs(median["feh"] - [s.feh for s in stars]))),
        "by_teff": [],
    }
    for low, high in zip(TEFF_BINS[:-1], TEFF_BINS[1:], strict=True):
        chosen = known & (truth >= low) & (truth < high)
        if chosen.any():
            result["by_teff"].append(
                {
                    "teff_range_K": [low, high if high < 1e6 else None],
                    "n": int(chosen.sum()),
                    "hit_fraction": float(hits[chosen].mean()),
                    "median_abs_dteff_K": float(np.median(error[chosen])),
                }
            )
    return result


def markdown(result: dict) -> str:
    lines = [
        "# Held-out MILES stars through /similar",
        "",
        f"{result['n_uploaded']} MILES stars not in the demo archive, each uploaded to `/similar` as a "
        f"{result['format']} file; a hit when the median catalogue Teff of the K neighbours is within "
        f"{TEFF_TOLERANCE:.0f} K of the star's (target {TARGET:.0%}). Demo archive: "
        f"{result['archive']['n_spectra']} spectra, model version {result['archive']['model_version']} "
        f"({result['archive']['latent_dim']} latent dims). Run {result['when']}.",
        "",
        "| K | hit fraction | median abs dTeff (K) | 90th pct (K) | median dTeff/Teff | median abs dlogg "
        "| median abs d[Fe/H] | upload time p50 (ms) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for k, r in result["by_k"].items():
        lines.append(
            f"| {k} | {r['hit_fraction']:.1%} | {r['median_abs_dteff_K']:.0f} | {r['p90_abs_dteff_K']:.0f} "
            f"| {r['median_abs_dteff_over_teff']:.1%} | {r['median_abs_dlogg']:.2f} "
            f"| {r['median_abs_dfeh']:.2f} | {r['request_ms_p50']:.0f} |"
        )
    for k, r in result["by_k"].items():
        lines += [
            "",
            f"## By Teff, K = {k}",
            "",
            "| Teff (K) | stars | hit fraction | median abs dTeff (K) |",
        ]
        lines.append("|---|---|---|---|")
        for b in r["by_teff"]:
            low, high = b["teff_range_K"]
            span = f"{low:.0f}-{high:.0f}" if high else f">= {low:.0f}"
            lines.append(f"| {span} | {b['n']} | {b['hit_fraction']:.1%} | {b['median_abs_dteff_K']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--miles", type=Path, default=miles_dir_default())
    parser.add_argument("--k", type=int, nargs="+", default=[5, 10])
    parser.add_argument("--format", choices=sorted(WRITERS), default="fits")
    parser.add_argument("--root", type=Path, default=REPO / "var" / "bench-heldout")
    parser.add_argument("--rebuild", action="store_true", help="build the demo archive again")
    parser.add_argument("--limit", type=int, default=0, help="upload only the first N stars (0 = all)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()

    build = build_demo(args.root, args.rebuild)
    print(
        f"demo archive {'built' if build['built'] else 'reused'} in {build['build_s']:.0f} s at {args.root}"
    )
    stars = heldout_stars(args.miles)
    stars = stars[: args.limit] if args.limit else stars
    suffix, write = WRITERS[args.format]
    by_k: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as folder, gunicorn(args.root) as url, requests.Session() as session:
        paths = []
        for star in stars:
            paths.append(Path(folder) / f"{star.miles_id}{suffix}")
            write(paths[-1], star)
        for k in args.k:
            answers, seconds, coverage = [], [], []
            for path in paths:
                started = time.perf_counter()
                rows, params = similar(session, url, path, k)
                seconds.append(time.perf_counter() - started)
                answers.append(rows)
                coverage.append(float(params["coverage"]))
            by_k[str(k)] = score(stars, answers) | {
                "request_ms_p50": 1000 * float(np.median(seconds)),
                "request_ms_p95": 1000 * float(np.percentile(seconds, 95)),
                "min_coverage": float(np.min(coverage)),
            }
            print(f"K={k}: hit fraction {by_k[str(k)]['hit_fraction']:.1%} over {len(stars)} stars")
    model = build["model"]
    result = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "format": args.format,
        "n_uploaded": len(stars),
        "tolerance_K": TEFF_TOLERANCE,
        "target": TARGET,
        "archive": {
            # Relative to the repository when inside it, so results carry no machine paths.
            "root": str(Path(args.root).resolve().relative_to(REPO))
            if Path(args.root).resolve().is_relative_to(REPO)
            else Path(args.root).name,
            "n_spectra": build["n_spectra"],
            "model_version": model["model_version"],
            "latent_dim": model["latent_dim"],
            "built_now": build["built"],
            "build_s": build["build_s"],
        },
        "by_k": by_k,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "heldout.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "heldout.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()

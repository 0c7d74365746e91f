"""Where encoding spends its time: each part of ``latentvo encode`` on its own, per spectrum.

Runs on an archive that ``make bench`` kept (``--root``): reads the first N archive spectra in
file order, then times reading, preparing on the model's grid, the model (encoder and the one
rest-frame decoder pass) at several batch sizes, and the velocity (the spectrum on the fine grid
and the cross-correlation against its reconstruction). The floor that bounds encoding on this
machine is the model's forward pass; the sum of the parts is what one process can reach.

Usage: python bench/encode.py [--root var/bench-pipeline/archive] [--n 4096]
Writes bench/results/encode.json and encode.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from itertools import islice
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from model.api import ENCODE_BATCH, LatentModel  # noqa: E402
from model.preprocess import prepare_many  # noqa: E402
from model.velocity import against_reconstructions, on_fine_grid  # noqa: E402
from service.archive import Archive  # noqa: E402
from service.config import load_config  # noqa: E402
from service.pipeline import load_spectra  # noqa: E402

BATCH_SIZES = (16, 64, 256, 1024)


def per_second(n: int, run) -> float:
    """Spectra per second of ``run`` (the better of two runs: the first pays for FFT plans and caches)."""
    best = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t0)
    return round(n / best, 1)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", default=REPO / "var" / "bench-pipeline" / "archive")
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--out", default=REPO / "bench" / "results")
    args = parser.parse_args()
    config = load_config(environ={}, overrides={"archive": {"root": str(args.root)}})
    archive = Archive.from_config(config)
    model = LatentModel(archive.model_dir(archive.model(None)["model_version"]))
    rows = archive.spectra(columns="obs_publisher_did, source_path, source_index")[: args.n]
    n = len(rows)

    def read():
        return [spectrum for _, spectrum in islice(load_spectra(rows), n)]

    spectra = read()
    flux, good, *_ = prepare_many(spectra, model.grid, model.matching)
    encoded = model.encode_arrays(flux, good)
    result = {
        "n_spectra": n,
        "machine": f"{platform.system()} {platform.machine()}, {torch.get_num_threads()} torch threads",
        "parts_per_second": {
            "read": per_second(n, read),
            "prepare (model grid)": per_second(n, lambda: prepare_many(spectra, model.grid, model.matching)),
            "model": per_second(n, lambda: model.encode_arrays(flux, good)),
            "fine grid (velocity)": per_second(
                n, lambda: [on_fine_grid(s, model.grid, model.matching) for s in spectra]
            ),
            "velocity (fine grid + correlation)": per_second(
                n, lambda: against_reconstructions(spectra, encoded.rest, model.grid, model.matching)
            ),
        },
        "model_by_batch": {
            str(size): per_second(n, lambda size=size: model.encode_arrays(flux, good, batch_size=size))
            for size in BATCH_SIZES
        },
        "encode_batch": ENCODE_BATCH,
    }
    parts = result["parts_per_second"]
    serial = ("read", "prepare (model grid)", "model", "velocity (fine grid + correlation)")
    result["one_process_per_second"] = round(1 / sum(1 / parts[p] for p in serial), 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "encode.json").write_text(json.dumps(result, indent=2))
    (out / "encode.md").write_text(markdown(result))
    print(markdown(result))


def markdown(r: dict) -> str:
    lines = [
        f"# Encoding, part by part: {r['n_spectra']} archive spectra ({r['machine']})",
        "",
        "| part | spectra/s |",
        "|---|---|",
    ]
    lines += [f"| {name} | {rate} |" for name, rate in r["parts_per_second"].items()]
    lines += [
        f"| **all parts in one process** | **{r['one_process_per_second']}** |",
        "",
        f"The model (encoder + one decoder pass) by batch size; encode uses {r['encode_batch']}:",
        "",
        "| batch | spectra/s |",
        "|---|---|",
    ]
    lines += [f"| {size} | {rate} |" for size, rate in r["model_by_batch"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

"""The similarity index as the archive grows: build time, size, recall and query time against N,
extrapolated to 10^7 and 10^8 spectra.

Takes the latent means of an archive's model in service (``--root``, e.g. the 10^6-spectrum archive
``bench/pipeline.py --keep`` leaves) and builds the index the way ``latentvo index`` does (Annoy over
the similarity dimensions, tuned to the configured recall) on the first N rows for each ``--sizes``
value. Sizes beyond the archive are made from its rows with a small jitter (1% of each dimension's
spread), so they keep the archive's distribution without repeating points exactly. The fit
(``seconds ∝ N^b``, size linear in N) is extrapolated to 10^7 and 10^8 rows and set against this
machine's memory.

Usage: python bench/index_scale.py --root DIR [--sizes 100000 300000 1000000 3000000]
Writes bench/results/index_scale.json and index_scale.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.report import machine  # noqa: E402
from model.api import LatentModel  # noqa: E402
from model.similarity import LatentIndex  # noqa: E402
from service.archive import Archive  # noqa: E402
from service.config import load_config  # noqa: E402

EXTRAPOLATE_TO = (10_000_000, 100_000_000)


def latents_of(root: Path) -> tuple[np.ndarray, list[int], dict]:
    config = load_config(environ={}, overrides={"archive": {"root": str(root)}})
    archive = Archive.from_config(config, readonly=True)
    model = LatentModel(archive.model_dir(archive.current_model()["model_version"]))
    return np.asarray(model.latents, dtype=np.float32), list(model.similarity_dims), config["index"]


def grown(latents: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` rows: the archive's own, then jittered copies of them."""
    if n <= len(latents):
        return latents[:n]
    rng = np.random.default_rng(seed)
    spread = latents.std(axis=0) * 0.01
    extra = latents[rng.integers(0, len(latents), n - len(latents))]
    extra = extra + rng.normal(size=extra.shape).astype(np.float32) * spread
    return np.concatenate([latents, extra.astype(np.float32, copy=False)])


def measure(latents: np.ndarray, dims: list[int], section: dict, n: int, work: Path) -> dict:
    rows = grown(latents, n)
    path = work / f"index-{n}.ann"
    started = time.perf_counter()
    index = LatentIndex.build(
        rows, dims, path, k=section["k"], target_recall=section["target_recall"], n_queries=200
    )
    seconds = time.perf_counter() - started
    meta = index.meta
    result = {
        "n": n,
        "build_s": round(seconds, 2),
        "file_mb": round(path.stat().st_size / 2**20, 1),
        "n_trees": meta.n_trees,
        "search_k": meta.search_k,
        "recall_at_10": round(meta.recall_at_k, 4),
        "query_ms": round(meta.query_ms, 3),
    }
    path.unlink()
    path.with_suffix(".json").unlink(missing_ok=True)
    print(result, flush=True)
    return result


def extrapolate(runs: list[dict]) -> dict:
    n = np.array([r["n"] for r in runs], dtype=float)
    slope, intercept = np.polyfit(np.log(n), np.log([max(r["build_s"], 0.01) for r in runs]), 1)
    per_row_mb = np.polyfit(n, [r["file_mb"] for r in runs], 1)
    return {
        "build_exponent": round(float(slope), 3),
        "at": {
            str(target): {
                "build_min": round(float(np.exp(intercept) * target**slope) / 60, 1),
                "file_gb": round(float(np.polyval(per_row_mb, target)) / 1024, 2),
            }
            for target in EXTRAPOLATE_TO
        },
    }


def memory_gb() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


def markdown(result: dict) -> str:
    lines = [
        f"# The similarity index against N ({result['dims']} similarity dimensions)",
        "",
        f"Run on {result['machine']}; rows beyond {result['archive_rows']:,} are jittered copies of the "
        "archive's own.",
        "",
        "| N | build s | file MB | n_trees | search_k | recall@10 | query ms |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {r['n']:,} | {r['build_s']} | {r['file_mb']} | {r['n_trees']} | {r['search_k']} | "
            f"{r['recall_at_10']} | {r['query_ms']} |"
            for r in result["runs"]
        ),
        "",
        f"Build time grows as N^{result['extrapolation']['build_exponent']}. Extrapolated:",
        "",
        "| N | build min | index GB | mean + variance matrices GB | RAM GB here |",
        "|---|---|---|---|---|",
    ]
    for target, figures in result["extrapolation"]["at"].items():
        matrices = int(target) * result["latent_dim"] * 4 * 2 / 2**30
        lines.append(
            f"| {int(target):,} | {figures['build_min']} | {figures['file_gb']} | {matrices:.1f} | "
            f"{result['memory_gb']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", type=Path, required=True, help="archive root with a model in service")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000, 1_000_000, 3_000_000])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    latents, dims, section = latents_of(args.root)
    with tempfile.TemporaryDirectory(prefix="latentvo-index-scale-", dir=args.root) as folder:
        runs = [measure(latents, dims, section, n, Path(folder)) for n in args.sizes]
    result = {
        "machine": machine(),
        "archive_rows": len(latents),
        "latent_dim": latents.shape[1],
        "dims": len(dims),
        "memory_gb": memory_gb(),
        "runs": runs,
        "extrapolation": extrapolate(runs),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "index_scale.json").write_text(json.dumps(result, indent=2))
    (args.out / "index_scale.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()

"""``latentvo`` command line: one verb per pipeline stage, plus ``demo``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from service import __version__, pipeline
from service.archive import Archive
from service.config import ConfigError, load_config
from service.storage import DatabaseError, close_connections

DEMO_DIR = Path(__file__).resolve().parents[1] / "resources" / "demo"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="latentvo", description=__doc__)
    parser.add_argument("--version", action="version", version=f"latentvo {__version__}")
    parser.add_argument("--config", help="site configuration file (TOML); default $LATENTVO_CONFIG")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = verbs.add_parser("ingest", help="put spectra and labels into the archive")
    p.add_argument("paths", nargs="+", metavar="PATH", help="spectrum files or directories")
    p.add_argument("--labels", help="table of labels keyed by identifier (ECSV, CSV, VOTable, FITS)")
    p.add_argument("--collection", help="obs_collection for these spectra (default from config)")
    add_dask_option(p)

    verbs.add_parser("train", help="train a new model version on the archive")
    for verb, text in (
        ("encode", "latent vectors of every spectrum"),
        ("analyse", "informative dimensions, label mutual information, anomaly scores"),
        ("index", "build the similarity index and put the version in service"),
    ):
        p = verbs.add_parser(verb, help=text)
        p.add_argument("--model-version", type=int, help="default: the newest version")
        if verb in ("encode", "analyse"):
            add_dask_option(p)

    p = verbs.add_parser(
        "copy-database",
        help="copy the archive database to another (a SQLite archive moving to PostgreSQL)",
        description="Copies every table of the configured archive database into TARGET (a PostgreSQL URL "
        "or a SQLite file name in the archive root), which must hold no spectra, in one transaction. "
        "The model files stay under the archive root: afterwards set [archive] database to TARGET.",
    )
    p.add_argument("--to", required=True, metavar="TARGET", help="postgresql://user@host/db or a file name")

    p = verbs.add_parser("serve", help="serve the archive over the IVOA protocols (gunicorn)")
    add_server_options(p)

    p = verbs.add_parser("demo", help="build the bundled demo archive and serve it")
    p.add_argument("--root", help="archive directory (default from resources/demo/demo.toml)")
    p.add_argument("--rebuild", action="store_true", help="rebuild even if the demo archive exists")
    p.add_argument("--no-serve", action="store_true", help="stop after building the archive")
    add_server_options(p)
    return parser


def add_dask_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dask",
        nargs="?",
        const="",
        metavar="SCHEDULER",
        help="run on Dask: the scheduler at SCHEDULER (tcp://host:8786), or without one a LocalCluster "
        "of this machine's cores",
    )


def dask_target(args: argparse.Namespace) -> str | None | bool:
    """--dask as the stages take it: False (not asked), None (a LocalCluster) or a scheduler address."""
    return False if args.dask is None else (args.dask or None)


def add_server_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    parser.add_argument("--debug", action="store_true", help="Flask's development server instead of gunicorn")


def with_public_url(config: dict, args: argparse.Namespace) -> dict:
    """Point the public base URL at the bound port when the configured one is the default."""
    if config["service"]["base_url"] == "http://127.0.0.1:8080":
        config["service"]["base_url"] = f"http://{args.host}:{args.port}"
    return config


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        return run(args)
    except (ConfigError, LookupError, ValueError, FileNotFoundError, DatabaseError) as exc:
        print(f"latentvo {args.verb}: error: {exc}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    progress = not args.quiet
    if args.verb == "demo":
        return demo(args, progress)
    config = load_config(args.config)
    archive = Archive.from_config(config)
    if args.verb == "ingest":
        collection = args.collection or config["archive"]["default_collection"]
        summary = pipeline.ingest(archive, args.paths, args.labels, collection, progress, dask_target(args))
        print(summary)
        return 1 if summary.failed and not (summary.added or summary.updated) else 0
    if args.verb == "train":
        version = pipeline.train_model(archive, config, progress)
        row = archive.model(version)
        print(
            f"model version {version}: validation RMSE {row['recon_rmse']:.4f} "
            f"({json.loads(row['metrics'])['epochs_run']} epochs)"
        )
        return 0
    if args.verb == "encode":
        version = pipeline.encode(archive, args.model_version, progress=progress, dask=dask_target(args))
        print(f"model version {version}: encoded {archive.count('spectrum')} spectra")
        return 0
    if args.verb == "analyse":
        print_analysis(
            pipeline.analyse(archive, config, args.model_version, progress=progress, dask=dask_target(args))
        )
        return 0
    if args.verb == "serve":
        return serve(with_public_url(config, args), args)
    if args.verb == "copy-database":
        return copy_database(archive, config, args.to)
    if args.verb == "index":
        result = pipeline.build_index(archive, config, args.model_version, progress)
        print(
            f"model version {result['version']} in service: n_trees={result['n_trees']} "
            f"search_k={result['search_k']} recall@10={result['recall_at_k']:.4f}"
        )
        return 0
    raise AssertionError(args.verb)


def copy_database(archive: Archive, config: dict, location: str) -> int:
    from service.storage import describe, open_database
    from service.storage.copy import copy_database as copy

    target = open_database(location, archive.root)
    try:
        counts = copy(archive.db, target, lambda table, n: print(f"  {table}: {n} rows"))
    finally:
        target.close()
    where = describe(location)
    print(f"copied {counts['spectrum']} spectra and {counts['ml_model']} model versions to {where}")
    print(f"serve it with [archive] database = {where!r} (or LATENTVO_ARCHIVE_DATABASE) and the same root")
    return 0


def print_analysis(summary: dict) -> None:
    nan = float("nan")
    print(f"informative dimensions: {summary['informative_dims']}")
    for label, best in summary["concentration"].items():
        pca = summary["pca_concentration"].get(label, {})
        print(
            f"  {label:>8}: z{best['dim']} MI {best['mi']:.2f} nats, {best.get('gap', nan):.2f} above "
            f"the next ({best['fraction']:.0%} of total); PCA best PC{pca.get('dim')} MI "
            f"{pca.get('mi', nan):.2f}, {pca.get('gap', nan):.2f} above the next"
        )


def serve(config: dict, args: argparse.Namespace) -> int:
    from service.server import serve as run_server

    base = config["service"]["base_url"]
    Archive.from_config(config).close()  # records the public base URL that access_url is built from
    close_connections()  # gunicorn forks its workers from this process: no pooled connection may go with them
    print(f"serving {config['archive']['root']} at {base}/ :")
    for name, path in (("TAP", "/tap"), ("SSAP", "/ssa/query"), ("DataLink", "/datalink/links?ID=…")):
        print(f"  {name:8} {base}{path}")
    run_server(config, args.host, args.port, args.workers, args.debug)
    return 0


def demo(args: argparse.Namespace, progress: bool) -> int:
    """Every stage on the bundled sample, then serve it (unless --no-serve)."""
    overrides = {"archive": {"root": args.root}} if args.root else None
    config_file = args.config or DEMO_DIR / "demo.toml"
    config = with_public_url(load_config(config_file, overrides), args)
    archive = Archive.from_config(config)
    try:
        ready = not args.rebuild and archive.current_model() is not None
    except LookupError:
        ready = False
    if ready:
        print(f"demo archive already built at {archive.root} (use --rebuild to build it again)")
    else:
        started = time.perf_counter()
        print(
            pipeline.ingest(
                archive,
                [DEMO_DIR / "miles_demo.fits"],
                None,
                config["archive"]["default_collection"],
                progress,
            )
        )
        version = pipeline.train_model(archive, config, progress)
        pipeline.encode(archive, version, progress=progress)
        print_analysis(pipeline.analyse(archive, config, version, progress=progress))
        result = pipeline.build_index(archive, config, version, progress)
        print(
            f"demo archive ready in {time.perf_counter() - started:.0f} s at {archive.root}: "
            f"model version {version}, recall@10 {result['recall_at_k']:.3f}"
        )
    archive.close()
    if args.no_serve:
        return 0
    exec_serve(args, config_file, archive.root)


def exec_serve(args: argparse.Namespace, config_file: str | Path, root: Path) -> NoReturn:
    """Replace this process by ``latentvo serve`` on the archive at ``root``.

    The build has run torch in this process; gunicorn workers forked from it would hang in torch's
    thread pools. A fresh process image has never run torch, and keeps the PID, so the signals a
    user or a supervisor sends to ``latentvo demo`` reach the server.
    """
    argv = [sys.executable, "-m", "service.cli", "--config", str(config_file)]
    argv += ["--quiet"] * args.quiet + ["serve", "--host", args.host, "--port", str(args.port)]
    argv += ["--workers", str(args.workers)] + ["--debug"] * args.debug
    env = {**os.environ, "LATENTVO_ARCHIVE_ROOT": str(root.resolve())}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, env)


if __name__ == "__main__":
    sys.exit(main())

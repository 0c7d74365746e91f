"""Shared fixtures: the bundled demo sample, the MILES test sample, live servers over built archives."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def demo_dir() -> Path:
    return REPO / "resources" / "demo"


@pytest.fixture(scope="session")
def miles_dir() -> Path:
    """Eight real MILES stars in the layout of the full library, none of them in the demo archive
    (tests/data/miles/README.md). The suite needs nothing outside the repository."""
    return REPO / "tests" / "data" / "miles"


def small_config(root: Path, **overrides) -> dict:
    """A configuration that builds a complete archive from the demo sample in seconds."""
    from service.config import load_config

    settings = {
        "archive": {"root": str(root), "default_collection": "miles"},
        "grid": {"n_pixels": 256},
        "model": {
            "latent_dim": 6,
            "epochs": 15,
            "kl_warmup_epochs": 3,
            "channels": [8, 16, 16],
            "batch_size": 32,
            "augment_copies": 1,
        },
        "analysis": {"mi_subsamples": 3},
        "index": {"recall_queries": 100},
        "service": {"base_url": "http://127.0.0.1:8080"},
    }
    for section, values in overrides.items():
        settings.setdefault(section, {}).update(values)
    return load_config(environ={}, overrides=settings)


def build_archive(config: dict, files: list[Path]) -> None:
    """Every pipeline stage, as `latentvo demo` runs them."""
    from service import pipeline
    from service.archive import Archive

    archive = Archive.from_config(config)
    pipeline.ingest(archive, files, collection=config["archive"]["default_collection"], progress=False)
    version = pipeline.train_model(archive, config, progress=False)
    pipeline.encode(archive, version, progress=False)
    pipeline.analyse(archive, config, version, progress=False)
    pipeline.build_index(archive, config, version, progress=False)
    archive.close()


def free_url() -> str:
    """``http://127.0.0.1:<port>`` with a port nobody listens on (for a server's base_url)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


@contextmanager
def serving(config: dict) -> Iterator[SimpleNamespace]:
    """``create_app(config)`` served on the port of its base_url, in a thread, until the block ends."""
    import threading
    from urllib.parse import urlsplit

    from werkzeug.serving import make_server

    from service import create_app

    app = create_app(config)
    url = config["service"]["base_url"]
    server = make_server("127.0.0.1", urlsplit(url).port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield SimpleNamespace(url=url, config=config, app=app)
    finally:
        server.shutdown()


#: What resources/demo/demo.toml sets for other instruments' uploads, for archives of the demo sample.
DEMO_MATCHING = {
    "grid": {"normalise": "continuum", "resolving_power": 2000.0},
    # The continuum channels need a model trained as long as the demo's: tests/test_product.py
    # checks them on the real demo.
    "model": {"velocity_frame": "rest", "augment_instrument": True},
}


@pytest.fixture(scope="session")
def live_server(tmp_path_factory, demo_dir):
    """The real service on a free port over a freshly built demo archive (shared by the session),
    matched and trained for other instruments as the demo is (DEMO_MATCHING).

    Yields an object with ``url`` (the public base URL), ``config`` and ``app``.
    """
    settings = {section: dict(values) for section, values in DEMO_MATCHING.items()}
    config = small_config(tmp_path_factory.mktemp("served"), service={"base_url": free_url()}, **settings)
    build_archive(config, [demo_dir / "miles_demo.fits"])
    with serving(config) as served:
        yield served


#: Where the sky sample puts spectra: (ra, dec) per row; rows after these are spread over the sky.
SKY_CLUSTER = (
    (150.0, 2.0),
    (150.0, 2.003),
    (150.0, 2.006),
    (150.002, 2.0),
    (150.0, 2.012),
    (150.0, 2.05),
    (150.015, 2.0),
)
SKY_WRAP = ((359.995, -30.0), (0.004, -30.0))


def write_sky_sample(path: Path, n: int = 40, seed: int = 3) -> None:
    """Synthetic spectra (vacuum, with ivar) that carry what MILES lacks: positions, times, names, SNR.

    MILES layout (a SPECTRA table of array rows, a WAVELENGTH table): rows 0-6 sit within 0.05 deg of
    (150, +2), rows 7-8 on both sides of RA 0 at Dec -30, row 9 has no position and no time; the
    others are spread over the sky. Row i was observed at MJD 58650.125 + 20 i for 900 s.
    """
    import numpy as np
    from astropy.io import fits

    from model.synthetic import SyntheticConfig, generate, sky_positions

    wave, flux, ivar, labels = next(generate(n, seed, SyntheticConfig(n_pixels=400), batch_size=n))
    ra, dec = sky_positions(n, seed)
    fixed = SKY_CLUSTER + SKY_WRAP
    ra[: len(fixed)], dec[: len(fixed)] = zip(*fixed, strict=True)
    mjd = 58650.125 + 20.0 * np.arange(n)
    ra[9] = dec[9] = mjd[9] = np.nan
    width = flux.shape[1]
    columns = [
        fits.Column("obsid", "12A", array=[f"sky-{i:04d}" for i in range(n)]),
        fits.Column("object", "12A", array=[f"HD {1000 + i}" for i in range(n)]),
        fits.Column("ra", "D", unit="deg", array=ra),
        fits.Column("dec", "D", unit="deg", array=dec),
        fits.Column("mjd_obs", "D", unit="d", array=mjd),
        fits.Column("exptime", "D", unit="s", array=np.full(n, 900.0)),
        *(fits.Column(name, "D", array=values) for name, values in labels.items()),
        fits.Column("flux", f"{width}E", array=flux),
        fits.Column("ivar", f"{width}E", array=ivar),
    ]
    primary = fits.PrimaryHDU()
    primary.header["WAVEMED"] = "vacuum"
    primary.header["RESPOWER"] = 2000.0
    wavelength = fits.BinTableHDU.from_columns(
        [fits.Column("wavelength", "D", unit="Angstrom", array=wave)], name="WAVELENGTH"
    )
    fits.HDUList([primary, fits.BinTableHDU.from_columns(columns, name="SPECTRA"), wavelength]).writeto(path)


@pytest.fixture(scope="session")
def sky_server(tmp_path_factory):
    """A second live service over :func:`write_sky_sample` (collection "sky"), for positions and times."""
    root = tmp_path_factory.mktemp("sky")
    write_sky_sample(root / "sky.fits")
    config = small_config(
        root / "archive",
        archive={"default_collection": "sky"},
        model={"epochs": 5, "augment_copies": 0},
        service={"base_url": free_url()},
    )
    build_archive(config, [root / "sky.fits"])
    with serving(config) as served:
        yield served


@pytest.fixture(scope="session")
def datalink_vocabulary(tmp_path_factory):
    """The IVOA DataLink core vocabulary in astropy's download cache, as pyvo's ``bysemantics`` (and so
    ``getdataset()`` on results with a DataLink descriptor) wants it.

    There is no network here; the copy pyvo ships for its own tests stands in for www.ivoa.net.
    """
    import pyvo
    from astropy.config import set_temp_cache
    from astropy.utils.data import import_file_to_cache

    source = Path(pyvo.__file__).parent / "dal" / "tests" / "data" / "datalink" / "datalink.desise"
    with set_temp_cache(tmp_path_factory.mktemp("astropy-cache")):
        import_file_to_cache("http://www.ivoa.net/rdf/datalink/core", str(source), remove_original=False)
        yield pyvo.utils.vocabularies.get_vocabulary("datalink/core")


@pytest.fixture()
def client(live_server):
    """Flask's test client on the same app as the live server (for header/status checks)."""
    return live_server.app.test_client()


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL server of the session's own (tests/postgres.py): the URL of its ``postgres`` database."""
    from service.storage.postgres import close_pools
    from tests.postgres import postgres_server as start

    with start() as url:
        yield url
        close_pools()


@pytest.fixture()
def postgres_url(postgres_server) -> str:
    """A new empty database on the session's PostgreSQL server."""
    import secrets

    from tests.postgres import create_database

    return create_database(postgres_server, f"latentvo_{secrets.token_hex(4)}")


@pytest.fixture(params=["sqlite", "postgres"])
def database_location(request, tmp_path) -> str:
    """``[archive] database`` for each back end: a SQLite file in tmp_path, or a new PostgreSQL database."""
    if request.param == "sqlite":
        return "archive.sqlite"
    return request.getfixturevalue("postgres_url")


@pytest.fixture(scope="session")
def postgres_live_server(tmp_path_factory, demo_dir, postgres_server):
    """The same service as ``live_server`` (same sample, same settings), its archive on PostgreSQL."""
    from tests.postgres import create_database

    settings = {section: dict(values) for section, values in DEMO_MATCHING.items()}
    database = create_database(postgres_server, "latentvo_served")
    config = small_config(
        tmp_path_factory.mktemp("served-pg"),
        service={"base_url": free_url()},
        archive={"database": database},
        **settings,
    )
    build_archive(config, [demo_dir / "miles_demo.fits"])
    with serving(config) as served:
        yield served

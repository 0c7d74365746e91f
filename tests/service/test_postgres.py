"""The archive on PostgreSQL: every pipeline stage and the protocol endpoints give what SQLite gives.

``postgres_live_server`` is ``live_server`` built again from the same sample with the same settings,
its database on the session's PostgreSQL server. Training is seeded and runs on the CPU, so the two
archives hold the same model; answers are compared byte for byte, with the base URLs set aside.
"""

from __future__ import annotations

import io
from urllib.parse import quote

import numpy as np
import pytest
import requests
from astropy.io.votable import parse_single_table
from pyvo.dal import SSAService

from service.archive import Archive
from service.ssap import SSAQuery, conditions
from tests.service.test_storage import _spectrum

SPECTRUM = (
    "SELECT obs_publisher_did, obs_id, teff, logg, feh, em_min, em_max, em_xel, source_sha256 FROM spectrum"
)


@pytest.fixture(scope="module")
def archives(live_server, postgres_live_server):
    both = [Archive.from_config(s.config, readonly=True) for s in (live_server, postgres_live_server)]
    assert [a.db.dialect for a in both] == ["sqlite", "postgres"]
    yield both
    for archive in both:
        archive.close()


def _did(archives) -> str:
    return archives[0].latent_dids(archives[0].current_model()["model_version"])[5]


def test_every_stage_stores_the_same_archive(archives):
    sqlite, postgres = archives
    assert [tuple(r) for r in sqlite.db.all(SPECTRUM + " ORDER BY row_id")] == [
        tuple(r) for r in postgres.db.all(SPECTRUM + " ORDER BY row_id")
    ]
    models = [dict(a.current_model()) for a in archives]
    for key in ("model_version", "stage", "training_set_hash", "n_train", "latent_dim", "informative_dims"):
        assert models[0][key] == models[1][key], key
    version = models[0]["model_version"]
    dim = models[0]["latent_dim"]
    latent = f"SELECT obs_publisher_did, {', '.join(f'z{i}' for i in range(dim))}, anomaly_score, lof_score "
    latent += "FROM ml_latent WHERE model_version = ? ORDER BY row_index"
    first, second = (a.db.all(latent, (version,)) for a in archives)
    assert [r[0] for r in first] == [r[0] for r in second]
    np.testing.assert_allclose([tuple(r)[1:] for r in first], [tuple(r)[1:] for r in second], rtol=1e-12)
    correlation = (
        "SELECT dim, label, mi, pearson FROM ml_label_correlation WHERE model_version = ? ORDER BY dim, label"
    )
    assert [tuple(r)[:2] for r in sqlite.db.all(correlation, (version,))] == [
        tuple(r)[:2] for r in postgres.db.all(correlation, (version,))
    ]
    assert sqlite.map_methods(version) == postgres.map_methods(version)
    assert len(postgres.map_points(version, "pca")) == sqlite.count()
    tap_schema = (
        'SELECT table_name, column_name, datatype FROM tap_schema_columns ORDER BY table_name, "column_index"'
    )
    assert [tuple(r) for r in sqlite.db.all(tap_schema)] == [tuple(r) for r in postgres.db.all(tap_schema)]


def _answers(server, path: str) -> tuple[int, str]:
    response = requests.get(f"{server.url}{path}", timeout=60)
    return response.status_code, response.text.replace(server.url, "BASE")


@pytest.mark.parametrize(
    "path",
    [
        "/ssa/query?REQUEST=queryData&BAND=5e-7&MAXREC=7",
        "/ssa/query?REQUEST=queryData&SIMILAR_TO={did}&MAXREC=5",
        "/ssa/query?REQUEST=queryData&TARGETNAME=HD&COLLECTION=miles&MAXREC=4",
        "/ssa/query?REQUEST=queryData&FORMAT=METADATA",
        "/ssa/capabilities",
        "/datalink/links?ID={did}",
        "/datalink/similar?ID={did}&K=4",
        "/similar?ID={did}&K=4",
        "/similar?ID={did}&K=3&DIMS=0,1",
        "/datalink/links?ID=ivo://latentvo.example/~?miles/nothing",
        "/tap/tables",
        "/tap/examples",
        "/explore/map?method=pca",
        "/",
    ],
)
def test_endpoints_answer_alike(live_server, postgres_live_server, archives, path):
    path = path.format(did=quote(_did(archives), safe=""))
    on_sqlite, on_postgres = _answers(live_server, path), _answers(postgres_live_server, path)
    assert on_sqlite[0] == on_postgres[0]
    assert on_sqlite[1] == on_postgres[1]


def test_spectra_come_through_datalink_and_pyvo(postgres_live_server, archives):
    ssa = SSAService(f"{postgres_live_server.url}/ssa/query")
    found = ssa.search(band=(4.9e-7, 5.1e-7), maxrec=3)
    assert len(found) == 3
    links = requests.get(
        f"{postgres_live_server.url}/datalink/links", params={"ID": _did(archives)}, timeout=60
    )
    table = parse_single_table(io.BytesIO(links.content)).to_table()
    this = [row["access_url"] for row in table if row["semantics"] == "#this"][0]
    data = requests.get(this, timeout=60)
    assert data.status_code == 200 and len(data.content) > 1000


def test_adql_is_refused_plainly_until_it_runs_on_postgresql(postgres_live_server):
    response = requests.get(
        f"{postgres_live_server.url}/tap/sync",
        params={"LANG": "ADQL", "QUERY": "SELECT TOP 1 obs_id FROM ivoa.obscore"},
        timeout=60,
    )
    assert response.status_code == 501
    assert '<INFO name="QUERY_STATUS" value="ERROR">' in response.text and "PostgreSQL" in response.text


def test_cone_conditions_select_the_same_spectra(tmp_path, database_location):
    """SSAP's cone (an RA box from the index, then the exact distance) on each engine, across RA 0."""
    archive = Archive(tmp_path, database_location)
    positions = {"minus": (-0.2, 0.1), "wrap": (359.95, 0.0), "east": (0.3, -0.2), "far": (10.0, 0.0)}
    positions |= {"high": (360.2, 0.0), "north": (359.9, 0.7), "none": (None, 0.0)}
    archive.upsert_spectra(
        [_spectrum(f"ivo://x/~?test/{k}", s_ra=ra, s_dec=dec) for k, (ra, dec) in positions.items()]
    )
    where, args = conditions(SSAQuery(pos=(359.9, 0.0), radius=0.5), None)
    found = archive.db.all(
        f"SELECT obs_id FROM spectrum AS s WHERE {' AND '.join(where)} ORDER BY obs_id", args
    )
    assert [r[0] for r in found] == ["east", "high", "minus", "wrap"]
    archive.close()


def test_a_thread_per_request_server_gives_every_connection_back(postgres_live_server):
    """The test server starts a thread per request; each thread's kept connection goes back to the pool
    when the thread ends, so three pools' worth of requests all get an answer."""
    from service.storage.postgres import POOL_SIZE

    for _ in range(3 * POOL_SIZE):
        response = requests.get(f"{postgres_live_server.url}/ssa/availability", timeout=30)
        assert response.status_code == 200


def test_copy_database_moves_a_sqlite_archive_to_postgresql(tmp_path, live_server, postgres_url):
    """`latentvo copy-database --to URL`: every table arrives as it was, the row numbering goes on after
    the copied rows, and a second copy into the same database is refused."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from service.storage import open_database
    from service.storage.copy import TABLES, TAP_SCHEMA_TABLES

    root = tmp_path / "archive"
    shutil.copytree(live_server.config["archive"]["root"], root)
    command = [
        str(Path(sys.executable).parent / "latentvo"),
        "--quiet",
        "copy-database",
        "--to",
        postgres_url,
    ]
    env = {**os.environ, "LATENTVO_ARCHIVE_ROOT": str(root)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "copied 200 spectra" in done.stdout
    source = open_database("archive.sqlite", root, readonly=True)
    target = open_database(postgres_url, root, readonly=True)
    for table in [t for t in TABLES if t != "archive_setting"] + list(TAP_SCHEMA_TABLES):
        columns = ", ".join(f'"{c}"' for c in source.columns(table))
        rows = [sorted(tuple(r) for r in db.all(f"SELECT {columns} FROM {table}")) for db in (source, target)]
        assert rows[0] == rows[1], table
    archive = Archive(root, postgres_url)
    archive.upsert_spectra([_spectrum("ivo://x/~?test/after-the-copy")])
    assert archive.db.scalar("SELECT row_id FROM spectrum WHERE obs_id = 'after-the-copy'") == 201
    archive.close()
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "already holds spectra" in again.stderr
    source.close()
    target.close()

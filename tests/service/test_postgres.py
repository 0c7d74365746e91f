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
from service.storage import DatabaseError, QueryStopped, arrays
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


#: ADQL over every kind of table and function; {did} is an encoded spectrum's DID, TAP_UPLOAD.stars
#: positions on the sky (the demo sample has none).
QUERIES = [
    "SELECT TOP 7 obs_publisher_did, obs_id, s_ra, s_dec, teff, em_min FROM ivoa.obscore ORDER BY obs_id",
    "SELECT name, DISTANCE(POINT(ra, dec), POINT(30, 20)) AS d FROM TAP_UPLOAD.stars "
    "WHERE 1 = CONTAINS(POINT(ra, dec), CIRCLE(30, 20, 40)) ORDER BY d, name",
    "SELECT name FROM TAP_UPLOAD.stars WHERE DISTANCE(ra, dec, 359.5, -10) < 25 ORDER BY name",
    "SELECT TOP 5 POINT(ra, dec) AS p, CIRCLE(ra, dec, 0.5) AS c, BOX(ra, dec, 1, 2) AS b, "
    "AREA(BOX(ra, dec, 1, 2)) AS a, CENTROID(POLYGON(ra, dec, ra + 1, dec, ra, dec + 1)) AS c1 "
    "FROM TAP_UPLOAD.stars WHERE dec BETWEEN -80 AND 80 ORDER BY name",
    "SELECT a.name, b.name FROM TAP_UPLOAD.stars AS a JOIN TAP_UPLOAD.stars AS b "
    "ON 1 = INTERSECTS(CIRCLE(a.ra, a.dec, 8), POLYGON(b.ra, b.dec, b.ra + 5, b.dec, b.ra, b.dec + 5)) "
    "WHERE a.name < b.name ORDER BY a.name, b.name",
    "SELECT COUNT(*) AS n, MIN(teff) AS cool, MAX(logg) AS g, SUM(calib_level) AS levels FROM ivoa.obscore",
    "SELECT obs_collection, COUNT(*) AS n FROM ivoa.obscore GROUP BY obs_collection HAVING n > 1 "
    "ORDER BY n DESC",
    "SELECT TOP 5 o.obs_id, l.z0, ROUND(l.z1, 3) AS z1, UPPER(o.obs_id) || '/' || o.calib_level AS tag "
    "FROM ivoa.obscore AS o JOIN ml.latent AS l ON l.obs_publisher_did = o.obs_publisher_did "
    "WHERE o.obs_id LIKE 'm%' ORDER BY l.z0 DESC",
    "SELECT o.obs_publisher_did, ml_distance(o.obs_publisher_did, '{did}') AS latent_distance "
    "FROM ivoa.obscore AS o WHERE 1 = ml_knn(o.obs_publisher_did, '{did}', 6) ORDER BY latent_distance",
    "SELECT TOP 4 obs_publisher_did, ml_distance(obs_publisher_did, '{did}', '0 1') AS d "
    "FROM ml.latent ORDER BY d",
    "SELECT TOP 3 obs_id, CAST(teff AS INTEGER) AS t, LOG10(teff) AS lt, MOD(calib_level, 2) AS m, "
    "CAST('2020-01-02 10:11' AS TIMESTAMP) AS t2 FROM ivoa.obscore WHERE obs_id ILIKE 'M%' "
    "ORDER BY obs_id",
    "SELECT obs_id FROM ivoa.obscore WHERE teff > (SELECT AVG(teff) FROM ivoa.obscore) "
    "EXCEPT SELECT obs_id FROM ivoa.obscore WHERE logg < 3 ORDER BY obs_id",
    "SELECT table_name, COUNT(*) AS n FROM TAP_SCHEMA.columns GROUP BY table_name ORDER BY table_name",
    "SELECT model_version, stage, latent_dim, informative_dims FROM ml.model",
]


def _stars() -> bytes:
    """A VOTable of 60 named positions over the whole sky (seeded)."""
    from astropy.io.votable import from_table
    from astropy.table import Table

    rng = np.random.default_rng(3)
    ra = rng.uniform(0, 360, 60)
    dec = np.degrees(np.arcsin(rng.uniform(-1, 1, 60)))
    table = Table({"name": [f"star{i:02d}" for i in range(60)], "ra": ra, "dec": dec})
    table["ra"].unit = table["dec"].unit = "deg"
    out = io.BytesIO()
    from_table(table).to_xml(out)
    return out.getvalue()


def _table(response: requests.Response) -> list[tuple]:
    table = parse_single_table(io.BytesIO(response.content)).to_table()
    return [tuple(row) for row in table], [(c.name, str(c.dtype)) for c in table.columns.values()]


def _ask_both(servers, query: str, name: str, table: bytes) -> list[tuple[list[tuple], list]]:
    """The query, with ``table`` uploaded as TAP_UPLOAD.<name>, through /tap/sync of each server:
    its rows and FIELDs, once every server has answered 200."""
    answers = [
        requests.post(
            f"{server.url}/tap/sync",
            data={"LANG": "ADQL", "QUERY": query, "UPLOAD": f"{name},param:{name}"},
            files={name: (f"{name}.xml", table)},
            timeout=60,
        )
        for server in servers
    ]
    assert [a.status_code for a in answers] == [200] * len(servers), answers[-1].text[-600:]
    return [_table(a) for a in answers]


@pytest.mark.parametrize("query", QUERIES)
def test_adql_answers_alike(live_server, postgres_live_server, archives, query):
    """Each ADQL query on PostgreSQL: the FIELDs SQLite gives, and the same rows (reals to 1e-12)."""
    query = query.format(did=_did(archives))
    servers = (live_server, postgres_live_server)
    (sqlite_rows, sqlite_fields), (postgres_rows, postgres_fields) = _ask_both(
        servers, query, "stars", _stars()
    )
    assert sqlite_fields == postgres_fields
    assert len(sqlite_rows) == len(postgres_rows) > 0
    for mine, theirs in zip(sqlite_rows, postgres_rows, strict=True):
        for a, b in zip(mine, theirs, strict=True):
            if np.ma.is_masked(a) or np.ma.is_masked(b):
                assert np.ma.is_masked(a) and np.ma.is_masked(b)
            elif isinstance(a, float | np.floating | np.ndarray) and np.size(a):
                np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
            else:
                assert str(a) == str(b)


def test_ml_distance_is_the_same_number_on_both(archives, live_server, postgres_live_server):
    """The distance table PostgreSQL reads holds, bit for bit, what SQLite's per-row function gives."""
    distance = f"ml_distance(obs_publisher_did, '{_did(archives)}', '1 0')"
    query = f"SELECT obs_publisher_did, {distance} AS d FROM ml.latent"
    values = []
    for server in (live_server, postgres_live_server):
        answer = requests.post(f"{server.url}/tap/sync", data={"LANG": "ADQL", "QUERY": query}, timeout=60)
        rows, _ = _table(answer)
        values.append(dict((str(did), float(d)) for did, d in rows))
    assert values[0] == values[1] and len(values[0]) == archives[0].count()


def _dids_table(dids: list[str]) -> bytes:
    from astropy.io.votable import from_table
    from astropy.table import Table

    out = io.BytesIO()
    from_table(Table({"did": dids, "wanted": list(range(len(dids)))})).to_xml(out)
    return out.getvalue()


@pytest.mark.parametrize(
    "query",
    [
        "SELECT u.did, o.obs_publisher_did FROM TAP_UPLOAD.mine AS u JOIN ivoa.obscore AS o "
        "ON 1 = ml_knn(o.obs_publisher_did, u.did, 4) ORDER BY u.did, o.obs_publisher_did",
        "SELECT u.wanted, ml_knn(o.obs_publisher_did, u.did, 3, '1 0') AS near FROM TAP_UPLOAD.mine AS u "
        "JOIN ivoa.obscore AS o ON o.obs_publisher_did = u.did ORDER BY u.wanted",
        "SELECT a.obs_publisher_did, ml_distance(a.obs_publisher_did, u.did) AS d, "
        "ml_distance(u.did, a.obs_publisher_did, '1 0') AS d2 FROM ml.latent AS a, TAP_UPLOAD.mine AS u "
        "WHERE u.wanted = 0 ORDER BY d, a.obs_publisher_did",
        # self-joins: the references are an archive column, narrowed or not by conditions on it
        "SELECT a.obs_publisher_did AS ref, b.obs_publisher_did AS near "
        "FROM ivoa.obscore AS a, ml.latent AS b "
        "WHERE 1 = ml_knn(b.obs_publisher_did, a.obs_publisher_did, 3) ORDER BY 1, 2",
        "SELECT a.obs_publisher_did AS ref, b.obs_publisher_did AS near "
        "FROM ivoa.obscore AS a JOIN ivoa.obscore AS b "
        "ON ml_knn(b.obs_publisher_did, a.obs_publisher_did, 4, '1 0') = 1 "
        "WHERE a.obs_publisher_did IN (SELECT did FROM TAP_UPLOAD.mine) ORDER BY 1, 2",
        "SELECT o.obs_publisher_did, COUNT(*) AS n FROM ivoa.obscore AS o WHERE o.teff < 5000 AND EXISTS "
        "(SELECT 1 FROM ml.latent AS l WHERE ml_knn(l.obs_publisher_did, o.obs_publisher_did, 5) = 1 "
        "AND l.row_index < 100) GROUP BY o.obs_publisher_did ORDER BY 1",
    ],
)
def test_similarity_with_column_references_answers_alike(live_server, postgres_live_server, archives, query):
    """ml_knn with the references in an uploaded column, ml_distance with no literal: PostgreSQL reads
    tables the service fills from the model; SQLite calls Python per row. The same rows, the same bits."""
    dids = archives[0].latent_dids(archives[0].current_model()["model_version"])
    mine = _dids_table([dids[3], dids[40], "ivo://nowhere/~?x/1", dids[3]])
    servers = (live_server, postgres_live_server)
    (sqlite_rows, sqlite_fields), (postgres_rows, postgres_fields) = _ask_both(servers, query, "mine", mine)
    assert sqlite_fields == postgres_fields and len(sqlite_rows) > 2
    assert [tuple(str(v) for v in row) for row in sqlite_rows] == [
        tuple(str(v) for v in row) for row in postgres_rows
    ]


@pytest.mark.parametrize(
    ("query", "status", "message"),
    [
        ("WITH c AS (SELECT obs_publisher_did AS did FROM ivoa.obscore) SELECT a.obs_id FROM ivoa.obscore "
         "AS a, c WHERE 1 = ml_knn(a.obs_publisher_did, c.did, 3)", 400, "not a subquery or WITH"),
        ("SELECT ml_distance(obs_id, obs_id, obs_id) FROM ivoa.obscore", 400, "dims must be a literal"),
        ("SELECT POINT(obs_id, 3) FROM ivoa.obscore", 400, "expects numbers"),
        ("SELECT TOP 1 POINT(10, 95) FROM ivoa.obscore", 400, "latitude must be within"),
        ("SELECT TOP 1 1 / (calib_level - calib_level) FROM ivoa.obscore", 400, "division by zero"),
    ],
)  # fmt: skip
def test_bad_adql_on_postgresql_is_a_clear_error(postgres_live_server, query, status, message):
    response = requests.post(
        f"{postgres_live_server.url}/tap/sync", data={"LANG": "ADQL", "QUERY": query}, timeout=60
    )
    assert response.status_code == status, response.text[-500:]
    assert message in response.text
    assert "Error" not in response.text.replace("ERROR", "")  # no Python class names


def test_self_join_with_too_many_references_is_refused(postgres_live_server, monkeypatch):
    """Each reference DID costs a neighbour search before the query runs: past the bound, a clear 400
    that says how to narrow the query (and the narrowed query runs)."""
    from service.tap import sync

    monkeypatch.setattr(sync, "NEIGHBOUR_REFERENCES_MAX", 50)
    join = (
        "SELECT COUNT(*) AS n FROM ivoa.obscore AS a, ml.latent AS b "
        "WHERE 1 = ml_knn(b.obs_publisher_did, a.obs_publisher_did, 3)"
    )
    answers = [
        requests.post(f"{postgres_live_server.url}/tap/sync", data={"LANG": "ADQL", "QUERY": q}, timeout=60)
        for q in (join, join + " AND a.teff > 9000")
    ]
    assert answers[0].status_code == 400 and "more than 50 DIDs" in answers[0].text
    assert answers[1].status_code == 200, answers[1].text[-500:]
    rows, _ = _table(answers[1])
    assert 0 < int(rows[0][0]) <= 3 * 50


def test_queries_cannot_write_and_stop_in_time(postgres_live_server, archives):
    """The query transaction is read-only whatever SQL reaches it; statement_timeout stops long ones."""
    archive = archives[1]
    with (
        pytest.raises(DatabaseError, match="read-only transaction"),
        archive.db.query_session(5.0) as session,
    ):
        session.run("DELETE FROM spectrum", 1)
    with pytest.raises(QueryStopped) as stopped, archive.db.query_session(0.3) as session:
        session.run("SELECT count(*) FROM generate_series(1, 10000000000)", 1)
    assert stopped.value.timed_out
    with pytest.raises(QueryStopped) as stopped, archive.db.query_session(None, lambda: True) as session:
        session.run("SELECT count(*) FROM generate_series(1, 10000000000)", 1)
    assert not stopped.value.timed_out
    assert archive.count() == archives[0].count()  # and the connection is usable after each


def test_pyvo_runs_sync_async_and_uploads_on_postgresql(postgres_live_server, archives):
    from astropy.table import Table
    from pyvo.dal import TAPService

    tap = TAPService(f"{postgres_live_server.url}/tap")
    sync = tap.run_sync("SELECT TOP 3 obs_id, s_ra FROM ivoa.obscore ORDER BY obs_id")
    job = tap.run_async("SELECT TOP 3 obs_id, s_ra FROM ivoa.obscore ORDER BY obs_id")
    assert list(sync["obs_id"]) == list(job["obs_id"]) and len(sync) == 3
    mine = Table({"did": [_did(archives), "nothing"], "wanted": [1, 2]})
    joined = tap.run_sync(
        "SELECT u.wanted, o.obs_id FROM TAP_UPLOAD.mine AS u JOIN ivoa.obscore AS o "
        "ON o.obs_publisher_did = u.did",
        uploads={"mine": mine},
    )
    assert list(joined["wanted"]) == [1]


def test_cones_use_the_sky_index(postgres_live_server, archives):
    """q3c's index where the server has the extension (make test installs it), else the (s_dec, s_ra) one."""
    from service.tap.adql import Engine, translate
    from service.tap.schema import current_tableset

    archive = archives[1]
    available = archive.db.scalar("SELECT count(*) FROM pg_available_extensions WHERE name = 'q3c'")
    assert ("q3c" in archive.db.extensions) == bool(available)
    engine = Engine("postgres", q3c="q3c" in archive.db.extensions)
    cone = "SELECT obs_id FROM ivoa.obscore WHERE 1 = CONTAINS(POINT(s_ra, s_dec), CIRCLE(10, 20, 1))"
    sql = translate(cone, current_tableset(archive), 10, engine=engine).sql
    archive.db.execute("SET enable_seqscan = off")  # 200 rows: the planner would rather read them all
    plan = " ".join(r[0] for r in archive.db.all("EXPLAIN " + sql))
    archive.db.execute("RESET enable_seqscan")
    assert ("spectrum_q3c" if available else "spectrum_sky") in plan


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
        rows = [
            sorted(tuple(_comparable(v) for v in r) for r in db.all(f"SELECT {columns} FROM {table}"))
            for db in (source, target)
        ]
        assert rows[0] == rows[1], table
    archive = Archive(root, postgres_url)
    archive.upsert_spectra([_spectrum("ivo://x/~?test/after-the-copy")])
    assert archive.db.scalar("SELECT row_id FROM spectrum WHERE obs_id = 'after-the-copy'") == 201
    archive.close()
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "already holds spectra" in again.stderr
    source.close()
    target.close()


def _comparable(value):
    """A cell as both engines give it: arrays (SQLite BLOBs, PostgreSQL lists) as their float32 values."""
    if isinstance(value, bytes | list):
        return tuple(arrays.unpack(value).astype(np.float32).tolist())
    return value


def test_taplint_reports_no_errors_or_failures_on_postgresql(postgres_live_server):
    """STILTS taplint over the whole service (TAP_SCHEMA, queries, uploads, UWS) on PostgreSQL."""
    from tests import stilts

    assert stilts.stilts_available(), "STILTS is not installed (apt-get install stilts; .ci/run does it)"
    report = stilts.taplint(f"{postgres_live_server.url}/tap")
    print(report.summary(), *report.warnings, sep="\n")
    assert report.ok, "\n".join(report.errors + report.failures)


def test_queries_run_as_the_tap_role(postgres_live_server, archives):
    """``[archive] tap_role``: the README's grants give a role that reads the archive, fills its
    temporary tables, and can write nothing, even outside the read-only transaction."""
    import psycopg

    from service.storage.postgres import PostgresDatabase

    url = postgres_live_server.config["archive"]["database"]
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("DROP ROLE IF EXISTS latentvo_tap_test")
        admin.execute("CREATE ROLE latentvo_tap_test NOLOGIN")
        admin.execute("GRANT USAGE ON SCHEMA public TO latentvo_tap_test")
        admin.execute("GRANT SELECT ON ALL TABLES IN SCHEMA public TO latentvo_tap_test")
    database = PostgresDatabase(url, readonly=True)
    try:
        with database.query_session(5.0, role="latentvo_tap_test") as session:
            session.temp_table("mine", [("did", "text")], [(_did(archives),)])
            rows, _ = session.run(
                "SELECT s.obs_id, current_user FROM spectrum AS s JOIN pg_temp.mine AS m "
                "ON m.did = s.obs_publisher_did",
                5,
            )
        assert len(rows) == 1 and rows[0][1] == "latentvo_tap_test"
        with (
            pytest.raises(DatabaseError, match="role .nobody. does not exist"),
            database.query_session(5.0, role="nobody"),
        ):
            pass
        assert database.scalar("SELECT current_user") != "latentvo_tap_test"  # the role ends with the session
    finally:
        database.close()
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("SET ROLE latentvo_tap_test")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            admin.execute("DELETE FROM spectrum")
        admin.execute("RESET ROLE")
        admin.execute("DROP OWNED BY latentvo_tap_test")
        admin.execute("DROP ROLE latentvo_tap_test")

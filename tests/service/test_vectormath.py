"""VECTORMATH over ml.latent: every construct of the proposal, on SQLite and on PostgreSQL, against
numpy on the same float32 arrays the archive stores."""

from __future__ import annotations

import re

import numpy as np
import pytest

from service.archive import Archive
from service.storage import arrays
from service.tables import load_tableset
from service.tap.adql import SQLITE, ADQLError, Engine, register_functions, translate

DIM = 5
N = 12
RNG = np.random.default_rng(7)
MEANS = RNG.normal(size=(N, DIM)).astype(np.float32)
VARIANCES = RNG.uniform(0.01, 1.0, size=(N, DIM)).astype(np.float32)
DIDS = [f"ivo://x/~?vm/{i:02d}" for i in range(N)]
TABLES = load_tableset(latent_dim=DIM)
COMMON = dict(
    obs_collection="vm", em_min=4e-7, em_max=7e-7, em_xel=100, medium="vacuum", source_path="x.fits",
    source_format="fits", source_sha256="0", ingested_at="2024-01-01T00:00:00",
)  # fmt: skip


def _fill(archive: Archive) -> Archive:
    archive.upsert_spectra(
        [
            {**COMMON, "obs_publisher_did": did, "obs_id": str(i), "source_index": i}
            for i, did in enumerate(DIDS)
        ]
    )
    archive.add_model(
        1,
        {"training_set_hash": "h", "grid": {"wave_min": 4e3, "wave_max": 7e3, "n_pixels": 64},
         "train": {"latent_dim": DIM, "kl_weight": 0.5}},
        {"n_train": N},
    )  # fmt: skip
    archive.write_latents(1, DIDS, MEANS, VARIANCES, np.zeros(N))
    return archive


@pytest.fixture(scope="module")
def sqlite_archive(tmp_path_factory):
    archive = _fill(Archive(tmp_path_factory.mktemp("vm")))
    register_functions(archive.db.connection)
    yield archive
    archive.close()


@pytest.fixture(scope="module")
def postgres_archive(tmp_path_factory, postgres_server):
    import secrets

    from tests.postgres import create_database

    url = create_database(postgres_server, f"latentvo_vm_{secrets.token_hex(4)}")
    archive = _fill(Archive(tmp_path_factory.mktemp("vm_pg"), database=url))
    yield archive
    archive.close()


@pytest.fixture(params=["sqlite", "postgres"])
def ask(request):
    """Rows of an ADQL query over the archive on each engine, arrays as numpy."""
    engine = SQLITE if request.param == "sqlite" else Engine("postgres")
    archive = request.getfixturevalue(f"{request.param}_archive")

    def run(adql: str) -> list[tuple]:
        translation = translate(adql, TABLES, 1000, engine=engine)
        rows = archive.db.all(translation.sql)[: translation.limit]
        return [tuple(_value(v) for v in row) for row in rows]

    return run


def _value(value):
    return arrays.unpack(value) if isinstance(value, bytes | list) else value


def _by_did(rows: list[tuple]) -> dict:
    return {row[0]: row[1:] for row in rows}


def test_the_arrays_hold_what_the_per_dimension_columns_hold(ask):
    rows = _by_did(ask("SELECT obs_publisher_did, z, z_var, z0, z4 FROM ml.latent"))
    for i, did in enumerate(DIDS):
        z, z_var, z0, z4 = rows[did]
        # float32 as stored (PostgreSQL's text form of a real is the shortest that reads back exactly)
        np.testing.assert_array_equal(z.astype(np.float32), MEANS[i])
        np.testing.assert_array_equal(z_var.astype(np.float32), VARIANCES[i])
        assert (z0, z4) == (float(MEANS[i, 0]), float(MEANS[i, 4]))


def test_elements_and_slices_count_from_one(ask):
    rows = _by_did(
        ask("SELECT obs_publisher_did, z[1], z[5], z[6], z[0], z[2:4], z[4:9], z[3:2] FROM ml.latent")
    )
    for i, did in enumerate(DIDS):
        first, last, beyond, before, middle, tail, empty = rows[did]
        assert (first, last, beyond, before) == (float(MEANS[i, 0]), float(MEANS[i, 4]), None, None)
        np.testing.assert_array_equal(middle.astype(np.float32), MEANS[i, 1:4])
        np.testing.assert_array_equal(tail.astype(np.float32), MEANS[i, 3:])
        assert len(empty) == 0


def test_component_arithmetic_with_arrays_and_numbers(ask):
    rows = _by_did(
        ask(
            "SELECT l.obs_publisher_did, l.z + r.z, l.z - r.z, l.z * r.z_var, l.z / r.z_var, 2 * l.z, "
            "l.z / 4, 1 - l.z, -l.z, l.z[1:3] + r.z "
            f"FROM ml.latent AS l, ml.latent AS r WHERE r.obs_publisher_did = '{DIDS[3]}'"
        )
    )
    r, rv = MEANS[3].astype(np.float64), VARIANCES[3].astype(np.float64)
    for i, did in enumerate(DIDS):
        z = MEANS[i].astype(np.float64)
        got = rows[did]
        expected = [z + r, z - r, z * rv, z / rv, 2 * z, z / 4, 1 - z, -z]
        for value, want in zip(got[:8], expected, strict=True):
            np.testing.assert_allclose(value, want, rtol=1e-12)
        padded = got[8]  # unequal lengths: the shorter is padded with NaN
        np.testing.assert_allclose(padded[:3], z[:3] + r[:3], rtol=1e-12)
        assert np.isnan(padded[3:]).all() and len(padded) == DIM


def test_dot_count_and_element_aggregates(ask):
    rows = _by_did(
        ask(
            "SELECT l.obs_publisher_did, arr_dot(l.z[2:4] - r.z[2:4], l.z[2:4] - r.z[2:4]), "
            "arr_dot(l.z, r.z), arr_dot(l.z, r.z[1:2]), arr_count(l.z), arr_count(l.z[2:3]), "
            "arr_sum(l.z), arr_avg(l.z), arr_min(l.z), arr_max(l.z) "
            f"FROM ml.latent AS l JOIN ml.latent AS r ON r.obs_publisher_did = '{DIDS[0]}'"
        )
    )
    r = MEANS[0].astype(np.float64)
    for i, did in enumerate(DIDS):
        z = MEANS[i].astype(np.float64)
        d2, dot, unequal, count, count2, total, mean, low, high = rows[did]
        np.testing.assert_allclose(d2, np.sum((z[1:4] - r[1:4]) ** 2), rtol=1e-12)
        np.testing.assert_allclose(dot, z @ r, rtol=1e-12, atol=1e-15)
        assert unequal is None or np.isnan(unequal)  # SQLite has no NaN value: NULL, as results show NaN
        assert (count, count2) == (DIM, 2)
        np.testing.assert_allclose(
            [total, mean, low, high], [z.sum(), z.mean(), z.min(), z.max()], rtol=1e-12
        )


def test_arr_map_binds_x_to_each_element(ask):
    rows = _by_did(
        ask(
            "SELECT obs_publisher_did, arr_map(POWER(10, x), z), arr_map(x * x + z[1], z[2:3]), "
            "arr_map(arr_sum(arr_map(x + 1, z)) * x, z) FROM ml.latent"
        )
    )
    for i, did in enumerate(DIDS):
        z = MEANS[i].astype(np.float64)
        powers, squares, nested = rows[did]
        np.testing.assert_allclose(powers, 10**z, rtol=1e-12)
        np.testing.assert_allclose(squares, z[1:3] ** 2 + z[0], rtol=1e-12)
        np.testing.assert_allclose(nested, (z + 1).sum() * z, rtol=1e-12)


def test_aggregates_over_rows_work_component_by_component(ask):
    [(total, mean, low, high, count)] = ask(
        "SELECT SUM(z), AVG(z), MIN(z), MAX(z), COUNT(z) FROM ml.latent WHERE model_version = 1"
    )
    z = MEANS.astype(np.float64)
    np.testing.assert_allclose(total, z.sum(axis=0), rtol=1e-12)
    np.testing.assert_allclose(mean, z.mean(axis=0), rtol=1e-12)
    np.testing.assert_array_equal(low, z.min(axis=0))
    np.testing.assert_array_equal(high, z.max(axis=0))
    assert count == N
    grouped = ask("SELECT arr_count(z) AS n, AVG(z[2:3]) FROM ml.latent GROUP BY arr_count(z)")
    assert len(grouped) == 1 and grouped[0][0] == DIM
    np.testing.assert_allclose(grouped[0][1], z[:, 1:3].mean(axis=0), rtol=1e-12)


def test_order_by_a_distance_and_filter_on_elements(ask):
    rows = ask(
        "SELECT TOP 4 l.obs_publisher_did, arr_dot(l.z - r.z, l.z - r.z) AS d2 "
        f"FROM ml.latent AS l, ml.latent AS r WHERE r.obs_publisher_did = '{DIDS[5]}' AND l.z[1] > -5 "
        "ORDER BY d2"
    )
    d2 = ((MEANS.astype(np.float64) - MEANS[5].astype(np.float64)) ** 2).sum(axis=1)
    assert [row[0] for row in rows] == [DIDS[i] for i in np.argsort(d2)[:4]]
    np.testing.assert_allclose([row[1] for row in rows], np.sort(d2)[:4], rtol=1e-12)


def test_division_by_zero_follows_ieee(ask):
    [(values,)] = ask(
        "SELECT arr_map(x * 0, z) / arr_map(x - x, z[1:3]) FROM ml.latent "
        f"WHERE obs_publisher_did = '{DIDS[1]}'"
    )
    assert np.isnan(values).all() and len(values) == DIM


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("SELECT z FROM ml.latent WHERE z > 1", "a condition takes single values, not arrays"),
        ("SELECT SQRT(z) FROM ml.latent", "SQRT takes single values, not arrays"),
        ("SELECT z FROM ml.latent ORDER BY z", "ORDER BY takes single values"),
        ("SELECT z_var AS v FROM ml.latent ORDER BY v", "ORDER BY takes single values"),
        ("SELECT z0[1] FROM ml.latent", "picks elements of arrays; z0 is not one"),
        ("SELECT z[1.5] FROM ml.latent", "array indexes are integers"),
        ("SELECT z[0:2] FROM ml.latent", "array indexes count from 1"),
        ("SELECT arr_dot(z, z0) FROM ml.latent", "arr_dot takes arrays; z0 is not one"),
        ("SELECT arr_dot(z) FROM ml.latent", "arr_dot takes 2 arrays"),
        ("SELECT arr_map(x, z0) FROM ml.latent", "arr_map maps over an array"),
        ("SELECT arr_map(UPPER(obs_publisher_did), z) FROM ml.latent", "must give a number"),
        ("SELECT z || 'a' FROM ml.latent", "|| takes single values"),
        ("SELECT z + obs_publisher_did FROM ml.latent", "arrays combine with arrays and numbers only"),
        ("SELECT SUM(DISTINCT z) FROM ml.latent", "SUM(DISTINCT …) takes single values"),
        ("SELECT CAST(z AS DOUBLE PRECISION) FROM ml.latent", "CAST takes single values"),
        ("SELECT z[1:2:3] FROM ml.latent", "a slice takes two bounds and no step"),
        ("SELECT POINT('ICRS', z, 1) FROM ml.latent", "POINT takes single values"),
        ("SELECT IN_UNIT(z, 'km') FROM ml.latent", "IN_UNIT takes single values"),
    ],
)
def test_misuse_is_a_clear_adql_error(query, message):
    for engine in (SQLITE, Engine("postgres")):
        with pytest.raises(ADQLError, match=re.escape(message)):
            translate(query, TABLES, 10, engine=engine)


def test_the_arrays_are_declared_with_the_latent_size():
    columns = {c.name: c for c in TABLES.table("ml.latent").columns}
    assert (columns["z"].datatype, columns["z"].arraysize) == ("float", str(DIM))
    assert (columns["z_var"].datatype, columns["z_var"].arraysize) == ("float", str(DIM))
    assert "z" not in {c.name for c in load_tableset(latent_dim=0).table("ml.latent").columns}
    outputs = translate(
        "SELECT z, z[2:4], z[4:9], z - z, arr_map(x, z), z[1] FROM ml.latent", TABLES, 1
    ).columns
    assert [(c.datatype, c.arraysize) for c in outputs] == [
        ("float", "5"), ("float", "3"), ("float", "2"), ("double", "5"), ("double", "5"), ("float", None)
    ]  # fmt: skip


# -- through the service: the demo archive and its trained model ---------------------------------

DISTANCE_QUERY = (
    "SELECT TOP {k} l.obs_publisher_did, arr_dot(l.z[2:4] - r.z[2:4], l.z[2:4] - r.z[2:4]) AS d2 "
    "FROM ml.latent AS l, ml.latent AS r WHERE r.obs_publisher_did = '{did}'{extra} ORDER BY d2"
)


def _reference(live_server) -> str:
    return f"ivo://{live_server.config['archive']['authority']}/~?miles/m0005"


JOINED_QUERY = (
    "SELECT TOP {k} l.obs_publisher_did, arr_dot(r.z[2:4] - l.z[2:4], r.z[2:4] - l.z[2:4]) AS d2 "
    "FROM ml.latent AS l JOIN ml.latent AS r ON r.obs_publisher_did = '{did}'{extra} ORDER BY 2"
)


@pytest.mark.parametrize("template", [DISTANCE_QUERY, JOINED_QUERY])
def test_order_by_arr_dot_is_answered_by_exact_search(live_server, template):
    """The fast path reads only the rows exact search finds nearest, and answers as row by row does."""
    from model.similarity import exact_search
    from service.state import state
    from service.tap.schema import current_tableset
    from service.tap.sync import ModelSimilarity, nearest_candidates

    with live_server.app.app_context():
        archive = state().archive()
        tables = current_tableset(archive)
        similarity = ModelSimilarity()
        served = similarity.served
        reference = _reference(live_server)
        translation = translate(template.format(k=15, did=reference, extra=""), tables, 1000)
        search = translation.vector_search
        assert search is not None and search.dims == [1, 2, 3]
        prepare = lambda connection: register_functions(connection, similarity)  # noqa: E731
        with archive.db.query_session(60, None, prepare) as session:
            assert nearest_candidates(session, search, similarity)
            fast, _ = session.run(search.sql, translation.limit)
            slow, _ = session.run(translation.sql, translation.limit)
        rows, distances = exact_search(
            served.model.latents, served.model.latents[served.row_of(reference)], 15, [1, 2, 3]
        )
    assert [r[0] for r in fast] == [r[0] for r in slow] == [served.dids[int(r)] for r in rows]
    np.testing.assert_allclose([r[1] for r in fast], [r[1] for r in slow], rtol=0, atol=0)
    np.testing.assert_allclose(np.sqrt([r[1] for r in fast]), distances, rtol=1e-6)
    assert fast[0][0] == reference and fast[0][1] == 0.0


@pytest.mark.parametrize(
    "query",
    [
        DISTANCE_QUERY.replace("ORDER BY d2", "ORDER BY d2 DESC"),
        DISTANCE_QUERY.replace("{extra}", " AND l.anomaly_score < 3{extra}"),
        DISTANCE_QUERY.replace("r.obs_publisher_did = '{did}'", "l.obs_publisher_did = r.obs_publisher_did"),
        DISTANCE_QUERY.replace("l.z[2:4] - r.z[2:4], l.z[2:4]", "l.z[2:4] - r.z[2:4], l.z[1:3]"),
        DISTANCE_QUERY.replace("FROM ml.latent AS l,", "FROM ml.latent AS l LEFT JOIN"),
    ],
)
def test_other_shapes_run_row_by_row(query):
    translation = translate(query.format(k=5, did="ivo://x/~?a", extra=""), TABLES, 10)
    assert translation.vector_search is None


def test_the_version_tie_keeps_the_fast_path():
    query = DISTANCE_QUERY.format(k=5, did="ivo://x/~?a", extra=" AND l.model_version = r.model_version")
    search = translate(query, TABLES, 10).vector_search
    assert search is not None and search.same_version


@pytest.mark.parametrize("server", ["live_server", "postgres_live_server"])
@pytest.mark.parametrize("fmt", ["votable", "votable/b2"])
def test_arrays_reach_pyvo_and_stilts(request, server, tmp_path, fmt):
    import subprocess

    import pyvo
    import requests

    live_server = request.getfixturevalue(server)

    query = (
        "SELECT TOP 5 l.obs_publisher_did, l.z, l.z_var, l.z[2:4] - r.z[2:4] AS diff, "
        "arr_dot(l.z[2:4] - r.z[2:4], l.z[2:4] - r.z[2:4]) AS d2 FROM ml.latent AS l, ml.latent AS r "
        f"WHERE r.obs_publisher_did = '{_reference(live_server)}' ORDER BY d2"
    )
    table = pyvo.dal.TAPService(live_server.url + "/tap").run_sync(query, format=fmt).to_table()
    size = len(table["z"][0])
    assert size >= 3 and table["z"].dtype == np.float32 and table["diff"].shape == (5, 3)
    np.testing.assert_allclose(
        table["d2"], np.sum(np.asarray(table["diff"], dtype=np.float64) ** 2, axis=1), rtol=1e-12
    )
    assert np.all(np.asarray(table["diff"])[0] == 0)  # the reference itself comes first
    response = requests.post(
        live_server.url + "/tap/sync",
        data={"REQUEST": "doQuery", "LANG": "ADQL", "QUERY": query, "RESPONSEFORMAT": fmt},
        timeout=60,
    )
    path = tmp_path / "result.vot"
    path.write_bytes(response.content)
    out = subprocess.run(
        ["stilts", "tpipe", f"in={path}", "cmd=keepcols 'z diff'; addcol n size(z); addcol first z[0]",
         "ofmt=csv"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 6 and lines[0].split(",")[-2:] == ["n", "first"]
    for line, z in zip(lines[1:], np.asarray(table["z"]), strict=True):
        n, first = line.split(",")[-2:]
        assert int(n) == size and np.float32(first) == z[0]
    from tests import stilts

    assert stilts.votlint_content(response.content, fmt).ok

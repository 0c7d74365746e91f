"""The storage layer on both back ends: one schema, one SQL, the same answers from SQLite and PostgreSQL."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from service.archive import Archive
from service.storage import DatabaseError, arrays, describe, is_server_url, open_database
from service.storage.copy import TABLES
from service.storage.postgres import postgres_ddl
from service.storage.sqlite import great_circle_degrees
from service.uws import jobs


def _spectrum(did: str, **labels) -> dict:
    row = {
        "obs_publisher_did": did,
        "obs_id": did.rsplit("/", 1)[-1],
        "obs_collection": "test",
        "em_min": 3.5e-7,
        "em_max": 7.4e-7,
        "em_xel": 4300,
        "medium": "air",
        "source_path": "/nowhere.fits",
        "source_format": "fits",
        "source_index": 0,
        "source_sha256": "0" * 64,
        "ingested_at": "2026-12-05T00:00:00",
        "extra_labels": "{}",
    }
    return row | labels


def test_spectra_round_trip_by_name_and_position(tmp_path, database_location):
    archive = Archive(tmp_path, database_location)
    rows = [_spectrum("ivo://x/~?test/a", teff=5777.0, s_ra=10.5), _spectrum("ivo://x/~?test/b", logg=4.44)]
    assert archive.upsert_spectra(rows) == (2, 0)
    assert archive.upsert_spectra([_spectrum("ivo://x/~?test/a", teff=5800.0)]) == (0, 1)
    found = archive.spectra()
    assert [r["obs_publisher_did"] for r in found] == ["ivo://x/~?test/a", "ivo://x/~?test/b"]
    assert found[0]["teff"] == 5800.0 and found[0]["TEFF"] == 5800.0
    assert found[0]["s_ra"] is None  # the upsert replaced the row's values
    assert found[1][found[1].keys().index("logg")] == 4.44
    assert dict(found[1])["em_xel"] == 4300 and isinstance(dict(found[1])["em_xel"], int)
    assert archive.count() == 2
    labels = archive.label_arrays(["ivo://x/~?test/b", "ivo://x/~?test/a"])
    np.testing.assert_array_equal(labels["teff"], [np.nan, 5800.0])
    archive.close()


def test_doubles_keep_every_digit(tmp_path, database_location):
    """SQLite's REAL is an 8-byte double; PostgreSQL's REAL is not, so the schema says DOUBLE PRECISION."""
    archive = Archive(tmp_path, database_location)
    ra = 123.45678901234567
    archive.upsert_spectra([_spectrum("ivo://x/~?test/a", s_ra=ra)])
    assert archive.db.scalar("SELECT s_ra FROM spectrum") == ra
    archive.close()


def test_a_failed_transaction_leaves_nothing(tmp_path, database_location):
    archive = Archive(tmp_path, database_location)
    with pytest.raises(RuntimeError), archive.transaction() as db:
        db.execute("INSERT INTO archive_setting VALUES (?, ?)", ("half", "written"))
        raise RuntimeError("stop half-way")
    assert archive.db.one("SELECT value FROM archive_setting WHERE name = ?", ("half",)) is None
    archive.set_setting("whole", "1")
    archive.set_setting("whole", "2")
    assert archive.db.scalar("SELECT value FROM archive_setting WHERE name = 'whole'") == "2"
    archive.close()


def test_a_read_only_archive_refuses_writes(tmp_path, database_location):
    Archive(tmp_path, database_location).close()
    reader = Archive(tmp_path, database_location, readonly=True)
    with pytest.raises(DatabaseError):
        reader.db.execute("INSERT INTO archive_setting VALUES (?, ?)", ("sneaky", "write"))
    reader.db.end_request()  # the connection is still usable after the refusal
    assert reader.db.scalar("SELECT COUNT(*) FROM archive_setting WHERE name = 'sneaky'") == 0
    reader.close()


def test_placeholders_and_percent_signs(tmp_path, database_location):
    """``?`` marks an argument only outside quotes; ``%`` is never a placeholder (psycopg's own syntax)."""
    archive = Archive(tmp_path, database_location)
    assert archive.db.scalar("SELECT ? || '%s?' || '''?%'", ("a",)) == "a%s?'?%"
    assert archive.db.scalar("SELECT '%d' || '?'") == "%d?"
    assert [
        r[0] for r in archive.db.execute("SELECT name FROM archive_setting WHERE name LIKE ?", ("base%",))
    ] == ["base_url"]
    archive.close()


def test_the_great_circle_distance_is_the_same_function_on_both(tmp_path, database_location):
    archive = Archive(tmp_path, database_location)
    rng = np.random.default_rng(5)
    for ra1, dec1, ra2, dec2 in zip(*(rng.uniform(0, 360, 50), rng.uniform(-90, 90, 50)) * 2, strict=True):
        expected = great_circle_degrees(ra1, dec1, ra2, dec2)
        got = archive.db.scalar("SELECT latentvo_sep(?, ?, ?, ?)", (ra1, dec1, ra2, dec2))
        assert got == pytest.approx(expected, abs=1e-9)
    assert archive.db.scalar("SELECT latentvo_sep(?, ?, ?, ?)", (None, 1.0, 2.0, 3.0)) is None
    assert archive.db.scalar("SELECT latentvo_sep(?, ?, ?, ?)", (10.0, 20.0, 10.0, 20.0)) == pytest.approx(
        0.0
    )
    archive.close()


def test_end_of_request_drops_temporary_tables_and_open_transactions(tmp_path, database_location):
    reader = Archive(tmp_path, database_location)  # a PostgreSQL read-only session makes no TEMP tables
    reader.db.execute("CREATE TEMP TABLE scratch (x INTEGER)")
    reader.db.execute("INSERT INTO scratch VALUES (?)", (1,))
    reader.db.execute("BEGIN")
    reader.db.end_request()
    with pytest.raises(DatabaseError):
        reader.db.execute("SELECT x FROM scratch")
    reader.db.end_request()
    reader.close()


def test_latent_columns_are_added_once_and_hold_the_matrix(tmp_path, database_location):
    archive = Archive(tmp_path, database_location)
    dids = ["ivo://x/~?test/a", "ivo://x/~?test/b"]
    archive.upsert_spectra([_spectrum(d) for d in dids])
    archive.add_model(1, _model_config(), {"n_train": 2, "val_rmse": 0.1})
    mean, var = np.arange(6.0).reshape(2, 3) / 7, np.full((2, 3), 0.25)
    for _ in range(2):  # rewriting a version replaces its rows
        archive.write_latents(1, dids, mean, var, np.array([0.5, 0.25]))
    columns = archive.db.columns("ml_latent")
    assert [c for c in columns if c.startswith("z")] == [
        "z0",
        "z0_var",
        "z1",
        "z1_var",
        "z2",
        "z2_var",
        "z",
        "z_var",
    ]
    assert archive.latent_dids(1) == dids and archive.row_of(1, dids[1]) == 1
    stored = archive.db.all("SELECT z0, z1, z2 FROM ml_latent ORDER BY row_index")
    np.testing.assert_array_equal(np.array([tuple(r) for r in stored]), mean)
    # The arrays (float32), also when filled in later for rows written before they existed.
    for filled in (0, 2):
        if filled:
            archive.db.execute("UPDATE ml_latent SET z = NULL, z_var = NULL")
        assert archive.fill_latent_arrays() == filled
        vectors = archive.db.all("SELECT z, z_var FROM ml_latent ORDER BY row_index")
        np.testing.assert_array_equal(
            np.array([arrays.unpack(r[0]) for r in vectors]).astype(np.float32), mean.astype(np.float32)
        )
        np.testing.assert_array_equal(np.array([arrays.unpack(r[1]) for r in vectors]), var)
    archive.make_current(1)
    assert archive.current_model()["model_version"] == 1
    archive.close()


def _model_config() -> dict:
    return {
        "grid": {"wave_min": 3500.0, "wave_max": 7400.0, "n_pixels": 256},
        "train": {"latent_dim": 3, "kl_weight": 1.0},
        "training_set_hash": "0" * 64,
    }


def test_the_schema_for_postgresql_keeps_every_table_and_view():
    from service.storage import schema_script

    ddl = postgres_ddl(schema_script("sqlite"))
    assert " REAL" not in ddl and "DOUBLE PRECISION" in ddl
    assert "row_id            BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY" in ddl
    assert "DROP VIEW IF EXISTS ivoa_obscore;\nCREATE VIEW ivoa_obscore AS" in ddl
    for table in TABLES:  # every table the archive holds, as copy-database knows them
        assert f"CREATE TABLE IF NOT EXISTS {table} (" in ddl


def test_locations_are_told_apart_and_described_without_secrets():
    assert is_server_url("postgresql://latentvo@db.example/archive")
    assert is_server_url("postgres://u:p@h/d")
    assert not is_server_url("archive.sqlite")
    assert (
        describe("postgresql://latentvo:s3cret@db.example/archive")
        == "postgresql://latentvo:***@db.example/archive"
    )
    assert describe("archive.sqlite") == "archive.sqlite"


def test_a_server_nobody_answers_on_is_a_transient_error(tmp_path, monkeypatch):
    import socket

    from service.storage import postgres

    monkeypatch.setattr(postgres, "CONNECT_TIMEOUT", 2.0)
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(DatabaseError) as caught:
        open_database(f"postgresql://nobody@127.0.0.1:{port}/none", tmp_path)
    assert caught.value.transient


def test_two_job_stores_never_claim_one_job(tmp_path, database_location):
    """Of two stores (two processes or hosts) racing to claim a QUEUED job, exactly one wins, whatever
    the engine (PostgreSQL: FOR UPDATE SKIP LOCKED; SQLite: the write lock)."""
    Archive(tmp_path, database_location).close()
    stores = [jobs.JobStore(database_location, tmp_path) for _ in range(2)]
    for attempt in range(20):
        job_id = f"{attempt:016x}"
        stores[0].execute(
            "INSERT INTO uws_job (job_id, phase, creation_time, execution_duration, destruction, parameters) "
            "VALUES (?, 'QUEUED', '2026-12-05T00:00:00.000Z', 0, '2099-01-01T00:00:00.000Z', '{}')",
            (job_id,),
        )
        won: list[bool] = []
        start = threading.Barrier(2)

        def claim(store, job_id=job_id, start=start, won=won):
            start.wait()
            won.append(store.claim(job_id, runner=f"{id(store)}"))

        threads = [threading.Thread(target=claim, args=(s,)) for s in stores]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(won) == [False, True]
        assert stores[1].phases([job_id]) == {job_id: jobs.EXECUTING}
    listed = stores[1].jobs(jobs.TAP_KIND, last=3)
    assert [j.job_id for j in listed] == [f"{n:016x}" for n in (19, 18, 17)]
    for store in stores:
        store.close()


def test_an_older_archive_gains_the_columns_of_a_newer_release(tmp_path, database_location):
    """Columns added to resources/schema.sql (here the spectrum's class and type) are added to an
    archive built before them when it is next opened for writing; its rows stay as they were."""
    archive = Archive(tmp_path, database_location)
    archive.upsert_spectra([_spectrum("ivo://x/~?test/old")])
    archive.db.execute("DROP VIEW ivoa_obscore")
    for column in ("target_class", "spectral_type"):
        archive.db.execute(f"ALTER TABLE spectrum DROP COLUMN {column}")
    assert "target_class" not in archive.db.columns("spectrum")
    archive.close()
    archive = Archive(tmp_path, database_location)
    assert {"target_class", "spectral_type"} <= set(archive.db.columns("spectrum"))
    row = archive.db.one("SELECT obs_id, target_class, spectral_type FROM ivoa_obscore")
    assert tuple(row) == ("old", None, None)
    archive.upsert_spectra(
        [{**_spectrum("ivo://x/~?test/new"), "target_class": "K", "spectral_type": "K1IV"}]
    )
    assert archive.db.scalar("SELECT target_class FROM ivoa_obscore WHERE obs_id = 'new'") == "K"
    archive.close()

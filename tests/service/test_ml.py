"""/ml/models: promotion and rollback of the model in service, by the operator only, with no request
failing while the version in service changes."""

from __future__ import annotations

import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO

import pytest
import requests
from astropy.io.votable import parse

from service.archive import Archive
from tests.conftest import build_archive, free_url, serving, small_config

TOKEN = "operator-secret-token-for-tests"


@pytest.fixture(scope="module")
def operated(tmp_path_factory, demo_dir):
    """A served demo archive with two indexed versions (the second a copy of the first's files and
    rows) and an operator token."""
    config = small_config(
        tmp_path_factory.mktemp("ml"), service={"base_url": free_url()}, ml={"operator_token": TOKEN}
    )
    build_archive(config, [demo_dir / "miles_demo.fits"])
    archive = Archive.from_config(config)
    columns = [c for c in archive.db.columns("ml_model") if c not in ("model_version", "is_current")]
    names = ", ".join(columns)
    others = ", ".join(c for c in columns if c != "stage")
    with archive.transaction() as db:
        copy = (
            f"INSERT INTO ml_model (model_version, is_current, {names}) SELECT {{}}, 0, {names} FROM ml_model"
        )
        db.execute(copy.format(2) + " WHERE model_version = 1")
        latent = [c for c in db.columns("ml_latent") if c != "model_version"]
        listed = ", ".join(f'"{c}"' for c in latent)
        db.execute(f"INSERT INTO ml_latent (model_version, {listed}) SELECT 2, {listed} FROM ml_latent")
        db.execute(
            f"INSERT INTO ml_model (model_version, is_current, stage, {others}) "
            f"SELECT 3, 0, 'trained', {others} FROM ml_model WHERE model_version = 1"
        )
        db.execute(copy.format(4) + " WHERE model_version = 1")  # indexed, but its files are missing
    shutil.copytree(archive.model_dir(1), archive.model_dir(2))
    did = archive.latent_dids(1)[3]
    archive.close()
    with serving(config) as served:
        served.did = did
        yield served


def promote(server, version, token: str | None = TOKEN, **data) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return requests.post(f"{server.url}/ml/models/{version}", data=data, headers=headers, timeout=30)


def similar_version(server) -> int:
    response = requests.get(f"{server.url}/similar", params={"ID": server.did, "K": 5}, timeout=60)
    response.raise_for_status()
    document = parse(BytesIO(response.content))
    table = document.get_first_table()
    return int(next(p for p in table.params if p.name == "model_version").value)


def test_only_the_operator_may_promote(operated):
    missing = promote(operated, 2, token=None, current="true")
    assert missing.status_code == 401 and missing.headers["WWW-Authenticate"].startswith("Bearer")
    assert missing.json()["error"] == "AuthenticationFault"
    wrong = promote(operated, 2, token="not-the-token", current="true")
    assert wrong.status_code == 403 and "not the operator's" in wrong.json()["message"]
    assert TOKEN not in wrong.text
    assert [
        m["is_current"] for m in requests.get(f"{operated.url}/ml/models", timeout=30).json()["models"]
    ] == [True, False, False, False]


def test_without_a_configured_token_the_swap_is_off_over_http(live_server):
    response = promote(live_server, 1, current="true")
    assert response.status_code == 403 and "operator_token" in response.json()["message"]


def test_promotion_and_rollback_swap_what_every_answer_uses(operated):
    assert similar_version(operated) == 1
    answer = promote(operated, 2, current="true")
    assert answer.status_code == 200 and answer.json() == {
        "model_version": 2,
        "is_current": True,
        "previous": 1,
    }
    assert similar_version(operated) == 2
    back = promote(operated, 1, current="true")
    assert back.json()["previous"] == 2 and similar_version(operated) == 1


@pytest.mark.parametrize(
    ("version", "data", "status", "message"),
    [
        (9, {"current": "true"}, 404, "no model version 9"),
        ("abc", {"current": "true"}, 404, "versions are numbers"),
        (3, {"current": "true"}, 409, "is trained, not indexed"),
        (4, {"current": "true"}, 409, "files config.json, latent_mean.npy, index.ann are missing"),
        (2, {}, 400, "current=true"),
    ],
)
def test_bad_promotions_are_clear_json_errors(operated, version, data, status, message):
    response = promote(operated, version, **data)
    assert response.status_code == status and message in response.json()["message"]


def test_no_request_fails_while_versions_swap(operated):
    """Clients query /similar, SSAP SIMILAR_TO and TAP ml_knn while the operator swaps 1 → 2 → 1 …"""
    stop = threading.Event()
    knn = f"SELECT obs_id FROM ivoa.obscore WHERE 1 = ml_knn(obs_publisher_did, '{operated.did}', 5)"
    queries = [
        ("/similar", {"ID": operated.did, "K": 5}),
        ("/ssa/query", {"REQUEST": "queryData", "SIMILAR_TO": operated.did, "K": 5}),
        ("/tap/sync", {"REQUEST": "doQuery", "LANG": "ADQL", "QUERY": knn}),
    ]

    def client(n: int) -> tuple[int, list[str]]:
        done, failures = 0, []
        path, params = queries[n % len(queries)]
        with requests.Session() as session:
            while not stop.is_set():
                response = session.get(f"{operated.url}{path}", params=params, timeout=60)
                if response.status_code != 200 or b'value="ERROR"' in response.content:
                    failures.append(f"{path}: {response.status_code} {response.text[:200]}")
                done += 1
        return done, failures

    with ThreadPoolExecutor(max_workers=6) as pool:
        running = [pool.submit(client, n) for n in range(6)]
        for version in [2, 1] * 5:
            assert promote(operated, version, current="true").status_code == 200
            threading.Event().wait(0.2)
        stop.set()
        results = [r.result() for r in running]
    assert sum(done for done, _ in results) > 30
    assert [f for _, failures in results for f in failures] == []

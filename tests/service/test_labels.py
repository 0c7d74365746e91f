"""/explore/labelsets: the label sets of the active-learning page, saved answer by answer."""

from __future__ import annotations

import copy

import pytest
import requests

from service.archive import Archive
from tests.conftest import free_url, serving

pytestmark = pytest.mark.filterwarnings("ignore::astropy.units.UnitsWarning")


@pytest.fixture(scope="module")
def dids(live_server) -> list[str]:
    answer = requests.get(
        f"{live_server.url}/tap/sync",
        params={"LANG": "ADQL", "QUERY": "SELECT obs_publisher_did FROM ml.latent", "RESPONSEFORMAT": "csv"},
        timeout=30,
    )
    return sorted(answer.text.split()[1:])


def _create(server, classes=("single peak", "double peak")) -> dict:
    response = requests.post(f"{server.url}/explore/labelsets", json={"classes": list(classes)}, timeout=30)
    assert response.status_code == 201, response.text
    return response.json()


def _answer(server, set_id: str, *answers: tuple[str, str | None]) -> requests.Response:
    body = {"answers": [{"obs_publisher_did": d, "label": lab} for d, lab in answers]}
    return requests.post(f"{server.url}/explore/labelsets/{set_id}/answers", json=body, timeout=30)


def test_answers_are_saved_as_given_and_survive_a_restart(live_server, dids):
    made = _create(live_server)
    assert len(made["id"]) == 22 and made["url"].endswith(f"/explore/label?set={made['id']}")
    saved = _answer(
        live_server, made["id"], (dids[0], "single peak"), (dids[1], "not sure"), (dids[2], "BAD")
    )
    assert saved.status_code == 200, saved.text
    assert saved.json()["counts"] == {"single peak": 1, "double peak": 0, "not sure": 1, "bad": 1}
    changed = _answer(live_server, made["id"], (dids[0], "double peak"), (dids[1], None)).json()
    assert changed["counts"] == {"single peak": 0, "double peak": 1, "not sure": 0, "bad": 1}
    table = requests.get(f"{live_server.url}/explore/labelsets/{made['id']}/labels.csv", timeout=30)
    assert table.text.splitlines() == ["obs_publisher_did,label", f"{dids[0]},double peak"]  # classes only
    config = copy.deepcopy(live_server.config)
    config["service"]["base_url"] = free_url()
    with serving(config) as again:  # another server process of the same archive: a restart
        found = requests.get(f"{again.url}/explore/labelsets/{made['id']}", timeout=30).json()
    assert {a["obs_publisher_did"]: a["label"] for a in found["answers"]} == {
        dids[0]: "double peak",
        dids[2]: "bad",
    }


def test_a_label_table_brings_its_classes(live_server, dids):
    made = _create(live_server, classes=())
    table = "obs_publisher_did,label\n" + "".join(f"{d},{'AB'[i % 2]}\n" for i, d in enumerate(dids[:6]))
    response = requests.post(
        f"{live_server.url}/explore/labelsets/{made['id']}/answers",
        files={"labels": ("mine.csv", table.encode())},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert response.json()["classes"] == ["A", "B"] and response.json()["counts"]["A"] == 3


def test_rounds_count_propagation_jobs(live_server):
    made = _create(live_server)
    url = f"{live_server.url}/explore/labelsets/{made['id']}/rounds"
    bad = requests.post(url, json={"job": "http://elsewhere.example/x"}, timeout=30)
    assert bad.status_code == 400 and bad.json()["message"].startswith("send {")
    job = f"{live_server.url}/ml/propagate/0123456789abcdef"
    counted = requests.post(url, json={"job": job}, timeout=30).json()
    assert (counted["rounds"], counted["last_job"]) == (1, job)


def _answers(did: str, label) -> dict:
    return {"answers": [{"obs_publisher_did": did, "label": label}]}


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("", lambda did: {"classes": "A"}, 400, "classes must be a list"),
        ("", lambda did: {"classes": ["not sure"]}, 400, "is not allowed"),
        ("", lambda did: {"classes": [f"c{i}" for i in range(30)]}, 413, "at most 20 classes"),
        ("/{set}/answers", lambda did: _answers("ivo://nowhere/x", "A"), 400, "no spectrum of the model"),
        ("/{set}/answers", lambda did: _answers(did, 3), 400, "must be a text"),
        ("/{set}/answers", lambda did: {"nothing": 1}, 400, "send {"),
        ("/AAAAAAAAAAAAAAAAAAAAAA/answers", lambda did: {"answers": []}, 404, "no label set"),
        ("/../../etc/answers", lambda did: {"answers": []}, 404, None),
    ],
)  # fmt: skip
def test_bad_requests_get_clear_json_errors(live_server, dids, path, body, status, message):
    made = _create(live_server)
    response = requests.post(
        f"{live_server.url}/explore/labelsets{path.replace('{set}', made['id'])}",
        json=body(dids[0]),
        timeout=30,
    )
    assert response.status_code == status, response.text
    if message is not None:
        assert message in response.json()["message"]
    assert "Error" not in response.text


def test_sets_expire_like_jobs_and_answers_are_bounded(live_server, dids):
    config = copy.deepcopy(live_server.config)
    config["service"]["base_url"] = free_url()
    config["ml"]["propagate_max_labels"] = 2
    with serving(config) as bounded:
        made = _create(bounded)
        too_many = _answer(bounded, made["id"], *[(d, "single peak") for d in dids[:3]])
        assert too_many.status_code == 413 and "at most 2 answers" in too_many.json()["message"]
    archive = Archive.from_config(live_server.config)
    try:
        archive.db.execute(
            "UPDATE label_set SET destruction = '2000-01-01T00:00:00.000Z' WHERE set_id = ?", (made["id"],)
        )
    finally:
        archive.close()
    gone = requests.get(f"{live_server.url}/explore/labelsets/{made['id']}", timeout=30)
    assert gone.status_code == 404 and "expired" in gone.json()["message"]

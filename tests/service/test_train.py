"""/ml/train: training and fine-tuning as UWS jobs of the operator, in processes of their own."""

from __future__ import annotations

import io
import json
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import requests
from astropy.io.votable import parse

from service.archive import Archive
from tests.conftest import build_archive, free_url, serving, small_config
from tests.service.test_uws import UWS, text

pytestmark = pytest.mark.filterwarnings("ignore::astropy.units.UnitsWarning")

TOKEN = "operator-token-for-training-tests"
OPERATOR = {"Authorization": f"Bearer {TOKEN}"}
FINAL = {"COMPLETED", "ERROR", "ABORTED"}


@pytest.fixture(scope="module")
def trainer(tmp_path_factory, demo_dir):
    """A served demo archive of its own (training adds versions to it) with an operator token."""
    config = small_config(
        tmp_path_factory.mktemp("train"), service={"base_url": free_url()}, ml={"operator_token": TOKEN}
    )
    build_archive(config, [demo_dir / "miles_demo.fits"])
    with serving(config) as served:
        yield served


def _job(server, **params) -> str:
    response = requests.post(
        f"{server.url}/ml/train", data=params, headers=OPERATOR, allow_redirects=False, timeout=30
    )
    assert response.status_code == 303, response.text[:500]
    return response.headers["Location"]


def _get(url: str, **params) -> ET.Element:
    response = requests.get(url, params=params, headers=OPERATOR, timeout=90)
    assert response.status_code == 200, response.text[:300]
    from tests.xsd import validate

    assert validate(response.content) == [], response.text
    return ET.fromstring(response.content)


def _wait(url: str, phases: set[str] = FINAL, timeout: float = 300) -> ET.Element:
    deadline = time.monotonic() + timeout
    job = _get(url)
    while text(job, "phase") not in phases:
        assert time.monotonic() < deadline, ET.tostring(job)
        job = _get(url, WAIT="5")
    return job


def _info(job: ET.Element) -> dict[str, str]:
    return {v.get("name"): v.text for v in job.findall(f"{UWS}jobInfo/value")}


def _models(server) -> list[dict]:
    return requests.get(f"{server.url}/ml/models", timeout=30).json()["models"]


def _training_processes() -> list[int]:
    """Pids of running `python -m service.training` processes on this machine."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"service.training" in command and b"-m" in command:
                found.append(int(entry.name))
    return found


def test_only_the_operator_may_train(trainer, live_server):
    anonymous = requests.post(
        f"{trainer.url}/ml/train", data={"EPOCHS": "2"}, allow_redirects=False, timeout=30
    )
    assert anonymous.status_code == 401 and anonymous.headers["WWW-Authenticate"].startswith("Bearer")
    assert "<VOTABLE" in anonymous.text and "operator" in anonymous.text
    wrong = requests.get(f"{trainer.url}/ml/train", headers={"Authorization": "Bearer nope"}, timeout=30)
    assert wrong.status_code == 403 and TOKEN not in wrong.text
    off = requests.post(f"{live_server.url}/ml/train", data={}, headers=OPERATOR, timeout=30)
    assert off.status_code == 403 and "operator_token" in off.text  # no token configured: off over HTTP
    assert len(_models(trainer)) == 1
    listing = _get(f"{trainer.url}/ml/train")  # the operator's list, a valid UWS document
    assert listing.tag == f"{UWS}jobs"


def test_a_train_job_makes_a_new_version_not_in_service(trainer):
    """Trained on a SUBSET, with its own settings: a new indexed version with its MI table and
    provenance, not in service until promoted; then promoted, it serves."""
    url = _job(
        trainer,
        EPOCHS="3",
        LATENT_DIM="4",
        BETA="0.3",
        SEED="7",
        SUBSET="SELECT obs_publisher_did FROM ivoa.obscore WHERE teff > 4500",
        PHASE="RUN",
    )
    job = _wait(url)
    assert text(job, "phase") == "COMPLETED", ET.tostring(job)
    info = _info(job)
    assert info["stage"] == "done" and info["in_service"] == "False"
    result = requests.get(f"{url}/results/result", headers=OPERATOR, timeout=30)
    votable = parse(io.BytesIO(result.content))
    infos = {i.name: i.value for i in votable.resources[0].infos}
    version = int(infos["model_version"])
    assert infos["in_service"] == "false" and infos["latent_dim"] == "4" and infos["stage"] == "indexed"
    table = votable.get_first_table().to_table(use_names_over_ids=True)
    assert {"teff", "logg", "feh"} <= set(table["label"]) and set(table["dim"]) == {0, 1, 2, 3}
    assert (table["mi"] >= 0).all()
    provenance = json.loads(infos["provenance"])
    assert provenance["job_id"] == url.rsplit("/", 1)[1] and provenance["parameters"]["SEED"] == "7"
    archive = Archive.from_config(trainer.config, readonly=True)
    try:
        hot = archive.db.scalar("SELECT count(*) FROM spectrum WHERE teff > 4500")
        row = archive.model(version)
        assert not row["is_current"] and row["kl_weight"] == pytest.approx(0.3)
        checkpoint = json.loads((archive.model_dir(version) / "config.json").read_text())
        assert checkpoint["training_set"]["n_spectra"] == hot < archive.count()  # the SUBSET, no more
        assert checkpoint["provenance"] == provenance and checkpoint["train"]["seed"] == 7
        assert checkpoint["training_set_hash"] == infos["training_set_hash"]
    finally:
        archive.close()
    versions = {m["model_version"]: m for m in _models(trainer)}
    assert versions[version]["stage"] == "indexed" and versions[1]["is_current"]
    promoted = requests.post(
        f"{trainer.url}/ml/models/{version}", data={"current": "true"}, headers=OPERATOR, timeout=30
    )
    assert promoted.status_code == 200
    columns = requests.post(
        f"{trainer.url}/tap/sync",
        data={
            "LANG": "ADQL",
            "RESPONSEFORMAT": "csv",
            "QUERY": "SELECT column_name FROM TAP_SCHEMA.columns WHERE table_name = 'ml.latent' "
            "AND column_name LIKE 'z%' AND column_name NOT LIKE '%var'",
        },
        timeout=30,
    ).text.split()[1:]
    assert sorted(columns) == ["z", "z0", "z1", "z2", "z3"]  # TAP_SCHEMA follows the version in service
    rolled = requests.post(
        f"{trainer.url}/ml/models/1", data={"current": "true"}, headers=OPERATOR, timeout=30
    )
    assert rolled.status_code == 200


def test_fine_tuning_starts_from_a_version_and_may_promote(trainer):
    url = _job(trainer, FROM_VERSION="1", EPOCHS="2", PROMOTE="true", PHASE="RUN")
    job = _wait(url)
    assert text(job, "phase") == "COMPLETED", ET.tostring(job)
    versions = _models(trainer)
    newest = versions[-1]
    assert newest["is_current"] and newest["latent_dim"] == versions[0]["latent_dim"]
    rolled = requests.post(
        f"{trainer.url}/ml/models/1", data={"current": "true"}, headers=OPERATOR, timeout=30
    )
    assert rolled.status_code == 200 and _models(trainer)[0]["is_current"]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"EPOCHS": "0"}, "EPOCHS must lie between 1 and"),
        ({"BETA": "much"}, "BETA must be a number"),
        ({"FROM_VERSION": "99"}, "no such model version"),
        ({"FROM_VERSION": "1", "LATENT_DIM": "3"}, "keeps the latent dimension"),
        ({"SUBSET": "SELECT obs_id FROM ivoa.obscore"}, "must select the obs_publisher_did"),
        ({"SUBSET": "SELECT nonsense FROM"}, "ADQL"),
        ({"PROMOTE": "perhaps"}, "PROMOTE must be true or false"),
    ],
)
def test_bad_train_jobs_end_in_error(trainer, params, message):
    before = len(_models(trainer))
    url = _job(trainer, PHASE="RUN", EPOCHS=params.pop("EPOCHS", "1"), **params)
    job = _wait(url)
    assert text(job, "phase") == "ERROR"
    error = requests.get(f"{url}/error", headers=OPERATOR, timeout=30)
    assert message in error.text, error.text
    assert len(_models(trainer)) == before  # nothing half-made stays behind


def test_abort_stops_the_training_process_within_ten_seconds(trainer):
    before = len(_models(trainer))
    url = _job(trainer, EPOCHS="10000", PHASE="RUN")
    deadline = time.monotonic() + 120
    while int(_info(_get(url)).get("epoch") or 0) < 1:  # training, its progress reported
        assert time.monotonic() < deadline
        time.sleep(0.5)
    running = _training_processes()
    assert running
    aborted_at = time.monotonic()
    answer = requests.post(
        f"{url}/phase", data={"PHASE": "ABORT"}, headers=OPERATOR, allow_redirects=False, timeout=30
    )
    assert answer.status_code == 303
    while any(pid in _training_processes() for pid in running):
        assert time.monotonic() - aborted_at < 10, "the training process outlived ABORT by 10 s"
        time.sleep(0.2)
    assert text(_get(url), "phase") == "ABORTED"
    while len(_models(trainer)) != before:  # the version it had begun, removed
        assert time.monotonic() - aborted_at < 15, _models(trainer)
        time.sleep(0.2)

"""/ml/propagate: label propagation as UWS 1.1 jobs over the live service and its demo archive.

The labels are the demo's real MILES temperature classes (ivoa.obscore.target_class): a few per
class go in, every encoded spectrum comes back with class probabilities and a query rank.
"""

from __future__ import annotations

import copy
import io
import json
import threading
import time
import xml.etree.ElementTree as ET
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import requests
from astropy.io.votable import from_table, parse
from astropy.table import Table

from tests.conftest import free_url, serving
from tests.service.test_uws import UWS, document, text, wait_for

pytestmark = pytest.mark.filterwarnings("ignore::astropy.units.UnitsWarning")

#: Labels per class given to a job.
PER_CLASS = 4


@pytest.fixture(scope="module")
def classes(live_server) -> dict[str, str]:
    """Every demo spectrum's temperature class, from the service's own TAP."""
    answer = requests.post(
        f"{live_server.url}/tap/sync",
        data={
            "LANG": "ADQL",
            "QUERY": "SELECT obs_publisher_did, target_class FROM ivoa.obscore "
            "WHERE target_class IS NOT NULL",
        },
        timeout=60,
    )
    table = parse(io.BytesIO(answer.content)).get_first_table().to_table(use_names_over_ids=True)
    return {str(d): str(c) for d, c in zip(table["obs_publisher_did"], table["target_class"], strict=True)}


def _labels(classes: dict[str, str], per_class: int = PER_CLASS, seed: int = 1) -> dict[str, str]:
    """``per_class`` labelled spectra of every class with at least three times as many."""
    rng = np.random.default_rng(seed)
    counts = Counter(classes.values())
    chosen = {}
    for cls in sorted(c for c, n in counts.items() if n >= 3 * per_class):
        members = sorted(d for d, c in classes.items() if c == cls)
        for did in rng.choice(members, per_class, replace=False):
            chosen[str(did)] = cls
    return chosen


def _votable(rows: dict[str, str]) -> bytes:
    out = io.BytesIO()
    from_table(Table({"obs_publisher_did": list(rows), "label": list(rows.values())})).to_xml(out)
    return out.getvalue()


def _submit(server, files=None, **params) -> str:
    response = requests.post(
        f"{server.url}/ml/propagate", data=params, files=files, allow_redirects=False, timeout=30
    )
    assert response.status_code == 303, response.text[:500]
    return response.headers["Location"]


def _result(url: str):
    job = wait_for(url, {"COMPLETED", "ERROR", "ABORTED"})
    assert text(job, "phase") == "COMPLETED", ET.tostring(job)
    href = job.find(f"{UWS}results/{UWS}result").get("{http://www.w3.org/1999/xlink}href")
    answer = requests.get(href, timeout=60)
    assert answer.status_code == 200 and answer.headers["Content-Type"].startswith("application/x-votable")
    return parse(io.BytesIO(answer.content)), job


def test_propagation_labels_the_archive_from_a_few_real_classes(live_server, classes):
    """4 labels per class in, every encoded spectrum out: probabilities that sum to 1, the given
    labels kept, a query rank over the rest, DataLink on the DIDs; and better than guessing."""
    labels = _labels(classes)
    url = _submit(
        live_server,
        files={"labels": ("labels.xml", _votable(labels))},
        UPLOAD="labels,param:labels",
        PHASE="RUN",
    )
    assert url.startswith(f"{live_server.url}/ml/propagate/")
    votable, job = _result(url)
    info = {i.name: i.value for i in votable.resources[0].infos}
    assert info["method"] == "spreading" and info["labels_used"] == str(len(labels))
    assert json.loads(info["classes"]) == sorted(set(labels.values()))
    table = votable.get_first_table().to_table(use_names_over_ids=True)
    count = requests.post(
        f"{live_server.url}/tap/sync",
        data={"LANG": "ADQL", "QUERY": "SELECT COUNT(*) AS n FROM ml.latent", "RESPONSEFORMAT": "csv"},
        timeout=60,
    )
    assert len(table) == int(count.text.split()[-1]) > 100
    columns = [f"p_{c}" for c in json.loads(info["classes"])]
    probabilities = np.column_stack([np.asarray(table[c], dtype=float) for c in columns])
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-9)
    dids = [str(d) for d in table["obs_publisher_did"]]
    blank = np.ma.getmaskarray(table["given_label"])  # null (or empty) where no label was given
    given = {d: str(g) for d, g, m in zip(dids, table["given_label"], blank, strict=True) if not m and g}
    assert given == labels  # every label given comes back as given, and no other
    rank = np.ma.filled(table["query_rank"].astype(float), np.nan)
    unlabelled = np.array([d not in labels for d in dids])
    assert np.isnan(rank[~unlabelled]).all()
    assert sorted(rank[unlabelled].astype(int)) == list(range(1, unlabelled.sum() + 1))
    first = int(np.nanargmin(rank))  # the one to ask about first is among the least certain
    assert table["margin"][first] <= np.quantile(np.asarray(table["margin"])[unlabelled], 0.1)
    predicted = {d: str(lab) for d, lab in zip(dids, table["label"], strict=True)}
    judged = [d for d in classes if d in predicted and d not in labels and classes[d] in set(labels.values())]
    accuracy = np.mean([predicted[d] == classes[d] for d in judged])
    majority = max(Counter(classes[d] for d in judged).values()) / len(judged)
    assert accuracy > majority + 0.1, (accuracy, majority)
    descriptors = [r for r in votable.resources if r.type == "meta" and r.utype == "adhoc:service"]
    assert [p.value for r in descriptors for p in r.params if p.name == "accessURL"] == [
        f"{live_server.url}/datalink/links"
    ]
    assert job.find(f"{UWS}jobInfo") is not None  # progress reported as the job went


def test_the_result_goes_back_into_tap_as_an_upload(live_server, classes):
    """The result VOTable (BINARY2) as TAP_UPLOAD, joined with ivoa.obscore: the labelled archive."""
    url = _submit(
        live_server,
        files={"labels": ("labels.xml", _votable(_labels(classes)))},
        UPLOAD="labels,param:labels",
        PHASE="RUN",
    )
    _result(url)
    result = requests.get(f"{url}/results/result", timeout=30).content
    answer = requests.post(
        f"{live_server.url}/tap/sync",
        data={
            "LANG": "ADQL",
            "UPLOAD": "p,param:p",
            "QUERY": "SELECT o.target_class, p.label, COUNT(*) AS n FROM TAP_UPLOAD.p AS p JOIN ivoa.obscore "
            "AS o ON o.obs_publisher_did = p.obs_publisher_did WHERE p.query_rank <= 20 "
            "GROUP BY o.target_class, p.label",
        },
        files={"p": ("result.xml", result)},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text[-500:]
    table = parse(io.BytesIO(answer.content)).get_first_table().to_table(use_names_over_ids=True)
    assert sum(int(n) for n in table["n"]) == 20  # the 20 spectra to ask about first


def test_csv_labels_knn_method_and_dims(live_server, classes):
    """A CSV table (blank labels and unknown DIDs left out and counted), METHOD=knn along DIMS."""
    labels = _labels(classes, per_class=3, seed=2)
    lines = ["obs_publisher_did,label", *(f"{d},{c}" for d, c in labels.items())]
    lines += ["ivo://nowhere/~?x/1,A", f"{next(iter(classes))},"]
    url = _submit(
        live_server,
        files={"t": ("labels.csv", "\n".join(lines).encode())},
        UPLOAD="labels,param:t",
        METHOD="knn",
        DIMS="0 1 2",
        PHASE="RUN",
    )
    votable, _ = _result(url)
    info = {i.name: i.value for i in votable.resources[0].infos}
    assert (info["method"], info["dims"], info["labels_unknown"], info["labels_blank"]) == (
        "knn",
        "0 1 2",
        "1",
        "1",
    )
    table = votable.get_first_table().to_table(use_names_over_ids=True)
    assert set(str(lab) for lab in table["label"]) <= set(labels.values())


@pytest.mark.parametrize(
    ("params", "files", "message"),
    [
        ({}, None, "UPLOAD=labels,param:labels"),
        ({"UPLOAD": "labels,param:labels", "METHOD": "magic"}, "two", "METHOD must be spreading or knn"),
        ({"UPLOAD": "labels,param:labels"}, "one", "at least two classes"),
        ({"UPLOAD": "labels,param:labels", "DIMS": "0 99"}, "two", "DIMS must lie between"),
        ({"UPLOAD": "labels,param:labels", "MODEL_VERSION": "999"}, "two", "no such model version"),
        ({"UPLOAD": "labels,param:labels"}, "nocolumn", "no column 'label'"),
        ({"UPLOAD": "labels,param:labels"}, "garbage", "UTF-8 CSV"),
        ({"UPLOAD": "labels,http://127.0.0.1:9/x.xml"}, None, "UPLOAD labels"),
    ],
)  # fmt: skip
def test_bad_jobs_end_in_error_with_a_clear_message(live_server, classes, params, files, message):
    dids = sorted(classes)
    tables = {
        "two": _votable({dids[0]: "A", dids[1]: "B"}),
        "one": _votable({dids[0]: "A", dids[1]: "A"}),
        "nocolumn": b"obs_publisher_did,kind\nivo://x,A\n",
        "garbage": bytes(range(256)) * 4,
    }
    sent = {"labels": ("labels", tables[files])} if files else None
    url = _submit(live_server, files=sent, PHASE="RUN", **params)
    job = wait_for(url, {"COMPLETED", "ERROR", "ABORTED"})
    assert text(job, "phase") == "ERROR"
    error = requests.get(f"{url}/error", timeout=30)
    assert error.status_code == 200 and message in error.text, error.text
    assert "Error" not in error.text.replace("ERROR", "").replace("error", "")  # no class names


def test_job_lists_keep_their_kinds_apart(live_server, classes):
    """A propagation job is not found under /tap/async, nor a TAP job under /ml/propagate; each list
    shows its own; unknown jobs are 404 DALI errors."""
    url = _submit(
        live_server, files={"labels": ("l", _votable(_labels(classes)))}, UPLOAD="labels,param:labels"
    )
    job_id = url.rsplit("/", 1)[1]
    assert requests.get(f"{live_server.url}/tap/async/{job_id}", timeout=30).status_code == 404
    mine = document(f"{live_server.url}/ml/propagate")
    assert job_id in [ref.get("id") for ref in mine.findall(f"{UWS}jobref")]
    tap = document(f"{live_server.url}/tap/async")
    assert job_id not in [ref.get("id") for ref in tap.findall(f"{UWS}jobref")]
    missing = requests.get(f"{live_server.url}/ml/propagate/0123456789abcdef", timeout=30)
    assert missing.status_code == 404 and "<VOTABLE" in missing.text
    deleted = requests.delete(url, allow_redirects=False, timeout=30)
    assert deleted.status_code == 303 and deleted.headers["Location"].endswith("/ml/propagate?LAST=20")
    assert requests.get(url, timeout=30).status_code == 404


def test_capabilities_declare_the_job_service(live_server):
    from tests.xsd import validate

    response = requests.get(f"{live_server.url}/ml/capabilities", timeout=30)
    assert response.status_code == 200 and validate(response.content) == [], response.text
    root = ET.fromstring(response.content)
    caps = {c.get("standardID"): c for c in root.findall("capability")}
    uws = caps["ivo://ivoa.net/std/UWS#rest-1.1"]
    assert uws.findtext("interface/accessURL") == f"{live_server.url}/ml/propagate"
    assert {p.findtext("name") for p in uws.iter("param")} == {"UPLOAD", "METHOD", "DIMS", "MODEL_VERSION"}
    assert "ivo://ivoa.net/std/VOSI#availability" in caps
    available = requests.get(f"{live_server.url}/ml/availability", timeout=60)
    assert available.status_code == 200 and "<vosi:available>true</vosi:available>" in available.text


class _SlowTable(BaseHTTPRequestHandler):
    """Answers a label table after a few seconds: a job that reads it stays EXECUTING meanwhile."""

    body = b""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        time.sleep(4)
        self.send_response(200)
        self.send_header("Content-Type", "text/csv")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *_args) -> None:
        pass


def test_running_jobs_are_bounded_and_the_labels_per_table(live_server, classes):
    """Past propagate_max_active jobs queued or running, PHASE=RUN is refused with 503 and the job
    stays PENDING; a table of more labels than propagate_max_labels ends in ERROR."""
    labels = _labels(classes)
    _SlowTable.body = (
        "obs_publisher_did,label\n" + "".join(f"{d},{c}\n" for d, c in labels.items())
    ).encode()
    slow = ThreadingHTTPServer(("127.0.0.1", 0), _SlowTable)
    threading.Thread(target=slow.serve_forever, daemon=True).start()
    config = copy.deepcopy(live_server.config)
    config["service"]["base_url"] = free_url()
    config["service"]["upload_url_allow"] = ["127.0.0.1"]
    config["ml"]["propagate_max_active"] = 1
    config["ml"]["propagate_max_labels"] = len(labels) - 1
    try:
        with serving(config) as server:
            first = _submit(
                server, UPLOAD=f"labels,http://127.0.0.1:{slow.server_port}/labels.csv", PHASE="RUN"
            )
            second = _submit(server, files={"labels": ("l", _votable(labels))}, UPLOAD="labels,param:labels")
            refused = requests.post(
                f"{second}/phase", data={"PHASE": "RUN"}, allow_redirects=False, timeout=30
            )
            assert refused.status_code == 503 and "<VOTABLE" in refused.text, refused.text
            assert "jobs of this kind are queued or running" in refused.text
            assert text(document(second), "phase") == "PENDING"
            wait_for(first, {"ERROR", "COMPLETED"})
            assert "at most" in requests.get(f"{first}/error", timeout=30).text  # one label too many
            ran = requests.post(f"{second}/phase", data={"PHASE": "RUN"}, allow_redirects=False, timeout=30)
            assert ran.status_code == 303
    finally:
        slow.shutdown()

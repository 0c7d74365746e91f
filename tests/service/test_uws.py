"""TAP async (UWS 1.1) over the live server: raw HTTP, the vendored UWS schema, pyvo, and a restart."""

from __future__ import annotations

import io
import json
import socket
import sqlite3
import subprocess
import time
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
from astropy.io.votable import parse
from pyvo.dal import DALQueryError, TAPService

from service.uws import jobs
from tests.conftest import free_url, serving
from tests.xsd import validate

pytestmark = pytest.mark.filterwarnings("ignore::astropy.units.UnitsWarning")

UWS = "{http://www.ivoa.net/xml/UWS/v1.0}"
XLINK_HREF = "{http://www.w3.org/1999/xlink}href"
XSI_NIL = "{http://www.w3.org/2001/XMLSchema-instance}nil"
QUERY = "SELECT TOP 3 obs_publisher_did, target_name FROM ivoa.obscore ORDER BY obs_publisher_did"
#: Billions of rows: runs until its time is up or it is aborted.
SLOW = "SELECT COUNT(*) AS n FROM ivoa.obscore AS a, ivoa.obscore AS b, ivoa.obscore AS c, ivoa.obscore AS d"
FINAL = {"COMPLETED", "ERROR", "ABORTED"}


# -- helpers -------------------------------------------------------------------------------------


def async_url(server) -> str:
    return f"{server.url}/tap/async"


def create(server, **params) -> str:
    """POST a new job; the URL the 303 points to."""
    response = requests.post(
        async_url(server), data={"LANG": "ADQL", **params}, allow_redirects=False, timeout=30
    )
    assert response.status_code == 303, response.text[:300]
    return response.headers["Location"]


def document(url: str, **params) -> ET.Element:
    """A job (or job list) document, after checking it against the UWS 1.1 schema."""
    response = requests.get(url, params=params, timeout=90)
    assert response.status_code == 200, response.text[:300]
    assert response.headers["Content-Type"].startswith("text/xml")
    assert validate(response.content) == [], response.text
    return ET.fromstring(response.content)


def text(element: ET.Element, tag: str) -> str | None:
    return element.findtext(f"{UWS}{tag}")


def phase(url: str) -> str:
    return requests.get(f"{url}/phase", timeout=30).text


def post(url: str, **data) -> requests.Response:
    return requests.post(url, data=data, allow_redirects=False, timeout=30)


def wait_for(url: str, phases: set[str], timeout: float = 60) -> ET.Element:
    deadline = time.monotonic() + timeout
    job = document(url)
    while text(job, "phase") not in phases:
        assert time.monotonic() < deadline, ET.tostring(job)
        job = document(url, WAIT="5")
    return job


def jobs_dir(server) -> Path:
    return Path(server.config["archive"]["root"]) / "jobs"


def instant(value: str) -> datetime:
    assert value.endswith("Z"), value
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


# -- creation and the job document -------------------------------------------------------------


def test_create_answers_303_with_a_pending_job(live_server):
    """UWS-01/02/04/08: 303 to the job; a valid UWS 1.1 document; text/plain attributes agreeing with it."""
    url = create(live_server, QUERY=QUERY, RUNID="first")
    assert url.startswith(async_url(live_server) + "/")
    job = document(url)
    assert job.tag == f"{UWS}job" and job.get("version") == "1.1"
    assert text(job, "jobId") == url.rsplit("/", 1)[1]
    assert text(job, "runId") == "first"
    assert job.find(f"{UWS}ownerId").get(XSI_NIL) == "true"
    assert text(job, "phase") == "PENDING"
    for tag in ("startTime", "endTime", "quote"):
        assert job.find(f"{UWS}{tag}").get(XSI_NIL) == "true", tag
    service = live_server.config["service"]
    assert int(text(job, "executionDuration")) == service["job_duration"]
    created, destruction = instant(text(job, "creationTime")), instant(text(job, "destruction"))
    assert abs((datetime.now(UTC) - created).total_seconds()) < 30
    assert abs((destruction - created).total_seconds() - service["job_retention"]) <= 1
    assert list(job.find(f"{UWS}results")) == []
    parameters = {p.get("id"): p.text for p in job.find(f"{UWS}parameters")}
    assert parameters["QUERY"] == QUERY and parameters["LANG"] == "ADQL"
    for resource, expected in (
        ("phase", "PENDING"),
        ("executionduration", text(job, "executionDuration")),
        ("destruction", text(job, "destruction")),
        ("quote", ""),
        ("owner", ""),
    ):
        response = requests.get(f"{url}/{resource}", timeout=30)
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        assert response.text == expected, resource
    listed = document(f"{url}/parameters")
    assert listed.tag == f"{UWS}parameters" and {p.get("id") for p in listed} >= {"QUERY", "LANG", "RUNID"}


def test_run_completes_with_an_absolute_result(live_server):
    """UWS-05/11: after RUN never PENDING; COMPLETED with one result at …/results/result."""
    url = create(live_server, QUERY=QUERY)
    response = post(f"{url}/phase", PHASE="run")  # values case-insensitive
    assert response.status_code == 303 and response.headers["Location"] == url
    assert phase(url) != "PENDING"
    job = wait_for(url, FINAL)
    assert text(job, "phase") == "COMPLETED", ET.tostring(job)
    start, end = instant(text(job, "startTime")), instant(text(job, "endTime"))
    assert instant(text(job, "creationTime")) <= start <= end
    (result,) = job.find(f"{UWS}results")
    assert result.get("id") == "result"
    assert result.get(XLINK_HREF) == f"{url}/results/result"
    body = requests.get(result.get(XLINK_HREF), timeout=30)
    assert body.status_code == 200
    assert body.headers["Content-Type"] == result.get("mime-type") == "application/x-votable+xml"
    assert int(result.get("size")) == len(body.content)
    table = parse(io.BytesIO(body.content)).get_first_table()
    assert len(table.array) == 3 and table.array["obs_publisher_did"][0].startswith("ivo://")
    listed = document(f"{url}/results")
    assert [r.get(XLINK_HREF) for r in listed] == [f"{url}/results/result"]
    assert (jobs_dir(live_server) / url.rsplit("/", 1)[1] / "result").is_file()


def test_phase_run_on_creation_queues_at_once(live_server):
    url = create(live_server, QUERY=QUERY, PHASE="RUN")
    assert phase(url) in {"QUEUED", "EXECUTING", "COMPLETED"}
    assert text(wait_for(url, FINAL), "phase") == "COMPLETED"


def test_bad_adql_is_accepted_then_fails(live_server):
    """TAP-03, UWS-10: 303 + PENDING; the run ends in ERROR with the message, /error 200, no result."""
    url = create(live_server, QUERY="SELECT nonsense FROM nowhere")
    assert phase(url) == "PENDING"
    post(f"{url}/phase", PHASE="RUN")
    job = wait_for(url, FINAL)
    assert text(job, "phase") == "ERROR"
    summary = job.find(f"{UWS}errorSummary")
    assert summary.get("type") == "fatal" and summary.get("hasDetail") == "true"
    message = summary.findtext(f"{UWS}message")
    assert "nowhere" in message
    error = requests.get(f"{url}/error", timeout=30)
    assert error.status_code == 200 and error.headers["Content-Type"] == "application/x-votable+xml"
    status = parse(io.BytesIO(error.content)).resources[0].infos[0]
    assert status.name == "QUERY_STATUS" and status.value == "ERROR" and status.content == message
    assert requests.get(f"{url}/results/result", timeout=30).status_code == 404
    assert list(job.find(f"{UWS}results")) == []


def test_missing_lang_fails_when_run(live_server):
    response = requests.post(
        async_url(live_server), data={"QUERY": QUERY, "PHASE": "RUN"}, allow_redirects=False
    )
    assert response.status_code == 303
    job = wait_for(response.headers["Location"], FINAL)
    assert text(job, "phase") == "ERROR" and "LANG" in job.find(f"{UWS}errorSummary").findtext(
        f"{UWS}message"
    )


# -- parameters, phases, attributes --------------------------------------------------------------


def test_parameters_replace_while_pending_and_are_refused_after(live_server):
    """UWS-06: taplint's RUNID check; 403 once the job has left PENDING."""
    url = create(live_server, QUERY="SELECT TOP 1 obs_id FROM ivoa.obscore", RUNID="TAPLINT-001")
    response = post(f"{url}/parameters", runId="TAPLINT-002", MAXREC="1")
    assert response.status_code == 303 and response.headers["Location"] == url
    job = document(url)
    assert text(job, "runId") == "TAPLINT-002"
    ids = [p.get("id") for p in job.find(f"{UWS}parameters")]
    assert len(ids) == len(set(ids))
    parameters = {p.get("id"): p.text for p in job.find(f"{UWS}parameters")}
    assert parameters["RUNID"] == "TAPLINT-002" and parameters["MAXREC"] == "1"
    post(f"{url}/phase", PHASE="RUN")
    wait_for(url, FINAL)
    refused = post(f"{url}/parameters", RUNID="late")
    assert refused.status_code == 403
    assert b"QUERY_STATUS" in refused.content and b"PENDING" in refused.content
    assert text(document(url), "runId") == "TAPLINT-002"


def test_abort_pending_and_final_phases_stay(live_server):
    """UWS-03/05: ABORT of a PENDING job gives ABORTED; RUN or ABORT of a final job changes nothing."""
    url = create(live_server, QUERY=QUERY)
    assert post(f"{url}/phase", PHASE="ABORT").status_code == 303
    assert phase(url) == "ABORTED"
    post(f"{url}/phase", PHASE="RUN")
    assert phase(url) == "ABORTED"
    assert text(document(url), "endTime") is not None
    done = create(live_server, QUERY=QUERY, PHASE="RUN")
    wait_for(done, FINAL)
    post(f"{done}/phase", PHASE="ABORT")
    assert phase(done) == "COMPLETED"
    assert post(f"{url}/phase", PHASE="SUSPEND").status_code == 400


def test_execution_duration_and_destruction_posts(live_server):
    """UWS-08: 303, clamped, and visible in the document and the text resources."""
    service = live_server.config["service"]
    url = create(live_server, QUERY=QUERY)
    response = post(f"{url}/executionduration", EXECUTIONDURATION="30")
    assert response.status_code == 303 and response.headers["Location"] == url
    assert text(document(url), "executionDuration") == "30"
    post(f"{url}/executionduration", EXECUTIONDURATION=str(10 * service["job_max_duration"]))
    assert requests.get(f"{url}/executionduration", timeout=30).text == str(service["job_max_duration"])
    assert post(f"{url}/executionduration", EXECUTIONDURATION="soon").status_code == 400
    soon = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0)
    response = post(f"{url}/destruction", DESTRUCTION=soon.strftime("%Y-%m-%dT%H:%M:%SZ"))
    assert response.status_code == 303
    assert instant(text(document(url), "destruction")) == soon
    assert instant(requests.get(f"{url}/destruction", timeout=30).text) == soon
    post(f"{url}/destruction", DESTRUCTION="2999-01-01T00:00:00")
    created = instant(text(document(url), "creationTime"))
    assert instant(text(document(url), "destruction")) <= created + timedelta(
        seconds=service["job_retention"] + 1
    )
    assert post(f"{url}/destruction", DESTRUCTION="tomorrow").status_code == 400


def test_delete_answers_303_then_everything_is_404(live_server):
    """UWS-07: DELETE and ACTION=DELETE → 303 to a short job list; the job and its files are gone."""
    url = create(live_server, QUERY=QUERY, PHASE="RUN")
    wait_for(url, FINAL)
    directory = jobs_dir(live_server) / url.rsplit("/", 1)[1]
    assert (directory / "result").is_file()
    response = requests.delete(url, allow_redirects=False, timeout=30)
    assert response.status_code == 303
    assert response.headers["Location"] == f"{async_url(live_server)}?LAST=20"
    for suffix in ("", "/phase", "/parameters", "/results", "/results/result", "/error", "/destruction"):
        assert requests.get(url + suffix, timeout=30).status_code == 404, suffix
    assert requests.delete(url, allow_redirects=False, timeout=30).status_code == 404
    assert not directory.exists()
    other = create(live_server, QUERY=QUERY)
    response = post(other, ACTION="DELETE")
    assert response.status_code == 303 and response.headers["Location"].endswith("/tap/async?LAST=20")
    assert requests.get(other, timeout=30).status_code == 404
    assert requests.get(response.headers["Location"], timeout=30).status_code == 200


def test_wait_blocks_until_the_phase_changes(live_server):
    """UWS-09: WAIT returns at once for final phases or a PHASE that no longer holds, else after n s."""
    url = create(live_server, QUERY=QUERY)
    start = time.monotonic()
    assert text(document(url, WAIT="2"), "phase") == "PENDING"
    assert 1.5 <= time.monotonic() - start < 10
    start = time.monotonic()
    document(url, WAIT="30", PHASE="EXECUTING")
    assert time.monotonic() - start < 2
    slow = create(live_server, QUERY=SLOW, EXECUTIONDURATION="2", PHASE="RUN")
    start = time.monotonic()
    job = wait_for(slow, FINAL)
    assert time.monotonic() - start < 30
    start = time.monotonic()
    assert text(document(slow, WAIT="-1"), "phase") == text(job, "phase")
    assert time.monotonic() - start < 2


def test_execution_time_limit_ends_in_error(live_server):
    """UWS-12: executionDuration is enforced by stopping the query: ERROR with a clear message."""
    url = create(live_server, QUERY=SLOW, EXECUTIONDURATION="1", PHASE="RUN")
    job = wait_for(url, FINAL, timeout=60)
    assert text(job, "phase") == "ERROR"
    message = job.find(f"{UWS}errorSummary").findtext(f"{UWS}message")
    assert "execution duration of 1 s" in message
    elapsed = instant(text(job, "endTime")) - instant(text(job, "startTime"))
    assert elapsed < timedelta(seconds=15)


def test_abort_stops_a_running_job(live_server):
    url = create(live_server, QUERY=SLOW, EXECUTIONDURATION="300", PHASE="RUN")
    wait_for(url, {"EXECUTING"}, timeout=30)
    assert post(f"{url}/phase", PHASE="ABORT").status_code == 303
    job = document(url)
    assert text(job, "phase") == "ABORTED"
    time.sleep(1)  # the query stops; its worker is free again and the phase stays
    assert phase(url) == "ABORTED"
    quick = create(live_server, QUERY=QUERY, PHASE="RUN")
    assert text(wait_for(quick, FINAL, timeout=30), "phase") == "COMPLETED"
    assert not (jobs_dir(live_server) / url.rsplit("/", 1)[1] / "result").exists()


def test_delete_stops_a_running_job(live_server):
    url = create(live_server, QUERY=SLOW, EXECUTIONDURATION="300", PHASE="RUN")
    wait_for(url, {"EXECUTING"}, timeout=30)
    assert requests.delete(url, allow_redirects=False, timeout=30).status_code == 303
    quick = create(live_server, QUERY=QUERY, PHASE="RUN")
    assert text(wait_for(quick, FINAL, timeout=30), "phase") == "COMPLETED"
    time.sleep(1)
    assert not (jobs_dir(live_server) / url.rsplit("/", 1)[1]).exists()


# -- the job list ----------------------------------------------------------------------------------


def test_job_list_filters(live_server):
    """UWS-12: PHASE (repeatable, union), AFTER, LAST (newest first), combined with AND."""
    first = create(live_server, QUERY=QUERY, RUNID="list-1")
    second = create(live_server, QUERY=QUERY, RUNID="list-2", PHASE="RUN")
    third = create(live_server, QUERY=QUERY, RUNID="list-3")
    wait_for(second, FINAL)
    ids = [u.rsplit("/", 1)[1] for u in (first, second, third)]

    def listed(*pairs) -> list[ET.Element]:
        response = requests.get(async_url(live_server), params=list(pairs), timeout=30)
        assert response.status_code == 200 and validate(response.content) == []
        root = ET.fromstring(response.content)
        assert root.tag == f"{UWS}jobs" and root.get("version") == "1.1"
        return list(root)

    everything = listed()
    by_id = {r.get("id"): r for r in everything}
    assert set(ids) <= set(by_id)
    ref = by_id[ids[1]]
    assert (
        ref.get(XLINK_HREF) == second and text(ref, "phase") == "COMPLETED" and text(ref, "runId") == "list-2"
    )
    assert text(ref, "creationTime").endswith("Z")
    newest = listed(("LAST", "2"))
    assert [r.get("id") for r in newest] == [ids[2], ids[1]]
    completed = {r.get("id") for r in listed(("PHASE", "COMPLETED"))}
    assert ids[1] in completed and ids[0] not in completed
    union = {r.get("id") for r in listed(("PHASE", "COMPLETED"), ("PHASE", "PENDING"))}
    assert set(ids) <= union
    after = text(by_id[ids[0]], "creationTime")
    later = {r.get("id") for r in listed(("AFTER", after))}
    assert ids[0] not in later and {ids[1], ids[2]} <= later
    combined = [r.get("id") for r in listed(("AFTER", after), ("PHASE", "PENDING"), ("LAST", "5"))]
    assert ids[2] in combined and ids[1] not in combined and ids[0] not in combined
    assert requests.get(async_url(live_server), params={"PHASE": "NAPPING"}, timeout=30).status_code == 400
    assert requests.get(async_url(live_server), params={"AFTER": "yesterday"}, timeout=30).status_code == 400


def test_unknown_job_is_404(live_server):
    for url in (f"{async_url(live_server)}/0123456789abcdef", f"{async_url(live_server)}/../../etc"):
        response = requests.get(url, timeout=30)
        assert response.status_code == 404
    assert post(f"{async_url(live_server)}/0123456789abcdef/phase", PHASE="RUN").status_code == 404


# -- pyvo ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tap(live_server) -> TAPService:
    return TAPService(f"{live_server.url}/tap")


def test_pyvo_run_async(tap):
    result = tap.run_async(QUERY)
    assert len(result) == 3
    assert str(result["obs_publisher_did"][0]).startswith("ivo://")


def test_pyvo_submit_wait_fetch_delete(tap, live_server):
    job = tap.submit_job(QUERY, maxrec=2)
    assert job.phase == "PENDING"
    job.run()
    assert job.phase != "PENDING"
    job.wait(timeout=60)
    assert job.phase == "COMPLETED"
    result = job.fetch_result()
    assert len(result) == 2
    url = job.url
    job.delete()
    assert requests.get(url, timeout=30).status_code == 404
    listed = tap.get_job_list(phases=["COMPLETED"], last=5)
    assert all(j.phase == "COMPLETED" for j in listed)


def test_pyvo_raises_the_error_message(tap):
    with pytest.raises(DALQueryError, match="no_such_table"):
        tap.run_async("SELECT * FROM no_such_table")


# -- the reaper and a restart --------------------------------------------------------------------


def test_reaper_removes_expired_jobs_and_files(live_server):
    url = create(live_server, QUERY=QUERY, PHASE="RUN")
    wait_for(url, FINAL)
    directory = jobs_dir(live_server) / url.rsplit("/", 1)[1]
    assert (directory / "result").is_file()
    past = (datetime.now(UTC) - timedelta(seconds=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert post(f"{url}/destruction", DESTRUCTION=past).status_code == 303
    deadline = time.monotonic() + 4 * jobs.SWEEP_S + 5
    while requests.get(url, timeout=30).status_code != 404:
        assert time.monotonic() < deadline, "the expired job is still there"
        time.sleep(0.5)
    assert not directory.exists()


def test_expired_job_is_gone_with_its_files_at_once(live_server):
    """No 404 while the files stay: a job past its destruction time is removed when it is asked for."""
    url = create(live_server, QUERY=QUERY, PHASE="RUN")
    wait_for(url, FINAL)
    directory = jobs_dir(live_server) / url.rsplit("/", 1)[1]
    past = (datetime.now(UTC) - timedelta(seconds=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert post(f"{url}/destruction", DESTRUCTION=past).status_code == 303
    assert requests.get(url, timeout=30).status_code == 404
    assert not directory.exists()
    assert not any((jobs_dir(live_server) / jobs.TRASH).glob(f"{directory.name}*"))


@pytest.fixture()
def job_store(tmp_path):
    """A job store on an archive database of its own, with one expired job that has a result file."""
    from service.archive import Archive

    Archive(tmp_path).close()
    database = tmp_path / "archive.sqlite"
    store = jobs.JobStore("archive.sqlite", tmp_path)
    root = tmp_path / "jobs"
    job_id = "00000000000000cc"
    _insert_job(database, job_id, "COMPLETED", None, None)
    store.execute("UPDATE uws_job SET destruction = ? WHERE job_id = ?", ("2000-01-01T00:00:00.000", job_id))
    (root / job_id).mkdir(parents=True)
    (root / job_id / "result").write_bytes(b"<VOTABLE/>")
    yield store, root, job_id
    store.close()


def _left(store, root, job_id) -> tuple[bool, list[Path]]:
    """Whether the job's row is still there, and the files anywhere under the jobs folder."""
    return store.get(job_id) is not None, sorted(p for p in root.rglob("*") if p.is_file())


def test_reaper_removes_files_before_the_row(job_store, monkeypatch):
    store, root, job_id = job_store
    seen = []
    delete = store.delete
    monkeypatch.setattr(store, "delete", lambda j: (seen.append((root / j).exists()), delete(j))[1])
    jobs.reap(store, root)
    assert seen == [False]  # when the row went, the job's folder was already out of the way
    assert _left(store, root, job_id) == (False, [])


@pytest.mark.parametrize("crash_at", ["rename", "delete", "rmtree"])
def test_a_crash_while_reaping_leaves_nothing_after_the_next_sweep(job_store, monkeypatch, crash_at):
    """Whichever step a crash interrupts, what is left is an expired row or trash, both swept next time."""
    store, root, job_id = job_store

    def crash(*args, **kwargs):
        raise KeyboardInterrupt(f"killed at {crash_at}")

    with monkeypatch.context() as patch:
        if crash_at == "rename":
            patch.setattr(Path, "rename", crash)
        elif crash_at == "delete":
            patch.setattr(store, "delete", crash)
        else:
            patch.setattr(jobs.shutil, "rmtree", crash)
        with pytest.raises(KeyboardInterrupt):
            jobs.reap(store, root)
    row, files = _left(store, root, job_id)
    assert row or all(jobs.TRASH in f.parts for f in files)  # never files without a row outside the trash
    jobs.reap(store, root)
    assert _left(store, root, job_id) == (False, [])


def test_orphan_folders_are_swept_at_startup(job_store):
    """Folders without a job row (a crash while a job was created) go when old enough to be nobody's."""
    import os

    store, root, _ = job_store
    old, young = root / "00000000000000dd", root / "00000000000000ee"
    for folder in (old, young):
        (folder / "uploads").mkdir(parents=True)
        (folder / "uploads" / "t1").write_bytes(b"x")
    long_ago = time.time() - jobs.ORPHAN_S - 60
    os.utime(old, (long_ago, long_ago))
    (root / "not-a-job").mkdir()
    jobs.reap(store, root)
    assert not old.exists() and young.exists() and (root / "not-a-job").exists()


def _insert_job(database: Path, job_id: str, phase: str, runner: str | None, heartbeat: float | None) -> None:
    now = jobs.stored(datetime.now(UTC))
    later = jobs.stored(datetime.now(UTC) + timedelta(days=1))
    with sqlite3.connect(database) as conn:
        conn.execute(
            "INSERT INTO uws_job (job_id, phase, creation_time, start_time, execution_duration, destruction, "
            "parameters, runner, heartbeat) VALUES (?, ?, ?, ?, 60, ?, ?, ?, ?)",
            (
                job_id,
                phase,
                now,
                now,
                later,
                json.dumps({"LANG": ["ADQL"], "QUERY": [QUERY]}),
                runner,
                heartbeat,
            ),
        )
    conn.close()


def test_jobs_survive_a_restart(live_server):
    """A job run by one server instance is there, with its result, on the next; a job the dead one
    left EXECUTING becomes ERROR; a QUEUED one is picked up."""
    config = {section: dict(values) for section, values in live_server.config.items()}
    config["service"]["base_url"] = free_url()
    with serving(config) as first:
        url = create(first, QUERY=QUERY, PHASE="RUN", RUNID="before-restart")
        job_id = url.rsplit("/", 1)[1]
        wait_for(url, FINAL)
        before = requests.get(f"{url}/results/result", timeout=30).content
        first.app.extensions["latentvo_jobs"].close()
    # What a server killed in the middle leaves: a job EXECUTING in a process that is gone, one QUEUED.
    database = Path(config["archive"]["root"]) / config["archive"]["database"]
    orphan, queued = "00000000000000aa", "00000000000000bb"
    _insert_job(database, orphan, "EXECUTING", f"{socket.gethostname()}:{_dead_pid()}:x", time.time())
    _insert_job(database, queued, "QUEUED", None, None)
    config["service"]["base_url"] = free_url()
    with serving(config) as second:
        moved = f"{async_url(second)}/{job_id}"
        job = document(moved)
        assert text(job, "phase") == "COMPLETED" and text(job, "runId") == "before-restart"
        (result,) = job.find(f"{UWS}results")
        assert result.get(XLINK_HREF) == f"{moved}/results/result"
        assert requests.get(f"{moved}/results/result", timeout=30).content == before
        left = document(f"{async_url(second)}/{orphan}")
        assert text(left, "phase") == "ERROR"
        assert "restarted" in left.find(f"{UWS}errorSummary").findtext(f"{UWS}message")
        picked = wait_for(f"{async_url(second)}/{queued}", FINAL, timeout=4 * jobs.SWEEP_S + 30)
        assert text(picked, "phase") == "COMPLETED"
        second.app.extensions["latentvo_jobs"].close()


def _dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    done = subprocess.Popen(["true"])
    done.wait()
    return done.pid

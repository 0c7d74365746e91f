"""UWS 1.1 jobs of every kind: the job store, a bounded runner per process, and a reaper.

A job kind (:class:`JobKind`) is a name, the URL of its job list and the work it runs: TAP queries
(``/tap/async``), label propagation (``/ml/propagate``), training (``/ml/train``). Everything
else is shared. Job state lives in the archive database (table ``uws_job``, the last section of
resources/schema.sql), so every gunicorn worker sees the same jobs and they survive a restart;
on PostgreSQL, every worker of every host that serves the archive. Request connections are
read-only; the store has its own read-write connection. Results and inline uploads are files under
``<archive root>/jobs/<job_id>/`` (shared storage when several hosts serve); results are written
atomically (model.atomic).

Running: PHASE=RUN moves a job PENDING → QUEUED and hands it to this process's thread pool
(``[service] job_workers`` threads). A pool thread claims the job (:meth:`JobStore.claim`: on
PostgreSQL ``SELECT … FOR UPDATE SKIP LOCKED``, so a second claimer on any host skips a job being
claimed instead of waiting for it; on SQLite under the file's write lock), so one process at most
runs it, and runs its kind's work under the job's executionDuration; the work raises
:class:`~service.errors.WorkInterrupted` when the time is up (→ ERROR) or when the job is aborted
or deleted (→ ABORTED, or gone). Validation happens then, so a job with bad parameters is
created and PENDING like any other and ends in ERROR (TAP-03). Work may report its progress
(the job document's jobInfo).

A monitor thread per process (started with the first job request) tells running jobs that
another process aborted or deleted them, heartbeats the jobs it runs, deletes jobs past their
destruction time with their files, and hands QUEUED jobs nobody runs to the pool (a restart
leaves those; the claim keeps them from running twice). Decided: a job left EXECUTING by a
process that died (its heartbeat stale, or its pid gone on this host) becomes ERROR "the server
restarted while the job ran" rather than being run again behind the client's back; the client can
run it again. :func:`startup_sweep` does the same once when the app is built. Jobs are anonymous
(ownerId nil).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO

from flask import Flask, current_app

from model.atomic import atomic_path
from service.errors import (
    DALIError,
    NotFoundError,
    TransientError,
    UsageError,
    WorkInterrupted,
    internal_error,
)
from service.params import Params
from service.storage import Database, DatabaseError, Row, open_database
from service.tap import upload

log = logging.getLogger(__name__)

PENDING, QUEUED, EXECUTING, COMPLETED, ERROR, ABORTED = (
    "PENDING",
    "QUEUED",
    "EXECUTING",
    "COMPLETED",
    "ERROR",
    "ABORTED",
)
PHASES = (PENDING, QUEUED, EXECUTING, COMPLETED, ERROR, ABORTED, "UNKNOWN", "HELD", "SUSPENDED", "ARCHIVED")
#: Phases a job may still leave on its own: WAIT blocks only in these (UWS-09).
ACTIVE = (PENDING, QUEUED, EXECUTING)
#: Phases ABORT applies to; final phases never change (UWS-03).
ABORTABLE = (PENDING, QUEUED, EXECUTING, "HELD", "SUSPENDED")
RESTARTED = "the server restarted while the job ran; run the job again"
#: Parameters that control the job rather than the query: not stored as job parameters.
CONTROL = {"PHASE", "ACTION", "WAIT", "EXECUTIONDURATION", "DESTRUCTION"}
#: Seconds between two looks of the monitor at the jobs this process runs (abort from elsewhere).
WATCH_S = 0.5
#: Seconds between sweeps: heartbeats, expired jobs, orphaned QUEUED and EXECUTING jobs.
SWEEP_S = 5.0
#: A running job's heartbeat older than this means its process died.
STALE_S = 60.0
#: Job directories without a job row (a crash while a job was being created) are removed after this many
#: seconds: younger ones may belong to a job another process is creating right now.
ORPHAN_S = 600.0
#: Where a removed job's files go (by one rename) before its row is deleted; emptied by every sweep.
TRASH = ".trash"


#: The kind of jobs stored before kinds existed (their ``kind`` is NULL).
TAP_KIND = "tap"


@dataclass
class JobRun:
    """What a job's work is given: the job, its uploads, its time, whether to stop, where to report."""

    job: Job
    parts: upload.PartReader
    #: Seconds the work may take (None: no limit); past them it raises WorkInterrupted.
    duration: float | None
    #: True once the job is aborted or deleted (or the service stops): stop, raising WorkInterrupted.
    cancelled: Callable[[], bool]
    #: Progress for the job document's jobInfo (a small JSON object, replacing the last one).
    report: Callable[[dict], None]
    #: The job's own directory, for files the work keeps beside its result.
    directory: Path


@dataclass(frozen=True)
class JobKind:
    """One kind of job: its stored name, the URL path of its job list, and its work, which returns
    the result (body, MIME type).

    ``settings`` (section, prefix) names the configuration keys that replace the service's own for
    this kind: ``<prefix>_duration`` and ``<prefix>_max_duration`` (for ``[service] job_duration``
    and ``job_max_duration``), and ``<prefix>_max_active``, the most jobs of this kind QUEUED or
    EXECUTING at once (0: no bound), past which PHASE=RUN is refused."""

    name: str
    path: str
    run: Callable[[JobRun], tuple[bytes, str]]
    settings: tuple[str, str] | None = None


_KINDS = "latentvo_job_kinds"


def register_kind(app: Flask, kind: JobKind) -> None:
    """Make ``kind`` runnable by the app's job service (its blueprint does this when registered)."""
    app.extensions.setdefault(_KINDS, {})[kind.name] = kind


class JobStateError(DALIError):
    """The job is in a phase where this change is not allowed (UWS: 403)."""

    status = 403
    fault = "UsageFault"


def pending_only(phase: str, what: str) -> str:
    return f"the job is {phase}: {what} can only change while it is PENDING"


# -- time --------------------------------------------------------------------------------------


def now() -> datetime:
    return datetime.now(UTC)


def stored(moment: datetime) -> str:
    """ISO 8601 UTC with milliseconds and a trailing Z: stored (fixed width, sorts as text) and
    published alike (UWS-02), so AFTER=<a creationTime> leaves that job out."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def parse_instant(text: str, name: str) -> datetime:
    """An ISO 8601 instant as clients send it (``Z``, an offset, or none meaning UTC)."""
    value = text.strip()
    if value[-1:] in ("Z", "z"):
        value = value[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        example = "2030-01-01T00:00:00Z"
        raise UsageError(f"{name} must be an ISO 8601 instant such as {example}, not {text!r}") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)


def _instant(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text.replace("Z", "+00:00"))


# -- the store ---------------------------------------------------------------------------------


@dataclass
class Job:
    job_id: str
    run_id: str | None
    phase: str
    creation_time: datetime
    start_time: datetime | None
    end_time: datetime | None
    execution_duration: int
    destruction: datetime
    parameters: dict[str, list[str]]
    error_type: str | None
    error_message: str | None
    result_mime: str | None
    result_size: int | None
    kind: str = TAP_KIND
    #: The work's last progress report (jobInfo), or None.
    info: dict | None = None

    @classmethod
    def from_row(cls, row: Row) -> Job:
        return cls(
            kind=row["kind"] or TAP_KIND,
            info=json.loads(row["job_info"]) if row["job_info"] else None,
            job_id=row["job_id"],
            run_id=row["run_id"],
            phase=row["phase"],
            creation_time=_instant(row["creation_time"]),
            start_time=_instant(row["start_time"]),
            end_time=_instant(row["end_time"]),
            execution_duration=int(row["execution_duration"]),
            destruction=_instant(row["destruction"]),
            parameters=json.loads(row["parameters"]),
            error_type=row["error_type"],
            error_message=row["error_message"],
            result_mime=row["result_mime"],
            result_size=row["result_size"],
        )

    def params(self) -> Params:
        return Params({name: list(values) for name, values in self.parameters.items()})


class JobStore:
    """The ``uws_job`` table on a read-write connection of its own, shared by a process's threads."""

    def __init__(self, location: str, root: Path) -> None:
        try:
            self.db: Database = open_database(location, root, schema="jobs")
        except FileNotFoundError:
            raise TransientError("the archive database does not exist yet") from None
        self.lock = threading.RLock()
        #: Ties between jobs created in the same millisecond: insertion order where the engine keeps one.
        self.tiebreak = "rowid" if self.db.dialect == "sqlite" else "job_id"

    def close(self) -> None:
        with self.lock:
            self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[Database]:
        """Read-modify-write under the database's write lock, all or nothing."""
        with self.lock, self.db.transaction() as db:
            yield db

    def execute(self, sql: str, args: Sequence = ()):
        with self.lock:
            return self.db.execute(sql, args)

    def insert(self, job: Job) -> None:
        self.execute(
            "INSERT INTO uws_job (kind, job_id, run_id, phase, creation_time, execution_duration, "
            "destruction, parameters) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                job.kind,
                job.job_id,
                job.run_id,
                job.phase,
                stored(job.creation_time),
                job.execution_duration,
                stored(job.destruction),
                json.dumps(job.parameters),
            ),
        )

    def get(self, job_id: str) -> Job | None:
        with self.lock:
            row = self.db.one("SELECT * FROM uws_job WHERE job_id = ?", (job_id,))
        return None if row is None else Job.from_row(row)

    def jobs(
        self,
        kind: str,
        phases: Sequence[str] = (),
        after: datetime | None = None,
        last: int | None = None,
    ) -> list[Job]:
        """UWS-12 over the jobs of one kind: PHASE (any of), AFTER (created later), LAST (the newest n,
        newest first), ANDed."""
        where, args = ["COALESCE(kind, ?) = ?"], [TAP_KIND, kind]
        if phases:
            where.append(f"phase IN ({','.join('?' * len(phases))})")
            args.extend(phases)
        else:
            where.append("phase != 'ARCHIVED'")  # archived jobs only when asked for
        if after is not None:
            where.append("creation_time > ?")
            args.append(stored(after))
        sql = "SELECT * FROM uws_job" + (f" WHERE {' AND '.join(where)}" if where else "")
        if last is not None:
            sql += f" ORDER BY creation_time DESC, {self.tiebreak} DESC LIMIT ?"
            args.append(last)
        else:
            sql += f" ORDER BY creation_time, {self.tiebreak}"
        with self.lock:
            return [Job.from_row(r) for r in self.db.execute(sql, args)]

    def change(self, job_id: str, phases: Sequence[str] | None, **fields) -> bool:
        """Set ``fields`` if the job is in one of ``phases`` (any phase: None); True if it was."""
        values = [stored(v) if isinstance(v, datetime) else v for v in fields.values()]
        sql = f"UPDATE uws_job SET {', '.join(f'{name} = ?' for name in fields)} WHERE job_id = ?"
        args = [*values, job_id]
        if phases is not None:
            sql += f" AND phase IN ({','.join('?' * len(phases))})"
            args.extend(phases)
        return self.execute(sql, args).rowcount == 1

    def claim(self, job_id: str, **fields) -> bool:
        """QUEUED → EXECUTING with ``fields`` for one runner; False when the job is not QUEUED or another
        runner is claiming it this moment (PostgreSQL: the row is locked, and SKIP LOCKED passes it by)."""
        with self.transaction() as db:
            lock = " FOR UPDATE SKIP LOCKED" if db.dialect == "postgres" else ""  # SQLite: the file's lock
            row = db.one(f"SELECT job_id FROM uws_job WHERE job_id = ? AND phase = ?{lock}", (job_id, QUEUED))
            if row is None:
                return False
            values = [stored(v) if isinstance(v, datetime) else v for v in fields.values()]
            sets = ", ".join(f"{name} = ?" for name in ["phase", *fields])
            db.execute(f"UPDATE uws_job SET {sets} WHERE job_id = ?", (EXECUTING, *values, job_id))
        return True

    def update_parameters(self, job_id: str, update: Callable[[dict[str, list[str]]], None]) -> None:
        """Change a PENDING job's parameters (UWS-06); 404 if there is no such job, 403 if not PENDING."""
        with self.transaction() as db:
            lock = " FOR UPDATE" if db.dialect == "postgres" else ""  # SQLite's write lock covers the file
            row = db.one(f"SELECT phase, parameters FROM uws_job WHERE job_id = ?{lock}", (job_id,))
            if row is None:
                raise NotFoundError(f"no job {job_id!r}")
            if row["phase"] != PENDING:
                raise JobStateError(pending_only(row["phase"], "parameters"))
            parameters = json.loads(row["parameters"])
            update(parameters)
            runs = parameters.get("RUNID")
            db.execute(
                "UPDATE uws_job SET parameters = ?, run_id = ? WHERE job_id = ?",
                (json.dumps(parameters), runs[-1] if runs else None, job_id),
            )

    def delete(self, job_id: str) -> bool:
        return self.execute("DELETE FROM uws_job WHERE job_id = ?", (job_id,)).rowcount == 1

    def active(self, kind: str) -> int:
        """How many jobs of ``kind`` are QUEUED or EXECUTING."""
        sql = "SELECT count(*) FROM uws_job WHERE COALESCE(kind, ?) = ? AND phase IN (?, ?)"
        with self.lock:
            return int(self.db.scalar(sql, (TAP_KIND, kind, QUEUED, EXECUTING)))

    def ids(self, sql: str, args: Sequence = ()) -> list[str]:
        with self.lock:
            return [r[0] for r in self.db.execute(sql, args)]

    def phases(self, job_ids: Sequence[str]) -> dict[str, str]:
        marks = ",".join("?" * len(job_ids))
        with self.lock:
            rows = self.db.execute(f"SELECT job_id, phase FROM uws_job WHERE job_id IN ({marks})", job_ids)
            return {r[0]: r[1] for r in rows}

    def abandoned(self, here: str) -> list[str]:
        """EXECUTING jobs whose process is gone: heartbeat stale, or (on this host) the pid not alive."""
        found = []
        with self.lock:
            sql = "SELECT job_id, runner, heartbeat FROM uws_job WHERE phase = 'EXECUTING'"
            rows = self.db.all(sql)
        for job_id, runner, heartbeat in rows:
            if runner == here:
                continue
            if heartbeat is None or time.time() - heartbeat > STALE_S or _dead_here(runner):
                found.append(job_id)
        return found


def _dead_here(runner: str | None) -> bool:
    """True if ``runner`` (host:pid) names a process of this host that no longer exists."""
    host, pid, _token = ((runner or "") + "::").split(":")[:3]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


# -- the service -------------------------------------------------------------------------------


class JobService:
    """One process's view of the jobs: the store, the pool that runs them, the monitor."""

    def __init__(self, app: Flask) -> None:
        st = app.extensions["latentvo"]
        self.app = app
        self.config = st.config["service"]
        self.store = JobStore(st.config["archive"]["database"], st.root)
        self.root = st.root / "jobs"
        self.pid = os.getpid()
        #: host:pid:token: the token tells apart two services of one process (tests serve several apps).
        self.runner = f"{socket.gethostname()}:{self.pid}:{secrets.token_hex(3)}"
        workers = max(1, int(self.config["job_workers"]))
        self.executor = ThreadPoolExecutor(workers, thread_name_prefix="uws-job")
        self.changed = threading.Condition()
        self._lock = threading.Lock()
        self._running: dict[str, threading.Event] = {}
        self._submitted: set[str] = set()
        self._stop = threading.Event()
        self._monitor = threading.Thread(target=self._watch, name="uws-monitor", daemon=True)
        self._monitor.start()

    def close(self) -> None:
        """Stop the monitor and the pool (running jobs are told to stop); for tests and shutdown."""
        self._stop.set()
        with self._lock:
            for event in self._running.values():
                event.set()
        self.executor.shutdown(wait=True, cancel_futures=True)
        self._monitor.join(timeout=5)
        self.store.close()

    # -- paths

    def directory(self, job_id: str) -> Path:
        return self.root / job_id

    def result_path(self, job_id: str) -> Path:
        return self.directory(job_id) / "result"

    def upload_path(self, job_id: str, name: str) -> Path:
        return self.directory(job_id) / "uploads" / name

    # -- lifecycle

    def kind(self, name: str) -> JobKind:
        return self.app.extensions[_KINDS][name]

    def get(self, job_id: str, kind: str | None = None) -> Job:
        """The job (of ``kind``, when given: another kind's job is not found under this one's URLs);
        one past its destruction time is removed now rather than at the next sweep."""
        job = self.store.get(job_id) if _plausible(job_id) else None
        if job is not None and job.destruction < now():
            self._cancel(job_id)
            remove_job(self.store, self.root, job_id)
            job = None
        if job is None or (kind is not None and job.kind != kind):
            raise NotFoundError(f"no job {job_id!r} (it may have been deleted or destroyed)")
        return job

    def create(self, params: Params, kind: str = TAP_KIND) -> Job:
        """A new PENDING job from a creation POST (queued at once with PHASE=RUN, UWS-04)."""
        run = (params.get("PHASE") or "").strip().upper() == "RUN"
        if run:
            self._check_room(kind)  # before the job exists: a refused creation leaves nothing behind
        created = now()
        job = Job(
            kind=kind,
            job_id=secrets.token_hex(8),
            run_id=None,
            phase=PENDING,
            creation_time=created,
            start_time=None,
            end_time=None,
            execution_duration=self.setting(kind, "duration"),
            destruction=created + timedelta(seconds=int(self.config["job_retention"])),
            parameters={},
            error_type=None,
            error_message=None,
            result_mime=None,
            result_size=None,
        )
        job.parameters = self._merged({}, params, self._keep_uploads(params, job.job_id))
        runs = job.parameters.get("RUNID")
        job.run_id = runs[-1] if runs else None
        duration = params.get_int("EXECUTIONDURATION", minimum=0)
        if duration is not None:
            job.execution_duration = self.clamp_duration(duration, kind)
        if params.get("DESTRUCTION"):
            wanted = parse_instant(params.get("DESTRUCTION"), "DESTRUCTION")
            job.destruction = self.clamp_destruction(job, wanted)
        try:
            self.store.insert(job)
        except BaseException:
            shutil.rmtree(self.directory(job.job_id), ignore_errors=True)
            raise
        if run:
            self.run(job.job_id)
        return job

    def update_parameters(self, job_id: str, params: Params) -> None:
        """UWS-06: a later single value replaces an earlier one, UPLOADs accumulate; PENDING only."""
        job = self.get(job_id)
        if job.phase != PENDING:
            raise JobStateError(pending_only(job.phase, "parameters"))
        uploads = self._keep_uploads(params, job_id)

        def update(parameters: dict[str, list[str]]) -> None:
            merged = self._merged(parameters, params, uploads)
            parameters.clear()
            parameters.update(merged)

        self.store.update_parameters(job_id, update)

    @staticmethod
    def _merged(current: dict[str, list[str]], params: Params, uploads: list[str]) -> dict[str, list[str]]:
        merged = {name: list(values) for name, values in current.items()}
        for name in params.names():
            if name == "UPLOAD":
                merged[name] = merged.get(name, []) + uploads
            elif name not in CONTROL:
                merged[name] = params.getlist(name)
        return merged

    def _keep_uploads(self, params: Params, job_id: str) -> list[str]:
        """Save inline upload parts in the job directory, as ``name,param:name`` (read when the job runs).

        Values that are not well-formed stay as they are: the job reports them when it runs (TAP-03).
        """
        kept = []
        parts = upload.request_parts(params)
        limit = int(self.config["upload_limit"])
        for name, uri in upload.split_uploads(params.getlist("UPLOAD")):
            field = uri[len("param:") :] if uri.startswith("param:") else None
            stream = parts(field) if field and upload.NAME.fullmatch(name) else None
            if stream is None:
                kept.append(f"{name},{uri}")
                continue
            path = self.upload_path(job_id, name)
            path.parent.mkdir(parents=True, exist_ok=True)
            data = upload.read_stream(stream, limit, name)
            with atomic_path(path) as tmp:
                tmp.write_bytes(data)
            kept.append(f"{name},param:{name}")
        return kept

    def setting(self, kind: str, key: str) -> int:
        """One of the kind's limits (:class:`JobKind`), or the service's ``job_<key>``."""
        settings = self.kind(kind).settings
        if settings is not None:
            section, prefix = settings
            return int(self.app.extensions["latentvo"].config[section][f"{prefix}_{key}"])
        return int(self.config.get(f"job_{key}", 0))

    def clamp_duration(self, seconds: int, kind: str = TAP_KIND) -> int:
        """executionDuration within (0, the kind's maximum]; 0 (unlimited) means the maximum."""
        hard = self.setting(kind, "max_duration")
        if hard <= 0:
            return seconds
        return hard if seconds == 0 else min(seconds, hard)

    def clamp_destruction(self, job: Job, wanted: datetime) -> datetime:
        """A destruction time no later than creation + job_retention (a client may only shorten it)."""
        latest = job.creation_time + timedelta(seconds=int(self.config["job_retention"]))
        return min(wanted, latest)

    def set_duration(self, job_id: str, seconds: int) -> None:
        job = self.get(job_id)
        clamped = self.clamp_duration(seconds, job.kind)
        if not self.store.change(job_id, (PENDING,), execution_duration=clamped):
            raise JobStateError(pending_only(job.phase, "the execution duration"))

    def set_destruction(self, job_id: str, moment: datetime) -> None:
        job = self.get(job_id)
        self.store.change(job_id, None, destruction=self.clamp_destruction(job, moment))

    def run(self, job_id: str) -> None:
        """PHASE=RUN: PENDING → QUEUED, handed to the pool; no change in any other phase (UWS-05).
        Refused (503, the job stays PENDING) while its kind has ``max_active`` jobs queued or running."""
        job = self.get(job_id)
        if job.phase in (PENDING, "HELD"):
            self._check_room(job.kind)
        if self.store.change(job_id, (PENDING, "HELD"), phase=QUEUED):
            self._notify()
            self.submit(job_id)

    def _check_room(self, kind: str) -> None:
        """Refuse (503) to queue one more job of ``kind`` past its ``max_active``."""
        bound = self.setting(kind, "max_active")
        if bound and self.store.active(kind) >= bound:
            raise TransientError(
                f"{bound} jobs of this kind are queued or running, the most this service runs at once; "
                "run this one again when one of them has ended"
            )

    def abort(self, job_id: str) -> None:
        """PHASE=ABORT: ABORTED unless already final; a running query is stopped."""
        self.get(job_id)
        if self.store.change(job_id, ABORTABLE, phase=ABORTED, end_time=now()):
            self._cancel(job_id)
            self._notify()

    def delete(self, job_id: str) -> None:
        """UWS-07: the job, its running work and its files go; every job URL answers 404 afterwards."""
        self.get(job_id)
        self._cancel(job_id)
        remove_job(self.store, self.root, job_id)
        self._notify()

    def wait(self, job_id: str, seconds: float, phase: str | None = None) -> Job:
        """UWS-09: block until the phase changes (or leaves ``phase``) or ``seconds`` pass."""
        job = self.get(job_id)
        start = job.phase
        if start not in ACTIVE or (phase and phase != start):
            return job
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            with self.changed:
                self.changed.wait(min(left, WATCH_S))
            job = self.get(job_id)
            if job.phase != start:
                break
        return job

    # -- running

    def submit(self, job_id: str) -> None:
        with self._lock:
            if job_id in self._submitted or self._stop.is_set():
                return
            self._submitted.add(job_id)
        self.executor.submit(self._execute, job_id)

    def _execute(self, job_id: str) -> None:
        with self._lock:
            self._submitted.discard(job_id)
            cancel = self._running.setdefault(job_id, threading.Event())
        try:
            claimed = self.store.claim(
                job_id,
                start_time=now(),
                runner=self.runner,
                heartbeat=time.time(),
            )
            if claimed:
                self._notify()
                self._run_claimed(job_id, cancel)
        except Exception:  # the pool thread must survive anything; the job says what happened
            log.exception("job %s failed unexpectedly", job_id)
        finally:
            with self._lock:
                self._running.pop(job_id, None)
            self._notify()

    def _run_claimed(self, job_id: str, cancel: threading.Event) -> None:
        job = self.store.get(job_id)
        if job is None:
            return
        duration = job.execution_duration or None
        run = JobRun(
            job=job,
            parts=self._parts(job_id),
            duration=duration,
            cancelled=cancel.is_set,
            report=lambda info: self.store.change(job_id, (EXECUTING,), job_info=json.dumps(info)),
            directory=self.directory(job_id),
        )
        try:
            with self.app.app_context():
                body, mime = self.kind(job.kind).run(run)
            self._finish(job_id, body, mime)
        except WorkInterrupted:
            if not cancel.is_set():
                message = (
                    f"UsageFault: the job ran longer than its execution duration of {duration} s; "
                    "narrow it down or ask for a longer EXECUTIONDURATION"
                )
                self._fail(job_id, message, "fatal")
        except DALIError as exc:
            self._fail(job_id, exc.text(), "transient" if isinstance(exc, TransientError) else "fatal")
        except Exception:
            self._fail(job_id, internal_error(log, f"job {job_id} failed"), "fatal")

    def _parts(self, job_id: str) -> upload.PartReader:
        """``param:`` uploads of a job: the files saved at creation."""

        def part(field: str) -> BinaryIO | None:
            path = self.upload_path(job_id, field)
            return open(path, "rb") if upload.NAME.fullmatch(field) and path.is_file() else None

        return part

    def _finish(self, job_id: str, body: bytes, mime: str) -> None:
        path = self.result_path(job_id)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                tmp.write_bytes(body)
        except OSError:
            if self.store.get(job_id) is None:
                return  # deleted while it ran
            raise
        done = self.store.change(
            job_id, (EXECUTING,), phase=COMPLETED, end_time=now(), result_mime=mime, result_size=len(body)
        )
        if not done:  # aborted or deleted meanwhile: the result must not stay behind
            path.unlink(missing_ok=True)
            if self.store.get(job_id) is None:
                shutil.rmtree(self.directory(job_id), ignore_errors=True)

    def _fail(self, job_id: str, message: str, kind: str) -> None:
        self.store.change(
            job_id, (EXECUTING, QUEUED), phase=ERROR, end_time=now(), error_type=kind, error_message=message
        )

    def _cancel(self, job_id: str) -> None:
        with self._lock:
            event = self._running.get(job_id)
        if event is not None:
            event.set()

    def _notify(self) -> None:
        with self.changed:
            self.changed.notify_all()

    # -- the monitor

    def _watch(self) -> None:
        last_sweep = 0.0
        while not self._stop.wait(WATCH_S):
            try:
                self._check_running()
                if time.monotonic() - last_sweep >= SWEEP_S:
                    last_sweep = time.monotonic()
                    self.sweep()
            except Exception:  # a locked or vanished database must not end the monitor
                log.exception("job monitor")

    def _check_running(self) -> None:
        """Stop jobs here that another process aborted or deleted; wake waiters on phase changes."""
        with self._lock:
            running = dict(self._running)
        if not running:
            return
        phases = self.store.phases(list(running))
        for job_id, event in running.items():
            if phases.get(job_id) != EXECUTING:
                event.set()

    def sweep(self) -> None:
        """Heartbeat our jobs, reap expired and abandoned ones, pick up QUEUED jobs nobody runs."""
        with self._lock:
            running = list(self._running)
        if running:
            marks = ",".join("?" * len(running))
            self.store.execute(
                f"UPDATE uws_job SET heartbeat = ? WHERE runner = ? AND job_id IN ({marks})",
                (time.time(), self.runner, *running),
            )
        reap(self.store, self.root, here=self.runner)
        queued = self.store.ids("SELECT job_id FROM uws_job WHERE phase = 'QUEUED' ORDER BY creation_time")
        for job_id in queued:
            self.submit(job_id)
        self._notify()


def remove_job(store: JobStore, root: Path, job_id: str) -> bool:
    """Remove a job in an order a crash cannot turn into files nobody removes.

    1. the row is marked expired (a crash now: the next sweep removes the job);
    2. the directory is renamed into the trash (one atomic step: the job's files are gone from
       where it is looked up before its row is);
    3. the row is deleted (a crash before: an expired row without files, reaped by the next sweep);
    4. the trash copy is removed (a crash before: every sweep empties the trash).

    Returns whether the row existed.
    """
    store.execute(
        "UPDATE uws_job SET destruction = ? WHERE job_id = ?", (stored(now() - timedelta(seconds=1)), job_id)
    )
    directory = root / job_id
    trash = root / TRASH / f"{job_id}-{secrets.token_hex(4)}"
    if directory.exists():
        trash.parent.mkdir(parents=True, exist_ok=True)
        with suppress(FileNotFoundError):  # removed by another process meanwhile
            directory.rename(trash)
    existed = store.delete(job_id)
    shutil.rmtree(trash, ignore_errors=True)
    return existed


def reap(store: JobStore, root: Path, here: str = "", orphan_age: float = ORPHAN_S) -> None:
    """Remove jobs past their destruction time (with their files), empty the trash, remove job
    directories without a row older than ``orphan_age`` s; jobs of dead processes → ERROR."""
    expired = store.ids("SELECT job_id FROM uws_job WHERE destruction < ?", (stored(now()),))
    for job_id in expired:
        remove_job(store, root, job_id)
    with store.transaction() as db:  # label sets (service.labels) are kept as jobs are
        gone = "SELECT set_id FROM label_set WHERE destruction < ?"
        db.execute(f"DELETE FROM label_answer WHERE set_id IN ({gone})", (stored(now()),))
        db.execute("DELETE FROM label_set WHERE destruction < ?", (stored(now()),))
    for job_id in store.abandoned(here):
        store.change(
            job_id, (EXECUTING,), phase=ERROR, end_time=now(), error_type="transient", error_message=RESTARTED
        )
    if not root.is_dir():
        return
    trash = root / TRASH
    if trash.is_dir():
        for leftover in trash.iterdir():
            shutil.rmtree(leftover, ignore_errors=True)
    known = set(store.ids("SELECT job_id FROM uws_job"))
    for directory in root.iterdir():
        orphan = directory.name not in known and _plausible(directory.name)
        if orphan and directory.is_dir() and time.time() - directory.stat().st_mtime > orphan_age:
            shutil.rmtree(directory, ignore_errors=True)


def _plausible(job_id: str) -> bool:
    """Job ids are 16 lower-case hex digits; anything else is not looked up (nor used as a path)."""
    return len(job_id) == 16 and all(c in "0123456789abcdef" for c in job_id)


# -- per process -------------------------------------------------------------------------------

_create_lock = threading.Lock()
_EXTENSION = "latentvo_jobs"
_SWEPT = "latentvo_jobs_swept"


def job_service() -> JobService:
    """This process's job service for the current app, started on first use (and again after a fork)."""
    app = current_app._get_current_object()
    found = app.extensions.get(_EXTENSION)
    if found is None or found.pid != os.getpid():
        with _create_lock:
            found = app.extensions.get(_EXTENSION)
            if found is None or found.pid != os.getpid():
                found = JobService(app)
                app.extensions[_EXTENSION] = found
    return found


def stop_job_service(app: Flask) -> None:
    """Close this process's job service of ``app``, if it has started one (a worker shutting down)."""
    found = app.extensions.pop(_EXTENSION, None)
    if found is not None and found.pid == os.getpid():
        found.close()


def startup_sweep(app: Flask) -> None:
    """Once when the app is built: reap expired jobs and those a dead process left EXECUTING.

    Threads start later, with the first job request (a forking server would lose them). Every
    blueprint with jobs asks for it; it runs once per app.
    """
    if app.extensions.get(_SWEPT):
        return
    app.extensions[_SWEPT] = True
    st = app.extensions["latentvo"]
    if st.database is not None and not st.database.exists():
        return
    try:
        store = JobStore(st.config["archive"]["database"], st.root)
    except (DatabaseError, TransientError) as exc:  # a read-only, locked or absent archive: tried later
        log.warning("job sweep at startup skipped: %s", exc)
        return
    try:
        reap(store, st.root / "jobs")
    except DatabaseError as exc:
        log.warning("job sweep at startup failed: %s", exc)
    finally:
        store.close()

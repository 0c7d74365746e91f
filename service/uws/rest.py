"""The UWS 1.1 REST binding over :mod:`service.uws.jobs`, for any job kind.

:func:`add_job_routes` puts a job list and its job resources on a blueprint under one path
(``/tap/async``, ``/ml/propagate``, ``/ml/train``); each list shows and finds its own kind's
jobs only. Every state change answers 303 (UWS-04/05/07/08); documents are UWS 1.1 XML in the
``http://www.ivoa.net/xml/UWS/v1.0`` namespace with children in schema order, instants in UTC
with a trailing Z and ``xsi:nil`` where unset (UWS-02); a job's progress is its jobInfo. Unknown
jobs and sub-resources are 404 DALI error documents; ``{job}/error`` is the job's DALI error
document with HTTP 200 (DALI-06).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable

from flask import Blueprint, Response, redirect, request

from service.errors import NotFoundError, UsageError
from service.params import Params, request_params
from service.state import state
from service.tap import upload
from service.uws import jobs
from service.uws.jobs import Job, JobKind, job_service
from service.votable import VOTABLE_MIME, error_document

UWS_NS = "http://www.ivoa.net/xml/UWS/v1.0"
XLINK_NS = "http://www.w3.org/1999/xlink"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
UWS_STANDARD = "ivo://ivoa.net/std/UWS#rest-1.1"
XML_MIME = "text/xml"
#: The longest a ``WAIT`` request blocks (UWS-09): under proxy and client timeouts.
MAX_WAIT_S = 60
#: Where DELETE sends the client: a short job list, cheap to follow (pyvo #535).
AFTER_DELETE = "?LAST=20"
#: A job list without LAST shows at most this many jobs, newest first.
MAX_LIST = 1000

ET.register_namespace("uws", UWS_NS)
ET.register_namespace("xlink", XLINK_NS)
ET.register_namespace("xsi", XSI_NS)


def see_other(url: str) -> Response:
    return redirect(url, code=303)


def add_job_routes(bp: Blueprint, rule: str, kind: JobKind, guard: Callable[[], None] | None = None) -> None:
    """The job list at ``rule`` of ``bp`` and every job resource below it, for jobs of ``kind``
    (registered with the app when the blueprint is). ``guard`` runs before each request to them (an
    operator's token check, say) and raises to refuse it."""
    views = _JobViews(kind)

    @bp.record_once
    def _register(setup) -> None:
        jobs.register_kind(setup.app, kind)
        jobs.startup_sweep(setup.app)  # expired jobs, and jobs a dead process left EXECUTING

    routes: list[tuple[str, Callable[..., Response], list[str]]] = [
        ("", views.job_list, ["GET", "POST"]),
        ("/<job_id>", views.job_resource, ["GET", "POST", "DELETE"]),
        ("/<job_id>/phase", views.phase_resource, ["GET", "POST"]),
        ("/<job_id>/executionduration", views.duration_resource, ["GET", "POST"]),
        ("/<job_id>/destruction", views.destruction_resource, ["GET", "POST"]),
        ("/<job_id>/quote", views.quote_resource, ["GET"]),
        ("/<job_id>/owner", views.owner_resource, ["GET"]),
        ("/<job_id>/error", views.error_resource, ["GET"]),
        ("/<job_id>/parameters", views.parameters_resource, ["GET", "POST"]),
        ("/<job_id>/results", views.results_resource, ["GET"]),
        ("/<job_id>/results/result", views.result_resource, ["GET"]),
        ("/<job_id>/uploads/<name>", views.upload_resource, ["GET"]),
    ]
    for suffix, view, methods in routes:

        def guarded(*args, _view=view, **kwargs) -> Response:
            if guard is not None:
                guard()
            return _view(*args, **kwargs)

        endpoint = f"{kind.name}_{view.__name__}"
        bp.add_url_rule(rule + suffix, endpoint=endpoint, view_func=guarded, methods=methods)


class _JobViews:
    """The UWS resources of one job kind."""

    def __init__(self, kind: JobKind) -> None:
        self.kind = kind

    def url(self, *parts: str) -> str:
        return state().url("/".join((self.kind.path, *parts)))

    def get(self, job_id: str) -> Job:
        return job_service().get(job_id, self.kind.name)

    # -- the job list ------------------------------------------------------------------------------

    def job_list(self) -> Response:
        """GET: the job list (UWS-12 filters); POST: a new job → 303 to it (UWS-04)."""
        service = job_service()
        params = request_params(request)
        if request.method == "POST":
            job = service.create(params, self.kind.name)
            return see_other(self.url(job.job_id))
        phases = [p.strip().upper() for p in params.getlist("PHASE") if p.strip()]
        unknown = sorted(set(phases) - set(jobs.PHASES))
        if unknown:
            raise UsageError(f"unknown PHASE {', '.join(unknown)}; phases are {', '.join(jobs.PHASES)}")
        after = params.get("AFTER")
        last = params.get_int("LAST", minimum=0)
        found = service.store.jobs(
            self.kind.name,
            phases,
            jobs.parse_instant(after, "AFTER") if after else None,
            MAX_LIST if last is None else last,
        )
        return xml_response(self.jobs_document(found))

    def jobs_document(self, found: list[Job]) -> bytes:
        root = ET.Element(_uws("jobs"), {"version": "1.1"})
        for job in found:
            attrs = {"id": job.job_id, f"{{{XLINK_NS}}}href": self.url(job.job_id)}
            ref = ET.SubElement(root, _uws("jobref"), attrs)
            _text(ref, "phase", job.phase)
            if job.run_id is not None:
                _text(ref, "runId", job.run_id)
            _nil(ref, "ownerId")
            _text(ref, "creationTime", jobs.stored(job.creation_time))
        return _serialise(root)

    # -- one job

    def job_resource(self, job_id: str) -> Response:
        """GET (optionally ``WAIT``/``PHASE``): the job document; DELETE or ACTION=DELETE: delete (UWS-07)."""
        service = job_service()
        params = request_params(request)
        job = self.get(job_id)
        if request.method == "DELETE":
            service.delete(job_id)
            return see_other(self.url() + AFTER_DELETE)
        if request.method == "POST":
            action = (params.get("ACTION") or "").strip().upper()
            if action == "DELETE":
                service.delete(job_id)
                return see_other(self.url() + AFTER_DELETE)
            if action:
                raise UsageError(f"unknown ACTION {action!r}; the job resource knows ACTION=DELETE")
            if "PHASE" in params:
                self.change_phase(job_id, params)
            else:
                service.update_parameters(job_id, params)
            return see_other(self.url(job_id))
        wait = params.get_int("WAIT")
        if wait is not None and wait != 0:
            seconds = MAX_WAIT_S if wait < 0 else min(wait, MAX_WAIT_S)
            phase = (params.get("PHASE") or "").strip().upper() or None
            job = service.wait(job_id, seconds, phase)
        return xml_response(self.job_document(job))

    def job_document(self, job: Job) -> bytes:
        """UWS-02: the job children in schema order."""
        root = ET.Element(_uws("job"), {"version": "1.1"})
        _text(root, "jobId", job.job_id)
        if job.run_id is not None:
            _text(root, "runId", job.run_id)
        _nil(root, "ownerId")
        _text(root, "phase", job.phase)
        _nil(root, "quote")
        _text(root, "creationTime", jobs.stored(job.creation_time))
        _instant(root, "startTime", job.start_time)
        _instant(root, "endTime", job.end_time)
        _text(root, "executionDuration", str(job.execution_duration))
        _instant(root, "destruction", job.destruction)
        self._parameters(root, job)
        self._results(root, job)
        if job.phase == jobs.ERROR and job.error_message:
            summary = ET.SubElement(
                root, _uws("errorSummary"), {"type": job.error_type or "fatal", "hasDetail": "true"}
            )
            _text(summary, "message", job.error_message)
        if job.info:
            info = ET.SubElement(root, _uws("jobInfo"))
            for key, value in job.info.items():  # unqualified elements: UWS takes any here
                ET.SubElement(info, "value", {"name": str(key)}).text = str(value)
        return _serialise(root)

    def _parameters(self, parent: ET.Element, job: Job) -> None:
        """Each parameter once, but one UPLOAD element per table; inline uploads by reference (UWS-06)."""
        element = ET.SubElement(parent, _uws("parameters"))
        for name, values in job.parameters.items():
            if name == "UPLOAD":
                for table, uri in upload.split_uploads(values):
                    if uri == f"param:{table}":
                        attrs = {"id": name, "byReference": "true"}
                        _text(element, "parameter", self.url(job.job_id, "uploads", table), attrs)
                    else:
                        _text(element, "parameter", f"{table},{uri}", {"id": name})
            else:
                _text(element, "parameter", values[-1] if values else "", {"id": name})

    def _results(self, parent: ET.Element, job: Job) -> None:
        """UWS-11: one result, ``result``, with an absolute href, once the job has COMPLETED."""
        element = ET.SubElement(parent, _uws("results"))
        if job.phase == jobs.COMPLETED:
            attrs = {"id": "result", f"{{{XLINK_NS}}}href": self.url(job.job_id, "results", "result")}
            if job.result_mime:
                attrs["mime-type"] = job.result_mime
            if job.result_size is not None:
                attrs["size"] = str(job.result_size)
            ET.SubElement(element, _uws("result"), attrs)

    # -- job attributes

    def phase_resource(self, job_id: str) -> Response:
        """UWS-05: PHASE=RUN (then never PENDING) or PHASE=ABORT → 303 to the job."""
        if request.method == "GET":
            return plain(self.get(job_id).phase)
        self.change_phase(job_id, request_params(request))
        return see_other(self.url(job_id))

    def change_phase(self, job_id: str, params: Params) -> None:
        service = job_service()
        self.get(job_id)
        phase = (params.get("PHASE") or "").strip().upper()
        if phase == "RUN":
            service.run(job_id)
        elif phase == "ABORT":
            service.abort(job_id)
        else:
            raise UsageError(f"PHASE must be RUN or ABORT, not {params.get('PHASE')!r}")

    def duration_resource(self, job_id: str) -> Response:
        service = job_service()
        self.get(job_id)
        if request.method == "POST":
            seconds = request_params(request).get_int("EXECUTIONDURATION", minimum=0)
            if seconds is None:
                raise UsageError("EXECUTIONDURATION (seconds, 0 = as long as allowed) is required")
            service.set_duration(job_id, seconds)
            return see_other(self.url(job_id))
        return plain(str(self.get(job_id).execution_duration))

    def destruction_resource(self, job_id: str) -> Response:
        service = job_service()
        self.get(job_id)
        if request.method == "POST":
            value = request_params(request).get("DESTRUCTION")
            if not value:
                raise UsageError("DESTRUCTION (an ISO 8601 instant) is required")
            service.set_destruction(job_id, jobs.parse_instant(value, "DESTRUCTION"))
            return see_other(self.url(job_id))
        return plain(jobs.stored(self.get(job_id).destruction))

    def quote_resource(self, job_id: str) -> Response:
        """No estimate: empty, as the job document's nil quote (UWS-08)."""
        self.get(job_id)
        return plain("")

    def owner_resource(self, job_id: str) -> Response:
        """Jobs are anonymous: empty, as the nil ownerId."""
        self.get(job_id)
        return plain("")

    def error_resource(self, job_id: str) -> Response:
        """UWS-10: the DALI error document of a failed job, HTTP 200."""
        job = self.get(job_id)
        if job.phase != jobs.ERROR:
            raise NotFoundError(f"job {job_id} has no error (it is {job.phase})")
        return Response(error_document(job.error_message or "error"), content_type=VOTABLE_MIME)

    def parameters_resource(self, job_id: str) -> Response:
        """GET: the parameters; POST: set those of a PENDING job (UWS-06: 403 in any other phase)."""
        job = self.get(job_id)
        if request.method == "POST":
            job_service().update_parameters(job_id, request_params(request))
            return see_other(self.url(job_id))
        root = ET.Element(_uws("parameters"))
        scratch = ET.Element(_uws("job"))
        self._parameters(scratch, job)
        root.extend(list(scratch.find(_uws("parameters"))))
        return xml_response(_serialise(root))

    def results_resource(self, job_id: str) -> Response:
        root = ET.Element(_uws("job"))
        self._results(root, self.get(job_id))
        return xml_response(_serialise(root.find(_uws("results"))))

    def result_resource(self, job_id: str) -> Response:
        """The result of a COMPLETED job; 404 for any other (UWS-10)."""
        service = job_service()
        job = self.get(job_id)
        path = service.result_path(job_id)
        if job.phase != jobs.COMPLETED or not path.is_file():
            raise NotFoundError(f"job {job_id} has no result (it is {job.phase}); see {self.url(job_id)}")
        return Response(path.read_bytes(), content_type=job.result_mime or VOTABLE_MIME)

    def upload_resource(self, job_id: str, name: str) -> Response:
        """An inline upload of the job, as the job document refers to it (byReference)."""
        service = job_service()
        self.get(job_id)
        path = service.upload_path(job_id, name)
        if not upload.NAME.fullmatch(name) or not path.is_file():
            raise NotFoundError(f"job {job_id} has no uploaded table {name!r}")
        return Response(path.read_bytes(), content_type=VOTABLE_MIME)


# -- XML helpers -------------------------------------------------------------------------------


def _uws(tag: str) -> str:
    return f"{{{UWS_NS}}}{tag}"


def _text(parent: ET.Element, tag: str, text: str, attrs: dict[str, str] | None = None) -> ET.Element:
    element = ET.SubElement(parent, _uws(tag), attrs or {})
    element.text = text
    return element


def _nil(parent: ET.Element, tag: str) -> None:
    ET.SubElement(parent, _uws(tag), {f"{{{XSI_NS}}}nil": "true"})


def _instant(parent: ET.Element, tag: str, moment) -> None:
    if moment is None:
        _nil(parent, tag)
    else:
        _text(parent, tag, jobs.stored(moment))


def _serialise(root: ET.Element) -> bytes:
    """The document with ``xmlns:xlink`` and ``xmlns:xsi`` declared on the root even where unused (UWS-02)."""
    ET.indent(root, space=" ")
    body = ET.tostring(root, encoding="unicode")  # the root always declares uws, so its tag has a space
    name_end = body.index(" ")
    start_tag = body[: body.index(">")]
    missing = "".join(
        f' xmlns:{prefix}="{namespace}"'
        for prefix, namespace in (("xlink", XLINK_NS), ("xsi", XSI_NS))
        if f"xmlns:{prefix}=" not in start_tag
    )
    body = body[:name_end] + missing + body[name_end:]
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + body.encode()


def plain(text: str) -> Response:
    return Response(text, mimetype="text/plain")


def xml_response(body: bytes) -> Response:
    return Response(body, mimetype=XML_MIME)

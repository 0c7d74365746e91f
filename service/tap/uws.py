"""TAP ``/tap/async``: TAP queries as UWS 1.1 jobs (service.uws), answered as /tap/sync answers them."""

from __future__ import annotations

from service.tap.blueprint import bp
from service.uws.jobs import TAP_KIND, JobKind, JobRun
from service.uws.rest import add_job_routes


def run_query(run: JobRun) -> tuple[bytes, str]:
    """A TAP job's work: the query of its parameters, under its time, stopped when it is aborted."""
    from service.tap.sync import run_tap  # sync loads the blueprint, whose modules load this one

    response = run_tap(run.job.params(), run.parts, run.duration, run.cancelled)
    return response.get_data(), response.content_type


add_job_routes(bp, "/async", JobKind(TAP_KIND, "tap/async", run_query))

"""Running the service: gunicorn with N workers for production, Flask's server for debugging.

The master process never runs torch: each worker builds the app and loads the model after the
fork (a fork after torch has started its thread pools deadlocks the child). SIGTERM stops the
server gracefully within ``GRACEFUL_S`` seconds (requests in flight finish, running UWS jobs are
told to stop and are taken up again after a restart), SIGINT (Ctrl-C) at once.
"""

from __future__ import annotations

import faulthandler
import logging

import gunicorn.http.wsgi
import gunicorn.util
from gunicorn.app.base import BaseApplication

from service.app import SERVER_HEADER, create_app
from service.votable import VOTABLE_MIME, error_document

# gunicorn writes its own Server header before the application's, so a client would see
# "gunicorn" (taplint warns about a Server header naming only the HTTP software); it offers
# no setting for it, so the module constant its responses read is replaced here.
gunicorn.http.wsgi.SERVER = SERVER_HEADER

#: The longest request line gunicorn takes (its maximum): long GET parameters, such as a
#: polygon with many vertices, still fit; longer ones are refused with a DALI error.
REQUEST_LINE_LIMIT = 8190
#: What a client is told when gunicorn refuses a request before the application sees it.
_HTTP_FAULTS = {
    414: f"UsageFault: the request line is longer than {REQUEST_LINE_LIMIT} bytes; "
    "send long parameters in the body of a POST",
    431: "UsageFault: the request headers are too large",
    400: "UsageFault: the request is not well-formed HTTP",
    501: "UsageFault: the request uses a transfer coding this service does not take",
}


def write_dali_error(sock, status_int: int, reason: str, _message: str) -> None:
    """gunicorn's own error answers (request line or headers too long, malformed HTTP) as DALI
    error documents instead of HTML pages; replaces ``gunicorn.util.write_error``."""
    if status_int >= 500 and status_int != 501:
        text = "FatalFault: internal error (see the service log)"
    else:
        text = _HTTP_FAULTS.get(status_int, f"UsageFault: {reason}")
    body = error_document(text)
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: {VOTABLE_MIME}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    gunicorn.util.write_nonblock(sock, head.encode("latin-1") + body)


gunicorn.util.write_error = write_dali_error

log = logging.getLogger(__name__)
#: Seconds a worker has after SIGTERM to finish its requests before it is killed.
GRACEFUL_S = 5


class GunicornServer(BaseApplication):
    """gunicorn with the app built in each worker (so each loads the model and index once)."""

    def __init__(self, config: dict, options: dict) -> None:
        self.latentvo_config = config
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            if key in self.cfg.settings:  # settings newer gunicorns added are skipped on older ones
                self.cfg.set(key, value)
        self.cfg.set("post_worker_init", warm_up)
        self.cfg.set("worker_exit", stop_jobs)

    def load(self):
        return create_app(self.latentvo_config)


def warm_up(worker) -> None:
    """Load the model in service and map its index before the first request arrives.

    A worker that dies of a fatal signal writes the Python stacks of its threads to the log first.
    """
    faulthandler.enable()
    app = worker.wsgi
    from service.errors import DALIError
    from service.state import state

    with app.app_context():
        try:
            served = state().served_model()
            served.model.index  # noqa: B018  (maps the Annoy file)
        except DALIError as exc:
            log.warning("worker %s starts without a model: %s", worker.pid, exc)
            return
        log.info(
            "latentvo ready at %s: worker %s serves model version %s (%d spectra)",
            state().base_url,
            worker.pid,
            served.version,
            len(served.dids),
        )


def stop_jobs(_arbiter, worker) -> None:
    """A worker leaving: stop its UWS job threads, so that it exits promptly."""
    from service.uws.jobs import stop_job_service

    stop_job_service(worker.wsgi)


def serve(config: dict, host: str, port: int, workers: int, debug: bool = False) -> None:
    if debug:
        create_app(config).run(host=host, port=port, debug=True, use_reloader=False)
        return
    options = {
        "bind": f"{host}:{port}",
        "workers": workers,
        "worker_class": "gthread",
        "threads": 4,
        "timeout": int(config["service"]["sync_timeout"]) + 30,
        "graceful_timeout": GRACEFUL_S,
        "limit_request_line": REQUEST_LINE_LIMIT,
        # gunicorn 24+ opens a control socket in $HOME: one per user, so two servers would collide.
        "control_socket_disable": True,
        "accesslog": "-",
        "errorlog": "-",
    }
    GunicornServer(config, options).run()

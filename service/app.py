"""The Flask application factory: one blueprint per protocol over shared helpers."""

from __future__ import annotations

import logging
from pathlib import Path

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from service import __version__
from service.config import load_config
from service.errors import DALIError, TransientError, internal_error, json_error
from service.state import ServiceState, release_archive
from service.storage import DatabaseError
from service.votable import VOTABLE_MIME, error_document

log = logging.getLogger(__name__)
#: Paths answered with DALI error documents rather than HTML error pages.
PROTOCOL_PREFIXES = ("/tap", "/ssa", "/datalink", "/data", "/similar")
PROTOCOL_PREFIXES += ("/ml/propagate", "/ml/train", "/ml/capabilities", "/ml/availability")
#: Paths of the JSON endpoints (other than the protocol ones above): their errors are JSON too.
JSON_PREFIXES = ("/explore/decode", "/explore/map", "/explore/labelsets", "/ml")
#: Scripts, styles and vendored libraries of the explorer pages.
STATIC_FOLDER = str(Path(__file__).parent / "static")
SERVER_HEADER = f"latentvo/{__version__} (Flask; IVOA TAP 1.1, SSAP 1.1, DataLink 1.1)"


def create_app(config: dict | None = None) -> Flask:
    """Build the service for one archive; ``config`` as from :func:`service.config.load_config`."""
    config = config or load_config()
    app = Flask("latentvo", static_folder=STATIC_FOLDER, static_url_path="/static")
    app.config["LATENTVO"] = config
    app.config["MAX_CONTENT_LENGTH"] = config["service"]["max_request_bytes"]
    app.extensions["latentvo"] = ServiceState(config)
    app.teardown_appcontext(release_archive)

    from service import data, datalink, explore, learn, ml, similar, ssap, web
    from service.tap import blueprint as tap

    app.register_blueprint(web.bp)
    app.register_blueprint(ssap.bp, url_prefix="/ssa")
    app.register_blueprint(tap.bp, url_prefix="/tap")
    app.register_blueprint(datalink.bp, url_prefix="/datalink")
    app.register_blueprint(datalink.rdf_bp)
    app.register_blueprint(data.bp, url_prefix="/data")
    app.register_blueprint(similar.bp, url_prefix="/similar")
    app.register_blueprint(explore.bp, url_prefix="/explore")
    app.register_blueprint(ml.bp, url_prefix="/ml")
    app.register_blueprint(learn.bp, url_prefix="/ml")

    app.register_error_handler(DALIError, dali_error)
    app.register_error_handler(DatabaseError, database_error)
    app.register_error_handler(HTTPException, http_error)
    app.register_error_handler(Exception, server_error)
    app.after_request(server_header)
    return app


def error_response(message: str, status: int) -> Response:
    return Response(error_document(message), status=status, content_type=VOTABLE_MIME)


def dali_error(exc: DALIError) -> Response:
    response = error_response(exc.text(), exc.status)
    for name, value in exc.headers:  # a 401's challenge, say
        response.headers[name] = value
    return response


def http_error(exc: HTTPException) -> Response | HTTPException:
    if wants_json():
        return json_error(exc)
    if request.path.startswith(PROTOCOL_PREFIXES):
        fault = "NotFoundFault" if exc.code == 404 else "UsageFault"
        response = error_response(f"{fault}: {exc.description}", exc.code or 400)
        if exc.code == 405:
            response.headers["Allow"] = ", ".join(getattr(exc, "valid_methods", None) or [])
        return response
    return exc


def wants_json() -> bool:
    """Whether the request went to a JSON endpoint, whose errors are JSON too."""
    return request.path.startswith(JSON_PREFIXES) and not request.path.startswith(PROTOCOL_PREFIXES)


def database_error(exc: DatabaseError) -> Response:
    """A lost or busy database is the client's to retry (503); anything else is ours (500)."""
    if not exc.transient:
        return server_error(exc)
    busy = TransientError("the archive database is busy or out of reach; try again shortly")
    if wants_json():
        return json_error(busy)
    return dali_error(busy)


def server_error(exc: Exception) -> Response:
    message = internal_error(log, f"unexpected error on {request.path}")
    if wants_json():
        return json_error(DALIError(message.removeprefix("FatalFault: ")))
    return error_response(message, 500)


def server_header(response: Response) -> Response:
    # Under gunicorn the header is written by gunicorn itself (service/server.py); a second
    # one from the application would be sent as a duplicate.
    if not request.environ.get("SERVER_SOFTWARE", "").startswith("gunicorn"):
        response.headers["Server"] = SERVER_HEADER
    return response

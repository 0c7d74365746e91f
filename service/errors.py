"""Errors a client sees: DALI error documents (VOTable, QUERY_STATUS=ERROR) with an HTTP status.

Protocol code raises these; the app's error handler turns them into documents. DataLink's
fault prefixes (``UsageFault``, ``NotFoundFault``…) start the message, which every DALI
service may use and DataLink 1.1 requires. The JSON endpoints (the explorer's, /ml) answer the
same errors as JSON (:func:`json_error`).
"""

from __future__ import annotations

import logging
import secrets

from flask import Response, jsonify
from werkzeug.exceptions import HTTPException


class DALIError(Exception):
    """A request that cannot be answered; ``status`` is the HTTP status of the error document."""

    status = 500
    fault = "FatalFault"
    #: HTTP headers the answer must carry (a challenge with a 401).
    headers: tuple[tuple[str, str], ...] = ()

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status

    def text(self) -> str:
        return f"{self.fault}: {self.message}"


class UsageError(DALIError):
    """The request is malformed: bad parameter, bad ADQL, unknown format (400)."""

    status = 400
    fault = "UsageFault"


class WorkInterrupted(UsageError):
    """Work stopped before its end: its time ran out, or (for a job) the job was aborted or deleted."""


class NotFoundError(DALIError):
    """The thing named does not exist: unknown ID, table, job (404)."""

    status = 404
    fault = "NotFoundFault"


class TransientError(DALIError):
    """Overloaded or temporarily unable; the client may retry (503)."""

    status = 503
    fault = "TransientFault"


class LimitError(DALIError):
    """The request exceeds a configured limit, such as the upload size (413)."""

    status = 413
    fault = "UsageFault"


class AuthenticationError(DALIError):
    """The request needs credentials it did not bring (401, with the challenge)."""

    status = 401
    fault = "AuthenticationFault"
    headers = (("WWW-Authenticate", 'Bearer realm="latentvo operator"'),)


class ForbiddenError(DALIError):
    """The credentials brought do not allow this, or nothing may do it here (403)."""

    status = 403
    fault = "AuthorizationFault"


class ConflictError(DALIError):
    """The thing named is not in a state that allows the request (409)."""

    status = 409
    fault = "UsageFault"


def json_error(exc: Exception) -> Response:
    """A DALI or HTTP error as the JSON endpoints answer it: ``{"error": fault, "message": …}``."""
    if isinstance(exc, DALIError):
        response = jsonify(error=exc.fault, message=exc.message)
        response.status_code = exc.status
        response.headers.extend(exc.headers)
        return response
    assert isinstance(exc, HTTPException)
    response = jsonify(error="UsageFault", message=exc.description or exc.name)
    response.status_code = exc.code or 400
    return response


def internal_error(log: logging.Logger, what: str) -> str:
    """Log the exception being handled with a reference and return the client's message, which carries
    the reference and nothing of the code (no exception class, no traceback)."""
    reference = secrets.token_hex(4)
    log.exception("%s (reference %s)", what, reference)
    return f"FatalFault: internal error (reference {reference} in the service log)"

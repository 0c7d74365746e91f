"""Errors a client sees: DALI error documents (VOTable, QUERY_STATUS=ERROR) with an HTTP status.

Protocol code raises these; the app's error handler turns them into documents. DataLink's
fault prefixes (``UsageFault``, ``NotFoundFault``…) start the message, which every DALI
service may use and DataLink 1.1 requires.
"""

from __future__ import annotations

import logging
import secrets


class DALIError(Exception):
    """A request that cannot be answered; ``status`` is the HTTP status of the error document."""

    status = 500
    fault = "FatalFault"

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


def internal_error(log: logging.Logger, what: str) -> str:
    """Log the exception being handled with a reference and return the client's message, which carries
    the reference and nothing of the code (no exception class, no traceback)."""
    reference = secrets.token_hex(4)
    log.exception("%s (reference %s)", what, reference)
    return f"FatalFault: internal error (reference {reference} in the service log)"

"""DALI request parameters: names case-insensitive, query string and body merged.

Every protocol endpoint reads its parameters through :func:`request_params`, so the rules
(X-03: case-insensitive names, GET/urlencoded/multipart merged; X-05: a single-valued
parameter given twice with different values is an error) hold everywhere.
"""

from __future__ import annotations

from collections.abc import Iterable

from flask import Request
from werkzeug.datastructures import FileStorage

from service.errors import UsageError


class Params:
    """Parameters of one request keyed by upper-case name, each with all its values."""

    def __init__(self, values: dict[str, list[str]], files: dict[str, FileStorage] | None = None) -> None:
        self._values = values
        #: Multipart file parts keyed by their form-field name exactly as sent (UPLOAD's param:x).
        self.files = files or {}

    def __contains__(self, name: str) -> bool:
        return name.upper() in self._values

    def get(self, name: str, default: str | None = None) -> str | None:
        """The single value of ``name``; repeated different values are a usage error."""
        values = self._values.get(name.upper())
        if not values:
            return default
        if len(set(values)) > 1:
            raise UsageError(f"parameter {name.upper()} given more than once with different values")
        return values[0]

    def getlist(self, name: str) -> list[str]:
        return list(self._values.get(name.upper(), []))

    def names(self) -> Iterable[str]:
        return self._values.keys()

    def get_int(self, name: str, default: int | None = None, minimum: int | None = None) -> int | None:
        raw = self.get(name)
        if raw is None or raw.strip() == "":
            return default
        try:
            value = int(raw.strip())
        except ValueError:
            raise UsageError(f"{name.upper()} must be an integer, not {raw!r}") from None
        if minimum is not None and value < minimum:
            raise UsageError(f"{name.upper()} must be at least {minimum}, not {value}")
        return value

    def get_bool(self, name: str, default: bool = False) -> bool:
        raw = self.get(name)
        if raw is None:
            return default
        lowered = raw.strip().lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise UsageError(f"{name.upper()} must be true or false, not {raw!r}")


def request_params(request: Request) -> Params:
    """Merge query string, urlencoded and multipart form values of a Flask request."""
    values: dict[str, list[str]] = {}
    for source in (request.args, request.form):
        for name in source:
            values.setdefault(name.upper(), []).extend(source.getlist(name))
    files = {name: request.files[name] for name in request.files}
    return Params(values, files)

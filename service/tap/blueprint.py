"""The ``/tap`` blueprint; its routes live in the modules imported at the bottom."""

from flask import Blueprint

bp = Blueprint("tap", __name__)

from service.tap import metadata, sync, uws  # noqa: E402,F401  (modules attach their routes to bp)

"""/ml: the model versions of the archive, and promotion and rollback of the one in service.

``GET /ml/models`` lists every version (JSON). ``POST /ml/models/{version}`` with ``current=true``
puts an indexed version in service; rollback is the same call with the older version. Only the
operator may: ``Authorization: Bearer <[ml] operator_token>`` (no token: 401 with
``WWW-Authenticate``; a wrong one: 403; none configured: 403 saying that the swap is off over HTTP).

The swap is one UPDATE in one transaction (:meth:`Archive.make_current`): a request reads the
version in service once and answers wholly from it (every answer says its ``model_version``), so
requests in flight during a swap finish on the version they began with and none fails.
"""

from __future__ import annotations

import hmac

from flask import Blueprint, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from model.api import INDEX_FILE, MEAN_FILE
from model.checkpoint import CONFIG_FILE
from service import pipeline
from service.archive import Archive
from service.errors import (
    AuthenticationError,
    ConflictError,
    DALIError,
    ForbiddenError,
    NotFoundError,
    UsageError,
    json_error,
)
from service.state import state

bp = Blueprint("ml", __name__)

#: The stage a version must have reached to serve: latents, analysis and index all written.
SERVABLE = "indexed"


bp.register_error_handler(DALIError, json_error)
bp.register_error_handler(HTTPException, json_error)


def require_operator() -> None:
    """Let the request through only with the configured operator token (see the module docstring)."""
    expected = state().config["ml"]["operator_token"]
    if not expected:
        raise ForbiddenError(
            "changing the model in service over HTTP is off: the operator sets [ml] operator_token "
            "(LATENTVO_ML_OPERATOR_TOKEN); `latentvo index` swaps models from the command line"
        )
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise AuthenticationError("this needs the operator's token: Authorization: Bearer <token>")
    if not hmac.compare_digest(given.strip().encode(), expected.encode()):
        raise ForbiddenError("the token given is not the operator's")


def _version_json(row) -> dict:
    return {
        "model_version": row["model_version"],
        "created": row["created"],
        "stage": row["stage"],
        "is_current": bool(row["is_current"]),
        "n_train": row["n_train"],
        "latent_dim": row["latent_dim"],
        "informative_dims": [int(d) for d in (row["informative_dims"] or "").split()],
        "training_set_hash": row["training_set_hash"],
    }


@bp.get("/models")
def models() -> Response:
    rows = state().archive().db.all("SELECT * FROM ml_model ORDER BY model_version")
    return jsonify(models=[_version_json(row) for row in rows])


@bp.post("/models/<version>")
def promote(version: str) -> Response:
    require_operator()
    if not version.isdigit():
        raise NotFoundError(f"no model version {version!r}: versions are numbers (GET /ml/models)")
    wanted = request.values.get("current", "").strip().lower()
    if wanted != "true":
        raise UsageError("say what to do: current=true puts this version in service (rollback alike)")
    archive = state().archive()
    row = archive.db.one("SELECT * FROM ml_model WHERE model_version = ?", (int(version),))
    if row is None:
        raise NotFoundError(f"no model version {version} (GET /ml/models lists them)")
    if row["stage"] != SERVABLE:
        raise ConflictError(
            f"model version {version} is {row['stage']}, not {SERVABLE}: run `latentvo index` first"
        )
    missing = [
        name
        for name in (CONFIG_FILE, MEAN_FILE, INDEX_FILE)
        if not (archive.model_dir(int(version)) / name).exists()
    ]
    if missing:
        raise ConflictError(
            f"model version {version} cannot serve: its files {', '.join(missing)} are missing"
        )
    previous = archive.current_version()
    writer = Archive.from_config(state().config)  # request connections are read-only
    try:
        pipeline.promote(writer, int(version))
    finally:
        writer.close()
    return jsonify(model_version=int(version), is_current=True, previous=previous)

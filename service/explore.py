"""JSON endpoints behind the explorer pages: small, for scripts in the browser, errors in JSON too.

``POST /explore/decode`` takes ``{"z": [z0, …, zN]}`` (a full latent vector of the model in service)
and answers ``{"model_version", "wavelength", "flux"}``: the decoded spectrum on the model's grid
(vacuum Å, normalised flux as the model sees spectra). The slider explorer calls it on every move.
"""

from __future__ import annotations

import math

import numpy as np
from flask import Blueprint, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from service.errors import DALIError, UsageError
from service.state import state

bp = Blueprint("explore", __name__)

#: Latent values beyond this many prior σ are refused: nothing the archive holds lies there.
MAX_ABS_Z = 50.0


@bp.errorhandler(DALIError)
def json_error(exc: DALIError) -> tuple[Response, int]:
    return jsonify(error=exc.fault, message=exc.message), exc.status


@bp.errorhandler(HTTPException)
def json_http_error(exc: HTTPException) -> tuple[Response, int]:
    return jsonify(error="UsageFault", message=exc.description or exc.name), exc.code or 400


@bp.route("/decode", methods=["GET", "POST"])
def decode() -> Response:
    """The decoded flux of one latent vector."""
    if request.method != "POST":
        raise UsageError('POST a JSON object {"z": [...]} to decode it', status=405)
    served = state().served_model()
    model = served.model
    z = latent_vector(request.get_json(silent=True), model.latent_dim)
    flux = model.reconstruct(z)[0]
    return jsonify(
        model_version=served.version,
        wavelength=[round(float(w), 4) for w in model.grid.wavelength],
        flux=[round(float(f), 6) for f in flux],
    )


def latent_vector(body: object, latent_dim: int) -> np.ndarray:
    """``body["z"]`` as a float32 vector of ``latent_dim`` finite values within ±MAX_ABS_Z."""
    if not isinstance(body, dict) or "z" not in body:
        raise UsageError('the body must be a JSON object {"z": [...]} with Content-Type application/json')
    values = body["z"]
    if not isinstance(values, list) or len(values) != latent_dim:
        raise UsageError(f"z must be a list of {latent_dim} numbers, one per latent dimension")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        raise UsageError("z must hold numbers only")
    if not all(math.isfinite(v) and abs(v) <= MAX_ABS_Z for v in values):
        raise UsageError(f"z must be finite and within ±{MAX_ABS_Z:g}")
    return np.asarray(values, dtype=np.float32)

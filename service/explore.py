"""The explorer: its pages (/explore, /spectrum, /sliders, /similar, /correlations), whose scripts
read TAP, DataLink and /similar like any client, and the two small JSON endpoints behind them
(errors in JSON too).

``POST /explore/decode`` takes ``{"z": [z0, …, zN]}`` (a full latent vector of the model in service)
and answers ``{"model_version", "wavelength", "flux"}``: the decoded spectrum on the model's grid
(vacuum Å, normalised flux as the model sees spectra). The slider explorer calls it on every move.

``GET /explore/map?METHOD=pca`` answers the whole ml.map of the model in service, column-wise (one
list per quantity, the same order in each) so that 10⁵ points load in one small request.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

import numpy as np
from flask import Blueprint, Response, jsonify, render_template, request
from werkzeug.exceptions import HTTPException

from service.datalink import MAX_K
from service.errors import DALIError, NotFoundError, UsageError, json_error
from service.labels import LabelSets, class_names
from service.propagation import read_label_table
from service.state import state
from service.tap import upload
from service.uws.jobs import job_service
from service.web import service_description

bp = Blueprint("explore", __name__, template_folder="templates")

#: Latent values beyond this many prior σ are refused: nothing the archive holds lies there.
MAX_ABS_Z = 50.0


bp.register_error_handler(DALIError, json_error)
bp.register_error_handler(HTTPException, json_error)


# -- pages ------------------------------------------------------------------------------------------

PAGES = {
    "": ("map", "explore/map.html"),
    "/spectrum": ("spectrum", "explore/spectrum.html"),
    "/sliders": ("sliders", "explore/sliders.html"),
    "/similar": ("similar", "explore/similar.html"),
    "/correlations": ("correlations", "explore/correlations.html"),
    "/label": ("label", "explore/label.html"),
}


def page(name: str, template: str) -> Callable[[], str]:
    def view() -> str:
        return render_template(
            template,
            page=name,
            service=service_description(),
            base_path=urlsplit(state().base_url).path.rstrip("/"),
            max_k=MAX_K,
            velocity=velocity_dimension(),
        )

    view.__name__ = f"{name}_page"
    view.__doc__ = f"The explorer's {name} page (its script queries the public endpoints)."
    return view


def velocity_dimension() -> dict | None:
    """The latent dimension that is the radial velocity, for the pages to label it so (None: none)."""
    try:
        model = state().served_model().model
    except DALIError:  # no model in service yet: the page's own query says so
        return None
    if model.velocity_dim is None:
        return None
    return {"dim": model.velocity_dim, "scale_kms": model.velocity_scale_kms}


for _path, (_name, _template) in PAGES.items():
    bp.add_url_rule(_path, view_func=page(_name, _template), methods=["GET"])


# -- JSON endpoints ---------------------------------------------------------------------------------


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
        wavelength=np.round(model.grid.wavelength.astype(np.float64), 4).tolist(),
        flux=np.round(flux.astype(np.float64), 6).tolist(),
    )


#: Label columns the map sends for colouring and tooltips (ivoa.obscore names).
MAP_LABELS = ("teff", "logg", "feh", "rv", "snr", "vsini")


@bp.get("/map")
def map_points() -> Response:
    """Every archive spectrum's place on the 2-D map, with what the page colours and labels it by."""
    served = state().served_model()
    archive = state().archive()
    methods = archive.map_methods(served.version)
    if not methods:
        raise NotFoundError(f"model version {served.version} has no map yet: run latentvo analyse")
    method = (request.args.get("METHOD") or request.args.get("method") or methods[0]).strip().lower()
    if method not in methods:
        raise UsageError(f"unknown METHOD {method!r}; this model has {', '.join(methods)}")
    rows = archive.map_points(served.version, method)
    columns = dict(zip(rows[0].keys(), zip(*rows, strict=True), strict=True)) if rows else {}
    collections = sorted(set(columns.get("obs_collection", ())))
    code = {name: i for i, name in enumerate(collections)}
    return jsonify(
        model_version=served.version,
        method=method,
        methods=methods,
        n=len(rows),
        id=list(columns.get("obs_publisher_did", ())),
        target=list(columns.get("target_name", ())),
        x=rounded(columns.get("x", ()), 5),
        y=rounded(columns.get("y", ()), 5),
        collections=collections,
        collection=[code[c] for c in columns.get("obs_collection", ())],
        labels={name: rounded(columns.get(name, ())) for name in (*MAP_LABELS, "anomaly_score")},
    )


def rounded(values: Sequence[float | None], decimals: int | None = None) -> list[float | None]:
    """A column rounded for the map: to ``decimals``, else to four significant digits of its largest
    value (more than a map shows); null stays null (JSON has no NaN)."""
    array = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    finite = np.isfinite(array)
    if decimals is None:
        largest = float(np.abs(array[finite]).max()) if finite.any() else 0.0
        decimals = max(0, 3 - math.floor(math.log10(largest))) if largest > 0 else 0
    return [
        v if ok else None for v, ok in zip(np.round(array, decimals).tolist(), finite.tolist(), strict=True)
    ]


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


# -- label sets (the active-learning page) -----------------------------------------------------------


def label_sets() -> LabelSets:
    return LabelSets(job_service().store, int(state().config["service"]["job_retention"]))


@bp.post("/labelsets")
def create_label_set() -> tuple[Response, int]:
    """A new label set: ``{"classes": [...]}`` (may be empty: a label table brings its own)."""
    body = request.get_json(silent=True)
    if body is not None and not isinstance(body, dict):
        raise UsageError('the body must be a JSON object {"classes": [...]}')
    found = label_sets().create(class_names((body or {}).get("classes", [])))
    answer = jsonify(found.to_json() | {"url": state().url(f"explore/label?set={found.set_id}")})
    return answer, 201


@bp.get("/labelsets/<set_id>")
def label_set(set_id: str) -> Response:
    return jsonify(label_sets().get(set_id).to_json())


@bp.post("/labelsets/<set_id>/answers")
def answer_label_set(set_id: str) -> Response:
    """Answers, saved at once: JSON ``{"answers": [{"obs_publisher_did", "label"}, …]}`` (label null
    takes an answer back), or a label table (VOTable or CSV) as the multipart part ``labels``."""
    sets = label_sets()
    sets.get(set_id)  # 404 before reading anything
    table = request.files.get("labels")
    if table is not None:
        limit = int(state().config["service"]["upload_limit"])
        dids, labels = read_label_table(upload.read_stream(table.stream, limit, "labels"))
        given = [(d, lab or None) for d, lab in zip(dids, labels, strict=True) if lab]
    else:
        body = request.get_json(silent=True)
        items = body.get("answers") if isinstance(body, dict) else None
        if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
            raise UsageError('send {"answers": [{"obs_publisher_did": …, "label": …}]} or a label table')
        given = [(item.get("obs_publisher_did"), item.get("label")) for item in items]
    served = state().served_model()
    for did, label in given:
        if not isinstance(did, str) or served.row_of(did) is None:
            raise UsageError(f"{did!r} is no spectrum of the model in service")
        if label is not None and not isinstance(label, str):
            raise UsageError("each label must be a text (a class, 'not sure' or 'bad') or null")
    most = int(state().config["ml"]["propagate_max_labels"])
    return jsonify(sets.answer(set_id, given, most).to_json())


@bp.get("/labelsets/<set_id>/labels.csv")
def label_set_table(set_id: str) -> Response:
    """The class answers as the label table /ml/propagate takes (obs_publisher_did, label)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(["obs_publisher_did", "label"])
    writer.writerows(label_sets().get(set_id).labelled().items())
    return Response(buffer.getvalue(), mimetype="text/csv")


@bp.post("/labelsets/<set_id>/rounds")
def label_set_round(set_id: str) -> Response:
    """``{"job": <URL of the /ml/propagate job started from the set>}``: one more round."""
    body = request.get_json(silent=True)
    job = body.get("job") if isinstance(body, dict) else None
    prefix = state().url("ml/propagate/")
    if not isinstance(job, str) or not job.startswith(prefix):
        raise UsageError(f'send {{"job": "{prefix}<job id>"}}: the propagation job of this round')
    return jsonify(label_sets().new_round(set_id, job).to_json())

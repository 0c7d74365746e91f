"""/ml job services as UWS 1.1 jobs, with their VOSI resources: label propagation (``/ml/propagate``,
open to all, bounded) and training (``/ml/train``, the operator's only: service.ml.require_operator
guards every request to it).

Jobs share the machinery, persistence and restart behaviour of ``/tap/async`` (service.uws);
errors are DALI error documents. ``/ml/capabilities`` declares the job list as a UWS 1.1
interface with its parameters, beside the VOSI capabilities and availability of ``/ml``.
"""

from __future__ import annotations

from flask import Blueprint, Response

from service import vosi
from service.ml import require_operator
from service.propagation import run_propagation
from service.state import state
from service.training import run_training
from service.uws.jobs import JobKind
from service.uws.rest import UWS_STANDARD, add_job_routes

bp = Blueprint("learn", __name__)

PROPAGATE = JobKind("propagate", "ml/propagate", run_propagation, settings=("ml", "propagate"))

TRAIN = JobKind("train", "ml/train", run_training, settings=("ml", "train"))

add_job_routes(bp, "/propagate", PROPAGATE)
add_job_routes(bp, "/train", TRAIN, guard=require_operator)

#: The parameters of a propagation job, as /ml/capabilities declares them.
PROPAGATE_PARAMS = (
    ("UPLOAD", "required", "labels,param:<part> or labels,https://…: a VOTable or CSV table with columns "
     "obs_publisher_did and label (rows with an empty label are left out)"),
    ("METHOD", "optional", "spreading (label spreading over the latent neighbour graph; default) or knn "
     "(the nearest labelled spectra, weighted by inverse distance)"),
    ("DIMS", "optional", "Latent dimensions to measure neighbours along (exact search); default: the "
     "similarity index's"),
    ("MODEL_VERSION", "optional", "An indexed model version; default: the one in service"),
)  # fmt: skip


@bp.route("/capabilities", methods=["GET"])
def capabilities() -> Response:
    """VOSI capabilities: the propagation job list (UWS 1.1) and this endpoint's VOSI resources."""
    st = state()
    propagate = vosi.capability(
        UWS_STANDARD,
        [vosi.Interface(st.url(PROPAGATE.path), role="std", version="1.1", query_types=("GET", "POST"))],
        description="Label propagation over the latent space: a few labelled spectra give every "
        "spectrum a class probability and a rank for what to label next. Create a job by POSTing "
        "its parameters; the result is a VOTable with one row per spectrum.",
    )
    interface = propagate.find("interface")
    for name, use, text in PROPAGATE_PARAMS:
        element = vosi.sub(interface, "param", use=use)
        vosi.sub(element, "name", name)
        vosi.sub(element, "description", text)
        vosi.sub(element, "dataType", "string")
    caps = [propagate, *vosi.vosi_capabilities(st.url("ml"))]
    return vosi.xml_response(vosi.capabilities_document(caps), last_modified=vosi.STARTED)


@bp.route("/availability", methods=["GET"])
def availability() -> Response:
    """VOSI availability: really reads the archive and loads the model (DALI-07)."""
    available, notes = vosi.probe_service()
    return vosi.xml_response(vosi.availability_document(available, notes, up_since=vosi.STARTED))

"""The landing page: what this service offers, where, and how to start."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

from flask import Blueprint, render_template

from service.errors import DALIError
from service.state import state

SERVICE_FILE = Path(__file__).resolve().parents[1] / "resources" / "service.toml"

bp = Blueprint("web", __name__, template_folder="templates")


def service_description() -> dict:
    with open(SERVICE_FILE, "rb") as handle:
        return tomllib.load(handle)


@bp.get("/")
def index() -> str:
    st = state()
    model, correlations = None, []
    try:
        served = st.served_model()
        model = {
            **served.record,
            "similarity_dims": served.model.similarity_dims,
            "metrics": json.loads(served.record.get("metrics") or "{}"),
        }
        correlations = best_dimension_per_label(served.version)
    except DALIError:
        pass  # no model in service yet: the page says so
    archive = st.archive()
    collections = archive.db.execute(
        "SELECT obs_collection, COUNT(*) AS n FROM spectrum GROUP BY obs_collection ORDER BY obs_collection"
    ).fetchall()
    example_did = archive.db.execute(
        "SELECT obs_publisher_did FROM spectrum ORDER BY row_id LIMIT 1"
    ).fetchone()
    return render_template(
        "index.html",
        service=service_description(),
        base=st.base_url,
        model=model,
        correlations=correlations,
        collections=collections,
        example_did=example_did[0] if example_did else None,
    )


def best_dimension_per_label(version: int) -> list[dict]:
    """For each label, the latent dimension with the most mutual information, next to PCA's best."""
    rows = (
        state()
        .archive()
        .db.execute(
            "SELECT label, dim, mi, mi_error FROM ml_label_correlation AS l WHERE model_version = ? "
            "AND mi = (SELECT MAX(mi) FROM ml_label_correlation "
            "          WHERE model_version = l.model_version AND label = l.label) ORDER BY label",
            (version,),
        )
        .fetchall()
    )
    pca = dict(
        state()
        .archive()
        .db.execute(
            "SELECT label, MAX(pca_mi) FROM ml_label_correlation WHERE model_version = ? GROUP BY label",
            (version,),
        )
        .fetchall()
    )
    return [{**dict(r), "pca_mi": pca.get(r["label"])} for r in rows]

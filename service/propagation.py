"""Label propagation as a UWS job (``/ml/propagate``): a few labelled spectra teach the whole archive.

The job's ``UPLOAD=labels,<param:part or URL>`` table (VOTable or CSV, as TAP uploads) names
spectra (``obs_publisher_did``) and what they are (``label``); rows with an empty label, and
DIDs the model does not know, are left out and counted. :func:`model.propagation.propagate`
spreads the labels over the latent neighbour graph: the served Annoy index's k nearest
neighbours of every spectrum (computed once per model version and kept beside it), or with
``DIMS`` exact neighbours along those dimensions. ``METHOD=knn`` asks the k nearest labelled
spectra instead. ``MODEL_VERSION`` picks an indexed version other than the one in service;
``RESPONSEFORMAT`` another format (default VOTable BINARY2). The result reports the accuracy of a
5-fold cross-validation over the labels given (INFO ``cv_accuracy``).

The result is a VOTable (BINARY2) with one row per encoded spectrum: its most probable label,
that probability, one probability column per class, the label given (if any), the margin
between the two most probable classes and ``query_rank`` (1: the spectrum whose answer would
teach most), with the DataLink {links} descriptor on ``obs_publisher_did``. It loads in
TOPCAT and goes back into TAP as an upload.
"""

from __future__ import annotations

import csv
import io
import json
import re
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass

import numpy as np
from astropy.io.votable.tree import Resource, VOTableFile

from model.api import LatentModel
from model.atomic import atomic_path
from model.propagation import Propagation, index_neighbours, knn_graph, propagate
from model.similarity import exact_neighbours_batch
from service.dali import FORMATS, OutputFormat, output_format, write_result
from service.datalink import links_descriptor, parse_dims
from service.errors import LimitError, NotFoundError, UsageError, WorkInterrupted
from service.state import state
from service.tap import upload
from service.uws.jobs import JobRun
from service.votable import Column

#: The upload that carries the labels, and its two columns.
LABELS = "labels"
DID_COLUMN, LABEL_COLUMN = "obs_publisher_did", "label"
METHODS = ("spreading", "knn")
#: Exact neighbour graphs (DIMS given) are built for archives up to this many spectra.
EXACT_GRAPH_MAX = 50_000
#: The field the DataLink descriptor's ID parameter refers to.
PUBDID_FIELD_ID = "pubdid"
#: Rows of the index graph between two checks of the job's time and abort.
CHECK_EVERY = 4096
#: Folds of the cross-validated accuracy the result reports.
CV_FOLDS = 5


@dataclass
class Labels:
    """The labels of a label table that the model knows: row numbers in its latent matrix."""

    rows: list[int]
    labels: list[str]
    unknown: int  # DIDs the model has no latent vector for
    blank: int  # rows without a label


@dataclass
class Version:
    """A model version's matrix rows: the model, the DID of each row and the row of each DID."""

    number: int
    model: LatentModel
    dids: list[str]
    rows: dict[str, int]


def run_propagation(run: JobRun) -> tuple[bytes, str]:
    """A propagation job's work (see the module docstring)."""
    params = run.job.params()
    config = state().config
    deadline = None if run.duration is None else time.monotonic() + run.duration

    def check() -> None:
        if run.cancelled() or (deadline is not None and time.monotonic() > deadline):
            raise WorkInterrupted("the propagation was interrupted")

    method = (params.get("METHOD") or "spreading").strip().lower()
    if method not in METHODS:
        raise UsageError(f"METHOD must be spreading or knn, not {params.get('METHOD')!r}")
    version = _version(params.get_int("MODEL_VERSION", minimum=1))
    dims = parse_dims(params.get("DIMS"), version.model.latent_dim)
    k = int(config["ml"]["propagate_neighbours"])
    table = _label_table(params, run.parts, config)
    labels = _known_labels(table, version, int(config["ml"]["propagate_max_labels"]))
    run.report({"stage": "graph", "labels": len(labels.rows)})
    column: list[str | None] = [None] * len(version.dids)
    for row, label in zip(labels.rows, labels.labels, strict=True):
        column[row] = label
    check()
    if method == "knn":
        latents = np.asarray(version.model.latents)

        def solve(given: list[str | None]) -> Propagation:
            return propagate(given, latents=latents, method="knn", k=k, dims=dims)
    else:
        graph = _graph(version, k, dims, check)

        def solve(given: list[str | None]) -> Propagation:
            return propagate(given, graph=graph)

    check()
    result = solve(column)
    run.report({"stage": "cross-validation", "labels": len(labels.rows), "classes": len(result.classes)})
    accuracy = cross_validated(solve, column, labels, check)
    fmt = output_format(params) if params.get("RESPONSEFORMAT") else FORMATS["votable/b2"]
    infos = [
        ("model_version", str(version.number)),
        ("method", method),
        ("dims", " ".join(map(str, dims)) if dims else "index"),
        ("labels_used", str(len(labels.rows))),
        ("labels_unknown", str(labels.unknown)),
        ("labels_blank", str(labels.blank)),
        ("classes", json.dumps(result.classes)),  # a JSON list: class names may hold spaces
        ("cv_accuracy", "" if accuracy is None else f"{accuracy:.4f}"),
        ("cv_folds", str(CV_FOLDS)),
    ]
    given = {row: label for row, label in zip(labels.rows, labels.labels, strict=True)}
    return _result(version, result, given, infos, fmt)


def cross_validated(
    solve: Callable[[list[str | None]], Propagation],
    column: list[str | None],
    labels: Labels,
    check: Callable[[], None],
) -> float | None:
    """Accuracy on the labelled spectra, each predicted with its fold's labels hidden
    (:data:`CV_FOLDS` folds, each class dealt over them in turn); None with too few labels."""
    if len(labels.rows) < 2 * CV_FOLDS:
        return None
    fold = np.empty(len(labels.rows), dtype=np.int64)
    for cls in sorted(set(labels.labels)):
        members = [i for i, label in enumerate(labels.labels) if label == cls]
        fold[members] = np.arange(len(members)) % CV_FOLDS
    right = judged = 0
    for number in range(CV_FOLDS):
        hidden = [labels.rows[i] for i in np.flatnonzero(fold == number)]
        trial = list(column)
        for row in hidden:
            trial[row] = None
        if len({label for label in trial if label is not None}) < 2:
            continue
        check()
        found = solve(trial)
        for row in hidden:
            predicted = found.label[row]
            judged += 1
            right += predicted >= 0 and found.classes[predicted] == column[row]
    return right / judged if judged else None


# -- input ---------------------------------------------------------------------------------------


def _version(number: int | None) -> Version:
    """The version in service, or the indexed version ``number``."""
    served = state().served_model()
    if number is None or number == served.version:
        return Version(served.version, served.model, served.dids, served.rows)
    archive = state().archive()
    try:
        row = archive.model(number)
    except LookupError:
        raise NotFoundError(f"MODEL_VERSION {number}: the archive has no such model version") from None
    if row["stage"] != "indexed":
        raise UsageError(f"MODEL_VERSION {number} is not indexed yet (it is {row['stage']})")
    dids = archive.latent_dids(number)
    return Version(number, LatentModel(archive.model_dir(number)), dids, {d: i for i, d in enumerate(dids)})


def _label_table(params, parts, config: dict) -> tuple[list[str], list[str]]:
    """(DIDs, labels) of the ``labels`` upload, read as TAP reads its uploads (limits, URL checks)."""
    specs = upload.upload_specs(params.getlist("UPLOAD"))
    spec = next((s for s in specs if s.name.lower() == LABELS), None)
    if spec is None:
        raise UsageError(
            "UPLOAD=labels,param:labels (a multipart part) or UPLOAD=labels,https://… is required: a "
            "VOTable or CSV table with columns obs_publisher_did and label"
        )
    limits = config["service"]
    limit, timeout = int(limits["upload_limit"]), float(limits["upload_timeout"])
    data = upload.read_upload(spec, parts, limit, timeout, limits["upload_url_allow"])
    return read_label_table(data)


def read_label_table(data: bytes) -> tuple[list[str], list[str]]:
    """(DIDs, labels) of a label table: a VOTable, or CSV with a header, with columns
    obs_publisher_did and label (an empty label: none)."""
    if data.lstrip()[:1] == b"<":
        return _votable_columns(data)
    return _csv_columns(data)


def _votable_columns(data: bytes) -> tuple[list[str], list[str]]:
    table = upload.read_votable(data, LABELS).to_table()
    names = {name.lower(): name for name in table.colnames}
    dids, labels = (_column(names, table, wanted) for wanted in (DID_COLUMN, LABEL_COLUMN))
    return dids, labels


def _column(names: dict[str, str], table, wanted: str) -> list[str]:
    if wanted not in names:
        have = ", ".join(names.values())
        raise UsageError(f"UPLOAD labels: the table has no column {wanted!r} (it has {have})")
    column = table[names[wanted]]
    mask = np.ma.getmaskarray(column)
    return ["" if masked else _text(value) for value, masked in zip(column.tolist(), mask, strict=True)]


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _csv_columns(data: bytes) -> tuple[list[str], list[str]]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UsageError("UPLOAD labels: neither a VOTable nor UTF-8 CSV text") from None
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        raise UsageError("UPLOAD labels: the table is empty")
    names = {name.strip().lower(): i for i, name in enumerate(rows[0])}
    for wanted in (DID_COLUMN, LABEL_COLUMN):
        if wanted not in names:
            raise UsageError(
                f"UPLOAD labels: the CSV header has no column {wanted!r} (it has {', '.join(rows[0])})"
            )
    did, label = names[DID_COLUMN], names[LABEL_COLUMN]
    body = [row for row in rows[1:] if any(cell.strip() for cell in row)]
    width = max(did, label) + 1
    if any(len(row) < width for row in body):
        raise UsageError("UPLOAD labels: a CSV row has fewer cells than the header")
    return [row[did].strip() for row in body], [row[label].strip() for row in body]


def _known_labels(table: tuple[list[str], list[str]], version: Version, most: int) -> Labels:
    """The labelled rows the model knows; a DID labelled twice keeps its last label."""
    dids, labels = table
    if len(dids) > most:
        raise LimitError(f"UPLOAD labels: at most {most} labels in one table, not {len(dids)}")
    found: dict[int, str] = {}
    unknown = blank = 0
    for did, label in zip(dids, labels, strict=True):
        if not label:
            blank += 1
            continue
        row = version.rows.get(did)
        if row is None:
            unknown += 1
            continue
        found[row] = label
    classes = set(found.values())
    if len(classes) < 2:
        raise UsageError(
            f"UPLOAD labels: propagation needs labelled spectra of at least two classes; the model knows "
            f"{len(found)} of the labelled DIDs, with {len(classes)} class(es)"
        )
    return Labels(list(found), list(found.values()), unknown, blank)


# -- the graph -----------------------------------------------------------------------------------


def _graph(version: Version, k: int, dims: list[int] | None, check: Callable[[], None]):
    """The k-nearest-neighbour graph (self included): from the index, kept as ``neighbours-k<k>.npy``
    in the version's directory for the next job; with ``dims``, exact along them."""
    model, n = version.model, len(version.dids)
    if dims is not None:
        if n > EXACT_GRAPH_MAX:
            raise UsageError(
                f"DIMS asks for exact neighbours, which this service computes for at most {EXACT_GRAPH_MAX} "
                f"spectra (the model has {n}); leave DIMS out to use the similarity index"
            )
        latents = np.asarray(model.latents, dtype=np.float64)
        neighbours = exact_neighbours_batch(latents, latents, min(k + 1, n), dims)
        return knn_graph(neighbours)
    kept = model.directory / f"neighbours-k{k + 1}.npy"
    if kept.is_file():
        neighbours = np.load(kept, mmap_mode="r")
        if neighbours.shape[0] == n:
            return knn_graph(np.asarray(neighbours))
    neighbours = index_neighbours(model.index, k + 1, check=check, every=CHECK_EVERY)
    with suppress(OSError), atomic_path(kept) as tmp, open(tmp, "wb") as handle:
        np.save(handle, neighbours)  # (a read-only model directory: the next job computes it again)
    return knn_graph(neighbours)


# -- the result ----------------------------------------------------------------------------------


def _result(
    version: Version,
    result: Propagation,
    given: dict[int, str],
    infos: list[tuple[str, str]],
    fmt: OutputFormat,
) -> tuple[bytes, str]:
    class_columns = _class_names(result.classes)
    columns = [
        Column(DID_COLUMN, "char", "*", ucd="meta.id;meta.main", ID=PUBDID_FIELD_ID,
               description="IVOA dataset identifier of the spectrum (ivoa.obscore.obs_publisher_did)"),
        Column("label", "char", "*", ucd="meta.code.class",
               description="The most probable class (empty where no label reached the spectrum)"),
        Column("probability", "double", ucd="stat.probability", description="Probability of that class"),
        *[
            Column(name, "double", ucd="stat.probability", description=f"Probability of class {cls!r}")
            for name, cls in zip(class_columns, result.classes, strict=True)
        ],
        Column("given_label", "char", "*", ucd="meta.code.class",
               description="The label the uploaded table gave (empty where it gave none)"),
        Column("margin", "double", ucd="stat.probability",
               description="Top probability minus the second: small where the spectra around disagree"),
        Column("query_rank", "long", ucd="meta.number",
               description="Which spectrum to label next: 1 teaches most (margin sampling); empty for "
               "labelled ones"),
    ]  # fmt: skip
    probability = result.probability
    top = probability.max(axis=1)
    rows = []
    for i, did in enumerate(version.dids):
        label = result.classes[result.label[i]] if result.label[i] >= 0 else None
        rank = int(result.query_rank[i])
        rows.append(
            [
                did,
                label,
                float(top[i]) if label is not None else None,
                *[float(p) for p in probability[i]],
                given.get(i),
                float(result.margin[i]),
                rank or None,
            ]
        )

    def decorate(document: VOTableFile, _resource: Resource) -> None:
        document.resources.append(links_descriptor(document, PUBDID_FIELD_ID))

    response = write_result(columns, rows, fmt, decorate=decorate, infos=infos)
    return response.get_data(), response.content_type


def _class_names(classes: list[str]) -> list[str]:
    """``p_<class>`` column names, made identifiers and unique."""
    names: list[str] = []
    for cls in classes:
        base = "p_" + (re.sub(r"\W+", "_", cls).strip("_") or "class")
        name, n = base, 1
        while name.lower() in {x.lower() for x in names} or name.lower() in {
            DID_COLUMN, "label", "probability", "given_label", "margin", "query_rank",
        }:  # fmt: skip
            n += 1
            name = f"{base}_{n}"
        names.append(name)
    return names

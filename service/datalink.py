"""DataLink 1.1 for the archive's spectra: {links}, previews, reconstructions, similarity search.

``/datalink/links`` answers, per dataset ID and in request order: the spectrum in each format
(``#this``), a PNG preview (``#preview``), the model's reconstruction (``#derivation``), a
similarity-search service descriptor (``#proc``) and the K nearest spectra in latent space, each
linking to its own {links} document. :func:`links_descriptor` is the service descriptor that SSAP
and TAP responses embed so clients find DataLink from any table of spectra (DL-12).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlencode

import numpy as np
from astropy.io.votable.tree import Resource, VOTableFile
from flask import Blueprint, Response, request
from markupsafe import escape

from model.preprocess import prepare
from model.readers import read_spectra
from model.spectrum import Spectrum, SpectrumReadError
from service import preview, vosi
from service.dali import OutputFormat, output_format, write_result
from service.data import DATASET_FORMATS, MAIN_LABELS, dataset_url, label_columns
from service.errors import DALIError, NotFoundError, TransientError, UsageError
from service.params import Params, request_params
from service.state import ServedModel, state
from service.storage import Row
from service.votable import (
    DATALINK_MIME,
    VOTABLE_MIME,
    Column,
    InputParam,
    param,
    prewritten,
    service_descriptor,
)

bp = Blueprint("datalink", __name__)
#: The page defining our own semantics terms, outside /datalink: ``app.register_blueprint(rdf_bp)``.
rdf_bp = Blueprint("rdf", __name__)

LINKS_STANDARD_ID = "ivo://ivoa.net/std/DataLink#links-1.1"
LINKS_DESCRIPTOR_ID = "latentvo_links"
#: IDs answered per {links} request; the rest is cut between IDs and flagged OVERFLOW (DL-04),
#: and pyvo asks again for what is missing.
MAX_IDS = 200
#: Most neighbours /datalink/similar returns (the K input's MAX).
MAX_K = 1000
RDF_PATH = "rdf/latentvo"
#: RESPONSEFORMAT values {links} accepts (lower case, spaces removed); all mean TABLEDATA VOTable.
LINKS_FORMATS = ("votable", "application/x-votable+xml", DATALINK_MIME)
#: Catalogue labels /datalink/similar reports for each neighbour (UCD and unit from data.LABEL_PARAMS).
SIMILAR_LABELS = MAIN_LABELS

LINK_COLUMNS = (
    Column(
        "ID", "char", "*", ucd="meta.id;meta.main", description="The dataset identifier these links are for"
    ),
    Column("access_url", "char", "*", ucd="meta.ref.url", description="URL of the linked resource"),
    Column(
        "service_def",
        "char",
        "*",
        ucd="meta.ref",
        description="ID of the service descriptor in this document",
    ),
    Column("error_message", "char", "*", ucd="meta.code.error", description="Why no link could be made"),
    Column("description", "char", "*", ucd="meta.note", description="What the link leads to"),
    Column("semantics", "char", "*", ucd="meta.code", description="Relation of the link to the dataset"),
    Column("content_type", "char", "*", ucd="meta.code.mime", description="MIME type of the linked resource"),
    Column(
        "content_length", "long", unit="byte", ucd="phys.size;meta.file", description="Size of the download"
    ),
    Column("content_qualifier", "char", "*", description="Product type of the linked resource"),
    Column(
        "local_semantics", "char", "*", ucd="meta.id.assoc", description="Stable label of this kind of link"
    ),
    Column("link_auth", "char", "*", ucd="meta.code", description="Whether the link needs authentication"),
    Column("link_authorized", "boolean", ucd="meta.code", description="Whether this request may use it"),
)


@dataclass
class Link:
    """One row of a {links} table; exactly one of access_url, service_def, error_message is set."""

    id: str
    semantics: str
    description: str | None = None
    access_url: str | None = None
    service_def: str | None = None
    error_message: str | None = None
    content_type: str | None = None
    content_length: int | None = None
    content_qualifier: str | None = None
    local_semantics: str | None = None

    def row(self) -> tuple:
        usable = self.error_message is None
        return (
            self.id,
            self.access_url,
            self.service_def,
            self.error_message,
            self.description,
            self.semantics,
            self.content_type,
            self.content_length,
            self.content_qualifier,
            self.local_semantics,
            "false" if usable else None,
            True if usable else None,
        )


# -- descriptors --------------------------------------------------------------------------------


def links_descriptor(document: VOTableFile, pubdid_field_id: str) -> Resource:
    """The {links} service descriptor for a table whose FIELD ``ID=pubdid_field_id`` holds DIDs.

    Append the result to ``document.resources``; pyvo's ``iter_datalinks()`` and TOPCAT's
    DataLink action then call /datalink/links with the DIDs of that column (DL-12).
    """
    access_url = state().url("datalink/links")
    return prewritten(
        document,
        ("links", pubdid_field_id, access_url),
        lambda blank: service_descriptor(
            blank,
            LINKS_DESCRIPTOR_ID,
            access_url,
            "DataLink {links} of a spectrum: the spectrum in VOTable and FITS, a preview plot, the "
            "model's reconstruction and the most similar spectra in latent space.",
            [InputParam("ID", ref=pubdid_field_id, ucd="meta.id;meta.main", description="Publisher DID")],
            standard_id=LINKS_STANDARD_ID,
            content_type=DATALINK_MIME,
            name="latentvo DataLink",
        ),
    )


def similarity_descriptor(document: VOTableFile, descriptor_id: str, did: str, dims_text: str) -> Resource:
    """Descriptor of /datalink/similar with ID fixed to ``did``; K and DIMS are the user's (DL-13).

    Not a standard service, so no standardID: TOPCAT offers it as "Invoke Service" with a form.
    """
    return service_descriptor(
        document,
        descriptor_id,
        state().url("datalink/similar"),
        f"Spectra most similar to {did} in the model's latent space; choose how many and along "
        "which latent dimensions.",
        [
            InputParam("ID", value=did, ucd="meta.id;meta.main", description="The spectrum to compare with"),
            InputParam(
                "K",
                datatype="int",
                arraysize=None,
                minimum="1",
                maximum=str(MAX_K),
                description=f"Number of similar spectra to return (default {default_k()})",
            ),
            InputParam("DIMS", description=dims_text),
        ],
        content_type=VOTABLE_MIME,
        name=f"latentvo similarity search ({descriptor_id})",
    )


def self_descriptor(document: VOTableFile) -> Resource:
    """``adhoc:this``: how to call this {links} service, for a request that named no ID (DL-01)."""
    resource = service_descriptor(
        document,
        "latentvo_links_this",
        state().url("datalink/links"),
        "This DataLink {links} service: send one or more ID parameters (publisher DIDs).",
        [
            InputParam(
                "ID", ucd="meta.id;meta.main", description="Publisher DID; repeat for several datasets"
            ),
            InputParam("RESPONSEFORMAT", options=("votable",), description="Output format (VOTable)"),
        ],
        standard_id=LINKS_STANDARD_ID,
        content_type=DATALINK_MIME,
        name="latentvo DataLink (this service)",
    )
    resource.utype = "adhoc:this"
    return resource


def upload_similarity_descriptor(document: VOTableFile) -> Resource:
    """Descriptor of /similar (service/similar.py), beside {links}' self-description: search the
    archive with a spectrum of one's own. No standardID: it is our service, not a standard one.
    """
    return service_descriptor(
        document,
        "latentvo_similar_upload",
        state().url("similar"),
        "Archive spectra most similar to a spectrum you send, in the model's latent space: POST the "
        "file (FITS image or table, SDSS or LAMOST spec file, Spectrum-DM VOTable, CSV) as the "
        "multipart/form-data part FILE, or as the request body with its Content-Type; or give the ID "
        "of an archive spectrum. PARAMs of the answer give the spectrum's own latent coordinates and "
        "the fraction of the model's wavelength grid it covers.",
        [
            InputParam("FILE", description="The spectrum file, sent as the multipart part FILE"),
            InputParam(
                "ID", ucd="meta.id;meta.main", description="Instead of a file: an archive spectrum's DID"
            ),
            InputParam(
                "K",
                datatype="int",
                arraysize=None,
                minimum="1",
                maximum=str(MAX_K),
                description=f"Number of similar spectra to return (default {default_k()})",
            ),
            InputParam(
                "DIMS",
                description="Latent dimensions to compare along (default: the similarity dimensions)",
            ),
            InputParam("WEIGHTS", description="One non-negative weight per dimension of DIMS"),
            InputParam(
                "INDEX",
                datatype="int",
                arraysize=None,
                minimum="0",
                description="Which spectrum of a file holding several (0 = the first)",
            ),
        ],
        content_type=VOTABLE_MIME,
        name="latentvo similarity search with your own spectrum",
    )


def dims_description(served: ServedModel) -> str:
    """DIMS help: the informative dimensions and how much each tells about each physical label."""
    carried: dict[int, list[str]] = {}
    conn = state().archive().db
    rows = conn.execute(
        "SELECT dim, label, mi FROM ml_label_correlation WHERE model_version = ? AND mi IS NOT NULL "
        "ORDER BY dim, mi DESC",
        (served.version,),
    )
    for row in rows:
        carried.setdefault(row["dim"], []).append(f"{row['label']} {row['mi']:.2f}")
    informative = served.model.informative_dims
    text = (
        f"Latent dimensions to compare along: numbers 0 to {served.model.latent_dim - 1} separated by "
        f"spaces or commas. Default: the informative dimensions {' '.join(map(str, informative))} of "
        f"model version {served.version}."
    )
    if carried:
        text += (
            " Mutual information (nats) of each informative dimension with the catalogue labels: "
            + "; ".join(f"{dim}: {', '.join(carried[dim])}" for dim in informative if dim in carried)
            + "."
        )
    return text


# -- {links} ------------------------------------------------------------------------------------


@bp.route("/links", methods=["GET", "POST"])
def links() -> Response:
    """The {links} table for every ID given, rows of one ID together, IDs in request order."""
    params = request_params(request)
    mime = links_mime(params)
    ids = list(dict.fromkeys(params.getlist("ID")))  # a repeated ID would split its rows
    overflow = len(ids) > MAX_IDS
    ids = ids[:MAX_IDS]
    builder = LinksBuilder(ids)

    def decorate(document: VOTableFile, _resource: Resource) -> None:
        for descriptor_id, did in builder.similarity_services:
            document.resources.append(similarity_descriptor(document, descriptor_id, did, builder.dims_text))
        if not ids:
            document.resources.append(self_descriptor(document))
            document.resources.append(upload_similarity_descriptor(document))

    return write_result(
        LINK_COLUMNS,
        [link.row() for link in builder.links()],
        OutputFormat(mime, "votable"),  # TABLEDATA always (DL-02)
        overflow=overflow,
        decorate=decorate,
        infos=[("standardID", LINKS_STANDARD_ID)],
    )


def links_mime(params: Params) -> str:
    """The response's media type: DataLink's unless RESPONSEFORMAT named another VOTable type (X-14)."""
    raw = params.get("RESPONSEFORMAT")
    if raw is None or raw.strip() == "":
        return DATALINK_MIME
    key = raw.strip().lower().replace(" ", "")
    if key not in LINKS_FORMATS:
        raise UsageError(f"unsupported RESPONSEFORMAT {raw!r}: {{links}} answers only in VOTable")
    return DATALINK_MIME if key == "votable" else key


class LinksBuilder:
    """The links of a batch of IDs, with one archive lookup for the datasets and one for neighbours."""

    def __init__(self, ids: Sequence[str]) -> None:
        self.ids = ids
        self.state = state()
        self.spectra = spectra_by_did(ids)
        self.k = default_k()
        self.similar_uri = self.state.url(RDF_PATH) + "#similar"
        self.dims_text = ""
        self.neighbours: dict[str, list[tuple[int, float]]] = {}
        self.neighbour_spectra: dict[str, Row] = {}
        try:
            self.served: ServedModel | None = self.state.served_model() if self.spectra else None
            self.model_problem = None
        except TransientError as exc:
            self.served, self.model_problem = None, exc.text()
        if self.served is not None:
            self.dims_text = dims_description(self.served)
            for did in ids:
                row = self.served.row_of(did)
                if did in self.spectra and row is not None:
                    self.neighbours[did] = nearest(self.served, row, self.k)
            found = {self.served.dids[r] for hits in self.neighbours.values() for r, _ in hits}
            self.neighbour_spectra = spectra_by_did(sorted(found))
        #: (XML ID, DID) of the similarity descriptor of each ID the model knows; IDs unique per document.
        self.similarity_services = [
            (f"similar_{position}", did) for position, did in enumerate(ids, 1) if did in self.neighbours
        ]

    def links(self) -> list[Link]:
        rows: list[Link] = []
        for did in self.ids:
            if did not in self.spectra:
                message = f"NotFoundFault: {did!r} is not the publisher DID of a dataset in this archive"
                rows.append(Link(did, "#this", error_message=message))
                continue
            rows += self.dataset_links(did)
            rows += self.model_links(did)
        return rows

    def dataset_links(self, did: str) -> list[Link]:
        """The spectrum itself in each format, and its preview."""
        links = [
            Link(
                did,
                "#this",
                description=f"The spectrum as a {label}",
                access_url=url,
                content_type=mime,
                content_qualifier="#spectrum",
                local_semantics=f"this-{fmt}",
            )
            for fmt, mime, label, url in dataset_formats(did)
        ]
        links.append(
            Link(
                did,
                "#preview",
                description="Preview plot of the spectrum (PNG)",
                access_url=self.state.url("datalink/preview") + "?" + urlencode({"ID": did}),
                content_type="image/png",
                local_semantics="preview",
            )
        )
        return links

    def model_links(self, did: str) -> list[Link]:
        """Reconstruction, similarity-search descriptor and nearest neighbours from the model in service."""
        if self.served is None:
            return [
                Link(did, "#derivation", error_message=self.model_problem, local_semantics="reconstruction")
            ]
        if did not in self.neighbours:
            message = f"NotFoundFault: {did} is not encoded by model version {self.served.version} yet"
            return [Link(did, "#derivation", error_message=message, local_semantics="reconstruction")]
        query = "?" + urlencode({"ID": did})
        descriptor_id = next(xml_id for xml_id, known in self.similarity_services if known == did)
        links = [
            Link(
                did,
                "#derivation",
                description=f"Reconstruction by model version {self.served.version} (decoded posterior "
                "mean) with the observed flux and mask on the model grid",
                access_url=self.state.url("datalink/reconstruction") + query,
                content_type=VOTABLE_MIME,
                local_semantics="reconstruction",
            ),
            Link(
                did,
                "#proc",
                description="Search for similar spectra: choose how many and along which latent dimensions",
                service_def=descriptor_id,
                content_type=VOTABLE_MIME,
                local_semantics="similarity-search",
            ),
        ]
        for rank, (row, distance) in enumerate(self.neighbours[did], 1):
            other = self.served.dids[row]
            name = self.neighbour_spectra[other]["target_name"] if other in self.neighbour_spectra else None
            # Latent-space neighbours are no term of the DataLink core vocabulary, so the semantics
            # is a full URI of our own vocabulary, which resolves to a page defining it (DL-06).
            links.append(
                Link(
                    did,
                    self.similar_uri,
                    description=f"Similar spectrum {rank}: {name or other} ({other}), latent distance "
                    f"{distance:.4g} over the informative dimensions",
                    access_url=self.state.url("datalink/links") + "?" + urlencode({"ID": other}),
                    content_type=DATALINK_MIME,
                    local_semantics=f"similar-{rank}",
                )
            )
        return links


# -- helpers shared by the endpoints ------------------------------------------------------------


def default_k() -> int:
    """Neighbours listed in {links} and returned by /similar by default: the index's k."""
    return int(state().config["index"]["k"])


def spectra_by_did(dids: Sequence[str]) -> dict[str, Row]:
    """Archive rows of those DIDs that exist (unknown ones are simply absent)."""
    conn = state().archive().db
    found: dict[str, Row] = {}
    dids = list(dids)
    for start in range(0, len(dids), 900):
        chunk = dids[start : start + 900]
        marks = ",".join("?" * len(chunk))
        for row in conn.execute(f"SELECT * FROM spectrum WHERE obs_publisher_did IN ({marks})", chunk):
            found[row["obs_publisher_did"]] = row
    return found


def nearest(
    served: ServedModel, row: int, k: int, dims: Sequence[int] | None = None
) -> list[tuple[int, float]]:
    """The k archive rows nearest ``row`` as (row, distance), the row itself left out.

    Asks for k + 1 and drops the query row wherever it sits (an exact duplicate may tie with it).
    """
    rows, distances = served.model.neighbours(row=row, k=k + 1, dims=dims)
    return [(int(r), float(d)) for r, d in zip(rows, distances, strict=True) if r != row][:k]


def required_id(params: Params) -> str:
    did = params.get("ID")
    if not did:
        raise UsageError("the ID parameter (a publisher DID) is required")
    return did


def spectrum_row(did: str) -> Row:
    row = spectra_by_did([did]).get(did)
    if row is None:
        raise NotFoundError(f"{did!r} is not the publisher DID of a dataset in this archive")
    return row


def read_spectrum(row: Row) -> Spectrum:
    """Re-read an archive spectrum from its source file."""
    try:
        return read_spectra(row["source_path"], index=row["source_index"])[0]
    except SpectrumReadError as exc:
        raise DALIError(f"the file of {row['obs_publisher_did']} cannot be read: {exc.reason}") from exc


def dataset_formats(did: str) -> list[tuple[str, str, str, str]]:
    """(format key, MIME type, description, URL) of each form /data delivers the spectrum in."""
    labels = {"votable": "Spectrum-DM VOTable", "fits": "FITS binary table"}
    return [(fmt, mime, labels.get(fmt, fmt), dataset_url(did, fmt)) for fmt, mime in DATASET_FORMATS.items()]


# -- preview, reconstruction, similarity search -------------------------------------------------


@bp.route("/preview", methods=["GET", "POST"])
def preview_plot() -> Response:
    """PNG plot of a spectrum (the #preview link), rendered once and then served from the cache."""
    row = spectrum_row(required_id(request_params(request)))
    title = f"{row['target_name'] or row['obs_id']} - {row['obs_publisher_did']}"
    png = preview.cached_preview(
        state().root, row["obs_publisher_did"], row["source_sha256"], lambda: read_spectrum(row), title
    )
    response = Response(png, mimetype="image/png")
    response.set_etag(preview.preview_path(state().root, row["obs_publisher_did"], row["source_sha256"]).stem)
    return response.make_conditional(request)


@bp.route("/reconstruction", methods=["GET", "POST"])
def reconstruction() -> Response:
    """The model's reconstruction of a spectrum beside the observed flux, on the model grid (#derivation).

    Both fluxes are normalised as the model sees them (by the median or the pseudo-continuum), so a
    user compares like with like; ``good`` is the mask the encoder was given.
    """
    params = request_params(request)
    fmt = output_format(params)
    did = required_id(params)
    row = spectrum_row(did)
    served = state().served_model()
    latent_row = served.row_of(did)
    if latent_row is None:
        raise NotFoundError(f"{did} is not encoded by model version {served.version} yet")
    model = served.model
    observed = prepare(read_spectrum(row), model.grid, matching=model.matching)
    modelled = model.reconstruct(np.array(model.latents[latent_row]))[0]  # a copy: the memmap is read-only
    good = observed.good
    rmse = float(np.sqrt(np.mean((modelled[good] - observed.flux[good]) ** 2))) if good.any() else None
    columns = [
        Column(
            "wavelength",
            "double",
            unit="Angstrom",
            ucd="em.wl",
            utype="spec:Spectrum.Data.SpectralAxis.Value",
            description="Vacuum wavelength of the model grid",
        ),
        Column(
            "flux_model",
            "float",
            ucd="phot.flux.density;arith.ratio",
            utype="spec:Spectrum.Data.FluxAxis.Value",
            description="Model reconstruction (decoded posterior mean), normalised flux",
        ),
        Column(
            "flux_observed",
            "float",
            ucd="phot.flux.density;arith.ratio",
            description="Observed flux rebinned to the model grid and normalised as the model saw it; "
            "null where masked",
        ),
        Column(
            "good",
            "boolean",
            ucd="meta.code.qual",
            description="True where the pixel was good and given to the encoder",
        ),
    ]
    rows = [
        (float(w), float(m), float(f) if g else None, bool(g))
        for w, m, f, g in zip(model.grid.wavelength, modelled, observed.flux, good, strict=True)
    ]

    def decorate(document: VOTableFile, resource: Resource) -> None:
        table = resource.tables[0]
        table.utype = "spec:Spectrum"
        table.params.extend(
            [
                param(document, "obs_publisher_did", did, ucd="meta.id;meta.main", description="Spectrum"),
                param(document, "model_version", str(served.version), "int", None, ucd="meta.version"),
                param(
                    document,
                    "normalisation",
                    repr(observed.scale),
                    "double",
                    None,
                    ucd="arith.factor",
                    description="Observed flux was divided by this (median of good pixels, file units)",
                ),
            ]
        )
        if rmse is not None:
            table.params.append(
                param(
                    document,
                    "recon_rmse",
                    repr(rmse),
                    "double",
                    None,
                    ucd="stat.fit.residual",
                    description="RMS of model - observed over good pixels (normalised flux)",
                )
            )

    return write_result(columns, rows, fmt, decorate=decorate)


@bp.route("/similar", methods=["GET", "POST"])
def similar() -> Response:
    """The K spectra nearest one archive spectrum in latent space, optionally along chosen dimensions.

    Without DIMS the Annoy index over the informative dimensions answers; with DIMS exact search
    does. Each row links to its own {links}, and the table carries the {links} descriptor.
    """
    params = request_params(request)
    fmt = output_format(params)
    did = required_id(params)
    k = params.get_int("K", default=default_k(), minimum=1)
    if k > MAX_K:
        raise UsageError(f"K must be at most {MAX_K}, not {k}")
    served = state().served_model()
    dims = parse_dims(params.get("DIMS"), served.model.latent_dim)
    row = served.row_of(did)
    if row is None:
        spectrum_row(did)  # unknown DID → NotFoundFault
        raise NotFoundError(f"{did} is not encoded by model version {served.version} yet")
    found = nearest(served, row, k, dims)
    dids = [served.dids[r] for r, _ in found]
    spectra = spectra_by_did(dids)
    latents = np.asarray(served.model.latents[[r for r, _ in found]], dtype=np.float64)
    latents = latents.reshape(len(found), served.model.latent_dim)
    links_url = state().url("datalink/links")
    rows = []
    for rank, ((_, distance), other, z) in enumerate(zip(found, dids, latents, strict=True), 1):
        meta = spectra.get(other)
        labels = [meta[name] if meta is not None else None for name in SIMILAR_LABELS]
        target = meta["target_name"] if meta is not None else None
        url = links_url + "?" + urlencode({"ID": other})
        rows.append((rank, other, distance, url, target, *labels, *map(float, z)))
    used = dims if dims is not None else served.model.informative_dims
    columns = similar_columns(served.model.latent_dim, used)

    def decorate(document: VOTableFile, _resource: Resource) -> None:
        document.resources.append(links_descriptor(document, "pubdid"))

    infos = [
        ("ID", did),
        ("K", str(k)),
        ("DIMS", " ".join(map(str, used))),
        ("model_version", str(served.version)),
    ]
    return write_result(columns, rows, fmt, decorate=decorate, infos=infos)


def similar_columns(latent_dim: int, dims: Sequence[int]) -> list[Column]:
    dims_text = " ".join(map(str, dims))
    return [
        Column("rank", "int", ucd="meta.number", description="1 = most similar"),
        Column(
            "obs_publisher_did",
            "char",
            "*",
            ucd="meta.ref.ivoid",
            utype="obscore:Curation.PublisherDID",
            description="Publisher DID of the similar spectrum",
            ID="pubdid",
        ),
        Column(
            "distance",
            "double",
            ucd="stat.value;arith.diff",
            description=f"Euclidean distance of posterior means over latent dimensions {dims_text}",
        ),
        Column(
            "access_url",
            "char",
            "*",
            ucd="meta.ref.url",
            description="DataLink {links} of the similar spectrum",
        ),
        Column("target_name", "char", "*", ucd="meta.id;src", description="Target name"),
        *label_columns(),
        *[
            Column(f"z{i}", "double", ucd="src.var", description=f"Posterior mean of latent dimension {i}")
            for i in range(latent_dim)
        ],
    ]


def parse_dims(raw: str | None, latent_dim: int) -> list[int] | None:
    """DIMS as sorted unique dimension numbers; None (the informative ones) when absent or empty."""
    if raw is None or not raw.strip():
        return None
    try:
        dims = sorted({int(part) for part in raw.replace(",", " ").split()})
    except ValueError:
        raise UsageError(
            f"DIMS must be latent dimension numbers separated by spaces or commas, not {raw!r}"
        ) from None
    if dims[0] < 0 or dims[-1] >= latent_dim:
        raise UsageError(f"DIMS must lie between 0 and {latent_dim - 1}; got {raw!r}")
    return dims


# -- VOSI -----------------------------------------------------------------------------------------


@bp.route("/capabilities", methods=["GET"])
def capabilities() -> Response:
    """The {links} capability (DL-14) and this endpoint's VOSI capabilities, as siblings of /links."""
    st = state()
    links_capability = vosi.capability(
        LINKS_STANDARD_ID,
        [
            vosi.Interface(
                st.url("datalink/links"),
                role="std",
                version="1.1",
                result_type=DATALINK_MIME,
                query_types=("GET", "POST"),
            )
        ],
    )
    interface = links_capability.find("interface")
    for name, use, ucd, text in (
        ("ID", "required", "meta.id;meta.main", "Publisher DID of a dataset; repeat for several"),
        ("RESPONSEFORMAT", "optional", None, "Output format: votable (the only one)"),
    ):
        element = vosi.sub(interface, "param", use=use, std="true")
        vosi.sub(element, "name", name)
        vosi.sub(element, "description", text)
        if ucd:
            vosi.sub(element, "ucd", ucd)
        vosi.sub(element, "dataType", "string")
    document = vosi.capabilities_document([links_capability, *vosi.vosi_capabilities(st.url("datalink"))])
    return vosi.xml_response(document, vosi.STARTED)


@bp.route("/availability", methods=["GET"])
def availability() -> Response:
    """Whether {links} can answer: the archive is readable and a model is in service (DALI-07)."""
    available, notes = vosi.probe_service()
    return vosi.xml_response(vosi.availability_document(available, notes, vosi.STARTED))


# -- our vocabulary ------------------------------------------------------------------------------

#: Our own link vocabulary (semantics ``<base>/rdf/latentvo#<term>``): term → (label, definition).
TERMS = {
    "similar": (
        "Similar spectrum",
        "A dataset whose spectrum lies near this one in the latent space of the archive's "
        "beta-VAE model: a small euclidean distance between the posterior means of the two spectra "
        "over the model's informative latent dimensions. The link leads to the DataLink {links} "
        "document of the similar dataset; its description states the distance, and local_semantics "
        "similar-N its rank (1 = most similar). Neighbours of a spectrum are no concept of the IVOA "
        "DataLink core vocabulary (not #counterpart, which means the same target observed otherwise, "
        "nor #coderived), hence this term.",
    ),
}


@rdf_bp.route(f"/{RDF_PATH}", methods=["GET"])
def vocabulary() -> Response:
    """Human-readable definitions of our semantics terms; each term is an anchor (DL-06)."""
    entries = "\n".join(
        f'<dt id="{term}"><code>#{term}</code> - {escape(label)}</dt>\n<dd>{escape(text)}</dd>'
        for term, (label, text) in TERMS.items()
    )
    base = escape(state().url(RDF_PATH))
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"/>'
        "<title>latentvo link vocabulary</title></head><body>\n"
        "<h1>latentvo link vocabulary</h1>\n"
        f"<p>Terms used as DataLink <code>semantics</code> by this service, as <code>{base}#term</code>. "
        'They extend the <a href="http://www.ivoa.net/rdf/datalink/core">IVOA DataLink core '
        "vocabulary</a>, whose terms the service writes as <code>#term</code>.</p>\n"
        f"<dl>\n{entries}\n</dl>\n</body></html>\n"
    )
    return Response(page, mimetype="text/html")

"""``/similar``: the archive spectra most like a spectrum the user brings (DALI-style, synchronous).

The spectrum comes as a file - FITS image or table, SDSS or LAMOST spec file, Spectrum-DM VOTable,
CSV/ECSV - in a multipart part (``FILE``, ``SPECTRUM``, or the part ``UPLOAD=name,param:part``
names) or as the raw POST body with its Content-Type; or ``ID`` names a spectrum of this archive.
The file goes to a temporary directory (removed afterwards) and is read by ``model.readers``; the
model brings it onto its grid (vacuum log-wavelength, rebinned, uncovered pixels masked), encodes
it, and the latent space is searched: the index over the similarity dimensions by default, exact
search when ``DIMS`` or ``WEIGHTS`` are given. The answer is a VOTable of the K nearest archive
spectra (SSA-style fields, distance, latent coordinates, dataset and DataLink URLs) whose PARAMs
give the query's own latent coordinates with posterior sigma, reconstruction error and coverage of
the grid; it carries the DataLink {links} descriptor, so pyvo's ``iter_datalinks()`` works on it.

Errors are DALI error documents: a body over ``[service] max_request_bytes`` is refused (413)
before it is read, an unreadable file or a spectrum covering less than ``[service] min_coverage``
of the grid is a usage error (400) naming the reason, an unknown ID is not found (404).
"""

from __future__ import annotations

import io
import math
import re
import tempfile
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from functools import cache, lru_cache
from itertools import islice
from pathlib import Path
from urllib.parse import urlencode

import numpy as np
from astropy.io.votable.tree import Resource, VOTableFile
from flask import Blueprint, Request, Response, request
from werkzeug.datastructures import FileStorage
from werkzeug.utils import secure_filename

from model.api import Encoded, LatentModel
from model.ood import OODScore
from model.readers import iter_spectra, read_spectra
from model.resolution import CANDIDATES, MatchedOrder
from model.spectrum import Spectrum, SpectrumReadError
from model.velocity import Velocity
from service.dali import output_format, write_result
from service.data import MAIN_LABELS, dataset_url, label_columns
from service.datalink import MAX_K, default_k, links_descriptor, read_spectrum, spectra_by_did, spectrum_row
from service.errors import LimitError, NotFoundError, UsageError
from service.params import Params, request_params
from service.state import ServedModel, state
from service.storage import Row
from service.votable import Column, coordinate_system, info, param

bp = Blueprint("similar", __name__)

#: Multipart part names that carry the spectrum file (compared case-insensitively).
FILE_PARTS = ("FILE", "SPECTRUM")
#: Request bodies that are parameters, not a spectrum file.
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
PUBDID_ID = "pubdid"
COOSYS_ID = "icrs"
LABELS = MAIN_LABELS
#: The neighbours' Teff span, as a share of their median, beyond which an answer is called weak.
TEFF_SPREAD = 0.3
_UPLOAD = re.compile(r"^\s*([A-Za-z][A-Za-z0-9_]*)\s*,\s*param:(\S+)\s*$")


@dataclass(frozen=True)
class Search:
    """How distances are measured: over ``dims`` (weighted), by the index or by exact search."""

    dims: list[int]
    weights: list[float] | None
    exact: bool


@dataclass
class Query:
    """The spectrum searched with: its label (ID or file name), encoding and archive row (ID only).

    An archive spectrum's file is read only when something needs its flux (``spectrum``): what
    ``encode`` stored answers the rest.
    """

    label: str
    load: Callable[[], Spectrum]
    encoded: Encoded
    row: int | None
    measured: dict = field(default_factory=dict, repr=False)  # what was measured of it, once

    @property
    def spectrum(self) -> Spectrum:
        return self.load()

    @property
    def vector(self) -> np.ndarray:
        return self.encoded.mean[0]

    def model_velocity(self, model: LatentModel) -> Velocity | None:
        """The model's velocity: as ``encode`` found it for an archive row, else measured now (once)."""
        stored = model.archive_velocities if self.row is not None else None
        if stored is None:
            if "rv" not in self.measured:
                self.measured["rv"] = model.velocity(self.spectrum, self.vector)
            return self.measured["rv"]
        rv, error = (float(v) for v in stored[self.row])
        return Velocity(rv, error) if math.isfinite(rv) and math.isfinite(error) else None


def rv_kms(velocity: Velocity | None) -> float | None:
    return None if velocity is None else velocity.rv_kms


@bp.route("", methods=["GET", "POST"])
def similar() -> Response:
    """The K archive spectra nearest the uploaded (or named) spectrum in the model's latent space."""
    config = state().config["service"]
    refuse_large_body(request)
    params = request_params(request)
    fmt = output_format(params)
    k = params.get_int("K", default=default_k(), minimum=1)
    if k > MAX_K:
        raise UsageError(f"K must be at most {MAX_K}, not {k}")
    served = state().served_model()
    search = parse_search(params, served.model)
    query = load_query(params, served)
    if query.row is None:  # an archive spectrum is searched with whatever it covers, as {links} does
        check_coverage(query, served.model, float(config["min_coverage"]))
    model = served.model
    by_flux = query.row is None and not search.exact and model.flux_rankable(query.encoded)
    rows, distances = model.neighbours(
        row=query.row,
        vector=None if query.row is not None else query.vector,
        k=max(k, CANDIDATES) if by_flux else k,
        dims=search.dims if search.exact else None,
        weights=search.weights,
    )
    nearest = rows  # by the latent: the reference of query_rv_xcorr, and ood_score's distance
    ood = ood_of(query, served, None if search.exact else float(distances[0]))
    match = None
    if by_flux:
        match = model.rank_by_flux(query.encoded, rv_kms(query.model_velocity(model)), rows)
        kept = match.order[:k]
        rows, distances = np.asarray(rows)[kept], np.asarray(distances)[kept]

    spectra = spectra_by_did([served.dids[int(r)] for r in rows])  # one query for the rows and velocity

    def decorate(document: VOTableFile, resource: Resource) -> None:
        resource.coordinate_systems.append(coordinate_system(COOSYS_ID, "ICRS"))
        table = resource.tables[0]
        for element in table.fields:
            if element.name in ("s_ra", "s_dec"):
                element.ref = COOSYS_ID
        table.params.extend(query_params(document, query, served, search, k))
        table.params.extend(ranking_params(document, match))
        table.params.extend(velocity_params(document, query, served, nearest, spectra))
        if ood is not None:
            table.params.append(ood_param(document, ood.score))
            if ood.weak:
                resource.infos.append(info("warning", "ood", weak_answer(ood.reasons())))
        spread = label_spread(list(spectra.values()))
        if spread is not None:
            resource.infos.append(info("warning", "labels", spread))
        document.resources.append(links_descriptor(document, PUBDID_ID))

    return write_result(
        result_columns(search),
        result_rows(served, rows, distances, search.dims, spectra),
        fmt,
        decorate=decorate,
    )


# -- how typical the upload is ------------------------------------------------------------------


def ood_of(query: Query, served: ServedModel, nearest: float | None) -> OODScore | None:
    """An upload's out-of-distribution score (model/ood.py); ``nearest`` is its distance to the nearest
    archive spectrum over the similarity dimensions when the search already found it.

    None for archive spectra (they are the archive) and for model versions indexed before the
    reference distributions were kept.
    """
    reference = served.model.ood_reference
    if query.row is not None or reference is None:
        return None
    if nearest is None:  # the search was along other dimensions
        nearest = float(served.model.index.query_vector(query.vector, 1)[1][0])
    return reference.score(float(query.encoded.structured[0]), nearest, float(query.encoded.line_signal[0]))


def label_spread(rows: Sequence[Row]) -> str | None:
    """A warning when the neighbours' Teff spans more than :data:`TEFF_SPREAD` of their median: the
    archive holds few spectra like the query's, so what the neighbours are says little about it.
    On the demo archive, the neighbours' median Teff was then within 500 K of the truth for 31 % of
    uploads from other instruments, against 92 % otherwise; 91 % of the stars above 10,000 K (it holds
    11) and 7.5 % of the others get it (bench/results/crossinstrument-calibrated.md)."""
    teff = [float(r["teff"]) for r in rows if r["teff"] is not None and math.isfinite(r["teff"])]
    if len(teff) < 3:
        return None
    low, high, middle = min(teff), max(teff), float(np.median(teff))
    if middle <= 0 or (high - low) / middle <= TEFF_SPREAD:
        return None
    return (
        f"the neighbours disagree: their Teff runs from {low:,.0f} to {high:,.0f} K, more than "
        f"{TEFF_SPREAD:.0%} of their median; the archive holds few spectra like this one, so their "
        "labels are a weak guide to it"
    )


def ood_param(document: VOTableFile, score: float):
    return param(
        document,
        "ood_score",
        repr(round(score, 4)),
        "double",
        None,
        ucd="stat.probability",
        description="How unlike the archive the upload is, against archive spectra as other instruments "
        "deliver them: 0 typical (residual beyond noise, distance to the nearest archive spectrum and line "
        "content on the usual side of their medians), 0.9 at the 95th percentile of any, 1 beyond them all",
    )


def weak_answer(reasons: list[str]) -> str:
    return (
        "the upload is unlike the spectra of this archive, so its neighbours may not resemble it: "
        + "; ".join(reasons)
    )


# -- the request -------------------------------------------------------------------------------


def refuse_large_body(req: Request, received: int | None = None) -> None:
    """413 from the declared length before the body is read, or from what a chunked body delivered.

    The limit is Flask's MAX_CONTENT_LENGTH (``[service] max_request_bytes``). Flask refuses chunked
    form bodies itself, but reading a chunked raw body stops silently at the limit, so a body that
    fills it is taken to be cut short (``received``) rather than encoded truncated.
    """
    limit = req.max_content_length
    length = req.content_length
    if limit is not None and length is not None and length > limit:
        raise LimitError(f"the request body has {length} bytes; this service accepts at most {limit}")
    if limit is not None and length is None and received is not None and received >= limit:
        raise LimitError(f"the request body reached the limit of {limit} bytes; send at most {limit - 1}")


def parse_search(params: Params, model: LatentModel) -> Search:
    """DIMS (in the order given) and WEIGHTS (one per dim); neither means the index's dimensions."""
    dims = parse_dims(params.get("DIMS"), model.latent_dim)
    weights = parse_weights(params.get("WEIGHTS"))
    if dims is None and weights is None:
        return Search(model.similarity_dims, None, exact=False)
    dims = dims if dims is not None else model.similarity_dims
    if weights is not None and len(weights) != len(dims):
        raise UsageError(
            f"WEIGHTS needs one value per dimension of DIMS ({' '.join(map(str, dims))}); got {len(weights)}"
        )
    return Search(dims, weights, exact=True)


def parse_dims(raw: str | None, latent_dim: int) -> list[int] | None:
    """Dimension numbers in the order given (WEIGHTS follow it); None when absent or empty."""
    tokens = split_numbers(raw)
    if not tokens:
        return None
    try:
        dims = [int(token) for token in tokens]
    except ValueError:
        raise UsageError(f"DIMS must be latent dimension numbers, not {raw!r}") from None
    if any(not 0 <= dim < latent_dim for dim in dims):
        raise UsageError(f"DIMS must lie between 0 and {latent_dim - 1}; got {raw!r}")
    if len(set(dims)) != len(dims):
        raise UsageError(f"DIMS names a dimension more than once: {raw!r}")
    return dims


def parse_weights(raw: str | None) -> list[float] | None:
    """Non-negative finite weights, at least one positive; None when absent or empty."""
    tokens = split_numbers(raw)
    if not tokens:
        return None
    try:
        weights = [float(token) for token in tokens]
    except ValueError:
        raise UsageError(f"WEIGHTS must be numbers, not {raw!r}") from None
    if any(not math.isfinite(w) or w < 0 for w in weights) or not any(w > 0 for w in weights):
        raise UsageError(f"WEIGHTS must be finite, at least 0, and not all 0; got {raw!r}")
    return weights


def split_numbers(raw: str | None) -> list[str]:
    return [token for token in re.split(r"[,\s]+", raw or "") if token]


def load_query(params: Params, served: ServedModel) -> Query:
    """The archive spectrum ``ID`` names, or the uploaded file's, read and encoded."""
    did = params.get("ID")
    upload = uploaded_file(params, request)
    if did and upload is not None:
        raise UsageError("give either ID or a spectrum file, not both")
    if did:
        row = served.row_of(did)
        if row is None:
            spectrum_row(did)  # an unknown DID is NotFoundFault
            raise NotFoundError(f"{did} is not encoded by model version {served.version} yet")
        load = cache(lambda: read_spectrum(spectrum_row(did)))  # read at most once, only if needed
        return Query(did, load, archived_encoding(served.model, load, row), row)
    if upload is None:
        raise UsageError(
            "send a spectrum file (multipart part FILE, or the POST body with its Content-Type) "
            "or the ID of an archive spectrum"
        )
    name = secure_filename(upload.filename or "") or "upload"
    spectrum = read_upload(upload, name, params.get_int("INDEX", minimum=0))
    return Query(
        name, lambda: spectrum, served.model.encode_spectra([spectrum], ood=True, continuum="checked"), None
    )


def archived_encoding(model: LatentModel, load: Callable[[], Spectrum], row: int) -> Encoded:
    """An archive spectrum's encoding: the posterior the archive publishes (ml.latent) and searches
    with, and the coverage and reconstruction error ``encode`` found - no file read, no encoding.
    Versions encoded before those figures were kept encode the spectrum again for them.
    """
    mean = np.array(model.latents[row : row + 1], dtype=np.float32)
    var = np.array(model.latent_vars[row : row + 1], np.float32)
    quality = model.archive_quality
    if quality is None:
        fresh = model.encode_spectra([load()])
        return Encoded(mean, var, fresh.recon_error, fresh.coverage)
    coverage, recon_error = (np.array([v], np.float32) for v in quality[row])
    return Encoded(mean, var, recon_error, coverage)


def uploaded_file(params: Params, req: Request) -> FileStorage | None:
    """The spectrum file: the part UPLOAD or FILE/SPECTRUM names, the only part, or the raw body."""
    parts = params.files
    for value in params.getlist("UPLOAD"):
        for item in filter(str.strip, value.split(";")):
            match = _UPLOAD.match(item)
            if match is None:
                raise UsageError(f"UPLOAD must be name,param:part (a part of this request), not {item!r}")
            if match[2] not in parts:
                raise UsageError(f"UPLOAD names the part {match[2]!r}, which the request does not hold")
            return parts[match[2]]
    by_name = {name.upper(): part for name, part in parts.items()}
    named = [by_name[name] for name in FILE_PARTS if name in by_name]
    if named:
        return named[0]
    if len(parts) == 1:
        return next(iter(parts.values()))
    if parts:
        raise UsageError(f"several file parts ({', '.join(parts)}); name the spectrum's part FILE")
    if req.method == "POST" and req.mimetype not in FORM_TYPES:
        body = req.get_data()
        refuse_large_body(req, len(body))
        if body:
            return FileStorage(io.BytesIO(body), filename="upload", content_type=req.content_type)
    return None


def read_upload(upload: FileStorage, name: str, index: int | None) -> Spectrum:
    """Read the file from a temporary directory that is removed afterwards; errors name the reason."""
    with tempfile.TemporaryDirectory(prefix="latentvo-upload-") as folder:
        path = Path(folder) / name[-100:]
        upload.save(path)
        try:
            if index is not None:
                return read_spectra(path, index)[0]
            with closing(iter_spectra(path)) as spectra:
                found = list(islice(spectra, 2))
        except SpectrumReadError as exc:
            raise UsageError(f"the uploaded file cannot be read as a spectrum: {exc.reason}") from exc
    if len(found) > 1:
        raise UsageError(
            "the uploaded file holds more than one spectrum: choose one with INDEX (0 = the first)"
        )
    return found[0]


def check_coverage(query: Query, model: LatentModel, minimum: float) -> None:
    """Refuse spectra that cover too little of the grid: their encoding would be mostly the prior."""
    coverage = float(query.encoded.coverage[0])
    if coverage < minimum or not np.isfinite(query.vector).all():
        grid = model.grid
        good = query.spectrum.good
        wave = query.spectrum.vacuum_wavelength()[good] if good.any() else query.spectrum.vacuum_wavelength()
        raise UsageError(
            f"the spectrum ({wave.min():.0f}-{wave.max():.0f} Angstrom, vacuum) covers {coverage:.1%} of "
            f"the model's grid ({grid.wave_min:.0f}-{grid.wave_max:.0f} Angstrom, vacuum); at least "
            f"{minimum:.0%} is needed (coverage={coverage:.4f})"
        )


# -- the query's velocity ----------------------------------------------------------------------

VELOCITY_FRAMES = {
    "rest": "relative to the stellar rest frame of the archive's spectra",
    "labels": "in the frame of the archive's own rv labels",
    "free": "up to a constant: this model version's z0 was not tied to a frame",
}


def velocity_params(
    document: VOTableFile, query: Query, served: ServedModel, rows: np.ndarray, known: dict[str, Row]
) -> list:
    """query_rv(_err), the model's velocity, and query_rv_xcorr(_err), from the nearest archive spectrum
    (``known``: archive rows already read, by DID); none for a model without a velocity dimension."""
    model = served.model
    if model.velocity_dim is None:
        return []
    rv = query.model_velocity(model)
    xcorr = neighbour_velocity(query, served, rows, known)
    frame = VELOCITY_FRAMES.get(model.velocity_frame, VELOCITY_FRAMES["free"])
    sign = (
        f"positive when receding, {frame}, in the frame of the spectrum's wavelengths "
        "(no barycentric correction)"
    )
    values = {
        "query_rv": (
            None if rv is None else rv.rv_kms,
            f"Radial velocity from the model: the spectrum cross-correlated with its reconstruction at "
            f"rest (latent z{model.velocity_dim} = 0), {sign}",
        ),
        "query_rv_err": (None if rv is None else rv.error_kms, "Uncertainty of query_rv (Zucker 2003)"),
        "query_rv_xcorr": (
            None if xcorr is None else xcorr.rv_kms,
            f"Radial velocity from cross-correlating the spectrum with its nearest archive spectrum "
            f"(plus that spectrum's own velocity), {sign}",
        ),
        "query_rv_xcorr_err": (
            None if xcorr is None else xcorr.error_kms,
            "Uncertainty of query_rv_xcorr (Zucker 2003)",
        ),
    }
    return [
        param(
            document,
            name,
            "NaN" if value is None else repr(round(value, 3)),
            "double",
            None,
            unit="km/s",
            ucd="stat.error;spect.dopplerVeloc.opt" if name.endswith("_err") else "spect.dopplerVeloc.opt",
            description=description,
        )
        for name, (value, description) in values.items()
    ]


def neighbour_velocity(
    query: Query, served: ServedModel, rows: np.ndarray, known: dict[str, Row]
) -> Velocity | None:
    """The query's velocity against the nearest archive spectrum that is not the query itself.

    That spectrum's own velocity: 0 in an archive at rest, else its ``rv`` label, else the model's.
    An archive spectrum's velocity against the neighbour the index gives it was measured by
    ``latentvo index`` (``archive_neighbour_velocities``); any other pair is measured now.
    """
    others = [int(r) for r in rows if query.row is None or int(r) != query.row]
    if not others:
        return None
    nearest = others[0]
    own = 0.0
    if served.model.velocity_frame != "rest":
        did = served.dids[nearest]
        own = (known.get(did) or spectrum_row(did))["rv"]
        velocities = served.model.archive_velocities
        if own is None and velocities is not None:
            own = float(velocities[nearest, 0])
        if own is None or not math.isfinite(own):
            return None
    stored = served.model.archive_neighbour_velocities if query.row is not None else None
    if stored is not None and stored[query.row, 2] == nearest:
        rv, error = (float(v) for v in stored[query.row, :2])
        relative = Velocity(rv, error) if math.isfinite(rv) and math.isfinite(error) else None
    else:
        reference = read_spectrum(spectrum_row(served.dids[nearest]))
        relative = served.model.velocity_from(query.spectrum, reference, 0.0)
    return None if relative is None else relative.shifted(own)


# -- the answer --------------------------------------------------------------------------------


def result_columns(search: Search) -> list[Column]:
    """SSA-style fields of each neighbour, its distance and latent coordinates over the search dims."""
    return _result_columns(tuple(search.dims), tuple(search.weights) if search.weights else None)


@lru_cache(maxsize=256)
def _result_columns(dims: tuple[int, ...], weights: tuple[float, ...] | None) -> list[Column]:
    how = " with weights " + " ".join(map(str, weights)) if weights else ""
    dims_text = " ".join(map(str, dims))
    return [
        Column("rank", "int", ucd="meta.number", description="1 = most similar"),
        Column(
            "obs_publisher_did",
            "char",
            "*",
            ucd="meta.ref.ivoid",
            utype="ssa:Curation.PublisherDID",
            description="Publisher DID of the archive spectrum",
            ID=PUBDID_ID,
        ),
        Column(
            "distance",
            "double",
            ucd="stat.value;arith.diff",
            description=f"Euclidean distance of posterior means over latent dimensions {dims_text}{how}",
        ),
        Column("target_name", "char", "*", ucd="meta.id;src", utype="ssa:Target.Name", description="Target"),
        Column(
            "obs_collection",
            "char",
            "*",
            ucd="meta.id",
            utype="ssa:DataID.Collection",
            description="Archive collection",
        ),
        Column("s_ra", "double", unit="deg", ucd="pos.eq.ra;meta.main", description="ICRS right ascension"),
        Column("s_dec", "double", unit="deg", ucd="pos.eq.dec;meta.main", description="ICRS declination"),
        Column(
            "em_min",
            "double",
            unit="m",
            ucd="em.wl;stat.min",
            utype="ssa:Char.SpectralAxis.Coverage.Bounds.Start",
            description="Shortest vacuum wavelength covered",
        ),
        Column(
            "em_max",
            "double",
            unit="m",
            ucd="em.wl;stat.max",
            utype="ssa:Char.SpectralAxis.Coverage.Bounds.Stop",
            description="Longest vacuum wavelength covered",
        ),
        *label_columns(),
        Column(
            "rv_model",
            "double",
            unit="km/s",
            ucd="spect.dopplerVeloc.opt",
            description="Radial velocity of the archive spectrum from the model (as query_rv)",
        ),
        Column(
            "rv_model_err",
            "double",
            unit="km/s",
            ucd="stat.error;spect.dopplerVeloc.opt",
            description="Uncertainty of rv_model",
        ),
        Column(
            "dataset_url",
            "char",
            "*",
            ucd="meta.ref.url;meta.dataset",
            utype="ssa:Access.Reference",
            description="The spectrum as a Spectrum-DM VOTable",
        ),
        Column("access_url", "char", "*", ucd="meta.ref.url", description="DataLink {links} of the spectrum"),
        *[
            Column(
                f"z{dim}", "double", ucd="src.var", description=f"Posterior mean of latent dimension {dim}"
            )
            for dim in dims
        ],
    ]


def result_rows(
    served: ServedModel, rows: np.ndarray, distances: np.ndarray, dims: Sequence[int], spectra: dict[str, Row]
) -> list[tuple]:
    """The answer's rows; ``spectra`` are the neighbours' archive rows by DID (absent where deleted)."""
    dids = [served.dids[int(r)] for r in rows]
    latents = np.asarray(served.model.latents[np.asarray(rows, dtype=np.int64)], dtype=np.float64)
    latents = latents.reshape(len(dids), served.model.latent_dim)[:, list(dims)]
    links_url = state().url("datalink/links")
    velocities = served.model.archive_velocities
    out = []
    for rank, (row, did, distance, z) in enumerate(zip(rows, dids, distances, latents, strict=True), 1):
        meta = spectra.get(did)

        def value(name: str, meta=meta):
            return meta[name] if meta is not None else None

        out.append(
            (
                rank,
                did,
                float(distance),
                value("target_name"),
                value("obs_collection"),
                value("s_ra"),
                value("s_dec"),
                value("em_min"),
                value("em_max"),
                *(value(name) for name in LABELS),
                *archive_velocity(velocities, int(row)),
                dataset_url(did),
                links_url + "?" + urlencode({"ID": did}),
                *map(float, z),
            )
        )
    return out


def archive_velocity(velocities: np.ndarray | None, row: int) -> tuple[float | None, float | None]:
    if velocities is None or not np.isfinite(velocities[row]).all():
        return None, None
    return float(velocities[row, 0]), float(velocities[row, 1])


def ranking_params(document: VOTableFile, match: MatchedOrder | None) -> list:
    """How the neighbours were ordered: by latent distance, or by flux at the query's resolution."""
    params = [
        param(
            document,
            "ranking",
            "flux" if match is not None else "latent",
            ucd="meta.code",
            description="latent: neighbours in order of distance; flux: the index's nearest "
            f"{CANDIDATES} (or K) in order of their flux difference from the upload once brought to its "
            "velocity and to query_resolving_power, each times the smooth curve that best takes a flux "
            "calibration out (the distance column stays the latent distance)",
        )
    ]
    if match is not None:
        params.append(
            param(
                document,
                "query_resolving_power",
                repr(round(match.resolving_power, 1)),
                "double",
                None,
                ucd="spect.resolution",
                description="The resolving power (lambda / delta lambda) at which the archive spectra fit "
                "the upload best, of those tried from the lowest the model was trained for to the archive's",
            )
        )
    return params


def continuum_params(document: VOTableFile, encoded: Encoded) -> list:
    """Whether a continuum model compared the query's continuum shape too (model/api.py), and why."""
    if encoded.continuum_used is None:
        return []
    params = [
        param(
            document,
            "continuum_used",
            "true" if encoded.continuum_used[0] else "false",
            "boolean",
            None,
            ucd="meta.code",
            description="true: the query's pseudo-continuum (its flux calibration) was compared with the "
            "archive's as well as its lines and bands; false: lines and bands only, because the continuum "
            "differs from what the model expects of such a spectrum (another flux calibration)",
        )
    ]
    if encoded.continuum_mismatch is not None and math.isfinite(encoded.continuum_mismatch[0]):
        params.append(
            param(
                document,
                "continuum_mismatch",
                repr(round(float(encoded.continuum_mismatch[0]), 5)),
                "double",
                None,
                ucd="stat.fit.residual",
                description="RMS (natural log) of the query's log pseudo-continuum minus the one the model "
                "expects of it; the continuum is used up to the model's tolerance",
            )
        )
    return params


def query_params(document: VOTableFile, query: Query, served: ServedModel, search: Search, k: int) -> list:
    """The query's own latent coordinates (all dims, with posterior sigma), coverage and the search."""
    encoded = query.encoded
    sigma = np.sqrt(encoded.var[0])
    number = {"datatype": "double", "arraysize": None}
    params = [
        param(document, "query", query.label, ucd="meta.id", description="The ID or file name searched with"),
        param(
            document,
            "coverage",
            repr(float(encoded.coverage[0])),
            ucd="em.wl;arith.ratio",
            description="Fraction of the model's wavelength grid the query spectrum covers with good pixels",
            **number,
        ),
        param(
            document,
            "recon_error",
            repr(float(encoded.recon_error[0])),
            ucd="stat.fit.residual",
            description="RMS of reconstruction minus query over its good pixels (normalised flux)",
            **number,
        ),
        param(document, "model_version", str(served.version), "int", None, ucd="meta.version"),
        param(document, "K", str(k), "int", None, ucd="meta.number", description="Neighbours asked for"),
        param(document, "DIMS", " ".join(map(str, search.dims)), description="Latent dimensions compared"),
        param(
            document,
            "search",
            "exact" if search.exact else "index",
            description="exact: exhaustive search (DIMS or WEIGHTS given); index: the approximate index",
        ),
    ]
    if search.weights:
        params.append(
            param(document, "WEIGHTS", " ".join(map(str, search.weights)), description="Per-dim weights")
        )
    params.extend(continuum_params(document, encoded))
    for dim in range(served.model.latent_dim):
        params.append(
            param(
                document,
                f"query_z{dim}",
                repr(float(encoded.mean[0, dim])),
                ucd="src.var",
                description=f"Posterior mean of latent dimension {dim} for the query spectrum",
                **number,
            )
        )
        params.append(
            param(
                document,
                f"query_z{dim}_sigma",
                repr(float(sigma[dim])),
                ucd="stat.error",
                description=f"Posterior standard deviation of latent dimension {dim} for the query spectrum",
                **number,
            )
        )
    return params

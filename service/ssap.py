"""SSAP 1.1 (``/ssa/query``) with latent-similarity search, plus its VOSI capabilities and availability.

One row per spectrum. Every spectrum is offered as a Spectrum-DM VOTable and as FITS
(:mod:`service.data`); ``FORMAT`` picks which of the two a row's Access.Reference and
Access.Format name (``all``, ``compliant``, ``votable``, the VOTable MIME type → VOTable;
``fits``, ``native``, ``application/fits`` → FITS; ``xml`` (SDM-XML) and ``graphic`` → nothing
matches, so an empty table). Two rows per spectrum would show every star twice in TOPCAT and
Splat; the other format is always one DataLink ``#this`` link away.

Beyond SSAP: ``SIMILAR_TO=<DID>`` returns its ``K`` nearest spectra in the model's latent space
(the query spectrum first, at distance 0) in distance order with a ``distance`` FIELD; ``DIMS``
picks latent dimensions (exact search) instead of the index over the informative ones. Other
constraints then filter those K. Every row carries the informative latent coordinates
(``z<d>``, each described by the label it carries most) and the anomaly score; a second,
``type="meta"`` RESOURCE holds the dimension × label mutual-information table of the model.

Errors are DALI error documents with HTTP 200, as SSA 1.1 clients (TOPCAT, Splat, pyvo) expect
(an archive without a model in service answers 503 to similarity requests only).
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from astropy.io.votable.tree import Param, Resource, TimeSys, VOTableFile
from flask import Blueprint, Response, request

from service import vosi
from service.dali import FORMATS, maxrec, write_result
from service.data import DATASET_FORMATS, FITS_MIME, dataset_title, dataset_url, estimated_size
from service.datalink import links_descriptor
from service.errors import DALIError, NotFoundError, TransientError, UsageError
from service.params import Params, request_params
from service.state import ServedModel, state
from service.storage import Row
from service.tap.geometry import ra_ranges
from service.votable import (
    VOTABLE_MIME,
    Column,
    InputParam,
    add_table,
    coordinate_system,
    error_document,
    info,
    input_param,
    param,
)

bp = Blueprint("ssap", __name__)

SSA_STANDARD_ID = "ivo://ivoa.net/std/SSA"
#: SIZE (diameter, degrees) when POS comes alone: 1 arcmin, generous for catalogue positions.
DEFAULT_SIZE = 1.0 / 60.0
#: Largest search radius (SIZE/2) accepted: the whole sky.
MAX_SEARCH_RADIUS = 180.0
#: Nominal largest aperture of the archived spectra (fibres and slits), degrees (capability only).
MAX_APERTURE = 0.01
#: Most neighbours SIMILAR_TO returns.
MAX_K = 1000
#: Most DIDs one PUBDID/ID filter may list.
MAX_DIDS = 1000
PUBDID_ID = "pubdid"
COOSYS_ID = "icrs"
TIMESYS_ID = "utc_mjd"
#: FORMAT keywords (lower case) → offered formats they accept, in order of preference.
FORMAT_KEYWORDS: dict[str, tuple[str, ...]] = {
    "all": ("votable", "fits"),
    "compliant": ("votable",),
    "votable": ("votable",),
    "native": ("fits",),
    "fits": ("fits",),
    "xml": (),
    "graphic": (),
    "graphics": (),
}
#: FORMAT media types we serve → offered format.
FORMAT_MIMES = {
    VOTABLE_MIME: "votable",
    "text/xml;x-votable": "votable",
    FITS_MIME: "fits",
    "image/fits": "fits",
}
_ISO = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:[T ](\d{2})(?::(\d{2})(?::(\d{2})(\.\d+)?)?)?)?)?)?Z?$")
_MJD_EPOCH = datetime(1858, 11, 17)


# -- routes ------------------------------------------------------------------------------------


@bp.route("/query", methods=["GET", "POST"])
def query() -> Response:
    """queryData: the matching spectra, or an error document (HTTP 200, SSA tradition)."""
    try:
        return answer(request_params(request))
    except TransientError:
        raise
    except DALIError as exc:
        return Response(error_document(exc.text()), status=200, content_type=VOTABLE_MIME)


@bp.route("/capabilities", methods=["GET"])
def capabilities() -> Response:
    """VOSI capabilities: SSA plus this endpoint's VOSI resources (siblings of /ssa/query, X-01)."""
    caps = [ssa_capability(), *vosi.vosi_capabilities(state().url("ssa"))]
    return vosi.xml_response(vosi.capabilities_document(caps), last_modified=vosi.STARTED)


@bp.route("/availability", methods=["GET"])
def availability() -> Response:
    """VOSI availability: really reads the archive and loads the model (DALI-07)."""
    available, notes = vosi.probe_service()
    return vosi.xml_response(vosi.availability_document(available, notes, up_since=vosi.STARTED))


# -- the request -------------------------------------------------------------------------------


@dataclass
class SSAQuery:
    """A parsed queryData request; ``fmt`` None means no offered format matches FORMAT."""

    pos: tuple[float, float] | None = None
    radius: float = DEFAULT_SIZE / 2
    bands: list[tuple[float | None, float | None]] = field(default_factory=list)
    times: list[tuple[float, float]] = field(default_factory=list)
    fmt: str | None = "votable"
    metadata: bool = False
    collections: list[str] = field(default_factory=list)
    target: str | None = None
    dids: list[str] = field(default_factory=list)
    snr_min: float | None = None
    specrp_min: float | None = None
    similar_to: str | None = None
    k: int = 10
    dims: list[int] | None = None
    maxrec: int = 1000
    top: int | None = None

    @property
    def limit(self) -> int:
        return self.maxrec if self.top is None else min(self.maxrec, self.top)


def parse_query(params: Params, config: dict) -> SSAQuery:
    """Check every parameter SSA defines (malformed values are usage errors); others are ignored."""
    request_type = (params.get("REQUEST") or "queryData").strip()
    if request_type.lower() != "querydata":
        raise UsageError(f"REQUEST={request_type} is not supported; this service answers REQUEST=queryData")
    service = config["service"]
    q = SSAQuery(maxrec=maxrec(params, service["default_maxrec"], service["hard_maxrec"]))
    q.top = params.get_int("TOP", minimum=0)
    if params.get("POS"):
        q.pos = parse_pos(params.get("POS"))
        size = parse_float(params, "SIZE", minimum=0.0)
        if size is not None:
            if size <= 0 or size / 2 > MAX_SEARCH_RADIUS:
                raise UsageError(f"SIZE must be a diameter in degrees between 0 and {2 * MAX_SEARCH_RADIUS}")
            q.radius = size / 2
    if params.get("BAND"):
        q.bands = parse_band(params.get("BAND"))
    if params.get("TIME"):
        q.times = parse_time(params.get("TIME"))
    q.fmt, q.metadata = parse_format(params.get("FORMAT"))
    q.collections = split_list(params.getlist("COLLECTION"))
    q.target = (params.get("TARGETNAME") or "").strip() or None
    q.dids = split_list(params.getlist("PUBDID") + params.getlist("ID"))
    if len(q.dids) > MAX_DIDS:
        raise UsageError(f"at most {MAX_DIDS} PUBDID/ID values per request")
    q.snr_min = parse_float(params, "SNR")
    q.specrp_min = parse_float(params, "SPECRP")
    q.similar_to = (params.get("SIMILAR_TO") or "").strip() or None
    q.k = params.get_int("K", int(config["index"]["k"]), minimum=1)
    if q.k > MAX_K:
        raise UsageError(f"K must be at most {MAX_K}, not {q.k}")
    if params.get("DIMS"):
        q.dims = parse_dims(params.get("DIMS"))
    return q


def parse_float(params: Params, name: str, minimum: float | None = None) -> float | None:
    raw = params.get(name)
    if raw is None or not raw.strip():
        return None
    try:
        value = float(raw)
    except ValueError:
        raise UsageError(f"{name} must be a number, not {raw!r}") from None
    if not math.isfinite(value) or (minimum is not None and value < minimum):
        raise UsageError(f"{name}={raw} is out of range")
    return value


def parse_pos(raw: str) -> tuple[float, float]:
    """``ra,dec[;ICRS]`` in decimal degrees."""
    text, _, frame = raw.partition(";")
    if frame.strip() and frame.strip().upper() != "ICRS":
        raise UsageError(f"POS frame {frame.strip()!r} is not supported; use ICRS")
    parts = text.split(",")
    try:
        ra, dec = (float(p) for p in parts)
    except ValueError:
        raise UsageError(f"POS must be 'ra,dec' in decimal degrees (ICRS), not {raw!r}") from None
    if not (math.isfinite(ra) and -90.0 <= dec <= 90.0):
        raise UsageError(f"POS {raw!r} is not a position on the sky")
    return ra % 360.0, dec


def parse_band(raw: str) -> list[tuple[float | None, float | None]]:
    """A range list in metres: ``a/b``, ``a/``, ``/b``, ``v`` (must be covered), comma-separated.

    A ``;source``/``;observer`` qualifier is accepted and ignored (our spectra are not redshift-corrected).
    """
    ranges = []
    for item in raw.split(";", 1)[0].split(","):
        item = item.strip()
        if not item:
            raise UsageError(f"BAND {raw!r} has an empty range")
        if "/" in item:
            low, high = (_band_value(raw, v) for v in item.split("/", 1))
            if low is not None and high is not None and low > high:
                raise UsageError(f"BAND range {item!r} is reversed")
        else:
            low = high = _band_value(raw, item)
        ranges.append((low, high))
    return ranges


def _band_value(raw: str, text: str) -> float | None:
    if not text.strip():
        return None
    try:
        value = float(text)
    except ValueError:
        raise UsageError(
            f"BAND {raw!r}: give wavelengths in metres (bandpass names are not supported)"
        ) from None
    if not math.isfinite(value) or value <= 0:
        raise UsageError(f"BAND {raw!r}: wavelengths must be positive")
    return value


def parse_time(raw: str) -> list[tuple[float, float]]:
    """ISO 8601 range list → (start, end) MJD; an imprecise value covers its whole year, month, day…"""
    ranges = []
    for item in raw.split(","):
        item = item.strip()
        if "/" in item:
            low, high = item.split("/", 1)
            start = iso_period(low)[0] if low.strip() else -math.inf
            end = iso_period(high)[1] if high.strip() else math.inf
            if start >= end:
                raise UsageError(f"TIME range {item!r} is reversed")
        else:
            start, end = iso_period(item)
        ranges.append((start, end))
    return ranges


def iso_period(text: str) -> tuple[float, float]:
    """The half-open MJD (UTC) interval an ISO 8601 value stands for, at the precision it is written."""
    match = _ISO.match(text.strip())
    if not match:
        raise UsageError(f"TIME value {text!r} is not an ISO 8601 date or time")
    year, month, day, hour, minute, second, fraction = match.groups()
    try:
        start = datetime(
            int(year), int(month or 1), int(day or 1), int(hour or 0), int(minute or 0), int(second or 0)
        )
    except ValueError as exc:
        raise UsageError(f"TIME value {text!r}: {exc}") from None
    if fraction:
        start += timedelta(seconds=float(fraction))
        end = start + timedelta(seconds=10.0 ** -(len(fraction) - 1))
    elif second:
        end = start + timedelta(seconds=1)
    elif minute:
        end = start + timedelta(minutes=1)
    elif hour:
        end = start + timedelta(hours=1)
    elif day:
        end = start + timedelta(days=1)
    elif month:
        end = datetime(start.year + start.month // 12, start.month % 12 + 1, 1)
    else:
        end = datetime(start.year + 1, 1, 1)
    return mjd(start), mjd(end)


def mjd(moment: datetime) -> float:
    return (moment - _MJD_EPOCH) / timedelta(days=1)


def parse_format(raw: str | None) -> tuple[str | None, bool]:
    """(the offered format rows use or None if none matches, whether FORMAT=METADATA was asked)."""
    if raw is None or not raw.strip():
        return "votable", False
    accepted: list[str] = []
    metadata = False
    for token in (t.strip().lower() for t in raw.split(",")):
        if token == "metadata":
            metadata = True
        elif token in FORMAT_KEYWORDS:
            accepted += FORMAT_KEYWORDS[token]
        elif re.fullmatch(r"[a-z0-9.+-]+/[a-z0-9.+-]+(;.*)?", token.replace(" ", "")):
            mime = token.replace(" ", "")
            offered = FORMAT_MIMES.get(mime) or FORMAT_MIMES.get(mime.split(";", 1)[0])
            accepted += [offered] if offered else []
        else:
            raise UsageError(f"FORMAT value {token!r} is neither a format keyword nor a MIME type")
    return (accepted[0] if accepted else None), metadata


def parse_dims(raw: str) -> list[int]:
    dims: list[int] = []
    for token in re.split(r"[,\s]+", raw.strip()):
        try:
            dims.append(int(token))
        except ValueError:
            raise UsageError(f"DIMS must list latent dimension numbers, not {raw!r}") from None
    return list(dict.fromkeys(dims))


def split_list(values: Sequence[str]) -> list[str]:
    """Values of a repeatable parameter, each possibly a comma-separated list."""
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


# -- answering -----------------------------------------------------------------------------------


@dataclass
class LatentInfo:
    """What the response says about the model in service: dimensions shown and their label MI."""

    served: ServedModel
    dims: list[int]
    correlations: list[Row]

    def description(self, dim: int) -> str:
        rows = [r for r in self.correlations if r["dim"] == dim and r["mi"] is not None]
        text = f"Latent coordinate {dim} (posterior mean) of model version {self.served.version}"
        if not rows:
            return text + "; no label correlation measured."
        best = max(rows, key=lambda r: r["mi"])
        error = f" ± {best['mi_error']:.2f}" if best["mi_error"] is not None else ""
        pca = f"; PCA component {dim}: {best['pca_mi']:.2f} nats" if best["pca_mi"] is not None else ""
        return text + f"; carries {best['label']} most: mutual information {best['mi']:.2f}{error} nats{pca}."


def answer(params: Params) -> Response:
    """The SSA response VOTable for one request (usage errors raise)."""
    config = state().config
    q = parse_query(params, config)
    latent = latent_info(required=q.similar_to is not None)
    distances: dict[str, float] | None = None
    if q.similar_to is not None:
        distances = neighbours(latent.served, q.similar_to, q.k, q.dims)
    outputs = output_columns(q, latent, distances)
    rows: list[Row] = []
    overflow = q.maxrec == 0
    if not (q.metadata or q.maxrec == 0 or q.fmt is None):
        rows = select(q, latent, distances)
        if len(rows) > q.limit:
            overflow = q.limit == q.maxrec
            rows = rows[: q.limit]
    table_rows = [tuple(get(row) for _, get in outputs) for row in rows]

    def decorate(document: VOTableFile, resource: Resource) -> None:
        decorate_response(document, resource, q, latent, overflow, config)

    return write_result([c for c, _ in outputs], table_rows, FORMATS["votable"], overflow, decorate)


def latent_info(required: bool) -> LatentInfo | None:
    """The served model's informative dimensions and label MI; None (no latent FIELDs) without a model."""
    try:
        served = state().served_model()
    except TransientError:
        if required:
            raise
        return None
    dims_text = served.record.get("informative_dims")
    dims = [int(d) for d in dims_text.split()] if dims_text else list(served.model.informative_dims)
    correlations = (
        state()
        .archive()
        .db.execute(
            "SELECT dim, label, informative, mi, mi_error, pca_mi, pca_mi_error FROM ml_label_correlation "
            "WHERE model_version = ? ORDER BY dim, label",
            (served.version,),
        )
        .fetchall()
    )
    return LatentInfo(served, dims, correlations)


def neighbours(served: ServedModel, did: str, k: int, dims: list[int] | None) -> dict[str, float]:
    """DID → latent distance of the K spectra nearest ``did`` (itself included), nearest first."""
    row = served.row_of(did)
    if row is None:
        raise NotFoundError(
            f"SIMILAR_TO: {did!r} is not a spectrum encoded by model version {served.version}"
        )
    if dims is not None:
        bad = [d for d in dims if not 0 <= d < served.model.latent_dim]
        if bad:
            raise UsageError(f"DIMS: the model has dimensions 0 to {served.model.latent_dim - 1}, not {bad}")
    found, distances = served.model.neighbours(row=row, k=k, dims=dims)
    return {served.dids[int(i)]: float(d) for i, d in zip(found, distances, strict=True)}


def select(q: SSAQuery, latent: LatentInfo | None, distances: dict[str, float] | None) -> list[Row]:
    """Matching archive rows (with latents); one more than the limit to detect overflow."""
    archive = state().archive()
    columns, join, args = "s.*", "", []
    if latent is not None:
        columns += "".join(f", l.z{d}" for d in latent.dims) + ", l.anomaly_score"
        join = "LEFT JOIN ml_latent AS l ON l.obs_publisher_did = s.obs_publisher_did AND l.model_version = ?"
        args.append(latent.served.version)
    where, where_args = conditions(q, distances)
    sql = f"SELECT {columns} FROM spectrum AS s {join}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    if distances is None:
        sql += " ORDER BY s.row_id LIMIT ?"
        where_args.append(q.limit + 1)
    rows = archive.db.execute(sql, args + where_args).fetchall()
    if distances is not None:
        rows.sort(key=lambda r: distances[r["obs_publisher_did"]])
    return rows


def conditions(q: SSAQuery, distances: dict[str, float] | None) -> tuple[list[str], list[Any]]:
    """SQL conditions (ANDed) and their arguments; ranges in a list are ORed (SSA range-lists)."""
    where: list[str] = []
    args: list[Any] = []
    if q.pos is not None:
        ra, dec = q.pos
        where.append("s.s_dec BETWEEN ? AND ?")
        args += [dec - q.radius, dec + q.radius]
        ranges = ra_ranges(ra, dec, q.radius)  # the cone's box first, from the (s_dec, s_ra) index
        if ranges is not None:  # an RA outside [0, 360] is left to the exact distance
            boxes = ["s.s_ra BETWEEN ? AND ?"] * len(ranges) + ["s.s_ra NOT BETWEEN 0 AND 360"]
            where.append("(" + " OR ".join(boxes) + ")")
            args += [bound for interval in ranges for bound in interval]
        where.append("latentvo_sep(s.s_ra, s.s_dec, ?, ?) <= ?")
        args += [ra, dec, q.radius]
    if q.bands:
        parts = []
        for low, high in q.bands:
            parts.append("(s.em_max >= ? AND s.em_min <= ?)")
            args += [low if low is not None else 0.0, high if high is not None else math.inf]
        where.append("(" + " OR ".join(parts) + ")")
    if q.times:
        parts = []
        for start, end in q.times:
            parts.append("(s.t_min < ? AND COALESCE(s.t_max, s.t_min) >= ?)")
            args += [end, start]
        where.append("(" + " OR ".join(parts) + ")")
    for name, values in (("obs_collection", q.collections), ("obs_publisher_did", q.dids)):
        if values:
            where.append(f"s.{name} IN ({','.join('?' * len(values))})")
            args += values
    if q.target:
        escaped = q.target.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        where.append("s.target_name LIKE ? ESCAPE '\\'")
        args.append(f"%{escaped}%")
    if q.snr_min is not None:
        where.append("s.snr >= ?")
        args.append(q.snr_min)
    if q.specrp_min is not None:
        where.append("s.em_res_power >= ?")
        args.append(q.specrp_min)
    if distances is not None:
        where.append(f"s.obs_publisher_did IN ({','.join('?' * len(distances))})")
        args += list(distances)
    return where, args


# -- the response table ----------------------------------------------------------------------------

Getter = Callable[[Row], Any]

#: The SSA FIELDs (SSA-04): name, datatype, arraysize, unit, UCD, utype after ``ssa:``, description.
# fmt: off
SSA_FIELDS: tuple[tuple[str, str, str | None, str | None, str, str | None, str], ...] = (
    ("title", "char", "*", None, "meta.title;meta.dataset", "DataID.Title", "Target (or obs id), collection"),
    ("publisher_did", "char", "*", None, "meta.ref.url;meta.curation", "Curation.PublisherDID",
     "Publisher's dataset identifier (IVOID): the DataLink ID and ObsCore obs_publisher_did"),
    ("access_url", "char", "*", None, "meta.ref.url", "Access.Reference", "URL of the spectrum file"),
    ("access_format", "char", "*", None, "meta.code.mime", "Access.Format", "MIME type of the spectrum file"),
    ("access_size", "long", None, "byte", "phys.size;meta.file", "Access.Size", "Estimated size of the file"),
    ("dataset_length", "long", None, None, "meta.number", "Dataset.Length", "Number of good samples"),
    ("collection", "char", "*", None, "meta.id", "DataID.Collection", "Archive collection"),
    ("instrument", "char", "*", None, "meta.id;instr", "DataID.Instrument", "Instrument"),
    ("date_obs", "char", "*", None, "time;meta.dataset", "DataID.Date", "UTC date of the exposure start"),
    ("target_name", "char", "*", None, "meta.id;src", "Target.Name", "Target name"),
    ("target_class", "char", "*", None, "src.class", "Target.Class",
     "Class of the target: the temperature class (O ... M) of a star's spectral type"),
    ("target_pos", "double", "2", "deg", "pos.eq;src", "Target.Pos", "Target position (ICRS RA, Dec)"),
    ("ra", "double", None, "deg", "pos.eq.ra;meta.main", None, "ICRS right ascension"),
    ("dec", "double", None, "deg", "pos.eq.dec;meta.main", None, "ICRS declination"),
    ("location", "double", "2", "deg", "pos.eq", "Char.SpatialAxis.Coverage.Location.Value",
     "Aperture centre (ICRS RA, Dec)"),
    ("em_min", "double", None, "m", "em.wl;stat.min", "Char.SpectralAxis.Coverage.Bounds.Start",
     "Shortest vacuum wavelength covered"),
    ("em_max", "double", None, "m", "em.wl;stat.max", "Char.SpectralAxis.Coverage.Bounds.Stop",
     "Longest vacuum wavelength covered"),
    ("em_mid", "double", None, "m", "em.wl;instr.bandpass", "Char.SpectralAxis.Coverage.Location.Value",
     "Middle of the vacuum wavelength range"),
    ("em_width", "double", None, "m", "em.wl;instr.bandwidth", "Char.SpectralAxis.Coverage.Bounds.Extent",
     "Width of the wavelength range"),
    ("em_res_power", "double", None, None, "spect.resolution", "Char.SpectralAxis.ResPower",
     "Typical resolving power lambda/dlambda"),
    ("em_resolution", "double", None, "m", "spect.resolution;em.wl", "Char.SpectralAxis.Resolution",
     "Typical resolution element at the middle of the range"),
    ("t_min", "double", None, "d", "time.start;obs.exposure", "Char.TimeAxis.Coverage.Bounds.Start",
     "MJD (UTC) of exposure start"),
    ("t_max", "double", None, "d", "time.end;obs.exposure", "Char.TimeAxis.Coverage.Bounds.Stop",
     "MJD (UTC) of exposure end"),
    ("t_mid", "double", None, "d", "time.epoch", "Char.TimeAxis.Coverage.Location.Value",
     "MJD (UTC) of mid-exposure"),
    ("t_exptime", "double", None, "s", "time.duration;obs.exposure", "Char.TimeAxis.Coverage.Bounds.Extent",
     "Exposure time"),
    ("snr", "double", None, None, "stat.snr", "Derived.SNR", "Signal-to-noise ratio (snr label)"),
)
# fmt: on
#: FIELDs that refer to the COOSYS and the TIMESYS of the response.
SKY_FIELDS = ("target_pos", "ra", "dec", "location")
TIME_FIELDS = ("t_min", "t_max", "t_mid")


def row_values(fmt: str) -> dict[str, Getter]:
    """How each SSA FIELD's value is made from an archive row; files in format ``fmt``."""
    return {
        "title": dataset_title,
        "publisher_did": lambda r: r["obs_publisher_did"],
        "access_url": lambda r: dataset_url(r, fmt),
        "access_format": lambda r: DATASET_FORMATS[fmt],
        "access_size": lambda r: estimated_size(r, fmt),
        "dataset_length": lambda r: r["em_xel"],
        "collection": lambda r: r["obs_collection"],
        "instrument": lambda r: r["instrument_name"],
        "date_obs": lambda r: mjd_date(r["t_min"]),
        "target_name": lambda r: r["target_name"],
        "target_class": lambda r: r["target_class"],
        "target_pos": position,
        "ra": lambda r: r["s_ra"],
        "dec": lambda r: r["s_dec"],
        "location": position,
        "em_min": lambda r: r["em_min"],
        "em_max": lambda r: r["em_max"],
        "em_mid": lambda r: (r["em_min"] + r["em_max"]) / 2,
        "em_width": lambda r: r["em_max"] - r["em_min"],
        "em_res_power": lambda r: r["em_res_power"],
        "em_resolution": lambda r: (
            (r["em_min"] + r["em_max"]) / 2 / r["em_res_power"] if r["em_res_power"] else None
        ),
        "t_min": lambda r: r["t_min"],
        "t_max": lambda r: r["t_max"],
        "t_mid": mid_time,
        "t_exptime": lambda r: r["t_exptime"],
        "snr": lambda r: r["snr"],
    }


def output_columns(
    q: SSAQuery, latent: LatentInfo | None, distances: dict[str, float] | None
) -> list[tuple[Column, Getter]]:
    """FIELDs with how each row's value is made, in output order: SSA, latent, distance."""
    values = row_values(q.fmt or "votable")
    out: list[tuple[Column, Getter]] = []
    for name, datatype, arraysize, unit, ucd, utype, description in SSA_FIELDS:
        column = Column(
            name, datatype, arraysize, unit, ucd, f"ssa:{utype}" if utype else None, description=description
        )
        column.ID = PUBDID_ID if name == "publisher_did" else None
        column.xtype = "timestamp" if name == "date_obs" else None
        out.append((column, values[name]))
    if latent is not None:
        for dim in latent.dims:
            out.append((Column(f"z{dim}", "double", description=latent.description(dim)), _getter(f"z{dim}")))
        description = (
            "Anomaly score under this model (reconstruction error and latent-density outlier score "
            "combined; larger is more unusual)"
        )
        out.append(
            (
                Column("anomaly_score", "double", ucd="stat.value", description=description),
                _getter("anomaly_score"),
            )
        )
    if distances is not None:
        description = f"Euclidean distance in latent space to {q.similar_to}"
        out.append(
            (
                Column("distance", "double", ucd="arith.diff", description=description),
                lambda r: distances[r["obs_publisher_did"]],
            )
        )
    return out


def _getter(name: str) -> Getter:
    return lambda r: r[name]


def position(row: Row) -> tuple[float, float]:
    """(RA, Dec); NaN NaN when unknown (a fixed-size array cannot be an empty cell)."""
    if row["s_ra"] is None or row["s_dec"] is None:
        return (math.nan, math.nan)
    return (row["s_ra"], row["s_dec"])


def mid_time(row: Row) -> float | None:
    if row["t_min"] is None:
        return None
    return (row["t_min"] + (row["t_max"] if row["t_max"] is not None else row["t_min"])) / 2


def mjd_date(value: float | None) -> str | None:
    """A DALI timestamp of the UTC date only: precise times are in t_min/t_max (pyvo parses this form)."""
    if value is None:
        return None
    return (_MJD_EPOCH + timedelta(days=value)).date().isoformat()


# -- the rest of the document ----------------------------------------------------------------------


def decorate_response(
    document: VOTableFile,
    resource: Resource,
    q: SSAQuery,
    latent: LatentInfo | None,
    overflow: bool,
    config: dict,
) -> None:
    """SSA INFOs and PARAMs, COOSYS/TIMESYS, the DataLink descriptor and the latent MI table."""
    status = resource.infos[0]
    if overflow:
        status.content = f"Result truncated at MAXREC={q.maxrec} rows"
    resource.infos.append(info("SERVICE_PROTOCOL", "1.1", "SSAP"))
    if latent is not None:
        resource.infos.append(info("model_version", str(latent.served.version)))
    if q.similar_to is not None:
        how = (
            f"exact search over dimensions {q.dims}"
            if q.dims
            else "the index over the informative dimensions"
        )
        resource.infos.append(info("similarity", q.similar_to, f"{q.k} nearest spectra by {how}"))
    resource.coordinate_systems.append(coordinate_system(COOSYS_ID, "ICRS"))
    resource.time_systems.append(
        TimeSys(
            ID=TIMESYS_ID,
            timeorigin="MJD-origin",
            timescale="UTC",
            refposition="TOPOCENTER",
            config=document._get_version_checks(),
        )
    )
    table = resource.tables[0]
    for element in table.fields:
        if element.name in SKY_FIELDS:
            element.ref = COOSYS_ID
        elif element.name in TIME_FIELDS:
            element.ref = TIMESYS_ID
    resource.params.extend(
        [
            param(document, "DataModel", "Spectrum-1.0", utype="ssa:Dataset.DataModel"),
            param(document, "DatasetType", "Spectrum", utype="ssa:Dataset.Type"),
            param(
                document,
                "Publisher",
                config["service"].get("title", "latentvo"),
                ucd="meta.curation",
                utype="ssa:Curation.Publisher",
            ),
            param(document, "SpaceFrame", "ICRS", utype="ssa:CoordSys.SpaceFrame.Name"),
            param(document, "DataSource", "pointed", utype="ssa:DataID.DataSource"),
            param(document, "CreationType", "archival", utype="ssa:DataID.CreationType"),
            param(document, "SpectralUcd", "em.wl", utype="ssa:Char.SpectralAxis.Ucd"),
            param(document, "SpectralUnit", "m", utype="ssa:Char.SpectralAxis.Unit"),
            param(document, "FluxUcd", "phot.flux.density;em.wl", utype="ssa:Char.FluxAxis.Ucd"),
        ]
    )
    if q.metadata:
        resource.params.extend(input_params(document, latent, config))
        document.description = (
            f"{config['service'].get('title', 'latentvo')}: SSAP 1.1 over the archive's spectra, with "
            "similarity search in the latent space of a beta-VAE (SIMILAR_TO, K, DIMS)."
        )
    document.resources.append(links_descriptor(document, PUBDID_ID))  # SSA-06, DL-12
    if latent is not None and not q.metadata:
        document.resources.append(mi_resource(document, latent))


def mi_resource(document: VOTableFile, latent: LatentInfo) -> Resource:
    """The model's dimension × label mutual information as a TABLE in a ``type="meta"`` RESOURCE.

    Not a second results RESOURCE (X-11): pyvo and TOPCAT read the first results table only.
    """
    resource = Resource(type="meta", utype="latentvo:LabelCorrelation")
    resource.extra_attributes["name"] = "latent_label_mi"  # astropy writes no RESOURCE name otherwise
    resource.description = (
        f"Mutual information (nats, k-NN estimator) between each latent dimension of model version "
        f"{latent.served.version} and each physical label, with the same for the principal component of "
        "equal number of a PCA baseline. The z<d> FIELDs of the results table are the informative dimensions."
    )
    columns = [
        Column("dim", "int", ucd="meta.number", description="Latent dimension (and PCA component) number"),
        Column("label", "char", "*", ucd="meta.id", description="Physical label"),
        Column(
            "informative", "boolean", description="Whether the dimension is informative (shown as z<dim>)"
        ),
        Column("mi", "double", ucd="stat.value", description="Mutual information with the label, nats"),
        Column(
            "mi_error", "double", ucd="stat.error", description="Uncertainty of mi (subsample scatter), nats"
        ),
        Column("pca_mi", "double", ucd="stat.value", description="Same for PCA component dim, nats"),
        Column("pca_mi_error", "double", ucd="stat.error", description="Uncertainty of pca_mi, nats"),
    ]
    rows = [
        (r["dim"], r["label"], bool(r["informative"]), r["mi"], r["mi_error"], r["pca_mi"], r["pca_mi_error"])
        for r in latent.correlations
    ]
    table = add_table(resource, document, columns, rows, name="latent_label_mi")
    table.ID = None
    for element in table.fields:
        element.ID = None  # IDs only where something refers to them
    return resource


def input_params(document: VOTableFile, latent: LatentInfo | None, config: dict) -> list[Param]:
    """One ``INPUT:<name>`` PARAM per supported input parameter (SSA-07), for FORMAT=METADATA."""
    service = config["service"]
    conn = state().archive().db
    collections = tuple(r[0] for r in conn.execute("SELECT DISTINCT obs_collection FROM spectrum"))
    dims = "the informative " + " ".join(map(str, latent.dims)) if latent else "(no model in service)"
    formats = (
        "all",
        "compliant",
        "native",
        "votable",
        "fits",
        "xml",
        "graphic",
        "metadata",
        VOTABLE_MIME,
        FITS_MIME,
    )
    specs = [
        InputParam("REQUEST", value="queryData", options=("queryData",), description="Operation: queryData"),
        InputParam(
            "POS", unit="deg", ucd="pos.eq", description="Search centre 'ra,dec' (ICRS degrees)[;ICRS]"
        ),
        InputParam(
            "SIZE",
            "double",
            None,
            repr(DEFAULT_SIZE),
            unit="deg",
            description="Search cone diameter",
            maximum=repr(2 * MAX_SEARCH_RADIUS),
        ),
        InputParam(
            "BAND", unit="m", ucd="em.wl", description="Vacuum wavelength range list: a/b, a/, /b, v, ..."
        ),
        InputParam(
            "TIME", ucd="time", description="ISO 8601 range list; imprecise values cover their period"
        ),
        InputParam(
            "FORMAT", value="all", options=formats, description="Dataset format; METADATA describes this"
        ),
        InputParam(
            "MAXREC",
            "int",
            None,
            str(service["default_maxrec"]),
            minimum="0",
            maximum=str(service["hard_maxrec"]),
            description="Most rows returned",
        ),
        InputParam(
            "TOP", "int", None, minimum="0", description="Number of top rows wanted (MAXREC still applies)"
        ),
        InputParam("TARGETNAME", ucd="meta.id;src", description="Case-insensitive part of the target name"),
        InputParam("COLLECTION", options=collections, description="Collection name(s), comma-separated"),
        InputParam(
            "PUBDID", ucd="meta.ref.ivoid", description="Publisher DID(s), comma-separated or repeated"
        ),
        InputParam("ID", ucd="meta.ref.ivoid", description="Synonym of PUBDID"),
        InputParam("SNR", "double", None, ucd="stat.snr", description="Minimum signal-to-noise ratio"),
        InputParam("SPECRP", "double", None, ucd="spect.resolution", description="Minimum resolving power"),
        InputParam(
            "SIMILAR_TO",
            ucd="meta.ref.ivoid",
            description="Publisher DID: return the K spectra most "
            "similar to it in the model's latent space, nearest first, with their latent distance",
        ),
        InputParam(
            "K",
            "int",
            None,
            str(config["index"]["k"]),
            minimum="1",
            maximum=str(MAX_K),
            description="Number of neighbours for SIMILAR_TO",
        ),
        InputParam("DIMS", description=f"Latent dimensions for SIMILAR_TO (exact search); default {dims}"),
    ]
    for spec in specs:
        spec.name = f"INPUT:{spec.name}"
    return [input_param(document, spec) for spec in specs]


# -- VOSI ------------------------------------------------------------------------------------------


def ssa_capability() -> ET.Element:
    """The SSA capability (SSA-09), children in the order of the SSA 1.1 capability schema."""
    service = state().config["service"]
    conn = state().archive().db
    interface = vosi.Interface(
        state().url("ssa/query"),
        use="base",
        role="std",
        version="1.1",
        result_type=VOTABLE_MIME,
        query_types=("GET",),  # POST works too; pyvo's VOSI parser warns on a second queryType
    )
    cap = vosi.capability(SSA_STANDARD_ID, [interface], xsi_type="ssa:SimpleSpectralAccess")
    largest = conn.execute("SELECT MAX(em_xel) FROM spectrum").fetchone()[0] or 0
    for tag, text in (
        ("complianceLevel", "minimal"),
        ("dataSource", "pointed"),
        ("creationType", "archival"),
        ("supportedFrame", "ICRS"),
        ("maxSearchRadius", repr(MAX_SEARCH_RADIUS)),
        ("maxRecords", service["hard_maxrec"]),
        ("defaultMaxRecords", service["default_maxrec"]),
        ("maxAperture", repr(MAX_APERTURE)),
        ("maxFileSize", estimated_size({"em_xel": largest}, "votable")),
    ):
        vosi.sub(cap, tag, text)
    test = vosi.sub(cap, "testQuery")
    located = conn.execute(
        "SELECT s_ra, s_dec FROM spectrum WHERE s_ra IS NOT NULL AND s_dec IS NOT NULL "
        "ORDER BY row_id LIMIT 1"
    ).fetchone()
    if located is not None:
        ra, dec = located
        pos = vosi.sub(test, "pos")
        vosi.sub(pos, "long", repr(ra))
        vosi.sub(pos, "lat", repr(dec))
        vosi.sub(test, "size", repr(DEFAULT_SIZE))
        command = f"POS={ra!r},{dec!r}&SIZE={DEFAULT_SIZE!r}&REQUEST=queryData"
    else:  # no positions (MILES): a band every spectrum of the first collection covers
        first = conn.execute("SELECT em_min, em_max FROM spectrum ORDER BY row_id LIMIT 1").fetchone()
        command = f"BAND={(first[0] + first[1]) / 2 if first else 5e-7!r}&REQUEST=queryData"
    vosi.sub(test, "queryDataCmd", command)
    return cap

"""Dataset delivery (``/data/<key>``): each archive spectrum as a Spectrum-DM VOTable or a FITS table.

The key is the local part of the publisher DID (``miles/m0005`` for
``ivo://latentvo.example/~?miles/m0005``): it is looked up in the archive by DID, never used as a
path, and stays valid when the archive is rebuilt (row ids would not). ``?format=`` picks
``votable`` (default, ``application/x-votable+xml``) or ``fits`` (``application/fits``); the MIME
types are accepted too. SSAP's Access.Reference and DataLink's ``#this`` links are built with
:func:`dataset_url`.

Both formats carry the spectrum as ``model.readers.read_spectra`` reads it from the source file,
with one change stated in the files: wavelengths are **vacuum** Ångström (air wavelengths are
converted), so they agree with the spectral coverage SSAP and ObsCore publish in metres. Flux is
in the file's unit, or relative (no unit, ``Char.FluxAxis.Calibration = RELATIVE``) when the
file gave none; the statistical error is ``1/sqrt(ivar)`` (null where ivar is 0).
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.io.votable.tree import Resource, TableElement, VOTableFile
from flask import Blueprint, Response, request

from model.readers import read_spectra
from model.spectrum import SpectrumReadError
from service import __version__
from service.errors import DALIError, NotFoundError, UsageError
from service.params import request_params
from service.state import state
from service.storage import Row
from service.votable import VOTABLE_MIME, Column, info, new_document, param, serialise

bp = Blueprint("data", __name__)

FITS_MIME = "application/fits"
#: What a dataset can be delivered as: format name → media type (SSAP Access.Format).
DATASET_FORMATS: dict[str, str] = {"votable": VOTABLE_MIME, "fits": FITS_MIME}
#: Spellings accepted by ``?format=`` (lower case, MIME parameters stripped).
_FORMAT_ALIASES = {
    "votable": "votable",
    "vot": "votable",
    "xml": "votable",
    VOTABLE_MIME: "votable",
    "text/xml": "votable",
    "fits": "fits",
    FITS_MIME: "fits",
    "image/fits": "fits",
}
_KEY = re.compile(r"^[A-Za-z0-9._+-]+/[A-Za-z0-9._+-]+$")
#: Physical labels written beside the spectrum: name → (UCD, VOUnit or None).
LABEL_PARAMS: dict[str, tuple[str, str | None]] = {
    "teff": ("phys.temperature.effective", "K"),
    "logg": ("phys.gravity", None),
    "feh": ("phys.abund.Z", None),
    "rv": ("spect.dopplerVeloc.opt", "km/s"),
    "snr": ("stat.snr", None),
    "vsini": ("phys.veloc.rotat", "km/s"),
    "airmass": ("obs.airMass", None),
}
SPEC = "spec:Spectrum."
#: The labels result tables next to a spectrum show (neighbour lists, upload similarity).
MAIN_LABELS = ("teff", "logg", "feh")


def label_columns(names: tuple[str, ...] = MAIN_LABELS) -> list[Column]:
    """FIELDs for catalogue labels, with the UCD and unit of :data:`LABEL_PARAMS`."""
    return [
        Column(
            name,
            "double",
            unit=LABEL_PARAMS[name][1],
            ucd=LABEL_PARAMS[name][0],
            description=f"Catalogue {name}",
        )
        for name in names
    ]


# -- links -----------------------------------------------------------------------------------


def dataset_key(did: str) -> str:
    """The opaque key of a DID: its local part (``collection/key``), as the archive builds DIDs."""
    key = did.split("?", 1)[1] if "?" in did else ""
    if not _KEY.match(key):
        raise ValueError(f"{did!r} is no DID of this archive")
    return key


def dataset_url(did_or_row: str | Mapping, fmt: str = "votable") -> str:
    """The absolute public URL of a spectrum in ``fmt`` (``votable`` or ``fits``); needs an app context."""
    did = did_or_row if isinstance(did_or_row, str) else did_or_row["obs_publisher_did"]
    if fmt not in DATASET_FORMATS:
        raise ValueError(f"unknown dataset format {fmt!r}")
    url = state().url(f"/data/{dataset_key(did)}")
    return url if fmt == "votable" else f"{url}?format={fmt}"


def estimated_size(row: Mapping, fmt: str) -> int:
    """Bytes of the delivered file, estimated from the number of samples (SSAP Access.Size)."""
    n = int(row["em_xel"] or 0)
    if fmt == "fits":  # two header blocks and the padded table of up to 25 bytes a pixel
        return 2880 * (3 + -(-n * 25 // 2880))
    return 6000 + 100 * n


# -- the endpoint ------------------------------------------------------------------------------


@bp.route("/<path:key>", methods=["GET"])
def dataset(key: str) -> Response:
    """One spectrum file; unknown keys are 404 error documents."""
    fmt = _format(request_params(request).get("FORMAT"))
    row = _row(key)
    try:
        spectrum = read_spectra(row["source_path"], row["source_index"])[0]
    except (SpectrumReadError, OSError) as exc:
        raise DALIError(f"the stored spectrum {row['obs_publisher_did']} cannot be read: {exc}") from exc
    content = sdm_votable(row, spectrum) if fmt == "votable" else spectrum_fits(row, spectrum)
    name = key.replace("/", "_") + (".vot" if fmt == "votable" else ".fits")
    response = Response(content, content_type=DATASET_FORMATS[fmt])
    response.headers["Content-Disposition"] = f'inline; filename="{name}"'
    response.set_etag(f"{row['source_sha256'][:32]}-{fmt}-{__version__}")  # same file, same writer
    return response.make_conditional(request)


def _format(raw: str | None) -> str:
    if raw is None or not raw.strip():
        return "votable"
    chosen = _FORMAT_ALIASES.get(raw.strip().lower().split(";", 1)[0].strip())
    if chosen is None:
        raise UsageError(f"unknown FORMAT {raw!r}; use votable ({VOTABLE_MIME}) or fits ({FITS_MIME})")
    return chosen


def _row(key: str) -> Row:
    archive = state().archive()
    if not _KEY.match(key):
        raise NotFoundError(f"no dataset {key!r}")
    did = f"ivo://{archive.authority}/~?{key}"
    row = archive.db.execute("SELECT * FROM spectrum WHERE obs_publisher_did = ?", (did,)).fetchone()
    if row is None:
        raise NotFoundError(f"no dataset {key!r}")
    return row


# -- content -----------------------------------------------------------------------------------


@dataclass
class _Arrays:
    """What both formats write: vacuum wavelength (Å), flux, ivar/error and mask, all optional but flux."""

    wave: np.ndarray
    flux: np.ndarray
    ivar: np.ndarray | None
    mask: np.ndarray | None
    flux_unit: str | None

    @classmethod
    def of(cls, spectrum) -> _Arrays:
        return cls(
            spectrum.vacuum_wavelength(),
            spectrum.flux,
            spectrum.ivar,
            spectrum.mask,
            vo_unit(spectrum.flux_unit),
        )

    def error(self) -> np.ndarray:
        """1/sqrt(ivar); NaN (null) where ivar carries no information."""
        out = np.full(self.flux.shape, np.nan)
        good = self.ivar > 0
        out[good] = 1.0 / np.sqrt(self.ivar[good])
        return out


def vo_unit(text: str | None) -> str | None:
    """The unit in VOUnit syntax; None when absent or unparseable (the flux is then relative)."""
    if not text:
        return None
    try:
        return u.Unit(text).to_string("vounit")
    except (ValueError, TypeError):
        return None


def dataset_title(row: Mapping) -> str:
    """What SSAP calls DataID.Title: the target (or observation id) and the collection."""
    return f"{row['target_name'] or row['obs_id']} ({row['obs_collection']})"


def sdm_votable(row: Mapping, spectrum) -> bytes:
    """An IVOA Spectrum-DM VOTable: axes identified by utype and UCD, metadata as PARAMs."""
    arrays = _Arrays.of(spectrum)
    document = new_document()
    resource = Resource(type="results", utype="spec:Spectrum")
    resource.infos.append(info("QUERY_STATUS", "OK"))
    document.resources.append(resource)
    table = TableElement(document, name="spectrum")
    table.utype = "spec:Spectrum"
    table.description = f"Spectrum {row['obs_publisher_did']}"
    columns, data = _sdm_columns(arrays)
    with warnings.catch_warnings():  # astropy calls Angstrom deprecated in VOUnit; clients expect it
        warnings.simplefilter("ignore", u.UnitsWarning)
        table.params.extend(_sdm_params(document, row, spectrum, arrays))
        table.fields.extend(c.field(document) for c in columns)
        table.create_arrays(nrows=len(arrays.wave))
        for column, values in zip(columns, data, strict=True):
            table.array[column.name] = values
            if values.dtype.kind == "f" and column.name != "flux":
                table.array.mask[column.name] = ~np.isfinite(values)
        resource.tables.append(table)
        return serialise(document)


def _sdm_columns(arrays: _Arrays) -> tuple[list[Column], list[np.ndarray]]:
    flux_note = "" if arrays.flux_unit else " Relative flux (the source file states no unit)."
    columns = [
        Column(
            "wavelength",
            "double",
            unit="Angstrom",
            ucd="em.wl",
            utype=SPEC + "Data.SpectralAxis.Value",
            description="Wavelength in vacuum (air wavelengths of the source converted, Ciddor/Morton).",
        ),
        Column(
            "flux",
            "double",
            unit=arrays.flux_unit,
            ucd="phot.flux.density;em.wl",
            utype=SPEC + "Data.FluxAxis.Value",
            description="Flux density per unit wavelength." + flux_note,
        ),
    ]
    data = [arrays.wave, arrays.flux.astype(np.float64)]
    if arrays.ivar is not None:
        columns.append(
            Column(
                "flux_error",
                "double",
                unit=arrays.flux_unit,
                ucd="stat.error;phot.flux.density;em.wl",
                utype=SPEC + "Data.FluxAxis.Accuracy.StatError",
                description="1-sigma statistical error, 1/sqrt(ivar); null where a pixel has no information.",
            )
        )
        data.append(arrays.error())
    if arrays.mask is not None:
        columns.append(
            Column(
                "quality",
                "short",
                ucd="meta.code.qual",
                utype=SPEC + "Data.FluxAxis.Quality",
                description="0 = good pixel, 1 = bad (masked or without finite flux).",
            )
        )
        data.append(arrays.mask.astype(np.int16))
    return columns, data


def _sdm_params(document: VOTableFile, row: Mapping, spectrum, arrays: _Arrays) -> list:
    """Dataset, target, curation and characterisation PARAMs (the readers map these utypes back)."""
    config = state().config
    wave = arrays.wave
    params = [
        param(document, "DataModel", "Spectrum-1.0", utype=SPEC + "Dataset.DataModel"),
        param(document, "DatasetType", "Spectrum", utype=SPEC + "Dataset.Type"),
        param(
            document, "Length", str(len(wave)), "long", None, ucd="meta.number", utype=SPEC + "Dataset.Length"
        ),
        param(
            document, "Title", dataset_title(row), ucd="meta.title;meta.dataset", utype=SPEC + "DataID.Title"
        ),
        param(document, "Collection", row["obs_collection"], ucd="meta.id", utype=SPEC + "DataID.Collection"),
        param(
            document,
            "PublisherDID",
            row["obs_publisher_did"],
            ucd="meta.ref.ivoid",
            utype=SPEC + "Curation.PublisherDID",
        ),
        param(
            document,
            "Publisher",
            config["service"].get("title", "latentvo"),
            ucd="meta.curation",
            utype=SPEC + "Curation.Publisher",
        ),
        param(document, "medium", "vacuum", description="The wavelength axis is in vacuum."),
        param(
            document, "source_medium", row["medium"], description="Medium of the source file's wavelengths."
        ),
        param(
            document,
            "SpectralStart",
            repr(float(wave.min())),
            "double",
            None,
            unit="Angstrom",
            ucd="em.wl;stat.min",
            utype=SPEC + "Char.SpectralAxis.Coverage.Bounds.Start",
        ),
        param(
            document,
            "SpectralStop",
            repr(float(wave.max())),
            "double",
            None,
            unit="Angstrom",
            ucd="em.wl;stat.max",
            utype=SPEC + "Char.SpectralAxis.Coverage.Bounds.Stop",
        ),
        param(
            document,
            "FluxCalibration",
            "ABSOLUTE" if arrays.flux_unit else "RELATIVE",
            utype=SPEC + "Char.FluxAxis.Calibration",
        ),
    ]
    if row["target_name"]:
        params.append(
            param(document, "TargetName", row["target_name"], ucd="meta.id;src", utype=SPEC + "Target.Name")
        )
    if row["s_ra"] is not None and row["s_dec"] is not None:
        params.append(
            param(
                document,
                "TargetPos",
                f"{row['s_ra']!r} {row['s_dec']!r}",
                "double",
                "2",
                unit="deg",
                ucd="pos.eq;src",
                utype=SPEC + "Target.Pos",
            )
        )
    if row["instrument_name"]:
        params.append(
            param(
                document,
                "Instrument",
                row["instrument_name"],
                ucd="meta.id;instr",
                utype=SPEC + "DataID.Instrument",
            )
        )
    if row["em_res_power"]:
        params.append(
            _number(
                document,
                "ResolvingPower",
                row["em_res_power"],
                "spect.resolution",
                None,
                SPEC + "Char.SpectralAxis.ResPower",
            )
        )
    if row["t_min"] is not None:
        params.append(
            _number(
                document,
                "mjd_obs",
                row["t_min"],
                "time.start;obs.exposure",
                "d",
                SPEC + "Char.TimeAxis.Coverage.Bounds.Start",
            )
        )
    if row["t_exptime"]:
        params.append(
            _number(
                document,
                "exptime",
                row["t_exptime"],
                "time.duration;obs.exposure",
                "s",
                SPEC + "Char.TimeAxis.Coverage.Bounds.Extent",
            )
        )
    for name, (ucd, unit) in LABEL_PARAMS.items():
        if row[name] is not None:
            utype = SPEC + "Derived.SNR" if name == "snr" else None
            params.append(_number(document, name, row[name], ucd, unit, utype))
    return params


def _number(document: VOTableFile, name: str, value: float, ucd: str, unit: str | None, utype: str | None):
    return param(document, name, repr(float(value)), "double", None, ucd=ucd, unit=unit, utype=utype)


def spectrum_fits(row: Mapping, spectrum) -> bytes:
    """A FITS file: metadata in the primary header, a SPECTRUM binary table of one row per pixel."""
    arrays = _Arrays.of(spectrum)
    primary = fits.PrimaryHDU()
    header = primary.header
    header["OBJECT"] = (row["target_name"] or row["obs_id"], "target name")
    header["TITLE"] = (dataset_title(row), "dataset title")
    header["COLLECT"] = (row["obs_collection"], "archive collection")
    header["PUBDID"] = (row["obs_publisher_did"], "IVOA publisher DID")
    header["AIRORVAC"] = ("vac", "wavelengths are in vacuum")
    header["SRCMED"] = (row["medium"], "medium of the source file's wavelengths")
    optional = {
        "RA": (row["s_ra"], "[deg] ICRS right ascension"),
        "DEC": (row["s_dec"], "[deg] ICRS declination"),
        "MJD-OBS": (row["t_min"], "[d] MJD (UTC) of exposure start"),
        "EXPTIME": (row["t_exptime"], "[s] exposure time"),
        "INSTRUME": (row["instrument_name"], "instrument"),
        "RESPOWER": (row["em_res_power"], "resolving power lambda/dlambda"),
        "BUNIT": (arrays.flux_unit, "flux unit"),
    }
    optional |= {name.upper(): (row[name], f"{name} label") for name in LABEL_PARAMS}
    for keyword, (value, comment) in optional.items():
        if value is not None and value != "":
            header[keyword] = (value, comment)
    columns = [
        fits.Column("WAVELENGTH", "D", unit="Angstrom", array=arrays.wave),
        fits.Column("FLUX", "D", unit=arrays.flux_unit, array=arrays.flux),
    ]
    roles = [
        ("spec:Spectrum.Data.SpectralAxis.Value", "em.wl"),
        ("spec:Spectrum.Data.FluxAxis.Value", "phot.flux.density;em.wl"),
    ]
    if arrays.ivar is not None:
        columns.append(fits.Column("IVAR", "D", array=arrays.ivar))
        roles.append((None, "stat.weight;phot.flux.density"))
    if arrays.mask is not None:
        columns.append(fits.Column("MASK", "B", array=arrays.mask.astype(np.uint8)))
        roles.append(("spec:Spectrum.Data.FluxAxis.Quality", "meta.code.qual"))
    table = fits.BinTableHDU.from_columns(columns, name="SPECTRUM")
    for number, (utype, ucd) in enumerate(roles, 1):
        if utype:
            table.header[f"TUTYP{number}"] = utype
        table.header[f"TUCD{number}"] = ucd
    buffer = io.BytesIO()
    fits.HDUList([primary, table]).writeto(buffer, checksum=True)
    return buffer.getvalue()

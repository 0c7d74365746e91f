"""Turn spectral files into :class:`~model.spectrum.Spectrum` objects, whatever archive wrote them.

One entry point, :func:`read_spectra`. The format is recognised from the file's content (FITS
layout, header keywords, column names, VOTable utypes), so every spectrum can be read again from
its ``source``, ``source_format`` and ``source_index`` alone. Readers differ only in where the
arrays live; naming conventions (columns, keywords, labels) are resolved by shared helpers below,
and every failure on a bad file surfaces as :class:`SpectrumReadError`.
"""

from __future__ import annotations

import codecs
import gzip
import math
import operator
import os
import re
import threading
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import numpy as np
from astropy import units as u
from astropy.coordinates import Angle
from astropy.io import fits
from astropy.io import votable as vo
from astropy.io.ascii import InconsistentTableError
from astropy.table import Table
from astropy.time import Time

from model.spectrum import KNOWN_LABELS, Spectrum, SpectrumReadError, to_angstrom

#: What the readers accept as a file name.
PathArg = str | os.PathLike[str]

#: Reader names, as :func:`detect_format` returns them and ``Spectrum.source_format`` records them.
FORMATS = (
    "fits-image",
    "fits-table",
    "sdss",
    "lamost-image",
    "lamost-table",
    "fits-multi",
    "votable-sdm",
    "csv",
)

C_KMS = 299792.458  # speed of light in km/s (exact), for rv = z·c
#: SDSS/BOSS coadds are sampled in steps of 1e-4 in log10(λ); ``wdisp`` is in those pixels.
SDSS_DLOGLAM = 1e-4
SDSS_FLUX_UNIT = "1e-17 erg / (Angstrom cm2 s)"
_HEAD_BYTES = 4096
_FITS_MAGIC = b"SIMPLE  ="
_BLOCK = 2880  # FITS record length
#: A 2-D image is taken as a spectrum (first row = flux) only when it is a short stack of rows.
_MAX_IMAGE_ROWS = 8
#: A table of one spectrum per row is read this many rows at a time at most, and in blocks of at most
#: ``CHUNK_BYTES`` (wide rows make shorter blocks): memory stays at one block however long the table.
CHUNK_ROWS = 1024
CHUNK_BYTES = 8 * 2**20

# Column / keyword spellings, compared after _norm() (lower case, letters and digits only), best first.
_WAVE_NAMES = ("wavelength", "wave", "lambda", "wl", "lam", "wavelen", "awav", "vwav")
_LOGWAVE_NAMES = ("loglam", "logwave", "loglambda", "logwl")
_FLUX_NAMES = ("flux", "fluxdensity", "flam", "flambda", "fnu", "flx", "intensity")
_IVAR_NAMES = ("ivar", "invvar", "inversevariance", "fluxivar")
_VAR_NAMES = ("variance", "var", "fluxvar")
_ERR_NAMES = (
    "error",
    "err",
    "sigma",
    "fluxerror",
    "fluxerr",
    "eflux",
    "errflux",
    "uncertainty",
    "unc",
    "noise",
    "staterror",
)
_MASK_NAMES = ("andmask", "mask", "pixmask", "badmask", "badpix", "bpm")
_LABEL_ALIASES: dict[str, tuple[str, ...]] = {
    "teff": ("teff",),
    "logg": ("logg",),
    "feh": ("feh", "mh", "metallicity"),
    # Not HELIO_RV: in LAMOST files that is the heliocentric correction the pipeline applied, not the
    # star's velocity (which is Z·c for stars, below). VHELIO is APOGEE's velocity of the star.
    "rv": ("rv", "vrad", "radialvelocity", "vhelio"),
    "snr": ("snr", "snmedianall", "snrr"),  # SDSS SN_MEDIAN_ALL, LAMOST r-band SNRR
    "vsini": ("vsini",),
    "airmass": ("airmass",),
}
assert set(_LABEL_ALIASES) == set(KNOWN_LABELS)
#: normalised spelling → (label, preference: 0 is best), e.g. 'mh' → ('feh', 1).
_ALIAS_RANK = {
    alias: (label, rank) for label, aliases in _LABEL_ALIASES.items() for rank, alias in enumerate(aliases)
}

# Metadata keywords (lower case, as in the merged metadata dicts), best first.
_ID_KEYS = (
    "miles_id",
    "obsid",
    "specid",
    "spec_id",
    "spectrum_id",
    "id",
    "objid",
    "object_id",
    "name",
    "designation",
    "desig",
)
_RA_KEYS = ("plug_ra", "ra_obj", "racat", "ra", "objra", "ra_targ", "target_ra", "ra_deg")
_DEC_KEYS = ("plug_dec", "dec_obj", "deccat", "dec", "objdec", "dec_targ", "target_dec", "dec_deg")
_TARGET_KEYS = ("object", "desig", "objname", "name", "target", "targname")
_EXPTIME_KEYS = ("exptime", "exposure", "exp_time", "exposure_time", "texp")
_RP_KEYS = ("resolving_power", "respower", "specrp", "spec_rp")
_INSTRUMENT_KEYS = ("instrume", "instrument", "telescop", "telescope")
_MEDIUM_KEYS = ("wavemed", "medium", "airorvac", "wave_medium")

#: Header keywords that only describe the FITS layout; they are no metadata of the spectrum.
_STRUCTURAL = re.compile(
    r"^(SIMPLE|BITPIX|NAXIS\d*|EXTEND|PCOUNT|GCOUNT|TFIELDS|XTENSION|EXTNAME|EXTVER|CHECKSUM|DATASUM"
    r"|COMMENT|HISTORY|T(TYPE|FORM|UNIT|DIM|NULL|SCAL|ZERO|DISP)\d+|)$"
)
_BRACKET_UNIT = re.compile(r"^\s*(.+?)\s*[\[(]\s*([^\])]+?)\s*[\])]\s*$")
_SUFFIX_UNIT = re.compile(r"^(.*?)_(aa|angstrom|ang|nm|um|micron|mum|hz|ghz|ev|kev)$", re.IGNORECASE)
#: How files spell Ångström; "A" would otherwise parse as ampere.
_ANGSTROM_SPELLINGS = {"a", "aa", "å", "ang", "angs", "angstrom", "angstroms", "angstroem"}
_SDSS_OBJECT_HDUS = ("SPALL", "SPECOBJ")

# VOTable utypes (namespace prefix and "Spectrum." dropped, lower case) → metadata keys.
_UTYPE_META = {
    "target.name": "object",
    "target.class": "class",
    "target.redshift": "z",
    "derived.redshift.value": "z",
    "derived.snr": "snr",
    "dataid.title": "title",
    "curation.publisherdid": "publisher_did",
    "dataid.creatordid": "creator_did",
    "dataid.instrument": "instrument",
    "char.spectralaxis.respower": "resolving_power",
    "char.timeaxis.coverage.location.value": "mjd-obs",
    "char.timeaxis.coverage.bounds.extent": "exptime",
}
_UTYPE_POSITIONS = ("target.pos", "char.spatialaxis.coverage.location.value")


#: astropy has no public base class for "any HDU".
_HDU = fits.hdu.base._BaseHDU


class _SharedGrid:
    """A wavelength grid every row of a table shares (a WAVELENGTH HDU, a header WCS).

    Checked and sorted once, then handed to every spectrum as the same read-only array: no copy per
    row, and no consumer can change the grid under the others.
    """

    def __init__(self, values: np.ndarray) -> None:
        self.values = np.asarray(values)
        self._checked: tuple[np.ndarray, bool] | None = None

    def checked(self, path: PathArg) -> tuple[np.ndarray, bool]:
        if self._checked is None:
            wave, descending = _checked_wave(path, self.values.squeeze())
            wave.setflags(write=False)
            self._checked = wave, descending
        return self._checked


@dataclass
class _Arrays:
    """The per-pixel arrays of one spectrum as found in the file (wavelength already in Å)."""

    wave: np.ndarray | _SharedGrid
    flux: np.ndarray
    ivar: np.ndarray | None = None
    mask: np.ndarray | None = None
    flux_unit: str = ""


@dataclass
class _Part:
    """One spectrum's arrays plus the metadata a reader found for it, before validation."""

    position: int
    arrays: _Arrays
    meta: dict[str, Any]  # header keywords / params and the row's scalar columns, lower-case keys
    row: dict[str, Any] = field(default_factory=dict)  # the row's scalar columns alone (ids live there)
    units: dict[str, str] = field(default_factory=dict)
    columns: dict[str, np.ndarray] = field(default_factory=dict)  # raw per-pixel columns by file name


#: Which spectra of a file to read: all (None), the one at a source index, or a range of them.
_Index = int | range | None


# ---------------------------------------------------------------------------------------------------
# public API


def read_spectra(path: PathArg, index: int | None = None) -> list[Spectrum]:
    """Read every spectrum in a file, or only the one at ``index`` (without loading the others).

    ``index`` is the ``source_index`` a previous read gave: the row of a multi-spectrum table, or 0
    for a single-spectrum file. Raises :class:`SpectrumReadError` for anything that is not a
    readable spectrum.
    """
    spectra = list(_spectra(path, None if index is None else operator.index(index)))
    if not spectra:
        raise SpectrumReadError(path, "the file holds no spectra")
    return spectra


def detect_format(path: PathArg) -> str:
    """Name the reader (one of :data:`FORMATS`) that fits this file, judged by its content.

    FITS files are classified by layout and raise :class:`SpectrumReadError` when no HDU holds a
    spectrum; VOTables and text tables are named by their syntax, their columns are checked on reading.
    """
    file = _existing_file(path)
    with _named_errors(path):
        kind = _sniff(path, file)
        if kind == "votable":
            return "votable-sdm"
        if kind == "text":
            return "csv"
        with _open_fits(path, file, kind) as hdul:
            return _classify_fits(path, hdul)[0]


def iter_spectra(path: PathArg, rows: range | None = None) -> Iterator[Spectrum]:
    """Every spectrum of a file in file order, the same as :func:`read_spectra`, one at a time; or
    only those at the consecutive ``rows`` (source indices), the others not read.

    Lazy where it matters: a table of one spectrum per row is read a block of rows at a time
    (:data:`CHUNK_ROWS`, :data:`CHUNK_BYTES`) from a file held open until the iterator is exhausted or
    closed, so memory stays flat however many rows it has. Spectra on a grid the table shares share
    one read-only wavelength array.
    """
    if rows is not None and (rows.step != 1 or not rows):
        raise ValueError("rows must be a non-empty range of consecutive indices")
    count = 0
    for spectrum in _spectra(path, rows):
        count += 1
        yield spectrum
    if not count:
        raise SpectrumReadError(path, "the file holds no spectra")


def label_key(name: str) -> str:
    """The key a label column or keyword is stored under: its KNOWN_LABELS name, else its own name.

    'T_EFF' → 'teff', '[Fe/H]' → 'feh', 'SN_MEDIAN_ALL' → 'snr'; 'Colour' → 'colour' (an extra label).
    The same mapping every reader uses, public so label tables beside the spectra map the same way.
    """
    base = _split_unit(name)[0].strip()
    found = _ALIAS_RANK.get(_norm(base))
    return found[0] if found else base.lower()


# ---------------------------------------------------------------------------------------------------
# file access and format recognition


def _spectra(path: PathArg, index: _Index) -> Iterator[Spectrum]:
    """The spectra of a file (or the one at ``index``, or those in the range ``index``) as the readers
    produce them; errors name the file."""
    file = _existing_file(path)
    with _named_errors(path):
        kind = _sniff(path, file)
        if kind in ("votable", "text"):
            yield from _select(path, (_read_votable if kind == "votable" else _read_text)(path, file), index)
            return
        if isinstance(index, int) and kind == "fits":
            yield from _OPEN_FILES.read(path, file, index)
            return
        with _open_fits(path, file, kind) as hdul:
            fmt, number = _classify_fits(path, hdul)
            yield from _FITS_READERS[fmt](path, hdul, number, index)


def _existing_file(path: PathArg) -> Path:
    """The path as a Path, after checking there is a non-empty file to read."""
    file = Path(path)
    if not file.exists():
        raise SpectrumReadError(path, "no such file")
    if not file.is_file():
        raise SpectrumReadError(path, "not a regular file")
    if file.stat().st_size == 0:
        raise SpectrumReadError(path, "empty file")
    return file


@contextmanager
def _named_errors(path: PathArg) -> Iterator[None]:
    """Re-raise whatever astropy/numpy throw on a bad file as a SpectrumReadError naming the file."""
    try:
        yield
    except SpectrumReadError:
        raise
    except Exception as exc:  # a broken file can make astropy/numpy raise almost anything
        raise SpectrumReadError(path, f"unreadable ({_brief(exc)})") from exc


def _brief(exc: Exception) -> str:
    """The first non-blank line of an exception message, cut short: astropy's can run to pages."""
    line = next((text for text in str(exc).splitlines() if text.strip()), "")
    return line.strip()[:200]


def _sniff(path: PathArg, file: Path) -> str:
    """'fits', 'fits-gzip', 'votable' or 'text' from the first bytes; anything else is refused."""
    with file.open("rb") as stream:
        head = stream.read(_HEAD_BYTES)
    if head.startswith(_FITS_MAGIC):
        return "fits"
    if head.startswith(b"\x1f\x8b"):
        with gzip.open(file, "rb") as stream:
            if stream.read(len(_FITS_MAGIC)) == _FITS_MAGIC:
                return "fits-gzip"
        raise SpectrumReadError(path, "gzip-compressed, but not a FITS file")
    text = _as_text(head)
    if text is None:
        raise SpectrumReadError(path, "binary data that is neither FITS nor a text table")
    if "<VOTABLE" in text:
        return "votable"
    if text.lstrip().startswith("<"):
        raise SpectrumReadError(path, "XML/HTML that is not a VOTable")
    return "text"


def _as_text(head: bytes) -> str | None:
    """The bytes as text, or None when they hold NULs or are not UTF-8 (a cut-off last character is fine)."""
    if b"\0" in head:
        return None
    try:
        return codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return None


@contextmanager
def _open_fits(path: PathArg, file: Path, kind: str, close: bool = True) -> Iterator[fits.HDUList]:
    """Open a FITS file memory-mapped (a row of a 1 GB table stays cheap) and refuse truncated ones;
    closed afterwards unless ``close`` is False (then only when it is refused)."""
    try:
        hdul = fits.open(file, memmap=kind == "fits", lazy_load_hdus=False)
    except Exception as exc:  # astropy raises OSError, ValueError, TypeError, ... on broken files
        raise SpectrumReadError(path, f"broken FITS file ({_brief(exc)})") from exc
    try:
        if kind == "fits":
            _check_complete(path, file, hdul)
        yield hdul
    except BaseException:
        hdul.close()
        raise
    if close:
        hdul.close()


class _OpenFiles:
    """FITS files kept open, classified, for reads of one spectrum by index.

    A server answering for rows of a large table reads the same file again and again, and opening
    and classifying it costs far more than reading a row. Entries are keyed by the file's identity
    (device, inode, size, modification time), so a file replaced or rewritten is opened afresh; at
    most :data:`OPEN_FILES` stay open, the least recently read closed first. Reads are serialised
    (one handle per file), and a process that inherits the cache through a fork starts its own.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.lock = threading.Lock()
        self.owner = os.getpid()
        self.entries: OrderedDict[tuple, tuple[fits.HDUList, str, int]] = OrderedDict()

    def read(self, path: PathArg, file: Path, index: int) -> list[Spectrum]:
        info = file.stat()
        key = (str(file.resolve()), info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
        with self.lock:
            if self.owner != os.getpid():  # forked: the handles' offsets are shared with the parent
                self.entries, self.owner = OrderedDict(), os.getpid()
            entry = self.entries.pop(key, None)
            if entry is None:
                entry = self._open(path, file)
            hdul, fmt, number = entry
            try:
                spectra = list(_FITS_READERS[fmt](path, hdul, number, index))
            except Exception:
                hdul.close()
                raise
            self.entries[key] = entry
            while len(self.entries) > self.size:
                self.entries.popitem(last=False)[1][0].close()
            return spectra

    @staticmethod
    def _open(path: PathArg, file: Path) -> tuple[fits.HDUList, str, int]:
        with _open_fits(path, file, "fits", close=False) as hdul:
            try:
                return (hdul, *_classify_fits(path, hdul))
            except Exception:
                hdul.close()
                raise


#: FITS files a process keeps open for reads by index (:class:`_OpenFiles`).
OPEN_FILES = 8
_OPEN_FILES = _OpenFiles(OPEN_FILES)


def _check_complete(path: PathArg, file: Path, hdul: fits.HDUList) -> None:
    """Astropy only warns about a truncated file and fails later on the data; fail clearly here."""
    size = file.stat().st_size
    for number, hdu in enumerate(hdul):
        info = hdul.fileinfo(number)
        if info and info["datLoc"] + hdu.size > size:
            raise SpectrumReadError(path, f"truncated FITS file (HDU {number} ends beyond the file's end)")


def _classify_fits(path: PathArg, hdul: fits.HDUList) -> tuple[str, int]:
    """Which reader fits this FITS file, and the number of the HDU that holds the spectrum."""
    sdss = _sdss_hdu(hdul)
    if sdss is not None:
        return "sdss", sdss
    if _is_lamost(hdul[0].header):
        shape = _image_shape(hdul[0])
        if len(shape) == 2 and 3 <= shape[0] < shape[1]:
            return "lamost-image", 0
        table = next((n for n, hdu in enumerate(hdul) if _is_table(hdu) and _table_kind(path, hdul, n)), None)
        if table is not None:
            return "lamost-table", table
    for number, hdu in enumerate(hdul):
        kind = _table_kind(path, hdul, number) if _is_table(hdu) else _image_kind(path, hdu)
        if kind:
            return kind, number
    raise SpectrumReadError(
        path,
        "no spectrum found: no 1-D image with a wavelength solution (CRVAL1/CDELT1) and no table "
        "with wavelength and flux columns",
    )


def _is_table(hdu: _HDU) -> bool:
    return isinstance(hdu, fits.BinTableHDU | fits.TableHDU)


def _is_lamost(header: fits.Header) -> bool:
    return "OBSID" in header or "LAMOST" in str(header.get("TELESCOP", "")).upper()


def _sdss_hdu(hdul: fits.HDUList) -> int | None:
    """The COADD table of an SDSS spec file: a loglam/flux table in a file with SDSS traits."""
    if len(hdul) < 2 or not _is_table(hdul[1]):
        return None
    names = {_norm(name) for name in _layout(hdul[1]).names}
    header = hdul[0].header
    sdss_like = (
        any(hdu.name in _SDSS_OBJECT_HDUS for hdu in hdul)
        or "PLATEID" in header
        or "PLUG_RA" in header
        or str(header.get("TELESCOP", "")).upper().startswith("SDSS")
    )
    return 1 if {"loglam", "flux"} <= names and sdss_like else None


def _image_shape(hdu: _HDU) -> tuple[int, ...]:
    """The image's shape (numpy order) without length-1 axes; () for tables and empty HDUs."""
    if not isinstance(hdu, fits.PrimaryHDU | fits.ImageHDU):
        return ()
    return tuple(n for n in hdu.shape if n != 1)


def _image_kind(path: PathArg, hdu: _HDU) -> str | None:
    """'fits-image' for a 1-D image (or a short stack of rows) that carries a wavelength solution."""
    shape = _image_shape(hdu)
    one_d = len(shape) == 1 and shape[0] >= 2
    stack = len(shape) == 2 and shape[0] <= _MAX_IMAGE_ROWS and shape[1] > shape[0]
    if (one_d or stack) and _wcs_wavelength(path, _header_meta(hdu.header), 2, required=False) is not None:
        return "fits-image"
    return None


#: A binary-table TFORM: repeat count and type letter (``4096E``, ``D``, ``14A``).
_TFORM = re.compile(r"^\s*(\d*)([A-Z]?)")


@dataclass(frozen=True)
class _TableLayout:
    """A table's column names, units, cell sizes and TFORM type letters, read from its header alone."""

    names: list[str]
    units: dict[str, str]
    repeats: dict[str, int]
    letters: dict[str, str]


def _tform(text: str) -> tuple[int, str]:
    repeat, letter = _TFORM.match(text).groups()
    return int(repeat) if repeat else 1, letter


#: Each open table HDU's layout, worked out once while the HDU lives (classifying and reading ask often).
_LAYOUTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


#: What else reading a row asks of an open HDU (its row codec, data offset, shared grid), by question.
_HDU_FACTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _hdu_fact(hdu: fits.hdu.base._BaseHDU, question: tuple, answer: Callable[[], Any]) -> Any:
    """``answer()`` once per HDU and question while the HDU lives: a server or ``latentvo index``
    reading single rows of a kept-open table would otherwise parse its header for every row."""
    facts = _HDU_FACTS.setdefault(hdu, {})
    if question not in facts:
        facts[question] = answer()
    return facts[question]


def _layout(hdu: fits.BinTableHDU | fits.TableHDU) -> _TableLayout:
    """Column names, units and repeats from TTYPEn/TUNITn/TFORMn: ``hdu.columns`` of a table read
    from a file maps and wraps all its rows first, a cost per file open that one row does not need.
    Tables whose header does not name every column (or names one twice) go through astropy."""
    if hdu not in _LAYOUTS:
        _LAYOUTS[hdu] = _layout_of(hdu)
    return _LAYOUTS[hdu]


def _layout_of(hdu: fits.BinTableHDU | fits.TableHDU) -> _TableLayout:
    header = hdu.header
    count = int(header.get("TFIELDS", 0) or 0)
    names = [str(header.get(f"TTYPE{i}", "")).strip() for i in range(1, count + 1)]
    if not isinstance(hdu, fits.BinTableHDU) or not all(names) or len(set(names)) != len(names):
        return _TableLayout(
            list(hdu.columns.names),
            {col.name: col.unit or "" for col in hdu.columns},
            {col.name: int(getattr(col.format, "repeat", 1) or 1) for col in hdu.columns},
            {col.name: "" for col in hdu.columns},  # no plain-row decoding for these
        )
    units = {name: str(header.get(f"TUNIT{i}", "") or "").strip() for i, name in enumerate(names, 1)}
    forms = {name: _tform(str(header.get(f"TFORM{i}", ""))) for i, name in enumerate(names, 1)}
    return _TableLayout(
        names,
        units,
        {n: repeat for n, (repeat, _) in forms.items()},
        {n: letter for n, (_, letter) in forms.items()},
    )


def _repeat(hdu: fits.BinTableHDU, name: str) -> int:
    """How many values a table cell of this column holds (1 for scalar columns)."""
    return _layout(hdu).repeats[name]


def _table_kind(path: PathArg, hdul: fits.HDUList, number: int) -> str | None:
    """'fits-table' (one spectrum), 'fits-multi' (a spectrum per row) or None (no spectrum here)."""
    hdu = hdul[number]
    names = _layout(hdu).names
    flux = _pick(names, _FLUX_NAMES)
    if flux is None:
        return None
    width = _repeat(hdu, flux)
    wave = _pick(names, _WAVE_NAMES + _LOGWAVE_NAMES)
    if width <= 1:
        return "fits-table" if wave else None
    if wave and _repeat(hdu, wave) == width:
        return "fits-table" if hdu.header["NAXIS2"] == 1 else "fits-multi"
    return "fits-multi" if _shared_grid(path, hdul, number, width) is not None else None


# ---------------------------------------------------------------------------------------------------
# FITS readers


def _read_fits_image(path: PathArg, hdul: fits.HDUList, number: int, index: _Index) -> list[Spectrum]:
    """A 1-D image with a WCS, or the first row of a short 2-D stack; errors may sit in named HDUs."""
    _positions(path, index, 1)
    data = np.asarray(hdul[number].data, dtype=np.float64).squeeze()
    flux = data if data.ndim == 1 else data[0]
    meta = _fits_meta(hdul, number)
    wave = _wcs_wavelength(path, meta, flux.size)
    ivar, mask = _quality(_companion_images(hdul, number, flux.size))
    part = _Part(0, _Arrays(wave, flux, ivar, mask), meta)
    return [_spectrum(path, "fits-image", part, identifier=Path(path).stem)]


def _read_lamost_image(path: PathArg, hdul: fits.HDUList, number: int, index: _Index) -> list[Spectrum]:
    """LAMOST DR1–5: a 5×N primary image, rows flux, inverse variance, wavelength, andmask, ormask."""
    _positions(path, index, 1)
    rows = np.asarray(hdul[number].data, dtype=np.float64).squeeze()
    meta = _fits_meta(hdul, number)
    wave = rows[2] if _usable_grid(rows[2]) else _wcs_wavelength(path, meta, rows.shape[1])
    mask = rows[3] != 0 if len(rows) > 3 else None
    part = _Part(0, _Arrays(wave, rows[0], rows[1], mask), meta)
    return [_spectrum(path, "lamost-image", part, identifier=_lamost_id(part, path))]


def _read_fits_tables(
    path: PathArg,
    hdul: fits.HDUList,
    number: int,
    index: _Index,
    *,
    fmt: str,
    identify: Callable[[_Part, PathArg], str],
) -> Iterator[Spectrum]:
    """fits-table, fits-multi and lamost-table share the table walk and differ only in the identifier."""
    for part in _table_parts(path, hdul, number, index):
        yield _spectrum(path, fmt, part, identifier=identify(part, path))


def _read_sdss(path: PathArg, hdul: fits.HDUList, number: int, index: _Index) -> Iterator[Spectrum]:
    """SDSS spec-PLATE-MJD-FIBER: COADD table (loglam, flux, ivar, and_mask, wdisp) + SPALL/SPECOBJ row."""
    for part in _table_parts(path, hdul, number, index):
        part.meta = {"bunit": SDSS_FLUX_UNIT} | part.meta | _sdss_object_row(hdul)
        yield (
            _spectrum(
                path,
                "sdss",
                part,
                identifier=_sdss_id(part, path),
                medium="vacuum",
                target_name=_text(
                    part.meta, ("object",)
                ),  # the header's NAME is plate-mjd-cart, not a target
                resolving_power=_sdss_resolving_power(part.columns),
            )
        )


def _table_parts(path: PathArg, hdul: fits.HDUList, number: int, index: _Index) -> Iterator[_Part]:
    """Spectra of a binary table: one row per pixel (one spectrum) or array cells (one per row).

    Rows of array cells are read a block at a time, so a walk over the whole table holds one block.
    """
    hdu = hdul[number]
    layout = _layout(hdu)
    names, units = layout.names, layout.units
    header_meta = _fits_meta(hdul, number)
    width = _repeat(hdu, _pick(names, _FLUX_NAMES) or names[0])
    if width <= 1:
        _positions(path, index, 1)
        columns = {name: np.asarray(hdu.data.field(name)) for name in names}
        yield _Part(0, _arrays_from_columns(path, columns, units), header_meta, {}, units, columns)
        return
    wave = _pick(names, _WAVE_NAMES + _LOGWAVE_NAMES)
    grid = (
        None
        if wave and _repeat(hdu, wave) == width
        else _hdu_fact(hdu, ("grid", width), lambda: _shared_grid(path, hdul, number, width))
    )
    shared = None if grid is None else _SharedGrid(grid)
    positions = _positions(path, index, hdu.header["NAXIS2"])
    for first, rows in _row_blocks(path, hdul, number, positions):
        fields = {name: rows.field(name) for name in names}
        for offset in range(len(rows)):
            columns, row = {}, {}
            for name, values in fields.items():
                value = values[offset]
                if np.ndim(value) >= 1:
                    columns[name] = np.asarray(value)
                else:
                    row[name.lower()] = _scalar(value)
            arrays = _arrays_from_columns(path, columns, units, wave=shared)
            yield _Part(first + offset, arrays, header_meta | row, row, units, columns)


def _row_blocks(
    path: PathArg, hdul: fits.HDUList, number: int, positions: range | list[int]
) -> Iterator[tuple[int, fits.FITS_rec]]:
    """The table rows at ``positions`` (consecutive) in blocks, each with the position of its first row.

    astropy's ``hdu.data`` converts logical (L) columns on first access and so reads every row of a
    memory-mapped table; an HDU built from a block's bytes alone keeps one index of a 1 GB table cheap
    and a walk over all of it within one block of memory. Compressed files and tables with a heap
    (variable-length arrays) take the slow, plain way: slices of astropy's whole table.
    """
    if not positions:
        return
    hdu = hdul[number]
    width = hdu.header["NAXIS1"]
    step = max(1, min(CHUNK_ROWS, CHUNK_BYTES // max(width, 1)))
    end = positions[-1] + 1
    starts = range(positions[0], end, step)
    with open(path, "rb") as stream:
        if stream.read(len(_FITS_MAGIC)) != _FITS_MAGIC or hdu.header.get("PCOUNT", 0):
            for start in starts:
                yield start, hdu.data[start : min(start + step, end)]
            return
        offset = _hdu_fact(hdu, ("offset",), lambda: hdul.fileinfo(number)["datLoc"])
        codec = _hdu_fact(hdu, ("codec",), lambda: _row_codec(hdu))
        heads: dict[int, bytes] = {}  # the block header for each block length (at most two of them)
        for start in starts:
            count = min(step, end - start)
            if codec is not None:  # plain columns: the rows decoded from their bytes
                stream.seek(offset + start * width)
                raw = stream.read(count * width)
                if len(raw) != count * width:
                    raise SpectrumReadError(path, f"truncated FITS file (rows from {start} on are cut off)")
                yield start, codec.decode(raw)
                continue
            if count not in heads:
                header = hdu.header.copy()
                header["NAXIS2"] = count
                heads[count] = header.tostring().encode("ascii")
            head, size = heads[count], count * width
            stream.seek(offset + start * width)
            raw = stream.read(size)
            if len(raw) != size:
                raise SpectrumReadError(path, f"truncated FITS file (rows from {start} on are cut off)")
            block = b"".join((head, raw, bytes(-size % _BLOCK)))  # astropy parses headers from bytes only
            del raw
            yield start, fits.BinTableHDU.fromstring(block, uint=True).data


#: Binary-table formats whose bytes are the values (big-endian), and logicals (T/F bytes), text.
_PLAIN_FORMATS = {"B": "u1", "I": ">i2", "J": ">i4", "K": ">i8", "E": ">f4", "D": ">f8", "A": "S", "L": "u1"}


@dataclass(frozen=True)
class _RowCodec:
    """How the bytes of a plain table's rows become the values astropy would give: numbers in native
    byte order, text stripped of trailing blanks, logicals as booleans."""

    raw: np.dtype
    values: np.dtype
    logical: tuple[str, ...]
    text: tuple[str, ...]

    def decode(self, raw: bytes) -> np.recarray:
        rows = np.frombuffer(raw, dtype=self.raw)
        out = np.empty(len(rows), dtype=self.values)
        for name in self.raw.names:
            if name in self.logical:
                out[name] = rows[name] == ord("T")
            elif name in self.text:
                out[name] = np.char.rstrip(np.char.decode(rows[name], "ascii", "replace"))
            else:
                out[name] = rows[name]
        return out.view(np.recarray)


def _row_codec(hdu: fits.BinTableHDU) -> _RowCodec | None:
    """The codec of a table whose columns are all plain numbers, text or logicals without scaling
    (else None: astropy converts). Decoding rows from their bytes skips astropy's per-open work of
    describing every column, most of the cost of reading one row of an archive table."""
    header = hdu.header
    layout = _layout(hdu)
    raw, values, logical, text = [], [], [], []
    for i, name in enumerate(layout.names, 1):
        repeat, letter = layout.repeats[name], layout.letters[name]
        if letter not in _PLAIN_FORMATS:
            return None
        dims = str(header.get(f"TDIM{i}", f"({repeat})")).replace(" ", "")
        if any(f"{key}{i}" in header for key in ("TSCAL", "TZERO")) or dims != f"({repeat})":
            return None
        code = _PLAIN_FORMATS[letter]
        shape = (repeat,) if repeat > 1 else ()
        if letter == "A":
            raw.append((name, f"S{repeat}"))
            values.append((name, f"U{repeat}"))
            text.append(name)
            continue
        raw.append((name, code, shape))
        values.append((name, "?" if letter == "L" else np.dtype(code).newbyteorder("="), shape))
        if letter == "L":
            logical.append(name)
    codec = _RowCodec(np.dtype(raw), np.dtype(values), tuple(logical), tuple(text))
    return codec if codec.raw.itemsize == header["NAXIS1"] else None


def _shared_grid(path: PathArg, hdul: fits.HDUList, number: int, width: int) -> np.ndarray | None:
    """The wavelength grid a table of array-valued spectra shares: another HDU's column, or a WCS."""
    for other, hdu in enumerate(hdul):
        if other == number or not _is_table(hdu):
            continue
        name = _pick(hdu.columns.names, _WAVE_NAMES + _LOGWAVE_NAMES)
        if name is None:
            continue
        values = hdu.data.field(name)
        if values.ndim == 2 and values.shape == (1, width):
            values = values[0]
        if values.shape == (width,):
            return _wave_column(path, {name: values}, {name: hdu.columns[name].unit or ""})
    for header in (hdul[number].header, hdul[0].header):
        wave = _wcs_wavelength(path, _header_meta(header), width, required=False)
        if wave is not None:
            return wave
    return None


def _companion_images(hdul: fits.HDUList, number: int, width: int) -> dict[str, np.ndarray]:
    """Image HDUs beside the flux, by EXTNAME (IVAR, ERROR, MASK...), that match its length."""
    return {
        hdu.name: np.asarray(hdu.data).squeeze()
        for other, hdu in enumerate(hdul)
        if other != number and hdu.name and _image_shape(hdu) == (width,)
    }


#: The header keywords of each open HDU that holds spectra, worked out once while its file stays open.
_METAS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _fits_meta(hdul: fits.HDUList, number: int) -> dict[str, Any]:
    """Primary header keywords, overridden by those of the HDU that holds the spectrum (a fresh dict)."""
    hdu = hdul[number]
    if hdu not in _METAS:
        meta = _header_meta(hdul[0].header)
        _METAS[hdu] = meta | _header_meta(hdu.header) if number else meta
    return dict(_METAS[hdu])


def _header_meta(header: fits.Header) -> dict[str, Any]:
    """Header keywords as a lower-case dict of plain scalars, without the FITS layout keywords."""
    meta = {}
    for key, value in header.items():
        scalar = _scalar(value)
        if scalar is not None and not _STRUCTURAL.match(key):
            meta[key.lower()] = scalar
    return meta


def _wcs_wavelength(
    path: PathArg, meta: Mapping[str, Any], width: int, *, required: bool = True
) -> np.ndarray | None:
    """Pixel → Å from a 1-D spectral WCS; when there is none, an error (or None if not ``required``).

    Linear by default; DC-FLAG=1 means log10 (SDSS, LAMOST); a CTYPE1 like 'WAVE-LOG' means the
    natural-log axis of FITS paper III; old SDSS files give log10 coefficients COEFF0/COEFF1.
    """
    pixel = np.arange(width, dtype=np.float64)
    ctype = str(meta.get("ctype1", "")).upper()
    start, step = _as_float(meta.get("crval1")), _as_float(_first(meta, ("cd1_1", "cdelt1")))
    c0, c1 = _as_float(meta.get("coeff0")), _as_float(meta.get("coeff1"))
    if start is not None and step is not None:
        reference = _as_float(meta.get("crpix1"))
        x = pixel + 1 - (1.0 if reference is None else reference)
        if _as_float(meta.get("dc-flag")) == 1:
            wave = 10 ** (start + step * x)
        elif "-LOG" in ctype:
            wave = start * np.exp(step * x / start)
        else:
            wave = start + step * x
    elif c0 is not None and c1 is not None:
        wave = 10 ** (c0 + c1 * pixel)
    elif required:
        raise SpectrumReadError(path, "no wavelength solution (CRVAL1 with CDELT1 or CD1_1)")
    else:
        return None
    return _wave_to_angstrom(path, wave, str(meta.get("cunit1", "")))


def _usable_grid(wave: np.ndarray) -> bool:
    """A wavelength row worth trusting: finite, positive and increasing."""
    return bool(np.all(np.isfinite(wave)) and np.all(wave > 0) and np.all(np.diff(wave) > 0))


def _sdss_object_row(hdul: fits.HDUList) -> dict[str, Any]:
    """The SPALL/SPECOBJ row of an SDSS spec file (plate, fiber, Z, CLASS, S/N...), lower-case keys."""
    hdu = next((hdu for hdu in hdul if hdu.name in _SDSS_OBJECT_HDUS and _is_table(hdu)), None)
    if hdu is None or not len(hdu.data):
        return {}
    row = hdu.data[0]
    return {name.lower(): _scalar(row[name]) for name in hdu.columns.names if np.ndim(row[name]) == 0}


def _sdss_id(part: _Part, path: PathArg) -> str:
    """sdss-PLATE-MJD-FIBER (SDSS-V: the field takes the plate's place); the file stem if incomplete."""
    plate = _as_int(_first(part.meta, ("plate", "plateid", "field", "fieldid")))
    mjd = _as_int(_first(part.meta, ("mjd",)))
    fiber = _as_int(_first(part.meta, ("fiberid", "fiber")))
    if None in (plate, mjd, fiber):
        return Path(path).stem
    return f"sdss-{plate}-{mjd}-{fiber}"


def _sdss_resolving_power(columns: Mapping[str, np.ndarray]) -> float | None:
    """Median R = λ/FWHM from ``wdisp``, the Gaussian σ of the line-spread function in log-λ pixels."""
    name = _pick(columns, ("wdisp",))
    if name is None:
        return None
    wdisp = np.asarray(columns[name], dtype=np.float64)
    good = wdisp[np.isfinite(wdisp) & (wdisp > 0)]
    if not good.size:
        return None
    fwhm_ln = 2 * math.sqrt(2 * math.log(2)) * float(np.median(good)) * SDSS_DLOGLAM * math.log(10)
    return 1.0 / fwhm_ln


def _lamost_id(part: _Part, path: PathArg) -> str:
    obsid = _text(part.meta, ("obsid",))
    return f"lamost-{obsid}" if obsid else Path(path).stem


def _stem_id(part: _Part, path: PathArg) -> str:
    return Path(path).stem


def _file_id(parts: list[_Part], part: _Part, path: PathArg) -> str:
    """The file stem for a file holding one spectrum, the row's id when it holds several."""
    return Path(path).stem if len(parts) == 1 else _row_id(part, path)


def _row_id(part: _Part, path: PathArg) -> str:
    """The row's own id column (miles_id, obsid, specid, id, name...), else stem-ROW."""
    return _text(part.row, _ID_KEYS) or f"{Path(path).stem}-{part.position}"


_FitsReader = Callable[[PathArg, fits.HDUList, int, int | None], Iterable[Spectrum]]
_FITS_READERS: dict[str, _FitsReader] = {
    "fits-image": _read_fits_image,
    "fits-table": partial(_read_fits_tables, fmt="fits-table", identify=_stem_id),
    "fits-multi": partial(_read_fits_tables, fmt="fits-multi", identify=_row_id),
    "sdss": _read_sdss,
    "lamost-image": _read_lamost_image,
    "lamost-table": partial(_read_fits_tables, fmt="lamost-table", identify=_lamost_id),
}


# ---------------------------------------------------------------------------------------------------
# VOTable and text readers


def _read_votable(path: PathArg, file: Path) -> list[Spectrum]:
    """IVOA Spectrum-DM VOTables (SSAP getData): axes by utype, else UCD, else column name."""
    with warnings.catch_warnings():  # astropy nags about every non-VOUnit unit, even with verify="ignore"
        warnings.simplefilter("ignore", u.UnitsWarning)
        document = vo.parse(str(file), verify="ignore", unit_format="generic")
    parts: list[_Part] = []
    for params, element in _vo_tables(document, []):
        fields = list(element.fields)
        if not fields:
            continue
        table = element.to_table(use_names_over_ids=True)
        roles = _vo_roles(fields, table.colnames)
        if "flux" not in roles and _pick(table.colnames, _FLUX_NAMES) is None:
            continue  # a metadata table beside the spectrum
        units = {name: _unit_text(f.unit) for name, f in zip(table.colnames, fields, strict=True)}
        for part in _astropy_parts(path, table, _vo_meta(params), units, roles):
            part.position = len(parts)
            parts.append(part)
    if not parts:
        raise SpectrumReadError(path, "VOTable without a spectrum (no spectral-axis and flux fields)")
    return [_spectrum(path, "votable-sdm", part, identifier=_vo_id(parts, part, path)) for part in parts]


def _vo_tables(container: Any, inherited: list[Any]) -> Iterator[tuple[list[Any], Any]]:
    """Each TABLE of a VOTable with the PARAMs that apply to it (its own, its groups', its resources')."""
    params = inherited + list(getattr(container, "params", []))
    for group in getattr(container, "groups", []):
        params += list(group.iter_fields_and_params())
    for table in getattr(container, "tables", []):
        own = [p for p in table.iter_fields_and_params() if isinstance(p, vo.tree.Param)]
        yield params + own, table
    for resource in getattr(container, "resources", []):
        yield from _vo_tables(resource, params)


def _vo_id(parts: list[_Part], part: _Part, path: PathArg) -> str:
    """The publisher's (or creator's) dataset id when the VOTable gives one."""
    return _text(part.meta, ("publisher_did", "creator_did")) or _file_id(parts, part, path)


def _utype(text: str | None) -> str:
    """A utype without namespace prefix and leading 'Spectrum.', lower case: 'fluxaxis.value'-style."""
    tail = (text or "").split(":")[-1].lower()
    return tail.removeprefix("spectrum.")


def _vo_roles(fields: list[Any], names: list[str]) -> dict[str, str]:
    """Column names of the spectral axis, flux, error and quality: by utype first, UCDs fill the gaps."""
    roles: dict[str, str] = {}
    for name, f in zip(names, fields, strict=True):
        if role := _utype_role(_utype(f.utype)):
            roles.setdefault(role, name)
    for name, f in zip(names, fields, strict=True):
        if (role := _ucd_role((f.ucd or "").lower())) and name not in roles.values():
            roles.setdefault(role, name)
    return roles


def _utype_role(utype: str) -> str | None:
    for suffix, role in (
        ("spectralaxis.value", "wave"),
        ("fluxaxis.value", "flux"),
        ("fluxaxis.accuracy.staterror", "error"),
        ("fluxaxis.quality", "mask"),
    ):
        if utype.endswith(suffix):
            return role
    return None


def _ucd_role(ucd: str) -> str | None:
    primary = ucd.split(";")[0]  # 'stat.error;phot.flux.density' is an error, not a flux
    if primary.startswith(("em.wl", "em.freq", "em.energy")):
        return "wave"
    if primary.startswith(("phot.flux", "phot.fluxdens")):
        return "flux"
    if primary == "stat.error" and "phot.flux" in ucd:
        return "error"
    if primary.startswith("meta.code.qual"):
        return "mask"
    return None


def _vo_meta(params: Iterable[Any]) -> dict[str, Any]:
    """PARAMs by name, plus Spectrum-DM utypes translated into the keywords the FITS readers use."""
    meta: dict[str, Any] = {}
    for param in params:
        utype, value = _utype(param.utype), param.value
        if utype in _UTYPE_POSITIONS and np.size(value) == 2:
            meta["ra"], meta["dec"] = (float(v) for v in np.ravel(value))
        scalar = _scalar(value)
        if scalar is None:
            continue
        meta[str(param.name).lower()] = scalar
        if utype in _UTYPE_META:
            meta[_UTYPE_META[utype]] = scalar
    return meta


def _read_text(path: PathArg, file: Path) -> list[Spectrum]:
    """CSV, ECSV and other ASCII tables astropy can guess; headerless columns mean wave, flux, error."""
    with file.open("rb") as stream:
        is_ecsv = stream.read(_HEAD_BYTES).lstrip().startswith(b"# %ECSV")
    try:
        table = Table.read(file, format="ascii.ecsv") if is_ecsv else _read_ascii(file)
    except (InconsistentTableError, ValueError) as exc:
        raise SpectrumReadError(path, "text without a readable table of wavelength and flux") from exc
    if all(re.fullmatch(r"col\d+", name) for name in table.colnames) and 2 <= len(table.colnames) <= 3:
        table.rename_columns(table.colnames, ["wavelength", "flux", "error"][: len(table.colnames)])
    units = {name: _unit_text(table[name].unit) for name in table.colnames}
    meta = {str(k).lower(): s for k, v in table.meta.items() if (s := _scalar(v)) is not None}
    parts = _astropy_parts(path, table, meta, units, {})
    return [_spectrum(path, "csv", part, identifier=_file_id(parts, part, path)) for part in parts]


def _read_ascii(file: Path) -> Table:
    """Plain CSV with a header line through astropy's fast CSV reader; anything else (no header, other
    delimiters, a commented header) by astropy's format guessing, which tries some twenty readers in
    turn and so costs a hundred milliseconds for an upload of a few thousand pixels."""
    try:
        table = Table.read(file, format="ascii.csv")
    except (InconsistentTableError, ValueError):
        table = None
    if table is not None and len(table.colnames) >= 2 and not any(map(_is_number, table.colnames)):
        return table
    return Table.read(file, format="ascii")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _astropy_parts(
    path: PathArg, table: Table, meta: dict[str, Any], units: dict[str, str], roles: Mapping[str, str]
) -> list[_Part]:
    """Spectra of an astropy Table: one per table if rows are pixels, one per row if cells hold arrays."""
    flux = roles.get("flux") or _pick(table.colnames, _FLUX_NAMES)
    if flux is None:
        raise SpectrumReadError(path, f"no flux column among {table.colnames}")
    if table[flux].ndim == 1:
        columns = {name: _filled(table[name]) for name in table.colnames}
        return [_Part(0, _arrays_from_columns(path, columns, units, roles=roles), meta, {}, units, columns)]
    parts = []
    for position, record in enumerate(table):
        columns = {name: _filled(record[name]) for name in table.colnames if np.ndim(record[name]) >= 1}
        row = {name.lower(): _scalar(record[name]) for name in table.colnames if name not in columns}
        arrays = _arrays_from_columns(path, columns, units, roles=roles)
        parts.append(_Part(position, arrays, meta | row, row, units, columns))
    return parts


def _filled(values: Any) -> np.ndarray:
    """A plain array from a (masked) column: masked floats become NaN, other masked values 0."""
    if np.ma.isMaskedArray(values):
        kind = values.dtype.kind
        return values.astype(np.float64).filled(np.nan) if kind in "fiu" else values.filled(0)
    return np.asarray(values)


def _select(path: PathArg, spectra: list[Spectrum], index: _Index) -> list[Spectrum]:
    return [spectra[i] for i in _positions(path, index, len(spectra))]


def _positions(path: PathArg, index: _Index, count: int) -> range | list[int]:
    """All positions of a file holding ``count`` spectra, or just ``index`` (a position or a range of
    them) after a range check."""
    if index is None:
        return range(count)
    if isinstance(index, range):
        if not 0 <= index.start < index.stop <= count:
            raise SpectrumReadError(
                path, f"rows {index.start} to {index.stop - 1} out of range: the file holds {count} spectra"
            )
        return index
    if not 0 <= index < count:
        raise SpectrumReadError(path, f"index {index} out of range: the file holds {count} spectra")
    return [index]


# ---------------------------------------------------------------------------------------------------
# shared: columns → arrays


def _norm(name: str) -> str:
    """Compare names the way people vary them: 'T_EFF', '[Fe/H]', 'and_mask' → 'teff', 'feh', 'andmask'."""
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def _split_unit(name: str) -> tuple[str, str]:
    """'wavelength[nm]', 'flux (Jy)' or 'wavelength_nm' → (base name, unit text); no unit → ''."""
    for pattern in (_BRACKET_UNIT, _SUFFIX_UNIT):
        match = pattern.match(name)
        if match:
            return match.group(1), match.group(2)
    return name, ""


def _pick(names: Iterable[str], candidates: tuple[str, ...]) -> str | None:
    """The name that best matches a candidate, ignoring case, punctuation and a unit suffix."""
    return _pick_among(tuple(names), candidates)


@lru_cache(maxsize=1024)
def _pick_among(names: tuple[str, ...], candidates: tuple[str, ...]) -> str | None:
    """:func:`_pick`, cached: every row of a table asks the same question of the same columns."""
    by_norm: dict[str, str] = {}
    for name in names:
        by_norm.setdefault(_norm(_split_unit(name)[0]), name)
    return next((by_norm[c] for c in candidates if c in by_norm), None)


def _column_unit(units: Mapping[str, str], name: str) -> str:
    return units.get(name) or _split_unit(name)[1]


def _wave_column(
    path: PathArg, columns: Mapping[str, np.ndarray], units: Mapping[str, str], name: str | None = None
) -> np.ndarray | None:
    """Wavelength in Å from a wavelength (any spectral unit) or log10-Å column; None if there is none."""
    name = name or _pick(columns, _WAVE_NAMES)
    if name is not None:
        return _wave_to_angstrom(path, columns[name], _column_unit(units, name))
    name = _pick(columns, _LOGWAVE_NAMES)
    if name is not None:
        return 10 ** np.asarray(columns[name], dtype=np.float64)
    return None


def _wave_to_angstrom(path: PathArg, values: Any, unit: str) -> np.ndarray:
    """Spectral coordinates in Å; 'A' and 'Angstroms' mean Ångström here, not ampere."""
    text = unit.strip()
    if text.lower() in _ANGSTROM_SPELLINGS:
        text = "Angstrom"
    try:
        return to_angstrom(np.asarray(values, dtype=np.float64), text or None)
    except (ValueError, TypeError, u.UnitsError) as exc:
        raise SpectrumReadError(path, f"wavelength unit {unit!r} is not a spectral unit") from exc


def _arrays_from_columns(
    path: PathArg,
    columns: Mapping[str, np.ndarray],
    units: Mapping[str, str],
    *,
    roles: Mapping[str, str] | None = None,
    wave: np.ndarray | _SharedGrid | None = None,
) -> _Arrays:
    """Wavelength, flux, inverse variance and mask out of named columns, whatever the naming convention."""
    roles = roles or {}
    flux = roles.get("flux") or _pick(columns, _FLUX_NAMES)
    if flux is None:
        raise SpectrumReadError(path, f"no flux column among {list(columns)}")
    if wave is None:
        wave = _wave_column(path, columns, units, roles.get("wave"))
    if wave is None:
        raise SpectrumReadError(path, f"no wavelength column among {list(columns)}")
    ivar, mask = _quality(columns, roles)
    return _Arrays(wave, np.asarray(columns[flux]), ivar, mask, _column_unit(units, flux))


def _quality(
    columns: Mapping[str, np.ndarray], roles: Mapping[str, str] | None = None
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Inverse variance (from IVAR, VARIANCE or ERROR; zero where unknown) and bad-pixel mask (≠ 0)."""
    roles = roles or {}
    ivar = None
    if name := _pick(columns, _IVAR_NAMES):
        ivar = np.asarray(columns[name], dtype=np.float64)
    elif name := _pick(columns, _VAR_NAMES):
        ivar = _reciprocal(columns[name])
    elif name := roles.get("error") or _pick(columns, _ERR_NAMES):
        ivar = _reciprocal(np.asarray(columns[name], dtype=np.float64) ** 2)
    name = roles.get("mask") or _pick(columns, _MASK_NAMES)
    mask = np.asarray(columns[name]) != 0 if name else None
    return ivar, mask


def _reciprocal(values: Any) -> np.ndarray:
    """1/x where x is finite and positive, 0 elsewhere: an error of 0 carries no information."""
    values = np.asarray(values, dtype=np.float64)
    out = np.zeros_like(values)
    np.divide(1.0, values, out=out, where=np.isfinite(values) & (values > 0))
    return out


# ---------------------------------------------------------------------------------------------------
# shared: validation and metadata


def _spectrum(path: PathArg, fmt: str, part: _Part, **fields: Any) -> Spectrum:
    """Validate the arrays, fill the shared metadata, apply the reader's own fields, stamp the source."""
    wave, flux, ivar, mask = _validated(path, part.arrays)
    values = _describe(part.meta, part.units)
    if part.arrays.flux_unit:
        values["flux_unit"] = part.arrays.flux_unit
    values.update(fields)
    return Spectrum(
        wavelength=wave,
        flux=flux,
        ivar=ivar,
        mask=mask,
        source=str(path),
        source_format=fmt,
        source_index=part.position,
        **values,
    )


def _validated(
    path: PathArg, arrays: _Arrays
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Check the arrays form one spectrum, sort it by wavelength, and mask the pixels without flux.

    The arrays returned are new (never views of the file's data), except a shared grid's wavelength,
    which is the grid's one read-only array.
    """
    grid = arrays.wave
    named = {
        "wavelength": grid.values if isinstance(grid, _SharedGrid) else grid,
        "flux": arrays.flux,
        "ivar": arrays.ivar,
        "mask": arrays.mask,
    }
    named = {key: np.asarray(value).squeeze() for key, value in named.items() if value is not None}
    shapes = {key: value.shape for key, value in named.items()}
    if any(len(shape) != 1 for shape in shapes.values()) or len(set(shapes.values())) != 1:
        raise SpectrumReadError(path, f"arrays do not form one spectrum (shapes {shapes})")
    if isinstance(grid, _SharedGrid):
        wave, descending = grid.checked(path)
    else:
        wave, descending = _checked_wave(path, named["wavelength"])
    if descending:
        named = {key: value[::-1] for key, value in named.items()}
    flux = named["flux"].astype(np.float64)
    if not np.isfinite(flux).any():
        raise SpectrumReadError(path, "flux has no finite value")
    ivar = named.get("ivar")
    if ivar is not None:
        ivar = ivar.astype(np.float64)
        ivar = np.where(np.isfinite(ivar) & (ivar > 0), ivar, 0.0)
    mask = named.get("mask")
    bad = ~np.isfinite(flux)
    if mask is not None or bad.any():
        mask = bad if mask is None else mask.astype(bool) | bad
    return wave, flux, ivar, mask


def _checked_wave(path: PathArg, wave: np.ndarray) -> tuple[np.ndarray, bool]:
    """A 1-D wavelength array as a new ascending float64 array, and whether the file gave it descending."""
    if wave.size < 2:
        raise SpectrumReadError(path, f"only {wave.size} pixel(s)")
    if not np.isfinite(wave).all():
        raise SpectrumReadError(path, "wavelength has non-finite values")
    step = np.diff(wave)
    descending = bool((step < 0).all())  # as frequency axes and some pipelines give it
    if not descending and not (step > 0).all():
        raise SpectrumReadError(path, "wavelength is not monotonic")
    return (wave[::-1] if descending else wave).astype(np.float64), descending


def _describe(meta: Mapping[str, Any], units: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The Spectrum fields every reader fills the same way from header keywords, params or columns."""
    return {
        "medium": _medium(meta),
        "ra": _angle(_first(meta, _RA_KEYS), hours=True),
        "dec": _angle(_first(meta, _DEC_KEYS), hours=False),
        "target_name": _text(meta, _TARGET_KEYS),
        "obs_time": _obs_time(meta),
        "exptime": _as_float(_first(meta, _EXPTIME_KEYS)),
        "resolving_power": _as_float(_first(meta, _RP_KEYS)),
        "instrument": _text(meta, _INSTRUMENT_KEYS),
        "flux_unit": _text(meta, ("bunit",)),
        "labels": _labels(meta, units),
        "extra": {key: value for key, value in meta.items() if _json_friendly(value)},
    }


def _labels(meta: Mapping[str, Any], units: Mapping[str, str] | None = None) -> dict[str, float]:
    """Physical labels from keywords/columns, whatever the spelling (TEFF, T_EFF, [Fe/H], M_H, VRAD...).

    A redshift becomes rv = z·c (km/s) only for stars (CLASS == 'STAR'); for galaxies and quasars
    it is no radial velocity and stays in ``extra``. Non-finite values are left out.
    """
    units_by_key = {str(k).lower(): v for k, v in (units or {}).items()}
    best: dict[str, tuple[int, float]] = {}
    for key, raw in meta.items():
        found = _alias(str(key))
        value = _as_float(raw) if found else None
        if found and value is not None and (found[0] not in best or found[1] < best[found[0]][0]):
            label, rank = found
            best[label] = (rank, _in_label_unit(label, value, units_by_key.get(str(key).lower(), "")))
    labels = {label: value for label, (_, value) in best.items()}
    z = _as_float(meta.get("z"))
    if "rv" not in labels and z is not None and _text(meta, ("class",)).upper() == "STAR":
        labels["rv"] = z * C_KMS
    return labels


#: Where a source writes a star's spectral type and its temperature class, in order of preference.
_SPECTRAL_TYPE_KEYS = ("sptype", "spectral_type", "spec_type", "sp_type", "spt", "mk_type")
_CLASS_KEYS = ("spclass", "target_class", "temperature_class")
#: The temperature class of an MK type: its first capital, after a subdwarf/dwarf/giant prefix, if a
#: subtype, a luminosity class, a lower-case qualifier or nothing follows (MILES' GB and HB, giant and
#: horizontal branch stars of clusters, are no MK types).
_TEMPERATURE_CLASS = re.compile(r"(?:sd|esd|usd|d|g)?([OBAFGKMLTY])(?=$|[\d.:?\sIVa-z(+-])")


def stellar_class(meta: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(temperature class, spectral type) of a star from its metadata, each None where absent.

    The class is the source's own (MILES ``spclass``) or else the first letter of an MK spectral type
    (``sdB`` → B, ``K1IV`` → K); other types (``DA`` white dwarfs, ``GB`` giant-branch stars) give none.
    """
    spectral_type = _text(meta, _SPECTRAL_TYPE_KEYS) or None
    target_class = _text(meta, _CLASS_KEYS) or None
    if target_class is None and spectral_type is not None:
        match = _TEMPERATURE_CLASS.match(spectral_type)
        target_class = match.group(1) if match else None
    return target_class, spectral_type


@lru_cache(maxsize=4096)
def _alias(key: str) -> tuple[str, int] | None:
    """The (label, rank) a keyword or column name stands for; cached, as every row of a table asks."""
    return _ALIAS_RANK.get(_norm(_split_unit(key)[0]))


def _in_label_unit(label: str, value: float, unit: str) -> float:
    """Radial velocities given in another velocity unit (m/s) become km/s; other labels stay as given."""
    if label != "rv" or not unit:
        return value
    scale = _kms_scale(unit)
    return value if scale is None else float(value * scale)


@lru_cache(maxsize=256)
def _kms_scale(unit: str) -> float | None:
    """km/s per one of ``unit``; None when it is no velocity unit. Cached: parsing a unit is slow."""
    try:
        return float((1.0 * u.Unit(unit)).to_value(u.km / u.s))
    except (ValueError, u.UnitsError):
        return None


def _medium(meta: Mapping[str, Any], default: str = "vacuum") -> str:
    """'air' or 'vacuum' from WAVEMED/AIRORVAC-style keywords, VACUUM=T/F, or CTYPE1 AWAV/WAVE."""
    for key in _MEDIUM_KEYS:
        text = str(meta.get(key, "")).strip().lower()
        if text.startswith("air"):
            return "air"
        if text.startswith("vac"):
            return "vacuum"
    vacuum = str(meta.get("vacuum", "")).strip().upper()  # LAMOST: VACUUM = T
    if vacuum in ("T", "TRUE"):
        return "vacuum"
    if vacuum in ("F", "FALSE"):
        return "air"
    ctype = str(meta.get("ctype1", "")).upper()
    if ctype.startswith("AWAV"):
        return "air"
    if ctype.startswith("WAVE"):
        return "vacuum"
    return default


def _obs_time(meta: Mapping[str, Any]) -> Time | None:
    """Observation time: MJD-OBS, a full DATE-OBS, SDSS TAI-BEG (TAI seconds), MJD, a bare date."""
    mjd = _as_float(_first(meta, ("mjd-obs", "mjd_obs")))
    if mjd is not None:
        return Time(mjd, format="mjd")
    date = _text(meta, ("date-obs", "date_obs", "dateobs"))
    if "T" in date:
        return _parse_time(date)
    tai = _as_float(meta.get("tai-beg"))
    if tai is not None:
        return Time(tai / 86400.0, format="mjd", scale="tai")
    mjd = _as_float(meta.get("mjd"))
    if mjd is not None:
        return Time(mjd, format="mjd")
    return _parse_time(date) if date else None


def _parse_time(text: str) -> Time | None:
    try:
        return Time(text)
    except ValueError:
        return None


def _angle(value: Any, *, hours: bool) -> float | None:
    """Degrees from a number or a sexagesimal string (hours for RA, degrees for Dec)."""
    number = _as_float(value)
    if number is not None or not isinstance(value, str) or not value.strip():
        return number
    try:
        return float(Angle(value, unit=u.hourangle if hours else u.deg).deg)
    except (ValueError, u.UnitsError):
        return None


def _first(meta: Mapping[str, Any], keys: Iterable[str]) -> Any:
    """The value of the first key that is present and not blank."""
    for key in keys:
        value = meta.get(key)
        if value is not None and value != "":
            return value
    return None


def _text(meta: Mapping[str, Any], keys: Iterable[str]) -> str:
    value = _first(meta, keys)
    return "" if value is None else str(value).strip()


def _scalar(value: Any) -> str | int | float | bool | None:
    """A plain Python scalar for metadata; None for arrays, masked or undefined values and odd types."""
    if value is np.ma.masked or isinstance(value, np.ndarray):
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    if isinstance(value, str):
        return value.strip()
    return value if isinstance(value, bool | int | float) else None


def _as_float(value: Any) -> float | None:
    """A finite float from a number or numeric string; None for blanks, booleans, NaN and text."""
    value = _scalar(value)
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _as_int(value: Any) -> int | None:
    number = _as_float(value)
    return int(number) if number is not None and number == int(number) else None


def _json_friendly(value: Any) -> bool:
    """Keep metadata that stores anywhere: non-empty strings, booleans, ints and finite floats."""
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, bool | int) or (isinstance(value, str) and value != "")


def _unit_text(unit: Any) -> str:
    if unit is None:
        return ""
    return unit.to_string() if hasattr(unit, "to_string") else str(unit)

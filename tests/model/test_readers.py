"""Readers: every supported layout written with astropy, read back, and checked value by value."""

from __future__ import annotations

import dataclasses
import gzip
import itertools
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.io import votable as vo
from astropy.table import Table

from model import readers
from model.readers import C_KMS, FORMATS, detect_format, iter_spectra, label_key, read_spectra, stellar_class
from model.spectrum import Spectrum, SpectrumReadError
from model.synthetic import SyntheticConfig, generate_spectra, write_fits_table

# The writers below trip astropy's style warnings (VOUnit spellings, a '[Fe/H]' column name) and the
# truncated file makes astropy warn before the reader refuses it; none of that is under test.
pytestmark = [
    pytest.mark.filterwarnings("ignore::astropy.units.UnitsWarning"),
    pytest.mark.filterwarnings("ignore:It is strongly recommended that column names"),
    pytest.mark.filterwarnings("ignore:File may have been truncated"),
]

N = 64
WAVE = np.linspace(4000.0, 4126.0, N)  # Å, step 2
FLUX = (1.0 + 0.1 * np.sin(WAVE / 7.0)).astype(np.float32)


def _only(path: Path, index: int | None = None) -> Spectrum:
    spectra = read_spectra(path, index)
    assert len(spectra) == 1
    return spectra[0]


# ------------------------------------------------------------------------------------------------
# fixture writers: miniature files with the real layouts and keyword names


def write_image(path: Path, data: np.ndarray | None = None, **header: object) -> Path:
    hdu = fits.PrimaryHDU(FLUX if data is None else data)
    hdu.header.update({"CRVAL1": 4000.0, "CDELT1": 2.0, **header})
    hdu.writeto(path)
    return path


def write_sdss(path: Path, cls: str = "STAR", z: float = 1e-4) -> Path:
    """spec-PLATE-MJD-FIBER.fits as SDSS DR8+ writes it: keyword-only primary, COADD, SPALL, SPZLINE."""
    loglam = np.float32(3.5800) + np.arange(N, dtype=np.float32) * np.float32(1e-4)
    primary = fits.PrimaryHDU()
    primary.header.update(
        {
            "TELESCOP": "SDSS 2.5-M",
            "PLATEID": 3586,
            "MJD": 55181,
            "FIBERID": 1,
            "NAME": "3586-55181-01",
            "PLUG_RA": 150.25,
            "PLUG_DEC": 2.5,
            "RA": 150.0,
            "DEC": 2.0,
            "TAI-BEG": 55181.25 * 86400.0,
            "EXPTIME": 2700.0,
            "AIRMASS": 1.19,
            "BUNIT": "1E-17 erg/cm^2/s/Ang",
        }
    )
    and_mask = np.zeros(N, np.int32)
    and_mask[5] = 1 << 24
    coadd = fits.BinTableHDU.from_columns(
        [
            fits.Column("flux", "E", array=FLUX),
            fits.Column("loglam", "E", array=loglam),
            fits.Column("ivar", "E", array=np.full(N, 4.0, np.float32)),
            fits.Column("and_mask", "J", array=and_mask),
            fits.Column("or_mask", "J", array=and_mask),
            fits.Column("wdisp", "E", array=np.full(N, 1.0, np.float32)),
            fits.Column("sky", "E", array=np.zeros(N, np.float32)),
            fits.Column("model", "E", array=FLUX),
        ],
        name="COADD",
    )
    spall = fits.BinTableHDU.from_columns(
        [
            fits.Column("PLATE", "J", array=[3586]),
            fits.Column("MJD", "J", array=[55181]),
            fits.Column("FIBERID", "J", array=[1]),
            fits.Column("PLUG_RA", "D", array=[150.25]),
            fits.Column("PLUG_DEC", "D", array=[2.5]),
            fits.Column("Z", "E", array=[z]),
            fits.Column("Z_ERR", "E", array=[1e-5]),
            fits.Column("CLASS", "6A", array=[cls]),
            fits.Column("SN_MEDIAN_ALL", "E", array=[23.5]),
            fits.Column("SN_MEDIAN", "5E", array=[[1.0] * 5]),
            fits.Column("OBJTYPE", "16A", array=["SPECTROPHOTO_STD"]),
        ],
        name="SPALL",
    )
    zline = fits.BinTableHDU.from_columns(
        [fits.Column("LINENAME", "13A", array=["Ly_alpha"])], name="SPZLINE"
    )
    fits.HDUList([primary, coadd, spall, zline]).writeto(path)
    return path


LAMOST_HEADER = {
    "TELESCOP": "LAMOST",
    "OBSID": 101001,
    "DESIG": "LAMOST J100000.00+020000.0",
    "OBJNAME": "3015101",
    "RA": 150.0,
    "DEC": 2.0,
    "MJD": 55859,
    "DATE-OBS": "2011-10-24T16:35:46.0",
    "EXPTIME": 1800.0,
    "Z": -5e-5,
    "CLASS": "STAR",
    "SNRU": 3.1,
    "SNRG": 20.5,
    "SNRR": 35.2,
    "SNRI": 40.0,
    "SNRZ": 30.0,
    "VACUUM": True,
}
LAMOST_LOG0, LAMOST_DLOG = 3.5682, 1e-4


def lamost_wave() -> np.ndarray:
    return 10 ** (LAMOST_LOG0 + LAMOST_DLOG * np.arange(N))


def write_lamost_image(path: Path) -> Path:
    """LAMOST DR1–5: 5×N primary image (flux, ivar, wavelength, andmask, ormask), log10 WCS."""
    andmask = np.zeros(N)
    andmask[7] = 4
    rows = np.vstack([FLUX, np.full(N, 9.0), lamost_wave(), andmask, andmask]).astype(np.float32)
    hdu = fits.PrimaryHDU(rows)
    hdu.header.update(
        {**LAMOST_HEADER, "CRVAL1": LAMOST_LOG0, "CD1_1": LAMOST_DLOG, "CRPIX1": 1, "DC-FLAG": 1}
    )
    hdu.writeto(path)
    return path


def write_lamost_table(path: Path, ivar_length: int = N) -> Path:
    """LAMOST DR6+: keyword-only primary, HDU1 'COADD' with one row of array columns."""
    primary = fits.PrimaryHDU()
    primary.header.update(LAMOST_HEADER)
    andmask = np.zeros(N, np.int32)
    andmask[7] = 4
    columns = [
        fits.Column("FLUX", f"{N}E", array=[FLUX]),
        fits.Column("IVAR", f"{ivar_length}E", array=[np.full(ivar_length, 9.0)]),
        fits.Column("WAVELENGTH", f"{N}D", array=[lamost_wave()]),
        fits.Column("ANDMASK", f"{N}J", array=[andmask]),
        fits.Column("ORMASK", f"{N}J", array=[andmask]),
        fits.Column("NORMALIZATION", f"{N}E", array=[FLUX]),
    ]
    fits.HDUList([primary, fits.BinTableHDU.from_columns(columns, name="COADD")]).writeto(path)
    return path


def write_pixel_table(path: Path) -> Path:
    """One row per pixel, wavelength in nm and descending, errors with a zero, a NaN flux pixel."""
    flux = FLUX.astype(np.float64)
    flux[3] = np.nan
    error = np.full(N, 0.5)
    error[10] = 0.0
    table = Table({"WAVE": WAVE[::-1] / 10.0, "FLUX": flux[::-1], "ERR": error[::-1]})
    table["WAVE"].unit = "nm"
    hdu = fits.table_to_hdu(table)
    hdu.header["AIRORVAC"] = "air"
    hdu.header["OBJECT"] = "HD 12345"
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path)
    return path


def write_row_table(path: Path) -> Path:
    """One row whose cells hold the whole spectrum (as SDSS-V and other pipelines write)."""
    columns = [
        fits.Column("wavelength", f"{N}D", array=[WAVE], unit="Angstrom"),
        fits.Column("flux", f"{N}E", array=[FLUX], unit="erg/s/cm2/Angstrom"),
        fits.Column("ivar", f"{N}E", array=[np.full(N, 2.0)]),
        fits.Column("mask", f"{N}B", array=[np.eye(1, N, 2, dtype=np.uint8)[0]]),
        fits.Column("TEFF", "E", array=[5777.0]),
        fits.Column("VSINI", "E", array=[2.0]),
    ]
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(columns)]).writeto(path)
    return path


def write_multi(path: Path) -> Path:
    """Many spectra on a grid given in the primary header (CRVAL1/CDELT1/NPIX), labels per row."""
    primary = fits.PrimaryHDU()
    primary.header.update({"CRVAL1": 4000.0, "CDELT1": 2.0, "NPIX": N, "WAVEMED": "air"})
    flux = np.vstack([FLUX * (i + 1) for i in range(3)])
    columns = [
        fits.Column("specid", "4A", array=["s-a", "s-b", "s-c"]),
        fits.Column("T_EFF", "D", array=[5000.0, np.nan, 6000.0]),
        fits.Column("LOG_G", "D", array=[4.5, 2.0, 4.0]),
        fits.Column("[Fe/H]", "D", array=[0.0, -1.0, 0.2]),
        fits.Column("flagged", "L", array=[False, True, False]),
        fits.Column("n_bad", "I", bzero=32768, array=np.array([1, 2, 40000], np.uint16)),
        fits.Column("flux", f"{N}E", array=flux),
        fits.Column("error", f"{N}E", array=np.full((3, N), 0.1)),
    ]
    fits.HDUList([primary, fits.BinTableHDU.from_columns(columns, name="SPECTRA")]).writeto(path)
    return path


def write_votable_sdm(path: Path) -> Path:
    """What an SSAP getData returns: fields found by Spectrum-DM utypes (names deliberately unhelpful)."""
    table = Table({"X1": WAVE / 10.0, "X2": FLUX.astype(np.float64), "X3": np.full(N, 0.25)})
    document = vo.from_table(table)
    element = document.get_first_table()
    for f, utype, unit in zip(
        element.fields,
        ("Data.SpectralAxis.Value", "Data.FluxAxis.Value", "Data.FluxAxis.Accuracy.StatError"),
        ("nm", "erg/(s cm2 Angstrom)", "erg/(s cm2 Angstrom)"),
        strict=True,
    ):
        f.utype, f.unit = f"spec:Spectrum.{utype}", unit
    element.params.extend(
        [
            vo.tree.Param(
                document,
                name="TargetName",
                datatype="char",
                arraysize="*",
                value="HD 1234",
                utype="spec:Spectrum.Target.Name",
            ),
            vo.tree.Param(
                document,
                name="TargetPos",
                datatype="double",
                arraysize="2",
                value=[10.5, -20.25],
                utype="spec:Spectrum.Target.Pos",
            ),
            vo.tree.Param(
                document,
                name="DID",
                datatype="char",
                arraysize="*",
                value="ivo://demo/spec?42",
                utype="spec:Spectrum.Curation.PublisherDID",
            ),
            vo.tree.Param(
                document,
                name="MJD",
                datatype="double",
                value=55000.5,
                utype="spec:Spectrum.Char.TimeAxis.Coverage.Location.Value",
            ),
            vo.tree.Param(document, name="TEFF", datatype="double", value=5800.0),
        ]
    )
    document.to_xml(str(path))
    return path


def write_votable_ucd(path: Path) -> Path:
    """No utypes, only UCDs; a frequency axis in Hz (descending wavelength once converted)."""
    nu = 2.99792458e18 / WAVE  # Hz, decreasing with wavelength: the file runs ascending in frequency
    table = Table({"nu": nu[::-1], "f": FLUX[::-1].astype(np.float64)})
    document = vo.from_table(table)
    element = document.get_first_table()
    element.fields[0].ucd, element.fields[0].unit = "em.freq", "Hz"
    element.fields[1].ucd = "phot.flux.density;em.freq"
    document.to_xml(str(path))
    return path


def write_votable_plain(path: Path) -> Path:
    vo.from_table(Table({"wavelength": WAVE, "flux": FLUX, "error": np.full(N, 0.5)})).to_xml(str(path))
    return path


def write_csv(path: Path) -> Path:
    rows = "\n".join(f"{w / 10:.4f},{f:.6f},0.5" for w, f in zip(WAVE, FLUX, strict=True))
    path.write_text(f"wavelength[nm],flux,error\n{rows}\n")
    return path


def write_ecsv(path: Path) -> Path:
    table = Table({"wave": WAVE / 1e4, "flux": FLUX, "ivar": np.full(N, 3.0)})
    table["wave"].unit = "micron"
    table.meta.update({"WAVEMED": "air", "OBJECT": "Vega", "TEFF": 9600.0})
    table.write(path, format="ascii.ecsv")
    return path


def write_headerless(path: Path) -> Path:
    path.write_text("".join(f"{w} {f}\n" for w, f in zip(WAVE, FLUX, strict=True)))
    return path


WRITERS: dict[str, tuple[Callable[[Path], Path], str, str]] = {
    "image": (write_image, "spectrum.fits", "fits-image"),
    "sdss": (write_sdss, "spec-3586-55181-0001.fits", "sdss"),
    "lamost-image": (write_lamost_image, "spec-55859-F5902_sp01-001.fits", "lamost-image"),
    "lamost-table": (write_lamost_table, "spec-57000-HD1_sp01-001.fits", "lamost-table"),
    "pixel-table": (write_pixel_table, "pixels.fits", "fits-table"),
    "row-table": (write_row_table, "row.fits", "fits-table"),
    "multi": (write_multi, "library.fits", "fits-multi"),
    "votable-sdm": (write_votable_sdm, "ssap.xml", "votable-sdm"),
    "votable-ucd": (write_votable_ucd, "ucd.vot", "votable-sdm"),
    "votable-plain": (write_votable_plain, "plain.xml", "votable-sdm"),
    "csv": (write_csv, "spectrum.csv", "csv"),
    "ecsv": (write_ecsv, "spectrum.ecsv", "csv"),
    "headerless": (write_headerless, "spectrum.txt", "csv"),
}


@pytest.fixture(params=sorted(WRITERS))
def written(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, str]:
    writer, name, fmt = WRITERS[request.param]
    return writer(tmp_path / name), fmt


# ------------------------------------------------------------------------------------------------
# every format: detection, source stamping, round trip


def test_detect_format_by_content(written: tuple[Path, str]) -> None:
    path, fmt = written
    assert fmt in FORMATS
    assert detect_format(path) == fmt
    assert detect_format(str(path)) == fmt


def test_round_trip_through_source_and_index(written: tuple[Path, str]) -> None:
    path, fmt = written
    spectra = read_spectra(path)
    assert spectra
    for position, spectrum in enumerate(spectra):
        assert (spectrum.source, spectrum.source_format, spectrum.source_index) == (str(path), fmt, position)
        again = _only(Path(spectrum.source), spectrum.source_index)
        assert again.identifier == spectrum.identifier
        assert again.labels == spectrum.labels and again.extra == spectrum.extra
        np.testing.assert_array_equal(again.wavelength, spectrum.wavelength)
        np.testing.assert_array_equal(again.flux, spectrum.flux)
        assert np.all(np.diff(spectrum.wavelength) > 0)
        assert spectrum.wavelength.dtype == np.float64


def test_iter_spectra_matches_read_spectra(tmp_path: Path) -> None:
    path = write_multi(tmp_path / "library.fits")
    assert [s.identifier for s in iter_spectra(path)] == [s.identifier for s in read_spectra(path)]


def test_reads_by_index_keep_files_open_and_see_a_replaced_file(tmp_path: Path) -> None:
    """Rows read by index come from a file held open (bounded), and a file rewritten under the same
    name is read afresh, not from the handle of the old one."""
    path = tmp_path / "table.fits"
    write_fits_table(path, 6, seed=1, config=SyntheticConfig(n_pixels=400))
    first = read_spectra(path, index=4)[0]
    assert read_spectra(path, index=4)[0].identifier == first.identifier
    np.testing.assert_array_equal(read_spectra(path, index=4)[0].flux, first.flux)
    replacement = tmp_path / "other.fits"
    write_fits_table(replacement, 6, seed=2, config=SyntheticConfig(n_pixels=400))
    replacement.replace(path)
    again = read_spectra(path, index=4)[0]
    assert not np.array_equal(again.flux, first.flux)
    np.testing.assert_array_equal(again.flux, list(iter_spectra(path))[4].flux)
    for number in range(readers.OPEN_FILES + 3):
        other = tmp_path / f"table-{number}.fits"
        write_fits_table(other, 2, seed=number, config=SyntheticConfig(n_pixels=100))
        read_spectra(other, index=1)
    assert len(readers._OPEN_FILES.entries) == readers.OPEN_FILES
    with pytest.raises(SpectrumReadError, match="index 9"):
        read_spectra(path, index=9)


@pytest.mark.parametrize(
    ("name", "label"),
    [
        ("TEFF", "teff"),
        ("T_EFF", "teff"),
        ("teff[K]", "teff"),
        ("LOG_G", "logg"),
        ("[Fe/H]", "feh"),
        ("M_H", "feh"),
        ("VRAD", "rv"),
        ("RADIAL_VELOCITY", "rv"),
        ("SN_MEDIAN_ALL", "snr"),
        ("SNRR", "snr"),
        ("vsini", "vsini"),
        ("AIRMASS", "airmass"),
        ("Z", "z"),
        ("Colour", "colour"),
        ("SNRG", "snrg"),
    ],
)
def test_label_key(name: str, label: str) -> None:
    """Known spellings map to the KNOWN_LABELS name, anything else keeps its own (lower-case) name."""
    assert label_key(name) == label


@pytest.mark.parametrize(
    ("meta", "expected"),
    [
        ({"sptype": "K1IV", "spclass": "K"}, ("K", "K1IV")),  # MILES gives both
        ({"sptype": "K0.5IIIb", "spclass": ""}, ("K", "K0.5IIIb")),  # the class read from the type
        ({"spectral_type": "sdB"}, ("B", "sdB")),
        ({"spt": "dM3.5e"}, ("M", "dM3.5e")),
        ({"sptype": "Fw"}, ("F", "Fw")),
        ({"sptype": "GB", "spclass": ""}, (None, "GB")),  # MILES' giant-branch cluster stars
        ({"sptype": "DA"}, (None, "DA")),  # white dwarfs have no temperature class
        ({"target_class": "star"}, ("star", None)),
        ({"teff": 5000.0}, (None, None)),
    ],
)
def test_stellar_class(meta: dict, expected: tuple) -> None:
    assert stellar_class(meta) == expected


def test_label_preference_and_units(tmp_path: Path) -> None:
    """[Fe/H] beats [M/H] whatever the column order; an RV in m/s becomes km/s."""
    path = tmp_path / "row.fits"
    fits.BinTableHDU.from_columns(
        [
            fits.Column("WAVE", f"{N}D", array=[WAVE]),
            fits.Column("FLUX", f"{N}E", array=[FLUX]),
            fits.Column("M_H", "E", array=[-0.5]),
            fits.Column("FE_H", "E", array=[-0.2]),
            fits.Column("VRAD", "E", array=[1500.0], unit="m/s"),
        ]
    ).writeto(path)
    labels = _only(path).labels
    assert labels["feh"] == pytest.approx(-0.2) and labels["rv"] == pytest.approx(1.5)


def test_format_renamed_still_detected(tmp_path: Path) -> None:
    """Detection reads content: a FITS spectrum called .csv and a CSV called .fits both work."""
    fits_as_csv = write_image(tmp_path / "image.csv")
    csv_as_fits = write_csv(tmp_path / "table.fits")
    assert detect_format(fits_as_csv) == "fits-image"
    assert detect_format(csv_as_fits) == "csv"


def test_gzipped_fits(tmp_path: Path) -> None:
    plain = write_image(tmp_path / "star.fits").read_bytes()
    packed = tmp_path / "star.fits.gz"
    packed.write_bytes(gzip.compress(plain))
    assert detect_format(packed) == "fits-image"
    np.testing.assert_allclose(_only(packed).wavelength, WAVE)


# ------------------------------------------------------------------------------------------------
# FITS images


def test_fits_image_linear_wcs_and_header_metadata(tmp_path: Path) -> None:
    path = write_image(
        tmp_path / "star.fits",
        CRPIX1=11.0,
        BUNIT="erg/s/cm2/A",
        OBJECT="HD 1",
        RA="10:00:00",
        DEC="-05:30:00",
        EXPTIME=600.0,
        T_EFF=5100.0,
        LOG_G=2.5,
        FE_H=-0.3,
        INSTRUME="UVES",
        VSINI=4.0,
        AIRMASS=1.3,
        **{"DATE-OBS": "2020-01-02T03:04:05"},
    )
    s = _only(path)
    np.testing.assert_allclose(s.wavelength, 4000.0 + 2.0 * (np.arange(N) + 1 - 11))
    np.testing.assert_allclose(s.flux, FLUX)
    assert s.identifier == "star"
    assert s.medium == "vacuum" and s.ivar is None and s.mask is None
    assert s.flux_unit == "erg/s/cm2/A" and s.target_name == "HD 1" and s.instrument == "UVES"
    assert s.ra == pytest.approx(150.0) and s.dec == pytest.approx(-5.5)
    assert s.exptime == 600.0 and s.obs_time.isot.startswith("2020-01-02T03:04:05")
    assert s.labels == pytest.approx({"teff": 5100.0, "logg": 2.5, "feh": -0.3, "vsini": 4.0, "airmass": 1.3})
    assert s.extra["bunit"] == "erg/s/cm2/A" and "naxis1" not in s.extra


def test_fits_image_in_nm_air(tmp_path: Path) -> None:
    s = _only(write_image(tmp_path / "nm.fits", CRVAL1=400.0, CDELT1=0.2, CUNIT1="nm", CTYPE1="AWAV"))
    np.testing.assert_allclose(s.wavelength, WAVE)
    assert s.medium == "air"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ({"CRVAL1": 3.6, "CDELT1": 1e-4, "DC-FLAG": 1}, 10 ** (3.6 + 1e-4 * np.arange(N))),
        (
            {"CRVAL1": 4000.0, "CDELT1": 0.5, "CTYPE1": "WAVE-LOG"},
            4000.0 * np.exp(0.5 * np.arange(N) / 4000.0),
        ),
        ({"COEFF0": 3.6, "COEFF1": 1e-4, "CRVAL1": None, "CDELT1": None}, 10 ** (3.6 + 1e-4 * np.arange(N))),
        ({"CRVAL1": 4000.0, "CDELT1": None, "CD1_1": 2.0}, WAVE),
    ],
    ids=["dc-flag-log10", "wave-log", "sdss-coeff", "cd1_1"],
)
def test_fits_image_log_linear_wcs(tmp_path: Path, header: dict[str, object], expected: np.ndarray) -> None:
    path = write_image(tmp_path / "log.fits")
    with fits.open(path, mode="update") as hdul:
        for key, value in header.items():
            if value is None:
                del hdul[0].header[key]
            else:
                hdul[0].header[key] = value
    s = _only(path)
    np.testing.assert_allclose(s.wavelength, expected, rtol=1e-10)
    if "CTYPE1" in header:
        assert s.medium == "vacuum"


def test_fits_image_2d_stack_takes_first_row_and_ivar_extension(tmp_path: Path) -> None:
    stack = np.vstack([FLUX, FLUX * 0 + 5.0, FLUX * 0 + 7.0])
    path = tmp_path / "stack.fits"
    primary = fits.PrimaryHDU(stack)
    primary.header.update({"CRVAL1": 4000.0, "CDELT1": 2.0})
    fits.HDUList([primary, fits.ImageHDU(np.full(N, 4.0), name="IVAR")]).writeto(path)
    s = _only(path)
    np.testing.assert_allclose(s.flux, FLUX)
    np.testing.assert_allclose(s.ivar, 4.0)


# ------------------------------------------------------------------------------------------------
# SDSS and LAMOST


def test_sdss_spec_star(tmp_path: Path) -> None:
    path = write_sdss(tmp_path / "spec-3586-55181-0001.fits", cls="STAR", z=1e-4)
    s = _only(path)
    loglam = np.float32(3.5800) + np.arange(N, dtype=np.float32) * np.float32(1e-4)
    np.testing.assert_allclose(s.wavelength, 10.0 ** loglam.astype(np.float64))
    np.testing.assert_allclose(s.flux, FLUX)
    np.testing.assert_allclose(s.ivar, 4.0)
    assert s.mask.sum() == 1 and s.mask[5]
    assert s.identifier == "sdss-3586-55181-1"
    assert s.medium == "vacuum"
    assert (s.ra, s.dec) == (150.25, 2.5)  # plug position, not the boresight RA/DEC
    assert s.labels["rv"] == pytest.approx(1e-4 * C_KMS, rel=1e-5)
    assert s.labels["snr"] == pytest.approx(23.5)
    assert s.labels["airmass"] == pytest.approx(1.19)
    assert s.extra["z"] == pytest.approx(1e-4) and s.extra["class"] == "STAR"
    assert s.obs_time.mjd == pytest.approx(55181.25)
    assert s.exptime == 2700.0 and s.flux_unit == "1E-17 erg/cm^2/s/Ang"
    assert s.target_name == ""
    assert 1500 < s.resolving_power < 2200  # wdisp = 1 pixel of 1e-4 dex


def test_sdss_galaxy_redshift_is_no_rv(tmp_path: Path) -> None:
    s = _only(write_sdss(tmp_path / "spec-3586-55181-0002.fits", cls="GALAXY", z=0.1))
    assert "rv" not in s.labels
    assert s.extra["z"] == pytest.approx(0.1)


@pytest.mark.parametrize("writer", [write_lamost_image, write_lamost_table], ids=["dr1-5", "dr6+"])
def test_lamost_layouts(tmp_path: Path, writer: Callable[[Path], Path]) -> None:
    s = _only(writer(tmp_path / "spec-55859-F5902_sp01-001.fits"))
    np.testing.assert_allclose(s.wavelength, lamost_wave(), rtol=1e-6)
    np.testing.assert_allclose(s.flux, FLUX)
    np.testing.assert_allclose(s.ivar, 9.0)
    assert s.mask.sum() == 1 and s.mask[7]
    assert s.identifier == "lamost-101001"
    assert s.medium == "vacuum"
    assert (s.ra, s.dec) == (150.0, 2.0)
    assert s.target_name == "LAMOST J100000.00+020000.0"
    assert s.obs_time.isot.startswith("2011-10-24T16:35:46")
    assert s.labels["snr"] == pytest.approx(35.2)
    assert s.labels["rv"] == pytest.approx(-5e-5 * C_KMS)
    assert s.instrument == "LAMOST"


@pytest.mark.parametrize("writer", [write_lamost_image, write_lamost_table], ids=["dr1-5", "dr6+"])
def test_lamost_rv_is_the_stars_velocity_not_the_heliocentric_correction(
    tmp_path: Path, writer: Callable[[Path], Path]
) -> None:
    """HELIO_RV is the correction the LAMOST pipeline applied; the star's velocity is Z·c."""
    path = writer(tmp_path / "spec-55859-F5902_sp01-001.fits")
    header_hdu = 0
    with fits.open(path, mode="update") as hdul:
        hdul[header_hdu].header["HELIO_RV"] = (-23.75, "heliocentric correction (km/s)")
        hdul[header_hdu].header["Z"] = 1.2e-4
    s = _only(path)
    assert s.labels["rv"] == pytest.approx(1.2e-4 * C_KMS)  # 35.98 km/s, not -23.75
    assert s.extra["helio_rv"] == pytest.approx(-23.75)  # kept as metadata


def test_lamost_image_falls_back_to_log_wcs_without_wavelength_row(tmp_path: Path) -> None:
    path = write_lamost_image(tmp_path / "spec.fits")
    with fits.open(path, mode="update") as hdul:
        hdul[0].data[2] = 0.0
    np.testing.assert_allclose(_only(path).wavelength, lamost_wave(), rtol=1e-9)


# ------------------------------------------------------------------------------------------------
# generic FITS tables


def test_pixel_table_nm_descending_errors(tmp_path: Path) -> None:
    s = _only(write_pixel_table(tmp_path / "pixels.fits"))
    np.testing.assert_allclose(s.wavelength, WAVE)  # nm → Å, flipped to ascending
    expected = FLUX.astype(np.float64)
    expected[3] = np.nan
    np.testing.assert_allclose(s.flux, expected)
    assert s.ivar[0] == pytest.approx(4.0) and s.ivar[10] == 0.0  # error 0 → no information
    assert s.mask[3] and s.mask.sum() == 1  # NaN flux is masked
    assert not s.good[3] and not s.good[10]
    assert s.medium == "air" and s.target_name == "HD 12345" and s.identifier == "pixels"


def test_row_table_with_array_cells(tmp_path: Path) -> None:
    s = _only(write_row_table(tmp_path / "row.fits"))
    np.testing.assert_allclose(s.wavelength, WAVE)
    np.testing.assert_allclose(s.ivar, 2.0)
    assert np.flatnonzero(s.mask).tolist() == [2]
    assert s.flux_unit == "erg/s/cm2/Angstrom"
    assert s.labels == {"teff": 5777.0, "vsini": 2.0}


def test_multi_table_rows_labels_and_index(tmp_path: Path) -> None:
    path = write_multi(tmp_path / "library.fits")
    spectra = read_spectra(path)
    assert [s.identifier for s in spectra] == ["s-a", "s-b", "s-c"]
    assert [s.source_index for s in spectra] == [0, 1, 2]
    for s in spectra:
        np.testing.assert_allclose(s.wavelength, WAVE)
        assert s.medium == "air"
        np.testing.assert_allclose(s.ivar, 100.0, rtol=1e-5)
    assert spectra[0].labels == {"teff": 5000.0, "logg": 4.5, "feh": 0.0}
    assert spectra[1].labels == {"logg": 2.0, "feh": -1.0}  # NaN teff left out
    assert [s.extra["flagged"] for s in spectra] == [False, True, False]
    third = _only(path, 2)  # read from the row's own bytes: logical and scaled columns as in a full read
    np.testing.assert_allclose(third.flux, FLUX * 3)
    assert third.identifier == "s-c"
    assert third.extra == spectra[2].extra and third.extra["n_bad"] == 40000


# ------------------------------------------------------------------------------------------------
# VOTable and text


def test_votable_sdm_utypes_and_params(tmp_path: Path) -> None:
    s = _only(write_votable_sdm(tmp_path / "ssap.xml"))
    np.testing.assert_allclose(s.wavelength, WAVE)
    np.testing.assert_allclose(s.flux, FLUX)
    np.testing.assert_allclose(s.ivar, 16.0)
    assert s.identifier == "ivo://demo/spec?42"
    assert s.target_name == "HD 1234"
    assert (s.ra, s.dec) == (10.5, -20.25)
    assert s.obs_time.mjd == pytest.approx(55000.5)
    assert s.labels == {"teff": 5800.0}
    assert s.flux_unit


def test_votable_ucd_frequency_axis(tmp_path: Path) -> None:
    s = _only(write_votable_ucd(tmp_path / "ucd.vot"))
    np.testing.assert_allclose(s.wavelength, WAVE, rtol=1e-10)
    np.testing.assert_allclose(s.flux, FLUX)


def test_votable_plain_columns(tmp_path: Path) -> None:
    s = _only(write_votable_plain(tmp_path / "plain.xml"))
    np.testing.assert_allclose(s.wavelength, WAVE)
    np.testing.assert_allclose(s.ivar, 4.0)
    assert s.identifier == "plain"


def test_csv_unit_in_header(tmp_path: Path) -> None:
    s = _only(write_csv(tmp_path / "spectrum.csv"))
    np.testing.assert_allclose(s.wavelength, WAVE, rtol=1e-6)
    np.testing.assert_allclose(s.flux, FLUX, rtol=1e-5)
    np.testing.assert_allclose(s.ivar, 4.0)
    assert s.identifier == "spectrum" and s.medium == "vacuum"


def test_csv_unit_suffix(tmp_path: Path) -> None:
    path = tmp_path / "suffix.csv"
    path.write_text("wavelength_nm,flux\n400,1\n401,2\n402,3\n")
    np.testing.assert_allclose(_only(path).wavelength, [4000.0, 4010.0, 4020.0])


def test_ecsv_units_and_meta(tmp_path: Path) -> None:
    s = _only(write_ecsv(tmp_path / "spectrum.ecsv"))
    np.testing.assert_allclose(s.wavelength, WAVE)
    np.testing.assert_allclose(s.ivar, 3.0)
    assert s.medium == "air" and s.target_name == "Vega" and s.labels == {"teff": 9600.0}


def test_headerless_text(tmp_path: Path) -> None:
    s = _only(write_headerless(tmp_path / "spectrum.txt"))
    np.testing.assert_allclose(s.wavelength, WAVE)
    assert s.ivar is None


# ------------------------------------------------------------------------------------------------
# files that are not spectra


def _truncated(path: Path) -> Path:
    data = write_image(path, np.arange(20000, dtype=np.float32)).read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _random_image(path: Path) -> Path:
    return write_image(path, np.random.default_rng(0).normal(size=(100, 100)))


def _no_spectral_columns(path: Path) -> Path:
    Table({"a": [1.0, 2.0], "b": [3.0, 4.0]}).write(path, format="fits")
    return path


def _write_text(text: str) -> Callable[[Path], Path]:
    def write(path: Path) -> Path:
        path.write_text(text)
        return path

    return write


def _write_bytes(data: bytes) -> Callable[[Path], Path]:
    def write(path: Path) -> Path:
        path.write_bytes(data)
        return path

    return write


BROKEN: dict[str, tuple[Callable[[Path], Path], str, str]] = {
    "truncated": (_truncated, "cut.fits", "truncated"),
    "random-bytes": (_write_bytes(np.random.default_rng(1).bytes(5000)), "noise.fits", "binary"),
    "png": (_write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(200)), "picture.fits", "binary"),
    "image-2d": (_random_image, "image.fits", "no spectrum found"),
    "fits-no-columns": (_no_spectral_columns, "cat.fits", "no spectrum found"),
    "csv-no-flux": (_write_text("wavelength,temperature\n1,2\n3,4\n"), "noflux.csv", "no flux column"),
    "empty": (_write_bytes(b""), "empty.fits", "empty"),
    "xml": (_write_text("<?xml version='1.0'?><html></html>"), "page.xml", "not a VOTable"),
    "mismatched": (lambda p: write_lamost_table(p, ivar_length=N - 1), "odd.fits", "one spectrum"),
    "non-monotonic": (_write_text("wavelength,flux\n1,1\n3,1\n2,1\n4,1\n"), "zigzag.csv", "monotonic"),
    "all-nan": (_write_text("wavelength,flux\n1,nan\n2,nan\n3,nan\n"), "nan.csv", "no finite"),
    "bad-unit": (_write_text("wavelength[K],flux\n1,1\n2,1\n"), "kelvin.csv", "not a spectral unit"),
    "prose": (_write_text("Dear reader,\nthis is not a table at all.\n"), "letter.txt", "flux"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_files_raise_spectrum_read_error(tmp_path: Path, case: str) -> None:
    writer, name, reason = BROKEN[case]
    path = writer(tmp_path / name)
    with pytest.raises(SpectrumReadError, match=reason) as caught:
        read_spectra(path)
    assert name in str(caught.value)
    assert caught.value.path == str(path)


def test_detect_format_refuses_non_spectra(tmp_path: Path) -> None:
    with pytest.raises(SpectrumReadError, match="no spectrum found"):
        detect_format(_random_image(tmp_path / "image.fits"))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SpectrumReadError, match="no such file") as caught:
        read_spectra(tmp_path / "nowhere.fits")
    assert "nowhere.fits" in str(caught.value)


def test_index_out_of_range(tmp_path: Path) -> None:
    path = write_image(tmp_path / "one.fits")
    assert _only(path, 0).source_index == 0
    with pytest.raises(SpectrumReadError, match="out of range"):
        read_spectra(path, 1)
    with pytest.raises(SpectrumReadError, match="out of range"):
        read_spectra(write_multi(tmp_path / "three.fits"), 3)


# ------------------------------------------------------------------------------------------------
# the real MILES table


@pytest.fixture(scope="module")
def miles(miles_dir: Path) -> tuple[Path, list[Spectrum]]:
    """The test sample of the MILES library (tests/data/miles): its real layout, 8 of its stars."""
    path = miles_dir / "miles_spectra.fits"
    return path, read_spectra(path)


def test_miles_whole_table(miles: tuple[Path, list[Spectrum]]) -> None:
    path, spectra = miles
    assert detect_format(path) == "fits-multi"
    assert [s.identifier for s in spectra] == [
        "m0001", "m0072", "m0223", "m0279", "m0407", "m0689", "m0911", "m0970"
    ]  # fmt: skip
    first = spectra[0]
    assert first.wavelength.size == 4300
    assert first.wavelength[0] == pytest.approx(3540.5) and first.wavelength[-1] == pytest.approx(7409.6)
    assert first.medium == "air"
    assert first.target_name == "HD224930"
    assert first.labels == pytest.approx({"teff": 5305.0, "logg": 4.49, "feh": -0.75})
    assert spectra[5].labels == pytest.approx({"teff": 11944.0, "logg": 3.78, "feh": 0.28})
    assert all(s.source_format == "fits-multi" for s in spectra)
    assert [s.source_index for s in spectra] == list(range(8))
    assert not spectra[4].labels  # m0407 has no parameters: NaN labels are left out
    assert all(s.flux.size == s.wavelength.size == 4300 and np.isfinite(s.flux).all() for s in spectra)


def test_miles_single_row(miles: tuple[Path, list[Spectrum]]) -> None:
    path, spectra = miles
    row = _only(path, 5)
    assert row.source_index == 5 and row.identifier == spectra[5].identifier == "m0689"
    np.testing.assert_array_equal(row.flux, spectra[5].flux)
    np.testing.assert_array_equal(row.wavelength, spectra[5].wavelength)
    assert row.labels == spectra[5].labels


# ------------------------------------------------------------------------------------------------
# iter_spectra: lazy, block by block, the same spectra as read_spectra


def _assert_same(got: Spectrum, want: Spectrum) -> None:
    """Every field equal: arrays value by value (and dtype), obs_time as an instant."""
    for spec in dataclasses.fields(Spectrum):
        a, b = getattr(got, spec.name), getattr(want, spec.name)
        if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
            assert a is not None and b is not None and a.dtype == b.dtype, spec.name
            np.testing.assert_array_equal(a, b, err_msg=spec.name)
        elif spec.name == "obs_time":
            assert (a is None and b is None) or (a is not None and b is not None and a == b), spec.name
        else:
            assert a == b, (spec.name, a, b)


@pytest.mark.parametrize("compressed", [False, True], ids=["memmap", "gzip"])
def test_iter_spectra_equals_read_spectra_across_blocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compressed: bool
) -> None:
    config = SyntheticConfig(n_pixels=40)
    path = tmp_path / "synth.fits"
    write_fits_table(path, 37, seed=3, config=config)
    if compressed:  # astropy's in-memory table, sliced, instead of blocks read from the file
        path = path.with_suffix(".fits.gz")
        path.write_bytes(gzip.compress((tmp_path / "synth.fits").read_bytes()))
    whole = read_spectra(path)  # the default block holds the whole table
    monkeypatch.setattr(readers, "CHUNK_ROWS", 8)  # 37 = 4 x 8 + 5: four boundaries, a short last block
    walked = list(iter_spectra(path))
    assert len(walked) == len(whole) == 37
    for position, (got, want) in enumerate(zip(walked, whole, strict=True)):
        _assert_same(got, want)
        assert got.source_index == position
    for position in (0, 7, 8, 36):  # one row read alone is the same spectrum too
        _assert_same(read_spectra(path, position)[0], whole[position])
    for rows in (range(5, 21), range(36, 37), range(0, 37)):  # a slice of rows: those rows, no others
        sliced = list(iter_spectra(path, rows))
        assert [s.source_index for s in sliced] == list(rows)
        for got, want in zip(sliced, whole[rows.start : rows.stop], strict=True):
            _assert_same(got, want)
    for rows in (range(30, 38), range(-1, 3)):
        with pytest.raises(SpectrumReadError, match="out of range: the file holds 37 spectra"):
            list(iter_spectra(path, rows))
    with pytest.raises(ValueError, match="consecutive"):
        list(iter_spectra(path, range(0, 10, 2)))
    for got, made in zip(walked, generate_spectra(37, seed=3, config=config), strict=True):
        assert got.identifier == made.identifier and got.source_format == "fits-multi"
        assert got.labels == pytest.approx(made.labels)
        np.testing.assert_allclose(got.flux, made.flux, rtol=1e-6)  # float32 in the file
        np.testing.assert_allclose(got.wavelength, made.wavelength, rtol=1e-12)


def test_iter_spectra_multi_table_fields(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Logical and unsigned columns, a header grid, errors as ivar: block by block as in one piece."""
    path = write_multi(tmp_path / "library.fits")
    whole = read_spectra(path)
    monkeypatch.setattr(readers, "CHUNK_ROWS", 2)
    walked = list(iter_spectra(path))
    for got, want in zip(walked, whole, strict=True):
        _assert_same(got, want)
    assert [s.identifier for s in walked] == ["s-a", "s-b", "s-c"]
    assert [s.extra["flagged"] for s in walked] == [False, True, False]
    assert [s.extra["n_bad"] for s in walked] == [1, 2, 40000]
    assert walked[0].medium == "air" and walked[0].ivar == pytest.approx(np.full(N, 100.0))
    assert "teff" not in walked[1].labels


def test_shared_grid_is_one_read_only_array(tmp_path: Path) -> None:
    path = tmp_path / "synth.fits"
    write_fits_table(path, 5, seed=1, config=SyntheticConfig(n_pixels=30))
    spectra = list(iter_spectra(path))
    grid = spectra[0].wavelength
    assert all(s.wavelength is grid for s in spectra)  # no copy per row
    with pytest.raises(ValueError, match="read-only"):
        grid[0] = 0.0  # a consumer cannot move the grid under the other spectra
    first = spectra[0]
    first.flux[0] = -1.0  # the rest is each spectrum's own
    assert spectra[1].flux[0] != -1.0 and not np.shares_memory(first.flux, spectra[1].flux)
    assert not np.shares_memory(first.ivar, spectra[1].ivar)


def test_iter_spectra_closed_early_and_empty_tables(tmp_path: Path) -> None:
    path = tmp_path / "synth.fits"
    write_fits_table(path, 3, seed=1, config=SyntheticConfig(n_pixels=30))
    walk = iter_spectra(path)
    assert next(walk).source_index == 0
    walk.close()  # releases the open file; nothing else to do
    empty = tmp_path / "empty.fits"
    columns = [fits.Column("flux", f"{N}E", array=np.zeros((0, N), np.float32))]
    primary = fits.PrimaryHDU()
    primary.header.update({"CRVAL1": 4000.0, "CDELT1": 2.0})
    fits.HDUList([primary, fits.BinTableHDU.from_columns(columns)]).writeto(empty)
    with pytest.raises(SpectrumReadError, match="holds no spectra"):
        next(iter_spectra(empty))


BIG_ROWS, BIG_PIXELS = 5_000, 8_000  # flux and ivar as float32: 64 kB a row, 320 MB in all


@pytest.fixture(scope="module")
def big_table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A MILES-layout table far larger than one block, written in a moment (no spectra rendered)."""
    path = tmp_path_factory.mktemp("big") / "big.fits"
    columns = [
        fits.Column("obsid", "12A"),
        fits.Column("teff", "D"),
        fits.Column("flux", f"{BIG_PIXELS}E"),
        fits.Column("ivar", f"{BIG_PIXELS}E"),
    ]
    table = fits.BinTableHDU.from_columns(columns, nrows=0, name="SPECTRA")
    header = table.header.copy()
    header["NAXIS2"] = BIG_ROWS
    primary = fits.PrimaryHDU().header
    primary.update({"CRVAL1": 4000.0, "CDELT1": 2.0, "WAVEMED": "vacuum"})
    block = np.zeros(2048, table.columns.dtype.newbyteorder(">"))
    block["flux"], block["ivar"] = np.linspace(1.0, 2.0, BIG_PIXELS), 4.0
    with path.open("wb") as stream:
        stream.write(primary.tostring().encode("ascii") + header.tostring().encode("ascii"))
        for start in range(0, BIG_ROWS, len(block)):
            rows = block[: min(len(block), BIG_ROWS - start)]
            rows["obsid"] = [f"big-{i:08d}" for i in range(start, start + len(rows))]
            rows["teff"] = 4000.0 + np.arange(start, start + len(rows))
            stream.write(rows.tobytes())
        stream.write(bytes(-BIG_ROWS * header["NAXIS1"] % 2880))
    return path


def _peak_bytes(work: Callable[[], object]) -> tuple[object, int]:
    tracemalloc.start()
    try:
        result = work()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_iter_spectra_reads_only_what_it_yields(big_table: Path) -> None:
    size = big_table.stat().st_size
    assert size > 300e6
    first, peak = _peak_bytes(lambda: list(itertools.islice(iter_spectra(big_table), 10)))
    assert [s.identifier for s in first] == [f"big-{i:08d}" for i in range(10)]
    assert first[9].labels == {"teff": 4009.0}
    assert peak < size / 10, f"{peak / 1e6:.0f} MB traced for 10 spectra of a {size / 1e6:.0f} MB file"


def test_iter_spectra_walks_a_big_table_in_bounded_memory(big_table: Path) -> None:
    def walk() -> tuple[int, Spectrum | None]:
        count, last = 0, None
        for last in iter_spectra(big_table):  # noqa: B007 - the last one is checked below
            count += 1
        return count, last

    (count, last), peak = _peak_bytes(walk)
    assert count == BIG_ROWS
    assert last is not None and last.identifier == f"big-{BIG_ROWS - 1:08d}"
    assert last.source_index == BIG_ROWS - 1 and last.labels == {"teff": 4000.0 + BIG_ROWS - 1}
    np.testing.assert_allclose(last.flux, np.linspace(1.0, 2.0, BIG_PIXELS), rtol=1e-6)
    size = big_table.stat().st_size
    assert peak < size / 10, f"{peak / 1e6:.0f} MB traced walking a {size / 1e6:.0f} MB file"


TEXT_VARIANTS = {
    "csv": "wavelength,flux,error\n4000.5,1.25,0.1\n4001.5,1.5,0.1\n4002.5,,0.1\n",
    "csv-comments": "# OBJECT = HD 1\n# a note\nwave,flux\n4000,1\n4001,2\n4002,3\n",
    "csv-quoted": '"wavelength [Angstrom]","flux"\n4000,1e-17\n4001,2e-17\n4002,3e-17\n',
    "whitespace": "wavelength flux\n4000 1\n4001 2\n4002 3\n",
    "tab": "wavelength\tflux\n4000\t1\n4001\t2\n4002\t3\n",
    "headerless-csv": "4000,1\n4001,2\n4002,3\n",
    "commented-header": "# wavelength flux\n4000 1\n4001 2\n4002 3\n",
    "semicolon": "wavelength;flux\n4000;1\n4001;2\n4002;3\n",
}


@pytest.mark.parametrize("text", TEXT_VARIANTS.values(), ids=TEXT_VARIANTS)
def test_text_tables_read_as_astropy_guesses_them(tmp_path: Path, text: str) -> None:
    """The fast CSV path gives the table astropy's format guessing gives, or leaves it to guessing."""
    from astropy.table import Table

    from model.readers import _read_ascii

    path = tmp_path / "spectrum.txt"
    path.write_text(text)
    fast, guessed = _read_ascii(path), Table.read(path, format="ascii")
    assert fast.colnames == guessed.colnames
    for name in fast.colnames:
        np.testing.assert_array_equal(np.ma.filled(fast[name], -1), np.ma.filled(guessed[name], -1))
    assert fast.meta == guessed.meta

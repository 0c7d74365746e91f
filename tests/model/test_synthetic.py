"""The synthetic spectra: shapes, determinism, and that every label does what it claims."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from model.spectrum import Spectrum, air_to_vacuum
from model.synthetic import (
    C_KMS,
    LABEL_NAMES,
    LINE_CENTRES,
    SyntheticConfig,
    generate,
    generate_spectra,
    render,
    sample_labels,
    wavelength_grid,
    write_fits_table,
)

CONFIG = SyntheticConfig()
WAVE = wavelength_grid(CONFIG)
DLNL = np.log(WAVE[1] / WAVE[0])
SUN = {"teff": 5800.0, "logg": 4.4, "feh": 0.0, "rv": 0.0, "vsini": 0.0, "snr": 100.0, "airmass": 1.0}


def clean(**changes) -> np.ndarray:
    """Noise-free flux (n, n_pixels) of a Sun-like star with some labels changed (scalars or arrays)."""
    return render({**SUN, **changes}, CONFIG, noise=False)[0].astype(np.float64)


def between(lo: float, hi: float) -> np.ndarray:
    return (lo <= WAVE) & (hi >= WAVE)


def depth(flux: np.ndarray, inside: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """1 - mean flux of the ``inside`` pixels / mean flux of the ``reference`` pixels, per row."""
    return 1.0 - flux[:, inside].mean(axis=1) / flux[:, reference].mean(axis=1)


def line_index(flux: np.ndarray, centre: float, core: float, side: tuple[float, float]) -> np.ndarray:
    """Depth within ±core Å of centre against the side bands at centre ± side Å."""
    sides = between(centre - side[1], centre - side[0]) | between(centre + side[0], centre + side[1])
    return depth(flux, between(centre - core, centre + core), sides)


def core_centre(flux: np.ndarray, centre: float) -> np.ndarray:
    """Line centre in pixels: Gaussian 3-point interpolation of the optical depth at its peak."""
    out = []
    for f in flux:
        i0 = np.searchsorted(WAVE, centre)
        i = i0 - 15 + int(np.argmin(f[i0 - 15 : i0 + 15]))
        tau = -np.log(f)
        y = np.log(tau[i - 1 : i + 2] - np.median(tau[[i - 12, i + 12]]))
        out.append(i + 0.5 * (y[0] - y[2]) / (y[0] - 2 * y[1] + y[2]))
    return np.array(out)


def increasing(values: np.ndarray) -> bool:
    return bool(np.all(np.diff(values) > 0))


# --- grid, shapes, determinism -------------------------------------------------------------------


def test_grid_is_log_linear_vacuum():
    assert WAVE.shape == (4000,)
    assert WAVE[0] == pytest.approx(3800.0) and WAVE[-1] == pytest.approx(9200.0)
    np.testing.assert_allclose(np.diff(np.log(WAVE)), DLNL, rtol=1e-9)
    assert LINE_CENTRES["H alpha"] == pytest.approx(float(air_to_vacuum(6562.80)))
    assert LINE_CENTRES["H alpha"] == pytest.approx(6564.6, abs=0.1)  # the vacuum value


def test_render_shapes_and_dtypes():
    labels = sample_labels(5, np.random.default_rng(1), CONFIG)
    flux, ivar = render(labels, CONFIG, np.random.default_rng(2))
    assert flux.shape == ivar.shape == (5, 4000)
    assert flux.dtype == ivar.dtype == np.float32
    assert np.isfinite(flux).all() and (ivar > 0).all()
    assert np.all(ivar == ivar[:, :1])  # constant noise per spectrum
    noiseless = clean()
    assert (noiseless > 0).all() and np.median(noiseless) == pytest.approx(1.0, abs=0.1)


def test_labels_cover_their_ranges():
    labels = sample_labels(20000, np.random.default_rng(0), CONFIG)
    assert tuple(labels) == LABEL_NAMES
    for name in LABEL_NAMES:
        lo, hi = getattr(CONFIG, name)
        assert labels[name].min() >= lo and labels[name].max() <= hi
        assert labels[name].min() < lo + 0.01 * (hi - lo) and labels[name].max() > hi - 0.01 * (hi - lo)
    # snr log-uniform: its median is the geometric mean of the range.
    assert np.median(labels["snr"]) == pytest.approx(np.sqrt(10 * 200), rel=0.05)


def _concat(batches):
    batches = list(batches)
    flux = np.concatenate([b[1] for b in batches])
    labels = {k: np.concatenate([b[3][k] for b in batches]) for k in LABEL_NAMES}
    return flux, labels, len(batches)


def test_generate_is_deterministic_and_independent_of_batch_size():
    flux_a, labels_a, n_batches = _concat(generate(50, seed=3, batch_size=16))
    flux_b, labels_b, _ = _concat(generate(50, seed=3, batch_size=50))
    flux_c, labels_c, _ = _concat(generate(50, seed=4, batch_size=16))
    assert n_batches == 4 and flux_a.shape == (50, 4000)
    np.testing.assert_array_equal(flux_a, flux_b)
    for name in LABEL_NAMES:
        np.testing.assert_array_equal(labels_a[name], labels_b[name])
        assert not np.allclose(labels_a[name], labels_c[name])
    assert not np.allclose(flux_a, flux_c)


def test_generate_spectra_match_batches():
    spectra = list(generate_spectra(5, seed=7))
    _, flux, ivar, labels = next(generate(5, seed=7))
    assert [s.identifier for s in spectra] == [f"synth-{i:08d}" for i in range(5)]
    for i, s in enumerate(spectra):
        assert isinstance(s, Spectrum) and s.medium == "vacuum"
        np.testing.assert_array_equal(s.flux, flux[i])
        np.testing.assert_array_equal(s.ivar, ivar[i])
        assert s.labels == {k: float(labels[k][i]) for k in LABEL_NAMES}
        assert 0 <= s.ra < 360 and -90 <= s.dec <= 90
    assert len({(s.ra, s.dec) for s in spectra}) == 5


# --- each label has its effect --------------------------------------------------------------------


def test_teff_drives_continuum_balmer_and_tio():
    teff = np.array([3600.0, 4500.0, 5800.0, 7000.0, 8800.0])
    flux = clean(teff=teff)
    blue_red = flux[:, between(4400, 4600)].mean(axis=1) / flux[:, between(6950, 7050)].mean(axis=1)
    assert increasing(blue_red)
    h_alpha = line_index(flux, LINE_CENTRES["H alpha"], 4.0, (30, 45))
    assert increasing(h_alpha[1:])  # Balmer lines grow toward ~9000 K
    tio = depth(flux, between(7060, 7090), between(7020, 7045))
    assert tio[0] > 0.15 and np.abs(tio[2:]).max() < 0.02  # TiO only in M stars (the rest: slope)


def test_feh_scales_metal_lines_not_hydrogen():
    flux = clean(feh=np.array([-2.5, -1.0, 0.0, 0.5]))
    mg_b = line_index(flux, LINE_CENTRES["Mg b1"], 2.0, (8, 14))
    fe = line_index(flux, LINE_CENTRES["Fe I 5328"], 2.0, (5, 9))
    assert increasing(mg_b) and increasing(fe)
    assert mg_b[0] < 0.02 and mg_b[-1] > 0.2
    h_beta = line_index(clean(teff=8000.0, feh=np.array([-2.5, 0.5])), LINE_CENTRES["H beta"], 4.0, (60, 80))
    assert h_beta[0] == pytest.approx(h_beta[1], rel=0.05)


def test_logg_widens_wings_and_changes_gravity_sensitive_lines():
    logg = np.array([1.0, 3.0, 5.0])
    hot = clean(teff=8500.0, logg=logg)
    h_gamma = LINE_CENTRES["H gamma"]
    wing = depth(hot, between(h_gamma + 12, h_gamma + 18), between(h_gamma + 60, h_gamma + 70))
    assert increasing(wing)  # pressure-broadened Balmer wings
    cool = clean(teff=4000.0, logg=logg)
    na = line_index(cool, LINE_CENTRES["Na I 8195"], 2.0, (15, 25))
    cat = line_index(cool, LINE_CENTRES["Ca II 8542"], 2.0, (15, 25))
    assert increasing(na)  # dwarfs
    assert increasing(-cat)  # giants


@pytest.mark.parametrize("name", ["Fe I 5328", "Ca I 6162", "H alpha"])
def test_rv_shifts_line_centres(name):
    rv = np.array([0.0, -250.0, -31.0, 100.0, 280.0])
    flux = clean(rv=rv, teff=7000.0 if name == "H alpha" else 5800.0, logg=2.0)
    measured = core_centre(flux, LINE_CENTRES[name])
    expected = np.log1p(rv / C_KMS) / DLNL  # pixels on the log-linear grid: λ(1 + rv/c)
    np.testing.assert_allclose(measured - measured[0], expected, atol=0.05)


def test_rv_of_whole_pixels_shifts_the_whole_stellar_spectrum():
    shift = 5
    rv = C_KMS * np.expm1(shift * DLNL)
    flux = clean(rv=np.array([0.0, rv]), airmass=0.0)  # no tellurics: everything is stellar
    ratio = flux[1, shift:] / flux[0, :-shift]
    np.testing.assert_allclose(ratio / ratio.mean(), 1.0, atol=1e-4)


def test_airmass_follows_beer_lambert_in_the_a_band():
    flux = clean(airmass=np.array([1.0, 1.75, 2.5]))
    band = between(*air_to_vacuum(np.array([7596.0, 7619.0])))
    a_band = depth(flux, band, between(7560, 7585))
    assert increasing(a_band) and a_band[0] > 0.3
    log_t = np.log(flux[1:, band] / flux[0, band])  # = (X - 1) ln T
    np.testing.assert_allclose(log_t[0] / log_t[1], 0.75 / 1.5, rtol=1e-4)
    outside = between(6000, 6500)
    np.testing.assert_allclose(flux[1:, outside], flux[[0, 0]][:, outside], rtol=1e-5)


def test_noise_matches_snr():
    labels = {**SUN, "snr": np.array([15.0, 50.0, 150.0])}
    noisy, ivar = render(labels, CONFIG, np.random.default_rng(5))
    noiseless, ivar_clean = render(labels, CONFIG, noise=False)
    sigma = np.median(noiseless, axis=1) / labels["snr"]
    measured = (noisy - noiseless).std(axis=1)
    np.testing.assert_allclose(measured, sigma, rtol=0.1)
    np.testing.assert_allclose(ivar[:, 0], 1 / sigma**2, rtol=1e-5)
    np.testing.assert_array_equal(ivar, ivar_clean)


def test_vsini_makes_lines_wider_and_shallower():
    flux = clean(vsini=np.array([0.0, 50.0, 100.0, 150.0]), feh=0.5)
    centre = LINE_CENTRES["Fe I 5328"]
    window = between(centre - 6, centre + 6)
    tau = -np.log(flux[:, window] / flux[:, between(centre - 9, centre - 7)].mean(axis=1, keepdims=True))
    offset = WAVE[window] - centre
    width = np.sqrt((tau * offset**2).sum(axis=1) / tau.sum(axis=1))
    assert increasing(width) and increasing(-tau.max(axis=1))
    # Broadening redistributes the line's optical depth, it does not remove it.
    np.testing.assert_allclose(tau.sum(axis=1), tau[0].sum(), rtol=0.03)


# --- FITS table -----------------------------------------------------------------------------------


def test_fits_table_round_trip_in_batches(tmp_path):
    config = SyntheticConfig(n_pixels=500)
    path = tmp_path / "synth.fits"
    write_fits_table(path, 3000, seed=11, config=config, batch_size=512)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synth.fits"]
    with fits.open(path) as hdul:
        hdul.verify("exception")
        assert [h.name for h in hdul] == ["PRIMARY", "SPECTRA", "WAVELENGTH"]
        primary = hdul[0].header
        assert primary["WAVEMED"] == "vacuum" and primary["NPIX"] == 500 and primary["NSPEC"] == 3000
        assert primary["CRVAL1"] == pytest.approx(3800.0)
        table = hdul["SPECTRA"].data
        assert len(table) == 3000
        assert set(table.columns.names) >= {"obsid", "ra", "dec", "flux", "ivar", *LABEL_NAMES}
        assert hdul["SPECTRA"].columns["teff"].unit == "K"
        np.testing.assert_array_equal(hdul["WAVELENGTH"].data["wavelength"], wavelength_grid(config))
        assert table["obsid"][0] == "synth-00000000" and table["obsid"][-1] == "synth-00002999"
        assert table["flux"].shape == (3000, 500) and table["flux"].dtype.kind == "f"
        expected, labels, _ = _concat(generate(3000, seed=11, config=config))
        np.testing.assert_array_equal(table["flux"], expected)
        for name in LABEL_NAMES:
            np.testing.assert_array_equal(table[name], labels[name])
        assert np.all((table["dec"] >= -90) & (table["dec"] <= 90))
    # The way the MILES README reads its table works here too.
    spec = Table.read(path, hdu="SPECTRA")
    assert len(spec) == 3000 and spec["teff"].unit == "K" and spec["flux"].shape == (3000, 500)


def test_fits_tables_of_one_archive_number_their_spectra_on(tmp_path):
    """Files written with ``first_id`` hold identifiers no other file of the run holds."""
    config = SyntheticConfig(n_pixels=200)
    write_fits_table(tmp_path / "a.fits", 5, seed=1, config=config, first_id=0)
    write_fits_table(tmp_path / "b.fits", 5, seed=2, config=config, first_id=5)
    ids = [list(fits.getdata(tmp_path / f"{name}.fits", "SPECTRA")["obsid"]) for name in "ab"]
    assert ids[0] + ids[1] == [f"synth-{i:08d}" for i in range(10)]


def test_fits_table_memory_does_not_grow_with_rows(tmp_path):
    config = SyntheticConfig(n_pixels=500)

    def peak(n: int) -> int:
        tracemalloc.start()
        write_fits_table(tmp_path / f"{n}.fits", n, config=config, batch_size=256)
        size = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return size

    peak(16)  # one-off allocations (grid, line layout) out of the way
    small, large = peak(512), peak(2560)
    assert large < 1.3 * small
    assert large < 2560 * 500 * 4 * 2  # less than the flux and ivar of all rows

"""The common grid: rebinning conserves flux, masks what is missing, converts air to vacuum."""

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter1d

from model.preprocess import C_KMS, Grid, gaussian_smooth, prepare, prepare_augmented
from model.spectrum import Spectrum, air_to_vacuum, vacuum_to_air


def gaussian_line(wave, centre, depth=0.5, sigma=2.0):
    return 1.0 - depth * np.exp(-0.5 * ((wave - centre) / sigma) ** 2)


def test_grid_is_log_uniform_and_round_trips():
    grid = Grid(4000.0, 8000.0, 1000)
    ratios = grid.wavelength[1:] / grid.wavelength[:-1]
    assert np.allclose(ratios, ratios[0])
    assert Grid.from_dict(grid.to_dict()) == grid
    assert grid.velocity_step_kms == pytest.approx(np.log(2) / 999 * C_KMS)


def test_grid_fit_takes_range_most_spectra_cover():
    ranges = [(3600.0, 7400.0)] * 18 + [(5000.0, 6000.0), (3000.0, 9000.0)]
    grid = Grid.fit(ranges, 512, coverage_fraction=0.9)
    assert 3600 <= grid.wave_min < 5000 and 6000 < grid.wave_max <= 7400


def test_rebin_conserves_flat_spectrum_and_masks_uncovered_range():
    wave = np.linspace(4500, 7000, 5000)
    spectrum = Spectrum(wave, np.full_like(wave, 3.0))
    grid = Grid(4000.0, 8000.0, 1000)
    p = prepare(spectrum, grid)
    inside = (grid.wavelength > 4510) & (grid.wavelength < 6990)
    assert p.good[inside].all()
    assert not p.good[(grid.wavelength < 4490) | (grid.wavelength > 7010)].any()
    assert np.allclose(p.flux[inside], 1.0, atol=1e-6)  # normalised by the median
    assert p.scale == pytest.approx(3.0)
    assert 0.5 < p.coverage < 0.7
    assert (p.flux[~p.good] == 0).all()


def test_bad_pixels_are_masked_not_learned():
    wave = np.linspace(4000, 8000, 8000)
    flux = np.ones_like(wave)
    mask = (wave > 6000) & (wave < 6100)  # a chip gap
    flux[mask] = 0.0
    p = prepare(Spectrum(wave, flux, mask=mask), Grid(4000.0, 8000.0, 800))
    gap = (Grid(4000.0, 8000.0, 800).wavelength > 6010) & (Grid(4000.0, 8000.0, 800).wavelength < 6090)
    assert not p.good[gap].any()
    assert np.allclose(p.flux[p.good], 1.0, atol=1e-6)


def test_air_spectrum_lands_on_vacuum_wavelength():
    halpha_vac = 6564.61
    wave_air = np.linspace(6400, 6700, 6000)
    spectrum = Spectrum(wave_air, gaussian_line(wave_air, vacuum_to_air(halpha_vac)), medium="air")
    grid = Grid(6450.0, 6650.0, 4000)
    p = prepare(spectrum, grid)
    assert grid.wavelength[np.argmin(p.flux)] == pytest.approx(halpha_vac, abs=0.1)
    assert air_to_vacuum(vacuum_to_air(np.array([5000.0])))[0] == pytest.approx(5000.0, abs=1e-4)


def test_radial_velocity_shift_moves_line():
    wave = np.linspace(6400, 6700, 6000)
    spectrum = Spectrum(wave, gaussian_line(wave, 6564.61))
    grid = Grid(6450.0, 6650.0, 4000)
    shifted = prepare(spectrum, grid, rv_kms=200.0)
    expected = 6564.61 * (1 + 200.0 / C_KMS)
    assert grid.wavelength[np.argmin(shifted.flux)] == pytest.approx(expected, abs=0.1)


def test_augmentation_keeps_groups_and_injected_labels():
    wave = np.linspace(4000, 8000, 4000)
    spectra = [Spectrum(wave, gaussian_line(wave, 5000 + 100 * i)) for i in range(3)]
    aug = prepare_augmented(spectra, Grid(4100.0, 7900.0, 512), copies=2, seed=3)
    assert aug.flux.shape == (9, 512) and list(aug.groups) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert np.isnan(aug.snr[aug.rv_added == 0]).all()
    noisy = aug.flux[1][aug.good[1]] - aug.flux[0][aug.good[0]]
    assert noisy.std() == pytest.approx(1 / aug.snr[1], rel=0.2)


def test_noise_follows_ivar_through_rebin_and_normalisation():
    # 1 Å source pixels with σ = 0.2 on flux 4, onto ~4 Å pixels: σ of the mean ≈ 0.2 / √4, / 4.
    wave = np.arange(4000.0, 8000.0, 1.0)
    spectrum = Spectrum(wave, np.full_like(wave, 4.0), ivar=np.full_like(wave, 1 / 0.2**2))
    grid = Grid(4100.0, 7900.0, 1000)
    p = prepare(spectrum, grid)
    step = np.diff(grid.edges)
    expected = 0.2 / np.sqrt(step) / 4.0
    assert np.allclose(p.noise[p.good], expected[p.good], rtol=0.15)


def test_noise_is_unknown_without_ivar_and_known_once_augmented():
    wave = np.linspace(4000, 8000, 8000)
    spectrum = Spectrum(wave, gaussian_line(wave, 6000.0))
    grid = Grid(4100.0, 7900.0, 512)
    assert np.isnan(prepare(spectrum, grid).noise).all()
    noisy = prepare(spectrum, grid, snr=50.0, rng=np.random.default_rng(0))
    assert np.allclose(noisy.noise[noisy.good], 1 / 50.0)
    aug = prepare_augmented([spectrum], grid, copies=2, seed=3)
    assert np.isnan(aug.noise[0]).all() and np.isfinite(aug.noise[1:][aug.good[1:]]).all()


def test_masked_pixels_have_no_noise():
    wave = np.linspace(4000, 8000, 8000)
    mask = (wave > 6000) & (wave < 6100)
    spectrum = Spectrum(wave, np.ones_like(wave), ivar=np.full_like(wave, 100.0), mask=mask)
    p = prepare(spectrum, Grid(4000.0, 8000.0, 800))
    assert np.isnan(p.noise[~p.good]).all() and np.isfinite(p.noise[p.good]).all()


@pytest.mark.parametrize(("n", "sigma"), [(12000, 400.0), (3000, 100.0), (50, 30.0), (9, 0.7)])
def test_gaussian_smooth_is_scipys_gaussian_filter(n, sigma):
    """The FFT smoothing of the pseudo-continuum gives what scipy.ndimage's direct sum gives,
    edges included, also where the kernel is wider than the spectrum."""

    values = 1.0 + np.cumsum(np.random.default_rng(n).normal(size=n)) / n + np.linspace(0, 3, n)
    expected = gaussian_filter1d(values, sigma, mode="nearest")
    assert gaussian_smooth(values, sigma) == pytest.approx(expected, rel=1e-12, abs=0)

"""Uploads compared with archive spectra at their own resolution and velocity (model/resolution.py)."""

import numpy as np
import pytest

from model.preprocess import C_KMS, FWHM_PER_SIGMA, Grid
from model.resolution import blurred, ladder, match, misfits, shifted

GRID = Grid(4000.0, 6000.0, 1024)
ARCHIVE_POWER = 2000.0


def sigma_pixels(power: float) -> float:
    """The Gaussian that takes a spectrum at the archive's resolving power to ``power``."""
    width = np.sqrt(1 / power**2 - 1 / ARCHIVE_POWER**2) if power < ARCHIVE_POWER else 0.0
    return C_KMS * width / FWHM_PER_SIGMA / GRID.velocity_step_kms


def lines(rng: np.random.Generator, n_lines: int = 60) -> np.ndarray:
    """A continuum-normalised spectrum of narrow absorption lines at the archive's resolution."""
    x = np.arange(GRID.n_pixels)
    flux = np.ones(GRID.n_pixels)
    centres, depths = rng.uniform(20, GRID.n_pixels - 20, n_lines), rng.uniform(0.2, 0.7, n_lines)
    for centre, depth in zip(centres, depths, strict=True):
        flux -= depth * np.exp(-0.5 * ((x - centre) / 0.6) ** 2)
    return flux


def test_a_shift_moves_a_line_by_its_pixels_and_masks_what_comes_in_from_outside():
    flux = np.ones((2, 100))
    flux[:, 50] = 0.0
    moved = shifted(flux, np.array([2.5, -3.0]))
    assert np.nanargmin(moved[0]) in (52, 53) and moved[0, 52] == pytest.approx(0.5)
    assert np.nanargmin(moved[1]) == 47 and moved[1, 47] == 0.0
    assert np.isnan(moved[0, :3]).all() and np.isfinite(moved[0, 3:]).all()
    assert np.isnan(moved[1, -3:]).all() and np.isfinite(moved[1, :-3]).all()


def test_blurring_gives_the_kernel_asked_for_and_keeps_masked_pixels_out():
    x = np.arange(201)
    delta = np.zeros((1, 201))
    delta[0, 100] = 1.0
    profile = blurred(delta, 4.0)[0]
    width = np.sqrt((profile * (x - 100) ** 2).sum() / profile.sum())
    assert width == pytest.approx(4.0, rel=0.02)
    assert blurred(delta, 0.0) is delta
    masked = np.ones((1, 201))
    masked[0, 120:] = np.nan  # no data: a constant stays constant up to the edge, then masked
    out = blurred(masked, 3.0)[0]
    np.testing.assert_allclose(out[:120][np.isfinite(out[:120])], 1.0)
    assert np.isnan(out[130:]).all()


def test_misfits_compare_only_pixels_both_have():
    flux = np.array([1.0, 2.0, 3.0, 4.0])
    good = np.array([True, True, True, False])
    templates = np.array([[1.0, 2.0, 3.0, 99.0], [2.0, np.nan, 4.0, 4.0], [np.nan] * 4])
    np.testing.assert_allclose(misfits(flux, good, templates, degree=None), [0.0, 1.0, np.inf])


def response_curve(n_pixels: int, rng: np.random.Generator, log_rms: float = 0.4) -> np.ndarray:
    """Another flux calibration: the exponential of a random Legendre series of order 4 in log λ."""
    x = np.linspace(-1, 1, n_pixels)
    curve = np.polynomial.legendre.legval(x, np.concatenate([[0.0], rng.normal(size=4)]))
    return np.exp(curve / curve.std() * log_rms)


def test_a_flux_calibration_is_taken_out_and_finer_structure_is_not():
    """A star under another flux calibration (log-RMS 0.4, a curve on the scale of the range) fits
    itself to within its noise once the calibration curve is fitted, and 30 times worse without; a
    star with one broad band more (15 pixels, 5 % deep: narrower than any calibration curve) does not
    fit it: the curve takes out less than 30 % of the band."""
    rng = np.random.default_rng(11)
    star = lines(rng) * np.exp(-np.linspace(0, 1.5, GRID.n_pixels))  # lines on a sloping continuum
    calibration = response_curve(GRID.n_pixels, rng)
    upload = star * calibration + rng.normal(0, 0.005, GRID.n_pixels)
    good = np.ones(GRID.n_pixels, bool)
    good[:100] = False  # the upload covers less than the archive
    band = 1 - 0.05 * np.exp(-0.5 * ((np.arange(GRID.n_pixels) - 600) / 15.0) ** 2)
    templates = np.stack([star, star * band])
    fitted = misfits(upload, good, templates)
    assert fitted[0] < 2 * 0.005**2
    band_signal = np.mean(((star * band - star) * calibration)[good] ** 2)  # had nothing absorbed it
    assert fitted[1] - fitted[0] > 0.7 * band_signal
    assert misfits(upload, good, templates, degree=None)[0] > 30 * fitted[0]


def test_the_ladder_runs_from_the_lowest_power_to_the_archives():
    np.testing.assert_allclose(ladder(2000.0), [500, 707.1, 1000, 1414.2, 2000], rtol=1e-4)
    np.testing.assert_allclose(ladder(0.0), [0.0])  # no resolving power declared: compared as it is


def test_a_low_resolution_shifted_upload_finds_its_star_where_native_flux_would_not():
    """The upload is star 0 at R = 500, moved by 150 km/s, under another flux calibration, with
    noise. Star 1 has star 0's lines, weaker and broader: at the archive's resolution it looks more
    like the blurred upload than star 0 does; brought to the upload's resolution and velocity, star 0
    fits best, and R = 500 is found."""
    rng = np.random.default_rng(3)
    stars = np.stack([lines(rng) for _ in range(6)])
    stars[1] = 1 - 0.85 * (1 - blurred(stars[:1], sigma_pixels(700.0))[0])  # star 0's lines, smoother
    upload = blurred(stars[:1], sigma_pixels(500.0))
    upload = shifted(upload, np.array([150.0 / GRID.velocity_step_kms]))[0]
    upload *= response_curve(GRID.n_pixels, rng)
    upload += rng.normal(0, 0.01, upload.shape)
    good = np.isfinite(upload)
    upload = np.where(good, upload, 0.0)
    own_velocities = np.zeros(len(stars))
    native = misfits(upload, good, shifted(stars, own_velocities + 150.0 / GRID.velocity_step_kms))
    assert np.argmin(native) == 1

    found = match(upload, good, stars, 150.0 - own_velocities, ARCHIVE_POWER, GRID.velocity_step_kms)
    assert found.resolving_power == pytest.approx(500.0)
    assert found.order[0] == 0 and found.misfit[0] < 2 * 0.01**2
    assert sorted(found.order) == list(range(6)) and np.all(np.diff(found.misfit) >= 0)
    unshifted = match(upload, good, stars, own_velocities, ARCHIVE_POWER, GRID.velocity_step_kms)
    assert unshifted.misfit[0] > 3 * found.misfit[0]  # 1.3 pixels off: the velocity matters too

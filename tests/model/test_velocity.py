"""Cross-correlation velocities recover known shifts, with errors that describe them."""

import numpy as np
import pytest

from model.preprocess import C_KMS, Grid, Matching
from model.spectrum import Spectrum
from model.velocity import (
    MAX_SHIFT_KMS,
    against_reconstruction,
    against_spectrum,
    correlate_arrays,
    correlate_many,
    fine_grid,
)


def lines(wave: np.ndarray, centres: np.ndarray) -> np.ndarray:
    flux = np.ones_like(wave)
    for centre in centres:
        flux -= 0.4 * np.exp(-0.5 * ((wave - centre) / 1.2) ** 2)
    return flux


@pytest.fixture(scope="module")
def star():
    rng = np.random.default_rng(4)
    wave = np.arange(3600.0, 7400.0, 0.5)
    return wave, rng.uniform(3700, 7300, 400)


@pytest.mark.parametrize(("rv_kms", "snr"), [(0.0, 100.0), (83.0, 30.0), (-212.0, 15.0)])
def test_against_spectrum_recovers_the_shift_within_its_error(star, rv_kms, snr):
    wave, centres = star
    rng = np.random.default_rng(int(abs(rv_kms)))
    grid, matching = Grid(3650.0, 7350.0, 1024), Matching("continuum")
    reference = Spectrum(wave, lines(wave, centres))
    moving = lines(wave, centres * (1 + rv_kms / C_KMS)) + rng.normal(0, 1 / snr, wave.shape)
    found = against_spectrum(Spectrum(wave, moving), reference, 10.0, grid, matching)
    assert found is not None
    assert 0 < found.error_kms < 10
    assert abs(found.rv_kms - 10.0 - rv_kms) <= 3 * found.error_kms + 1.0


def test_against_reconstruction_uses_a_model_grid_template(star):
    wave, centres = star
    grid = Grid(3650.0, 7350.0, 1024)
    template = lines(grid.wavelength, centres)  # what a perfect model would reconstruct at rest
    moving = Spectrum(wave, lines(wave, centres * (1 + 150.0 / C_KMS)))
    found = against_reconstruction(moving, template, grid, Matching("median"))
    assert found.rv_kms == pytest.approx(150.0, abs=max(3 * found.error_kms, 5.0))
    assert fine_grid(grid).velocity_step_kms == pytest.approx(grid.velocity_step_kms / 4, rel=1e-3)


def test_no_peak_no_velocity():
    wave = np.arange(4000.0, 4010.0, 0.5)  # 20 pixels: too little to correlate
    grid = Grid(3650.0, 7350.0, 1024)
    assert against_reconstruction(Spectrum(wave, np.ones_like(wave)), np.ones(1024), grid, Matching()) is None


def test_correlation_of_a_batch_is_the_lag_by_lag_sum():
    """The FFT of the batch gives the linear (not circular) correlation: each row's peak and
    curvature match the direct sum over overlapping pixels, lag by lag."""
    rng = np.random.default_rng(7)
    n, step = 600, 20.0
    max_lag = int(MAX_SHIFT_KMS / step)
    template = 1.0 - 0.5 * np.exp(-0.5 * ((np.arange(n)[None, :] - rng.uniform(100, 500, (3, 1))) / 3.0) ** 2)
    flux = np.stack([np.roll(t, shift) for t, shift in zip(template, [-40, 0, 37], strict=True)])
    flux += rng.normal(0, 0.01, template.shape)
    good = rng.uniform(size=flux.shape) > 0.1
    found = correlate_many(flux, good, template, step)
    for row, velocity in enumerate(found):
        depth = np.where(good[row], 1.0 - flux[row], 0.0)
        depth = np.where(good[row], depth - depth[good[row]].mean(), 0.0)
        model = 1.0 - template[row] - (1.0 - template[row])[good[row]].mean()
        lags = np.arange(-max_lag, max_lag + 1)
        ccf = np.array(
            [depth[lag:] @ model[: n - lag] if lag >= 0 else depth[:lag] @ model[-lag:] for lag in lags]
        )
        peak = int(np.argmax(ccf))
        left, centre, right = ccf[peak - 1 : peak + 2]
        offset = 0.5 * (left - right) / (left - 2 * centre + right)
        assert velocity.rv_kms == pytest.approx((lags[peak] + offset) * step, abs=1e-9)
    assert [round(v.rv_kms / step) for v in found] == [-40, 0, 37]
    assert correlate_arrays(flux[1], good[1], template[1], step) == found[1]

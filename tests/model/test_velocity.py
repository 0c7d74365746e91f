"""Cross-correlation velocities recover known shifts, with errors that describe them."""

import numpy as np
import pytest

from model.preprocess import C_KMS, Grid, Matching
from model.spectrum import Spectrum
from model.velocity import against_reconstruction, against_spectrum, fine_grid


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

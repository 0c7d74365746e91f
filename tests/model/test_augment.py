"""Instrument augmentations and upload matching do what they say, on spectra of known truth."""

import numpy as np
import pytest
import torch

from model.augment import (
    InstrumentAugmentation,
    coverage_masks,
    degrade,
    gaussian_blur,
    lsf_sigma_pixels,
    response_curves,
)
from model.preprocess import C_KMS, FWHM_PER_SIGMA, Grid, Matching, prepare, smooth_to_resolution
from model.spectrum import Spectrum


def line_spectrum(wave: np.ndarray, centres, depth=0.6, sigma_aa=1.0) -> np.ndarray:
    flux = np.ones_like(wave)
    for centre in centres:
        flux -= depth * np.exp(-0.5 * ((wave - centre) / sigma_aa) ** 2)
    return flux


def measured_sigma(x: np.ndarray, profile: np.ndarray) -> float:
    weights = profile / profile.sum()
    mean = (x * weights).sum()
    return float(np.sqrt(((x - mean) ** 2 * weights).sum()))


def test_gaussian_blur_gives_the_line_spread_function_asked_for():
    power, archive_power, pixel_kms = torch.tensor([500.0, 1000.0]), 2000.0, 100.0
    sigma = lsf_sigma_pixels(power, archive_power, pixel_kms)
    expected = C_KMS * np.sqrt(1 / power.numpy() ** 2 - 1 / archive_power**2) / FWHM_PER_SIGMA / pixel_kms
    assert np.allclose(sigma.numpy(), expected)
    flux = torch.zeros(2, 201)
    flux[:, 100] = 1.0  # a delta: the blurred profile is the kernel itself
    blurred = gaussian_blur(flux, torch.ones_like(flux, dtype=torch.bool), sigma)
    x = np.arange(201)
    for row in range(2):
        assert measured_sigma(x, blurred[row].numpy()) == pytest.approx(float(sigma[row]), rel=0.02)
    assert blurred.sum(dim=1).numpy() == pytest.approx([1.0, 1.0], rel=1e-4)  # flux kept


def test_gaussian_blur_leaves_masked_pixels_out():
    flux = torch.ones(1, 100)
    good = torch.ones(1, 100, dtype=torch.bool)
    flux[0, 40:60], good[0, 40:60] = 50.0, False  # garbage under the mask must not leak
    blurred = gaussian_blur(flux, good, torch.tensor([3.0]))
    assert torch.allclose(blurred[good], torch.ones(1, 100)[good], atol=1e-5)


def test_smooth_to_resolution_reaches_the_target_width():
    wave = np.arange(5000.0, 5200.0, 0.05)
    sharp_sigma = 5100.0 / 20000 / FWHM_PER_SIGMA
    flux = line_spectrum(wave, [5100.0], sigma_aa=sharp_sigma)
    out_wave, out_flux, bad = smooth_to_resolution(wave, flux, np.zeros(wave.shape, bool), 20000.0, 2000.0)
    assert not bad[50:-50].any()
    width = measured_sigma(out_wave, 1 - out_flux)
    assert width == pytest.approx(5100.0 / 2000 / FWHM_PER_SIGMA, rel=0.03)


def test_upload_sharper_than_the_archive_is_smoothed_to_it():
    wave = np.arange(4000.0, 7000.0, 0.1)
    grid = Grid(4000.0, 7000.0, 6000)  # fine enough to see a line's width
    sharp = Spectrum(wave, line_spectrum(wave, [5500.0], sigma_aa=0.1), resolving_power=20000.0)
    matched = prepare(sharp, grid, matching=Matching("median", 1000.0))
    untouched = prepare(sharp, grid, matching=Matching("median", 0.0))
    near = (grid.wavelength > 5450) & (grid.wavelength < 5550)
    width = measured_sigma(grid.wavelength[near], 1 - matched.flux[near])
    assert width == pytest.approx(5500.0 * np.sqrt(1 / 1000**2 - 1 / 20000**2) / FWHM_PER_SIGMA, rel=0.05)
    assert measured_sigma(grid.wavelength[near], 1 - untouched.flux[near]) < width / 5


def test_continuum_normalisation_removes_a_known_response_curve():
    rng = np.random.default_rng(1)
    wave = np.arange(3600.0, 7400.0, 0.9)
    centres = rng.uniform(3700, 7300, 300)
    star = line_spectrum(wave, centres, depth=0.3, sigma_aa=1.5) * (wave / 5000.0) ** -2.0
    x = 2 * (np.log(wave) - np.log(wave[0])) / np.ptp(np.log(wave)) - 1
    response = np.exp(0.4 * np.polynomial.legendre.legval(x, [0, 1.0, -0.6, 0.5]))
    grid = Grid(3650.0, 7350.0, 1024)
    for normalise, tolerance in (("continuum", 0.02), ("median", None)):
        matching = Matching(normalise)
        plain = prepare(Spectrum(wave, star), grid, matching=matching)
        seen = prepare(Spectrum(wave, star * response * 7.0), grid, matching=matching)
        rms = float(np.sqrt(np.mean((plain.flux - seen.flux)[plain.good] ** 2)))
        if tolerance:
            assert rms < tolerance  # the response curve is gone
        else:
            assert rms > 0.2  # median normalisation keeps it: what continuum normalisation is for


def test_the_log_continuum_kept_for_the_continuum_channel_is_the_one_divided_out():
    """What continuum normalisation divides out is kept (as ln of it over its median) for a model's
    continuum channels: a known smooth continuum comes back, the response curve that multiplies it
    adds its own log, and median normalisation measures none."""
    wave = np.arange(3600.0, 7400.0, 0.9)
    # Evenly spaced lines take the same share of every block (random ones would shift block means).
    lines = line_spectrum(wave, np.linspace(3700, 7300, 300), depth=0.3, sigma_aa=1.5)
    continuum = (wave / 5000.0) ** -2.0
    grid = Grid(3650.0, 7350.0, 1024)
    matching = Matching("continuum")
    plain = prepare(Spectrum(wave, lines * continuum * 3.0), grid, matching=matching)
    expected = np.log((grid.wavelength / 5000.0) ** -2.0)
    inner = slice(64, -64)  # block means are interpolated; beyond the outer block centres they are held
    centred = (plain.log_continuum - expected)[inner]
    assert plain.good.all() and np.isfinite(plain.log_continuum).all()
    assert np.std(centred) < 0.01  # the shape, up to the flux scale
    assert np.median(plain.log_continuum) == pytest.approx(0.0, abs=0.01)
    x = 2 * (np.log(wave) - np.log(wave[0])) / np.ptp(np.log(wave)) - 1
    tilt = np.exp(0.3 * x)
    tilted = prepare(Spectrum(wave, lines * continuum * tilt), grid, matching=matching)
    grid_x = 2 * (np.log(grid.wavelength) - np.log(wave[0])) / np.ptp(np.log(wave)) - 1
    added = (tilted.log_continuum - plain.log_continuum - 0.3 * grid_x)[inner]
    assert np.std(added) < 0.01
    assert np.isnan(prepare(Spectrum(wave, lines), grid, matching=Matching("median")).log_continuum).all()


def test_continuum_is_unchanged_by_noise_and_resolution():
    rng = np.random.default_rng(2)
    wave = np.arange(3600.0, 7400.0, 0.9)
    star = line_spectrum(wave, rng.uniform(3700, 7300, 300), depth=0.3, sigma_aa=1.2)
    grid = Grid(3650.0, 7350.0, 1024)
    matching = Matching("continuum")
    plain = prepare(Spectrum(wave, star), grid, matching=matching)
    w, f, _ = smooth_to_resolution(wave, star, np.zeros(wave.shape, bool), 4000.0, 500.0)
    blurred = prepare(Spectrum(w, f), grid, matching=matching)
    noisy = prepare(Spectrum(wave, star + rng.normal(0, 0.05, wave.shape)), grid, matching=matching)
    # The line depths change with resolution and noise; the level they are measured from does not.
    assert abs(blurred.scale / plain.scale - 1) < 0.003
    assert abs(noisy.scale / plain.scale - 1) < 0.003


def test_response_curves_have_the_asked_rms():
    curves = response_curves(2000, 512, order=3, rms=0.05, generator=torch.Generator().manual_seed(0))
    log_rms = torch.log(curves).pow(2).mean().sqrt().item()
    assert log_rms == pytest.approx(0.05, rel=0.1)


def test_coverage_masks_keep_at_least_the_minimum_window():
    config = InstrumentAugmentation(crop_probability=1.0, coverage_min=0.6, gap_probability=0.0)
    keep = coverage_masks(500, 1000, config, torch.Generator().manual_seed(0))
    kept = keep.float().mean(dim=1)
    assert kept.min() >= 0.59 and kept.max() <= 1.0 and kept.std() > 0.05
    # One window each: the kept pixels are contiguous.
    assert ((keep[:, 1:] != keep[:, :-1]).sum(dim=1) <= 2).all()


def test_degrade_keeps_a_clean_share_and_degrades_the_rest():
    flux = torch.ones(400, 256)
    flux[:, 128] = 0.2
    good = torch.ones_like(flux, dtype=torch.bool)
    config = InstrumentAugmentation(probability=0.5)
    out, kept = degrade(flux, good, config, 2000.0, 100.0, torch.Generator().manual_seed(0))
    unchanged = (out == flux).all(dim=1) & kept.all(dim=1)
    assert 0.35 < unchanged.float().mean() < 0.65
    changed = ~unchanged
    assert (out[changed, 128] > 0.2).float().mean() > 0.9  # the line is shallower once blurred
    assert not (out[~kept] != 0).any()  # masked pixels carry nothing

"""Bring spectra onto the model's common grid: vacuum log-λ, rebinned, normalised, masked.

Rebinning integrates the flux over each target pixel (a flux-conserving rebin), so it works
both when the grid is coarser than the data (MILES 0.9 Å → ~2 Å) and when it is finer.
Bad, missing and uncovered pixels are masked rather than filled, so the model never learns
chip gaps or the edges of a spectrum's coverage.

:class:`Matching` says how a spectrum from any instrument is brought to the archive's terms
first: air wavelengths become vacuum (always), a spectrum sharper than the archive is smoothed
to the archive's resolving power, and with ``normalise = "continuum"`` the flux is divided by
a pseudo-continuum (:func:`pseudo_continuum`) so that a flux calibration the archive does not
share - any smooth response curve - drops out before the model sees the spectrum.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import NamedTuple

import numpy as np
from scipy.ndimage import gaussian_filter1d
from scipy.signal import fftconvolve

from model.spectrum import Spectrum

C_KMS = 299_792.458
#: A target pixel is masked when more than this fraction of it falls on bad or missing data.
MAX_BAD_FRACTION = 0.2
#: FWHM of a Gaussian over its σ.
FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))
#: Width of the blocks whose mean flux traces the pseudo-continuum (km/s; ~200 Å at 5000 Å):
#: wide against lines and bands, narrow against a response curve.
CONTINUUM_BLOCK_KMS = 12_000.0
#: A block takes part in the continuum when at least this fraction of it is good.
CONTINUUM_MIN_GOOD = 0.5
NORMALISATIONS = ("median", "continuum")


def _read_only(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


@dataclass(frozen=True)
class Grid:
    """A log-uniform vacuum wavelength grid in Å."""

    wave_min: float
    wave_max: float
    n_pixels: int

    def __post_init__(self) -> None:
        if not (0 < self.wave_min < self.wave_max) or self.n_pixels < 16:
            raise ValueError(f"invalid grid {self}")

    @cached_property
    def wavelength(self) -> np.ndarray:
        """Pixel centres (read-only: computed once per grid, every spectrum rebinned onto it shares it)."""
        return _read_only(np.geomspace(self.wave_min, self.wave_max, self.n_pixels))

    @cached_property
    def edges(self) -> np.ndarray:
        """Pixel edges, geometric midpoints between centres (log-uniform, like the centres); read-only."""
        log_w = np.log(self.wavelength)
        step = log_w[1] - log_w[0]
        return _read_only(np.exp(np.concatenate([log_w - step / 2, [log_w[-1] + step / 2]])))

    @property
    def velocity_step_kms(self) -> float:
        return float(np.log(self.wave_max / self.wave_min) / (self.n_pixels - 1) * C_KMS)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Grid:
        return cls(float(data["wave_min"]), float(data["wave_max"]), int(data["n_pixels"]))

    @classmethod
    def fit(
        cls, ranges: Sequence[tuple[float, float]], n_pixels: int, coverage_fraction: float = 0.9
    ) -> Grid:
        """The widest range covered by at least ``coverage_fraction`` of the spectra (vacuum Å)."""
        if not len(ranges):
            raise ValueError("cannot fit a grid to an empty archive")
        lows = np.array([r[0] for r in ranges])
        highs = np.array([r[1] for r in ranges])
        tail = 100 * (1 - coverage_fraction)
        low, high = float(np.percentile(lows, 100 - tail)), float(np.percentile(highs, tail))
        if low >= high:
            low, high = float(np.median(lows)), float(np.median(highs))
        return cls(low, high, n_pixels)


@dataclass(frozen=True)
class Matching:
    """How every spectrum - archive or upload - is brought to the archive's terms before encoding.

    ``normalise``: "median" divides by the median of good pixels (keeps the continuum shape, which
    only a shared flux calibration makes comparable); "continuum" divides by
    :func:`pseudo_continuum` (lines and bands only: any smooth response curve drops out).
    ``resolving_power``: the archive's λ/Δλ; a spectrum that declares a higher one is smoothed
    to it before rebinning. 0 leaves every spectrum at its own resolution.
    """

    normalise: str = "median"
    resolving_power: float = 0.0

    def __post_init__(self) -> None:
        if self.normalise not in NORMALISATIONS:
            raise ValueError(f"normalise must be one of {', '.join(NORMALISATIONS)}, not {self.normalise!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> Matching:
        data = data or {}
        return cls(str(data.get("normalise", "median")), float(data.get("resolving_power") or 0.0))


@dataclass
class Prepared:
    """A spectrum on the grid: normalised flux (0 where masked), good-pixel mask, and bookkeeping."""

    flux: np.ndarray  # float32 (n_pixels,)
    good: np.ndarray  # bool (n_pixels,)
    scale: float  # the normalisation divisor
    coverage: float  # fraction of the grid with good data
    #: float32 (n_pixels,): σ of the normalised flux per pixel, NaN where unknown or masked.
    noise: np.ndarray | None = None
    #: float32 (n_pixels,): ln(pseudo-continuum / its median), what continuum normalisation divided
    #: out; NaN where masked, and everywhere under median normalisation (no continuum measured).
    log_continuum: np.ndarray | None = None


def prepare(
    spectrum: Spectrum,
    grid: Grid,
    rv_kms: float = 0.0,
    snr: float | None = None,
    rng: np.random.Generator | None = None,
    with_noise: bool = True,
    matching: Matching = Matching(),
) -> Prepared:
    """Resample one spectrum onto ``grid``; optionally Doppler-shift it and add noise (augmentation).

    ``rv_kms`` moves the spectrum as if its source receded at that speed; ``snr`` adds Gaussian noise
    with σ = 1/snr to the normalised flux (the normalised median is 1). ``with_noise=False``
    skips propagating the noise (``Prepared.noise`` is None): only training weighs by it.
    ``matching`` brings the spectrum to the archive's resolution and normalisation first.
    """
    wave = spectrum.vacuum_wavelength()
    source_flux, source_bad = spectrum.flux, ~spectrum.good
    variance = None
    if with_noise and spectrum.ivar is not None:
        with np.errstate(divide="ignore"):
            variance = np.where(spectrum.ivar > 0, 1.0 / spectrum.ivar, np.inf)
    if matching.resolving_power > 0 and (spectrum.resolving_power or 0) > matching.resolving_power:
        wave, source_flux, source_bad = smooth_to_resolution(
            wave, source_flux, source_bad, spectrum.resolving_power, matching.resolving_power
        )
        variance = None  # smoothing correlates the pixels; the rebinned noise would be misstated
    wave = wave * (1.0 + rv_kms / C_KMS)
    flux, bad_fraction, variance = _rebin(wave, source_flux, source_bad, grid.edges, variance)
    good = bad_fraction <= MAX_BAD_FRACTION
    log_continuum = np.full(flux.shape, np.nan, np.float32)
    if matching.normalise == "continuum":
        continuum = pseudo_continuum(flux, good, grid.velocity_step_kms)
        flux, scale = flux / continuum, float(np.median(continuum[good])) if good.any() else 1.0
        with np.errstate(invalid="ignore", divide="ignore"):
            shape = np.log(continuum / scale)
        log_continuum = np.where(good & np.isfinite(shape), shape, np.nan).astype(np.float32)
    else:
        flux, scale = _normalise(flux, good)
        continuum = np.full(flux.shape, scale)
    noise = np.sqrt(variance) / np.abs(continuum) if variance is not None else np.full(flux.shape, np.nan)
    if snr is not None and good.any():
        rng = rng or np.random.default_rng()
        flux = flux + rng.normal(0.0, 1.0 / snr, flux.shape)
        # The added noise dominates what a library spectrum had (unknown counts as none).
        noise = np.hypot(np.nan_to_num(noise, nan=0.0), 1.0 / snr)
    flux = np.where(good, flux, 0.0).astype(np.float32)
    noise = np.where(good, noise, np.nan).astype(np.float32) if with_noise else None
    return Prepared(
        flux=flux,
        good=good,
        scale=scale,
        coverage=float(good.mean()),
        noise=noise,
        log_continuum=log_continuum,
    )


class OnGrid(NamedTuple):
    """Spectra stacked on the grid: flux (n, p) float32, good (n, p) bool, coverage (n,), and
    log_continuum (n, p) float32 (see :attr:`Prepared.log_continuum`)."""

    flux: np.ndarray
    good: np.ndarray
    coverage: np.ndarray
    log_continuum: np.ndarray

    def calibrated(self) -> np.ndarray:
        """The flux with its continuum put back, so divided only by a constant (the median of its
        continuum, or of itself under median normalisation): (n, p) float32, NaN where masked."""
        shape = np.exp(np.nan_to_num(self.log_continuum, nan=0.0))
        return np.where(self.good, self.flux * shape, np.nan).astype(np.float32)


def prepare_many(spectra: Sequence[Spectrum], grid: Grid, matching: Matching = Matching()) -> OnGrid:
    """Stack :func:`prepare` over spectra."""
    prepared = [prepare(s, grid, with_noise=False, matching=matching) for s in spectra]
    if not prepared:
        empty = np.zeros((0, grid.n_pixels), np.float32)
        return OnGrid(empty, np.zeros((0, grid.n_pixels), bool), np.zeros(0), empty.copy())
    return OnGrid(
        np.stack([p.flux for p in prepared]),
        np.stack([p.good for p in prepared]),
        np.array([p.coverage for p in prepared]),
        np.stack([p.log_continuum for p in prepared]),
    )


def _rebin(
    wave: np.ndarray,
    flux: np.ndarray,
    bad: np.ndarray,
    target_edges: np.ndarray,
    variance: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Flux-conserving rebin by differencing the cumulative integral at the target edges.

    Returns the mean flux density per target pixel, the fraction of each target pixel that
    is bad or outside the data (bad source pixels are bridged by interpolation, then counted),
    and, given the source pixels' ``variance``, the variance of each mean (source pixels taken
    as independent; a partly covered source pixel counts as if whole, which errs on the safe
    side).
    """
    finite = np.isfinite(wave)
    wave, flux, bad = wave[finite], flux[finite], bad[finite] | ~np.isfinite(flux[finite])
    n_target = len(target_edges) - 1
    if len(wave) < 2 or bad.all():
        unknown = None if variance is None else np.full(n_target, np.nan)
        return np.zeros(n_target), np.ones(n_target), unknown
    clean = flux.copy()
    if bad.any():
        clean[bad] = np.interp(wave[bad], wave[~bad], flux[~bad])
    # Source pixel edges halfway between centres, extrapolated at the ends.
    mid = 0.5 * (wave[1:] + wave[:-1])
    src_edges = np.concatenate([[2 * wave[0] - mid[0]], mid, [2 * wave[-1] - mid[-1]]])
    widths = np.diff(src_edges)
    cum_flux = np.concatenate([[0.0], np.cumsum(clean * widths)])
    width = np.diff(target_edges)
    # Each target edge's cumulative integrals, once: a pixel's integral is the difference at its two edges.
    inside = np.clip(target_edges, src_edges[0], src_edges[-1])
    covered = np.maximum(np.diff(inside), 0.0)
    flux_int = np.diff(np.interp(inside, src_edges, cum_flux))
    if bad.any():
        bad_int = np.diff(np.interp(inside, src_edges, np.concatenate([[0.0], np.cumsum(bad * widths)])))
    else:
        bad_int = np.zeros(n_target)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_flux = np.where(covered > 0, flux_int / covered, 0.0)
    bad_fraction = 1.0 - (covered - bad_int) / width
    mean_variance = None
    if variance is not None:
        source_variance = np.asarray(variance, dtype=np.float64)[finite]
        source_variance = np.where(bad | ~np.isfinite(source_variance), 0.0, source_variance)
        cum_var = np.concatenate([[0.0], np.cumsum(source_variance * widths**2)])
        var_int = np.diff(np.interp(inside, src_edges, cum_var))
        good_width = covered - bad_int
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_variance = np.where(good_width > 0, var_int / good_width**2, np.nan)
    return mean_flux, np.clip(bad_fraction, 0.0, 1.0), mean_variance


def _normalise(flux: np.ndarray, good: np.ndarray) -> tuple[np.ndarray, float]:
    """Divide by the median of the good pixels, so spectra of any flux scale look alike."""
    if not good.any():
        return flux, 1.0
    scale = float(np.median(flux[good]))
    if not np.isfinite(scale) or scale <= 0:
        scale = float(np.mean(np.abs(flux[good]))) or 1.0
    return flux / scale, scale


def pseudo_continuum(flux: np.ndarray, good: np.ndarray, pixel_kms: float) -> np.ndarray:
    """A smooth pseudo-continuum of one spectrum on a log-λ grid: the mean good flux of blocks
    :data:`CONTINUUM_BLOCK_KMS` wide, interpolated linearly between block centres and smoothed.

    Means, not upper quantiles: a block's mean is unchanged by noise and by the line spread
    function (both keep flux), so the same star seen at another resolution or S/N gets the same
    continuum; a smooth response curve is nearly constant over a block, so it divides out.
    Fewer than two usable blocks fall back to the median (a constant continuum).
    """
    n = len(flux)
    block = max(4, int(round(CONTINUUM_BLOCK_KMS / pixel_kms)))
    starts = np.arange(0, n, block)
    sums = np.add.reduceat(np.where(good, flux, 0.0), starts)
    counts = np.add.reduceat(good.astype(np.float64), starts)
    positions = np.add.reduceat(np.where(good, np.arange(n, dtype=np.float64), 0.0), starts)
    widths = np.diff(np.append(starts, n))
    usable = (counts >= CONTINUUM_MIN_GOOD * widths) & (counts > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        means, centres = sums / counts, positions / counts
    usable &= np.isfinite(means) & (means > 0)
    if usable.sum() < 2:
        level = float(np.median(flux[good])) if good.any() else 1.0
        return np.full(n, level if np.isfinite(level) and level > 0 else 1.0)
    continuum = np.interp(np.arange(n), centres[usable], means[usable])
    return gaussian_smooth(continuum, block / 4.0)


def gaussian_smooth(values: np.ndarray, sigma: float) -> np.ndarray:
    """``gaussian_filter1d(values, sigma, mode="nearest")`` by FFT convolution: the same kernel
    (truncated at 4 σ) and edge handling, equal to rounding (~1e-15 relative). The continuum's
    kernel spans thousands of pixels on the velocity grid, where the direct sum cost 30-40 times
    more: most of the time of a velocity measurement."""
    radius = int(4.0 * sigma + 0.5)
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 / sigma**2 * offsets**2)
    kernel /= kernel.sum()
    return fftconvolve(np.pad(values, radius, mode="edge"), kernel, mode="valid")


def smooth_to_resolution(
    wave: np.ndarray, flux: np.ndarray, bad: np.ndarray, resolving_power: float, target: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Convolve a spectrum of ``resolving_power`` with the Gaussian that brings it to ``target``.

    The spectrum is resampled onto a log-λ grid as fine as its own sampling (a constant kernel
    in velocity), convolved with the bad pixels left out, and returned on that grid.
    """
    finite = np.isfinite(wave) & (wave > 0)
    wave, flux, bad = wave[finite], flux[finite], bad[finite] | ~np.isfinite(flux[finite])
    order = np.argsort(wave)
    wave, flux, bad = wave[order], flux[order], bad[order]
    log_wave = np.log(wave)
    if len(wave) < 4 or bad.all():
        return wave, flux, bad
    step = float(np.median(np.diff(log_wave)))
    fine = np.arange(log_wave[0], log_wave[-1], step)
    clean = np.where(bad, 0.0, flux)
    weight = np.interp(fine, log_wave, (~bad).astype(float))
    values = np.interp(fine, log_wave, clean)
    sigma_v = np.sqrt(1.0 / target**2 - 1.0 / resolving_power**2) / FWHM_PER_SIGMA  # in ln λ
    sigma_px = sigma_v / step
    smoothed = gaussian_filter1d(values * weight, sigma_px, mode="nearest")
    norm = gaussian_filter1d(weight, sigma_px, mode="nearest")
    with np.errstate(invalid="ignore", divide="ignore"):
        out = smoothed / norm
    return np.exp(fine), np.where(norm > 0, out, 0.0), weight < 0.999


@dataclass
class Augmented:
    """Training arrays: the originals plus Doppler-shifted, noisier copies, with what was injected."""

    flux: np.ndarray  # (n, p) float32
    good: np.ndarray  # (n, p) bool
    groups: np.ndarray  # (n,) index of the original spectrum each row comes from
    rv_added: np.ndarray  # (n,) km/s injected (0 for originals)
    snr: np.ndarray  # (n,) injected S/N (NaN for originals)
    noise: np.ndarray  # (n, p) float32 σ per pixel, NaN where unknown (see Prepared.noise)
    log_continuum: np.ndarray  # (n, p) float32 (see Prepared.log_continuum)


def prepare_augmented(
    spectra: Sequence[Spectrum],
    grid: Grid,
    copies: int = 0,
    rv_max: float = 300.0,
    snr_range: tuple[float, float] | None = (10.0, 200.0),
    seed: int = 0,
    matching: Matching = Matching(),
) -> Augmented:
    """Every spectrum on the grid, plus ``copies`` augmented versions of each.

    Copies get a radial velocity uniform in ±``rv_max`` km/s and Gaussian noise at an S/N drawn
    log-uniformly from ``snr_range``, so rest-frame, noiseless libraries teach the model what
    RV and noise look like (and give those labels known values). ``snr_range=None`` keeps the
    copies clean (instrument augmentation adds noise to the inputs during training instead).
    """
    rng = np.random.default_rng(seed)
    flux, good, noise, continuum, groups, rv, snr = [], [], [], [], [], [], []
    for i, spectrum in enumerate(spectra):
        variants = [(0.0, None)] + [
            (
                rng.uniform(-rv_max, rv_max),
                None if snr_range is None else float(np.exp(rng.uniform(*np.log(snr_range)))),
            )
            for _ in range(copies)
        ]
        for rv_kms, s in variants:
            p = prepare(spectrum, grid, rv_kms=rv_kms, snr=s, rng=rng, matching=matching)
            flux.append(p.flux)
            good.append(p.good)
            noise.append(p.noise)
            continuum.append(p.log_continuum)
            groups.append(i)
            rv.append(rv_kms)
            snr.append(np.nan if s is None else s)
    return Augmented(
        np.stack(flux),
        np.stack(good),
        np.array(groups),
        np.array(rv),
        np.array(snr, dtype=float),
        np.stack(noise),
        np.stack(continuum),
    )

"""Bring spectra onto the model's common grid: vacuum log-λ, rebinned, normalised, masked.

Rebinning integrates the flux over each target pixel (a flux-conserving rebin), so it works
both when the grid is coarser than the data (MILES 0.9 Å → ~2 Å) and when it is finer.
Bad, missing and uncovered pixels are masked rather than filled, so the model never learns
chip gaps or the edges of a spectrum's coverage.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from model.spectrum import Spectrum

C_KMS = 299_792.458
#: A target pixel is masked when more than this fraction of it falls on bad or missing data.
MAX_BAD_FRACTION = 0.2


@dataclass(frozen=True)
class Grid:
    """A log-uniform vacuum wavelength grid in Å."""

    wave_min: float
    wave_max: float
    n_pixels: int

    def __post_init__(self) -> None:
        if not (0 < self.wave_min < self.wave_max) or self.n_pixels < 16:
            raise ValueError(f"invalid grid {self}")

    @property
    def wavelength(self) -> np.ndarray:
        return np.geomspace(self.wave_min, self.wave_max, self.n_pixels)

    @property
    def edges(self) -> np.ndarray:
        """Pixel edges, geometric midpoints between centres (log-uniform, like the centres)."""
        log_w = np.log(self.wavelength)
        step = log_w[1] - log_w[0]
        return np.exp(np.concatenate([log_w - step / 2, [log_w[-1] + step / 2]]))

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


@dataclass
class Prepared:
    """A spectrum on the grid: normalised flux (0 where masked), good-pixel mask, and bookkeeping."""

    flux: np.ndarray  # float32 (n_pixels,)
    good: np.ndarray  # bool (n_pixels,)
    scale: float  # the normalisation divisor
    coverage: float  # fraction of the grid with good data
    #: float32 (n_pixels,): σ of the normalised flux per pixel, NaN where unknown or masked.
    noise: np.ndarray | None = None


def prepare(
    spectrum: Spectrum,
    grid: Grid,
    rv_kms: float = 0.0,
    snr: float | None = None,
    rng: np.random.Generator | None = None,
    with_noise: bool = True,
) -> Prepared:
    """Resample one spectrum onto ``grid``; optionally Doppler-shift it and add noise (augmentation).

    ``rv_kms`` moves the spectrum as if its source receded at that speed; ``snr`` adds Gaussian noise
    with σ = 1/snr to the normalised flux (the normalised median is 1). ``with_noise=False``
    skips propagating the noise (``Prepared.noise`` is None): only training weighs by it.
    """
    wave = spectrum.vacuum_wavelength() * (1.0 + rv_kms / C_KMS)
    variance = None
    if with_noise and spectrum.ivar is not None:
        with np.errstate(divide="ignore"):
            variance = np.where(spectrum.ivar > 0, 1.0 / spectrum.ivar, np.inf)
    flux, bad_fraction, variance = _rebin(wave, spectrum.flux, ~spectrum.good, grid.edges, variance)
    good = bad_fraction <= MAX_BAD_FRACTION
    flux, scale = _normalise(flux, good)
    noise = np.sqrt(variance) / abs(scale) if variance is not None else np.full(flux.shape, np.nan)
    if snr is not None and good.any():
        rng = rng or np.random.default_rng()
        flux = flux + rng.normal(0.0, 1.0 / snr, flux.shape)
        # The added noise dominates what a library spectrum had (unknown counts as none).
        noise = np.hypot(np.nan_to_num(noise, nan=0.0), 1.0 / snr)
    flux = np.where(good, flux, 0.0).astype(np.float32)
    noise = np.where(good, noise, np.nan).astype(np.float32) if with_noise else None
    return Prepared(flux=flux, good=good, scale=scale, coverage=float(good.mean()), noise=noise)


def prepare_many(spectra: Sequence[Spectrum], grid: Grid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stack :func:`prepare` over spectra: flux (n, p) float32, good (n, p) bool, coverage (n,)."""
    prepared = [prepare(s, grid, with_noise=False) for s in spectra]
    return (
        np.stack([p.flux for p in prepared]) if prepared else np.zeros((0, grid.n_pixels), np.float32),
        np.stack([p.good for p in prepared]) if prepared else np.zeros((0, grid.n_pixels), bool),
        np.array([p.coverage for p in prepared]),
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
    cum_bad = np.concatenate([[0.0], np.cumsum(bad * widths)])
    lo, hi = target_edges[:-1], target_edges[1:]
    width = hi - lo
    inside_lo, inside_hi = np.clip(lo, src_edges[0], src_edges[-1]), np.clip(hi, src_edges[0], src_edges[-1])
    covered = np.maximum(inside_hi - inside_lo, 0.0)
    flux_int = np.interp(inside_hi, src_edges, cum_flux) - np.interp(inside_lo, src_edges, cum_flux)
    bad_int = np.interp(inside_hi, src_edges, cum_bad) - np.interp(inside_lo, src_edges, cum_bad)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_flux = np.where(covered > 0, flux_int / covered, 0.0)
    bad_fraction = 1.0 - (covered - bad_int) / width
    mean_variance = None
    if variance is not None:
        source_variance = np.asarray(variance, dtype=np.float64)[finite]
        source_variance = np.where(bad | ~np.isfinite(source_variance), 0.0, source_variance)
        cum_var = np.concatenate([[0.0], np.cumsum(source_variance * widths**2)])
        var_int = np.interp(inside_hi, src_edges, cum_var) - np.interp(inside_lo, src_edges, cum_var)
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


@dataclass
class Augmented:
    """Training arrays: the originals plus Doppler-shifted, noisier copies, with what was injected."""

    flux: np.ndarray  # (n, p) float32
    good: np.ndarray  # (n, p) bool
    groups: np.ndarray  # (n,) index of the original spectrum each row comes from
    rv_added: np.ndarray  # (n,) km/s injected (0 for originals)
    snr: np.ndarray  # (n,) injected S/N (NaN for originals)
    noise: np.ndarray  # (n, p) float32 σ per pixel, NaN where unknown (see Prepared.noise)


def prepare_augmented(
    spectra: Sequence[Spectrum],
    grid: Grid,
    copies: int = 0,
    rv_max: float = 300.0,
    snr_range: tuple[float, float] = (10.0, 200.0),
    seed: int = 0,
) -> Augmented:
    """Every spectrum on the grid, plus ``copies`` augmented versions of each.

    Copies get a radial velocity uniform in ±``rv_max`` km/s and Gaussian noise at an S/N drawn
    log-uniformly from ``snr_range``, so rest-frame, noiseless libraries teach the model what
    RV and noise look like (and give those labels known values).
    """
    rng = np.random.default_rng(seed)
    flux, good, noise, groups, rv, snr = [], [], [], [], [], []
    for i, spectrum in enumerate(spectra):
        variants = [(0.0, None)] + [
            (rng.uniform(-rv_max, rv_max), float(np.exp(rng.uniform(*np.log(snr_range)))))
            for _ in range(copies)
        ]
        for rv_kms, s in variants:
            p = prepare(spectrum, grid, rv_kms=rv_kms, snr=s, rng=rng)
            flux.append(p.flux)
            good.append(p.good)
            noise.append(p.noise)
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
    )

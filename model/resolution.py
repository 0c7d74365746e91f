"""An upload compared with archive spectra at the upload's own resolution and velocity.

A spectrum from a spectrograph of lower resolution than the archive's cannot be brought up to the
archive's resolution, but archive spectra can be brought down to the upload's. The encoder is
trained to map a degraded spectrum to the latent of the star (model/augment.py), yet at R ≈ 500
its nearest neighbours were markedly worse than flux compared at a matched resolution
(bench/crossinstrument.py: 69 % against 85 % of stars within 500 K on the demo archive). So the
service takes the latent's nearest :data:`CANDIDATES`, moves each to the upload's velocity, blurs
them to each resolving power of a ladder, finds the one at which they fit the upload best, and
orders them by how well they fit it there.

They are compared with their continua, each divided only by a constant, and each candidate is
multiplied by the smooth curve (a polynomial of :data:`CALIBRATION_DEGREE` in log λ) that fits it to
the upload best: an upload's flux calibration differs from the archive's by such a curve, which
takes it out, while structure finer than the curve (broad bands, the wings of Balmer lines) stays to
be compared. Dividing both by a pseudo-continuum took that structure out as well (84 % of R ≈ 500
uploads within 500 K on the demo archive, against 88-89 % this way; bench/crossinstrument.py).

Everything happens on the model's grid (log λ, so a velocity is a constant shift in pixels and a
resolving power a constant Gaussian width).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache, lru_cache

import numpy as np
from scipy.ndimage import gaussian_filter1d
from threadpoolctl import ThreadpoolController

from model.preprocess import C_KMS, FWHM_PER_SIGMA

#: Archive spectra nearest by the latent that are compared in flux.
CANDIDATES = 50
#: Resolving powers tried, spaced evenly in log from the lowest to the archive's own.
LADDER_STEPS = 5
#: The lowest resolving power tried where the model does not say how low its training's instrument
#: augmentation went (``augment_resolving_power_min``).
LOWEST_POWER = 500.0
#: The resolving power is the one at which this many candidates fit best on average.
FIT_NEAREST = 5
#: A blurred pixel counts when at least this share of its kernel's weight has data.
MIN_WEIGHT = 0.5
#: Degree of the polynomial in log λ, over the upload's range, that takes a flux calibration out:
#: the exponential of a smooth curve needs more terms than the curve (4 left R ≈ 500 uploads where
#: dividing by a pseudo-continuum had them; 8 and 12 did equally well).
CALIBRATION_DEGREE = 8


@dataclass(frozen=True)
class MatchedOrder:
    """Candidates ordered by their fit at the upload's resolving power: ``order`` holds positions in
    the candidate list, best first, and ``misfit`` their mean squared difference from the upload."""

    order: np.ndarray
    misfit: np.ndarray
    resolving_power: float


def ladder(archive_power: float, lowest: float = LOWEST_POWER, steps: int = LADDER_STEPS) -> np.ndarray:
    """Resolving powers from ``lowest`` to the archive's own; the archive's alone when it has none
    declared or none above ``lowest``."""
    if archive_power <= lowest:
        return np.array([archive_power])
    return np.geomspace(lowest, archive_power, steps)


def shifted(flux: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """Each row of ``flux`` (NaN where masked) moved by its own number of ``pixels`` (positive:
    towards longer wavelengths), by linear interpolation; NaN where either neighbour is."""
    n, length = flux.shape
    position = np.arange(length)[None, :] - np.asarray(pixels, np.float64)[:, None]
    inside = (position >= 0) & (position <= length - 1)
    left = np.clip(np.floor(position).astype(np.int64), 0, length - 2)
    fraction = position - left
    rows = np.arange(n)[:, None]
    values = flux[rows, left] * (1 - fraction) + flux[rows, left + 1] * fraction
    return np.where(inside, values, np.nan)


def blur_width(power: float, archive_power: float, pixel_kms: float) -> float:
    """The Gaussian σ, in pixels of ``pixel_kms``, that takes a spectrum at ``archive_power`` (none
    declared: 0) to ``power``; 0 where ``power`` is not the lower."""
    sharp = 1.0 / archive_power**2 if archive_power > 0 else 0.0
    return C_KMS * np.sqrt(max(1.0 / power**2 - sharp, 0.0)) / FWHM_PER_SIGMA / pixel_kms


def blurred(flux: np.ndarray, sigma_pixels: float) -> np.ndarray:
    """Each row convolved with a Gaussian of ``sigma_pixels``, masked (NaN) pixels left out and
    masked again where less than :data:`MIN_WEIGHT` of the kernel had data."""
    if sigma_pixels <= 0:
        return flux
    good = np.isfinite(flux)
    weight = gaussian_filter1d(good.astype(np.float64), sigma_pixels, axis=1, mode="constant")
    total = gaussian_filter1d(np.where(good, flux, 0.0), sigma_pixels, axis=1, mode="constant")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(weight >= MIN_WEIGHT, total / weight, np.nan)


def misfits(
    flux: np.ndarray, good: np.ndarray, templates: np.ndarray, degree: int | None = CALIBRATION_DEGREE
) -> np.ndarray:
    """Mean squared difference of each template row from ``flux`` over the pixels both have, once
    multiplied by the polynomial of ``degree`` in pixel position (over the upload's good range) that
    fits it best by least squares; ``degree=None`` compares the templates as they are."""
    both = good[None, :] & np.isfinite(templates)
    count = both.sum(axis=1)
    template = np.where(both, templates, 0.0)
    target = np.where(good, flux, 0.0)
    if degree is not None:
        template = template * calibration_curves(target, good, template, degree)
    difference = np.where(both, template - target[None, :], 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, (difference**2).sum(axis=1) / count, np.inf)


def calibration_curves(flux: np.ndarray, good: np.ndarray, templates: np.ndarray, degree: int) -> np.ndarray:
    """For each template row (0 where it or the upload has no data), the Legendre series of
    ``degree`` that, multiplied into it, fits ``flux`` best: rows of the same shape as ``templates``."""
    inside = np.flatnonzero(good)
    if inside.size == 0:
        return np.ones_like(templates)
    basis, products = legendre_terms(flux.size, int(inside[0]), int(inside[-1]), degree)
    terms = degree + 1
    normal = ((templates**2) @ products).reshape(-1, terms, terms)  # one product for all templates
    right = (templates * flux) @ basis
    scale = np.trace(normal, axis1=1, axis2=2)[:, None, None] / terms
    ridge = 1e-9 * np.maximum(scale, 1e-30) * np.eye(terms)  # a template with no data fits as 0
    coefficients = np.linalg.solve(normal + ridge, right[..., None])[..., 0]
    return coefficients @ basis.T


@cache
def blas() -> ThreadpoolController:
    """The process's BLAS libraries, found once: :func:`match` runs its small products on one thread.
    Threads on them only contend with other requests' work; on 2 cores with 16 concurrent uploads
    they cut /similar from ~65 to 13 answers a second (bench/load.py)."""
    return ThreadpoolController()


@lru_cache(maxsize=64)
def legendre_terms(size: int, first: int, last: int, degree: int) -> tuple[np.ndarray, np.ndarray]:
    """Legendre polynomials up to ``degree`` over pixels ``first``..``last`` of ``size`` (constant
    beyond), (size, terms), and their pairwise products, (size, terms²): the same for every ladder
    step and for every upload of the same coverage, so kept."""
    x = np.clip((np.arange(size) - first) / max(last - first, 1) * 2 - 1, -1, 1)
    basis = np.polynomial.legendre.legvander(x, degree)
    products = (basis[:, :, None] * basis[:, None, :]).reshape(size, -1)
    basis.flags.writeable = products.flags.writeable = False
    return basis, products


def match(
    flux: np.ndarray,
    good: np.ndarray,
    candidates: np.ndarray,
    shifts_kms: np.ndarray,
    archive_power: float,
    pixel_kms: float,
    lowest: float = LOWEST_POWER,
) -> MatchedOrder:
    """The candidates (rows on the grid, NaN where masked) ordered by their fit to the upload
    (``flux``, ``good``) once moved by ``shifts_kms`` to its velocity and blurred to the resolving
    power of :func:`ladder` at which the best :data:`FIT_NEAREST` fit it best."""
    moved = shifted(np.asarray(candidates, np.float64), np.nan_to_num(shifts_kms) / pixel_kms)
    best: tuple[float, float, np.ndarray] | None = None
    with blas().limit(limits=1, user_api="blas"):
        for power in ladder(archive_power, lowest):
            found = misfits(flux, good, blurred(moved, blur_width(power, archive_power, pixel_kms)))
            score = float(np.mean(np.sort(found)[:FIT_NEAREST]))
            if best is None or score < best[0]:
                best = (score, float(power), found)
    _, power, found = best
    order = np.argsort(found, kind="stable")
    return MatchedOrder(order, found[order], power)

"""Radial velocities of a spectrum: the model's, and an independent one from an archive spectrum.

The encoder's z0 × velocity_scale_kms places the spectrum to within a pixel or so of the grid
(tens of km/s). The model's velocity refines it: the spectrum is cross-correlated with the model's
own reconstruction of it placed at rest (z0 = 0) - the template the model says this star has -
on a grid :data:`OVERSAMPLE` times finer than the model's, so lines keep their sub-pixel
positions, and the peak is refined with a parabola. The independent estimate cross-correlates
the spectrum in the same way with the observed spectrum of its nearest archive neighbour, whose
own velocity in the archive's frame is added. Errors are Zucker's (2003, MNRAS 342, 1291)
maximum-likelihood σ from the peak's curvature, scaled by the measured :data:`ERROR_SCALE`.

All velocities are in km/s, positive for a source receding, in the frame the archive's velocities
are in (the version's ``velocity_frame``): relative to the stellar rest frame for a library at
rest, or to the frame of the archive's own ``rv`` labels. No barycentric correction is applied.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from model.preprocess import Grid, Matching, prepare
from model.spectrum import Spectrum

#: The cross-correlation grid is this many times finer than the model's.
OVERSAMPLE = 4
#: Lags searched, km/s either side of zero.
MAX_SHIFT_KMS = 1500.0
#: Zucker's σ assumes independent pixels and a template that matches; resampled uploads and an
#: imperfect template break both. bench/crossinstrument.py found the truth within 1σ for 42-48 %
#: of the degraded uploads (68 % expected), so stated errors are scaled by this factor.
ERROR_SCALE = 1.8


@dataclass(frozen=True)
class Velocity:
    rv_kms: float
    error_kms: float

    def shifted(self, kms: float) -> Velocity:
        return Velocity(self.rv_kms + kms, self.error_kms)


def fine_grid(grid: Grid) -> Grid:
    """The model's range, OVERSAMPLE times finer."""
    return Grid(grid.wave_min, grid.wave_max, (grid.n_pixels - 1) * OVERSAMPLE + 1)


def on_fine_grid(spectrum: Spectrum, grid: Grid, matching: Matching) -> tuple[np.ndarray, np.ndarray]:
    """A spectrum as the model sees it, on the fine grid: (flux, good)."""
    prepared = prepare(spectrum, fine_grid(grid), with_noise=False, matching=matching)
    return prepared.flux, prepared.good


def against_reconstruction(
    spectrum: Spectrum, rest_template: np.ndarray, grid: Grid, matching: Matching
) -> Velocity | None:
    """The velocity that best lines ``spectrum`` up with ``rest_template`` (the model-grid
    reconstruction at z0 = 0); None when the spectrum has too little for a peak."""
    fine = fine_grid(grid)
    flux, good = on_fine_grid(spectrum, grid, matching)
    template = np.interp(np.arange(fine.n_pixels) / OVERSAMPLE, np.arange(grid.n_pixels), rest_template)
    return correlate_arrays(flux, good, template, fine.velocity_step_kms)


def against_spectrum(
    spectrum: Spectrum, reference: Spectrum, reference_kms: float, grid: Grid, matching: Matching
) -> Velocity | None:
    """The velocity of ``spectrum`` from lining it up with ``reference`` (an archive spectrum whose own
    velocity is ``reference_kms``)."""
    flux, good = on_fine_grid(spectrum, grid, matching)
    template, template_good = on_fine_grid(reference, grid, matching)
    template = np.where(template_good, template, 1.0)  # no lines where the reference has no data
    found = correlate_arrays(flux, good, template, fine_grid(grid).velocity_step_kms)
    return None if found is None else found.shifted(reference_kms)


def correlate_arrays(
    flux: np.ndarray, good: np.ndarray, template: np.ndarray, step_kms: float
) -> Velocity | None:
    """Cross-correlate line depths (1 − flux) on a common log-λ grid with ``step_kms`` per pixel."""
    if good.sum() < 50:
        return None
    depth = np.where(good, 1.0 - flux, 0.0)
    depth = np.where(good, depth - depth[good].mean(), 0.0)
    model = 1.0 - template
    model = model - model[good].mean()
    max_lag = int(MAX_SHIFT_KMS / step_kms)
    lags = np.arange(-max_lag, max_lag + 1)
    n = len(flux)
    ccf = np.empty(len(lags))
    for i, lag in enumerate(lags):  # depth at pixel j lines up with the template at j − lag
        if lag >= 0:
            a, b = depth[lag:], model[: n - lag]
        else:
            a, b = depth[:lag], model[-lag:]
        ccf[i] = a @ b
    norm = math.sqrt(float(depth @ depth) * float(np.where(good, model, 0.0) @ np.where(good, model, 0.0)))
    if norm <= 0:
        return None
    ccf /= norm
    peak = int(np.argmax(ccf))
    if peak in (0, len(lags) - 1) or ccf[peak] <= 0:
        return None
    left, centre, right = ccf[peak - 1 : peak + 2]
    curvature = left - 2 * centre + right  # per lag²
    if curvature >= 0:
        return None
    offset = 0.5 * (left - right) / curvature
    height = min(centre - 0.125 * (left - right) ** 2 / curvature, 0.999)
    independent = good.sum() / OVERSAMPLE
    variance = -1.0 / (independent * (curvature / height) * height**2 / (1 - height**2))
    return Velocity(
        float((lags[peak] + offset) * step_kms), float(ERROR_SCALE * math.sqrt(variance) * step_kms)
    )

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

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.fft

from model.preprocess import Grid, Matching, prepare
from model.readers import read_spectra
from model.spectrum import Spectrum, SpectrumReadError

#: The cross-correlation grid is this many times finer than the model's.
OVERSAMPLE = 4
#: Lags searched, km/s either side of zero.
MAX_SHIFT_KMS = 1500.0
#: Zucker's σ assumes independent pixels and a template that matches; resampled uploads and an
#: imperfect template break both. bench/crossinstrument.py found the truth within 1σ for 42-48 %
#: of the degraded uploads (68 % expected), so stated errors are scaled by this factor.
ERROR_SCALE = 1.8
#: Spectra cross-correlated together (bench/encode.py: larger batches fall out of cache).
CORRELATE_BATCH = 128


@dataclass(frozen=True)
class Velocity:
    rv_kms: float
    error_kms: float

    def shifted(self, kms: float) -> Velocity:
        return Velocity(self.rv_kms + kms, self.error_kms)


@functools.cache
def fine_grid(grid: Grid) -> Grid:
    """The model's range, OVERSAMPLE times finer (one object per grid, so its arrays are computed once)."""
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
    return against_reconstructions([spectrum], rest_template[None, :], grid, matching)[0]


def against_reconstructions(
    spectra: Sequence[Spectrum], rest_templates: np.ndarray, grid: Grid, matching: Matching
) -> list[Velocity | None]:
    """:func:`against_reconstruction` of many spectra, correlated together."""
    fine = fine_grid(grid)
    fine_pixels = np.arange(fine.n_pixels) / OVERSAMPLE
    coarse = np.arange(grid.n_pixels)
    found: list[Velocity | None] = []
    for start in range(0, len(spectra), CORRELATE_BATCH):  # a batch's transforms stay in cache
        observed = [on_fine_grid(s, grid, matching) for s in spectra[start : start + CORRELATE_BATCH]]
        flux, good = np.stack([f for f, _ in observed]), np.stack([g for _, g in observed])
        chunk = np.asarray(rest_templates[start : start + CORRELATE_BATCH])
        templates = np.stack([np.interp(fine_pixels, coarse, t) for t in chunk])
        found += correlate_many(flux, good, templates, fine.velocity_step_kms)
    return found


def against_spectrum(
    spectrum: Spectrum, reference: Spectrum, reference_kms: float, grid: Grid, matching: Matching
) -> Velocity | None:
    """The velocity of ``spectrum`` from lining it up with ``reference`` (an archive spectrum whose own
    velocity is ``reference_kms``)."""
    found = against_spectra([spectrum], [reference], grid, matching)[0]
    return None if found is None else found.shifted(reference_kms)


def against_spectra(
    spectra: Sequence[Spectrum], references: Sequence[Spectrum], grid: Grid, matching: Matching
) -> list[Velocity | None]:
    """:func:`against_spectrum` of each spectrum against its reference (velocity 0), correlated
    together; the same figures, pair by pair."""
    found: list[Velocity | None] = []
    for start in range(0, len(spectra), CORRELATE_BATCH):
        batch = slice(start, start + CORRELATE_BATCH)
        observed, templates = [], []
        for spectrum, reference in zip(spectra[batch], references[batch], strict=True):
            observed.append(on_fine_grid(spectrum, grid, matching))
            template, template_good = on_fine_grid(reference, grid, matching)
            templates.append(np.where(template_good, template, 1.0))  # no lines where it has no data
        flux, good = np.stack([f for f, _ in observed]), np.stack([g for _, g in observed])
        found += correlate_many(flux, good, np.stack(templates), fine_grid(grid).velocity_step_kms)
    return found


def pairs_from_files(
    files: Sequence[tuple[str, int]], pairs: Sequence[tuple[int, int]], grid: Grid, matching: Matching
) -> np.ndarray:
    """(n, 2) velocity and error of spectrum ``a`` against spectrum ``b`` (velocity 0) for each pair
    (a, b) of positions in ``files`` (file, index); NaN where a file cannot be read or the correlation
    has no peak. For worker processes, which get file positions rather than spectra: each file is
    read, and brought to the fine grid, once however many pairs it is in. The same figures as
    :func:`against_spectra`, pair by pair."""
    fine: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for position in sorted(set(np.ravel(pairs).tolist()), key=lambda p: files[p]):  # file order
        try:
            spectrum = read_spectra(files[position][0], index=files[position][1])[0]
        except SpectrumReadError:
            continue
        fine[position] = on_fine_grid(spectrum, grid, matching)
    found = np.full((len(pairs), 2), np.nan)
    kept = [n for n, (a, b) in enumerate(pairs) if a in fine and b in fine]
    step = fine_grid(grid).velocity_step_kms
    for start in range(0, len(kept), CORRELATE_BATCH):
        batch = kept[start : start + CORRELATE_BATCH]
        flux = np.stack([fine[pairs[n][0]][0] for n in batch])
        good = np.stack([fine[pairs[n][0]][1] for n in batch])
        templates = np.stack([np.where(fine[pairs[n][1]][1], fine[pairs[n][1]][0], 1.0) for n in batch])
        for n, velocity in zip(batch, correlate_many(flux, good, templates, step), strict=True):
            if velocity is not None:
                found[n] = velocity.rv_kms, velocity.error_kms
    return found


def correlate_arrays(
    flux: np.ndarray, good: np.ndarray, template: np.ndarray, step_kms: float
) -> Velocity | None:
    """Cross-correlate line depths (1 − flux) on a common log-λ grid with ``step_kms`` per pixel."""
    return correlate_many(flux[None, :], good[None, :], template[None, :], step_kms)[0]


def correlate_many(
    flux: np.ndarray, good: np.ndarray, template: np.ndarray, step_kms: float
) -> list[Velocity | None]:
    """:func:`correlate_arrays` row by row over (n, pixels) arrays, every lag of every row in one FFT.

    The correlation is linear, not circular: the transform is zero-padded beyond the largest lag.
    """
    good = np.asarray(good, bool)
    weight = good.astype(np.float64)
    n_good = weight.sum(axis=1, keepdims=True)
    safe = np.maximum(n_good, 1.0)
    depth = (1.0 - np.asarray(flux, np.float64)) * weight
    depth -= depth.sum(axis=1, keepdims=True) / safe
    depth *= weight
    model = 1.0 - np.asarray(template, np.float64)
    model -= (model * weight).sum(axis=1, keepdims=True) / safe
    n_pixels = flux.shape[1]
    max_lag = int(MAX_SHIFT_KMS / step_kms)
    lags = np.arange(-max_lag, max_lag + 1)
    size = scipy.fft.next_fast_len(n_pixels + max_lag + 1, real=True)
    # depth at pixel j lines up with the template at j − lag: ccf[lag] = Σ_j depth[j + lag] model[j]
    spectrum = scipy.fft.rfft(depth, size, axis=1, workers=-1)
    spectrum *= np.conj(scipy.fft.rfft(model, size, axis=1, workers=-1))
    circular = scipy.fft.irfft(spectrum, size, axis=1, workers=-1)
    ccf = circular[:, lags % size]
    norm = np.sqrt(np.einsum("ij,ij->i", depth, depth) * np.einsum("ij,ij,ij->i", model, model, weight))
    return [
        _peak(row_ccf / row_norm, lags, int(row_good), step_kms) if row_good >= 50 and row_norm > 0 else None
        for row_ccf, row_norm, row_good in zip(ccf, norm, n_good[:, 0], strict=True)
    ]


def _peak(ccf: np.ndarray, lags: np.ndarray, n_good: int, step_kms: float) -> Velocity | None:
    """The velocity at the parabola-refined peak of a normalised CCF, with Zucker's error."""
    peak = int(np.argmax(ccf))
    if peak in (0, len(lags) - 1) or ccf[peak] <= 0:
        return None
    left, centre, right = ccf[peak - 1 : peak + 2]
    curvature = left - 2 * centre + right  # per lag²
    if curvature >= 0:
        return None
    offset = 0.5 * (left - right) / curvature
    height = min(centre - 0.125 * (left - right) ** 2 / curvature, 0.999)
    independent = n_good / OVERSAMPLE
    variance = -1.0 / (independent * (curvature / height) * height**2 / (1 - height**2))
    return Velocity(
        float((lags[peak] + offset) * step_kms), float(ERROR_SCALE * math.sqrt(variance) * step_kms)
    )

"""How unlike the archive a query spectrum is: an out-of-distribution score against the archive itself.

Three things tell that a spectrum is unlike anything the model was trained on: the model cannot
reconstruct it (its residual beyond the noise is high, :func:`structured_residual`), its latent
vector lies far from every archive spectrum, or it has fewer lines and bands than any star
(:func:`line_signal`: a flat line, a smooth ramp, pure noise - once the pseudo-continuum is
divided out they look like a featureless star, which the first two do not catch). Each is
turned into the percentile it has
among typical uploads: a sample of archive spectra as another instrument would deliver them
(service.pipeline.ood_reference), with their residuals and their distances to the nearest
*other* archive spectrum over the similarity dimensions, kept per model version. The score is
the largest of the tail scores - 2·percentile − 1 for the residual and the distance, 1 − 2·percentile
for the line signal, clipped to [0, 1]: 0 for anything on the typical side of the reference's
median, 0.9 at its 95th (5th) percentile, 1 beyond all of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter1d

from model.atomic import write_npy_atomic

OOD_FILE = "ood_reference.npy"
#: Line spread functions (σ, grid pixels) the reconstruction is tried at: an upload of lower
#: resolution than the archive is compared with a reconstruction as blurred as itself.
RESIDUAL_BLURS = (0.0, 0.7, 1.2, 2.0)
#: Archive spectra sampled for the reference distributions (percentiles need no more).
SAMPLE = 10_000
#: Scores from here on come with a warning: beyond the archive's 95th percentile.
WARN_AT = 0.9


@dataclass(frozen=True)
class OODScore:
    """The score of one query with what it was computed from."""

    recon_error: float
    nn_distance: float
    recon_percentile: float
    nn_percentile: float
    line_signal: float = float("nan")
    #: Fraction of the reference with less line signal (0.5 when the reference has none).
    signal_percentile: float = 0.5

    @property
    def score(self) -> float:
        return max(
            _tail(self.recon_percentile), _tail(self.nn_percentile), _tail(1.0 - self.signal_percentile)
        )

    @property
    def weak(self) -> bool:
        return self.score >= WARN_AT

    def reasons(self) -> list[str]:
        """Why the score is high, in words a user understands (empty when it is not)."""
        found = []
        if _tail(self.recon_percentile) >= WARN_AT:
            found.append(
                f"the model reconstructs it worse than {self.recon_percentile:.0%} of the archive's spectra "
                f"(residual beyond its noise {self.recon_error:.3g} of the normalised flux)"
            )
        if _tail(self.nn_percentile) >= WARN_AT:
            found.append(
                f"its nearest archive spectrum is farther away ({self.nn_distance:.3g}) than for "
                f"{self.nn_percentile:.0%} of the archive's own spectra"
            )
        if _tail(1.0 - self.signal_percentile) >= WARN_AT:
            found.append(
                f"it has fewer lines and bands beyond its noise ({self.line_signal:.3g} of the "
                f"normalised flux) than {1 - self.signal_percentile:.0%} of the archive's spectra"
            )
        return found


def _tail(percentile: float) -> float:
    return float(np.clip(2.0 * percentile - 1.0, 0.0, 1.0))


@dataclass(frozen=True)
class OODReference:
    """Sorted reconstruction errors and nearest-neighbour distances of a sample of archive spectra."""

    recon_error: np.ndarray
    nn_distance: np.ndarray
    line_signal: np.ndarray | None = None

    @classmethod
    def build(
        cls, recon_error: np.ndarray, nearest: np.ndarray, line_signal: np.ndarray | None = None
    ) -> OODReference:
        def ordered(values):
            return None if values is None else np.sort(np.asarray(values, np.float64))

        return cls(ordered(recon_error), ordered(nearest), ordered(line_signal))

    def save(self, path: str | Path) -> None:
        parts = [self.recon_error, self.nn_distance]
        write_npy_atomic(
            path, np.vstack(parts + ([self.line_signal] if self.line_signal is not None else []))
        )

    @classmethod
    def load(cls, path: str | Path) -> OODReference | None:
        path = Path(path)
        if not path.exists():
            return None
        rows = np.load(path, allow_pickle=False)
        return cls(rows[0], rows[1], rows[2] if len(rows) > 2 else None)  # 2 rows: before line signal

    def score(self, recon_error: float, nn_distance: float, line_signal: float = float("nan")) -> OODScore:
        signal_percentile = 0.5
        if self.line_signal is not None and np.isfinite(line_signal):
            signal_percentile = float(np.searchsorted(self.line_signal, line_signal, side="left")) / max(
                len(self.line_signal), 1
            )
        return OODScore(
            recon_error,
            nn_distance,
            self._percentile(self.recon_error, recon_error),
            self._percentile(self.nn_distance, nn_distance),
            line_signal,
            signal_percentile,
        )

    @staticmethod
    def _percentile(sorted_values: np.ndarray, value: float) -> float:
        """Fraction of archive values at or below ``value``; a non-finite value is beyond them all."""
        if not np.isfinite(value):
            return 1.0
        return float(np.searchsorted(sorted_values, value, side="right")) / max(len(sorted_values), 1)


def structured_residual(recon: np.ndarray, flux: np.ndarray, good: np.ndarray) -> np.ndarray:
    """What the reconstruction misses beyond the noise, per spectrum (n,): √max(0, ⟨r²⟩ − ⟨Δr²⟩/2).

    r is the residual over good pixels and Δr its pixel-to-pixel difference: white noise adds σ²
    to ⟨r²⟩ and 2σ² to ⟨Δr²⟩, so their difference keeps what is smooth - a missed line, a wrong
    continuum - and a noisy but ordinary upload is not mistaken for an unusual one. The smallest
    value over the :data:`RESIDUAL_BLURS` versions of the reconstruction is taken, so a spectrum of
    lower resolution than the archive is not penalised for its line widths.
    """
    good = np.asarray(good, bool)
    weight = good.astype(np.float64)
    best = np.full(len(flux), np.inf)
    for sigma in RESIDUAL_BLURS:
        model = recon
        if sigma > 0:  # blur only over the spectrum's own pixels
            norm = gaussian_filter1d(weight, sigma, axis=1, mode="nearest")
            blurred = gaussian_filter1d(recon * weight, sigma, axis=1, mode="nearest")
            model = np.where(norm > 1e-6, blurred / np.maximum(norm, 1e-6), recon)
        best = np.minimum(best, beyond_noise(flux - model, good))
    return best


def line_signal(flux: np.ndarray, good: np.ndarray) -> np.ndarray:
    """How much a spectrum departs from flat beyond its noise, per spectrum (n,): :func:`beyond_noise` of
    the normalised flux less 1 - the lines and bands a star has."""
    return beyond_noise(flux - 1.0, np.asarray(good, bool))


def beyond_noise(values: np.ndarray, good: np.ndarray) -> np.ndarray:
    """√max(0, ⟨v²⟩ − ⟨Δv²⟩/2) over good pixels (and good neighbouring pairs), per row: white noise adds
    σ² to the first term and 2σ² to ⟨Δv²⟩, so what is left is the smooth part of ``values``."""
    v = np.where(good, values, 0.0)
    pairs = good[:, 1:] & good[:, :-1]
    total = (v**2).sum(1) / np.maximum(good.sum(1), 1)
    steps = (np.where(pairs, np.diff(v, axis=1), 0.0) ** 2).sum(1) / np.maximum(pairs.sum(1), 1)
    return np.sqrt(np.maximum(total - steps / 2, 0.0))


def sample_rows(n: int, seed: int = 0) -> np.ndarray:
    """The archive rows the reference is built from: all of them, or a seeded sample of :data:`SAMPLE`."""
    if n <= SAMPLE:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, SAMPLE, replace=False))

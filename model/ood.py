"""How unlike the archive a query spectrum is: an out-of-distribution score against the archive itself.

Two things tell that a spectrum is unlike anything the model was trained on: the model cannot
reconstruct it (its reconstruction error is high), and its latent vector lies far from every
archive spectrum (its nearest archive neighbour is far). Each is turned into the percentile it
has among the archive's own spectra (their reconstruction errors, and each one's distance to its
nearest *other* archive spectrum over the similarity dimensions), kept as a sample per model
version. The score is the larger of the two tail scores, 2·percentile − 1 clipped to [0, 1]:
0 for anything at or below the archive's median, 0.9 at its 95th percentile, 1 beyond the most
extreme archive spectrum.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.atomic import write_npy_atomic

OOD_FILE = "ood_reference.npy"
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

    @property
    def score(self) -> float:
        return max(_tail(self.recon_percentile), _tail(self.nn_percentile))

    @property
    def weak(self) -> bool:
        return self.score >= WARN_AT

    def reasons(self) -> list[str]:
        """Why the score is high, in words a user understands (empty when it is not)."""
        found = []
        if _tail(self.recon_percentile) >= WARN_AT:
            found.append(
                f"the model reconstructs it worse than {self.recon_percentile:.0%} of the archive's spectra "
                f"(RMS residual {self.recon_error:.3g})"
            )
        if _tail(self.nn_percentile) >= WARN_AT:
            found.append(
                f"its nearest archive spectrum is farther away ({self.nn_distance:.3g}) than for "
                f"{self.nn_percentile:.0%} of the archive's own spectra"
            )
        return found


def _tail(percentile: float) -> float:
    return float(np.clip(2.0 * percentile - 1.0, 0.0, 1.0))


@dataclass(frozen=True)
class OODReference:
    """Sorted reconstruction errors and nearest-neighbour distances of a sample of archive spectra."""

    recon_error: np.ndarray
    nn_distance: np.ndarray

    @classmethod
    def build(cls, recon_error: np.ndarray, nearest: np.ndarray) -> OODReference:
        return cls(np.sort(np.asarray(recon_error, np.float64)), np.sort(np.asarray(nearest, np.float64)))

    def save(self, path: str | Path) -> None:
        write_npy_atomic(path, np.vstack([self.recon_error, self.nn_distance]))

    @classmethod
    def load(cls, path: str | Path) -> OODReference | None:
        path = Path(path)
        if not path.exists():
            return None
        both = np.load(path, allow_pickle=False)
        return cls(both[0], both[1])

    def score(self, recon_error: float, nn_distance: float) -> OODScore:
        return OODScore(
            recon_error,
            nn_distance,
            self._percentile(self.recon_error, recon_error),
            self._percentile(self.nn_distance, nn_distance),
        )

    @staticmethod
    def _percentile(sorted_values: np.ndarray, value: float) -> float:
        """Fraction of archive values at or below ``value``; a non-finite value is beyond them all."""
        if not np.isfinite(value):
            return 1.0
        return float(np.searchsorted(sorted_values, value, side="right")) / max(len(sorted_values), 1)


def sample_rows(n: int, seed: int = 0) -> np.ndarray:
    """The archive rows the reference is built from: all of them, or a seeded sample of :data:`SAMPLE`."""
    if n <= SAMPLE:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, SAMPLE, replace=False))

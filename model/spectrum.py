"""The one in-memory spectrum type every reader produces and every stage consumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from astropy import units as u
from astropy.time import Time

#: Physical labels the archive knows by name; anything else a reader finds goes to ``extra``.
KNOWN_LABELS = ("teff", "logg", "feh", "rv", "snr", "vsini", "airmass")


class SpectrumReadError(ValueError):
    """A file could not be read as a spectrum; the message names the file and the reason."""

    def __init__(self, path: object, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass
class Spectrum:
    """A 1D spectrum on its own wavelength grid, with metadata and physical labels.

    ``wavelength`` is always stored in Ångström (``unit`` records what the file said);
    ``medium`` is ``"air"`` or ``"vacuum"``. ``ivar`` is the inverse variance (0 = no
    information), ``mask`` is True where a pixel is *bad*.
    """

    wavelength: np.ndarray
    flux: np.ndarray
    ivar: np.ndarray | None = None
    mask: np.ndarray | None = None
    medium: str = "vacuum"
    flux_unit: str = ""
    identifier: str = ""
    ra: float | None = None
    dec: float | None = None
    target_name: str = ""
    obs_time: Time | None = None
    exptime: float | None = None
    resolving_power: float | None = None
    instrument: str = ""
    labels: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    #: Where the spectrum came from, so the archive can re-read it: file, reader name, and the
    #: position within a file holding many spectra (row of a table; 0 for single-spectrum files).
    source: str = ""
    source_format: str = ""
    source_index: int = 0

    def __post_init__(self) -> None:
        self.wavelength = np.asarray(self.wavelength, dtype=np.float64)
        self.flux = np.asarray(self.flux, dtype=np.float64)
        if self.wavelength.ndim != 1 or self.wavelength.shape != self.flux.shape:
            raise ValueError(
                f"wavelength {self.wavelength.shape} and flux {self.flux.shape} must be equal 1-D arrays"
            )
        if self.ivar is not None:
            self.ivar = np.asarray(self.ivar, dtype=np.float64)
        if self.mask is not None:
            self.mask = np.asarray(self.mask, dtype=bool)
        if self.medium not in ("air", "vacuum"):
            raise ValueError(f"medium must be 'air' or 'vacuum', not {self.medium!r}")

    @property
    def good(self) -> np.ndarray:
        """Pixels with a finite flux, not masked, and (if known) non-zero inverse variance."""
        ok = np.isfinite(self.flux) & np.isfinite(self.wavelength)
        if self.mask is not None:
            ok &= ~self.mask
        if self.ivar is not None:
            ok &= np.isfinite(self.ivar) & (self.ivar > 0)
        return ok

    def vacuum_wavelength(self) -> np.ndarray:
        """Wavelengths in vacuum (Å), converting from air when needed."""
        return self.wavelength if self.medium == "vacuum" else air_to_vacuum(self.wavelength)

    def wavelength_range_m(self) -> tuple[float, float]:
        """Covered range in metres, as ObsCore's em_min/em_max want it."""
        w = self.wavelength[self.good] if self.good.any() else self.wavelength
        return float(np.nanmin(w) * 1e-10), float(np.nanmax(w) * 1e-10)


def to_angstrom(values: np.ndarray, unit: str | u.UnitBase | None) -> np.ndarray:
    """Convert a spectral coordinate (any astropy length/frequency/energy unit) to Å."""
    if unit is None or unit == "":
        return np.asarray(values, dtype=np.float64)
    q = u.Quantity(np.asarray(values, dtype=np.float64), u.Unit(unit))
    return q.to_value(u.AA, equivalencies=u.spectral())


def air_to_vacuum(wave_air: np.ndarray) -> np.ndarray:
    """Air → vacuum wavelengths in Å (Ciddor 1996 via Morton 2000, as SDSS and IAU use)."""
    wave_air = np.asarray(wave_air, dtype=np.float64)
    sigma2 = (1e4 / wave_air) ** 2
    n = (
        1
        + 8.336624212083e-5
        + 2.408926869968e-2 / (130.1065924522 - sigma2)
        + 1.599740894897e-4 / (38.92568793293 - sigma2)
    )
    return wave_air * n


def vacuum_to_air(wave_vac: np.ndarray) -> np.ndarray:
    """Vacuum → air wavelengths in Å (Morton 2000), the inverse of :func:`air_to_vacuum`."""
    wave_vac = np.asarray(wave_vac, dtype=np.float64)
    sigma2 = (1e4 / wave_vac) ** 2
    n = 1 + 8.34254e-5 + 2.406147e-2 / (130 - sigma2) + 1.5998e-4 / (38.9 - sigma2)
    return wave_vac / n

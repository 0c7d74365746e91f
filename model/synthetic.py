"""Synthetic stellar spectra with exactly known labels, for scale benchmarks and tests.

This is a **toy model**, not a stellar atmosphere: it is meant to be fast (thousands of
spectra per second on one core) and to make every label drive something real, smooth and
monotone in the flux, so that a model trained on it has something to recover and a test
can check that it did. What drives what:

- ``teff``: the continuum is a Planck curve B_λ(teff), normalised to unit median over the
  grid. Line strengths depend on it through ``θ = 5040/teff``: hydrogen (Balmer, Paschen)
  peaks near 9000 K, neutral metals (Fe I, Ca I, Mg I, Na I, K I, Cr I, Mn I) grow toward
  cool stars, ionised species (Fe II, Sr II, Ba II) peak in F/G stars, Ca II H&K and the
  Ca II triplet weaken above ~7500 K, the CH G band peaks near 5000 K, and TiO bands
  (broad depressions with a sharp blue head, degrading to the red) appear below ~4000 K.
- ``feh``: metal features scale with 10**feh inside a curve of growth
  ``EW = w · ln(1 + s)``: linear for weak lines, saturating (but still monotone) for strong
  ones. Hydrogen does not depend on it.
- ``logg``: pressure broadening. Every line has a Lorentzian half-width
  ``γ = γ0 · 10**(b·(logg - 4.4))``, large for hydrogen, Ca II, Mg b, Na D and Ca I 4227,
  so their wings widen in dwarfs. Some strengths are gravity sensitive too: Na I 8183/8195,
  Na D, Mg b, Ca I 4227 and hydrogen are stronger in dwarfs; the Ca II triplet, Sr II,
  Ba II, Fe II and O I 7774 are stronger in giants.
- ``vsini``: rotational broadening, approximated by a Gaussian of σ = vsini/2 (the second
  moment of a uniform rotating disc) added in quadrature to the instrumental
  σ = c/(R·2.3548) of ``resolving_power``. Line profiles are pseudo-Voigt (Thompson et al.
  1987) with unit area, so broadening conserves the optical-depth area of a line and makes
  it shallower and wider.
- ``rv``: Doppler shift of the whole stellar spectrum (continuum, lines, bands),
  λ_obs = λ_rest·(1 + rv/c). On the log-linear grid this is a uniform shift of
  ln(1 + rv/c)/Δlnλ pixels.
- ``airmass``: telluric bands fixed in the observed frame (O2 A and B, three H2O bands),
  each a box of optical depth τ0 smoothed by the instrument; the transmission is
  T(λ)**airmass (Beer–Lambert).
- ``snr``: Gaussian noise of constant σ = median(noiseless flux)/snr; ``ivar = 1/σ²``.

Lines combine as optical depths: flux = continuum · exp(-Σ τ_line - airmass·τ_telluric),
so overlapping or saturated lines never go below zero. Line wavelengths are the standard
laboratory air values, converted to vacuum with :func:`model.spectrum.air_to_vacuum`; the
whole spectrum is in vacuum. Velocities within a line profile are log-velocities
c·ln(λ/λ_c), so profiles are symmetric on the log-linear grid.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np
from astropy.io import fits
from astropy.units import Unit
from scipy.special import erf, ndtr

from model.spectrum import Spectrum, air_to_vacuum

#: The labels every synthetic spectrum carries, in this order.
LABEL_NAMES = ("teff", "logg", "feh", "rv", "vsini", "snr", "airmass")
LABEL_UNITS = {
    "teff": "K",
    "logg": "dex",
    "feh": "dex",
    "rv": "km/s",
    "vsini": "km/s",
    "snr": "",
    "airmass": "",
}

C_KMS = 299792.458
#: Second radiation constant hc/k in Å·K.
C2_AA_K = 1.438777e8
FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))
#: Optical depth below which a line's Lorentzian wing is cut (and tapered to zero).
WING_TAU = 1e-3
#: Line equivalent width (Å) or band depth below which a feature is skipped for a spectrum.
MIN_STRENGTH = 1e-4
#: Intrinsic (thermal + microturbulent) Gaussian width of atomic lines, km/s.
SIGMA_ATOMIC = 3.0


@dataclass(frozen=True)
class SyntheticConfig:
    """Wavelength grid (vacuum Å, log-linear), resolution, and the range of each label."""

    wave_min: float = 3800.0
    wave_max: float = 9200.0
    n_pixels: int = 4000
    resolving_power: float = 2000.0
    teff: tuple[float, float] = (3500.0, 9000.0)
    logg: tuple[float, float] = (0.5, 5.0)
    feh: tuple[float, float] = (-2.5, 0.5)
    rv: tuple[float, float] = (-300.0, 300.0)
    vsini: tuple[float, float] = (0.0, 150.0)
    snr: tuple[float, float] = (10.0, 200.0)
    airmass: tuple[float, float] = (1.0, 2.5)
    #: Draw snr log-uniformly (like real surveys: many faint, few bright); others are uniform.
    log_uniform_snr: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.wave_min < self.wave_max or self.n_pixels < 2 or self.resolving_power <= 0:
            raise ValueError("need 0 < wave_min < wave_max, n_pixels >= 2 and resolving_power > 0")
        for name in LABEL_NAMES:
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"{name} range {lo, hi} is reversed")
        if self.snr[0] <= 0 or self.teff[0] <= 0 or self.airmass[0] < 0:
            raise ValueError("snr and teff must be positive and airmass non-negative")


# --------------------------------------------------------------------------------------------
# Line list
# --------------------------------------------------------------------------------------------


class Feature(NamedTuple):
    """One stellar absorption feature: a line (pseudo-Voigt) or a molecular band (EMG).

    Strength ``s = s0 · f_T(teff) · 10**(a_feh·feh + a_g·(logg - 4))`` gives the equivalent
    width ``w·ln(1+s)`` (Å) of a line, or the peak optical depth of a band.
    """

    name: str
    wave_air: float
    kind: str  # "line" or "band"
    tclass: str  # key of _TEMPERATURE
    w: float
    s0: float
    a_feh: float = 1.0
    a_g: float = 0.0
    gamma0: float = 5.0  # Lorentzian HWHM at logg 4.4, km/s ("line")
    b_g: float = 0.3  # d log γ / d logg
    sigma_intr: float = SIGMA_ATOMIC  # intrinsic Gaussian σ, km/s ("line")
    length: float = 0.0  # e-folding length toward the red, Å ("band")


def _theta(teff: np.ndarray) -> np.ndarray:
    return 5040.0 / teff


#: Temperature dependence of each class of feature, as a function of teff (K).
_TEMPERATURE: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "hydrogen": lambda t: 0.03 + np.exp(-0.5 * ((_theta(t) - 0.56) / 0.17) ** 2),
    "neutral": lambda t: np.exp(4.0 * (_theta(t) - 0.87)),
    "ion": lambda t: np.exp(-0.5 * ((_theta(t) - 0.80) / 0.30) ** 2),
    "caii": lambda t: 0.1 + 1.0 / (1.0 + np.exp(-(_theta(t) - 0.68) / 0.05)),
    "ch": lambda t: np.exp(-0.5 * ((_theta(t) - 1.0) / 0.2) ** 2),
    "tio": lambda t: np.exp(-(t - 3500.0) / 250.0),
}
_TCLASSES = tuple(_TEMPERATURE)


def _h(name: str, wave: float, w: float, s0: float, gamma0: float) -> Feature:
    return Feature(name, wave, "line", "hydrogen", w, s0, a_feh=0.0, a_g=0.25, gamma0=gamma0, b_g=0.5)


def _metal(
    name: str,
    wave: float,
    w: float = 0.15,
    s0: float = 2.0,
    a_g: float = 0.0,
    gamma0: float = 5.0,
    tclass: str = "neutral",
) -> Feature:
    return Feature(name, wave, "line", tclass, w, s0, a_g=a_g, gamma0=gamma0)


def _tio(head: float, w: float, length: float) -> Feature:
    return Feature(f"TiO {head:.0f}", head, "band", "tio", w, 2.0, a_feh=0.5, length=length)


FEATURES: tuple[Feature, ...] = (
    # Hydrogen: Balmer Hα … H10 and four Paschen lines; wings from Stark broadening (logg).
    _h("H alpha", 6562.80, 5.0, 4.0, 350.0),
    _h("H beta", 4861.33, 6.0, 4.0, 400.0),
    _h("H gamma", 4340.46, 6.0, 4.0, 400.0),
    _h("H delta", 4101.73, 6.0, 4.0, 400.0),
    _h("H epsilon", 3970.07, 5.0, 3.5, 350.0),
    _h("H8", 3889.05, 4.0, 3.0, 300.0),
    _h("H9", 3835.38, 3.5, 2.5, 250.0),
    _h("H10", 3797.90, 3.0, 2.0, 200.0),
    _h("Pa 14", 8598.39, 0.8, 2.0, 150.0),
    _h("Pa 12", 8750.47, 1.0, 2.0, 150.0),
    _h("Pa 11", 8862.78, 1.0, 2.0, 150.0),
    _h("Pa 10", 9014.91, 1.2, 2.0, 150.0),
    # Ca II H&K and the Ca II triplet (the triplet stronger in giants).
    _metal("Ca II K", 3933.66, 4.0, 20.0, gamma0=150.0, tclass="caii"),
    _metal("Ca II H", 3968.47, 3.5, 15.0, gamma0=150.0, tclass="caii"),
    _metal("Ca II 8498", 8498.02, 0.8, 5.0, a_g=-0.12, gamma0=60.0, tclass="caii"),
    _metal("Ca II 8542", 8542.09, 1.4, 8.0, a_g=-0.12, gamma0=60.0, tclass="caii"),
    _metal("Ca II 8662", 8662.14, 1.2, 7.0, a_g=-0.12, gamma0=60.0, tclass="caii"),
    # Gravity-sensitive neutral lines with pressure wings (stronger in dwarfs).
    _metal("Mg b1", 5183.60, 0.8, 7.0, a_g=0.1, gamma0=40.0),
    _metal("Mg b2", 5172.68, 0.7, 6.0, a_g=0.1, gamma0=40.0),
    _metal("Mg b4", 5167.32, 0.5, 4.0, a_g=0.1, gamma0=40.0),
    _metal("Na D2", 5889.95, 0.7, 6.0, a_g=0.15, gamma0=40.0),
    _metal("Na D1", 5895.92, 0.6, 5.0, a_g=0.15, gamma0=40.0),
    _metal("Na I 8183", 8183.26, 0.30, 1.0, a_g=0.5, gamma0=20.0),
    _metal("Na I 8195", 8194.82, 0.35, 1.2, a_g=0.5, gamma0=20.0),
    _metal("Ca I 4227", 4226.73, 0.8, 5.0, a_g=0.15, gamma0=40.0),
    _metal("K I 7699", 7698.96, 0.2, 1.0, a_g=0.1),
    # Other neutral metals.
    _metal("Mn I 4031", 4030.75, 0.2),
    _metal("Fe I 4046", 4045.81, 0.25, 3.0),
    _metal("Fe I 4064", 4063.59, 0.2),
    _metal("Fe I 4072", 4071.74, 0.2),
    _metal("Fe I 4384", 4383.55, 0.25, 3.0),
    _metal("Fe I 4405", 4404.75, 0.2),
    _metal("Fe I 4415", 4415.12, 0.15),
    _metal("Mg I 4571", 4571.10, 0.12, 1.5, a_g=0.1),
    _metal("Mg I 4703", 4702.99, 0.2),
    _metal("Fe I 4958", 4957.60, 0.2),
    _metal("Cr I 5206", 5206.04, 0.15),
    _metal("Cr I 5208", 5208.42, 0.15),
    _metal("Fe I 5227", 5226.86, 0.15),
    _metal("Fe I 5270", 5269.54, 0.2, 3.0),
    _metal("Fe I 5328", 5328.04, 0.2, 3.0),
    _metal("Fe I 5407", 5406.77, 0.12),
    _metal("Fe I 5430", 5429.70, 0.15),
    _metal("Fe I 5447", 5446.92, 0.15),
    _metal("Fe I 5456", 5455.61, 0.12),
    _metal("Mg I 5528", 5528.41, 0.25, 3.0),
    _metal("Fe I 5616", 5615.64, 0.12),
    _metal("Ca I 6103", 6102.72, 0.15),
    _metal("Ca I 6122", 6122.22, 0.15, a_g=0.05),
    _metal("Ca I 6162", 6162.17, 0.15, a_g=0.05),
    _metal("Fe I 6192", 6191.56, 0.12),
    _metal("Fe I 6253", 6252.56, 0.12),
    _metal("Fe I 6394", 6393.60, 0.12),
    _metal("Fe I 6400", 6400.00, 0.12),
    _metal("Ca I 6439", 6439.08, 0.15),
    _metal("Fe I 6495", 6494.98, 0.12),
    _metal("Fe I 6678", 6677.99, 0.12),
    _metal("Fe I 8689", 8688.62, 0.15),
    _metal("Mg I 8807", 8806.76, 0.25),
    _metal("Fe I 8824", 8824.22, 0.12),
    # Ionised species (stronger in giants, peak in F/G stars).
    _metal("Sr II 4078", 4077.71, 0.25, 3.0, a_g=-0.3, tclass="ion"),
    _metal("Sr II 4216", 4215.52, 0.2, 2.0, a_g=-0.3, tclass="ion"),
    _metal("Ba II 4554", 4554.03, 0.2, 2.0, a_g=-0.25, tclass="ion"),
    _metal("Ba II 6497", 6496.90, 0.12, 1.5, a_g=-0.25, tclass="ion"),
    _metal("Fe II 4924", 4923.93, 0.2, 2.0, a_g=-0.2, tclass="ion"),
    _metal("Fe II 5018", 5018.44, 0.2, 2.0, a_g=-0.2, tclass="ion"),
    _metal("Fe II 5169", 5169.03, 0.2, 2.0, a_g=-0.2, tclass="ion"),
    # O I 7774 triplet: a luminosity indicator of A/F stars (hydrogen-like temperature peak).
    _metal("O I 7772", 7771.94, 0.15, 2.0, a_g=-0.4, tclass="hydrogen"),
    _metal("O I 7774", 7774.17, 0.12, 2.0, a_g=-0.4, tclass="hydrogen"),
    _metal("O I 7775", 7775.39, 0.10, 2.0, a_g=-0.4, tclass="hydrogen"),
    # CH G band: a blend of many lines, modelled as one broad line (σ ≈ 7 Å).
    Feature("G band", 4300.3, "line", "ch", 3.0, 2.0, sigma_intr=500.0),
    # TiO bands of M stars: band head (air Å), peak depth scale, e-folding length to the red (Å).
    _tio(4761.2, 0.5, 60.0),
    _tio(4954.6, 0.6, 70.0),
    _tio(5166.7, 0.7, 80.0),
    _tio(5448.1, 0.5, 80.0),
    _tio(5847.0, 0.6, 90.0),
    _tio(6158.6, 0.8, 100.0),
    _tio(6651.3, 0.6, 100.0),
    _tio(7053.9, 0.9, 120.0),
    _tio(7589.3, 0.7, 120.0),
    _tio(8432.4, 0.5, 120.0),
    _tio(8859.5, 0.5, 120.0),
)

#: Vacuum wavelength (Å) of each feature by name (band head for TiO).
_VACUUM = air_to_vacuum(np.array([f.wave_air for f in FEATURES])).tolist()
LINE_CENTRES: dict[str, float] = dict(zip((f.name for f in FEATURES), _VACUUM, strict=True))

#: Telluric bands: air start, air end (Å) and optical depth at airmass 1.
TELLURIC_BANDS_AIR: tuple[tuple[str, float, float, float], ...] = (
    ("O2 B", 6867.0, 6884.0, 0.3),
    ("H2O", 7160.0, 7340.0, 0.15),
    ("O2 A", 7594.0, 7621.0, 0.7),
    ("H2O", 8130.0, 8350.0, 0.12),
    ("H2O", 8950.0, 9200.0, 0.3),
)


# --------------------------------------------------------------------------------------------
# Grid and per-config precomputation
# --------------------------------------------------------------------------------------------


def wavelength_grid(config: SyntheticConfig | None = None) -> np.ndarray:
    """The log-linear vacuum wavelength grid (Å), wave_min and wave_max included."""
    config = config or SyntheticConfig()
    return np.geomspace(config.wave_min, config.wave_max, config.n_pixels)


class _Layout(NamedTuple):
    """Everything about a config that does not depend on the labels, computed once."""

    wave: np.ndarray
    dlnl: float  # ln-wavelength step
    dv: float  # km/s per pixel
    inv_wave: np.ndarray
    wave_pow5: np.ndarray  # (λ/5000 Å)**-5, the Planck prefactor
    centres: np.ndarray  # (K,) vacuum wavelength of each feature, Å
    band_length: np.ndarray  # (K,) e-folding length of each band, km/s
    x_rest: np.ndarray  # (K,) rest-frame pixel position of each feature
    lo: np.ndarray  # (K,) window start, pixels
    hi: np.ndarray  # (K,) window end (exclusive)
    wing_edge: np.ndarray  # (K,) |velocity| beyond which a Lorentzian wing is zero
    tclass: np.ndarray  # (K,) index into _TCLASSES
    params: dict[str, np.ndarray]  # (K,) arrays of the Feature fields
    tau_telluric: np.ndarray  # (npix,) at airmass 1
    sigma_inst: float  # km/s


def _feature_params() -> dict[str, np.ndarray]:
    fields = ("w", "s0", "a_feh", "a_g", "gamma0", "b_g", "sigma_intr", "length")
    return {f: np.array([getattr(feat, f) for feat in FEATURES], dtype=np.float64) for f in fields}


def _strength(
    params: dict[str, np.ndarray], tclass: np.ndarray, teff: np.ndarray, logg: np.ndarray, feh: np.ndarray
) -> np.ndarray:
    """(n, K) equivalent width (Å) of each line, or peak optical depth of each band."""
    f_t = np.stack([_TEMPERATURE[c](teff) for c in _TCLASSES], axis=1)[:, tclass]
    exponent = params["a_feh"] * feh[:, None] + params["a_g"] * (logg[:, None] - 4.0)
    return params["w"] * np.log1p(params["s0"] * f_t * 10.0**exponent)


def _gamma(params: dict[str, np.ndarray], logg: np.ndarray) -> np.ndarray:
    """(n, K) Lorentzian half width (km/s) from pressure broadening."""
    return params["gamma0"] * 10.0 ** (params["b_g"] * (logg[:, None] - 4.4))


def _telluric_tau(wave: np.ndarray, resolving_power: float) -> np.ndarray:
    """Optical depth of the telluric bands at airmass 1: boxes smoothed by the instrument."""
    tau = np.zeros_like(wave)
    sqrt2_sigma = np.sqrt(2.0) * wave / (resolving_power * FWHM_PER_SIGMA)
    for _, start, end, tau0 in TELLURIC_BANDS_AIR:
        a, b = air_to_vacuum(np.array([start, end]))
        tau += tau0 * 0.5 * (erf((wave - a) / sqrt2_sigma) - erf((wave - b) / sqrt2_sigma))
    return tau


@lru_cache(maxsize=8)
def _layout(config: SyntheticConfig) -> _Layout:
    """Grid, feature windows and telluric optical depth for a config (cached: configs are frozen)."""
    wave = wavelength_grid(config)
    dlnl = float(np.log(config.wave_max / config.wave_min) / (config.n_pixels - 1))
    dv = C_KMS * dlnl
    params = _feature_params()
    tclass = np.array([_TCLASSES.index(f.tclass) for f in FEATURES])
    centres = np.array(_VACUUM)
    x_rest = np.log(centres / config.wave_min) / dlnl
    sigma_inst = C_KMS / (config.resolving_power * FWHM_PER_SIGMA)

    # Window sizes from the extreme labels, so no spectrum in the configured ranges is cut short.
    teff = np.linspace(*config.teff, 64).repeat(2)
    logg = np.tile(np.array(config.logg), 64)
    ew_max = _strength(params, tclass, teff, logg, np.full(teff.shape, config.feh[1])).max(axis=0)
    gamma_max = _gamma(params, np.array(config.logg)).max(axis=0)
    sigma_max = np.sqrt(sigma_inst**2 + (max(map(abs, config.vsini)) / 2) ** 2 + params["sigma_intr"] ** 2)
    rv_pix = max(abs(np.log1p(np.array(config.rv) / C_KMS))) / dlnl
    ew_v_max = ew_max * C_KMS / centres
    wing_edge = np.sqrt(ew_v_max * gamma_max / (np.pi * WING_TAU))
    is_band = np.array([f.kind == "band" for f in FEATURES])
    length_v = params["length"] * C_KMS / centres
    blue = np.where(is_band, 6 * sigma_max, np.maximum(6 * sigma_max, wing_edge))
    red = np.where(is_band, 7 * length_v, blue)
    lo = np.clip(np.floor(x_rest - blue / dv - rv_pix) - 1, 0, config.n_pixels).astype(int)
    hi = np.clip(np.ceil(x_rest + red / dv + rv_pix) + 2, 0, config.n_pixels).astype(int)
    return _Layout(
        wave=wave,
        dlnl=dlnl,
        dv=dv,
        inv_wave=(1.0 / wave).astype(np.float32),
        wave_pow5=((wave / 5000.0) ** -5.0).astype(np.float32),
        centres=centres,
        band_length=length_v,
        x_rest=x_rest,
        lo=lo,
        hi=hi,
        wing_edge=np.maximum(wing_edge, 1e-3),
        tclass=tclass,
        params=params,
        tau_telluric=_telluric_tau(wave, config.resolving_power).astype(np.float32),
        sigma_inst=sigma_inst,
    )


# --------------------------------------------------------------------------------------------
# Labels and rendering
# --------------------------------------------------------------------------------------------


def sample_labels(
    n: int, rng: np.random.Generator, config: SyntheticConfig | None = None
) -> dict[str, np.ndarray]:
    """Independent draws of every label: uniform in its range (snr log-uniform if configured)."""
    config = config or SyntheticConfig()
    labels = {}
    for name in LABEL_NAMES:
        lo, hi = getattr(config, name)
        if name == "snr" and config.log_uniform_snr:
            labels[name] = np.exp(rng.uniform(np.log(lo), np.log(hi), n))
        else:
            labels[name] = rng.uniform(lo, hi, n)
    return labels


def sky_positions(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(ra, dec) in degrees, uniform on the sphere; the stream is the seed's third child."""
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(3)[2])
    return rng.uniform(0.0, 360.0, n), np.degrees(np.arcsin(rng.uniform(-1.0, 1.0, n)))


def _pseudo_voigt(
    u: np.ndarray, area: np.ndarray, sigma: np.ndarray, gamma: np.ndarray, wing_edge: float
) -> np.ndarray:
    """``area`` × a unit-area pseudo-Voigt (Thompson, Cox & Hastings 1987) at offsets u (n, W).

    area, sigma, gamma: (n, 1) line area, Gaussian σ and Lorentzian HWHM (km/s). The
    Lorentzian part is lowered by its value at ``wing_edge`` and clipped at zero, so a cut
    wing ends without a step. Row constants are folded together first: this runs on every
    pixel of every line window and dominates the cost of :func:`render`.
    """
    fg = FWHM_PER_SIGMA * sigma
    fl = 2.0 * gamma
    f = (
        fg**5
        + 2.69269 * fg**4 * fl
        + 2.42843 * fg**3 * fl**2
        + 4.47163 * fg**2 * fl**3
        + 0.07842 * fg * fl**4
        + fl**5
    ) ** 0.2
    r = fl / f
    eta = 1.36603 * r - 0.47719 * r**2 + 0.11116 * r**3
    s = f / FWHM_PER_SIGMA
    hw2 = (0.5 * f) ** 2
    lorentz_scale = area * eta * 0.5 * f / np.pi
    lorentz_floor = lorentz_scale / (wing_edge**2 + hw2)
    u2 = u * u
    out = np.exp(u2 * (-0.5 / s**2))
    out *= area * (1.0 - eta) / (s * np.sqrt(2.0 * np.pi))
    u2 += hw2
    np.divide(lorentz_scale, u2, out=u2)
    u2 -= lorentz_floor
    np.maximum(u2, 0.0, out=u2)
    out += u2
    return out


def _band(u: np.ndarray, depth: np.ndarray, sigma: np.ndarray, length: float) -> np.ndarray:
    """Molecular band of peak optical depth ``depth``: a step at the head decaying as
    exp(-u/length) to the red, convolved with a Gaussian of σ (an exponentially modified
    Gaussian). depth, sigma: (n, 1)."""
    out = np.exp(u * (-1.0 / length) + 0.5 * (sigma / length) ** 2)
    out *= depth * ndtr(u / sigma - sigma / length)
    return out


def _stellar_tau(lay: _Layout, labels: dict[str, np.ndarray], n: int) -> np.ndarray:
    """(n, npix) float32 optical depth of all stellar features, Doppler shifted and broadened.

    Each feature touches only its window of pixels and only the rows where it is not
    negligible (TiO in hot stars, metal lines at very low [Fe/H]); float32 halves the cost.
    """
    p = lay.params
    strength = _strength(p, lay.tclass, labels["teff"], labels["logg"], labels["feh"])
    gamma = _gamma(p, labels["logg"])
    sigma_broad2 = lay.sigma_inst**2 + (labels["vsini"] / 2.0) ** 2  # instrument + rotation
    x_obs = lay.x_rest[None, :] + (np.log1p(labels["rv"] / C_KMS) / lay.dlnl)[:, None]
    tau = np.zeros((n, lay.wave.size), dtype=np.float32)
    for k, feat in enumerate(FEATURES):
        lo, hi = lay.lo[k], lay.hi[k]
        rows = np.flatnonzero(strength[:, k] > MIN_STRENGTH)
        if hi <= lo or rows.size == 0:
            continue
        rows = slice(None) if rows.size == n else rows
        # Offsets from the window start keep float32 positions good to better than 1e-4 pixel.
        u = np.arange(hi - lo, dtype=np.float32)[None, :] - (x_obs[rows, k, None] - lo).astype(np.float32)
        u *= np.float32(lay.dv)
        sigma = np.sqrt(sigma_broad2[rows] + p["sigma_intr"][k] ** 2)[:, None].astype(np.float32)
        if feat.kind == "band":
            depth = strength[rows, k, None].astype(np.float32)
            profile = _band(u, depth, sigma, float(lay.band_length[k]))
        else:
            area = (strength[rows, k, None] * (C_KMS / lay.centres[k])).astype(np.float32)
            gamma_k = gamma[rows, k, None].astype(np.float32)
            profile = _pseudo_voigt(u, area, sigma, gamma_k, float(lay.wing_edge[k]))
        if isinstance(rows, slice):
            tau[:, lo:hi] += profile
        else:
            tau[rows, lo:hi] += profile
    return tau


def _as_label_arrays(labels: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int]:
    missing = [name for name in LABEL_NAMES if name not in labels]
    if missing:
        raise ValueError(f"labels missing: {', '.join(missing)}")
    arrays = {name: np.atleast_1d(np.asarray(labels[name], dtype=np.float64)) for name in LABEL_NAMES}
    n = max(a.size for a in arrays.values())
    return {name: np.broadcast_to(a, (n,)) for name, a in arrays.items()}, n


def render(
    labels: dict[str, np.ndarray],
    config: SyntheticConfig | None = None,
    rng: np.random.Generator | None = None,
    noise: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Flux and inverse variance, float32 (n, n_pixels), for the given labels.

    Scalars broadcast against arrays, so ``render({... "teff": [4000, 6000] ...})`` varies one
    label. ``ivar`` is 1/σ² with σ = median(noiseless flux)/snr whether or not noise is added
    (with ``noise=False`` it describes the noise the spectrum would have).
    """
    config = config or SyntheticConfig()
    lay = _layout(config)
    labels, n = _as_label_arrays(labels)
    # Planck continuum at the rest wavelength λ/(1 + rv/c); the λ**-5 prefactor's rv term is a
    # constant per spectrum and drops out in the normalisation.
    a = (C2_AA_K * (1.0 + labels["rv"] / C_KMS) / labels["teff"]).astype(np.float32)
    flux = lay.wave_pow5 / np.expm1(a[:, None] * lay.inv_wave)
    flux /= np.median(flux, axis=1, keepdims=True)
    tau = _stellar_tau(lay, labels, n)
    tau += labels["airmass"][:, None].astype(np.float32) * lay.tau_telluric
    np.negative(tau, out=tau)
    flux *= np.exp(tau, out=tau)
    sigma = np.median(flux, axis=1).astype(np.float64) / labels["snr"]
    if noise:
        rng = rng if rng is not None else np.random.default_rng()
        flux += sigma.astype(np.float32)[:, None] * rng.standard_normal(flux.shape, dtype=np.float32)
    ivar = np.repeat((1.0 / sigma**2).astype(np.float32)[:, None], lay.wave.size, axis=1)
    return flux, ivar


# --------------------------------------------------------------------------------------------
# Batches, Spectrum objects and FITS tables
# --------------------------------------------------------------------------------------------


def generate(
    n: int, seed: int = 0, config: SyntheticConfig | None = None, batch_size: int = 2048
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]]:
    """Yield ``(wave, flux, ivar, labels)`` for ``n`` spectra in batches of ``batch_size``.

    The result depends on ``seed`` only, not on ``batch_size``: labels come from one stream
    (drawn up front: 56 bytes a spectrum) and noise from another, consumed in order.
    """
    if n < 0 or batch_size < 1:
        raise ValueError("n must be >= 0 and batch_size >= 1")
    config = config or SyntheticConfig()
    label_seed, noise_seed, _ = np.random.SeedSequence(seed).spawn(3)
    labels = sample_labels(n, np.random.default_rng(label_seed), config)
    noise_rng = np.random.default_rng(noise_seed)
    wave = wavelength_grid(config)
    for start in range(0, n, batch_size):
        batch = {name: values[start : start + batch_size] for name, values in labels.items()}
        flux, ivar = render(batch, config, noise_rng)
        yield wave, flux, ivar, batch


def obsid(i: int) -> str:
    """Identifier of the i-th synthetic spectrum of a run."""
    return f"synth-{i:08d}"


def generate_spectra(n: int, seed: int = 0, config: SyntheticConfig | None = None) -> Iterator[Spectrum]:
    """The same spectra as :func:`generate`, one :class:`Spectrum` at a time."""
    config = config or SyntheticConfig()
    ra, dec = sky_positions(n, seed)
    i = 0
    for wave, flux, ivar, labels in generate(n, seed, config):
        for row in range(flux.shape[0]):
            yield Spectrum(
                wavelength=wave.copy(),
                flux=flux[row],
                ivar=ivar[row],
                medium="vacuum",
                identifier=obsid(i),
                ra=float(ra[i]),
                dec=float(dec[i]),
                resolving_power=config.resolving_power,
                instrument="synthetic",
                labels={name: float(values[row]) for name, values in labels.items()},
                source_format="synthetic",
                source_index=i,
            )
            i += 1


def _write_hdu(fh, header: fits.Header, rows: Iterator[np.ndarray]) -> None:
    """Write one binary-table HDU: its header, then its rows as they come, then the padding."""
    fh.write(header.tostring().encode("ascii"))
    size = 0
    for block in rows:
        fh.write(block.tobytes())
        size += block.nbytes
    if size != header["NAXIS1"] * header["NAXIS2"]:
        raise RuntimeError(f"wrote {size} bytes of table data, header promises more")
    fh.write(b"\0" * (-size % 2880))


def _fits_unit(unit: str) -> str | None:
    """The unit if the FITS standard knows it (not "dex", as in the MILES table), else None."""
    try:
        return unit if unit and Unit(unit, format="fits") else None
    except ValueError:
        return None


def _table_header(columns: list[fits.Column], n_rows: int, name: str) -> tuple[fits.Header, np.dtype]:
    """Header and big-endian row dtype of a binary table with ``n_rows`` rows, built without data."""
    hdu = fits.BinTableHDU.from_columns(columns, nrows=0, name=name)
    header = hdu.header.copy()
    header["NAXIS2"] = n_rows
    dtype = hdu.columns.dtype.newbyteorder(">")
    if dtype.itemsize != header["NAXIS1"]:
        raise RuntimeError("row dtype does not match the FITS row length")
    return header, dtype


def write_fits_table(
    path: str | os.PathLike,
    n: int,
    seed: int = 0,
    config: SyntheticConfig | None = None,
    batch_size: int = 2048,
    first_id: int = 0,
) -> None:
    """Write ``n`` synthetic spectra to one FITS file in the MILES table layout, streaming; their
    identifiers count from ``first_id`` (so that several files of one archive do not share any).

    HDU 1 ``SPECTRA``: ``obsid``, the labels, ``ra``, ``dec``, ``flux`` and ``ivar`` (float32
    arrays); HDU 2 ``WAVELENGTH``: ``wavelength`` (Å, vacuum). Rows are written a batch at a
    time after a header that already states the final row count, so memory stays at one
    batch whatever ``n``; the file appears under its name only once complete.
    """
    config = config or SyntheticConfig()
    wave = wavelength_grid(config)
    npix = wave.size
    id_width = len(obsid(first_id + max(n - 1, 0)))
    columns = [fits.Column("obsid", f"{id_width}A")]
    columns += [fits.Column(name, "D", unit=_fits_unit(LABEL_UNITS[name])) for name in LABEL_NAMES]
    columns += [fits.Column("ra", "D", unit="deg"), fits.Column("dec", "D", unit="deg")]
    columns += [fits.Column(name, f"{npix}E", dim=f"({npix})") for name in ("flux", "ivar")]
    header, dtype = _table_header(columns, n, "SPECTRA")
    wave_column = fits.Column("wavelength", "D", unit="Angstrom")
    wave_header, wave_dtype = _table_header([wave_column], npix, "WAVELENGTH")

    primary = fits.PrimaryHDU().header
    primary["ORIGIN"] = ("latentvo synthetic", "toy model, see model/synthetic.py")
    primary["NSPEC"] = (n, "number of spectra")
    primary["SEED"] = (seed, "random seed")
    primary["WAVEMED"] = ("vacuum", "wavelengths are in vacuum")
    primary["CRVAL1"] = (float(wave[0]), "[Angstrom] first wavelength")
    primary["NPIX"] = (npix, "pixels per spectrum")
    primary["DLNLAM"] = (float(np.log(wave[1] / wave[0])), "natural-log wavelength step (log-linear grid)")
    primary["RESPOWER"] = (config.resolving_power, "resolving power R")

    ra, dec = sky_positions(n, seed)

    def rows() -> Iterator[np.ndarray]:
        start = 0
        for _, flux, ivar, labels in generate(n, seed, config, batch_size):
            block = np.zeros(flux.shape[0], dtype=dtype)
            block["obsid"] = [obsid(first_id + i) for i in range(start, start + flux.shape[0])]
            for name in LABEL_NAMES:
                block[name] = labels[name]
            block["ra"], block["dec"] = ra[start : start + flux.shape[0]], dec[start : start + flux.shape[0]]
            block["flux"], block["ivar"] = flux, ivar
            start += flux.shape[0]
            yield block

    wave_rows = np.zeros(npix, dtype=wave_dtype)
    wave_rows["wavelength"] = wave
    path = Path(path)
    partial = path.with_name(path.name + ".part")
    try:
        with open(partial, "wb") as fh:
            fh.write(primary.tostring().encode("ascii"))
            _write_hdu(fh, header, rows())
            _write_hdu(fh, wave_header, iter([wave_rows]))
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)

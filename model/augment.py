"""What differs between instruments, applied to training batches on the fly (torch, on the grid).

A spectrum of the same star from another telescope differs by its line spread function, its
noise, the part of the grid it covers (edges, chip gaps, bad columns) and, after the pseudo-
continuum is divided out, by what remains of a different flux calibration. Training shows the
encoder those differences - drawn afresh every epoch - and asks the decoder for the clean
archive spectrum, so the latent of a degraded spectrum is the latent of the star.

Velocity is not drawn here: Doppler copies come from the source spectra themselves
(:func:`model.preprocess.prepare_augmented`), exact at any resolution.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from model.preprocess import C_KMS, FWHM_PER_SIGMA


@dataclass(frozen=True)
class InstrumentAugmentation:
    """How often and how strongly each difference is drawn.

    ``resolving_power_min`` is the lowest λ/Δλ a degraded copy gets (log-uniform up to the
    archive's own); ``response_rms`` the RMS of the residual response (natural log) left after
    continuum division, as Legendre terms up to ``response_order`` in log λ.
    """

    probability: float = 0.75
    resolving_power_min: float = 500.0
    snr_min: float = 10.0
    snr_max: float = 200.0
    response_rms: float = 0.03
    response_order: int = 3
    crop_probability: float = 0.3
    coverage_min: float = 0.5
    gap_probability: float = 0.3
    gap_max_fraction: float = 0.05


def lsf_sigma_pixels(resolving_power: torch.Tensor, archive_power: float, pixel_kms: float) -> torch.Tensor:
    """σ (grid pixels) of the Gaussian that takes a spectrum at ``archive_power`` to ``resolving_power``."""
    sharp = 1.0 / archive_power**2 if archive_power > 0 else 0.0
    sigma_kms = C_KMS * torch.sqrt((1.0 / resolving_power**2 - sharp).clamp(min=0.0)) / FWHM_PER_SIGMA
    return sigma_kms / pixel_kms


def gaussian_blur(flux: torch.Tensor, good: torch.Tensor, sigma_pixels: torch.Tensor) -> torch.Tensor:
    """Convolve each spectrum (B, L) with its own Gaussian (σ in pixels, (B,)), masked pixels left out."""
    half = max(1, int(torch.ceil(3.0 * sigma_pixels.max()).item()))
    offsets = torch.arange(-half, half + 1, device=flux.device, dtype=flux.dtype)
    width = sigma_pixels.clamp(min=1e-3)[:, None]
    kernel = torch.exp(-0.5 * (offsets[None, :] / width) ** 2)
    kernel = (kernel / kernel.sum(dim=1, keepdim=True))[:, None, :]
    weight = good.to(flux.dtype)
    batch = len(flux)
    blurred = torch.nn.functional.conv1d((flux * weight)[None], kernel, padding=half, groups=batch)[0]
    norm = torch.nn.functional.conv1d(weight[None], kernel, padding=half, groups=batch)[0]
    return torch.where(norm > 1e-6, blurred / norm.clamp(min=1e-6), flux)


def legendre(x: torch.Tensor, order: int) -> torch.Tensor:
    """Legendre polynomials P1…P_order at ``x`` in [-1, 1]: (order, L)."""
    terms = [torch.ones_like(x), x]
    for n in range(1, order):
        terms.append(((2 * n + 1) * x * terms[n] - n * terms[n - 1]) / (n + 1))
    return torch.stack(terms[1 : order + 1])


def response_curves(
    batch: int, length: int, order: int, rms: float, generator: torch.Generator
) -> torch.Tensor:
    """Random smooth multiplicative curves exp(Σ a_k P_k(log λ)), (B, L), each with log-RMS ≈ ``rms``."""
    x = torch.linspace(-1.0, 1.0, length)
    basis = legendre(x, order)  # (order, L)
    # Var of P_k over [-1, 1] is 1/(2k+1): scale so the summed log-curve has the asked RMS.
    scale = rms / torch.sqrt(torch.tensor(float(order)))
    norms = torch.sqrt(torch.arange(1, order + 1) * 2.0 + 1.0)
    coefficients = torch.randn(batch, order, generator=generator) * scale * norms[None, :]
    return torch.exp(coefficients @ basis)


def coverage_masks(batch: int, length: int, config: InstrumentAugmentation, generator: torch.Generator):
    """(B, L) bool: True where a degraded copy keeps its pixels (a random window, random gaps)."""
    keep = torch.ones(batch, length, dtype=torch.bool)
    index = torch.arange(length)[None, :]
    crop = torch.rand(batch, generator=generator) < config.crop_probability
    span = config.coverage_min + (1 - config.coverage_min) * torch.rand(batch, generator=generator)
    start = (1 - span) * torch.rand(batch, generator=generator)
    lo, hi = (start * length)[:, None], ((start + span) * length)[:, None]
    keep &= ~crop[:, None] | ((index >= lo) & (index < hi))
    gap = torch.rand(batch, generator=generator) < config.gap_probability
    width = config.gap_max_fraction * length * torch.rand(batch, generator=generator)
    centre = length * torch.rand(batch, generator=generator)
    inside = (index - centre[:, None]).abs() < width[:, None] / 2
    keep &= ~(gap[:, None] & inside)
    return keep


def degrade(
    flux: torch.Tensor,
    good: torch.Tensor,
    config: InstrumentAugmentation,
    archive_power: float,
    pixel_kms: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Another instrument's view of a batch of continuum-normalised grid spectra: (flux, good).

    A fraction ``1 - probability`` of the batch stays as it is, so the archive's own spectra
    keep being seen as they are served.
    """
    batch, length = flux.shape
    device = flux.device
    chosen = (torch.rand(batch, generator=generator) < config.probability).to(device)
    top = archive_power if archive_power > 0 else 20_000.0
    low = min(config.resolving_power_min, top)
    log_power = torch.log(torch.tensor(low)) + torch.rand(batch, generator=generator) * (
        torch.log(torch.tensor(top)) - torch.log(torch.tensor(low))
    )
    sigma = lsf_sigma_pixels(torch.exp(log_power), archive_power, pixel_kms).to(device, flux.dtype)
    out = gaussian_blur(flux, good, sigma)
    out = out * response_curves(batch, length, config.response_order, config.response_rms, generator).to(
        device, flux.dtype
    )
    log_snr = torch.rand(batch, generator=generator) * (
        torch.log(torch.tensor(config.snr_max)) - torch.log(torch.tensor(config.snr_min))
    ) + torch.log(torch.tensor(config.snr_min))
    noise = torch.randn(batch, length, generator=generator) / torch.exp(log_snr)[:, None]
    out = out + noise.to(device, flux.dtype)
    kept = good & coverage_masks(batch, length, config, generator).to(device)
    out = torch.where(kept, out, torch.zeros_like(out))
    return (
        torch.where(chosen[:, None], out, flux),
        torch.where(chosen[:, None], kept, good),
    )

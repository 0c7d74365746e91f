"""A 1D convolutional β-VAE for spectra on a common grid.

The encoder sees two channels, the masked flux and the mask itself, so a spectrum that
covers only part of the grid (an upload from another instrument) is encoded from what it
has rather than from zeros it never measured. The loss is a masked Gaussian
reconstruction term plus β·KL; β trades reconstruction for disentanglement.

With ``continuum_channel`` two more channels carry the log pseudo-continuum that continuum
normalisation divided out, and whether it is there; the decoder gives the log continuum back
as a second output. The continuum shape is the best temperature indicator between spectra
calibrated alike, and worthless between spectra that are not: training hides it from the
encoder for part of each batch, so one latent space serves both the archive's own spectra
(continuum given) and an upload with another flux calibration (continuum withheld), and the
decoder still has to say what the star's continuum is.

With ``velocity_dim`` the decoder is Doppler-equivariant: it decodes a rest-frame spectrum
from z1…zN and shifts it along the log-λ grid by z0 × ``velocity_scale_kms``. A shift is
all z0 can do, so the radial velocity collects in z0 and the other dimensions are free to
describe the star whatever its velocity — which is what "similar spectra" should mean.

After training, the shape dimensions are turned onto their principal axes (``shape_rotation``,
see :meth:`SpectrumVAE.align_shape_axes`). The prior N(0, I) and Euclidean distances do not
change under a rotation, so neither the loss nor any neighbour does; but the β-VAE leaves the
directions inside the latent arbitrary, and the dominant factor (for stars, Teff) is spread
over several dimensions until it is turned onto one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn


@dataclass
class VAEConfig:
    n_pixels: int
    latent_dim: int = 16
    channels: list[int] = field(default_factory=lambda: [16, 32, 64, 64])
    kernel_size: int = 7
    hidden: int = 256
    #: Reserve z0 for a Doppler shift applied by the decoder (see the module docstring).
    velocity_dim: bool = False
    #: km/s per unit of z0, and the grid's velocity step (km/s per pixel) to turn it into pixels.
    velocity_scale_kms: float = 10.0
    pixel_kms: float = 0.0
    #: Two more encoder channels (log continuum, and whether it is given) and a second decoder
    #: output, the log continuum (see the module docstring).
    continuum_channel: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> VAEConfig:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    @property
    def padded_pixels(self) -> int:
        """Input length rounded up so that every stride-2 stage halves it exactly."""
        factor = 2 ** len(self.channels)
        return -(-self.n_pixels // factor) * factor


class SpectrumVAE(nn.Module):
    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        pad = config.kernel_size // 2
        layers: list[nn.Module] = []
        in_ch = 4 if config.continuum_channel else 2
        for out_ch in config.channels:
            layers += [nn.Conv1d(in_ch, out_ch, config.kernel_size, stride=2, padding=pad), nn.GELU()]
            in_ch = out_ch
        self.encoder_conv = nn.Sequential(*layers)
        self.reduced = config.padded_pixels // 2 ** len(config.channels)
        flat = config.channels[-1] * self.reduced
        self.encoder_head = nn.Sequential(nn.Flatten(), nn.Linear(flat, config.hidden), nn.GELU())
        self.to_mean = nn.Linear(config.hidden, config.latent_dim)
        self.to_logvar = nn.Linear(config.hidden, config.latent_dim)

        self.n_shape = config.latent_dim - 1 if config.velocity_dim else config.latent_dim
        if config.velocity_dim and (config.latent_dim < 2 or config.pixel_kms <= 0):
            raise ValueError("velocity_dim needs latent_dim >= 2 and the grid's pixel_kms")
        self.decoder_head = nn.Sequential(
            nn.Linear(self.n_shape, config.hidden), nn.GELU(), nn.Linear(config.hidden, flat), nn.GELU()
        )
        layers = []
        chans = list(reversed(config.channels))
        for in_ch, out_ch in zip(chans, chans[1:] + [chans[-1]], strict=True):
            layers += [
                nn.ConvTranspose1d(
                    in_ch, out_ch, config.kernel_size, stride=2, padding=pad, output_padding=1
                ),
                nn.GELU(),
            ]
        outputs = 2 if config.continuum_channel else 1
        layers.append(nn.Conv1d(chans[-1], outputs, config.kernel_size, padding=pad))
        self.decoder_conv = nn.Sequential(*layers)
        #: Orthogonal (n_shape, n_shape): row i is the network's direction that is published as
        #: shape dimension i. The identity while training.
        self.register_buffer("shape_rotation", torch.eye(self.n_shape))

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        extra = self.config.padded_pixels - x.shape[-1]
        return nn.functional.pad(x, (0, extra)) if extra else x

    def encode(
        self, flux: torch.Tensor, good: torch.Tensor, log_continuum: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance for a batch of (flux, good-mask) pairs of shape (B, n_pixels).

        ``log_continuum`` (B, n_pixels), NaN where withheld, feeds the continuum channels of a
        model that has them (None: withheld for the whole batch); other models ignore it.
        """
        good = good.to(flux.dtype)
        # Normalised spectra have median 1: centre them so the network works around zero.
        channels = [(flux - 1.0) * good, good]
        if self.config.continuum_channel:
            if log_continuum is None:
                log_continuum = torch.full_like(flux, float("nan"))
            given = torch.isfinite(log_continuum).to(flux.dtype) * good
            channels += [torch.nan_to_num(log_continuum, nan=0.0) * given, given]
        x = self._pad(torch.stack(channels, dim=1))
        h = self.encoder_head(self.encoder_conv(x))
        mean, logvar = self.to_mean(h), self.to_logvar(h).clamp(-12.0, 8.0)
        first = 1 if self.config.velocity_dim else 0
        rotation = self.shape_rotation
        shape_mean = mean[:, first:] @ rotation.T
        # The posterior is diagonal in the network's axes; published is each rotated axis's variance.
        shape_var = logvar[:, first:].exp() @ (rotation**2).T
        return (
            torch.cat([mean[:, :first], shape_mean], dim=1),
            torch.cat([logvar[:, :first], shape_var.log()], dim=1),
        )

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Flux on the grid for latent vectors z (B, latent_dim), in the observed frame."""
        return self.to_observed(self.decode_rest(z), z)

    def decode_outputs(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Observed-frame flux and, for a model with ``continuum_channel``, the log continuum
        (None otherwise), from one decoder pass."""
        outputs = self._decoded(z)
        flux = self.to_observed(1.0 + outputs[:, 0], z)
        return flux, (outputs[:, 1] if self.config.continuum_channel else None)

    def decode_rest(self, z: torch.Tensor) -> torch.Tensor:
        """Flux on the grid for z with the velocity left out: the rest frame (z0 = 0)."""
        return 1.0 + self._decoded(z)[:, 0]

    def decode_continuum(self, z: torch.Tensor) -> torch.Tensor:
        """The log pseudo-continuum on the grid for z (a model with ``continuum_channel`` only).

        Not Doppler-shifted: a shift of a few hundred km/s moves a continuum that is smooth over
        thousands of km/s by nothing measurable.
        """
        if not self.config.continuum_channel:
            raise ValueError("this model has no continuum output")
        return self._decoded(z)[:, 1]

    def _decoded(self, z: torch.Tensor) -> torch.Tensor:
        """Every decoder output (B, outputs, n_pixels) for the shape part of z."""
        shape = (z[:, 1:] if self.config.velocity_dim else z) @ self.shape_rotation
        h = self.decoder_head(shape).view(z.shape[0], self.config.channels[-1], self.reduced)
        return self.decoder_conv(h)[:, :, : self.config.n_pixels]

    def to_observed(self, rest: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """A rest-frame decoding moved by z0 (nothing to do without a velocity dimension)."""
        if not self.config.velocity_dim:
            return rest
        return doppler_shift(rest, z[:, 0] * self.config.velocity_scale_kms / self.config.pixel_kms)

    def forward(
        self,
        flux: torch.Tensor,
        good: torch.Tensor,
        sample: bool = True,
        log_continuum: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mean, logvar = self.encode(flux, good, log_continuum)
        z = mean + torch.randn_like(mean) * torch.exp(0.5 * logvar) if sample else mean
        return self.decode(z), mean, logvar

    @torch.no_grad()
    def align_shape_axes(self, shape_means: torch.Tensor) -> None:
        """Turn the shape dimensions onto the principal axes of ``shape_means`` (n, n_shape), the
        posterior means of the training spectra in the current axes, largest variance first.

        Each axis's sign is fixed so that its largest loading is positive: the same training
        set gives the same axes.
        """
        centred = shape_means.double() - shape_means.double().mean(dim=0)
        _, _, vh = torch.linalg.svd(centred, full_matrices=False)
        if vh.shape[0] < self.n_shape:  # fewer spectra than dimensions: keep the rest as they are
            return
        signs = torch.sign(vh.gather(1, vh.abs().argmax(dim=1, keepdim=True)))
        self.shape_rotation.copy_((vh * signs).to(self.shape_rotation.dtype) @ self.shape_rotation)


def doppler_shift(flux: torch.Tensor, shift_pixels: torch.Tensor) -> torch.Tensor:
    """Move each spectrum (B, L) on a log-λ grid redward by ``shift_pixels`` (B,), linear interpolation.

    Differentiable in the shift, so the encoder learns the velocity from the reconstruction alone.
    Beyond the ends the edge value is repeated (those pixels are masked in training data anyway).
    """
    length = flux.shape[1]
    position = torch.arange(length, device=flux.device, dtype=flux.dtype)[None, :] - shift_pixels[:, None]
    position = position.clamp(0, length - 1)
    low = position.floor().clamp(max=length - 2)
    frac = position - low
    low = low.long()
    return torch.gather(flux, 1, low) * (1 - frac) + torch.gather(flux, 1, low + 1) * frac


def masked_gaussian_nll(
    recon: torch.Tensor, flux: torch.Tensor, good: torch.Tensor, sigma: float | torch.Tensor
) -> torch.Tensor:
    """Per-spectrum ½Σ(good·(x−x̂)²/σ²), rescaled to the full grid length so partial spectra weigh alike.

    ``sigma`` is one number or a per-pixel tensor shaped like ``flux`` (each pixel's noise).
    """
    good = good.to(flux.dtype)
    n_good = good.sum(dim=1).clamp(min=1.0)
    chi2 = (good * (recon - flux) ** 2 / sigma**2).sum(dim=1)
    return 0.5 * chi2 * (flux.shape[1] / n_good)


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, 1)) per spectrum and dimension (nats)."""
    return 0.5 * (mean**2 + logvar.exp() - 1.0 - logvar)

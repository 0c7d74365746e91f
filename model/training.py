"""Training the β-VAE: seeded, deterministic on CPU, validation split, early stopping."""

from __future__ import annotations

import copy
import hashlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
from tqdm.auto import tqdm

from model.augment import InstrumentAugmentation, degrade, response_curves
from model.vae import SpectrumVAE, VAEConfig, doppler_shift, kl_divergence, masked_gaussian_nll

#: Tolerances of the equivariance term, in latent units: z0 to 0.05 (5 km/s at the default
#: scale), the shape dimensions to 0.1 of the prior's width.
Z0_TOLERANCE = 0.05
SHAPE_TOLERANCE = 0.1


@dataclass
class TrainConfig:
    latent_dim: int = 16
    kl_weight: float = 0.5
    kl_warmup_epochs: int = 10
    channels: list[int] = field(default_factory=lambda: [16, 32, 64, 64])
    epochs: int = 120
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 1e-5
    validation_fraction: float = 0.15
    patience: int = 15
    seed: int = 42
    #: σ of the Gaussian likelihood in normalised-flux units (the median flux is 1), for
    #: pixels whose noise is unknown.
    recon_sigma: float = 0.02
    #: Where a pixel's noise is known, its σ is √(noise² + noise_floor²): the data's own errors
    #: weigh each pixel, and the floor (what the model need not reproduce) keeps noiseless
    #: pixels from dominating. 0 or less: ignore known noise and use recon_sigma everywhere.
    noise_floor: float = 0.005
    #: Doppler-equivariant decoder: z0 is the radial velocity (model/vae.py).
    velocity_dim: bool = True
    velocity_scale_kms: float = 10.0
    #: Self-supervised equivariance: a copy shifted by a random velocity (uniform in
    #: ±equivariance_shift_kms) must move z0 by exactly that velocity and leave z1…zN unchanged.
    equivariance_weight: float = 100.0
    equivariance_shift_kms: float = 300.0
    #: After training, turn the shape dimensions onto the principal axes of the training
    #: spectra's latent means (SpectrumVAE.align_shape_axes): distances are unchanged, and the
    #: dominant factor lands in one dimension instead of several.
    align_axes: bool = True
    #: Instrument augmentation (model/augment.py): each batch's inputs are degraded afresh - line
    #: spread function down to augment_resolving_power_min, noise at augment_snr_min…max, partial
    #: coverage and gaps, a residual response - and the decoder is asked for the clean spectrum.
    augment_instrument: bool = False
    augment_resolving_power_min: float = 500.0
    augment_snr_min: float = 10.0
    augment_snr_max: float = 200.0
    augment_response_rms: float = 0.03
    #: Weight of the velocity anchor: where a training spectrum's velocity in the archive's frame
    #: is known (``rv_anchor``), z0 must give it, to Z0_TOLERANCE. Without an anchor z0 is only
    #: defined up to a constant (the decoder can move its rest-frame template).
    velocity_anchor_weight: float = 1.0
    #: Continuum channels (model/vae.py): the encoder also sees the log pseudo-continuum, withheld
    #: from a random ``continuum_dropout`` of each batch (as from an upload with another flux
    #: calibration) and, where given, moved by a residual response of log-RMS ``continuum_jitter``
    #: (calibrations of one instrument differ a little); the decoder must give the continuum back,
    #: weighed with σ = ``continuum_sigma`` (natural log).
    continuum_channel: bool = False
    continuum_dropout: float = 0.5
    continuum_jitter: float = 0.02
    continuum_sigma: float = 0.02
    #: When serving: an upload's continuum is shown to the encoder only when it differs from the
    #: one the model expects of the spectrum by at most this RMS (natural log), i.e. when the
    #: upload shares the archive's flux calibration (model/api.py).
    continuum_tolerance: float = 0.08
    device: str = "auto"

    @property
    def instrument_augmentation(self) -> InstrumentAugmentation:
        return InstrumentAugmentation(
            resolving_power_min=self.augment_resolving_power_min,
            snr_min=self.augment_snr_min,
            snr_max=self.augment_snr_max,
            response_rms=self.augment_response_rms,
        )

    @classmethod
    def from_mapping(cls, values: dict) -> TrainConfig:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in values.items() if k in known})

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainResult:
    model: SpectrumVAE
    history: list[dict]
    metrics: dict
    training_set_hash: str


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def dataset_hash(flux: np.ndarray, good: np.ndarray) -> str:
    """A content hash of exactly what the model was trained on."""
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(flux, dtype=np.float32).tobytes())
    digest.update(np.packbits(np.ascontiguousarray(good, dtype=bool)).tobytes())
    return digest.hexdigest()


def split_by_group(
    n: int, groups: Sequence | None, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Train/validation row indices; rows of one group (augmented copies of one star) stay together."""
    rng = np.random.default_rng(seed)
    group_ids = np.arange(n) if groups is None else np.unique(np.asarray(groups), return_inverse=True)[1]
    unique = np.unique(group_ids)
    n_val = int(round(len(unique) * fraction)) if len(unique) > 4 else 0
    val_groups = rng.choice(unique, size=n_val, replace=False)
    is_val = np.isin(group_ids, val_groups)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    torch.use_deterministic_algorithms(True, warn_only=True)


def train(
    flux: np.ndarray,
    good: np.ndarray,
    config: TrainConfig,
    groups: Sequence | None = None,
    progress: bool = True,
    pixel_kms: float = 0.0,
    noise: np.ndarray | None = None,
    rv_anchor: np.ndarray | None = None,
    resolving_power: float = 0.0,
    log_continuum: np.ndarray | None = None,
    initial_state: dict | None = None,
    on_epoch: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Fit a :class:`SpectrumVAE` to ``flux`` (n, p) with good-pixel mask ``good`` (n, p).

    ``initial_state`` (a state dict of a model of the same architecture) starts from trained
    weights: fine-tuning. ``on_epoch`` gets each epoch's record (losses) as it ends.

    ``pixel_kms`` is the grid's velocity step, needed when ``config.velocity_dim`` is on.
    ``noise`` (n, p) is each pixel's σ in normalised flux, NaN where unknown (see
    :func:`likelihood_sigma`). ``rv_anchor`` (n,) is each row's velocity in the archive's frame
    (km/s, NaN where unknown); ``resolving_power`` the archive's, where degraded copies start.
    ``log_continuum`` (n, p) is what continuum normalisation divided out (NaN where unknown),
    needed when ``config.continuum_channel`` is on.
    """
    if len(flux) < 2:
        raise ValueError("need at least two spectra to train")
    seed_everything(config.seed)
    device = pick_device(config.device)
    vae_config = VAEConfig(
        n_pixels=flux.shape[1],
        latent_dim=config.latent_dim,
        channels=list(config.channels),
        velocity_dim=config.velocity_dim and pixel_kms > 0,
        velocity_scale_kms=config.velocity_scale_kms,
        pixel_kms=pixel_kms,
        continuum_channel=config.continuum_channel,
    )
    if config.continuum_channel and log_continuum is None:
        raise ValueError("continuum_channel needs the spectra's log continuum (continuum normalisation)")
    model = SpectrumVAE(vae_config).to(device)
    if initial_state is not None:
        model.load_state_dict(initial_state)
    optimiser = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    train_rows, val_rows = split_by_group(len(flux), groups, config.validation_fraction, config.seed)
    if not len(val_rows):
        val_rows = train_rows
    x_all = torch.from_numpy(np.ascontiguousarray(flux, dtype=np.float32))
    m_all = torch.from_numpy(np.ascontiguousarray(good, dtype=bool))
    s_all = likelihood_sigma(noise, flux.shape, config)
    anchor = np.full(len(flux), np.nan) if rv_anchor is None else np.asarray(rv_anchor, np.float64)
    a_all = torch.from_numpy(anchor.astype(np.float32))
    c_all = (
        torch.from_numpy(np.ascontiguousarray(log_continuum, dtype=np.float32))
        if config.continuum_channel
        else torch.full((len(flux), 1), float("nan"))
    )
    augmentation = config.instrument_augmentation if config.augment_instrument else None
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimiser,
        max_lr=config.learning_rate,
        total_steps=config.epochs * math.ceil(len(train_rows) / config.batch_size),
    )
    generator = torch.Generator().manual_seed(config.seed)
    best = (math.inf, None, -1)
    history: list[dict] = []
    started = time.perf_counter()
    bar = tqdm(range(config.epochs), desc="train", unit="epoch", disable=not progress)
    for epoch in bar:
        beta = config.kl_weight * min(1.0, (epoch + 1) / max(1, config.kl_warmup_epochs))
        model.train()
        order = torch.from_numpy(train_rows)[torch.randperm(len(train_rows), generator=generator)]
        totals = np.zeros(3)
        for start in range(0, len(order), config.batch_size):
            rows = order[start : start + config.batch_size]
            x, m, sigma = x_all[rows].to(device), m_all[rows].to(device), s_all[rows].to(device)
            x_in, m_in = x, m
            if augmentation is not None:
                x_in, m_in = degrade(x, m, augmentation, resolving_power, pixel_kms, generator)
            c = c_all[rows].to(device) if config.continuum_channel else None
            c_in = continuum_input(c, config, generator) if c is not None else None
            mean, logvar = model.encode(x_in, m_in, c_in)
            z = mean + torch.randn_like(mean) * torch.exp(0.5 * logvar)
            recon, c_out = model.decode_outputs(z)
            rec = masked_gaussian_nll(recon, x, m, sigma).mean()  # the clean spectrum, whatever the input
            if c is not None:
                rec = rec + continuum_nll(c_out, c, m, config.continuum_sigma).mean()
            kl = kl_divergence(mean, logvar).sum(dim=1).mean()
            loss = rec + beta * kl
            if model.config.velocity_dim and config.equivariance_weight > 0:
                loss = loss + config.equivariance_weight * equivariance_loss(
                    model, x, m, mean, config.equivariance_shift_kms, generator, c_in
                )
            if model.config.velocity_dim and config.velocity_anchor_weight > 0:
                loss = loss + config.velocity_anchor_weight * anchor_loss(
                    mean[:, 0], a_all[rows].to(device), config.velocity_scale_kms
                )
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            optimiser.step()
            scheduler.step()
            totals += np.array([loss.item(), rec.item(), kl.item()]) * len(rows)
        train_loss, train_rec, train_kl = totals / len(order)
        val = evaluate(
            model, x_all[val_rows], m_all[val_rows], s_all[val_rows], config, device, c_all[val_rows]
        )
        record = {
            "epoch": epoch + 1,
            "beta": beta,
            "train_loss": train_loss,
            "train_recon": train_rec,
            "train_kl": train_kl,
            **{f"val_{k}": v for k, v in val.items()},
        }
        history.append(record)
        if on_epoch is not None:
            on_epoch(record)
        bar.set_postfix(loss=f"{train_loss:.1f}", val=f"{val['loss']:.1f}", kl=f"{train_kl:.1f}")
        # Early stopping only once β has reached its final value, so losses are comparable.
        if epoch + 1 >= config.kl_warmup_epochs:
            if val["loss"] < best[0]:
                best = (val["loss"], copy.deepcopy(model.state_dict()), epoch + 1)
            elif epoch + 1 - best[2] >= config.patience:
                break
    if best[1] is not None:
        model.load_state_dict(best[1])
    model.eval()
    if config.align_axes:
        means = posterior_means(model, x_all[train_rows], m_all[train_rows], device, c=c_all[train_rows])
        model.align_shape_axes(means[:, 1:] if model.config.velocity_dim else means)
    final_val = evaluate(
        model, x_all[val_rows], m_all[val_rows], s_all[val_rows], config, device, c_all[val_rows]
    )
    if model.config.velocity_dim:
        final_val.update(
            velocity_errors(
                model,
                x_all[val_rows],
                m_all[val_rows],
                anchor[val_rows],
                augmentation,
                resolving_power,
                pixel_kms,
                config,
                device,
            )
        )
    metrics = {
        "best_epoch": best[2],
        "epochs_run": len(history),
        "train_seconds": round(time.perf_counter() - started, 2),
        "n_train": int(len(train_rows)),
        "n_validation": int(len(val_rows)),
        "device": str(device),
        **{f"val_{k}": v for k, v in final_val.items()},
    }
    return TrainResult(model.cpu(), history, metrics, dataset_hash(flux, good))


def likelihood_sigma(noise: np.ndarray | None, shape: tuple[int, int], config: TrainConfig) -> torch.Tensor:
    """Per-pixel σ of the reconstruction likelihood (n, p): the known noise with the model floor
    added in quadrature, ``recon_sigma`` where the noise is unknown (NaN, or no ``noise`` at all)."""
    sigma = np.full(shape, config.recon_sigma, dtype=np.float32)
    if noise is not None and config.noise_floor > 0:
        noise = np.asarray(noise, dtype=np.float32)
        known = np.isfinite(noise) & (noise >= 0)
        sigma[known] = np.sqrt(noise[known] ** 2 + np.float32(config.noise_floor) ** 2)
    return torch.from_numpy(sigma)


def continuum_input(
    log_continuum: torch.Tensor, config: TrainConfig, generator: torch.Generator
) -> torch.Tensor:
    """What the encoder is shown of a batch's log continua (B, p): withheld (NaN) for a random
    ``continuum_dropout`` of the rows, the rest moved by a small random response."""
    batch, length = log_continuum.shape
    withheld = (torch.rand(batch, generator=generator) < config.continuum_dropout).to(log_continuum.device)
    shown = log_continuum
    if config.continuum_jitter > 0:
        curves = response_curves(batch, length, 3, config.continuum_jitter, generator)
        shown = shown + torch.log(curves).to(log_continuum.device, log_continuum.dtype)
    return torch.where(withheld[:, None], torch.full_like(shown, float("nan")), shown)


def continuum_nll(
    predicted: torch.Tensor, log_continuum: torch.Tensor, good: torch.Tensor, sigma: float
) -> torch.Tensor:
    """Per-spectrum Gaussian NLL of the decoded log continuum, over pixels where it is known."""
    known = good & torch.isfinite(log_continuum)
    return masked_gaussian_nll(predicted, torch.nan_to_num(log_continuum, nan=0.0), known, sigma)


def equivariance_loss(
    model: SpectrumVAE,
    flux: torch.Tensor,
    good: torch.Tensor,
    mean: torch.Tensor,
    shift_kms: float,
    generator: torch.Generator,
    log_continuum: torch.Tensor | None = None,
) -> torch.Tensor:
    """Penalty for z0 not tracking a known extra Doppler shift and for z1…zN moving with it.

    This needs no labels: the shift is applied to the training spectrum itself, so any archive
    teaches the model that z0 is velocity and the rest is the star. The shifted copy is shown the
    same continuum as the original (a shift does not change a continuum measurably).
    """
    config = model.config
    velocity = (torch.rand(len(flux), generator=generator) * 2 - 1).to(flux.device) * shift_kms
    pixels = velocity / config.pixel_kms
    shifted = doppler_shift(flux, pixels)
    shifted_good = doppler_shift(good.to(flux.dtype), pixels) > 0.999
    moved, _ = model.encode(shifted, shifted_good, log_continuum)
    z0_error = (moved[:, 0] - mean[:, 0] - velocity / config.velocity_scale_kms) / Z0_TOLERANCE
    shape_error = (moved[:, 1:] - mean[:, 1:]) / SHAPE_TOLERANCE
    return 0.5 * (z0_error**2 + (shape_error**2).sum(dim=1)).mean()


def anchor_loss(z0: torch.Tensor, velocity_kms: torch.Tensor, scale_kms: float) -> torch.Tensor:
    """Penalty for z0 missing the known velocity of the rows that have one (NaN: unknown)."""
    known = torch.isfinite(velocity_kms)
    if not known.any():
        return z0.sum() * 0.0
    error = (z0[known] - velocity_kms[known] / scale_kms) / Z0_TOLERANCE
    return 0.5 * (error**2).sum() / len(z0)


@torch.no_grad()
def velocity_errors(
    model: SpectrumVAE,
    x: torch.Tensor,
    m: torch.Tensor,
    anchor: np.ndarray,
    augmentation: InstrumentAugmentation | None,
    resolving_power: float,
    pixel_kms: float,
    config: TrainConfig,
    device: torch.device,
) -> dict:
    """z0's velocity error on the validation rows of known velocity, clean and degraded, kept in the
    version's metrics: its bias says whether z0 = 0 is the archive's frame (the anchor at work), and
    the 68th percentiles of |error| how far the encoder alone places a spectrum (model/velocity.py
    refines it by cross-correlation)."""
    known = np.flatnonzero(np.isfinite(anchor))
    if not len(known):
        return {}
    x, m, truth = x[known].to(device), m[known].to(device), anchor[known]
    clean = posterior_means(model, x, m, device)[:, 0].numpy() * config.velocity_scale_kms - truth
    result = {
        "rv_bias_kms": float(np.median(clean)),
        "rv_error_clean_kms": float(np.percentile(abs(clean), 68)),
    }
    error = clean
    if augmentation is not None:
        generator = torch.Generator().manual_seed(config.seed + 1)
        degraded = degrade(
            x,
            m,
            replace(augmentation, probability=1.0),
            resolving_power,
            pixel_kms,
            generator,
        )
        error = posterior_means(model, *degraded, device)[:, 0].numpy() * config.velocity_scale_kms - truth
        result["rv_error_degraded_kms"] = float(np.percentile(abs(error), 68))
    result["rv_error_kms"] = float(np.percentile(abs(error), 68))
    return result


@torch.no_grad()
def posterior_means(
    model: SpectrumVAE,
    x: torch.Tensor,
    m: torch.Tensor,
    device: torch.device,
    batch: int = 512,
    c: torch.Tensor | None = None,
) -> torch.Tensor:
    """Posterior means of ``x`` (n, p) with masks ``m`` (and log continua ``c``), in batches, on the CPU."""
    model.eval()
    given = c is not None and model.config.continuum_channel
    parts = [
        model.encode(
            x[s : s + batch].to(device),
            m[s : s + batch].to(device),
            c[s : s + batch].to(device) if given else None,
        )[0].cpu()
        for s in range(0, len(x), batch)
    ]
    return torch.cat(parts)


@torch.no_grad()
def evaluate(
    model: SpectrumVAE,
    x: torch.Tensor,
    m: torch.Tensor,
    sigma: torch.Tensor,
    config: TrainConfig,
    device: torch.device,
    c: torch.Tensor | None = None,
) -> dict:
    """Validation loss at the final β, with the posterior mean (no sampling): deterministic.

    A model with continuum channels is shown the continuum (the archive's own spectra are) and
    is scored on giving it back as well."""
    model.eval()
    totals = np.zeros(4)
    given = c is not None and model.config.continuum_channel
    for start in range(0, len(x), 512):
        batch = slice(start, start + 512)
        xb, mb, sb = x[batch].to(device), m[batch].to(device), sigma[batch].to(device)
        cb = c[batch].to(device) if given else None
        mean, logvar = model.encode(xb, mb, cb)
        recon, c_out = model.decode_outputs(mean)
        rec = masked_gaussian_nll(recon, xb, mb, sb)
        if cb is not None:
            rec = rec + continuum_nll(c_out, cb, mb, config.continuum_sigma)
        kl = kl_divergence(mean, logvar).sum(dim=1)
        goodf = mb.float()
        rmse = torch.sqrt((goodf * (recon - xb) ** 2).sum(1) / goodf.sum(1).clamp(min=1))
        totals += np.array(
            [(rec + config.kl_weight * kl).sum().item(), rec.sum().item(), kl.sum().item(), rmse.sum().item()]
        )
    loss, rec, kl, rmse = totals / max(1, len(x))
    return {"loss": float(loss), "recon": float(rec), "kl": float(kl), "rmse": float(rmse)}

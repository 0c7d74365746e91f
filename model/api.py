"""The handful of calls the service makes into ``model/``: load, encode, reconstruct, neighbours.

A :class:`LatentModel` wraps one model version directory. Latent matrices and the Annoy index
are memory-mapped, so every server worker that loads the same version shares one copy.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from model.checkpoint import grid_of, load_checkpoint
from model.ood import OOD_FILE, OODReference, line_signal, structured_residual
from model.preprocess import Matching, OnGrid, prepare_many
from model.resolution import LOWEST_POWER, MatchedOrder, match
from model.similarity import LatentIndex, exact_search
from model.spectrum import Spectrum
from model.velocity import Velocity, against_reconstructions, against_spectrum

MEAN_FILE = "latent_mean.npy"
VAR_FILE = "latent_var.npy"
INDEX_FILE = "index.ann"
ANALYSIS_FILE = "analysis.json"
#: (n, 2) float32: each archive spectrum's model velocity and its error (km/s, NaN where none).
VELOCITY_FILE = "velocity.npy"
#: (n, 3) float64: each archive spectrum's velocity against its nearest other archive spectrum by
#: the index (km/s, as if that spectrum were at 0), its error, and that spectrum's row (NaN where none;
#: written by ``latentvo index``).
NEIGHBOUR_VELOCITY_FILE = "neighbour_velocity.npy"
#: (n, 2) coverage of the grid and reconstruction error of each archive row (written by encode).
QUALITY_FILE = "quality.npy"
#: (1,) the largest continuum mismatch an upload may have and still be compared with its continuum
#: (written by ``latentvo index`` for continuum models).
CONTINUUM_TOLERANCE_FILE = "continuum_tolerance.npy"
#: (n, pixels) float16: each archive spectrum on the model's grid with its continuum, divided by a
#: constant (:meth:`OnGrid.calibrated`, NaN where masked; written by encode): what uploads are
#: compared with at their own resolution. (Versions encoded before it kept ``grid_flux.npy``, divided
#: by the continuum; they rank uploads by the latent.)
GRID_FLUX_FILE = "grid_calibrated.npy"
#: The percentile of the archive's own mismatches that sets that tolerance.
CONTINUUM_PERCENTILE = 95.0
#: Spectra per forward pass on CPU: the decoder's activations (~64 kB each at 1024 pixels) stay in
#: cache up to about that and throughput falls beyond (bench/encode.py).
ENCODE_BATCH = 64


@dataclass
class Encoded:
    mean: np.ndarray  # (n, d) float32 posterior means
    var: np.ndarray  # (n, d) float32 posterior variances
    recon_error: np.ndarray  # (n,) RMS residual over good pixels, normalised-flux units
    coverage: np.ndarray | None = None  # (n,) fraction of the grid the input covered
    #: With ``ood=True`` only (what ood_score ranks; the archive's own encoding does not need them):
    structured: np.ndarray | None = None  # (n,) the residual beyond the noise (model.ood.structured_residual)
    line_signal: np.ndarray | None = None  # (n,) lines and bands beyond the noise (model.ood.line_signal)
    #: (n, pixels) the reconstructions at rest (z0 = 0), the templates the model's velocity is measured on.
    rest: np.ndarray | None = None
    #: (n,) bool: whether the encoder was shown each spectrum's continuum (continuum models only).
    continuum_used: np.ndarray | None = None
    #: (n,) RMS (natural log) between each spectrum's log continuum and the one the model expects of
    #: it, after a constant; NaN where not measured (see LatentModel.encode_spectra).
    continuum_mismatch: np.ndarray | None = None
    #: The spectra as encoded, on the model's grid (set by :meth:`LatentModel.encode_spectra`).
    on_grid: OnGrid | None = None


def continuum_mismatch(measured: np.ndarray, expected: np.ndarray, good: np.ndarray) -> np.ndarray:
    """RMS (natural log) of measured − expected log continua (n, p) over good pixels, after removing
    each spectrum's mean difference (a flux scale is no calibration error); NaN with no good pixel."""
    usable = good & np.isfinite(measured) & np.isfinite(expected)
    difference = np.where(usable, np.nan_to_num(measured) - expected, 0.0)
    count = usable.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        centred = difference - (difference.sum(axis=1) / count)[:, None]
        return np.sqrt((np.where(usable, centred, 0.0) ** 2).sum(axis=1) / count)


class LatentModel:
    """One trained model version and, once built, its latents and similarity index."""

    def __init__(self, directory: str | Path, device: str = "cpu") -> None:
        self.directory = Path(directory)
        self.device = torch.device(device)
        self.vae, self.config = load_checkpoint(self.directory, self.device)
        self.grid = grid_of(self.config)
        #: How spectra are brought to the archive's terms (versions before matching: median only).
        self.matching = Matching.from_dict(self.config.get("matching"))
        self._latents: np.ndarray | None = None
        self._index: LatentIndex | None = None
        self._mapped: dict[str, np.ndarray | None] = {}
        self._analysed: dict | None = None

    @property
    def latent_dim(self) -> int:
        return self.vae.config.latent_dim

    @property
    def latents(self) -> np.ndarray:
        """The archive's posterior means, memory-mapped (row i = archive row i of this version)."""
        if self._latents is None:
            self._latents = _mapped(self.directory / MEAN_FILE)
        return self._latents

    @property
    def velocity_dim(self) -> int | None:
        """The latent dimension that holds the radial velocity (z0 × velocity_scale_kms), if any."""
        return 0 if self.vae.config.velocity_dim else None

    @property
    def velocity_scale_kms(self) -> float:
        return float(self.vae.config.velocity_scale_kms)

    @property
    def continuum_channel(self) -> bool:
        """Whether the encoder takes the log continuum as well (model/vae.py)."""
        return bool(self.vae.config.continuum_channel)

    @property
    def continuum_tolerance(self) -> float:
        """Largest RMS (natural log) by which an upload's continuum may differ from the expected one
        and still be shown to the encoder: what ``latentvo index`` measured on the archive's own
        spectra, else the configured ``continuum_tolerance``."""
        found = self._per_row(CONTINUUM_TOLERANCE_FILE)
        if found is not None:
            return float(found[0])
        return float(self.config.get("train", {}).get("continuum_tolerance", 0.08))

    @property
    def velocity_frame(self) -> str:
        """What z0 = 0 means (``[model] velocity_frame`` when trained; "free" before anchoring)."""
        return str(self.config.get("velocity_frame", "free"))

    def velocity(self, spectrum: Spectrum, mean: np.ndarray) -> Velocity | None:
        """The model's velocity of ``spectrum`` (model/velocity.py): lined up with its own
        reconstruction at rest (z0 = 0); None without a velocity dimension or without a peak."""
        return self.velocities([spectrum], np.asarray(mean)[None, :])[0]

    def velocities(
        self, spectra: Sequence[Spectrum], means: np.ndarray, rest: np.ndarray | None = None
    ) -> list[Velocity | None]:
        """:meth:`velocity` of many spectra; ``rest`` are their rest-frame reconstructions where
        :meth:`encode_spectra` has them already (decoded here in one batch otherwise)."""
        if self.velocity_dim is None:
            return [None] * len(spectra)
        if rest is None:
            at_rest = np.array(means, dtype=np.float32)
            at_rest[:, self.velocity_dim] = 0.0
            rest = self.reconstruct(at_rest)
        return against_reconstructions(spectra, rest, self.grid, self.matching)

    @property
    def archive_velocities(self) -> np.ndarray | None:
        """(n, 2) model velocity and error of each archive row (written by ``latentvo encode``)."""
        return self._per_row(VELOCITY_FILE)

    @property
    def archive_neighbour_velocities(self) -> np.ndarray | None:
        """(n, 3) velocity against the nearest other archive row, its error and that row."""
        return self._per_row(NEIGHBOUR_VELOCITY_FILE)

    @property
    def archive_quality(self) -> np.ndarray | None:
        """(n, 2) grid coverage and reconstruction error of each archive row, as ``encode`` found them."""
        return self._per_row(QUALITY_FILE)

    @property
    def archive_grid_flux(self) -> np.ndarray | None:
        """(n, pixels) each archive row on the model's grid with its continuum (NaN where masked)."""
        return self._per_row(GRID_FLUX_FILE)

    @property
    def latent_vars(self) -> np.ndarray:
        """The archive's posterior variances, memory-mapped like :attr:`latents`."""
        found = self._per_row(VAR_FILE)
        if found is None:
            raise FileNotFoundError(self.directory / VAR_FILE)
        return found

    def _per_row(self, name: str) -> np.ndarray | None:
        """A per-row matrix ``encode`` wrote, memory-mapped once per instance; None for versions
        encoded before it. (A served version's files do not change: encoding writes a new version.)"""
        if name not in self._mapped:
            path = self.directory / name
            self._mapped[name] = _mapped(path) if path.exists() else None
        return self._mapped[name]

    def velocity_from(self, spectrum: Spectrum, reference: Spectrum, reference_kms: float) -> Velocity | None:
        """The velocity of ``spectrum`` from an archive spectrum of velocity ``reference_kms``."""
        return against_spectrum(spectrum, reference, reference_kms, self.grid, self.matching)

    def _analysis(self) -> dict:
        """What ``analyse`` wrote ({} before it), read once per instance."""
        if self._analysed is None:
            path = self.directory / ANALYSIS_FILE
            self._analysed = json.loads(path.read_text()) if path.exists() else {}
        return self._analysed

    @property
    def informative_dims(self) -> list[int]:
        """Dimensions whose posterior differs from the prior (all of them before `analyse`)."""
        return list(self._analysis().get("informative_dims", range(self.latent_dim)))

    @property
    def similarity_dims(self) -> list[int]:
        """What "similar" means by default: the informative dimensions except the velocity.

        Two spectra of the same kind of star are similar whatever their radial velocities;
        a caller who wants velocity to count passes it in ``dims``.
        """
        shape = [d for d in self.informative_dims if d != self.velocity_dim]
        return shape or self.informative_dims

    @property
    def ood_reference(self) -> OODReference | None:
        """What typical archive spectra look like to the model (written by ``latentvo index``)."""
        if not hasattr(self, "_ood"):
            self._ood = OODReference.load(self.directory / OOD_FILE)
        return self._ood

    @property
    def index(self) -> LatentIndex:
        if self._index is None:
            self._index = LatentIndex.load(self.directory / INDEX_FILE, self.latents)
        return self._index

    @torch.inference_mode()
    def encode_arrays(
        self,
        flux: np.ndarray,
        good: np.ndarray,
        batch_size: int = ENCODE_BATCH,
        ood: bool = False,
        log_continuum: np.ndarray | None = None,
    ) -> Encoded:
        """Encode spectra already on the grid; returns posterior means, variances, reconstruction error
        and the reconstructions at rest. ``log_continuum`` (n, p), NaN where withheld, feeds a
        continuum model's continuum channels (None: withheld from all)."""
        n = len(flux)
        mean = np.empty((n, self.latent_dim), np.float32)
        var = np.empty((n, self.latent_dim), np.float32)
        err = np.empty(n, np.float32)
        rest = np.empty((n, self.grid.n_pixels), np.float32)
        structured = np.empty(n, np.float32) if ood else None
        signal = np.empty(n, np.float32) if ood else None
        for start in range(0, n, batch_size):
            x = torch.as_tensor(np.asarray(flux[start : start + batch_size], np.float32), device=self.device)
            m = torch.as_tensor(np.asarray(good[start : start + batch_size], bool), device=self.device)
            c = None
            if log_continuum is not None and self.continuum_channel:
                c = torch.as_tensor(
                    np.asarray(log_continuum[start : start + batch_size], np.float32), device=self.device
                )
            mu, logvar = self.vae.encode(x, m, c)
            at_rest = self.vae.decode_rest(mu)
            recon = self.vae.to_observed(at_rest, mu)
            mf = m.float()
            rmse = torch.sqrt((mf * (recon - x) ** 2).sum(1) / mf.sum(1).clamp(min=1))
            stop = start + len(x)
            mean[start:stop] = mu.cpu().numpy()
            var[start:stop] = logvar.exp().cpu().numpy()
            err[start:stop] = rmse.cpu().numpy()
            rest[start:stop] = at_rest.cpu().numpy()
            if ood:
                flux_np, good_np = x.cpu().numpy(), m.cpu().numpy()
                structured[start:stop] = structured_residual(recon.cpu().numpy(), flux_np, good_np)
                signal[start:stop] = line_signal(flux_np, good_np)
        return Encoded(mean, var, err, structured=structured, line_signal=signal, rest=rest)

    def encode_spectra(
        self, spectra: Sequence[Spectrum], ood: bool = False, continuum: str = "given"
    ) -> Encoded:
        """Resample spectra from any grid onto the model's, then encode them.

        ``continuum`` says what a continuum model sees of each spectrum's continuum: "given" (the
        archive's own spectra, calibrated as the training set was), "withheld", or "checked" (an
        upload): encoded without it first, then again with it where it agrees with the continuum
        the model expects of the spectrum to within :attr:`continuum_tolerance` - a shared flux
        calibration, which the archive's continua can then be compared with.
        """
        if continuum not in ("given", "withheld", "checked"):
            raise ValueError(f"continuum must be given, withheld or checked, not {continuum!r}")
        on_grid = prepare_many(spectra, self.grid, self.matching)
        shown = on_grid.log_continuum if continuum == "given" else None
        encoded = self.encode_arrays(on_grid.flux, on_grid.good, ood=ood, log_continuum=shown)
        encoded.coverage, encoded.on_grid = on_grid.coverage, on_grid
        if self.continuum_channel:
            encoded.continuum_used = np.full(len(spectra), continuum == "given")
            if continuum == "checked":
                self._check_continua(encoded, on_grid, ood)
        return encoded

    def _check_continua(self, encoded: Encoded, on_grid: OnGrid, ood: bool) -> None:
        """Re-encode, with their continuum shown, the spectra whose continuum is the expected one."""
        expected = self.continua(encoded.mean)
        mismatch = continuum_mismatch(on_grid.log_continuum, expected, on_grid.good)
        encoded.continuum_mismatch = mismatch
        agree = np.flatnonzero(mismatch <= self.continuum_tolerance)
        if not len(agree):
            return
        again = self.encode_arrays(
            on_grid.flux[agree], on_grid.good[agree], ood=ood, log_continuum=on_grid.log_continuum[agree]
        )
        for name in ("mean", "var", "recon_error", "structured", "line_signal", "rest"):
            target = getattr(encoded, name)
            if target is not None:
                target[agree] = getattr(again, name)
        encoded.continuum_used[agree] = True

    @torch.no_grad()
    def continua(self, z: np.ndarray) -> np.ndarray:
        """The log continua (n, pixels) a continuum model decodes for latent vectors z."""
        z = np.atleast_2d(np.asarray(z, np.float32))
        return self.vae.decode_continuum(torch.as_tensor(z, device=self.device)).cpu().numpy()

    @torch.no_grad()
    def reconstruct(self, z: np.ndarray) -> np.ndarray:
        """Decode latent vectors (n, d) or (d,) into normalised flux on the model's grid."""
        z = np.atleast_2d(np.asarray(z, np.float32))
        return self.vae.decode(torch.as_tensor(z, device=self.device)).cpu().numpy()

    def neighbours(
        self,
        row: int | None = None,
        vector: np.ndarray | None = None,
        k: int = 10,
        dims: Sequence[int] | None = None,
        weights: Sequence[float] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest archive rows of an archive row or of a latent vector.

        With no ``dims`` and no ``weights`` the Annoy index (over :attr:`similarity_dims`)
        answers; otherwise exact search over the chosen dimensions does.
        """
        if (row is None) == (vector is None):
            raise ValueError("give exactly one of row and vector")
        if dims is None and weights is None:
            if row is not None:
                return self.index.query_row(int(row), k)
            return self.index.query_vector(np.asarray(vector, np.float32), k)
        query = np.asarray(self.latents[row] if row is not None else vector, np.float32)
        return exact_search(self.latents, query, k, dims=dims, weights=weights)

    def flux_rankable(self, encoded: Encoded) -> bool:
        """Whether an upload's neighbours can be ranked by flux at its own resolution
        (:meth:`rank_by_flux`): not for versions encoded before the archive's grid flux was kept, nor
        for uploads whose continuum the encoder was shown (calibrated as the archive is: the latent,
        continuum shape included, ranks them)."""
        shown = encoded.continuum_used is not None and bool(encoded.continuum_used[0])
        return self.archive_grid_flux is not None and encoded.on_grid is not None and not shown

    def rank_by_flux(self, encoded: Encoded, rv_kms: float | None, rows: np.ndarray) -> MatchedOrder:
        """Archive ``rows`` (the index's nearest of an upload, ``encoded``, of velocity ``rv_kms``)
        ordered by flux at the upload's own resolution and velocity (model/resolution.py)."""
        rows = np.asarray(rows, np.int64)
        velocities = self.archive_velocities
        own = np.zeros(len(rows)) if velocities is None else np.nan_to_num(velocities[rows, 0].astype(float))
        return match(
            encoded.on_grid.calibrated()[0],
            encoded.on_grid.good[0],
            self.archive_grid_flux[rows],
            (rv_kms or 0.0) - own,
            self.matching.resolving_power,
            self.grid.velocity_step_kms,
            float(self.config.get("augmentation", {}).get("augment_resolving_power_min", LOWEST_POWER)),
        )


def _mapped(path: Path) -> np.ndarray:
    """A .npy file memory-mapped read-only, as a plain array over the mapping: indexing an
    ``np.memmap`` builds a memmap object for every row read, which costs more than the read."""
    return np.asarray(np.load(path, mmap_mode="r"))

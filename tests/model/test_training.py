"""The β-VAE trains, is deterministic on CPU, and its checkpoints are written atomically."""

import json

import numpy as np
import pytest
import torch

from model.api import LatentModel
from model.checkpoint import load_checkpoint, save_checkpoint
from model.preprocess import Grid
from model.training import TrainConfig, split_by_group, train
from model.vae import SpectrumVAE, VAEConfig

GRID = Grid(4000.0, 6000.0, 256)


def toy_data(n=96, seed=0):
    """Spectra with one absorption line whose position and depth are the two hidden factors."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 1, GRID.n_pixels)
    centre, depth = rng.uniform(0.2, 0.8, n), rng.uniform(0.1, 0.6, n)
    flux = 1 - depth[:, None] * np.exp(-0.5 * ((x - centre[:, None]) / 0.03) ** 2)
    flux += rng.normal(0, 0.01, flux.shape)
    good = np.ones_like(flux, bool)
    good[:, :10] = False
    return flux.astype(np.float32), good, {"centre": centre, "depth": depth}


def small_config(**kw):
    base = dict(latent_dim=4, epochs=40, kl_warmup_epochs=3, batch_size=16, channels=[8, 16],
                patience=50, learning_rate=3e-3, seed=7)  # fmt: skip
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def trained():
    flux, good, labels = toy_data()
    return train(flux, good, small_config(), progress=False), flux, good


def test_training_lowers_the_loss(trained):
    result, _, _ = trained
    history = result.history
    assert history[-1]["val_recon"] < 0.5 * history[0]["val_recon"]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert result.metrics["val_rmse"] < 0.1


def test_training_is_deterministic_on_cpu(trained):
    result, flux, good = trained
    again = train(flux, good, small_config(), progress=False)
    for name, tensor in result.model.state_dict().items():
        assert torch.equal(tensor, again.model.state_dict()[name]), name
    assert again.training_set_hash == result.training_set_hash


def test_different_seed_gives_different_model(trained):
    result, flux, good = trained
    other = train(flux, good, small_config(seed=8, epochs=2), progress=False)
    w = "to_mean.weight"
    assert not torch.equal(result.model.state_dict()[w], other.model.state_dict()[w])


def test_validation_split_keeps_groups_together():
    groups = np.repeat(np.arange(20), 5)
    train_rows, val_rows = split_by_group(100, groups, 0.2, seed=1)
    assert set(groups[train_rows]).isdisjoint(groups[val_rows])
    assert len(val_rows) == 20 and len(train_rows) == 80


def test_masked_pixels_do_not_affect_the_loss():
    from model.vae import masked_gaussian_nll

    x = torch.ones(2, 10)
    good = torch.ones(2, 10, dtype=torch.bool)
    good[:, 5:] = False
    recon = torch.ones(2, 10)
    recon[:, 5:] = 100.0
    assert masked_gaussian_nll(recon, x, good, 0.1).abs().max() == 0


def write_version(directory, model):
    config = {"grid": GRID.to_dict(), "train": small_config().to_dict(), "training_set_hash": "x"}
    return save_checkpoint(directory, model, config)


def test_checkpoint_round_trip_with_weights_only(tmp_path, trained):
    result, flux, good = trained
    write_version(tmp_path / "v0001", result.model)
    model, config = load_checkpoint(tmp_path / "v0001")
    assert config["grid"] == GRID.to_dict() and config["vae"]["latent_dim"] == 4
    for name, tensor in result.model.state_dict().items():
        assert torch.equal(tensor, model.state_dict()[name])
    latent = LatentModel(tmp_path / "v0001")
    encoded = latent.encode_arrays(flux[:5], good[:5])
    assert encoded.mean.shape == (5, 4) and (encoded.var > 0).all()
    assert latent.reconstruct(encoded.mean).shape == (5, GRID.n_pixels)


def test_interrupted_checkpoint_write_leaves_previous_version(tmp_path, trained, monkeypatch):
    result, _, _ = trained
    write_version(tmp_path / "v0001", result.model)

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", fail)
    with pytest.raises(OSError):
        write_version(tmp_path / "v0002", result.model)
    assert not (tmp_path / "v0002").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["v0001"]
    load_checkpoint(tmp_path / "v0001")
    with pytest.raises(FileExistsError):
        write_version(tmp_path / "v0001", result.model)


def test_checkpoint_refuses_pickled_code(tmp_path, trained):
    result, _, _ = trained
    directory = write_version(tmp_path / "v0001", result.model)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, directory / "model.pt")
    with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
        load_checkpoint(directory)
    assert json.loads((directory / "config.json").read_text())["vae"]["n_pixels"] == GRID.n_pixels


def test_vae_handles_grids_not_a_power_of_two():
    model = SpectrumVAE(VAEConfig(n_pixels=1000, latent_dim=3, channels=[4, 8, 8]))
    recon, mean, logvar = model(torch.ones(2, 1000), torch.ones(2, 1000, dtype=torch.bool))
    assert recon.shape == (2, 1000) and mean.shape == (2, 3)


def test_known_noise_weighs_pixels_and_unknown_falls_back():
    from model.training import likelihood_sigma
    from model.vae import masked_gaussian_nll

    config = small_config(recon_sigma=0.02, noise_floor=0.005)
    noise = np.array([[0.0, 0.1, np.nan, 0.012]], np.float32)
    sigma = likelihood_sigma(noise, noise.shape, config)
    assert sigma.numpy()[0] == pytest.approx([0.005, np.hypot(0.1, 0.005), 0.02, 0.013], rel=1e-5)
    assert (likelihood_sigma(None, (2, 3), config) == 0.02).all()
    assert (likelihood_sigma(noise, noise.shape, small_config(noise_floor=0.0)) == 0.02).all()
    # A residual of 0.1 on a pixel with σ 0.1 costs ½, the same on a σ 0.005 pixel 200.
    x, good = torch.ones(1, 4), torch.ones(1, 4, dtype=torch.bool)
    recon = x.clone()
    recon[0, 1] += 0.1
    assert masked_gaussian_nll(recon, x, good, sigma).item() == pytest.approx(0.5 / (1 + 0.05**2), rel=1e-4)
    recon = x.clone()
    recon[0, 0] += 0.1
    assert masked_gaussian_nll(recon, x, good, sigma).item() == pytest.approx(200.0, rel=1e-3)


def test_training_with_noise_is_deterministic_and_learns():
    flux, good, _ = toy_data()
    noise = np.full_like(flux, 0.01)
    noise[::2] = np.nan
    first = train(flux, good, small_config(epochs=6), progress=False, noise=noise)
    again = train(flux, good, small_config(epochs=6), progress=False, noise=noise)
    assert first.history[-1]["val_recon"] < first.history[0]["val_recon"]
    assert first.history == again.history


def test_aligned_axes_keep_distances_and_reconstructions_and_order_variance(trained):
    import copy

    result, flux, good = trained
    x, m = torch.from_numpy(flux), torch.from_numpy(good)
    aligned = result.model
    assert not torch.equal(aligned.shape_rotation, torch.eye(aligned.n_shape))  # training aligned it
    plain = copy.deepcopy(aligned)
    plain.shape_rotation.copy_(torch.eye(plain.n_shape))
    with torch.no_grad():
        z_plain, _ = plain.encode(x, m)
        z_aligned, logvar = aligned.encode(x, m)
        exact = "donot_use_mm_for_euclid_dist"
        assert torch.allclose(
            torch.cdist(z_plain, z_plain, compute_mode=exact),
            torch.cdist(z_aligned, z_aligned, compute_mode=exact),
            atol=1e-4,
        )
        assert torch.allclose(plain.decode(z_plain), aligned.decode(z_aligned), atol=1e-4)
    variance = z_aligned.var(dim=0)
    assert torch.all(variance[:-1] >= variance[1:] - 1e-6)  # principal axes, largest first
    assert torch.isfinite(logvar).all()


def test_checkpoint_without_rotation_loads_as_identity(tmp_path, trained):
    result, _, _ = trained
    model = SpectrumVAE(result.model.config)
    write_version(tmp_path / "v0001", model)
    weights = tmp_path / "v0001" / "model.pt"
    state = torch.load(weights, weights_only=True)
    del state["shape_rotation"]
    torch.save(state, weights)
    loaded, _ = load_checkpoint(tmp_path / "v0001")
    assert torch.equal(loaded.shape_rotation, torch.eye(model.n_shape))


def continuum_toy(n=96, seed=3):
    """Spectra whose lines carry one factor (depth) and whose continuum slope another, independent one."""
    flux, good, labels = toy_data(n, seed)
    slope = np.random.default_rng(seed + 1).uniform(-0.4, 0.4, n)
    log_continuum = (slope[:, None] * np.linspace(-1, 1, GRID.n_pixels)[None, :]).astype(np.float32)
    return flux, good, log_continuum, slope


@pytest.fixture(scope="module")
def continuum_trained():
    flux, good, log_continuum, slope = continuum_toy()
    config = small_config(continuum_channel=True, continuum_dropout=0.5, epochs=60)
    result = train(flux, good, config, progress=False, log_continuum=log_continuum)
    return result.model, flux, good, log_continuum, slope


def test_continuum_model_encodes_the_continuum_it_is_shown(continuum_trained):
    model, flux, good, log_continuum, slope = continuum_trained
    x, m, c = torch.from_numpy(flux), torch.from_numpy(good), torch.from_numpy(log_continuum)
    with torch.no_grad():
        given, _ = model.encode(x, m, c)
        withheld, _ = model.encode(x, m)
        decoded_given = model.decode_continuum(given).numpy()
        decoded_withheld = model.decode_continuum(withheld).numpy()
    # Shown the continuum, the latent carries its slope and the decoder gives it back.
    best = max(abs(np.corrcoef(given[:, d].numpy(), slope)[0, 1]) for d in range(given.shape[1]))
    assert best > 0.9
    error_given = np.sqrt(((decoded_given - log_continuum)[good] ** 2).mean())
    assert error_given < 0.05
    # Withheld, the lines say nothing of this slope: the decoder can only guess (the channel carries it).
    error_withheld = np.sqrt(((decoded_withheld - log_continuum)[good] ** 2).mean())
    assert error_withheld > 2 * error_given


def test_continuum_model_round_trips_and_plain_models_have_no_continuum(tmp_path, continuum_trained, trained):
    model = continuum_trained[0]
    save_checkpoint(tmp_path / "v", model, {"grid": GRID.to_dict()})
    loaded, _ = load_checkpoint(tmp_path / "v")
    assert loaded.config.continuum_channel
    z = torch.zeros(2, model.config.latent_dim)
    assert torch.allclose(loaded.decode_continuum(z), model.decode_continuum(z))
    with pytest.raises(ValueError, match="no continuum"):
        trained[0].model.decode_continuum(z)


def test_continuum_channel_needs_the_continua():
    flux, good, _ = toy_data(8)
    with pytest.raises(ValueError, match="log continuum"):
        train(flux, good, small_config(continuum_channel=True, epochs=1), progress=False)


def test_an_upload_continuum_is_used_only_when_it_is_the_expected_one(tmp_path, continuum_trained):
    """'checked': encoded without the continuum, then with it where it agrees with the decoded one."""
    from model.api import continuum_mismatch
    from model.preprocess import Matching
    from model.spectrum import Spectrum

    model, flux, *_ = continuum_trained
    # The toy's one deep line dents its block-mean continuum (~0.07): the tolerance sits above that,
    # and below what a ±0.4 tilt adds (RMS 0.23).
    config = {
        "grid": GRID.to_dict(),
        "train": small_config(continuum_tolerance=0.12).to_dict(),
        "matching": Matching("continuum").to_dict(),
    }
    save_checkpoint(tmp_path / "v", model, config)
    latent = LatentModel(tmp_path / "v")
    x = np.linspace(-1, 1, GRID.n_pixels)
    spectra = [
        Spectrum(wavelength=GRID.wavelength, flux=flux[0] * np.exp(slope * x) * 7.0)
        for slope in (0.0, 0.4, -0.4)
    ]
    encoded = latent.encode_spectra(spectra, continuum="checked")
    assert encoded.continuum_used.tolist() == [True, False, False]
    assert encoded.continuum_mismatch[0] <= latent.continuum_tolerance < encoded.continuum_mismatch[1:].min()
    given = latent.encode_spectra(spectra[:1], continuum="given")
    assert np.allclose(given.mean, encoded.mean[:1], atol=1e-5)  # re-encoded with the continuum shown
    # A flux scale is no calibration error; a tilt is, by its RMS.
    good = np.ones((1, 50), bool)
    tilt = np.linspace(-1, 1, 50)[None, :] * 0.3
    assert continuum_mismatch(np.full((1, 50), 2.0), np.zeros((1, 50)), good)[0] == pytest.approx(0.0)
    assert continuum_mismatch(tilt, np.zeros((1, 50)), good)[0] == pytest.approx(tilt.std(), rel=1e-6)

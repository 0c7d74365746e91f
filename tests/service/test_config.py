import pytest

from service.config import ConfigError, load_config


def test_defaults_load():
    config = load_config(environ={})
    assert config["model"]["latent_dim"] == 16
    assert config["archive"]["root"]


def test_site_file_then_environment_then_overrides(tmp_path):
    site = tmp_path / "site.toml"
    site.write_text('[model]\nlatent_dim = 8\nkl_weight = 2.0\n[archive]\nroot = "/srv/a"\n')
    env = {
        "LATENTVO_MODEL_LATENT_DIM": "24",
        "LATENTVO_MODEL_CHANNELS": "[8, 16]",
        "LATENTVO_INDEX_TARGET_RECALL": "0.95",
    }
    config = load_config(site, overrides={"archive": {"root": "/tmp/x"}}, environ=env)
    assert config["model"]["latent_dim"] == 24  # environment beats the file
    assert config["model"]["kl_weight"] == 2.0
    assert config["model"]["channels"] == [8, 16]
    assert config["index"]["target_recall"] == 0.95
    assert config["archive"]["root"] == "/tmp/x"


def test_unknown_keys_and_bad_values_are_errors(tmp_path):
    site = tmp_path / "site.toml"
    site.write_text("[model]\nlatent_size = 8\n")
    with pytest.raises(ConfigError, match="model.latent_size"):
        load_config(site, environ={})
    with pytest.raises(ConfigError, match="latent_dim"):
        load_config(environ={"LATENTVO_MODEL_LATENT_DIM": "many"})

"""Model versions on disk: one directory per version, written whole or not at all.

A version directory holds ``model.pt`` (a plain state dict, loaded with ``weights_only=True``)
and ``config.json`` (grid, architecture, training settings, normalisation, training-set hash,
metrics). Later stages add their outputs (latent matrices, the index) to the same directory,
each file replaced atomically.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from model.preprocess import Grid
from model.vae import SpectrumVAE, VAEConfig

WEIGHTS_FILE = "model.pt"
CONFIG_FILE = "config.json"


def save_checkpoint(directory: Path, model: SpectrumVAE, config: dict) -> Path:
    """Write a new version directory; a crash part-way leaves only a hidden temp directory behind."""
    directory = Path(directory)
    if directory.exists():
        raise FileExistsError(f"model version directory {directory} already exists")
    tmp = directory.parent / f".{directory.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        torch.save(model.state_dict(), tmp / WEIGHTS_FILE)
        full = {**config, "vae": model.config.to_dict()}
        (tmp / CONFIG_FILE).write_text(json.dumps(full, indent=2, sort_keys=True))
        for name in (WEIGHTS_FILE, CONFIG_FILE):
            with open(tmp / name, "rb") as handle:
                os.fsync(handle.fileno())
        os.rename(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def load_checkpoint(directory: Path, device: str | torch.device = "cpu") -> tuple[SpectrumVAE, dict]:
    """Load weights safely (no pickled code) and the JSON config of a version directory."""
    directory = Path(directory)
    config = json.loads((directory / CONFIG_FILE).read_text())
    model = SpectrumVAE(VAEConfig.from_dict(config["vae"]))
    state = torch.load(directory / WEIGHTS_FILE, map_location=device, weights_only=True)
    # Versions written before the shape axes were aligned have no rotation: the identity.
    state.setdefault("shape_rotation", model.shape_rotation.clone())
    model.load_state_dict(state)
    model.to(device).eval()
    return model, config


def grid_of(config: dict) -> Grid:
    return Grid.from_dict(config["grid"])

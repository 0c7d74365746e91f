"""What one server process holds: configuration, a read-only archive per request, the model in service.

The model version in service (``ml_model.is_current``) is checked on every request and
reloaded when ``latentvo index`` has swapped in a new one, so a new version goes live
without a restart; latents and index are memory-mapped, so workers share one copy. What a load
leaves alive (the model, the DID lookup, every imported module) is frozen out of the cyclic garbage
collector: its full collections scanned all of it and held a request for 160 ms at 10^6 spectra.
"""

from __future__ import annotations

import gc
import threading
from dataclasses import dataclass
from pathlib import Path

from flask import current_app, g

from model.api import LatentModel
from service.archive import Archive
from service.errors import TransientError


@dataclass
class ServedModel:
    """The model in service with the archive rows its latent matrix is aligned to."""

    version: int
    model: LatentModel
    dids: list[str]
    rows: dict[str, int]
    record: dict

    def row_of(self, did: str) -> int | None:
        return self.rows.get(did)


class ServiceState:
    def __init__(self, config: dict) -> None:
        self.config = config
        self.base_url = config["service"]["base_url"].rstrip("/")
        section = config["archive"]
        self.database = Path(section["root"]) / section["database"]
        self.root = Path(section["root"])
        self._lock = threading.Lock()
        self._served: ServedModel | None = None

    def url(self, path: str) -> str:
        """An absolute public URL; never built from the request's Host header."""
        return f"{self.base_url}/{path.lstrip('/')}"

    def archive(self) -> Archive:
        """A read-only archive connection for the current request (closed at teardown)."""
        if "latentvo_archive" not in g:
            if not self.database.exists():
                raise TransientError(f"the archive database {self.database.name} does not exist yet")
            section = self.config["archive"]
            g.latentvo_archive = Archive(
                section["root"], section["database"], section["authority"], self.base_url, readonly=True
            )
        return g.latentvo_archive

    def served_model(self) -> ServedModel:
        """The current model version, (re)loaded when the archive says another one is in service."""
        archive = self.archive()
        try:
            record = dict(archive.current_model())
        except LookupError as exc:
            raise TransientError(str(exc)) from exc
        served = self._served
        if served is not None and served.version == record["model_version"]:
            return served
        with self._lock:
            if self._served is None or self._served.version != record["model_version"]:
                version = record["model_version"]
                gc.unfreeze()  # the version replaced may leave cycles for the collector to free
                model = LatentModel(archive.model_dir(version))
                dids = archive.latent_dids(version)
                self._served = ServedModel(version, model, dids, {d: i for i, d in enumerate(dids)}, record)
                gc.collect()
                gc.freeze()
            return self._served


def state() -> ServiceState:
    return current_app.extensions["latentvo"]


def close_archive(_exc: BaseException | None = None) -> None:
    archive = g.pop("latentvo_archive", None)
    if archive is not None:
        archive.close()

"""What one server process holds: configuration, a read-only archive connection per thread, the model
in service.

The model version in service (``ml_model.is_current``) is checked on every request and
reloaded when ``latentvo index`` has swapped in a new one, so a new version goes live
without a restart; latents and index are memory-mapped, so workers share one copy. What a load
leaves alive (the model, the DID lookup, every imported module) is frozen out of the cyclic garbage
collector: its full collections scanned all of it and held a request for 160 ms at 10^6 spectra.
"""

from __future__ import annotations

import gc
import threading
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from flask import current_app, g

from model.api import LatentModel
from service.archive import Archive
from service.errors import TransientError
from service.storage import DatabaseError, describe, is_server_url


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


class _Kept:
    """A thread's kept archive connection; closed when the thread ends and its locals go (a server that
    starts a thread per request must not leave a pooled connection behind with each one)."""

    def __init__(self, identity: tuple | None, archive: Archive) -> None:
        self.identity = identity
        self.archive = archive

    def __del__(self) -> None:
        with suppress(Exception):  # interpreter shutdown, a connection already gone: nothing left to free
            self.archive.close()


class ServiceState:
    def __init__(self, config: dict) -> None:
        self.config = config
        self.base_url = config["service"]["base_url"].rstrip("/")
        section = config["archive"]
        self.root = Path(section["root"])
        #: The SQLite file (None when the archive is on a PostgreSQL server).
        self.database = None if is_server_url(section["database"]) else self.root / section["database"]
        self._lock = threading.Lock()
        self._served: ServedModel | None = None
        self._connections = threading.local()

    def url(self, path: str) -> str:
        """An absolute public URL; never built from the request's Host header."""
        return f"{self.base_url}/{path.lstrip('/')}"

    def archive(self) -> Archive:
        """This thread's read-only archive connection, kept from request to request: opening one and
        reading the schema costs ~2 ms, a quarter of the cheaper answers. A database file replaced
        since (another inode) is opened afresh; what a request leaves on the connection (TAP_UPLOAD
        tables, an open transaction) is taken away when it ends (:func:`release_archive`). On
        PostgreSQL the connection comes from the process's pool and goes back when dropped."""
        section = self.config["archive"]
        identity: tuple | None = None
        if self.database is not None:
            try:
                info = self.database.stat()
            except FileNotFoundError:
                raise TransientError(
                    f"the archive database {self.database.name} does not exist yet"
                ) from None
            identity = (info.st_dev, info.st_ino)
        held = getattr(self._connections, "held", None)
        if held is None or held.identity != identity:
            if held is not None:
                del self._connections.held  # closes it
            try:
                archive = Archive(
                    section["root"], section["database"], section["authority"], self.base_url, readonly=True
                )
            except DatabaseError as exc:
                raise TransientError(f"the archive database {describe(section['database'])}: {exc}") from exc
            held = self._connections.held = _Kept(identity, archive)
        g.latentvo_archive = held.archive
        return held.archive

    def forget_archive(self, archive: Archive) -> None:
        held = getattr(self._connections, "held", None)
        if held is not None and held.archive is archive:
            del self._connections.held

    def served_model(self) -> ServedModel:
        """The current model version, (re)loaded when the archive says another one is in service."""
        archive = self.archive()
        current = archive.current_version()
        if current is None:
            raise TransientError("no model version is in service yet: run `latentvo index`")
        served = self._served
        if served is not None and served.version == current:
            return served
        with self._lock:
            if self._served is None or self._served.version != current:
                try:
                    record = dict(archive.current_model())
                except LookupError as exc:  # swapped out again meanwhile
                    raise TransientError(str(exc)) from exc
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


def release_archive(_exc: BaseException | None = None) -> None:
    """End of a request: roll back what it began and drop the TEMP tables it made (TAP uploads), so the
    thread's kept connection holds nothing of one request into the next."""
    archive = g.pop("latentvo_archive", None)
    if archive is None:
        return
    try:
        archive.db.end_request()
    except DatabaseError:  # a connection in an unknown state is not kept
        archive.close()
        state().forget_archive(archive)

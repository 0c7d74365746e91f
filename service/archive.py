"""The archive database: spectra and labels, model versions, latents, label correlations.

The database (``archive.database``: a SQLite file under the archive root, or a PostgreSQL URL) is
reached through the storage layer (:mod:`service.storage`); the files of each model version live
in one directory per version under ``root/models``. Every write runs in a transaction, so a
failure leaves the archive as it was. The schema is declared in ``resources/schema.sql``.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from model.spectrum import KNOWN_LABELS
from service.storage import Database, Row, open_database

SPECTRUM_COLUMNS = (
    "obs_publisher_did",
    "obs_id",
    "obs_collection",
    "target_name",
    "s_ra",
    "s_dec",
    "t_min",
    "t_max",
    "t_exptime",
    "em_min",
    "em_max",
    "em_res_power",
    "em_xel",
    "medium",
    "flux_unit",
    "instrument_name",
    "source_path",
    "source_format",
    "source_index",
    "source_sha256",
    "access_estsize",
    *KNOWN_LABELS,
    "extra_labels",
    "target_class",
    "spectral_type",
    "ingested_at",
)
#: ml.latent's vector columns (VECTORMATH): posterior means and variances as float32 arrays.
LATENT_ARRAYS = ("z", "z_var")
_SAFE_KEY = re.compile(r"[^A-Za-z0-9._+-]+")


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S")


class Archive:
    """Access to one archive root; cheap to create, one database connection per instance."""

    def __init__(
        self,
        root: str | Path,
        database: str = "archive.sqlite",
        authority: str = "latentvo.example",
        base_url: str = "http://127.0.0.1:8080",
        readonly: bool = False,
    ) -> None:
        self.root = Path(root)
        self.authority = authority
        self.readonly = readonly
        if not readonly:
            self.root.mkdir(parents=True, exist_ok=True)
        self.db: Database = open_database(database, self.root, readonly=readonly)
        if not readonly:
            self.set_setting("base_url", base_url.rstrip("/"))

    @classmethod
    def from_config(cls, config: dict, readonly: bool = False) -> Archive:
        section = config["archive"]
        return cls(
            section["root"],
            section["database"],
            section["authority"],
            config["service"]["base_url"],
            readonly=readonly,
        )

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[Database]:
        """All or nothing: commit on success, roll back on any exception."""
        with self.db.transaction() as db:
            yield db

    # -- settings and identifiers -------------------------------------------------------

    def set_setting(self, name: str, value: str) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO archive_setting VALUES (?, ?) "
                "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                (name, value),
            )

    def did(self, collection: str, identifier: str) -> str:
        return publisher_did(self.authority, collection, identifier)

    # -- spectra ------------------------------------------------------------------------

    def upsert_spectra(self, rows: Sequence[dict[str, Any]]) -> tuple[int, int]:
        """Insert or update spectra by DID in one transaction; returns (added, updated)."""
        dids = [r["obs_publisher_did"] for r in rows]
        with self.transaction() as db:
            existing = set()
            for chunk in _chunks(dids, 900):
                marks = ",".join("?" * len(chunk))
                existing.update(
                    r[0]
                    for r in db.execute(
                        f"SELECT obs_publisher_did FROM spectrum WHERE obs_publisher_did IN ({marks})", chunk
                    )
                )
            names = ",".join(SPECTRUM_COLUMNS)
            marks = ",".join("?" * len(SPECTRUM_COLUMNS))
            updates = ",".join(f"{c}=excluded.{c}" for c in SPECTRUM_COLUMNS[1:])
            db.executemany(
                f"INSERT INTO spectrum ({names}) VALUES ({marks}) "
                f"ON CONFLICT(obs_publisher_did) DO UPDATE SET {updates}",
                ([row.get(c) for c in SPECTRUM_COLUMNS] for row in rows),
            )
        return len(set(dids) - existing), len(existing)

    def spectra(self, collection: str | None = None, columns: str = "*") -> list[Row]:
        """All spectra (optionally of one collection) in a stable order (row_id)."""
        sql = f"SELECT {columns} FROM spectrum"
        args: tuple = ()
        if collection:
            sql, args = sql + " WHERE obs_collection = ?", (collection,)
        return self.db.all(sql + " ORDER BY row_id", args)

    def count(self, table: str = "spectrum") -> int:
        return self.db.scalar(f"SELECT COUNT(*) FROM {table}")

    def label_arrays(self, dids: Sequence[str]) -> dict[str, np.ndarray]:
        """Numeric labels of the DIDs in that order (NaN where unknown); labels nobody has are left out."""
        values: dict[str, list[float]] = {name: [] for name in KNOWN_LABELS}
        extras: list[dict] = []
        lookup = {}
        for chunk in _chunks(list(dids), 900):
            marks = ",".join("?" * len(chunk))
            for row in self.db.execute(
                f"SELECT obs_publisher_did, {','.join(KNOWN_LABELS)}, extra_labels FROM spectrum "
                f"WHERE obs_publisher_did IN ({marks})",
                chunk,
            ):
                lookup[row[0]] = row
        for did in dids:
            row = lookup[did]
            for name in KNOWN_LABELS:
                values[name].append(np.nan if row[name] is None else float(row[name]))
            extras.append(json.loads(row["extra_labels"] or "{}"))
        for key in sorted({k for e in extras for k, v in e.items() if isinstance(v, int | float)}):
            values[key] = [float(e.get(key, np.nan)) for e in extras]
        arrays = {name: np.array(v, dtype=float) for name, v in values.items()}
        return {name: a for name, a in arrays.items() if np.isfinite(a).any()}

    # -- model versions -----------------------------------------------------------------

    def model_dir(self, version: int) -> Path:
        return self.root / "models" / f"v{version:04d}"

    def next_model_version(self) -> int:
        """One more than any version in the database or on disk (a crashed run may have left a directory)."""
        in_db = self.db.scalar("SELECT MAX(model_version) FROM ml_model") or 0
        on_disk = [int(p.name[1:]) for p in (self.root / "models").glob("v[0-9][0-9][0-9][0-9]")]
        return max([in_db, *on_disk]) + 1

    def add_model(self, version: int, config: dict, metrics: dict) -> None:
        grid, train = config["grid"], config["train"]
        with self.transaction() as db:
            db.execute(
                "INSERT INTO ml_model (model_version, created, stage, directory, training_set_hash, n_train, "
                "grid_wave_min, grid_wave_max, grid_n_pixels, latent_dim, kl_weight, recon_rmse, metrics) "
                "VALUES (?, ?, 'trained', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    version,
                    utc_now(),
                    str(self.model_dir(version).relative_to(self.root)),
                    config["training_set_hash"],
                    metrics["n_train"],
                    grid["wave_min"],
                    grid["wave_max"],
                    grid["n_pixels"],
                    train["latent_dim"],
                    train["kl_weight"],
                    metrics.get("val_rmse"),
                    json.dumps(metrics),
                ),
            )

    def model(self, version: int | None = None) -> Row:
        """One model version's row; by default the newest one."""
        if version is None:
            row = self.db.one("SELECT * FROM ml_model ORDER BY model_version DESC LIMIT 1")
            if row is None:
                raise LookupError("the archive has no trained model yet: run `latentvo train`")
            return row
        row = self.db.one("SELECT * FROM ml_model WHERE model_version = ?", (version,))
        if row is None:
            raise LookupError(f"no model version {version}")
        return row

    def current_model(self) -> Row:
        """The version the service answers with: the one last swapped in by `latentvo index`."""
        row = self.db.one("SELECT * FROM ml_model WHERE is_current = 1")
        if row is None:
            raise LookupError("no model version is in service yet: run `latentvo index`")
        return row

    def current_version(self) -> int | None:
        """The version in service, or None: one small read, made on every request."""
        return self.db.scalar("SELECT model_version FROM ml_model WHERE is_current = 1")

    def update_model(self, version: int, **fields: Any) -> None:
        sets = ",".join(f"{name} = ?" for name in fields)
        with self.transaction() as db:
            db.execute(f"UPDATE ml_model SET {sets} WHERE model_version = ?", (*fields.values(), version))

    def remove_model(self, version: int) -> None:
        """Remove a version that is not in service: its rows, then its directory (a training run that
        was stopped leaves nothing behind)."""
        with self.transaction() as db:
            current = db.scalar("SELECT is_current FROM ml_model WHERE model_version = ?", (version,))
            if current:
                raise ValueError(f"model version {version} is in service; put another in service first")
            for table in ("ml_map", "ml_label_correlation", "ml_latent", "ml_model"):
                db.execute(f"DELETE FROM {table} WHERE model_version = ?", (version,))
        shutil.rmtree(self.model_dir(version), ignore_errors=True)

    def make_current(self, version: int) -> None:
        """Swap the version in service in one transaction (readers see the old or the new, never neither)."""
        with self.transaction() as db:
            db.execute(
                "UPDATE ml_model SET is_current = CASE WHEN model_version = ? THEN 1 ELSE 0 END", (version,)
            )

    # -- latents and analysis ------------------------------------------------------------

    def ensure_latent_columns(self, latent_dim: int) -> None:
        self.db.add_columns("ml_latent", [name for i in range(latent_dim) for name in (f"z{i}", f"z{i}_var")])
        self.db.add_columns("ml_latent", LATENT_ARRAYS, "floats")

    def fill_latent_arrays(self) -> int:
        """Give rows written before ml.latent had its arrays (z, z_var) their arrays, from the per-dimension
        columns; the number of rows filled."""
        self.db.add_columns("ml_latent", LATENT_ARRAYS, "floats")
        filled = 0
        for version, dim in self.db.all(
            "SELECT m.model_version, m.latent_dim FROM ml_model AS m WHERE EXISTS (SELECT 1 FROM ml_latent "
            "AS l WHERE l.model_version = m.model_version AND l.z IS NULL)"
        ):
            means = ", ".join(f"z{i}" for i in range(dim))
            variances = ", ".join(f"z{i}_var" for i in range(dim))
            rows = self.db.all(
                f"SELECT row_index, {means}, {variances} FROM ml_latent "
                "WHERE model_version = ? AND z IS NULL",
                (version,),
            )
            updates = [
                (version, row[0], self.db.pack_floats(row[1 : dim + 1]), self.db.pack_floats(row[dim + 1 :]))
                for row in rows
            ]
            self.db.update_rows("ml_latent", ["model_version", "row_index"], LATENT_ARRAYS, updates)
            filled += len(updates)
        return filled

    def write_latents(
        self, version: int, dids: Sequence[str], mean: np.ndarray, var: np.ndarray, recon_error: np.ndarray
    ) -> None:
        """Replace all latent rows of a version (row_index = position in the memory-mapped matrix)."""
        dim = mean.shape[1]
        self.ensure_latent_columns(dim)
        zcols = [f"z{i}" for i in range(dim)] + [f"z{i}_var" for i in range(dim)]
        cols = ["obs_publisher_did", "model_version", "row_index", "recon_error", *zcols, *LATENT_ARRAYS]
        pack = self.db.pack_floats
        with self.transaction() as db:
            db.execute("DELETE FROM ml_latent WHERE model_version = ?", (version,))
            db.insert_rows(
                "ml_latent",
                cols,
                (
                    (did, version, i, float(recon_error[i]), *mean[i].tolist(), *var[i].tolist())
                    + (pack(mean[i]), pack(var[i]))
                    for i, did in enumerate(dids)
                ),
            )

    def latent_dids(self, version: int) -> list[str]:
        """DIDs in matrix row order."""
        rows = self.db.execute(
            "SELECT obs_publisher_did FROM ml_latent WHERE model_version = ? ORDER BY row_index", (version,)
        )
        return [r[0] for r in rows]

    def row_of(self, version: int, did: str) -> int | None:
        row = self.db.one(
            "SELECT row_index FROM ml_latent WHERE model_version = ? AND obs_publisher_did = ?",
            (version, did),
        )
        return None if row is None else row[0]

    def write_analysis(
        self,
        version: int,
        informative: Sequence[int],
        correlations: Iterable[dict],
        lof: np.ndarray,
        anomaly: np.ndarray,
    ) -> None:
        """Store the analysis of a version in one transaction."""
        cols = (
            "model_version",
            "dim",
            "label",
            "informative",
            "mi",
            "mi_error",
            "pearson",
            "spearman",
            "pca_mi",
            "pca_mi_error",
            "pca_pearson",
            "pca_spearman",
            "n_spectra",
        )
        with self.transaction() as db:
            db.execute("DELETE FROM ml_label_correlation WHERE model_version = ?", (version,))
            db.executemany(
                f"INSERT INTO ml_label_correlation ({','.join(cols)}) VALUES ({','.join('?' * len(cols))})",
                ([version, *[row.get(c) for c in cols[1:]]] for row in correlations),
            )
            db.update_rows(
                "ml_latent",
                ("model_version", "row_index"),
                ("lof_score", "anomaly_score"),
                ((version, i, float(lof[i]), float(anomaly[i])) for i in range(len(lof))),
            )
            db.execute(
                "UPDATE ml_model SET informative_dims = ?, stage = 'analysed' WHERE model_version = ?",
                (" ".join(map(str, informative)), version),
            )

    def write_map(self, version: int, method: str, dids: Sequence[str], xy: np.ndarray) -> None:
        """Replace the 2-D map of a version made by ``method`` (row i of ``xy`` is ``dids[i]``)."""
        with self.transaction() as db:
            db.execute("DELETE FROM ml_map WHERE model_version = ? AND method = ?", (version, method))
            db.insert_rows(
                "ml_map",
                ("model_version", "method", "obs_publisher_did", "row_index", "x", "y"),
                ((version, method, did, i, float(xy[i, 0]), float(xy[i, 1])) for i, did in enumerate(dids)),
            )

    def map_methods(self, version: int) -> list[str]:
        """The projections stored for a version, PCA first."""
        rows = self.db.execute("SELECT DISTINCT method FROM ml_map WHERE model_version = ?", (version,))
        return sorted((r[0] for r in rows), key=lambda m: (m != "pca", m))

    def map_points(self, version: int, method: str) -> list[Row]:
        """Every mapped spectrum of a version with what the map colours and labels points by."""
        return self.db.all(
            "SELECT m.obs_publisher_did, m.x, m.y, s.obs_collection, s.target_name, s.teff, s.logg, s.feh, "
            "s.rv, s.snr, s.vsini, l.anomaly_score FROM ml_map AS m "
            "JOIN spectrum AS s ON s.obs_publisher_did = m.obs_publisher_did "
            "LEFT JOIN ml_latent AS l ON l.model_version = m.model_version "
            "AND l.obs_publisher_did = m.obs_publisher_did "
            "WHERE m.model_version = ? AND m.method = ? ORDER BY m.row_index",
            (version, method),
        )


def publisher_did(authority: str, collection: str, identifier: str) -> str:
    """The publisher DID: ``ivo://<authority>/~?<collection>/<key>`` with URL-safe parts."""
    return f"ivo://{authority}/~?{safe_key(collection)}/{safe_key(identifier)}"


def safe_key(text: str) -> str:
    """An identifier fit for a DID and a URL query without escaping."""
    key = _SAFE_KEY.sub("_", str(text).strip()).strip("_")
    if not key:
        raise ValueError(f"cannot make an identifier from {text!r}")
    return key


def _chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]

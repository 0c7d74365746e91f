"""TAP_SCHEMA (TAP 1.1 §4) materialised in the archive database from ``resources/tables/*.toml``.

The same :class:`~service.tables.TableSet` feeds ``/tap/tables`` (VOSI), ADQL validation and
the five ``tap_schema_*`` tables written here, so TAP_SCHEMA and VOSI agree column by column
(TAP-13). The tables are rewritten in one transaction by ``latentvo index`` once a model
version is in service (its latent size decides how many ``z<i>`` columns ``ml.latent`` has);
the server only reads them, through its read-only connection.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache

from service.archive import Archive, utc_now
from service.storage import Database, view_definitions
from service.tables import ColumnMeta, TableMeta, TableSet, load_tableset

SCHEMA_NAME = "TAP_SCHEMA"
#: archive_setting row recording when TAP_SCHEMA was last written (Last-Modified of /tap/tables).
UPDATED_SETTING = "tap_schema_updated"
_KINDS = {"char": "text", "unicodeChar": "text", "boolean": "integer", "float": "double", "double": "double"}


@lru_cache(maxsize=8)
def _cached_tableset(latent_dim: int) -> TableSet:
    return load_tableset(latent_dim)


def tableset_for(latent_dim: int) -> TableSet:
    """The table metadata for a model with ``latent_dim`` dimensions.

    Parsed once per size; the caller gets its own lists, so adding a table (TAP_UPLOAD)
    to the result does not leak into other requests. Do not modify the TableMeta objects.
    """
    cached = _cached_tableset(latent_dim)
    return TableSet(list(cached.schemas), list(cached.tables))


def current_tableset(archive: Archive) -> TableSet:
    """The table metadata for the model version in service (no ``z<i>`` columns when there is none)."""
    try:
        latent_dim = int(archive.current_model()["latent_dim"])
    except LookupError:
        latent_dim = 0
    return tableset_for(latent_dim)


def last_modified(archive: Archive) -> datetime | None:
    """When TAP_SCHEMA was last written (None for an archive that has never been indexed)."""
    row = archive.db.execute(
        "SELECT value FROM archive_setting WHERE name = ?", (UPDATED_SETTING,)
    ).fetchone()
    return datetime.fromisoformat(row[0]).replace(tzinfo=UTC) if row else None


def write_tap_schema(archive: Archive, tableset: TableSet) -> None:
    """Create or refresh the ``tap_schema_*`` tables (and the archive's views) in one transaction.

    Refuses metadata that would publish dangling rows: a foreign key to an unknown table or
    column, or a declared column the database does not deliver.
    """
    check_foreign_keys(tableset)
    rows = tap_schema_rows(tableset)
    with archive.transaction() as db:
        refresh_views(db)
        for table in tableset.schema_tables(SCHEMA_NAME):
            db.execute(f'DROP TABLE IF EXISTS "{table.sql}"')
            db.execute(create_table_sql(table, db))
            names = [c.name for c in table.columns]
            marks = ", ".join("?" * len(names))
            quoted = ", ".join(f'"{n}"' for n in names)
            db.executemany(
                f'INSERT INTO "{table.sql}" ({quoted}) VALUES ({marks})',
                ([row[n] for n in names] for row in rows[table.name]),
            )
        missing = missing_columns(db, tableset)
        if missing:
            raise ValueError("table metadata declares columns the database lacks: " + ", ".join(missing))
        db.execute(
            "INSERT INTO archive_setting VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
            (UPDATED_SETTING, utc_now()),
        )


def tap_schema_rows(tableset: TableSet) -> dict[str, list[dict]]:
    """The rows of the five TAP_SCHEMA tables, keyed by qualified table name then column name."""
    schemas = [
        {
            "schema_name": s.name,
            "utype": s.utype or None,
            "description": s.description or None,
            "schema_index": i,
        }
        for i, s in enumerate(tableset.schemas)
    ]
    tables, columns, keys, key_columns = [], [], [], []
    for index, table in enumerate(tableset.tables):
        tables.append(
            {
                "schema_name": table.schema,
                "table_name": table.name,
                "table_type": table.type,
                "utype": table.utype or None,
                "description": table.description or None,
                "table_index": index,
            }
        )
        columns += [_column_row(table, column, i) for i, column in enumerate(table.columns, 1)]
        for key in table.foreign_keys:
            target = tableset.table(key.target)
            keys.append(
                {
                    "key_id": key.key_id,
                    "from_table": table.name,
                    "target_table": target.name,
                    "description": key.description or None,
                    "utype": None,
                }
            )
            key_columns += [
                {
                    "key_id": key.key_id,
                    "from_column": table.column(a).adql_name,
                    "target_column": target.column(b).adql_name,
                }
                for a, b in zip(key.from_columns, key.to_columns, strict=True)
            ]
    return {
        "TAP_SCHEMA.schemas": schemas,
        "TAP_SCHEMA.tables": tables,
        "TAP_SCHEMA.columns": columns,
        "TAP_SCHEMA.keys": keys,
        "TAP_SCHEMA.key_columns": key_columns,
    }


def _column_row(table: TableMeta, column: ColumnMeta, index: int) -> dict:
    return {
        "table_name": table.name,
        "column_name": column.adql_name,
        "datatype": column.datatype,
        "arraysize": column.arraysize or None,
        "xtype": column.xtype or None,
        "size": column.size,
        "description": column.description or None,
        "utype": column.utype or None,
        "unit": column.unit or None,
        "ucd": column.ucd or None,
        "indexed": int(column.indexed),
        "principal": int(column.principal),
        "std": int(column.std),
        "column_index": index,
    }


def check_foreign_keys(tableset: TableSet) -> None:
    """Every foreign key joins existing columns of existing tables (no dangling TAP_SCHEMA.keys rows)."""
    names = [t.name.lower() for t in tableset.tables]
    if len(names) != len(set(names)):
        raise ValueError("table metadata names a table twice")
    for table in tableset.tables:
        for key in table.foreign_keys:
            target = tableset.table(key.target)
            if target is None:
                raise ValueError(f"{table.name}: foreign key to unknown table {key.target}")
            if len(key.from_columns) != len(key.to_columns) or not key.from_columns:
                raise ValueError(f"{table.name}: foreign key {key.key_id} needs matching column lists")
            for name, owner in [(c, table) for c in key.from_columns] + [(c, target) for c in key.to_columns]:
                if owner.column(name) is None:
                    raise ValueError(f"foreign key {key.key_id}: {owner.name} has no column {name}")


def missing_columns(db: Database, tableset: TableSet) -> list[str]:
    """Declared columns (without an SQL expression of their own) that the database table or view lacks."""
    missing = []
    for table in tableset.tables:
        have = set(db.columns(table.sql))
        if not have:
            missing.append(f"{table.name} (no table {table.sql})")
            continue
        missing += [
            f"{table.name}.{c.name}" for c in table.columns if c.sql is None and c.name.lower() not in have
        ]
    return missing


def create_table_sql(table: TableMeta, db: Database) -> str:
    """DDL for a TAP_SCHEMA table from its own metadata (types and NOT NULL follow the TOML)."""
    columns = []
    for column in table.columns:
        sql_type = db.types[_KINDS.get(column.datatype, "integer")]
        columns.append(f'"{column.name}" {sql_type}{"" if column.nullable else " NOT NULL"}')
    keys = [c.name for c in table.columns if c.primary]
    if keys:
        columns.append("PRIMARY KEY (" + ", ".join(f'"{k}"' for k in keys) + ")")
    return f'CREATE TABLE "{table.sql}" ({", ".join(columns)})'


def refresh_views(db: Database) -> None:
    """Re-create the views of resources/schema.sql (an archive from an older release gets the new columns)."""
    for name, body in view_definitions(db.dialect):
        db.execute(f"DROP VIEW IF EXISTS {name}")
        db.execute(f"CREATE VIEW {name} AS\n{body}")

"""Copy an archive's database to another engine: how an archive that began on SQLite moves to PostgreSQL.

Every table of resources/schema.sql is copied row for row (row numbers, model versions, latents,
analysis, maps, TAP_SCHEMA, UWS jobs) in one transaction on the target, so the copy is whole or
absent. The model files stay where they are: the target is used with the same archive root.
"""

from __future__ import annotations

from collections.abc import Callable

from service.storage import Database, arrays

#: In an order that satisfies the foreign keys (ml_model before what refers to it).
TABLES = (
    "archive_setting",
    "spectrum",
    "ml_model",
    "ml_latent",
    "ml_label_correlation",
    "ml_map",
    "uws_job",
)
TAP_SCHEMA_TABLES = (
    "tap_schema_schemas",
    "tap_schema_tables",
    "tap_schema_columns",
    "tap_schema_keys",
    "tap_schema_key_columns",
)


def copy_database(
    source: Database, target: Database, report: Callable[[str, int], None] = lambda table, n: None
) -> dict[str, int]:
    """Copy every table of ``source`` into ``target`` (which must hold no spectra); rows per table.

    The TAP_SCHEMA tables are created on the target as the source has them (``latentvo index``
    writes them afresh anyway).
    """
    if target.scalar("SELECT COUNT(*) FROM spectrum"):
        raise ValueError("the target archive database already holds spectra; copy into an empty one")
    kinds = source.column_kinds("ml_latent")
    for kind in ("double", "floats"):
        target.add_columns(
            "ml_latent", [c for c, k in kinds.items() if c.startswith("z") and k == kind], kind
        )
    counts: dict[str, int] = {}
    with target.transaction():
        for table in reversed(TABLES):  # emptied children first (archive_setting, uws_job: any rows)
            target.execute(f"DELETE FROM {table}")
        for table in TABLES:
            counts[table] = _copy_table(source, target, table, list(source.columns(table)))
            report(table, counts[table])
        for table in TAP_SCHEMA_TABLES:
            columns = source.columns(table)
            if not columns:
                continue
            target.execute(f'DROP TABLE IF EXISTS "{table}"')
            kinds = source.column_kinds(table)
            target.execute(
                f'CREATE TABLE "{table}" ('
                + ", ".join(f'"{c}" {target.types[kinds[c]]}' for c in columns)
                + ")"
            )
            counts[table] = _copy_table(source, target, table, columns)
            report(table, counts[table])
        if target.dialect == "postgres":  # the identity goes on after the rows copied with their numbers
            target.execute(
                "SELECT setval(pg_get_serial_sequence('spectrum', 'row_id'), "
                "COALESCE((SELECT MAX(row_id) FROM spectrum), 0) + 1, false)"
            )
    if target.dialect == "postgres":
        target.execute("ANALYZE")  # the planner's statistics now, not at autovacuum's leisure
    return counts


def _copy_table(source: Database, target: Database, table: str, columns: list[str]) -> int:
    have = set(target.columns(table))
    columns = [c for c in columns if c in have]
    quoted = ", ".join(f'"{c}"' for c in columns)
    rows = source.execute(f"SELECT {quoted} FROM {table}")
    kinds = source.column_kinds(table)
    arrays_at = [i for i, c in enumerate(columns) if kinds[c] == "floats"]
    if arrays_at:  # each engine stores arrays its own way
        rows = (_arrays_for(target, row, arrays_at) for row in rows)
    counted = _Counter(rows)
    target.insert_rows(table, columns, counted)
    return counted.n


def _arrays_for(target: Database, row, positions: list[int]) -> tuple:
    values = list(row)
    for i in positions:
        if values[i] is not None:
            values[i] = target.pack_floats(arrays.unpack(values[i]))  # float32, as stored
    return tuple(values)


class _Counter:
    """Rows passed through, counted."""

    def __init__(self, rows) -> None:
        self.rows = rows
        self.n = 0

    def __iter__(self):
        for row in self.rows:
            self.n += 1
            yield tuple(row)

"""Table metadata, read from ``resources/tables/*.toml``: what TAP_SCHEMA, VOSI tables,
ADQL validation and every result FIELD are made from.

Each TOML file describes one schema::

    [schema]
    name = "ivoa"
    description = "..."

    [[table]]
    name = "ivoa.obscore"        # as users type it in ADQL
    sql = "ivoa_obscore"         # the table or view in the archive database
    type = "view"
    description = "..."

    [[table.column]]
    name = "s_ra"
    datatype = "double"
    unit = "deg"
    ucd = "pos.eq.ra"
    utype = "obscore:Char.SpatialAxis.Coverage.Location.Coord.Position2D.Value2.C1"
    description = "..."
    indexed = true
    principal = true
    std = true
    nullable = true              # VOSI flag "nullable" (default true)
    primary = false              # part of the primary key: VOSI flag "primary"
    delimited = false            # an ADQL reserved word, published quoted ("size")

    [[table.foreign_key]]
    target = "ivoa.obscore"
    from = ["obs_publisher_did"]
    to = ["obs_publisher_did"]

A column with ``per_latent_dim = true`` is a template (``z{i}``) repeated for every latent
dimension of the model in service; one with ``latent_array = true`` is an array column whose
arraysize is the latent size (both are left out while no model is in service).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from service.votable import Column

TABLES_DIR = Path(__file__).resolve().parents[1] / "resources" / "tables"


@dataclass
class ColumnMeta:
    name: str
    datatype: str
    arraysize: str | None = None
    xtype: str | None = None
    unit: str | None = None
    ucd: str | None = None
    utype: str | None = None
    description: str | None = None
    indexed: bool = False
    principal: bool = False
    std: bool = False
    nullable: bool = True
    #: The SQL expression behind the column (default: the column of the same name).
    sql: str | None = None
    #: Part of the table's primary key (the VOSI ``primary`` flag).
    primary: bool = False
    #: The name is an ADQL reserved word (TAP_SCHEMA.columns."size"): published as a delimited identifier.
    delimited: bool = False

    @property
    def adql_name(self) -> str:
        """The name as TAP_SCHEMA and VOSI publish it: ``"size"`` (with quotes) for reserved words."""
        return f'"{self.name}"' if self.delimited else self.name

    @property
    def size(self) -> int | None:
        """TAP_SCHEMA ``"size"``: the integer part of a 1-D arraysize (``16``, ``16*``), else None."""
        if not self.arraysize or "x" in self.arraysize:
            return None
        digits = self.arraysize.rstrip("*")
        return int(digits) if digits.isdigit() else None

    def to_column(self, name: str | None = None, ID: str | None = None) -> Column:
        """The FIELD for this column, optionally under another name (an ADQL alias)."""
        return Column(
            name=name or self.name,
            datatype=self.datatype,
            arraysize=self.arraysize,
            unit=self.unit,
            ucd=self.ucd,
            utype=self.utype,
            xtype=self.xtype,
            description=self.description,
            ID=ID,
        )


@dataclass
class ForeignKey:
    target: str
    from_columns: list[str]
    to_columns: list[str]
    description: str | None = None
    #: The table holding the key (set by the loader); makes key_id unique across tables.
    from_table: str | None = None

    @property
    def key_id(self) -> str:
        source = f"{self.from_table}." if self.from_table else ""
        return f"{source}{'_'.join(self.from_columns)}->{self.target}"


@dataclass
class TableMeta:
    name: str
    sql: str
    type: str = "table"
    description: str | None = None
    utype: str | None = None
    columns: list[ColumnMeta] = field(default_factory=list)
    foreign_keys: list[ForeignKey] = field(default_factory=list)

    @property
    def schema(self) -> str:
        return self.name.split(".", 1)[0]

    def column(self, name: str) -> ColumnMeta | None:
        """Case-insensitive column lookup (regular ADQL identifiers are case-insensitive)."""
        lowered = name.lower()
        return next((c for c in self.columns if c.name.lower() == lowered), None)


@dataclass
class SchemaMeta:
    name: str
    description: str | None = None
    utype: str | None = None


@dataclass
class TableSet:
    schemas: list[SchemaMeta]
    tables: list[TableMeta]

    def table(self, name: str) -> TableMeta | None:
        """Case-insensitive lookup by qualified name (``ivoa.obscore``, ``TAP_SCHEMA.tables``)."""
        lowered = name.lower()
        return next((t for t in self.tables if t.name.lower() == lowered), None)

    def schema_tables(self, schema: str) -> list[TableMeta]:
        return [t for t in self.tables if t.schema.lower() == schema.lower()]


def load_tableset(latent_dim: int = 0, directory: Path = TABLES_DIR) -> TableSet:
    """All schemas in ``directory``, with latent-dimension templates expanded ``latent_dim`` times."""
    schemas, tables = [], []
    for path in sorted(directory.glob("*.toml")):
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
        schemas.append(SchemaMeta(**data["schema"]))
        for raw in data.get("table", []):
            columns = []
            for spec in raw.get("column", []):
                spec = dict(spec)
                if spec.pop("per_latent_dim", False):
                    columns += [_expand(spec, i) for i in range(latent_dim)]
                elif spec.pop("latent_array", False):
                    columns += [ColumnMeta(**spec, arraysize=str(latent_dim))] if latent_dim else []
                else:
                    columns.append(ColumnMeta(**spec))
            keys = [
                ForeignKey(k["target"], list(k["from"]), list(k["to"]), k.get("description"), raw["name"])
                for k in raw.get("foreign_key", [])
            ]
            tables.append(
                TableMeta(
                    name=raw["name"],
                    sql=raw["sql"],
                    type=raw.get("type", "table"),
                    description=raw.get("description"),
                    utype=raw.get("utype"),
                    columns=columns,
                    foreign_keys=keys,
                )
            )
    return TableSet(schemas, tables)


def _expand(spec: dict, i: int) -> ColumnMeta:
    values = {k: (v.format(i=i) if isinstance(v, str) else v) for k, v in spec.items()}
    return ColumnMeta(**values)

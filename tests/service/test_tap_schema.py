"""TAP_SCHEMA as materialised in the archive (TAP-10…14, OBS-01/02) and its agreement with /tap/tables."""

from __future__ import annotations

import re
import sqlite3
from dataclasses import replace
from pathlib import Path
from urllib.parse import unquote

import pytest
import requests
from lxml import etree

from service.archive import Archive
from service.storage import open_database
from service.tables import ColumnMeta, ForeignKey, TableSet
from service.tap import schema

TAP_SCHEMA_TABLES = {
    "TAP_SCHEMA.schemas": ["schema_name", "utype", "description", "schema_index"],
    "TAP_SCHEMA.tables": ["schema_name", "table_name", "table_type", "utype", "description", "table_index"],
    "TAP_SCHEMA.columns": [
        "table_name",
        "column_name",
        "datatype",
        "arraysize",
        "xtype",
        '"size"',
        "description",
        "utype",
        "unit",
        "ucd",
        "indexed",
        "principal",
        "std",
        "column_index",
    ],  # fmt: skip
    "TAP_SCHEMA.keys": ["key_id", "from_table", "target_table", "description", "utype"],
    "TAP_SCHEMA.key_columns": ["key_id", "from_column", "target_column"],
}
#: TAP-12: foreign keys TAP_SCHEMA must describe: (from_table, from_column, target_table, target_column).
REQUIRED_KEYS = {
    ("TAP_SCHEMA.tables", "schema_name", "TAP_SCHEMA.schemas", "schema_name"),
    ("TAP_SCHEMA.columns", "table_name", "TAP_SCHEMA.tables", "table_name"),
    ("TAP_SCHEMA.keys", "from_table", "TAP_SCHEMA.tables", "table_name"),
    ("TAP_SCHEMA.keys", "target_table", "TAP_SCHEMA.tables", "table_name"),
    ("TAP_SCHEMA.key_columns", "key_id", "TAP_SCHEMA.keys", "key_id"),
    ("ml.latent", "obs_publisher_did", "ivoa.obscore", "obs_publisher_did"),
    ("ml.latent", "model_version", "ml.model", "model_version"),
    ("ml.label_correlation", "model_version", "ml.model", "model_version"),
}
#: OBS-02: column → (datatypes allowed, unit, UCD, utype after "obscore:"); None = NULL.
OBSCORE = {
    "dataproduct_type": ({"char"}, None, "meta.code.class", "ObsDataset.dataProductType"),
    "calib_level": ({"short", "int"}, None, "meta.code;obs.calib", "ObsDataset.calibLevel"),
    "obs_collection": ({"char"}, None, "meta.id", "DataID.Collection"),
    "obs_id": ({"char"}, None, "meta.id", "DataID.observationID"),
    "obs_publisher_did": ({"char"}, None, "meta.ref.ivoid", "Curation.PublisherDID"),
    "access_url": ({"char"}, None, "meta.ref.url", "Access.Reference"),
    "access_format": ({"char"}, None, "meta.code.mime", "Access.Format"),
    "access_estsize": ({"long"}, "kbyte", "phys.size;meta.file", "Access.Size"),
    "target_name": ({"char"}, None, "meta.id;src", "Target.Name"),
    "s_ra": ({"double"}, "deg", "pos.eq.ra", "Char.SpatialAxis.Coverage.Location.Coord.Position2D.Value2.C1"),
    "s_dec": (
        {"double"},
        "deg",
        "pos.eq.dec",
        "Char.SpatialAxis.Coverage.Location.Coord.Position2D.Value2.C2",
    ),
    "s_fov": (
        {"double"},
        "deg",
        "phys.angSize;instr.fov",
        "Char.SpatialAxis.Coverage.Bounds.Extent.diameter",
    ),
    "s_region": ({"char"}, None, "pos.outline;obs.field", "Char.SpatialAxis.Coverage.Support.Area"),
    "s_resolution": ({"double"}, "arcsec", "pos.angResolution", "Char.SpatialAxis.Resolution.Refval.value"),
    "s_xel1": ({"long"}, None, "meta.number", "Char.SpatialAxis.numBins1"),
    "s_xel2": ({"long"}, None, "meta.number", "Char.SpatialAxis.numBins2"),
    "t_min": ({"double"}, "d", "time.start;obs.exposure", "Char.TimeAxis.Coverage.Bounds.Limits.StartTime"),
    "t_max": ({"double"}, "d", "time.end;obs.exposure", "Char.TimeAxis.Coverage.Bounds.Limits.StopTime"),
    "t_exptime": ({"double"}, "s", "time.duration;obs.exposure", "Char.TimeAxis.Coverage.Support.Extent"),
    "t_resolution": ({"double"}, "s", "time.resolution", "Char.TimeAxis.Resolution.Refval.value"),
    "t_xel": ({"long"}, None, "meta.number", "Char.TimeAxis.numBins"),
    "em_min": ({"double"}, "m", "em.wl;stat.min", "Char.SpectralAxis.Coverage.Bounds.Limits.LoLimit"),
    "em_max": ({"double"}, "m", "em.wl;stat.max", "Char.SpectralAxis.Coverage.Bounds.Limits.HiLimit"),
    "em_res_power": ({"double"}, None, "spect.resolution", "Char.SpectralAxis.Resolution.ResolPower.refVal"),
    "em_xel": ({"long"}, None, "meta.number", "Char.SpectralAxis.numBins"),
    "o_ucd": ({"char"}, None, "meta.ucd", "Char.ObservableAxis.ucd"),
    "pol_states": ({"char"}, None, "meta.code;phys.polarization", "Char.PolarizationAxis.stateList"),
    "pol_xel": ({"long"}, None, "meta.number", "Char.PolarizationAxis.numBins"),
    "facility_name": ({"char"}, None, "meta.id;instr.tel", "Provenance.ObsConfig.Facility.name"),
    "instrument_name": ({"char"}, None, "meta.id;instr", "Provenance.ObsConfig.Instrument.name"),
}
VS = "{http://www.ivoa.net/xml/VODataService/v1.1}"
XSI_TYPE = "{http://www.w3.org/2001/XMLSchema-instance}type"


@pytest.fixture(scope="module")
def db(live_server):
    """The served archive's database, read-only, as TAP_SCHEMA was written by `latentvo index`."""
    section = live_server.config["archive"]
    database = open_database(section["database"], Path(section["root"]), readonly=True)
    yield database
    database.close()


def rows(db, table: str) -> list[dict]:
    return [dict(r) for r in db.execute(f"SELECT * FROM tap_schema_{table}")]


def columns_of(db, table_name: str) -> list[dict]:
    return [
        dict(r)
        for r in db.execute(
            "SELECT * FROM tap_schema_columns WHERE table_name = ? ORDER BY column_index", (table_name,)
        )
    ]


def test_five_tables_describe_themselves(db):
    tables = {r["table_name"]: r for r in rows(db, "tables")}
    for name, expected in TAP_SCHEMA_TABLES.items():
        assert tables[name]["schema_name"] == "TAP_SCHEMA"
        assert tables[name]["table_type"] == "table"
        assert [c["column_name"] for c in columns_of(db, name)] == expected
    assert {r["schema_name"] for r in rows(db, "schemas")} == {"ivoa", "ml", "TAP_SCHEMA"}
    assert tables["ivoa.obscore"]["table_type"] == "view"


def test_not_null_columns_and_types(db):
    """TAP-10: types of the TAP_SCHEMA columns; TAP-11: VOTable datatype names, qualified table names."""
    described = {(c["table_name"], c["column_name"]): c for c in rows(db, "columns")}
    ints = {"schema_index", "table_index", '"size"', "indexed", "principal", "std", "column_index"}
    for table, names in TAP_SCHEMA_TABLES.items():
        for name in names:
            assert described[(table, name)]["datatype"] == ("int" if name in ints else "char")
    votable_types = {
        "char",
        "unicodeChar",
        "boolean",
        "unsignedByte",
        "short",
        "int",
        "long",
        "float",
        "double",
    }
    assert {c["datatype"] for c in described.values()} <= votable_types
    assert all("." in c["table_name"] for c in described.values())


def test_flags_are_integers_0_or_1(db):
    for flag in ("indexed", "principal", "std"):
        found = db.execute(f"SELECT DISTINCT typeof({flag}), {flag} FROM tap_schema_columns").fetchall()
        assert {tuple(r) for r in found} <= {("integer", 0), ("integer", 1)}, flag


def test_size_follows_arraysize(db):
    """TAP-11: "size" is the integer part of a 1-D arraysize, NULL for scalars, '*' and n-D arrays."""
    for column in rows(db, "columns"):
        arraysize, size = column["arraysize"], column["size"]
        match = re.fullmatch(r"(\d+)\*?", arraysize or "")
        assert size == (int(match.group(1)) if match else None), column
    assert db.execute("SELECT COUNT(*) FROM tap_schema_columns WHERE arraysize = '*'").fetchone()[0] > 0


def test_no_empty_strings_where_null_is_meant(db):
    for table in ("schemas", "tables", "columns", "keys", "key_columns"):
        for row in rows(db, table):
            assert "" not in row.values(), (table, row)


def test_column_index_is_contiguous(db):
    for table in {r["table_name"] for r in rows(db, "tables")}:
        assert [c["column_index"] for c in columns_of(db, table)] == list(
            range(1, len(columns_of(db, table)) + 1)
        )


def test_foreign_keys_close(db):
    """TAP-12: every key and key column points at described tables and columns; nothing dangles."""
    tables = {r["table_name"] for r in rows(db, "tables")}
    schemas = {r["schema_name"] for r in rows(db, "schemas")}
    columns = {(r["table_name"], r["column_name"]) for r in rows(db, "columns")}
    keys = {r["key_id"]: r for r in rows(db, "keys")}
    key_columns = rows(db, "key_columns")
    assert {r["schema_name"] for r in rows(db, "tables")} <= schemas
    assert {r["table_name"] for r in rows(db, "columns")} <= tables
    assert {r["schema_name"] for r in rows(db, "schemas")} == {r["schema_name"] for r in rows(db, "tables")}
    found = set()
    for pair in key_columns:
        key = keys[pair["key_id"]]
        assert (key["from_table"], pair["from_column"]) in columns
        assert (key["target_table"], pair["target_column"]) in columns
        found.add((key["from_table"], pair["from_column"], key["target_table"], pair["target_column"]))
    assert {p["key_id"] for p in key_columns} == set(keys)
    assert found >= REQUIRED_KEYS


def test_obscore_columns_as_the_standard_says(db):
    """OBS-01/02: names, types, units (NULL, not ''), UCDs and obscore: utypes; std=1."""
    described = {c["column_name"]: c for c in columns_of(db, "ivoa.obscore")}
    for name, (types, unit, ucd, utype) in OBSCORE.items():
        column = described[name]
        assert column["datatype"] in types, name
        assert column["unit"] == unit, name
        assert column["ucd"] == ucd, name
        assert column["utype"] == f"obscore:{utype}", name
        assert column["std"] == 1, name
        if column["datatype"] == "char":
            assert column["arraysize"] == "*", name
    assert described["s_region"]["xtype"] == "adql:REGION"
    assert 8 <= sum(c["principal"] for c in described.values()) <= 14
    assert {n for n, c in described.items() if c["indexed"]} >= {"s_ra", "s_dec", "obs_publisher_did"}
    assert described["teff"]["std"] == 0 and described["teff"]["unit"] == "K"


def test_obscore_view_delivers_every_column(db, live_server):
    """The view has each declared column, and access_url leads to DataLink with the URL-encoded DID."""
    tableset = schema.current_tableset(Archive.from_config(live_server.config, readonly=True))
    assert schema.missing_columns(db, tableset) == []
    row = db.execute("SELECT * FROM ivoa_obscore WHERE obs_publisher_did LIKE '%m0005'").fetchone()
    prefix = f"{live_server.url}/datalink/links?ID="
    assert row["access_url"].startswith(prefix)
    assert unquote(row["access_url"][len(prefix) :]) == row["obs_publisher_did"]
    assert "~" in row["obs_publisher_did"] and "/" not in row["access_url"][len(prefix) :]
    assert row["access_format"] == "application/x-votable+xml;content=datalink"
    assert row["dataproduct_type"] == "spectrum" and row["calib_level"] == 2
    assert row["pol_xel"] is None and row["s_region"] is None
    assert row["obs_title"].endswith("(miles)") and row["teff"] > 0


def test_the_demo_stars_carry_their_spectral_classes(db, demo_dir):
    """ivoa.obscore.target_class holds the MILES temperature class, spectral_type the full type."""
    from astropy.io import fits

    from model.readers import stellar_class

    with fits.open(demo_dir / "miles_demo.fits") as hdul:
        stars = {str(r["miles_id"]).strip(): (r["sptype"], r["spclass"]) for r in hdul["SPECTRA"].data}
    rows = db.execute("SELECT obs_id, target_class, spectral_type FROM ivoa_obscore").fetchall()
    assert len(rows) == len(stars)
    for obs_id, target_class, spectral_type in rows:
        sptype, spclass = stars[obs_id]
        assert (target_class, spectral_type) == stellar_class({"sptype": sptype, "spclass": spclass})
    classes = {row[1] for row in rows}
    assert {"B", "A", "F", "G", "K", "M"} <= classes  # real classes to teach a model with


def test_ml_latent_has_one_pair_of_columns_per_latent_dimension(db):
    latent_dim = db.execute("SELECT latent_dim FROM ml_model WHERE is_current = 1").fetchone()[0]
    names = [c["column_name"] for c in columns_of(db, "ml.latent")]
    assert [n for n in names if re.fullmatch(r"z\d+", n)] == [f"z{i}" for i in range(latent_dim)]
    assert [n for n in names if re.fullmatch(r"z\d+_var", n)] == [f"z{i}_var" for i in range(latent_dim)]
    arrays = {c["column_name"]: c for c in columns_of(db, "ml.latent") if c["column_name"] in ("z", "z_var")}
    assert {(c["datatype"], c["arraysize"], c["size"]) for c in arrays.values()} == {
        ("float", str(latent_dim), latent_dim)
    }


def test_tables_endpoint_agrees_with_tap_schema(db, live_server):
    """TAP-13: every table and column of /tap/tables has exactly the TAP_SCHEMA metadata, in order."""
    response = requests.get(f"{live_server.url}/tap/tables", params={"detail": "max"}, timeout=30)
    root = etree.fromstring(response.content)
    published = {r["table_name"]: r for r in rows(db, "tables")}
    seen = []
    for table in root.iter("table"):
        name = table.findtext("name")
        seen.append(name)
        assert table.get("type") == published[name]["table_type"]
        assert table.findtext("description") == published[name]["description"]
        described = columns_of(db, name)
        listed = table.findall("column")
        assert [c.findtext("name") for c in listed] == [c["column_name"] for c in described]
        for element, column in zip(listed, described, strict=True):
            data_type = element.find("dataType")
            assert data_type.get(XSI_TYPE) == "vs:VOTableType"
            assert data_type.text == column["datatype"]
            assert data_type.get("arraysize") == column["arraysize"]
            assert data_type.get("extendedType") == column["xtype"]
            for tag in ("unit", "ucd", "utype", "description"):
                assert element.findtext(tag) == column[tag], (name, column["column_name"], tag)
            flags = {f.text for f in element.findall("flag")}
            assert ("indexed" in flags) == bool(column["indexed"])
            assert (element.get("std") == "true") == bool(column["std"])
    assert sorted(seen) == sorted(published)


def test_every_tap_schema_table_counts_in_adql(db, live_server):
    """TAP-13: taplint sizes its metadata queries with SELECT COUNT(*) AS nr FROM TAP_SCHEMA.<t>."""
    for name in TAP_SCHEMA_TABLES:
        response = requests.post(
            f"{live_server.url}/tap/sync",
            data={"LANG": "ADQL", "RESPONSEFORMAT": "csv", "QUERY": f"SELECT COUNT(*) AS nr FROM {name}"},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        header, value = response.text.split()
        direct = db.execute(f"SELECT COUNT(*) FROM tap_schema_{name.split('.')[1]}").fetchone()[0]
        assert header == "nr" and int(value) == direct > 0


def test_delimited_size_column_is_queryable(live_server):
    response = requests.get(
        f"{live_server.url}/tap/sync",
        params={
            "LANG": "ADQL",
            "RESPONSEFORMAT": "csv",
            "QUERY": "SELECT column_name, \"size\" FROM TAP_SCHEMA.columns WHERE table_name = 'ivoa.obscore'",
        },
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert "obs_publisher_did" in response.text


# -- writing TAP_SCHEMA ----------------------------------------------------------------------------


@pytest.fixture()
def archive_copy(live_server, tmp_path):
    """A writable copy of the served archive (SQLite backup), for the write-path tests."""
    section = live_server.config["archive"]
    source = sqlite3.connect(Path(section["root"]) / section["database"])
    target = sqlite3.connect(tmp_path / "archive.sqlite")
    source.backup(target)
    source.close()
    target.close()
    archive = Archive(tmp_path, "archive.sqlite", section["authority"], live_server.url)
    yield archive
    archive.close()


def counts(archive: Archive) -> dict[str, int]:
    return {
        t: archive.count(f"tap_schema_{t}") for t in ("schemas", "tables", "columns", "keys", "key_columns")
    }


def test_rewriting_is_idempotent(archive_copy):
    before = counts(archive_copy)
    schema.write_tap_schema(archive_copy, schema.current_tableset(archive_copy))
    assert counts(archive_copy) == before


def test_missing_database_column_rolls_everything_back(archive_copy):
    """A declared column the view lacks is refused, and the old TAP_SCHEMA stays (one transaction)."""
    before = counts(archive_copy)
    good = schema.current_tableset(archive_copy)
    obscore = good.table("ivoa.obscore")
    broken = TableSet(
        good.schemas,
        [
            t if t is not obscore else _with_column(obscore, ColumnMeta("no_such_column", "double"))
            for t in good.tables
        ],
    )
    with pytest.raises(ValueError, match="no_such_column"):
        schema.write_tap_schema(archive_copy, broken)
    assert counts(archive_copy) == before


def test_dangling_foreign_key_is_refused(archive_copy):
    good = schema.current_tableset(archive_copy)
    latent = good.table("ml.latent")
    key = ForeignKey("ml.nowhere", ["model_version"], ["model_version"], from_table=latent.name)
    broken = TableSet(good.schemas, [t if t is not latent else _with_key(latent, key) for t in good.tables])
    with pytest.raises(ValueError, match="ml.nowhere"):
        schema.write_tap_schema(archive_copy, broken)


def test_an_old_view_is_upgraded(archive_copy):
    """An archive built by an older release (view without the label columns) gets the current view."""
    conn = archive_copy.db.connection
    conn.execute("DROP VIEW ivoa_obscore")
    conn.execute("CREATE VIEW ivoa_obscore AS SELECT obs_publisher_did FROM spectrum")
    conn.commit()
    schema.write_tap_schema(archive_copy, schema.current_tableset(archive_copy))
    names = {r[1] for r in conn.execute("PRAGMA table_info(ivoa_obscore)")}
    assert {"teff", "obs_title", "access_url", "s_region"} <= names


def test_size_and_key_ids():
    assert ColumnMeta("a", "char", arraysize="16*").size == 16
    assert ColumnMeta("a", "double", arraysize="2").size == 2
    assert ColumnMeta("a", "double", arraysize="2x3").size is None
    assert ColumnMeta("a", "char", arraysize="*").size is None
    assert ColumnMeta("a", "int").size is None
    tableset = schema.tableset_for(4)
    key_ids = [k.key_id for t in tableset.tables for k in t.foreign_keys]
    assert len(key_ids) == len(set(key_ids)) == 10  # ml.map adds two


def _with_column(table, column):
    return replace(table, columns=[*table.columns, column])


def _with_key(table, key):
    return replace(table, foreign_keys=[*table.foreign_keys, key])

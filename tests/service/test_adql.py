"""ADQL 2.1 translation (vo-protocols §4): every feature run on a real SQLite database and on a real
PostgreSQL server with answers worked out by hand (geometry against astropy), plus the archive's own
schema and table metadata."""

from __future__ import annotations

import math
import re
import sqlite3

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord

from service.archive import Archive
from service.storage import DatabaseError
from service.tables import ColumnMeta, SchemaMeta, TableMeta, TableSet, load_tableset
from service.tap.adql import SQLITE, ADQLError, Engine, register_functions, translate
from service.tap.sync import result_table

C = ColumnMeta
TABLES = TableSet(
    [SchemaMeta("cat")],
    [
        TableMeta(
            "cat.stars",
            "stars",
            columns=[
                C("did", "char", "*", ucd="meta.id;meta.main", description="identifier"),
                C("name", "char", "*", ucd="meta.id"),
                C("ra", "double", unit="deg", ucd="pos.eq.ra"),
                C("dec", "double", unit="deg", ucd="pos.eq.dec"),
                C("mag", "double", unit="mag"),
                C("kind", "short"),
                C("region", "char", "*", xtype="adql:REGION"),
                C("size", "int"),
                C("obs_date", "char", "*", xtype="timestamp"),
            ],
        ),
        TableMeta("cat.notes", "notes", columns=[C("did", "char", "*"), C("note", "char", "*")]),
    ],
)
STARS = [
    ("s1", "Vega", 10.0, 20.0, 1.5, 1, "Circle ICRS 10 20 1", 3, "2020-01-01T00:00:00"),
    ("s2", "vega b", 10.5, 20.0, 3.0, 1, None, None, "2021-06-01T12:00:00"),
    ("s3", "Sirius", 200.0, -30.0, 2.5, 2, "Polygon ICRS 199 -31 201 -31 201 -29 199 -29", 5, None),
    ("s4", None, 359.5, 0.0, 4.0, 3, None, 2, "2019-03-03T03:03:03"),
    ("s5", "O'Brien", 0.5, 0.0, 5.0, 2, None, None, None),
]
NOTES = [("s1", "bright"), ("s2", "binary"), ("s2", "faint companion"), ("s9", "orphan")]


@pytest.fixture(scope="module")
def db():
    conn = sqlite3.connect(":memory:")
    conn.execute(
        "CREATE TABLE stars (did TEXT, name TEXT, ra REAL, dec REAL, mag REAL, kind INTEGER, region TEXT, "
        '"size" INTEGER, obs_date TEXT, secret TEXT)'
    )
    conn.executemany("INSERT INTO stars VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'hidden')", STARS)
    conn.execute("CREATE TABLE notes (did TEXT, note TEXT)")
    conn.executemany("INSERT INTO notes VALUES (?, ?)", NOTES)
    register_functions(conn)
    yield conn
    conn.close()


@pytest.fixture(scope="module")
def postgres_catalog(postgres_server):
    """The same two tables on PostgreSQL, with the archive's ADQL function library."""
    import secrets

    from service.storage.postgres import PostgresDatabase
    from tests.postgres import create_database

    url = create_database(postgres_server, f"latentvo_adql_{secrets.token_hex(4)}")
    # The job table and the functions, as the service's own writable open leaves them: no archive tables.
    database = PostgresDatabase(url, schema="jobs")
    database.execute(
        "CREATE TABLE stars (did TEXT, name TEXT, ra DOUBLE PRECISION, dec DOUBLE PRECISION, "
        'mag DOUBLE PRECISION, kind INTEGER, region TEXT, "size" INTEGER, obs_date TEXT, secret TEXT)'
    )
    database.insert_rows(
        "stars", ["did", "name", "ra", "dec", "mag", "kind", "region", "size", "obs_date", "secret"],
        [(*star, "hidden") for star in STARS],
    )  # fmt: skip
    database.execute("CREATE TABLE notes (did TEXT, note TEXT)")
    database.insert_rows("notes", ["did", "note"], NOTES)
    yield database
    database.close()


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request) -> Engine:
    """Each engine the translation targets."""
    return SQLITE if request.param == "sqlite" else Engine("postgres")


@pytest.fixture()
def execute(request, engine):
    """Rows of a translation on ``engine``, as many as it says to return."""
    if engine.postgres:
        database = request.getfixturevalue("postgres_catalog")
        return lambda translation: [tuple(r) for r in database.all(translation.sql)][: translation.limit]
    db = request.getfixturevalue("db")
    return lambda translation: db.execute(translation.sql).fetchall()[: translation.limit]


@pytest.fixture()
def run(execute, engine):
    return lambda adql, maxrec=100: execute(translate(adql, TABLES, maxrec, engine=engine))


def column(rows: list[tuple], i: int = 0) -> list:
    return [r[i] for r in rows]


def separation(lon1, lat1, lon2, lat2) -> float:
    return SkyCoord(lon1 * u.deg, lat1 * u.deg).separation(SkyCoord(lon2 * u.deg, lat2 * u.deg)).deg


# -- ADQL-01 core --------------------------------------------------------------------------------


def test_top_and_maxrec_become_one_limit(run):
    assert column(run("SELECT TOP 2 did FROM cat.stars ORDER BY mag")) == ["s1", "s3"]
    # TAP-05: MAXREC below TOP wins and one more row is fetched to detect overflow; TOP below MAXREC is exact.
    over = translate("SELECT TOP 10 did FROM cat.stars", TABLES, 3)
    assert over.limit == 3 and over.sql.endswith("LIMIT 4")
    under = translate("SELECT TOP 2 did FROM cat.stars", TABLES, 5)
    assert under.limit == 2 and under.sql.endswith("LIMIT 2")
    plain = translate("SELECT did FROM cat.stars", TABLES, 7)
    assert plain.limit == 7 and plain.sql.endswith("LIMIT 8")
    assert translate("SELECT did FROM cat.stars", TABLES, 0).limit == 0


def test_distinct_top_and_offset(run):
    assert column(run("SELECT DISTINCT TOP 2 kind FROM cat.stars ORDER BY kind DESC")) == [3, 2]
    assert column(run("SELECT TOP 2 did FROM cat.stars ORDER BY mag OFFSET 1")) == ["s3", "s2"]
    assert column(run("SELECT did FROM cat.stars ORDER BY mag OFFSET 3")) == ["s4", "s5"]


def test_order_by_alias_qualified_column_and_position(run):
    assert column(run("SELECT s.did AS id, s.mag AS m FROM cat.stars AS s ORDER BY m DESC")) == [
        "s5",
        "s4",
        "s2",
        "s3",
        "s1",
    ]
    assert column(run("SELECT s.did FROM cat.stars s ORDER BY s.mag")) == ["s1", "s3", "s2", "s4", "s5"]
    assert column(run("SELECT did, mag FROM cat.stars ORDER BY 2 DESC"))[:2] == ["s5", "s4"]


def test_group_by_having_and_aggregates(run):
    rows = run(
        "SELECT kind, COUNT(*) AS n, AVG(mag) AS mean FROM cat.stars GROUP BY kind HAVING COUNT(*) > 1 "
        "ORDER BY kind"
    )
    assert rows == [(1, 2, 2.25), (2, 2, 3.75)]
    assert run("SELECT kind, COUNT(*) AS n FROM cat.stars GROUP BY kind HAVING n = 1") == [(3, 1)]
    assert run("SELECT COUNT(DISTINCT kind), SUM(kind), MIN(mag), MAX(name) FROM cat.stars") == [
        (3, 9, 1.5, "vega b")
    ]


def test_joins(run):
    inner = "SELECT s.did, n.note FROM cat.stars AS s JOIN cat.notes AS n ON s.did = n.did ORDER BY n.note"
    assert run(inner) == [("s2", "binary"), ("s1", "bright"), ("s2", "faint companion")]
    left = (
        "SELECT s.did, COUNT(n.note) FROM cat.stars s LEFT OUTER JOIN cat.notes n ON s.did = n.did "
        "GROUP BY s.did ORDER BY s.did"
    )
    assert column(run(left), 1) == [1, 2, 0, 0, 0]
    assert run("SELECT did, note FROM cat.stars NATURAL JOIN cat.notes ORDER BY note") == [
        ("s2", "binary"),
        ("s1", "bright"),
        ("s2", "faint companion"),
    ]
    assert column(run("SELECT did FROM cat.stars INNER JOIN cat.notes USING (did) ORDER BY did")) == [
        "s1",
        "s2",
        "s2",
    ]
    right = "SELECT n.note FROM cat.stars s RIGHT OUTER JOIN cat.notes n ON s.did = n.did WHERE s.did IS NULL"
    assert run(right) == [("orphan",)]
    assert run("SELECT COUNT(*) FROM cat.stars s FULL OUTER JOIN cat.notes n ON s.did = n.did") == [(7,)]
    assert run("SELECT COUNT(*) FROM cat.stars, cat.notes") == [(20,)]
    assert run("SELECT COUNT(*) FROM cat.stars AS a CROSS JOIN cat.stars AS b WHERE a.mag < b.mag") == [(10,)]


def test_star_expansion_lists_only_published_columns(run):
    translation = translate("SELECT * FROM cat.stars", TABLES, 10)
    assert [c.name for c in translation.columns] == [c.name for c in TABLES.table("cat.stars").columns]
    assert "secret" not in translation.sql
    joined = translate("SELECT * FROM cat.stars NATURAL JOIN cat.notes", TABLES, 10)
    assert [c.name for c in joined.columns].count("did") == 1
    assert [
        c.name for c in translate("SELECT n.*, s.did FROM cat.stars s, cat.notes n", TABLES, 1).columns
    ] == [
        "did",
        "note",
        "did",
    ]


def test_subqueries(run):
    derived = "SELECT q.b FROM (SELECT did AS b, mag FROM cat.stars WHERE mag < 3) AS q ORDER BY q.mag"
    assert column(run(derived)) == ["s1", "s3"]
    field = translate(derived, TABLES, 10).columns[0]
    assert (field.name, field.meta.ucd) == ("b", "meta.id;meta.main")  # metadata follows the column
    assert column(run("SELECT did FROM cat.stars WHERE did IN (SELECT did FROM cat.notes) ORDER BY did")) == [
        "s1",
        "s2",
    ]
    assert column(
        run("SELECT did FROM cat.stars WHERE did NOT IN (SELECT did FROM cat.notes) ORDER BY did")
    ) == [
        "s3",
        "s4",
        "s5",
    ]
    exists = (
        "SELECT did FROM cat.stars AS s WHERE EXISTS "
        "(SELECT 1 FROM cat.notes AS n WHERE n.did = s.did AND n.note LIKE 'f%')"
    )
    assert column(run(exists)) == ["s2"]
    assert run(
        "SELECT did, (SELECT COUNT(*) FROM cat.notes n WHERE n.did = s.did) FROM cat.stars s WHERE did = 's2'"
    ) == [("s2", 2)]
    assert column(
        run("WITH b AS (SELECT did, mag FROM cat.stars WHERE mag < 3) SELECT did FROM b ORDER BY mag")
    ) == [
        "s1",
        "s3",
    ]
    assert run("WITH q(x, y) AS (SELECT did, kind FROM cat.stars) SELECT x FROM q WHERE y = 3") == [("s4",)]


def test_set_operations(run):
    assert len(run("SELECT did FROM cat.stars UNION SELECT did FROM cat.notes")) == 6
    assert len(run("SELECT did FROM cat.stars UNION ALL SELECT did FROM cat.notes")) == 9
    assert column(run("SELECT did FROM cat.stars INTERSECT SELECT did FROM cat.notes ORDER BY did")) == [
        "s1",
        "s2",
    ]
    assert column(run("SELECT did FROM cat.stars EXCEPT SELECT did FROM cat.notes ORDER BY did")) == [
        "s3",
        "s4",
        "s5",
    ]
    # Multisets: kinds [1, 1, 2, 3, 2] against those of mag > 2, [2, 1, 3, 2].
    both = "SELECT kind FROM cat.stars INTERSECT ALL SELECT kind FROM cat.stars WHERE mag > 2"
    assert sorted(column(run(both))) == [1, 2, 2, 3]
    assert column(run("SELECT kind FROM cat.stars EXCEPT ALL SELECT kind FROM cat.stars WHERE mag > 2")) == [
        1
    ]
    tops = (
        "(SELECT TOP 1 did FROM cat.stars ORDER BY mag) UNION ALL "
        "(SELECT TOP 1 did FROM cat.stars ORDER BY mag DESC)"
    )
    assert sorted(column(run(tops))) == ["s1", "s5"]
    with pytest.raises(ADQLError, match="same number of columns"):
        translate("SELECT did FROM cat.stars UNION SELECT did, note FROM cat.notes", TABLES, 10)


def test_predicates(run):
    assert column(run("SELECT did FROM cat.stars WHERE mag BETWEEN 2 AND 4 ORDER BY did")) == [
        "s2",
        "s3",
        "s4",
    ]
    assert column(run("SELECT did FROM cat.stars WHERE mag NOT BETWEEN 2 AND 4 ORDER BY did")) == ["s1", "s5"]
    assert column(run("SELECT did FROM cat.stars WHERE kind IN (1, 3) AND name IS NOT NULL")) == ["s1", "s2"]
    assert column(run("SELECT did FROM cat.stars WHERE name IS NULL")) == ["s4"]
    # ADQL-05: timestamps compare as DALI strings.
    assert column(run("SELECT did FROM cat.stars WHERE obs_date > '2020-06-01T00:00:00'")) == ["s2"]


def test_case_and_coalesce(run):
    rows = run(
        "SELECT did, CASE WHEN mag < 2 THEN 'bright' WHEN mag < 4 THEN 'medium' ELSE 'faint' END AS class, "
        "CASE kind WHEN 1 THEN 'one' ELSE 'other' END FROM cat.stars ORDER BY did"
    )
    assert column(rows, 1) == ["bright", "medium", "medium", "faint", "faint"]
    assert column(rows, 2) == ["one", "one", "other", "other", "other"]
    assert column(run("SELECT COALESCE(name, 'anonymous') FROM cat.stars WHERE did = 's4'")) == ["anonymous"]


def test_strings(run):
    assert column(run("SELECT did FROM cat.stars WHERE name = 'O''Brien'")) == ["s5"]
    assert column(run("SELECT did FROM cat.stars WHERE name LIKE 'V%'")) == ["s1"]  # LIKE is case-sensitive
    assert column(run("SELECT did FROM cat.stars WHERE name ILIKE 'v%' ORDER BY did")) == ["s1", "s2"]
    assert column(run("SELECT did FROM cat.stars WHERE name NOT LIKE '%a%' ORDER BY did")) == ["s3", "s5"]
    assert run("SELECT UPPER(name) || '!', LOWER(name) FROM cat.stars WHERE did = 's1'") == [
        ("VEGA!", "vega")
    ]
    assert run("SELECT did -- a comment\nFROM cat.stars WHERE did = 's3'") == [("s3",)]


def test_math_functions(run):
    (row,) = run(
        "SELECT LOG(EXP(2)), LOG10(1000), POWER(2, 10), SQRT(2), TRUNCATE(2.789, 1), TRUNCATE(-2.789), "
        "MOD(7, 3), MOD(-7, 3), DEGREES(PI()), RADIANS(90), ROUND(2.5), ROUND(-1.5), ROUND(2.346, 2), "
        "CEILING(1.2), FLOOR(-1.2), ABS(-3), ATAN2(1, 1), COT(1), SIN(0.5), COS(0.5), TAN(0.5), "
        "ASIN(0.5), ACOS(0.5), ATAN(0.5), EXP(0), LOG(-1) FROM cat.stars WHERE did = 's1'"
    )
    expected = [
        2, 3, 1024, math.sqrt(2), 2.7, -2, 1, -1, 180, math.pi / 2, 3, -2, 2.35, 2, -2, 3, math.pi / 4,
        1 / math.tan(1), math.sin(0.5), math.cos(0.5), math.tan(0.5), math.asin(0.5), math.acos(0.5),
        math.atan(0.5), 1,
    ]  # fmt: skip
    assert row[:-1] == pytest.approx(expected, rel=1e-12)
    assert row[-1] is None  # outside the domain: NULL
    assert 0 <= run("SELECT RAND() FROM cat.stars WHERE did = 's1'")[0][0] < 1
    seeded = run("SELECT RAND(42), RAND(42) FROM cat.stars WHERE did = 's1'")[0]
    assert seeded[0] == seeded[1]
    assert run("SELECT 7 / 2, 7.0 / 2 FROM cat.stars WHERE did = 's1'") == [(3, 3.5)]


def test_cast_and_in_unit(execute, engine):
    translation = translate(
        "SELECT CAST(mag AS INTEGER), CAST(kind AS DOUBLE PRECISION), CAST(name AS CHAR(3)), "
        "CAST(mag AS BIGINT), CAST(mag AS SMALLINT), CAST(mag AS REAL), CAST(obs_date AS TIMESTAMP), "
        "CAST('2020-01-02 10:11' AS TIMESTAMP) FROM cat.stars WHERE did = 's1'",
        TABLES,
        10,
        engine=engine,
    )
    kinds = [(c.datatype, c.arraysize, c.xtype) for c in translation.columns]
    assert kinds == [
        ("int", None, None),
        ("double", None, None),
        ("char", "3", None),
        ("long", None, None),
        ("short", None, None),
        ("float", None, None),
        ("char", "*", "timestamp"),
        ("char", "*", "timestamp"),
    ]
    row = execute(translation)[0]
    assert row == (1, 1.0, "Veg", 1, 1, 1.5, "2020-01-01T00:00:00", "2020-01-02T10:11:00")
    arcsec = translate("SELECT IN_UNIT(ra, 'arcsec') AS r FROM cat.stars WHERE did = 's1'", TABLES, 10)
    assert arcsec.columns[0].unit == "arcsec"
    assert execute(arcsec)[0][0] == pytest.approx(36000.0)
    with pytest.raises(ADQLError, match="cannot convert deg to m"):
        translate("SELECT IN_UNIT(ra, 'm') FROM cat.stars", TABLES, 10)
    with pytest.raises(ADQLError, match="CAST to"):
        translate("SELECT CAST(ra AS BLOB) FROM cat.stars", TABLES, 10)


# -- ADQL-04 geometry ----------------------------------------------------------------------------


def test_distance_matches_astropy(run):
    pairs = [
        (10, 20, 200, -30),
        (359.5, 0, 0.5, 0),
        (10, 89.9, 190, 89.9),
        (0, 0, 180, 0),
        (1, 2, 1.0001, 2.0001),
    ]
    for lon1, lat1, lon2, lat2 in pairs:
        expected = separation(lon1, lat1, lon2, lat2)
        two, four = run(
            f"SELECT DISTANCE(POINT('ICRS', {lon1}, {lat1}), POINT({lon2}, {lat2})), "
            f"DISTANCE({lon1}, {lat1}, {lon2}, {lat2}) FROM cat.stars WHERE did = 's1'"
        )[0]
        assert two == pytest.approx(expected, rel=1e-12, abs=1e-12)
        assert four == pytest.approx(expected, rel=1e-12, abs=1e-12)
    nearby = run("SELECT did FROM cat.stars WHERE DISTANCE(POINT(ra, dec), POINT(0, 0)) < 0.6 ORDER BY did")
    assert column(nearby) == ["s4", "s5"]  # across RA 0/360


def test_contains_point_in_circle_on_both_sides_of_the_edge(run):
    edge = separation(10.0, 20.0, 10.5, 20.0)  # s2 from the centre, about 0.4698 deg
    for radius, inside in ((edge + 1e-6, ["s1", "s2"]), (edge - 1e-6, ["s1"])):
        circle = f"CIRCLE('ICRS', 10, 20, {radius})"
        query = f"SELECT did FROM cat.stars WHERE 1 = CONTAINS(POINT('ICRS', ra, dec), {circle})"
        assert column(run(query + " ORDER BY did")) == inside
        reversed_eq = (
            f"SELECT did FROM cat.stars WHERE CONTAINS(POINT(ra, dec), CIRCLE(POINT(10, 20), {radius})) = 1"
        )
        assert column(run(reversed_eq + " ORDER BY did")) == inside


def test_contains_point_in_polygon_on_both_sides_of_the_edge(run):
    square = "POLYGON('ICRS', 199, -31, 201, -31, 201, -29, 199, -29)"
    points = [
        (200, -30, 1),
        (200.99, -30, 1),
        (201.01, -30, 0),
        (200, -28.99, 0),
        (200, -29.01, 1),
        (20, 30, 0),
    ]
    for lon, lat, inside in points:
        assert run(f"SELECT CONTAINS(POINT({lon}, {lat}), {square}) FROM cat.stars WHERE did = 's1'") == [
            (inside,)
        ]
    # Vertices given as points, and the region column holding STC-S.
    by_points = "POLYGON(POINT(199, -31), POINT(201, -31), POINT(201, -29))"
    assert run(f"SELECT CONTAINS(POINT(200.5, -30.5), {by_points}) FROM cat.stars WHERE did = 's1'") == [(1,)]
    assert column(run("SELECT did FROM cat.stars WHERE 1 = CONTAINS(POINT(200.5, -29.5), region)")) == ["s3"]
    assert column(run("SELECT did FROM cat.stars WHERE 1 = CONTAINS(POINT(10.2, 20.1), region)")) == ["s1"]


def test_intersects(run):
    (row,) = run(
        "SELECT INTERSECTS(CIRCLE(0, 0, 1), CIRCLE(1.99, 0, 1)), "
        "INTERSECTS(CIRCLE(0, 0, 1), CIRCLE(2.01, 0, 1)), "
        "INTERSECTS(POINT(0.5, 0), CIRCLE(0, 0, 1)), INTERSECTS(POLYGON(0, 0, 2, 0, 2, 2, 0, 2), "
        "POLYGON(1, 1, 3, 1, 3, 3, 1, 3)), INTERSECTS(POLYGON(0, 0, 2, 0, 2, 2, 0, 2), CIRCLE(5, 5, 1)) "
        "FROM cat.stars WHERE did = 's1'"
    )
    assert row == (1, 0, 1, 1, 0)
    # The square s3 has its east edge at RA 201; circles of radius 1.5 reach it from RA 202, not from 203.
    assert column(run("SELECT did FROM cat.stars WHERE 1 = INTERSECTS(region, CIRCLE(202, -30, 1.5))")) == [
        "s3"
    ]
    assert run("SELECT did FROM cat.stars WHERE 1 = INTERSECTS(region, CIRCLE(203, -30, 1.5))") == []


def test_area_coords_and_centroid(run):
    (row,) = run(
        "SELECT AREA(CIRCLE(0, 0, 1)), AREA(CIRCLE(10, 20, 30)), AREA(POLYGON(0, 0, 90, 0, 0, 90)), "
        "AREA(POINT(1, 2)), COORD1(POINT(12.5, -3)), COORD2(POINT(12.5, -3)), "
        "COORD1(CENTROID(CIRCLE(7, 8, 1))), COORD2(CENTROID(CIRCLE(7, 8, 1))) FROM cat.stars WHERE did = 's1'"
    )
    square_degrees = (180 / math.pi) ** 2
    cap = [2 * math.pi * (1 - math.cos(math.radians(r))) * square_degrees for r in (1, 30)]
    octant = 4 * math.pi / 8 * square_degrees
    assert row == pytest.approx([*cap, octant, 0, 12.5, -3, 7, 8], rel=1e-9)


def test_geometry_values_are_dali_arrays():
    translation = translate(
        "SELECT POINT(ra, dec) AS p, CIRCLE(ra, dec, 0.5) AS c, POLYGON(0, 0, 1, 0, 0, 1) AS poly, "
        "CENTROID(CIRCLE(ra, dec, 1)), region, obs_date FROM cat.stars WHERE did = 's4'",
        TABLES,
        10,
    )
    xtypes = [(c.datatype, c.arraysize, c.xtype) for c in translation.columns]
    assert xtypes[:4] == [("double", "2", "point"), ("double", "3", "circle"), ("double", "*", "polygon")] + [
        ("double", "2", "point")
    ]
    raw = [
        (
            "Position ICRS 359.5 0.0",
            "Circle ICRS 359.5 0.0 0.5",
            "Polygon ICRS 0 0 1 0 0 1",
            "Position ICRS 1 2",
        )
    ]
    columns, rows = result_table(translation.columns, [(*raw[0], "Box ICRS 1 2 3 4", "2019-03-03 03:03:03")])
    assert rows[0][:4] == [[359.5, 0.0], [359.5, 0.0, 0.5], [0.0, 0.0, 1.0, 0.0, 0.0, 1.0], [1.0, 2.0]]
    assert rows[0][4] == "Box ICRS 1 2 3 4"  # a region column is a string (OBS-04)
    assert rows[0][5] == "2019-03-03T03:03:03"  # DALI timestamp
    assert columns[0].xtype == "point"


def test_coordinate_systems(run):
    assert run(
        "SELECT COORD1(POINT('', 1, 2)), COORD1(POINT('ICRS GEOCENTER', 3, 4)) "
        "FROM cat.stars WHERE did = 's1'"
    ) == [(1, 3)]
    with pytest.raises(ADQLError, match="GALACTIC"):
        translate("SELECT POINT('GALACTIC', 1, 2) FROM cat.stars", TABLES, 10)
    with pytest.raises(ADQLError, match="CONTAINS expects geometries"):
        translate("SELECT CONTAINS(ra, dec) FROM cat.stars", TABLES, 10)


def test_cone_searches_get_a_latitude_range():
    for query in (
        "SELECT did FROM cat.stars WHERE 1 = CONTAINS(POINT('ICRS', ra, dec), CIRCLE('ICRS', 10, -20, 0.5))",
        "SELECT did FROM cat.stars WHERE kind = 1 AND DISTANCE(POINT(ra, dec), POINT(10, -20)) < 0.5",
        "SELECT did FROM cat.stars WHERE 0.5 >= DISTANCE(10, -20, ra, dec)",
    ):
        assert re.search(r'"dec" BETWEEN -20\.5 AND -19\.5', translate(query, TABLES, 10).sql), query
    either = "SELECT did FROM cat.stars WHERE kind = 1 OR DISTANCE(POINT(ra, dec), POINT(10, -20)) < 0.5"
    assert "BETWEEN" not in translate(either, TABLES, 10).sql  # not a top-level AND: no range


# -- ADQL-02 identifiers and errors --------------------------------------------------------------


def test_identifiers(run):
    assert column(run('SELECT "size" FROM cat.stars ORDER BY did')) == [3, None, 5, 2, None]
    assert run('SELECT S."size", DID FROM "cat"."stars" AS S WHERE did = \'s1\'') == [(3, "s1")]
    translation = translate('SELECT MAG, mag AS "Odd Name", s.did FROM cat.stars AS s', TABLES, 10)
    assert [c.name for c in translation.columns] == ["mag", "Odd Name", "did"]  # column names as published
    with pytest.raises(ADQLError, match="unknown column 'SIZE'"):
        translate('SELECT "SIZE" FROM cat.stars', TABLES, 10)  # delimited: case-sensitive
    with pytest.raises(ADQLError, match="unknown table 'CAT.stars'"):
        translate('SELECT did FROM "CAT".stars', TABLES, 10)


def test_generated_names_are_unique_and_legal():
    translation = translate(
        "SELECT mag * 2, mag * 3, COUNT(*), DISTANCE(POINT(ra, dec), POINT(1, 2)), 'x', kind FROM cat.stars "
        "GROUP BY kind",
        TABLES,
        10,
    )
    names = [c.name for c in translation.columns]
    assert len({n.lower() for n in names}) == len(names)
    assert all(re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", n) for n in names), names
    assert [c.datatype for c in translation.columns] == [
        "double",
        "double",
        "long",
        "double",
        "char",
        "short",
    ]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("SELECT did FROM cat.nowhere", "unknown table 'cat.nowhere'"),
        ("SELECT nothing FROM cat.stars", "unknown column 'nothing'"),
        ("SELECT secret FROM cat.stars", "unknown column 'secret'"),  # in the database, not published
        ("SELECT s.note FROM cat.stars AS s", "unknown column 'note' in s"),
        ("SELECT x.did FROM cat.stars AS s", "unknown table or alias 'x'"),
        ("SELECT did FROM cat.stars, cat.notes", "'did' is ambiguous"),
        ("SELECT mag FROM cat.stars WHERE m > 1", "unknown column 'm'"),
        ("SELECT FOO(mag) FROM cat.stars", "unknown function FOO"),
        ("SELECT did FROM cat.stars LIMIT 3", "LIMIT is not ADQL"),
        ("DUFF QUERY", "not an ADQL query"),
        ("SELECT did FROM cat.stars; SELECT 1 FROM cat.stars", "exactly one ADQL query"),
        ("SELECT FROM WHERE", r"syntax error at line 1, column \d+"),
        ("SELECT did FROM cat.stars WHERE name = 'open", "syntax error"),
        ("SELECT TOP x did FROM cat.stars", "syntax error|TOP"),
        ("", "empty"),
    ],
)
def test_errors_name_the_problem(query, message):
    with pytest.raises(ADQLError, match=message):
        translate(query, TABLES, 10)


def test_similarity_functions_need_a_model():
    with pytest.raises(ADQLError, match="no model"):
        translate("SELECT did FROM cat.stars WHERE 1 = ml_knn(did, 's1', 3)", TABLES, 10)
    with pytest.raises(ADQLError, match="k must be an integer"):
        translate("SELECT ml_knn(did, 's1', 0) FROM cat.stars", TABLES, 10)
    with pytest.raises(ADQLError, match="dims"):
        translate("SELECT ml_distance(did, 's1', 'one two') FROM cat.stars", TABLES, 10)


# -- the archive's own schema and metadata -------------------------------------------------------


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """An archive database (resources/schema.sql) with a few placed spectra and their latents."""
    archive = Archive(tmp_path_factory.mktemp("adql-archive"))
    common = dict(
        obs_collection="test", em_min=4e-7, em_max=7e-7, em_xel=100, medium="vacuum", source_path="x.fits",
        source_format="fits", source_sha256="0", ingested_at="2024-01-01T00:00:00",
    )  # fmt: skip
    places = [(10.0, 20.0), (10.4, 20.2), (10.0, 25.0), (190.0, -20.0)]
    archive.upsert_spectra(
        [
            {
                **common,
                "obs_publisher_did": f"ivo://x/~?test/{i}",
                "obs_id": str(i),
                "source_index": i,
                "s_ra": ra,
                "s_dec": dec,
            }
            for i, (ra, dec) in enumerate(places)
        ]  # fmt: skip
    )
    archive.add_model(
        1,
        {"training_set_hash": "h", "grid": {"wave_min": 4e3, "wave_max": 7e3, "n_pixels": 64},
         "train": {"latent_dim": 2, "kl_weight": 0.5}},
        {"n_train": 4},
    )  # fmt: skip
    dids = [f"ivo://x/~?test/{i}" for i in range(4)]
    archive.write_latents(1, dids, np.arange(8.0).reshape(4, 2), np.ones((4, 2)), np.zeros(4))
    register_functions(archive.db.connection)
    yield archive
    archive.close()


def test_archive_tables_translate_and_run(archive):
    tables = load_tableset(latent_dim=2)
    star = translate("SELECT * FROM ivoa.obscore", tables, 10)
    assert [c.name for c in star.columns] == [c.name for c in tables.table("ivoa.obscore").columns]
    assert len(archive.db.execute(star.sql).fetchall()) == 4
    cone = translate(
        "SELECT o.obs_publisher_did, l.z1 FROM ivoa.obscore AS o JOIN ml.latent AS l "
        "ON o.obs_publisher_did = l.obs_publisher_did "
        "WHERE 1 = CONTAINS(POINT('ICRS', o.s_ra, o.s_dec), CIRCLE('ICRS', 10.0, 20.0, 0.5)) ORDER BY l.z1",
        tables,
        10,
    )
    rows = [tuple(r) for r in archive.db.execute(cone.sql)]
    assert rows == [("ivo://x/~?test/0", 1.0), ("ivo://x/~?test/1", 3.0)]
    for query in (
        "SELECT obs_id FROM ivoa.obscore WHERE DISTANCE(POINT(s_ra, s_dec), POINT(10, 20)) < 0.5",
        "SELECT obs_id FROM ivoa.obscore WHERE 1 = CONTAINS(POINT(s_ra, s_dec), CIRCLE(10, 20, 0.5))",
    ):
        sql = translate(query, tables, 10).sql
        assert sorted(r[0] for r in archive.db.execute(sql)) == ["0", "1"]
        plan = " ".join(row[-1] for row in archive.db.connection.execute("EXPLAIN QUERY PLAN " + sql))
        assert "spectrum_sky" in plan  # the cone is index-assisted (ADQL-04)
    field = cone.columns[0]
    assert (field.meta.ucd, field.meta.utype) == ("meta.ref.ivoid", "obscore:Curation.PublisherDID")
    size = translate(
        'SELECT "size", column_name FROM TAP_SCHEMA.columns WHERE "size" IS NOT NULL', tables, 10
    )
    assert '"size"' in size.sql and size.columns[0].datatype == "int"


# -- limits and hostile input (issue: ADQL that parsed badly was a 500) -----------------------------


def test_redundant_parentheses_up_to_the_limit_run(run):
    from service.tap.adql import MAX_NESTING

    for depth in (64, 300, MAX_NESTING):
        query = "SELECT TOP 1 " + "(" * depth + "mag" + ")" * depth + " FROM cat.stars ORDER BY mag"
        assert run(query) == [(1.5,)]
    deep_where = "SELECT did FROM cat.stars WHERE " + "(" * 400 + "mag > 4" + ")" * 400
    assert column(run(deep_where)) == ["s5"]
    with pytest.raises(
        ADQLError, match=f"nests parentheses {MAX_NESTING + 1} deep; the limit is {MAX_NESTING}"
    ):
        translate(
            "SELECT " + "(" * (MAX_NESTING + 1) + "1" + ")" * (MAX_NESTING + 1) + " FROM cat.stars",
            TABLES,
            10,
        )


def test_nested_operations_work_or_say_the_engine_limit(db):
    """Real nesting (each level an operation) is bounded by SQLite's parser; beyond it, a clear 400."""
    from service.tap.sync import _query_error

    def nested(depth: int) -> str:
        return "SELECT TOP 1 " + "(1 + " * depth + "mag" + ")" * depth + " FROM cat.stars ORDER BY mag"

    shallow = translate(nested(20), TABLES, 10)
    assert db.execute(shallow.sql).fetchall() == [(21.5,)]
    deep = translate(nested(400), TABLES, 10)  # translates; the database may or may not take it
    try:
        assert db.execute(deep.sql).fetchall() == [(401.5,)]
    except sqlite3.OperationalError as exc:
        error = _query_error(DatabaseError(str(exc)), None)
        assert error.status == 400 and "deeper than the database engine allows" in error.message


def test_query_length_limit():
    from service.tap.adql import MAX_QUERY_CHARS

    query = "SELECT did FROM cat.stars" + " " * MAX_QUERY_CHARS
    with pytest.raises(ADQLError, match=f"the limit is {MAX_QUERY_CHARS}"):
        translate(query, TABLES, 10)


def test_long_chains_are_refused_cleanly():
    with pytest.raises(ADQLError, match="nested too deeply"):
        translate("SELECT " + "+".join(["1"] * 30000) + " FROM cat.stars", TABLES, 10)


def test_huge_integer_literals_are_reals(run):
    translation = translate("SELECT TOP 1 99999999999999999999999 AS big FROM cat.stars", TABLES, 10)
    assert translation.columns[0].datatype == "double"
    assert run("SELECT TOP 1 99999999999999999999999 AS big FROM cat.stars") == [(1e23,)]
    assert run("SELECT TOP 99999999999999999999999 did FROM cat.stars ORDER BY did", maxrec=2) == [
        ("s1",),
        ("s2",),
    ]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("SELECT COUNT ( ) FROM cat.stars", r"COUNT needs an argument: COUNT\(\*\) or COUNT\(expression\)"),
        ("SELECT SUM() FROM cat.stars", "SUM needs one argument"),
        ("SELECT TOP -1 * FROM cat.stars", r"line 1, column \d+ near '-': TOP needs a non-negative integer"),
        ("SELECT did FROM cat.stars WHERE", "WHERE needs a condition|syntax error"),
        ("SELECT did FROM cat..stars", "not a table name|syntax error"),
        ("SELECT did FROM cat.stars WHERE mag BETWEEN 1", "syntax error"),
        ("SELECT CAST(mag) FROM cat.stars", "syntax error"),
    ],
)
def test_syntax_errors_speak_adql(query, message):
    with pytest.raises(ADQLError, match=message) as caught:
        translate(query, TABLES, 10)
    text = str(caught.value)
    assert "<class" not in text and "sqlglot" not in text and "Error" not in text


def test_ra_ranges_hold_every_point_of_the_cone():
    """The cone's RA box (what SSAP narrows by before the exact distance): every point within the
    radius lies in it, across RA 0 and near the poles, and it is much narrower than the sky."""
    import random

    from service.tap.geometry import make_point, ra_ranges, separation

    rng = random.Random(3)
    for ra, dec, radius in [(0.1, 10, 1), (359.9, -40, 2), (180, 0, 0.01), (45, 88, 1.5), (10, 60, 20)]:
        ranges = ra_ranges(ra, dec, radius)
        if abs(dec) + radius >= 90:
            assert ranges is None
            continue
        assert sum(high - low for low, high in ranges) < 180
        center, reach = (
            make_point(ra, dec),
            min(180.0, 2 * radius / math.cos(math.radians(abs(dec) + radius))),
        )
        inside = 0
        for _ in range(3000):
            lon = (ra + rng.uniform(-reach, reach)) % 360
            lat = rng.uniform(dec - radius, dec + radius)
            if separation(center, make_point(lon, lat)) <= radius:
                inside += 1
                assert any(low <= lon <= high for low, high in ranges), (ra, dec, radius, lon, lat)
        assert inside > 500
    assert ra_ranges(10, 0, 1) == [pytest.approx((9, 11), abs=1e-6)]


def test_cones_find_every_row_within_the_radius_across_ra_0_and_odd_ra_forms(tmp_path):
    """The box added to a cone (declination band and RA intervals) never drops a row inside it: rows
    on both sides of RA 0, with RA written as -0.2 or 360.2, near a pole, against astropy."""
    archive = Archive(tmp_path)
    places = [(-0.2, 0.1), (359.95, 0.0), (0.3, -0.2), (10.0, 0.0), (360.2, 0.0), (359.9, 0.7)]
    places += [(45.0, 89.6), (225.0, 89.7), (0.0, 45.0), (359.0, 45.2)]
    archive.upsert_spectra(
        [
            {
                "obs_publisher_did": f"ivo://x/~?test/{i}",
                "obs_id": str(i),
                "obs_collection": "test",
                "s_ra": ra,
                "s_dec": dec,
                "em_min": 4e-7,
                "em_max": 7e-7,
                "em_xel": 100,
                "medium": "vacuum",
                "source_path": "x.fits",
                "source_format": "fits",
                "source_index": i,
                "source_sha256": "0",
                "ingested_at": "2024-01-01T00:00:00",
            }
            for i, (ra, dec) in enumerate(places)
        ]  # fmt: skip
    )
    register_functions(archive.db.connection)
    tables = load_tableset(latent_dim=2)
    coords = SkyCoord([p[0] for p in places] * u.deg, [p[1] for p in places] * u.deg)
    for ra, dec, radius in [
        (359.9, 0.0, 0.5),
        (0.0, 0.0, 0.5),
        (-0.1, 0.0, 0.4),
        (100, 89.5, 0.8),
        (0.5, 45, 1),
    ]:
        expected = sorted(
            str(i)
            for i, s in enumerate(coords.separation(SkyCoord(ra * u.deg, dec * u.deg)).deg)
            if s <= radius
        )
        for where in (
            f"1 = CONTAINS(POINT(s_ra, s_dec), CIRCLE({ra}, {dec}, {radius}))",
            f"DISTANCE(POINT(s_ra, s_dec), POINT({ra}, {dec})) <= {radius}",
        ):
            query = f"SELECT obs_id FROM ivoa.obscore WHERE {where}"
            sql = translate(query, tables, 100).sql
            assert sorted(r[0] for r in archive.db.execute(sql)) == expected, (query, sql)
        assert expected, "every cone holds a row"
    archive.close()


def test_a_failing_similarity_hook_is_not_the_clients_fault():
    """A hook that fails for the service's own reason (its model files gone) is no 400 "cannot translate"."""

    class Broken:
        def knn(self, ref_did, k, dims):
            raise FileNotFoundError("models/v0001/config.json")

    query = "SELECT did FROM cat.stars WHERE 1 = ml_knn(did, 's1', 3)"
    with pytest.raises(FileNotFoundError):
        translate(query, TABLES, 10, Broken())

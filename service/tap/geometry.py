"""ADQL geometry on the unit sphere, in degrees, as SQLite functions.

Geometry values travel through SQL as STC-S strings (``Position ICRS 10.0 20.0``,
``Circle ICRS 10.0 20.0 0.5``, ``Polygon ICRS 1 2 3 4 5 6``, ``Box ICRS lon lat w h``), the
same form ObsCore's ``s_region`` column holds (OBS-04), so CONTAINS/INTERSECTS work on both
alike; :func:`dali_value` turns them into DALI arrays (point ``double[2]``, circle
``double[3]``, polygon ``double[*]``) when a result is written.

Containment and intersection use unit vectors and great-circle arcs; a polygon's inside is
the smaller region its edges enclose, whatever the vertex order.
"""

from __future__ import annotations

import math
import sqlite3
from dataclasses import dataclass
from functools import cached_property, lru_cache

from service.errors import UsageError

Vector = tuple[float, float, float]
#: Coordinates closer than this (degrees) count as equal (boundaries, shared vertices).
EPSILON = 1e-9
#: Frames that are ICRS to the precision of our data; any other frame is refused.
_FRAMES = {"ICRS", "FK5", "J2000", "UNKNOWNFRAME"}
#: Reference positions and flavours STC-S allows after the frame; they do not change the shape.
_QUALIFIERS = {"BARYCENTER", "GEOCENTER", "HELIOCENTER", "TOPOCENTER", "LSR", "UNKNOWNREFPOS", "SPHERICAL2"}


class GeometryError(UsageError):
    """A geometry argument that cannot be understood (bad STC-S, wrong shape, bad frame)."""


@dataclass(frozen=True)
class Point:
    lon: float
    lat: float

    @property
    def vector(self) -> Vector:
        return _vector(self.lon, self.lat)


@dataclass(frozen=True)
class Circle:
    center: Point
    radius: float


@dataclass(frozen=True)
class Polygon:
    vertices: tuple[Point, ...]

    @cached_property
    def vectors(self) -> list[Vector]:
        return [v.vector for v in self.vertices]

    @cached_property
    def middle(self) -> Vector:
        """The mean vertex direction: inside points lie in its hemisphere (polygons under a hemisphere)."""
        return tuple(sum(v[i] for v in self.vectors) for i in range(3))  # type: ignore[return-value]

    def edges(self) -> list[tuple[Vector, Vector]]:
        vectors = self.vectors
        return list(zip(vectors, vectors[1:] + vectors[:1], strict=True))


Shape = Point | Circle | Polygon


# -- vector algebra ---------------------------------------------------------------------------


def _vector(lon: float, lat: float) -> Vector:
    lo, la = math.radians(lon), math.radians(lat)
    return (math.cos(la) * math.cos(lo), math.cos(la) * math.sin(lo), math.sin(la))


def _lonlat(v: Vector) -> Point:
    x, y, z = v
    lon = math.degrees(math.atan2(y, x)) % 360.0
    return Point(lon, math.degrees(math.atan2(z, math.hypot(x, y))))


def _dot(a: Vector, b: Vector) -> float:
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _cross(a: Vector, b: Vector) -> Vector:
    return (a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0])


def _norm(a: Vector) -> float:
    return math.sqrt(_dot(a, a))


def _unit(a: Vector) -> Vector:
    n = _norm(a)
    return (a[0] / n, a[1] / n, a[2] / n)


def _angle(a: Vector, b: Vector) -> float:
    """Great-circle angle between unit vectors in degrees (atan2: accurate at all separations)."""
    return math.degrees(math.atan2(_norm(_cross(a, b)), _dot(a, b)))


def _on_arc(x: Vector, a: Vector, b: Vector, normal: Vector) -> bool:
    """Whether ``x`` (on the great circle through a and b) lies on the short arc a→b."""
    return _dot(_cross(a, x), normal) >= -1e-15 and _dot(_cross(x, b), normal) >= -1e-15


def _arc_distance(p: Vector, a: Vector, b: Vector) -> float:
    """Degrees from ``p`` to the great-circle arc a→b."""
    normal = _cross(a, b)
    if _norm(normal) < 1e-15:
        return _angle(p, a)
    normal = _unit(normal)
    offset = _dot(p, normal)
    foot = (p[0] - offset * normal[0], p[1] - offset * normal[1], p[2] - offset * normal[2])
    if _norm(foot) > 1e-15 and _on_arc(_unit(foot), a, b, normal):
        return math.degrees(math.asin(min(1.0, abs(offset))))
    return min(_angle(p, a), _angle(p, b))


def _arcs_cross(a: Vector, b: Vector, c: Vector, d: Vector) -> bool:
    """Whether the arcs a→b and c→d share a point."""
    n1, n2 = _cross(a, b), _cross(c, d)
    if _norm(n1) < 1e-15 or _norm(n2) < 1e-15:
        return False
    line = _cross(n1, n2)
    if _norm(line) < 1e-15:  # on one great circle: overlapping arcs share an end point's side
        return False
    n1, n2, x = _unit(n1), _unit(n2), _unit(line)
    for candidate in (x, (-x[0], -x[1], -x[2])):
        if _on_arc(candidate, a, b, n1) and _on_arc(candidate, c, d, n2):
            return True
    return False


# -- predicates and measures ---------------------------------------------------------------


def _inside_polygon(p: Vector, polygon: Polygon) -> bool:
    """Winding test in the plane tangent at ``p``: the edges turn 360° around an inside point.

    The winding number cannot tell ``p`` from its antipode, so ``p`` must also lie in the
    polygon's hemisphere (ADQL polygons are smaller than a hemisphere).
    """
    if _dot(p, polygon.middle) <= 0:
        return False
    total = 0.0
    for a, b in polygon.edges():
        ta = _tangent(p, a)
        tb = _tangent(p, b)
        if ta is None or tb is None:
            return True  # p is a vertex
        total += math.atan2(_dot(_cross(ta, tb), p), _dot(ta, tb))
    if abs(total) > math.pi:
        return True
    return any(_arc_distance(p, a, b) < EPSILON for a, b in polygon.edges())


def _tangent(p: Vector, a: Vector) -> Vector | None:
    d = _dot(a, p)
    t = (a[0] - d * p[0], a[1] - d * p[1], a[2] - d * p[2])
    return None if _norm(t) < 1e-15 else t


def _edge_distance(p: Vector, polygon: Polygon) -> float:
    return min(_arc_distance(p, a, b) for a, b in polygon.edges())


def _edges_cross(one: Polygon, other: Polygon) -> bool:
    return any(_arcs_cross(a, b, c, d) for a, b in one.edges() for c, d in other.edges())


def contains_shape(inner: Shape, outer: Shape) -> bool:
    """ADQL CONTAINS(inner, outer): every point of ``inner`` lies in ``outer``."""
    if isinstance(outer, Point):
        return isinstance(inner, Point) and _angle(inner.vector, outer.vector) <= EPSILON
    if isinstance(outer, Circle):
        center, limit = outer.center.vector, outer.radius + EPSILON
        if isinstance(inner, Point):
            return _angle(inner.vector, center) <= limit
        if isinstance(inner, Circle):
            return _angle(inner.center.vector, center) + inner.radius <= limit
        return all(_angle(v, center) <= limit for v in inner.vectors)
    if isinstance(inner, Point):
        return _inside_polygon(inner.vector, outer)
    if isinstance(inner, Circle):
        c = inner.center.vector
        return _inside_polygon(c, outer) and _edge_distance(c, outer) >= inner.radius - EPSILON
    return all(_inside_polygon(v, outer) for v in inner.vectors) and not _edges_cross(inner, outer)


def intersects_shape(one: Shape, other: Shape) -> bool:
    """ADQL INTERSECTS: the two regions share at least one point."""
    if isinstance(one, Point):
        return contains_shape(one, other)
    if isinstance(other, Point):
        return contains_shape(other, one)
    if isinstance(one, Circle) and isinstance(other, Circle):
        return _angle(one.center.vector, other.center.vector) <= one.radius + other.radius + EPSILON
    if isinstance(one, Polygon) and isinstance(other, Circle):
        one, other = other, one
    if isinstance(one, Circle):
        c = one.center.vector
        return _inside_polygon(c, other) or _edge_distance(c, other) <= one.radius + EPSILON
    return (
        any(_inside_polygon(v, other) for v in one.vectors)
        or any(_inside_polygon(v, one) for v in other.vectors)
        or _edges_cross(one, other)
    )


def area_of(shape: Shape) -> float:
    """Area in square degrees (a polygon's smaller side)."""
    if isinstance(shape, Point):
        return 0.0
    if isinstance(shape, Circle):
        steradians = 2 * math.pi * (1 - math.cos(math.radians(shape.radius)))
    else:
        steradians = abs(_signed_solid_angle(shape))
        steradians = min(steradians, 4 * math.pi - steradians)
    return steradians * (180.0 / math.pi) ** 2


def _fan(polygon: Polygon) -> list[tuple[Vector, Vector, Vector]]:
    vectors = polygon.vectors
    return [(vectors[0], vectors[i], vectors[i + 1]) for i in range(1, len(vectors) - 1)]


def _triangle(a: Vector, b: Vector, c: Vector) -> float:
    """Signed solid angle of a spherical triangle (Van Oosterom & Strackee)."""
    return 2 * math.atan2(_dot(a, _cross(b, c)), 1 + _dot(a, b) + _dot(b, c) + _dot(c, a))


def _signed_solid_angle(polygon: Polygon) -> float:
    return sum(_triangle(*t) for t in _fan(polygon))


def centroid_of(shape: Shape) -> Point:
    """Centre of a circle, area-weighted centre of a polygon, the point itself."""
    if isinstance(shape, Point):
        return shape
    if isinstance(shape, Circle):
        return shape.center
    total = [0.0, 0.0, 0.0]
    signed = 0.0
    for a, b, c in _fan(shape):
        weight = _triangle(a, b, c)
        signed += weight
        middle = _unit((a[0] + b[0] + c[0], a[1] + b[1] + c[1], a[2] + b[2] + c[2]))
        for i in range(3):
            total[i] += weight * middle[i]
    if signed < 0:  # vertices listed clockwise: the weights point the sum at the antipode
        total = [-t for t in total]
    if _norm(tuple(total)) < 1e-15:
        total = [sum(v[i] for v in shape.vectors) for i in range(3)]
    return _lonlat(_unit(tuple(total)))


def separation(a: Point, b: Point) -> float:
    return _angle(a.vector, b.vector)


def ra_ranges(ra: float, dec: float, radius: float) -> list[tuple[float, float]] | None:
    """Right-ascension intervals (degrees, within [0, 360]) that hold every point within ``radius``
    of (ra, dec): one, or two where the cone crosses RA 0. None when the cone reaches a pole, so every
    RA qualifies. With a declination band this is the cone's bounding box, for an index to narrow.
    """
    if abs(dec) + radius >= 90.0:
        return None
    half = math.degrees(math.asin(min(1.0, math.sin(math.radians(radius)) / math.cos(math.radians(dec)))))
    half = half * (1 + 1e-9) + 1e-9  # a hair wider: the box must never cut the cone (half < 90 here)
    low, high = (ra % 360.0) - half, (ra % 360.0) + half
    if low < 0.0:
        return [(low + 360.0, 360.0), (0.0, high)]
    if high > 360.0:
        return [(low, 360.0), (0.0, high - 360.0)]
    return [(low, high)]


# -- text form ----------------------------------------------------------------------------


def _num(value: float) -> str:
    return repr(float(value))


def encode(shape: Shape) -> str:
    """STC-S text for a shape (what the SQL functions pass around)."""
    if isinstance(shape, Point):
        return f"Position ICRS {_num(shape.lon)} {_num(shape.lat)}"
    if isinstance(shape, Circle):
        return f"Circle ICRS {_num(shape.center.lon)} {_num(shape.center.lat)} {_num(shape.radius)}"
    return "Polygon ICRS " + " ".join(f"{_num(v.lon)} {_num(v.lat)}" for v in shape.vertices)


@lru_cache(maxsize=4096)
def parse(text: str) -> Shape:
    """A shape from STC-S (Position, Circle, Polygon, Box; frame ICRS or unstated)."""
    words = str(text).split()
    if not words:
        raise GeometryError("empty geometry value")
    kind = words[0].upper()
    rest = words[1:]
    while rest and not _is_number(rest[0]):
        word = rest.pop(0).upper()
        if word not in _FRAMES and word not in _QUALIFIERS:
            raise GeometryError(f"unsupported frame or STC-S word {word!r} in {text!r}; use ICRS")
    try:
        numbers = [float(w) for w in rest]
    except ValueError:
        raise GeometryError(f"cannot read the geometry {text!r}") from None
    if kind == "POSITION" and len(numbers) == 2:
        return make_point(*numbers)
    if kind == "CIRCLE" and len(numbers) == 3:
        return make_circle(make_point(numbers[0], numbers[1]), numbers[2])
    if kind == "POLYGON" and len(numbers) >= 6 and len(numbers) % 2 == 0:
        return make_polygon([make_point(numbers[i], numbers[i + 1]) for i in range(0, len(numbers), 2)])
    if kind == "BOX" and len(numbers) == 4:
        return make_box(make_point(numbers[0], numbers[1]), numbers[2], numbers[3])
    raise GeometryError(f"cannot read the geometry {text!r} (Position, Circle, Polygon or Box in ICRS)")


def _is_number(word: str) -> bool:
    try:
        float(word)
    except ValueError:
        return False
    return True


def dali_value(text: str | None) -> list[float] | None:
    """The DALI array for a geometry value: point [lon, lat], circle [lon, lat, r], polygon [lon, lat, …]."""
    if text is None:
        return None
    shape = parse(text)
    if isinstance(shape, Point):
        return [shape.lon, shape.lat]
    if isinstance(shape, Circle):
        return [shape.center.lon, shape.center.lat, shape.radius]
    return [c for v in shape.vertices for c in (v.lon, v.lat)]


# -- constructors -------------------------------------------------------------------------


def make_point(lon: float, lat: float) -> Point:
    lon, lat = float(lon), float(lat)
    if not (math.isfinite(lon) and math.isfinite(lat)) or not -90.0 <= lat <= 90.0:
        raise GeometryError(f"invalid position ({lon}, {lat}): latitude must be within [-90, 90]")
    return Point(lon % 360.0, lat)


def make_circle(center: Point, radius: float) -> Circle:
    radius = float(radius)
    if not 0.0 <= radius <= 180.0:
        raise GeometryError(f"invalid circle radius {radius}: must be within [0, 180] degrees")
    return Circle(center, radius)


def make_polygon(vertices: list[Point]) -> Polygon:
    if len(vertices) > 3 and vertices[0] == vertices[-1]:
        vertices = vertices[:-1]  # a closed ring repeats its first vertex
    if len(vertices) < 3:
        raise GeometryError("a polygon needs at least three vertices")
    return Polygon(tuple(vertices))


def make_box(center: Point, width: float, height: float) -> Polygon:
    """BOX (deprecated in ADQL 2.1) as the polygon of its corners, counter-clockwise seen from inside."""
    w, h = float(width) / 2, float(height) / 2
    lo, la = center.lon, center.lat
    corners = [(lo - w, la - h), (lo - w, la + h), (lo + w, la + h), (lo + w, la - h)]
    return make_polygon([make_point(x, max(-90.0, min(90.0, y))) for x, y in corners])


# -- the SQL functions ----------------------------------------------------------------------


def _shape(value) -> Shape:
    if isinstance(value, str):
        return parse(value)
    raise GeometryError(f"expected a geometry, got {value!r}")


def _point(value) -> Point:
    shape = _shape(value)
    if not isinstance(shape, Point):
        raise GeometryError(f"expected a POINT, got {value!r}")
    return shape


def sql_point(lon, lat) -> str:
    return encode(make_point(lon, lat))


def sql_circle(*args) -> str:
    """CIRCLE(lon, lat, r) or CIRCLE(point, r)."""
    if len(args) == 3:
        return encode(make_circle(make_point(args[0], args[1]), args[2]))
    if len(args) == 2:
        return encode(make_circle(_point(args[0]), args[1]))
    raise GeometryError("CIRCLE takes (lon, lat, radius) or (point, radius)")


def sql_box(*args) -> str:
    """BOX(lon, lat, width, height) or BOX(point, width, height)."""
    if len(args) == 4:
        return encode(make_box(make_point(args[0], args[1]), args[2], args[3]))
    if len(args) == 3:
        return encode(make_box(_point(args[0]), args[1], args[2]))
    raise GeometryError("BOX takes (lon, lat, width, height) or (point, width, height)")


def sql_polygon(*args) -> str:
    """POLYGON(p1, p2, p3, …) or POLYGON(lon1, lat1, lon2, lat2, lon3, lat3, …)."""
    if args and all(isinstance(a, str) for a in args):
        return encode(make_polygon([_point(a) for a in args]))
    if len(args) >= 6 and len(args) % 2 == 0 and all(isinstance(a, int | float) for a in args):
        return encode(make_polygon([make_point(args[i], args[i + 1]) for i in range(0, len(args), 2)]))
    raise GeometryError("POLYGON takes three or more points, or an even number (6 or more) of coordinates")


def _nullsafe(function):
    """SQL semantics: a NULL argument gives NULL."""

    def call(*args):
        if any(a is None for a in args):
            return None
        return function(*args)

    call.__name__ = function.__name__
    return call


def sql_contains(a, b) -> int:
    return int(contains_shape(_shape(a), _shape(b)))


def sql_intersects(a, b) -> int:
    return int(intersects_shape(_shape(a), _shape(b)))


def sql_distance(a, b) -> float:
    return separation(_point(a), _point(b))


def sql_distance4(lon1, lat1, lon2, lat2) -> float:
    return separation(make_point(lon1, lat1), make_point(lon2, lat2))


def sql_in_circle(lon, lat, clon, clat, radius) -> int:
    """CONTAINS(POINT(lon, lat), CIRCLE(clon, clat, radius)) without building the shapes as text."""
    return int(sql_distance4(lon, lat, clon, clat) <= float(radius) + EPSILON)


def sql_area(a) -> float:
    return area_of(_shape(a))


def sql_coord1(a) -> float:
    return _point(a).lon


def sql_coord2(a) -> float:
    return _point(a).lat


def sql_centroid(a) -> str:
    return encode(centroid_of(_shape(a)))


#: SQL name → (Python function, number of arguments; -1 = any).
SQL_FUNCTIONS = {
    "adql_point": (sql_point, 2),
    "adql_circle": (sql_circle, -1),
    "adql_box": (sql_box, -1),
    "adql_polygon": (sql_polygon, -1),
    "adql_contains": (sql_contains, 2),
    "adql_intersects": (sql_intersects, 2),
    "adql_distance": (sql_distance, 2),
    "adql_distance4": (sql_distance4, 4),
    "adql_in_circle": (sql_in_circle, 5),
    "adql_area": (sql_area, 1),
    "adql_coord1": (sql_coord1, 1),
    "adql_coord2": (sql_coord2, 1),
    "adql_centroid": (sql_centroid, 1),
}


def register(conn: sqlite3.Connection, wrap=lambda f: f) -> None:
    """Make the geometry functions callable from SQL on ``conn``; ``wrap`` adds error capture."""
    for name, (function, nargs) in SQL_FUNCTIONS.items():
        conn.create_function(name, nargs, wrap(_nullsafe(function)), deterministic=True)

-- The ADQL function library on PostgreSQL: what service/tap/adql.py registers in Python on SQLite
-- (math with SQLite's NULL-outside-the-domain rules, CAST AS TIMESTAMP) and what
-- service/tap/geometry.py computes (geometry on the unit sphere over STC-S text), spelled in SQL
-- and PL/pgSQL under the same names, so one translated query runs on both engines and gives the
-- same answers. The geometry follows geometry.py step for step (unit vectors, atan2 angles, the
-- winding test), with the same tolerances: a change there is a change here.
-- Created with the archive's schema (service/storage/postgres.py), by the archive's owner.

-- == math ==

CREATE OR REPLACE FUNCTION adql_ceiling(x BIGINT) RETURNS BIGINT
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$ SELECT x $$;
CREATE OR REPLACE FUNCTION adql_ceiling(x DOUBLE PRECISION) RETURNS DOUBLE PRECISION
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$ SELECT ceil(x) $$;
CREATE OR REPLACE FUNCTION adql_floor(x BIGINT) RETURNS BIGINT
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$ SELECT x $$;
CREATE OR REPLACE FUNCTION adql_floor(x DOUBLE PRECISION) RETURNS DOUBLE PRECISION
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$ SELECT floor(x) $$;

-- ROUND half away from zero to n decimals; integers stay integers.
CREATE OR REPLACE FUNCTION adql_round(x BIGINT) RETURNS BIGINT
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$ SELECT x $$;
CREATE OR REPLACE FUNCTION adql_round(x DOUBLE PRECISION, n DOUBLE PRECISION DEFAULT 0)
    RETURNS DOUBLE PRECISION LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE WHEN v = 0 THEN 0.0::float8 WHEN x < 0 THEN -v ELSE v END
    FROM (SELECT floor(abs(x) * power(10.0::float8, trunc(n)) + 0.5)
                 / power(10.0::float8, trunc(n)) AS v) AS r
$$;
CREATE OR REPLACE FUNCTION adql_truncate(x BIGINT) RETURNS BIGINT
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$ SELECT x $$;
CREATE OR REPLACE FUNCTION adql_truncate(x DOUBLE PRECISION, n DOUBLE PRECISION DEFAULT 0)
    RETURNS DOUBLE PRECISION LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT trunc(x * power(10.0::float8, trunc(n))) / power(10.0::float8, trunc(n))
$$;
-- MOD takes the sign of x (C's fmod); MOD(x, 0) is NULL.
CREATE OR REPLACE FUNCTION adql_mod(x BIGINT, y BIGINT) RETURNS BIGINT
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$ SELECT CASE WHEN y <> 0 THEN x % y END $$;
CREATE OR REPLACE FUNCTION adql_mod(x DOUBLE PRECISION, y DOUBLE PRECISION) RETURNS DOUBLE PRECISION
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$ SELECT CASE WHEN y <> 0 THEN x - y * trunc(x / y) END $$;

CREATE OR REPLACE FUNCTION adql_degrees(x DOUBLE PRECISION) RETURNS DOUBLE PRECISION
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$ SELECT x * (180.0::float8 / pi()) $$;
CREATE OR REPLACE FUNCTION adql_radians(x DOUBLE PRECISION) RETURNS DOUBLE PRECISION
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$ SELECT x * (pi() / 180.0::float8) $$;
CREATE OR REPLACE FUNCTION adql_exp(x DOUBLE PRECISION) RETURNS DOUBLE PRECISION
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$ SELECT exp(x) $$;
CREATE OR REPLACE FUNCTION adql_log(x DOUBLE PRECISION) RETURNS DOUBLE PRECISION
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$ SELECT CASE WHEN x > 0 THEN ln(x) END $$;
CREATE OR REPLACE FUNCTION adql_log10(x DOUBLE PRECISION) RETURNS DOUBLE PRECISION
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$ SELECT CASE WHEN x > 0 THEN log(x) END $$;
CREATE OR REPLACE FUNCTION adql_sqrt(x DOUBLE PRECISION) RETURNS DOUBLE PRECISION
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$ SELECT CASE WHEN x >= 0 THEN sqrt(x) END $$;
CREATE OR REPLACE FUNCTION adql_power(x DOUBLE PRECISION, y DOUBLE PRECISION) RETURNS DOUBLE PRECISION
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE WHEN (x < 0 AND y <> trunc(y)) OR (x = 0 AND y < 0) THEN NULL ELSE power(x, y) END
$$;
CREATE OR REPLACE FUNCTION adql_pi() RETURNS DOUBLE PRECISION
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT pi() $$;
CREATE OR REPLACE FUNCTION adql_rand() RETURNS DOUBLE PRECISION
    LANGUAGE sql VOLATILE PARALLEL SAFE AS $$ SELECT random() $$;
-- RAND(seed): the same number for the same seed, as on SQLite (not the same number as there).
CREATE OR REPLACE FUNCTION adql_rand(seed DOUBLE PRECISION) RETURNS DOUBLE PRECISION
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT (hashtextextended(seed::text, 0) & 9007199254740991)::float8 / 9007199254740992.0::float8
$$;
CREATE OR REPLACE FUNCTION adql_acos(x DOUBLE PRECISION) RETURNS DOUBLE PRECISION
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$ SELECT CASE WHEN abs(x) <= 1 THEN acos(x) END $$;
CREATE OR REPLACE FUNCTION adql_asin(x DOUBLE PRECISION) RETURNS DOUBLE PRECISION
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$ SELECT CASE WHEN abs(x) <= 1 THEN asin(x) END $$;
CREATE OR REPLACE FUNCTION adql_atan(x DOUBLE PRECISION) RETURNS DOUBLE PRECISION
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$ SELECT atan(x) $$;
CREATE OR REPLACE FUNCTION adql_atan2(y DOUBLE PRECISION, x DOUBLE PRECISION) RETURNS DOUBLE PRECISION
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$ SELECT atan2(y, x) $$;
CREATE OR REPLACE FUNCTION adql_cos(x DOUBLE PRECISION) RETURNS DOUBLE PRECISION
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$ SELECT cos(x) $$;
CREATE OR REPLACE FUNCTION adql_cot(x DOUBLE PRECISION) RETURNS DOUBLE PRECISION
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$ SELECT CASE WHEN tan(x) <> 0 THEN 1.0 / tan(x) END $$;
CREATE OR REPLACE FUNCTION adql_sin(x DOUBLE PRECISION) RETURNS DOUBLE PRECISION
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$ SELECT sin(x) $$;
CREATE OR REPLACE FUNCTION adql_tan(x DOUBLE PRECISION) RETURNS DOUBLE PRECISION
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$ SELECT tan(x) $$;
CREATE OR REPLACE FUNCTION adql_lower(x TEXT) RETURNS TEXT
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$ SELECT lower(x) $$;
CREATE OR REPLACE FUNCTION adql_upper(x TEXT) RETURNS TEXT
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$ SELECT upper(x) $$;

-- CAST(x AS TIMESTAMP): an ISO date or date-time in the DALI form YYYY-MM-DDThh:mm:ss[.fff].
CREATE OR REPLACE FUNCTION adql_timestamp(value TEXT) RETURNS TEXT
    LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    t TEXT := rtrim(replace(btrim(value), ' ', 'T'), 'Z');
    m TEXT[];
BEGIN
    m := regexp_match(t, '^(\d{4}-\d{2}-\d{2})(T\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?$');
    IF m IS NULL THEN
        RAISE EXCEPTION 'TIMESTAMP: cannot read ''%'' as a timestamp (YYYY-MM-DD[Thh:mm:ss])', value
            USING ERRCODE = '22023';
    END IF;
    IF m[2] IS NULL THEN
        RETURN m[1] || 'T00:00:00';
    END IF;
    RETURN m[1] || m[2] || CASE WHEN m[3] IS NULL THEN ':00' ELSE '' END;
END $$;

-- == geometry ==
-- A parsed shape is a float8 array: {1, lon, lat} a point, {2, lon, lat, r} a circle,
-- {3, lon1, lat1, lon2, lat2, …} a polygon; a unit vector is {x, y, z}.

CREATE OR REPLACE FUNCTION latentvo_geometry_error(message TEXT) RETURNS VOID
    LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    RAISE EXCEPTION '%', message USING ERRCODE = '22023';
END $$;

CREATE OR REPLACE FUNCTION latentvo_vector(lon DOUBLE PRECISION, lat DOUBLE PRECISION)
    RETURNS DOUBLE PRECISION[] LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT ARRAY[cos(la) * cos(lo), cos(la) * sin(lo), sin(la)]
    FROM (SELECT lon * (pi() / 180.0::float8) AS lo, lat * (pi() / 180.0::float8) AS la) AS r
$$;
CREATE OR REPLACE FUNCTION latentvo_dot(a DOUBLE PRECISION[], b DOUBLE PRECISION[])
    RETURNS DOUBLE PRECISION LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT a[1] * b[1] + a[2] * b[2] + a[3] * b[3]
$$;
CREATE OR REPLACE FUNCTION latentvo_cross(a DOUBLE PRECISION[], b DOUBLE PRECISION[])
    RETURNS DOUBLE PRECISION[] LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT ARRAY[a[2] * b[3] - a[3] * b[2], a[3] * b[1] - a[1] * b[3], a[1] * b[2] - a[2] * b[1]]
$$;
CREATE OR REPLACE FUNCTION latentvo_norm(a DOUBLE PRECISION[])
    RETURNS DOUBLE PRECISION LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT sqrt(a[1] * a[1] + a[2] * a[2] + a[3] * a[3])
$$;
CREATE OR REPLACE FUNCTION latentvo_unit(a DOUBLE PRECISION[])
    RETURNS DOUBLE PRECISION[] LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT ARRAY[a[1] / n, a[2] / n, a[3] / n] FROM (SELECT latentvo_norm(a) AS n) AS r
$$;
-- The great-circle angle between unit vectors in degrees (atan2: accurate at all separations).
CREATE OR REPLACE FUNCTION latentvo_angle(a DOUBLE PRECISION[], b DOUBLE PRECISION[])
    RETURNS DOUBLE PRECISION LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT atan2(latentvo_norm(latentvo_cross(a, b)), latentvo_dot(a, b)) * (180.0::float8 / pi())
$$;

-- Longitude into [0, 360), as Python's lon % 360.0.
CREATE OR REPLACE FUNCTION latentvo_lon(lon DOUBLE PRECISION) RETURNS DOUBLE PRECISION
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE WHEN m < 0 THEN m + 360.0 ELSE m END FROM (SELECT lon - 360.0 * trunc(lon / 360.0) AS m) AS r
$$;

CREATE OR REPLACE FUNCTION latentvo_make_point(lon DOUBLE PRECISION, lat DOUBLE PRECISION)
    RETURNS DOUBLE PRECISION[] LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
BEGIN
    IF lon IN ('NaN', 'Infinity', '-Infinity') OR lat IN ('NaN', 'Infinity', '-Infinity')
            OR lat < -90.0 OR lat > 90.0 THEN
        PERFORM latentvo_geometry_error(format(
            'invalid position (%s, %s): latitude must be within [-90, 90]', lon, lat));
    END IF;
    RETURN ARRAY[1, latentvo_lon(lon), lat];
END $$;

CREATE OR REPLACE FUNCTION latentvo_make_circle(lon DOUBLE PRECISION, lat DOUBLE PRECISION, r DOUBLE PRECISION)
    RETURNS DOUBLE PRECISION[] LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    p DOUBLE PRECISION[] := latentvo_make_point(lon, lat);
BEGIN
    IF NOT (r >= 0.0 AND r <= 180.0) THEN
        PERFORM latentvo_geometry_error(format('invalid circle radius %s: must be within [0, 180] degrees', r));
    END IF;
    RETURN ARRAY[2, p[2], p[3], r];
END $$;

-- A polygon from {lon1, lat1, …}: a closing vertex that repeats the first one is dropped.
CREATE OR REPLACE FUNCTION latentvo_make_polygon(coords DOUBLE PRECISION[])
    RETURNS DOUBLE PRECISION[] LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    result DOUBLE PRECISION[] := ARRAY[3];
    p DOUBLE PRECISION[];
    n INTEGER := coalesce(array_length(coords, 1), 0) / 2;
BEGIN
    FOR i IN 1..n LOOP
        p := latentvo_make_point(coords[2 * i - 1], coords[2 * i]);
        result := result || p[2:3];
    END LOOP;
    IF n > 3 AND result[2] = result[2 * n] AND result[3] = result[2 * n + 1] THEN
        result := result[1:2 * n - 1];
        n := n - 1;
    END IF;
    IF n < 3 THEN
        PERFORM latentvo_geometry_error('a polygon needs at least three vertices');
    END IF;
    RETURN result;
END $$;

-- BOX (deprecated in ADQL 2.1) as the polygon of its corners, counter-clockwise seen from inside.
CREATE OR REPLACE FUNCTION latentvo_make_box(
    lon DOUBLE PRECISION, lat DOUBLE PRECISION, width DOUBLE PRECISION, height DOUBLE PRECISION
) RETURNS DOUBLE PRECISION[] LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    w DOUBLE PRECISION := width / 2;
    h DOUBLE PRECISION := height / 2;
    c DOUBLE PRECISION[] := latentvo_make_point(lon, lat);
    lo DOUBLE PRECISION := c[2];
    la DOUBLE PRECISION := c[3];
BEGIN
    RETURN latentvo_make_polygon(ARRAY[
        lo - w, greatest(-90.0, least(90.0, la - h)), lo - w, greatest(-90.0, least(90.0, la + h)),
        lo + w, greatest(-90.0, least(90.0, la + h)), lo + w, greatest(-90.0, least(90.0, la - h))]);
END $$;

-- A shape from STC-S (Position, Circle, Polygon, Box; frame ICRS or unstated).
CREATE OR REPLACE FUNCTION latentvo_parse(stcs TEXT)
    RETURNS DOUBLE PRECISION[] LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    words TEXT[] := regexp_split_to_array(btrim(stcs), '\s+');
    kind TEXT := upper(words[1]);
    numbers DOUBLE PRECISION[] := '{}';
    n INTEGER;
    word TEXT;
    i INTEGER := 2;
BEGIN
    IF btrim(stcs) = '' THEN
        PERFORM latentvo_geometry_error('empty geometry value');
    END IF;
    WHILE i <= array_length(words, 1)
            AND words[i] !~* '^[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$|^[+-]?(nan|inf|infinity)$' LOOP
        word := upper(words[i]);
        IF word NOT IN ('ICRS', 'FK5', 'J2000', 'UNKNOWNFRAME', 'BARYCENTER', 'GEOCENTER', 'HELIOCENTER',
                        'TOPOCENTER', 'LSR', 'UNKNOWNREFPOS', 'SPHERICAL2') THEN
            PERFORM latentvo_geometry_error(format(
                'unsupported frame or STC-S word ''%s'' in ''%s''; use ICRS', word, stcs));
        END IF;
        i := i + 1;
    END LOOP;
    WHILE i <= array_length(words, 1) LOOP
        IF words[i] !~* '^[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$|^[+-]?(nan|inf|infinity)$' THEN
            PERFORM latentvo_geometry_error(format('cannot read the geometry ''%s''', stcs));
        END IF;
        numbers := numbers || words[i]::float8;
        i := i + 1;
    END LOOP;
    n := coalesce(array_length(numbers, 1), 0);
    IF kind = 'POSITION' AND n = 2 THEN
        RETURN latentvo_make_point(numbers[1], numbers[2]);
    ELSIF kind = 'CIRCLE' AND n = 3 THEN
        RETURN latentvo_make_circle(numbers[1], numbers[2], numbers[3]);
    ELSIF kind = 'POLYGON' AND n >= 6 AND n % 2 = 0 THEN
        RETURN latentvo_make_polygon(numbers);
    ELSIF kind = 'BOX' AND n = 4 THEN
        RETURN latentvo_make_box(numbers[1], numbers[2], numbers[3], numbers[4]);
    END IF;
    PERFORM latentvo_geometry_error(format(
        'cannot read the geometry ''%s'' (Position, Circle, Polygon or Box in ICRS)', stcs));
    RETURN NULL;
END $$;

-- STC-S text for a shape (what the SQL functions pass around).
CREATE OR REPLACE FUNCTION latentvo_encode(shape DOUBLE PRECISION[])
    RETURNS TEXT LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE shape[1]
        WHEN 1 THEN 'Position ICRS '
        WHEN 2 THEN 'Circle ICRS '
        ELSE 'Polygon ICRS ' END
        || array_to_string(shape[2:], ' ')
$$;

CREATE OR REPLACE FUNCTION latentvo_point_of(stcs TEXT)
    RETURNS DOUBLE PRECISION[] LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    shape DOUBLE PRECISION[] := latentvo_parse(stcs);
BEGIN
    IF shape[1] <> 1 THEN
        PERFORM latentvo_geometry_error(format('expected a POINT, got ''%s''', stcs));
    END IF;
    RETURN shape;
END $$;

-- The unit vectors of a polygon's vertices, flattened: {x1, y1, z1, x2, …}.
CREATE OR REPLACE FUNCTION latentvo_vertices(shape DOUBLE PRECISION[])
    RETURNS DOUBLE PRECISION[] LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    result DOUBLE PRECISION[] := '{}';
BEGIN
    FOR i IN 1..(array_length(shape, 1) - 1) / 2 LOOP
        result := result || latentvo_vector(shape[2 * i], shape[2 * i + 1]);
    END LOOP;
    RETURN result;
END $$;

CREATE OR REPLACE FUNCTION latentvo_vertex(vectors DOUBLE PRECISION[], i INTEGER)
    RETURNS DOUBLE PRECISION[] LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT vectors[3 * ((i - 1) % (array_length(vectors, 1) / 3)) + 1:3 * ((i - 1) % (array_length(vectors, 1) / 3)) + 3]
$$;

-- Whether x (on the great circle through a and b) lies on the short arc a→b.
CREATE OR REPLACE FUNCTION latentvo_on_arc(
    x DOUBLE PRECISION[], a DOUBLE PRECISION[], b DOUBLE PRECISION[], normal DOUBLE PRECISION[]
) RETURNS BOOLEAN LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT latentvo_dot(latentvo_cross(a, x), normal) >= -1e-15
       AND latentvo_dot(latentvo_cross(x, b), normal) >= -1e-15
$$;

-- Degrees from p to the great-circle arc a→b.
CREATE OR REPLACE FUNCTION latentvo_arc_distance(p DOUBLE PRECISION[], a DOUBLE PRECISION[], b DOUBLE PRECISION[])
    RETURNS DOUBLE PRECISION LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    normal DOUBLE PRECISION[] := latentvo_cross(a, b);
    offs DOUBLE PRECISION;
    foot DOUBLE PRECISION[];
BEGIN
    IF latentvo_norm(normal) < 1e-15 THEN
        RETURN latentvo_angle(p, a);
    END IF;
    normal := latentvo_unit(normal);
    offs := latentvo_dot(p, normal);
    foot := ARRAY[p[1] - offs * normal[1], p[2] - offs * normal[2], p[3] - offs * normal[3]];
    IF latentvo_norm(foot) > 1e-15 AND latentvo_on_arc(latentvo_unit(foot), a, b, normal) THEN
        RETURN asin(least(1.0, abs(offs))) * (180.0::float8 / pi());
    END IF;
    RETURN least(latentvo_angle(p, a), latentvo_angle(p, b));
END $$;

-- Whether the arcs a→b and c→d share a point.
CREATE OR REPLACE FUNCTION latentvo_arcs_cross(
    a DOUBLE PRECISION[], b DOUBLE PRECISION[], c DOUBLE PRECISION[], d DOUBLE PRECISION[]
) RETURNS BOOLEAN LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    n1 DOUBLE PRECISION[] := latentvo_cross(a, b);
    n2 DOUBLE PRECISION[] := latentvo_cross(c, d);
    line DOUBLE PRECISION[];
    x DOUBLE PRECISION[];
BEGIN
    IF latentvo_norm(n1) < 1e-15 OR latentvo_norm(n2) < 1e-15 THEN
        RETURN FALSE;
    END IF;
    line := latentvo_cross(n1, n2);
    IF latentvo_norm(line) < 1e-15 THEN
        RETURN FALSE;
    END IF;
    n1 := latentvo_unit(n1);
    n2 := latentvo_unit(n2);
    x := latentvo_unit(line);
    RETURN (latentvo_on_arc(x, a, b, n1) AND latentvo_on_arc(x, c, d, n2))
        OR (latentvo_on_arc(ARRAY[-x[1], -x[2], -x[3]], a, b, n1)
            AND latentvo_on_arc(ARRAY[-x[1], -x[2], -x[3]], c, d, n2));
END $$;

CREATE OR REPLACE FUNCTION latentvo_tangent(p DOUBLE PRECISION[], a DOUBLE PRECISION[])
    RETURNS DOUBLE PRECISION[] LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE WHEN latentvo_norm(t) < 1e-15 THEN NULL ELSE t END
    FROM (SELECT ARRAY[a[1] - d * p[1], a[2] - d * p[2], a[3] - d * p[3]] AS t
          FROM (SELECT latentvo_dot(a, p) AS d) AS q) AS r
$$;

CREATE OR REPLACE FUNCTION latentvo_edge_distance(p DOUBLE PRECISION[], vectors DOUBLE PRECISION[])
    RETURNS DOUBLE PRECISION LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    best DOUBLE PRECISION := 'Infinity';
BEGIN
    FOR i IN 1..array_length(vectors, 1) / 3 LOOP
        best := least(best, latentvo_arc_distance(p, latentvo_vertex(vectors, i), latentvo_vertex(vectors, i + 1)));
    END LOOP;
    RETURN best;
END $$;

-- The winding test in the plane tangent at p; p must also lie in the polygon's hemisphere.
CREATE OR REPLACE FUNCTION latentvo_inside_polygon(p DOUBLE PRECISION[], vectors DOUBLE PRECISION[])
    RETURNS BOOLEAN LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    n INTEGER := array_length(vectors, 1) / 3;
    middle DOUBLE PRECISION[] := ARRAY[0.0, 0.0, 0.0]::float8[];
    total DOUBLE PRECISION := 0.0;
    ta DOUBLE PRECISION[];
    tb DOUBLE PRECISION[];
BEGIN
    FOR i IN 1..n LOOP
        middle := ARRAY[middle[1] + vectors[3 * i - 2], middle[2] + vectors[3 * i - 1], middle[3] + vectors[3 * i]];
    END LOOP;
    IF latentvo_dot(p, middle) <= 0 THEN
        RETURN FALSE;
    END IF;
    FOR i IN 1..n LOOP
        ta := latentvo_tangent(p, latentvo_vertex(vectors, i));
        tb := latentvo_tangent(p, latentvo_vertex(vectors, i + 1));
        IF ta IS NULL OR tb IS NULL THEN
            RETURN TRUE;  -- p is a vertex
        END IF;
        total := total + atan2(latentvo_dot(latentvo_cross(ta, tb), p), latentvo_dot(ta, tb));
    END LOOP;
    IF abs(total) > pi() THEN
        RETURN TRUE;
    END IF;
    RETURN latentvo_edge_distance(p, vectors) < 1e-9;
END $$;

CREATE OR REPLACE FUNCTION latentvo_edges_cross(one DOUBLE PRECISION[], other DOUBLE PRECISION[])
    RETURNS BOOLEAN LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
BEGIN
    FOR i IN 1..array_length(one, 1) / 3 LOOP
        FOR j IN 1..array_length(other, 1) / 3 LOOP
            IF latentvo_arcs_cross(latentvo_vertex(one, i), latentvo_vertex(one, i + 1),
                                   latentvo_vertex(other, j), latentvo_vertex(other, j + 1)) THEN
                RETURN TRUE;
            END IF;
        END LOOP;
    END LOOP;
    RETURN FALSE;
END $$;

CREATE OR REPLACE FUNCTION latentvo_all_inside(vectors DOUBLE PRECISION[], polygon DOUBLE PRECISION[])
    RETURNS BOOLEAN LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
BEGIN
    FOR i IN 1..array_length(vectors, 1) / 3 LOOP
        IF NOT latentvo_inside_polygon(latentvo_vertex(vectors, i), polygon) THEN
            RETURN FALSE;
        END IF;
    END LOOP;
    RETURN TRUE;
END $$;

CREATE OR REPLACE FUNCTION latentvo_any_inside(vectors DOUBLE PRECISION[], polygon DOUBLE PRECISION[])
    RETURNS BOOLEAN LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
BEGIN
    FOR i IN 1..array_length(vectors, 1) / 3 LOOP
        IF latentvo_inside_polygon(latentvo_vertex(vectors, i), polygon) THEN
            RETURN TRUE;
        END IF;
    END LOOP;
    RETURN FALSE;
END $$;

-- ADQL CONTAINS(inner, outer): every point of inner lies in outer.
CREATE OR REPLACE FUNCTION latentvo_contains(inner_shape DOUBLE PRECISION[], outer_shape DOUBLE PRECISION[])
    RETURNS BOOLEAN LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    center DOUBLE PRECISION[];
    lim DOUBLE PRECISION;
    vectors DOUBLE PRECISION[];
    polygon DOUBLE PRECISION[];
    c DOUBLE PRECISION[];
BEGIN
    IF outer_shape[1] = 1 THEN
        RETURN inner_shape[1] = 1 AND latentvo_angle(
            latentvo_vector(inner_shape[2], inner_shape[3]),
            latentvo_vector(outer_shape[2], outer_shape[3])) <= 1e-9;
    END IF;
    IF outer_shape[1] = 2 THEN
        center := latentvo_vector(outer_shape[2], outer_shape[3]);
        lim := outer_shape[4] + 1e-9;
        IF inner_shape[1] = 1 THEN
            RETURN latentvo_angle(latentvo_vector(inner_shape[2], inner_shape[3]), center) <= lim;
        ELSIF inner_shape[1] = 2 THEN
            RETURN latentvo_angle(latentvo_vector(inner_shape[2], inner_shape[3]), center) + inner_shape[4] <= lim;
        END IF;
        vectors := latentvo_vertices(inner_shape);
        FOR i IN 1..array_length(vectors, 1) / 3 LOOP
            IF latentvo_angle(latentvo_vertex(vectors, i), center) > lim THEN
                RETURN FALSE;
            END IF;
        END LOOP;
        RETURN TRUE;
    END IF;
    polygon := latentvo_vertices(outer_shape);
    IF inner_shape[1] = 1 THEN
        RETURN latentvo_inside_polygon(latentvo_vector(inner_shape[2], inner_shape[3]), polygon);
    ELSIF inner_shape[1] = 2 THEN
        c := latentvo_vector(inner_shape[2], inner_shape[3]);
        RETURN latentvo_inside_polygon(c, polygon)
            AND latentvo_edge_distance(c, polygon) >= inner_shape[4] - 1e-9;
    END IF;
    vectors := latentvo_vertices(inner_shape);
    RETURN latentvo_all_inside(vectors, polygon) AND NOT latentvo_edges_cross(vectors, polygon);
END $$;

-- ADQL INTERSECTS: the two regions share at least one point.
CREATE OR REPLACE FUNCTION latentvo_intersects(one DOUBLE PRECISION[], other DOUBLE PRECISION[])
    RETURNS BOOLEAN LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    swap DOUBLE PRECISION[];
    c DOUBLE PRECISION[];
    polygon DOUBLE PRECISION[];
    a DOUBLE PRECISION[];
    b DOUBLE PRECISION[];
BEGIN
    IF one[1] = 1 THEN
        RETURN latentvo_contains(one, other);
    ELSIF other[1] = 1 THEN
        RETURN latentvo_contains(other, one);
    ELSIF one[1] = 2 AND other[1] = 2 THEN
        RETURN latentvo_angle(latentvo_vector(one[2], one[3]), latentvo_vector(other[2], other[3]))
            <= one[4] + other[4] + 1e-9;
    END IF;
    IF one[1] = 3 AND other[1] = 2 THEN
        swap := one;
        one := other;
        other := swap;
    END IF;
    IF one[1] = 2 THEN
        c := latentvo_vector(one[2], one[3]);
        polygon := latentvo_vertices(other);
        RETURN latentvo_inside_polygon(c, polygon) OR latentvo_edge_distance(c, polygon) <= one[4] + 1e-9;
    END IF;
    a := latentvo_vertices(one);
    b := latentvo_vertices(other);
    RETURN latentvo_any_inside(a, b) OR latentvo_any_inside(b, a) OR latentvo_edges_cross(a, b);
END $$;

-- Signed solid angle of a spherical triangle (Van Oosterom & Strackee).
CREATE OR REPLACE FUNCTION latentvo_triangle(a DOUBLE PRECISION[], b DOUBLE PRECISION[], c DOUBLE PRECISION[])
    RETURNS DOUBLE PRECISION LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT 2 * atan2(latentvo_dot(a, latentvo_cross(b, c)),
                     1 + latentvo_dot(a, b) + latentvo_dot(b, c) + latentvo_dot(c, a))
$$;

CREATE OR REPLACE FUNCTION latentvo_area(shape DOUBLE PRECISION[])
    RETURNS DOUBLE PRECISION LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    steradians DOUBLE PRECISION := 0.0;
    vectors DOUBLE PRECISION[];
BEGIN
    IF shape[1] = 1 THEN
        RETURN 0.0;
    ELSIF shape[1] = 2 THEN
        steradians := 2 * pi() * (1 - cos(shape[4] * (pi() / 180.0::float8)));
    ELSE
        vectors := latentvo_vertices(shape);
        FOR i IN 2..array_length(vectors, 1) / 3 - 1 LOOP
            steradians := steradians + latentvo_triangle(
                latentvo_vertex(vectors, 1), latentvo_vertex(vectors, i), latentvo_vertex(vectors, i + 1));
        END LOOP;
        steradians := abs(steradians);
        steradians := least(steradians, 4 * pi() - steradians);
    END IF;
    RETURN steradians * power(180.0::float8 / pi(), 2);
END $$;

-- Centre of a circle, area-weighted centre of a polygon, the point itself.
CREATE OR REPLACE FUNCTION latentvo_centroid(shape DOUBLE PRECISION[])
    RETURNS DOUBLE PRECISION[] LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    total DOUBLE PRECISION[] := ARRAY[0.0, 0.0, 0.0]::float8[];
    vectors DOUBLE PRECISION[];
    a DOUBLE PRECISION[];
    b DOUBLE PRECISION[];
    c DOUBLE PRECISION[];
    weight DOUBLE PRECISION;
    signed DOUBLE PRECISION := 0.0;
    middle DOUBLE PRECISION[];
    n INTEGER;
BEGIN
    IF shape[1] = 1 THEN
        RETURN shape;
    ELSIF shape[1] = 2 THEN
        RETURN ARRAY[1, shape[2], shape[3]];
    END IF;
    vectors := latentvo_vertices(shape);
    n := array_length(vectors, 1) / 3;
    a := latentvo_vertex(vectors, 1);
    FOR i IN 2..n - 1 LOOP
        b := latentvo_vertex(vectors, i);
        c := latentvo_vertex(vectors, i + 1);
        weight := latentvo_triangle(a, b, c);
        middle := latentvo_unit(ARRAY[a[1] + b[1] + c[1], a[2] + b[2] + c[2], a[3] + b[3] + c[3]]);
        signed := signed + weight;
        total := ARRAY[total[1] + weight * middle[1], total[2] + weight * middle[2], total[3] + weight * middle[3]];
    END LOOP;
    IF signed < 0 THEN  -- vertices listed clockwise: the weights point the sum at the antipode
        total := ARRAY[-total[1], -total[2], -total[3]];
    END IF;
    IF latentvo_norm(total) < 1e-15 THEN
        total := ARRAY[0.0, 0.0, 0.0]::float8[];
        FOR i IN 1..n LOOP
            total := ARRAY[total[1] + vectors[3 * i - 2], total[2] + vectors[3 * i - 1], total[3] + vectors[3 * i]];
        END LOOP;
    END IF;
    total := latentvo_unit(total);
    RETURN ARRAY[1,
        latentvo_lon(atan2(total[2], total[1]) * (180.0::float8 / pi())),
        atan2(total[3], sqrt(total[1] * total[1] + total[2] * total[2])) * (180.0::float8 / pi())];
END $$;

-- The ADQL geometry functions, as service/tap/geometry.py's SQL_FUNCTIONS.
CREATE OR REPLACE FUNCTION adql_point(lon DOUBLE PRECISION, lat DOUBLE PRECISION) RETURNS TEXT
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$ SELECT latentvo_encode(latentvo_make_point(lon, lat)) $$;
CREATE OR REPLACE FUNCTION adql_circle(lon DOUBLE PRECISION, lat DOUBLE PRECISION, r DOUBLE PRECISION) RETURNS TEXT
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$ SELECT latentvo_encode(latentvo_make_circle(lon, lat, r)) $$;
CREATE OR REPLACE FUNCTION adql_circle(center TEXT, r DOUBLE PRECISION) RETURNS TEXT
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT latentvo_encode(latentvo_make_circle(p[2], p[3], r)) FROM (SELECT latentvo_point_of(center) AS p) AS q
$$;
CREATE OR REPLACE FUNCTION adql_box(
    lon DOUBLE PRECISION, lat DOUBLE PRECISION, width DOUBLE PRECISION, height DOUBLE PRECISION
) RETURNS TEXT LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT latentvo_encode(latentvo_make_box(lon, lat, width, height))
$$;
CREATE OR REPLACE FUNCTION adql_box(center TEXT, width DOUBLE PRECISION, height DOUBLE PRECISION) RETURNS TEXT
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT latentvo_encode(latentvo_make_box(p[2], p[3], width, height))
    FROM (SELECT latentvo_point_of(center) AS p) AS q
$$;
CREATE OR REPLACE FUNCTION adql_polygon(VARIADIC coords DOUBLE PRECISION[]) RETURNS TEXT
    LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
BEGIN
    IF array_length(coords, 1) < 6 OR array_length(coords, 1) % 2 <> 0 THEN
        PERFORM latentvo_geometry_error(
            'POLYGON takes three or more points, or an even number (6 or more) of coordinates');
    END IF;
    RETURN latentvo_encode(latentvo_make_polygon(coords));
END $$;
CREATE OR REPLACE FUNCTION adql_polygon(VARIADIC points TEXT[]) RETURNS TEXT
    LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    coords DOUBLE PRECISION[] := '{}';
BEGIN
    FOR i IN 1..array_length(points, 1) LOOP
        coords := coords || (latentvo_point_of(points[i]))[2:3];
    END LOOP;
    RETURN latentvo_encode(latentvo_make_polygon(coords));
END $$;
CREATE OR REPLACE FUNCTION adql_contains(a TEXT, b TEXT) RETURNS INTEGER
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT latentvo_contains(latentvo_parse(a), latentvo_parse(b))::integer
$$;
CREATE OR REPLACE FUNCTION adql_intersects(a TEXT, b TEXT) RETURNS INTEGER
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT latentvo_intersects(latentvo_parse(a), latentvo_parse(b))::integer
$$;
-- DISTANCE(lon1, lat1, lon2, lat2): latentvo_angle(latentvo_vector(…), latentvo_vector(…)) in scalars,
-- the same operations in the same order, without arrays: the exact test of every cone runs it per row.
CREATE OR REPLACE FUNCTION adql_distance4(
    lon1 DOUBLE PRECISION, lat1 DOUBLE PRECISION, lon2 DOUBLE PRECISION, lat2 DOUBLE PRECISION
) RETURNS DOUBLE PRECISION LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    k CONSTANT DOUBLE PRECISION := pi() / 180.0::float8;
    lo1 DOUBLE PRECISION := lon1 - 360.0 * trunc(lon1 / 360.0);  -- latentvo_lon, inline
    lo2 DOUBLE PRECISION := lon2 - 360.0 * trunc(lon2 / 360.0);
    a1 DOUBLE PRECISION;
    a2 DOUBLE PRECISION;
    a3 DOUBLE PRECISION;
    b1 DOUBLE PRECISION;
    b2 DOUBLE PRECISION;
    b3 DOUBLE PRECISION;
BEGIN
    IF NOT (lat1 BETWEEN -90.0 AND 90.0 AND lat2 BETWEEN -90.0 AND 90.0
            AND abs(lon1) < 'Infinity' AND abs(lon2) < 'Infinity') THEN
        PERFORM latentvo_make_point(lon1, lat1), latentvo_make_point(lon2, lat2);  -- raises the error
    END IF;
    IF lo1 < 0 THEN
        lo1 := lo1 + 360.0;
    END IF;
    IF lo2 < 0 THEN
        lo2 := lo2 + 360.0;
    END IF;
    a1 := cos(lat1 * k) * cos(lo1 * k);
    a2 := cos(lat1 * k) * sin(lo1 * k);
    a3 := sin(lat1 * k);
    b1 := cos(lat2 * k) * cos(lo2 * k);
    b2 := cos(lat2 * k) * sin(lo2 * k);
    b3 := sin(lat2 * k);
    RETURN atan2(sqrt((a2 * b3 - a3 * b2) * (a2 * b3 - a3 * b2) + (a3 * b1 - a1 * b3) * (a3 * b1 - a1 * b3)
                      + (a1 * b2 - a2 * b1) * (a1 * b2 - a2 * b1)),
                 a1 * b1 + a2 * b2 + a3 * b3) * (180.0::float8 / pi());
END $$;
CREATE OR REPLACE FUNCTION adql_distance(a TEXT, b TEXT) RETURNS DOUBLE PRECISION
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT latentvo_angle(latentvo_vector(p[2], p[3]), latentvo_vector(q[2], q[3]))
    FROM (SELECT latentvo_point_of(a) AS p, latentvo_point_of(b) AS q) AS r
$$;
-- CONTAINS(POINT(lon, lat), CIRCLE(clon, clat, radius)) without building the shapes as text.
CREATE OR REPLACE FUNCTION adql_in_circle(
    lon DOUBLE PRECISION, lat DOUBLE PRECISION, clon DOUBLE PRECISION, clat DOUBLE PRECISION, radius DOUBLE PRECISION
) RETURNS INTEGER LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT (adql_distance4(lon, lat, clon, clat) <= radius + 1e-9)::integer
$$;
CREATE OR REPLACE FUNCTION adql_area(a TEXT) RETURNS DOUBLE PRECISION
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$ SELECT latentvo_area(latentvo_parse(a)) $$;
CREATE OR REPLACE FUNCTION adql_coord1(a TEXT) RETURNS DOUBLE PRECISION
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$ SELECT (latentvo_point_of(a))[2] $$;
CREATE OR REPLACE FUNCTION adql_coord2(a TEXT) RETURNS DOUBLE PRECISION
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$ SELECT (latentvo_point_of(a))[3] $$;
CREATE OR REPLACE FUNCTION adql_centroid(a TEXT) RETURNS TEXT
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$ SELECT latentvo_encode(latentvo_centroid(latentvo_parse(a))) $$;

-- == similarity ==

-- ml_distance between two latent vectors over dims ('0 3 5'): summed in dimension order in float64,
-- then the square root, as ModelSimilarity.distance does in Python.
CREATE OR REPLACE FUNCTION latentvo_latent_distance(a DOUBLE PRECISION[], b DOUBLE PRECISION[], dims TEXT)
    RETURNS DOUBLE PRECISION LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    total DOUBLE PRECISION := 0.0;
    diff DOUBLE PRECISION;
    d INTEGER;
BEGIN
    FOREACH d IN ARRAY regexp_split_to_array(btrim(dims), '\s+')::integer[] LOOP
        IF d < 0 OR d >= array_length(a, 1) THEN
            RAISE EXCEPTION 'ml_distance: dims must be latent dimensions from 0 to %', array_length(a, 1) - 1
                USING ERRCODE = '22023';
        END IF;
        diff := a[d + 1] - b[d + 1];
        total := total + diff * diff;
    END LOOP;
    RETURN sqrt(total);
END $$;

-- == VECTORMATH ==

-- Arrays as service/tap/vectormath.py computes them on SQLite, whose docstring gives the rules: indexes
-- from 1, NULL outside; + - * / component by component, the shorter array padded with NaN; IEEE
-- division by zero; NaN through every sum, mean, minimum and maximum.
CREATE OR REPLACE FUNCTION adql_arr_elem(a DOUBLE PRECISION[], i BIGINT) RETURNS DOUBLE PRECISION
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE WHEN i BETWEEN 1 AND cardinality(a) THEN a[i::integer] END
$$;
CREATE OR REPLACE FUNCTION adql_arr_slice(a DOUBLE PRECISION[], lo BIGINT, hi BIGINT) RETURNS DOUBLE PRECISION[]
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE WHEN greatest(lo, 1) > least(hi, cardinality(a)) THEN '{}'::DOUBLE PRECISION[]
        ELSE a[greatest(lo, 1)::integer : least(hi, cardinality(a))::integer] END
$$;
CREATE OR REPLACE FUNCTION latentvo_ieee_div(x DOUBLE PRECISION, y DOUBLE PRECISION) RETURNS DOUBLE PRECISION
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN y <> 0 OR x IS NULL OR y IS NULL THEN x / y
        WHEN x = 'NaN' OR x = 0 THEN 'NaN' WHEN x > 0 THEN 'Infinity' ELSE '-Infinity' END
$$;
CREATE OR REPLACE FUNCTION latentvo_arr_op(a DOUBLE PRECISION[], b DOUBLE PRECISION[], op TEXT)
    RETURNS DOUBLE PRECISION[] LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT COALESCE(array_agg(CASE op WHEN '+' THEN x + y WHEN '-' THEN x - y WHEN '*' THEN x * y
        ELSE latentvo_ieee_div(x, y) END ORDER BY o), '{}')
    FROM unnest(a, b) WITH ORDINALITY AS t(x0, y0, o),
        LATERAL (SELECT COALESCE(x0, 'NaN') AS x, COALESCE(y0, 'NaN') AS y) AS padded
$$;
CREATE OR REPLACE FUNCTION adql_arr_add(a DOUBLE PRECISION[], b DOUBLE PRECISION[]) RETURNS DOUBLE PRECISION[]
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$ SELECT latentvo_arr_op(a, b, '+') $$;
CREATE OR REPLACE FUNCTION adql_arr_add(a DOUBLE PRECISION[], s DOUBLE PRECISION) RETURNS DOUBLE PRECISION[]
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$ SELECT latentvo_arr_op(a, array_fill(s, ARRAY[cardinality(a)]), '+') $$;
CREATE OR REPLACE FUNCTION adql_arr_add(s DOUBLE PRECISION, a DOUBLE PRECISION[]) RETURNS DOUBLE PRECISION[]
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$ SELECT latentvo_arr_op(array_fill(s, ARRAY[cardinality(a)]), a, '+') $$;
CREATE OR REPLACE FUNCTION adql_arr_sub(a DOUBLE PRECISION[], b DOUBLE PRECISION[]) RETURNS DOUBLE PRECISION[]
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$ SELECT latentvo_arr_op(a, b, '-') $$;
CREATE OR REPLACE FUNCTION adql_arr_sub(a DOUBLE PRECISION[], s DOUBLE PRECISION) RETURNS DOUBLE PRECISION[]
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$ SELECT latentvo_arr_op(a, array_fill(s, ARRAY[cardinality(a)]), '-') $$;
CREATE OR REPLACE FUNCTION adql_arr_sub(s DOUBLE PRECISION, a DOUBLE PRECISION[]) RETURNS DOUBLE PRECISION[]
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$ SELECT latentvo_arr_op(array_fill(s, ARRAY[cardinality(a)]), a, '-') $$;
CREATE OR REPLACE FUNCTION adql_arr_mul(a DOUBLE PRECISION[], b DOUBLE PRECISION[]) RETURNS DOUBLE PRECISION[]
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$ SELECT latentvo_arr_op(a, b, '*') $$;
CREATE OR REPLACE FUNCTION adql_arr_mul(a DOUBLE PRECISION[], s DOUBLE PRECISION) RETURNS DOUBLE PRECISION[]
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$ SELECT latentvo_arr_op(a, array_fill(s, ARRAY[cardinality(a)]), '*') $$;
CREATE OR REPLACE FUNCTION adql_arr_mul(s DOUBLE PRECISION, a DOUBLE PRECISION[]) RETURNS DOUBLE PRECISION[]
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$ SELECT latentvo_arr_op(array_fill(s, ARRAY[cardinality(a)]), a, '*') $$;
CREATE OR REPLACE FUNCTION adql_arr_div(a DOUBLE PRECISION[], b DOUBLE PRECISION[]) RETURNS DOUBLE PRECISION[]
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$ SELECT latentvo_arr_op(a, b, '/') $$;
CREATE OR REPLACE FUNCTION adql_arr_div(a DOUBLE PRECISION[], s DOUBLE PRECISION) RETURNS DOUBLE PRECISION[]
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$ SELECT latentvo_arr_op(a, array_fill(s, ARRAY[cardinality(a)]), '/') $$;
CREATE OR REPLACE FUNCTION adql_arr_div(s DOUBLE PRECISION, a DOUBLE PRECISION[]) RETURNS DOUBLE PRECISION[]
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$ SELECT latentvo_arr_op(array_fill(s, ARRAY[cardinality(a)]), a, '/') $$;
CREATE OR REPLACE FUNCTION adql_arr_dot(a DOUBLE PRECISION[], b DOUBLE PRECISION[]) RETURNS DOUBLE PRECISION
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE WHEN cardinality(a) <> cardinality(b) THEN 'NaN'::DOUBLE PRECISION
        ELSE (SELECT COALESCE(sum(x * y), 0) FROM unnest(a, b) AS t(x, y)) END
$$;
CREATE OR REPLACE FUNCTION adql_arr_count(a DOUBLE PRECISION[]) RETURNS BIGINT
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$ SELECT cardinality(a)::bigint $$;
CREATE OR REPLACE FUNCTION adql_arr_sum(a DOUBLE PRECISION[]) RETURNS DOUBLE PRECISION
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$ SELECT sum(x) FROM unnest(a) AS t(x) $$;
CREATE OR REPLACE FUNCTION adql_arr_avg(a DOUBLE PRECISION[]) RETURNS DOUBLE PRECISION
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$ SELECT avg(x) FROM unnest(a) AS t(x) $$;
CREATE OR REPLACE FUNCTION adql_arr_min(a DOUBLE PRECISION[]) RETURNS DOUBLE PRECISION
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE WHEN 'NaN' = ANY(a) THEN 'NaN' ELSE (SELECT min(x) FROM unnest(a) AS t(x)) END
$$;
CREATE OR REPLACE FUNCTION adql_arr_max(a DOUBLE PRECISION[]) RETURNS DOUBLE PRECISION
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE WHEN 'NaN' = ANY(a) THEN 'NaN' ELSE (SELECT max(x) FROM unnest(a) AS t(x)) END
$$;
-- SUM, AVG, MIN, MAX of an array over rows, component by component (NULL arrays skipped).
CREATE OR REPLACE FUNCTION latentvo_arr_extreme(a DOUBLE PRECISION[], b DOUBLE PRECISION[], lowest BOOLEAN)
    RETURNS DOUBLE PRECISION[] LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT COALESCE(array_agg(CASE WHEN x IS NULL OR y IS NULL OR x = 'NaN' OR y = 'NaN' THEN 'NaN'
        WHEN lowest THEN least(x, y) ELSE greatest(x, y) END ORDER BY o), '{}')
    FROM unnest(a, b) WITH ORDINALITY AS t(x, y, o)
$$;
CREATE OR REPLACE FUNCTION latentvo_arr_min_step(a DOUBLE PRECISION[], b DOUBLE PRECISION[])
    RETURNS DOUBLE PRECISION[] LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT latentvo_arr_extreme(a, b, true) $$;
CREATE OR REPLACE FUNCTION latentvo_arr_max_step(a DOUBLE PRECISION[], b DOUBLE PRECISION[])
    RETURNS DOUBLE PRECISION[] LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT latentvo_arr_extreme(a, b, false) $$;
-- The mean's state: the number of rows, then the component sums.
CREATE OR REPLACE FUNCTION latentvo_arr_avg_step(state DOUBLE PRECISION[], a DOUBLE PRECISION[])
    RETURNS DOUBLE PRECISION[] LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN a IS NULL THEN state WHEN state IS NULL THEN ARRAY[1::DOUBLE PRECISION] || a
        ELSE ARRAY[state[1] + 1] || adql_arr_add(state[2:cardinality(state)], a) END
$$;
CREATE OR REPLACE FUNCTION latentvo_arr_avg_final(state DOUBLE PRECISION[]) RETURNS DOUBLE PRECISION[]
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$ SELECT adql_arr_div(state[2:cardinality(state)], state[1]) $$;
CREATE OR REPLACE AGGREGATE adql_arr_agg_sum(DOUBLE PRECISION[]) (SFUNC = adql_arr_add, STYPE = DOUBLE PRECISION[]);
CREATE OR REPLACE AGGREGATE adql_arr_agg_min(DOUBLE PRECISION[]) (
    SFUNC = latentvo_arr_min_step, STYPE = DOUBLE PRECISION[]);
CREATE OR REPLACE AGGREGATE adql_arr_agg_max(DOUBLE PRECISION[]) (
    SFUNC = latentvo_arr_max_step, STYPE = DOUBLE PRECISION[]);
CREATE OR REPLACE AGGREGATE adql_arr_agg_avg(DOUBLE PRECISION[]) (
    SFUNC = latentvo_arr_avg_step, STYPE = DOUBLE PRECISION[], FINALFUNC = latentvo_arr_avg_final);

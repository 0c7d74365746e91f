"""ADQL 2.1 → SQLite or PostgreSQL: parse with sqlglot (an ADQL dialect), check against the table
metadata, translate.

The query is parsed into a syntax tree, never edited as text. Every table and column is
looked up in the :class:`~service.tables.TableSet` (what TAP_SCHEMA publishes; extra tables
such as ``TAP_UPLOAD.t1`` can be added to it), every function in a fixed list, every piece of
syntax in a fixed set of node types; anything else is an :class:`ADQLError` naming it. The
tree is then rebuilt for SQLite: tables get internal aliases, columns are qualified, ``*``
is expanded, geometry and math functions become calls of the ``adql_*`` function library, and
TOP/MAXREC become one LIMIT (TAP-05). On SQLite that library is Python registered on the connection
(:func:`register_functions`); on PostgreSQL it is SQL created with the archive's schema
(``resources/postgres/adql_functions.sql``), and a cone on a table with q3c's index is answered
through that index. The :class:`Engine` says which.

Output columns carry their metadata: a plain column reference copies its TAP_SCHEMA entry
(TAP-04), an expression gets a datatype worked out from its parts (geometry as DALI xtypes).
"""

from __future__ import annotations

import logging
import math
import random
import re
import sqlite3
import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Protocol

import sqlglot
from sqlglot import exp, parser, tokens
from sqlglot.dialects.dialect import Dialect
from sqlglot.errors import ParseError, TokenError
from sqlglot.tokens import TokenType

from service.errors import DALIError, UsageError
from service.tables import ColumnMeta, TableMeta, TableSet
from service.tap import geometry, vectormath
from service.votable import Column

log = logging.getLogger(__name__)

#: The longest query taken, in characters (a query is text a person or a tool wrote, not data:
#: tables come as uploads).
MAX_QUERY_CHARS = 100_000
#: The deepest nesting of parentheses taken. The parser recurses about 40 Python frames per level,
#: so the interpreter's recursion limit is raised while a query is parsed and translated.
MAX_NESTING = 500
_FRAMES_PER_LEVEL = 45
#: The largest integer an ADQL integer literal may have (BIGINT); larger ones are taken as reals.
_BIGINT = 2**63 - 1


class ADQLError(UsageError):
    """The ADQL cannot be run: a syntax error, an unknown table, column or function (400)."""


class _ServiceFault(Exception):
    """A similarity hook failed for a reason of the service's own (model files missing, say): not the
    client's query, so :func:`translate` lets the cause through rather than answering 400."""


# -- the dialect ------------------------------------------------------------------------------


class ADQL(Dialect):
    """ADQL 2.1 as sqlglot reads it: TOP, ``"delimited"`` identifiers, ``--`` comments, ``''`` escapes.

    Only aggregates, COALESCE, CAST and CASE get sqlglot's own parse; every other function call
    stays an anonymous call by name so :class:`_Translator` can check it against ADQL's list.
    Integer division truncates (as in PostgreSQL, the usual ADQL back end).
    """

    TYPED_DIVISION = True

    class Tokenizer(tokens.Tokenizer):
        QUOTES = ["'"]
        IDENTIFIERS = ['"']
        COMMENTS = ["--"]
        STRING_ESCAPES = ["'"]
        KEYWORDS = {
            **{key: value for key, value in tokens.Tokenizer.KEYWORDS.items() if key != "::"},
            "TOP": TokenType.TOP,
        }

    class Parser(parser.Parser):
        FUNCTIONS = {name: parser.Parser.FUNCTIONS[name] for name in ("COUNT", "SUM", "AVG", "MIN", "MAX")}
        FUNCTIONS["COALESCE"] = parser.Parser.FUNCTIONS["COALESCE"]
        FUNCTION_PARSERS = {"CAST": parser.Parser.FUNCTION_PARSERS["CAST"]}
        NO_PAREN_FUNCTIONS: dict = {}
        NO_PAREN_FUNCTION_PARSERS = {"CASE": parser.Parser.NO_PAREN_FUNCTION_PARSERS["CASE"]}


# -- results of a translation -------------------------------------------------------------------


@dataclass(frozen=True)
class _Kind:
    """What an expression yields: VOTable datatype, arraysize, xtype, unit, and the table column if plain."""

    datatype: str
    arraysize: str | None = None
    xtype: str | None = None
    unit: str | None = None
    meta: ColumnMeta | None = None
    null: bool = False  # the NULL literal: takes the type of whatever it is combined with


#: Expressions that never need parentheses around them.
_ATOMS = (
    exp.Column, exp.Literal, exp.Null, exp.Anonymous, exp.Subquery, exp.Paren,
    exp.Count, exp.Sum, exp.Avg, exp.Min, exp.Max, exp.Coalesce, exp.Cast, exp.Case,
)  # fmt: skip

_LONG = _Kind("long")
_INT = _Kind("int")
_DOUBLE = _Kind("double")
_TEXT = _Kind("char", "*")
_NULL = _Kind("char", "*", null=True)
_TIMESTAMP = _Kind("char", "*", "timestamp")
_GEOMETRY = {
    "point": _Kind("double", "2", "point", "deg"),
    "circle": _Kind("double", "3", "circle", "deg"),
    "polygon": _Kind("double", "*", "polygon", "deg"),
}
_INTEGERS = {"short", "int", "long", "unsignedByte", "boolean"}
_NUMBERS = _INTEGERS | {"float", "double"}


@dataclass
class OutputColumn:
    """One column of the result: its FIELD name and metadata (TAP-04)."""

    name: str
    datatype: str
    arraysize: str | None = None
    xtype: str | None = None
    unit: str | None = None
    #: The table column when the item is a plain column reference: UCD, utype, description come from it.
    meta: ColumnMeta | None = None

    @classmethod
    def of(cls, name: str, kind: _Kind) -> OutputColumn:
        return cls(name, kind.datatype, kind.arraysize, kind.xtype, kind.unit, kind.meta)

    def to_column(self, ID: str | None = None) -> Column:
        """The VOTable FIELD."""
        meta = self.meta
        return Column(
            name=self.name,
            datatype=self.datatype,
            arraysize=self.arraysize,
            unit=self.unit,
            ucd=meta.ucd if meta else None,
            utype=meta.utype if meta else None,
            xtype=self.xtype,
            description=meta.description if meta else None,
            ID=ID,
        )


@dataclass(frozen=True)
class Engine:
    """What a translation is for: the SQL dialect (sqlglot's name) and whether q3c indexes the sky."""

    dialect: str = "sqlite"
    q3c: bool = False

    @property
    def postgres(self) -> bool:
        return self.dialect == "postgres"


SQLITE = Engine()


@dataclass(frozen=True)
class DistanceTable:
    """``ml_distance(did, ref, dims)`` with literal reference and dims, on PostgreSQL: the distances of
    every encoded spectrum from the reference, a temporary table (``did``, ``distance``) the query
    reads. The caller fills it (:meth:`SimilarityHooks.distances`) before the query runs."""

    name: str
    ref_did: str
    dims: tuple[int, ...] | None


@dataclass
class NeighbourTable:
    """``ml_knn(did, ref, k, dims)`` on PostgreSQL with the reference a column: the neighbours of every
    reference DID the query can meet, a temporary table (``ref``, ``did``) the query looks in.

    ``references`` is the SQL the caller runs first for those DIDs: the distinct values of the
    reference over its table (archive or upload), narrowed by the query's conditions on that table
    alone, so ``WHERE a.teff > 9000`` keeps a self-join to the hot stars' neighbours. It fetches one
    more than :data:`NEIGHBOUR_REFERENCES_MAX`, for the caller to refuse a query that needs more."""

    name: str
    k: int
    dims: tuple[int, ...] | None
    references: str = ""


@dataclass
class VectorSearch:
    """``ORDER BY arr_dot(l.z - r.z, l.z - r.z)`` (or over one slice of z) for one reference row r: the
    query ``sql`` the caller may run instead of the translation's own, which reads only the candidate
    rows of l that exact search over the memory-mapped latent matrix finds nearest the reference.

    The caller runs ``reference_sql`` (the reference's model version and z; the plan holds only when
    it gives exactly one row), puts the ``k`` rows nearest it along ``dims`` (model_version,
    row_index) in the temporary table ``table``, and runs ``sql``: the same rows as the
    translation's own SQL, which computes the distance of every row. ``same_version``: the query
    restricts l to the reference's model version (else l must hold that version only).
    """

    reference_sql: str
    dims: list[int] | None
    table: str
    same_version: bool
    k: int = 0
    sql: str = ""


#: On PostgreSQL, the most reference DIDs one ``ml_knn`` with a column reference may have: each costs
#: one neighbour search before the query runs (10^4 take a second or two), and the query's time limit
#: stops them as it stops SQLite's row-by-row searches; this bounds the memory their table takes.
NEIGHBOUR_REFERENCES_MAX = 100_000

#: On PostgreSQL: every encoded spectrum's latent vector (``did``, ``z``), for ``ml_distance`` with a
#: reference that is no literal, and the similarity dimensions it uses by default (``dims``, text).
LATENT_TABLE = "latentvo_latent"
SIMILARITY_DIMS_TABLE = "latentvo_similarity_dims"


@dataclass
class Translation:
    sql: str
    columns: list[OutputColumn]
    #: Rows to return; the SQL fetches one more when MAXREC (not TOP) limits, so overflow shows.
    limit: int
    #: The temporary tables the SQL reads, for the caller to fill first (PostgreSQL only).
    distances: list[DistanceTable] = field(default_factory=list)
    neighbours: list[NeighbourTable] = field(default_factory=list)
    latents: bool = False
    #: The exact-search plan of an ORDER BY over an arr_dot distance, where the query has that shape.
    vector_search: VectorSearch | None = None


class SimilarityHooks(Protocol):
    """Latent-space similarity for ``ml_knn`` and ``ml_distance`` (implemented over the served model)."""

    def knn(self, ref_did: str, k: int, dims: Sequence[int] | None) -> list[str] | None:
        """DIDs of the k nearest archive spectra of ``ref_did`` (itself first); None if it is unknown."""

    def distance(self, did: str, ref_did: str, dims: Sequence[int] | None) -> float | None:
        """Latent distance between two archive spectra; None if either is unknown."""

    def distances(self, ref_did: str, dims: Sequence[int] | None) -> tuple[list[str], list[float]]:
        """Every encoded spectrum's DID and its latent distance from ``ref_did`` (equal to
        :meth:`distance`, bit for bit); empty when the reference is unknown."""


# -- translation --------------------------------------------------------------------------------


def translate(
    adql: str,
    tables: TableSet,
    maxrec: int,
    similarity: SimilarityHooks | None = None,
    engine: Engine = SQLITE,
) -> Translation:
    """SQL for an ADQL query on ``engine``, its output columns, and the number of rows to return.

    Every failure is an :class:`ADQLError` (or another DALI error from a function hook): a query is
    client input, so nothing in it may turn into a server error.
    """
    try:
        with _recursion_headroom():
            root = parse(adql)
            translator = _Translator(tables, similarity, engine)
            translator.top_select = root
            top = _top(root)
            sql_node, outputs = translator.query(root, None, {})
            limit = maxrec if top is None else min(top, maxrec)
            fetch = top if top is not None and top <= maxrec else maxrec + 1
            sql_node.set("limit", exp.Limit(expression=exp.Literal.number(fetch)))
            sql = sql_node.sql(dialect=engine.dialect)
            search = translator.vector_search
            if search is not None:
                offset = sql_node.args.get("offset")
                search.k = fetch + (int(offset.expression.this) if offset is not None else 0) + _SEARCH_MARGIN
                fast = sql_node.copy()
                where = fast.args.get("where")  # none when the reference is chosen in JOIN … ON
                condition = (
                    translator.candidates if where is None else exp.and_(translator.candidates, where.this)
                )
                fast.set("where", exp.Where(this=condition))
                search.sql = fast.sql(dialect=engine.dialect)
    except DALIError:
        raise
    except _ServiceFault as fault:
        raise fault.__cause__ from None  # type: ignore[misc]
    except RecursionError:
        raise ADQLError(
            "the query is nested too deeply to translate (expressions chained or nested "
            f"beyond about {MAX_NESTING} levels); simplify it"
        ) from None
    except Exception:  # a construct the translator does not expect: the client's query, not our state
        log.warning("ADQL translation failed on %r", adql[:200], exc_info=True)
        raise ADQLError("the query uses a construct this service cannot translate; simplify it") from None
    columns = [OutputColumn.of(n, k) for n, k in outputs]
    return Translation(
        sql, columns, limit, translator.distances, translator.neighbours, translator.latents, search
    )


def tokenize(adql: str) -> list[tokens.Token]:
    """The query's tokens, within the documented limits on its length and its nesting of parentheses
    (checked before the recursive parser sees it)."""
    if len(adql) > MAX_QUERY_CHARS:
        raise ADQLError(f"the query has {len(adql)} characters; the limit is {MAX_QUERY_CHARS}")
    try:
        found = ADQL().tokenize(adql)
    except TokenError as exc:
        raise ADQLError(f"ADQL syntax error: {_plain(str(exc))}") from None
    depth = deepest = 0
    for token in found:
        if token.token_type == TokenType.L_PAREN:
            depth += 1
            deepest = max(deepest, depth)
        elif token.token_type == TokenType.R_PAREN:
            depth -= 1
    if deepest > MAX_NESTING:
        raise ADQLError(f"the query nests parentheses {deepest} deep; the limit is {MAX_NESTING}")
    return found


_headroom_lock = threading.Lock()
_headroom_users = 0
_saved_limit = 0


@contextmanager
def _recursion_headroom() -> Iterator[None]:
    """Room for :data:`MAX_NESTING` levels of parentheses in the recursive-descent parser.

    The limit is the interpreter's, shared by all threads, so it is raised while any thread is
    inside and restored when the last one leaves. Python-to-Python calls take almost no C stack in
    CPython 3.11+, so the higher limit does not risk the threads' stacks (a parse at the limit ran
    in an 8 MiB thread stack, the default of gunicorn's worker threads).
    """
    global _headroom_users, _saved_limit
    needed = MAX_NESTING * _FRAMES_PER_LEVEL + 2000
    with _headroom_lock:
        if _headroom_users == 0:
            _saved_limit = sys.getrecursionlimit()
            sys.setrecursionlimit(max(_saved_limit, needed))
        _headroom_users += 1
    try:
        yield
    finally:
        with _headroom_lock:
            _headroom_users -= 1
            if _headroom_users == 0:
                sys.setrecursionlimit(_saved_limit)


def parse(adql: str) -> exp.Expression:
    """The syntax tree of one ADQL query; syntax errors become :class:`ADQLError` with line and column."""
    if not adql or not adql.strip():
        raise ADQLError("the query is empty")
    query_tokens = tokenize(adql)
    try:
        statements = [s for s in ADQL().parser().parse(query_tokens, adql) if s is not None]
    except ParseError as exc:
        detail = exc.errors[0] if exc.errors else {}
        where = f" at line {detail.get('line')}, column {detail.get('col')}" if detail.get("line") else ""
        near = f" near {detail.get('highlight')!r}" if detail.get("highlight") else ""
        message = _plain(detail.get("description") or str(exc))
        raise ADQLError(f"ADQL syntax error{where}{near}: {message}") from None
    if len(statements) != 1:
        raise ADQLError("give exactly one ADQL query (no ';'-separated statements)")
    root = statements[0]
    while isinstance(root, exp.Subquery) and not root.alias:
        root = root.this
    if not isinstance(root, exp.Select | exp.SetOperation):
        raise ADQLError(f"not an ADQL query: {adql.strip()[:60]!r} (a query starts with SELECT or WITH)")
    return root


_TOKEN = re.compile(r"<Token token_type: [^,]*, text: ([^,]*),[^>]*>")
_COUNT_NEEDS_ARGUMENT = "COUNT needs an argument: COUNT(*) or COUNT(expression)"
_MISSING = re.compile(r"Required keyword: '(\w+)' missing for <class '(?:[\w.]*\.)?(\w+)'>")
#: What an incomplete parser node is called in ADQL (sqlglot names its nodes after Python classes).
_CONSTRUCTS = {
    "Limit": "TOP needs a non-negative integer",
    "Count": _COUNT_NEEDS_ARGUMENT,
    "Sum": "SUM needs one argument",
    "Avg": "AVG needs one argument",
    "Min": "MIN needs one argument",
    "Max": "MAX needs one argument",
    "Coalesce": "COALESCE needs at least one argument",
    "Cast": "CAST needs (expression AS type)",
    "Order": "ORDER BY needs a column or expression",
    "Ordered": "ORDER BY needs a column or expression",
    "Group": "GROUP BY needs a column or expression",
    "Where": "WHERE needs a condition",
    "Having": "HAVING needs a condition",
    "Join": "JOIN needs a table",
    "Alias": "AS needs a name",
    "TableAlias": "AS needs a name",
    "Subquery": "a subquery is incomplete",
    "In": "IN needs a list of values or a subquery",
    "Between": "BETWEEN needs (low AND high)",
    "Like": "LIKE needs a pattern",
    "ILike": "ILIKE needs a pattern",
    "Is": "IS needs NULL or NOT NULL",
    "Not": "NOT needs a condition",
    "Neg": "a minus sign needs a number or an expression",
    "Case": "CASE needs WHEN … THEN … END",
    "If": "WHEN needs a condition and THEN a value",
    "Distinct": "DISTINCT needs an expression",
    "Exists": "EXISTS needs a subquery",
}
#: Words of parser messages that name code, not ADQL.
_CODE_WORDS = re.compile(r"<class '[^']*'>|\bsqlglot\b[\w.]*|\b[A-Z][a-z]+Error\b")


def _plain(message: str) -> str:
    """A parser message in ADQL terms: token reprs to their text, node classes to ADQL constructs."""
    message = _TOKEN.sub(r"\1", message)
    missing = _MISSING.search(message)
    if missing:
        construct = _CONSTRUCTS.get(missing.group(2))
        if construct is None:
            binary = missing.group(1) == "expression"
            construct = "an operand is missing" if binary else "an expression is missing here"
        return construct
    return _CODE_WORDS.sub("", message).strip() or "the query cannot be parsed"


def _top(root: exp.Expression) -> int | None:
    """The TOP of the outermost query (set operations have none of their own)."""
    if isinstance(root, exp.Select) and root.args.get("limit") is not None:
        return _count(root.args["limit"].expression, "TOP")
    return None


def _count(node: exp.Expression | None, what: str) -> int:
    if isinstance(node, exp.Literal) and not node.is_string and re.fullmatch(r"\d+", node.this):
        return int(node.this)
    raise ADQLError(f"{what} needs a non-negative integer, not {node.sql() if node else 'nothing'}")


@dataclass
class _Source:
    """A table, view, derived table or CTE in a FROM clause."""

    sql_alias: str
    columns: list[ColumnMeta]
    alias: exp.Identifier | None  # the user's alias, if any
    parts: list[str] = field(default_factory=list)  # qualified name parts of a named table
    physical: bool = False  # a table from the TableSet (whose columns may have SQL expressions)
    sql: str | None = None  # a physical table's SQL name

    def named(self, qualifier: list[exp.Identifier]) -> bool:
        if self.alias is not None:
            return len(qualifier) == 1 and _same(qualifier[0], self.alias.name, self.alias.quoted)
        if not self.parts or len(qualifier) > len(self.parts):
            return False
        return all(_same(q, p) for q, p in zip(qualifier, self.parts[-len(qualifier) :], strict=True))

    def column(self, ident: exp.Identifier) -> ColumnMeta | None:
        matches = [c for c in self.columns if _same(ident, c.name)]
        exact = [c for c in matches if c.name == ident.name]
        return (exact or matches or [None])[0]

    def label(self) -> str:
        return self.alias.name if self.alias is not None else ".".join(self.parts)


@dataclass
class _Cte:
    name: exp.Identifier
    sql_name: str
    columns: list[ColumnMeta]


@dataclass
class _Scope:
    parent: _Scope | None
    ctes: dict[str, _Cte]
    sources: list[_Source] = field(default_factory=list)
    shared: set[str] = field(default_factory=set)  # lower-case NATURAL/USING column names
    #: Select-list items by output name: what an alias in HAVING stands for (PostgreSQL has no
    #: output names there).
    items: dict[str, exp.Expression] = field(default_factory=dict)


def _same(ident: exp.Identifier, name: str, quoted: bool = False) -> bool:
    """ADQL identifier rules: delimited ones match exactly, regular ones ignoring case."""
    if ident.quoted or quoted:
        return ident.name == name
    return ident.name.lower() == name.lower()


def _ident(name: str) -> exp.Identifier:
    return exp.Identifier(this=name, quoted=True)


def _column(name: str, table: str | None = None) -> exp.Column:
    return exp.Column(this=_ident(name), table=_ident(table) if table else None)


def _call(name: str, *args: exp.Expression) -> exp.Anonymous:
    return exp.Anonymous(this=name, expressions=list(args))


def _literal(value: float) -> exp.Literal:
    return exp.Literal.number(repr(float(value)))


def _number(node: exp.Expression | None) -> float | None:
    """The value of a numeric literal (negative and parenthesised ones too), else None."""
    if isinstance(node, exp.Paren):
        return _number(node.this)
    if isinstance(node, exp.Neg):
        value = _number(node.this)
        return None if value is None else -value
    if isinstance(node, exp.Literal) and not node.is_string:
        return float(node.this)
    return None


def _string(node: exp.Expression | None) -> str | None:
    return node.this if isinstance(node, exp.Literal) and node.is_string else None


def _is_vector(kind: _Kind) -> bool:
    """A numeric array (VECTORMATH), not a geometry (which is an array of numbers too)."""
    return kind.arraysize is not None and kind.datatype in _NUMBERS and kind.xtype is None


def _vector_kind(*kinds: _Kind) -> _Kind:
    """What arithmetic on arrays gives: float64 components, as many as the longest operand has."""
    sizes = [k.arraysize for k in kinds if _is_vector(k)]
    fixed = [int(size) for size in sizes if size.isdigit()]
    size = str(max(fixed)) if len(fixed) == len(sizes) else "*"
    units = {k.unit for k in kinds if not k.null}
    return _Kind("double", size, unit=units.pop() if len(units) == 1 else None)


def _scalar(translated: tuple[exp.Expression, _Kind], context: str) -> tuple[exp.Expression, _Kind]:
    """A translated operand that must be a single value: an array there is the client's mistake."""
    if _is_vector(translated[1]):
        raise ADQLError(
            f"{context} takes single values, not arrays: use an element (z[1]), an array function "
            "(arr_dot, arr_sum, …) or arr_map(f(x), array)"
        )
    return translated


def _numeric(*kinds: _Kind) -> _Kind:
    real = [k for k in kinds if not k.null]
    if real and all(k.datatype in _INTEGERS for k in real):
        return _LONG
    return _DOUBLE


def _combine(kinds: Sequence[_Kind]) -> _Kind:
    """The type of CASE/COALESCE/UNION branches: the common one, numbers widened, else text."""
    real = [k for k in kinds if not k.null]
    if not real:
        return _NULL
    first = replace(real[0], meta=None)
    if all(replace(k, meta=None) == first for k in real):
        return first
    if all(k.datatype in _NUMBERS and not k.arraysize for k in real):
        return _numeric(*real)
    return _TEXT


#: ADQL math functions: name → (SQL function, min args, max args, result rule).
_SAME = "same"  # integer arguments stay integers (ABS, ROUND, TRUNCATE, CEILING, FLOOR, MOD)
_MATH: dict[str, tuple[str, int, int, str]] = {
    "ABS": ("abs", 1, 1, _SAME),
    "CEILING": ("adql_ceiling", 1, 1, _SAME),
    "FLOOR": ("adql_floor", 1, 1, _SAME),
    "ROUND": ("adql_round", 1, 2, _SAME),
    "TRUNCATE": ("adql_truncate", 1, 2, _SAME),
    "MOD": ("adql_mod", 2, 2, _SAME),
    "DEGREES": ("adql_degrees", 1, 1, "double"),
    "RADIANS": ("adql_radians", 1, 1, "double"),
    "EXP": ("adql_exp", 1, 1, "double"),
    "LOG": ("adql_log", 1, 1, "double"),
    "LOG10": ("adql_log10", 1, 1, "double"),
    "SQRT": ("adql_sqrt", 1, 1, "double"),
    "POWER": ("adql_power", 2, 2, "double"),
    "PI": ("adql_pi", 0, 0, "double"),
    "RAND": ("adql_rand", 0, 1, "double"),
    "ACOS": ("adql_acos", 1, 1, "double"),
    "ASIN": ("adql_asin", 1, 1, "double"),
    "ATAN": ("adql_atan", 1, 1, "double"),
    "ATAN2": ("adql_atan2", 2, 2, "double"),
    "COS": ("adql_cos", 1, 1, "double"),
    "COT": ("adql_cot", 1, 1, "double"),
    "SIN": ("adql_sin", 1, 1, "double"),
    "TAN": ("adql_tan", 1, 1, "double"),
    "LOWER": ("adql_lower", 1, 1, "text"),
    "UPPER": ("adql_upper", 1, 1, "text"),
}
#: Geometry functions: name → (allowed argument counts after the optional coordinate system, result).
_GEOMETRY_FUNCTIONS: dict[str, tuple[set[int] | None, str]] = {
    "POINT": ({2}, "point"),
    "CIRCLE": ({2, 3}, "circle"),
    "BOX": ({3, 4}, "polygon"),
    "POLYGON": (None, "polygon"),
    "CONTAINS": ({2}, "int"),
    "INTERSECTS": ({2}, "int"),
    "DISTANCE": ({2, 4}, "double"),
    "AREA": ({1}, "double"),
    "COORD1": ({1}, "double"),
    "COORD2": ({1}, "double"),
    "CENTROID": ({1}, "point"),
}
_HAS_COORDSYS = {"POINT", "CIRCLE", "BOX", "POLYGON"}
#: CAST targets: ADQL type → (SQLite type, PostgreSQL type, result).
_CAST_TYPES = {
    exp.DataType.Type.SMALLINT: ("INTEGER", "SMALLINT", _Kind("short")),
    exp.DataType.Type.INT: ("INTEGER", "INTEGER", _INT),
    exp.DataType.Type.BIGINT: ("INTEGER", "BIGINT", _LONG),
    exp.DataType.Type.FLOAT: ("REAL", "REAL", _Kind("float")),
    exp.DataType.Type.DOUBLE: ("REAL", "DOUBLE PRECISION", _DOUBLE),
}
#: Syntax nodes rebuilt as they are, once their children are translated.
_PLAIN = (
    exp.And,
    exp.Or,
    exp.Not,
    exp.Between,
    exp.Is,
    exp.Like,
    exp.NEQ,
    exp.GT,
    exp.GTE,
    exp.LT,
    exp.LTE,
    exp.EQ,
)
_ARITHMETIC = (exp.Add, exp.Sub, exp.Mul, exp.Div)
_SELECT_ARGS = {"with_", "distinct", "expressions", "from_", "joins", "where", "group", "having", "order"}
_SELECT_ARGS |= {"limit", "offset", "kind"}
_SIMILARITY_MAX_K = 100_000


class _Translator:
    def __init__(self, tables: TableSet, similarity: SimilarityHooks | None, engine: Engine) -> None:
        self.tables = tables
        self.similarity = similarity
        self.engine = engine
        self.counter = 0
        self.distances: list[DistanceTable] = []
        self.neighbours: list[NeighbourTable] = []
        #: Neighbour tables whose reference query waits for the conditions of the SELECT that owns
        #: the reference's table: (table, that SELECT's scope, the table's SQL alias, the reference).
        self.pending_references: list[tuple[NeighbourTable, _Scope, str, exp.Expression]] = []
        self.latents = False
        #: arr_map's element, by the alias of the rows that hand it over.
        self.elements: dict[str, exp.Expression] = {}
        #: The query as the client wrote it, and its exact-search plan if it has the shape for one.
        self.top_select: exp.Expression | None = None
        self.vector_search: VectorSearch | None = None
        self.candidates: exp.Expression | None = None

    def _unbounded(self) -> exp.Limit | None:
        """The LIMIT an OFFSET needs: SQLite takes none without one (-1: no bound); PostgreSQL needs none."""
        return None if self.engine.postgres else exp.Limit(expression=exp.Literal.number(-1))

    def _text(self, node: exp.Expression) -> exp.Expression:
        """An operand of a string function: PostgreSQL converts no number to text by itself."""
        return exp.Cast(this=node, to=exp.DataType.build("TEXT")) if self.engine.postgres else node

    def _alias(self) -> str:
        self.counter += 1
        return f"_t{self.counter}"

    # -- queries

    def query(
        self, node: exp.Expression, parent: _Scope | None, ctes: dict[str, _Cte]
    ) -> tuple[exp.Expression, list[tuple[str, _Kind]]]:
        """Translate a query (SELECT, set operation or parenthesised query) and list its outputs."""
        if isinstance(node, exp.Subquery):
            if node.alias:
                raise ADQLError("a parenthesised query cannot take an alias here")
            inner, outputs = self.query(node.this, parent, ctes)
            return self._wrap(inner), outputs
        ctes, with_ = self._with(node, parent, ctes)
        if isinstance(node, exp.Select):
            translated, outputs = self._select(node, parent, ctes)
        elif isinstance(node, exp.SetOperation):
            translated, outputs = self._set_operation(node, parent, ctes)
        else:
            raise ADQLError(f"expected a query, found {node.sql(dialect=ADQL)[:60]!r}")
        if with_ is not None:
            translated.set("with_", with_)
        return translated, outputs

    def _with(
        self, node: exp.Expression, parent: _Scope | None, ctes: dict[str, _Cte]
    ) -> tuple[dict[str, _Cte], exp.With | None]:
        """Translate the WITH clause; its queries become internally named CTEs visible in ``node``."""
        with_ = node.args.get("with_")
        if not with_:
            return ctes, None
        if with_.args.get("recursive"):
            raise ADQLError("WITH RECURSIVE is not part of ADQL")
        ctes = dict(ctes)
        emitted = []
        for cte in with_.expressions:
            alias = cte.args["alias"]
            name = alias.this
            inner, outputs = self.query(cte.this, parent, ctes)
            columns = alias.args.get("columns") or []
            sql_alias = exp.TableAlias(this=_ident(self._alias()))
            if columns:
                if len(columns) != len(outputs):
                    raise ADQLError(f"WITH {name.name} names {len(columns)} columns for {len(outputs)}")
                outputs = [(c.name, k) for c, (_, k) in zip(columns, outputs, strict=True)]
                sql_alias.set("columns", [_ident(c.name) for c in columns])
            ctes[name.name.lower()] = _Cte(name, sql_alias.name, _metas(outputs))
            emitted.append(exp.CTE(this=inner, alias=sql_alias))
        return ctes, exp.With(expressions=emitted)

    def _wrap(self, query: exp.Expression) -> exp.Select:
        """``SELECT * FROM (query)``: how SQLite takes a set operand with its own ORDER BY/LIMIT."""
        alias = exp.TableAlias(this=_ident(self._alias()))
        return exp.Select(
            expressions=[exp.Star()], from_=exp.From(this=exp.Subquery(this=query, alias=alias))
        )

    def _set_operation(
        self, node: exp.SetOperation, parent: _Scope | None, ctes: dict[str, _Cte]
    ) -> tuple[exp.Expression, list[tuple[str, _Kind]]]:
        left, left_out = self._operand(node.this, parent, ctes)
        right, right_out = self._operand(node.expression, parent, ctes)
        if len(left_out) != len(right_out):
            raise ADQLError(
                f"{node.key.upper()} needs queries with the same number of columns "
                f"({len(left_out)} and {len(right_out)})"
            )
        outputs = [
            (n, k if replace(k, meta=None) == replace(r, meta=None) else _combine([k, r]))
            for (n, k), (_, r) in zip(left_out, right_out, strict=True)
        ]
        outputs = [(n, k) if k != _NULL else (n, _TEXT) for n, k in outputs]
        if isinstance(node, exp.Intersect | exp.Except) and not node.args.get("distinct"):
            new = self._multiset(node, left, left_out, right, right_out)
        else:
            new = type(node)(this=left, expression=right, distinct=node.args.get("distinct"))
        if node.args.get("order"):
            new.set("order", self._order(node.args["order"], None, outputs, set_operation=True))
        if node.args.get("offset"):
            offset = _count(node.args["offset"].expression, "OFFSET")
            new.set("offset", exp.Offset(expression=exp.Literal.number(offset)))
            new.set("limit", self._unbounded())
        if node.args.get("limit"):
            raise ADQLError("LIMIT is not ADQL; use SELECT TOP n")
        return new, outputs

    def _multiset(self, node, left, left_out, right, right_out) -> exp.Select:
        """INTERSECT ALL / EXCEPT ALL, which SQLite lacks: number the copies of each row, compare (row, n)."""

        def numbered(query: exp.Expression, outputs: list[tuple[str, _Kind]]) -> exp.Select:
            partition = [_column(n) for n, _ in outputs]
            counter = exp.Window(this=_call("ROW_NUMBER"), partition_by=partition)
            source = exp.Subquery(this=query, alias=exp.TableAlias(this=_ident(self._alias())))
            return exp.Select(
                expressions=[*partition, exp.Alias(this=counter, alias=_ident("_copy"))],
                from_=exp.From(this=source),
            )

        pairs = type(node)(
            this=numbered(left, left_out), expression=numbered(right, right_out), distinct=True
        )
        source = exp.Subquery(this=pairs, alias=exp.TableAlias(this=_ident(self._alias())))
        return exp.Select(expressions=[_column(n) for n, _ in left_out], from_=exp.From(this=source))

    def _operand(
        self, node: exp.Expression, parent: _Scope | None, ctes: dict[str, _Cte]
    ) -> tuple[exp.Expression, list[tuple[str, _Kind]]]:
        inner, outputs = self.query(node, parent, ctes)
        plain = isinstance(inner, exp.Select) and not any(
            inner.args.get(k) for k in ("order", "limit", "offset", "with_")
        )
        return (inner if plain else self._wrap(inner)), outputs

    def _select(
        self, node: exp.Select, parent: _Scope | None, ctes: dict[str, _Cte]
    ) -> tuple[exp.Select, list[tuple[str, _Kind]]]:
        extra = [k for k, v in node.args.items() if v not in (None, [], False) and k not in _SELECT_ARGS]
        if extra:
            raise ADQLError(f"unsupported ADQL syntax: {', '.join(extra).upper()}")
        distinct = node.args.get("distinct")
        if distinct is not None and distinct.args.get("on"):
            raise ADQLError("DISTINCT ON is not ADQL")
        scope = _Scope(parent, ctes)
        new = exp.Select()
        if distinct is not None:
            new.set("distinct", exp.Distinct())
        from_ = node.args.get("from_")
        if from_ is None:
            raise ADQLError("an ADQL query needs a FROM clause")
        new.set("from_", exp.From(this=self._source(from_.this, scope)))
        new.set("joins", [self._join(join, scope) for join in node.args.get("joins") or []])

        items, outputs = self._items(node.expressions, scope)
        new.set("expressions", items)
        scope.items = {item.alias: item.this for item in items}
        if node.args.get("where"):
            condition = node.args["where"].this
            translated, _ = self.expr(condition, scope)
            for bound in reversed(self._cone_bounds(condition, scope)):  # the boxes first: cheap tests
                translated = exp.And(this=bound, expression=_paren(translated))
            new.set("where", exp.Where(this=translated))
        if node.args.get("group"):
            group = [self.expr(e, scope, outputs)[0] for e in node.args["group"].expressions]
            new.set("group", exp.Group(expressions=group))
        if node.args.get("having"):
            new.set("having", exp.Having(this=self.expr(node.args["having"].this, scope, outputs)[0]))
        if node.args.get("order"):
            new.set("order", self._order(node.args["order"], scope, outputs))
        if node.args.get("limit") is not None:
            if not node.args["limit"].meta.get("top"):
                raise ADQLError("LIMIT is not ADQL; use SELECT TOP n")
            new.set(
                "limit",
                exp.Limit(expression=exp.Literal.number(_count(node.args["limit"].expression, "TOP"))),
            )
        if node.args.get("offset") is not None:
            offset = _count(node.args["offset"].expression, "OFFSET")
            new.set("offset", exp.Offset(expression=exp.Literal.number(offset)))
            if new.args.get("limit") is None:
                new.set("limit", self._unbounded())
        self._resolve_references(new, scope)
        if node is self.top_select:
            self._plan_vector_search(node, scope)
        return new, outputs

    def _resolve_references(self, select: exp.Select, scope: _Scope) -> None:
        """The reference query of each neighbour table whose reference comes from a table of this
        SELECT: its distinct values under the WHERE and inner-join conditions on that table alone.
        Those conditions hold on every row the query returns, so the DIDs found cover every
        reference the query meets."""
        waiting = [p for p in self.pending_references if p[1] is scope]
        if not waiting:
            return
        self.pending_references = [p for p in self.pending_references if p[1] is not scope]
        joins = select.args.get("joins") or []
        items = [select.args["from_"].this, *(j.this for j in joins)]
        conditions = [
            term
            for join in joins
            if not join.args.get("side") and join.args.get("on") is not None
            for term in _conjuncts(join.args["on"])
        ]
        if select.args.get("where") is not None:
            conditions += list(_conjuncts(select.args["where"].this))
        for table, _, alias, reference in waiting:
            source = next(item for item in items if item.alias_or_name == alias)
            present = exp.Not(this=exp.Is(this=reference.copy(), expression=exp.Null()))
            own = [term.copy() for term in conditions if _only_reads(term, alias)]
            query = exp.Select(
                expressions=[self._text(reference.copy())],
                distinct=exp.Distinct(),
                from_=exp.From(this=source.copy()),
                where=exp.Where(this=exp.and_(present, *own)),
                limit=exp.Limit(expression=exp.Literal.number(NEIGHBOUR_REFERENCES_MAX + 1)),
            )
            table.references = query.sql(dialect=self.engine.dialect)

    def _items(
        self, expressions: list[exp.Expression], scope: _Scope
    ) -> tuple[list[exp.Expression], list[tuple[str, _Kind]]]:
        """The select list: ``*`` expanded, every item aliased to its FIELD name (generated if none)."""
        pending: list[tuple[exp.Expression, str | None, str, _Kind]] = []
        for item in expressions:
            if isinstance(item, exp.Star):
                pending += self._star(scope, None)
            elif isinstance(item, exp.Column) and isinstance(item.this, exp.Star):
                pending += self._star(scope, _qualifier(item))
            elif isinstance(item, exp.Alias):
                translated, kind = self.expr(item.this, scope)
                pending.append((translated, item.alias, item.alias, kind))
            else:
                translated, kind = self.expr(item, scope)
                name = kind.meta.name if isinstance(item, exp.Column) and kind.meta else None
                pending.append((translated, name, _base_name(item), kind))
        taken = {name.lower() for _, name, _, _ in pending if name}
        items, outputs = [], []
        for translated, name, base, kind in pending:
            if name is None:
                name = base
                n = 1
                while name.lower() in taken:
                    n += 1
                    name = f"{base}_{n}"
                taken.add(name.lower())
            items.append(exp.Alias(this=translated, alias=_ident(name)))
            outputs.append((name, kind if not kind.null else _TEXT))
        return items, outputs

    def _star(self, scope: _Scope, qualifier: list[exp.Identifier] | None) -> list:
        sources = [s for s in scope.sources if qualifier is None or s.named(qualifier)]
        if qualifier is not None and not sources:
            raise ADQLError(f"unknown table or alias {'.'.join(q.name for q in qualifier)!r} in SELECT")
        found, seen = [], set()
        for source in sources:
            for meta in source.columns:
                shared = qualifier is None and meta.name.lower() in scope.shared
                if shared and meta.name.lower() in seen:
                    continue
                seen.add(meta.name.lower())
                node = _column(meta.name) if shared else self._emit(source, meta)
                found.append((node, meta.name, meta.name, _kind_of(meta)))
        return found

    def _order(
        self,
        order: exp.Order,
        scope: _Scope | None,
        outputs: list[tuple[str, _Kind]],
        set_operation: bool = False,
    ) -> exp.Order:
        ordered = []
        for item in order.expressions:
            target = item.this
            if isinstance(target, exp.Literal) and not target.is_string:
                position = _count(target, "ORDER BY position")
                if not 1 <= position <= len(outputs):
                    raise ADQLError(f"ORDER BY {position}: the query has {len(outputs)} columns")
                translated = exp.Literal.number(position)
            elif (alias := _output_ref(target, outputs)) is not None:
                _scalar((alias, next(k for n, k in outputs if n == alias.name)), "ORDER BY")
                translated = alias
            elif set_operation or scope is None:
                raise ADQLError(f"ORDER BY of a set operation must name an output column: {target.sql()}")
            else:
                translated, _ = _scalar(self.expr(target, scope, outputs), "ORDER BY")
            desc = bool(item.args.get("desc"))
            ordered.append(exp.Ordered(this=translated, desc=desc, nulls_first=not desc))
        return exp.Order(expressions=ordered)

    # -- FROM

    def _source(self, node: exp.Expression, scope: _Scope) -> exp.Expression:
        """Translate one FROM item, adding it to the scope."""
        if isinstance(node, exp.Table):
            if node.args.get("joins") or node.args.get("laterals") or node.args.get("pivots"):
                raise ADQLError("unsupported FROM syntax")
            alias = node.args.get("alias")
            user_alias = alias.this if alias is not None else None
            if alias is not None and alias.args.get("columns"):
                raise ADQLError("column aliases on tables are not ADQL")
            cte = self._cte(node, scope)
            sql_alias = self._alias()
            if cte is not None:
                scope.sources.append(_Source(sql_alias, cte.columns, user_alias or cte.name, [cte.name.name]))
                return exp.Table(this=_ident(cte.sql_name), alias=exp.TableAlias(this=_ident(sql_alias)))
            meta = self._table(node)
            parts = meta.name.split(".")
            scope.sources.append(_Source(sql_alias, meta.columns, user_alias, parts, True, meta.sql))
            *db, name = meta.sql.split(".")
            return exp.Table(
                this=_ident(name),
                db=_ident(db[0]) if db else None,
                alias=exp.TableAlias(this=_ident(sql_alias)),
            )
        if isinstance(node, exp.Subquery):
            alias = node.args.get("alias")
            if alias is None:
                raise ADQLError("a subquery in FROM needs an alias: (SELECT …) AS name")
            inner, outputs = self.query(node.this, scope.parent, scope.ctes)
            sql_alias = self._alias()
            scope.sources.append(_Source(sql_alias, _metas(outputs), alias.this))
            return exp.Subquery(this=inner, alias=exp.TableAlias(this=_ident(sql_alias)))
        raise ADQLError(f"unsupported FROM item: {node.sql(dialect=ADQL)[:60]}")

    def _cte(self, node: exp.Table, scope: _Scope) -> _Cte | None:
        if node.args.get("db") or node.args.get("catalog"):
            return None
        cte = scope.ctes.get(node.this.name.lower())
        if cte is None or not _same(node.this, cte.name.name, cte.name.quoted):
            return None
        return cte

    def _table(self, node: exp.Table) -> TableMeta:
        parts = [node.args[k] for k in ("catalog", "db", "this") if node.args.get(k) is not None]
        if not all(isinstance(p, exp.Identifier) and p.name for p in parts):
            raise ADQLError(f"not a table name: {node.sql(dialect=ADQL)[:60]!r}")
        name = ".".join(p.name for p in parts)
        meta = self.tables.table(name)
        if meta is None and len(parts) == 1:  # an unqualified name that is unique across schemas
            candidates = [t for t in self.tables.tables if t.name.split(".")[-1].lower() == name.lower()]
            meta = candidates[0] if len(candidates) == 1 else None
        if meta is not None:
            known = meta.name.split(".")[-len(parts) :]
            if len(known) == len(parts) and all(_same(p, k) for p, k in zip(parts, known, strict=True)):
                return meta
        raise ADQLError(f"unknown table {name!r}")

    def _join(self, join: exp.Join, scope: _Scope) -> exp.Join:
        previous = list(scope.sources)
        table = self._source(join.this, scope)
        source = scope.sources[-1]
        new = exp.Join(this=table, side=join.args.get("side"), kind=join.args.get("kind"))
        method = (join.args.get("method") or "").upper()
        if method and method != "NATURAL":
            raise ADQLError(f"unsupported join {method}")
        using = join.args.get("using") or []
        names: list[str] = []
        if method == "NATURAL":
            left = {c.name.lower(): c.name for s in previous for c in s.columns}
            names = [c.name for c in source.columns if c.name.lower() in left]
            if not names and join.args.get("side"):
                new.set("on", exp.EQ(this=exp.Literal.number(1), expression=exp.Literal.number(1)))
        for ident in using:
            ident = ident.this if isinstance(ident, exp.Column) else ident
            mine = source.column(ident)
            theirs = [s.column(ident) for s in previous if s.column(ident) is not None]
            if mine is None or not theirs:
                raise ADQLError(f"USING column {ident.name!r} is not in both joined tables")
            names.append(mine.name)
        if names:
            new.set("using", [_ident(n) for n in names])
            scope.shared.update(n.lower() for n in names)
        if join.args.get("on") is not None:
            new.set("on", self.expr(join.args["on"], scope)[0])
        return new

    # -- columns

    def _emit(self, source: _Source, meta: ColumnMeta) -> exp.Expression:
        if source.physical and meta.sql:
            expression = sqlglot.parse_one(meta.sql, read="sqlite")
            for column in expression.find_all(exp.Column):
                column.set("table", _ident(source.sql_alias))
            return exp.Paren(this=expression)
        return _column(meta.name, source.sql_alias)

    def _resolve(
        self, node: exp.Column, scope: _Scope, outputs: list[tuple[str, _Kind]] | None
    ) -> tuple[exp.Expression, _Kind]:
        ident = node.this
        if not isinstance(ident, exp.Identifier):
            raise ADQLError(f"unsupported column reference {node.sql(dialect=ADQL)}")
        qualifier = _qualifier(node)
        level: _Scope | None = scope
        qualifier_seen = False
        while level is not None:
            candidates = [s for s in level.sources if not qualifier or s.named(qualifier)]
            qualifier_seen = qualifier_seen or bool(candidates)
            found = [(s, s.column(ident)) for s in candidates if s.column(ident) is not None]
            if len(found) > 1 and not qualifier:
                if found[0][1].name.lower() in level.shared:
                    return _column(found[0][1].name), _kind_of(found[0][1])
                tables = ", ".join(s.label() for s, _ in found)
                raise ADQLError(f"column {ident.name!r} is ambiguous: it is in {tables}")
            if found:
                source, meta = found[0]
                return self._emit(source, meta), _kind_of(meta)
            if qualifier and candidates:
                break
            level = level.parent
        if not qualifier and outputs is not None:
            alias = _output_ref(node, outputs)
            if alias is not None:
                kind = next(k for n, k in outputs if n == alias.name)
                if self.engine.postgres and alias.name in scope.items:
                    return _paren(scope.items[alias.name].copy()), kind
                return alias, kind
        if qualifier and not qualifier_seen:
            raise ADQLError(f"unknown table or alias {'.'.join(q.name for q in qualifier)!r} in {node.sql()}")
        where = f" in {'.'.join(q.name for q in qualifier)}" if qualifier else ""
        raise ADQLError(f"unknown column {ident.name!r}{where}")

    # -- expressions

    def expr(
        self, node: exp.Expression, scope: _Scope, outputs: list[tuple[str, _Kind]] | None = None
    ) -> tuple[exp.Expression, _Kind]:
        """Translate an expression; ``outputs`` makes select-list aliases visible (GROUP BY, HAVING)."""
        sub = lambda n: self.expr(n, scope, outputs)  # noqa: E731
        if isinstance(node, exp.Column):
            return self._resolve(node, scope, outputs)
        if isinstance(node, exp.Literal):
            if node.is_string:
                return exp.Literal.string(node.this), _TEXT
            integer = re.fullmatch(r"\d+", node.this) is not None
            if integer and int(node.this) > _BIGINT:  # beyond BIGINT: SQLite reads it as a real
                return exp.Literal.number(node.this), _DOUBLE
            return exp.Literal.number(node.this), _LONG if integer else _DOUBLE
        if isinstance(node, exp.Null):
            return exp.Null(), _NULL
        if isinstance(node, exp.Paren):
            # Redundant parentheses go: SQLite's parser stack (100 entries before SQLite 3.46) would
            # overflow on generated queries that wrap every term, though the tree is shallow.
            while isinstance(node.this, exp.Paren):
                node = node.this
            inner, kind = sub(node.this)
            return (inner if isinstance(inner, _ATOMS) else exp.Paren(this=inner)), kind
        if isinstance(node, exp.Neg):
            inner, kind = sub(node.this)
            if _is_vector(kind):
                return _call("adql_arr_mul", inner, exp.Literal.number(-1)), _vector_kind(kind)
            return exp.Neg(this=inner), replace(_numeric(kind), unit=kind.unit)
        if isinstance(node, _ARITHMETIC):
            (left, lk), (right, rk) = sub(node.this), sub(node.expression)
            if _is_vector(lk) or _is_vector(rk):
                return self._vector_arithmetic(node, (left, lk), (right, rk))
            new = type(node)(**{**node.args, "this": left, "expression": right})
            unit = lk.unit if isinstance(node, exp.Add | exp.Sub) and lk.unit == rk.unit else None
            return new, replace(_numeric(lk, rk), unit=unit)
        if isinstance(node, exp.Bracket):
            return self._subscript(node, sub)
        if isinstance(node, _Element):
            return self.elements[node.name], _DOUBLE
        if isinstance(node, exp.DPipe):
            left = self._text(_scalar(sub(node.this), "||")[0])
            right = self._text(_scalar(sub(node.expression), "||")[0])
            return exp.DPipe(this=left, expression=right, safe=True), _TEXT
        if isinstance(node, exp.EQ) and (rewritten := self._knn_equals(node, scope, outputs)) is not None:
            return rewritten, _INT
        if isinstance(node, exp.ILike):
            left = self._text(_scalar(sub(node.this), "ILIKE")[0])
            right = self._text(_scalar(sub(node.expression), "ILIKE")[0])
            return exp.Like(this=_call("adql_lower", left), expression=_call("adql_lower", right)), _INT
        if isinstance(node, _PLAIN):
            check = (
                (lambda n: sub(n)[0])
                if isinstance(node, exp.Is)
                else (lambda n: _scalar(sub(n), "a condition")[0])
            )
            args = {k: self._arg(v, check) for k, v in node.args.items()}
            return type(node)(**args), _INT
        if isinstance(node, exp.In):
            return self._in(node, scope, sub), _INT
        if isinstance(node, exp.Exists):
            inner, _ = self.query(_unwrap(node.this), scope, scope.ctes)
            return exp.Exists(this=inner), _INT
        if isinstance(node, exp.Subquery):
            inner, outs = self.query(node.this, scope, scope.ctes)
            if len(outs) != 1:
                raise ADQLError("a subquery used as a value must select exactly one column")
            return exp.Subquery(this=inner), replace(outs[0][1], meta=None)
        if isinstance(node, exp.Case):
            return self._case(node, sub)
        if isinstance(node, exp.Cast):
            return self._cast(node, sub)
        if isinstance(node, exp.Count | exp.Sum | exp.Avg | exp.Min | exp.Max):
            return self._aggregate(node, sub)
        if isinstance(node, exp.Coalesce):
            parts = [sub(node.this)] + [sub(e) for e in node.expressions]
            kind = _combine([k for _, k in parts])
            if len(parts) == 1:
                return parts[0]
            return exp.Coalesce(this=parts[0][0], expressions=[p for p, _ in parts[1:]]), kind
        if isinstance(node, exp.Anonymous):
            return self._function(node, scope, outputs, sub)
        raise ADQLError(f"unsupported ADQL syntax: {node.sql(dialect=ADQL)[:80]!r}")

    @staticmethod
    def _arg(value, translate):
        if isinstance(value, exp.Expression):
            return translate(value)
        if isinstance(value, list):
            return [translate(v) if isinstance(v, exp.Expression) else v for v in value]
        return value

    def _in(self, node: exp.In, scope: _Scope, sub) -> exp.In:
        if node.args.get("unnest") or node.args.get("field"):
            raise ADQLError("unsupported IN syntax")
        new = exp.In(this=_scalar(sub(node.this), "IN")[0])
        if node.args.get("query") is not None:
            inner, outs = self.query(_unwrap(node.args["query"]), scope, scope.ctes)
            if len(outs) != 1:
                raise ADQLError("a subquery after IN must select exactly one column")
            new.set("query", exp.Subquery(this=inner))
        else:
            new.set("expressions", [sub(e)[0] for e in node.expressions])
        return new

    def _case(self, node: exp.Case, sub) -> tuple[exp.Expression, _Kind]:
        kinds = []
        ifs = []
        for branch in node.args.get("ifs") or []:
            result, kind = sub(branch.args["true"])
            kinds.append(kind)
            ifs.append(exp.If(this=sub(branch.this)[0], true=result))
        new = exp.Case(ifs=ifs)
        if node.this is not None:
            new.set("this", sub(node.this)[0])
        if node.args.get("default") is not None:
            default, kind = sub(node.args["default"])
            kinds.append(kind)
            new.set("default", default)
        return new, _combine(kinds)

    def _cast(self, node: exp.Cast, sub) -> tuple[exp.Expression, _Kind]:
        inner, kind = _scalar(sub(node.this), "CAST")
        target: exp.DataType = node.args["to"]
        if target.this in _CAST_TYPES:
            sqlite_type, postgres_type, result = _CAST_TYPES[target.this]
            sql_type = postgres_type if self.engine.postgres else sqlite_type
            if self.engine.postgres and result.datatype in _INTEGERS and kind.datatype in ("float", "double"):
                inner = _call("trunc", inner)  # a real becomes an integer by truncation, as on SQLite
            built = exp.DataType.build(sql_type, dialect=self.engine.dialect)
            return exp.Cast(this=inner, to=built), replace(result, unit=kind.unit)
        if target.this in (exp.DataType.Type.CHAR, exp.DataType.Type.VARCHAR):
            params = target.expressions
            text = exp.Cast(this=inner, to=exp.DataType.build("TEXT"))
            if not params:
                return text, _TEXT
            length = _count(params[0].this if isinstance(params[0], exp.DataTypeParam) else params[0], "CHAR")
            size = f"{length}*" if target.this == exp.DataType.Type.VARCHAR else str(length)
            return _call("substr", text, exp.Literal.number(1), exp.Literal.number(length)), _Kind(
                "char", size
            )
        if target.this == exp.DataType.Type.TIMESTAMP:
            return _call("adql_timestamp", inner), _TIMESTAMP
        raise ADQLError(
            f"CAST to {target.sql()} is not supported (SMALLINT, INTEGER, BIGINT, REAL, "
            "DOUBLE PRECISION, CHAR(n), VARCHAR(n), TIMESTAMP)"
        )

    def _aggregate(self, node: exp.Expression, sub) -> tuple[exp.Expression, _Kind]:
        if node.this is None and isinstance(node, exp.Count):
            raise ADQLError(_COUNT_NEEDS_ARGUMENT)
        if node.expressions or node.this is None:
            raise ADQLError(f"{node.key.upper()} takes one argument")
        argument = node.this
        if isinstance(argument, exp.Star):
            if not isinstance(node, exp.Count):
                raise ADQLError(f"{node.key.upper()}(*) is not ADQL")
            return exp.Count(this=exp.Star()), _LONG
        if isinstance(argument, exp.Distinct):
            if len(argument.expressions) != 1:
                raise ADQLError(f"{node.key.upper()}(DISTINCT …) takes one expression")
            inner, kind = sub(argument.expressions[0])
            translated: exp.Expression = exp.Distinct(expressions=[inner])
        else:
            translated, kind = sub(argument)
        if _is_vector(kind) and not isinstance(node, exp.Count):
            if isinstance(argument, exp.Distinct):
                raise ADQLError(f"{node.key.upper()}(DISTINCT …) takes single values, not arrays")
            return _call(f"adql_arr_agg_{node.key.lower()}", translated), _vector_kind(kind)
        new = type(node)(this=translated)
        if isinstance(node, exp.Count):
            return new, _LONG
        if isinstance(node, exp.Avg):
            return new, replace(_DOUBLE, unit=kind.unit)
        if isinstance(node, exp.Sum):
            return new, replace(_numeric(kind), unit=kind.unit)
        return new, replace(kind, meta=None)

    # -- functions

    def _function(self, node: exp.Anonymous, scope: _Scope, outputs, sub) -> tuple[exp.Expression, _Kind]:
        name = str(node.this).upper()
        args = list(node.expressions)
        if any(isinstance(a, exp.Distinct | exp.Star) for a in args):
            raise ADQLError(f"{name}: DISTINCT and * are only allowed in aggregates")
        if name in _MATH:
            sql_name, low, high, rule = _MATH[name]
            if not low <= len(args) <= high:
                raise ADQLError(f"{name} takes {_arity(low, high)} argument{'s' if high != 1 else ''}")
            translated = [_scalar(sub(a), name) for a in args]
            if rule == "text":
                translated = [(self._text(t), k) for t, k in translated]
                kind = _TEXT
            elif rule == _SAME:
                kind = replace(_numeric(*[k for _, k in translated]), unit=translated[0][1].unit)
            else:
                kind = _DOUBLE
            return _call(sql_name, *[t for t, _ in translated]), kind
        if name in _GEOMETRY_FUNCTIONS or name in ("IN_UNIT", "ML_KNN", "ML_DISTANCE"):
            sub = lambda n, sub=sub: _scalar(sub(n), str(node.this))  # noqa: E731
        if name in _GEOMETRY_FUNCTIONS:
            return self._geometry(name, args, sub)
        if name in _VECTOR_FUNCTIONS:
            return self._vector_function(name, args, sub)
        if name == "ARR_MAP":
            return self._map(args, sub)
        if name == "IN_UNIT":
            return self._in_unit(args, sub)
        if name == "ML_KNN":
            return self._knn(args, sub, scope)
        if name == "ML_DISTANCE":
            if len(args) not in (2, 3):
                raise ADQLError("ml_distance takes (did, ref_did [, dims])")
            dims = _dims_literal(args[2]) if len(args) == 3 else None
            if self.engine.postgres:
                return self._distance(args, dims, sub), _DOUBLE
            return _call("ml_distance", *[sub(a)[0] for a in args]), _DOUBLE
        raise ADQLError(f"unknown function {node.this!s}")

    # -- VECTORMATH

    def _plan_vector_search(self, node: exp.Select, scope: _Scope) -> None:
        """Recognise ``ORDER BY arr_dot(l.z - r.z, l.z - r.z)`` (same slice of z on both sides, either
        order) over ``ml.latent AS l, ml.latent AS r`` where every condition is on r alone, or ties l to
        r's model version: then the nearest rows can come from exact search (:class:`VectorSearch`)."""
        order = node.args.get("order")
        if order is None or order.expressions[0].args.get("desc") or node.args.get("distinct"):
            return
        if node.args.get("group") or node.args.get("having") or node.find(exp.AggFunc):
            return
        latent = self.tables.table("ml.latent")
        sources = scope.sources
        if latent is None or len(sources) != 2 or any(s.sql != latent.sql for s in sources):
            return
        joins = node.args.get("joins") or []
        if any(j.args.get("side") or j.args.get("method") or j.args.get("using") for j in joins):
            return
        key = order.expressions[0].this
        if isinstance(key, exp.Column) and not key.table:  # a select-list alias
            aliased = [e.this for e in node.expressions if isinstance(e, exp.Alias) and e.alias == key.name]
            key = aliased[0] if aliased else key
        elif isinstance(key, exp.Literal) and key.is_int and 1 <= int(key.this) <= len(node.expressions):
            key = node.expressions[int(key.this) - 1]  # a position in the select list
            key = key.this if isinstance(key, exp.Alias) else key
        found = _distance_shape(key)
        if found is None:
            return
        (first, second), window = found
        owners = {id(self._owner(c, sources)) for c in (first, second)}
        if owners != {id(s) for s in sources}:
            return
        conditions = [c for j in joins if j.args.get("on") is not None for c in _conjuncts(j.args["on"])]
        if node.args.get("where"):
            conditions += list(_conjuncts(node.args["where"].this))
        on_reference: list[exp.Expression] = []
        referenced: set[int] = set()
        same_version = False
        for condition in conditions:
            columns = list(condition.find_all(exp.Column))
            if (
                condition.find(exp.Select)
                or not columns
                or any(self._owner(c, sources) is None for c in columns)
            ):
                return
            if _ties_versions(condition):
                same_version = True
                continue
            found = {id(self._owner(c, sources)) for c in columns}
            if len(found) != 1:
                return
            referenced |= found
            on_reference.append(condition)
        if len(referenced) != 1:
            return  # no reference row chosen, or conditions on the rows ranked too
        r_source = next(s for s in sources if id(s) in referenced)
        l_source = next(s for s in sources if s is not r_source)
        r_alias = _ident(r_source.sql_alias)
        reference = exp.select(
            exp.Column(this=_ident("model_version"), table=r_alias.copy()),
            exp.Column(this=_ident("z"), table=r_alias.copy()),
        ).from_(exp.Table(this=_ident(latent.sql), alias=exp.TableAlias(this=r_alias.copy())))
        reference = reference.where(exp.and_(*[self.expr(c, scope)[0] for c in on_reference])).limit(2)
        name = f"latentvo_candidates_{self.counter}"
        rows = exp.select("model_version", "row_index").from_(
            exp.Table(this=_ident(name), db=_ident("pg_temp" if self.engine.postgres else "temp"))
        )
        l_alias = l_source.sql_alias
        self.candidates = exp.In(
            this=exp.Tuple(expressions=[_column("model_version", l_alias), _column("row_index", l_alias)]),
            query=exp.Subquery(this=rows),
        )
        dims = None if window is None else list(range(window[0] - 1, window[1]))
        self.vector_search = VectorSearch(
            reference.sql(dialect=self.engine.dialect), dims, name, same_version
        )

    @staticmethod
    def _owner(column: exp.Column, sources: list[_Source]) -> _Source | None:
        """The source a qualified column belongs to (unqualified: None, as both sources have every name)."""
        qualifier = _qualifier(column)
        named = [s for s in sources if qualifier and s.named(qualifier) and s.column(column.this)]
        return named[0] if len(named) == 1 else None

    def _vector_arithmetic(
        self, node: exp.Expression, left: tuple, right: tuple
    ) -> tuple[exp.Expression, _Kind]:
        """``+ - * /`` with an array on either side: component by component (service/tap/vectormath.py)."""
        for _, kind in (left, right):
            if kind.datatype not in _NUMBERS or (kind.arraysize and not _is_vector(kind)):
                raise ADQLError("arrays combine with arrays and numbers only, not text or geometries")
        name = {exp.Add: "add", exp.Sub: "sub", exp.Mul: "mul", exp.Div: "div"}[type(node)]
        return _call(f"adql_arr_{name}", left[0], right[0]), _vector_kind(left[1], right[1])

    def _subscript(self, node: exp.Bracket, sub) -> tuple[exp.Expression, _Kind]:
        """``a[i]`` (an element, counted from 1) and ``a[lo:hi]`` (a slice, both ends included)."""
        array, kind = sub(node.this)
        if not _is_vector(kind):
            raise ADQLError(f"[…] picks elements of arrays; {node.this.sql(dialect=ADQL)[:60]} is not one")
        if len(node.expressions) != 1:
            raise ADQLError("an array takes one index or one slice [lo:hi] at a time")
        index = node.expressions[0]
        if not isinstance(index, exp.Slice):
            return _call("adql_arr_elem", array, self._index(index, sub)), replace(
                kind, arraysize=None, meta=None
            )
        if index.this is None or index.expression is None or index.args.get("step") is not None:
            raise ADQLError("a slice takes two bounds and no step: a[lo:hi]")
        low, high = _number(index.this), _number(index.expression)
        if low is not None and low < 1:
            raise ADQLError(f"array indexes count from 1; a slice cannot start at {low:g}")
        size = "*"
        if low is not None and high is not None:
            top = min(high, int(kind.arraysize)) if kind.arraysize.isdigit() else high
            size = str(int(max(0, top - low + 1)))
        translated = _call(
            "adql_arr_slice", array, self._index(index.this, sub), self._index(index.expression, sub)
        )
        return translated, replace(kind, arraysize=size, meta=None)

    @staticmethod
    def _index(node: exp.Expression, sub) -> exp.Expression:
        translated, kind = _scalar(sub(node), "an array index")
        if kind.datatype not in _INTEGERS and not kind.null:
            raise ADQLError(f"array indexes are integers: {node.sql(dialect=ADQL)[:60]}")
        return translated

    def _vector_function(self, name: str, args: list[exp.Expression], sub) -> tuple[exp.Expression, _Kind]:
        arity, result = _VECTOR_FUNCTIONS[name]
        if len(args) != arity:
            raise ADQLError(f"{name.lower()} takes {arity} array{'s' if arity > 1 else ''}")
        translated = [sub(a) for a in args]
        for (_, kind), arg in zip(translated, args, strict=True):
            if not _is_vector(kind) and not kind.null:
                raise ADQLError(f"{name.lower()} takes arrays; {arg.sql(dialect=ADQL)[:60]} is not one")
        return _call(f"adql_{name.lower()}", *[t for t, _ in translated]), result

    def _map(self, args: list[exp.Expression], sub) -> tuple[exp.Expression, _Kind]:
        """``arr_map(f(x), a)``: f applied to every element x of a, in a subquery over a's elements."""
        if len(args) != 2:
            raise ADQLError("arr_map takes an expression over x and an array: arr_map(power(10, x), a)")
        array, kind = sub(args[1])
        if not _is_vector(kind):
            raise ADQLError(f"arr_map maps over an array; {args[1].sql(dialect=ADQL)[:60]} is not one")
        alias = self._alias()
        postgres = self.engine.postgres
        self.elements[alias] = _column("x" if postgres else "value", alias)
        body, body_kind = _scalar(sub(_bind_element(args[0], alias)), "arr_map's expression")
        if body_kind.datatype not in _NUMBERS and not body_kind.null:
            raise ADQLError("arr_map's expression must give a number for each element x")
        template = _MAP_POSTGRES if postgres else _MAP_SQLITE
        query = template.transform(
            lambda n: (
                (body.copy() if n.name == "__body__" else array.copy())
                if isinstance(n, exp.Column) and n.name in ("__body__", "__array__")
                else (_ident(alias) if isinstance(n, exp.Identifier) and n.name == "__rows__" else n)
            )
        )
        return exp.Subquery(this=query), replace(kind, datatype="double", unit=None, meta=None)

    def _geometry(self, name: str, args: list[exp.Expression], sub) -> tuple[exp.Expression, _Kind]:
        counts, result = _GEOMETRY_FUNCTIONS[name]
        args = _strip_coordsys(name, args)
        if counts is not None and len(args) not in counts:
            allowed = " or ".join(str(c) for c in sorted(counts))
            raise ADQLError(f"{name} takes {allowed} arguments (after the optional coordinate system)")
        if name == "POLYGON" and len(args) < 3:
            raise ADQLError("POLYGON needs at least three points (or six coordinates)")
        kind = _GEOMETRY.get(result) or (_INT if result == "int" else replace(_DOUBLE, unit=_UNITS.get(name)))
        if name == "CONTAINS" and (fast := self._in_circle(args, sub)) is not None:
            return fast, kind
        if name == "DISTANCE" and len(args) == 2:
            points = [_point_args(a) for a in args]
            if points[0] is not None and points[1] is not None:
                args = [*points[0], *points[1]]
        translated = [sub(a) for a in args]
        numbers = name == "POINT" or (name == "DISTANCE" and len(args) == 4)
        shapes = name in _SHAPE_ARGUMENTS or (name == "DISTANCE" and len(args) == 2)
        for arg, (_, arg_kind) in zip(args, translated, strict=True):
            geometric = arg_kind.xtype is not None or arg_kind.datatype == "char"
            if numbers and geometric:
                raise ADQLError(f"{name} expects numbers (degrees), not {arg.sql(dialect=ADQL)}")
            if shapes and not geometric and not arg_kind.null:
                raise ADQLError(
                    f"{name} expects geometries (POINT, CIRCLE, POLYGON, a region), not {arg.sql()}"
                )
        if name == "DISTANCE" and len(args) == 4:
            return _call("adql_distance4", *[t for t, _ in translated]), kind
        return _call(f"adql_{name.lower()}", *[t for t, _ in translated]), kind

    def _distance(self, args: list[exp.Expression], dims: list[int] | None, sub) -> exp.Expression:
        """ml_distance on PostgreSQL: with a literal reference, a lookup in that reference's distance
        table; otherwise the latent vectors of both, from the latent table, through
        ``latentvo_latent_distance`` (the same float64 operations as the Python function)."""
        if len(args) == 3 and _string(args[2]) is None:
            raise ADQLError("ml_distance: on this archive dims must be a literal such as '0 3 5'")
        if self.similarity is None:
            raise ADQLError("ml_distance is not available: no model is in service")
        ref = _string(args[1])
        did = self._text(sub(args[0])[0])
        if ref is None:
            self.latents = True
            one, other = self._alias(), self._alias()
            if dims:
                chosen: exp.Expression = exp.Literal.string(" ".join(str(d) for d in dims))
            else:
                chosen = exp.Subquery(
                    this=exp.Select(
                        expressions=[_column("dims")], from_=exp.From(this=_temp(SIMILARITY_DIMS_TABLE))
                    )
                )
            distance = _call("latentvo_latent_distance", _column("z", one), _column("z", other), chosen)
            return exp.Subquery(
                this=exp.Select(
                    expressions=[distance],
                    from_=exp.From(this=_temp(LATENT_TABLE, one)),
                    joins=[exp.Join(this=_temp(LATENT_TABLE, other))],
                    where=exp.Where(
                        this=exp.and_(
                            exp.EQ(this=_column("did", one), expression=did),
                            exp.EQ(this=_column("did", other), expression=self._text(sub(args[1])[0])),
                        )
                    ),
                )
            )
        key = (ref, tuple(dims) if dims else None)
        table = next((t for t in self.distances if (t.ref_did, t.dims) == key), None)
        if table is None:
            table = DistanceTable(f"latentvo_distance_{len(self.distances) + 1}", *key)
            self.distances.append(table)
        alias = self._alias()
        lookup = exp.Select(
            expressions=[_column("distance", alias)],
            from_=exp.From(this=_temp(table.name, alias)),
            where=exp.Where(this=exp.EQ(this=_column("did", alias), expression=did)),
        )
        return exp.Subquery(this=lookup)

    def _neighbours(
        self, args: list[exp.Expression], did: exp.Expression, sub, scope: _Scope
    ) -> exp.Expression:
        """ml_knn on PostgreSQL with a reference that is no literal: a lookup in the neighbour table the
        caller fills, before the query runs, for every reference DID the query can meet."""
        k_value = _number(args[2])
        if k_value is None or (len(args) == 4 and _string(args[3]) is None):
            raise ADQLError(
                "ml_knn: on this archive k and dims must be literals (ml_knn(did, ref, 20, '0 3'))"
            )
        ref = sub(args[1])[0]
        owner = _table_of(ref, scope)
        if owner is None:
            raise ADQLError(
                "ml_knn: on this archive the reference DID must be a literal ('ivo://…') or a column of a "
                "table in FROM (an archive or TAP_UPLOAD table, not a subquery or WITH); the service "
                "finds the neighbours before the query runs"
            )
        dims = _dims_literal(args[3]) if len(args) == 4 else None
        table = NeighbourTable(
            f"latentvo_neighbours_{len(self.neighbours) + 1}", int(k_value), tuple(dims) if dims else None
        )
        self.neighbours.append(table)
        self.pending_references.append((table, *owner, ref))
        alias = self._alias()
        found = exp.Exists(
            this=exp.Select(
                expressions=[exp.Literal.number(1)],
                from_=exp.From(this=_temp(table.name, alias)),
                where=exp.Where(
                    this=exp.and_(
                        exp.EQ(this=_column("ref", alias), expression=self._text(ref)),
                        exp.EQ(this=_column("did", alias), expression=self._text(did)),
                    )
                ),
            )
        )
        return exp.Case(ifs=[exp.If(this=found, true=exp.Literal.number(1))], default=exp.Literal.number(0))

    def _in_circle(self, args: list[exp.Expression], sub) -> exp.Expression | None:
        """CONTAINS(POINT(a, b), CIRCLE(c, d, r)) as one call on plain numbers."""
        point = _point_args(args[0])
        circle = _circle_args(args[1])
        if point is None or circle is None:
            return None
        return _call("adql_in_circle", *[sub(a)[0] for a in (*point, *circle)])

    def _cone_bounds(self, condition: exp.Expression, scope: _Scope) -> list[exp.Expression]:
        """The box of each literal cone in a top-level AND, so an index on (lat, lon) narrows it:
        ``lat BETWEEN b - r AND b + r`` and the RA intervals of :func:`geometry.ra_ranges` (a longitude
        written outside [0, 360] is left to the exact test). Where q3c is installed, q3c's cone
        instead, which its index on (lon, lat) answers."""
        bounds = []
        for term in _conjuncts(condition):
            cone = _cone(term)
            if cone is None:
                continue
            if not (math.isfinite(cone.lat) and math.isfinite(cone.radius)) or cone.radius >= 180:
                continue  # the whole sky, or no number: no range helps
            lat, _ = self.expr(cone.lat_column, scope)
            indexed = cone.lon_column is not None and cone.lon is not None and math.isfinite(cone.lon)
            if self.engine.q3c and indexed:
                lon, _ = self.expr(cone.lon_column, scope)
                reach = _literal(cone.radius + 2 * geometry.EPSILON)  # never narrower than the exact test
                centre = (_literal(cone.lon), _literal(cone.lat))  # type: ignore[arg-type]
                bounds.append(_call("q3c_radial_query", lon, lat, *centre, reach))
                continue
            low, high = cone.lat - cone.radius, cone.lat + cone.radius
            bounds.append(exp.Between(this=lat, low=_literal(low), high=_literal(high)))
            if cone.lon_column is None or cone.lon is None or not math.isfinite(cone.lon):
                continue
            ranges = geometry.ra_ranges(cone.lon, cone.lat, cone.radius)
            if ranges is None:
                continue
            lon, _ = self.expr(cone.lon_column, scope)
            boxes: list[exp.Expression] = [
                exp.Between(this=lon.copy(), low=_literal(a), high=_literal(b)) for a, b in ranges
            ]
            boxes.append(exp.Not(this=exp.Between(this=lon.copy(), low=_literal(0.0), high=_literal(360.0))))
            bounds.append(exp.Paren(this=exp.or_(*boxes)))
        return bounds

    def _in_unit(self, args: list[exp.Expression], sub) -> tuple[exp.Expression, _Kind]:
        if len(args) != 2 or _string(args[1]) is None:
            raise ADQLError("IN_UNIT takes (expression, 'unit') with the unit as a string literal")
        value, kind = sub(args[0])
        target = _string(args[1])
        if not kind.unit:
            raise ADQLError(f"IN_UNIT: {args[0].sql()} has no unit to convert from")
        factor = _unit_factor(kind.unit, target)
        return exp.Mul(this=exp.Paren(this=value), expression=exp.Literal.number(repr(factor))), replace(
            _DOUBLE, unit=target
        )

    def _knn(self, args: list[exp.Expression], sub, scope: _Scope) -> tuple[exp.Expression, _Kind]:
        if len(args) not in (3, 4):
            raise ADQLError("ml_knn takes (did, ref_did, k [, dims])")
        members = self._knn_members(args)
        did = sub(args[0])[0]
        if members is None:
            if self.engine.postgres:
                return self._neighbours(args, did, sub, scope), _INT
            return _call("ml_knn", did, *[sub(a)[0] for a in args[1:]]), _INT
        inside = exp.In(this=did, expressions=[exp.Literal.string(d) for d in members])
        case = exp.Case(ifs=[exp.If(this=inside, true=exp.Literal.number(1))], default=exp.Literal.number(0))
        return case, _INT

    def _knn_equals(self, node: exp.EQ, scope: _Scope, outputs) -> exp.Expression | None:
        """``1 = ml_knn(x, 'ref', k)`` as ``x IN ('did1', …)``: neighbours found once, the index helps."""
        for one, call in ((node.this, node.expression), (node.expression, node.this)):
            if _number(one) == 1 and isinstance(call, exp.Anonymous) and str(call.this).upper() == "ML_KNN":
                args = list(call.expressions)
                if len(args) not in (3, 4):
                    raise ADQLError("ml_knn takes (did, ref_did, k [, dims])")
                members = self._knn_members(args)
                if members is None:
                    return None
                did = self.expr(args[0], scope, outputs)[0]
                return exp.In(this=did, expressions=[exp.Literal.string(d) for d in members])
        return None

    def _knn_members(self, args: list[exp.Expression]) -> list[str] | None:
        """The neighbour DIDs when reference, k and dims are literals (checked either way)."""
        ref = _string(args[1])
        k_value = _number(args[2])
        if k_value is not None and not (1 <= k_value <= _SIMILARITY_MAX_K and k_value == int(k_value)):
            raise ADQLError(
                f"ml_knn: k must be an integer from 1 to {_SIMILARITY_MAX_K}, not {args[2].sql()}"
            )
        dims = _dims_literal(args[3]) if len(args) == 4 else None
        literal_dims = len(args) == 3 or _string(args[3]) is not None
        if ref is None or k_value is None or not literal_dims:
            return None
        if self.similarity is None:
            raise ADQLError("ml_knn is not available: no model is in service")
        try:
            members = self.similarity.knn(ref, int(k_value), dims)
        except ValueError as exc:
            raise ADQLError(f"ml_knn: {exc}") from None
        except DALIError:
            raise
        except Exception as exc:
            raise _ServiceFault() from exc
        if members is None:
            raise ADQLError(f"ml_knn: unknown reference DID {ref!r} (not in the archive or not encoded)")
        return members


class _Element(exp.Expression):
    """arr_map's ``x`` in the expression it maps: the element of the rows named ``this``."""

    arg_types = {"this": True}


def _bind_element(node: exp.Expression, alias: str) -> exp.Expression:
    """``node`` with every unqualified ``x`` the element of ``alias`` (not inside a nested arr_map's own
    expression, whose ``x`` is its own)."""
    ident = node.this if isinstance(node, exp.Column) and not node.table else None
    if isinstance(ident, exp.Identifier) and ident.name.lower() == "x" and not ident.quoted:
        return _Element(this=alias)
    nested = isinstance(node, exp.Anonymous) and str(node.this).upper() == "ARR_MAP"
    args = {}
    for key, value in node.args.items():
        if isinstance(value, exp.Expression):
            args[key] = _bind_element(value, alias)
        elif isinstance(value, list):
            args[key] = [
                v if not isinstance(v, exp.Expression) or (nested and i == 0) else _bind_element(v, alias)
                for i, v in enumerate(value)
            ]
        else:
            args[key] = value
    return type(node)(**args)


#: Candidates beyond the rows asked for, so that rounding between numpy and SQL never loses a row.
_SEARCH_MARGIN = 16


def _distance_shape(
    key: exp.Expression,
) -> tuple[tuple[exp.Column, exp.Column], tuple[int, int] | None] | None:
    """For ``arr_dot(A - B, A - B)`` with A and B ``x.z`` or ``x.z[lo:hi]`` (the same literal slice): the
    two columns, and the slice (None for all of z)."""
    if not (
        isinstance(key, exp.Anonymous) and str(key.this).upper() == "ARR_DOT" and len(key.expressions) == 2
    ):
        return None
    first, second = (e.unnest() for e in key.expressions)
    if first != second or not isinstance(first, exp.Sub):
        return None
    sides = [_latent_part(e.unnest()) for e in (first.this, first.expression)]
    if None in sides or sides[0][1] != sides[1][1]:  # type: ignore[index]
        return None
    return (sides[0][0], sides[1][0]), sides[0][1]  # type: ignore[index]


def _latent_part(node: exp.Expression) -> tuple[exp.Column, tuple[int, int] | None] | None:
    window = None
    if (
        isinstance(node, exp.Bracket)
        and len(node.expressions) == 1
        and isinstance(node.expressions[0], exp.Slice)
    ):
        low, high = _number(node.expressions[0].this), _number(node.expressions[0].expression)
        if low is None or high is None or low != int(low) or high != int(high) or not 1 <= low <= high:
            return None
        window, node = (int(low), int(high)), node.this
    if isinstance(node, exp.Column) and node.name.lower() == "z" and node.table:
        return node, window
    return None


def _ties_versions(condition: exp.Expression) -> bool:
    """``l.model_version = r.model_version``: two qualified model_version columns, equal."""
    return (
        isinstance(condition, exp.EQ)
        and all(isinstance(side, exp.Column) and side.table and side.name.lower() == "model_version"
                for side in (condition.this, condition.expression))
        and condition.this.table != condition.expression.table
    )  # fmt: skip


#: VECTORMATH functions of arrays: name → (number of arrays, result).
_VECTOR_FUNCTIONS: dict[str, tuple[int, _Kind]] = {
    "ARR_DOT": (2, _DOUBLE),
    "ARR_COUNT": (1, _LONG),
    "ARR_SUM": (1, _DOUBLE),
    "ARR_AVG": (1, _DOUBLE),
    "ARR_MIN": (1, _DOUBLE),
    "ARR_MAX": (1, _DOUBLE),
}
#: arr_map on each engine: __body__ (the expression, over the element) for every element of __array__.
_MAP_SQLITE = sqlglot.parse_one(
    "SELECT adql_arr_collect(__rows__.key, __body__) FROM json_each(adql_arr_json(__array__)) AS __rows__",
    read="sqlite",
)
_MAP_POSTGRES = sqlglot.parse_one(
    "SELECT COALESCE(ARRAY_AGG(__body__ ORDER BY __rows__.o), CAST(ARRAY[] AS DOUBLE PRECISION[])) "
    "FROM UNNEST(CAST(__array__ AS DOUBLE PRECISION[])) WITH ORDINALITY AS __rows__(x, o)",
    read="postgres",
)

_SHAPE_ARGUMENTS = {"CONTAINS", "INTERSECTS", "AREA", "CENTROID", "COORD1", "COORD2"}
_UNITS = {"DISTANCE": "deg", "AREA": "deg**2", "COORD1": "deg", "COORD2": "deg"}


def _temp(name: str, alias: str | None = None) -> exp.Table:
    """A temporary table of the query session (PostgreSQL's ``pg_temp`` schema)."""
    return exp.Table(
        this=_ident(name),
        db=exp.Identifier(this="pg_temp"),
        alias=exp.TableAlias(this=_ident(alias)) if alias else None,
    )


def _table_of(node: exp.Expression, scope: _Scope) -> tuple[_Scope, str] | None:
    """(the scope whose FROM holds it, its SQL alias) of the one archive or uploaded table that every
    column of the translated expression ``node`` reads; None for anything else."""
    aliases = {column.table for column in node.find_all(exp.Column)}
    if len(aliases) != 1 or not next(iter(aliases)):
        return None
    alias = aliases.pop()
    level: _Scope | None = scope
    while level is not None:
        for source in level.sources:
            if source.sql_alias == alias:
                return (level, alias) if source.physical else None
        level = level.parent
    return None


def _only_reads(term: exp.Expression, alias: str) -> bool:
    """Whether a translated condition reads columns of the table ``alias`` and nothing else."""
    if term.find(exp.Select, exp.Subquery, exp.Exists) is not None:
        return False
    columns = list(term.find_all(exp.Column))
    return bool(columns) and all(column.table == alias for column in columns)


def _arity(low: int, high: int) -> str:
    return str(low) if low == high else f"{low} to {high}"


def _paren(node: exp.Expression) -> exp.Expression:
    return node if isinstance(node, exp.Paren) else exp.Paren(this=node)


def _unwrap(node: exp.Expression) -> exp.Expression:
    while isinstance(node, exp.Subquery) and not node.alias:
        node = node.this
    return node


def _qualifier(node: exp.Column) -> list[exp.Identifier]:
    return [node.args[k] for k in ("catalog", "db", "table") if node.args.get(k) is not None]


def _output_ref(node: exp.Expression, outputs: list[tuple[str, _Kind]]) -> exp.Column | None:
    """An unqualified name that is a select-list output (ORDER BY alias)."""
    if not isinstance(node, exp.Column) or _qualifier(node) or not isinstance(node.this, exp.Identifier):
        return None
    for name, _ in outputs:
        if _same(node.this, name):
            return _column(name)
    return None


def _base_name(node: exp.Expression) -> str:
    """A generated FIELD name for an unaliased expression: the function's name, else ``expr``."""
    if isinstance(node, exp.Anonymous):
        name = str(node.this).lower()
    elif isinstance(node, exp.Count | exp.Sum | exp.Avg | exp.Min | exp.Max | exp.Coalesce):
        name = node.key.lower()
    else:
        name = "expr"
    return name if re.fullmatch(r"[a-z][a-z0-9_]*", name) else "expr"


def _kind_of(meta: ColumnMeta) -> _Kind:
    return _Kind(meta.datatype, meta.arraysize, meta.xtype, meta.unit, meta)


def _metas(outputs: list[tuple[str, _Kind]]) -> list[ColumnMeta]:
    """Columns of a derived table or CTE: metadata travels with them (minus any SQL expression)."""
    metas = []
    for name, kind in outputs:
        if kind.meta is not None:
            metas.append(replace(kind.meta, name=name, sql=None))
        else:
            metas.append(ColumnMeta(name, kind.datatype, kind.arraysize, kind.xtype, kind.unit))
    return metas


def _strip_coordsys(name: str, args: list[exp.Expression]) -> list[exp.Expression]:
    """Drop a leading coordinate-system literal (ADQL 2.0 style); only ICRS (or '') is accepted."""
    if name not in _HAS_COORDSYS or not args or _string(args[0]) is None:
        return args
    system = _string(args[0]) or ""
    words = system.split()
    if words and words[0].upper() not in ("ICRS", "UNKNOWNFRAME"):
        raise ADQLError(f"coordinate system {system!r} is not supported; use 'ICRS' or ''")
    return args[1:]


def _call_args(node: exp.Expression, name: str) -> list[exp.Expression] | None:
    if isinstance(node, exp.Anonymous) and str(node.this).upper() == name:
        return _strip_coordsys(name, list(node.expressions))
    return None


def _point_args(node: exp.Expression) -> list[exp.Expression] | None:
    args = _call_args(node, "POINT")
    return args if args is not None and len(args) == 2 else None


def _circle_args(node: exp.Expression) -> list[exp.Expression] | None:
    args = _call_args(node, "CIRCLE")
    if args is None:
        return None
    if len(args) == 3:
        return args
    if len(args) == 2 and (center := _point_args(args[0])) is not None:
        return [*center, args[1]]
    return None


def _conjuncts(node: exp.Expression):
    if isinstance(node, exp.And):
        yield from _conjuncts(node.this)
        yield from _conjuncts(node.expression)
    elif isinstance(node, exp.Paren):
        yield from _conjuncts(node.this)
    else:
        yield node


@dataclass(frozen=True)
class _Cone:
    """A cone with literal centre and radius over a latitude column (and a longitude column, if any)."""

    lat_column: exp.Column
    lat: float
    radius: float
    lon_column: exp.Column | None
    lon: float | None


def _cone(term: exp.Expression) -> _Cone | None:
    """The cone of ``1 = CONTAINS(POINT(ra, dec), CIRCLE(…))`` or ``DISTANCE(POINT(ra, dec),
    POINT(a, b)) < r`` with literal centre and radius."""
    pairs: list[tuple[exp.Expression, exp.Expression]] = []
    if isinstance(term, exp.EQ):
        pairs = [(term.this, term.expression), (term.expression, term.this)]
        for one, call in pairs:
            args = _call_args(call, "CONTAINS") if _number(one) == 1 else None
            if args and len(args) == 2:
                point, circle = _point_args(args[0]), _circle_args(args[1])
                if point and circle and isinstance(point[1], exp.Column):
                    center, radius = _number(circle[1]), _number(circle[2])
                    if center is not None and radius is not None and _number(circle[0]) is not None:
                        lon = point[0] if isinstance(point[0], exp.Column) else None
                        return _Cone(point[1], center, radius, lon, _number(circle[0]))
        return None
    if isinstance(term, exp.LT | exp.LTE):
        distance, limit = term.this, term.expression
    elif isinstance(term, exp.GT | exp.GTE):
        distance, limit = term.expression, term.this
    else:
        return None
    radius = _number(limit)
    args = _call_args(distance, "DISTANCE")
    if radius is None or args is None:
        return None
    if len(args) == 2:
        points = [_point_args(a) for a in args]
        if not all(points):
            return None
        args = [c for p in points for c in p]  # type: ignore[union-attr]
    if len(args) != 4:
        return None
    for lon_column, lat_column, lon, lat in ((*args[:2], *args[2:]), (*args[2:], *args[:2])):
        center = _number(lat)
        if isinstance(lat_column, exp.Column) and center is not None:
            column = lon_column if isinstance(lon_column, exp.Column) else None
            return _Cone(lat_column, center, radius, column, _number(lon))
    return None


def _dims_literal(node: exp.Expression) -> list[int] | None:
    """``dims`` of the similarity functions: '0 3 5' or '0,3,5' (checked when it is a literal)."""
    text = _string(node)
    if text is None:
        return None
    return parse_dims(text)


def parse_dims(text: str | None) -> list[int] | None:
    """Latent dimension numbers from '0 3 5' or '0,3,5'; empty means the default."""
    if text is None:
        return None
    words = [w for w in re.split(r"[\s,]+", text.strip()) if w]
    if not words:
        return None
    try:
        dims = [int(w) for w in words]
    except ValueError:
        raise ADQLError(f"dims must be latent dimension numbers like '0 3 5', not {text!r}") from None
    if any(d < 0 for d in dims) or len(set(dims)) != len(dims):
        raise ADQLError(f"dims must be distinct non-negative dimension numbers, not {text!r}")
    return dims


def _unit_factor(source: str, target: str) -> float:
    """The factor IN_UNIT multiplies by (VOUnit strings, as in TAP_SCHEMA)."""
    from astropy import units

    def unit(text: str):
        for fmt in ("vounit", "generic"):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", units.UnitsWarning)
                    return units.Unit(text, format=fmt)
            except ValueError:
                continue
        raise ADQLError(f"IN_UNIT: unknown unit {text!r}")

    try:
        return float(unit(source).to(unit(target)))
    except units.UnitConversionError:
        raise ADQLError(f"IN_UNIT: cannot convert {source} to {target}") from None


# -- SQL functions ------------------------------------------------------------------------------

_errors = threading.local()


def function_error() -> DALIError | None:
    """The error a Python SQL function raised during the last statement on this thread (then cleared)."""
    error = getattr(_errors, "value", None)
    _errors.value = None
    return error


def _captured(name: str, function: Callable) -> Callable:
    """Keep the message of an exception raised inside SQLite (which only reports that one occurred)."""

    def call(*args):
        try:
            return function(*args)
        except DALIError as exc:
            _errors.value = exc
            raise
        except (ValueError, TypeError, OverflowError, ZeroDivisionError) as exc:
            _errors.value = ADQLError(f"{name}: {exc}")
            raise

    return call


def _numeric_function(function: Callable) -> Callable:
    """NULL in, NULL out; outside the domain (LOG(-1), SQRT(-1)) gives NULL as SQLite's own math does."""

    def call(*args):
        if any(a is None for a in args):
            return None
        try:
            return function(*args)
        except (ValueError, ZeroDivisionError):
            return None

    return call


def _round(x, n=0):
    """ROUND half away from zero (as SQL does), to n decimals; integers stay integers."""
    if isinstance(x, int) and n >= 0:
        return x
    factor = 10.0 ** int(n)
    value = math.floor(abs(x) * factor + 0.5) / factor
    return math.copysign(value, x) if value else 0.0


def _truncate(x, n=0):
    if isinstance(x, int) and n >= 0:
        return x
    factor = 10.0 ** int(n)
    return math.trunc(x * factor) / factor


def _mod(x, y):
    if isinstance(x, int) and isinstance(y, int):
        return int(math.fmod(x, y))
    return math.fmod(x, y)


def _same_type(function: Callable) -> Callable:
    return lambda x: x if isinstance(x, int) else float(function(x))


def _rand(seed=None):
    return random.Random(seed).random() if seed is not None else random.random()


def _timestamp(value) -> str:
    """CAST(x AS TIMESTAMP): an ISO date or date-time as the DALI form ``YYYY-MM-DDThh:mm:ss[.fff]``."""
    text = str(value).strip().replace(" ", "T").rstrip("Z")
    match = re.fullmatch(r"(\d{4}-\d{2}-\d{2})(T\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?", text)
    if not match:
        raise ADQLError(f"cannot read {value!r} as a timestamp (YYYY-MM-DD[Thh:mm:ss])")
    date, clock, seconds = match.group(1), match.group(2), match.group(3)
    if clock is None:
        return date + "T00:00:00"
    return date + clock + ("" if seconds else ":00")


_PYTHON_FUNCTIONS: dict[str, tuple[Callable, int]] = {
    "adql_ceiling": (_same_type(math.ceil), 1),
    "adql_floor": (_same_type(math.floor), 1),
    "adql_round": (_round, -1),
    "adql_truncate": (_truncate, -1),
    "adql_mod": (_mod, 2),
    "adql_degrees": (math.degrees, 1),
    "adql_radians": (math.radians, 1),
    "adql_exp": (math.exp, 1),
    "adql_log": (math.log, 1),
    "adql_log10": (math.log10, 1),
    "adql_sqrt": (math.sqrt, 1),
    "adql_power": (lambda x, y: float(math.pow(x, y)), 2),
    "adql_pi": (lambda: math.pi, 0),
    "adql_acos": (math.acos, 1),
    "adql_asin": (math.asin, 1),
    "adql_atan": (math.atan, 1),
    "adql_atan2": (math.atan2, 2),
    "adql_cos": (math.cos, 1),
    "adql_cot": (lambda x: 1.0 / math.tan(x), 1),
    "adql_sin": (math.sin, 1),
    "adql_tan": (math.tan, 1),
    "adql_lower": (lambda s: str(s).lower(), 1),
    "adql_upper": (lambda s: str(s).upper(), 1),
    "adql_timestamp": (_timestamp, 1),
}


def register_functions(conn: sqlite3.Connection, similarity: SimilarityHooks | None = None) -> None:
    """Prepare a connection for translated ADQL: math, string, geometry and similarity functions.

    Also makes LIKE case-sensitive, as ADQL's LIKE is (ILIKE is the case-insensitive one).
    """
    conn.execute("PRAGMA case_sensitive_like = ON")
    for name, (function, nargs) in _PYTHON_FUNCTIONS.items():
        adql_name = name.removeprefix("adql_").upper()  # what the query called it
        wrapped = _captured(adql_name, _numeric_function(function))
        conn.create_function(name, nargs, wrapped, deterministic=True)
    conn.create_function("adql_rand", -1, _captured("RAND", _rand))
    geometry.register(conn, wrap=lambda f: _captured(f.__name__.replace("sql_", "").upper(), f))
    vectormath.register(conn, wrap=_captured)
    knn, distance = _similarity_functions(similarity)
    conn.create_function("ml_knn", -1, _captured("ml_knn", knn), deterministic=True)
    conn.create_function("ml_distance", -1, _captured("ml_distance", distance), deterministic=True)


def _similarity_functions(similarity: SimilarityHooks | None) -> tuple[Callable, Callable]:
    """Per-row ml_knn and ml_distance (used when their arguments are not literals)."""
    neighbour_sets: dict[tuple, frozenset[str]] = {}

    def hooks() -> SimilarityHooks:
        if similarity is None:
            raise ADQLError("similarity functions are not available: no model is in service")
        return similarity

    def knn(did, ref_did, k, dims=None):
        if did is None or ref_did is None or k is None:
            return 0
        if not isinstance(k, int) or not 1 <= k <= _SIMILARITY_MAX_K:
            raise ADQLError(f"ml_knn: k must be an integer from 1 to {_SIMILARITY_MAX_K}, not {k!r}")
        chosen = parse_dims(dims)
        key = (ref_did, k, tuple(chosen) if chosen else None)
        if key not in neighbour_sets:
            try:
                found = hooks().knn(str(ref_did), k, chosen)
            except ValueError as exc:
                raise ADQLError(f"ml_knn: {exc}") from None
            neighbour_sets[key] = frozenset(found or ())
        return int(did in neighbour_sets[key])

    def distance(did, ref_did, dims=None):
        if did is None or ref_did is None:
            return None
        try:
            return hooks().distance(str(did), str(ref_did), parse_dims(dims))
        except ValueError as exc:
            raise ADQLError(f"ml_distance: {exc}") from None

    return knn, distance

"""VECTORMATH on SQLite: the array functions translated ADQL calls (GAVO's "vector math in ADQL").

Arrays are BLOBs (service/storage/arrays.py); what these functions compute is float64. PostgreSQL
has the same functions under the same names in resources/postgres/adql_functions.sql. The rules
both follow, from the proposal where it says and written down here where it does not:

- indexes count from 1; an element outside the array is NULL; a slice ``[lo:hi]`` keeps what lies
  inside the array (empty when ``lo > hi``);
- ``+ - * /`` between arrays work component by component, the shorter padded with NaN; with a
  number they apply it to every component; division by zero gives ±Infinity or NaN (IEEE);
- ``arr_dot`` of arrays of unequal length is NaN;
- NaN propagates through every sum, mean, minimum and maximum; NULL arrays are skipped by the
  aggregates over rows, as SQL skips NULLs.
"""

from __future__ import annotations

import json
import math
import operator
import sqlite3
import sys
from array import array
from collections.abc import Callable, Sequence

from service.storage import arrays

#: What pads the shorter array, and what a NULL from arr_map's expression becomes.
_PAD = math.nan
#: The type byte of service/storage/arrays.py → the array module's type code.
_TYPECODES = {arrays.FLOAT32: "f", arrays.FLOAT64: "d"}
_SWAP = sys.byteorder == "big"  # the BLOBs are little-endian

# Small arrays (a latent vector has tens of elements) cost less as Python's own arrays than as numpy's:
# a call here takes a few microseconds, and the row-by-row plan makes one per row and operation. Sums
# run element by element in order, in float64, as PostgreSQL's SQL functions do.


def _vector(value) -> array:
    if not isinstance(value, bytes):
        raise TypeError("expected an array, found a single value (VECTORMATH works on array columns)")
    code = _TYPECODES.get(value[0]) if value else None
    if code is None:
        raise TypeError("expected an array, found a value that is none")
    values = array(code)
    values.frombytes(value[1:])
    if _SWAP:
        values.byteswap()
    return values


def _blob(values: array) -> bytes:
    """An array as its BLOB, of its own element type (a slice of float32 stays float32)."""
    if _SWAP:
        values = array(values.typecode, values)
        values.byteswap()
    return values.typecode.encode() + values.tobytes()


def _pack(values: Sequence[float]) -> bytes:
    """Computed values: float64."""
    return _blob(array("d", values))


def _divide(x: float, y: float) -> float:
    """IEEE division: a zero divisor gives ±Infinity, or NaN for 0/0 (and NaN/0)."""
    if y:
        return x / y
    return math.nan if x != x or x == 0 else math.copysign(math.inf, x)


def _componentwise(operation: Callable[[float, float], float]) -> Callable:
    def call(a, b):
        if a is None or b is None:
            return None
        if isinstance(a, bytes) and isinstance(b, bytes):
            left, right = _vector(a), _vector(b)
            if len(left) != len(right):
                size = max(len(left), len(right))
                left.extend([_PAD] * (size - len(left)))
                right.extend([_PAD] * (size - len(right)))
            return _pack(list(map(operation, left, right)))
        if isinstance(a, bytes):
            scalar = float(b)
            return _pack([operation(x, scalar) for x in _vector(a)])
        scalar = float(a)
        return _pack([operation(scalar, y) for y in _vector(b)])

    return call


def element(a, index):
    """``a[index]``: NULL outside the array."""
    if a is None or index is None:
        return None
    values = _vector(a)
    i = _index(index)
    return float(values[i - 1]) if 1 <= i <= len(values) else None


def array_slice(a, low, high):
    """``a[low:high]``, both ends included; what lies outside the array is left out."""
    if a is None or low is None or high is None:
        return None
    values = _vector(a)
    start, stop = max(_index(low), 1), min(_index(high), len(values))
    return _blob(values[start - 1 : stop] if stop >= start else values[:0])


def _index(value) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int):
        raise ValueError(f"array indexes are integers, not {value!r}")
    return value


def dot(a, b):
    if a is None or b is None:
        return None
    left, right = _vector(a), _vector(b)
    if len(left) != len(right):
        return math.nan
    return _total(map(operator.mul, left, right))


def _total(values) -> float:
    """Summed in order, as PostgreSQL sums (Python 3.12's sum() compensates, and would differ)."""
    total = 0.0
    for value in values:
        total += value
    return total


def count(a):
    return None if a is None else len(_vector(a))


def _over_elements(reduce: Callable[[array], float]) -> Callable:
    """arr_sum and its kin: like the SQL aggregate, over one array's elements (NULL for no element)."""

    def call(a):
        if a is None:
            return None
        values = _vector(a)
        return float(reduce(values)) if len(values) else None

    return call


def _extreme(choose: Callable) -> Callable[[array], float]:
    return lambda values: math.nan if any(v != v for v in values) else choose(values)


def to_json(a):
    """The elements as a JSON array, for ``json_each`` to hand arr_map one element per row (NaN as null)."""
    if a is None:
        return None
    return json.dumps([None if v != v else v for v in _vector(a)])


class _Collect:
    """arr_map's result: the mapped elements in the order of their keys (0-based, from json_each)."""

    def __init__(self) -> None:
        self.values: dict[int, float] = {}

    def step(self, key, value) -> None:
        if value is not None and not isinstance(value, int | float):
            raise TypeError("arr_map: the expression must give a number for each element")
        self.values[int(key)] = _PAD if value is None else float(value)

    def finalize(self):
        return _pack([self.values[k] for k in sorted(self.values)])


class _RowAggregate:
    """SUM, AVG, MIN or MAX of an array column over rows, component by component."""

    combine: Callable[[float, float], float]

    def __init__(self) -> None:
        self.total: list[float] | None = None
        self.rows = 0

    def step(self, value) -> None:
        if value is None:
            return
        current = list(_vector(value))
        self.rows += 1
        if self.total is None:
            self.total = current
            return
        size = max(len(self.total), len(current))
        self.total += [_PAD] * (size - len(self.total))
        current += [_PAD] * (size - len(current))
        self.total = list(map(self.combine, self.total, current))

    def finalize(self):
        if self.total is None:
            return None
        return _pack(self.result(self.total))

    def result(self, total: list[float]) -> list[float]:
        return total


def _nan_first(choose: Callable[[float, float], float]) -> Callable[[float, float], float]:
    return lambda x, y: math.nan if x != x or y != y else choose(x, y)


class _Sum(_RowAggregate):
    combine = staticmethod(operator.add)


class _Avg(_Sum):
    def result(self, total: list[float]) -> list[float]:
        return [value / self.rows for value in total]


class _Min(_RowAggregate):
    combine = staticmethod(_nan_first(min))  # NaN wins, as in every other operation


class _Max(_RowAggregate):
    combine = staticmethod(_nan_first(max))


FUNCTIONS: dict[str, tuple[Callable, int]] = {
    "adql_arr_elem": (element, 2),
    "adql_arr_slice": (array_slice, 3),
    "adql_arr_add": (_componentwise(operator.add), 2),
    "adql_arr_sub": (_componentwise(operator.sub), 2),
    "adql_arr_mul": (_componentwise(operator.mul), 2),
    "adql_arr_div": (_componentwise(_divide), 2),
    "adql_arr_dot": (dot, 2),
    "adql_arr_count": (count, 1),
    "adql_arr_sum": (_over_elements(_total), 1),
    "adql_arr_avg": (_over_elements(lambda values: _total(values) / len(values)), 1),
    "adql_arr_min": (_over_elements(_extreme(min)), 1),
    "adql_arr_max": (_over_elements(_extreme(max)), 1),
    "adql_arr_json": (to_json, 1),
}
AGGREGATES: dict[str, tuple[type, int]] = {
    "adql_arr_collect": (_Collect, 2),
    "adql_arr_agg_sum": (_Sum, 1),
    "adql_arr_agg_avg": (_Avg, 1),
    "adql_arr_agg_min": (_Min, 1),
    "adql_arr_agg_max": (_Max, 1),
}


def register(conn: sqlite3.Connection, wrap: Callable[[str, Callable], Callable]) -> None:
    """Make the VECTORMATH functions callable on ``conn``; ``wrap(name, f)`` keeps their error messages."""
    for name, (function, nargs) in FUNCTIONS.items():
        conn.create_function(name, nargs, wrap(_shown(name), function), deterministic=True)
    for name, (aggregate, nargs) in AGGREGATES.items():
        shown = _shown(name)
        conn.create_aggregate(name, nargs, _guarded(aggregate, lambda f, shown=shown: wrap(shown, f)))


def _shown(name: str) -> str:
    """The name the query wrote (adql_arr_agg_sum came from SUM; adql_arr_collect from arr_map)."""
    short = name.removeprefix("adql_")
    if short.startswith("arr_agg_"):
        return short.removeprefix("arr_agg_").upper()
    return {"arr_collect": "arr_map", "arr_json": "arr_map", "arr_elem": "[]", "arr_slice": "[:]"}.get(
        short, short
    )


def _guarded(aggregate: type, wrap: Callable[[Callable], Callable]) -> type:
    """The aggregate with its step and finalize reporting errors as the scalar functions do."""
    step, finalize = wrap(aggregate.step), wrap(aggregate.finalize)
    return type(aggregate.__name__, (aggregate,), {"step": step, "finalize": finalize})

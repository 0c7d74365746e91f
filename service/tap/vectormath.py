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
import sqlite3
from collections.abc import Callable

import numpy as np

from service.storage import arrays

#: What a NULL element becomes when an expression is mapped over it, and what pads a short array.
_PAD = np.nan


def _vector(value) -> np.ndarray:
    try:
        return arrays.unpack(value)
    except (ValueError, TypeError):
        raise TypeError(
            "expected an array, found a single value (VECTORMATH works on array columns)"
        ) from None


def _padded(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    size = max(len(a), len(b))
    grown = []
    for v in (a, b):
        v = v.astype(np.float64)
        if len(v) < size:
            v = np.concatenate([v, np.full(size - len(v), _PAD)])
        grown.append(v)
    return grown[0], grown[1]


def _operands(a, b) -> tuple[np.ndarray | float, np.ndarray | float]:
    """Two arrays padded to one length, or an array and a number."""
    left = _vector(a) if isinstance(a, bytes) else float(a)
    right = _vector(b) if isinstance(b, bytes) else float(b)
    if isinstance(left, np.ndarray) and isinstance(right, np.ndarray):
        return _padded(left, right)
    return (
        left.astype(np.float64) if isinstance(left, np.ndarray) else left,
        right.astype(np.float64) if isinstance(right, np.ndarray) else right,
    )


def _componentwise(operation: Callable) -> Callable:
    def call(a, b):
        if a is None or b is None:
            return None
        left, right = _operands(a, b)
        with np.errstate(all="ignore"):
            return arrays.pack(operation(left, right))

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
    return arrays.pack(values[start - 1 : stop] if stop >= start else values[:0])


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
        return float("nan")
    return float(np.dot(left.astype(np.float64), right.astype(np.float64)))


def count(a):
    return None if a is None else len(_vector(a))


def _over_elements(reduce: Callable) -> Callable:
    """arr_sum and its kin: like the SQL aggregate, over one array's elements (NULL for no element)."""

    def call(a):
        if a is None:
            return None
        values = _vector(a).astype(np.float64)
        return float(reduce(values)) if len(values) else None

    return call


def to_json(a):
    """The elements as a JSON array, for ``json_each`` to hand arr_map one element per row (NaN as null)."""
    if a is None:
        return None
    return json.dumps([None if v != v else float(v) for v in _vector(a).tolist()])


class _Collect:
    """arr_map's result: the mapped elements in the order of their keys (0-based, from json_each)."""

    def __init__(self) -> None:
        self.values: dict[int, float] = {}

    def step(self, key, value) -> None:
        if value is not None and not isinstance(value, int | float):
            raise TypeError("arr_map: the expression must give a number for each element")
        self.values[int(key)] = _PAD if value is None else float(value)

    def finalize(self):
        return arrays.pack([self.values[k] for k in sorted(self.values)])


class _RowAggregate:
    """SUM, AVG, MIN or MAX of an array column over rows, component by component."""

    combine: Callable[[np.ndarray, np.ndarray], np.ndarray]

    def __init__(self) -> None:
        self.total: np.ndarray | None = None
        self.rows = 0

    def step(self, value) -> None:
        if value is None:
            return
        current = _vector(value).astype(np.float64)
        self.rows += 1
        if self.total is None:
            self.total = current.copy()
        else:
            self.total = self.combine(*_padded(self.total, current))

    def finalize(self):
        if self.total is None:
            return None
        return arrays.pack(self.result(self.total))

    def result(self, total: np.ndarray) -> np.ndarray:
        return total


class _Sum(_RowAggregate):
    combine = staticmethod(np.add)


class _Avg(_Sum):
    def result(self, total: np.ndarray) -> np.ndarray:
        return total / self.rows


class _Min(_RowAggregate):
    combine = staticmethod(np.minimum)  # NaN wins, as in every other operation


class _Max(_RowAggregate):
    combine = staticmethod(np.maximum)


FUNCTIONS: dict[str, tuple[Callable, int]] = {
    "adql_arr_elem": (element, 2),
    "adql_arr_slice": (array_slice, 3),
    "adql_arr_add": (_componentwise(np.add), 2),
    "adql_arr_sub": (_componentwise(np.subtract), 2),
    "adql_arr_mul": (_componentwise(np.multiply), 2),
    "adql_arr_div": (_componentwise(np.divide), 2),
    "adql_arr_dot": (dot, 2),
    "adql_arr_count": (count, 1),
    "adql_arr_sum": (_over_elements(np.sum), 1),
    "adql_arr_avg": (_over_elements(np.mean), 1),
    "adql_arr_min": (_over_elements(np.min), 1),
    "adql_arr_max": (_over_elements(np.max), 1),
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

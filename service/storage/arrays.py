"""Numeric arrays in the archive database (latent vectors): how each engine stores them.

PostgreSQL has native arrays (``REAL[]``, ``DOUBLE PRECISION[]``); SQLite stores an array as a BLOB:
one type byte (``f`` float32, ``d`` float64) and the elements little-endian. The type byte lets the
ADQL vector functions (service/tap/vectormath.py) and the result writer read any array they are
handed: stored latents are float32, what a query computes from them is float64.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

FLOAT32 = ord("f")
FLOAT64 = ord("d")
_DTYPES = {FLOAT32: np.dtype("<f4"), FLOAT64: np.dtype("<f8")}
_CODES = {np.dtype("<f4"): b"f", np.dtype("<f8"): b"d"}


def pack(values: np.ndarray | Sequence[float], dtype: str = "<f8") -> bytes:
    """An array as SQLite stores it (``dtype`` ``<f4`` or ``<f8``)."""
    kind = np.dtype(dtype)
    return _CODES[kind] + np.ascontiguousarray(values, dtype=kind).tobytes()


def unpack(value: bytes | Sequence[float] | np.ndarray) -> np.ndarray:
    """An array from either engine (a SQLite BLOB, a PostgreSQL list) as numpy, without copying a BLOB.

    Raises ValueError for a BLOB that is no array of ours.
    """
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        dtype = _DTYPES.get(data[0]) if data else None
        if dtype is None or (len(data) - 1) % dtype.itemsize:
            raise ValueError("not a numeric array")
        return np.frombuffer(data, dtype=dtype, offset=1)
    return np.asarray(value, dtype=np.float64)

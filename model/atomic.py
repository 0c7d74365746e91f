"""Replace files whole or not at all.

Server workers memory-map latent matrices and index files; overwriting such a file in place
would change (or truncate, SIGBUS) pages under a running worker, and a crash part-way would leave
a torn file. Writing to a temp file in the same directory and ``os.replace()``-ing it over the
target avoids both: readers keep the old inode until they reload, and the name always points at
a complete file.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np


def _default_mode() -> int:
    """The mode a plain ``open()`` would give a new file (mkstemp's 0600 would lock other users out)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_NEW_FILE_MODE = _default_mode()


def _fsync_path(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temp path beside ``final``; on success fsync it and ``os.replace`` it over ``final``.

    The temp name starts with ``.`` and ends with ``.tmp`` so listings and globs skip it. If the
    body raises (or is interrupted), the temp file is removed and any previous ``final`` is left
    untouched. The writer may delete and recreate the temp path (Annoy's ``save`` does). The new
    file keeps the mode of the file it replaces, or gets the umask default.
    """
    final = Path(final)
    fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        try:
            mode = stat.S_IMODE(final.stat().st_mode)
        except FileNotFoundError:
            mode = _NEW_FILE_MODE
        os.chmod(tmp, mode)
        _fsync_path(tmp)
        os.replace(tmp, final)
    except BaseException:
        with suppress(FileNotFoundError):
            tmp.unlink()
        raise
    # The rename itself is durable only once the directory entry is on disk.
    _fsync_path(final.parent, directory=True)


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, replacing ``path`` atomically."""
    text = json.dumps(obj, indent=2, sort_keys=True) + "\n"
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_npy_atomic(path: str | Path, array: np.ndarray) -> None:
    """Write ``array`` as a ``.npy`` file (no pickles), replacing ``path`` atomically.

    Writes through a file object: ``np.save`` given a name would append ``.npy`` to the temp name.
    """
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, np.asarray(array), allow_pickle=False)

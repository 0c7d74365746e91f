"""Preview plots (PNG) of archive spectra, rendered once and cached on disk.

Previews are drawn with matplotlib's object API on the Agg canvas (no pyplot global state, so
threads of one worker may render concurrently) and cached under ``<archive root>/cache/preview``.
The cache key covers the DID, the source file's checksum and :data:`PREVIEW_VERSION`, so a
re-ingested file or a new plot style gets a new file and stale entries are never served.
Files are written atomically: a concurrent reader sees the old PNG or the new one, never half.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from model.atomic import atomic_path
from model.spectrum import Spectrum

log = logging.getLogger(__name__)

#: Bump when the plot changes, so cached previews are redrawn.
PREVIEW_VERSION = 1
CACHE_SUBDIR = Path("cache") / "preview"
FIGSIZE = (8.0, 3.0)  # inches, at DPI → 800 × 300 pixels
DPI = 100


def preview_path(root: Path, did: str, source_sha256: str) -> Path:
    """Where the preview of one dataset is cached (a hash: nothing from the request becomes a path)."""
    key = hashlib.sha256(f"{PREVIEW_VERSION}|{did}|{source_sha256}".encode()).hexdigest()
    return Path(root) / CACHE_SUBDIR / f"{key}.png"


def cached_preview(
    root: Path, did: str, source_sha256: str, load: Callable[[], Spectrum], title: str
) -> bytes:
    """The PNG preview of a dataset: from the cache, or rendered from ``load()`` and cached.

    An unwritable cache only costs speed: the PNG is still returned.
    """
    path = preview_path(root, did, source_sha256)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    png = render_png(load(), title)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_bytes(png)
    except OSError as exc:
        log.warning("cannot cache preview %s: %s", path, exc)
    return png


def render_png(spectrum: Spectrum, title: str) -> bytes:
    """Flux against wavelength, bad pixels left out, as a PNG."""
    figure = Figure(figsize=FIGSIZE, dpi=DPI)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    flux = np.where(spectrum.good, spectrum.flux, np.nan)
    axes.plot(spectrum.wavelength, flux, lw=0.6, color="k")
    axes.set_xlabel(f"wavelength ({spectrum.medium}) [Å]")
    axes.set_ylabel(f"flux [{spectrum.flux_unit}]" if spectrum.flux_unit else "flux")
    axes.set_title(title, fontsize=9)
    axes.margins(x=0)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()

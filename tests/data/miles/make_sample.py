"""Write the test sample: a few MILES stars that are NOT in the demo archive, in the MILES table layout.

Usage: python tests/data/miles/make_sample.py MILES_DIR [OUTPUT]
MILES_DIR holds the full library's miles_spectra.fits (credits in README.md beside this file).
The sample keeps the library's first and last rows (m0001, m0970), the star without parameters
(m0407), the held-out star nearest 5800 K without bad pixels (the upload of tests/service/
test_similar.py) and held-out stars at a few temperatures from M to B, so the readers and the
similarity tests run on real spectra from the repository alone.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from astropy.io import fits

HERE = Path(__file__).resolve().parent
DEMO = HERE.parents[2] / "resources" / "demo" / "miles_demo.fits"
FIXED = ("m0001", "m0407", "m0970")
TEFFS = (3500.0, 4500.0, 5800.0, 7500.0, 12000.0)


def main(miles_dir: str, output: str = str(HERE / "miles_spectra.fits")) -> None:
    with fits.open(DEMO) as demo:
        in_demo = {m.strip() for m in demo["SPECTRA"].data["miles_id"]}
    with fits.open(Path(miles_dir) / "miles_spectra.fits") as hdus:
        table = hdus["SPECTRA"].data
        ids = np.array([m.strip() for m in table["miles_id"]])
        held_out = ~np.isin(ids, list(in_demo))
        clean = held_out & np.isfinite(table["teff"]) & (table["flux"] > 0).all(axis=1)
        chosen = {int(np.flatnonzero(ids == m)[0]) for m in FIXED}
        for teff in TEFFS:
            candidates = np.flatnonzero(clean)
            chosen.add(int(candidates[np.argmin(np.abs(table["teff"][candidates] - teff))]))
        rows = sorted(chosen, key=lambda i: (ids[i] == "m0970", i))  # the library's own order
        primary = hdus[0].copy()
        primary.header["NSPEC"] = (len(rows), "number of spectra")
        primary.header["COMMENT"] = "latentvo test sample: MILES v9.1 stars not in the demo archive"
        spectra = fits.BinTableHDU(data=table[rows], header=hdus["SPECTRA"].header, name="SPECTRA")
        out = fits.HDUList([primary, spectra, hdus["WAVELENGTH"].copy()])
        out.writeto(output, overwrite=True, checksum=True)
    print(f"wrote {len(rows)} stars to {output}: {', '.join(ids[rows])}")


if __name__ == "__main__":
    main(*sys.argv[1:])

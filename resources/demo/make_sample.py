"""Write the demo sample: 200 MILES stars spread evenly over Teff, in the MILES table layout.

Usage: python resources/demo/make_sample.py MILES_DIR [OUTPUT]
MILES_DIR holds miles_spectra.fits (see resources/demo/README.md for the credits).
Stars are taken at evenly spaced ranks of Teff among those with Teff, log g and [Fe/H]
known and no truncated red end, so the sample spans the library; the rest stays out of
the demo archive and can be used as held-out queries.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from astropy.io import fits

N_STARS = 200


def main(miles_dir: str, output: str = "resources/demo/miles_demo.fits") -> None:
    with fits.open(Path(miles_dir) / "miles_spectra.fits") as hdus:
        table = hdus["SPECTRA"].data
        usable = np.flatnonzero(
            np.isfinite(table["teff"]) & np.isfinite(table["logg"]) & np.isfinite(table["feh"])
            & ~table["red_end_truncated"]
        )  # fmt: skip
        by_teff = usable[np.argsort(table["teff"][usable], kind="stable")]
        chosen = np.sort(by_teff[np.round(np.linspace(0, len(by_teff) - 1, N_STARS)).astype(int)])
        primary = hdus[0].copy()
        primary.header["NSPEC"] = (N_STARS, "number of spectra")
        primary.header["COMMENT"] = "latentvo demo sample: 200 MILES v9.1 stars evenly spaced in Teff"
        spectra = fits.BinTableHDU(data=table[chosen], header=hdus["SPECTRA"].header, name="SPECTRA")
        wavelength = hdus["WAVELENGTH"].copy()
        out = fits.HDUList([primary, spectra, wavelength])
        out.writeto(output, overwrite=True, checksum=True)
    print(f"wrote {len(chosen)} stars to {output}")


if __name__ == "__main__":
    main(*sys.argv[1:])

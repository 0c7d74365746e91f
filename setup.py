"""latentvo: a Virtual Observatory service for spectral archives with learned similarity search."""

from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent
VERSION = next(
    line.split('"')[1]
    for line in (ROOT / "service" / "__init__.py").read_text().splitlines()
    if line.startswith("__version__")
)

setup(
    name="latentvo",
    version=VERSION,
    description="IVOA data service (SSAP, TAP/ADQL, DataLink, VOSI) for 1D spectra with "
    "β-VAE latent similarity search",
    long_description=(ROOT / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="BSD-3-Clause",
    python_requires=">=3.11",
    packages=find_packages(include=["model", "model.*", "service", "service.*"]),
    include_package_data=True,
    install_requires=[
        "pyvo>=1.5",
        "astropy>=6.0",
        "flask>=3.0",
        "torch>=2.2",
        "annoy>=1.17",
        "numpy>=1.26",
        "requests>=2.31",
        "scipy>=1.11",
        "scikit-learn>=1.4",
        "threadpoolctl>=3.1",
        "tqdm>=4.66",
        "sqlglot>=25",
        "gunicorn>=22",
        "psycopg[binary]>=3.1",
        "psycopg-pool>=3.2",
        "dask[distributed]>=2024.1",
        "matplotlib>=3.8",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-timeout>=2.3", "ruff>=0.5", "lxml>=5", "playwright>=1.40"],
    },
    entry_points={"console_scripts": ["latentvo = service.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Astronomy",
        "Framework :: Flask",
    ],
)

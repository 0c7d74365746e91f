"""Numerics and machine learning for latentvo: spectra, grids, the β-VAE, analysis, similarity.

Nothing here imports the service or touches a database; the service calls in through
:mod:`model.api`.
"""

"""Whole jobs as library calls, one module per CLI verb (e.g. :mod:`.predict`'s ``run_predict``).

Nothing is imported eagerly, so importing one runner does not load the others.
"""

"""Spectra of curvature operators from matrix-vector products.

``lanczos``  Lanczos tridiagonalisation and the flat operators every algorithm here takes
``eigsh``    extreme eigenpairs: full reorthogonalization, or thick restart in O(k·n) memory
``density``  Hutchinson's trace and the SLQ spectral density (no stored basis)
"""

"""Spectra of curvature operators: Lanczos, eigenpairs (thick restart), trace and density estimates."""

"""Trace and spectral density of a symmetric operator from matrix-vector products alone.

* :func:`hutchinson_trace`: tr(A) ≈ mean_i z_iᵀ A z_i over seeded Rademacher (or Gaussian)
  probes, with its standard error;
* :func:`spectral_density`: stochastic Lanczos quadrature (SLQ). Each probe runs the plain
  three-term Lanczos recurrence (three vectors in memory, no stored basis; Gauss quadrature is
  stable without reorthogonalization, Paige 1980, Golub & Meurant 2010), and the Ritz values and
  squared first components of T's eigenvectors are the nodes and weights of a quadrature of the
  spectral measure, broadened by Gaussians.

Randomness comes only from ``seed`` (:func:`qgeom.spectra.lanczos.probe_vector`, probe i seeded
``seed + i``): equal seeds, equal results.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from qgeom.params import Params
from qgeom.spectra.lanczos import as_flat_operator, lanczos, probe_vector


@dataclass(frozen=True)
class TraceEstimate:
    """Hutchinson's tr(A) ≈ mean_i z_iᵀ A z_i with its standard error std/√m (float64)."""

    trace: float
    stderr: float
    samples: np.ndarray
    info: dict

    def to_dict(self) -> dict:
        return {"trace": self.trace, "stderr": self.stderr, "n_probes": len(self.samples), "info": self.info}


def hutchinson_trace(op: Any, n_probes: int = 32, *, probe: str = "rademacher", seed: int = 0,
                     batch: int = 8, like: Params | None = None, n: int | None = None) -> TraceEstimate:
    """tr(A) by Hutchinson: E[zᵀAz] = tr A for E[zzᵀ] = I; probes z_i seeded by ``seed + i``,
    multiplied ``batch`` at a time (one ``matmat``). ``op``, ``like``, ``n``: as for
    :func:`qgeom.spectra.eigsh.eigsh` (any operator :func:`~qgeom.spectra.lanczos.as_flat_operator` takes)."""
    if n_probes < 2:
        raise ValueError("Hutchinson's standard error needs at least 2 probes")
    A = as_flat_operator(op, like, n)
    samples = []
    for i0 in range(0, n_probes, batch):
        Z = torch.stack([probe_vector(A.n, seed + i, probe) for i in range(i0, min(i0 + batch, n_probes))], 1)
        AZ = A.apply(Z.to(A.device)).double().cpu()
        samples += (Z * AZ).sum(0).tolist()
    s = np.array(samples)
    return TraceEstimate(float(s.mean()), float(s.std(ddof=1) / math.sqrt(len(s))), s,
                         {**A.info, "probe": probe, "seed": seed, "n_probes": n_probes})


@dataclass(frozen=True)
class SpectralDensity:
    """Gaussian-broadened SLQ density φ on ``grid`` (∫φ = 1 by the trapezoid rule); the
    quadrature nodes θ and weights τ of every probe; tr(A)/n ≈ Σ τθ averaged over probes."""

    grid: np.ndarray
    density: np.ndarray
    nodes: list[np.ndarray]
    weights: list[np.ndarray]
    sigma: float
    info: dict

    @property
    def mean(self) -> float:
        """∫ t φ(t) dt on the grid."""
        return float(np.trapezoid(self.grid * self.density, self.grid))

    @property
    def quadrature_mean(self) -> float:
        """mean over probes of Σ_j τ_j θ_j = v̂ᵀAv̂ (an estimate of tr(A)/n)."""
        return float(np.mean([np.dot(t, w) for t, w in zip(self.nodes, self.weights)]))

    @property
    def trace_estimate(self) -> tuple[float, float]:
        """(n · quadrature_mean, its standard error across probes): SLQ's own trace estimate."""
        n = self.info.get("n", 1)
        per = np.array([n * np.dot(t, w) for t, w in zip(self.nodes, self.weights)])
        se = float(per.std(ddof=1) / math.sqrt(len(per))) if len(per) > 1 else float("nan")
        return float(per.mean()), se

    def to_dict(self) -> dict:
        return {"grid": self.grid.tolist(), "density": self.density.tolist(), "sigma": self.sigma,
                "mean": self.mean, "trace_estimate": self.trace_estimate, "nodes": [t.tolist() for t in self.nodes],
                "weights": [w.tolist() for w in self.weights], "info": self.info}


def spectral_density(op: Any, *, n_probes: int = 4, n_iter: int = 40, probe: str = "rademacher", seed: int = 0,
                     sigma: float | None = None, n_grid: int = 1000, like: Params | None = None,
                     n: int | None = None) -> SpectralDensity:
    """Stochastic Lanczos quadrature: for each probe v̂ (seed + i, unit norm) run ``n_iter``
    Lanczos steps of the three-term recurrence (no stored basis: memory 3 n-vectors); T = S Θ Sᵀ gives nodes θ_j and weights τ_j = S_{1j}², and
    φ(t) = (1/n_probes) Σ Σ_j τ_j N(t; θ_j, σ²). σ defaults to 1 % of the node range; the grid
    spans the nodes ± 6σ and φ is renormalised to integrate to 1 on it. ``op``, ``like``, ``n``:
    as for :func:`qgeom.spectra.eigsh.eigsh`.
    """
    A = as_flat_operator(op, like, n)
    nodes, weights = [], []
    for i in range(n_probes):
        T = lanczos(A, n_iter, v0=probe_vector(A.n, seed + i, probe), keep_basis=False, reorthogonalize=False)
        theta, S = T.ritz()
        nodes.append(theta)
        weights.append(S[0] ** 2)
    lo, hi = min(t.min() for t in nodes), max(t.max() for t in nodes)
    sigma = float(sigma if sigma is not None else max(0.01 * (hi - lo), 1e-12 * max(abs(lo), abs(hi), 1.0)))
    grid = np.linspace(lo - 6 * sigma, hi + 6 * sigma, n_grid)
    dens = np.zeros_like(grid)
    for t, w in zip(nodes, weights):
        dens += (w[None, :] * np.exp(-0.5 * ((grid[:, None] - t[None, :]) / sigma) ** 2)).sum(1)
    dens /= np.trapezoid(dens, grid)
    return SpectralDensity(grid, dens, nodes, weights, sigma,
                           {**A.info, "probe": probe, "seed": seed, "n_probes": n_probes, "n_iter": n_iter, "n": A.n})


__all__ = ["SpectralDensity", "TraceEstimate", "hutchinson_trace", "spectral_density"]

"""Lanczos with full reorthogonalization: extreme eigenpairs, spectral density (SLQ), trace.

Every algorithm here works on a :class:`FlatOperator` — a symmetric linear map A on R^n given
by a flat torch matvec (n,) → (n,) — and :func:`as_flat_operator` turns the other shapes into
one: a :class:`qgeom.curvature.CurvatureOperator` (anything with ``flat_matvec``/``n_params``),
an object with ``matvec`` over Params plus a ``like`` dict, or a dense symmetric matrix.

Lanczos builds an orthonormal basis Q_m = [q_1 … q_m] of the Krylov space K_m(A, q_1) and the
tridiagonal T_m = Q_mᵀ A Q_m (diagonal α, off-diagonal β), re-orthogonalizing every new vector
against all previous ones twice (classical Gram-Schmidt, "twice is enough"), so the Ritz values
(eigenvalues of T_m, by ``scipy.linalg.eigh_tridiagonal``) carry no spurious copies. The basis
is kept in ``basis_dtype`` (float64 by default; n × m floats). A β_j below
``breakdown_tol · ‖T‖`` means K_j is an invariant subspace: its Ritz values are exact
eigenvalues of A, the run stops and reports it (repeated eigenvalues then appear once).

Randomness comes only from ``seed`` (a CPU ``torch.Generator``): equal seeds, equal results.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal
from torch import Tensor

from qgeom.params import Params, flatten, unflatten

WHICH = ("LA", "SA", "LM")


@dataclass(frozen=True)
class FlatOperator:
    """A symmetric linear map on R^n: ``matvec`` (n,) → (n,), optional ``matmat`` (n, k) → (n, k).

    ``unflatten`` turns a flat vector back into Params (for Ritz vectors); ``info`` describes
    the operator (e.g. a CurvatureOperator's metric, objective, expansion point, probe set).
    """

    n: int
    matvec: Callable[[Tensor], Tensor]
    matmat: Callable[[Tensor], Tensor] | None = None
    unflatten: Callable[[Tensor], Params] | None = None
    dtype: torch.dtype = torch.float64
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    info: dict = field(default_factory=dict)

    def apply(self, X: Tensor) -> Tensor:
        """A X for X (n, k), through ``matmat`` when there is one; float64-in, basis dtype out."""
        Xo = X.to(self.device, self.dtype)
        Y = self.matmat(Xo) if self.matmat is not None else torch.stack([self.matvec(c) for c in Xo.T], 1)
        return Y.to(X.dtype)


def as_flat_operator(op: Any, like: Params | None = None) -> FlatOperator:
    """A :class:`FlatOperator` for ``op`` (see the module docstring for the accepted shapes)."""
    if isinstance(op, FlatOperator):
        return op
    if isinstance(op, Tensor):
        if op.dim() != 2 or op.shape[0] != op.shape[1]:
            raise ValueError(f"a dense operator must be a square matrix, got shape {tuple(op.shape)}")
        return FlatOperator(op.shape[0], lambda x: op @ x, lambda X: op @ X, None, op.dtype, op.device, {"dense": True})
    if hasattr(op, "flat_matvec") and hasattr(op, "n_params"):
        return FlatOperator(op.n_params, op.flat_matvec, getattr(op, "flat_matmat", None), op.unflatten,
                            op.dtype, op.device, dict(getattr(op, "info", {})))
    if like is not None and (hasattr(op, "matvec") or callable(op)):
        keys, mv = list(like), getattr(op, "matvec", op)
        ref = next(iter(like.values()))
        return FlatOperator(
            sum(v.numel() for v in like.values()),
            lambda x: flatten(mv(unflatten(x, like, keys)), keys),
            unflatten=lambda x: unflatten(x, like, keys), dtype=ref.dtype, device=ref.device,
            info=dict(getattr(op, "info", {})))
    raise TypeError("expected a FlatOperator, a CurvatureOperator, a square tensor, or a Params "
                    f"matvec together with like=<Params>; got {type(op).__name__}")


# --------------------------------------------------------------------------------------------
# the Lanczos process
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tridiagonal:
    """T_m from m Lanczos steps: alpha (m,), beta (m−1,), basis Q (m, n) or None, breakdown flag."""

    alpha: np.ndarray
    beta: np.ndarray
    basis: Tensor | None
    breakdown: bool
    beta_last: float  # β_m: the residual coupling of K_m to the rest (0 at breakdown)

    def ritz(self) -> tuple[np.ndarray, np.ndarray]:
        """Eigenvalues θ (m,) ascending and eigenvectors S (m, m) of T_m."""
        if len(self.alpha) == 1:
            return self.alpha.copy(), np.ones((1, 1))
        return eigh_tridiagonal(self.alpha, self.beta)


def _probe_vector(n: int, seed: int, kind: str = "gaussian", dtype=torch.float64) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "rademacher":
        v = torch.randint(0, 2, (n,), generator=g, dtype=torch.int64).to(dtype) * 2 - 1
    elif kind == "gaussian":
        v = torch.randn(n, generator=g, dtype=dtype)
    else:
        raise ValueError(f"probe kind must be 'rademacher' or 'gaussian', got {kind!r}")
    return v


def lanczos(op: Any, n_iter: int, *, v0: Tensor | None = None, seed: int = 0, basis_dtype=torch.float64,
            keep_basis: bool = True, breakdown_tol: float | None = None,
            stop: Callable[[Tridiagonal], bool] | None = None, check_every: int = 10) -> Tridiagonal:
    """Run up to ``n_iter`` Lanczos steps from ``v0`` (default: seeded Gaussian) with full
    reorthogonalization; ``stop(T_j)`` is asked every ``check_every`` steps (early exit).
    """
    A = as_flat_operator(op)
    n = A.n
    m_max = min(int(n_iter), n)
    tol = breakdown_tol if breakdown_tol is not None else n * torch.finfo(basis_dtype).eps
    q = (v0.to(basis_dtype) if v0 is not None else _probe_vector(n, seed, dtype=basis_dtype)).reshape(-1).to(A.device)
    q = q / q.norm()
    Q = torch.empty((m_max, n), dtype=basis_dtype, device=A.device)
    alpha, beta = [], []
    anorm, breakdown, b = 0.0, False, 0.0
    for j in range(m_max):
        Q[j] = q
        w = A.apply(q[:, None])[:, 0]
        a = float(q @ w)
        for _ in range(2):  # full reorthogonalization, twice
            w = w - Q[: j + 1].T @ (Q[: j + 1] @ w)
        b = float(w.norm())
        alpha.append(a)
        anorm = max(anorm, abs(a) + b + (beta[-1] if beta else 0.0))
        if b <= tol * max(anorm, 1e-300) or j + 1 == n:
            breakdown, b = b <= tol * max(anorm, 1e-300), 0.0 if j + 1 == n else b
            break
        beta.append(b)
        q = w / b
        if stop is not None and (j + 1) % check_every == 0:
            T = Tridiagonal(np.array(alpha), np.array(beta[:-1]), None, False, b)
            if stop(T):
                break
    m = len(alpha)
    return Tridiagonal(np.array(alpha), np.array(beta[: m - 1]), Q[:m] if keep_basis else None, breakdown,
                       0.0 if breakdown else b)


# --------------------------------------------------------------------------------------------
# extreme eigenpairs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EigenResult:
    """k Ritz pairs of A: eigenvalues (k,), eigenvectors (Params, or (n,) tensors), residual norms
    ‖A u − θ u‖ (k,) with ‖u‖ = 1, the Lanczos steps taken, convergence and breakdown flags."""

    eigenvalues: np.ndarray
    eigenvectors: list
    residuals: np.ndarray
    n_iter: int
    converged: bool
    breakdown: bool
    message: str
    info: dict

    def to_dict(self) -> dict:
        return {"eigenvalues": self.eigenvalues.tolist(), "residuals": self.residuals.tolist(),
                "n_iter": self.n_iter, "converged": self.converged, "breakdown": self.breakdown,
                "message": self.message, "info": self.info}


def _pick(theta: np.ndarray, k: int, which: str) -> np.ndarray:
    order = {"LA": np.argsort(-theta), "SA": np.argsort(theta), "LM": np.argsort(-np.abs(theta))}[which]
    return order[:k]


def eigsh(op: Any, k: int = 6, which: str = "LA", *, like: Params | None = None, max_iter: int | None = None,
          tol: float = 1e-10, seed: int = 0, return_vectors: bool = True, basis_dtype=torch.float64) -> EigenResult:
    """The k extreme eigenpairs of a symmetric operator (``which``: LA largest, SA smallest
    algebraic, LM largest magnitude), ordered as ``which`` asks.

    Stops when every wanted Ritz pair's residual estimate β_m |s_{m,i}| ≤ tol · max|θ|, at an
    invariant subspace, or after ``max_iter`` steps (default min(n, max(100, 20k))). Residual
    norms are then measured with k more products (true ‖A u − θ u‖, not estimates).
    """
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}")
    A = as_flat_operator(op, like)
    if not 1 <= k <= A.n:
        raise ValueError(f"k must be between 1 and n = {A.n}, got {k}")
    max_iter = min(A.n, max_iter or max(100, 20 * k))

    def converged(T: Tridiagonal) -> bool:
        theta, S = T.ritz()
        if len(theta) < k:
            return False
        idx = _pick(theta, k, which)
        est = abs(T.beta_last) * np.abs(S[-1, idx])
        return bool(np.all(est <= tol * max(np.abs(theta).max(), 1e-300)))

    T = lanczos(A, max_iter, seed=seed, basis_dtype=basis_dtype, stop=converged, check_every=5)
    theta, S = T.ritz()
    idx = _pick(theta, min(k, len(theta)), which)
    U = T.basis.T @ torch.from_numpy(S[:, idx]).to(T.basis)  # (n, k)
    U = U / U.norm(dim=0, keepdim=True)
    R = A.apply(U) - U * torch.as_tensor(theta[idx], dtype=U.dtype, device=U.device)
    res = R.norm(dim=0).double().cpu().numpy()
    ok = T.breakdown or len(T.alpha) == A.n or converged(T)
    msg = (f"invariant subspace of dimension {len(T.alpha)} found: the Ritz values are exact "
           "eigenvalues (multiplicities are not resolved)" if T.breakdown else
           "converged" if ok else f"not converged after {len(T.alpha)} steps (raise max_iter)")
    if len(idx) < k:
        msg += f"; only {len(idx)} of the {k} requested eigenpairs exist in it"
    vecs = [A.unflatten(U[:, i]) if (return_vectors and A.unflatten) else U[:, i] for i in range(len(idx))]
    return EigenResult(theta[idx], vecs if return_vectors else [], res, len(T.alpha), bool(ok), T.breakdown,
                       msg, {**A.info, "which": which, "k": k, "tol": tol, "seed": seed})


# --------------------------------------------------------------------------------------------
# trace and spectral density
# --------------------------------------------------------------------------------------------


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
                     batch: int = 8, like: Params | None = None) -> TraceEstimate:
    """tr(A) by Hutchinson: E[zᵀAz] = tr A for E[zzᵀ] = I; probes z_i seeded by ``seed + i``,
    multiplied ``batch`` at a time (one ``matmat``)."""
    if n_probes < 2:
        raise ValueError("Hutchinson's standard error needs at least 2 probes")
    A = as_flat_operator(op, like)
    samples = []
    for i0 in range(0, n_probes, batch):
        Z = torch.stack([_probe_vector(A.n, seed + i, probe) for i in range(i0, min(i0 + batch, n_probes))], 1)
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
                     sigma: float | None = None, n_grid: int = 1000, like: Params | None = None) -> SpectralDensity:
    """Stochastic Lanczos quadrature: for each probe v̂ (seed + i, unit norm) run ``n_iter``
    Lanczos steps; T = S Θ Sᵀ gives nodes θ_j and weights τ_j = S_{1j}², and
    φ(t) = (1/n_probes) Σ Σ_j τ_j N(t; θ_j, σ²). σ defaults to 1 % of the node range; the grid
    spans the nodes ± 6σ and φ is renormalised to integrate to 1 on it.
    """
    A = as_flat_operator(op, like)
    nodes, weights = [], []
    for i in range(n_probes):
        T = lanczos(A, n_iter, v0=_probe_vector(A.n, seed + i, probe), keep_basis=False)
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


__all__ = ["EigenResult", "FlatOperator", "SpectralDensity", "TraceEstimate", "Tridiagonal", "as_flat_operator",
           "eigsh", "hutchinson_trace", "lanczos", "spectral_density"]

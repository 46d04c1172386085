"""Lanczos (full reorthogonalization, or thick-restarted in O(k·n) memory): extreme
eigenpairs, spectral density (SLQ, no stored basis), trace.

Every algorithm here works on a :class:`FlatOperator` — a symmetric linear map A on R^n given
by a flat torch matvec (n,) → (n,) — and :func:`as_flat_operator` turns the other shapes into
one: a :class:`qgeom.curvature.operator.CurvatureOperator` (anything with ``flat_matvec``/``n_params``),
an object with ``matvec`` over Params plus a ``like`` dict, or a dense symmetric matrix.

Lanczos builds an orthonormal basis Q_m = [q_1 … q_m] of the Krylov space K_m(A, q_1) and the
tridiagonal T_m = Q_mᵀ A Q_m (diagonal α, off-diagonal β), re-orthogonalizing every new vector
against all previous ones twice (classical Gram-Schmidt, "twice is enough"), so the Ritz values
(eigenvalues of T_m, by ``scipy.linalg.eigh_tridiagonal``) carry no spurious copies. The basis
is kept in ``basis_dtype`` (float64 by default; n × m floats). A β_j below
``breakdown_tol · ‖T‖`` means K_j is an invariant subspace: its Ritz values are exact
eigenvalues of A, the run stops and reports it (repeated eigenvalues then appear once).

Memory. Full reorthogonalization stores the basis: m × n in ``basis_dtype`` (ViT-B, n = 86 M,
m = 100: 69 GB in float64, 34 GB in float32). :func:`eigsh` therefore also has a
*thick-restart* Lanczos (Wu & Simon, SIAM J. Matrix Anal. Appl. 22, 2000) whose basis holds at
most ``max_basis`` = max(2k + 1, 20) vectors (ARPACK's default ``ncv``): after ``max_basis``
steps it keeps the ℓ = k + (max_basis − k)/2 wanted Ritz vectors and the residual direction, and
continues Lanczos from there, so memory is O(k·n) whatever the iteration count. Chosen over
scipy's ARPACK through ``to_scipy()`` (implicitly restarted, same O(ncv·n) memory) because ARPACK
keeps its float64 basis in host numpy memory and moves every vector between device and host:
the thick restart keeps a float32 or float64 basis on the operator's device, in torch.
``method="auto"`` picks full reorthogonalization when its basis fits ``memory_budget`` (bytes,
default 4 GiB) and the thick restart otherwise. SLQ needs no basis at all: each probe runs the
plain three-term recurrence (three vectors in memory; Gauss quadrature is stable without
reorthogonalization, Paige 1980, Golub & Meurant 2010), see :func:`spectral_density`.

Tolerance. A float32 operator's products carry relative errors of ~1e-7 · (accumulation
growth), so Ritz residuals stall near 1e-6 ‖A‖ and a 1e-10 target is never met: the default
``tol`` follows the operator's dtype (:func:`default_tol`): 1e-10 for float64, 1e-5 for float32,
1e-2 for bfloat16/float16 — about 100 × the dtype's machine epsilon, floored at 1e-10 (an
eigenvalue's error is then ≲ tol²·‖A‖²/gap, far below the residual).

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
            stop: Callable[[Tridiagonal], bool] | None = None, check_every: int = 10,
            reorthogonalize: bool = True) -> Tridiagonal:
    """Run up to ``n_iter`` Lanczos steps from ``v0`` (default: seeded Gaussian) with full
    reorthogonalization; ``stop(T_j)`` is asked every ``check_every`` steps (early exit).

    ``reorthogonalize=False``: the plain three-term recurrence
    β_j q_{j+1} = A q_j − α_j q_j − β_{j−1} q_{j−1}, holding three n-vectors and no basis
    (``keep_basis`` must be False) — what SLQ needs; the Ritz values may then carry spurious
    copies of converged extremes, which leave Gauss quadrature intact.
    """
    A = as_flat_operator(op)
    n = A.n
    m_max = min(int(n_iter), n)
    tol = breakdown_tol if breakdown_tol is not None else n * torch.finfo(basis_dtype).eps
    q = (v0.to(basis_dtype) if v0 is not None else _probe_vector(n, seed, dtype=basis_dtype)).reshape(-1).to(A.device)
    q = q / q.norm()
    if not reorthogonalize:
        if keep_basis:
            raise ValueError("the three-term recurrence keeps no basis: pass keep_basis=False")
        return _lanczos_three_term(A, q, m_max, tol, stop, check_every)
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


def _lanczos_three_term(A: FlatOperator, q: Tensor, m_max: int, tol: float,
                        stop: Callable[[Tridiagonal], bool] | None, check_every: int) -> Tridiagonal:
    """Lanczos without reorthogonalization: memory q_{j−1}, q_j, w (3 n-vectors), no basis."""
    q_prev = torch.zeros_like(q)
    alpha, beta = [], []
    anorm, breakdown, b = 0.0, False, 0.0
    for j in range(m_max):
        w = A.apply(q[:, None])[:, 0]
        a = float(q @ w)
        w = w - a * q - (beta[-1] if beta else 0.0) * q_prev
        b = float(w.norm())
        alpha.append(a)
        anorm = max(anorm, abs(a) + b + (beta[-1] if beta else 0.0))
        if b <= tol * max(anorm, 1e-300) or j + 1 == A.n:
            breakdown, b = b <= tol * max(anorm, 1e-300), 0.0 if j + 1 == A.n else b
            break
        beta.append(b)
        q_prev, q = q, w / b
        if stop is not None and (j + 1) % check_every == 0 and stop(
                Tridiagonal(np.array(alpha), np.array(beta[:-1]), None, False, b)):
            break
    m = len(alpha)
    return Tridiagonal(np.array(alpha), np.array(beta[: m - 1]), None, breakdown, 0.0 if breakdown else b)


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


EIG_METHODS = ("auto", "full", "thick-restart")


def default_tol(dtype: torch.dtype) -> float:
    """The relative Ritz-residual tolerance a ``dtype`` operator can meet: max(1e-10, 100·eps),
    rounded to 1e-10 (float64), 1e-5 (float32), 1e-2 (bfloat16, float16) — see the module notes."""
    return {torch.float64: 1e-10, torch.float32: 1e-5}.get(dtype, 1e-2)


def _bytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def eigsh(op: Any, k: int = 6, which: str = "LA", *, like: Params | None = None, max_iter: int | None = None,
          tol: float | None = None, seed: int = 0, return_vectors: bool = True, basis_dtype=torch.float64,
          method: str = "auto", max_basis: int | None = None, memory_budget: float = 4 * 2**30) -> EigenResult:
    """The k extreme eigenpairs of a symmetric operator (``which``: LA largest, SA smallest
    algebraic, LM largest magnitude), ordered as ``which`` asks.

    Stops when every wanted Ritz pair's residual estimate β_m |s_{m,i}| ≤ tol · max|θ| (tol
    default: :func:`default_tol` of the operator's dtype), at an invariant subspace, or after
    ``max_iter`` products (default min(n, max(100, 20k)) for ``full``, 3× that for
    ``thick-restart``). Residual norms are then measured with k more products (true
    ‖A u − θ u‖, not estimates) and reported beside the tolerance in ``info``; ``converged``
    also requires them ≤ 10 · tol · max|θ| (a float32 operator's estimates can fall below what
    its products resolve).

    method: ``full`` (one Krylov basis of up to ``max_iter`` vectors, full reorthogonalization),
    ``thick-restart`` (a basis of at most ``max_basis`` vectors, default max(2k + 1, 20)),
    ``auto`` (``full`` when max_iter · n · bytes(basis_dtype) ≤ ``memory_budget``, else
    ``thick-restart``; refused when even k + 2 basis vectors exceed the budget). ``info`` records
    the method, ``basis_vectors`` (rows of the largest basis ever stored) and ``basis_bytes``.
    """
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}")
    if method not in EIG_METHODS:
        raise ValueError(f"method must be one of {EIG_METHODS}, got {method!r}")
    A = as_flat_operator(op, like)
    if not 1 <= k <= A.n:
        raise ValueError(f"k must be between 1 and n = {A.n}, got {k}")
    tol = default_tol(A.dtype) if tol is None else float(tol)
    nbytes = A.n * _bytes(basis_dtype)
    full_iter = min(A.n, max_iter or max(100, 20 * k))
    if method == "auto":
        method = "full" if full_iter * nbytes <= memory_budget else "thick-restart"
        if method == "thick-restart" and max_basis is None:
            max_basis = min(max(2 * k + 1, 20), int(memory_budget // nbytes))
            if max_basis < k + 2:
                raise ValueError(f"memory_budget {memory_budget / 2**30:.3g} GiB holds {int(memory_budget // nbytes)} "
                                 f"basis vectors of {A.n:,} {str(basis_dtype).removeprefix('torch.')} values; "
                                 f"top-{k} needs at least {k + 2} (use basis_dtype=torch.float32 or a larger budget)")

    def converged(T: Tridiagonal) -> bool:
        theta, S = T.ritz()
        if len(theta) < k:
            return False
        idx = _pick(theta, k, which)
        est = abs(T.beta_last) * np.abs(S[-1, idx])
        return bool(np.all(est <= tol * max(np.abs(theta).max(), 1e-300)))

    if method == "full":
        T = lanczos(A, full_iter, seed=seed, basis_dtype=basis_dtype, stop=converged, check_every=5)
        theta, S = T.ritz()
        idx = _pick(theta, min(k, len(theta)), which)
        U = T.basis.T @ torch.from_numpy(S[:, idx]).to(T.basis)  # (n, k)
        ok = T.breakdown or len(T.alpha) == A.n or converged(T)
        steps, breakdown, dim, rows = len(T.alpha), T.breakdown, len(T.alpha), T.basis.shape[0]
    else:
        mb = min(A.n, max_basis or max(2 * k + 1, 20))
        if mb < min(k + 2, A.n):
            raise ValueError(f"max_basis must be at least k + 2 = {k + 2}, got {mb}")
        theta, U, idx, ok, breakdown, steps, dim = _thick_restart(
            A, k, which, tol, mb, min(10**9, max_iter or 3 * max(100, 20 * k)), seed, basis_dtype)
        rows = mb
    U = U / U.norm(dim=0, keepdim=True)
    R = A.apply(U) - U * torch.as_tensor(theta[idx], dtype=U.dtype, device=U.device)
    res = R.norm(dim=0).double().cpu().numpy()
    scale = max(float(np.abs(theta).max()), 1e-300)
    # the stopping test uses residual *estimates*; a low-precision operator can drive those below
    # what its products resolve, so convergence also asks the measured residuals (10× margin
    # for the rounding of the products themselves)
    floor = not (breakdown or len(res) == 0 or bool(res.max() <= 10 * tol * scale))
    stalled, ok = ok and floor, ok and not floor
    msg = (f"invariant subspace of dimension {dim} found: the Ritz values are exact "
           "eigenvalues (multiplicities are not resolved)" if breakdown else
           "converged" if ok else
           f"not converged: the estimates met tol but the measured residuals did not — the operator's "
           f"precision ({str(A.dtype).removeprefix('torch.')}) cannot resolve tol {tol:.0e}" if stalled else
           f"not converged after {steps} products (raise max_iter, or loosen tol)")
    msg += f"; max residual ‖Au − θu‖ = {res.max():.2e} = {res.max() / scale:.1e}·max|θ| (tol {tol:.0e})"
    if len(idx) < k:
        msg += f"; only {len(idx)} of the {k} requested eigenpairs exist in it"
    vecs = [A.unflatten(U[:, i]) if (return_vectors and A.unflatten) else U[:, i] for i in range(len(idx))]
    return EigenResult(theta[idx], vecs if return_vectors else [], res, steps, bool(ok), breakdown, msg,
                       {**A.info, "which": which, "k": k, "tol": tol, "seed": seed, "method": method,
                        "relative_residuals": (res / scale).tolist(), "basis_vectors": int(rows),
                        "basis_bytes": int(rows) * nbytes, "basis_dtype": str(basis_dtype).removeprefix("torch.")})


def _thick_restart(A: FlatOperator, k: int, which: str, tol: float, m: int, max_products: int, seed: int,
                   basis_dtype: torch.dtype) -> tuple[np.ndarray, Tensor, np.ndarray, bool, bool, int, int]:
    """Thick-restart Lanczos (Wu & Simon 2000) with a basis of at most m vectors.

    Invariant: A Q_j = Q_j T_j + r e_jᵀ with Q_j orthonormal (reorthogonalized twice against
    the whole basis) and T_j = Q_jᵀ A Q_j kept as a dense symmetric j × j matrix. At j = m:
    T = S Θ Sᵀ; keep the ℓ = min(m − 1, k + (m − k)//2) wanted Ritz vectors Q S_ℓ (in place,
    by column blocks), append q = r/‖r‖, and T becomes diag(Θ_ℓ) bordered by the couplings
    ‖r‖ S_{m,ℓ} (an arrowhead); Lanczos continues from q. Returns (θ, U (n, k'), the wanted
    indices into θ, converged, breakdown, products, Krylov dimension).
    """
    n, dev = A.n, A.device
    Q = torch.empty((m, n), dtype=basis_dtype, device=dev)
    T = np.zeros((m, m))
    q = _probe_vector(n, seed, dtype=basis_dtype).to(dev)
    Q[0] = q / q.norm()
    start, products, anorm, breakdown = 0, 0, 0.0, False
    brk_tol = n * torch.finfo(basis_dtype).eps
    while True:
        for j in range(start, m):
            w = A.apply(Q[j][:, None])[:, 0]
            products += 1
            h = np.zeros(j + 1)
            for _ in range(2):  # full reorthogonalization, twice
                c = Q[: j + 1] @ w
                w = w - Q[: j + 1].T @ c
                h += c.double().cpu().numpy()
            T[: j + 1, j] = T[j, : j + 1] = h
            b = float(w.norm())
            anorm = max(anorm, float(np.abs(T[: j + 1, : j + 1]).sum(0).max()) + b)
            if b <= brk_tol * max(anorm, 1e-300) or j + 1 == n:
                breakdown, b = b <= brk_tol * max(anorm, 1e-300), 0.0
                break
            if j + 1 < m:
                Q[j + 1] = w / b
                T[j + 1, j] = T[j, j + 1] = b
        jj = j + 1
        theta, S = np.linalg.eigh(T[:jj, :jj])
        idx = _pick(theta, min(k, jj), which)
        est = abs(b) * np.abs(S[jj - 1, idx])
        ok = breakdown or jj == n or bool(np.all(est <= tol * max(np.abs(theta).max(), 1e-300)))
        if ok or products >= max_products:
            Y = torch.from_numpy(S[:, idx]).to(dev, basis_dtype)
            return theta, Q[:jj].T @ Y, idx, ok, breakdown, products, jj
        ell = min(m - 1, k + (m - k) // 2)
        keep = _pick(theta, ell, which)
        Y = torch.from_numpy(S[:, keep]).to(dev, basis_dtype)  # (m, ℓ)
        block = max(1, 2**26 // (m * _bytes(basis_dtype)))  # ~64 MiB of temporaries per block
        for c0 in range(0, n, block):
            Q[:ell, c0 : c0 + block] = Y.T @ Q[:jj, c0 : c0 + block]
        Q[ell] = w / b
        T[:] = 0.0
        T[np.arange(ell), np.arange(ell)] = theta[keep]
        T[:ell, ell] = T[ell, :ell] = b * S[jj - 1, keep]
        start = ell


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
    Lanczos steps of the three-term recurrence (no stored basis: memory 3 n-vectors); T = S Θ Sᵀ gives nodes θ_j and weights τ_j = S_{1j}², and
    φ(t) = (1/n_probes) Σ Σ_j τ_j N(t; θ_j, σ²). σ defaults to 1 % of the node range; the grid
    spans the nodes ± 6σ and φ is renormalised to integrate to 1 on it.
    """
    A = as_flat_operator(op, like)
    nodes, weights = [], []
    for i in range(n_probes):
        T = lanczos(A, n_iter, v0=_probe_vector(A.n, seed + i, probe), keep_basis=False, reorthogonalize=False)
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
           "default_tol", "eigsh", "hutchinson_trace", "lanczos", "spectral_density"]

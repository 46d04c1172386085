"""The k extreme eigenpairs of a symmetric operator by Lanczos: full reorthogonalization, or
thick-restarted in O(k·n) memory.

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
default 4 GiB) and the thick restart otherwise.

Tolerance. A float32 operator's products carry relative errors of ~1e-7 · (accumulation
growth), so Ritz residuals stall near 1e-6 ‖A‖ and a 1e-10 target is never met: the default
``tol`` follows the operator's dtype (:func:`default_tol`): 1e-10 for float64, 1e-5 for float32,
1e-2 for bfloat16/float16 — about 100 × the dtype's machine epsilon, floored at 1e-10 (an
eigenvalue's error is then ≲ tol²·‖A‖²/gap, far below the residual).

Randomness comes only from ``seed`` (the start vector, :func:`qgeom.spectra.lanczos.probe_vector`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from qgeom.params import Params
from qgeom.spectra.lanczos import FlatOperator, Tridiagonal, as_flat_operator, lanczos, probe_vector

WHICH = ("LA", "SA", "LM")


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
          method: str = "auto", max_basis: int | None = None, memory_budget: float = 4 * 2**30,
          n: int | None = None) -> EigenResult:
    """The k extreme eigenpairs of a symmetric operator (``which``: LA largest, SA smallest
    algebraic, LM largest magnitude), ordered as ``which`` asks.

    op: a qgeom curvature operator, a scipy ``LinearOperator``, an operator with ``.shape`` and
    ``@`` (curvlinops), a dense matrix, a plain callable on flat vectors with ``n=<size>``, or a
    Params matvec with ``like=<Params>`` (:func:`qgeom.spectra.lanczos.as_flat_operator`).

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
    A = as_flat_operator(op, like, n)
    if not 1 <= k <= A.n:
        raise ValueError(f"k must be between 1 and n = {A.n}, got {k}")
    tol = default_tol(A.dtype) if tol is None else float(tol)
    nbytes = A.n * _bytes(basis_dtype)
    full_iter = min(A.n, max_iter or max(100, 20 * k))
    if method == "auto":
        method, max_basis = _auto_method(k, A.n, full_iter, nbytes, memory_budget, max_basis, basis_dtype)

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
    msg = _message(breakdown, ok, stalled, dim, steps, A.dtype, tol, res, scale, len(idx), k)
    vecs = [A.unflatten(U[:, i]) if (return_vectors and A.unflatten) else U[:, i] for i in range(len(idx))]
    return EigenResult(theta[idx], vecs if return_vectors else [], res, steps, bool(ok), breakdown, msg,
                       {**A.info, "which": which, "k": k, "tol": tol, "seed": seed, "method": method,
                        "relative_residuals": (res / scale).tolist(), "basis_vectors": int(rows),
                        "basis_bytes": int(rows) * nbytes, "basis_dtype": str(basis_dtype).removeprefix("torch.")})



def _auto_method(k: int, n: int, full_iter: int, nbytes: int, memory_budget: float, max_basis: int | None,
                 basis_dtype: torch.dtype) -> tuple[str, int | None]:
    """``method="auto"``: ``full`` when a basis of ``full_iter`` vectors of ``nbytes`` fits
    ``memory_budget``, else ``thick-restart`` with the largest basis (up to max(2k + 1, 20)
    vectors) the budget holds; (method, max_basis)."""
    method = "full" if full_iter * nbytes <= memory_budget else "thick-restart"
    if method == "thick-restart" and max_basis is None:
        max_basis = min(max(2 * k + 1, 20), int(memory_budget // nbytes))
        if max_basis < k + 2:
            raise ValueError(f"memory_budget {memory_budget / 2**30:.3g} GiB holds {int(memory_budget // nbytes)} "
                             f"basis vectors of {n:,} {str(basis_dtype).removeprefix('torch.')} values; "
                             f"top-{k} needs at least {k + 2} (use basis_dtype=torch.float32 or a larger budget)")
    return method, max_basis


def _message(breakdown: bool, ok: bool, stalled: bool, dim: int, steps: int, dtype: torch.dtype, tol: float,
             res: np.ndarray, scale: float, found: int, k: int) -> str:
    """:attr:`EigenResult.message`: the verdict, the largest measured residual, missing pairs."""
    msg = (f"invariant subspace of dimension {dim} found: the Ritz values are exact "
           "eigenvalues (multiplicities are not resolved)" if breakdown else
           "converged" if ok else
           f"not converged: the estimates met tol but the measured residuals did not — the operator's "
           f"precision ({str(dtype).removeprefix('torch.')}) cannot resolve tol {tol:.0e}" if stalled else
           f"not converged after {steps} products (raise max_iter, or loosen tol)")
    msg += f"; max residual ‖Au − θu‖ = {res.max():.2e} = {res.max() / scale:.1e}·max|θ| (tol {tol:.0e})"
    if found < k:
        msg += f"; only {found} of the {k} requested eigenpairs exist in it"
    return msg


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
    q = probe_vector(n, seed, dtype=basis_dtype).to(dev)
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


__all__ = ["EIG_METHODS", "EigenResult", "WHICH", "default_tol", "eigsh"]

"""Lanczos tridiagonalisation of a symmetric operator, and the flat operators it works on.

Every algorithm of :mod:`qgeom.spectra` works on a :class:`FlatOperator` — a symmetric linear
map A on R^n given by a flat torch matvec (n,) → (n,) — and :func:`as_flat_operator` turns the
other shapes into one: a :class:`qgeom.curvature.operator.CurvatureOperator` (anything with
``flat_matvec``/``n_params``), a scipy ``LinearOperator`` or sparse matrix (numpy, on the CPU), an
object with ``.shape`` (n, n) and ``@`` on torch tensors (curvlinops' operators), a dense
symmetric tensor or numpy array, a plain callable on flat torch vectors together with ``n``,
or an object with ``matvec`` (or a callable) over Params together with a ``like`` dict.

Lanczos builds an orthonormal basis Q_m = [q_1 … q_m] of the Krylov space K_m(A, q_1) and the
tridiagonal T_m = Q_mᵀ A Q_m (diagonal α, off-diagonal β), re-orthogonalizing every new vector
against all previous ones twice (classical Gram-Schmidt, "twice is enough"), so the Ritz values
(eigenvalues of T_m, by ``scipy.linalg.eigh_tridiagonal``) carry no spurious copies. The basis
is kept in ``basis_dtype`` (float64 by default; n × m floats). A β_j below
``breakdown_tol · ‖T‖`` means K_j is an invariant subspace: its Ritz values are exact
eigenvalues of A, the run stops and reports it (repeated eigenvalues then appear once).
Without reorthogonalization (``reorthogonalize=False``) it is the plain three-term recurrence,
three n-vectors in memory and no basis — what SLQ needs (:mod:`qgeom.spectra.density`).

Randomness comes only from ``seed`` (:func:`probe_vector`, a CPU ``torch.Generator``): equal
seeds, equal results.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal
from scipy.sparse import issparse
from scipy.sparse.linalg import LinearOperator, aslinearoperator
from torch import Tensor

from qgeom.params import Params, flatten, unflatten


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


def as_flat_operator(op: Any, like: Params | None = None, n: int | None = None) -> FlatOperator:
    """A :class:`FlatOperator` for ``op`` (see the module docstring for the accepted shapes)."""
    if isinstance(op, FlatOperator):
        return op
    if isinstance(op, np.ndarray):
        op = torch.from_numpy(op)
    if isinstance(op, Tensor):
        if op.dim() != 2 or op.shape[0] != op.shape[1]:
            raise ValueError(f"a dense operator must be a square matrix, got shape {tuple(op.shape)}")
        return FlatOperator(op.shape[0], lambda x: op @ x, lambda X: op @ X, None, op.dtype, op.device, {"dense": True})
    if hasattr(op, "flat_matvec") and hasattr(op, "n_params"):
        return FlatOperator(op.n_params, op.flat_matvec, getattr(op, "flat_matmat", None), op.unflatten,
                            op.dtype, op.device, dict(getattr(op, "info", {})))
    if isinstance(op, LinearOperator) or issparse(op):
        return _from_scipy(aslinearoperator(op))
    if like is not None and (hasattr(op, "matvec") or callable(op)):
        keys, mv = list(like), getattr(op, "matvec", op)
        ref = next(iter(like.values()))
        return FlatOperator(
            sum(v.numel() for v in like.values()),
            lambda x: flatten(mv(unflatten(x, like, keys)), keys),
            unflatten=lambda x: unflatten(x, like, keys), dtype=ref.dtype, device=ref.device,
            info=dict(getattr(op, "info", {})))
    if hasattr(op, "__matmul__") and len(getattr(op, "shape", ())) == 2:
        return _from_matmul(op)
    if callable(op):
        if n is None:
            raise TypeError("a plain callable needs the dimension it acts on: pass n=<size> (flat torch vectors "
                            "(n,) → (n,)) or like=<Params> (Params → Params)")
        return FlatOperator(int(n), lambda x: torch.as_tensor(op(x)), info={"operator": "callable"})
    raise TypeError("expected a qgeom CurvatureOperator, a scipy LinearOperator, an operator with .shape and @ "
                    "(e.g. curvlinops), a square tensor or array, a FlatOperator, a callable with n=<size>, or a "
                    f"Params matvec with like=<Params>; got {type(op).__name__}")


def _square(shape: tuple, what: str) -> int:
    if len(shape) != 2 or shape[0] != shape[1]:
        raise ValueError(f"{what} must be square, got shape {tuple(shape)}")
    return int(shape[0])


def _from_scipy(op: LinearOperator) -> FlatOperator:
    """A scipy ``LinearOperator`` (numpy in and out, on the CPU) as a float64 torch operator."""
    def mm(X: Tensor) -> Tensor:
        return torch.as_tensor(np.asarray(op.matmat(X.cpu().numpy())), dtype=torch.float64).reshape(X.shape)

    def mv(x: Tensor) -> Tensor:
        return torch.as_tensor(np.asarray(op.matvec(x.cpu().numpy())), dtype=torch.float64).reshape(-1)

    return FlatOperator(_square(op.shape, "a scipy LinearOperator"), mv, mm, info={"operator": type(op).__name__})


def _from_matmul(op: Any) -> FlatOperator:
    """An operator with ``.shape`` (n, n) and ``@`` on torch tensors (n,) and (n, k) (curvlinops' operators)."""
    dtype, device = getattr(op, "dtype", torch.float64), getattr(op, "device", torch.device("cpu"))
    if not isinstance(dtype, torch.dtype):
        dtype = torch.float64
    return FlatOperator(_square(tuple(op.shape), type(op).__name__), lambda x: op @ x, lambda X: op @ X,
                        dtype=dtype, device=torch.device(device), info={"operator": type(op).__name__})


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


def probe_vector(n: int, seed: int, kind: str = "gaussian", dtype=torch.float64) -> Tensor:
    """A seeded random vector (n,): ``gaussian`` N(0, 1) or ``rademacher`` ±1 entries, from a CPU
    ``torch.Generator`` seeded with ``seed``."""
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
    q = (v0.to(basis_dtype) if v0 is not None else probe_vector(n, seed, dtype=basis_dtype)).reshape(-1).to(A.device)
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


__all__ = ["FlatOperator", "Tridiagonal", "as_flat_operator", "lanczos", "probe_vector"]

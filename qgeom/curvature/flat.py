"""Flat views of an operator over named parameters: one (P,) vector in place of a Params dict.

:class:`FlatProducts` is what :class:`qgeom.curvature.operator.CurvatureOperator` adds on top of
its Params products: the scope's tensors laid end to end in the order of ``keys`` (the order a
list scope gave, else the parameters' order), products with flat vectors and matrices,
``op @ v`` for either form, and a scipy ``LinearOperator``. A class using it provides ``keys``,
``theta`` (Params on the scope), ``n_params``, ``device``, ``dtype`` and ``_products`` (a list of
checked Params → their products).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator
from torch import Tensor

from qgeom.params import Params, check_finite, flatten, unflatten


class FlatProducts:
    """Flat products (see the module docstring); P = ``n_params``."""

    keys: list[str]
    theta: Params
    n_params: int

    @property
    def shape(self) -> tuple[int, int]:
        """(P, P)."""
        return (self.n_params, self.n_params)

    def flatten(self, v: Params) -> Tensor:
        """v (scope keys) → (P,) in the scope's key order."""
        return flatten(v, self.keys)

    def unflatten(self, x: Tensor) -> Params:
        """(P,) → Params shaped like θ on the scope (operator dtype and device)."""
        return unflatten(x.to(self.device, self.dtype), self.theta, self.keys)

    def _check_flat(self, X: Tensor) -> Tensor:
        if X.shape[0] != self.n_params:
            raise ValueError(f"a flat vector for this operator has P = {self.n_params:,} entries (the scope's tensors "
                             f"end to end, in the order of .keys); got shape {tuple(X.shape)}")
        check_finite({"flat vector": X}, "vector")  # one reduction instead of one per tensor
        return X

    def flat_matvec(self, x: Tensor) -> Tensor:
        """M x for x (P,) → (P,) in the operator's dtype (one finiteness check on the flat vector)."""
        return self.flatten(self._products([self.unflatten(self._check_flat(x))])[0])

    def flat_matmat(self, X: Tensor) -> Tensor:
        """M X for X (P, k) → (P, k), one :meth:`matmat`."""
        X = self._check_flat(X)
        cols = self._products([self.unflatten(X[:, j]) for j in range(X.shape[1])])
        return torch.stack([self.flatten(c) for c in cols], dim=1)

    def __matmul__(self, v: Params | Tensor) -> Params | Tensor:
        """``op @ v``: Params → Params (:meth:`matvec`), (P,) → (P,), (P, k) → (P, k)."""
        if isinstance(v, Mapping):
            return self.matvec(dict(v))
        if isinstance(v, Tensor) and v.dim() in (1, 2):
            return self.flat_matvec(v) if v.dim() == 1 else self.flat_matmat(v)
        raise TypeError(f"op @ v takes Params (name → tensor), a (P,) or a (P, k) tensor (P = {self.n_params:,}); "
                        f"got {type(v).__name__}{f' of shape {tuple(v.shape)}' if isinstance(v, Tensor) else ''}")

    def to_scipy(self) -> LinearOperator:
        """A symmetric ``scipy.sparse.linalg.LinearOperator`` (P × P), float64 numpy in and out."""

        def mv(x: np.ndarray) -> np.ndarray:
            return self.flat_matvec(torch.from_numpy(np.asarray(x, dtype=np.float64).reshape(-1))).double().cpu().numpy()

        def mm(X: np.ndarray) -> np.ndarray:
            return self.flat_matmat(torch.from_numpy(np.asarray(X, dtype=np.float64))).double().cpu().numpy()

        return LinearOperator((self.n_params, self.n_params), matvec=mv, rmatvec=mv, matmat=mm, dtype=np.float64)


__all__ = ["FlatProducts"]

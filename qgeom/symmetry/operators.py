"""Axis operators: an invertible n×n matrix M acting along one axis of a tensor.

:class:`Permutation`, :class:`Scaling` and :class:`BlockLinear` are the matrices a
:class:`~qgeom.symmetry.element.Symmetry` applies tensor by tensor (mode products
``t ×_a M``); :func:`classify` says what a composition of them on one axis is (monomial,
a scalar times an orthogonal matrix, its condition number).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

Action = tuple[str, int, "AxisOp"]  # (parameter name, axis, operator)


def _along(t: Tensor, axis: int, fn) -> Tensor:
    """``fn`` applied to ``t`` viewed as (n, rest) with ``axis`` first; original layout back."""
    moved = t.movedim(axis, 0)
    return fn(moved.reshape(moved.shape[0], -1)).reshape(moved.shape).movedim(0, axis)


class AxisOp:
    """An invertible matrix M (n×n) applied along one tensor axis: t'[i] = Σ_j M[i, j] t[j]."""

    n: int

    def apply(self, t: Tensor, axis: int) -> Tensor:
        raise NotImplementedError

    def inverse(self) -> "AxisOp":
        raise NotImplementedError

    def transpose(self) -> "AxisOp":
        raise NotImplementedError

    def monomial(self) -> tuple[Tensor, Tensor] | None:
        """(src, coef) with (M t)[i] = coef[i] · t[src[i]] if M is monomial, else None."""
        raise NotImplementedError

    def singular_values(self) -> Tensor:
        raise NotImplementedError

    def dense(self) -> Tensor:
        """M as a dense float64 matrix (n, n)."""
        return self.apply(torch.eye(self.n, dtype=torch.float64), 0)


@dataclass(frozen=True, eq=False)
class Permutation(AxisOp):
    """(P t)[i] = t[index[i]] (orthogonal: P⁻¹ = Pᵀ)."""

    index: Tensor

    @property
    def n(self) -> int:
        return self.index.numel()

    def apply(self, t: Tensor, axis: int) -> Tensor:
        return t.index_select(axis, self.index.to(t.device))

    def inverse(self) -> "Permutation":
        return Permutation(torch.argsort(self.index))

    transpose = inverse

    def monomial(self) -> tuple[Tensor, Tensor]:
        return self.index, torch.ones(self.n, dtype=torch.float64)

    def singular_values(self) -> Tensor:
        return torch.ones(self.n, dtype=torch.float64)


@dataclass(frozen=True, eq=False)
class Scaling(AxisOp):
    """(S t)[i] = s[i] · t[i], s nonzero (S = diag(s))."""

    s: Tensor

    def __post_init__(self) -> None:
        if not bool((self.s != 0).all() and torch.isfinite(self.s).all()):
            raise ValueError("a scaling needs finite nonzero factors")

    @property
    def n(self) -> int:
        return self.s.numel()

    def apply(self, t: Tensor, axis: int) -> Tensor:
        shape = [1] * t.dim()
        shape[axis] = -1
        return t * self.s.to(t).reshape(shape)

    def inverse(self) -> "Scaling":
        return Scaling(1.0 / self.s)

    def transpose(self) -> "Scaling":
        return self

    def monomial(self) -> tuple[Tensor, Tensor]:
        return torch.arange(self.n), self.s.double()

    def singular_values(self) -> Tensor:
        return self.s.double().abs()


@dataclass(frozen=True, eq=False)
class BlockLinear(AxisOp):
    """Block-diagonal M = diag(B_0, …, B_{m−1}) on m contiguous blocks of d entries; blocks (m, d, d)."""

    blocks: Tensor

    @property
    def n(self) -> int:
        return self.blocks.shape[0] * self.blocks.shape[1]

    def apply(self, t: Tensor, axis: int) -> Tensor:
        m, d, _ = self.blocks.shape
        b = self.blocks.to(t)
        return _along(t, axis, lambda x: torch.einsum("jab,jbr->jar", b, x.reshape(m, d, -1)).reshape(m * d, -1))

    def inverse(self) -> "BlockLinear":
        return BlockLinear(invert_blocks(self.blocks))

    def transpose(self) -> "BlockLinear":
        return BlockLinear(self.blocks.mT.contiguous())

    def monomial(self) -> tuple[Tensor, Tensor] | None:
        nz = self.blocks != 0
        if not (bool((nz.sum(-1) == 1).all()) and bool((nz.sum(-2) == 1).all())):
            return None
        m, d, _ = self.blocks.shape
        local = nz.to(torch.int64).argmax(-1)  # (m, d)
        coef = self.blocks.gather(-1, local.unsqueeze(-1)).squeeze(-1).double()
        return (local + d * torch.arange(m).unsqueeze(1)).reshape(-1), coef.reshape(-1)

    def singular_values(self) -> Tensor:
        return torch.linalg.svdvals(self.blocks.double()).reshape(-1)


def invert_blocks(blocks: Tensor) -> Tensor:
    """Inverse of each d×d block; exact (reciprocals, transposed) for monomial blocks."""
    nz = blocks != 0
    if bool((nz.sum(-1) == 1).all()) and bool((nz.sum(-2) == 1).all()):
        return torch.where(nz, 1.0 / torch.where(nz, blocks, torch.ones_like(blocks)), torch.zeros_like(blocks)).mT.contiguous()
    return torch.linalg.inv(blocks)


@dataclass(frozen=True)
class AxisClass:
    """What a composed axis map M is: monomial (src, coef) or None; a with M = a·O (O orthogonal)
    or None; its condition number."""

    monomial: tuple[Tensor, Tensor] | None
    ortho_scale: float | None
    cond: float


def classify(ops: list[AxisOp], n: int, rtol: float = 1e-9) -> AxisClass:
    """Classify the product M = ops[-1] ⋯ ops[0] (identity for no ops) of maps on one axis."""
    if not ops:
        return AxisClass((torch.arange(n), torch.ones(n, dtype=torch.float64)), 1.0, 1.0)
    monos = [op.monomial() for op in ops]
    if all(m is not None for m in monos):
        src, coef = monos[0]
        for s2, c2 in monos[1:]:  # (M2 M1 t)[i] = c2[i] c1[s2[i]] t[s1[s2[i]]]
            src, coef = src[s2], c2 * coef[s2]
        mono, sv = (src, coef), coef.abs()
    elif len(ops) == 1:
        mono, sv = None, ops[0].singular_values()
    else:
        dense = ops[0].dense()
        for op in ops[1:]:
            dense = op.apply(dense, 0)
        dense = torch.where(dense.abs() > rtol * dense.abs().max(), dense, torch.zeros_like(dense))
        mono = BlockLinear(dense.unsqueeze(0)).monomial()
        sv = torch.linalg.svdvals(dense)
    lo, hi = float(sv.min()), float(sv.max())
    return AxisClass(mono, (lo + hi) / 2 if hi <= lo * (1 + rtol) else None, hi / lo)

"""Weight matching: find the head / MLP-unit / residual-stream permutation between two ViTs.

Two parameter dicts of the same architecture that differ by an unknown permutation symmetry
(:mod:`qgeom.symmetry`) — or two models fine-tuned from the same start, which differ by little
more — are matched by the weight matching of Git Re-Basin (Ainsworth, Hayase & Srinivasa, ICLR
2023): maximize Σ_t ⟨T_t, (ĝ S)_t⟩ over ĝ = P_res ∘ Π_heads ∘ Σ_mlp by coordinate ascent. With
all permutations but one fixed, the objective is linear in the remaining permutation matrix X:

    Σ_t ⟨T_t, X·S'_t⟩ = Σ_i C[i, X(i)],   C = Σ_t T_t,(i) S'_t,(j)ᵀ  (slices along X's axis),

a linear assignment problem (``scipy.optimize.linear_sum_assignment``). S' is S with the other
current permutations applied. Heads are matched as blocks: a head's slice is its d rows in q, k
and v (and its d columns of proj) together. Sweeps visit the variables in a seeded random order
until none changes.

:func:`matching_demo` is the transfer experiment under a planted permutation of the receiver:
patching ρ_D into the permuted receiver as it is against patching ĝ ρ_D (the matched patch).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import pandas as pd
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from qgeom.params import Params, Scope, norm, patch, quantization_vector, select, sub
from qgeom.quant import QuantSpec, ptq
from qgeom.symmetry import (
    Symmetry, ViTLayout, compose, head_permutation, layout_of, mlp_permutation, random_symmetry, residual_permutation,
)
from qgeom.symmetry.invariance import evaluate

Variable = tuple[str, int]  # ("residual", -1), ("heads", block), ("mlp", block)


@dataclass(frozen=True)
class Matching:
    """ĝ with ĝ(source) ≈ target, its permutations, and the objective ⟨target, ĝ source⟩ per sweep."""

    symmetry: Symmetry
    residual: Tensor
    heads: dict[int, Tensor]
    mlp: dict[int, Tensor]
    objective: list[float]
    sweeps: int
    converged: bool


def permutation_element(model, residual: Tensor, heads: Mapping[int, Tensor], mlp: Mapping[int, Tensor]) -> Symmetry:
    """P_res ∘ Π_heads ∘ Σ_mlp as one element (the three act on different axes, so they commute)."""
    L = layout_of(model)
    return replace(compose(residual_permutation(L, residual), head_permutation(L, dict(heads)), mlp_permutation(L, dict(mlp))),
                   kind="permutation")


def _slices(L: ViTLayout, var: Variable) -> tuple[int, int, list[tuple[str, int]]]:
    """(n items, block size, [(tensor, axis)]) of one permutation variable."""
    kind, i = var
    if kind == "residual":
        g, n, bs = residual_permutation(L, torch.arange(L.embed_dim)), L.embed_dim, 1
    elif kind == "heads":
        g, n, bs = head_permutation(L, {i: torch.arange(L.num_heads)}), L.num_heads, L.head_dim
    else:
        n = L.shapes[f"blocks.{i}.mlp.fc1.weight"][0]
        g, bs = mlp_permutation(L, {i: torch.arange(n)}), 1
    return n, bs, [(name, axis) for name, axis, _ in g.actions]


def _cost(target: Params, source: Params, n: int, bs: int, slices: list[tuple[str, int]]) -> Tensor:
    """C[i, j] = Σ_t ⟨T_t item i, S_t item j⟩, items grouped (groups, n, bs·rest) along each axis."""
    C = torch.zeros(n, n, dtype=torch.float64)
    for name, axis in slices:
        if name not in target or name not in source:
            continue
        T, S = (x[name].double().movedim(axis, 0) for x in (target, source))
        T, S = T.reshape(T.shape[0] // (n * bs), n, -1), S.reshape(S.shape[0] // (n * bs), n, -1)
        C += torch.einsum("gir,gjr->ij", T, S)
    return C


def weight_matching(model, source: Mapping[str, Tensor], target: Mapping[str, Tensor], *, scope: Scope = "backbone",
                    max_sweeps: int = 30, seed: int = 0) -> Matching:
    """ĝ = P_res ∘ Π_heads ∘ Σ_mlp maximizing Σ_t ⟨target_t, (ĝ source)_t⟩ over the tensors of ``scope``.

    ``model`` gives the architecture (:func:`qgeom.symmetry.layout_of`); the head is left out by
    the default scope, so donor and receiver may have different heads.
    """
    L = layout_of(model)
    src, tgt = select(dict(source), scope), select(dict(target), scope)
    perms: dict[Variable, Tensor] = {("residual", -1): torch.arange(L.embed_dim)}
    for i in range(L.depth):
        perms[("heads", i)] = torch.arange(L.num_heads)
        perms[("mlp", i)] = torch.arange(L.shapes[f"blocks.{i}.mlp.fc1.weight"][0])
    plan = {v: _slices(L, v) for v in perms}
    gen = torch.Generator().manual_seed(seed)
    variables, history, converged, sweep = list(perms), [], False, 0

    def element(p: Mapping[Variable, Tensor]) -> Symmetry:
        return permutation_element(L, p[("residual", -1)], {i: p[("heads", i)] for i in range(L.depth)},
                                   {i: p[("mlp", i)] for i in range(L.depth)})

    for sweep in range(1, max_sweeps + 1):
        changed = False
        for j in torch.randperm(len(variables), generator=gen).tolist():
            var = variables[j]
            n, bs, slices = plan[var]
            others = element({**perms, var: torch.arange(n)})
            C = _cost(tgt, others(src), n, bs, slices)
            rows, cols = linear_sum_assignment(C.numpy(), maximize=True)
            new = torch.as_tensor(cols[rows.argsort()], dtype=torch.int64)
            if not torch.equal(new, perms[var]):
                perms[var], changed = new, True
        g = element(perms)
        moved = g(src)
        history.append(sum(float((tgt[k].double() * moved[k].double()).sum()) for k in tgt))
        if not changed:
            converged = True
            break
    g = element(perms)
    return Matching(replace(g, kind="weight_matching"), perms[("residual", -1)],
                    {i: perms[("heads", i)] for i in range(L.depth)}, {i: perms[("mlp", i)] for i in range(L.depth)},
                    history, sweep, converged)


def random_permutation_element(model, seed: int = 0) -> Symmetry:
    """A random P_res ∘ Π_heads ∘ Σ_mlp (every block), e.g. to plant in a receiver."""
    parts = [random_symmetry(model, k, seed=seed + i) for i, k in
             enumerate(("residual_permutation", "head_permutation", "mlp_permutation"))]
    return replace(compose(*parts), kind="permutation")


def matched_patch(model, receiver: Mapping[str, Tensor], donor: Mapping[str, Tensor], rho_D: Mapping[str, Tensor],
                  lam: float = 1.0, **matching_kwargs) -> tuple[Params, Matching]:
    """θ_R + λ ĝ ρ_D with ĝ from :func:`weight_matching` of the donor onto the receiver."""
    m = weight_matching(model, donor, receiver, **matching_kwargs)
    return patch(receiver, m.symmetry(rho_D), lam), m


def matching_demo(model: nn.Module, donor_ft: Mapping[str, Tensor], donor_qat: Mapping[str, Tensor],
                  receiver_ft: Mapping[str, Tensor], batches: Sequence[tuple[Tensor, Tensor]], *,
                  spec: QuantSpec | None = None, lam: float = 1.0, scope: Scope = "backbone", seed: int = 0) -> dict:
    """Transfer into a receiver that was permuted by a random g (the same function):

    * ``receiver``                 θ_R, FP and after PTQ;
    * ``patch, same basis``        θ_R + λρ_D (the usual transfer, ρ_D = θ_D,QAT − θ_D on ``scope``);
    * ``permuted, no alignment``   gθ_R + λρ_D — ρ_D lands in the wrong basis;
    * ``permuted, aligned``        gθ_R + λĝρ_D with ĝ = weight matching of θ_D onto gθ_R
                                   (the matched patch).

    When ĝ = g the matched patch *is* g(θ_R + λρ_D), so its FP and PTQ numbers equal the
    same-basis patch's (g is a function and quantizer symmetry). ``model`` is the receiver's
    architecture (its head); ``batches`` its evaluation data. Returns a dict: ``table`` (pandas:
    variant, fp_loss, fp_acc, ptq_loss, ptq_acc), ``recovered`` (ĝ = g on the scope),
    ``identity_error`` ‖gθ_R + λĝρ_D − g(θ_R + λρ_D)‖ / ‖g(θ_R + λρ_D)‖, ``matching``.
    """
    spec = spec or QuantSpec()
    rho_D = quantization_vector(donor_qat, donor_ft, scope)
    g = random_permutation_element(model, seed)
    permuted = g(receiver_ft)
    matched, m = matched_patch(model, permuted, donor_ft, rho_D, lam, scope=scope, seed=seed)
    reference = patch(receiver_ft, rho_D, lam)
    variants = {"receiver": receiver_ft, "receiver, permuted": permuted, "patch, same basis": reference,
                "permuted, no alignment": patch(permuted, rho_D, lam), "permuted, aligned": matched}
    rows = []
    for name, theta in variants.items():
        _, fl, fa = evaluate(model, theta, batches)
        _, ql, qa = evaluate(model, ptq(theta, spec), batches)
        rows.append(dict(variant=name, fp_loss=fl, fp_acc=fa, ptq_loss=ql, ptq_acc=qa))
    gref = g(reference)
    src = select(dict(receiver_ft), scope)
    recovered = all(torch.equal(a, b) for a, b in zip(m.symmetry(src).values(), g(src).values()))
    return dict(table=pd.DataFrame(rows), recovered=recovered,
                identity_error=norm(sub(matched, gref)) / max(norm(gref), 1e-300), matching=m)

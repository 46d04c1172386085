"""The surrogate term of the gap (proofs/07_surrogate_term.md): the true PTQ loss against the smooth STE
surrogate that Propositions 2′–2″ expand.

With θ_R (receiver), θ_Q = θ_R,QAT, ρ_R, a direction x on the scope and P = post-training quantization:

    true      L_true(x) = L(P(θ_R + x)),          surrogate  g(x) = L(θ̂ + x − ρ_R),  θ̂ = P(θ_Q),
    Δ_x = P(θ_R + x) − (θ̂ + x − ρ_R)  (the point discrepancy),   D(x) = L_true(x) − g(x).

On quantized coordinates Δ_x = b_x + e(θ_R + x) − e(θ_Q) with e = P − id and b_x = (θ_R + x) − (θ_Q + x − ρ_R)
(roundoff of θ_R + ρ_R − θ_Q in scope, θ_R − θ_Q off the scope: the head, and the unquantized tensors
of a ``quantized`` scope); elsewhere Δ_x = b_x. For the symmetric unclipped grid |e_ij| ≤ s_i/2
(no clamp is active), so |Δ_x| ≤ m_x := |b_x| + (s(θ_R + x) + s(θ_Q))/2 entrywise, from row scales alone.
Proposition 7 (proofs/07):

    R − R_sur = [(1 − R_sur) D(0) + R_sur D(ρ_R) − D(p)] / G_R,true          (exact; p = λ*ρ_D)
    |D(x) − ∇L(ŷ_x)ᵀΔ_x| ≤ ½ β_x ‖Δ_x‖²,   ŷ_x = θ̂ + x − ρ_R,   β_x = sup_t |Δ_xᵀ∇²L(ŷ_x + tΔ_x)Δ_x| / ‖Δ_x‖²
    |D(x)| ≤ A_x + ½ β_x B_x,   A_x = Σ |∇L(ŷ_x)| m_x,   B_x = Σ m_x²

so |R − R_sur| ≤ bound_first + β·bound_second with β = max_x β_x. The a-priori bound is loose by the
cancellation in ∇Lᵀ(e − e′) (entries of both signs): it is a worst case over every admissible error.
The measured account is the Taylor series in the known Δ_x: F_x = ∇L(ŷ_x)ᵀΔ_x (first order) and
Q_x = ½Δ_xᵀ∇²L(ŷ_x)Δ_x (second order, one Hessian product), whose predictions of R − R_sur are
``first_order`` and ``second_order``. :func:`surrogate_point` measures one x (two losses, one gradient,
one Hessian product, all through one :class:`~qgeom.curvature.operator.CurvatureOperator` at ŷ_x); :func:`surrogate_terms` combines three points (pure formula).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from qgeom.curvature.operator import CurvatureOperator
from qgeom.curvature.probe import Batch
from qgeom.params import Params, in_scope
from qgeom.quant import QuantSpec, ptq, quantization_scale

POINTS = ("0", "R", "p")
#: the terms returned by :func:`surrogate_terms`, in table order
SURROGATE_TERMS = ("R", "R_surrogate", "G_R_true", "gap", "first_order", "second_order", "explained_first_order",
                   "explained_second_order", "bound_first", "bound_second", "beta_implied",
                   *(f"{q}{x}" for q in "DFQABE" for x in POINTS))


def error_bound(theta: Params, spec: QuantSpec) -> Params:
    """s/2 for every entry of each quantized tensor (its scale group's step over two): |P(θ) − θ| ≤ it.
    Only for the symmetric unclipped grid (the default), where no clamp is active."""
    if not spec.symmetric or spec.clip != "none":
        raise ValueError("the entrywise bound |e| <= s/2 needs the symmetric, unclipped grid")
    out = {}
    for k, w in theta.items():
        if in_scope(k, w, "quantized"):
            s = quantization_scale(w, spec).double()
            out[k] = (s.reshape(-1, 1).expand(-1, w.numel() // s.numel()).reshape(w.shape) / 2)
    return out


def surrogate_point(model: nn.Module, probe: Sequence[Batch], theta_R: Params, theta_Q: Params, rho_R: Params,
                    x: Params, spec: QuantSpec, theta_hat: Params | None = None) -> dict[str, float]:
    """D, F = ∇L(ŷ_x)ᵀΔ_x, A, B, E = ‖Δ_x‖² and the two losses at one direction x (``rho_R`` and ``x`` on
    the scope; θ_R and θ_Q full parameter dicts)."""
    theta_hat = ptq(theta_Q, spec) if theta_hat is None else theta_hat
    x = {k: v.to(theta_R[k].dtype) for k, v in x.items()}  # vectors may be float64, the model float32
    rho_R = {k: v.to(theta_R[k].dtype) for k, v in rho_R.items()}
    true_pt = ptq({k: v + x[k] if k in x else v for k, v in theta_R.items()}, spec)
    sur_pt = {k: v + x.get(k, 0) - rho_R.get(k, 0) if k in x or k in rho_R else v for k, v in theta_hat.items()}
    op = CurvatureOperator(model, sur_pt, probe, metric="hessian", scope="all")
    deltas = {k: true_pt[k] - sur_pt[k] for k in op.keys}
    l_sur, l_true, grad = op.loss(), op.loss(deltas), op.gradient()
    Q = 0.5 * sum(float((deltas[k].double() * hv.double()).sum()) for k, hv in op.matvec(deltas).items())
    bound_R = error_bound({k: v + x[k] if k in x else v for k, v in theta_R.items()}, spec)
    bound_Q = error_bound(theta_Q, spec)
    F_, A, B, E = 0.0, 0.0, 0.0, 0.0
    for k, gk in grad.items():
        delta = deltas[k].double()
        b = (theta_R[k] + x.get(k, 0) - theta_Q[k] - x.get(k, 0) + rho_R.get(k, 0)).double().abs()
        m = b + bound_R[k] + bound_Q[k] if k in bound_R else b
        g = gk.double()
        F_ += float((g * delta).sum())
        A += float((g.abs() * m).sum())
        B += float((m * m).sum())
        E += float((delta * delta).sum())
    return dict(L_true=l_true, L_sur=l_sur, D=l_true - l_sur, F=F_, Q=Q, A=A, B=B, E=E)


def surrogate_terms(at0: dict[str, float], atR: dict[str, float], atp: dict[str, float]) -> dict[str, float]:
    """Proposition 7's terms from the three points x = 0, ρ_R, λ*ρ_D (dicts of :func:`surrogate_point`)."""
    pts = dict(zip(POINTS, (at0, atR, atp)))
    G_R, G_D = at0["L_sur"] - atR["L_sur"], at0["L_sur"] - atp["L_sur"]
    G_Rt, G_Dt = at0["L_true"] - atR["L_true"], at0["L_true"] - atp["L_true"]
    out = {f"{q}{x}": pts[x][q] for q in "DFQABE" for x in POINTS}
    r_sur = G_D / G_R if G_R != 0 else math.nan
    r_true = G_Dt / G_Rt if G_Rt != 0 else math.nan
    w = (1 - r_sur, r_sur, -1.0)  # R − R_sur = Σ_x w_x D(x) / G_R,true

    def combine(q: str, absolute: bool = False) -> float:
        vals = [sum(pts[x][c] for c in q) for x in POINTS]
        num = sum(abs(c) * v for c, v in zip(w, vals)) if absolute else sum(c * v for c, v in zip(w, vals))
        return num / abs(G_Rt) if absolute else num / G_Rt

    gap = r_true - r_sur
    first, second = combine("F"), combine("FQ")

    def explained(pred: float) -> float:
        return 1 - abs(gap - pred) / abs(gap) if gap != 0 else math.nan

    out.update(R=r_true, R_surrogate=r_sur, G_R_true=G_Rt, gap=gap, first_order=first, second_order=second,
               explained_first_order=explained(first), explained_second_order=explained(second),
               bound_first=combine("A", True), bound_second=combine("B", True) / 2,
               beta_implied=max(2 * abs(p["D"] - p["F"]) / p["E"] if p["E"] > 0 else 0.0 for p in pts.values()))
    return out


__all__ = ["POINTS", "SURROGATE_TERMS", "error_bound", "surrogate_point", "surrogate_terms"]

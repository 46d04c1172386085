"""The terms of Proposition 2′ (proofs/02_second_order.md): how far the measured gain of a patch
can move from cos²_M times the receiver's own gain, for any symmetric metric M.

g(δ) is the receiver's smooth objective at θ + δ − ρ_R around the expansion point ρ_R (for the
STE surrogate of 02: the ``fp`` loss at θ̂ = Q_b(θ_R,QAT)), s = ∇g(ρ_R), H = ∇²g(ρ_R), M the
metric of the cosine (GGN by default), κ = cos²_M(ρ_D, ρ_R), λ* = ⟨ρ_D, ρ_R⟩_M / ⟨ρ_D, ρ_D⟩_M,
Δ = λ*ρ_D − ρ_R, G_R = g(0) − g(ρ_R), G_D = g(0) − g(λ*ρ_D). The exact identity

    G_D − κ G_R = curvature + gradient + remainder,
    curvature = ½[(1−κ) ρ_Rᵀ(H−M)ρ_R − Δᵀ(H−M)Δ],   gradient = −sᵀ((1−κ)ρ_R + Δ),
    remainder = (1−κ) T(0) − T(λ*ρ_D),   T = the Taylor remainder of g at ρ_R after 2 terms,

and |T(x)| ≤ (L/6)‖x − ρ_R‖³ give Proposition 2′:

    |G_D − κ G_R| ≤ L·cubic + ½[|1−κ| |ρ_Rᵀ(H−M)ρ_R| + |Δᵀ(H−M)Δ|] + |sᵀ((1−κ)ρ_R + Δ)|,
    cubic = (|1−κ| ‖ρ_R‖³ + ‖Δ‖³) / 6.

Gauge-invariant form (Proposition 2″, proofs/02): with M ⪰ 0 and L_M the Hessian's Lipschitz constant
measured in the M-norm, |yᵀ(∇²g(x+ty) − ∇²g(x))y| ≤ L_M t ‖y‖_M³ on the two segments, and
‖Δ‖²_M = c(1−κ) (c = ‖ρ_R‖²_M), the remainder obeys |remainder| ≤ L_M·cubic_M,

    cubic_M = c^{3/2} (1−κ)(1 + √(1−κ)) / 6,

which vanishes as κ → 1 and, like κ, the curvature and gradient terms and L_M, is invariant under
every level-1 linear symmetry (the Euclidean ‖ρ_R‖, ‖Δ‖ and L are not). ``L_M_implied`` =
|remainder| / cubic_M is the smallest L_M consistent with the measured remainder.

Every term comes from 2×2 forms (⟨·,·⟩_M, ⟨·,·⟩_H, Euclidean) of ρ_D, ρ_R and the directional
gradients sᵀρ: two products with M, two with H, one gradient. With the three losses g(0),
g(ρ_R), g(λ*ρ_D) the identity also measures the cubic remainder and the smallest L consistent
with it (``L_implied``). :func:`second_order_terms` is the pure formula; :func:`pair_bound_terms`
evaluates it with curvature operators; :func:`segment_lipschitz` estimates L along a segment
from finite differences of Hessian forms.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from torch import nn

from qgeom.curvature.operator import CurvatureOperator
from qgeom.curvature.probe import Batch
from qgeom.params import Params, Scope, inner, norm

NAN = float("nan")

#: the terms returned by :func:`second_order_terms`, in table order
TERMS = ("kappa", "lam_star", "norm_rho_R", "norm_Delta", "cubic", "norm_M_rho_R", "cubic_M", "curvature",
         "curvature_bound", "gradient", "G_R", "G_D", "gap", "remainder", "L_implied", "L_M_implied", "recovery")


def _quad(X: np.ndarray, lam: float) -> float:
    """Δᵀ X Δ for Δ = λ ρ_D − ρ_R from the 2×2 form X (order D, R)."""
    return lam**2 * X[0, 0] - 2 * lam * X[0, 1] + X[1, 1]


def second_order_terms(K_M: np.ndarray, K_H: np.ndarray, K_E: np.ndarray, grad_dots: Sequence[float],
                       losses: Sequence[float] | None = None) -> dict[str, float]:
    """Proposition 2′'s terms from 2×2 forms of (ρ_D, ρ_R) under M, H and the Euclidean product,
    and grad_dots = (sᵀρ_D, sᵀρ_R). losses = (g(0), g(ρ_R), g(λ*ρ_D)) adds the gains, the gap
    G_D − κG_R, the remainder gap − curvature − gradient and L_implied = |remainder| / cubic.

    Forms are symmetrised; NaN everywhere when ⟨ρ_D,ρ_D⟩_M ≤ 0 or ⟨ρ_R,ρ_R⟩_M ≤ 0 (κ undefined).
    The bound for a Lipschitz constant L is :func:`bound` (terms, L).
    """
    K_M, K_H, K_E = (0.5 * (np.asarray(K, np.float64) + np.asarray(K, np.float64).T) for K in (K_M, K_H, K_E))
    a, b, c = K_M[0, 0], K_M[0, 1], K_M[1, 1]
    out = dict.fromkeys(TERMS, NAN)
    if not (a > 0 and c > 0):
        return out
    lam, kappa = b / a, b * b / (a * c)
    one_k = 1.0 - kappa
    sD, sR = (float(x) for x in grad_dots)
    nR, nDelta = math.sqrt(max(K_E[1, 1], 0.0)), math.sqrt(max(_quad(K_E, lam), 0.0))
    curv_R = K_H[1, 1] - K_M[1, 1]
    curv_D = _quad(K_H, lam) - _quad(K_M, lam)
    s_delta = lam * sD - sR
    out.update(kappa=kappa, lam_star=lam, norm_rho_R=nR, norm_Delta=nDelta,
               cubic=(abs(one_k) * nR**3 + nDelta**3) / 6, norm_M_rho_R=math.sqrt(c),
               cubic_M=c**1.5 * one_k * (1 + math.sqrt(one_k)) / 6 if one_k >= 0 else NAN,
               curvature=0.5 * (one_k * curv_R - curv_D),
               curvature_bound=0.5 * (abs(one_k) * abs(curv_R) + abs(curv_D)),
               gradient=-(one_k * sR + s_delta))
    if losses is not None:
        g0, gR, gp = (float(x) for x in losses)
        G_R, G_D = g0 - gR, g0 - gp
        gap = G_D - kappa * G_R
        rem = gap - out["curvature"] - out["gradient"]
        out.update(G_R=G_R, G_D=G_D, gap=gap, remainder=rem,
                   L_implied=abs(rem) / out["cubic"] if out["cubic"] > 0 else NAN,
                   L_M_implied=abs(rem) / out["cubic_M"] if out["cubic_M"] > 0 else NAN,
                   recovery=G_D / G_R if G_R != 0 else NAN)
    return out


def bound(terms: dict[str, float], lipschitz: float, const: float = 1 / 6) -> float:
    """Proposition 2′'s right-hand side L·cubic + curvature_bound + |gradient|.

    ``const`` replaces the Taylor constant 1/6 (only to show that a smaller one fails)."""
    return lipschitz * terms["cubic"] * (6 * const) + terms["curvature_bound"] + abs(terms["gradient"])


def bound_M(terms: dict[str, float], lipschitz_M: float, const: float = 1 / 6) -> float:
    """Proposition 2″'s right-hand side L_M·cubic_M + curvature_bound + |gradient| (gauge invariant;
    ``const`` replaces the Taylor constant 1/6, only to show that a smaller one fails)."""
    return lipschitz_M * terms["cubic_M"] * (6 * const) + terms["curvature_bound"] + abs(terms["gradient"])


def _forms(op: CurvatureOperator, vs: list[Params]) -> np.ndarray:
    MV = op.matmat(vs)
    return np.array([[inner(x, My) for My in MV] for x in vs])


def pair_bound_terms(op_M: CurvatureOperator, op_H: CurvatureOperator, rho_D: Params, rho_R: Params,
                     losses: bool = True) -> dict[str, float]:
    """:func:`second_order_terms` for one pair: 2 products with M, 2 with H (the Hessian at the
    same point and objective), one gradient, and (``losses``) three loss evaluations
    g(0) = L(θ − ρ_R), g(ρ_R) = L(θ), g(λ*ρ_D) = L(θ + Δ).

    The operators are at the expansion point θ = θ_R + ρ_R of a *smooth* objective: for the STE
    surrogate of 02, the ``fp`` loss at θ̂ = Q_b(θ_R,QAT) (its gradient, Hessian and GGN are the
    STE ones). An ``ste`` operator is refused: its loss along a shift is the piecewise-constant
    L(Q_b(θ + δ)), for which no Taylor bound holds ((B1)/(B4) fail).
    """
    if op_H.metric != "hessian":
        raise ValueError(f"op_H must be a Hessian operator, got metric {op_H.metric!r}")
    for k in ("objective", "expansion_point", "probe", "scope"):
        if op_M.info[k] != op_H.info[k]:
            raise ValueError(f"op_M and op_H differ in {k}: {op_M.info[k]!r} vs {op_H.info[k]!r}")
    if op_H.objective == "ste":
        raise ValueError("pair_bound_terms needs a smooth objective: use the fp objective at Q_b(θ_QAT) "
                         "(the STE surrogate of proofs/02), not objective='ste'")
    vs = [rho_D, rho_R]
    K_M, K_H = _forms(op_M, vs), _forms(op_H, vs)
    K_E = np.array([[inner(x, y) for y in vs] for x in vs])
    g = op_H.gradient()
    t = second_order_terms(K_M, K_H, K_E, (inner(rho_D, g), inner(rho_R, g)))
    if losses and math.isfinite(t["lam_star"]):
        lam = t["lam_star"]
        delta = {k: lam * rho_D[k] - rho_R[k] for k in rho_R}
        vals = (op_H.loss({k: -v for k, v in rho_R.items()}), op_H.loss(), op_H.loss(delta))
        t = second_order_terms(K_M, K_H, K_E, (inner(rho_D, g), inner(rho_R, g)), vals)
    return t


def segment_lipschitz(model: nn.Module, theta: Params, batches: Sequence[Batch], start: Params, step: Params, *,
                      scope: Scope | Sequence[str] | None = None, n: int = 8, step_norm: float | None = None) -> float:
    """Estimate of the Hessian's Lipschitz constant along the segment θ + start + t·step, t ∈ [0, 1]:
    max_t |φ''(t) − φ''(0)| / (t ‖step‖³) with φ''(t) = stepᵀ H(θ + start + t·step) step, from n + 1
    Hessian forms (``fp`` objective) on a uniform grid. Only this directional constant enters the
    Taylor remainder along the segment (02, Lemma), so it may replace L there; a grid maximum is an
    estimate (a lower bound of the supremum), not a certificate. ``step_norm`` replaces ‖step‖ (the
    Euclidean norm): with ‖step‖_M it estimates L_M of Proposition 2″ along the segment.
    """
    keys = list(step) if scope is None else scope

    def phi2(t: float) -> float:
        at = dict(theta)
        for k in step:
            at[k] = theta[k] + start[k] + t * step[k]
        op = CurvatureOperator(model, at, batches, metric="hessian", objective="fp", scope=keys)
        return inner(step, op.matvec(step))

    ns = norm(step) if step_norm is None else float(step_norm)
    if ns == 0:
        return 0.0
    base = phi2(0.0)
    return max(abs(phi2(k / n) - base) / ((k / n) * ns**3) for k in range(1, n + 1))


def gap_decomposition(geometry, metric: str = "ggn", scope: str | None = None):
    """Per off-diagonal pair of a transfer run's geometry table: the gap between the measured PTQ
    loss recovery R and κ = cos²_M, split by Proposition 2′ (all ÷ the surrogate's G_R):

        R − κ = curvature/G_R + gradient/G_R + remainder/G_R + (R − R_surrogate),

    the last term the surrogate mismatch (the true PTQ loss is not the smooth STE surrogate).
    Columns: seed, bits, scope, receiver, donor, kappa, R, R_surrogate, curvature, gradient,
    remainder, surrogate, explained = 1 − |R − κ − (curvature + gradient)| / |R − κ| (how much of
    the gap the two measured terms account for; negative when they overshoot). Where the table has
    Proposition 7's rows (proofs/07): surrogate_first_order, surrogate_second_order (Taylor predictions
    of the surrogate term from the known point discrepancies), surrogate_bound_first (its a-priori
    first-order bound from the row scales) and explained_with_surrogate (as ``explained``, with the
    second-order surrogate prediction added to the two measured terms).
    """
    g = geometry if scope is None else geometry[geometry.scope == scope]
    keys = ["seed", "bits", "scope", "receiver", "donor"]
    p2 = g[(g.objective == "prop2") & (g.metric == metric)]
    wide = p2.assign(q=p2.quantity.str.removeprefix("p2_")).pivot_table(index=keys, columns="q", values="value",
                                                                       dropna=False).reset_index()
    rec = g[(g.quantity == "recovery") & (g.metric == f"{metric}_ste")][keys + ["value"]].rename(columns={"value": "R"})
    out = wide.merge(rec, on=keys)
    out = out[out.receiver != out.donor]
    GR = out["G_R"]
    res = pd.DataFrame({k: out[k] for k in keys})
    res["kappa"], res["R"], res["R_surrogate"] = out["kappa"], out["R"], out["recovery"]
    for k in ("curvature", "gradient", "remainder"):
        res[k] = out[k] / GR
    res["surrogate"] = res.R - res.R_surrogate
    gap = res.R - res.kappa
    res["explained"] = 1 - (gap - res.curvature - res.gradient).abs() / gap.abs()
    sur = g[(g.objective == "surrogate") & (g.metric == metric)]
    if len(sur):  # Proposition 7 (proofs/07): the surrogate term's Taylor account and a-priori bound
        wide = sur.assign(q=sur.quantity.str.removeprefix("sur_")).pivot_table(
            index=keys, columns="q", values="value", dropna=False).reset_index()
        cols = {"first_order": "surrogate_first_order", "second_order": "surrogate_second_order",
                "bound_first": "surrogate_bound_first"}
        res = res.merge(wide[keys + list(cols)].rename(columns=cols), on=keys, how="left")
        gap = res.R - res.kappa  # merge renumbers the rows
        res["explained_with_surrogate"] = 1 - (gap - res.curvature - res.gradient - res.surrogate_second_order
                                               ).abs() / gap.abs()
    return res.reset_index(drop=True)


__all__ = ["TERMS", "bound", "bound_M", "gap_decomposition", "pair_bound_terms", "second_order_terms", "segment_lipschitz"]

"""Geometry of quantization vectors under a curvature metric M (proofs/01_optimal_scale.md).

⟨u, v⟩_M = uᵀ M v;  cos_M(u, v) = ⟨u, v⟩_M / √(⟨u, u⟩_M ⟨v, v⟩_M);
λ* = ⟨ρ_D, ρ_R⟩_M / ⟨ρ_D, ρ_D⟩_M (the minimizer of the quadratic model along ρ_D);
recovered fraction = cos²_M(ρ_D, ρ_R) (Proposition 1).

M is a :class:`qgeom.curvature.operator.CurvatureOperator` (Hessian, GGN or Fisher of the ``fp`` or
``ste`` objective). Vectors are Params keyed by the operator's scope or flat (P,) tensors in the
order of its ``keys``; messages call them u, v (or the names given) — ρ_D, ρ_R above are the
transfer experiment's reading. Every result carries the operator's ``info`` — metric, objective,
expansion point hash, scope, probe-set hash — and its ``to_dict()`` is JSON-ready. A cosine is
defined only where both quadratic forms are positive; otherwise the result is *indefinite*: value
NaN, ``indefinite=True`` and a message saying which form failed — never a silent number; with
``allow_indefinite=True`` the value is the signed ratio instead, still flagged, the forms beside
it (:mod:`qgeom.curvature.forms`). The same for λ* when ⟨u, u⟩_M ≤ 0 (the quadratic model has
no minimizer). Where several products are
at hand (:func:`metric_cosine`, :func:`gram`, :func:`geometry_of_pair`,
:func:`eigenbasis_projection`), a form at roundoff level, ⟨w, w⟩_M ≤ 16·eps·s·‖w‖² with
s = max_i ‖M v_i‖ / ‖v_i‖ (a lower bound of ‖M‖), counts as zero: w lies in a null direction of
M (e.g. the key biases, which the function ignores) and a "positive" 1e-34 must not become a
λ* of 1e17. All sums are float64; N vectors cost N products (one ``matmat``), never N² — and
a GGN or Fisher Gram costs only N forward-mode passes (:func:`gram_matrix`, route ``jvp``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from qgeom.curvature.forms import (NAN, FormQuantities, GeometryResult, cosine_of_forms, form_quantities,
                                   null_thresholds, scale_of_forms, to_builtins)
from qgeom.curvature.losses import LossFn
from qgeom.curvature.operator import CurvatureOperator
from qgeom.params import Params, Scope, check_compatible, inner, norm
from qgeom.quant import QuantSpec


def as_vector(op: Any, v: Params | Tensor) -> Params:
    """v as Params on the operator's scope: Params as given, a flat (P,) tensor split in the order
    of ``op.keys`` (:meth:`~qgeom.curvature.flat.FlatProducts.unflatten`)."""
    if isinstance(v, Tensor):
        return op.unflatten(v)
    if isinstance(v, Mapping):
        return v if isinstance(v, dict) else dict(v)
    raise TypeError(f"a vector is Params (name → tensor) or a flat (P,) tensor, got {type(v).__name__}")


def _named(op: Any, vectors: Sequence[Params | Tensor] | Mapping[str, Params | Tensor]
           ) -> tuple[list[str], list[Params]]:
    """(names, Params) of a list (names v0, v1, …) or a name → vector mapping of vectors."""
    if isinstance(vectors, Mapping):
        return list(vectors), [as_vector(op, v) for v in vectors.values()]
    return [f"v{i}" for i in range(len(vectors))], [as_vector(op, v) for v in vectors]


# ---- inner products, cosines, scales -------------------------------------------------------


def metric_inner(op: CurvatureOperator, u: Params | Tensor, v: Params | Tensor) -> GeometryResult:
    """⟨u, v⟩_M = uᵀ (M v): one product."""
    u, v = as_vector(op, u), as_vector(op, v)
    return GeometryResult("metric_inner", inner(u, op.matvec(v)), info=dict(op.info))


def metric_cosine(op: CurvatureOperator, u: Params | Tensor, v: Params | Tensor, *,
                  allow_indefinite: bool = False) -> GeometryResult:
    """cos_M(u, v) from one ``matmat([u, v])``; ⟨u,v⟩_M is the mean of uᵀMv and vᵀMu.

    An indefinite form gives NaN, or with ``allow_indefinite`` the signed ratio
    ⟨u,v⟩_M/√(|⟨u,u⟩_M|·|⟨v,v⟩_M|) (flagged; :mod:`qgeom.curvature.forms`); terms: the forms."""
    u, v = as_vector(op, u), as_vector(op, v)
    Mu, Mv = op.matmat([u, v])
    uu, vv, uMv, vMu = inner(u, Mu), inner(v, Mv), inner(u, Mv), inner(v, Mu)
    val, bad, msg = cosine_of_forms(0.5 * (uMv + vMu), uu, vv, floors=null_thresholds(op, [u, v], [Mu, Mv]),
                                    allow_indefinite=allow_indefinite)
    return GeometryResult("metric_cosine", val, bad, msg, {"uu": uu, "vv": vv, "uv": 0.5 * (uMv + vMu),
                                                           "asymmetry": abs(uMv - vMu)}, dict(op.info))


def _cosine_one_liner(metric: str, model: nn.Module, params: Any, u: Params | Tensor, v: Params | Tensor,
                      batches: Any, allow_indefinite: bool, op_kwargs: dict) -> GeometryResult:
    if isinstance(u, Mapping):
        op_kwargs.setdefault("scope", list(u))
    op = CurvatureOperator(model, params, batches, metric=metric, **op_kwargs)
    return metric_cosine(op, u, v, allow_indefinite=allow_indefinite)


def hessian_cosine(model: nn.Module, params: Any, u: Params | Tensor, v: Params | Tensor, batches: Any, *,
                   allow_indefinite: bool = False, **op_kwargs: Any) -> GeometryResult:
    """cos_H(u, v): :func:`metric_cosine` with the Hessian. params, batches and ``op_kwargs``
    (loss, objective, dtype, …) as for :class:`CurvatureOperator`; scope defaults to u's keys
    (flat vectors: to the operator's default, every parameter)."""
    return _cosine_one_liner("hessian", model, params, u, v, batches, allow_indefinite, op_kwargs)


def ggn_cosine(model: nn.Module, params: Any, u: Params | Tensor, v: Params | Tensor, batches: Any,
               **op_kwargs: Any) -> GeometryResult:
    """cos_G(u, v) with the Gauss-Newton matrix (PSD: defined unless a form is 0); as :func:`hessian_cosine`."""
    return _cosine_one_liner("ggn", model, params, u, v, batches, False, op_kwargs)


def fisher_cosine(model: nn.Module, params: Any, u: Params | Tensor, v: Params | Tensor, batches: Any,
                  **op_kwargs: Any) -> GeometryResult:
    """cos_F(u, v) with the empirical Fisher (PSD); as :func:`hessian_cosine`."""
    return _cosine_one_liner("fisher", model, params, u, v, batches, False, op_kwargs)


def optimal_scale(op: CurvatureOperator, u: Params | Tensor, v: Params | Tensor, *,
                  allow_indefinite: bool = False) -> GeometryResult:
    """λ* = ⟨u, v⟩_M / ⟨u, u⟩_M from one product M u (transfer: u = ρ_D, v = ρ_R).

    With one product there is no scale for M, so only ⟨u, u⟩_M ≤ 0 is flagged (NaN, or with
    ``allow_indefinite`` the signed stationary point); use :func:`geometry_of_pair` (two
    products) to also catch a u in a null direction of M."""
    u, v = as_vector(op, u), as_vector(op, v)
    Mu = op.matvec(u)
    dd, dr = inner(u, Mu), inner(v, Mu)
    val, bad, msg = scale_of_forms(dr, dd, allow_indefinite=allow_indefinite)
    return GeometryResult("optimal_scale", val, bad, msg, {"dd": dd, "dr": dr}, dict(op.info))


def recovered_fraction(op: CurvatureOperator, u: Params | Tensor, v: Params | Tensor, *,
                       allow_indefinite: bool = False) -> GeometryResult:
    """cos²_M(u, v): the fraction of the receiver's QAT gain the quadratic model recovers (u = ρ_D)."""
    c = metric_cosine(op, u, v, allow_indefinite=allow_indefinite)
    return GeometryResult("recovered_fraction", c.value**2, c.indefinite, c.message, c.terms, c.info)


# ---- N vectors -----------------------------------------------------------------------------


GRAM_ROUTES = ("auto", "jvp", "products")


def gram_matrix(op: CurvatureOperator, vectors: Sequence[Params], route: str = "auto",
                chunk_size: int | None = None) -> tuple[np.ndarray, list[float], str]:
    """(K, floors, route): K = Vᵀ M V (N × N, float64) and the roundoff floor of each ⟨v, v⟩_M.

    route ``jvp`` (the default for the GGN and the Fisher: :meth:`CurvatureOperator.jvp_gram`,
    N forward-mode passes per batch, no backward) or ``products`` (one ``matmat``: N products
    M v, JVP + VJP each for G and F; the only route for the Hessian and the layer metric). ``chunk_size`` bounds how
    many vectors travel together. Floors (:func:`null_thresholds`) need a lower bound s of ‖M‖:
    from products, max ‖M v_i‖/‖v_i‖; from JVPs, the largest Rayleigh quotient at hand,
    max(max_i K_ii/‖v_i‖², λ_max(K)/λ_max(VᵀV)) — for x the top eigenvector of K,
    xᵀKx / ‖Vx‖² ≥ λ_max(K)/λ_max(VᵀV) is a Rayleigh quotient of M, so ≤ ‖M‖.
    """
    if route not in GRAM_ROUTES:
        raise ValueError(f"unknown Gram route {route!r}; choose one of {', '.join(GRAM_ROUTES)}")
    if route == "auto":
        route = "jvp" if op.metric in ("ggn", "fisher") else "products"
    if route == "jvp":
        K = op.jvp_gram(vectors, chunk_size)
        E = np.array([[inner(a, b) for b in vectors] for a in vectors])
        sq = np.diag(E)
        with np.errstate(invalid="ignore", divide="ignore"):
            rq = [K[i, i] / sq[i] for i in range(len(sq)) if sq[i] > 0]
        e_top = np.linalg.eigvalsh(E)[-1] if len(E) else 0.0
        s = max(rq + ([np.linalg.eigvalsh(0.5 * (K + K.T))[-1] / e_top] if e_top > 0 else []), default=0.0)
        eps = torch.finfo(op.dtype).eps
        return K, [16 * eps * max(s, 0.0) * float(q) for q in sq], route
    MV = [{k: t.to(v[k].device) for k, t in mv.items()} for mv, v in zip(op.matmat(vectors, chunk_size), vectors)]
    K = np.array([[inner(a, Mb) for Mb in MV] for a in vectors])
    return K, null_thresholds(op, vectors, MV), route


def gram(op: CurvatureOperator, vectors: Sequence[Params | Tensor] | Mapping[str, Params | Tensor],
         route: str = "auto", chunk_size: int | None = None, *, allow_indefinite: bool = False) -> GeometryResult:
    """K = Vᵀ M V (N × N, float64) by :func:`gram_matrix`: N JVPs per batch for the GGN and
    the Fisher (route ``jvp``, no backward pass), one ``matmat`` of N products otherwise.

    terms: ``names``, ``route``, ``K_sym`` = (K + Kᵀ)/2, its ``eigenvalues`` (ascending),
    ``asymmetry`` ‖K − Kᵀ‖_F / ‖K‖_F (a diagnostic: 0 in exact arithmetic, and by construction
    on the JVP route), and from K_sym the ``cosines`` and ``scales`` (row D, column R: λ* of D
    onto R) with NaN where indefinite — or the signed ratios with ``allow_indefinite``
    (:func:`form_quantities`).
    """
    names, vs = _named(op, vectors)
    K, floors, route = gram_matrix(op, vs, route, chunk_size)
    q = form_quantities(K, floors, allow_indefinite)
    bad = [n for n, good in zip(names, q.ok) if not good]
    what = "their cosines and scales are signed ratios (NaN at roundoff level)" if allow_indefinite else \
        "their cosines and scales are NaN"
    msg = f"indefinite: ⟨v,v⟩_M ≤ 0 or at roundoff level for {', '.join(bad)} — {what}" if bad else ""
    nk = np.linalg.norm(K)
    terms = {"names": names, "route": route, "K_sym": q.K_sym, "eigenvalues": q.eigenvalues, "cosines": q.cosines,
             "scales": q.scales, "asymmetry": float(np.linalg.norm(K - K.T) / nk) if nk > 0 else 0.0}
    return GeometryResult("gram", K, bool(bad), msg, terms, dict(op.info))


def directional_gradients(op: CurvatureOperator, vectors: Sequence[Params | Tensor] | Mapping[str, Params | Tensor]
                          ) -> GeometryResult:
    """Vᵀ ∇L (N,): the first-order change of the loss along each vector (stationarity check)."""
    names, vs = _named(op, vectors)
    g = op.gradient()
    vals = np.array([inner(v, g) for v in vs])
    return GeometryResult("directional_gradients", vals, terms={"names": names, "gradient_norm": norm(g)},
                          info=dict(op.info))


def eigenbasis_projection(op: CurvatureOperator, vectors: Sequence[Params | Tensor] | Mapping[str, Params | Tensor],
                          eig: Any) -> GeometryResult:
    """How much of each vector v lies in the top-k eigenbasis {(λ_i, u_i)} of M (``eig``: an
    :class:`qgeom.spectra.eigsh.EigenResult`, eigenvectors Params or flat).

    value (N, 2): [Σ_i c_i² / ‖v‖², Σ_i λ_i c_i² / vᵀMv] with c_i = u_iᵀv; terms: the
    per-direction coefficients (N, k). The curvature fraction is NaN where vᵀMv ≤ 0.
    """
    names, vs = _named(op, vectors)
    basis = [as_vector(op, u) for u in eig.eigenvectors]
    lam = np.asarray(eig.eigenvalues, dtype=np.float64)
    c = np.array([[inner(u, v) for u in basis] for v in vs])
    MV = op.matmat(vs)
    forms = np.array([inner(v, Mv) for v, Mv in zip(vs, MV)])
    sq = np.array([norm(v) ** 2 for v in vs])
    ok = forms > np.array(null_thresholds(op, vs, MV))
    with np.errstate(invalid="ignore", divide="ignore"):
        frac_norm = (c**2).sum(1) / sq
        frac_curv = np.where(ok, (lam[None, :] * c**2).sum(1) / forms, NAN)
    bad = [n for n, good in zip(names, ok) if not good]
    msg = f"indefinite: vᵀMv ≤ 0 for {', '.join(bad)}" if bad else ""
    return GeometryResult("eigenbasis_projection", np.stack([frac_norm, frac_curv], 1), bool(bad), msg,
                          {"names": names, "coefficients": c, "eigenvalues": lam, "forms": forms}, dict(op.info))


def quadratic_model(op: CurvatureOperator, u: Params | Tensor, lambdas: Sequence[float]) -> GeometryResult:
    """The quadratic model q(λ) = L(0) + λ gᵀu + ½ λ² uᵀMu beside the measured L(θ + λu).

    value (len(lambdas), 3): columns λ, q(λ), measured loss; terms: L0, g·u, uᵀMu and the
    model's minimizer −gᵀu/uᵀMu (NaN, flagged indefinite, when uᵀMu ≤ 0).
    """
    u = as_vector(op, u)
    L0, gd = op.loss(), inner(op.gradient(), u)
    dd = inner(u, op.matvec(u))
    lam = np.asarray(lambdas, dtype=np.float64)
    q = L0 + lam * gd + 0.5 * lam**2 * dd
    measured = np.array([op.loss({k: v * float(t) for k, v in u.items()}) for t in lam])
    lmin, bad, msg = scale_of_forms(-gd, dd)
    return GeometryResult("quadratic_model", np.stack([lam, q, measured], 1), bad, msg,
                          {"L0": L0, "g_dot_rho": gd, "rho_M_rho": dd, "argmin": lmin}, dict(op.info))


# ---- one pair ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairGeometry:
    """The geometry of a pair u, v — in the transfer experiment a donor's ρ_D against the
    receiver's own ρ_R at θ_R, whose names the dict keys keep (``rho_D`` is u, ``rho_R`` is v).

    norms: Euclidean ‖·‖; forms: ``DD`` ⟨u,u⟩_M, ``RR`` ⟨v,v⟩_M, ``DR`` ⟨u,v⟩_M;
    directional_gradients: ·ᵀ∇L; euclidean_scale: ⟨u,v⟩ / ‖u‖² (the Euclidean λ*, for comparison).
    """

    euclidean_cosine: float
    metric_cosine: float
    optimal_scale: float
    recovered_fraction: float
    euclidean_scale: float
    norms: dict
    forms: dict
    directional_gradients: dict
    indefinite: bool
    message: str
    info: dict

    def to_dict(self) -> dict:
        return to_builtins(asdict(self))


def geometry_of_pair(op: CurvatureOperator, u: Params | Tensor, v: Params | Tensor, *,
                     names: tuple[str, str] = ("u", "v"), allow_indefinite: bool = False) -> PairGeometry:
    """:class:`PairGeometry` from one ``matmat([u, v])`` and one gradient; ``names`` name u and v
    in messages (the transfer pipeline passes ("ρ_D", "ρ_R")); ``allow_indefinite``: the signed
    ratios where a Hessian form is negative (:mod:`qgeom.curvature.forms`)."""
    u, v = as_vector(op, u), as_vector(op, v)
    check_compatible(u, v, check_dtype=False, names=names)
    Mu, Mv = op.matmat([u, v])
    g = op.gradient()
    dd, rr = inner(u, Mu), inner(v, Mv)
    dr = 0.5 * (inner(v, Mu) + inner(u, Mv))
    floors = null_thresholds(op, [u, v], [Mu, Mv])
    cos, bad_c, msg_c = cosine_of_forms(dr, dd, rr, names, floors, allow_indefinite)
    lam, bad_l, msg_l = scale_of_forms(dr, dd, names[0], floors[0], allow_indefinite)
    nd, nr = norm(u), norm(v)
    return PairGeometry(
        euclidean_cosine=inner(u, v) / (nd * nr) if nd > 0 and nr > 0 else NAN,
        metric_cosine=cos, optimal_scale=lam, recovered_fraction=cos**2,
        euclidean_scale=inner(u, v) / nd**2 if nd > 0 else NAN,
        norms={"rho_D": nd, "rho_R": nr}, forms={"DD": dd, "RR": rr, "DR": dr},
        directional_gradients={"rho_D": inner(u, g), "rho_R": inner(v, g)},
        indefinite=bad_c or bad_l, message=msg_c or msg_l, info=dict(op.info))


def pair_geometry(model: nn.Module, params: Any, u: Params | Tensor, v: Params | Tensor, batches: Any, *,
                  metric: str = "ggn", objective: str = "fp", scope: Scope | Sequence[str] | None = None,
                  spec: QuantSpec | None = None, method: str = "auto", dtype=None, loss: LossFn | None = None,
                  names: tuple[str, str] = ("u", "v"), allow_indefinite: bool = False) -> PairGeometry:
    """Build the curvature operator at ``params`` (transfer: θ_R) and return :func:`geometry_of_pair`.

    params, batches, loss: as for :class:`CurvatureOperator` (the model is never changed; fused
    attention is handled on a copy). scope defaults to the vectors' keys (u and v must share
    them), for flat vectors to every parameter.
    """
    scope = (list(u) if isinstance(u, Mapping) else "all") if scope is None else scope
    op = CurvatureOperator(model, params, batches, metric=metric, objective=objective, scope=scope, spec=spec,
                           method=method, dtype=dtype, loss=loss)
    return geometry_of_pair(op, u, v, names=names, allow_indefinite=allow_indefinite)


__all__ = ["FormQuantities", "GeometryResult", "PairGeometry", "as_vector", "directional_gradients",
           "eigenbasis_projection", "fisher_cosine", "form_quantities", "geometry_of_pair", "ggn_cosine", "gram",
           "gram_matrix", "hessian_cosine", "metric_cosine", "metric_inner", "null_thresholds", "optimal_scale",
           "pair_geometry", "quadratic_model", "recovered_fraction"]

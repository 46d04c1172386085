"""Geometry of quantization vectors under a curvature metric M (proofs/01_optimal_scale.md).

⟨u, v⟩_M = uᵀ M v;  cos_M(u, v) = ⟨u, v⟩_M / √(⟨u, u⟩_M ⟨v, v⟩_M);
λ* = ⟨ρ_D, ρ_R⟩_M / ⟨ρ_D, ρ_D⟩_M (the minimizer of the quadratic model along ρ_D);
recovered fraction = cos²_M(ρ_D, ρ_R) (Proposition 1).

M is a :class:`qgeom.curvature.operator.CurvatureOperator` (Hessian, GGN or Fisher of the ``fp`` or
``ste`` objective). Every result carries the operator's ``info`` — metric, objective, expansion
point hash, scope, probe-set hash — and its ``to_dict()`` is JSON-ready. A cosine is defined
only where both quadratic forms are positive; otherwise the result is *indefinite*: value NaN,
``indefinite=True`` and a message saying which form failed — never a silent number. The same
for λ* when ⟨ρ_D, ρ_D⟩_M ≤ 0 (the quadratic model has no minimizer). Where several products are
at hand (:func:`metric_cosine`, :func:`gram`, :func:`geometry_of_pair`,
:func:`eigenbasis_projection`), a form at roundoff level, ⟨w, w⟩_M ≤ 16·eps·s·‖w‖² with
s = max_i ‖M v_i‖ / ‖v_i‖ (a lower bound of ‖M‖), counts as zero: w lies in a null direction of
M (e.g. the key biases, which the function ignores) and a "positive" 1e-34 must not become a
λ* of 1e17. All sums are float64; N vectors cost N products (one ``matmat``), never N² — and
a GGN or Fisher Gram costs only N forward-mode passes (:func:`gram_matrix`, route ``jvp``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from qgeom.curvature.operator import CurvatureOperator
from qgeom.curvature.probe import Batch
from qgeom.params import Params, Scope, check_compatible, inner, norm
from qgeom.quant import QuantSpec

NAN = float("nan")


def _builtins(x: Any) -> Any:
    """numpy arrays → lists, numpy scalars → Python numbers, recursively; NaN is kept (not strict JSON)."""
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, dict):
        return {k: _builtins(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_builtins(v) for v in x]
    if isinstance(x, (np.floating, np.integer, np.bool_)):
        return x.item()
    return x


@dataclass(frozen=True)
class GeometryResult:
    """One geometric quantity: ``value`` (float or array), the forms it came from (``terms``),
    the indefinite flag and its message, and the operator's provenance (``info``)."""

    name: str
    value: Any
    indefinite: bool = False
    message: str = ""
    terms: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)

    def __float__(self) -> float:
        return float(self.value)

    def to_dict(self) -> dict:
        return _builtins(asdict(self))


def _named(vectors: Sequence[Params] | Mapping[str, Params]) -> tuple[list[str], list[Params]]:
    if isinstance(vectors, Mapping):
        return list(vectors), list(vectors.values())
    return [f"v{i}" for i in range(len(vectors))], list(vectors)


def null_thresholds(op: CurvatureOperator, vectors: Sequence[Params], products: Sequence[Params]) -> list[float]:
    """Roundoff level of each form ⟨v, v⟩_M: 16·eps(op dtype)·s·‖v‖², s = max_i ‖M v_i‖/‖v_i‖.

    s is a lower bound of ‖M‖ taken from the products at hand; the error of a computed vᵀ(Mv) is
    of order eps·‖M‖·‖v‖², so a form below the threshold is indistinguishable from 0."""
    norms = [norm(v) for v in vectors]
    s = max((norm(mv) / n for mv, n in zip(products, norms) if n > 0), default=0.0)
    eps = torch.finfo(op.dtype).eps
    return [16 * eps * s * n**2 for n in norms]


def _form_ok(f: float, floor: float) -> bool:
    return f > floor


def _bad_form(name: str, f: float, floor: float) -> str:
    why = f"≤ {floor:.3g} (roundoff: a null direction of M)" if f > 0 else "≤ 0"
    return f"⟨{name},{name}⟩_M = {f:.3g} {why}"


def _cosine(uv: float, uu: float, vv: float, names=("u", "v"), floors=(0.0, 0.0)) -> tuple[float, bool, str]:
    bad = [_bad_form(n, f, t) for n, f, t in zip(names, (uu, vv), floors) if not _form_ok(f, t)]
    if bad:
        return NAN, True, f"indefinite: {'; '.join(bad)} — cos_M is undefined (use a PSD metric such as 'ggn')"
    return uv / math.sqrt(uu * vv), False, ""


def _scale(dr: float, dd: float, name: str = "ρ_D", floor: float = 0.0) -> tuple[float, bool, str]:
    if not _form_ok(dd, floor):
        return NAN, True, (f"indefinite: {_bad_form(name, dd, floor)} — the quadratic model along {name} "
                           "has no minimizer, so λ* is undefined")
    return dr / dd, False, ""


# ---- inner products, cosines, scales -------------------------------------------------------


def metric_inner(op: CurvatureOperator, u: Params, v: Params) -> GeometryResult:
    """⟨u, v⟩_M = uᵀ (M v): one product."""
    return GeometryResult("metric_inner", inner(u, op.matvec(v)), info=dict(op.info))


def metric_cosine(op: CurvatureOperator, u: Params, v: Params) -> GeometryResult:
    """cos_M(u, v) from one ``matmat([u, v])``; ⟨u,v⟩_M is the mean of uᵀMv and vᵀMu."""
    Mu, Mv = op.matmat([u, v])
    uu, vv, uMv, vMu = inner(u, Mu), inner(v, Mv), inner(u, Mv), inner(v, Mu)
    val, bad, msg = _cosine(0.5 * (uMv + vMu), uu, vv, floors=null_thresholds(op, [u, v], [Mu, Mv]))
    return GeometryResult("metric_cosine", val, bad, msg, {"uu": uu, "vv": vv, "uv": 0.5 * (uMv + vMu),
                                                           "asymmetry": abs(uMv - vMu)}, dict(op.info))


def hessian_cosine(model: nn.Module, params: Params, u: Params, v: Params, batches: Sequence[Batch],
                   **op_kwargs: Any) -> GeometryResult:
    """cos_H(u, v): :func:`metric_cosine` with the Hessian (scope defaults to u's keys)."""
    op_kwargs.setdefault("scope", list(u))
    return metric_cosine(CurvatureOperator(model, params, batches, metric="hessian", **op_kwargs), u, v)


def optimal_scale(op: CurvatureOperator, rho_D: Params, rho_R: Params) -> GeometryResult:
    """λ* = ⟨ρ_D, ρ_R⟩_M / ⟨ρ_D, ρ_D⟩_M from one product M ρ_D.

    With one product there is no scale for M, so only ⟨ρ_D, ρ_D⟩_M ≤ 0 is flagged; use
    :func:`geometry_of_pair` (two products) to also catch a ρ_D in a null direction of M."""
    Md = op.matvec(rho_D)
    dd, dr = inner(rho_D, Md), inner(rho_R, Md)
    val, bad, msg = _scale(dr, dd)
    return GeometryResult("optimal_scale", val, bad, msg, {"dd": dd, "dr": dr}, dict(op.info))


def recovered_fraction(op: CurvatureOperator, rho_D: Params, rho_R: Params) -> GeometryResult:
    """cos²_M(ρ_D, ρ_R): the fraction of the receiver's QAT gain the quadratic model recovers."""
    c = metric_cosine(op, rho_D, rho_R)
    return GeometryResult("recovered_fraction", c.value**2, c.indefinite, c.message, c.terms, c.info)


# ---- N vectors -----------------------------------------------------------------------------


GRAM_ROUTES = ("auto", "jvp", "products")


def gram_matrix(op: CurvatureOperator, vectors: Sequence[Params], route: str = "auto",
                chunk_size: int | None = None) -> tuple[np.ndarray, list[float], str]:
    """(K, floors, route): K = Vᵀ M V (N × N, float64) and the roundoff floor of each ⟨v, v⟩_M.

    route ``jvp`` (the default for the GGN and the Fisher: :meth:`CurvatureOperator.jvp_gram`,
    N forward-mode passes per batch, no backward) or ``products`` (one ``matmat``: N products
    M v, JVP + VJP each for G and F; the only route for the Hessian). ``chunk_size`` bounds how
    many vectors travel together. Floors (:func:`null_thresholds`) need a lower bound s of ‖M‖:
    from products, max ‖M v_i‖/‖v_i‖; from JVPs, the largest Rayleigh quotient at hand,
    max(max_i K_ii/‖v_i‖², λ_max(K)/λ_max(VᵀV)) — for x the top eigenvector of K,
    xᵀKx / ‖Vx‖² ≥ λ_max(K)/λ_max(VᵀV) is a Rayleigh quotient of M, so ≤ ‖M‖.
    """
    if route not in GRAM_ROUTES:
        raise ValueError(f"unknown Gram route {route!r}; choose one of {', '.join(GRAM_ROUTES)}")
    if route == "auto":
        route = "products" if op.metric == "hessian" else "jvp"
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


@dataclass(frozen=True)
class FormQuantities:
    """What a Gram matrix K = VᵀMV says, read once with its roundoff floors (N × N arrays,
    row D, column R): ``K_sym`` = (K + Kᵀ)/2; ``ok`` ⟨v_i, v_i⟩_M above its floor; ``cosines``
    K_DR/√(K_DD K_RR) and ``scales`` λ* = K_DR/K_DD, NaN where a form they divide by is not ok;
    ``eigenvalues`` of K_sym, ascending."""

    K_sym: np.ndarray
    ok: np.ndarray
    cosines: np.ndarray
    scales: np.ndarray
    eigenvalues: np.ndarray


def form_quantities(K: np.ndarray, floors: Sequence[float]) -> FormQuantities:
    """Cosines and optimal scales of every pair from K and the floors of :func:`gram_matrix`."""
    Ks = 0.5 * (K + K.T)
    d = np.diag(Ks)
    ok = d > np.array(floors)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(np.outer(ok, ok), Ks / np.sqrt(np.outer(np.abs(d), np.abs(d))), NAN)
        scales = np.where(ok[:, None], Ks / d[:, None], NAN)
    return FormQuantities(Ks, ok, cos, scales, np.linalg.eigvalsh(Ks))


def gram(op: CurvatureOperator, vectors: Sequence[Params] | Mapping[str, Params], route: str = "auto",
         chunk_size: int | None = None) -> GeometryResult:
    """K = Vᵀ M V (N × N, float64) by :func:`gram_matrix`: N JVPs per batch for the GGN and
    the Fisher (route ``jvp``, no backward pass), one ``matmat`` of N products otherwise.

    terms: ``names``, ``route``, ``K_sym`` = (K + Kᵀ)/2, its ``eigenvalues`` (ascending),
    ``asymmetry`` ‖K − Kᵀ‖_F / ‖K‖_F (a diagnostic: 0 in exact arithmetic, and by construction
    on the JVP route), and from K_sym the ``cosines`` and ``scales`` (row D, column R: λ* of D
    onto R) with NaN where indefinite (:func:`form_quantities`).
    """
    names, vs = _named(vectors)
    K, floors, route = gram_matrix(op, vs, route, chunk_size)
    q = form_quantities(K, floors)
    bad = [n for n, good in zip(names, q.ok) if not good]
    msg = (f"indefinite: ⟨v,v⟩_M ≤ 0 or at roundoff level for {', '.join(bad)} — their cosines and scales are NaN"
           if bad else "")
    nk = np.linalg.norm(K)
    terms = {"names": names, "route": route, "K_sym": q.K_sym, "eigenvalues": q.eigenvalues, "cosines": q.cosines,
             "scales": q.scales, "asymmetry": float(np.linalg.norm(K - K.T) / nk) if nk > 0 else 0.0}
    return GeometryResult("gram", K, bool(bad), msg, terms, dict(op.info))


def directional_gradients(op: CurvatureOperator, vectors: Sequence[Params] | Mapping[str, Params]) -> GeometryResult:
    """Vᵀ ∇L (N,): the first-order change of the loss along each vector (stationarity check)."""
    names, vs = _named(vectors)
    g = op.gradient()
    vals = np.array([inner(v, g) for v in vs])
    return GeometryResult("directional_gradients", vals, terms={"names": names, "gradient_norm": norm(g)},
                          info=dict(op.info))


def eigenbasis_projection(op: CurvatureOperator, vectors: Sequence[Params] | Mapping[str, Params],
                          eig: Any) -> GeometryResult:
    """How much of each ρ lies in the top-k eigenbasis {(λ_i, u_i)} of M (``eig``: an
    :class:`qgeom.spectra.eigsh.EigenResult` with Params eigenvectors).

    value (N, 2): [Σ_i c_i² / ‖ρ‖², Σ_i λ_i c_i² / ρᵀMρ] with c_i = u_iᵀρ; terms: the
    per-direction coefficients (N, k). The curvature fraction is NaN where ρᵀMρ ≤ 0.
    """
    names, vs = _named(vectors)
    lam = np.asarray(eig.eigenvalues, dtype=np.float64)
    c = np.array([[inner(u, v) for u in eig.eigenvectors] for v in vs])
    MV = op.matmat(vs)
    forms = np.array([inner(v, Mv) for v, Mv in zip(vs, MV)])
    sq = np.array([norm(v) ** 2 for v in vs])
    ok = forms > np.array(null_thresholds(op, vs, MV))
    with np.errstate(invalid="ignore", divide="ignore"):
        frac_norm = (c**2).sum(1) / sq
        frac_curv = np.where(ok, (lam[None, :] * c**2).sum(1) / forms, NAN)
    bad = [n for n, good in zip(names, ok) if not good]
    msg = f"indefinite: ρᵀMρ ≤ 0 for {', '.join(bad)}" if bad else ""
    return GeometryResult("eigenbasis_projection", np.stack([frac_norm, frac_curv], 1), bool(bad), msg,
                          {"names": names, "coefficients": c, "eigenvalues": lam, "forms": forms}, dict(op.info))


def quadratic_model(op: CurvatureOperator, rho_D: Params, lambdas: Sequence[float]) -> GeometryResult:
    """The quadratic model q(λ) = L(0) + λ gᵀρ_D + ½ λ² ρ_DᵀMρ_D beside the measured L(θ + λρ_D).

    value (len(lambdas), 3): columns λ, q(λ), measured loss; terms: L0, g·ρ, ρᵀMρ and the
    model's minimizer −gᵀρ/ρᵀMρ (NaN, flagged indefinite, when ρᵀMρ ≤ 0).
    """
    L0, gd = op.loss(), inner(op.gradient(), rho_D)
    dd = inner(rho_D, op.matvec(rho_D))
    lam = np.asarray(lambdas, dtype=np.float64)
    q = L0 + lam * gd + 0.5 * lam**2 * dd
    measured = np.array([op.loss({k: v * float(t) for k, v in rho_D.items()}) for t in lam])
    lmin, bad, msg = _scale(-gd, dd)
    return GeometryResult("quadratic_model", np.stack([lam, q, measured], 1), bad, msg,
                          {"L0": L0, "g_dot_rho": gd, "rho_M_rho": dd, "argmin": lmin}, dict(op.info))


# ---- one donor / receiver pair -------------------------------------------------------------


@dataclass(frozen=True)
class PairGeometry:
    """The geometry of one donor vector ρ_D against the receiver's own ρ_R at θ_R.

    norms: Euclidean ‖ρ‖; forms: ⟨ρ_D,ρ_D⟩_M, ⟨ρ_R,ρ_R⟩_M, ⟨ρ_D,ρ_R⟩_M; directional_gradients:
    ρᵀ∇L; euclidean_scale: ⟨ρ_D,ρ_R⟩ / ‖ρ_D‖² (the Euclidean λ*, for comparison).
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
        return _builtins(asdict(self))


def geometry_of_pair(op: CurvatureOperator, rho_D: Params, rho_R: Params) -> PairGeometry:
    """:class:`PairGeometry` from one ``matmat([ρ_D, ρ_R])`` and one gradient."""
    check_compatible(rho_D, rho_R, check_dtype=False, names=("rho_D", "rho_R"))
    Md, Mr = op.matmat([rho_D, rho_R])
    g = op.gradient()
    dd, rr = inner(rho_D, Md), inner(rho_R, Mr)
    dr = 0.5 * (inner(rho_R, Md) + inner(rho_D, Mr))
    floors = null_thresholds(op, [rho_D, rho_R], [Md, Mr])
    cos, bad_c, msg_c = _cosine(dr, dd, rr, ("ρ_D", "ρ_R"), floors)
    lam, bad_l, msg_l = _scale(dr, dd, floor=floors[0])
    nd, nr = norm(rho_D), norm(rho_R)
    return PairGeometry(
        euclidean_cosine=inner(rho_D, rho_R) / (nd * nr) if nd > 0 and nr > 0 else NAN,
        metric_cosine=cos, optimal_scale=lam, recovered_fraction=cos**2,
        euclidean_scale=inner(rho_D, rho_R) / nd**2 if nd > 0 else NAN,
        norms={"rho_D": nd, "rho_R": nr}, forms={"DD": dd, "RR": rr, "DR": dr},
        directional_gradients={"rho_D": inner(rho_D, g), "rho_R": inner(rho_R, g)},
        indefinite=bad_c or bad_l, message=msg_c or msg_l, info=dict(op.info))


def pair_geometry(model: nn.Module, theta_R: Params, rho_D: Params, rho_R: Params, batches: Sequence[Batch], *,
                  metric: str = "ggn", objective: str = "fp", scope: Scope | Sequence[str] | None = None,
                  spec: QuantSpec | None = None, method: str = "auto", dtype=None) -> PairGeometry:
    """Build the receiver's curvature operator at θ_R and return :func:`geometry_of_pair`.

    scope defaults to the vectors' keys (ρ_D and ρ_R must share them).
    """
    op = CurvatureOperator(model, theta_R, batches, metric=metric, objective=objective,
                           scope=list(rho_D) if scope is None else scope, spec=spec, method=method, dtype=dtype)
    return geometry_of_pair(op, rho_D, rho_R)


__all__ = ["GeometryResult", "PairGeometry", "directional_gradients", "eigenbasis_projection", "geometry_of_pair",
           "gram", "gram_matrix", "hessian_cosine", "metric_cosine", "metric_inner", "null_thresholds", "optimal_scale",
           "pair_geometry", "quadratic_model", "recovered_fraction"]

"""Proposition 2′ (proofs/02_second_order.md) measured: qgeom.curvature.bounds against closed forms and
dense float64 references.

* a smooth non-polynomial objective with a certified Hessian Lipschitz constant (quadratic +
  softplus of a linear form, L = |α|‖w‖³√3/18): the identity gap = curvature + gradient +
  remainder term by term, the bound holds, and its wrong variants (constant 1/8, gradient term
  dropped) fail;
* the tiny ViT of the curvature tests (a non-stationary point, M = GGN ≠ H): the terms from
  products equal the dense-matrix formulas, |G_D − κG_R| stays below the bound with L estimated
  by finite differences of Hessian forms along the two segments, while Proposition 2's bound
  (which assumes M = H and ∇g = 0) and the bound without its gradient term are violated.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _cases_curvature import dense_ggn, dense_hessian, flat_functions, random_vector, tiny_case

from qgeom.curvature.bounds import TERMS, bound, bound_M, pair_bound_terms, second_order_terms, segment_lipschitz
from qgeom.curvature.operator import CurvatureOperator
from qgeom.params import flatten

L3 = math.sqrt(3) / 18  # max |softplus'''|


def _softplus_case(seed: int, n: int = 3):
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(n, n))
    A = 0.5 * (A + A.T)
    b, w, v, u = (rng.normal(size=n) for _ in range(4))
    alpha, beta = 3 * rng.normal(), rng.normal()
    Bm = rng.normal(size=(n, n))
    M = Bm @ Bm.T

    def g(x):
        return 0.5 * x @ A @ x + b @ x + alpha * np.logaddexp(0.0, w @ x + beta)

    def sig(z):
        return 1 / (1 + np.exp(-z))

    p = sig(w @ v + beta)
    s = A @ v + b + alpha * p * w
    H = A + alpha * p * (1 - p) * np.outer(w, w)
    return g, u, v, M, H, s, abs(alpha) * np.linalg.norm(w) ** 3 * L3


def _forms(X, u, v):
    return np.array([[u @ X @ u, u @ X @ v], [v @ X @ u, v @ X @ v]])


def test_terms_match_closed_forms_on_a_softplus_objective():
    """Every term against its definition; the identity closes with the Taylor remainders
    T(x) = g(x) − g(v) − sᵀ(x−v) − ½(x−v)ᵀH(x−v) computed directly."""
    for seed in range(20):
        g, u, v, M, H, s, L = _softplus_case(seed)
        lam = (u @ M @ v) / (u @ M @ u)
        kappa = (u @ M @ v) ** 2 / ((u @ M @ u) * (v @ M @ v))
        d = lam * u - v
        t = second_order_terms(_forms(M, u, v), _forms(H, u, v), _forms(np.eye(3), u, v), (s @ u, s @ v),
                               (g(0 * v), g(v), g(lam * u)))
        assert set(t) == set(TERMS)

        def T(x):
            return g(x) - g(v) - s @ (x - v) - 0.5 * (x - v) @ H @ (x - v)

        np.testing.assert_allclose(
            [t["kappa"], t["lam_star"], t["norm_Delta"], t["gradient"], t["remainder"]],
            [kappa, lam, np.linalg.norm(d), -s @ ((1 - kappa) * v + d), (1 - kappa) * T(0 * v) - T(lam * u)],
            rtol=1e-9, atol=1e-12)
        assert t["curvature"] == pytest.approx(0.5 * ((1 - kappa) * v @ (H - M) @ v - d @ (H - M) @ d), rel=1e-9)
        assert abs(t["gap"]) <= bound(t, L) * (1 + 1e-12)
        assert abs(t["remainder"]) <= L * t["cubic"] * (1 + 1e-12)  # the Taylor lemma, L certified


def test_wrong_variants_fail_on_a_softplus_objective():
    """Dropping the gradient term is violated on some instance, and so is the constant 1/8 on a
    near-extremal one (s = 0, H(v) = M, the cubic term almost attained; as in check_02)."""
    dropped = 0
    for seed in range(20):
        g, u, v, M, H, s, L = _softplus_case(seed)
        lam = (u @ M @ v) / (u @ M @ u)
        t = second_order_terms(_forms(M, u, v), _forms(H, u, v), _forms(np.eye(3), u, v), (s @ u, s @ v),
                               (g(0 * v), g(v), g(lam * u)))
        dropped += abs(t["gap"]) > bound(t, L) - abs(t["gradient"])
    assert dropped > 0
    # near-extremal: w = e_1, v = (r, 0), w·v + β at the argmax of softplus''' (sigmoid (3−√3)/6)
    r, tt, m2 = 0.05, 1e-3, 1e8
    ps = (3 - math.sqrt(3)) / 6
    beta = math.log(ps / (1 - ps)) - r
    A = np.diag([1 - ps * (1 - ps), m2])
    v = np.array([r, 0.0])
    b = -(A @ v) - np.array([ps, 0.0])
    u = np.array([1.0, math.sqrt(tt / m2)])
    M = np.diag([1.0, m2])

    def g(x):
        return 0.5 * x @ A @ x + b @ x + np.logaddexp(0.0, x[0] + beta)

    lam = (u @ M @ v) / (u @ M @ u)
    t = second_order_terms(_forms(M, u, v), _forms(M, u, v), _forms(np.eye(2), u, v), (0.0, 0.0),
                           (g(0 * v), g(v), g(lam * u)))
    assert abs(t["gap"]) <= bound(t, L3)
    assert abs(t["gap"]) > bound(t, L3, const=1 / 8)


@pytest.fixture(scope="module")
def vit_pair():
    case = tiny_case()
    scope = "quantized"
    keys = [k for k in flat_functions(case, case.params, scope)[2]]
    sub = {k: case.params[k] for k in keys}
    rho_R = {k: 0.02 * v for k, v in random_vector(sub, 11).items()}
    rho_D = {k: rho_R[k] + 0.02 * v for k, v in random_vector(sub, 12).items()}
    op_M = CurvatureOperator(case.model, case.params, case.batches, metric="ggn", scope=scope)
    op_H = CurvatureOperator(case.model, case.params, case.batches, metric="hessian", scope=scope)
    return case, scope, keys, rho_D, rho_R, op_M, op_H, pair_bound_terms(op_M, op_H, rho_D, rho_R)


def _dense_pair(case, scope, keys, rho_D, rho_R):
    """The pair's ingredients from the dense float64 references: u, v, s, G, H and the loss of the flat
    parameter vector (one batch of all samples; no qgeom.curvature code path)."""
    u, v = flatten(rho_D, keys).numpy(), flatten(rho_R, keys).numpy()
    theta, logits, _ = flat_functions(case, case.params, scope)
    theta = theta.clone().requires_grad_(True)
    s = torch.autograd.grad(torch.nn.functional.cross_entropy(logits(theta, case.x), case.y), theta)[0].numpy()
    th = theta.detach()

    def loss(x: np.ndarray) -> float:
        with torch.no_grad():
            return float(torch.nn.functional.cross_entropy(logits(th + torch.from_numpy(x), case.x), case.y))

    return u, v, s, dense_ggn(scope).numpy(), dense_hessian(scope).numpy(), loss


def test_vit_terms_match_dense_references(vit_pair):
    """Forms from products (GGN, Hessian) and the gradient equal the dense float64 matrices'; and the
    measured gains and remainder equal an independent evaluation: losses of the flat parameter vector at
    θ − ρ_R, θ, θ + Δ and the Taylor remainders T(x) = g(x) − g(ρ_R) − sᵀ(x−ρ_R) − ½(x−ρ_R)ᵀH(x−ρ_R)
    from the dense H, s (not gap − curvature − gradient, which is the remainder's definition). The
    remainder is ~1e-4 of losses ~1: float64 roundoff of the losses (~1e-15) is 1e-11 of it, so rel
    1e-8 is tight without being fragile. ‖Δ‖_M = √(c(1 − κ)) is checked with the dense GGN too."""
    case, scope, keys, rho_D, rho_R, _, _, t = vit_pair
    u, v, s, Gd, Hd, loss = _dense_pair(case, scope, keys, rho_D, rho_R)
    ref = second_order_terms(_forms(Gd, u, v), _forms(Hd, u, v), _forms(np.eye(len(u)), u, v), (s @ u, s @ v))
    for k in ("kappa", "lam_star", "norm_rho_R", "norm_Delta", "cubic", "norm_M_rho_R", "cubic_M", "curvature",
              "curvature_bound", "gradient"):
        assert t[k] == pytest.approx(ref[k], rel=1e-8, abs=1e-12), k
    lam, kappa = ref["lam_star"], ref["kappa"]
    d = lam * u - v
    g0, gR, gp = loss(-v), loss(0 * v), loss(d)

    def T(y: np.ndarray, gy: float) -> float:  # Taylor remainder at ρ_R after two terms, step y
        return gy - gR - s @ y - 0.5 * y @ Hd @ y

    assert t["G_R"] == pytest.approx(g0 - gR, rel=1e-10)
    assert t["gap"] == pytest.approx((g0 - gp) - kappa * (g0 - gR), rel=1e-8)
    assert t["remainder"] == pytest.approx((1 - kappa) * T(-v, g0) - T(d, gp), rel=1e-8)
    assert abs(t["remainder"]) > 1e-8  # not a vanishing quantity compared with itself
    assert np.sqrt(d @ Gd @ d) == pytest.approx(np.sqrt((v @ Gd @ v) * (1 - kappa)), rel=1e-8)


def test_vit_bound_holds_with_a_finite_difference_lipschitz_estimate(vit_pair):
    """|G_D − κG_R| ≤ Prop. 2′ with L the larger FD estimate on the segments [ρ_R, 0] and
    [ρ_R, λ*ρ_D]; the Prop. 2 bound (L/6)(‖ρ_R‖³ + ‖Δ‖³), and Prop. 2′ without its gradient
    term, are violated here (GGN metric, non-stationary point): the defect 2′ repairs."""
    case, scope, keys, rho_D, rho_R, _, _, t = vit_pair
    zero = {k: torch.zeros_like(v) for k, v in rho_R.items()}
    delta = {k: t["lam_star"] * rho_D[k] - rho_R[k] for k in keys}
    L = max(segment_lipschitz(case.model, case.params, case.batches, zero, {k: -v for k, v in rho_R.items()}, n=4),
            segment_lipschitz(case.model, case.params, case.batches, zero, delta, n=4))
    assert L > 0 and abs(t["remainder"]) <= L * t["cubic"] * 1.5  # the FD estimate is of the right size
    assert abs(t["gap"]) <= bound(t, L)
    prop2 = L / 6 * (t["norm_rho_R"] ** 3 + t["norm_Delta"] ** 3)
    assert abs(t["gap"]) > prop2
    assert abs(t["gap"]) > bound(t, L) - abs(t["gradient"])


def _segment_constants(case, params, scope_keys, rho_D, rho_R, t, metric: bool) -> float:
    """max over the two segments [ρ_R, 0], [ρ_R, λ*ρ_D] of the FD Lipschitz estimate (Euclidean, or in the
    M-norm: ‖ρ_R‖_M = √c, ‖Δ‖_M = √(c(1 − κ)))."""
    zero = {k: torch.zeros_like(v) for k, v in rho_R.items()}
    minus = {k: -v for k, v in rho_R.items()}
    delta = {k: t["lam_star"] * rho_D[k] - rho_R[k] for k in scope_keys}
    c, one_k = t["norm_M_rho_R"] ** 2, 1 - t["kappa"]
    norms = (c**0.5, (c * one_k) ** 0.5) if metric else (None, None)
    return max(segment_lipschitz(case.model, params, case.batches, zero, minus, n=4, step_norm=norms[0]),
               segment_lipschitz(case.model, params, case.batches, zero, delta, n=4, step_norm=norms[1]))


def test_vit_gauge_invariant_bound_holds_with_a_finite_difference_estimate_of_L_M(vit_pair):
    """Proposition 2″ on the tiny ViT (GGN, non-stationary point): L_M from FD Hessian forms along the two
    segments, normalised by ‖y‖_M; |remainder| ≤ L_M·cubic_M within the estimate's slack (1.5, as for L)
    and |G_D − κG_R| ≤ bound_M. Twin: the bound without its T(p) part, L_M·c^{3/2}(1−κ)/6, is below the
    measured remainder here (the T(p) term is needed)."""
    case, scope, keys, rho_D, rho_R, _, _, t = vit_pair
    L_M = _segment_constants(case, case.params, keys, rho_D, rho_R, t, metric=True)
    assert L_M > 0 and abs(t["remainder"]) <= L_M * t["cubic_M"] * 1.5
    assert abs(t["gap"]) <= bound_M(t, L_M)
    assert abs(t["remainder"]) > L_M * t["norm_M_rho_R"] ** 3 * (1 - t["kappa"]) / 6


def test_gauge_invariant_terms_do_not_move_under_a_level1_symmetry_while_euclidean_ones_do(vit_pair):
    """A query/key mixing g (GL(4) blocks, condition number e², level 1 only) applied to θ, ρ_D and ρ_R:
    κ, c, cubic_M, the curvature, gradient and remainder terms and the FD estimate of L_M agree to 1e-8
    relative (float64 products, amplified by κ(g)² ≈ 55), while ‖ρ_R‖, the Euclidean cubic term and the
    FD estimate of L move by > 1e-3 — Proposition 2″ is gauge invariant, Proposition 2′ is not."""
    from qgeom.symmetry import random_symmetry

    case, scope, keys, rho_D, rho_R, _, _, t = vit_pair
    g = random_symmetry(case.model, "qk_mixing", strength=2.0, seed=5)
    gp = g(case.params)
    ops = [CurvatureOperator(case.model, gp, case.batches, metric=m, scope=scope) for m in ("ggn", "hessian")]
    tg = pair_bound_terms(*ops, _moved(g, rho_D, case.params, keys), _moved(g, rho_R, case.params, keys))
    for k in ("kappa", "norm_M_rho_R", "cubic_M", "curvature", "gradient", "remainder", "L_M_implied"):
        assert tg[k] == pytest.approx(t[k], rel=1e-8, abs=1e-13), k
    moved = {k: _moved(g, r, case.params, keys) for k, r in (("D", rho_D), ("R", rho_R))}
    lm = [_segment_constants(case, p, keys, d, r, tt, metric=True)
          for p, d, r, tt in ((case.params, rho_D, rho_R, t), (gp, moved["D"], moved["R"], tg))]
    assert lm[1] == pytest.approx(lm[0], rel=1e-8)
    le = [_segment_constants(case, p, keys, d, r, tt, metric=False)
          for p, d, r, tt in ((case.params, rho_D, rho_R, t), (gp, moved["D"], moved["R"], tg))]
    for a, b in ((tg["norm_rho_R"], t["norm_rho_R"]), (tg["cubic"], t["cubic"]), (le[1], le[0])):
        assert abs(a / b - 1) > 1e-3


def _moved(g, vec, params, keys):
    """g applied to a tangent vector on the scope (g is linear: g(v) on the vector's own tensors)."""
    full = {k: torch.zeros_like(v) for k, v in params.items()}
    full.update(vec)
    out = g(full)
    return {k: out[k] for k in keys}


def test_receiver_own_gain_is_half_its_hessian_form_up_to_the_gradient_and_cubic_terms(vit_pair):
    """Proposition 2's second statement, |G_R − c/2| ≤ (L/6)‖ρ_R‖³ (c = ρ_Rᵀ H ρ_R), in the form
    that holds at any expansion point: G_R − c/2 = −sᵀρ_R + T(0), |T(0)| ≤ (L/6)‖ρ_R‖³, with L
    the FD estimate on [ρ_R, 0]. At this non-stationary point the s = 0 statement is violated."""
    from qgeom.params import inner, norm

    case, scope, keys, rho_D, rho_R, _, op_H, t = vit_pair
    zero = {k: torch.zeros_like(v) for k, v in rho_R.items()}
    minus = {k: -v for k, v in rho_R.items()}
    G_R = op_H.loss(minus) - op_H.loss()  # g(0) − g(ρ_R) with g(δ) = L(θ̂ + δ − ρ_R)
    c = inner(rho_R, op_H.matvec(rho_R))
    s_rho = inner({k: op_H.gradient()[k] for k in keys}, rho_R)
    L = segment_lipschitz(case.model, case.params, case.batches, zero, minus, n=4)
    cubic = L / 6 * norm(rho_R) ** 3
    assert abs(G_R - c / 2 + s_rho) <= cubic
    assert abs(G_R - c / 2) > cubic


def test_stationarity_and_metric_mismatch_are_refused_for_ste_operators():
    case = tiny_case()
    op = CurvatureOperator(case.model, case.params, case.batches, metric="hessian", objective="ste", scope="quantized")
    v = random_vector({k: case.params[k] for k in op.keys}, 3)
    with pytest.raises(ValueError, match="smooth objective"):
        pair_bound_terms(op, op, v, v)
    op_g = CurvatureOperator(case.model, case.params, case.batches, metric="ggn", scope="quantized")
    with pytest.raises(ValueError, match="Hessian operator"):
        pair_bound_terms(op_g, op_g, v, v)


def test_transfer_geometry_table_carries_the_terms(tiny_run):
    """The trained tiny run's geometry table: Prop. 2′/2″ rows for every pair and scope; λ* agrees with the
    GGN-STE row; and for one pair the surrogate's gains G_R = g(0) − g(ρ_R), G_D = g(0) − g(λ*ρ_D) and the
    gap G_D − κG_R (κ from the table's cos² row) equal an independent evaluation: the run's artifacts
    loaded, θ̂ = Q_b(θ_R,QAT), losses of the probe set by the model's plain forward (float32; the
    operator's losses take another path, so 1e-5 absolute against gains of ~1e-2). The figure panel draws."""
    import pandas as pd

    from qgeom import params as P
    from qgeom.curvature.bounds import gap_decomposition
    from qgeom.data import probe_batches
    from qgeom.experiment.artifacts import RunArtifacts
    from qgeom.experiment.tasks import load_run_task
    from qgeom.figures import proposition2_gap
    from qgeom.quant import QuantSpec, ptq
    from qgeom.train import logits

    geo = pd.read_csv(tiny_run / "geometry.csv", keep_default_na=False, na_values=[""])
    p2 = geo[geo.objective == "prop2"]
    wide = p2.pivot_table(index=["scope", "receiver", "donor"], columns="quantity", values="value").reset_index()
    assert {f"p2_{t}" for t in TERMS} <= set(wide.columns)
    lam = geo[(geo.quantity == "lam_star") & (geo.metric == "ggn") & (geo.objective == "ste")]
    both = wide.merge(lam, on=["scope", "receiver", "donor"])
    np.testing.assert_allclose(both.p2_lam_star, both.value, rtol=1e-9)
    art, (rec, donor, scope) = RunArtifacts(tiny_run), ("hue", "shape", "backbone")
    task = load_run_task(art.cfg, rec)
    probe = probe_batches(task.val, art.cfg.probe_size, art.cfg.probe_batch, seed=0)
    x, y = torch.cat([b[0] for b in probe]), torch.cat([b[1] for b in probe])
    theta_hat = ptq(art.qat(0, 2, rec), QuantSpec(2))
    model = art.model(art.finetuned(0, rec))
    rho_R, rho_D = (P.select(art.rho(0, 2, d), scope) for d in (rec, donor))

    def g(shift: dict) -> float:  # the surrogate g(δ) = L(θ̂ + δ − ρ_R), δ given as its shift from θ̂
        th = {k: v + shift[k].to(v.dtype) if k in shift else v for k, v in theta_hat.items()}
        return float(torch.nn.functional.cross_entropy(logits(model, th, x, 1000), y))

    row = wide[(wide.scope == scope) & (wide.receiver == rec) & (wide.donor == donor)].iloc[0]
    kappa = geo[(geo.quantity == "cos2") & (geo.metric == "ggn") & (geo.objective == "ste") & (geo.scope == scope)
                & (geo.receiver == rec) & (geo.donor == donor)].value.item()
    g0, gR = g({k: -v for k, v in rho_R.items()}), g({})
    gp = g({k: row.p2_lam_star * rho_D[k] - rho_R[k] for k in rho_R})
    assert row.p2_G_R == pytest.approx(g0 - gR, abs=1e-5)
    assert row.p2_G_D == pytest.approx(g0 - gp, abs=1e-5)
    assert row.p2_gap == pytest.approx((g0 - gp) - kappa * (g0 - gR), abs=1e-5)
    assert row.p2_kappa == pytest.approx(kappa, rel=1e-6)
    dec = gap_decomposition(geo, "ggn")
    assert len(dec) == 2 * 3 * 2  # scopes × receivers × off-diagonal donors
    assert proposition2_gap(geo).axes

"""Metric geometry (cosines, λ*, Gram, projections, quadratic model) against dense formulas,
the indefinite cases, the README example, and the ``geometry``/``spectrum`` commands.

Tolerances. Quantities built from float64 products are compared with the same formulas on the
dense float64 matrices to 1e-10 relative (see test_operator: the products agree to < 1e-10;
a cosine or ratio of such forms inherits that). λ* against scipy's bounded Brent search: 1e-6,
the search's own x-tolerance (~1.5e-8 relative) with margin. The quadratic model against the
measured loss: the gap is O(λ³) (third derivative), checked by its scaling, not a constant.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize_scalar
from typer.testing import CliRunner

from _cases_curvature import TINY, dense_fisher, dense_ggn, dense_hessian, random_vector, tiny_case
from qgeom.curvature.geometry import (directional_gradients, eigenbasis_projection, fisher_cosine, geometry_of_pair,
                                      ggn_cosine, gram, hessian_cosine, metric_cosine, metric_inner, optimal_scale,
                                      pair_geometry, quadratic_model, recovered_fraction)
from qgeom.curvature.operator import CurvatureOperator
from qgeom.models import create_model
from qgeom.spectra.eigsh import eigsh
from qgeom.params import IncompatibleParamsError
from qgeom.io import save_params

TOL = 1e-10


def op_for(metric: str, scope="quantized") -> CurvatureOperator:
    case = tiny_case()
    return CurvatureOperator(case.model, case.params, case.batches, metric=metric, scope=scope)


def dense(metric: str) -> torch.Tensor:
    return dense_hessian("quantized") if metric == "hessian" else dense_ggn("quantized")


def quad(M: torch.Tensor, op: CurvatureOperator, u, v) -> float:
    return float(op.flatten(u) @ M @ op.flatten(v))


@pytest.mark.parametrize("metric", ["ggn", "hessian"])
def test_cosine_scale_fraction_match_dense_formulas(metric):
    op, M = op_for(metric), dense(metric)
    # vectors mostly along the top two eigenvectors of M, so both forms are positive even for
    # the indefinite H (the indefinite case is tested below), and correlated (cos not ~0)
    U = torch.linalg.eigh(M)[1][:, -2:]
    x1, x2 = op.flatten(random_vector(op.theta, 1)), op.flatten(random_vector(op.theta, 2))
    d = op.unflatten(2 * U[:, 1] + 0.01 * x1 / x1.norm())
    r = op.unflatten(U[:, 0] + U[:, 1] + 0.01 * x2 / x2.norm())
    dd, rr, dr = quad(M, op, d, d), quad(M, op, r, r), quad(M, op, d, r)
    assert dd > 0 and rr > 0
    cos = metric_cosine(op, d, r)
    assert not cos.indefinite and cos.value == pytest.approx(dr / math.sqrt(dd * rr), rel=TOL)
    assert float(metric_inner(op, d, r)) == pytest.approx(dr, rel=TOL)
    lam = optimal_scale(op, d, r)
    assert lam.value == pytest.approx(dr / dd, rel=TOL)
    assert recovered_fraction(op, d, r).value == pytest.approx(dr**2 / (dd * rr), rel=TOL)
    for res in (cos, lam):
        assert res.info["metric"] == metric and res.info["scope"] == "quantized"
        assert {"expansion_point", "probe", "objective"} <= set(res.info)
        json.dumps(res.to_dict())


def test_optimal_scale_minimizes_the_quadratic_model():
    """λ* = argmin_λ ½‖λρ_D − ρ_R‖²_M (Proposition 1's model restricted to the line)."""
    op = op_for("ggn")
    d, r = random_vector(op.theta, 3), random_vector(op.theta, 4)
    r = {k: r[k] + 0.3 * d[k] for k in r}
    G = dense("ggn")
    dd, dr, rr = quad(G, op, d, d), quad(G, op, d, r), quad(G, op, r, r)
    model = lambda lam: 0.5 * (lam**2 * dd - 2 * lam * dr + rr)  # noqa: E731
    best = minimize_scalar(model, bounds=(-10, 10), method="bounded", options={"xatol": 1e-12})
    assert optimal_scale(op, d, r).value == pytest.approx(best.x, abs=1e-6)
    # and the recovered fraction is the model's relative decrease: 1 − min / model(0) = cos²_M
    assert recovered_fraction(op, d, r).value == pytest.approx(1 - best.fun / model(0.0), abs=1e-9)


@pytest.mark.parametrize("metric", ["ggn", "hessian"])
def test_gram_by_products_is_one_matmat_and_matches_dense(metric):
    op, G = op_for(metric), dense(metric)
    vs = {f"v{i}": random_vector(op.theta, 10 + i) for i in range(4)}
    calls = {"matmat": 0, "vectors": 0, "matvec": 0}
    orig_mm = op.matmat

    def counting_matmat(vectors, *a, **k):
        calls["matmat"] += 1
        calls["vectors"] += len(vectors)
        return orig_mm(vectors, *a, **k)

    op.matmat, op.matvec = counting_matmat, lambda v: calls.__setitem__("matvec", calls["matvec"] + 1)
    K = gram(op, vs, route="products" if metric == "ggn" else "auto")
    assert calls == {"matmat": 1, "vectors": 4, "matvec": 0}  # N products, not N²
    assert K.terms["route"] == "products"
    V = torch.stack([op.flatten(v) for v in vs.values()], 1)
    ref = (V.T @ G @ V).numpy()
    assert np.abs(K.value - ref).max() <= TOL * np.abs(ref).max()
    assert K.terms["asymmetry"] < 1e-12
    if metric == "hessian":
        return
    assert not K.indefinite
    C = K.terms["cosines"]
    assert np.allclose(np.diag(C), 1.0) and np.abs(C).max() <= 1 + 1e-12
    assert K.terms["scales"][0, 1] == pytest.approx(ref[0, 1] / ref[0, 0], rel=TOL)
    json.dumps(K.to_dict())


@pytest.mark.parametrize("metric", ["ggn", "fisher"])
@pytest.mark.parametrize("scope", ["quantized", "all"])
def test_gram_from_jvps_equals_product_gram(metric, scope):
    """The JVP Gram (no backward pass) equals the product Gram to 1e-12 relative in float64, and
    the dense VᵀMV to 1e-10 (see the module tolerances). Both sides sum O(10³) float64 terms of
    size O(1) — expected gap ~1e-15 — so 1e-12 leaves three orders of margin and still catches
    any wrong term (a missing C, 1/N or n_b/N weight is O(1)). Chunking over vectors changes
    nothing but the memory; no product (matmat, matvec) is called."""
    op = op_for(metric, scope)
    vs = {f"v{i}": random_vector(op.theta, 20 + i) for i in range(6)}
    ref = gram(op, vs, route="products").value
    calls = []
    op.matmat = op.matvec = lambda *a, **k: calls.append(1)
    K = gram(op, vs)
    assert K.terms["route"] == "jvp" and not calls
    scale = np.abs(ref).max()
    assert np.abs(K.value - ref).max() <= 1e-12 * scale
    assert np.array_equal(K.value, K.value.T) and K.terms["asymmetry"] == 0.0
    assert np.abs(gram(op, vs, chunk_size=4).value - K.value).max() <= 1e-14 * scale
    M = dense_ggn(scope) if metric == "ggn" else dense_fisher(scope)
    V = torch.stack([op.flatten(v) for v in vs.values()], 1)
    assert np.abs(K.value - (V.T @ M @ V).numpy()).max() <= TOL * scale
    assert not K.indefinite and np.allclose(np.diag(K.terms["cosines"]), 1.0)


def test_gram_from_jvps_flags_null_directions():
    """A vector along the key biases (the function ignores them) has ⟨v,v⟩_G = 0 in exact
    arithmetic: the JVP route's floor (a Rayleigh-quotient bound of ‖G‖) flags it, as the
    product route's does; the Hessian has no JVP Gram."""
    op = op_for("ggn", "all")
    v = random_vector(op.theta, 3)
    null = {k: torch.zeros_like(t) for k, t in op.theta.items()}
    for k, t in op.theta.items():
        if k.endswith("qkv.bias"):
            d = t.shape[0] // 3
            null[k][d : 2 * d] = 1.0
    for route in ("jvp", "products"):
        K = gram(op, {"key_bias": null, "v": v}, route=route)
        assert K.indefinite and "key_bias" in K.message and not math.isnan(K.terms["cosines"][1, 1])
    with pytest.raises(ValueError, match="GGN and the Fisher"):
        op_for("hessian").jvp_gram([v])
    with pytest.raises(ValueError, match="route"):
        gram(op, [v], route="dense")


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(2, 4))
def test_gram_symmetric_psd_for_all_vectors(seed, n):
    """For the GGN, K = VᵀGV is symmetric PSD for every V (to 1e-12 of its scale)."""
    op = op_for("ggn")
    K = gram(op, [random_vector(op.theta, seed + i) for i in range(n)])
    scale = np.abs(K.value).max()
    assert np.abs(K.value - K.value.T).max() <= 1e-12 * scale
    assert K.terms["eigenvalues"].min() >= -1e-12 * scale


def test_directional_gradients_and_projection():
    op = op_for("hessian")
    case = tiny_case()
    vs = {"a": random_vector(op.theta, 20), "b": random_vector(op.theta, 21)}
    dg = directional_gradients(op, vs)
    g = op.flatten(op.gradient())
    assert dg.value == pytest.approx([float(op.flatten(v) @ g) for v in vs.values()], rel=TOL)
    # projection onto the top-3 eigenbasis, against numpy's eigenvectors (signs cancel: squared)
    H = dense("hessian").numpy()
    w, U = np.linalg.eigh(H)
    eig = eigsh(op, k=3, which="LA")
    proj = eigenbasis_projection(op, vs, eig)
    for i, v in enumerate(vs.values()):
        x = op.flatten(v).numpy()
        c = U[:, -3:].T @ x
        assert proj.value[i, 0] == pytest.approx((c**2).sum() / (x @ x), rel=1e-8)
        form = x @ H @ x
        want = (w[-3:] * c**2).sum() / form if form > 0 else float("nan")
        assert proj.value[i, 1] == pytest.approx(want, rel=1e-8, nan_ok=True)
    assert case.params is not None


def test_quadratic_model_beside_measured_loss():
    op = op_for("hessian")
    d = random_vector(op.theta, 30)
    lams = [0.0, 1e-2, 2e-2]
    qm = quadratic_model(op, d, lams)
    lam, q, measured = qm.value.T
    assert q[0] == pytest.approx(measured[0], abs=1e-14) == qm.terms["L0"]
    gap = np.abs(q - measured)
    assert gap[1] < 1e-4 * abs(measured[0])
    assert 4 < gap[2] / gap[1] < 12  # O(λ³): doubling λ multiplies the gap by ≈ 8


# --------------------------------------------------------------------------------------------
# indefinite forms
# --------------------------------------------------------------------------------------------


def test_indefinite_forms_are_flagged_not_silent():
    """u = the bottom Ritz vector of the indefinite Hessian: uᵀHu = λ_min < 0."""
    op = op_for("hessian")
    bottom = eigsh(op, k=1, which="SA")
    assert bottom.eigenvalues[0] < 0
    u = bottom.eigenvectors[0]
    v = random_vector(op.theta, 40)
    cos = metric_cosine(op, u, v)
    assert cos.indefinite and math.isnan(cos.value) and "≤ 0" in cos.message and "⟨u,u⟩_M" in cos.message
    lam = optimal_scale(op, u, v)
    assert lam.indefinite and math.isnan(lam.value) and "no minimizer" in lam.message
    assert recovered_fraction(op, u, v).indefinite
    K = gram(op, {"neg": u, "v": v})
    assert K.indefinite and "neg" in K.message and math.isnan(K.terms["cosines"][0, 1])
    pg = geometry_of_pair(op, u, v)
    assert pg.indefinite and math.isnan(pg.metric_cosine) and math.isnan(pg.optimal_scale)
    assert not math.isnan(pg.euclidean_cosine)  # the Euclidean numbers are still there
    qm = quadratic_model(op, u, [0.0, 0.1])
    assert qm.indefinite and math.isnan(qm.terms["argmin"])
    # the GGN of the same pair is PSD: defined
    assert not metric_cosine(op_for("ggn"), u, v).indefinite


# --------------------------------------------------------------------------------------------
# the README example, one-liners, errors
# --------------------------------------------------------------------------------------------


def test_readme_example(tmp_path):
    case = tiny_case(torch.float32)
    save_params(tmp_path / "receiver.safetensors", case.params)
    save_params(tmp_path / "rho_D.safetensors", random_vector({k: v for k, v in case.params.items() if "blocks" in k}, 1))
    save_params(tmp_path / "rho_R.safetensors", random_vector({k: v for k, v in case.params.items() if "blocks" in k}, 2))
    model, batches = case.model, case.batches
    # --- README: the geometry of one donor/receiver pair -------------------------------------
    from qgeom.curvature.geometry import pair_geometry
    from qgeom.io import load_params

    theta_R, _ = load_params(tmp_path / "receiver.safetensors")
    rho_D, _ = load_params(tmp_path / "rho_D.safetensors")
    rho_R, _ = load_params(tmp_path / "rho_R.safetensors")
    g = pair_geometry(model, theta_R, rho_D, rho_R, batches, metric="ggn")
    print(g.euclidean_cosine, g.metric_cosine, g.optimal_scale, g.recovered_fraction, g.directional_gradients)
    # ------------------------------------------------------------------------------------------
    assert g.info["metric"] == "ggn" and g.info["n_params"] == sum(v.numel() for v in rho_D.values())
    assert g.recovered_fraction == pytest.approx(g.metric_cosine**2)
    assert set(g.norms) == {"rho_D", "rho_R"} and not g.indefinite
    json.dumps(g.to_dict())


def test_hessian_cosine_one_liner_and_pair_geometry_agree():
    case = tiny_case()
    op = op_for("hessian")
    u, v = random_vector(op.theta, 50), random_vector(op.theta, 51)
    one = hessian_cosine(case.model, case.params, u, v, case.batches)
    assert one.value == pytest.approx(metric_cosine(op, u, v).value, rel=1e-12)
    pg = pair_geometry(case.model, case.params, u, v, case.batches, metric="hessian")
    if not pg.indefinite:
        assert pg.metric_cosine == pytest.approx(one.value, rel=1e-12)


def test_mismatched_vectors_are_refused():
    op = op_for("ggn")
    u = random_vector(op.theta, 0)
    with pytest.raises(IncompatibleParamsError):
        metric_cosine(op, u, {k: t for k, t in list(u.items())[1:]})
    with pytest.raises(IncompatibleParamsError):
        geometry_of_pair(op, u, {**u, "head.bias": torch.zeros(3, dtype=torch.float64)})


# --------------------------------------------------------------------------------------------
# any two vectors (issue 26, item 2)
# --------------------------------------------------------------------------------------------


def null_vector(op) -> dict:
    """Along the key biases, which softmax attention ignores: ⟨w,w⟩_M = 0 up to roundoff."""
    w = {k: torch.zeros_like(t) for k, t in op.theta.items()}
    for k, t in op.theta.items():
        if k.endswith("qkv.bias"):
            d = t.shape[0] // 3
            w[k][d : 2 * d] = 1.0
    return w


def test_flat_vectors_give_the_params_numbers():
    """A flat (P,) tensor in op.keys order is the same vector: the same forms, bit for bit."""
    op, M = op_for("ggn"), dense("ggn")
    u, v = random_vector(op.theta, 60), random_vector(op.theta, 61)
    fu, fv = op.flatten(u), op.flatten(v)
    assert metric_cosine(op, fu, fv).value == metric_cosine(op, u, v).value
    assert metric_cosine(op, fu, v).value == pytest.approx(quad(M, op, u, v) / math.sqrt(
        quad(M, op, u, u) * quad(M, op, v, v)), rel=TOL)
    assert optimal_scale(op, fu, fv).value == optimal_scale(op, u, v).value
    assert float(metric_inner(op, fu, fv)) == float(metric_inner(op, u, v))
    assert geometry_of_pair(op, fu, fv).to_dict() == geometry_of_pair(op, u, v).to_dict()
    assert np.array_equal(gram(op, [fu, fv]).value, gram(op, [u, v]).value)
    assert np.array_equal(directional_gradients(op, {"a": fu}).value, directional_gradients(op, {"a": u}).value)
    with pytest.raises(IncompatibleParamsError, match="entries"):
        metric_cosine(op, fu[:-1], fv)


def test_ggn_and_fisher_cosine_one_liners_match_dense_formulas():
    case = tiny_case()
    op = op_for("ggn")
    u, v = random_vector(op.theta, 62), random_vector(op.theta, 63)
    for one_liner, M in ((ggn_cosine, dense_ggn("quantized")), (fisher_cosine, dense_fisher("quantized"))):
        want = quad(M, op, u, v) / math.sqrt(quad(M, op, u, u) * quad(M, op, v, v))
        got = one_liner(case.model, case.params, u, v, case.batches)  # scope: u's keys
        assert not got.indefinite and got.value == pytest.approx(want, rel=TOL)
        flat = one_liner(case.model, case.params, op.flatten(u), op.flatten(v), case.batches, scope="quantized")
        assert flat.value == pytest.approx(want, rel=TOL)
    assert ggn_cosine(case.model, case.params, u, v, case.batches).info["metric"] == "ggn"


def test_allow_indefinite_gives_the_signed_ratio_beside_the_forms():
    """u = the bottom Ritz vector of H (uᵀHu < 0): NaN by default; with allow_indefinite the
    signed ratios from the dense H, still flagged; a null direction stays NaN either way."""
    case = tiny_case()
    op, H = op_for("hessian"), dense("hessian")
    u = eigsh(op, k=1, which="SA").eigenvectors[0]
    v = random_vector(op.theta, 64)
    uu, vv, uv = quad(H, op, u, u), quad(H, op, v, v), quad(H, op, u, v)
    assert uu < 0
    cos = metric_cosine(op, u, v, allow_indefinite=True)
    assert cos.indefinite and "signed ratio" in cos.message and cos.terms["uu"] == pytest.approx(uu, rel=TOL)
    assert cos.value == pytest.approx(uv / math.sqrt(abs(uu) * abs(vv)), rel=TOL)
    lam = optimal_scale(op, u, v, allow_indefinite=True)
    assert lam.indefinite and lam.value == pytest.approx(uv / uu, rel=TOL) and "maximum" in lam.message
    pg = geometry_of_pair(op, u, v, allow_indefinite=True)
    assert pg.indefinite and pg.metric_cosine == pytest.approx(cos.value, rel=TOL)
    assert pg.optimal_scale == pytest.approx(uv / uu, rel=TOL) and pg.forms["DD"] == pytest.approx(uu, rel=TOL)
    one = hessian_cosine(case.model, case.params, u, v, case.batches, allow_indefinite=True)
    assert one.value == pytest.approx(cos.value, rel=TOL)
    K = gram(op, {"neg": u, "v": v}, allow_indefinite=True)
    assert K.terms["cosines"][0, 1] == pytest.approx(cos.value, rel=TOL) and "signed" in K.message
    assert math.isnan(metric_cosine(op, u, v).value)  # the default is unchanged
    null = null_vector(op_for("hessian", "all"))
    op_all = op_for("hessian", "all")
    res = metric_cosine(op_all, null, random_vector(op_all.theta, 65), allow_indefinite=True)
    assert math.isnan(res.value) and "roundoff" in res.message


def test_messages_name_u_and_v_unless_told_otherwise():
    op = op_for("hessian")
    u = eigsh(op, k=1, which="SA").eigenvectors[0]
    v = random_vector(op.theta, 66)
    for res in (optimal_scale(op, u, v), quadratic_model(op, u, [0.0])):
        assert "along u" in res.message and "ρ" not in res.message
    pg = geometry_of_pair(op, u, v)
    assert "⟨u,u⟩_M" in pg.message and "ρ" not in pg.message
    assert "⟨ρ_D,ρ_D⟩_M" in geometry_of_pair(op, u, v, names=("ρ_D", "ρ_R")).message


def test_pair_geometry_on_a_fused_attention_model_leaves_it_alone():
    """The researcher's call: pair_geometry(model, model.state_dict(), u, v, batches) on a model
    with fused SDPA gives the explicit-attention numbers and does not change the model."""
    case = tiny_case()
    model = create_model("micro", **TINY).double()
    model.load_state_dict(case.params)
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = True
    u, v = random_vector(op_for("ggn").theta, 67), random_vector(op_for("ggn").theta, 68)
    got = pair_geometry(model, model.state_dict(), u, v, case.batches)
    want = pair_geometry(case.model, case.params, u, v, case.batches)
    assert got.metric_cosine == pytest.approx(want.metric_cosine, rel=TOL) and "copy" in got.info["attention"]
    assert all(m.fused_attn for m in model.modules() if hasattr(m, "fused_attn"))


# --------------------------------------------------------------------------------------------
# the commands
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """A micro-preset receiver (depth 1, width 16) on the offline 'shape' task, three vectors."""
    from qgeom.models import create_model
    from qgeom.params import from_model, select

    d = tmp_path_factory.mktemp("cli")
    overrides = {"depth": 1, "embed_dim": 16, "num_heads": 2}
    model = create_model("micro", 4, seed=0, **overrides)
    theta = from_model(model)
    meta = {"preset": "micro", "num_classes": 4, "task": "shape", "model_overrides": overrides}
    save_params(d / "receiver.safetensors", theta, meta)
    back = select(theta, "backbone")
    for i, name in enumerate(["rho_a", "rho_b", "rho_own"]):
        save_params(d / f"{name}.safetensors", {k: 0.01 * v for k, v in random_vector(back, i).items()})
    return d


def _app():
    import typer

    from qgeom.commands import curvature, spectrum

    app = typer.Typer()
    curvature.register(app)
    spectrum.register(app)
    return app


def test_geometry_command(cli_run):
    d = cli_run
    out = d / "geo"
    res = CliRunner().invoke(_app(), ["geometry", str(d / "receiver.safetensors"), str(d / "rho_a.safetensors"),
                                      str(d / "rho_b.safetensors"), str(d / "rho_own.safetensors"),
                                      "--n-probe", "16", "--probe-batch", "8", "--out-dir", str(out)])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "geometry.json").read_text())
    assert summary["info"]["metric"] == "ggn" and summary["info"]["task"] == "shape"
    assert len(summary["pairs"]) == 6 and len(summary["vectors"]) == 3
    lines = (out / "geometry_pairs.csv").read_text().splitlines()
    assert lines[0].startswith("donor,receiver_vector,euclidean_cosine,metric_cosine,optimal_scale")
    assert len(lines) == 7


def test_spectrum_command(cli_run):
    d = cli_run
    out = d / "spec"
    res = CliRunner().invoke(_app(), ["spectrum", str(d / "receiver.safetensors"), "--k", "3", "--n-probe", "16",
                                      "--probe-batch", "8", "--hutchinson-probes", "4", "--slq-probes", "2",
                                      "--slq-iter", "8", "--lanczos-iter", "30", "--out-dir", str(out)])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "spectrum.json").read_text())
    ev = summary["eigen"]["eigenvalues"]
    assert len(ev) == 3 and ev == sorted(ev, reverse=True) and min(ev) >= -1e-6  # GGN: PSD
    assert len((out / "spectrum_density.csv").read_text().splitlines()) == 1001


def test_commands_help_and_errors(cli_run):
    app = _app()
    for cmd in ("geometry", "spectrum"):
        res = CliRunner().invoke(app, [cmd, "--help"])
        assert res.exit_code == 0 and "--metric" in res.output
    res = CliRunner().invoke(app, ["geometry", str(cli_run / "missing.safetensors"), str(cli_run / "rho_a.safetensors")])
    assert res.exit_code == 1 and "Error" in res.output

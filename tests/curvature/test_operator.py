"""Curvature operators against dense float64 references on the tiny ViT (see _cases_curvature).

Tolerances. float64 products agree with the dense references to a relative Frobenius error
< 1e-10: both sides sum O(10³) terms of size O(1) with unit roundoff 1.1e-16, so the expected
error is ~1e-14; 1e-10 leaves four orders of margin yet catches any wrong term (a missing
1/N or C term is O(1)). float32 products against the float64 reference: < 1e-4 (unit roundoff
6e-8 times the same O(10²–10³) growth). Exact-arithmetic identities (symmetry, PSD) in float64
are checked to 1e-12 relative to the operator's scale.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from _cases_curvature import (SPEC, TINY, decomposed_layer_norm, dense_fisher, dense_ggn, dense_hessian,
                              flat_functions, random_vector, rel_err, sketch, tiny_case)
from qgeom.curvature.operator import CurvatureOperator, fisher_vp, ggn_vp, hvp
from qgeom.curvature.probe import (ForwardADError, TrainingModeError, check_eval_mode, check_forward_ad, probe_hash,
                                   reduce_over_probe)
from qgeom.models import create_model
from qgeom.params import IncompatibleParamsError, from_model, scope_keys
from qgeom.quant import ptq

F64_TOL = 1e-10
F32_TOL = 1e-4
ROUTES = ["forward-over-reverse", "double-backward"]


def operator(metric="hessian", dtype=torch.float64, **kw) -> CurvatureOperator:
    case = tiny_case(dtype)
    return CurvatureOperator(case.model, case.params, case.batches, metric=metric, **kw)


def dense_of(op: CurvatureOperator) -> torch.Tensor:
    """The operator as a dense matrix, from one matmat over the identity (small scopes only)."""
    return op.flat_matmat(torch.eye(op.n_params, dtype=torch.float64))


def agrees(op: CurvatureOperator, ref: torch.Tensor, tol: float = F64_TOL) -> bool:
    """M X = ref X on a random sketch X (see _cases_curvature.sketch)."""
    X, MX = sketch(op)
    return rel_err(MX, ref @ X) < tol


# --------------------------------------------------------------------------------------------
# the references themselves
# --------------------------------------------------------------------------------------------


def test_dense_reference_is_trustworthy():
    """The decomposed-LayerNorm Hessian is symmetric and matches central differences of the
    gradient (step 1e-5: truncation O(h²)·‖∇³L‖ ≈ 1e-9, roundoff 1e-16/h ≈ 1e-11 → tol 1e-6)."""
    H = dense_hessian("all")
    assert rel_err(H, H.T) < 1e-13
    case = tiny_case()
    theta, logits, _ = flat_functions(case, case.params, "all")
    g = torch.func.grad(lambda t: F.cross_entropy(logits(t, case.x), case.y))
    h = 1e-5
    for j in (0, 40, 300, 700, 1080):
        e = torch.zeros_like(theta)
        e[j] = h
        col = (g(theta + e) - g(theta - e)) / (2 * h)
        assert rel_err(H[:, j], col) < 1e-6


# --------------------------------------------------------------------------------------------
# products against dense matrices
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ROUTES)
@pytest.mark.parametrize("scope", ["all", "quantized"])
def test_hessian_matches_dense(method, scope):
    op = operator("hessian", scope=scope, method=method)
    assert op.info["method"] == method
    assert agrees(op, dense_hessian(scope))
    # the single-vector path (k = 1) is a different code path from matmat's batched one
    v = random_vector(op.theta, 0)
    ref = dense_hessian(scope) @ op.flatten(v)
    assert rel_err(op.flatten(op.matvec(v)), ref) < F64_TOL


@pytest.mark.parametrize("scope", ["all", "quantized"])
def test_cached_gradient_graph_matches_dense(scope):
    """cache_graph: products as backward passes through the kept ∇L_b graphs (both batches of the
    tiny case) equal the dense Hessian (1e-10), repeat bit for bit, and survive clear_cache; a
    one-batch probe set caches by default, several do not."""
    op = operator("hessian", scope=scope, cache_graph=True)
    assert op.cache_graph and op.info["method"] == "double-backward"
    assert agrees(op, dense_hessian(scope)) and len(op._graphs) == 2
    v = random_vector(op.theta, 0)
    ref = dense_hessian(scope) @ op.flatten(v)
    first = op.flat_matvec(op.flatten(v))
    assert rel_err(first, ref) < F64_TOL
    assert torch.equal(op.flat_matvec(op.flatten(v)), first)  # the graph is reused, not consumed
    op.clear_cache()
    assert not op._graphs and rel_err(op.flat_matvec(op.flatten(v)), ref) < F64_TOL
    case = tiny_case()
    assert not operator("hessian").cache_graph  # two batches: off by default
    assert CurvatureOperator(case.model, case.params, case.batches[:1], metric="hessian").cache_graph
    assert not CurvatureOperator(case.model, case.params, case.batches[:1], metric="ggn").cache_graph


def test_scoped_hessian_is_the_submatrix():
    case = tiny_case()
    keys = scope_keys(case.params, "all")
    qkeys = set(scope_keys(case.params, "quantized"))
    mask = torch.cat([torch.full((case.params[k].numel(),), k in qkeys) for k in keys])
    assert rel_err(dense_hessian("quantized"), dense_hessian("all")[mask][:, mask]) < 1e-12


def test_ggn_matches_dense_jacobian_formula():
    op = operator("ggn")
    assert agrees(op, dense_ggn())
    # the reference is symmetric PSD: eigenvalues ≥ −1e-12 ‖G‖ (float64 roundoff of an exactly
    # PSD matrix); the operator's own symmetry and PSD are checked for all vectors below
    G = dense_ggn()
    assert rel_err(G, G.T) < 1e-12
    ev = torch.linalg.eigvalsh(G)
    assert ev.min() > -1e-12 * ev.abs().max()
    # on the quantized scope (P = 512) the operator's own dense matrix is cheap enough
    Gq = dense_of(operator("ggn", scope="quantized"))
    assert rel_err(Gq, dense_ggn("quantized")) < F64_TOL and rel_err(Gq, Gq.T) < 1e-12
    ev = torch.linalg.eigvalsh(0.5 * (Gq + Gq.T))
    assert ev.min() > -1e-12 * ev.abs().max()


def test_fisher_matches_per_sample_gradients():
    assert agrees(operator("fisher"), dense_fisher())


def test_head_scope_hessian_equals_ggn():
    """Analytic: the logits are linear in the head, so H = G on the head's coordinates."""
    scope = lambda k, _t: k.startswith("head.")  # noqa: E731
    H, G = dense_of(operator("hessian", scope=scope)), dense_of(operator("ggn", scope=scope))
    assert rel_err(H, G) < F64_TOL


def test_ste_hessian_is_the_hessian_at_the_quantized_point():
    """With the identity STE Jacobian, H_ste(θ) = H_L(Q_b(θ)) on every coordinate."""
    H_q = dense_hessian("all", at="quantized")
    for method in ROUTES:
        op = operator("hessian", objective="ste", spec=SPEC, method=method)
        assert agrees(op, H_q)
    assert rel_err(H_q, dense_hessian("all")) > 1e-3  # Q_b really moved the point
    case = tiny_case()
    plain = CurvatureOperator(case.model, ptq(case.params, SPEC), case.batches, metric="hessian")
    op = operator("hessian", objective="ste", spec=SPEC)
    assert abs(op.loss() - plain.loss()) < 1e-12
    assert rel_err(op.flatten(op.gradient()), plain.flatten(plain.gradient())) < 1e-12


def test_loss_and_gradient_match_dense():
    case = tiny_case()
    op = operator("ggn")
    theta, logits, _ = flat_functions(case, case.params, "all")
    loss = lambda t: F.cross_entropy(logits(t, case.x), case.y)  # noqa: E731
    assert abs(op.loss() - float(loss(theta))) < 1e-13
    assert rel_err(op.flatten(op.gradient()), torch.func.grad(loss)(theta)) < 1e-12
    shift = random_vector(op.theta, 3)
    assert abs(op.loss(shift) - float(loss(theta + op.flatten(shift)))) < 1e-12


@pytest.mark.parametrize("metric", ["hessian", "ggn"])
def test_float32_matches_float64_reference(metric):
    op = operator(metric, dtype=torch.float32)
    assert op.info["dtype"] == "float32"
    ref = dense_hessian("all") if metric == "hessian" else dense_ggn()
    X = torch.randn(op.n_params, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert rel_err(torch.from_numpy(op.to_scipy() @ X.numpy()), ref @ X) < F32_TOL


# --------------------------------------------------------------------------------------------
# matmat, determinism, symmetry
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("metric,method", [("hessian", m) for m in ROUTES] + [("ggn", "auto"), ("fisher", "auto")])
def test_matmat_equals_stacked_matvec_and_is_deterministic(metric, method):
    op = operator(metric, method=method)
    vs = [random_vector(op.theta, s) for s in range(3)]
    batched = op.matmat(vs)
    single = [op.matvec(v) for v in vs]
    for a, b in zip(batched, single):
        assert rel_err(op.flatten(a), op.flatten(b)) < 1e-12  # same math, different op order
    again = op.matmat(vs)  # two consecutive products agree bitwise (CPU kernels are deterministic)
    assert all(torch.equal(op.flatten(a), op.flatten(b)) for a, b in zip(batched, again))
    chunked = op.matmat(vs, chunk_size=2)
    assert all(rel_err(op.flatten(a), op.flatten(b)) < 1e-12 for a, b in zip(batched, chunked))


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), metric=st.sampled_from(["hessian", "ggn", "fisher"]))
def test_symmetric_for_all_vectors(seed, metric):
    """uᵀ(Mv) = vᵀ(Mu) for all u, v (to 1e-12 of ‖u‖‖Mv‖); vᵀGv ≥ 0 and vᵀFv ≥ 0."""
    op = operator(metric)
    u, v = random_vector(op.theta, seed), random_vector(op.theta, seed + 1)
    Mu, Mv = op.matmat([u, v])
    uMv, vMu = float(op.flatten(u) @ op.flatten(Mv)), float(op.flatten(v) @ op.flatten(Mu))
    scale = float(op.flatten(u).norm() * op.flatten(Mv).norm())
    assert abs(uMv - vMu) <= 1e-12 * scale
    if metric != "hessian":
        assert float(op.flatten(v) @ op.flatten(Mv)) >= -1e-12 * scale


# --------------------------------------------------------------------------------------------
# probe set, info, one-liners
# --------------------------------------------------------------------------------------------


def test_reduce_over_probe_weights_by_batch_size():
    batches = [(torch.zeros(3), torch.zeros(3)), (torch.zeros(1), torch.zeros(1))]
    out = reduce_over_probe(lambda x, y: {"a": torch.tensor(float(len(y)))}, batches)
    assert float(out["a"]) == pytest.approx((3 * 3 + 1 * 1) / 4)
    with pytest.raises(ValueError, match="empty"):
        reduce_over_probe(lambda x, y: x, [])


def test_info_records_provenance():
    case = tiny_case()
    op = operator("ggn", scope="quantized")
    for key in ("metric", "objective", "scope", "method", "dtype", "expansion_point", "probe", "n_params"):
        assert key in op.info
    assert op.info["probe"] == probe_hash(case.batches)
    assert op.info["probe"] != probe_hash(case.batches[:1])
    assert op.info["scope"] == "quantized" and op.info["n_params"] == op.n_params
    assert op.info["method"] == "jvp-vjp" and operator("hessian").info["method"] == "double-backward"
    assert "ggn" in repr(op)


def test_one_liners():
    case = tiny_case()
    op = operator("hessian", scope="quantized")
    v = random_vector(op.theta, 7)
    assert rel_err(op.flatten(hvp(case.model, case.params, v, case.batches, scope="quantized")),
                   op.flatten(op.matvec(v))) < 1e-12
    g = operator("ggn", scope="quantized")
    assert rel_err(g.flatten(ggn_vp(case.model, case.params, v, case.batches, scope="quantized")),
                   g.flatten(g.matvec(v))) < 1e-12
    f = operator("fisher", scope="quantized")
    assert rel_err(f.flatten(fisher_vp(case.model, case.params, v, case.batches, scope="quantized")),
                   f.flatten(f.matvec(v))) < 1e-12


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------


def test_training_mode_dropout_is_refused():
    model = create_model("micro", drop_rate=0.1, **TINY).train()
    with pytest.raises(TrainingModeError, match="eval"):
        CurvatureOperator(model, from_model(model), tiny_case(torch.float32).batches)
    model.eval()
    CurvatureOperator(model, from_model(model), tiny_case(torch.float32).batches)  # fine in eval mode
    create_model("micro", **TINY).train()  # p = 0 everywhere: deterministic, accepted
    check_eval_mode(create_model("micro", **TINY).train())
    with pytest.raises(TrainingModeError, match="BatchNorm"):
        check_eval_mode(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)).train())


def test_fused_attention_is_handled_on_a_copy_and_the_model_is_left_alone():
    """A model with fused SDPA (no forward-mode AD) gives the explicit-attention numbers — the
    operator works on a copy sharing its tensors — and the caller's model is not changed."""
    case = tiny_case()
    model = create_model("micro", **TINY).double()
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = True
    before = {id(m): m.fused_attn for m in model.modules() if hasattr(m, "fused_attn")}
    X = torch.randn(1083, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    for metric in ("hessian", "ggn"):
        op = CurvatureOperator(model, case.params, case.batches, metric=metric)
        assert op.model is not model and "copy" in op.info["attention"]
        assert rel_err(op.flat_matmat(X), operator(metric).flat_matmat(X)) < F64_TOL
    assert {id(m): m.fused_attn for m in model.modules() if hasattr(m, "fused_attn")} == before
    assert "attention" not in operator("ggn").info  # an explicit-attention model is used as it is
    with pytest.raises(ForwardADError, match="without_fused_attention"):
        check_forward_ad(model, "double-backward")


def test_mismatched_vector_keys_are_refused():
    op = operator("ggn", scope="quantized")
    v = random_vector(op.theta, 0)
    with pytest.raises(IncompatibleParamsError, match="keys only in"):
        op.matvec({**v, "head.weight": torch.zeros(3, 8, dtype=torch.float64)})
    with pytest.raises(IncompatibleParamsError):
        op.matvec({k: t for k, t in list(v.items())[1:]})
    with pytest.raises(IncompatibleParamsError, match="shape"):
        op.matvec({k: t[..., :1] for k, t in v.items()})
    with pytest.raises(ValueError, match="NaN"):
        op.matvec({k: t * float("nan") for k, t in v.items()})


def test_bad_arguments():
    case = tiny_case()
    for kw, match in [({"metric": "kfac"}, "metric"), ({"objective": "int8"}, "objective"),
                      ({"method": "magic"}, "method"), ({"scope": lambda k, t: False}, "selects no"),
                      ({"dtype": torch.int32}, "dtype")]:
        with pytest.raises(ValueError, match=match):
            CurvatureOperator(case.model, case.params, case.batches, **kw)
    with pytest.raises(ValueError, match="empty"):
        CurvatureOperator(case.model, case.params, [])


# --------------------------------------------------------------------------------------------
# cross-check against curvlinops
# --------------------------------------------------------------------------------------------


def test_agrees_with_curvlinops():
    """Hessian and GGN against curvlinops in float32, to 1e-6 relative (max-abs over 3 columns).

    curvlinops' Hessian is jvp∘jacrev, the composition torch 2.14 gets wrong through
    F.layer_norm (17 % off on this model), so it runs with the decomposed LayerNorm; its GGN
    (first-order jvp/vjp) is run on the native model.
    """
    curvlinops = pytest.importorskip("curvlinops")
    case = tiny_case(torch.float32)
    model = create_model("micro", **TINY)
    model.load_state_dict(case.params)
    params = list(model.parameters())
    X = np.random.default_rng(0).standard_normal((sum(p.numel() for p in params), 3))
    for metric, cls, ctx in [("ggn", curvlinops.GGNLinearOperator, None),
                             ("hessian", curvlinops.HessianLinearOperator, decomposed_layer_norm)]:
        mine = CurvatureOperator(model, case.params, case.batches, metric=metric).to_scipy() @ X
        with ctx() if ctx else contextlib.nullcontext():
            theirs = cls(model, nn.CrossEntropyLoss(), params, case.batches).to_scipy() @ X
        assert np.abs(mine - theirs).max() / np.abs(mine).max() < 1e-6


@pytest.mark.gpu
def test_cuda_products_match_cpu():
    """On CUDA (float64): Hessian and GGN products equal the CPU ones to 1e-10 relative."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    case = tiny_case()
    cuda_params = {k: v.cuda() for k, v in case.params.items()}
    cuda_batches = [(x.cuda(), y.cuda()) for x, y in case.batches]
    model = create_model("micro", **TINY).double().cuda()
    for metric in ("hessian", "ggn"):
        cpu = operator(metric)
        gpu = CurvatureOperator(model, cuda_params, cuda_batches, metric=metric)
        vs = [random_vector(cpu.theta, s) for s in range(2)]
        for a, b in zip(cpu.matmat(vs), gpu.matmat(vs)):
            assert rel_err(gpu.flatten(b).cpu(), cpu.flatten(a)) < F64_TOL

"""GPTQ's layer metric (qgeom.curvature.layer, layer_geometry, CurvatureOperator(metric="layer"))
against references built here, independent of its code paths.

References. The layer inputs X_ℓ come from an explicit forward pass of the tiny one-block ViT
written out below (patch embedding, attention and MLP by matrix products; no hooks, no
``functional_call``), checked against the model's own logits. H_ℓ is then Σ over every row x of
x xᵀ, accumulated by a Python loop over the 12 images × 5 tokens, divided by the row count; the
layer metric is the dense block-diagonal matrix with blocks H_ℓ ⊗ I_out in column-stacking vec.

Tolerances (float64 throughout). H_ℓ and the forms: the same sums as the reference in another
order, ~1e-16 relative per operation over ≤ 60 rows → 1e-12 relative. The single-layer identity
⟨u,u⟩ = ‖UX‖²/N against qgeom.gptq.output_error: 1e-12 relative. cos ∈ [−1, 1] up to 1e-12
(a cosine of v with c·v is ±1 to roundoff). λ* against a grid scan of ‖λu − v‖²_layer: the
scan's minimiser lies within one grid step (1e-4 of the scanned range) of λ*, and no grid point
beats the form at λ* by more than 1e-12 relative.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from _cases_curvature import random_vector, tiny_case
from qgeom.curvature.geometry import gram, metric_cosine, pair_geometry
from qgeom.curvature.layer import batch_grams, linear_weights
from qgeom.curvature.layer_geometry import geometry_by_layer, layer_geometry, layer_gram_matrices
from qgeom.curvature.operator import CurvatureOperator
from qgeom.gptq import gptq_quantize, layer_hessian, output_error
from qgeom.params import select
from qgeom.quant import QuantSpec

TOL = 1e-12
WEIGHTS = ["blocks.0.attn.qkv.weight", "blocks.0.attn.proj.weight", "blocks.0.mlp.fc1.weight",
           "blocks.0.mlp.fc2.weight"]


# --------------------------------------------------------------------------------------------
# the reference: layer inputs by an explicit forward pass, H_ℓ by a loop over rows
# --------------------------------------------------------------------------------------------


def explicit_forward(model: nn.Module, p: dict, x: torch.Tensor) -> tuple[dict, torch.Tensor]:
    """(inputs of every Linear (B, T, in), logits) of a one-block timm ViT, written out."""
    net = copy.deepcopy(model)
    net.load_state_dict(p)
    blk, C = net.blocks[0], net.embed_dim
    H, B = blk.attn.num_heads, x.shape[0]
    d = C // H
    pre = "blocks.0."
    patches = F.conv2d(x, p["patch_embed.proj.weight"], p["patch_embed.proj.bias"], stride=4).flatten(2).transpose(1, 2)
    h = torch.cat([p["cls_token"].expand(B, -1, -1), patches], 1) + p["pos_embed"]
    ins = {}
    z = F.layer_norm(h, (C,), p[pre + "norm1.weight"], p[pre + "norm1.bias"], eps=blk.norm1.eps)
    ins[WEIGHTS[0]] = z
    T = z.shape[1]
    qkv = (z @ p[WEIGHTS[0]].T + p[pre + "attn.qkv.bias"]).reshape(B, T, 3, H, d).permute(2, 0, 3, 1, 4)
    att = torch.softmax(qkv[0] @ qkv[1].transpose(-2, -1) / math.sqrt(d), -1)
    o = (att @ qkv[2]).transpose(1, 2).reshape(B, T, C)
    ins[WEIGHTS[1]] = o
    h = h + o @ p[WEIGHTS[1]].T + p[pre + "attn.proj.bias"]
    z = F.layer_norm(h, (C,), p[pre + "norm2.weight"], p[pre + "norm2.bias"], eps=blk.norm2.eps)
    ins[WEIGHTS[2]] = z
    m = F.gelu(z @ p[WEIGHTS[2]].T + p[pre + "mlp.fc1.bias"])
    ins[WEIGHTS[3]] = m
    h = h + m @ p[WEIGHTS[3]].T + p[pre + "mlp.fc2.bias"]
    h = F.layer_norm(h, (C,), p["norm.weight"], p["norm.bias"], eps=net.norm.eps)
    return ins, h[:, 0] @ p["head.weight"].T + p["head.bias"]


def reference_grams(case) -> dict[str, torch.Tensor]:
    """H_ℓ = (1/N) Σ_rows x xᵀ over all 12 images, by a loop over rows (float64)."""
    ins, _ = explicit_forward(case.model, case.params, case.x)
    out = {}
    for w, X in ins.items():
        rows = X.reshape(-1, X.shape[-1])
        acc = torch.zeros(rows.shape[1], rows.shape[1], dtype=torch.float64)
        for r in rows:
            acc += torch.outer(r, r)
        out[w] = acc / len(rows)
    return out


def rel(a, b) -> float:
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


@pytest.fixture(scope="module")
def case():
    return tiny_case()


@pytest.fixture(scope="module")
def ref(case):
    return reference_grams(case)


@pytest.fixture(scope="module")
def op(case):
    """The layer metric on every tensor (biases, norms, embeddings and the head get zero weight)."""
    return CurvatureOperator(case.model, case.params, case.batches, metric="layer", scope="all")


def test_the_explicit_forward_is_the_model(case):
    """The reference's inputs are trustworthy: its logits are the model's to 1e-12."""
    _, z = explicit_forward(case.model, case.params, case.x)
    assert rel(z, torch.func.functional_call(case.model, case.params, (case.x,))) < TOL


def test_layer_grams_equal_the_row_loop_reference(op, ref):
    """H_ℓ over two batches of unequal size (7, 5: the n_b/N weighting) against the loop over rows."""
    H = op.layer_grams()
    assert list(H) == WEIGHTS and op.info["layers"] == 4 and op.info["method"] == "forward"
    for w in WEIGHTS:
        assert H[w].dtype == torch.float64 and rel(H[w], ref[w]) < TOL, w
        assert torch.equal(H[w], H[w].T)
        assert torch.linalg.eigvalsh(H[w]).min() > -TOL * torch.linalg.eigvalsh(H[w]).max()  # PSD


def test_inner_product_equals_the_dense_kronecker_form(case, op, ref):
    """⟨u, v⟩_layer = Σ_ℓ vec(U_ℓ)ᵀ (H_ℓ ⊗ I_out) vec(V_ℓ) (vec stacks columns), from dense matrices."""
    u, v = random_vector(op.theta, 1), random_vector(op.theta, 2)
    dense = 0.0
    for w in WEIGHTS:
        out = u[w].shape[0]
        vec_u, vec_v = u[w].T.reshape(-1), v[w].T.reshape(-1)
        dense += float(vec_u @ torch.kron(ref[w], torch.eye(out, dtype=torch.float64)) @ vec_v)
    K = gram(op, [u, v]).terms["K_sym"]
    assert abs(K[0, 1] - dense) <= TOL * abs(dense)
    sums = sum(Kl for Kl, _ in layer_gram_matrices(op, [u, v]).values())
    assert np.allclose(sums, K, rtol=TOL, atol=0)


def test_dense_operator_is_block_diagonal_with_zero_rows_off_the_layers(case, op, ref):
    """op @ I, column by column, against the block-diagonal matrix of I_out ⊗ H_ℓ (qgeom's flat
    order is row-major) with zero rows and columns for every bias, norm, embedding and the head."""
    P = op.n_params
    M = op.flat_matmat(torch.eye(P, dtype=torch.float64))
    D = torch.zeros(P, P, dtype=torch.float64)
    i = 0
    for k in op.keys:
        n = op.theta[k].numel()
        if k in ref:
            D[i:i + n, i:i + n] = torch.kron(torch.eye(op.theta[k].shape[0], dtype=torch.float64), ref[k])
        i += n
    assert rel(M, D) < TOL and rel(M, M.T) == 0.0
    assert i == P and op.info["n_tensors"] > len(WEIGHTS)


# --------------------------------------------------------------------------------------------
# one Linear layer: GPTQ's objective
# --------------------------------------------------------------------------------------------


class OneLinear(nn.Module):
    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.fc = nn.Linear(d_in, d_out)

    def forward(self, x):
        return self.fc(x).mean(1)  # tokens (B, T, in) → one output per image


@settings(max_examples=10, deadline=None)
@given(d_in=st.integers(1, 6), d_out=st.integers(1, 5), tokens=st.integers(1, 4), seed=st.integers(0, 999),
       bits=st.integers(2, 4))
def test_single_layer_form_is_gptqs_objective(d_in, d_out, tokens, seed, bits):
    """⟨u, u⟩_layer = ‖U X‖²_F / N = qgeom.gptq.output_error(W, W − U, 2XXᵀ/N) for one Linear,
    inputs (B, T, in) in two batches; and for U = W − Ŵ_GPTQ it is GPTQ's own recorded error."""
    g = torch.Generator().manual_seed(seed)
    model = OneLinear(d_in, d_out).double().eval()
    w = torch.randn(d_out, d_in, generator=g, dtype=torch.float64)
    params = {"fc.weight": w, "fc.bias": torch.randn(d_out, generator=g, dtype=torch.float64)}
    mix = torch.randn(d_in, d_in, generator=g, dtype=torch.float64)  # correlated inputs
    batches = [(torch.randn(n, tokens, d_in, generator=g, dtype=torch.float64) @ mix, torch.zeros(n, dtype=torch.long))
               for n in (3, 2)]
    X = torch.cat([x for x, _ in batches]).reshape(-1, d_in)
    op = CurvatureOperator(model, params, batches, metric="layer", scope="all")
    u = {"fc.weight": torch.randn(d_out, d_in, generator=g, dtype=torch.float64),
         "fc.bias": torch.randn(d_out, generator=g, dtype=torch.float64)}
    form = gram(op, [u]).value[0, 0]
    explicit = float((u["fc.weight"] @ X.T).square().sum()) / X.shape[0]
    assert abs(form - explicit) <= TOL * explicit
    assert abs(form - output_error(w, w - u["fc.weight"], layer_hessian(X))) <= TOL * explicit
    r = gptq_quantize(w, layer_hessian(X), QuantSpec(bits))
    e = gram(op, [{"fc.weight": w - r.weight, "fc.bias": torch.zeros(d_out, dtype=torch.float64)}]).value[0, 0]
    assert abs(e - r.error) <= TOL * max(r.error, 1e-300)


# --------------------------------------------------------------------------------------------
# cosines and λ*
# --------------------------------------------------------------------------------------------


COEF = st.one_of(st.just(0.0), st.floats(0.01, 3), st.floats(-3, -0.01))  # 0, or far from the roundoff floor


@settings(max_examples=15, deadline=None)
@given(s1=st.integers(0, 10**6), s2=st.integers(0, 10**6), a=COEF, b=COEF)
def test_cosines_are_symmetric_and_bounded(op, s1, s2, a, b):
    """For all u and v = a·u + b·w: cos_layer(u, v) = cos_layer(v, u) ∈ [−1, 1], pooled and per layer."""
    u, w = random_vector(op.theta, s1), random_vector(op.theta, s2)
    v = {k: a * u[k] + b * w[k] for k in u}
    uv, vu = geometry_by_layer(op, u, v), geometry_by_layer(op, v, u)
    for x, y in [(uv["pooled"], vu["pooled"])] + [(uv["layers"][k], vu["layers"][k]) for k in WEIGHTS]:
        if math.isnan(x["cosine"]):  # v = 0 (a = b = 0): undefined, said so
            assert x["indefinite"] and math.isnan(y["cosine"]) and a == 0 and b == 0
            continue
        assert abs(x["cosine"] - y["cosine"]) <= 1e-15 and abs(x["cosine"]) <= 1 + TOL
    if b == 0 and a != 0:
        assert abs(abs(uv["pooled"]["cosine"]) - 1) < TOL


def test_optimal_scale_minimises_the_layer_distance_on_a_scan(case, ref):
    """λ* = ⟨u,v⟩/⟨u,u⟩ minimises Σ_ℓ ‖(λU_ℓ − V_ℓ)X_ℓ‖²/N_ℓ, evaluated on a grid from the
    reference inputs (no operator involved in the scan)."""
    ins, _ = explicit_forward(case.model, case.params, case.x)
    back = select(case.params, "backbone")
    u, v = random_vector(back, 3), random_vector(back, 4)
    v = {k: 0.7 * u[k] + v[k] for k in u}
    res = layer_geometry(case.model, case.params, u, v, case.batches)
    lam = res["pooled"]["optimal_scale"]

    def dist(t: float, a=u, b=v) -> float:
        return sum(float(((t * a[w] - b[w]) @ X.reshape(-1, X.shape[-1]).T).square().sum()) / X[..., 0].numel()
                   for w, X in ins.items())

    grid = np.linspace(lam - 0.1, lam + 0.1, 2001)
    vals = np.array([dist(t) for t in grid])
    assert abs(grid[vals.argmin()] - lam) <= grid[1] - grid[0]
    assert dist(lam) <= vals.min() * (1 + TOL)
    zero = {k: torch.zeros_like(t) for k, t in u.items()}
    assert res["pooled"]["forms"]["DD"] == pytest.approx(dist(1.0, u, zero), rel=TOL)  # ‖U X‖²/N, layer by layer


def test_pooled_and_per_layer_agree_with_the_operator_routes(case):
    """layer_geometry's pooled numbers are metric_cosine's and pair_geometry's; the per-layer
    forms sum to the pooled ones; a vector only on biases has a zero form, reported NaN."""
    back = select(case.params, "backbone")
    u, v = random_vector(back, 5), random_vector(back, 6)
    res = layer_geometry(case.model, case.params, u, v, case.batches, names=("ρ_D", "ρ_R"))
    op = CurvatureOperator(case.model, case.params, case.batches, metric="layer", scope=list(u))
    assert res["pooled"]["cosine"] == pytest.approx(metric_cosine(op, u, v).value, rel=TOL)
    pg = pair_geometry(case.model, case.params, u, v, case.batches, metric="layer")
    assert pg.optimal_scale == pytest.approx(res["pooled"]["optimal_scale"], rel=TOL)
    assert math.isfinite(pg.directional_gradients["rho_D"])  # the loss gradient is still at hand
    for f in ("DD", "RR", "DR"):
        assert sum(x["forms"][f] for x in res["layers"].values()) == pytest.approx(res["pooled"]["forms"][f], rel=1e-10)
    biases = {k: (t if k.endswith("bias") else torch.zeros_like(t)) for k, t in u.items()}
    bad = geometry_by_layer(op, biases, v, names=("ρ_D", "ρ_R"))
    assert bad["pooled"]["indefinite"] and math.isnan(bad["pooled"]["cosine"]) and "ρ_D" in bad["pooled"]["message"]
    assert all(math.isnan(x["optimal_scale"]) for x in bad["layers"].values())


def test_forward_only_and_the_caller_model_untouched(case):
    """The blocks come from forward passes (the hooks are removed afterwards; no gradient is
    recorded), in any dtype; ``ste`` takes the inputs at Q_b(θ)."""
    model = case.model
    op = CurvatureOperator(model, case.params, case.batches, metric="layer", scope="quantized", objective="ste",
                           spec=QuantSpec(2))
    H = op.layer_grams()
    assert not any(m._forward_pre_hooks for m in model.modules()) and not any(m._forward_pre_hooks
                                                                                for m in op.model.modules())
    assert not any(t.requires_grad for t in H.values())
    fp = CurvatureOperator(model, case.params, case.batches, metric="layer", scope="quantized").layer_grams()
    assert rel(H[WEIGHTS[1]], fp[WEIGHTS[1]]) > 1e-3  # quantized qkv changes proj's inputs
    assert rel(H[WEIGHTS[0]], fp[WEIGHTS[0]]) < TOL  # qkv reads the (unquantized) norm output
    c32 = tiny_case(torch.float32)
    H32 = CurvatureOperator(c32.model, c32.params, c32.batches, metric="layer", scope="quantized").layer_grams()
    assert all(rel(H32[w], fp[w]) < 1e-5 for w in WEIGHTS)  # float32 inputs, float64 sums


def test_bad_input_is_refused_with_what_to_pass(case):
    with pytest.raises(ValueError, match="holds none"):
        CurvatureOperator(case.model, case.params, case.batches, metric="layer", scope=["head.weight", "norm.bias"])
    with pytest.raises(ValueError, match="choose one of hessian, ggn, fisher, layer"):
        CurvatureOperator(case.model, case.params, case.batches, metric="gptq")
    op = CurvatureOperator(case.model, case.params, case.batches, metric="ggn", scope="quantized")
    with pytest.raises(ValueError, match="metric='layer'"):
        op.layer_grams()
    with pytest.raises(ValueError, match="metric='layer'"):
        geometry_by_layer(op, op.theta, op.theta)
    lop = CurvatureOperator(case.model, case.params, case.batches, metric="layer", scope="quantized")
    with pytest.raises(ValueError, match="GGN and the Fisher only"):
        lop.jvp_gram([lop.theta])
    with pytest.raises(ValueError, match="never called"):
        batch_grams(case.model, WEIGHTS, lambda x: None, case.x)
    assert linear_weights(case.model, case.params, list(case.params)) == WEIGHTS
    assert linear_weights(case.model, case.params, sorted(case.params)) == WEIGHTS  # the model's (forward) order


def test_spectra_take_the_layer_metric_like_any_operator(op, ref):
    """Lanczos on op: λ_max(⊕_ℓ I_out ⊗ H_ℓ) = max_ℓ λ_max(H_ℓ) (rtol 1e-8: Lanczos to tol 1e-10)."""
    from qgeom.spectra.eigsh import eigsh

    top = eigsh(op, k=1, which="LA", max_iter=60, seed=0, return_vectors=False)
    expected = max(float(torch.linalg.eigvalsh(h)[-1]) for h in ref.values())
    assert top.eigenvalues[0] == pytest.approx(expected, rel=1e-8)

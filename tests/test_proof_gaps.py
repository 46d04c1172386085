"""Numeric tests for statements of proofs/ that had none (proofs/README.md, "Claims without a
numeric test yet"): empirical-Fisher covariance, STE metrics and level 2, Proposition 4′
(residual rotations, MLP sign flips and rescalings change the logits), Result 4 items 9–10
(global stream sign flip, key bias), foldings with s_i < 0, and ρ_D ∈ ker G (Result 1).

Every model is a tiny float64 timm ViT with every tensor perturbed (``tiny_vit``). Tolerances:

* FUNCTION_RTOL = 1e-10 (relative to max|logits|): float64 roundoff is ~1e-16 per operation;
  the measured symmetry errors are ~1e-15, so 1e-10 leaves a margin of 10^5 and still sits
  far below the change a non-symmetry produces: BROKEN = 1e-4 for whole-stream maps (measured
  0.35–1.8), MLP_BROKEN = 1e-6 for one hidden unit out of 16 (measured ≥ 5e-4 over all units
  of the seed-0 model; a single unit can be weak, so the margin is kept at 10^4 above 1e-10).
* NULL_RTOL = 1e-12 (relative to the norm of the whole vector): the key-bias entries of ∇L and
  of M·v are exact zeros in real arithmetic; they come out ~1e-17 (softmax of a row shift
  cancels only to roundoff), so 1e-12 allows 10^4 of accumulation and still fails for the
  query-bias entries next to them (≥ 1e-3, checked).
* GEOMETRY_RTOL = 1e-8: ``qgeom.symmetry.invariance.Tolerances`` for float64 (λ*, cos_M are ratios of
  forms each accurate to ~1e-14).
"""

from __future__ import annotations

import math
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from _cases_symmetry import assert_as_expected, batches, inputs, rel_logit_error  # noqa: F401

from qgeom.curvature.operator import CurvatureOperator
from qgeom.curvature.geometry import geometry_of_pair
from qgeom.symmetry.invariance import check_invariance, random_vectors
from qgeom.params import norm
from qgeom.quant import QuantSpec
from qgeom.testing import symmetries, tiny_vit, vit_configs
from qgeom.symmetry import (
    BlockLinear, Scaling, Symmetry, layernorm_folding, layerscale_folding, mlp_permutation,
    random_symmetry,
)
from qgeom.symmetry.catalogue import _RESIDUAL_AXIS
from qgeom.symmetry.layout import layout_of

FUNCTION_RTOL = 1e-10
BROKEN = 1e-4
MLP_BROKEN = 1e-6
NULL_RTOL = 1e-12
GEOMETRY_RTOL = 1e-8

TINY = dict(depth=2, num_heads=2, embed_dim=8, img_size=8, patch_size=4, mlp_ratio=2.0, init_values=0.5)
LN_GAIN = re.compile(r"(.*\.)?(norm\d?|fc_norm|norm_pre)\.weight")
LN_BIAS = re.compile(r"(.*\.)?(norm\d?|fc_norm|norm_pre)\.bias")
READER = re.compile(r"blocks\.\d+\.(attn\.qkv|mlp\.fc1)\.weight|head\.weight")


def _stream_axes(model) -> list[tuple[str, int, tuple[int, ...]]]:
    """(name, residual-stream axis, shape) of every tensor that touches the stream (item 8)."""
    L = layout_of(model)
    out = []
    for name, shape in L.shapes.items():
        axes = [ax for pat, ax in _RESIDUAL_AXIS if re.fullmatch(pat, name)]
        assert axes, f"unknown tensor {name}"
        if axes[0] is not None:
            out.append((name, axes[0], shape))
    return out


def stream_lift(model, R: torch.Tensor) -> Symmetry:
    """The natural lift of item 8 applied to any R ∈ O(d): writers R·, LayerNorm and LayerScale
    parameters R·, readers ·Rᵀ (the same map on every stream axis, as for a permutation)."""
    op = BlockLinear(R.double()[None])
    axes = _stream_axes(model)
    return Symmetry("stream_lift", tuple((n, a, op) for n, a, _ in axes), {n: s for n, _, s in axes})


def stream_sign_flip(model, negate_ln_bias: bool = False) -> Symmetry:
    """Item 9: negate every stream writer (patch embedding, cls/pos tokens, proj, fc2 with their
    biases) and every LayerNorm gain; keep LayerNorm biases, LayerScale and the readers.
    ``negate_ln_bias=True`` is the wrong lift (LayerNorm biases negated too)."""
    acts, shapes = [], {}
    for name, axis, shape in _stream_axes(model):
        keep = READER.fullmatch(name) or name.endswith(".gamma") or (LN_BIAS.fullmatch(name) and not negate_ln_bias)
        if not keep:
            acts.append((name, axis, Scaling(-torch.ones(shape[axis], dtype=torch.float64))))
            shapes[name] = shape
    return Symmetry("stream_sign_flip", tuple(acts), shapes)


def _haar(n: int, gen: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def _rotation_fixing_ones(d: int, gen: torch.Generator) -> torch.Tensor:
    """R ∈ SO(d)·… with R 1 = 1: identity on span{1}, a Haar rotation on 1^⊥ (not a permutation)."""
    basis = torch.linalg.qr(torch.cat([torch.ones(d, 1, dtype=torch.float64),
                                       torch.randn(d, d - 1, generator=gen, dtype=torch.float64)], 1))[0]
    inner_rot = torch.block_diag(torch.ones(1, 1, dtype=torch.float64), _haar(d - 1, gen))
    return basis @ inner_rot @ basis.T


def _key_bias_slices(D: int, depth: int) -> dict[str, slice]:
    return {f"blocks.{i}.attn.qkv.bias": slice(D, 2 * D) for i in range(depth)}


# --------------------------------------------------------------------------------------------
# Result 3: empirical-Fisher covariance; STE metrics need level 2
# --------------------------------------------------------------------------------------------


@settings(max_examples=8, deadline=None)
@given(cfg=vit_configs(head_dim=(4, 8)), data=st.data())
def test_empirical_fisher_is_covariant_and_its_geometry_invariant(cfg, data):
    """For random configurations and catalogue elements: ∇L(gθ) = g⁻ᵀ∇L, F(gθ)gw = g⁻ᵀF(θ)w,
    and λ*_F, cos_F, the forms ⟨·,·⟩_F invariant (check_invariance's float64 tolerances ×κ(g))."""
    model, theta = tiny_vit(cfg, seed=data.draw(st.integers(0, 99)))
    g = data.draw(symmetries(model), label="g")
    report = check_invariance(model, theta, g, batches(cfg), metrics=("fisher",), levels=("covariance", "geometry"))
    assert_as_expected(report)
    df = report.frame
    fisher = df[df.quantity.str.contains("M=fisher") | df.quantity.str.endswith("_fisher")]
    # covariance, λ*_F, cos_F and the forms: all checked, none merely reported
    assert len(fisher) == 4 and (fisher.expected != "reported").all()
    assert (df.quantity == "forms ⟨w,w'⟩_fisher").sum() == 1


def test_empirical_fisher_covariance_fails_for_a_non_symmetry():
    """Negative control: q and k mixed by the same A (not A, A⁻ᵀ) breaks Fisher covariance."""
    model, theta = tiny_vit(TINY)
    A = torch.randn(2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    bad = Symmetry("bad", (("blocks.0.attn.qkv.weight", 0,
                            BlockLinear(torch.cat([A, A, torch.eye(4, dtype=torch.float64).expand(2, 4, 4)]))),),
                   {"blocks.0.attn.qkv.weight": (24, 8)})
    report = check_invariance(model, theta, bad, batches(TINY), metrics=("fisher",), levels=("covariance",))
    rows = {r["quantity"]: r for r in report.rows}
    assert rows["‖M(gθ)gw − g⁻ᵀM(θ)w‖ rel, M=fisher"]["measured"] > 1e-3
    assert not report.ok


def _ste_pair(model, theta, u, v, cfg, spec, objective="ste", metric="ggn"):
    op = CurvatureOperator(model, theta, batches(cfg), metric=metric, objective=objective, spec=spec)
    return geometry_of_pair(op, u, v)


@pytest.mark.parametrize("kind", ["head_permutation", "mlp_permutation", "residual_permutation"])
def test_ste_metric_geometry_invariant_under_quantizer_equivariant_symmetries(kind):
    """Level 1 + level 2 (Q_b(gθ) = gQ_b(θ)): H_ste and G_ste are covariant, so λ*, cos_M with
    objective="ste" are invariant to GEOMETRY_RTOL, for the GGN and the Hessian."""
    model, theta = tiny_vit(TINY)
    spec = QuantSpec(bits=3)
    g = random_symmetry(model, kind, seed=3)
    assert g.quantizer_equivariant(spec) and g.condition_number() == pytest.approx(1.0)
    u, v = random_vectors(theta, seed=1, scale=1e-1)
    for metric in ("ggn", "hessian"):
        a = _ste_pair(model, theta, u, v, TINY, spec, metric=metric)
        b = _ste_pair(model, g(theta), g(u), g(v), TINY, spec, metric=metric)
        for k in a.forms:
            assert abs(a.forms[k] - b.forms[k]) <= GEOMETRY_RTOL * max(abs(f) for f in a.forms.values())
        if metric == "ggn":  # PSD: λ*, cos defined
            assert abs(a.metric_cosine - b.metric_cosine) <= GEOMETRY_RTOL
            assert abs(a.optimal_scale - b.optimal_scale) <= GEOMETRY_RTOL * abs(a.optimal_scale)


@pytest.mark.parametrize("kind", ["layernorm_folding", "qk_mixing"])
def test_ste_metric_cosine_changes_under_level1_only_symmetries(kind):
    """Level 1 without level 2 (column scalings / GL mixing of quantized rows): the fp cos_G is
    invariant (≤ GEOMETRY_RTOL·κ(g)), but the STE cos_G moves by more than 1e-4 — the STE metric
    is evaluated at Q_b(gθ) ≠ gQ_b(θ)."""
    model, theta = tiny_vit(TINY)
    spec = QuantSpec(bits=3)
    g = random_symmetry(model, kind, strength=1.0, seed=3)
    assert not g.quantizer_equivariant(spec)
    u, v = random_vectors(theta, seed=1, scale=1e-1)
    fp = [_ste_pair(model, t, a, b, TINY, spec, objective="fp") for t, a, b in ((theta, u, v), (g(theta), g(u), g(v)))]
    ste = [_ste_pair(model, t, a, b, TINY, spec) for t, a, b in ((theta, u, v), (g(theta), g(u), g(v)))]
    assert abs(fp[0].metric_cosine - fp[1].metric_cosine) <= GEOMETRY_RTOL * g.condition_number()
    assert abs(ste[0].metric_cosine - ste[1].metric_cosine) > 1e-4


# --------------------------------------------------------------------------------------------
# Result 4: Proposition 4′ negative controls, items 9–10, foldings with s_i < 0
# --------------------------------------------------------------------------------------------


@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_residual_rotations_change_the_logits(seed):
    """Prop. 4′(a) with the lift of item 8 (no LayerScale, so only LayerNorm can obstruct):
    a permutation through the same code is exact (≤ FUNCTION_RTOL); a Haar rotation and a
    rotation fixing 1 change the logits by > BROKEN; the rotation fixing 1 becomes exact once
    every LayerNorm gain is 1 (n(Rx) = Rn(x) then, so the gain is the only obstruction)."""
    cfg = {**TINY, "init_values": None}
    model, theta = tiny_vit(cfg, seed=seed % 100)
    x, gen, D = inputs(cfg), torch.Generator().manual_seed(seed), cfg["embed_dim"]
    P = torch.eye(D, dtype=torch.float64)[torch.randperm(D, generator=gen)]
    assert rel_logit_error(model, theta, stream_lift(model, P), x) <= FUNCTION_RTOL
    R = _haar(D, gen)
    assert (R @ torch.ones(D, dtype=torch.float64) - torch.ones(D, dtype=torch.float64)).abs().max() > 1e-3
    assert rel_logit_error(model, theta, stream_lift(model, R), x) > BROKEN
    R1 = _rotation_fixing_ones(D, gen)
    assert torch.allclose(R1 @ torch.ones(D, dtype=torch.float64), torch.ones(D, dtype=torch.float64), atol=1e-12)
    assert rel_logit_error(model, theta, stream_lift(model, R1), x) > BROKEN
    unit_gains = {k: (torch.ones_like(t) if LN_GAIN.fullmatch(k) else t) for k, t in theta.items()}
    assert rel_logit_error(model, unit_gains, stream_lift(model, R1), x) <= FUNCTION_RTOL


def _mlp_unit_scaling(model, block: int, unit: int, c: float) -> Symmetry:
    """fc1 row and bias of one hidden unit × c, the fc2 column × 1/c (exact only for a
    c-homogeneous activation: never for GELU)."""
    L, p = layout_of(model), f"blocks.{block}.mlp."
    s = torch.ones(L.shapes[p + "fc1.weight"][0], dtype=torch.float64)
    s[unit] = c
    acts = ((p + "fc1.weight", 0, Scaling(s)), (p + "fc1.bias", 0, Scaling(s)), (p + "fc2.weight", 1, Scaling(1 / s)))
    return Symmetry(f"mlp_scale_{c}", acts, L.sub([p + "fc1.weight", p + "fc1.bias", p + "fc2.weight"]))


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 99), block=st.integers(0, 1), unit=st.integers(0, 15))
def test_mlp_sign_flips_and_rescalings_change_the_logits(seed, block, unit):
    """Prop. 4′(b): flipping one GELU hidden unit (c = −1) or rescaling it (c = 2, 1/2) changes
    the logits by > MLP_BROKEN; swapping two hidden units through the same machinery is exact."""
    model, theta = tiny_vit(TINY, seed=seed)
    x = inputs(TINY)
    for c in (-1.0, 2.0, 0.5):
        assert rel_logit_error(model, theta, _mlp_unit_scaling(model, block, unit, c), x) > MLP_BROKEN, c
    swap = torch.arange(16)
    swap[[unit, (unit + 1) % 16]] = swap[[(unit + 1) % 16, unit]]
    assert rel_logit_error(model, theta, mlp_permutation(model, {block: swap}), x) <= FUNCTION_RTOL


@settings(max_examples=10, deadline=None)
@given(cfg=vit_configs(head_dim=(4, 8)), seed=st.integers(0, 99))
def test_stream_sign_flip_preserves_logits_and_commutes_with_quantizer_and_adamw(cfg, seed):
    """Item 9 for random configurations: logits and loss unchanged (≤ 1e-10), Q_b(gθ) = gQ_b(θ)
    (≤ 1e-10, float64), one AdamW and one SGD step commute (≤ 1e-9, 1e-10) — check_invariance's
    float64 tolerances with κ(g) = 1. Negating the LayerNorm biases too (wrong lift) breaks it."""
    model, theta = tiny_vit(cfg, seed=seed)
    g = stream_sign_flip(model)
    assert g.is_signed_permutation() and g.quantizer_equivariant(QuantSpec(bits=3))
    assert norm({k: g(theta)[k] - theta[k] for k in g.touched}) > 1.0  # not the identity
    report = check_invariance(model, theta, g, batches(cfg), spec=QuantSpec(bits=3),
                              levels=("function", "quantizer", "optimizer"))
    assert_as_expected(report)
    df = report.frame
    assert (df.expected[df.level.isin(["function", "quantizer", "optimizer"]) & (df.quantity != "post-PTQ accuracy")]
            == "invariant").all()
    assert rel_logit_error(model, theta, stream_sign_flip(model, negate_ln_bias=True), inputs(cfg)) > BROKEN


@pytest.mark.parametrize("metric", ["ggn", "hessian", "fisher"])
def test_key_bias_has_zero_gradient_and_is_a_null_direction(metric):
    """Item 10: ∂L/∂b_k = 0 and (Mv) vanishes on the b_k coordinates for a random v, and M k = 0
    for k supported on b_k, all to NULL_RTOL; the query-bias entries next to them are not zero."""
    cfg = {**TINY, "qkv_bias": True}
    model, theta = tiny_vit(cfg)
    op = CurvatureOperator(model, theta, batches(cfg), metric=metric)
    kb, D = _key_bias_slices(8, 2), 8
    grad = op.gradient()
    gen = torch.Generator().manual_seed(1)
    v = {n: torch.randn(t.shape, generator=gen, dtype=t.dtype) for n, t in op.theta.items()}
    k = {n: torch.zeros_like(t) for n, t in op.theta.items()}
    for n, sl in kb.items():
        k[n][sl] = torch.randn(D, generator=gen, dtype=torch.float64)
    Mk, Mv = op.matmat([k, v])
    on_kb = lambda p: max(float(p[n][sl].abs().max()) for n, sl in kb.items())  # noqa: E731
    on_qb = lambda p: max(float(p[n][:D].abs().max()) for n in kb)  # noqa: E731
    assert on_kb(grad) <= NULL_RTOL * norm(grad) and on_qb(grad) > 1e-3 * norm(grad)
    assert on_kb(Mv) <= NULL_RTOL * norm(Mv) and on_qb(Mv) > 1e-3 * norm(Mv)
    assert norm(Mk) <= NULL_RTOL * norm(Mv) / norm(v) * norm(k)
    # the function itself: shifting b_k by a large t changes nothing
    shifted = {n: t.clone() for n, t in theta.items()}
    for n, sl in kb.items():
        shifted[n][sl] += 10.0
    assert rel_logit_error(model, theta, lambda p: shifted, inputs(cfg)) <= FUNCTION_RTOL


@pytest.mark.parametrize("metric", ["ggn", "fisher"])
def test_null_direction_does_not_change_the_metric_cosine(metric):
    """Result 1, equality without collinearity: for k ∈ ker M (key-bias support) and a random
    ρ_R, cos_M(ρ_R, ρ_R + k) = 1 to GEOMETRY_RTOL though ρ_R and ρ_R + k are not collinear."""
    cfg = {**TINY, "qkv_bias": True}
    model, theta = tiny_vit(cfg)
    op = CurvatureOperator(model, theta, batches(cfg), metric=metric)
    gen = torch.Generator().manual_seed(2)
    r = {n: torch.randn(t.shape, generator=gen, dtype=t.dtype) for n, t in op.theta.items()}
    rk = {n: t.clone() for n, t in r.items()}
    for n, sl in _key_bias_slices(8, 2).items():
        rk[n][sl] += 5.0 * torch.randn(8, generator=gen, dtype=torch.float64)
    pg = geometry_of_pair(op, r, rk)
    assert abs(pg.metric_cosine - 1.0) <= GEOMETRY_RTOL
    assert pg.euclidean_cosine < 0.99  # not collinear


def test_scale_and_cosine_are_undefined_for_a_null_direction():
    """Result 1 / item 10: ρ_D supported on the key biases has ⟨ρ_D,ρ_D⟩_G = ⟨ρ_D,ρ_R⟩_G = 0, so
    λ* and cos_G must come back NaN and flagged, never a number."""
    cfg = {**TINY, "qkv_bias": True}
    model, theta = tiny_vit(cfg)
    op = CurvatureOperator(model, theta, batches(cfg), metric="ggn")
    gen = torch.Generator().manual_seed(1)
    k = {n: torch.zeros_like(t) for n, t in op.theta.items()}
    for n, sl in _key_bias_slices(8, 2).items():
        k[n][sl] = torch.randn(8, generator=gen, dtype=torch.float64)
    r = {n: torch.randn(t.shape, generator=gen, dtype=t.dtype) for n, t in op.theta.items()}
    pg = geometry_of_pair(op, k, r)
    assert abs(pg.forms["DD"]) <= 1e-20 and abs(pg.forms["DR"]) <= 1e-12 * abs(pg.forms["RR"])  # the measured forms are null
    assert math.isnan(pg.optimal_scale) and math.isnan(pg.metric_cosine) and pg.indefinite


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_foldings_with_negative_factors_preserve_the_logits(seed):
    """Items 6–7 need only s_i ≠ 0: LayerNorm and LayerScale folding with s = ±e^u, mixed signs
    (at least one negative per site), preserve the logits to FUNCTION_RTOL·κ(g)."""
    model, theta = tiny_vit(TINY, seed=seed % 100)
    L, gen = layout_of(model), torch.Generator().manual_seed(seed)

    def mixed() -> torch.Tensor:
        sign = torch.where(torch.rand(8, generator=gen) < 0.5, -1.0, 1.0).double()
        sign[int(torch.randint(8, (1,), generator=gen))] = -1.0
        return sign * torch.exp(0.5 * torch.randn(8, generator=gen, dtype=torch.float64))

    x = inputs(TINY)
    for g in (layernorm_folding(model, {n: mixed() for n in L.fold_sites}),
              layerscale_folding(model, {f"blocks.{i}.ls{j}": mixed() for i in range(2) for j in (1, 2)})):
        assert rel_logit_error(model, theta, g, x) <= FUNCTION_RTOL * g.condition_number()
        assert norm({k: g(theta)[k] - theta[k] for k in g.touched}) > 1e-2  # a real change of θ

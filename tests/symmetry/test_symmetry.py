"""Symmetry elements: exact function invariance, group algebra, covectors, level expectations.

Property tests draw random tiny ViT configurations (depth 1–3, heads 1–4, head_dim 2–8, MLP
ratio 1/2/4, qkv bias, LayerScale, token/average pooling) and random elements, in float64, from
the public strategies of :mod:`qgeom.testing`.
"""

import math

import pytest
import torch
from _cases_symmetry import inputs, rel_logit_error  # shared cases (tests/)
from hypothesis import given, settings
from hypothesis import strategies as st

from qgeom.models import create_model
from qgeom.params import IncompatibleParamsError, cosine, from_model, inner, norm, select, sub
from qgeom.quant import QuantSpec, ptq
from qgeom.symmetry import (
    CATALOGUE, BlockLinear, Permutation, Scaling, Symmetry, UnsupportedSymmetryError, classify, compose,
    head_permutation, layerscale_folding, mlp_permutation, qk_mixing, random_symmetry, residual_permutation,
)
from qgeom.testing import symmetries, tiny_vit, vit_configs

FUNCTION_RTOL = 1e-10  # float64, relative to max |logits|


def random_like(theta, seed):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in theta.items()}


# --------------------------------------------------------------------------------------------
# level 1 and the algebra, for all configurations and elements
# --------------------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(cfg=vit_configs(), data=st.data())
def test_function_invariance(cfg, data):
    model, theta = tiny_vit(cfg, seed=data.draw(st.integers(0, 99)))
    g = data.draw(symmetries(model), label="g")
    assert rel_logit_error(model, theta, g, inputs(cfg)) <= FUNCTION_RTOL * max(1.0, g.condition_number())


@settings(max_examples=20, deadline=None)
@given(cfg=vit_configs(), data=st.data())
def test_group_algebra_and_covectors(cfg, data):
    """g⁻¹g = id, (gh)θ = g(hθ), ⟨g⁻ᵀc, gv⟩ = ⟨c, v⟩, ⟨gᵀc, v⟩ = ⟨c, gv⟩, restriction to a scope."""
    model, theta = tiny_vit(cfg)
    g, h = data.draw(symmetries(model), label="g"), data.draw(symmetries(model), label="h")
    c, v = random_like(theta, 1), random_like(theta, 2)
    scale = norm(theta)
    assert norm(sub(g.inverse()(g(theta)), theta)) <= 1e-12 * scale
    assert norm(sub((g @ h)(theta), g(h(theta)))) <= 1e-12 * scale
    assert norm(sub((g @ h).inverse()(theta), h.inverse()(g.inverse()(theta)))) <= 1e-12 * scale
    ref = norm(c) * norm(v) * (g @ h).condition_number()
    assert abs(inner(g.act_covector(c), g(v)) - inner(c, v)) <= 1e-12 * ref
    assert abs(inner((g @ h).act_covector(c), (g @ h)(v)) - inner(c, v)) <= 1e-12 * ref
    assert abs(inner(g.transpose()(c), v) - inner(c, g(v))) <= 1e-12 * ref
    restricted, full = g(select(theta, "backbone")), select(g(theta), "backbone")
    assert restricted.keys() == full.keys() and all(torch.equal(restricted[k], full[k]) for k in full)


@settings(max_examples=20, deadline=None)
@given(cfg=vit_configs(), data=st.data())
def test_euclidean_cosine_invariant_exactly_for_orthogonal_elements(cfg, data):
    """Permutations, sign flips, orthogonal mixing keep Euclidean cosines; GL and rescalings change them."""
    model, theta = tiny_vit(cfg)
    g = data.draw(symmetries(model), label="g")
    u = random_like(theta, 3)
    v = {k: 0.6 * u[k] + 0.8 * w for k, w in random_like(theta, 4).items()}
    change = abs(cosine(g(u), g(v)) - cosine(u, v))
    if g.is_orthogonal():
        assert change <= 1e-12
        assert abs(norm(g(u)) - norm(u)) <= 1e-12 * norm(u)
    else:
        assert change > 1e-9, f"{g.kind} is not orthogonal but kept the cosine (Δ = {change:.2e})"


@settings(max_examples=25, deadline=None)
@given(cfg=vit_configs(head_dim=(4, 8)), bits=st.sampled_from([3, 4, 8]), data=st.data())
def test_quantizer_equivariance_where_expected_and_violation_elsewhere(cfg, bits, data):
    """Q_b(gθ) = g Q_b(θ) to roundoff where the element's matrices imply it; a violation otherwise.

    (On 2×2 weights at 2 bits a non-equivariant g can happen to commute with Q_b — every entry
    but the row maximum rounds to 0 on both sides — so this draws head_dim ≥ 4 and ≥ 3 bits.)"""
    model, theta = tiny_vit(cfg)
    g = data.draw(symmetries(model), label="g")
    spec = QuantSpec(bits=bits)
    gQ = select(g(ptq(theta, spec)), "quantized")
    err = norm(sub(select(ptq(g(theta), spec), "quantized"), gQ)) / norm(gQ)
    if g.expectations(spec)["quantizer"]:
        assert err <= 1e-12 * g.condition_number()
    else:
        assert err > 1e-6, f"{g.kind}: expected a violation of Q_b equivariance, measured {err:.2e}"


@settings(max_examples=15, deadline=None)
@given(cfg=vit_configs(), data=st.data())
def test_computed_expectations_match_the_catalogue(cfg, data):
    """The catalogue table as data (CATALOGUE) agrees with what the matrices of generic elements imply."""
    heads = max(cfg["num_heads"], 2)
    cfg = {**cfg, "num_heads": heads, "embed_dim": heads * 4}
    model, _ = tiny_vit(cfg)
    g = data.draw(symmetries(model), label="g")
    assert g.expectations() == CATALOGUE[g.kind]


# --------------------------------------------------------------------------------------------
# the operators and the random elements
# --------------------------------------------------------------------------------------------


def test_axis_operators_dense_inverse_transpose():
    g = torch.Generator().manual_seed(0)
    ops = [Permutation(torch.randperm(6, generator=g)), Scaling(torch.rand(6, generator=g, dtype=torch.float64) + 0.5),
           BlockLinear(torch.randn(3, 2, 2, generator=g, dtype=torch.float64))]
    for op in ops:
        M = op.dense()
        torch.testing.assert_close(op.inverse().dense(), torch.linalg.inv(M), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(op.transpose().dense(), M.T, rtol=0, atol=0)
        t = torch.randn(4, 6, 5, generator=g, dtype=torch.float64)
        torch.testing.assert_close(op.apply(t, 1), torch.einsum("ij,ajb->aib", M, t), rtol=1e-12, atol=1e-12)
    assert classify(ops[:2], 6).monomial is not None and classify(ops[:2], 6).ortho_scale is None
    assert classify([ops[0], ops[0].inverse()], 6).ortho_scale == 1.0
    assert classify([ops[2], ops[2].inverse()], 6).monomial is not None  # a GL block and its inverse: identity


def test_random_elements_have_the_requested_strength_and_are_never_trivial():
    model = create_model("micro", 3, depth=2, embed_dim=12, num_heads=3, img_size=8, patch_size=4)
    for kind in ("qk_mixing", "vo_mixing", "qk_diagonal", "qk_scalar", "layernorm_folding"):
        assert math.isclose(random_symmetry(model, kind, strength=1.5).condition_number(), math.exp(1.5), rel_tol=1e-9)
    theta = from_model(model)
    for kind in ("head_permutation", "mlp_permutation", "residual_permutation"):
        g = random_symmetry(model, kind, seed=5)
        assert g.is_signed_permutation() and norm(sub(g(theta), theta)) > 0


def test_a_planted_non_symmetry_is_detected():
    """Negative control: q and k both mixed by A (instead of A and A⁻ᵀ) changes the function."""
    cfg = dict(depth=1, num_heads=2, embed_dim=8, img_size=8, patch_size=4, mlp_ratio=2.0)
    model, theta = tiny_vit(cfg)
    A = torch.randn(2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    op = BlockLinear(torch.cat([A, A, torch.eye(4, dtype=torch.float64).expand(2, 4, 4)]))
    bad = Symmetry("bad", (("blocks.0.attn.qkv.weight", 0, op),), {"blocks.0.attn.qkv.weight": (24, 8)})
    assert rel_logit_error(model, theta, bad, inputs(cfg)) > 1e-3
    good = qk_mixing(model, {0: A})
    assert rel_logit_error(model, theta, good, inputs(cfg)) <= FUNCTION_RTOL


def test_head_permutation_with_qk_norm_is_exact_but_qk_mixing_is_refused():
    cfg = dict(depth=1, num_heads=2, embed_dim=8, img_size=8, patch_size=4, mlp_ratio=2.0, qk_norm=True)
    model, theta = tiny_vit(cfg)
    assert rel_logit_error(model, theta, head_permutation(model, {0: torch.tensor([1, 0])}), inputs(cfg)) <= FUNCTION_RTOL
    with pytest.raises(UnsupportedSymmetryError, match="q/k normalisation"):
        random_symmetry(model, "qk_mixing")


@pytest.mark.parametrize("overrides, kind, match", [
    (dict(init_values=None), "layerscale_folding", "needs LayerScale"),
    (dict(num_classes=0), "residual_permutation", "head"),
    (dict(global_pool="map"), "head_permutation", "attention pooling"),
    (dict(block_fn="ResPostBlock"), "mlp_permutation", "ResPostBlock"),
])
def test_unsupported_configurations_raise_clear_errors(overrides, kind, match):
    from timm.models.vision_transformer import ResPostBlock

    overrides = dict(overrides)
    num_classes = overrides.pop("num_classes", 3)
    if overrides.get("block_fn") == "ResPostBlock":
        overrides["block_fn"] = ResPostBlock
    model = create_model("micro", num_classes, depth=1, embed_dim=8, num_heads=2, img_size=8, patch_size=4, **overrides)
    with pytest.raises(UnsupportedSymmetryError, match=match):
        random_symmetry(model, kind)


def test_bad_inputs_are_refused():
    model = create_model("micro", 3, depth=1, embed_dim=8, num_heads=2, img_size=8, patch_size=4)
    with pytest.raises(ValueError, match="permutation"):
        mlp_permutation(model, {0: torch.zeros(16, dtype=torch.int64)})
    with pytest.raises(ValueError, match="singular"):
        qk_mixing(model, {0: torch.zeros(2, 4, 4)})
    with pytest.raises(ValueError, match="out of range"):
        head_permutation(model, {3: torch.tensor([1, 0])})
    other = create_model("micro", 3, depth=1, embed_dim=12, num_heads=2, img_size=8, patch_size=4)
    with pytest.raises(IncompatibleParamsError, match="built for"):
        residual_permutation(model, torch.arange(8).roll(1))(from_model(other))
    with pytest.raises(UnsupportedSymmetryError):
        layerscale_folding(model, {"blocks.0.ls1": torch.ones(8)})


@pytest.mark.parametrize("kind, spec, equivariant", [
    ("mlp_permutation", QuantSpec(bits=3, granularity="tensor"), True),
    ("qk_scalar", QuantSpec(bits=3, granularity="tensor"), False),
    ("residual_permutation", QuantSpec(bits=3, granularity="group", group_size=4), False),
    ("qk_signed_permutation", QuantSpec(bits=3, symmetric=False), True),
    ("vo_diagonal", QuantSpec(bits=3, symmetric=False), False),
    ("head_permutation", QuantSpec(bits=3, symmetric=False), True),
    ("layerscale_folding", QuantSpec(bits=3, clip="mse"), True),
])
def test_quantizer_expectations_for_other_grids(kind, spec, equivariant):
    cfg = dict(depth=2, num_heads=2, embed_dim=8, img_size=8, patch_size=4, mlp_ratio=2.0, init_values=0.5)
    model, theta = tiny_vit(cfg)
    g = compose(random_symmetry(model, kind, seed=1))
    assert g.expectations(spec)["quantizer"] is equivariant
    gQ = select(g(ptq(theta, spec)), "quantized")
    err = norm(sub(select(ptq(g(theta), spec), "quantized"), gQ)) / norm(gQ)
    assert (err <= 1e-12) if equivariant else (err > 1e-6)

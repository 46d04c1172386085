"""qgeom.testing (issue 26, item 3): the exported strategies draw valid configurations, models,
elements and vectors; assert_invariant passes on true invariants and fails, with both values and
their difference, on known non-invariants; its tolerance follows the dtype.
"""

import sys

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import functional_call

import qgeom
from qgeom.curvature.geometry import ggn_cosine, hessian_cosine
from qgeom.models import create_model
from qgeom.params import cosine, inner, norm, select
from qgeom.symmetry import KINDS, head_permutation, random_symmetry
from qgeom.testing import RTOL, assert_invariant, symmetries, tiny_vit, vectors, vit_configs, vit_models

TINY = dict(depth=1, num_heads=2, embed_dim=8, img_size=8, patch_size=4, mlp_ratio=2.0)


def images(model, n=4, seed=0, dtype=torch.float64):
    size = model.patch_embed.img_size[0]
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def logits_of(model):
    def logits(theta, x):
        return functional_call(model, theta, (x,))
    return logits


def pair(theta, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = {k: 1e-2 * torch.randn(t.shape, generator=g, dtype=t.dtype) for k, t in theta.items()}
    return u, {k: 0.6 * t + 0.8e-2 * torch.randn(t.shape, generator=g, dtype=t.dtype) for k, t in u.items()}


# --------------------------------------------------------------------------------------------
# the strategies
# --------------------------------------------------------------------------------------------


@settings(max_examples=15, deadline=None)
@given(cfg=vit_configs(depth=(1, 2), num_heads=(2, 3), head_dim=(2, 4), mlp_ratio=(1.0, 3.0), img_size=(8,)))
def test_vit_configs_are_valid_and_within_the_ranges(cfg):
    model = create_model("micro", 3, **cfg)
    heads = model.blocks[0].attn.num_heads
    assert 1 <= len(model.blocks) <= 2 and 2 <= heads <= 3 and 2 <= cfg["embed_dim"] // heads <= 4
    assert cfg["embed_dim"] == heads * model.blocks[0].attn.head_dim
    assert model.blocks[0].mlp.fc1.out_features == int(cfg["embed_dim"] * cfg["mlp_ratio"])
    assert cfg["mlp_ratio"] in (1.0, 3.0) and cfg["img_size"] == 8


def test_vit_configs_refuse_invalid_ranges():
    with pytest.raises(ValueError, match="multiples of patch_size"):
        vit_configs(img_size=(10,))
    with pytest.raises(ValueError, match="range"):
        vit_configs(depth=(3, 1))


@settings(max_examples=10, deadline=None)
@given(data=st.data())
def test_models_elements_and_vectors_drawn_together(data):
    """Every drawn element preserves the drawn model's logits (float64, 1e-10·κ); vectors have
    θ's keys and shapes, the dtype asked for, finite entries; a scope restricts them."""
    model, theta = data.draw(vit_models(vit_configs(depth=(1, 2))), label="model")
    g = data.draw(symmetries(model), label="g")
    x = images(model)
    z0, z1 = logits_of(model)(theta, x), logits_of(model)(g(theta), x)
    assert float((z1 - z0).abs().max() / z0.abs().max()) <= 1e-10 * g.condition_number()
    v = data.draw(vectors(theta, dtype=torch.float32), label="v")
    assert v.keys() == theta.keys() and all(v[k].shape == theta[k].shape and v[k].dtype == torch.float32 for k in v)
    assert all(bool(torch.isfinite(t).all()) for t in v.values()) and norm(v) > 0
    w = data.draw(vectors(model, scope="quantized"), label="w")
    assert w.keys() == select(theta, "quantized").keys() and all(t.dtype == torch.float64 for t in w.values())


@settings(max_examples=10, deadline=None)
@given(data=st.data())
def test_symmetries_draw_only_the_kinds_asked_for(data):
    model, _ = tiny_vit({**TINY, "init_values": 0.5})
    g = data.draw(symmetries(model, kinds=["head_permutation", "layerscale_folding"], strength=1.0))
    assert g.kind in ("head_permutation", "layerscale_folding")


def test_symmetries_refuse_a_kind_the_model_lacks_with_the_reason():
    model, _ = tiny_vit(TINY)  # no LayerScale
    with pytest.raises(ValueError, match="LayerScale"):
        symmetries(model, kinds=["layerscale_folding"])
    with pytest.raises(ValueError, match="unknown symmetry kinds"):
        symmetries(model, kinds=["rotation"])
    assert "layerscale_folding" in KINDS


def test_without_hypothesis_the_strategies_say_how_to_install_it_and_assert_invariant_still_works(monkeypatch):
    monkeypatch.setitem(sys.modules, "hypothesis", None)  # `import hypothesis` now raises ImportError
    for make in (vit_configs, lambda: vit_models(), lambda: vectors({"w": torch.zeros(2)})):
        with pytest.raises(ImportError, match=r"pip install qgeom\[testing\]"):
            make()
    model, theta = tiny_vit(TINY)
    assert_invariant(logits_of(model), head_permutation(model, [1, 0]), theta, images(model), transport=["fixed"])


# --------------------------------------------------------------------------------------------
# assert_invariant passes on invariants
# --------------------------------------------------------------------------------------------


def test_passes_on_logits_hessian_and_ggn_cosines():
    """Logits and the Hessian cosine under a head permutation; the GGN cosine and λ-free forms
    under a per-head GL mixing (κ = e^1.5), vectors moved as tangents; a module moved by apply_to."""
    model, theta = tiny_vit(TINY)
    x, y = images(model, 6), torch.tensor([0, 1, 2, 0, 1, 2])
    u, v = pair(theta)
    perm, mix = head_permutation(model, [1, 0]), random_symmetry(model, "qk_mixing", strength=1.5, seed=0)
    assert_invariant(logits_of(model), perm, theta, x)  # x is not a dict: fixed by default
    hcos = lambda th, a, b: hessian_cosine(model, th, a, b, [(x, y)], allow_indefinite=True)  # noqa: E731
    assert_invariant(hcos, perm, theta, u, v, transport=["tangent", "tangent"])
    gcos = lambda th, a, b: ggn_cosine(model, th, a, b, [(x, y)])  # noqa: E731
    assert_invariant(gcos, mix, theta, u, v)
    assert_invariant(lambda m, xs: m(xs), mix, model, x)  # a module: g.apply_to(model)


def test_a_gradient_is_covariant_as_a_covector_and_pairs_with_a_tangent():
    model, theta = tiny_vit(TINY)
    x, y = images(model, 6), torch.tensor([0, 1, 2, 0, 1, 2])
    g = random_symmetry(model, "vo_mixing", strength=1.5, seed=1)

    def grad(th, xs, ys):
        leaves = {k: t.clone().requires_grad_(True) for k, t in th.items()}
        loss = F.cross_entropy(functional_call(model, leaves, (xs,)), ys)
        return dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))

    assert_invariant(grad, g, theta, x, y, covariant="covector")
    with pytest.raises(AssertionError, match="not covariant"):
        assert_invariant(grad, g, theta, x, y, covariant="tangent")
    c, (v, _) = grad(theta, x, y), pair(theta)
    assert_invariant(lambda th, a, b: inner(a, b), g, theta, c, v, transport=["covector", "tangent"])
    with pytest.raises(AssertionError, match="not invariant"):
        assert_invariant(lambda th, a, b: inner(a, b), g, theta, c, v, transport=["tangent", "tangent"])


# --------------------------------------------------------------------------------------------
# … and fails on known non-invariants, with a tolerance for the dtype
# --------------------------------------------------------------------------------------------


def test_fails_on_the_euclidean_cosine_under_gl_mixing_and_the_norm_under_rescaling():
    model, theta = tiny_vit(TINY)
    u, v = pair(theta)
    mix = random_symmetry(model, "qk_mixing", strength=1.5, seed=0)
    with pytest.raises(AssertionError) as err:
        assert_invariant(lambda th, a, b: cosine(a, b), mix, theta, u, v)
    text = str(err.value)
    assert "not invariant" in text and "q(θ) = " in text and "q(gθ) = " in text and "difference = " in text
    before, after = cosine(u, v), cosine(mix(u), mix(v))
    assert f"{before:.17g}" in text and f"{after:.17g}" in text
    with pytest.raises(AssertionError, match="not invariant"):
        assert_invariant(lambda th, a: norm(a), random_symmetry(model, "qk_scalar", strength=1.0, seed=0), theta, u)
    with pytest.raises(AssertionError, match="not invariant"):
        assert_invariant(lambda th, a: norm(a), random_symmetry(model, "layernorm_folding", seed=0), theta, u)
    assert_invariant(lambda th, a, b: cosine(a, b), head_permutation(model, [1, 0]), theta, u, v)  # orthogonal: holds


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_the_tolerance_follows_the_dtype(dtype):
    """Default rtol: 1e-10 (float64), 1e-4 (float32), × κ(g). A float32 GL mixing leaves roundoff
    of ~1e-7 in the logits: it passes the default and fails a float64-sized rtol=1e-12."""
    model, theta = tiny_vit(TINY, dtype=dtype)
    x = images(model, dtype=dtype)
    perm = head_permutation(model, [1, 0])
    with pytest.raises(AssertionError, match=f"rtol {RTOL[dtype]:.1e} "):
        assert_invariant(lambda th: th["blocks.0.attn.qkv.weight"][:4], perm, theta)  # moves: not invariant
    mix = random_symmetry(model, "qk_mixing", strength=1.0, seed=0)
    assert_invariant(logits_of(model), mix, theta, x)
    if dtype == torch.float32:
        with pytest.raises(AssertionError, match="not invariant"):
            assert_invariant(logits_of(model), mix, theta, x, rtol=1e-12)


def test_bad_arguments_are_refused():
    model, theta = tiny_vit(TINY)
    g = head_permutation(model, [1, 0])
    with pytest.raises(ValueError, match="one of"):
        assert_invariant(lambda th, a: norm(a), g, theta, theta, transport="tangent")
    with pytest.raises(ValueError, match="one of"):
        assert_invariant(lambda th, a: norm(a), g, theta, theta, transport=["sideways"])
    with pytest.raises(TypeError, match="cannot compare"):
        assert_invariant(lambda th: object(), g, theta)


def test_assert_invariant_is_exported_at_the_top_level():
    assert qgeom.assert_invariant is assert_invariant and "assert_invariant" in qgeom.__all__

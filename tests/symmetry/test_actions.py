"""How an element acts (issue 26, item 3): points, tangents and covectors under explicit names;
``g.apply_to(module)`` returning a transformed copy; a clear error for ``g(model)``; a bare
permutation where a permutation is meant.

float64 tolerances: the pairing ⟨g⁻ᵀc, gv⟩ sums ~10⁴ products of roundoff ~1e-16 each, so 1e-12
relative to ‖c‖‖v‖κ(g) has margin; the gradient check compares two backward passes (1e-10·κ).
"""

import copy

import pytest
import timm
import torch
import torch.nn.functional as F
from _cases_symmetry import inputs  # shared cases (tests/)
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import functional_call

from qgeom.params import IncompatibleParamsError, from_model, inner, load_into, norm, sub
from qgeom.symmetry import head_permutation, mlp_permutation, qk_mixing, random_symmetry
from qgeom.testing import symmetries, tiny_vit, vit_configs

TINY = dict(depth=2, num_heads=4, embed_dim=16, img_size=8, patch_size=4, mlp_ratio=2.0, init_values=0.5)


def gradient(model, theta, x, y):
    """∇L(θ) by autograd (a covector), float64."""
    leaves = {k: t.clone().requires_grad_(True) for k, t in theta.items()}
    loss = F.cross_entropy(functional_call(model, leaves, (x,)), y)
    return dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))


def displacement(theta, seed):
    """A tangent vector: θ' − θ for a random nearby point θ'."""
    g = torch.Generator().manual_seed(seed)
    other = {k: t + 1e-2 * torch.randn(t.shape, generator=g, dtype=t.dtype) for k, t in theta.items()}
    return sub(other, theta)


# --------------------------------------------------------------------------------------------
# tangents and covectors
# --------------------------------------------------------------------------------------------


@settings(max_examples=12, deadline=None)
@given(cfg=vit_configs(depth=(1, 2)), data=st.data())
def test_a_gradient_moves_as_a_covector_and_a_displacement_as_a_tangent(cfg, data):
    """∇L(gθ) = g.act_covector(∇L(θ)) (autograd at gθ, an independent computation);
    ⟨g·c, g·v⟩ = ⟨c, v⟩ with c a gradient and v a displacement; and for a non-orthogonal g,
    moving the gradient as a tangent breaks both."""
    model, theta = tiny_vit(cfg)
    g = data.draw(symmetries(model), label="g")
    x, y = inputs(cfg), torch.tensor([0, 1, 2, 0])
    c, v = gradient(model, theta, x, y), displacement(theta, 1)
    k = g.condition_number()
    gc, gv = g.act_covector(c), g.act_tangent(v)
    assert norm(sub(gradient(model, g.act_point(theta), x, y), gc)) <= 1e-10 * k * norm(gc)
    assert abs(inner(gc, gv) - inner(c, v)) <= 1e-12 * k * norm(c) * norm(v)
    if not g.is_orthogonal():
        wrong = g.act_tangent(c)  # the mix-up: a gradient moved like a displacement
        assert norm(sub(gradient(model, g.act_point(theta), x, y), wrong)) > 1e-6 * norm(gc)
        assert abs(inner(wrong, gv) - inner(c, v)) > 1e-9 * norm(c) * norm(v)


def test_mixing_up_tangent_and_covector_breaks_the_pairing_for_a_non_orthogonal_element():
    """One fixed non-orthogonal element (qk mixing, κ = e²): the pairing holds to 1e-12 with the
    right names and is off by far more than roundoff with either mix-up."""
    model, theta = tiny_vit(TINY)
    g = random_symmetry(model, "qk_mixing", strength=2.0, seed=3)
    assert not g.is_orthogonal()
    x, y = inputs(TINY), torch.tensor([0, 1, 2, 0])
    c, v = gradient(model, theta, x, y), displacement(theta, 2)
    ref, scale = inner(c, v), norm(c) * norm(v)
    assert abs(inner(g.act_covector(c), g.act_tangent(v)) - ref) <= 1e-12 * scale * g.condition_number()
    assert abs(inner(g.act_tangent(c), g.act_tangent(v)) - ref) > 1e-4 * scale
    assert abs(inner(g.act_covector(c), g.act_covector(v)) - ref) > 1e-4 * scale


def test_point_action_and_the_old_names_are_the_same_map():
    model, theta = tiny_vit(TINY)
    g = random_symmetry(model, "vo_mixing", seed=1)
    a = g.act_point(theta)
    for b in (g(theta), g.act(theta), g.act_tangent(theta)):  # g is linear: points and tangents alike
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_module_or_a_flat_vector_is_refused_with_what_to_pass():
    model, theta = tiny_vit(TINY)
    g = random_symmetry(model, "head_permutation", seed=0)
    for act in (g, g.act_point, g.act_tangent, g.act_covector):
        with pytest.raises(TypeError, match=r"g\.apply_to\(model\)"):
            act(model)
    with pytest.raises(TypeError, match="unflatten"):
        g.act_tangent(torch.zeros(10))


# --------------------------------------------------------------------------------------------
# g.apply_to(module)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["head_permutation", "qk_mixing", "vo_mixing", "mlp_permutation", "layernorm_folding",
                                  "layerscale_folding", "residual_permutation"])
def test_apply_to_returns_a_transformed_copy_and_leaves_the_module_bit_identical(kind):
    model, theta = tiny_vit(TINY)
    load_into(model, theta)
    before = {k: t.clone() for k, t in model.state_dict().items()}
    g = random_symmetry(model, kind, strength=1.5, seed=2)
    moved = g.apply_to(model)
    assert moved is not model and type(moved) is type(model)
    assert all(torch.equal(model.state_dict()[k], before[k]) for k in before)  # the caller's module unchanged
    x = inputs(TINY)
    with torch.no_grad():
        z0, z1 = model(x), moved(x)
    assert float((z1 - z0).abs().max() / z0.abs().max()) <= 1e-10 * g.condition_number()
    expected = g(theta)
    state = moved.state_dict()
    assert all(torch.equal(state[k], expected[k]) for k in expected)
    assert norm(sub(from_model(moved), theta)) > 0  # it did move


def test_apply_to_float32_and_fused_attention():
    """A timm-built float32 ViT with fused attention: the copy keeps its dtype and its fused flag,
    its tensors are gθ computed in float64 and rounded once, its logits equal to float32 roundoff."""
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", img_size=8, patch_size=4, embed_dim=16, depth=1, num_heads=4,
                            num_classes=3).eval()
    g = head_permutation(vit, [1, 0, 3, 2]) @ random_symmetry(vit, "qk_mixing", strength=1.0, seed=0)
    original = copy.deepcopy(vit.state_dict())
    moved = g.apply_to(vit)
    assert all(torch.equal(vit.state_dict()[k], original[k]) for k in original)
    theta64 = {k: t.double() for k, t in original.items()}
    assert all(torch.equal(moved.state_dict()[k], g(theta64)[k].float()) for k in g.touched)
    assert moved.blocks[0].attn.fused_attn == vit.blocks[0].attn.fused_attn
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        z0, z1 = vit(x), moved(x)
    assert float((z1 - z0).abs().max() / z0.abs().max()) <= 1e-5 * g.condition_number()  # float32: ε ≈ 1.2e-7


def test_apply_to_refuses_another_model_and_a_dict():
    model, _ = tiny_vit(TINY)
    other, _ = tiny_vit({**TINY, "embed_dim": 24})
    g = random_symmetry(model, "residual_permutation", seed=0)
    with pytest.raises(IncompatibleParamsError, match="built for"):
        g.apply_to(other)
    with pytest.raises(TypeError, match=r"g\(params\)"):
        g.apply_to(from_model(model))


# --------------------------------------------------------------------------------------------
# a bare permutation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("perm", [[1, 0, 3, 2], (1, 0, 3, 2), torch.tensor([1, 0, 3, 2])])
def test_head_permutation_takes_a_bare_permutation_for_every_block(perm):
    model, theta = tiny_vit(TINY)
    bare = head_permutation(model, perm)
    per_block = head_permutation(model, {0: torch.tensor([1, 0, 3, 2]), 1: torch.tensor([1, 0, 3, 2])})
    a, b = bare(theta), per_block(theta)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert bare.touched == per_block.touched and len(bare.touched) >= 6  # both blocks' qkv and proj
    x = inputs(TINY)
    z0, z1 = functional_call(model, theta, (x,)), functional_call(model, a, (x,))
    assert float((z1 - z0).abs().max() / z0.abs().max()) <= 1e-10
    q = theta["blocks.1.attn.qkv.weight"]  # head 0 of the new model is head 1 of the old one (d = 4 rows each)
    assert torch.equal(a["blocks.1.attn.qkv.weight"][:4], q[4:8])


def test_per_block_dicts_still_work_and_mlp_permutation_takes_a_bare_one_too():
    model, theta = tiny_vit(TINY)
    g = head_permutation(model, {1: [3, 2, 1, 0]})
    assert g.touched[0].startswith("blocks.1.") and all(n.startswith("blocks.1.") for n in g.touched)
    sigma = torch.randperm(32, generator=torch.Generator().manual_seed(0))
    a, b = mlp_permutation(model, sigma)(theta), mlp_permutation(model, {0: sigma, 1: sigma})(theta)
    assert all(torch.equal(a[k], b[k]) for k in a)
    A = random_symmetry(model, "qk_mixing", seed=0).actions[0][2].blocks[:4]  # one block's (H, d, d) stack
    a, b = qk_mixing(model, A)(theta), qk_mixing(model, {0: A, 1: A})(theta)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("bad, match", [
    ([0, 0, 1, 2], r"permutation of range\(4\)"),
    ([1, 0, 2], r"permutation of range\(4\)"),
    ([1, 0, 3, 4], r"permutation of range\(4\)"),
    ([1.5, 0, 2, 3], "integers"),
    ([[1, 0, 3, 2]], r"permutation of range\(4\)"),
    ("1032", r"dict \{block index"),
])
def test_a_bad_bare_permutation_is_refused_with_what_to_pass(bad, match):
    model, _ = tiny_vit(TINY)
    with pytest.raises(ValueError, match=match) as err:
        head_permutation(model, bad)
    assert "head permutation" in str(err.value)

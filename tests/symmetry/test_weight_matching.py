"""Weight matching recovers planted permutations; aligned transfer is g applied to the plain patch."""

import torch

from qgeom.symmetry.weight_matching import matching_demo, permutation_element, weight_matching
from qgeom.models import create_model
from qgeom.params import from_model, norm, select, sub


def planted(model, seed=0):
    """A random residual, head (per block) and MLP (per block) permutation, as arrays."""
    g = torch.Generator().manual_seed(seed)
    depth, D, H = len(model.blocks), model.embed_dim, model.blocks[0].attn.num_heads
    hidden = model.blocks[0].mlp.fc1.out_features
    return (torch.randperm(D, generator=g), {i: torch.randperm(H, generator=g) for i in range(depth)},
            {i: torch.randperm(hidden, generator=g) for i in range(depth)})


def test_planted_permutation_is_recovered_exactly_on_the_micro_preset():
    model = create_model("micro", 10, seed=0)
    source = from_model(model)
    P, heads, mlp = planted(model, seed=1)
    target = permutation_element(model, P, heads, mlp)(source)
    m = weight_matching(model, source, target, scope="all")
    assert m.converged
    assert torch.equal(m.residual, P)
    assert all(torch.equal(m.heads[i], heads[i]) and torch.equal(m.mlp[i], mlp[i]) for i in heads)
    moved = m.symmetry(source)
    assert all(torch.equal(moved[k], target[k]) for k in target)


def test_permutation_between_nearby_models_is_recovered_without_the_head():
    """Fine-tuned-like copies (noise 0.3 std per tensor) with different heads still align exactly."""
    model = create_model("micro", 10, seed=0)
    base = from_model(model)
    g = torch.Generator().manual_seed(3)
    source = {k: v + 0.3 * v.std() * torch.randn(v.shape, generator=g) if v.numel() > 1 else v for k, v in base.items()}
    source["head.weight"] = torch.randn(4, model.embed_dim, generator=g)  # another task's head
    P, heads, mlp = planted(model, seed=2)
    target = permutation_element(model, P, heads, mlp)(base)
    m = weight_matching(model, source, target)
    assert torch.equal(m.residual, P) and all(torch.equal(m.heads[i], heads[i]) and torch.equal(m.mlp[i], mlp[i]) for i in heads)


def test_identical_models_give_the_identity():
    model = create_model("micro", 10, seed=0, depth=2)
    theta = from_model(model)
    m = weight_matching(model, theta, theta)
    assert torch.equal(m.residual, torch.arange(model.embed_dim)) and m.sweeps == 1


def test_aligned_transfer_patch_equals_g_applied_to_the_unpermuted_patch():
    """gθ_R + λĝρ_D = g(θ_R + λρ_D) exactly once ĝ = g; the unaligned patch is another model."""
    kw = dict(depth=2, embed_dim=16, num_heads=2, img_size=16, patch_size=4, mlp_ratio=2.0)
    donor_model, receiver_model = create_model("micro", 3, seed=0, **kw), create_model("micro", 5, seed=1, **kw)
    theta0 = select(from_model(donor_model), "backbone")
    g = torch.Generator().manual_seed(0)

    def near(p, s):
        return {k: v + s * v.std().clamp_min(1e-3) * torch.randn(v.shape, generator=g) for k, v in p.items()}

    donor_ft = {**from_model(donor_model), **near(theta0, 0.05)}
    donor_qat = {**donor_ft, **near(select(donor_ft, "backbone"), 0.2)}
    receiver_ft = {**from_model(receiver_model), **near(theta0, 0.05)}
    x = torch.randn(16, 3, 16, 16, generator=g)
    y = torch.randint(0, 5, (16,), generator=g)
    out = matching_demo(receiver_model, donor_ft, donor_qat, receiver_ft, [(x, y)], lam=1.0, seed=4)
    assert out["recovered"] and out["identity_error"] == 0.0
    t = out["table"].set_index("variant")
    same, aligned, naive = t.loc["patch, same basis"], t.loc["permuted, aligned"], t.loc["permuted, no alignment"]
    assert abs(aligned.fp_loss - same.fp_loss) < 1e-5 and abs(aligned.ptq_loss - same.ptq_loss) < 1e-5
    assert abs(naive.fp_loss - same.fp_loss) > 1e-4
    assert abs(t.loc["receiver, permuted"].fp_loss - t.loc["receiver"].fp_loss) < 1e-5
    assert norm(sub(select(receiver_ft, "backbone"), select(donor_ft, "backbone"))) > 0

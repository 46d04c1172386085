"""Proposition 6.2′ (proofs/06, issue 25) on a ViT: the real gradient obeys the Noether constraint of
every continuous catalogue family, and on it one AdamW step still does not commute with the family.

Tiny timm ViT at a perturbed point (float64), mean cross-entropy of 8 random images. For the generator
X of a one-parameter family e^{sX} of level-1 symmetries, ⟨∇L(θ), Xθ⟩ = 0 (differentiate L(e^{sX}θ) in s):
measured relative to ‖∇L‖‖Xθ‖ it is float64 roundoff, so 1e-12. The step is a fresh torch AdamW
(qgeom.symmetry.invariance.optimizer_displacement, float64) from θ and from e^{sX}θ with the transported
gradient; s = 0.1 moves the update by ~10 % of the step (> 1e-4 relative), a signed permutation by
roundoff (< 1e-12).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from qgeom.models import create_model
from qgeom.params import from_model
from qgeom.symmetry import random_symmetry
from qgeom.symmetry.catalogue import layernorm_folding, qk_mixing, vo_mixing
from qgeom.symmetry.invariance import optimizer_displacement

D, H, HD = 8, 2, 4


@pytest.fixture(scope="module")
def point():
    model = create_model("micro", 3, seed=0, embed_dim=D, depth=1, num_heads=H, img_size=8, patch_size=4).double()
    g = torch.Generator().manual_seed(1)
    theta = {k: v + 0.3 * torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in from_model(model).items()}
    x, y = torch.randn(8, 3, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 3, (8,), generator=g)

    def grad_at(th):
        p = {k: v.detach().requires_grad_(True) for k, v in th.items()}
        loss = F.cross_entropy(functional_call(model, p, (x,)), y)
        return dict(zip(p, torch.autograd.grad(loss, list(p.values()))))

    return model, theta, grad_at


def _families(model, s: float):
    """(name, g_s, X θ as a function of θ): the q/k and v/o scalar rescalings and the fold of coordinate 0."""
    e = torch.tensor(s, dtype=torch.float64).exp()
    scal = lambda c: {0: c * torch.eye(HD, dtype=torch.float64).expand(H, HD, HD).clone()}  # noqa: E731
    s0 = torch.ones(D, dtype=torch.float64)
    s0[0] = e

    def x_qk(th):  # X: q rows and biases × 1, k rows and biases × (−1)
        w, b = torch.zeros_like(th["blocks.0.attn.qkv.weight"]), torch.zeros_like(th["blocks.0.attn.qkv.bias"])
        w[:D], w[D:2 * D] = th["blocks.0.attn.qkv.weight"][:D], -th["blocks.0.attn.qkv.weight"][D:2 * D]
        b[:D], b[D:2 * D] = th["blocks.0.attn.qkv.bias"][:D], -th["blocks.0.attn.qkv.bias"][D:2 * D]
        return {"blocks.0.attn.qkv.weight": w, "blocks.0.attn.qkv.bias": b}

    def x_vo(th):  # X: v rows and biases × 1, proj columns × (−1)
        w, b = torch.zeros_like(th["blocks.0.attn.qkv.weight"]), torch.zeros_like(th["blocks.0.attn.qkv.bias"])
        w[2 * D:], b[2 * D:] = th["blocks.0.attn.qkv.weight"][2 * D:], th["blocks.0.attn.qkv.bias"][2 * D:]
        return {"blocks.0.attn.qkv.weight": w, "blocks.0.attn.qkv.bias": b, "blocks.0.attn.proj.weight": -th["blocks.0.attn.proj.weight"]}

    def x_ln(th):  # X: gamma_0, beta_0 × 1, column 0 of qkv × (−1)
        out = {k: torch.zeros_like(th[k]) for k in ("blocks.0.norm1.weight", "blocks.0.norm1.bias", "blocks.0.attn.qkv.weight")}
        out["blocks.0.norm1.weight"][0], out["blocks.0.norm1.bias"][0] = th["blocks.0.norm1.weight"][0], th["blocks.0.norm1.bias"][0]
        out["blocks.0.attn.qkv.weight"][:, 0] = -th["blocks.0.attn.qkv.weight"][:, 0]
        return out

    return [("qk rescaling", qk_mixing(model, scal(e), "qk_scalar"), x_qk),
            ("vo rescaling", vo_mixing(model, scal(e), "vo_scalar"), x_vo),
            ("norm1 fold of coordinate 0", layernorm_folding(model, {"blocks.0.norm1": s0}), x_ln)]


def _dot(a, b) -> float:
    return sum(float((a[k] * b[k]).sum()) for k in b)


def _norm(a) -> float:
    return _dot(a, a) ** 0.5


@pytest.mark.parametrize("family", ["qk rescaling", "vo rescaling", "norm1 fold of coordinate 0"])
def test_real_gradients_are_noether_constrained_and_adamw_still_does_not_commute(point, family):
    model, theta, grad_at = point
    name, g, x_of = next(f for f in _families(model, 0.1) if f[0] == family)
    grad = grad_at(theta)
    xt = x_of(theta)
    assert abs(_dot(grad, xt)) <= 1e-12 * _norm(grad) * _norm(xt)  # the Noether constraint
    keys = list(xt)
    step = optimizer_displacement(theta, {k: grad[k] for k in keys}, "adamw")
    gt, g_grad = g(theta), g.act_covector(grad)  # ∇L(gθ) = g⁻ᵀ∇L(θ): a realistic gradient at gθ
    step_g = optimizer_displacement(gt, {k: g_grad[k] for k in keys}, "adamw")
    moved = g(dict(theta, **step))
    assert _norm({k: step_g[k] - moved[k] for k in keys}) > 1e-4 * _norm(step), name


def test_a_signed_permutation_commutes_on_the_same_gradient(point):
    """Twin: the same machinery with a signed q/k permutation (level 3) commutes to roundoff."""
    model, theta, grad_at = point
    g = random_symmetry(model, "qk_signed_permutation", seed=2)
    grad = grad_at(theta)
    keys = ["blocks.0.attn.qkv.weight", "blocks.0.attn.qkv.bias"]
    step = optimizer_displacement(theta, {k: grad[k] for k in keys}, "adamw")
    gt, g_grad = g(theta), g.act_covector(grad)
    step_g = optimizer_displacement(gt, {k: g_grad[k] for k in keys}, "adamw")
    moved = g(dict(theta, **step))
    assert _norm({k: step_g[k] - moved[k] for k in keys}) < 1e-12 * _norm(step)

"""Theorem 6.3, the fine-tuning leg: fine-tune (fresh head) then QAT from θ_0 and from gθ_0.

For a signed permutation that leaves the head alone (head permutation, signed q/k permutation)
the whole pipeline is equivariant: τ(gθ_0) = g τ(θ_0) and ρ(gθ_0) = g ρ(θ_0), to float64
roundoff (AdamW is elementwise, clipping uses the global norm, the quantizer commutes with
signed permutations). For a continuous rescaling (q/k scalar) the function is the same but
AdamW's per-coordinate normalisation is not: ρ moves by orders of magnitude more. A residual
permutation also acts on the head's input columns, so the fresh head must be transported
(hypothesis E2): with an untransported head the leg fails, with a transported one it holds.
"""

from __future__ import annotations

import pytest

from qgeom.data import make_task
from qgeom.models import create_model
from qgeom.params import from_model, is_head
from qgeom.quant import QuantSpec
from qgeom.symmetry import random_symmetry
from qgeom.train import fit, with_fresh_head

STEPS, LR = 3, 1e-2


@pytest.fixture(scope="module")
def setup():
    model = create_model("micro", 4, seed=0, embed_dim=16, depth=1, num_heads=2).double()
    theta0 = {k: v.double() for k, v in from_model(model).items()}
    task = make_task("shape", seed=0, n_train=64, n_val=8, n_test=8)
    batches = [(task.train.x[i : i + 16].double(), task.train.y[i : i + 16]) for i in range(0, 64, 16)]
    return model, theta0, batches


def pipeline(model, theta0, batches, head=None):
    """θ_0 → fine-tune (fresh head, seed 0) → QAT at 2 bits; returns (θ_t, ρ)."""
    start = {k: v.double() for k, v in with_fresh_head(model, theta0, seed=0).items()}
    if head is not None:
        start.update(head)
    ft = fit(model, start, batches, STEPS, lr=LR, warmup_steps=0, seed=0, device="cpu")
    q = fit(model, ft, batches, STEPS, lr=LR, warmup_steps=0, qat_spec=QuantSpec(2), seed=0, device="cpu")
    return ft, {k: q[k] - ft[k] for k in ft if not is_head(k)}


def rel(a: dict, b: dict) -> float:
    num = sum(float((a[k] - b[k]).pow(2).sum()) for k in a)
    den = sum(float(b[k].pow(2).sum()) for k in b)
    return (num / den) ** 0.5


@pytest.mark.parametrize("kind, equivariant", [("head_permutation", True), ("qk_signed_permutation", True),
                                               ("qk_scalar", False)])
def test_finetune_then_qat_transforms_by_g_only_for_signed_permutations(setup, kind, equivariant):
    model, theta0, batches = setup
    g = random_symmetry(model, kind, strength=1.0, seed=3)
    ft, rho = pipeline(model, theta0, batches)
    ft_g, rho_g = pipeline(model, g(theta0), batches)
    backbone = {k: v for k, v in ft.items() if not is_head(k)}
    err_tau = rel({k: ft_g[k] for k in backbone}, g(backbone))
    err_rho = rel(rho_g, g(rho))
    if equivariant:
        assert err_tau < 1e-10 and err_rho < 1e-10, (err_tau, err_rho)
    else:
        assert err_rho > 1e-3, err_rho  # the function is the same; AdamW's trajectory is not


def test_a_residual_permutation_needs_the_fresh_head_transported(setup):
    model, theta0, batches = setup
    g = random_symmetry(model, "residual_permutation", strength=1.0, seed=3)
    ft, rho = pipeline(model, theta0, batches)
    head = {k: v.double() for k, v in with_fresh_head(model, theta0, seed=0).items() if is_head(k)}
    _, rho_plain = pipeline(model, g(theta0), batches)  # the same head numbers: not g-transported
    _, rho_moved = pipeline(model, g(theta0), batches, head=g(head))  # E2: head columns permuted too
    assert rel(rho_moved, g(rho)) < 1e-10
    assert rel(rho_plain, g(rho)) > 1e-3

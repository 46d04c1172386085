"""The hypotheses issue 13 made explicit in proofs/, each tested where it matters.

* Result 3: Hessian covariance away from a critical point needs a *linear* g; a θ-dependent
  reparameterisation φ with L∘φ = L adds Σ_k ∂_kL(φ(θ)) ∇²φ_k(θ), the GGN has no such term.
* Result 3: a metric restricted to a scope is covariant only under maps that preserve the scope.
* Result 6, 6.4 (1): Q_b is affine along any segment shorter than the margin that
  :func:`qgeom.symmetry.genericity.genericity_margin` reports for a trained weight, and not beyond it.
* Result 6, Fix(g): a θ_0 with two identical heads keeps them identical through fine-tuning and QAT.
* Result 6, (E2): with dropout, the masks must be transported by g (and, on Fix(g), be g-invariant).
* Result 6: a ReLU MLP's positive per-unit rescalings are level 1, not level 2 or 3.

Every test is float64; its tolerance is stated where it is used. Each "holds" case has a twin that
breaks the hypothesis and must fail by orders of magnitude more than the tolerance.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file
from torch.func import functional_call, grad, jvp

from qgeom.curvature.operator import CurvatureOperator
from qgeom.data import make_task
from qgeom.symmetry.genericity import genericity_margin
from qgeom.models import create_model
from qgeom.params import from_model, inner, is_head, scope_keys
from qgeom.quant import QuantSpec, quantization_scale, quantize_weight
from qgeom.symmetry import head_permutation
from qgeom.train import fit, with_fresh_head

# ---------------------------------------------------------------------------------------------
# shared set-up: a one-block micro ViT in float64 and a few batches of a procedural task


def _model(**kw):
    return create_model("micro", 4, seed=0, embed_dim=16, depth=1, num_heads=2, **kw).double()


def _params(model) -> dict:
    return {k: v.double() for k, v in from_model(model).items()}


@pytest.fixture(scope="module")
def batches():
    task = make_task("shape", seed=0, n_train=64, n_val=8, n_test=8)
    return [(task.train.x[i : i + 16].double(), task.train.y[i : i + 16]) for i in range(0, 64, 16)]


def _loss(model, x, y):
    return lambda th: F.cross_entropy(functional_call(model, th, (x,)), y)


def _randn_like(params: dict, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in params.items()}


def _rel(a: dict, b: dict) -> float:
    num = sum(float((a[k] - b[k]).pow(2).sum()) for k in a)
    return (num / max(sum(float(b[k].pow(2).sum()) for k in b), 1e-300)) ** 0.5


# ---------------------------------------------------------------------------------------------
# Result 3: the extra Hessian term of a θ-dependent reparameterisation


def _qk_normalising_map(theta: dict, D: int) -> dict:
    """φ(θ): head 0's query rows and bias divided by c(θ) = ‖W_q,0‖, its key rows and bias times
    c(θ). q_0ᵀk_0 is unchanged, so L∘φ = L for every θ; φ is smooth and *nonlinear* in θ."""
    w, b = theta["blocks.0.attn.qkv.weight"], theta["blocks.0.attn.qkv.bias"]
    d = D // 2  # head_dim; head 0 is rows [0, d) of q and [D, D + d) of k
    c, one = w[:d].norm(), torch.ones(d, dtype=w.dtype)
    scale = torch.cat([one / c, torch.ones(D - d, dtype=w.dtype), one * c, torch.ones(2 * D - d, dtype=w.dtype)])
    return {**theta, "blocks.0.attn.qkv.weight": w * scale[:, None], "blocks.0.attn.qkv.bias": b * scale}


def test_hessian_transport_by_a_theta_dependent_map_needs_the_extra_term(batches):
    """vᵀ∇²L(θ)w = (Dφ v)ᵀ ∇²L(φθ) (Dφ w) + Σ_k ∂_kL(φθ) vᵀ∇²φ_k w at a non-critical θ; dropping the
    extra term breaks the identity; the GGN transports with Dφ alone. Tolerance 1e-9 relative:
    float64 products through one attention block (roundoff ~1e-14), with room for the sums."""
    model = _model()
    theta, (x, y) = _params(model), batches[0]
    D = 16
    L = _loss(model, x, y)
    phi = lambda th: _qk_normalising_map(th, D)  # noqa: E731
    assert abs(float(L(phi(theta)) - L(theta))) < 1e-12  # a symmetry of the loss, for this θ ...
    theta2 = {k: v + 0.1 * r for (k, v), r in zip(theta.items(), _randn_like(theta, 7).values())}
    assert abs(float(L(phi(theta2)) - L(theta2))) < 1e-12  # ... and for any other
    # directions on the tensor φ acts on (elsewhere φ is the identity and the extra term is 0)
    on_qkv = lambda d: {k: (t if k == "blocks.0.attn.qkv.weight" else torch.zeros_like(t)) for k, t in d.items()}  # noqa: E731
    v, w = on_qkv(_randn_like(theta, 1)), on_qkv(_randn_like(theta, 2))
    hvp = lambda at, t: jvp(grad(L), (at,), (t,))[1]  # noqa: E731
    lhs = inner(v, hvp(theta, w))
    pt = phi(theta)
    dv, dw = jvp(phi, (theta,), (v,))[1], jvp(phi, (theta,), (w,))[1]
    transported = inner(dv, hvp(pt, dw))
    second = jvp(lambda th: jvp(phi, (th,), (w,))[1], (theta,), (v,))[1]  # vᵀ∇²φ_k w for every k
    extra = inner(grad(L)(pt), second)
    tol = 1e-9 * abs(lhs)
    assert abs(lhs - (transported + extra)) <= tol
    # away from a critical point the linear transport is wrong by far more than the tolerance
    assert abs(lhs - transported) > 1e4 * tol, (lhs, transported, extra)
    # the GGN: first derivatives only, so Dφ transports it exactly
    ggn = lambda at, a, b: CurvatureOperator(model, at, [(x, y)], metric="ggn", scope="all").jvp_gram([a, b])[0, 1]  # noqa: E731
    k_theta, k_phi = ggn(theta, v, w), ggn(pt, dv, dw)
    assert abs(k_theta - k_phi) <= 1e-9 * abs(k_theta)


# ---------------------------------------------------------------------------------------------
# Result 3: metrics restricted to a scope need a scope-preserving g


def _pos_shear(theta: dict, alpha: float) -> dict:
    """g: b ↦ b + α P_1, P_i ↦ P_i − α P_1 (i ≥ 1) for the patch-embedding bias b and the patch
    tokens' position embeddings P: token i reads conv_i + b + P_i, unchanged. Linear in θ,
    invertible for α ≠ 1, a symmetry for every θ — and it mixes the two tensors."""
    b, P = theta["patch_embed.proj.bias"], theta["pos_embed"]  # P: (1, 1 + n, D), index 0 = cls
    p1 = P[0, 1]
    shift = torch.zeros_like(P)
    shift[0, 1:] = alpha * p1
    return {**theta, "patch_embed.proj.bias": b + alpha * p1, "pos_embed": P - shift}


@pytest.mark.parametrize("scope_keys, covariant", [(("pos_embed", "patch_embed.proj.bias"), True),
                                                   (("pos_embed",), False)])
def test_a_metric_restricted_to_a_scope_needs_g_to_preserve_it(batches, scope_keys, covariant):
    """cos_G of two vectors on scope S, at θ and (transported, restricted to S) at gθ. g is the
    position-embedding shear above: on S = {pos_embed, patch bias} it maps S to itself and the
    restricted GGN cosine is unchanged (1e-9, float64); on S = {pos_embed} the bias part of g v
    leaves S and the cosine moves (> 1e-3)."""
    model = _model()
    theta, (x, y) = _params(model), batches[0]
    g = lambda th: _pos_shear(th, 0.7)  # noqa: E731
    logits = lambda th: functional_call(model, th, (x,))  # noqa: E731
    assert torch.allclose(logits(g(theta)), logits(theta), rtol=0, atol=1e-12)
    in_s = lambda name, t: name in scope_keys  # noqa: E731
    u = {k: v for k, v in _randn_like(theta, 3).items() if k in scope_keys}
    v = {k: t for k, t in _randn_like(theta, 4).items() if k in scope_keys}
    full = lambda d: {k: d.get(k, torch.zeros_like(t)) for k, t in theta.items()}  # noqa: E731
    gl = lambda d: {k: t for k, t in g(full(d)).items() if k in scope_keys}  # g v restricted to S  # noqa: E731

    def cos(point, a, b):
        K = CurvatureOperator(model, point, [(x, y)], metric="ggn", scope=in_s).jvp_gram([a, b])
        return K[0, 1] / (K[0, 0] * K[1, 1]) ** 0.5

    before, after = cos(theta, u, v), cos(g(theta), gl(u), gl(v))
    if covariant:
        assert abs(after - before) < 1e-9, (before, after)
    else:
        assert abs(after - before) > 1e-3, (before, after)


# ---------------------------------------------------------------------------------------------
# Result 6, 6.4 (1): Q_b is locally affine at a trained weight, within the reported margin


def _certified_radius(w: torch.Tensor, spec: QuantSpec, margin: dict) -> float:
    """A max-norm step t for which W + τE (|E| ≤ 1, 0 ≤ τ ≤ t) keeps every code and every row's
    absmax entry: the codes x = W/s move by at most (1 + q_max)·t / s_min to first order (entry and
    scale), so t = margin · s_min / (2(1 + q_max)) halves the quantizer margin; the absmax entry
    keeps its place while 2t < (tie margin) · s_min · q_max."""
    s_min = float(quantization_scale(w, spec).min())
    t_codes = margin["quantizer"] * s_min / (2 * (1 + spec.qmax))
    t_ties = margin["absmax_tie"] * s_min * spec.qmax / 4
    return min(t_codes, t_ties)


@settings(max_examples=20, deadline=None)
@given(bits=st.integers(2, 8), seed=st.integers(0, 2**16), which=st.integers(0, 3))
def test_quantizer_is_affine_within_the_margin_of_a_trained_weight(tiny_run, bits, seed, which):
    """For a weight matrix of the tiny run's fine-tuned receiver, every bit width and random
    direction: Q_b(W + τE) is affine in τ on [0, t] for t from the genericity margin (midpoint
    rule to 1e-12 relative: the codes are constant and s(τ) is linear, so only float64 rounding
    of s·code remains), and the integer codes do not change. Twin: a step of one code unit
    (t = min s) crosses cell boundaries and the midpoint rule fails."""
    model = create_model("micro", 3, embed_dim=32, depth=2, num_heads=2)
    theta = {k: v.double() for k, v in load_file(str(tiny_run / "seed0/finetune/shape.safetensors")).items()}
    spec = QuantSpec(bits)
    names = scope_keys(theta, "quantized")
    w = theta[names[which % len(names)]]
    margin = genericity_margin(model, {k: v for k, v in theta.items()}, spec)
    assert margin["quantizer"] > 0 and margin["absmax_tie"] > 0
    t = _certified_radius(w, spec, margin)
    E = torch.rand(w.shape, generator=torch.Generator().manual_seed(seed), dtype=w.dtype) * 2 - 1

    def affine_defect(t_end: float) -> float:
        q0, qm, q1 = (quantize_weight(w + tau * E, spec) for tau in (0.0, t_end / 2, t_end))
        return float((qm - (q0 + q1) / 2).abs().max() / q0.abs().max())

    codes = lambda m: torch.round(m / quantization_scale(m, spec)[:, None])  # noqa: E731
    assert torch.equal(codes(w), codes(w + t * E))
    assert affine_defect(t) < 1e-12
    s_min = float(quantization_scale(w, spec).min())
    assert affine_defect(s_min) > 1e-6  # a step of one code unit: codes change, no longer affine


# ---------------------------------------------------------------------------------------------
# Result 6: fixed points (duplicated heads) and dropout masks (E2)


class _MaskedDropout(torch.nn.Module):
    """Dropout of the attention probabilities with masks given in advance (step k uses masks[k]):
    a run's random draws made explicit, so that they can be transported by g."""

    def __init__(self, masks: list[torch.Tensor]):
        super().__init__()
        self.masks, self.calls = masks, 0

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        m = self.masks[self.calls % len(self.masks)]
        self.calls += 1
        return a * m


def _masks(n: int, heads: int, tokens: int, seed: int, p: float = 0.3) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(16, heads, tokens, tokens, generator=g) > p).double() / (1 - p) for _ in range(n)]


STEPS = 3


def _pipeline(model, theta0, batches):
    """θ_0 → fine-tune (fresh head, seed 0, 3 AdamW steps) → QAT at 2 bits (3 steps): (τ, ρ)."""
    start = {k: v.double() for k, v in with_fresh_head(model, theta0, seed=0).items()}
    ft = fit(model, start, batches, STEPS, lr=1e-2, warmup_steps=0, seed=0, device="cpu")
    q = fit(model, ft, batches, STEPS, lr=1e-2, warmup_steps=0, qat_spec=QuantSpec(2), seed=0, device="cpu")
    return ft, {k: q[k] - ft[k] for k in ft if not is_head(k)}


def _duplicate_head(theta: dict, D: int = 16, H: int = 2) -> dict:
    """θ with head 1 := head 0 (q, k, v rows and biases; proj columns): a fixed point of the swap."""
    d = D // H
    w, b, proj = (theta[k].clone() for k in ("blocks.0.attn.qkv.weight", "blocks.0.attn.qkv.bias",
                                              "blocks.0.attn.proj.weight"))
    for part in range(3):
        w[part * D + d : part * D + 2 * d] = w[part * D : part * D + d]
        b[part * D + d : part * D + 2 * d] = b[part * D : part * D + d]
    proj[:, d : 2 * d] = proj[:, :d]
    return {**theta, "blocks.0.attn.qkv.weight": w, "blocks.0.attn.qkv.bias": b, "blocks.0.attn.proj.weight": proj}


def _with_dropout(model, masks):
    m = copy.deepcopy(model)
    m.blocks[0].attn.attn_drop = _MaskedDropout(masks)
    return m


@pytest.mark.parametrize("dropout", ["none", "g-invariant masks", "independent masks"])
def test_duplicated_heads_stay_identical_unless_the_masks_break_the_symmetry(batches, dropout):
    """θ_0 on Fix(g) for the head swap g: with no dropout, or with masks equal on the two heads
    (g-invariant), τ and ρ stay on Fix(g) — the heads remain identical to 1e-12 (float64: the two
    heads go through the same operations on the same numbers); with masks drawn per head they
    separate by > 1e-4 (the confinement needs g-invariant draws, E2)."""
    model = _model()
    theta0 = _duplicate_head(_params(model))
    g = head_permutation(model, {0: torch.tensor([1, 0])})
    assert _rel(g(theta0), theta0) == 0.0  # a fixed point of the swap
    if dropout != "none":
        masks = _masks(2 * STEPS, 2, 17, seed=5)
        if dropout == "g-invariant masks":
            masks = [m[:, :1].expand_as(m).clone() for m in masks]
        model = _with_dropout(model, masks)
    ft, rho = _pipeline(model, theta0, batches)
    backbone = {k: v for k, v in ft.items() if not is_head(k)}
    off_fix = max(_rel(g(backbone), backbone), _rel(g(rho), rho))
    if dropout == "independent masks":
        assert off_fix > 1e-4, off_fix
    else:
        assert off_fix < 1e-12, off_fix


@pytest.mark.parametrize("transported", [True, False])
def test_dropout_masks_must_be_transported_by_g(batches, transported):
    """Theorem 6.3 with attention dropout, g = head swap from a generic θ_0: with the g-run's masks
    the g-transported masks (heads swapped) ρ(gθ_0) = g ρ(θ_0) to 1e-10; with the same masks
    untransported it fails by > 1e-3."""
    model = _model()
    theta0 = _params(model)
    g = head_permutation(model, {0: torch.tensor([1, 0])})
    masks = _masks(2 * STEPS, 2, 17, seed=6)
    moved = [m[:, [1, 0]].clone() for m in masks] if transported else masks
    _, rho = _pipeline(_with_dropout(model, masks), theta0, batches)
    _, rho_g = _pipeline(_with_dropout(model, moved), g(theta0), batches)
    err = _rel(rho_g, g(rho))
    if transported:
        assert err < 1e-10, err
    else:
        assert err > 1e-3, err


# ---------------------------------------------------------------------------------------------
# Result 6 / Result 5: ReLU MLPs have positive per-unit rescalings — level 1 only


def _unit_rescaling(theta: dict, c: torch.Tensor) -> dict:
    """(W_1, b_1, W_2) ↦ (D W_1, D b_1, W_2 D⁻¹) with D = diag(c), c > 0."""
    return {**theta, "blocks.0.mlp.fc1.weight": theta["blocks.0.mlp.fc1.weight"] * c[:, None],
            "blocks.0.mlp.fc1.bias": theta["blocks.0.mlp.fc1.bias"] * c,
            "blocks.0.mlp.fc2.weight": theta["blocks.0.mlp.fc2.weight"] / c[None, :]}


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_relu_unit_rescalings_are_level_1_not_level_2_or_3(batches, seed):
    """ReLU(c z) = c ReLU(z) for c > 0: the logits are unchanged (1e-12); per-row Q_b of fc2 does
    not commute with its non-uniform column scaling (> 1e-3), nor does one AdamW step (> 1e-3);
    the same rescaling of a GELU MLP changes the logits (> 1e-6)."""
    gen = torch.Generator().manual_seed(seed)
    c = torch.exp(torch.randn(64, generator=gen, dtype=torch.float64))  # hidden width 4·16
    x, y = batches[0]
    relu = _model(act_layer="relu")
    theta = _params(relu)
    moved = _unit_rescaling(theta, c)
    logits = lambda m, th: functional_call(m, th, (x,))  # noqa: E731
    assert torch.allclose(logits(relu, moved), logits(relu, theta), rtol=0, atol=1e-12)
    spec, w2 = QuantSpec(2), theta["blocks.0.mlp.fc2.weight"]
    q_err = (quantize_weight(w2 / c[None, :], spec) - quantize_weight(w2, spec) / c[None, :]).abs().max()
    assert q_err > 1e-3 * w2.abs().max()
    one_step = lambda th: fit(relu, th, [(x, y)], 1, lr=1e-2, warmup_steps=0, clip_grad_norm=None,  # noqa: E731
                              seed=0, device="cpu")
    stepped, stepped_moved = one_step(theta), one_step(moved)
    mlp = [k for k in theta if ".mlp." in k]
    assert _rel({k: stepped_moved[k] for k in mlp}, {k: _unit_rescaling(stepped, c)[k] for k in mlp}) > 1e-3
    gelu = _model()
    theta_g = _params(gelu)
    assert (logits(gelu, _unit_rescaling(theta_g, c)) - logits(gelu, theta_g)).abs().max() > 1e-6

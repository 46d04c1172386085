"""qgeom.quant: the paper's quantizer Q_b as properties over shapes, bit widths and granularities;
PTQ on parameter dicts; QAT layers with a straight-through estimator.

Floating-point facts the exact assertions rely on (float32, unit roundoff u = 2^−24):

* s = fl(amax / q_max) satisfies fl(fl(s·q_max) / q_max) = s, and fl(fl(k·s) / s) = k for
  integers |k| ≤ 127, so the codes of Q(w) are those of w and Q is exactly idempotent.
* Scaling by 2^k (no overflow or underflow) is exact in every operation Q performs, so
  Q(2^k w) = 2^k Q(w) bitwise. Other scalings perturb w/s by a few u, which can flip a code
  only where w/s sits on a rounding tie n + 1/2.
* The data are drawn with magnitudes 1e−6…1e6: subnormal numbers are out of scope.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.func import jvp

from qgeom import params as P
from qgeom.models import create_model
from qgeom.quant import (
    MSE_GRID,
    QATLinear,
    QuantSpec,
    UnsupportedBitsError,
    _groups,
    fake_quantize,
    prepare_qat,
    ptq,
    quantization_error,
    quantization_scale,
    quantize_weight,
    ste_quantize,
    strip_qat,
)
from qgeom.train import logits

U = 2.0**-24  # float32 unit roundoff

# --------------------------------------------------------------------------------------------
# strategies
# --------------------------------------------------------------------------------------------

GROUP = 4


@st.composite
def weights(draw, kinds=("gauss", "ties", "zero_row", "heavy")) -> torch.Tensor:
    """A float32 weight (out, in) with in a multiple of GROUP: Gaussian rows of random
    magnitude, or adversarial cases (values on rounding ties, an all-zero row, outliers)."""
    out = draw(st.integers(1, 6))
    n_in = GROUP * draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**31 - 1))
    kind = draw(st.sampled_from(kinds))
    g = torch.Generator().manual_seed(seed)
    mag = 10.0 ** (12 * torch.rand(out, 1, generator=g) - 6)  # 1e-6 … 1e6 per row
    w = torch.randn(out, n_in, generator=g) * mag
    if kind == "ties":  # multiples of 1/2 of a power-of-two step: many exact ties
        w = torch.round(torch.randn(out, n_in, generator=g) * 8) / 2
    elif kind == "zero_row":
        w[draw(st.integers(0, out - 1))] = 0.0
    elif kind == "heavy":
        w[:, 0] *= 1000.0
    return w


def specs(granularities=("row", "tensor", "group"), symmetric=(True,), clip=("none",)):
    return st.builds(QuantSpec, bits=st.integers(2, 8), granularity=st.sampled_from(granularities),
                     group_size=st.just(GROUP), symmetric=st.sampled_from(symmetric), clip=st.sampled_from(clip))


def codes(w: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """The integer codes round(w / s) per scale group (symmetric grid), as the quantizer sees them."""
    g = _groups(w, spec)
    s = quantization_scale(w, spec)[:, None]
    s = torch.where(s > 0, s, torch.ones_like(s))
    return torch.round(g / s)


# --------------------------------------------------------------------------------------------
# the grid itself
# --------------------------------------------------------------------------------------------


def test_paper_grid_by_hand():
    # 3 bits: q_max = 3, row absmax 3 → s = 1; round half to even: 1.5 → 2, 2.5 → 2, −0.5 → −0
    w = torch.tensor([[3.0, 1.5, -0.5, 2.5, -3.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    q = quantize_weight(w, QuantSpec(3))
    assert torch.equal(q, torch.tensor([[3.0, 2.0, 0.0, 2.0, -3.0], [0.0] * 5]))
    assert QuantSpec(3).qmin == -4 and QuantSpec(3).qmax == 3
    # per row: the second row's scale does not see the first row
    w2 = torch.tensor([[1.0, 0.4], [100.0, 40.0]])
    assert torch.equal(quantize_weight(w2, QuantSpec(2)), torch.tensor([[1.0, 0.0], [100.0, 0.0]]))
    # per tensor: one scale, 100 / 1; the small row rounds to 0
    assert torch.equal(quantize_weight(w2, QuantSpec(2, granularity="tensor")), torch.tensor([[0.0, 0.0], [100.0, 0.0]]))


def test_quantize_keeps_shape_and_dtype_and_detaches():
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        w = torch.randn(4, 8, dtype=dtype, requires_grad=True)
        q = quantize_weight(w, QuantSpec(4))
        assert q.shape == w.shape and q.dtype == dtype and not q.requires_grad


@given(w=weights(), spec=specs())
def test_idempotent(w, spec):
    q = quantize_weight(w, spec)
    assert torch.equal(quantize_weight(q, spec), q)


@given(w=weights(), spec=specs(symmetric=(True, False)))
def test_levels_per_scale_group(w, spec):
    # symmetric: |w/s| ≤ q_max, so the code −2^(b−1) is never used: at most 2^b − 1 levels
    q = _groups(quantize_weight(w, spec), spec)
    limit = 2**spec.bits - 1 if spec.symmetric else 2**spec.bits
    assert max(len(torch.unique(row)) for row in q) <= limit


@given(w=weights(), spec=specs())
def test_error_is_at_most_half_a_step(w, spec):
    # |w − Q(w)| ≤ s/2 in exact arithmetic. In float32, w/s and k·s are each rounded once:
    # |w − Q(w)| ≤ s·(1/2 + 2·q_max·u), a relative slack ≤ 1.5e−5 at 8 bits.
    s = quantization_scale(w, spec)[:, None]
    err = (_groups(w, spec) - _groups(quantize_weight(w, spec), spec)).abs()
    assert (err <= s * (0.5 + 2 * spec.qmax * U)).all()


@given(w=weights(), spec=specs(symmetric=(False,)))
def test_asymmetric_grid_error_and_exact_zero(w, spec):
    # same half-step bound on the min/max grid (the top code can be clamped, still ≤ s/2)
    s = quantization_scale(w, spec)[:, None]
    q = quantize_weight(w, spec)
    err = (_groups(w, spec) - _groups(q, spec)).abs()
    assert (err <= s * (0.5 + 4 * spec.qmax * U)).all()
    # 0 is on the grid exactly: zeros stay exactly zero whatever the rest of the group
    w0 = w.clone()
    w0[:, ::GROUP] = 0.0
    assert (quantize_weight(w0, spec)[:, ::GROUP] == 0).all()


def test_asymmetric_grid_is_not_idempotent():
    # documented in QuantSpec: the min/max range of Q(w) differs from that of w
    spec = QuantSpec(2, symmetric=False)
    q = quantize_weight(torch.tensor([[1.25, 0.5, -0.25]]), spec)
    assert torch.equal(q, torch.tensor([[1.0, 0.5, 0.0]]))
    assert not torch.equal(quantize_weight(q, spec), q)


def test_asymmetric_grid_uses_all_two_to_the_b_levels():
    # the difference from the symmetric grid: a uniform ramp hits 2^b values, not 2^b − 1
    w = torch.linspace(-1.0, 2.0, 200)[None]
    for bits in (2, 3, 4):
        q = quantize_weight(w, QuantSpec(bits, symmetric=False))
        assert len(torch.unique(q)) == 2**bits
        ramp = torch.linspace(-2.0, 2.0, 200)[None]  # the symmetric grid spans −absmax…absmax
        assert len(torch.unique(quantize_weight(ramp, QuantSpec(bits)))) == 2**bits - 1


# --------------------------------------------------------------------------------------------
# equivariance (level 2 of DESIGN.md §2)
# --------------------------------------------------------------------------------------------


@given(w=weights(), spec=specs(), seed=st.integers(0, 2**16))
def test_equivariant_under_row_permutations_and_sign_flips(w, spec, seed):
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(w.shape[0], generator=g)
    signs = torch.where(torch.rand(w.shape[0], 1, generator=g) < 0.5, -1.0, 1.0)
    q = quantize_weight(w, spec)
    assert torch.equal(quantize_weight(w[perm], spec), q[perm])
    # round-half-to-even is odd-symmetric, so Q(−w) = −Q(w) even on ties
    assert torch.equal(quantize_weight(signs * w, spec), signs * q)


@given(w=weights(), spec=specs(granularities=("row", "group")), seed=st.integers(0, 2**16))
def test_equivariant_under_power_of_two_row_scalings(w, spec, seed):
    # Powers of two are exact in every step of Q (see the module docstring), so equality is
    # bitwise; 2^−8…2^8 keeps the data (1e−6…1e6) far from overflow and subnormals.
    g = torch.Generator().manual_seed(seed)
    d = 2.0 ** torch.randint(-8, 9, (w.shape[0], 1), generator=g).float()
    assert torch.equal(quantize_weight(d * w, spec), d * quantize_weight(w, spec))


@given(w=weights(), bits=st.integers(2, 8), k=st.integers(-8, 8))
def test_per_tensor_equivariant_under_uniform_power_of_two_scaling(w, bits, k):
    spec = QuantSpec(bits, granularity="tensor")
    assert torch.equal(quantize_weight(2.0**k * w, spec), 2.0**k * quantize_weight(w, spec))


@given(w=weights(kinds=("gauss",)), spec=specs(granularities=("row", "group")), seed=st.integers(0, 2**16))
def test_random_positive_row_scalings_only_flip_exact_ties(w, spec, seed):
    g = torch.Generator().manual_seed(seed)
    d = torch.exp(torch.randn(w.shape[0], 1, generator=g))
    k, kd = codes(w, spec), codes(d * w, spec)
    # w/s is perturbed by at most ~4u relative (|w/s| ≤ q_max), so a code may change only where
    # w/s is within 8·q_max·u of a tie n + 1/2 (≤ 6e−5 at 8 bits).
    ratio = _groups(w, spec) / quantization_scale(w, spec)[:, None].clamp_min(1e-30)
    near_tie = ((ratio - torch.floor(ratio)) - 0.5).abs() <= 8 * spec.qmax * U
    assert ((k == kd) | near_tie).all()
    # where the codes agree, Q(dw) = d·Q(w) up to the rounding of d·w, of s and of k·s: ~3u
    same = (k == kd).reshape(w.shape)
    lhs, rhs = quantize_weight(d * w, spec), d * quantize_weight(w, spec)
    torch.testing.assert_close(lhs[same], rhs[same], rtol=4 * U, atol=0.0)


def test_column_scaling_is_not_a_symmetry_by_hand():
    # 2 bits, one row: w = [1, 0.3] → s = 1, Q = [1, 0]. Scaling column 2 by 4: [1, 1.2] → s = 1.2,
    # Q = [1.2, 1.2], while Q(w)·D = [1, 0]. Column scalings change the row's absmax.
    w = torch.tensor([[1.0, 0.3]])
    d = torch.tensor([[1.0, 4.0]])
    spec = QuantSpec(2)
    assert torch.equal(quantize_weight(w * d, spec), torch.tensor([[1.2, 1.2]]))
    assert torch.equal(quantize_weight(w, spec) * d, torch.tensor([[1.0, 0.0]]))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("bits", [2, 3, 8])
def test_column_scaling_is_not_a_symmetry_on_random_data(seed, bits):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(16, 32, generator=g)
    d = torch.exp(torch.randn(1, 32, generator=g))
    spec = QuantSpec(bits)
    lhs, rhs = quantize_weight(w * d, spec), quantize_weight(w, spec) * d
    # far beyond rounding (~4u ≈ 2e−7 relative): in every row, entries move by more than 1e−4
    # of the row's absmax (the column scaling moves the absmax and with it the grid); over the
    # matrix at least a fifth of them do (about 28% at 2 bits, where many stay 0; 95% at 8)
    moved = (lhs - rhs).abs() / (w * d).abs().amax(dim=1, keepdim=True) > 1e-4
    assert moved.any(dim=1).all() and moved.float().mean() > 0.2
    # while the same data are row-scaling equivariant (the control)
    r = torch.exp(torch.randn(16, 1, generator=g))
    torch.testing.assert_close(quantize_weight(r * w, spec), r * quantize_weight(w, spec), rtol=4 * U, atol=0.0)


# --------------------------------------------------------------------------------------------
# clipping search, specs and errors
# --------------------------------------------------------------------------------------------


@given(w=weights(), spec=specs(symmetric=(True, False), clip=("mse",)))
@settings(max_examples=40)
def test_mse_clipping_never_increases_the_error_of_a_group(w, spec):
    plain = QuantSpec(spec.bits, spec.granularity, spec.group_size, spec.symmetric, "none")
    g = _groups(w, spec)
    # the search compares the same float32 sums, and keeps ratio 1.0 unless strictly better
    e_mse = (_groups(quantize_weight(w, spec), spec) - g).pow(2).sum(dim=1)
    e_none = (_groups(quantize_weight(w, plain), spec) - g).pow(2).sum(dim=1)
    assert (e_mse <= e_none).all()


def test_mse_clipping_helps_with_an_outlier():
    # 2 bits, a ramp on [−1, 1] and one outlier 1.6: absmax puts every |w| < 0.8 on 0 (error
    # 17.1); a clipped range puts the ramp's ends on ±s (error 3.5)
    w = torch.cat([torch.linspace(-1, 1, 63), torch.tensor([1.6])])[None]
    e = {c: float((quantize_weight(w, QuantSpec(2, clip=c)) - w).pow(2).sum()) for c in ("none", "mse")}
    assert e["mse"] < 0.5 * e["none"]
    assert MSE_GRID[0] == 1.0 and min(MSE_GRID) == pytest.approx(0.5)


@pytest.mark.parametrize("bits", [1, 9, 0, -2, 2.5, 3.0, True, False, "4", None])
def test_unsupported_bits(bits):
    with pytest.raises(UnsupportedBitsError, match="bits must be an integer from 2 to 8"):
        QuantSpec(bits)


def test_numpy_integer_bits_are_accepted_as_int():
    spec = QuantSpec(np.int64(3))
    assert spec.bits == 3 and type(spec.bits) is int and spec == QuantSpec(3)
    assert spec.to_dict() == {"bits": 3, "granularity": "row", "group_size": 32, "symmetric": True, "clip": "none"}


def test_group_size_must_divide_the_input_columns():
    with pytest.raises(ValueError, match="group_size 5 does not divide the 16 input columns"):
        quantize_weight(torch.randn(3, 16), QuantSpec(4, granularity="group", group_size=5))
    with pytest.raises(ValueError, match="group_size must be positive"):
        QuantSpec(4, granularity="group", group_size=0)
    with pytest.raises(ValueError, match="granularity must be"):
        QuantSpec(4, granularity="channel")
    with pytest.raises(ValueError, match="clip must be"):
        QuantSpec(4, clip="percentile")


def test_group_granularity_groups_consecutive_columns_of_a_row():
    w = torch.tensor([[1.0, 0.4, 100.0, 40.0], [3.0, 1.2, 0.1, 0.05]])
    q = quantize_weight(w, QuantSpec(2, granularity="group", group_size=2))
    assert torch.equal(q, torch.tensor([[1.0, 0.0, 100.0, 0.0], [3.0, 0.0, 0.1, 0.0]]))


# --------------------------------------------------------------------------------------------
# PTQ on parameter dicts
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return create_model("micro", 3, embed_dim=16, depth=1, num_heads=2, seed=0)


@pytest.fixture(scope="module")
def theta(model) -> P.Params:
    return P.from_model(model)


def test_ptq_returns_a_new_dict_and_never_mutates(theta):
    before = {k: v.clone() for k, v in theta.items()}
    spec = QuantSpec(3)
    out = ptq(theta, spec)
    assert out is not theta and list(out) == list(theta)
    assert all(torch.equal(theta[k], before[k]) for k in theta)
    quantized = set(P.scope_keys(theta, "quantized"))
    for k in theta:
        if k in quantized:
            assert torch.equal(out[k], quantize_weight(theta[k], spec)) and not torch.equal(out[k], theta[k])
        else:  # head, biases, norms, embeddings: untouched
            assert torch.equal(out[k], theta[k])
    # another scope
    out_all = ptq(theta, spec, scope="backbone")
    assert torch.equal(out_all["norm.weight"], quantize_weight(theta["norm.weight"], spec))
    assert torch.equal(out_all["head.weight"], theta["head.weight"])


def test_ptq_refuses_non_finite_weights(theta):
    bad = {**theta, "blocks.0.mlp.fc1.weight": theta["blocks.0.mlp.fc1.weight"].clone().fill_(float("nan"))}
    with pytest.raises(P.NonFiniteParamsError, match="blocks.0.mlp.fc1.weight"):
        ptq(bad, QuantSpec(3))


def test_fake_quantize_value_and_identity_derivative(theta):
    spec = QuantSpec(2)
    fq = fake_quantize(theta, spec)
    pq = ptq(theta, spec)
    assert all(torch.equal(fq[k], pq[k]) for k in theta)
    w = theta["blocks.0.attn.qkv.weight"]
    v = torch.randn_like(w)
    value, tangent = jvp(lambda t: ste_quantize(t, spec), (w,), (v,))  # forward mode
    assert torch.equal(value, quantize_weight(w, spec)) and torch.equal(tangent, v)
    c = torch.randn_like(w)
    grad = torch.func.grad(lambda t: (ste_quantize(t, spec) * c).sum())(w)  # reverse mode
    assert torch.equal(grad, c)


def test_quantization_error_rows(theta):
    spec = QuantSpec(3)
    rows = quantization_error(theta, spec)
    assert [r["name"] for r in rows] == P.scope_keys(theta, "quantized")
    for r in rows:
        w = theta[r["name"]].double()
        q = quantize_weight(theta[r["name"]], spec).double()
        assert r["numel"] == w.numel()
        assert r["rel_error"] == pytest.approx(float((w - q).norm() / w.norm()), rel=1e-6)  # float32 w − Q(w)
        assert r["max_abs_error"] == pytest.approx(float((w - q).abs().max()), rel=1e-6)
        assert r["mean_scale"] == pytest.approx(float((w.abs().amax(dim=1) / 3).mean()), rel=1e-6)
        assert r["max_abs_error"] <= float((w.abs().amax(dim=1) / 3).max()) / 2 * (1 + 1e-5)
        assert 1 < r["levels_used"] <= 7
        expected_levels = np.mean([len(torch.unique(row)) for row in q])
        assert r["levels_used"] == pytest.approx(expected_levels)


# --------------------------------------------------------------------------------------------
# QAT layers
# --------------------------------------------------------------------------------------------


def test_prepare_qat_swaps_every_linear_but_the_head(model):
    spec = QuantSpec(2)
    net = prepare_qat(copy.deepcopy(model), spec)
    qat = {n for n, m in net.named_modules() if isinstance(m, QATLinear)}
    linear = {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert qat == linear - {"head"} and len(qat) == 4
    assert type(net.head) is nn.Linear
    assert all(m.spec == spec for m in net.modules() if isinstance(m, QATLinear))
    assert list(net.state_dict()) == list(model.state_dict())
    assert "bits=2" in repr(net.blocks[0].attn.qkv)


def test_qat_layer_shares_the_linears_parameters():
    lin = nn.Linear(4, 3)
    q = QATLinear.from_linear(lin, QuantSpec(3))
    assert q.weight is lin.weight and q.bias is lin.bias
    nobias = QATLinear.from_linear(nn.Linear(4, 3, bias=False), QuantSpec(3))
    assert nobias.bias is None


def test_qat_forward_equals_the_ptq_models_forward(model, theta):
    # Exact: Q(w) − w is exact in float32 (Sterbenz: |Q(w) − w| ≤ s/2 keeps Q(w) within a factor
    # 2 of w, or Q(w) = 0), so the STE value w + (Q(w) − w) is Q(w) bitwise.
    spec = QuantSpec(2)
    net = prepare_qat(copy.deepcopy(model), spec).eval()
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(net(x), logits(model, ptq(theta, spec), x))
        assert not torch.equal(net(x), model(x))  # the quantization does something


def test_ste_gradient_is_the_plain_gradient_at_the_quantized_weight():
    torch.manual_seed(0)
    spec = QuantSpec(3)
    lin = nn.Linear(8, 5)
    qlin = QATLinear.from_linear(copy.deepcopy(lin), spec)
    plain = copy.deepcopy(lin)
    with torch.no_grad():
        plain.weight.copy_(quantize_weight(lin.weight, spec))
    x = torch.randn(4, 8)
    c = torch.randn(4, 5)
    xs = [x.clone().requires_grad_(), x.clone().requires_grad_()]
    (qlin(xs[0]) * c).sum().backward()
    (plain(xs[1]) * c).sum().backward()
    # the same float ops on the same values: bitwise equal
    assert torch.equal(qlin.weight.grad, plain.weight.grad)
    assert torch.equal(qlin.bias.grad, plain.bias.grad)
    assert torch.equal(xs[0].grad, xs[1].grad)
    # and not the gradient at the unquantized weight (w.r.t. the input, which sees W)
    x2 = x.clone().requires_grad_()
    (lin(x2) * c).sum().backward()
    assert not torch.allclose(x2.grad, xs[0].grad)


def test_strip_qat_restores_plain_linears_with_the_fp_keys(model):
    net = prepare_qat(copy.deepcopy(model), QuantSpec(2))
    weights_before = {n: m.weight for n, m in net.named_modules() if isinstance(m, QATLinear)}
    strip_qat(net)
    assert not any(isinstance(m, QATLinear) for m in net.modules())
    assert {n for n, m in net.named_modules() if type(m) is nn.Linear} == {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert list(net.state_dict()) == list(model.state_dict())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in net.state_dict().items())
    assert all(dict(net.named_modules())[n].weight is w for n, w in weights_before.items())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(net.eval()(x), model(x))

"""AWQ: folding the scales leaves the full-precision function unchanged (float64), α = 0 is RTN bit
for bit, the layer-output error against a dense numpy reference never exceeds RTN's and is lower on
average where input channels differ in magnitude, and the model-level result (original coordinates,
sequential calibration) computes the folded form's function."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import functional_call

from qgeom.awq import ALPHAS, activation_scale, awq, awq_quantize, awq_scales, channel_magnitude, fold_scales
from qgeom.models import create_model
from qgeom.params import from_model
from qgeom.quant import QuantSpec, ptq, quantize_weight

FOLDABLE = ("attn.qkv", "attn.proj", "mlp.fc1")
DEPTH = 2


def tiny_vit(dtype=torch.float64):
    return create_model("micro", 5, seed=0, embed_dim=16, depth=DEPTH, num_heads=2, mlp_ratio=2.0).to(dtype)


MODEL64 = tiny_vit()


def random_theta(model, seed: int) -> dict[str, torch.Tensor]:
    """Every parameter redrawn (LayerNorm gains and biases, qkv and proj biases included), so that
    no fold lands on a 1 or a 0 by construction."""
    g = torch.Generator().manual_seed(seed)
    theta = from_model(model)
    return {k: (0.5 * torch.randn(v.shape, generator=g, dtype=v.dtype) + (1.0 if k.endswith("norm1.weight")
                                                                           or k.endswith("norm2.weight") else 0.0))
            for k, v in theta.items()}


def images(n: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def forward(model, theta, x):
    with torch.no_grad():
        return functional_call(model, theta, (x,))


# --------------------------------------------------------------------------------------------
# folding
# --------------------------------------------------------------------------------------------


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**16), spread=st.floats(0.0, 2.0))
def test_folding_any_positive_scales_leaves_the_full_precision_logits_unchanged(seed, spread):
    """float64: unit roundoff 1.1e−16; a depth-2 forward pass with sums of ≤ 64 terms and scales up
    to 10^±2 loses at most a few 1e−13 of the logits' scale, so 1e−10 leaves three orders of margin,
    while an unfolded scaling moves the logits by O(1) (checked too: the test can fail)."""
    theta = random_theta(MODEL64, seed)
    g = torch.Generator().manual_seed(seed + 1)
    scales = {f"blocks.{b}.{m}": 10.0 ** (spread * (2 * torch.rand(theta[f"blocks.{b}.{m}.weight"].shape[1],
                                                                     generator=g, dtype=torch.float64) - 1))
              for b in range(DEPTH) for m in FOLDABLE}
    folded = fold_scales(theta, scales)
    x = images(4, seed)
    fp, got = forward(MODEL64, theta, x), forward(MODEL64, folded, x)
    scale = float(fp.abs().max())
    assert float((got - fp).abs().max()) <= 1e-10 * max(1.0, scale)
    for b in range(DEPTH):  # the fold did move the preceding operations
        s = scales[f"blocks.{b}.attn.qkv"]
        assert torch.allclose(folded[f"blocks.{b}.norm1.bias"] * s, theta[f"blocks.{b}.norm1.bias"], rtol=1e-14)
        s_proj, c = scales[f"blocks.{b}.attn.proj"], len(scales[f"blocks.{b}.attn.proj"])
        want_v = theta[f"blocks.{b}.attn.qkv.weight"][2 * c:] * scales[f"blocks.{b}.attn.qkv"] / s_proj[:, None]
        assert torch.allclose(folded[f"blocks.{b}.attn.qkv.weight"][2 * c:], want_v, rtol=1e-14)
        assert torch.equal(folded[f"blocks.{b}.attn.qkv.bias"][:2 * c], theta[f"blocks.{b}.attn.qkv.bias"][:2 * c])
    if spread > 0.5:  # scaling the Linear alone (no fold) is not a symmetry
        unfolded = dict(theta, **{f"{k}.weight": theta[f"{k}.weight"] * s for k, s in scales.items()})
        assert float((forward(MODEL64, unfolded, x) - fp).abs().max()) > 1e-3 * scale


def test_fc2_and_bad_scales_are_refused():
    theta = from_model(MODEL64)
    with pytest.raises(ValueError, match="GELU"):
        fold_scales(theta, {"blocks.0.mlp.fc2": torch.ones(32, dtype=torch.float64)})
    with pytest.raises(ValueError, match="positive"):
        fold_scales(theta, {"blocks.0.mlp.fc1": -torch.ones(16, dtype=torch.float64)})
    with pytest.raises(ValueError, match="shape"):
        fold_scales(theta, {"blocks.0.mlp.fc1": torch.ones(3, dtype=torch.float64)})
    with pytest.raises(ValueError, match="module names"):
        fold_scales(theta, {"blocks.0.mlp": torch.ones(16, dtype=torch.float64)})


# --------------------------------------------------------------------------------------------
# one layer
# --------------------------------------------------------------------------------------------


def uneven_inputs(n_in: int, seed: int, n: int = 256, spread: float = 1.5) -> torch.Tensor:
    """Gaussian inputs whose channels have magnitudes 10^U(−spread, spread): three decades apart."""
    g = torch.Generator().manual_seed(seed)
    mag = 10.0 ** (spread * (2 * torch.rand(n_in, generator=g, dtype=torch.float64) - 1))
    return torch.randn(n, n_in, generator=g, dtype=torch.float64) * mag


def dense_error(w: torch.Tensor, q: torch.Tensor, x: torch.Tensor) -> float:
    """‖(Q − W) Xᵀ‖²_F / N by an explicit numpy product (the reference)."""
    d = q.double().numpy() - w.double().numpy()
    return float(np.sum((d @ x.double().numpy().T) ** 2) / x.shape[0])


specs = st.builds(QuantSpec, bits=st.integers(2, 8), granularity=st.sampled_from(["row", "tensor", "group"]),
                  group_size=st.just(4), symmetric=st.booleans())


@settings(max_examples=25, deadline=None)
@given(out=st.integers(1, 8), groups=st.integers(1, 6), spec=specs, seed=st.integers(0, 2**16))
def test_alpha_zero_is_round_to_nearest_bit_for_bit(out, groups, spec, seed):
    w = torch.randn(out, 4 * groups, generator=torch.Generator().manual_seed(seed))
    x = uneven_inputs(4 * groups, seed).float()
    r = awq_quantize(w, x, spec, alphas=(0.0,))
    assert torch.equal(r.weight, quantize_weight(w, spec)) and torch.equal(r.scale, torch.ones(4 * groups))
    assert r.error == r.rtn_error


@settings(max_examples=15, deadline=None)
@given(out=st.integers(1, 16), n_in=st.integers(2, 32), bits=st.integers(2, 8), seed=st.integers(0, 2**16))
def test_awq_never_loses_to_rtn_and_wins_on_average_when_channels_differ_in_magnitude(out, n_in, bits, seed):
    """Errors against the dense reference (float64, agreement to 1e−9 relative: the Hessian form
    reorders a sum of ≤ 256·32 terms). α = 0 is in the grid and wins ties, so each layer's error is
    at most RTN's; over 8 random layers with channels 10^±1.5 apart it is strictly lower."""
    spec, awq_total, rtn_total = QuantSpec(bits), 0.0, 0.0
    for k in range(8):
        w = torch.randn(out, n_in, generator=torch.Generator().manual_seed(seed + 7919 * k), dtype=torch.float64)
        x = uneven_inputs(n_in, seed + k)
        r = awq_quantize(w, x, spec)
        awq_err, rtn_err = dense_error(w, r.weight, x), dense_error(w, quantize_weight(w, spec), x)
        assert r.error == pytest.approx(awq_err, rel=1e-9, abs=1e-300)
        assert r.rtn_error == pytest.approx(rtn_err, rel=1e-9, abs=1e-300)
        assert r.error <= r.rtn_error
        assert r.alpha in ALPHAS
        s = activation_scale(channel_magnitude(x), r.alpha)
        assert torch.equal(r.weight, quantize_weight(w * s, spec) / s)  # Q(W diag s) diag(s)⁻¹
        awq_total, rtn_total = awq_total + awq_err, rtn_total + rtn_err
    assert awq_total < rtn_total


def test_scales_follow_the_published_formula():
    """s(α) = m^α / √(max m^α · min m^α), m_j = mean_n |x_nj|, written out channel by channel."""
    x = uneven_inputs(5, 0, n=7)
    m = [sum(abs(float(x[n, j])) for n in range(7)) / 7 for j in range(5)]
    for alpha in (0.0, 0.35, 1.0):
        p = [mj**alpha for mj in m]
        want = torch.tensor([pj / (max(p) * min(p)) ** 0.5 for pj in p], dtype=torch.float64)
        assert torch.allclose(activation_scale(channel_magnitude(x), alpha), want, rtol=1e-12)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        awq_quantize(torch.ones(2, 5), x, QuantSpec(3), alphas=(1.5,))


# --------------------------------------------------------------------------------------------
# a model, in sequence
# --------------------------------------------------------------------------------------------


def calibration(x: torch.Tensor, batch: int = 16) -> list:
    return [(x[i:i + batch], torch.zeros(len(x[i:i + batch]), dtype=torch.long)) for i in range(0, len(x), batch)]


def test_awq_in_original_coordinates_computes_the_folded_forms_function():
    """float64 model: ptq(fold_scales(θ, s)) — the folded form, quantized on its own per-row grid —
    and awq(θ) (effective weights in θ's coordinates) give the same logits to 1e−9 of their scale
    (per-row quantization commutes with the V-row scaling of qkv: exact up to roundoff)."""
    theta, spec = random_theta(MODEL64, 3), QuantSpec(3)
    calib = calibration(images(48, 1))
    q, stats = awq(MODEL64, theta, calib, spec)
    scales = awq_scales(MODEL64, theta, calib, spec)
    assert set(scales) == {f"blocks.{b}.{m}" for b in range(DEPTH) for m in FOLDABLE}
    assert any(s["alpha"] > 0 for s in stats)
    x = images(8, 2)
    want, got = forward(MODEL64, ptq(fold_scales(theta, scales), spec), x), forward(MODEL64, q, x)
    assert float((got - want).abs().max()) <= 1e-9 * float(want.abs().max())
    for k, v in theta.items():  # only the quantized scope moves; θ_AWQ − θ is a QAT-like vector
        if k.endswith(".weight") and v.dim() == 2 and not k.startswith("head"):
            assert not torch.equal(q[k], v), k
        else:
            assert q[k] is v, k
    assert [(s["layer"].split(".", 2)[2], s["foldable"]) for s in stats[:4]] == [
        ("attn.qkv", True), ("attn.proj", True), ("mlp.fc1", True), ("mlp.fc2", False)]
    assert all(s["alpha"] == 0.0 and s["awq_error"] == s["rtn_error"] for s in stats if not s["foldable"])


def test_calibration_is_sequential_and_alpha_zero_is_rtn_on_the_model():
    """Each layer's record equals AWQ of that layer on inputs captured by a plain forward hook on a
    model carrying θ_AWQ (a layer's input depends only on the layers before it, all quantized), and
    differs from the full-precision inputs' (``sequential=False``) after the first layer."""
    model = tiny_vit(torch.float32)
    theta, spec = from_model(model), QuantSpec(2)
    calib = calibration(images(32, 4, torch.float32))
    q, stats = awq(model, theta, calib, spec)
    seen: dict[str, torch.Tensor] = {}
    names = [s["layer"] for s in stats]
    hooks = [model.get_submodule(n).register_forward_pre_hook(
        lambda m, a, n=n: seen.__setitem__(n, a[0].detach().reshape(-1, a[0].shape[-1]))) for n in names]
    forward(model, q, torch.cat([x for x, _ in calib]))
    for h in hooks:
        h.remove()
    for s in stats:
        r = awq_quantize(theta[f"{s['layer']}.weight"], seen[s["layer"]], spec, ALPHAS if s["foldable"] else (0.0,))
        assert torch.equal(q[f"{s['layer']}.weight"], r.weight), s["layer"]
    fp_stats = awq(model, theta, calib, spec, sequential=False)[1]
    assert fp_stats[0] == stats[0] and fp_stats[-1]["rtn_error"] != stats[-1]["rtn_error"]
    q0 = awq(model, theta, calib, spec, alphas=(0.0,))[0]
    rtn = ptq(theta, spec)
    assert all(torch.equal(q0[k], rtn[k]) for k in theta)
    with pytest.raises(ValueError, match="calibration"):
        awq(model, theta, [], spec)

"""Activation fake quantization (W+A settings): the grid, the straight-through gradient, and what
8 and 2 bits do to a tiny ViT's logits."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qgeom.activations import (ActivationSpec, Range, UnsupportedActivationBitsError, calibrate, quantize_activation,
                               quantized_inputs, quantized_linears)


@settings(max_examples=40)
@given(bits=st.integers(2, 8), symmetric=st.booleans(), lo=st.floats(-5, 0), width=st.floats(0.1, 10),
       seed=st.integers(0, 2**16))
def test_the_grid_has_at_most_two_to_the_b_levels_and_is_idempotent(bits, symmetric, lo, width, seed):
    spec, r = ActivationSpec(bits, symmetric), Range(lo, lo + width)
    x = lo + width * torch.rand(500, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    q = quantize_activation(x, r, spec)
    assert len(torch.unique(q)) <= 2**bits
    assert torch.equal(quantize_activation(q, r, spec), q)
    if not symmetric:
        assert float(quantize_activation(torch.zeros(1, dtype=torch.float64), r, spec)) == 0.0  # 0 is on the grid
    step = (max(abs(r.lo), abs(r.hi)) / (2 ** (bits - 1) - 1)) if symmetric else (max(r.hi, 0) - min(r.lo, 0)) / (2**bits - 1)
    assert float((q - x).abs().max()) <= step / 2 + 1e-12  # every x in the range is within half a step


def test_the_gradient_is_straight_through():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    model[1].weight.data = torch.eye(2, 3)
    model[1].bias.data.zero_()
    ranges = {"1": Range(-1.0, 1.0)}
    x = torch.randn(5, 4)
    h = model[0](x).detach().requires_grad_()
    with quantized_inputs(model, ranges, ActivationSpec(2)):
        out = model[1](h)
    out.sum().backward()
    assert torch.equal(h.grad, torch.tensor([[1.0, 1.0, 0.0]]).expand(5, 3))  # d(sum W Q(h))/dh = Wᵀ1, Q's Jacobian I


def test_eight_bits_stay_near_full_precision_and_two_bits_do_not():
    """Relative logit error ‖f_Q(x) − f(x)‖ / ‖f(x)‖ on held-out inputs: < 0.05 at 8 bits (a per-tensor
    8-bit grid has 255 steps over the observed range), > 0.2 at 2 bits (3 levels)."""
    from qgeom.models import create_model
    from qgeom.params import from_model

    model = create_model("micro", 5, seed=0, embed_dim=32, depth=2, num_heads=2)
    theta = from_model(model)
    g = torch.Generator().manual_seed(1)
    calib = [(torch.randn(32, 3, 32, 32, generator=g), None) for _ in range(2)]
    x = torch.randn(64, 3, 32, 32, generator=g)
    ranges = calibrate(model, theta, calib)
    assert set(ranges) == set(quantized_linears(model)) and len(ranges) == 8
    with torch.no_grad():
        fp = model(x)

        def rel(bits):
            with quantized_inputs(model, ranges, ActivationSpec(bits)):
                return float((model(x) - fp).norm() / fp.norm())

        assert rel(8) < 0.05 and rel(2) > 0.2
        assert torch.equal(model(x), fp)  # the hooks are gone after the block


def test_bad_input_is_refused():
    with pytest.raises(UnsupportedActivationBitsError):
        ActivationSpec(1)
    with pytest.raises(UnsupportedActivationBitsError):
        ActivationSpec(9)
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="calibration"):
        calibrate(model, dict(model.named_parameters()), [])


def test_wa_qat_trains_through_the_fake_quantized_inputs():
    """W+A QAT (``fit(..., qat_spec, act_inputs=...)``): the first step's loss is the loss of the
    network with fake-quantized weights *and* inputs (so the hooks act in training, with the STE),
    the result differs from weight-only QAT, and nothing stays hooked on the caller's model."""
    from qgeom.models import create_model
    from qgeom.params import from_model
    from qgeom.quant import QuantSpec, fake_quantize
    from qgeom.train import fit

    model = create_model("micro", 3, seed=0, embed_dim=32, depth=1, num_heads=2)
    theta = from_model(model)
    g = torch.Generator().manual_seed(2)
    data = [(torch.randn(16, 3, 32, 32, generator=g), torch.randint(0, 3, (16,), generator=g)) for _ in range(3)]
    acts = (calibrate(model, theta, data), ActivationSpec(3))
    logged: list[dict] = []
    wa = fit(model, theta, data, 3, lr=1e-3, qat_spec=QuantSpec(2), act_inputs=acts, log=logged.append, log_every=1)
    w_only = fit(model, theta, data, 3, lr=1e-3, qat_spec=QuantSpec(2))
    x, y = data[0]
    with torch.no_grad(), quantized_inputs(model, *acts):
        want = torch.nn.functional.cross_entropy(torch.func.functional_call(model, fake_quantize(theta, QuantSpec(2)),
                                                                            (x,)), y)
    assert logged[0]["loss"] == pytest.approx(float(want), rel=1e-6)  # float32; measured identical (weight-only: 0.4 % off)
    assert any(not torch.equal(wa[k], w_only[k]) for k in wa)
    assert all(not m._forward_pre_hooks for m in model.modules())

"""The one quantizer interface: each method through ``quantize`` is the method called directly, its
per-layer errors match an independent dense computation, and bad calls are refused with a message
that says what to pass."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import functional_call

from qgeom.awq import awq, awq_scales
from qgeom.gptq import gptq
from qgeom.models import create_model
from qgeom.params import from_model
from qgeom.quant import QuantSpec, ptq
from qgeom.quantizers import METHODS, QuantizedParams, method_options, quantize

MODEL = create_model("micro", 5, seed=0, embed_dim=32, depth=2, num_heads=2)
THETA = from_model(MODEL)
_X = torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(0))
CALIB = [(_X[i:i + 32], torch.zeros(32, dtype=torch.long)) for i in range(0, 64, 32)]
LINEARS = [k for k, v in THETA.items() if k.endswith(".weight") and v.dim() == 2 and not k.startswith("head")]


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@settings(max_examples=15, deadline=None)
@given(spec=st.builds(QuantSpec, bits=st.integers(2, 8), granularity=st.sampled_from(["row", "tensor", "group"]),
                      group_size=st.just(8), symmetric=st.booleans(), clip=st.sampled_from(["none", "mse"])),
       scope=st.sampled_from(["quantized", "backbone"]))
def test_rtn_through_quantize_is_ptq(spec, scope):
    before = {k: v.clone() for k, v in THETA.items()}
    got = quantize("rtn", THETA, spec, scope=scope)
    assert isinstance(got, QuantizedParams) and same(got.params, ptq(THETA, spec, scope))
    assert same(THETA, before)  # the input is not mutated
    for row in got.layers:  # no inputs: relative weight error, against numpy
        w, q = THETA[row["name"]].double().numpy(), got.params[row["name"]].double().numpy()
        assert row["method"] == "rtn" and row["error"] == "weight"
        want = np.linalg.norm(q - w) / max(np.linalg.norm(w), 1e-300)  # a zero tensor (a bias at init) stays 0
        assert row["rel_error"] == pytest.approx(want, rel=1e-9, abs=1e-300)


def test_gptq_and_awq_through_quantize_are_the_methods_called_directly():
    spec = QuantSpec(3)
    got = quantize("gptq", THETA, spec, model=MODEL, batches=CALIB, act_order=True, block_size=8)
    want, stats = gptq(MODEL, THETA, CALIB, spec, act_order=True, block_size=8)
    assert same(got.params, want)
    assert [r["damp"] for r in got.layers] == [s["damp"] for s in stats]
    got = quantize("awq", THETA, spec, model=MODEL, batches=iter(CALIB), alphas=(0.0, 0.5, 1.0))
    want, stats = awq(MODEL, THETA, CALIB, spec, alphas=(0.0, 0.5, 1.0))
    assert same(got.params, want)
    assert [r["alpha"] for r in got.layers] == [s["alpha"] for s in stats]


def test_output_errors_are_measured_on_the_quantized_models_own_inputs():
    """rel_error = ‖(Ŵ − W)X‖ / ‖WX‖ with X captured by plain forward hooks on a model carrying the
    quantized weights (numpy, float64; agreement 1e−6 relative: the inputs are float32 and the
    interface sums XᵀX batch by batch); for GPTQ, rel_error² ‖WX‖²/N is its own recorded error."""
    gptq_stats = gptq(MODEL, THETA, CALIB, QuantSpec(2))[1]
    for method in METHODS:
        got = quantize(method, THETA, QuantSpec(2), model=MODEL, batches=CALIB)
        assert [r["name"] for r in got.layers] == LINEARS
        seen: dict[str, list] = {k: [] for k in LINEARS}
        hooks = [MODEL.get_submodule(k[:-7]).register_forward_pre_hook(
            lambda m, a, k=k: seen[k].append(a[0].detach().reshape(-1, a[0].shape[-1]))) for k in LINEARS]
        with torch.no_grad():
            for x, _ in CALIB:
                functional_call(MODEL, got.params, (x,))
        for h in hooks:
            h.remove()
        for row in got.layers:
            x = torch.cat(seen[row["name"]]).double().numpy()
            w, q = THETA[row["name"]].double().numpy(), got.params[row["name"]].double().numpy()
            want = np.linalg.norm((q - w) @ x.T) / np.linalg.norm(w @ x.T)
            assert row["error"] == "output" and row["rel_error"] == pytest.approx(want, rel=1e-6)
            if method == "gptq":
                s = next(s for s in gptq_stats if f"{s['layer']}.weight" == row["name"])
                signal = np.linalg.norm(w @ x.T) ** 2 / len(x)
                assert row["rel_error"] ** 2 * signal == pytest.approx(s["gptq_error"], rel=1e-6)
                assert row["rows"] == s["rows"] == len(x)


def test_every_method_stays_on_the_default_grid_unless_told_otherwise():
    """Same default grid (paper's per-row symmetric): RTN and GPTQ weights are multiples of the row
    step; AWQ's effective weights are multiples of row step / s_j per column."""
    for method in ("rtn", "gptq"):
        q = quantize(method, THETA, QuantSpec(3), model=MODEL, batches=CALIB).params
        for k in LINEARS:
            step = THETA[k].abs().amax(dim=1, keepdim=True).double() / 3
            codes = q[k].double() / step
            assert torch.allclose(codes, codes.round(), atol=1e-4), (method, k)
            assert float(codes.round().min()) >= -4 and float(codes.round().max()) <= 3, (method, k)
    q = quantize("awq", THETA, QuantSpec(3), model=MODEL, batches=CALIB).params
    scales = awq_scales(MODEL, THETA, CALIB, QuantSpec(3))
    for k in LINEARS:
        s = scales.get(k[:-7], torch.ones(THETA[k].shape[1])).double()  # fc2: s ≡ 1
        step = (THETA[k].double() * s).abs().amax(dim=1, keepdim=True) / 3
        codes = q[k].double() * s / step
        assert torch.allclose(codes, codes.round(), atol=1e-4) and float(codes.round().abs().max()) <= 3, k
    with pytest.raises(ValueError, match="paper's grid"):
        quantize("gptq", THETA, QuantSpec(3, granularity="tensor"), model=MODEL, batches=CALIB)


def test_bad_calls_say_what_to_pass():
    spec = QuantSpec(3)
    with pytest.raises(ValueError, match="rtn, gptq, awq"):
        quantize("hqq", THETA, spec)
    for method in ("gptq", "awq"):
        with pytest.raises(ValueError, match="pass model=.*and batches="):
            quantize(method, THETA, spec)
        with pytest.raises(ValueError, match=r"pass batches= \(calibration"):
            quantize(method, THETA, spec, model=MODEL)
        with pytest.raises(ValueError, match=r"pass model= \(the nn.Module"):
            quantize(method, THETA, spec, batches=CALIB)
    with pytest.raises(ValueError, match="both model= and batches="):
        quantize("rtn", THETA, spec, batches=CALIB)
    with pytest.raises(ValueError, match="takes no option damp; its options: none"):
        quantize("rtn", THETA, spec, damp=0.1)
    with pytest.raises(ValueError, match="its options: alphas, sequential"):
        quantize("awq", THETA, spec, model=MODEL, batches=CALIB, act_order=True)
    assert METHODS == ("rtn", "gptq", "awq") and method_options("gptq") == ("block_size", "damp", "act_order")
    with pytest.raises(dataclasses.FrozenInstanceError):
        quantize("rtn", THETA, spec).params = {}

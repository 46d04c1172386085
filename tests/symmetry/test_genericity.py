"""qgeom.symmetry.genericity: the checkable well-definedness condition of Theorem 6.5 (proofs/06)."""

from __future__ import annotations

import torch

from qgeom.symmetry.genericity import genericity_margin
from qgeom.models import create_model
from qgeom.params import from_model
from qgeom.quant import QuantSpec


def _model():
    model = create_model("micro", 3, depth=1, embed_dim=8, num_heads=2, img_size=8, patch_size=4).double()
    g = torch.Generator().manual_seed(0)
    theta = {k: v + 0.3 * torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in from_model(model).items()}
    return model, theta


def test_generic_point_has_positive_margins_and_key_bias_is_ignored():
    model, theta = _model()
    m = genericity_margin(model, theta, QuantSpec(3))
    assert m["ok"] and min(v for k, v in m.items() if k != "ok") > 0
    # the key bias is dropped: zeroing it (as timm's init and training leave it) changes nothing
    t2 = dict(theta)
    b = t2["blocks.0.attn.qkv.bias"].clone()
    b[8:16] = 0
    t2["blocks.0.attn.qkv.bias"] = b
    assert genericity_margin(model, t2, QuantSpec(3)) == m


def test_fixed_points_and_cell_boundaries_are_detected():
    """Must-fail twins: two equal heads, a hidden unit equal to minus another, a weight on a cell
    boundary each give a zero margin and ok = False."""
    model, theta = _model()
    t = dict(theta)
    w = t["blocks.0.attn.qkv.weight"].clone().reshape(3, 2, 4, 8)
    w[:, 1] = w[:, 0]
    t["blocks.0.attn.qkv.weight"] = w.reshape(24, 8)
    b = t["blocks.0.attn.qkv.bias"].clone().reshape(3, 2, 4)
    b[:, 1] = b[:, 0]
    t["blocks.0.attn.qkv.bias"] = b.reshape(24)
    p = t["blocks.0.attn.proj.weight"].clone()
    p[:, 4:] = p[:, :4]
    t["blocks.0.attn.proj.weight"] = p
    m = genericity_margin(model, t, QuantSpec(3))
    assert m["heads"] == 0 and not m["ok"]
    t = dict(theta)
    for k, ax in (("blocks.0.mlp.fc1.weight", 0), ("blocks.0.mlp.fc1.bias", 0), ("blocks.0.mlp.fc2.weight", 1)):
        x = t[k].clone().movedim(ax, 0)
        x[1] = -x[0]
        t[k] = x.movedim(0, ax)
    assert genericity_margin(model, t, QuantSpec(3))["hidden"] == 0
    t = dict(theta)
    w = t["blocks.0.mlp.fc2.weight"].clone()
    s = w[0].abs().max() / 3
    j = int((w[0].abs() < w[0].abs().max()).nonzero()[0])
    w[0, j] = 1.5 * s  # exactly on the tie between codes 1 and 2
    t["blocks.0.mlp.fc2.weight"] = w
    m = genericity_margin(model, t, QuantSpec(3))
    assert m["quantizer"] < 1e-12 and not m["ok"]

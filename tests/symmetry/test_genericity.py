"""qgeom.symmetry.genericity: the checkable well-definedness condition of Theorems 6.5–6.6 (proofs/06).

The fixed points are built, not guessed: for an involution g of the finite group (g² = I, a
signed permutation of coordinates), θ' = (θ + gθ)/2 satisfies gθ' = θ' exactly in floating point
(g only permutes and negates entries, and the sum commutes), so every generator class gets an
exact fixed point, and the margin that class is tied to must be 0 there (Theorem 6.6 (b): the unit
margins are necessary) while it is positive at the generic θ that g moves (the twin).
"""

from __future__ import annotations

import re

import pytest
import torch

from qgeom.models import create_model
from qgeom.params import from_model
from qgeom.quant import QuantSpec
from qgeom.symmetry.catalogue import (head_permutation, layernorm_folding, layerscale_folding, mlp_permutation,
                                      qk_mixing, residual_permutation, vo_mixing)
from qgeom.symmetry.element import Symmetry, compose
from qgeom.symmetry.genericity import STREAM_KEYS, UNIT_KEYS, genericity_margin
from qgeom.symmetry.layout import layout_of
from qgeom.symmetry.operators import Scaling

D, H, HD = 8, 2, 4  # width, heads, head_dim


def _model(layerscale: bool = False):
    kw = dict(init_values=0.5) if layerscale else {}
    model = create_model("micro", 3, depth=1, embed_dim=D, num_heads=H, img_size=8, patch_size=4, **kw).double()
    g = torch.Generator().manual_seed(0)
    theta = {k: v + 0.3 * torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in from_model(model).items()}
    return model, theta


def _dist(a, b) -> float:
    return sum(float((a[k] - b[k]).double().pow(2).sum()) for k in a) ** 0.5


def _signed_perm(perm, signs) -> torch.Tensor:
    m = torch.zeros(len(perm), len(perm), dtype=torch.float64)
    for i, (j, s) in enumerate(zip(perm, signs)):
        m[i, j] = s
    return m


def _stream_minus_identity(model) -> Symmetry:
    """Item 8 with R = −I: stream writers and LayerNorm biases × (−1), readers' columns × (−1)."""
    L = layout_of(model)
    writers = r"(cls_token|pos_embed|patch_embed\.proj\.\w+|blocks\.\d+\.(attn\.proj|mlp\.fc2)\.\w+|.*norm\d?\.bias)"
    readers = r"(blocks\.\d+\.(attn\.qkv|mlp\.fc1)|head)\.weight"
    acts = []
    for name, shape in L.shapes.items():
        axis = 2 if name in ("cls_token", "pos_embed") else 0 if re.fullmatch(writers, name) else \
            1 if re.fullmatch(readers, name) else None
        if axis is not None:
            acts.append((name, axis, Scaling(-torch.ones(shape[axis], dtype=torch.float64))))
    return Symmetry("stream_minus_identity", tuple(acts), L.sub([a[0] for a in acts]))


def _involutions(model) -> dict[str, tuple[Symmetry, str]]:
    """One involution per generator class of G_list, with the margin that must see its fixed points."""
    swap01 = torch.tensor([1, 0, 2, 3])
    A = torch.stack([_signed_perm([1, 0, 2, 3], [-1, -1, 1, 1]), torch.eye(HD, dtype=torch.float64)])
    flip0 = torch.stack([torch.diag(torch.tensor([-1.0, 1, 1, 1], dtype=torch.float64)),
                         torch.eye(HD, dtype=torch.float64)])
    a0 = _signed_perm([2, 0, 3, 1], [1, -1, -1, 1])  # head 0 → slot 1 by a0, head 1 → slot 0 by a0⁻¹
    b0 = _signed_perm([3, 2, 0, 1], [-1, 1, 1, -1])
    heads = compose(head_permutation(model, {0: torch.tensor([1, 0])}),
                    qk_mixing(model, {0: torch.stack([a0, a0.T])}, kind="qk_signed_permutation"),
                    vo_mixing(model, {0: torch.stack([b0, b0.T])}, kind="vo_signed_permutation"))
    swap_stream = torch.arange(D)
    swap_stream[[2, 5]] = swap_stream[[5, 2]]
    s25 = torch.ones(D, dtype=torch.float64)
    s25[[2, 5]] = -1
    s0 = torch.ones(D, dtype=torch.float64)
    s0[0] = -1
    return {
        "qk rows 0↔1 (the issue's counterexample)": (qk_mixing(model, {0: A}, kind="qk_signed_permutation"), "qk"),
        "qk row 0 sign flip": (qk_mixing(model, {0: flip0}, kind="qk_signed_permutation"), "qk"),
        "vo units 0↔1": (vo_mixing(model, {0: A}, kind="vo_signed_permutation"), "vo"),
        "heads up to within-head signed permutations": (heads, "heads"),
        "hidden units 0↔1": (mlp_permutation(model, {0: torch.tensor([1, 0] + list(range(2, 4 * D)))}), "hidden"),
        "stream 2↔5 with norm1 signs": (compose(residual_permutation(model, swap_stream),
                                                layernorm_folding(model, {"blocks.0.norm1": s25})), "stream"),
        "stream R = −I": (_stream_minus_identity(model), "stream_flip"),
        "norm1 sign fold of coordinate 0": (layernorm_folding(model, {"blocks.0.norm1": s0}), "signs"),
    }


def test_generic_point_has_positive_margins_and_key_bias_is_ignored():
    model, theta = _model()
    m = genericity_margin(model, theta, QuantSpec(3))
    assert m["ok"] and m["free"] and min(v for k, v in m.items() if k not in ("ok", "free")) > 0
    # the key bias is dropped: zeroing it (as timm's init and training leave it) changes nothing
    t2 = dict(theta)
    b = t2["blocks.0.attn.qkv.bias"].clone()
    b[D:2 * D] = 0
    t2["blocks.0.attn.qkv.bias"] = b
    assert genericity_margin(model, t2, QuantSpec(3)) == m


def test_the_issue_counterexample_is_not_free():
    """Regression (issue 25): q rows 0, 1 and k rows 0, 1 of head 0 equal (with their biases). The old
    margins (heads, hidden, stream up to a global sign) said ok; the catalogue's own
    qk_signed_permutation swapping rows 0↔1 of head 0 fixes θ exactly, and moves a generic θ."""
    model, theta = _model()
    t = dict(theta)
    w, b = t["blocks.0.attn.qkv.weight"].clone(), t["blocks.0.attn.qkv.bias"].clone()
    for r0, r1 in ((0, 1), (D, D + 1)):  # q rows 0, 1 and k rows 0, 1 of head 0
        w[r1], b[r1] = w[r0], b[r0]
    t["blocks.0.attn.qkv.weight"], t["blocks.0.attn.qkv.bias"] = w, b
    swap = torch.stack([_signed_perm([1, 0, 2, 3], [1, 1, 1, 1]), torch.eye(HD, dtype=torch.float64)])
    g = qk_mixing(model, {0: swap}, kind="qk_signed_permutation")
    assert _dist(g(t), t) == 0 and _dist(g(theta), theta) > 0.1
    m = genericity_margin(model, t, QuantSpec(3))
    assert not m["ok"] and not m["free"] and m["qk"] == 0  # the old code said ok = True here
    assert min(m[k] for k in ("heads", "hidden", "stream")) > 0.1  # what the old test looked at


CASES = ["qk rows 0↔1 (the issue's counterexample)", "qk row 0 sign flip", "vo units 0↔1",
         "heads up to within-head signed permutations", "hidden units 0↔1", "stream 2↔5 with norm1 signs",
         "stream R = −I", "norm1 sign fold of coordinate 0"]


@pytest.mark.parametrize("case", CASES)
def test_every_generator_class_has_its_fixed_points_detected(case):
    """θ' = (θ + gθ)/2 is fixed by g exactly; the margin of g's class is 0 there (the unit and stream
    margins are necessary for freeness, Theorem 6.6 (b)); twin: g moves the generic θ and that
    margin is positive there."""
    model, theta = _model()
    g, key = _involutions(model)[case]
    gt = g(theta)
    fixed = {k: (theta[k] + gt[k]) / 2 if k in gt else theta[k] for k in theta}
    assert _dist(g(fixed), fixed) == 0
    m = genericity_margin(model, fixed, QuantSpec(3))
    assert m[key] < 1e-12 and not m["free"], (key, m)
    assert _dist(gt, theta) > 1e-2 and genericity_margin(model, theta, QuantSpec(3))[key] > 1e-2


def test_layerscale_sign_fold_of_one_coordinate_is_detected():
    """With LayerScale: the fold t = −e_0 of ls1 fixes θ' = (θ + gθ)/2 (gamma_0, proj row 0 and bias 0 are 0
    there): ``signs`` = 0; twin: positive at the generic θ."""
    model, theta = _model(layerscale=True)
    t0 = torch.ones(D, dtype=torch.float64)
    t0[0] = -1
    g = layerscale_folding(model, {"blocks.0.ls1": t0})
    gt = g(theta)
    fixed = {k: (theta[k] + gt[k]) / 2 if k in gt else theta[k] for k in theta}
    assert _dist(g(fixed), fixed) == 0
    assert genericity_margin(model, fixed)["signs"] == 0
    assert genericity_margin(model, theta)["signs"] > 1e-2


def test_hidden_units_equal_up_to_sign_are_not_a_fixed_point_but_equal_ones_are():
    """GELU has no sign flip (Prop. 4′(b)), so a hidden unit equal to minus another is not fixed by any
    element (``hidden`` > 0); two equal hidden units are (``hidden`` = 0)."""
    model, theta = _model()
    for sign, zero in ((1.0, True), (-1.0, False)):
        t = dict(theta)
        for k, ax in (("blocks.0.mlp.fc1.weight", 0), ("blocks.0.mlp.fc1.bias", 0), ("blocks.0.mlp.fc2.weight", 1)):
            x = t[k].clone().movedim(ax, 0)
            x[1] = sign * x[0]
            t[k] = x.movedim(0, ax)
        assert (genericity_margin(model, t)["hidden"] == 0) == zero


def test_cell_boundaries_are_detected():
    """A weight exactly on the tie between codes 1 and 2 gives quantizer margin 0 and ok = False, while
    the action stays free."""
    model, theta = _model()
    t = dict(theta)
    w = t["blocks.0.mlp.fc2.weight"].clone()
    s = w[0].abs().max() / 3
    j = int((w[0].abs() < w[0].abs().max()).nonzero()[0])
    w[0, j] = 1.5 * s
    t["blocks.0.mlp.fc2.weight"] = w
    m = genericity_margin(model, t, QuantSpec(3))
    assert m["quantizer"] < 1e-12 and not m["ok"] and m["free"]


def test_a_stream_symmetry_of_the_stream_only_tensors_broken_by_the_mixed_ones():
    """Theorem 6.6 (d): make the stream-only tensors symmetric under the swap σ of stream coordinates 2, 5
    (``stream`` = 0, so 6.6 (a) cannot certify) while qkv, proj, fc1, fc2 stay generic. The unit factor
    is pinned by b_q, b_v and the fc1 bias (``units_own`` > 0), so freeness is decided by the full stream
    margin: ``stream_full`` > 0, free. Twin: average *every* tensor under σ — σ then fixes θ exactly,
    ``stream_full`` = 0 and free is False."""
    model, theta = _model()
    swap = torch.arange(D)
    swap[[2, 5]] = swap[[5, 2]]
    g = residual_permutation(model, swap)
    gt = g(theta)
    mixed = re.compile(r"blocks\.\d+\.(attn\.(qkv|proj)|mlp\.(fc1|fc2))\.weight")
    only_stream = {k: theta[k] if mixed.fullmatch(k) or k not in gt else (theta[k] + gt[k]) / 2 for k in theta}
    m = genericity_margin(model, only_stream)
    assert m["stream"] == 0 and m["units_own"] > 0 and m["stream_full"] > 1e-2
    assert m["free"] and m["decided"] and _dist(g(only_stream), only_stream) > 1e-2
    everything = {k: (theta[k] + gt[k]) / 2 if k in gt else theta[k] for k in theta}
    assert _dist(g(everything), everything) == 0
    m = genericity_margin(model, everything)
    assert m["stream_full"] == 0 and not m["free"] and m["decided"]


def test_margin_keys():
    model, theta = _model()
    assert set(genericity_margin(model, theta)) == {*UNIT_KEYS, *STREAM_KEYS, "quantizer", "absmax_tie", "units_own",
                                                    "stream_full", "free", "decided", "ok"}

"""A checkable well-definedness condition for a given checkpoint θ_0 (proofs/06, Theorem 6.5).

Proposition 6.4 asks θ_0 to have a density, which a fixed checkpoint never has (timm starts
biases at 0 and LayerNorm gains at 1; the key bias stays 0). What the argument actually uses
is that θ_0 is off the fixed sets of the finite gauge group and off the quantizer's cell
boundaries; :func:`genericity_margin` measures both on the checkpoint, with the key biases
dropped (the function ignores them, Result 4 item 10):

* ``heads``: per block, min over head pairs h ≠ h' of min(‖θ_h − θ_h'‖, ‖θ_h + θ_h'‖), θ_h the
  head's q, k, v rows, q and v biases and proj columns (a head permutation or a signed one fixes
  θ only if two heads agree up to sign);
* ``hidden``: the same for MLP hidden units (fc1 row and bias, fc2 column);
* ``stream``: the same for residual-stream coordinates (every tensor's stream slice);
* ``nonzero``: the smallest unit norm among heads, hidden units and stream coordinates (a sign
  flip of one unit fixes θ iff that unit is 0);
* ``quantizer``: min over quantized weights of the distance of W_ij / s_i from the half-integers
  (cell boundaries), entries at the row's absmax excluded (their code is ±q_max exactly);
* ``absmax_tie``: min over rows of (largest |W_ij| − second largest) / largest (the argmax of a
  row must be unique for Q_b to be locally linear).

All margins are in the parameters' own units (relative for ``absmax_tie``); ``ok`` is True when
every margin exceeds ``tol``. A checkpoint with ``ok`` satisfies the hypotheses of Theorem 6.5.
"""

from __future__ import annotations

import re

import torch

from qgeom.params import Params, in_scope
from qgeom.quant import QuantSpec
from qgeom.symmetry.layout import layout_of

_STREAM = [
    (r"(cls_token|reg_token|pos_embed)", 2),
    (r"(patch_embed\.proj|patch_embed\.norm|norm_pre|norm|fc_norm)\.(weight|bias)", 0),
    (r"blocks\.\d+\.(norm1|norm2|attn\.proj|mlp\.fc2)\.(weight|bias)|blocks\.\d+\.ls[12]\.gamma", 0),
    (r"blocks\.\d+\.(attn\.qkv|mlp\.fc1)\.weight|head\.weight", 1),
]


def _pairwise_margin(units: torch.Tensor) -> tuple[float, float]:
    """(min over pairs of min(‖a − b‖, ‖a + b‖), min ‖a‖) for the rows of ``units``."""
    u = units.double()
    n = u.norm(dim=1)
    if len(u) < 2:
        return float("inf"), float(n.min()) if len(u) else float("inf")
    exact = "donot_use_mm_for_euclid_dist"  # the mm formula leaves ~1e-8 where two units are equal
    dm, dp = torch.cdist(u, u, compute_mode=exact), torch.cdist(u, -u, compute_mode=exact)
    d = torch.minimum(dm, dp)
    d.fill_diagonal_(float("inf"))
    return float(d.min()), float(n.min())


def genericity_margin(model, theta: Params, spec: QuantSpec | None = None, tol: float = 0.0) -> dict:
    """The margins of θ from the fixed sets of the finite gauge group and from the quantizer's
    cell boundaries (module docstring); ``ok`` when all exceed ``tol``."""
    spec = spec or QuantSpec()
    L = layout_of(model)
    H, d = L.num_heads, L.head_dim
    out = {"heads": float("inf"), "hidden": float("inf"), "stream": float("inf"), "nonzero": float("inf")}
    for i in range(L.depth):
        p = f"blocks.{i}."
        w = theta[p + "attn.qkv.weight"].reshape(3, H, d, -1)
        parts = [w[0].reshape(H, -1), w[1].reshape(H, -1), w[2].reshape(H, -1)]  # q, k, v rows
        if p + "attn.qkv.bias" in theta:
            b = theta[p + "attn.qkv.bias"].reshape(3, H, d)
            parts += [b[0], b[2]]  # the key bias b[1] is dropped: the function ignores it
        proj = theta[p + "attn.proj.weight"].reshape(-1, H, d).permute(1, 0, 2).reshape(H, -1)
        m, n = _pairwise_margin(torch.cat(parts + [proj], 1))
        out["heads"], out["nonzero"] = min(out["heads"], m), min(out["nonzero"], n)
        fc1, fc2 = theta[p + "mlp.fc1.weight"], theta[p + "mlp.fc2.weight"]
        units = [fc1, fc2.T] + ([theta[p + "mlp.fc1.bias"][:, None]] if p + "mlp.fc1.bias" in theta else [])
        m, n = _pairwise_margin(torch.cat(units, 1))
        out["hidden"], out["nonzero"] = min(out["hidden"], m), min(out["nonzero"], n)
    slices = []
    for name, t in theta.items():
        for pat, ax in _STREAM:
            if re.fullmatch(pat, name) and t.dim() > ax and t.shape[ax] == L.embed_dim:
                slices.append(t.movedim(ax, 0).reshape(L.embed_dim, -1))
                break
    if slices:
        m, n = _pairwise_margin(torch.cat(slices, 1))
        out["stream"], out["nonzero"] = m, min(out["nonzero"], n)
    qm, tie = float("inf"), float("inf")
    qmax = 2 ** (spec.bits - 1) - 1
    for name, t in theta.items():
        if not in_scope(name, t, "quantized"):
            continue
        a = t.double().abs()
        top2 = a.topk(2, dim=1).values
        tie = min(tie, float(((top2[:, 0] - top2[:, 1]) / top2[:, 0].clamp_min(1e-300)).min()))
        x = t.double() / (top2[:, :1] / qmax)
        frac = (x - torch.floor(x) - 0.5).abs()
        frac = torch.where(a == top2[:, :1], torch.full_like(frac, float("inf")), frac)
        qm = min(qm, float(frac.min()))
    out.update(quantizer=qm, absmax_tie=tie)
    out["ok"] = all(v > tol for v in out.values())
    return out


__all__ = ["genericity_margin"]

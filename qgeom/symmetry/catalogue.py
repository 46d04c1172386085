"""The catalogue: constructors with explicit group elements, and its expected levels as data.

Each constructor (head_permutation, qk_mixing, vo_mixing, mlp_permutation, layernorm_folding,
layerscale_folding, residual_permutation) takes a model or a
:class:`~qgeom.symmetry.layout.ViTLayout` and explicit group elements, and returns a
:class:`~qgeom.symmetry.element.Symmetry`; :data:`CATALOGUE` states which levels a generic
element of each kind satisfies.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import Tensor

from qgeom.symmetry.element import Symmetry
from qgeom.symmetry.layout import UnsupportedSymmetryError, ViTLayout, layout_of
from qgeom.symmetry.operators import Action, BlockLinear, Permutation, Scaling, invert_blocks


# --------------------------------------------------------------------------------------------
# building an element on a layout
# --------------------------------------------------------------------------------------------


def _existing(layout: ViTLayout, actions: list[Action]) -> list[Action]:
    """Drop actions on tensors the model lacks (e.g. qkv.bias with qkv_bias=False)."""
    return [a for a in actions if a[0] in layout.shapes]


def _make(kind: str, layout: ViTLayout, actions: list[Action]) -> Symmetry:
    actions = _existing(layout, actions)
    for name, axis, op in actions:
        if layout.shapes[name][axis] != op.n:
            raise ValueError(f"{kind}: {name} has {layout.shapes[name][axis]} entries on axis {axis}, the map has {op.n}")
    return Symmetry(kind, tuple(actions), layout.sub(dict.fromkeys(a[0] for a in actions)))


def _check_perm(p, n: int, what: str) -> Tensor:
    """``p`` (a list, tuple, array or tensor of integers) as an int64 tensor, if it is a
    permutation of range(n); a ValueError saying what to pass otherwise."""
    try:
        t = torch.as_tensor(p)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"{what}: expected a permutation of range({n}) (list, tuple or tensor of integers), "
                         f"got {type(p).__name__}: {e}") from None
    if (t.is_floating_point() and bool((t != t.round()).any())) or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{what}: expected integers 0…{n - 1}, got {t.tolist()[:8]}")
    t = t.to(torch.int64)
    if t.shape != (n,) or not torch.equal(torch.sort(t).values, torch.arange(n)):
        shown = t.tolist() if t.numel() <= 8 else f"{t.flatten()[:8].tolist()}… (shape {tuple(t.shape)})"
        raise ValueError(f"{what}: expected a permutation of range({n}) (each of 0…{n - 1} once), got {shown}")
    return t


def _per_block(L: ViTLayout, given, what: str) -> dict[int, tuple[object, str]]:
    """{block: (element, its name in messages)} from a dict {block: element}, or from one bare
    element used on every block."""
    if isinstance(given, Mapping):
        return {i: (x, f"{what} of block {i}") for i, x in given.items()}
    if isinstance(given, (str, bytes)) or given is None:
        raise ValueError(f"{what}: pass one element for every block or a dict {{block index: element}}, got {given!r}")
    return {i: (given, f"{what} (one for every block; or pass a dict {{block index: element}})") for i in range(L.depth)}


def _check_block(layout: ViTLayout, i: int) -> str:
    if not 0 <= i < layout.depth:
        raise ValueError(f"block {i} out of range (depth {layout.depth})")
    return f"blocks.{i}."


# --------------------------------------------------------------------------------------------
# the catalogue: constructors with explicit group elements
# --------------------------------------------------------------------------------------------


def head_permutation(model, perms) -> Symmetry:
    """π_i ∈ S_H per block i: head h of the new model is head π_i[h] of the old one.

    perms: a dict {block i: π_i}, or one permutation (list, tuple or tensor of 0…H−1, e.g.
    ``[1, 0, 3, 2]``) applied to every block.

    qkv.weight (3Hd, D) and qkv.bias (3Hd,): row blocks of q, k and v; proj.weight (D, Hd):
    column blocks; the attention-output norm (scale_norm, over Hd) likewise.
    """
    L = layout_of(model)
    H, d, acts = L.num_heads, L.head_dim, []
    for i, (pi, what) in _per_block(L, perms, "head permutation").items():
        p = _check_block(L, i) + "attn."
        cols = (_check_perm(pi, H, what)[:, None] * d + torch.arange(d)).reshape(-1)
        rows = torch.cat([cols + part * H * d for part in range(3)])
        acts += [(p + "qkv.weight", 0, Permutation(rows)), (p + "qkv.bias", 0, Permutation(rows)),
                 (p + "proj.weight", 1, Permutation(cols)), (p + "norm.weight", 0, Permutation(cols)),
                 (p + "norm.bias", 0, Permutation(cols))]
    return _make("head_permutation", L, acts)


def qk_mixing(model, A, kind: str = "qk_mixing") -> Symmetry:
    """A_i (H, d, d) per block: W_q,h → A_h W_q,h, W_k,h → A_h⁻ᵀ W_k,h, biases likewise.
    A: a dict {block i: A_i}, or one (H, d, d) stack for every block.

    Acts on qkv.weight rows and qkv.bias as diag(A_1…A_H, A_1⁻ᵀ…A_H⁻ᵀ, I…I). Exact because
    (A q)ᵀ(A⁻ᵀ k) = qᵀk; refused with q/k normalisation (LayerNorm of A q ≠ A LayerNorm q).
    """
    L = layout_of(model)
    if L.qk_norm:
        raise UnsupportedSymmetryError("query/key mixing is not a symmetry with q/k normalisation (qk_norm=True)")
    acts = []
    for i, (a, _) in _per_block(L, A, "query/key mixing").items():
        p = _check_block(L, i) + "attn.qkv."
        a = _check_gl(a, L, i)
        op = BlockLinear(torch.cat([a, invert_blocks(a).mT, torch.eye(L.head_dim, dtype=a.dtype).expand_as(a)]))
        acts += [(p + "weight", 0, op), (p + "bias", 0, op)]
    return _make(kind, L, acts)


def vo_mixing(model, B, kind: str = "vo_mixing") -> Symmetry:
    """B_i (H, d, d) per block: W_v,h, b_v,h → B_h ·; proj columns of head h → · B_h⁻¹.
    B: a dict {block i: B_i}, or one (H, d, d) stack for every block.

    qkv rows/bias: diag(I…, I…, B_1…B_H); proj.weight columns (mode matrix diag(B_h⁻ᵀ)).
    Refused with an attention-output norm (scale_norm), which does not commute with B_h.
    """
    L = layout_of(model)
    if L.attn_out_norm:
        raise UnsupportedSymmetryError("value/output mixing is not a symmetry with an attention-output norm (scale_norm)")
    acts = []
    for i, (b, _) in _per_block(L, B, "value/output mixing").items():
        p = _check_block(L, i) + "attn."
        b = _check_gl(b, L, i)
        op = BlockLinear(torch.cat([torch.eye(L.head_dim, dtype=b.dtype).expand(2 * L.num_heads, -1, -1), b]))
        acts += [(p + "qkv.weight", 0, op), (p + "qkv.bias", 0, op), (p + "proj.weight", 1, BlockLinear(invert_blocks(b).mT))]
    return _make(kind, L, acts)


def _check_gl(a: Tensor, L: ViTLayout, i: int) -> Tensor:
    a = torch.as_tensor(a, dtype=torch.float64)
    if a.shape != (L.num_heads, L.head_dim, L.head_dim):
        raise ValueError(f"block {i}: expected (H, d, d) = {(L.num_heads, L.head_dim, L.head_dim)} matrices, got {tuple(a.shape)}")
    if not bool((torch.linalg.svdvals(a).min(-1).values > 1e-12 * torch.linalg.svdvals(a).max(-1).values).all()):
        raise ValueError(f"block {i}: a mixing matrix is singular")
    return a


def mlp_permutation(model, perms) -> Symmetry:
    """σ_i ∈ S_hidden per block: fc1.weight rows and fc1.bias ← σ; fc2.weight columns ← σ
    (and the MLP's hidden norm, if any). Exact for any elementwise activation. perms: a dict
    {block i: σ_i}, or one permutation (list, tuple or tensor) applied to every block."""
    L = layout_of(model)
    acts = []
    for i, (s, what) in _per_block(L, perms, "MLP permutation").items():
        p = _check_block(L, i) + "mlp."
        op = Permutation(_check_perm(s, L.shapes[p + "fc1.weight"][0], what))
        acts += [(p + "fc1.weight", 0, op), (p + "fc1.bias", 0, op), (p + "fc2.weight", 1, op),
                 (p + "norm.weight", 0, op), (p + "norm.bias", 0, op)]
    return _make("mlp_permutation", L, acts)


def layernorm_folding(model, s: Mapping[str, Tensor]) -> Symmetry:
    """s per norm (keys: ``blocks.i.norm1``, ``blocks.i.norm2``, ``norm``/``fc_norm``):
    norm weight and bias × s; the Linear reading the norm (see ``ViTLayout.fold_sites``):
    columns × 1/s. The catalogue uses s > 0; any nonzero s is a symmetry."""
    L = layout_of(model)
    acts = []
    for norm, sv in s.items():
        if norm not in L.fold_sites:
            raise UnsupportedSymmetryError(f"cannot fold {norm!r}: foldable norms are {', '.join(L.fold_sites)}")
        op = Scaling(torch.as_tensor(sv, dtype=torch.float64))
        acts += [(norm + ".weight", 0, op), (norm + ".bias", 0, op), (L.fold_sites[norm] + ".weight", 1, op.inverse())]
    return _make("layernorm_folding", L, acts)


def layerscale_folding(model, s: Mapping[str, Tensor]) -> Symmetry:
    """s per LayerScale (keys ``blocks.i.ls1``/``blocks.i.ls2``): gamma × s; the Linear
    before it (attn.proj / mlp.fc2): rows and bias × 1/s."""
    L = layout_of(model)
    if not L.layerscale:
        raise UnsupportedSymmetryError("LayerScale folding needs LayerScale (timm init_values set); this model has none")
    acts = []
    for ls, sv in s.items():
        i, which = ls.removeprefix("blocks.").split(".")
        p = _check_block(L, int(i))
        writer = {"ls1": "attn.proj", "ls2": "mlp.fc2"}[which]
        op = Scaling(torch.as_tensor(sv, dtype=torch.float64))
        acts += [(ls + ".gamma", 0, op), (p + writer + ".weight", 0, op.inverse()), (p + writer + ".bias", 0, op.inverse())]
    return _make("layerscale_folding", L, acts)


# Residual-stream axis of every tensor kind (None: the tensor does not touch the stream).
_RESIDUAL_AXIS = [
    (r"(cls_token|reg_token|pos_embed)", 2),
    (r"(patch_embed\.proj|patch_embed\.norm|norm_pre|norm|fc_norm)\.(weight|bias)", 0),
    (r"blocks\.\d+\.(norm1|norm2|attn\.proj|mlp\.fc2)\.(weight|bias)|blocks\.\d+\.ls[12]\.gamma", 0),
    (r"blocks\.\d+\.(attn\.qkv|mlp\.fc1)\.weight|head\.weight", 1),
    (r"blocks\.\d+\.((attn\.qkv|mlp\.fc1)\.bias|attn\.(q_norm|k_norm|norm)\.\w+|mlp\.norm\.\w+)|head\.bias", None),
]


def residual_permutation(model, perm: Tensor) -> Symmetry:
    """P ∈ S_D on the residual stream: every tensor axis that is the stream (see the package
    docstring). Exact because LayerNorm/RmsNorm statistics are permutation invariant. Refused
    for a tensor qgeom does not know, and without a head (the output would be permuted)."""
    L = layout_of(model)
    if not L.has_head:
        raise UnsupportedSymmetryError("residual permutation needs a Linear head (num_classes > 0)")
    op = Permutation(_check_perm(perm, L.embed_dim, "residual permutation"))
    acts = []
    for name in L.shapes:
        axes = [ax for pat, ax in _RESIDUAL_AXIS if re.fullmatch(pat, name)]
        if not axes:
            raise UnsupportedSymmetryError(f"residual permutation: unknown tensor {name} {L.shapes[name]}")
        if axes[0] is not None:
            acts.append((name, axes[0], op))
    return _make("residual_permutation", L, acts)


# --------------------------------------------------------------------------------------------
# the catalogue as data
# --------------------------------------------------------------------------------------------


def _levels(quantizer: bool, sgd: bool, adamw: bool, layer: bool | None = None) -> dict[str, bool]:
    return {"function": True, "quantizer": quantizer, "optimizer_sgd": sgd, "optimizer_adamw": adamw,
            "pipeline": adamw and quantizer, "euclidean": sgd, "layer_metric": sgd if layer is None else layer}


#: Expected levels of a *generic* random element of each kind (per-row symmetric Q_b; H ≥ 2), as
#: data (level 2: proofs/05_quantizer.md's table; levels 3–4: proofs/06). Elements compute their own
#: (exact) expectations; a degenerate element may satisfy more. Column scalings of quantized weights
#: are level 2 "no, unless uniform": a column map commutes with per-row Q_b iff it is c × (signed
#: permutation), so vo_scalar with one common c·I on every head (or one head), and layernorm_folding
#: with s = c·1, are quantizer-equivariant (proofs/05_quantizer.md, item 4; checked on elements by
#: proofs/check_05_quantizer.py::check_catalogue_elements). GPTQ's layer metric (``layer_metric``,
#: :meth:`~qgeom.symmetry.element.Symmetry.preserves_layer_metric`) is invariant where every quantized
#: weight's row map is orthogonal: as the Euclidean cosine, and also under LayerNorm folding (a column
#: scaling, undone by the layer's inputs).
CATALOGUE: dict[str, dict[str, bool]] = {
    "head_permutation": _levels(True, True, True),
    "qk_mixing": _levels(False, False, False),
    "qk_orthogonal": _levels(False, True, False),
    "qk_diagonal": _levels(True, False, False),
    "qk_scalar": _levels(True, False, False),
    "qk_signed_permutation": _levels(True, True, True),
    "vo_mixing": _levels(False, False, False),
    "vo_orthogonal": _levels(False, True, False),
    "vo_diagonal": _levels(False, False, False),
    "vo_scalar": _levels(False, False, False),  # c_h·I differing across heads; one common c·I: quantizer yes
    "vo_signed_permutation": _levels(True, True, True),
    "mlp_permutation": _levels(True, True, True),
    "layernorm_folding": _levels(False, False, False, layer=True),  # non-uniform s; s = c·1: quantizer yes
    "layerscale_folding": _levels(True, False, False),
    "residual_permutation": _levels(True, True, True),
}

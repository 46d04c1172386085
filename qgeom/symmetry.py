"""Reparameterization symmetries of timm Vision Transformers, as values (DESIGN.md §2).

A symmetry element ``g`` is an invertible *linear* map on parameter dicts that acts tensor by
tensor: each touched tensor ``t`` is multiplied along some of its axes by invertible matrices
(mode products ``t ×_a M``: ``t'[.., i, ..] = Σ_j M[i, j] t[.., j, ..]``). Hence

* points θ and tangent vectors ρ transform alike:            θ ↦ g θ,  ρ ↦ g ρ   (:meth:`Symmetry.__call__`);
* covectors (gradients ∇L, products M·v) transform by g⁻ᵀ:    c ↦ g⁻ᵀ c          (:meth:`Symmetry.act_covector`),
  so that ⟨g⁻ᵀ c, g v⟩ = ⟨c, v⟩, ∇L(gθ) = g⁻ᵀ ∇L(θ) and M(gθ) = g⁻ᵀ M(θ) g⁻¹.

Because g never mixes tensors, it restricts to any sub-dict (a scope): missing tensors are zero
components and stay zero. Elements compose (``g @ h`` applies h first) and invert exactly.

The catalogue (timm ``Block``: x += ls1(attn(norm1 x)); x += ls2(mlp(norm2 x)); H heads of size
d; ``qkv.weight`` rows are [q heads | k heads | v heads], d contiguous rows per head):

=======================  =======================================================================
kind                     map (per block i unless stated)
=======================  =======================================================================
head_permutation π∈S_H   qkv rows/bias: head blocks h ← π(h) in q, k and v; proj columns likewise
qk_* (A_h ∈ GL(d))       qkv rows/bias: q_h ← A_h q_h, k_h ← A_h⁻ᵀ k_h (so q_hᵀk_h is unchanged)
vo_* (B_h ∈ GL(d))       qkv rows/bias: v_h ← B_h v_h;  proj columns of head h ← · B_h⁻¹
mlp_permutation σ        fc1 rows and bias ← σ;  fc2 columns ← σ
layernorm_folding s>0    norm weight, bias × s;  the Linear reading the norm: columns × 1/s
                         (norm1→qkv, norm2→fc1, final norm / fc_norm→head)
layerscale_folding s     ls.gamma × s;  the Linear before it (proj / fc2): rows and bias × 1/s
residual_permutation P   every axis of length D that is the residual stream: patch-embed rows,
                         cls/reg/pos tokens, all norms, qkv/fc1/head columns, proj/fc2 rows and
                         biases, LayerScale gammas
=======================  =======================================================================

``qk_*``/``vo_*`` come as ``mixing`` (general GL, condition number e^strength), ``orthogonal``,
``diagonal`` and ``scalar`` (positive rescalings, log-spread = strength) and
``signed_permutation``. Which levels an element should satisfy (function, quantizer, optimizer,
pipeline, Euclidean cosine) is *computed from its matrices* by :meth:`Symmetry.expectations`
(e.g. Q_b per row commutes with monomial row maps and scalar × signed-permutation column maps);
:data:`CATALOGUE` states the same for generic random elements, as in DESIGN.md's table.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from qgeom.params import IncompatibleParamsError, Params, in_scope
from qgeom.quant import QuantSpec

Action = tuple[str, int, "AxisOp"]  # (parameter name, axis, operator)
EXPECTED_LEVELS = ("function", "quantizer", "optimizer_sgd", "optimizer_adamw", "pipeline", "euclidean")  # keys of Symmetry.expectations()


class UnsupportedSymmetryError(ValueError):
    """The model's configuration has no such symmetry (or qgeom cannot handle it safely)."""


# --------------------------------------------------------------------------------------------
# axis operators: an invertible n×n matrix M acting along one axis of a tensor
# --------------------------------------------------------------------------------------------


def _along(t: Tensor, axis: int, fn) -> Tensor:
    """``fn`` applied to ``t`` viewed as (n, rest) with ``axis`` first; original layout back."""
    moved = t.movedim(axis, 0)
    return fn(moved.reshape(moved.shape[0], -1)).reshape(moved.shape).movedim(0, axis)


class AxisOp:
    """An invertible matrix M (n×n) applied along one tensor axis: t'[i] = Σ_j M[i, j] t[j]."""

    n: int

    def apply(self, t: Tensor, axis: int) -> Tensor:
        raise NotImplementedError

    def inverse(self) -> "AxisOp":
        raise NotImplementedError

    def transpose(self) -> "AxisOp":
        raise NotImplementedError

    def monomial(self) -> tuple[Tensor, Tensor] | None:
        """(src, coef) with (M t)[i] = coef[i] · t[src[i]] if M is monomial, else None."""
        raise NotImplementedError

    def singular_values(self) -> Tensor:
        raise NotImplementedError

    def dense(self) -> Tensor:
        """M as a dense float64 matrix (n, n)."""
        return self.apply(torch.eye(self.n, dtype=torch.float64), 0)


@dataclass(frozen=True, eq=False)
class Permutation(AxisOp):
    """(P t)[i] = t[index[i]] (orthogonal: P⁻¹ = Pᵀ)."""

    index: Tensor

    @property
    def n(self) -> int:
        return self.index.numel()

    def apply(self, t: Tensor, axis: int) -> Tensor:
        return t.index_select(axis, self.index.to(t.device))

    def inverse(self) -> "Permutation":
        return Permutation(torch.argsort(self.index))

    transpose = inverse

    def monomial(self) -> tuple[Tensor, Tensor]:
        return self.index, torch.ones(self.n, dtype=torch.float64)

    def singular_values(self) -> Tensor:
        return torch.ones(self.n, dtype=torch.float64)


@dataclass(frozen=True, eq=False)
class Scaling(AxisOp):
    """(S t)[i] = s[i] · t[i], s nonzero (S = diag(s))."""

    s: Tensor

    def __post_init__(self) -> None:
        if not bool((self.s != 0).all() and torch.isfinite(self.s).all()):
            raise ValueError("a scaling needs finite nonzero factors")

    @property
    def n(self) -> int:
        return self.s.numel()

    def apply(self, t: Tensor, axis: int) -> Tensor:
        shape = [1] * t.dim()
        shape[axis] = -1
        return t * self.s.to(t).reshape(shape)

    def inverse(self) -> "Scaling":
        return Scaling(1.0 / self.s)

    def transpose(self) -> "Scaling":
        return self

    def monomial(self) -> tuple[Tensor, Tensor]:
        return torch.arange(self.n), self.s.double()

    def singular_values(self) -> Tensor:
        return self.s.double().abs()


@dataclass(frozen=True, eq=False)
class BlockLinear(AxisOp):
    """Block-diagonal M = diag(B_0, …, B_{m−1}) on m contiguous blocks of d entries; blocks (m, d, d)."""

    blocks: Tensor

    @property
    def n(self) -> int:
        return self.blocks.shape[0] * self.blocks.shape[1]

    def apply(self, t: Tensor, axis: int) -> Tensor:
        m, d, _ = self.blocks.shape
        b = self.blocks.to(t)
        return _along(t, axis, lambda x: torch.einsum("jab,jbr->jar", b, x.reshape(m, d, -1)).reshape(m * d, -1))

    def inverse(self) -> "BlockLinear":
        return BlockLinear(invert_blocks(self.blocks))

    def transpose(self) -> "BlockLinear":
        return BlockLinear(self.blocks.mT.contiguous())

    def monomial(self) -> tuple[Tensor, Tensor] | None:
        nz = self.blocks != 0
        if not (bool((nz.sum(-1) == 1).all()) and bool((nz.sum(-2) == 1).all())):
            return None
        m, d, _ = self.blocks.shape
        local = nz.to(torch.int64).argmax(-1)  # (m, d)
        coef = self.blocks.gather(-1, local.unsqueeze(-1)).squeeze(-1).double()
        return (local + d * torch.arange(m).unsqueeze(1)).reshape(-1), coef.reshape(-1)

    def singular_values(self) -> Tensor:
        return torch.linalg.svdvals(self.blocks.double()).reshape(-1)


def invert_blocks(blocks: Tensor) -> Tensor:
    """Inverse of each d×d block; exact (reciprocals, transposed) for monomial blocks."""
    nz = blocks != 0
    if bool((nz.sum(-1) == 1).all()) and bool((nz.sum(-2) == 1).all()):
        return torch.where(nz, 1.0 / torch.where(nz, blocks, torch.ones_like(blocks)), torch.zeros_like(blocks)).mT.contiguous()
    return torch.linalg.inv(blocks)


@dataclass(frozen=True)
class AxisClass:
    """What a composed axis map M is: monomial (src, coef) or None; a with M = a·O (O orthogonal)
    or None; its condition number."""

    monomial: tuple[Tensor, Tensor] | None
    ortho_scale: float | None
    cond: float


def classify(ops: list[AxisOp], n: int, rtol: float = 1e-9) -> AxisClass:
    """Classify the product M = ops[-1] ⋯ ops[0] (identity for no ops) of maps on one axis."""
    if not ops:
        return AxisClass((torch.arange(n), torch.ones(n, dtype=torch.float64)), 1.0, 1.0)
    monos = [op.monomial() for op in ops]
    if all(m is not None for m in monos):
        src, coef = monos[0]
        for s2, c2 in monos[1:]:  # (M2 M1 t)[i] = c2[i] c1[s2[i]] t[s1[s2[i]]]
            src, coef = src[s2], c2 * coef[s2]
        mono, sv = (src, coef), coef.abs()
    elif len(ops) == 1:
        mono, sv = None, ops[0].singular_values()
    else:
        dense = ops[0].dense()
        for op in ops[1:]:
            dense = op.apply(dense, 0)
        dense = torch.where(dense.abs() > rtol * dense.abs().max(), dense, torch.zeros_like(dense))
        mono = BlockLinear(dense.unsqueeze(0)).monomial()
        sv = torch.linalg.svdvals(dense)
    lo, hi = float(sv.min()), float(sv.max())
    return AxisClass(mono, (lo + hi) / 2 if hi <= lo * (1 + rtol) else None, hi / lo)


# --------------------------------------------------------------------------------------------
# symmetry elements
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Symmetry:
    """A symmetry element g: ``actions`` applied in order, each (tensor name, axis, operator).

    ``shapes`` records the shape of every touched tensor, so a dict of the wrong model is
    refused instead of being silently half-transformed. ``kind`` names the element.
    """

    kind: str
    actions: tuple[Action, ...] = ()
    shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)

    def __call__(self, params: Mapping[str, Tensor]) -> Params:
        """g θ (points) — and g ρ (tangent vectors): the same linear map. Untouched tensors shared."""
        return self._act(params, self.actions)

    act = __call__

    def act_covector(self, c: Mapping[str, Tensor]) -> Params:
        """g⁻ᵀ c for a covector c (a gradient, a product M·v): ⟨g⁻ᵀ c, g v⟩ = ⟨c, v⟩."""
        return self._act(c, tuple((n, a, op.inverse().transpose()) for n, a, op in self.actions))

    def inverse(self) -> "Symmetry":
        """g⁻¹ (exact for permutations and monomial maps)."""
        return Symmetry(f"({self.kind})⁻¹", tuple((n, a, op.inverse()) for n, a, op in reversed(self.actions)), self.shapes)

    def transpose(self) -> "Symmetry":
        """gᵀ, the adjoint for the Euclidean inner product: ⟨gᵀ c, v⟩ = ⟨c, g v⟩."""
        return Symmetry(f"({self.kind})ᵀ", tuple((n, a, op.transpose()) for n, a, op in reversed(self.actions)), self.shapes)

    def __matmul__(self, other: "Symmetry") -> "Symmetry":
        """(g @ h) θ = g(h(θ))."""
        return Symmetry(f"{self.kind}∘{other.kind}", other.actions + self.actions, {**other.shapes, **self.shapes})

    @property
    def touched(self) -> list[str]:
        return list(dict.fromkeys(n for n, _, _ in self.actions))

    def _act(self, params: Mapping[str, Tensor], actions: tuple[Action, ...]) -> Params:
        out = dict(params)
        for name, axis, op in actions:
            if name not in out:
                continue  # a missing tensor is a zero component: it stays zero
            t = out[name]
            if tuple(t.shape) != tuple(self.shapes[name]):
                raise IncompatibleParamsError(
                    f"symmetry {self.kind!r} was built for {name} of shape {tuple(self.shapes[name])}, got {tuple(t.shape)}")
            out[name] = op.apply(t, axis)
        return out

    # ---------------- what g is, and which levels it should satisfy ----------------

    def axis_classes(self) -> dict[str, dict[int, AxisClass]]:
        """For every touched tensor and each of its axes: the class of the composed axis map."""
        ops: dict[tuple[str, int], list[AxisOp]] = {}
        for name, axis, op in self.actions:
            ops.setdefault((name, axis), []).append(op)
        return {n: {a: classify(ops.get((n, a), []), s) for a, s in enumerate(self.shapes[n])} for n in self.touched}

    def condition_number(self) -> float:
        """max over tensors of Π_axes cond(M_axis): roundoff amplification of g."""
        return max((math.prod(c.cond for c in cls.values()) for cls in self.axis_classes().values()), default=1.0)

    def is_orthogonal(self) -> bool:
        """gᵀ g = I: each tensor's map ⊗_a M_a with M_a = α_a O_a and Π α_a = 1."""
        return all(_orthogonal(cls) for cls in self.axis_classes().values())

    def is_signed_permutation(self) -> bool:
        """g maps each coordinate to ± another coordinate (commutes with elementwise optimizers)."""
        return all(_orthogonal(cls) and all(c.monomial is not None for c in cls.values()) for cls in self.axis_classes().values())

    def quantizer_equivariant(self, spec: QuantSpec | None = None) -> bool:
        """Whether Q_b(gθ) = g Q_b(θ) for every θ, decided from the matrices on quantized tensors.

        Per-row grids: rows may be mapped by any monomial matrix, columns by a scalar × signed
        permutation (it keeps each row's absmax ratio). Sign flips are fine for the asymmetric
        min/max grid too: its range always contains 0, so Q(−w) = −Q(w) (zero point q_max − zp).
        Per-tensor grids: both axes scalar × signed permutation. Per-group: columns must also map
        groups onto groups.
        """
        spec = spec or QuantSpec()
        for name, cls in self.axis_classes().items():
            if in_scope(name, torch.empty(self.shapes[name]), "quantized") and not _quantizer_ok(cls[0], cls[1], spec):
                return False
        return True

    def expectations(self, spec: QuantSpec | None = None) -> dict[str, bool]:
        """Which levels g should satisfy: function (always, by construction), quantizer, one
        SGD step (orthogonal g), one AdamW step (signed permutations), the QAT pipeline (signed
        permutation and quantizer), the Euclidean cosine (orthogonal g)."""
        q, o, sp = self.quantizer_equivariant(spec), self.is_orthogonal(), self.is_signed_permutation()
        return {"function": True, "quantizer": q, "optimizer_sgd": o, "optimizer_adamw": sp,
                "pipeline": sp and q, "euclidean": o}


def identity() -> Symmetry:
    return Symmetry("identity")


def compose(*gs: Symmetry) -> Symmetry:
    """g_1 ∘ g_2 ∘ … ∘ g_k (g_k applied first)."""
    out = gs[0]
    for g in gs[1:]:
        out = out @ g
    return out


def _orthogonal(cls: dict[int, AxisClass], rtol: float = 1e-9) -> bool:
    scales = [c.ortho_scale for c in cls.values()]
    return all(s is not None for s in scales) and abs(math.prod(scales) - 1.0) <= rtol


def _quantizer_ok(rows: AxisClass, cols: AxisClass, spec: QuantSpec) -> bool:
    if rows.monomial is None or cols.monomial is None or cols.ortho_scale is None:
        return False
    if spec.granularity == "tensor":
        return rows.ortho_scale is not None
    if spec.granularity == "group":
        groups = (cols.monomial[0] // spec.group_size).reshape(-1, spec.group_size)
        return bool((groups == groups[:, :1]).all())
    return True


# --------------------------------------------------------------------------------------------
# the ViT's layout: which tensors exist and how they connect
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ViTLayout:
    """What the symmetries need to know about a timm ``VisionTransformer``.

    fold_sites: norm module → the Linear reading its output (norm1→attn.qkv, norm2→mlp.fc1,
    the final ``norm``/``fc_norm``→head). Flags mark configurations some symmetries refuse.
    """

    depth: int
    embed_dim: int
    num_heads: int
    head_dim: int
    shapes: dict[str, tuple[int, ...]]
    fold_sites: dict[str, str]
    qk_norm: bool
    attn_out_norm: bool
    mlp_norm: bool
    layerscale: bool
    has_head: bool

    def sub(self, names) -> dict[str, tuple[int, ...]]:
        return {n: self.shapes[n] for n in names}


def layout_of(model) -> ViTLayout:
    """Read and validate the layout of a timm ``VisionTransformer`` (or pass a layout through).

    Raises :class:`UnsupportedSymmetryError` for anything but pre-norm ``Block``s with timm's
    ``Attention`` (fused or not: the function is the same) and ``Mlp``, LayerNorm/RmsNorm norms,
    and no attention pooling.
    """
    if isinstance(model, ViTLayout):
        return model
    from timm.layers import Attention, LayerScale, Mlp, RmsNorm
    from timm.models.vision_transformer import Block, VisionTransformer
    from torch import nn

    if not isinstance(model, VisionTransformer):
        raise UnsupportedSymmetryError(f"symmetries are defined for timm VisionTransformer, got {type(model).__name__}")
    if getattr(model, "attn_pool", None) is not None:
        raise UnsupportedSymmetryError("attention pooling ('map'/'prr') is not supported: its parameters read the stream")
    norms = (nn.LayerNorm, RmsNorm)
    for name, m in model.named_modules():
        if name.rsplit(".", 1)[-1] in ("norm", "norm1", "norm2", "norm_pre", "fc_norm", "q_norm", "k_norm") and not isinstance(m, (nn.Identity, *norms)):
            raise UnsupportedSymmetryError(f"{name} is a {type(m).__name__}; only LayerNorm/RmsNorm are supported")
    for i, b in enumerate(model.blocks):
        for part, cls in ((b, Block), (b.attn, Attention), (b.mlp, Mlp)):
            if type(part) is not cls:
                raise UnsupportedSymmetryError(f"blocks.{i} uses {type(part).__name__}; only timm's Block/Attention/Mlp are supported")
        if getattr(b.attn, "gate", None) is not None or not isinstance(b.ls1, (nn.Identity, LayerScale)):
            raise UnsupportedSymmetryError(f"blocks.{i}: gated attention / unknown layer scale is not supported")
    b0 = model.blocks[0]
    has_head = isinstance(model.head, nn.Linear)
    sites = {}
    for i, b in enumerate(model.blocks):
        sites.update({f"blocks.{i}.norm1": f"blocks.{i}.attn.qkv", f"blocks.{i}.norm2": f"blocks.{i}.mlp.fc1"})
    final = "fc_norm" if not isinstance(model.fc_norm, nn.Identity) else "norm" if not isinstance(model.norm, nn.Identity) else None
    if final and has_head:
        sites[final] = "head"
    sites = {n: r for n, r in sites.items() if getattr(model.get_submodule(n), "weight", None) is not None}
    return ViTLayout(
        depth=len(model.blocks), embed_dim=model.embed_dim, num_heads=b0.attn.num_heads, head_dim=b0.attn.head_dim,
        shapes={k: tuple(v.shape) for k, v in model.state_dict().items() if torch.is_floating_point(v)},
        fold_sites=sites, qk_norm=not isinstance(b0.attn.q_norm, nn.Identity),
        attn_out_norm=not isinstance(b0.attn.norm, nn.Identity), mlp_norm=not isinstance(b0.mlp.norm, nn.Identity),
        layerscale=isinstance(b0.ls1, LayerScale), has_head=has_head,
    )


def _existing(layout: ViTLayout, actions: list[Action]) -> list[Action]:
    """Drop actions on tensors the model lacks (e.g. qkv.bias with qkv_bias=False)."""
    return [a for a in actions if a[0] in layout.shapes]


def _make(kind: str, layout: ViTLayout, actions: list[Action]) -> Symmetry:
    actions = _existing(layout, actions)
    for name, axis, op in actions:
        if layout.shapes[name][axis] != op.n:
            raise ValueError(f"{kind}: {name} has {layout.shapes[name][axis]} entries on axis {axis}, the map has {op.n}")
    return Symmetry(kind, tuple(actions), layout.sub(dict.fromkeys(a[0] for a in actions)))


def _check_perm(p: Tensor, n: int, what: str) -> Tensor:
    p = torch.as_tensor(p, dtype=torch.int64)
    if p.shape != (n,) or not torch.equal(torch.sort(p).values, torch.arange(n)):
        raise ValueError(f"{what}: expected a permutation of range({n}), got {p.tolist()[:8]}…")
    return p


def _check_block(layout: ViTLayout, i: int) -> str:
    if not 0 <= i < layout.depth:
        raise ValueError(f"block {i} out of range (depth {layout.depth})")
    return f"blocks.{i}."


# --------------------------------------------------------------------------------------------
# the catalogue: constructors with explicit group elements
# --------------------------------------------------------------------------------------------


def head_permutation(model, perms: Mapping[int, Tensor]) -> Symmetry:
    """π_i ∈ S_H per block i: head h of the new model is head π_i[h] of the old one.

    qkv.weight (3Hd, D) and qkv.bias (3Hd,): row blocks of q, k and v; proj.weight (D, Hd):
    column blocks; the attention-output norm (scale_norm, over Hd) likewise.
    """
    L = layout_of(model)
    H, d, acts = L.num_heads, L.head_dim, []
    for i, pi in perms.items():
        p = _check_block(L, i) + "attn."
        cols = (_check_perm(pi, H, f"head permutation of block {i}")[:, None] * d + torch.arange(d)).reshape(-1)
        rows = torch.cat([cols + part * H * d for part in range(3)])
        acts += [(p + "qkv.weight", 0, Permutation(rows)), (p + "qkv.bias", 0, Permutation(rows)),
                 (p + "proj.weight", 1, Permutation(cols)), (p + "norm.weight", 0, Permutation(cols)),
                 (p + "norm.bias", 0, Permutation(cols))]
    return _make("head_permutation", L, acts)


def qk_mixing(model, A: Mapping[int, Tensor], kind: str = "qk_mixing") -> Symmetry:
    """A_i (H, d, d) per block: W_q,h → A_h W_q,h, W_k,h → A_h⁻ᵀ W_k,h, biases likewise.

    Acts on qkv.weight rows and qkv.bias as diag(A_1…A_H, A_1⁻ᵀ…A_H⁻ᵀ, I…I). Exact because
    (A q)ᵀ(A⁻ᵀ k) = qᵀk; refused with q/k normalisation (LayerNorm of A q ≠ A LayerNorm q).
    """
    L = layout_of(model)
    if L.qk_norm:
        raise UnsupportedSymmetryError("query/key mixing is not a symmetry with q/k normalisation (qk_norm=True)")
    acts = []
    for i, a in A.items():
        p = _check_block(L, i) + "attn.qkv."
        a = _check_gl(a, L, i)
        op = BlockLinear(torch.cat([a, invert_blocks(a).mT, torch.eye(L.head_dim, dtype=a.dtype).expand_as(a)]))
        acts += [(p + "weight", 0, op), (p + "bias", 0, op)]
    return _make(kind, L, acts)


def vo_mixing(model, B: Mapping[int, Tensor], kind: str = "vo_mixing") -> Symmetry:
    """B_i (H, d, d) per block: W_v,h, b_v,h → B_h ·; proj columns of head h → · B_h⁻¹.

    qkv rows/bias: diag(I…, I…, B_1…B_H); proj.weight columns (mode matrix diag(B_h⁻ᵀ)).
    Refused with an attention-output norm (scale_norm), which does not commute with B_h.
    """
    L = layout_of(model)
    if L.attn_out_norm:
        raise UnsupportedSymmetryError("value/output mixing is not a symmetry with an attention-output norm (scale_norm)")
    acts = []
    for i, b in B.items():
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


def mlp_permutation(model, perms: Mapping[int, Tensor]) -> Symmetry:
    """σ_i ∈ S_hidden per block: fc1.weight rows and fc1.bias ← σ; fc2.weight columns ← σ
    (and the MLP's hidden norm, if any). Exact for any elementwise activation."""
    L = layout_of(model)
    acts = []
    for i, s in perms.items():
        p = _check_block(L, i) + "mlp."
        op = Permutation(_check_perm(s, L.shapes[p + "fc1.weight"][0], f"MLP permutation of block {i}"))
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
    """P ∈ S_D on the residual stream: every tensor axis that is the stream (see the module
    docstring). Exact because LayerNorm/RmsNorm statistics are permutation invariant. Refused
    for a tensor qgeom does not know, and without a head (the output would be permuted)."""
    import re

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
# random elements and the catalogue as data
# --------------------------------------------------------------------------------------------

MIXING_MODES = ("mixing", "orthogonal", "diagonal", "scalar", "signed_permutation")

KINDS: tuple[str, ...] = (
    "head_permutation", *(f"qk_{m}" for m in MIXING_MODES), *(f"vo_{m}" for m in MIXING_MODES),
    "mlp_permutation", "layernorm_folding", "layerscale_folding", "residual_permutation",
)


def _levels(quantizer: bool, sgd: bool, adamw: bool) -> dict[str, bool]:
    return {"function": True, "quantizer": quantizer, "optimizer_sgd": sgd, "optimizer_adamw": adamw,
            "pipeline": adamw and quantizer, "euclidean": sgd}


#: Expected levels of a *generic* random element of each kind (per-row symmetric Q_b; H ≥ 2),
#: DESIGN.md's table as data. Elements compute their own (exact) expectations; a degenerate
#: element may satisfy more (e.g. vo_scalar with one head is a row scaling of proj).
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
    "vo_scalar": _levels(False, False, False),
    "vo_signed_permutation": _levels(True, True, True),
    "mlp_permutation": _levels(True, True, True),
    "layernorm_folding": _levels(False, False, False),
    "layerscale_folding": _levels(True, False, False),
    "residual_permutation": _levels(True, True, True),
}


def _perm(gen: torch.Generator, n: int) -> Tensor:
    """A random permutation, never the identity when n ≥ 2."""
    p = torch.randperm(n, generator=gen)
    return p.roll(1) if n >= 2 and torch.equal(p, torch.arange(n)) else p


def _spread(gen: torch.Generator, shape: tuple[int, ...], strength: float) -> Tensor:
    """strength · u with u ∈ [−½, ½] per last-axis row, both ends attained when the row has ≥ 2 entries."""
    u = torch.rand(shape, generator=gen, dtype=torch.float64) - 0.5
    if shape[-1] >= 2:
        u[..., 0], u[..., 1] = -0.5, 0.5
        u = u.gather(-1, torch.argsort(torch.rand(shape, generator=gen), dim=-1))
    return strength * u


def _orth(gen: torch.Generator, m: int, d: int) -> Tensor:
    q, r = torch.linalg.qr(torch.randn(m, d, d, generator=gen, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)


def random_blocks(gen: torch.Generator, m: int, d: int, mode: str, strength: float) -> Tensor:
    """m random d×d invertible matrices (float64) of ``mode`` (see :data:`MIXING_MODES`).

    mixing: U diag(e^{u}) Vᵀ with U, V Haar-orthogonal, condition number e^strength (d ≥ 2);
    orthogonal: Haar; diagonal: diag(e^{u}) (positive, log-spread = strength); scalar: c_h·I,
    log c_h spread over [−strength/2, strength/2] across the m heads (±strength/2 when m = 1);
    signed_permutation: a random permutation with random signs.
    """
    eye = torch.eye(d, dtype=torch.float64).expand(m, d, d)
    if mode == "scalar":
        if m >= 2:  # distinct factors across heads, spread = strength
            return eye * torch.exp(_spread(gen, (m,), strength)).reshape(m, 1, 1)
        sign = torch.randint(0, 2, (m, 1, 1), generator=gen).double() * 2 - 1
        return eye * torch.exp(sign * strength / 2)
    if mode == "diagonal":
        return torch.diag_embed(torch.exp(_spread(gen, (m, d), strength)))
    if mode == "signed_permutation":
        signs = torch.randint(0, 2, (m, d, 1), generator=gen).double() * 2 - 1
        return torch.stack([eye[0][_perm(gen, d)] for _ in range(m)]) * signs
    if mode == "orthogonal":
        return _orth(gen, m, d)
    if mode == "mixing":
        return _orth(gen, m, d) @ torch.diag_embed(torch.exp(_spread(gen, (m, d), strength))) @ _orth(gen, m, d).mT
    raise ValueError(f"unknown mixing mode {mode!r}; known: {', '.join(MIXING_MODES)}")


def random_symmetry(model, kind: str, *, strength: float = 1.0, seed: int = 0, blocks=None) -> Symmetry:
    """A random element of ``kind`` (see :data:`KINDS`) acting on every block (or ``blocks``).

    strength: log condition number of the GL blocks (e.g. 1.0 → κ = e) and the log-spread of
    the scalings (LayerNorm/LayerScale folding, diagonal and scalar mixing). Permutations are never the identity (when there are ≥ 2 things to permute).
    """
    L = layout_of(model)
    gen = torch.Generator().manual_seed(seed)
    idx = list(range(L.depth)) if blocks is None else [int(b) for b in blocks]
    H, d, D = L.num_heads, L.head_dim, L.embed_dim
    if kind == "head_permutation":
        return head_permutation(L, {i: _perm(gen, H) for i in idx})
    if kind.startswith(("qk_", "vo_")) and kind[3:] in MIXING_MODES:
        mats = {i: random_blocks(gen, H, d, kind[3:], strength) for i in idx}
        return qk_mixing(L, mats, kind) if kind.startswith("qk_") else vo_mixing(L, mats, kind)
    if kind == "mlp_permutation":
        return mlp_permutation(L, {i: _perm(gen, L.shapes[f"blocks.{i}.mlp.fc1.weight"][0]) for i in idx})
    if kind == "layernorm_folding":
        sites = [n for n in L.fold_sites if blocks is None or (n.startswith("blocks.") and int(n.split(".")[1]) in idx)]
        return layernorm_folding(L, {n: torch.exp(_spread(gen, (D,), strength)) for n in sites})
    if kind == "layerscale_folding":
        return layerscale_folding(L, {f"blocks.{i}.ls{j}": torch.exp(_spread(gen, (D,), strength)) for i in idx for j in (1, 2)})
    if kind == "residual_permutation":
        return residual_permutation(L, _perm(gen, D))
    raise ValueError(f"unknown symmetry kind {kind!r}; known: {', '.join(KINDS)}")


def applicable_kinds(model) -> dict[str, str | None]:
    """Each kind → None if the model has it, else the reason it does not."""
    out = {}
    for kind in KINDS:
        try:
            random_symmetry(model, kind, blocks=[0] if layout_of(model).depth else [])
            out[kind] = None
        except UnsupportedSymmetryError as e:
            out[kind] = str(e)
    return out

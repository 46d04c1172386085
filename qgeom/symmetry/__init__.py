"""Reparameterization symmetries of timm Vision Transformers, as values (proofs/04_vit_symmetries.md).

A symmetry element ``g`` is an invertible *linear* map on parameter dicts that acts tensor by
tensor: each touched tensor ``t`` is multiplied along some of its axes by invertible matrices
(mode products ``t ×_a M``: ``t'[.., i, ..] = Σ_j M[i, j] t[.., j, ..]``). Hence

* points θ:                                                 θ ↦ g θ    (:meth:`Symmetry.act_point`, also ``g(θ)``);
* tangent vectors ρ (displacements) by the Jacobian J = g:   ρ ↦ g ρ    (:meth:`Symmetry.act_tangent`);
* covectors (gradients ∇L, products M·v) by J⁻ᵀ = g⁻ᵀ:      c ↦ g⁻ᵀ c  (:meth:`Symmetry.act_covector`),
  so that ⟨g⁻ᵀ c, g v⟩ = ⟨c, v⟩, ∇L(gθ) = g⁻ᵀ ∇L(θ) and M(gθ) = g⁻ᵀ M(θ) g⁻¹;
* a module: :meth:`Symmetry.apply_to` returns a transformed copy (the module is unchanged).

Because g never mixes tensors, it restricts to any sub-dict (a scope): missing tensors are zero
components and stay zero. Elements compose (``g @ h`` applies h first) and invert exactly.

Constructors take explicit elements: a dict {block: element}, or one element for every block
(``head_permutation(model, [1, 0, 3, 2])``).

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
:data:`CATALOGUE` states the same for generic random elements (level 2: the catalogue table
of proofs/05_quantizer.md; levels 3–4: proofs/06_optimizer_pipeline.md).
"""

from qgeom.symmetry.catalogue import (
    CATALOGUE, head_permutation, layernorm_folding, layerscale_folding, mlp_permutation, qk_mixing,
    residual_permutation, vo_mixing,
)
from qgeom.symmetry.element import EXPECTED_LEVELS, Symmetry, compose, identity
from qgeom.symmetry.layout import UnsupportedSymmetryError, ViTLayout, layout_of
from qgeom.symmetry.operators import (
    Action, AxisClass, AxisOp, BlockLinear, Permutation, Scaling, classify, invert_blocks,
)
from qgeom.symmetry.sampling import KINDS, MIXING_MODES, applicable_kinds, random_blocks, random_symmetry

__all__ = [
    "Action", "AxisClass", "AxisOp", "BlockLinear", "CATALOGUE", "EXPECTED_LEVELS", "KINDS", "MIXING_MODES",
    "Permutation", "Scaling", "Symmetry", "UnsupportedSymmetryError", "ViTLayout", "applicable_kinds", "classify",
    "compose", "head_permutation", "identity", "invert_blocks", "layernorm_folding", "layerscale_folding", "layout_of",
    "mlp_permutation", "qk_mixing", "random_blocks", "random_symmetry", "residual_permutation", "vo_mixing",
]

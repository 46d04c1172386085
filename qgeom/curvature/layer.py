"""GPTQ's metric as a geometry: the block-diagonal layer-input metric of the quantized Linear layers.

GPTQ minimises ‖(W − Ŵ)X‖²_F layer by layer (:mod:`qgeom.gptq`): it measures a weight change in
the metric of each layer's input second moment. For the layers ℓ of a scope — every key that is
the weight of an ``nn.Linear`` and in the ``quantized`` scope (2-D, not the head) — with
X_ℓ ∈ R^{in_ℓ × N_ℓ} the inputs of layer ℓ over the probe set (N_ℓ rows: tokens × images, one row
per token per call of the layer) and U_ℓ, V_ℓ ∈ R^{out_ℓ × in_ℓ} the blocks of two vectors u, v:

    H_ℓ = X_ℓ X_ℓᵀ / N_ℓ                                   (in_ℓ × in_ℓ, symmetric PSD, float64)
    ⟨u, v⟩_layer = Σ_ℓ tr(U_ℓ H_ℓ V_ℓᵀ) = Σ_ℓ vec(U_ℓ)ᵀ (H_ℓ ⊗ I_out) vec(V_ℓ)   (vec stacks columns)
    (M v)_ℓ = V_ℓ H_ℓ on each such weight, 0 on every other tensor.

Biases, norms, embeddings, the head and any tensor that is not the weight of a quantized
``nn.Linear`` get zero weight: M is PSD and block diagonal with those coordinates in its null
space (a vector living only there has ⟨v, v⟩_layer = 0, an undefined cosine). For one layer,
⟨u, u⟩_layer = ‖U X‖²_F / N, GPTQ's objective for Ŵ = W − U — :func:`qgeom.gptq.output_error`
(with H = 2XXᵀ/N) gives the same number.

H_ℓ comes from forward passes only (forward pre-hooks on the layers, ``torch.no_grad``: no
backward, no graph): per batch X_bᵀX_b / rows_b in float64, reduced with weights n_b / N by
:func:`qgeom.curvature.probe.reduce_over_probe` (so N_ℓ = N·T when each image gives T rows; data
parallel like the other metrics). It depends on θ only through the layer inputs: not on the loss,
the labels or the layer's own weight. :class:`qgeom.curvature.operator.CurvatureOperator` with
``metric="layer"`` holds these blocks (``layer_grams()``), so cosines, λ*, Gram matrices, spectra
and the commands treat it like the Hessian, GGN and Fisher; :mod:`qgeom.curvature.layer_geometry`
reads the per-layer and pooled quantities.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from qgeom.calibration import input_grams
from qgeom.curvature.probe import Batch, reduce_over_probe
from qgeom.params import Params, first_names, in_scope


def linear_weights(model: nn.Module, params: Mapping[str, Tensor], keys: Iterable[str]) -> list[str]:
    """The keys that are the ``.weight`` of an ``nn.Linear`` of ``model`` and in the ``quantized``
    scope, in the model's registration order (timm: qkv, proj, fc1, fc2 block by block, the
    forward order): the layers of the metric. Raises ``ValueError`` when there is none."""
    keys = list(keys)
    chosen = set(keys)
    linear = [f"{name}.weight" for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    out = [k for k in linear if k in chosen and in_scope(k, params[k], "quantized")]
    if not out:
        raise ValueError(f"the layer metric weighs the weights of quantized nn.Linear layers (not the head), and the "
                         f"scope ({first_names(keys)}) holds none: pass a scope with them, e.g. 'quantized' or 'backbone'")
    return out


def batch_grams(model: nn.Module, weights: Sequence[str], forward: Callable[[Tensor], Any], x: Tensor
                ) -> dict[str, Tensor]:
    """X_bᵀX_b / rows_b (in × in, float64) of each layer of ``weights`` during ``forward(x)``.

    A forward pre-hook on each layer (``weights`` are its ``.weight`` names) reads its input
    (…, in), flattened to (rows, in); a layer called twice contributes both calls' rows. Raises
    ``ValueError`` for a layer the forward pass never calls (it has no inputs to weigh by)."""
    layers = {w: w.removesuffix(".weight") for w in weights}
    grams = input_grams(model, layers.values(), lambda: forward(x))
    missing = [w for w, n in layers.items() if n not in grams]
    if missing:
        raise ValueError(f"the layer metric needs each layer's inputs, but the forward pass never called "
                         f"{first_names(missing)}: pass a scope without them")
    return {w: grams[n][0] / grams[n][1] for w, n in layers.items()}


def probe_grams(model: nn.Module, weights: Sequence[str], forward: Callable[[Tensor], Any],
                batches: Sequence[Batch]) -> dict[str, Tensor]:
    """H_ℓ = Σ_b (n_b / N) X_bᵀX_b / rows_b (float64) over the probe set, one forward pass per batch."""
    return reduce_over_probe(lambda x, _y: batch_grams(model, weights, forward, x), batches)


def layer_products(grams: Mapping[str, Tensor], vs: Sequence[Params], dtype: torch.dtype) -> list[Params]:
    """[M v for v in vs]: (M v)_ℓ = V_ℓ H_ℓ on the weights of ``grams`` (computed in float64),
    0 on every other key; returned in ``dtype``."""
    return [{k: (t.double() @ grams[k]).to(dtype) if k in grams else torch.zeros_like(t, dtype=dtype)
             for k, t in v.items()} for v in vs]


def per_layer_gram(grams: Mapping[str, Tensor], vectors: Sequence[Params], eps: float
                   ) -> dict[str, tuple[np.ndarray, list[float]]]:
    """Per layer ℓ: (K_ℓ, floors): K_ℓ[a, b] = tr(U_a H_ℓ U_bᵀ) (N × N, float64, symmetrised)
    and the roundoff floor 16·eps·s_ℓ·‖U_a‖² of each ⟨u_a, u_a⟩_ℓ, s_ℓ = max_a ‖U_a H_ℓ‖/‖U_a‖
    (a lower bound of ‖H_ℓ‖; :func:`qgeom.curvature.forms.null_thresholds`). Σ_ℓ K_ℓ is the
    pooled Gram matrix of the layer metric."""
    out = {}
    for w, h in grams.items():
        U = torch.stack([v[w].detach().to(h.device, torch.float64) for v in vectors])  # (N, out, in)
        P = U @ h
        K = torch.einsum("aoi,boi->ab", P, U)
        sq = [float(u.square().sum()) for u in U]
        s = max((float(p.norm()) / q**0.5 for p, q in zip(P, sq) if q > 0), default=0.0)
        out[w] = ((0.5 * (K + K.T)).cpu().numpy(), [16 * eps * s * q for q in sq])
    return out


__all__ = ["batch_grams", "layer_products", "linear_weights", "per_layer_gram", "probe_grams"]

"""A pair of vectors in GPTQ's layer metric, layer by layer and pooled (:mod:`qgeom.curvature.layer`).

For u, v (in the transfer experiment u = ρ_D, v = ρ_R) and each quantized Linear ℓ of the scope,
with H_ℓ = X_ℓX_ℓᵀ/N its input second moment at θ and U_ℓ, V_ℓ (out_ℓ × in_ℓ) the vectors' blocks:

    forms    DD_ℓ = tr(U_ℓH_ℓU_ℓᵀ),  RR_ℓ = tr(V_ℓH_ℓV_ℓᵀ),  DR_ℓ = tr(U_ℓH_ℓV_ℓᵀ);
    layer ℓ  cos_ℓ = DR_ℓ / √(DD_ℓ RR_ℓ),  λ*_ℓ = DR_ℓ / DD_ℓ  (GPTQ's view of that layer alone);
    pooled   the same of DD = Σ_ℓ DD_ℓ, RR, DR: cos_layer(u, v) and λ* = ⟨u,v⟩_layer/⟨u,u⟩_layer of the
             block-diagonal metric — what :func:`qgeom.curvature.geometry.metric_cosine` and
             :func:`~qgeom.curvature.geometry.geometry_of_pair` give for ``metric="layer"``.

A cosine or λ* is NaN, with a message, where a form it divides by is at or below its roundoff
floor (:func:`qgeom.curvature.forms.form_quantities`): a layer on which u vanishes, or a vector
that lives only on zero-weight tensors (biases, norms, the head). Costs: one forward pass per
probe batch (H_ℓ, held by the operator), then matrix products; no backward pass.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from qgeom.curvature.forms import form_quantities, to_builtins
from qgeom.curvature.geometry import as_vector, gram_matrix
from qgeom.curvature.layer import per_layer_gram
from qgeom.curvature.operator import CurvatureOperator
from qgeom.params import Params, Scope, check_compatible, cosine
from qgeom.quant import QuantSpec


def layer_gram_matrices(op: CurvatureOperator, vectors: Sequence[Params | Tensor]
                        ) -> dict[str, tuple[np.ndarray, list[float]]]:
    """Per layer ℓ (weight name, in the model's order): (K_ℓ, floors) with K_ℓ[a, b] = tr(V_a H_ℓ V_bᵀ)
    (N × N, float64) and the roundoff floor of each ⟨v_a, v_a⟩_ℓ; Σ_ℓ K_ℓ is the pooled Gram
    matrix :func:`qgeom.curvature.geometry.gram_matrix` gives. ``op``: metric ``layer``."""
    vs = [as_vector(op, v) for v in vectors]
    for i, v in enumerate(vs):
        check_compatible(op.theta, v, check_dtype=False, names=("operator scope", f"vector {i}"))
    return per_layer_gram(op.layer_grams(), vs, torch.finfo(op.dtype).eps)


def _pair(K: np.ndarray, floors: Sequence[float], names: tuple[str, str], where: str) -> dict:
    """cosine, λ* (u onto v), cos² and the forms of a 2 × 2 Gram matrix [[DD, DR], [RD, RR]]."""
    q = form_quantities(K, floors)
    bad = [n for n, ok in zip(names, q.ok) if not ok]
    msg = f"{where}: ⟨w,w⟩_layer ≤ its roundoff floor for {', '.join(bad)} — cosine and λ* are NaN" if bad else ""
    c = float(q.cosines[0, 1])
    return {"cosine": c, "optimal_scale": float(q.scales[0, 1]), "recovered_fraction": c * c,
            "forms": {"DD": float(q.K_sym[0, 0]), "RR": float(q.K_sym[1, 1]), "DR": float(q.K_sym[0, 1])},
            "indefinite": bool(bad), "message": msg}


def geometry_by_layer(op: CurvatureOperator, u: Params | Tensor, v: Params | Tensor, *,
                      names: tuple[str, str] = ("u", "v")) -> dict:
    """The pair's layer-metric geometry on an operator with ``metric="layer"`` (see the module docstring).

    Returns a JSON-ready dict: ``pooled`` and ``layers`` (weight name → the same keys: ``cosine``,
    ``optimal_scale`` λ* of u onto v, ``recovered_fraction`` cos², ``forms`` DD/RR/DR,
    ``indefinite``, ``message``), ``euclidean_cosine``, ``names`` and the operator's ``info``."""
    if op.metric != "layer":
        raise ValueError(f"geometry_by_layer reads the layer metric: build the operator with metric='layer', "
                         f"not {op.metric!r}")
    u, v = as_vector(op, u), as_vector(op, v)
    K, floors, _ = gram_matrix(op, [u, v], route="products")
    layers = {w: _pair(Kl, fl, names, w) for w, (Kl, fl) in layer_gram_matrices(op, [u, v]).items()}
    return to_builtins({"pooled": _pair(K, floors, names, "pooled"), "layers": layers,
                        "euclidean_cosine": cosine(u, v), "names": list(names), "info": dict(op.info)})


def layer_geometry(model: nn.Module, params: Mapping[str, Tensor], u: Params, v: Params, batches: Any, *,
                   scope: Scope | Sequence[str] | None = None, objective: str = "fp", spec: QuantSpec | None = None,
                   dtype: torch.dtype | None = None, names: tuple[str, str] = ("u", "v")) -> dict:
    """cos_layer(u, v) and λ*, pooled and per quantized Linear, at ``params`` (transfer: θ_R, u = ρ_D,
    v = ρ_R) on the probe set ``batches``: builds ``CurvatureOperator(metric="layer")`` and returns
    :func:`geometry_by_layer`. scope defaults to u's keys (biases, norms and the head among them
    get zero weight); ``objective="ste"`` takes the layer inputs at Q_b(params) (``spec``)."""
    op = CurvatureOperator(model, params, batches, metric="layer", objective=objective, spec=spec,
                           scope=list(u) if scope is None else scope, dtype=dtype)
    return geometry_by_layer(op, u, v, names=names)


__all__ = ["geometry_by_layer", "layer_geometry", "layer_gram_matrices"]

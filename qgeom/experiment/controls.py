"""Controls for a transfer: directions that share what ρ_D has, without what it might carry.

Does the donor's vector carry robustness, or does any perturbation move the per-row absmax
grid of the quantizer? Each control keeps one statistic of ρ_D and destroys its alignment with
the receiver:

============  ===============================================================================
control       direction (per tensor of ρ_D; "row" = the first axis, a Linear's output row)
============  ===============================================================================
random        Gaussian, the same per-tensor norm (:func:`random_like`)
random_rows   Gaussian, the same norm in every row (:func:`random_like_rows`)
row_permuted  ρ_D's entries permuted within each row: the same per-row values, so the same
              per-row norm and absmax, in other places (:func:`permuted_within_rows`)
negated       −ρ_D (:func:`negated`)
============  ===============================================================================

Two more live in the transfer run: the donor's ρ from a θ_0 pretrained with another seed (the
shared-basin premise), and the receiver's own ρ_R (the ceiling). 1-D tensors (biases, norms)
count as one row. Every control is float64 and seeded by a ``torch.Generator``.
"""

from __future__ import annotations

import torch
from torch import Generator, Tensor

from qgeom.params import Params

CONTROLS = ("random", "random_rows", "row_permuted", "negated")


def _rows(v: Tensor) -> Tensor:
    return v.reshape(1, -1) if v.dim() < 2 else v.reshape(v.shape[0], -1)


def random_like(vector: Params, generator: Generator) -> Params:
    """Gaussian directions with the per-tensor norms of ``vector``."""
    out = {}
    for k, v in vector.items():
        r = torch.randn(v.shape, generator=generator, dtype=torch.float64)
        n = r.norm()
        out[k] = (r * (v.double().norm() / n if n > 0 else 0.0)).to(v.dtype)
    return out


def random_like_rows(vector: Params, generator: Generator) -> Params:
    """Gaussian directions with the norm of ``vector`` in every row: ‖r_i‖ = ‖v_i‖."""
    out = {}
    for k, v in vector.items():
        rows = _rows(v.double())
        r = torch.randn(rows.shape, generator=generator, dtype=torch.float64)
        scale = rows.norm(dim=1, keepdim=True) / r.norm(dim=1, keepdim=True).clamp_min(1e-300)
        out[k] = (r * scale).reshape(v.shape).to(v.dtype)
    return out


def permuted_within_rows(vector: Params, generator: Generator) -> Params:
    """Each row of every tensor with its entries in a random order (one permutation per row)."""
    out = {}
    for k, v in vector.items():
        rows = _rows(v)
        idx = torch.argsort(torch.rand(rows.shape, generator=generator, dtype=torch.float64), dim=1)
        out[k] = torch.gather(rows, 1, idx).reshape(v.shape).clone()
    return out


def negated(vector: Params) -> Params:
    """−ρ_D, exactly."""
    return {k: -v for k, v in vector.items()}


def control(name: str, vector: Params, generator: Generator) -> Params:
    """The control ``name`` (one of :data:`CONTROLS`) of ``vector``."""
    if name == "random":
        return random_like(vector, generator)
    if name == "random_rows":
        return random_like_rows(vector, generator)
    if name == "row_permuted":
        return permuted_within_rows(vector, generator)
    if name == "negated":
        return negated(vector)
    raise ValueError(f"unknown control {name!r}; known: {', '.join(CONTROLS)}")

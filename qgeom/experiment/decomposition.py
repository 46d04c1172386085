"""What a patch does to the quantizer: the grid part and the values part of its post-PTQ effect.

The paper's Q_b quantizes row i of W on the grid s_i·{−2^(b−1), …, q_max} with
s_i = absmax(W_i)/q_max. A patch W → W + λρ changes both the grid (the s_i) and the values
placed on it. Two hybrids separate them (symmetric per-row grids only):

* grid only:   Q(W; s(W + λρ)) — the receiver's own values on the patched grid;
* values only: Q(W + λρ; s(W)) — the patched values on the receiver's own grid,

with Q(V; s)_ij = s_i · clamp(round(V_ij / s_i), −2^(b−1), q_max). With λ = 0 (or ρ = 0) both are
plain PTQ bit for bit. :func:`grid_statistics` gives the per-row facts that explain them: the
fraction of rows whose absmax entry moved, the mean |Δ log s_i|, and the fraction of entries
whose integer code changed.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from qgeom.params import Params, Scope, check_finite, in_scope
from qgeom.quant import QuantSpec, quantization_scale


def _check(spec: QuantSpec) -> None:
    if not (spec.symmetric and spec.granularity == "row" and spec.clip == "none"):
        raise ValueError("the grid/values decomposition is defined for the paper's symmetric per-row grid "
                         f"without clipping, got {spec}")


def quantize_on_grid(values: Tensor, grid: Tensor, spec: QuantSpec) -> Tensor:
    """Q(values; s(grid)): ``values`` rounded on the per-row grid that Q_b would use for ``grid``."""
    _check(spec)
    s = quantization_scale(grid, spec).to(values.dtype).reshape(-1, *([1] * (values.dim() - 1)))
    s = torch.where(s > 0, s, torch.ones_like(s))
    return (torch.clamp(torch.round(values / s), spec.qmin, spec.qmax) * s).to(values.dtype)


def ptq_on_grid(values: Mapping[str, Tensor], grid: Mapping[str, Tensor], spec: QuantSpec,
                scope: Scope = "quantized") -> Params:
    """PTQ of ``values`` with every in-scope tensor on the grid of the same tensor of ``grid``."""
    check_finite(values, "weights to quantize")
    return {k: quantize_on_grid(v, grid[k], spec) if in_scope(k, v, scope) else v for k, v in values.items()}


def grid_only(receiver: Params, patched: Params, spec: QuantSpec) -> Params:
    """Q(θ_R; s(θ_R + λρ)): what the patch does through the grid alone."""
    return ptq_on_grid(receiver, patched, spec)


def values_only(receiver: Params, patched: Params, spec: QuantSpec) -> Params:
    """Q(θ_R + λρ; s(θ_R)): what the patch does through the values alone."""
    return ptq_on_grid(patched, receiver, spec)


def grid_statistics(receiver: Params, patched: Params, spec: QuantSpec, scope: Scope = "quantized") -> dict:
    """Over the in-scope rows: ``absmax_moved`` (fraction of rows whose absmax entry changed place),
    ``dlog_scale`` (mean |log s_i(patched) − log s_i(receiver)|), ``codes_changed`` (fraction of
    entries whose integer code Q/s changed)."""
    _check(spec)
    moved = rows = codes = entries = 0
    dlog = 0.0
    for k, w in receiver.items():
        if not in_scope(k, w, scope):
            continue
        a, b = w.double().reshape(w.shape[0], -1), patched[k].double().reshape(w.shape[0], -1)
        moved += int((a.abs().argmax(1) != b.abs().argmax(1)).sum())
        sa, sb = quantization_scale(a, spec), quantization_scale(b, spec)
        dlog += float((sb.clamp_min(1e-300).log() - sa.clamp_min(1e-300).log()).abs().sum())
        ca = torch.clamp(torch.round(a / sa[:, None]), spec.qmin, spec.qmax)
        cb = torch.clamp(torch.round(b / sb[:, None]), spec.qmin, spec.qmax)
        codes += int((ca != cb).sum())
        rows += a.shape[0]
        entries += a.numel()
    return {"absmax_moved": moved / max(rows, 1), "dlog_scale": dlog / max(rows, 1),
            "codes_changed": codes / max(entries, 1)}

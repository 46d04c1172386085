"""GPTQ (Frantar et al., 2023) on the paper's per-row symmetric grid: one layer, and a model in sequence.

GPTQ quantizes W (out × in) column by column and, after each column, moves the columns not yet
quantized so as to cancel the error in the layer's output on calibration inputs X (in × N):
it minimises ‖(W − Ŵ)X‖²_F greedily, in the metric of H = 2XXᵀ (a block of the Gauss-Newton
matrix of the layer-output error). With U the upper Cholesky factor of H⁻¹ (H damped by
``damp`` × mean diag H), column j's error e_j = (w_j − q_j) / U_jj is propagated as

    W[:, j+1:] −= e_j U_j,j+1:                           (the published column recursion)

and the *lazy batch* form applies it inside blocks of ``block_size`` columns, then to the rest of
W once per block — the same arithmetic, fewer memory passes. ``act_order`` quantizes columns in
order of decreasing H_jj. Dead inputs (H_jj = 0) get H_jj = 1 and a zero column, as in the
authors' code.

The grid is fixed before the first column: s_i = max_j |W_ij| / q_max per output row (the paper's
Q_b, :func:`qgeom.quant.quantize_weight`), so GPTQ and round-to-nearest differ only in which grid
point each weight takes. With H ∝ I no error is propagated and GPTQ *is* round-to-nearest, bit for
bit. Written from the paper's Algorithm 1 and the authors' public reference (``gptq.py``,
``fasterquant``); no maintained package does GPTQ on an arbitrary ``nn.Linear`` with a pluggable
grid and no model-family assumptions.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from qgeom.calibration import layer_hessian, layer_inputs, linear_layers, output_error
from qgeom.params import Params, Scope, check_finite, in_scope
from qgeom.quant import QuantSpec


class IndefiniteLayerHessianError(ValueError):
    """The damped layer Hessian is not positive definite (Cholesky failed)."""


@dataclass(frozen=True)
class GPTQResult:
    """The quantized weight (dequantized, W's shape and dtype), the damping actually used, and
    the layer-output errors tr((W − Ŵ) H (W − Ŵ)ᵀ)/2 of GPTQ and of round-to-nearest on the grid."""

    weight: Tensor
    damp: float
    error: float
    rtn_error: float


def _check(spec: QuantSpec) -> None:
    if spec.granularity != "row" or not spec.symmetric or spec.clip != "none":
        raise ValueError("GPTQ here quantizes onto the paper's grid: QuantSpec(bits, granularity='row', "
                         f"symmetric=True, clip='none'); got {spec}")


def row_scales(w: Tensor, spec: QuantSpec) -> Tensor:
    """s_i = max_j |w_ij| / q_max (1 where a row is 0), as :func:`qgeom.quant.quantize_weight`."""
    s = w.abs().amax(dim=1, keepdim=True) / spec.qmax
    return torch.where(s > 0, s, torch.ones_like(s))


def _quantize_column(w: Tensor, s: Tensor, spec: QuantSpec) -> Tensor:
    return torch.clamp(torch.round(w / s), spec.qmin, spec.qmax) * s


def inverse_cholesky(h: Tensor, damp: float) -> tuple[Tensor, float]:
    """(U, damp): the upper Cholesky factor of (H + δI)⁻¹ with δ = damp · mean diag H; a failed
    factorisation is retried with 10× the damping, up to three times, then refused."""
    for attempt in range(4):
        d = damp * 10**attempt
        hd = h + d * torch.mean(torch.diag(h)) * torch.eye(len(h), dtype=h.dtype, device=h.device)
        lower, info = torch.linalg.cholesky_ex(hd)
        if info == 0:
            inv = torch.cholesky_inverse(lower)
            upper, info = torch.linalg.cholesky_ex(inv, upper=True)
            if info == 0:
                return upper, d
    raise IndefiniteLayerHessianError(f"the layer Hessian is not positive definite even with damping {d:g}·mean diag")


def _prepare(w: Tensor, h: Tensor, act_order: bool) -> tuple[Tensor, Tensor, Tensor | None]:
    w, h = w.clone(), h.clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    if not act_order:
        return w, h, None
    perm = torch.argsort(torch.diag(h), descending=True)
    return w[:, perm], h[perm][:, perm], perm


def gptq_quantize(w: Tensor, h: Tensor, spec: QuantSpec, *, block_size: int = 128, damp: float = 0.01,
                  act_order: bool = False) -> GPTQResult:
    """GPTQ of one weight ``w`` (out, in) given its layer Hessian ``h`` (in, in).

    Computed in ``w``'s precision, at least float32 (the authors' choice; the Cholesky factor is
    taken in float64 and rounded once), so that for float32 weights a column no error reaches is
    rounded exactly as :func:`qgeom.quant.quantize_weight` rounds it. ``block_size`` ≥ 1 changes
    the order of floating-point operations only (the published recursion is ``block_size=1``)."""
    _check(spec)
    if block_size < 1:
        raise ValueError(f"block_size must be ≥ 1, got {block_size}")
    dtype = torch.promote_types(w.dtype, torch.float32)
    s = row_scales(w.to(dtype), spec)[:, 0]
    W, H, perm = _prepare(w.to(dtype), h.double(), act_order)
    U, used = inverse_cholesky(H, damp)
    U = U.to(dtype)
    Q = torch.zeros_like(W)
    n = W.shape[1]
    for i1 in range(0, n, block_size):
        i2 = min(i1 + block_size, n)
        W1, E1, U1 = W[:, i1:i2].clone(), torch.zeros_like(W[:, i1:i2]), U[i1:i2, i1:i2]
        for i in range(i2 - i1):
            q = _quantize_column(W1[:, i], s, spec)
            Q[:, i1 + i] = q
            E1[:, i] = (W1[:, i] - q) / U1[i, i]
            W1[:, i:] -= E1[:, i:i + 1] @ U1[i:i + 1, i:]
        W[:, i2:] -= E1 @ U[i1:i2, i2:]
    if perm is not None:
        Q = Q[:, torch.argsort(perm)]
    rtn = _quantize_column(w.to(dtype), s[:, None], spec)
    return GPTQResult(Q.to(w.dtype), used, output_error(w, Q, h), output_error(w, rtn, h))


def gptq(model: nn.Module, params: Mapping[str, Tensor], batches: Iterable[tuple[Tensor, Tensor]], spec: QuantSpec, *,
         scope: Scope = "quantized", block_size: int = 128, damp: float = 0.01, act_order: bool = False
         ) -> tuple[Params, list[dict]]:
    """GPTQ of every Linear weight in ``scope``, sequentially in forward order: each layer's
    Hessian comes from its inputs on the calibration ``batches`` with every earlier layer already
    quantized (the authors' sequential mode). Returns the new parameters (the input is not
    mutated; tensors out of scope are shared) and one record per layer: name, output error of
    GPTQ and of round-to-nearest on the same inputs, damping used, calibration rows."""
    batches = list(batches)
    if not batches:
        raise ValueError("GPTQ needs calibration batches (receiver data): got none")
    check_finite(params, "weights to quantize")
    theta = dict(params)
    stats = []
    for layer in linear_layers(model, {k for k, v in params.items() if in_scope(k, v, scope)}):
        inputs = layer_inputs(model, theta, layer, batches)
        h = layer_hessian(torch.cat(inputs))
        r = gptq_quantize(theta[f"{layer}.weight"], h, spec, block_size=block_size, damp=damp, act_order=act_order)
        theta[f"{layer}.weight"] = r.weight
        stats.append(dict(layer=layer, gptq_error=r.error, rtn_error=r.rtn_error, damp=r.damp,
                          rows=sum(len(i) for i in inputs)))
    return theta, stats

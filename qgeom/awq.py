"""AWQ (Lin et al., 2024, "AWQ: Activation-aware Weight Quantization") on qgeom's grids.

A Linear y = W x + b (W: out × in) reads inputs x whose channels differ in magnitude; AWQ
protects the salient ones by quantizing W·diag(s) instead of W, with per-input-channel scales

    s_j(α) = m_j^α / √(max_k m_k^α · min_k m_k^α),   m_j = mean_n |x_nj|  (clamped ≥ 1e−4),

and dividing the input by s: Ŵ x = Q(W diag(s)) diag(s)⁻¹ x. The exponent α is searched on a grid
in [0, 1] (:data:`ALPHAS`: 0, 0.05, …, 1) for the least layer-output error on the calibration
inputs X (N × in),

    ‖(Q(W diag s) diag(s)⁻¹ − W) Xᵀ‖²_F / N = ½ tr(D H Dᵀ),  H = 2XᵀX/N,  D = Ŵ − W,

first strict improvement wins, so α = 0 (s ≡ 1: round-to-nearest, bit for bit) is kept on ties and
AWQ's error on its calibration inputs is never above RTN's. Q is :func:`qgeom.quant.quantize_weight`
with the caller's :class:`~qgeom.quant.QuantSpec` — the paper's per-row symmetric grid by default,
the same grid as RTN and GPTQ.

Folding (:func:`fold_scales`): diag(s)⁻¹ goes into the operation before the Linear, so that the
full-precision function is unchanged, θ ↦ θ' with W' = W diag(s) and, in a timm ``Block``,

* ``attn.qkv`` (reads norm1): norm1's weight and bias ÷ s;
* ``mlp.fc1`` (reads norm2): norm2's weight and bias ÷ s;
* ``attn.proj`` (reads the attention-weighted values Σ_m a_nm v_m, linear in v, channel by
  channel): the V rows of ``attn.qkv`` (rows 2C…3C of its weight and bias) ÷ s;
* ``mlp.fc2`` reads GELU's output, and GELU(u)/s ≠ GELU(u/s): nothing to fold into, so fc2 is
  left unscaled (s ≡ 1, i.e. RTN). The authors' code instead inserts a new op (``ScaledActivation``,
  GELU(u)/s) — a module that is not a parameter of the timm ViT.

What :func:`awq` returns (a choice): the quantized weights in the ORIGINAL coordinates, the
effective weight Ŵ = Q(W diag s) diag(s)⁻¹ in place of W, every other tensor (LayerNorms, biases,
the head) untouched. Then θ_AWQ − θ lives in the same coordinates as a QAT vector ρ = θ_QAT − θ
(only quantized-scope weights move), and it computes the same function as the folded form — θ'
with Q applied to each W' — because the per-row and per-group grids commute with row scalings,
Q(diag(r) A) = diag(r) Q(A) (exact in real arithmetic; at a rounding tie floating point may pick
the other neighbour), and the only row scaling a fold puts on a quantized weight is the V-row
scaling of qkv. For a per-tensor grid that last step does not hold: there the folded form would
quantize qkv with its V rows ÷ s_proj on one shared scale, and :func:`awq` is defined by the
effective-weight form. Note that Ŵ is on the grid of W diag(s), not on W's per-row grid: column j
of row i is a multiple of step_i / s_j.

Calibration is sequential in forward order, like :func:`qgeom.gptq.gptq`: each layer's inputs come
from the model with every earlier layer already quantized (``sequential=False``: full-precision
inputs, as the authors' code does). The authors' second step, a clipping search (``auto_clip``), is
not applied: it changes the grid, and here every method shares one grid (``QuantSpec(clip='mse')``
is the grid's own clipping option, for every method alike). The error measured is the layer's own
output (the authors measure, for qkv and fc1, the output of the enclosing attention or MLP block).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from qgeom.calibration import layer_hessian, layer_inputs, linear_layers, output_error
from qgeom.params import Params, Scope, check_finite, in_scope
from qgeom.quant import QuantSpec, quantize_weight

ALPHAS: tuple[float, ...] = tuple(i / 20 for i in range(21))  # 0, 0.05, …, 1
MIN_MAGNITUDE = 1e-4  # the authors' clamp on m_j^α: a dead channel gets a finite scale


@dataclass(frozen=True)
class AWQResult:
    """One layer: the effective weight Ŵ = Q(W diag s) diag(s)⁻¹ (W's shape and dtype), the scales
    s (in,), the chosen α, and the layer-output errors ‖(Ŵ − W)Xᵀ‖²/N of AWQ and of RTN (s ≡ 1)
    on the same inputs."""

    weight: Tensor
    scale: Tensor
    alpha: float
    error: float
    rtn_error: float


def channel_magnitude(x: Tensor) -> Tensor:
    """m_j = mean_n |x_nj| over the rows of ``x`` (…, in), float64, shape (in,)."""
    return x.reshape(-1, x.shape[-1]).double().abs().mean(dim=0)


def activation_scale(m: Tensor, alpha: float) -> Tensor:
    """s(α) = m^α clamped ≥ 1e−4, divided by √(max · min) (float64, shape of ``m``). s(0) ≡ 1."""
    s = m.double().pow(alpha).clamp_min(MIN_MAGNITUDE)
    return s / (s.max() * s.min()).sqrt()


def scaled_quantize(w: Tensor, s: Tensor, spec: QuantSpec) -> Tensor:
    """Q(W diag(s)) diag(s)⁻¹ in ``w``'s dtype: ``w`` (out, in), ``s`` (in,) positive."""
    s = s.to(w.dtype)
    return (quantize_weight(w * s, spec) / s).to(w.dtype)


def _check_alphas(alphas: Sequence[float]) -> tuple[float, ...]:
    alphas = tuple(float(a) for a in alphas)
    if not alphas or any(not 0.0 <= a <= 1.0 for a in alphas):
        raise ValueError(f"alphas must be a non-empty grid of exponents in [0, 1] (e.g. qgeom.awq.ALPHAS), got {alphas}")
    return alphas


def awq_quantize(w: Tensor, x: Tensor, spec: QuantSpec, alphas: Sequence[float] = ALPHAS) -> AWQResult:
    """AWQ of one weight ``w`` (out, in) given its calibration inputs ``x`` (N, in) — or (…, in):
    the α in ``alphas`` with the least layer-output error, the first one on ties."""
    alphas = _check_alphas(alphas)
    if x.shape[-1] != w.shape[1]:
        raise ValueError(f"inputs have {x.shape[-1]} channels, the weight {w.shape[1]} input columns")
    h, m = layer_hessian(x), channel_magnitude(x)
    best = None
    for alpha in alphas:
        s = activation_scale(m, alpha)
        q = scaled_quantize(w, s, spec)
        e = output_error(w, q, h)
        if best is None or e < best[3]:
            best = (q, s.to(w.dtype), alpha, e)
    return AWQResult(*best, rtn_error=output_error(w, quantize_weight(w, spec), h))


# --------------------------------------------------------------------------------------------
# folding into the preceding operation
# --------------------------------------------------------------------------------------------


def fold_targets(layer: str, params: Mapping[str, Tensor]) -> list[tuple[str, slice]] | None:
    """The tensors (name, rows) that an input scaling of ``layer`` folds into, each ÷ s along its
    first axis, or None where there is no such operation (fc2 after GELU, or a layer that is not a
    timm block's qkv, proj or fc1)."""
    block, _, tail = layer.rpartition(".")
    block, _, module = block.rpartition(".")
    norm = {("attn", "qkv"): "norm1", ("mlp", "fc1"): "norm2"}.get((module, tail))
    if norm is not None:
        names = [f"{block}.{norm}.weight", f"{block}.{norm}.bias"]
        return [(n, slice(None)) for n in names if n in params] if names[0] in params else None
    if (module, tail) != ("attn", "proj") or f"{block}.attn.norm.weight" in params:
        return None  # fc2 (GELU before it), other layers, or timm's scale_norm between attention and proj
    qkv, c = f"{block}.attn.qkv", params[f"{layer}.weight"].shape[1]
    if f"{qkv}.weight" not in params or params[f"{qkv}.weight"].shape[0] != 3 * c:
        return None
    rows = slice(2 * c, 3 * c)
    return [(n, rows) for n in (f"{qkv}.weight", f"{qkv}.bias") if n in params]


def fold_scales(params: Mapping[str, Tensor], scales: Mapping[str, Tensor]) -> Params:
    """θ': for each ``layer → s`` in ``scales`` (s: (in,), positive), the layer's weight W diag(s)
    and the operation before it ÷ s (see the module docstring), so that f(θ', x) = f(θ, x).
    A new dict; the input is not mutated; untouched tensors are shared."""
    out = dict(params)
    for layer, s in scales.items():
        key = f"{layer}.weight"
        if key not in params:
            raise ValueError(f"no weight {key!r} in params: scales are keyed by Linear module names, e.g. "
                             "'blocks.0.attn.qkv'")
        w = params[key]
        if s.shape != (w.shape[1],) or not bool(torch.all(torch.isfinite(s) & (s > 0))):
            raise ValueError(f"{layer}: scales must be finite, positive, of shape ({w.shape[1]},); got shape "
                             f"{tuple(s.shape)}")
        targets = fold_targets(layer, params)
        if targets is None:
            raise ValueError(f"{layer}: no preceding operation to fold its input scales into (fc2 reads GELU's "
                             "output, and GELU(u)/s ≠ GELU(u/s)); leave it out of the scales")
        out[key] = out[key] * s.to(w.dtype)
        for name, rows in targets:
            t = out[name].clone()
            shape = (-1,) + (1,) * (t.dim() - 1)
            t[rows] = t[rows] / s.to(t.dtype).reshape(shape)
            out[name] = t
    return out


# --------------------------------------------------------------------------------------------
# a model, layer by layer
# --------------------------------------------------------------------------------------------


def _calibrate(model: nn.Module, params: Mapping[str, Tensor], batches: Iterable[tuple[Tensor, Tensor]],
               spec: QuantSpec, scope: Scope, alphas: Sequence[float], sequential: bool
               ) -> tuple[Params, list[dict], dict[str, Tensor]]:
    alphas = _check_alphas(alphas)
    batches = list(batches)
    if not batches:
        raise ValueError("AWQ needs calibration batches (receiver data): got none")
    check_finite(params, "weights to quantize")
    theta, stats, scales = dict(params), [], {}
    for layer in linear_layers(model, [k for k, v in params.items() if in_scope(k, v, scope)]):
        x = torch.cat(layer_inputs(model, theta if sequential else params, layer, batches))
        foldable = fold_targets(layer, params) is not None
        r = awq_quantize(params[f"{layer}.weight"], x, spec, alphas if foldable else (0.0,))
        theta[f"{layer}.weight"] = r.weight
        if foldable:
            scales[layer] = r.scale
        stats.append(dict(layer=layer, alpha=r.alpha, awq_error=r.error, rtn_error=r.rtn_error, foldable=foldable,
                          rows=len(x)))
    return theta, stats, scales


def awq(model: nn.Module, params: Mapping[str, Tensor], batches: Iterable[tuple[Tensor, Tensor]], spec: QuantSpec, *,
        scope: Scope = "quantized", alphas: Sequence[float] = ALPHAS, sequential: bool = True
        ) -> tuple[Params, list[dict]]:
    """AWQ of every Linear weight in ``scope``, in forward order, each replaced by its effective
    weight Q(W diag s) diag(s)⁻¹ (original coordinates; see the module docstring). Layers with no
    operation to fold into (fc2) are quantized with s ≡ 1. Returns the new parameters (the input is
    not mutated; other tensors are shared) and one record per layer: name, α, the output errors of
    AWQ and of RTN on the same inputs, whether it was foldable, calibration rows."""
    theta, stats, _ = _calibrate(model, params, batches, spec, scope, alphas, sequential)
    return theta, stats


def awq_scales(model: nn.Module, params: Mapping[str, Tensor], batches: Iterable[tuple[Tensor, Tensor]],
               spec: QuantSpec, *, scope: Scope = "quantized", alphas: Sequence[float] = ALPHAS,
               sequential: bool = True) -> dict[str, Tensor]:
    """The scales s (in,) that :func:`awq` chooses for each foldable layer (keyed by module name),
    ready for :func:`fold_scales`: ``ptq(fold_scales(θ, s), spec)`` computes the function of
    ``awq(...)[0]`` (per-row or per-group grids)."""
    return _calibrate(model, params, batches, spec, scope, alphas, sequential)[2]

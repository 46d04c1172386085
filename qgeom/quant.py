"""Weight quantizers: post-training quantization (RTN) and fake quantization for QAT.

The default is the paper's quantizer Q_b: symmetric round-to-nearest per output
row,

    s_i = max_j |w_ij| / q_max,   q_max = 2^(b−1) − 1,
    Q_b(w)_ij = s_i · clamp(round(w_ij / s_i), −2^(b−1), q_max),

weight-only, applied to the ``quantized`` scope (every Linear weight but the head's). At 3 bits
it uses 7 levels (−3…3: the absmax scale never reaches −4). ``round`` is round-half-to-even,
which is odd-symmetric, so Q_b(−w) = −Q_b(w) exactly.

Options (never the default): per-tensor or per-group scales, an asymmetric (min/max, zero-point)
grid with 2^b levels, and an MSE search over clipping ratios per scale group.
Note: torch.ao's "symmetric" convention divides by (q_max − q_min)/2 and gives another grid.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from qgeom.params import Params, Scope, check_finite, in_scope, is_head

Granularity = Literal["row", "tensor", "group"]
MSE_GRID = tuple(1.0 - 0.05 * i for i in range(11))  # clipping ratios 1.00, 0.95, …, 0.50


class UnsupportedBitsError(ValueError):
    """Bit width outside the supported range 2–8."""


@dataclass(frozen=True)
class QuantSpec:
    """How to quantize a weight matrix.

    bits: 2–8. granularity: ``row`` (one scale per output row, default), ``tensor`` or
    ``group`` (``group_size`` consecutive input columns per scale). symmetric: the paper's grid
    (default) or an asymmetric min/max grid. clip: ``none`` (absmax / min-max, default) or
    ``mse`` (per scale group, the clipping ratio in 1.00…0.50 with the least squared error).

    The symmetric unclipped grid is idempotent, Q(Q(w)) = Q(w) (the absmax of Q(w) is that of
    w). The asymmetric grid is not: its range follows min/max, which Q moves (e.g. 2 bits,
    [1.25, 0.5, −0.25] → [1, 0.5, 0] → [1, 2/3, 0]); it always holds 0 exactly.
    """

    bits: int = 2
    granularity: Granularity = "row"
    group_size: int = 32
    symmetric: bool = True
    clip: Literal["none", "mse"] = "none"

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or not isinstance(self.bits, numbers.Integral) or not 2 <= self.bits <= 8:
            raise UnsupportedBitsError(f"bits must be an integer from 2 to 8, got {self.bits!r}")
        object.__setattr__(self, "bits", int(self.bits))  # numpy / pandas integers become int
        if self.granularity not in ("row", "tensor", "group"):
            raise ValueError(f"granularity must be 'row', 'tensor' or 'group', got {self.granularity!r}")
        if self.granularity == "group" and self.group_size < 1:
            raise ValueError(f"group_size must be positive, got {self.group_size}")
        if self.clip not in ("none", "mse"):
            raise ValueError(f"clip must be 'none' or 'mse', got {self.clip!r}")

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1)) if self.symmetric else 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.symmetric else 2**self.bits - 1

    def to_dict(self) -> dict:
        return asdict(self)


def _groups(w: Tensor, spec: QuantSpec) -> Tensor:
    """Reshape ``w`` (out, in) to (n_groups, group_len): one row per scale."""
    if spec.granularity == "tensor":
        return w.reshape(1, -1)
    if spec.granularity == "row":
        return w.reshape(w.shape[0], -1)
    if w.shape[-1] % spec.group_size:
        raise ValueError(f"group_size {spec.group_size} does not divide the {w.shape[-1]} input columns")
    return w.reshape(-1, spec.group_size)


def _rtn(g: Tensor, spec: QuantSpec, ratio: float | Tensor = 1.0) -> Tensor:
    """Round-to-nearest of each row of ``g`` (n, m) on its own grid, range shrunk by ``ratio``."""
    if spec.symmetric:
        amax = g.abs().amax(dim=1, keepdim=True) * ratio
        s = amax / spec.qmax
        s = torch.where(s > 0, s, torch.ones_like(s))
        return torch.clamp(torch.round(g / s), spec.qmin, spec.qmax) * s
    lo = g.amin(dim=1, keepdim=True) * ratio
    hi = g.amax(dim=1, keepdim=True) * ratio
    lo, hi = torch.minimum(lo, torch.zeros_like(lo)), torch.maximum(hi, torch.zeros_like(hi))
    s = (hi - lo) / spec.qmax
    s = torch.where(s > 0, s, torch.ones_like(s))
    zp = torch.round(-lo / s)
    return (torch.clamp(torch.round(g / s) + zp, spec.qmin, spec.qmax) - zp) * s


def quantize_weight(w: Tensor, spec: QuantSpec) -> Tensor:
    """Q_b(w): the dequantized (fake-quantized) weight, same shape and dtype as ``w``.

    w: (out_features, in_features) or any tensor whose first axis is the output axis.
    """
    g = _groups(w.detach(), spec)
    if spec.clip == "none":
        q = _rtn(g, spec)
    else:
        best = _rtn(g, spec)
        err = (best - g).pow(2).sum(dim=1, keepdim=True)
        for ratio in MSE_GRID[1:]:
            cand = _rtn(g, spec, ratio)
            e = (cand - g).pow(2).sum(dim=1, keepdim=True)
            better = e < err
            best, err = torch.where(better, cand, best), torch.where(better, e, err)
        q = best
    return q.reshape(w.shape).to(w.dtype)


def quantization_scale(w: Tensor, spec: QuantSpec) -> Tensor:
    """The step size of each scale group (symmetric, unclipped): absmax / q_max, shape (n_groups,)."""
    g = _groups(w.detach(), spec)
    if spec.symmetric:
        return g.abs().amax(dim=1) / spec.qmax
    lo, hi = g.amin(dim=1).clamp(max=0), g.amax(dim=1).clamp(min=0)
    return (hi - lo) / spec.qmax


def ste_quantize(w: Tensor, spec: QuantSpec) -> Tensor:
    """Straight-through fake quantization: w + (Q_b(w) − w).detach().

    Its value is Q_b(w); its derivative with respect to w is the identity (forward- and
    reverse-mode, also under ``torch.func`` transforms).
    """
    return w + (quantize_weight(w, spec) - w).detach()


def ptq(params: Mapping[str, Tensor], spec: QuantSpec, scope: Scope = "quantized") -> Params:
    """Post-training quantization: a new dict with Q_b applied to every tensor in ``scope``.

    The input is never mutated; tensors out of scope are shared (not copied).
    """
    check_finite(params, "weights to quantize")
    return {k: quantize_weight(v, spec) if in_scope(k, v, scope) else v for k, v in params.items()}


def fake_quantize(params: Mapping[str, Tensor], spec: QuantSpec, scope: Scope = "quantized") -> Params:
    """:func:`ste_quantize` on every tensor in ``scope`` (the STE surrogate's parameters)."""
    return {k: ste_quantize(v, spec) if in_scope(k, v, scope) else v for k, v in params.items()}


def quantization_error(params: Mapping[str, Tensor], spec: QuantSpec, scope: Scope = "quantized") -> list[dict]:
    """Per-tensor error statistics of Q_b: one dict per tensor in ``scope``.

    Keys: name, numel, rel_error = ‖w − Q(w)‖ / ‖w‖, max_abs_error, mean_scale,
    levels_used (distinct quantized values per scale group, averaged).
    """
    rows = []
    for k, w in params.items():
        if not in_scope(k, w, scope):
            continue
        q = quantize_weight(w, spec)
        err = (w - q).double()
        g = _groups(q, spec)
        levels = sum(len(torch.unique(r)) for r in g) / g.shape[0]
        rows.append(
            {
                "name": k,
                "numel": w.numel(),
                "rel_error": float(err.norm() / w.double().norm().clamp_min(1e-300)),
                "max_abs_error": float(err.abs().max()),
                "mean_scale": float(quantization_scale(w, spec).double().mean()),
                "levels_used": levels,
            }
        )
    return rows


# --------------------------------------------------------------------------------------------
# QAT: Linear layers with fake-quantized weights
# --------------------------------------------------------------------------------------------


class QATLinear(nn.Linear):
    """An ``nn.Linear`` whose forward uses the STE fake-quantized weight.

    It subclasses ``nn.Linear`` and keeps the parameter names ``weight`` and ``bias``, so a
    model's ``state_dict`` keys are the same with or without QAT; :func:`strip_qat` turns the
    layers back into plain ``nn.Linear``.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, spec: QuantSpec) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.spec = spec

    @classmethod
    def from_linear(cls, lin: nn.Linear, spec: QuantSpec) -> "QATLinear":
        q = cls(lin.in_features, lin.out_features, lin.bias is not None, spec=spec)
        q.to(device=lin.weight.device, dtype=lin.weight.dtype)
        q.weight, q.bias = lin.weight, lin.bias  # share the Parameters
        return q

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.linear(x, ste_quantize(self.weight, self.spec), self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", bits={self.spec.bits}, granularity={self.spec.granularity}"


def _swap(model: nn.Module, make) -> nn.Module:
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            full = f"{parent_name}.{child_name}" if parent_name else child_name
            new = make(full, child)
            if new is not None:
                setattr(parent, child_name, new)
    return model


def prepare_qat(model: nn.Module, spec: QuantSpec) -> nn.Module:
    """Swap every ``nn.Linear`` except the head for a :class:`QATLinear` (in place; returned)."""
    return _swap(
        model,
        lambda name, m: QATLinear.from_linear(m, spec)
        if type(m) is nn.Linear and not is_head(name + ".")
        else None,
    )


def strip_qat(model: nn.Module) -> nn.Module:
    """Turn every :class:`QATLinear` back into a plain ``nn.Linear`` (in place; returned)."""

    def plain(_name: str, m: nn.Module):
        if not isinstance(m, QATLinear):
            return None
        lin = nn.Linear(m.in_features, m.out_features, m.bias is not None, device=m.weight.device, dtype=m.weight.dtype)
        lin.weight, lin.bias = m.weight, m.bias
        return lin

    return _swap(model, plain)

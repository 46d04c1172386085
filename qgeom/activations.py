"""Activation quantization: fake-quantized inputs of every quantized Linear (W+A settings).

For a Linear y = W x + b in the ``quantized`` scope, the input x is replaced by its fake
quantization on a per-tensor grid with a scale calibrated once on calibration batches:

* symmetric: s = max|x| / q_max, Q(x) = s · clamp(round(x / s), −2^(b−1), q_max);
* asymmetric: s = (max x − min x) / (2^b − 1), z = round(−min x / s),
  Q(x) = s · (clamp(round(x / s) + z, 0, 2^b − 1) − z).

The forward value is Q(x); the backward pass is the straight-through estimator (identity), so the
same hooks serve post-training evaluation and quantization-aware training. Activation bit widths
are 2–8, like the weights'.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call

from qgeom.params import is_head


class UnsupportedActivationBitsError(ValueError):
    """An activation bit width outside 2–8."""


@dataclass(frozen=True)
class ActivationSpec:
    """``bits`` 2–8; ``symmetric`` per-tensor grid (default) or asymmetric (min/max, zero point)."""

    bits: int = 8
    symmetric: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not 2 <= self.bits <= 8:
            raise UnsupportedActivationBitsError(f"act_bits must be an integer from 2 to 8, got {self.bits!r}")


@dataclass(frozen=True)
class Range:
    """The calibrated range of one Linear's input: min and max over the calibration batches."""

    lo: float
    hi: float


def quantize_activation(x: Tensor, r: Range, spec: ActivationSpec) -> Tensor:
    """Q(x) on the grid of range ``r`` (see the module docstring), same shape and dtype."""
    if spec.symmetric:
        qmax = 2 ** (spec.bits - 1) - 1
        s = max(abs(r.lo), abs(r.hi)) / qmax or 1.0
        return torch.clamp(torch.round(x / s), -(qmax + 1), qmax) * s
    levels = 2**spec.bits - 1
    lo, hi = min(r.lo, 0.0), max(r.hi, 0.0)
    s = (hi - lo) / levels or 1.0
    z = round(-lo / s)
    return (torch.clamp(torch.round(x / s) + z, 0, levels) - z) * s


def quantized_linears(model: nn.Module) -> list[str]:
    """The Linear modules of the ``quantized`` scope (every Linear but the head's)."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and not is_head(f"{n}.weight")]


def calibrate(model: nn.Module, params: Mapping[str, Tensor], batches: Iterable[tuple[Tensor, Tensor]]) -> dict[str, Range]:
    """The input range of every quantized Linear over the calibration ``batches``, with ``params``."""
    ranges: dict[str, list[float]] = {}
    hooks = []
    for name in quantized_linears(model):
        def record(m, args, name=name):
            x = args[0].detach()
            lo, hi = ranges.get(name, [float("inf"), float("-inf")])
            ranges[name] = [min(lo, float(x.min())), max(hi, float(x.max()))]
        hooks.append(model.get_submodule(name).register_forward_pre_hook(record))
    n = 0
    try:
        with torch.no_grad():
            for x, _ in batches:
                functional_call(model, dict(params), (x,))
                n += 1
    finally:
        for h in hooks:
            h.remove()
    if not n:
        raise ValueError("activation quantization needs calibration batches: got none")
    return {k: Range(*v) for k, v in ranges.items()}


@contextmanager
def quantized_inputs(model: nn.Module, ranges: Mapping[str, Range], spec: ActivationSpec) -> Iterator[nn.Module]:
    """Within the block, every calibrated Linear of ``model`` sees Q(x) instead of x (forward),
    with a straight-through gradient; the hooks are removed on exit."""
    hooks = []
    for name, r in ranges.items():
        def fake(m, args, r=r):
            x = args[0]
            return (x + (quantize_activation(x.detach(), r, spec) - x.detach()),) + tuple(args[1:])
        hooks.append(model.get_submodule(name).register_forward_pre_hook(fake))
    try:
        yield model
    finally:
        for h in hooks:
            h.remove()

"""Calibration inputs of Linear layers: which layers, in forward order, and what each one reads.

Post-training quantizers that look at data (GPTQ, AWQ) calibrate one Linear at a time on its
inputs X_ℓ (rows × in) over calibration batches, with the parameters quantized so far
(sequential calibration). These helpers find the layers and capture their inputs without
touching the model's own weights (``torch.func.functional_call`` with a parameter dict), and
measure the layer-output error ‖(W − Ŵ)X‖²_F / N in the metric H = 2 X Xᵀ / N that GPTQ
minimises (a block of the Gauss-Newton matrix of the layer-output error).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call


def linear_layers(model: nn.Module, weights: Iterable[str]) -> list[str]:
    """The Linear modules whose ``.weight`` is in ``weights``, in registration order (a timm ViT
    registers qkv, proj, fc1, fc2 block by block: the order of the forward pass)."""
    weights = set(weights)
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and f"{n}.weight" in weights]


class _Captured(Exception):
    """Raised by the capturing hook: the rest of the forward pass is not needed."""


def layer_inputs(model: nn.Module, theta: Mapping[str, Tensor], layer: str,
                 batches: Iterable[tuple[Tensor, Tensor]]) -> list[Tensor]:
    """The inputs of ``layer`` (rows × in, one tensor per calibration batch) under ``theta``; each
    forward pass stops at the layer (the layers after it are not computed)."""
    inputs: list[Tensor] = []

    def capture(m, args):
        inputs.append(args[0].detach().reshape(-1, args[0].shape[-1]))
        raise _Captured

    hook = model.get_submodule(layer).register_forward_pre_hook(capture)
    try:
        with torch.no_grad():
            for x, _ in batches:
                try:
                    functional_call(model, dict(theta), (x,))
                except _Captured:
                    pass
    finally:
        hook.remove()
    return inputs


def layer_hessian(x: Tensor) -> Tensor:
    """H = 2 X Xᵀ / N from inputs ``x`` (N, in) — or (…, in), flattened over the leading axes —
    accumulated in float64."""
    x = x.reshape(-1, x.shape[-1]).double()
    return 2.0 * x.T @ x / x.shape[0]


def output_error(w: Tensor, q: Tensor, h: Tensor) -> float:
    """½ tr((W − Q) H (W − Q)ᵀ) = ‖(W − Q)X‖²_F / N for H = 2XXᵀ/N (float64)."""
    d = w.double() - q.double()
    return float(0.5 * torch.einsum("oi,ij,oj->", d, h.double(), d))


def layer_hessians(model: nn.Module, theta: Mapping[str, Tensor], layers: Iterable[str],
                   batches: Iterable[tuple[Tensor, Tensor]]) -> dict[str, Tensor]:
    """H_ℓ = 2 X_ℓ X_ℓᵀ / N (float64, in × in) of every layer in ``layers`` under ``theta``, summed
    batch by batch in one forward pass per batch (the inputs are never held together). For a model
    quantized in forward order these are the Hessians of the inputs each layer saw during sequential
    calibration: a layer's input depends only on the layers before it."""
    sums: dict[str, list] = {n: [0.0, 0] for n in layers}
    hooks = []
    for name in sums:
        def record(m, args, name=name):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            sums[name][0] = sums[name][0] + x.T @ x
            sums[name][1] += x.shape[0]
        hooks.append(model.get_submodule(name).register_forward_pre_hook(record))
    try:
        with torch.no_grad():
            for x, _ in batches:
                functional_call(model, dict(theta), (x,))
    finally:
        for h in hooks:
            h.remove()
    return {n: 2.0 * g / rows for n, (g, rows) in sums.items() if rows}

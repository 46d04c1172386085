"""Calibration inputs of Linear layers: which layers, in forward order, and what each one reads.

Post-training quantizers that look at data (GPTQ, AWQ) calibrate one Linear at a time on its
inputs X_ℓ (rows × in) over calibration batches, with the parameters quantized so far
(sequential calibration). These helpers find the layers and capture their inputs without
touching the model's own weights (``torch.func.functional_call`` with a parameter dict), and
measure the layer-output error ‖(W − Ŵ)X‖²_F / N in the metric H = 2 X Xᵀ / N that GPTQ
minimises (a block of the Gauss-Newton matrix of the layer-output error).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

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


def input_grams(model: nn.Module, layers: Iterable[str], forward_passes: Callable[[], object]
                ) -> dict[str, tuple[Tensor, int]]:
    """Σ XᵀX (float64, in × in) and the number of rows of the inputs X of each Linear in ``layers``
    over the forward passes ``forward_passes()`` runs (forward pre-hooks, ``torch.no_grad``; inputs
    (…, in) flattened to rows, never held together; a layer called twice adds both calls). Layers
    the passes never call are absent from the result."""
    sums: dict[str, tuple[Tensor, int]] = {}

    def capture(name: str) -> Callable:
        def hook(_module: nn.Module, args: tuple) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            g, rows = sums.get(name, (0.0, 0))
            sums[name] = (g + x.T @ x, rows + x.shape[0])
        return hook

    handles = [model.get_submodule(n).register_forward_pre_hook(capture(n)) for n in layers]
    try:
        with torch.no_grad():
            forward_passes()
    finally:
        for h in handles:
            h.remove()
    return sums


def layer_hessians(model: nn.Module, theta: Mapping[str, Tensor], layers: Iterable[str],
                   batches: Iterable[tuple[Tensor, Tensor]]) -> dict[str, Tensor]:
    """H_ℓ = 2 X_ℓ X_ℓᵀ / N (float64, in × in) of every layer in ``layers`` under ``theta``, summed
    batch by batch in one forward pass per batch (:func:`input_grams`). For a model quantized in
    forward order these are the Hessians of the inputs each layer saw during sequential
    calibration: a layer's input depends only on the layers before it."""
    def passes() -> None:
        for x, _ in batches:
            functional_call(model, dict(theta), (x,))

    return {n: 2.0 * g / rows for n, (g, rows) in input_grams(model, layers, passes).items()}

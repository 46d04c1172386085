"""The loss ℓ(outputs, targets) a curvature operator differentiates, and its Hessian in the outputs.

Any callable ``loss(outputs, targets) → scalar`` that returns the batch's *mean* gives the Hessian
H = ∇²L (the operator weights each batch's value by n_b / N, so a summed loss would be counted
n_b times). The Gauss-Newton matrix and the empirical Fisher also need ℓ's Hessian in the
outputs, C_i = ∂²ℓ_i/∂f², and its per-sample gradient r_i = ∂ℓ_i/∂f; they are known here for

* ``cross_entropy`` (the default; ``F.cross_entropy``, ``nn.CrossEntropyLoss()``), outputs
  (n, K) logits, targets class indices (or class probabilities (n, K)), p_i = softmax f_i:
  C_i = diag(p_i) − p_i p_iᵀ, r_i = p_i − e_{y_i};
* ``mse`` (``F.mse_loss``, ``nn.MSELoss()``), outputs and targets of the same shape (n, …)
  with D entries per sample, L = (1/(n D)) Σ_i ‖f_i − y_i‖² (the mean over every entry):
  C_i = (2/D) I, r_i = (2/D)(f_i − y_i) — so G = (2/(N D)) Σ_i J_iᵀ J_i.

Any other loss (or one of these with class weights, label smoothing or a reduction other than
``mean``) has no known C_i: the GGN and the Fisher refuse it (:class:`LossError`) and the Hessian
is still defined. ℓ_i is the per-sample loss with L = (1/N) Σ_i ℓ_i.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LossFn = Callable[[Tensor, Tensor], Tensor]
#: The losses whose Hessian in the outputs is known (so the GGN and the Fisher are defined).
KINDS = ("cross_entropy", "mse")


class LossError(ValueError):
    """The loss cannot serve the requested metric (or is not a per-batch mean)."""


def resolve_loss(loss: LossFn | None, metric: str) -> tuple[LossFn, str | None, str]:
    """(callable, kind in :data:`KINDS` or None, name) for ``loss`` (None: cross-entropy).

    Raises :class:`LossError` for a loss module whose ``reduction`` is not ``mean``, for a
    non-callable, and for ``metric`` ``ggn``/``fisher`` with a loss of no known kind.
    """
    if loss is None:
        return F.cross_entropy, "cross_entropy", "cross_entropy"
    if not callable(loss):
        raise LossError(f"loss must be a callable (outputs, targets) → scalar, got {type(loss).__name__}")
    reduction = getattr(loss, "reduction", "mean")
    if reduction != "mean":
        raise LossError(f"loss {loss!r} has reduction={reduction!r}: the operator averages per-batch means "
                        "(weights n_b / N), so pass a loss with reduction='mean'")
    kind = loss_kind(loss)
    name = getattr(loss, "__name__", None) or repr(loss)
    if kind is None and metric in ("ggn", "fisher"):
        raise LossError(
            f"the {metric.upper() if metric == 'ggn' else 'Fisher'} needs the loss's Hessian in the outputs, known "
            f"for cross-entropy and MSE (nn.CrossEntropyLoss(), nn.MSELoss(), F.cross_entropy, F.mse_loss, "
            f"mean reduction, no class weights or label smoothing); got {name}. Use metric='hessian' "
            "(defined for any loss) or one of those losses")
    return loss, kind, name


def loss_kind(loss: LossFn) -> str | None:
    """``cross_entropy``, ``mse`` or None (see the module docstring for what counts)."""
    if loss is F.cross_entropy or (isinstance(loss, nn.CrossEntropyLoss) and loss.weight is None
                                   and loss.label_smoothing == 0.0):
        return "cross_entropy"
    if loss is F.mse_loss or isinstance(loss, nn.MSELoss):
        return "mse"
    return None


def _targets_like(z: Tensor, y: Tensor) -> Tensor:
    """MSE targets: the outputs' shape, exactly (a broadcast target would change D)."""
    if y.shape != z.shape:
        raise LossError(f"MSE targets must have the outputs' shape {tuple(z.shape)}, got {tuple(y.shape)}")
    return y.to(z.dtype)


def output_product(kind: str, metric: str, z: Tensor, y: Tensor, JV: Tensor) -> Tensor:
    """C_i J_i V per sample, divided by the batch size n (the GGN's or Fisher's output-space factor).

    z: outputs f(θ, x) (n, …); JV: stacked tangent outputs (k, n, …). ``ggn``: C_i as in the
    module docstring; ``fisher``: r_i r_iᵀ. Returns (k, n, …), ready for the VJP.
    """
    if kind == "cross_entropy":
        if z.dim() != 2:
            raise LossError(f"the cross-entropy GGN/Fisher expects outputs (n, K), got {tuple(z.shape)}")
        p = torch.softmax(z.detach(), dim=-1)
        if metric == "ggn":
            U = p * JV - p * (p * JV).sum(-1, keepdim=True)
        else:
            r = p - (y.to(p.dtype) if y.is_floating_point() else F.one_hot(y, p.shape[-1]).to(p.dtype))
            U = r * (r * JV).sum(-1, keepdim=True)
        return U / y.shape[0]
    D = z[0].numel()
    if metric == "ggn":
        return JV * (2.0 / D) / y.shape[0]
    r = (z.detach() - _targets_like(z, y)) * (2.0 / D)
    t = (r * JV).sum(dim=tuple(range(2, JV.dim())), keepdim=True)
    return r * t / y.shape[0]


def output_gram(kind: str, metric: str, z: Tensor, y: Tensor, JV: Tensor) -> Tensor:
    """The batch mean (1/n) Σ_i (J_i V)ᵀ C_i (J_i V) (float64, k × k) from JV (k, n, …)."""
    n = y.shape[0]
    if kind == "cross_entropy":
        p = torch.softmax(z.detach().double(), dim=-1)
        if metric == "ggn":
            s = (JV * p).sum(-1)  # (N_v, n): p_iᵀ J_i v_a
            return (torch.einsum("ank,bnk->ab", JV * p, JV) - s @ s.T) / n
        r = p - (y.to(p.dtype) if y.is_floating_point() else F.one_hot(y, p.shape[-1]).to(p.dtype))
        t = (JV * r).sum(-1)  # (N_v, n): r_iᵀ J_i v_a
        return t @ t.T / n
    D = z[0].numel()
    flat = JV.reshape(JV.shape[0], n, -1)
    if metric == "ggn":
        return torch.einsum("anj,bnj->ab", flat, flat) * (2.0 / D) / n
    r = ((z.detach().double() - _targets_like(z, y).double()) * (2.0 / D)).reshape(n, -1)
    t = (flat * r).sum(-1)
    return t @ t.T / n


__all__ = ["KINDS", "LossError", "LossFn", "loss_kind", "output_gram", "output_product", "resolve_loss"]

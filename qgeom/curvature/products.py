"""One batch's curvature products, as ``torch.func`` formulas: the per-batch means that
:class:`qgeom.curvature.operator.CurvatureOperator` reduces over the probe set.

Each function takes the objective as callables — ``loss(θ, x, y)`` (the batch's mean
loss) or ``logits(θ, x)`` (the model's outputs f(θ, x), e.g. (n, K) logits) — the scoped tensors θ (Params) and
stacked tangents V (Params of shape (k, *shape)), and returns M_b V stacked the same way:

* :func:`hvp_forward`   H_b V by forward-over-reverse (``jvp`` of ``grad``, vmapped over V);
* :func:`hvp_double`    H_b V by double backward; :func:`grad_graph` and :func:`hvp_through_graph`
  split it into the ∇L_b graph (built once, cacheable) and one backward pass per tangent;
* :func:`outer_vp`      G_b V = Jᵀ C J V / n_b with C_i the loss's Hessian in the outputs
  (``ggn``; cross-entropy: diag(p_i) − p_i p_iᵀ) or F_b V with C_i = r_i r_iᵀ, r_i the per-sample
  gradient in the outputs (``fisher``; cross-entropy: p_i − e_{y_i}): one JVP and one VJP, the
  output-space step from :mod:`qgeom.curvature.losses`;
* :func:`batch_jvp_gram` the batch's Vᵀ M_b V for M = G or F from forward-mode passes alone.

k = 1 skips ``vmap`` everywhere (measurably faster for one vector).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import torch
from torch import Tensor
from torch.func import grad, jvp, vjp, vmap

from qgeom.curvature.losses import output_gram, output_product
from qgeom.params import Params

LossFn = Callable[[Params, Tensor, Tensor], Tensor]
LogitsFn = Callable[[Params, Tensor], Tensor]
Graph = tuple[list[Tensor], list[Tensor], list[int]]


def _load_jvp_decompositions() -> None:
    """Import torch's forward-AD decompositions once, without their FutureWarning.

    The first forward-mode product (``torch.func.jvp``, used by the GGN) makes torch import
    ``torch._decomp.decompositions_for_jvp``, which registers its decompositions with
    ``torch.jit.script`` — deprecated in torch ≥ 2.9, so every command that computed a GGN printed
    "`torch.jit.script` is deprecated". The call is inside torch (qgeom never scripts anything),
    so it cannot be silenced at its source here; it is filtered where qgeom triggers it: that one
    import, under a filter scoped to this message, so a user's own ``torch.jit.script`` still warns.
    Same condition as torch's own loader (``torch.autograd.forward_ad._maybe_load_decompositions``).
    """
    if os.environ.get("PYTORCH_JIT", "1") != "1" or not __debug__:
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.(script|interface)` is deprecated",
                                category=FutureWarning)
        try:
            from torch._decomp import decompositions_for_jvp  # noqa: F401  (lazy: under the filter above)
        except ImportError:  # a torch without the module: nothing to register, nothing to warn
            pass


_load_jvp_decompositions()


def hvp_forward(loss: LossFn, theta: Params, V: Params, x: Tensor, y: Tensor) -> Params:
    """H_b V by jvp(grad): vmap over the tangents (k = 1 skips vmap)."""
    g = grad(loss)

    def hv(t: Params) -> Params:
        return jvp(lambda th: g(th, x, y), (theta,), (t,))[1]

    if next(iter(V.values())).shape[0] == 1:
        return {k: v.unsqueeze(0) for k, v in hv({k: t[0] for k, t in V.items()}).items()}
    return vmap(hv)(V)


def grad_graph(loss: LossFn, theta: Params, keys: list[str], x: Tensor, y: Tensor) -> Graph:
    """(leaves, ∇L_b with its graph, indices of the gradients that depend on θ) of one batch."""
    leaves = [theta[k].detach().requires_grad_(True) for k in keys]
    with torch.enable_grad():
        value = loss(dict(zip(keys, leaves)), x, y)
        gs = torch.autograd.grad(value, leaves, create_graph=True)
    live = [i for i, g in enumerate(gs) if g.requires_grad]
    return leaves, [gs[i] for i in live], live


def hvp_through_graph(graph: Graph, keys: list[str], V: Params) -> Params:
    """H_b V as backward passes through a ∇L_b graph of :func:`grad_graph` (k > 1: one per tangent)."""
    leaves, gs, live = graph
    cols = []
    for j in range(next(iter(V.values())).shape[0]):  # a loop: measured as fast as is_grads_batched
        with torch.enable_grad():
            cols.append(torch.autograd.grad(gs, leaves, [V[keys[i]][j] for i in live], retain_graph=True,
                                            allow_unused=True, materialize_grads=True))
    return {key: torch.stack([c[i] for c in cols]) for i, key in enumerate(keys)}


def hvp_double(loss: LossFn, theta: Params, keys: list[str], V: Params, x: Tensor, y: Tensor) -> Params:
    """H_b V by reverse-over-reverse: one graph of ∇L_b, backpropagated once per tangent.

    k = 1: ``torch.autograd.grad(create_graph=True)`` then a backward with v. k > 1: the same
    two passes through ``torch.func`` (vjp of grad), the second vmapped over the tangents —
    measured faster than a loop with ``retain_graph`` or ``is_grads_batched``.
    """
    if next(iter(V.values())).shape[0] > 1:
        _, pullback = vjp(lambda th: grad(loss)(th, x, y), theta)
        return vmap(lambda t: pullback(t)[0])(V)
    leaves = [theta[k].detach().requires_grad_(True) for k in keys]
    with torch.enable_grad():
        value = loss(dict(zip(keys, leaves)), x, y)
        gs = torch.autograd.grad(value, leaves, create_graph=True)
        live = [i for i, g in enumerate(gs) if g.requires_grad]
        hv = torch.autograd.grad([gs[i] for i in live], leaves, [V[keys[i]][0] for i in live],
                                 allow_unused=True, materialize_grads=True)
    return {key: h.unsqueeze(0) for key, h in zip(keys, hv)}


def outer_vp(logits: LogitsFn, theta: Params, metric: str, V: Params, x: Tensor, y: Tensor,
             kind: str = "cross_entropy") -> Params:
    """Jᵀ (C J V) / n_b with C the loss's output Hessian (``ggn``) or r rᵀ (``fisher``), for the
    loss ``kind`` (:func:`qgeom.curvature.losses.output_product`; cross-entropy: C = diag(p) − ppᵀ,
    r = p − e_y)."""
    f = lambda th: logits(th, x)  # noqa: E731
    z, pullback = vjp(f, theta)
    single = next(iter(V.values())).shape[0] == 1  # k = 1: no vmap (measurably faster)
    if single:
        JV = jvp(f, (theta,), ({k: t[0] for k, t in V.items()},))[1].unsqueeze(0)
    else:
        JV = vmap(lambda t: jvp(f, (theta,), (t,))[1])(V)  # (k, n, K)
    U = output_product(kind, metric, z, y, JV)
    if single:
        return {k: t.unsqueeze(0) for k, t in pullback(U[0])[0].items()}
    return vmap(lambda u: pullback(u)[0])(U)


def tangent_logits(logits: LogitsFn, theta: Params, V: Params, x: Tensor) -> tuple[Tensor, Tensor]:
    """(f(θ, x) (n, K), J V (k, n, K)) for stacked tangents V (k, *shape): forward mode only."""
    f = lambda th: logits(th, x)  # noqa: E731
    if next(iter(V.values())).shape[0] == 1:
        z, JV = jvp(f, (theta,), ({k: t[0] for k, t in V.items()},))
        return z, JV.unsqueeze(0)
    z, JV = vmap(lambda t: jvp(f, (theta,), (t,)), out_dims=(None, 0))(V)
    return z, JV


def batch_jvp_gram(logits: LogitsFn, theta: Params, metric: str, chunks: list[Params], x: Tensor,
                   y: Tensor, kind: str = "cross_entropy") -> Tensor:
    """The batch's mean (1/n_b) Σ_i (J_i V)ᵀ C_i (J_i V) (float64, N_v × N_v) over the tangents of
    every chunk: C_i the loss's output Hessian (``ggn``) or r_i r_iᵀ (``fisher``), as in
    :func:`qgeom.curvature.losses.output_gram` (cross-entropy: diag p_i − p_i p_iᵀ, r_i = p_i − e_{y_i})."""
    z, parts = None, []
    with torch.no_grad():
        for V in chunks:
            z, JV = tangent_logits(logits, theta, V, x)
            parts.append(JV.detach().double())
    return output_gram(kind, metric, z, y, torch.cat(parts))  # JV: (N_v, n, K)


__all__ = ["batch_jvp_gram", "grad_graph", "hvp_double", "hvp_forward", "hvp_through_graph", "outer_vp",
           "tangent_logits"]

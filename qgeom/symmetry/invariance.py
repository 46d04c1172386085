"""Numerical invariance checks of ViT symmetries, level by level (proofs/README.md, results 3–6).

For a model, parameters θ, two vectors (u, v) = (ρ_D, ρ_R), a probe set and symmetry elements
g (:mod:`qgeom.symmetry`), :func:`check_invariance` measures:

* function    max|f(gθ, x) − f(θ, x)| / max|f(θ, x)| and |L(gθ) − L(θ)| / |L(θ)|;
* covariance  ‖∇L(gθ) − g⁻ᵀ∇L(θ)‖ / ‖∇L(gθ)‖ and, for M ∈ {G, H, F, layer},
              max over w ∈ {u, v} of ‖M(gθ)(g w) − g⁻ᵀ M(θ) w‖ / ‖M(gθ)(g w)‖;
* geometry    :func:`qgeom.curvature.geometry.geometry_of_pair` at θ for (u, v) against the same at gθ
              for (gu, gv): λ*_M = ⟨u, v⟩_M / ⟨u, u⟩_M, cos_M(u, v) and the directional
              gradients wᵀ∇L are invariant under every function-level symmetry (λ*, cos_M
              are NaN where the forms are indefinite: reported, not checked; the forms
              ⟨u,u⟩_M, ⟨u,v⟩_M, ⟨v,v⟩_M themselves are checked either way); the Euclidean
              cosine only for orthogonal g. GPTQ's layer metric (``metrics`` with ``"layer"``) is a
              function of the layer inputs, not of the loss: covariant, and its forms, λ*, cos
              invariant, only where g's row maps on the quantized weights are orthogonal
              (:meth:`qgeom.symmetry.Symmetry.preserves_layer_metric`), and each layer's own
              cosine where they are scalar × orthogonal — otherwise a violation must be measured;
* quantizer   ‖Q_b(gθ) − g Q_b(θ)‖ / ‖g Q_b(θ)‖ on the quantized tensors, and the post-PTQ
              loss and accuracy on the probe set at θ and at gθ;
* optimizer   one AdamW and one SGD step from gθ (gradient ∇L(gθ)) against g applied to the
              step from θ: ‖Δ(gθ) − gΔ(θ)‖ / ‖gΔ(θ)‖;
* pipeline    a short real QAT run (:func:`qgeom.train.fit`: AdamW, fake-quantized Linear
              layers, same seed and batches) from gθ against g applied to the run from θ:
              ‖ρ(gθ) − gρ(θ)‖ / ‖gρ(θ)‖.

What each element should satisfy comes from :meth:`qgeom.symmetry.Symmetry.expectations`.
This module measures, at θ and at gθ; :mod:`qgeom.symmetry.invariance_report` turns the two
measurements into rows, each with its expectation (``invariant``, ``covariant``, ``not
invariant`` — a violation must be measured — or ``reported``: informational), a tolerance
for the dtype, multiplied by the element's condition number where roundoff is amplified by g,
whether the identity ``holds`` and whether that is ``as_expected``.
Products are taken by :class:`qgeom.curvature.operator.CurvatureOperator` over the vectors' keys (g never
mixes tensors, so every identity restricts to a scope). The quantizer level is evaluated in
float64 whatever the dtype: at float32 precision a weight within 1e-7 of a rounding tie can
flip grid point, which is rounding, not a broken symmetry.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from qgeom.curvature.forms import form_quantities
from qgeom.curvature.geometry import geometry_of_pair
from qgeom.curvature.layer_geometry import layer_gram_matrices
from qgeom.curvature.operator import CurvatureOperator
from qgeom.params import Params, select
from qgeom.quant import QuantSpec, ptq
from qgeom.symmetry import Symmetry
from qgeom.symmetry.invariance_report import EXPECTATIONS, LEVELS, InvarianceReport, Tolerances, compare
from qgeom.train import fit, make_optimizer

Batch = tuple[Tensor, Tensor]

__all__ = ["EXPECTATIONS", "LEVELS", "Batch", "InvarianceReport", "Tolerances", "check_invariance", "evaluate",
           "optimizer_displacement", "random_vectors"]


# --------------------------------------------------------------------------------------------
# evaluation helpers
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(model: nn.Module, params: Mapping[str, Tensor], batches: Sequence[Batch]) -> tuple[Tensor, float, float]:
    """(logits over all batches, mean cross-entropy, top-1 accuracy) of θ on ``batches``."""
    z = torch.cat([functional_call(model, dict(params), (x,)) for x, _ in batches])
    y = torch.cat([y for _, y in batches])
    return z, float(F.cross_entropy(z.double(), y)), float((z.argmax(-1) == y).double().mean())


def optimizer_displacement(params: Mapping[str, Tensor], grad: Mapping[str, Tensor], optimizer: str, *,
                           lr: float = 1e-3, weight_decay: float = 0.1) -> Params:
    """Δ = θ' − θ (float64) after one step of a fresh AdamW/SGD (:func:`qgeom.train.make_optimizer`)
    with gradient ``grad``, on the keys of ``grad``. The step is taken in float64 so that θ' − θ
    does not cancel: only the gradient carries the precision of the check."""
    start = {k: params[k].detach().double() for k in grad}
    leaves = {k: t.clone().requires_grad_(True) for k, t in start.items()}
    for k, t in leaves.items():
        t.grad = grad[k].detach().double().clone()
    make_optimizer(optimizer, list(leaves.values()), lr, weight_decay).step()
    return {k: leaves[k].detach() - start[k] for k in grad}


def random_vectors(params: Mapping[str, Tensor], seed: int = 0, scale: float = 1e-2) -> tuple[Params, Params]:
    """Two correlated random directions (cosine ≈ 0.6), each tensor scaled to ``scale``·‖θ_k‖."""
    g = torch.Generator().manual_seed(seed)

    def rnd() -> Params:
        out = {}
        for k, t in params.items():
            r = torch.randn(t.shape, generator=g, dtype=torch.float64)
            out[k] = (r * scale * max(float(t.double().norm()), 1e-3) / max(float(r.norm()), 1e-300)).to(t.dtype)
        return out

    u, w = rnd(), rnd()
    return u, {k: 0.6 * u[k] + 0.8 * w[k] for k in u}


# --------------------------------------------------------------------------------------------
# the check
# --------------------------------------------------------------------------------------------


def _side(net: nn.Module, theta: Params, theta64: Params, u: Params, v: Params, batches: Sequence[Batch],
          spec: QuantSpec, metrics: Sequence[str], levels: Sequence[str], pipeline: dict | None) -> dict:
    """Everything measured at one point: (θ, u, v) or (gθ, gu, gv); ``theta64`` the point in float64."""
    out: dict = {}
    if "function" in levels:
        out["logits"], out["loss"], _ = evaluate(net, theta, batches)
    keys = list(u)
    scope = [k for k in net.state_dict() if k in u]  # the model's order (a list scope keeps the order it is given)
    if {"covariance", "geometry", "optimizer"} & set(levels):
        ops = {m: CurvatureOperator(net, theta, batches, metric=m, scope=scope) for m in metrics}
        out["grad"] = next(iter(ops.values())).gradient() if ops else CurvatureOperator(net, theta, batches, scope=scope).gradient()
        if {"covariance", "geometry"} & set(levels):
            out["prod"] = {m: op.matmat([u, v]) for m, op in ops.items()}
            out["pair"] = {m: geometry_of_pair(_Reuse(op, [u, v], out["prod"][m], out["grad"]), u, v) for m, op in ops.items()}
            if "layer" in ops:  # each layer's own cosine (the layer metric's blocks, already held)
                out["layer_cos"] = {w: form_quantities(K, f).cosines[0, 1] for w, (K, f) in
                                    layer_gram_matrices(ops["layer"], [u, v]).items()}
    if "quantizer" in levels:
        q = ptq(theta64, spec)
        out["Q"] = select(q, "quantized")
        z, out["ptq_loss"], out["ptq_acc"] = evaluate(net, {k: t.to(theta[k].dtype) for k, t in q.items()}, batches)
        out["acc_tol"] = 0.0 if z.dtype == torch.float64 else 1.0 / len(z)
    if "optimizer" in levels:
        out["adamw"] = optimizer_displacement(theta, out["grad"], "adamw")
        out["sgd"] = optimizer_displacement(theta, out["grad"], "sgd", lr=1e-2)
    if pipeline is not None:
        trained = fit(net, theta, batches, pipeline["steps"], lr=pipeline["lr"], weight_decay=0.1, warmup_steps=0,
                      clip_grad_norm=1.0, qat_spec=spec, seed=pipeline["seed"], optimizer="adamw",
                      device=next(iter(theta.values())).device)
        out["rho"] = {k: trained[k].to(theta[k].device).double() - theta[k].double() for k in keys}  # exact difference
    return out


class _Reuse:
    """What :func:`qgeom.curvature.geometry.geometry_of_pair` asks of an operator, answered from the
    products and gradient already taken (so the geometry level costs no extra products)."""

    def __init__(self, op: CurvatureOperator, vectors: list[Params], products: list[Params], grad: Params) -> None:
        self.op, self.info, self.dtype = op, op.info, op.dtype
        self._v, self._p, self._g = vectors, products, grad

    def matmat(self, vs: Sequence[Params]) -> list[Params]:
        same = len(vs) == len(self._v) and all(a is b for a, b in zip(vs, self._v))
        return self._p if same else self.op.matmat(vs)

    def gradient(self) -> Params:
        return self._g


def check_invariance(
    model: nn.Module,
    params: Mapping[str, Tensor],
    symmetries: Symmetry | Sequence[Symmetry],
    batches: Sequence[Batch],
    *,
    vectors: tuple[Params, Params] | None = None,
    spec: QuantSpec | None = None,
    dtype: torch.dtype = torch.float64,
    levels: Sequence[str] = LEVELS,
    metrics: Sequence[str] = ("ggn", "hessian"),
    pipeline_steps: int = 3,
    pipeline_lr: float = 1e-3,
    pipeline_for: Sequence[str] | None = None,
    tolerances: Tolerances | None = None,
    seed: int = 0,
) -> InvarianceReport:
    """Measure every level for every symmetry element; see the module docstring.

    vectors: (ρ_D, ρ_R) keyed by a subset of the parameters (the products' scope); default
    :func:`random_vectors` over all tensors. metrics: the operators of the covariance and
    geometry levels (``ggn``, ``hessian``, ``fisher``, ``layer``). pipeline_for: the element kinds to run the QAT
    pipeline for (default: all given); ``pipeline_steps`` AdamW steps at ``pipeline_lr`` over
    ``batches`` in order. The model is copied and cast to ``dtype`` (float64 or float32).
    """
    syms = [symmetries] if isinstance(symmetries, Symmetry) else list(symmetries)
    unknown = set(levels) - set(LEVELS)
    if unknown:
        raise ValueError(f"unknown levels {sorted(unknown)}; known: {', '.join(LEVELS)}")
    spec, tol = spec or QuantSpec(), tolerances or Tolerances.for_dtype(dtype)
    net = copy.deepcopy(model).to(dtype).eval()
    theta = {k: t.detach().to(dtype) for k, t in params.items() if torch.is_floating_point(t)}
    device = next(iter(theta.values())).device
    batches = [(x.to(device, dtype), y.to(device)) for x, y in batches]
    u, v = vectors if vectors is not None else random_vectors(theta, seed)
    u, v = ({k: t.detach().to(dtype) for k, t in w.items()} for w in (u, v))
    run_pipe = "pipeline" in levels and [g for g in syms if pipeline_for is None or g.kind in pipeline_for]
    pipe = dict(steps=pipeline_steps, lr=pipeline_lr, seed=seed) if run_pipe else None
    theta64 = {k: t.double() for k, t in theta.items()}
    base = _side(net, theta, theta64, u, v, batches, spec, metrics, levels, pipe)
    rows: list[dict] = []
    for g in syms:
        pipe_g = pipe if "pipeline" in levels and (pipeline_for is None or g.kind in pipeline_for) else None
        side = _side(net, g.act_point(theta), g.act_point(theta64), g.act_tangent(u), g.act_tangent(v), batches,
                     spec, metrics, levels, pipe_g)
        rows += [r for r in compare(g, base, side, theta, spec, tol, pipe_g is not None) if r["level"] in levels]
    meta = dict(dtype=str(dtype).removeprefix("torch."), spec=spec.to_dict(), metrics=list(metrics), levels=list(levels),
                n_samples=sum(len(y) for _, y in batches), seed=seed, pipeline_steps=pipeline_steps,
                vector_keys=len(u), vectors="given" if vectors is not None else "random")
    return InvarianceReport(rows, meta)

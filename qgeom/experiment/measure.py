"""The geometry of one receiver: metric Gram matrices of every donor's ρ, and what they predict.

For receiver R and the vectors V = [ρ_D for every task D] on a scope, with M the receiver's
curvature at the expansion point of each objective (``fp``: θ_R; ``ste``: θ_R,QAT, :mod:`qgeom.curvature`):

* K = Vᵀ M V (:func:`qgeom.curvature.geometry.gram_matrix`), and from it, per donor D, the
  inner product ⟨ρ_D, ρ_R⟩_M, the form ⟨ρ_D, ρ_D⟩_M, cos_M(ρ_D, ρ_R) and its square, and
  λ* = ⟨ρ_D, ρ_R⟩_M / ⟨ρ_D, ρ_D⟩_M — NaN, flagged ``indefinite``, where a form is at or below
  its roundoff floor (:func:`qgeom.curvature.geometry.form_quantities`);
* with ``metrics`` including ``layer`` (GPTQ's metric, block-diagonal H_ℓ = X_ℓX_ℓᵀ/N over the
  quantized Linears, :mod:`qgeom.curvature.layer`): the pooled rows above and each layer's own
  cosine (quantity ``cosine@<weight>``);
* Euclidean counterparts (M = I), the directional gradients ⟨∇L, ρ_D⟩, K's asymmetry and
  eigenvalues (diagnostics of Proposition 1);
* Proposition 2′'s and 2″'s terms (proofs/02, :mod:`qgeom.curvature.bounds`);
* Proposition 7's account of the surrogate term R − R_surrogate (proofs/07, :mod:`qgeom.curvature.surrogate`);
* the loss recovery R(D, R) = (L(0) − L(λρ_D)) / (L(0) − L(ρ_R)) of the quantized receiver on
  the probe set, at λ = λ*_STE and at λ = 1.

Rows: ``seed, bits, receiver, donor, scope, metric, objective, quantity, value``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from qgeom import params as P
from qgeom.curvature.bounds import second_order_terms
from qgeom.curvature.geometry import form_quantities, gram_matrix
from qgeom.curvature.layer_geometry import layer_gram_matrices
from qgeom.curvature.probe import probe_warnings
from qgeom.curvature.surrogate import surrogate_point, surrogate_terms
from qgeom.curvature.operator import CurvatureOperator
from qgeom.data import Task, batches, probe_batches
from qgeom.experiment.config import RunConfig
from qgeom.quant import QuantSpec, ptq
from qgeom.train import logits


@dataclass
class GeometryInputs:
    """Everything the geometry of one receiver reads (the run's artifacts, loaded)."""

    seed: int
    bits: int
    name: str
    model: torch.nn.Module
    task: Task
    theta: P.Params  # θ_R: the ``fp`` expansion point
    theta_qat: P.Params  # θ_R,QAT: the ``ste`` expansion point
    rhos: dict[str, P.Params]  # donor → ρ_D on the backbone, every task of the run (R included)
    device: torch.device = torch.device("cpu")


class _Rows(list):
    """The table being built, with the receiver's key on every row."""

    def __init__(self, g: GeometryInputs) -> None:
        super().__init__()
        self.key = dict(seed=g.seed, bits=g.bits, receiver=g.name)

    def put(self, scope: str, metric: str, objective: str, donor: str, quantity: str, value) -> None:
        self.append(self.key | dict(donor=donor, scope=scope, metric=metric, objective=objective, quantity=quantity,
                                    value=float(value)))


def _grams(cfg: RunConfig, g: GeometryInputs, probe, scope: str, V: list[P.Params]):
    """K, roundoff floors and STE/FP gradients for the Euclidean metric and each of ``cfg.metrics``
    at each expansion point (GGN/Fisher Grams from JVPs alone, Hessian from products)."""
    spec = QuantSpec(g.bits)
    gram = {"euclidean": np.array([[P.inner(a, b) for b in V] for a in V])}
    floors = {"euclidean": np.zeros(len(V))}  # forms at roundoff level count as 0
    grads: dict[str, P.Params] = {}
    per_layer: dict[str, dict] = {}
    for metric in cfg.metrics:
        for objective, point in (("fp", g.theta), ("ste", g.theta_qat)):
            on_device = {k: v.to(g.device) for k, v in point.items()}
            op = CurvatureOperator(g.model, on_device, probe, metric=metric, objective=objective, scope=scope,
                                   spec=spec if objective == "ste" else None)
            K, floor, _ = gram_matrix(op, V)
            gram[f"{metric}_{objective}"], floors[f"{metric}_{objective}"] = K, np.array(floor)
            if metric == "layer":  # GPTQ's metric: each quantized Linear's own Gram too (per-layer cosines)
                per_layer[objective] = layer_gram_matrices(op, V)
            if objective not in grads:  # the gradient does not depend on the metric
                grads[objective] = {k: v.cpu() for k, v in op.gradient().items()}
    return gram, floors, grads, per_layer


def _layer_rows(rows: _Rows, scope: str, names: list[str], r: int, per_layer: dict) -> None:
    """cos_layer(ρ_D, ρ_R) of each quantized Linear ℓ alone (quantity ``cosine@<weight>``): the
    metric GPTQ minimises in, H_ℓ = X_ℓX_ℓᵀ/N, layer by layer; NaN where a form is at its floor."""
    for objective, layers in per_layer.items():
        for layer, (K, floor) in layers.items():
            q = form_quantities(K, floor)
            for i, d in enumerate(names):
                rows.put(scope, "layer", objective, d, f"cosine@{layer}", q.cosines[i, r])


def _form_rows(rows: _Rows, scope: str, names: list[str], r: int, gram: dict, floors: dict) -> None:
    for key, K in gram.items():
        metric, _, objective = key.partition("_")
        # a diagnostic of Proposition 1: K = VᵀMV is symmetric up to roundoff
        rows.put(scope, metric, objective, "", "K_asymmetry", np.abs(K - K.T).max() / max(np.abs(K).max(), 1e-300))
        q = form_quantities(K, floors[key])
        for i, d in enumerate(names):
            ok = q.ok[i] and q.ok[r]
            rows.put(scope, metric, objective, d, "inner", q.K_sym[i, r])
            rows.put(scope, metric, objective, d, "self", q.K_sym[i, i])
            rows.put(scope, metric, objective, d, "cosine", q.cosines[i, r])
            rows.put(scope, metric, objective, d, "cos2", q.cosines[i, r] ** 2 if ok else np.nan)
            rows.put(scope, metric, objective, d, "lam_star", q.scales[i, r])
            rows.put(scope, metric, objective, d, "indefinite", float(not ok))
        for j, ev in enumerate(q.eigenvalues):
            rows.put(scope, metric, objective, "", f"K_eig_{j}", ev)


def _bound_rows(cfg: RunConfig, g: GeometryInputs, rows: _Rows, probe, scope: str, V: list[P.Params], r: int,
                gram: dict, grads: dict) -> dict:
    """Proposition 2′'s terms for every metric's cos² at the STE surrogate g(δ) = L(θ̂ + δ − ρ_R),
    θ̂ = Q_b(θ_R,QAT): rows objective ``prop2``, quantity ``p2_<term>``. Costs N Hessian products
    and 2 + N·|metrics| probe losses per scope; the M products and the STE gradient are the
    ``ste`` ones of :func:`_grams` (the same as the fp ones at θ̂). Returns λ* per (metric, donor)."""
    theta_hat = {k: v.to(g.device) for k, v in ptq(g.theta_qat, QuantSpec(g.bits)).items()}
    op_h = CurvatureOperator(g.model, theta_hat, probe, metric="hessian", objective="fp", scope=scope)
    HV = [{k: v.cpu() for k, v in hb.items()} for hb in op_h.matmat(V)]  # N products, once
    KH = np.array([[P.inner(a, hb) for hb in HV] for a in V])
    KE = gram["euclidean"]
    sd = [P.inner(P.select(grads["ste"], scope), v) for v in V]
    g0 = op_h.loss({k: -v.to(g.device) for k, v in V[r].items()})
    gR = op_h.loss()
    lams = {}
    for metric in cfg.metrics:
        KM = KH if metric == "hessian" else gram[f"{metric}_ste"]
        for i, d in enumerate(g.rhos):
            ix = np.ix_([i, r], [i, r])
            t = second_order_terms(KM[ix], KH[ix], KE[ix], (sd[i], sd[r]))
            if np.isfinite(t["lam_star"]):
                delta = {k: (t["lam_star"] * V[i][k] - V[r][k]).to(g.device) for k in V[r]}
                t = second_order_terms(KM[ix], KH[ix], KE[ix], (sd[i], sd[r]), (g0, gR, op_h.loss(delta)))
            for q, val in t.items():
                rows.put(scope, metric, "prop2", d, f"p2_{q}", val)
            lams[metric, d] = t["lam_star"]
    return lams


def _surrogate_rows(g: GeometryInputs, rows: _Rows, probe, scope: str, V: list[P.Params], r: int,
                    lams: dict) -> None:
    """Proposition 7's terms (proofs/07, :mod:`qgeom.curvature.surrogate`) for every off-diagonal donor
    and metric at λ*: the true PTQ loss against the STE surrogate at x = 0, ρ_R, λ*ρ_D — rows objective
    ``surrogate``, quantity ``sur_<term>``. Costs 2 + (N − 1)·|metrics| points of two probe losses, one
    gradient and one Hessian product each (scope: every tensor)."""
    spec = QuantSpec(g.bits)
    dev = {k: v.to(g.device) for k, v in g.theta.items()}
    qat = {k: v.to(g.device) for k, v in g.theta_qat.items()}
    rho_R = {k: v.to(g.device) for k, v in V[r].items()}
    theta_hat = ptq(qat, spec)

    def point(x: P.Params) -> dict:
        return surrogate_point(g.model, probe, dev, qat, rho_R, x, spec, theta_hat)

    at0, atR = point({k: torch.zeros_like(v) for k, v in rho_R.items()}), point(rho_R)
    for (metric, d), lam in lams.items():
        i = list(g.rhos).index(d)
        if i == r or not np.isfinite(lam):
            continue
        t = surrogate_terms(at0, atR, point({k: lam * v.to(g.device) for k, v in V[i].items()}))
        for q, val in t.items():
            rows.put(scope, metric, "surrogate", d, f"sur_{q}", val)


def _recovery_rows(cfg: RunConfig, g: GeometryInputs, rows: _Rows, probe, scope: str, V: list[P.Params], r: int,
                   gram: dict, floors: dict) -> tuple[float, float]:
    """R(D, R) of the quantized receiver at λ*_STE of each metric and at λ = 1 ("unit"); returns
    L(Q(θ_R)) and L(Q(θ_R + ρ_R)) on the probe set."""
    spec = QuantSpec(g.bits)
    probe_x = torch.cat([x for x, _ in probe])
    probe_y = torch.cat([y for _, y in probe])

    def ptq_loss(th: P.Params) -> float:  # L(Q_b(θ)) on the probe set: what the patch is meant to lower
        out = logits(g.model, ptq(th, spec), probe_x, cfg.eval_batch)
        return float(torch.nn.functional.cross_entropy(out, probe_y))

    l0, lr = ptq_loss(g.theta), ptq_loss(P.patch(g.theta, V[r], 1.0))
    for key in [k for k in gram if k.endswith("_ste")] + ["unit"]:
        K = gram.get(key)
        for i, d in enumerate(g.rhos):
            lam = 1.0 if K is None else (K[i, r] / K[i, i] if K[i, i] > floors[key][i] else np.nan)
            rec = (l0 - ptq_loss(P.patch(g.theta, V[i], lam))) / (l0 - lr) if np.isfinite(lam) else np.nan
            rows.put(scope, key, "ptq_loss", d, "recovery", rec)
    return l0, lr


def measure_receiver(cfg: RunConfig, g: GeometryInputs, log: Callable[[str], None] = lambda msg: None
                     ) -> pd.DataFrame:
    """Geometry rows of receiver ``g`` on every scope of ``cfg`` (probe: ``cfg.probe_size``
    validation images drawn with the run's seed; a degenerate probe set is flagged in the table)."""
    probe = probe_batches(g.task.val, cfg.probe_size, cfg.probe_batch, seed=g.seed)
    warnings = probe_warnings(cfg.probe_size, len(g.task.val), g.task.num_classes)
    for w in warnings:
        log(f"warning ({g.name}): {w}")
    names, r = list(g.rhos), list(g.rhos).index(g.name)
    rows = _Rows(g)
    for scope in cfg.scopes:
        V = [P.select(g.rhos[d], scope) for d in names]
        gram, floors, grads, per_layer = _grams(cfg, g, probe, scope, V)
        _form_rows(rows, scope, names, r, gram, floors)
        _layer_rows(rows, scope, names, r, per_layer)
        for objective, grad in grads.items():
            for i, d in enumerate(names):
                rows.put(scope, "gradient", objective, d, "directional_gradient", P.inner(P.select(grad, scope), V[i]))
        lams = _bound_rows(cfg, g, rows, probe, scope, V, r, gram, grads)
        _surrogate_rows(g, rows, probe, scope, V, r, lams)
        l0, lr = _recovery_rows(cfg, g, rows, probe, scope, V, r, gram, floors)
        for w in warnings:  # recorded in the table: value 1 flags a degenerate probe set
            rows.put(scope, "probe", "", "", f"probe_warning: {w}", 1.0)
        rows.put(scope, "ptq_loss", "ptq_loss", "", "L0", l0)
        rows.put(scope, "ptq_loss", "ptq_loss", "", "L_own_qat_vector", lr)
    return pd.DataFrame(list(rows))


def task_dissimilarity(theta0: P.Params, models: dict[str, torch.nn.Module], tasks: dict[str, Task],
                       batch: int) -> pd.DataFrame:
    """1 − cos of task prototypes: the mean θ_0 feature (pre-head) of each task's val images;
    ``models``: each task's architecture (a template whose head is kept)."""
    names, protos = list(tasks), []
    for t in names:
        m = models[t]
        th = {k: v for k, v in theta0.items() if not P.is_head(k)}
        th.update({k: v for k, v in P.from_model(m).items() if P.is_head(k)})
        P.load_into(m, th)
        total, n = 0.0, 0
        with torch.inference_mode():
            for x, _ in batches(tasks[t].val, batch):
                total = total + m.forward_head(m.forward_features(x), pre_logits=True).double().sum(0)
                n += len(x)
        protos.append(total / n)
    rows = []
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            cos = float(torch.nn.functional.cosine_similarity(protos[i], protos[j], dim=0))
            rows.append(dict(donor=a, receiver=b, dissimilarity=1 - cos))
    return pd.DataFrame(rows)

"""Numerical invariance checks of ViT symmetries, level by level (DESIGN.md §2).

For a model, parameters θ, two vectors (u, v) = (ρ_D, ρ_R), a probe set and symmetry elements
g (:mod:`qgeom.symmetry`), :func:`check_invariance` measures:

* function    max|f(gθ, x) − f(θ, x)| / max|f(θ, x)| and |L(gθ) − L(θ)| / |L(θ)|;
* covariance  ‖∇L(gθ) − g⁻ᵀ∇L(θ)‖ / ‖∇L(gθ)‖ and, for M ∈ {G, H},
              max over w ∈ {u, v} of ‖M(gθ)(g w) − g⁻ᵀ M(θ) w‖ / ‖M(gθ)(g w)‖;
* geometry    :func:`qgeom.curvature.geometry.geometry_of_pair` at θ for (u, v) against the same at gθ
              for (gu, gv): λ*_M = ⟨u, v⟩_M / ⟨u, u⟩_M, cos_M(u, v) and the directional
              gradients wᵀ∇L are invariant under every function-level symmetry (λ*, cos_M
              are NaN where the forms are indefinite: reported, not checked; the forms
              ⟨u,u⟩_M, ⟨u,v⟩_M, ⟨v,v⟩_M themselves are checked either way); the Euclidean
              cosine only for orthogonal g;
* quantizer   ‖Q_b(gθ) − g Q_b(θ)‖ / ‖g Q_b(θ)‖ on the quantized tensors, and the post-PTQ
              loss and accuracy on the probe set at θ and at gθ;
* optimizer   one AdamW and one SGD step from gθ (gradient ∇L(gθ)) against g applied to the
              step from θ: ‖Δ(gθ) − gΔ(θ)‖ / ‖gΔ(θ)‖;
* pipeline    a short real QAT run (:func:`qgeom.train.fit`: AdamW, fake-quantized Linear
              layers, same seed and batches) from gθ against g applied to the run from θ:
              ‖ρ(gθ) − gρ(θ)‖ / ‖gρ(θ)‖.

What each element should satisfy comes from :meth:`qgeom.symmetry.Symmetry.expectations`.
Every row states the expectation (``invariant``, ``covariant``, ``not invariant`` — a
violation must be measured — or ``reported``: informational) and a tolerance for the dtype,
multiplied by the element's condition number for the levels where roundoff is amplified by g.
Products are taken by :class:`qgeom.curvature.operator.CurvatureOperator` over the vectors' keys (g never
mixes tensors, so every identity restricts to a scope). The quantizer level is evaluated in
float64 whatever the dtype: at float32 precision a weight within 1e-7 of a rounding tie can
flip grid point, which is rounding, not a broken symmetry.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from qgeom.curvature.operator import CurvatureOperator
from qgeom.curvature.geometry import geometry_of_pair
from qgeom.params import Params, norm, select, sub
from qgeom.quant import QuantSpec, ptq
from qgeom.symmetry import Symmetry

LEVELS = ("function", "covariance", "geometry", "quantizer", "optimizer", "pipeline")
EXPECTATIONS = ("invariant", "covariant", "not invariant", "reported")
Batch = tuple[Tensor, Tensor]


@dataclass(frozen=True)
class Tolerances:
    """Relative tolerances per level. float64: roundoff ~1e-15 per operation, so 1e-10 on the
    function leaves a wide margin; float32: ~1e-7 per operation, amplified through the network."""

    function: float
    covariance: float
    geometry: float
    euclidean: float
    quantizer: float
    sgd: float
    adamw: float
    pipeline: float

    @classmethod
    def for_dtype(cls, dtype: torch.dtype) -> "Tolerances":
        """Measured margins (micro preset and tiny models, random and trained weights): float64
        errors stay below ~1e-13; float32 errors below ~1e-6 on the function and products, ~1e-4
        after a short QAT run, ~1e-9 for one AdamW step on the coordinates with resolved gradients
        (see :func:`_resolved`); the quantizer level is always float64."""
        if dtype == torch.float64:
            return cls(function=1e-10, covariance=1e-8, geometry=1e-8, euclidean=1e-12, quantizer=1e-10,
                       sgd=1e-10, adamw=1e-9, pipeline=1e-7)
        if dtype == torch.float32:
            return cls(function=1e-5, covariance=1e-4, geometry=1e-4, euclidean=1e-7, quantizer=1e-10,
                       sgd=1e-5, adamw=1e-5, pipeline=1e-3)
        raise ValueError(f"invariance checks support float32 and float64, got {dtype}")


class InvarianceReport:
    """Rows (dicts): symmetry, level, quantity, expected, measured, tolerance, agrees, before,
    after, note. ``agrees`` is None for ``reported`` rows."""

    COLUMNS = ("symmetry", "level", "quantity", "expected", "measured", "tolerance", "agrees", "before", "after", "note")

    def __init__(self, rows: Iterable[dict], meta: Mapping | None = None) -> None:
        self.rows, self.meta = list(rows), dict(meta or {})

    @property
    def frame(self):
        import pandas as pd

        return pd.DataFrame(self.rows, columns=list(self.COLUMNS))

    def failures(self) -> list[dict]:
        """Rows whose expected invariance/covariance was not measured."""
        return [r for r in self.rows if r["expected"] in ("invariant", "covariant") and not r["agrees"]]

    def surprises(self) -> list[dict]:
        """Rows expected to break that measured no violation (a too-weak element or a wrong expectation)."""
        return [r for r in self.rows if r["expected"] == "not invariant" and not r["agrees"]]

    @property
    def ok(self) -> bool:
        return not self.failures()

    def write(self, out: str | Path) -> tuple[Path, Path]:
        """Write ``<out>.csv`` and ``<out>.json`` (``out`` may end in .csv/.json)."""
        out = Path(out)
        stem = out.with_suffix("") if out.suffix in (".csv", ".json") else out
        stem.parent.mkdir(parents=True, exist_ok=True)
        csv, js = stem.with_suffix(".csv"), stem.with_suffix(".json")
        self.frame.to_csv(csv, index=False)
        rows = [{k: _jsonable(v) for k, v in r.items()} for r in self.rows]
        js.write_text(json.dumps({"meta": self.meta, "rows": rows, "ok": self.ok}, indent=1, default=str, allow_nan=False))
        return csv, js


def _jsonable(x):
    """NaN → null (strict JSON)."""
    return None if isinstance(x, float) and math.isnan(x) else x


def _row(sym: str, level: str, quantity: str, expected: str, measured: float, tol: float,
         before: float = math.nan, after: float = math.nan, note: str = "") -> dict:
    if expected not in EXPECTATIONS:
        raise ValueError(expected)
    agrees = None if expected == "reported" else bool(measured <= tol) if expected != "not invariant" else bool(measured > tol)
    return dict(symmetry=sym, level=level, quantity=quantity, expected=expected, measured=float(measured),
                tolerance=float(tol), agrees=agrees, before=float(before), after=float(after), note=note)


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-300)


def _rel_dist(a: Params, b: Params) -> float:
    """‖a − b‖ / max(‖a‖, ‖b‖) (float64)."""
    return norm(sub(a, b)) / max(norm(a), norm(b), 1e-300)


def _resolved(grad: Params) -> tuple[dict[str, Tensor], int]:
    """Masks of the coordinates whose gradient is resolvable in its dtype, |∇_i| > 2¹⁰·u·max|∇|.

    AdamW's first step is ∇_i / (|∇_i| + ε): on a coordinate whose exact gradient is 0 (every
    key bias: softmax ignores a shift shared by all keys) it turns roundoff into a step of random
    sign, so the optimizer level compares steps on the resolved coordinates only. In float64
    this leaves out only such exact zeros.
    """
    top = max(float(t.abs().max()) for t in grad.values())
    masks = {k: t.abs() > 1024 * torch.finfo(t.dtype).eps * top for k, t in grad.items()}
    return masks, sum(int((~m).sum()) for m in masks.values())


def _mask(p: Params, masks: Mapping[str, Tensor]) -> Params:
    return {k: t * masks[k].to(t.dtype) for k, t in p.items()}


def _expect(flag: bool) -> str:
    return "invariant" if flag else "not invariant"


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
    from qgeom.train import make_optimizer

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
    if {"covariance", "geometry", "optimizer"} & set(levels):
        ops = {m: CurvatureOperator(net, theta, batches, metric=m, scope=keys) for m in metrics}
        out["grad"] = next(iter(ops.values())).gradient() if ops else CurvatureOperator(net, theta, batches, scope=keys).gradient()
        if {"covariance", "geometry"} & set(levels):
            out["prod"] = {m: op.matmat([u, v]) for m, op in ops.items()}
            out["pair"] = {m: geometry_of_pair(_Reuse(op, [u, v], out["prod"][m], out["grad"]), u, v) for m, op in ops.items()}
    if "quantizer" in levels:
        q = ptq(theta64, spec)
        out["Q"] = select(q, "quantized")
        z, out["ptq_loss"], out["ptq_acc"] = evaluate(net, {k: t.to(theta[k].dtype) for k, t in q.items()}, batches)
        out["acc_tol"] = 0.0 if z.dtype == torch.float64 else 1.0 / len(z)
    if "optimizer" in levels:
        out["adamw"] = optimizer_displacement(theta, out["grad"], "adamw")
        out["sgd"] = optimizer_displacement(theta, out["grad"], "sgd", lr=1e-2)
    if pipeline is not None:
        from qgeom.train import fit

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
    :func:`random_vectors` over all tensors. pipeline_for: the element kinds to run the QAT
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
        side = _side(net, g(theta), g(theta64), g(u), g(v), batches, spec, metrics, levels, pipe_g)
        rows += [r for r in _compare(g, base, side, theta, spec, tol, pipe_g is not None) if r["level"] in levels]
    meta = dict(dtype=str(dtype).removeprefix("torch."), spec=spec.to_dict(), metrics=list(metrics), levels=list(levels),
                n_samples=sum(len(y) for _, y in batches), seed=seed, pipeline_steps=pipeline_steps,
                vector_keys=len(u), vectors="given" if vectors is not None else "random")
    return InvarianceReport(rows, meta)


def _compare(g: Symmetry, a: dict, b: dict, theta: Params, spec: QuantSpec, tol: Tolerances, pipeline: bool) -> list[dict]:
    """Rows comparing the measurements at θ (``a``) and at gθ (``b``)."""
    exp, k, name, rows = g.expectations(spec), g.condition_number(), g.kind, []
    note = f"κ(g) = {k:.3g}" if k > 1 + 1e-9 else ""
    if "logits" in a:
        z0, z1 = a["logits"].double(), b["logits"].double()
        rows += [_row(name, "function", "max|f(gθ)−f(θ)| / max|f(θ)|", "invariant",
                      float((z1 - z0).abs().max() / z0.abs().max().clamp_min(1e-300)), tol.function * k, note=note),
                 _row(name, "function", "loss L", "invariant", _rel(a["loss"], b["loss"]), tol.function * k, a["loss"], b["loss"])]
    if "prod" in a:
        rows.append(_row(name, "covariance", "‖∇L(gθ) − g⁻ᵀ∇L(θ)‖ rel", "covariant",
                         _rel_dist(b["grad"], g.act_covector(a["grad"])), tol.covariance * k))
        for m in a["prod"]:
            err = max(_rel_dist(Mg, g.act_covector(M)) for Mg, M in zip(b["prod"][m], a["prod"][m]))
            rows.append(_row(name, "covariance", f"‖M(gθ)gw − g⁻ᵀM(θ)w‖ rel, M={m}", "covariant", err, tol.covariance * k))
    if "pair" in a:
        for m in a["pair"]:
            pa, pb = a["pair"][m], b["pair"][m]
            for q, x0, x1 in ((f"λ*_{m}", pa.optimal_scale, pb.optimal_scale), (f"cos_{m}", pa.metric_cosine, pb.metric_cosine)):
                defined = math.isfinite(x0) and math.isfinite(x1)
                rows.append(_row(name, "geometry", q, "invariant" if defined else "reported",
                                 _rel(x0, x1) if defined else math.nan, tol.geometry * k, x0, x1, pa.message or pb.message))
            scale = max(abs(f) for f in pa.forms.values())
            err = max(abs(pa.forms[f] - pb.forms[f]) for f in pa.forms) / max(scale, 1e-300)
            rows.append(_row(name, "geometry", f"forms ⟨w,w'⟩_{m}", "invariant", err, tol.geometry * k,
                             note="⟨gu, M(gθ)gv⟩ = ⟨u, M(θ)v⟩ (DD, DR, RR; rel. to the largest), definite or not"))
        pa, pb = next(iter(a["pair"].values())), next(iter(b["pair"].values()))
        for w in ("rho_D", "rho_R"):
            d0, d1 = pa.directional_gradients[w], pb.directional_gradients[w]
            rows.append(_row(name, "geometry", f"directional gradient {w}ᵀ∇L", "invariant", _rel(d0, d1),
                             tol.geometry * k, d0, d1, "⟨g⁻ᵀ∇L, gρ⟩ = ⟨∇L, ρ⟩"))
        rows.append(_row(name, "geometry", "Euclidean cosine", _expect(exp["euclidean"]),
                         abs(pb.euclidean_cosine - pa.euclidean_cosine), tol.euclidean * k, pa.euclidean_cosine,
                         pb.euclidean_cosine, "invariant only for orthogonal g"))
    if "Q" in a:
        th64 = {n: t.double() for n, t in theta.items()}
        gQ = select(g({**th64, **a["Q"]}), "quantized")
        q = exp["quantizer"]
        rows += [_row(name, "quantizer", "‖Q(gθ) − gQ(θ)‖ / ‖gQ(θ)‖ (float64)", _expect(q), _rel_dist(b["Q"], gQ), tol.quantizer * k),
                 _row(name, "quantizer", "post-PTQ loss", _expect(q), _rel(a["ptq_loss"], b["ptq_loss"]),
                      tol.function * k, a["ptq_loss"], b["ptq_loss"]),
                 _row(name, "quantizer", "post-PTQ accuracy", "invariant" if q else "reported",
                      abs(a["ptq_acc"] - b["ptq_acc"]), a["acc_tol"], a["ptq_acc"], b["ptq_acc"],
                      "float32: one near-tie argmax may flip" if a["acc_tol"] else "")]
    if "adamw" in a:
        keep, dropped = _resolved(b["grad"])
        rows += [_row(name, "optimizer", "AdamW step ‖Δ(gθ) − gΔ(θ)‖ rel", _expect(exp["optimizer_adamw"]),
                      _rel_dist(_mask(b["adamw"], keep), _mask(g(a["adamw"]), keep)), tol.adamw * k,
                      note=f"commutes for signed permutations; {dropped} coordinates with unresolved ∇ ≈ 0 left out"),
                 _row(name, "optimizer", "SGD step ‖Δ(gθ) − gΔ(θ)‖ rel", _expect(exp["optimizer_sgd"]),
                      _rel_dist(b["sgd"], g(a["sgd"])), tol.sgd * k, note="commutes for orthogonal g")]
    if pipeline:
        rows.append(_row(name, "pipeline", "QAT ‖ρ(gθ) − gρ(θ)‖ rel", _expect(exp["pipeline"]),
                         _rel_dist(b["rho"], g(a["rho"])), tol.pipeline * k, note="AdamW + fake-quant QAT, same seed and batches"))
    return rows

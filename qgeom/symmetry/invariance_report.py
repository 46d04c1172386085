"""The rows of an invariance check: the levels, each row's expectation and tolerance, the
report, and the comparison of what was measured at θ and at gθ (:func:`compare`).

:func:`qgeom.symmetry.invariance.check_invariance` measures (models, curvature products, QAT
runs); this module turns two such measurements into rows and needs no model. A row states the
expectation (``invariant``, ``covariant``, ``not invariant`` — a violation must be measured — or
``reported``: informational) and a tolerance for the dtype, multiplied by the element's
condition number for the levels where roundoff is amplified by g; then whether the identity
``holds`` (measured ≤ tolerance) and whether that is ``as_expected`` (:class:`InvarianceReport`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import Tensor

from qgeom.io import write_json
from qgeom.params import Params, norm, select, sub
from qgeom.quant import QuantSpec
from qgeom.symmetry import Symmetry

LEVELS = ("function", "covariance", "geometry", "quantizer", "optimizer", "pipeline")
EXPECTATIONS = ("invariant", "covariant", "not invariant", "reported")


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
    """Rows (dicts): symmetry, level, quantity, expected, measured, tolerance, holds,
    as_expected, before, after, note.

    * ``expected``: ``invariant`` / ``covariant`` (the identity should hold), ``not invariant``
      (a violation should be measured) or ``reported`` (informational);
    * ``measured``: the relative error of the identity (≥ 0; NaN where it is undefined);
    * ``holds``: whether the identity held, ``measured ≤ tolerance`` (None where NaN) — the same
      question on every row, whatever was expected;
    * ``as_expected``: whether ``holds`` is what ``expected`` says (True on a ``not invariant``
      row means the violation was measured; False wherever ``measured`` is NaN); None on
      ``reported`` rows.
    """

    COLUMNS = ("symmetry", "level", "quantity", "expected", "measured", "tolerance", "holds", "as_expected", "before",
               "after", "note")

    def __init__(self, rows: Iterable[dict], meta: Mapping | None = None) -> None:
        self.rows, self.meta = list(rows), dict(meta or {})

    @property
    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=list(self.COLUMNS))

    def failures(self) -> list[dict]:
        """Rows whose expected invariance/covariance did not hold."""
        return [r for r in self.rows if r["expected"] in ("invariant", "covariant") and r["as_expected"] is False]

    def surprises(self) -> list[dict]:
        """Rows expected to break that measured no violation (a too-weak element or a wrong expectation)."""
        return [r for r in self.rows if r["expected"] == "not invariant" and r["as_expected"] is False]

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
        write_json(js, {"meta": self.meta, "rows": self.rows, "ok": self.ok}, indent=1)  # NaN → null
        return csv, js


def _row(sym: str, level: str, quantity: str, expected: str, measured: float, tol: float,
         before: float = math.nan, after: float = math.nan, note: str = "") -> dict:
    if expected not in EXPECTATIONS:
        raise ValueError(expected)
    holds = None if math.isnan(measured) else bool(measured <= tol)
    # NaN (holds None) on a checked row is never as expected: an identity that could not be measured did not hold
    as_expected = None if expected == "reported" else holds is (expected != "not invariant")
    return dict(symmetry=sym, level=level, quantity=quantity, expected=expected, measured=float(measured),
                tolerance=float(tol), holds=holds, as_expected=as_expected, before=float(before), after=float(after),
                note=note)


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


def _metric_rows(name: str, exp: dict, a: dict, b: dict, tol: float) -> list[dict]:
    """λ*, cos and the forms of each metric at θ and gθ: invariant for the loss's metrics (any
    function-level g), for the layer metric only as ``exp["layer_metric"]`` says (see
    :meth:`qgeom.symmetry.Symmetry.preserves_layer_metric`)."""
    rows = []
    for m in a["pair"]:
        pa, pb = a["pair"][m], b["pair"][m]
        kept = m != "layer" or exp["layer_metric"]
        for q, x0, x1 in ((f"λ*_{m}", pa.optimal_scale, pb.optimal_scale), (f"cos_{m}", pa.metric_cosine, pb.metric_cosine)):
            defined = math.isfinite(x0) and math.isfinite(x1)
            rows.append(_row(name, "geometry", q, _expect(kept) if defined else "reported",
                             _rel(x0, x1) if defined else math.nan, tol, x0, x1, pa.message or pb.message))
        scale = max(abs(f) for f in pa.forms.values())
        err = max(abs(pa.forms[f] - pb.forms[f]) for f in pa.forms) / max(scale, 1e-300)
        rows.append(_row(name, "geometry", f"forms ⟨w,w'⟩_{m}", _expect(kept), err, tol,
                         note="⟨gu, M(gθ)gv⟩ = ⟨u, M(θ)v⟩ (DD, DR, RR; rel. to the largest), definite or not"))
    return rows


def _per_layer_row(g: Symmetry, a: dict, b: dict, tol: float) -> dict:
    """The largest change of one layer's own cosine in the layer metric (layers where it is defined)."""
    both = [w for w in a["layer_cos"] if math.isfinite(a["layer_cos"][w]) and math.isfinite(b["layer_cos"][w])]
    err = max((abs(a["layer_cos"][w] - b["layer_cos"][w]) for w in both), default=math.nan)
    expected = _expect(g.preserves_layer_metric(per_layer=True)) if both else "reported"
    return _row(g.kind, "geometry", "per-layer cos_layer, max |change|", expected, err, tol,
                note=f"{len(both)} of {len(a['layer_cos'])} layers defined; invariant where every row map is c·orthogonal")


def compare(g: Symmetry, a: dict, b: dict, theta: Params, spec: QuantSpec, tol: Tolerances, pipeline: bool) -> list[dict]:
    """Rows comparing the measurements at θ (``a``) and at gθ (``b``): what
    :func:`qgeom.symmetry.invariance.check_invariance` measured at one point, a dict with the keys
    of the levels measured (logits, loss; grad, prod, pair; Q, ptq_loss, ptq_acc, acc_tol; adamw,
    sgd; rho). ``pipeline``: whether the QAT run was measured for ``g``."""
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
            kept = "covariant" if m != "layer" or exp["layer_metric"] else "not invariant"
            rows.append(_row(name, "covariance", f"‖M(gθ)gw − g⁻ᵀM(θ)w‖ rel, M={m}", kept, err, tol.covariance * k))
    if "pair" in a:
        rows += _metric_rows(name, exp, a, b, tol.geometry * k)
        if "layer_cos" in a:
            rows.append(_per_layer_row(g, a, b, tol.geometry * k))
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
        gQ = select(g.act_point({**th64, **a["Q"]}), "quantized")
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
                      _rel_dist(_mask(b["adamw"], keep), _mask(g.act_tangent(a["adamw"]), keep)), tol.adamw * k,
                      note=f"commutes for signed permutations; {dropped} coordinates with unresolved ∇ ≈ 0 left out"),
                 _row(name, "optimizer", "SGD step ‖Δ(gθ) − gΔ(θ)‖ rel", _expect(exp["optimizer_sgd"]),
                      _rel_dist(b["sgd"], g.act_tangent(a["sgd"])), tol.sgd * k, note="commutes for orthogonal g")]
    if pipeline:
        rows.append(_row(name, "pipeline", "QAT ‖ρ(gθ) − gρ(θ)‖ rel", _expect(exp["pipeline"]),
                         _rel_dist(b["rho"], g.act_tangent(a["rho"])), tol.pipeline * k, note="AdamW + fake-quant QAT, same seed and batches"))
    return rows

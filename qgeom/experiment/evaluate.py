"""The evaluation protocol of one receiver: accuracy rows, every input passed in.

For receiver R (fine-tuned θ_R, its own QAT point, every donor's ρ_D on the backbone) the rows
are the baselines, the λ grid of every donor's patch θ_R + λρ_D and of the multi-donor patch (the
mean of the other donors' vectors), the random control and the configured stronger controls, post
PTQ (``ptq_top1``) and in full precision (``fp_top1``).

Where the protocol reads each split: λ is chosen per (donor, scope) on *validation* post-PTQ Top-1
over the grid (:func:`qgeom.experiment.analysis.lambda_on_val`); *test* is evaluated only where
the analysis reads it — at λ = 1 (PTQ and FP) and at the chosen λ (PTQ) — and for the baselines
and the controls (test only: no λ is chosen for them). Every set is quantized once, and all sets
of a split share one pass over its batches (:func:`qgeom.evaluation.top1_many`).

Stronger quantizers (config ``ptq``, issue 24): RTN stays the protocol's quantizer — the λ grid on
validation and the controls, with no receiver data. Each other quantizer ``m`` (GPTQ, AWQ,
:mod:`qgeom.quantizers`; calibrated on ``calib_size`` of the receiver's own training images, so
baselines, not zero-shot) adds test rows with metric ``m_top1``: the fine-tuned and QAT receivers,
and every patch at λ = 1 and at the λ chosen on validation (under RTN), each quantized by ``m``.
With ``act_bits`` every quantized set also has the inputs of its quantized Linears fake-quantized
(:mod:`qgeom.activations`; ranges calibrated per set on the same images); FP rows stay FP.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from qgeom import params as P
from qgeom.activations import ActivationSpec, calibrate, quantized_inputs
from qgeom.data import Split, Task, batches
from qgeom.evaluation import top1_many
from qgeom.experiment.analysis import lambda_on_val
from qgeom.experiment.config import RunConfig
from qgeom.experiment.controls import control, random_like
from qgeom.experiment.decomposition import grid_only, grid_statistics, values_only
from qgeom.quant import QuantSpec, ptq
from qgeom.quantizers import quantize

EVAL_COLUMNS = ["seed", "bits", "receiver", "donor", "method", "scope", "lam", "draw", "split", "metric", "value"]

Job = tuple[dict, P.Params]  # (row fields including ``metric``, the parameters to evaluate)


@dataclass
class Receiver:
    """Everything the evaluation of one receiver reads (the run's artifacts, loaded)."""

    seed: int
    bits: int
    name: str
    model: torch.nn.Module
    task: Task
    theta: P.Params  # θ_R, fine-tuned
    theta_qat: P.Params  # θ_R,QAT
    theta0: P.Params  # the run's θ_0 (for the pretrained-backbone baseline)
    rhos: dict[str, P.Params]  # donor → ρ_D on the backbone, every task of the run (R included)
    other_rhos: dict[str, P.Params] = field(default_factory=dict)  # the other basin's ρ_D (other_basin control)
    device: torch.device = torch.device("cpu")
    calib: list = field(default_factory=list)  # calibration batches (receiver train images): gptq, awq, act_bits
    act_bits: int = 0  # activation bits of every quantized set (0: weights only)


#: The accuracy metrics of a quantized set and the quantizer that makes it (``ptq_top1``: RTN, the protocol's).
QUANTIZED_METRICS = {"ptq_top1": "rtn", "gptq_top1": "gptq", "awq_top1": "awq"}


def quantizer_metric(method: str) -> str:
    """The accuracy metric of the sets quantized by ``method`` (rtn → ``ptq_top1``)."""
    return "ptq_top1" if method == "rtn" else f"{method}_top1"


def calibration_batches(split, n: int, batch: int, device: torch.device) -> list:
    """The first ``n`` images of ``split`` (in order) as batches on ``device``: the calibration set."""
    out, seen = [], 0
    for x, y in batches(split, min(batch, n)):
        x, y = x[: n - seen], y[: n - seen]
        out.append((x.to(device), y.to(device)))
        seen += len(y)
        if seen >= n:
            break
    return out


def job(th: P.Params, method: str, metric: str = "ptq_top1", donor: str = "", scope: str = "", lam: float = np.nan,
        draw: int = -1, quantized: bool = False) -> Job:
    """One set to evaluate; ``quantized``: already on a quantization grid (used as it is)."""
    row = dict(donor=donor, method=method, scope=scope, lam=lam, draw=draw, metric=metric)
    return (row | {"quantized": True} if quantized else row), th


def eval_batches(split, batch: int, device: torch.device):
    """A split's batches for :func:`top1_many`: an in-memory split moved to the device once; a
    streamed split as a callable that re-opens its loader (it is never held whole)."""
    if isinstance(split, Split):
        return [(x.to(device), y.to(device)) for x, y in batches(split, batch)]
    return lambda: batches(split, batch)


def quantized_set(r: Receiver, row: dict, th: P.Params, spec: QuantSpec) -> P.Params:
    """The set a job evaluates: quantized by its metric's quantizer (:data:`QUANTIZED_METRICS`); an FP
    metric's set, or one already on a quantization grid (a decomposition hybrid), as it is."""
    method = QUANTIZED_METRICS.get(row["metric"])
    if row.pop("quantized", False) or method is None:
        return th
    if method == "rtn":  # no data: the zero-shot protocol; ptq itself, without quantize's per-layer statistics
        return ptq(th, spec)
    return quantize(method, th, spec, model=r.model, batches=r.calib).params


def _top1(r: Receiver, rows: list[dict], sets: list[P.Params], data) -> list[float]:
    """Top-1 of every set; with ``r.act_bits`` each quantized set is evaluated with its own
    calibrated activation quantizers (one pass per set), the FP sets together."""
    if not r.act_bits:
        return [float(a) for a in top1_many(r.model, sets, data, device=r.device)]
    act = ActivationSpec(r.act_bits)
    out = [float("nan")] * len(sets)
    fp = [i for i, row in enumerate(rows) if row["metric"] not in QUANTIZED_METRICS]
    for i, a in zip(fp, top1_many(r.model, [sets[i] for i in fp], data, device=r.device) if fp else []):
        out[i] = float(a)
    for i in sorted(set(range(len(sets))) - set(fp)):
        with quantized_inputs(r.model, calibrate(r.model, sets[i], r.calib), act) as model:
            out[i] = float(top1_many(model, [sets[i]], data, device=r.device)[0])
    return out


def evaluate_jobs(r: Receiver, jobs: list[Job], data, spec: QuantSpec, split: str) -> list[dict]:
    """Rows of ``jobs`` on one split, each set quantized per its metric (:func:`quantized_set`)."""
    rows = [row for row, _ in jobs]
    sets = [quantized_set(r, row, th, spec) for row, th in jobs]
    acc = _top1(r, rows, sets, data)
    key = dict(seed=r.seed, bits=r.bits, receiver=r.name)
    return [key | row | dict(split=split, value=a) for row, a in zip(rows, acc)]


def _grid(cfg: RunConfig, r: Receiver) -> tuple[list[tuple], Callable[[str, str, str], P.Params]]:
    """The (method, donor, scope) grid of patches and the vector of each: ρ_D, or for
    ``multi_donor`` the mean of the other donors' vectors."""
    names = list(r.rhos)
    others = [d for d in names if d != r.name]
    vecs = {scope: {d: P.select(r.rhos[d], scope) for d in names} for scope in cfg.scopes}
    means = {scope: P.lincomb([vecs[scope][d] for d in others], [1.0 / len(others)] * len(others))
             for scope in cfg.scopes}

    def vector(method: str, donor: str, scope: str) -> P.Params:
        return means[scope] if method == "multi_donor" else vecs[scope][donor]

    grid = [(m, d, scope) for scope in cfg.scopes for m, d in
            [("patch", d) for d in names] + [("multi_donor", "mean(others)")]]
    return grid, vector


def validation_jobs(cfg: RunConfig, r: Receiver, grid: list[tuple], vector: Callable) -> list[Job]:
    """The baselines and the whole λ grid (post-PTQ), to choose λ (``grid``, ``vector``: :func:`_grid`)."""
    lams = sorted(set(cfg.lambdas) | {1.0})
    out = [job(r.theta, "baseline"), job(r.theta_qat, "qat")]
    out += [job(P.patch(r.theta, vector(m, d, scope), lam), m, donor=d, scope=scope, lam=lam)
            for m, d, scope in grid for lam in lams]
    return out


def test_jobs(cfg: RunConfig, r: Receiver, lam_val: dict, grid: list[tuple], vector: Callable
              ) -> tuple[list[Job], list[dict]]:
    """Baselines (PTQ and FP), the grid at λ = 1 (PTQ, FP) and at the chosen λ (PTQ), and the
    controls; also the grid statistics rows of the decomposition (computed, not evaluated)."""
    pretrained = {k: (v if P.is_head(k) else r.theta0[k]) for k, v in r.theta.items()}
    out = [job(th, method, metric) for th, method in ((r.theta, "baseline"), (r.theta_qat, "qat"),
                                                       (pretrained, "pretrained_backbone"))
           for metric in ("ptq_top1", "fp_top1")]
    for m, d, scope in grid:
        at_one = P.patch(r.theta, vector(m, d, scope), 1.0)
        out += [job(at_one, m, metric, d, scope, 1.0) for metric in ("ptq_top1", "fp_top1")]
        lv = float(lam_val[(m, d, scope)])
        if lv != 1.0:
            out.append(job(P.patch(r.theta, vector(m, d, scope), lv), m, donor=d, scope=scope, lam=lv))
    out += strong_quantizer_jobs(cfg, r, lam_val, grid, vector)
    stats: list[dict] = []
    for scope in cfg.scopes:
        for d in [d for d in r.rhos if d != r.name]:
            jobs, rows = control_jobs(cfg, r, d, scope, vector("patch", d, scope))
            out += jobs
            stats += rows
    return out, stats


def strong_quantizer_jobs(cfg: RunConfig, r: Receiver, lam_val: dict, grid: list[tuple], vector: Callable
                          ) -> list[Job]:
    """For every quantizer of ``cfg.ptq`` but RTN (metric ``m_top1``, test split): the fine-tuned and
    QAT receivers, and every patch of the grid at λ = 1 and at its λ chosen on validation (RTN's)."""
    out = []
    for metric in [quantizer_metric(m) for m in cfg.ptq if m != "rtn"]:
        out += [job(r.theta, "baseline", metric), job(r.theta_qat, "qat", metric)]
        for m, d, scope in grid:
            for lam in sorted({1.0, float(lam_val[(m, d, scope)])}):
                out.append(job(P.patch(r.theta, vector(m, d, scope), lam), m, metric, d, scope, lam))
    return out


def _generator(*key) -> torch.Generator:
    """A generator seeded by the cell it serves, so every control draw is reproducible alone."""
    return torch.Generator().manual_seed(zlib.crc32("/".join(map(str, key)).encode()))


def control_jobs(cfg: RunConfig, r: Receiver, donor: str, scope: str, vec: P.Params) -> tuple[list[Job], list[dict]]:
    """Patches at λ = 1 with the controls of ρ_D (:mod:`qgeom.experiment.controls`): the
    norm-matched ``random`` direction (``random_draws`` draws), then the configured ones —
    ``random_rows`` and ``row_permuted`` (``random_draws`` draws each), ``negated``, and
    ``other_basin`` (the donor's ρ from the θ_0 pretrained with another seed) — then, with
    ``decomposition``, the grid-only and values-only hybrids and their grid statistics."""
    g = _generator(r.seed, r.bits, donor, r.name, scope)
    out = [job(P.patch(r.theta, random_like(vec, g), 1.0), "random", donor=donor, scope=scope, lam=1.0, draw=draw)
           for draw in range(cfg.random_draws)]
    for name in cfg.controls:
        if name == "other_basin":
            other = P.select(r.other_rhos[donor], scope)
            out.append(job(P.patch(r.theta, other, 1.0), name, donor=donor, scope=scope, lam=1.0))
            continue
        g = _generator(r.seed, r.bits, donor, r.name, scope, name)
        for draw in range(1 if name == "negated" else cfg.random_draws):
            out.append(job(P.patch(r.theta, control(name, vec, g), 1.0), name, donor=donor, scope=scope, lam=1.0,
                           draw=draw))
    if not cfg.decomposition:  # what the patch does through the grid, and through the values
        return out, []
    spec, patched = QuantSpec(r.bits), P.patch(r.theta, vec, 1.0)
    out += [job(grid_only(r.theta, patched, spec), "grid_only", donor=donor, scope=scope, lam=1.0, quantized=True),
            job(values_only(r.theta, patched, spec), "values_only", donor=donor, scope=scope, lam=1.0, quantized=True)]
    rows = [dict(seed=r.seed, bits=r.bits, receiver=r.name, donor=donor, method="patch", scope=scope, lam=1.0,
                 draw=-1, split="test", metric=name, value=v)
            for name, v in grid_statistics(r.theta, patched, spec).items()]
    return out, rows


def evaluate_receiver(cfg: RunConfig, r: Receiver) -> pd.DataFrame:
    """Accuracy rows of receiver ``r`` (columns :data:`EVAL_COLUMNS`): validation first, λ chosen
    on it, then test."""
    spec = QuantSpec(r.bits)
    data = {split: eval_batches(getattr(r.task, split), cfg.eval_batch, r.device) for split in ("val", "test")}
    grid, vector = _grid(cfg, r)  # the scoped vectors and the multi-donor means, formed once
    rows = evaluate_jobs(r, validation_jobs(cfg, r, grid, vector), data["val"], spec, "val")
    chosen = lambda_on_val(pd.DataFrame(rows))
    lam_val = {(c.method, c.donor, c.scope): c.lam_val for c in chosen.itertuples()}
    jobs, stats = test_jobs(cfg, r, lam_val, grid, vector)
    rows += stats
    rows += evaluate_jobs(r, jobs, data["test"], spec, "test")
    return pd.DataFrame(rows, columns=EVAL_COLUMNS)

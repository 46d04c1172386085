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
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from qgeom import params as P
from qgeom.data import Split, Task, batches
from qgeom.evaluation import top1_many
from qgeom.experiment.analysis import lambda_on_val
from qgeom.experiment.config import RunConfig
from qgeom.experiment.controls import control, random_like
from qgeom.experiment.decomposition import grid_only, grid_statistics, values_only
from qgeom.quant import QuantSpec, ptq

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


def evaluate_jobs(r: Receiver, jobs: list[Job], data, spec: QuantSpec, split: str) -> list[dict]:
    """Rows of ``jobs`` on one split; PTQ'd per metric (a set already on a quantization grid, a
    decomposition hybrid, is used as it is)."""
    sets = [ptq(th, spec) if row["metric"] == "ptq_top1" and not row.pop("quantized", False) else th
            for row, th in jobs]
    acc = top1_many(r.model, sets, data, device=r.device)
    key = dict(seed=r.seed, bits=r.bits, receiver=r.name)
    return [key | row | dict(split=split, value=float(a)) for (row, _), a in zip(jobs, acc)]


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
    stats: list[dict] = []
    for scope in cfg.scopes:
        for d in [d for d in r.rhos if d != r.name]:
            jobs, rows = control_jobs(cfg, r, d, scope, vector("patch", d, scope))
            out += jobs
            stats += rows
    return out, stats


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

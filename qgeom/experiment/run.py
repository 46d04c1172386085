"""The transfer experiment: donors × receivers, λ sweep, controls, geometry — resumable stages.

Data flows one way (DESIGN.md §3)::

    config → θ_0 → θ_t per task → θ_t,QAT → ρ_t → patched + quantized receivers → accuracy
    receivers' curvature products with every ρ → geometry;   tables → statistics (stats.py)

Each stage writes its artifact into the run directory (safetensors for tensors, CSV for
tables, atomically) and is skipped when the artifact exists, so a killed run resumes where it
stopped and a finished run re-reads everything in seconds. Layout::

    RUN/config.json                      the RunConfig (a resumed run must ask for the same)
    RUN/theta0.safetensors               pretrained θ_0
    RUN/seed{s}/finetune/{t}.safetensors θ_t      (+ {t}.curve.csv: loss, lr, val Top-1 by step)
    RUN/seed{s}/qat{b}/{t}.safetensors   θ_t,QAT at b bits;  rho_{t}.safetensors: ρ_t (backbone)
    RUN/seed{s}/eval{b}/{R}.csv          accuracy rows for receiver R
    RUN/seed{s}/geometry{b}/{R}.csv      geometry rows for receiver R
    RUN/dissimilarity.csv, accuracy.csv, geometry.csv, pairs.csv, correlations.csv, summary.json

Seeds vary fine-tuning and QAT (head initialisation, data order); θ_0 and the task data are
shared by all seeds, so seed-to-seed spread measures the training noise of the method.

θ_0 comes from ``cfg.theta0``: pretrained here on the offline pretext mixture (``pretrain``),
timm's weights (``timm:NAME``) or a local checkpoint; tasks are task specifications
(:mod:`qgeom.data.sources`): offline names, ``imagefolder:NAME=DIR``, or the paper's datasets
under ``cfg.data_root``. Every task is resolved (files found, classes read) before any work.
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Callable
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from qgeom import params as P
from qgeom import io as qio
from qgeom.experiment.analysis import read_table
from qgeom.experiment.config import RunConfig, validate
from qgeom.experiment.controls import random_like
from qgeom.experiment.decomposition import grid_only, grid_statistics, values_only
from qgeom.data import TASKS, Task, batches, load_task, model_transform, parse_task, pretext_task, probe_batches
from qgeom.models import create_model, default_device, load_pretrained
from qgeom.tracking import CurveLog
from qgeom.quant import QuantSpec, ptq
from qgeom.experiment.timing import StageTimer
from qgeom.train import finetune, logits, pretrain, qat

EVAL_COLUMNS = ["seed", "bits", "receiver", "donor", "method", "scope", "lam", "draw", "split", "metric", "value"]


class ConfigMismatchError(ValueError):
    """The run directory holds results of a different configuration."""


def task_specs(cfg: RunConfig) -> dict[str, str]:
    """Task name → specification, in the config's order (names are what artifacts are filed under)."""
    out: dict[str, str] = {}
    for spec in cfg.tasks:
        name = parse_task(spec).name
        if name in out:
            raise ValueError(f"tasks: two tasks are named {name!r} ({out[name]!r}, {spec!r})")
        out[name] = spec
    return out


def load_run_task(cfg: RunConfig, name: str, template: torch.nn.Module | None = None, **sizes: int) -> Task:
    """Task ``name`` of a run as the run reads it: offline tasks generated with data seed 0,
    streamed tasks through the transform timm derives for the run's model (``template``)."""
    spec = task_specs(cfg)[name]
    transform = None
    if parse_task(spec).streamed:
        template = template if template is not None else create_model(cfg.preset, 2, **cfg.model_overrides)
        transform = model_transform(template)
    size = dict(n_train=cfg.n_train, n_val=cfg.n_val, n_test=cfg.n_test) | sizes
    return load_task(spec, 0, cfg.data_root or None, transform=transform, num_workers=cfg.num_workers,
                     download=cfg.data_download, **size)


def write_table(path: Path, df: pd.DataFrame) -> pd.DataFrame:
    """Write ``df`` atomically and return it as read back (so fresh and resumed runs agree)."""
    qio.atomic_write(path, lambda tmp: df.to_csv(tmp, index=False))
    return read_table(path)


class TransferRun:
    """One run directory of the transfer experiment; each ``stage_*`` method is idempotent."""

    def __init__(self, cfg: RunConfig, run_dir: str | Path, progress: bool = True,
                 log: Callable[[str], None] | None = None) -> None:
        validate(cfg)  # before anything is written: a refused config leaves the run directory as it was
        self.cfg, self.dir, self.progress = cfg, Path(run_dir), progress
        self.log = log or (lambda msg: None)
        self.timer = StageTimer()  # seconds per computed stage (read by `qgeom run`'s time table)
        self._check_config()
        qio.remove_stale_temps(self.dir, recursive=True)  # temporaries of a write killed in an earlier run

    # -- bookkeeping -----------------------------------------------------------------------

    def _check_config(self) -> None:
        path = self.dir / "config.json"
        if path.exists():
            old = json.loads(path.read_text())
            new = json.loads(self.cfg.to_json())
            default = json.loads(RunConfig().to_json())  # fields added since the run was made
            diff = sorted(k for k in set(old) | set(new) if old.get(k, default.get(k)) != new.get(k))
            if diff:
                raise ConfigMismatchError(f"{self.dir} holds a run with another configuration (differs in: "
                                          f"{', '.join(diff)}); choose a new run directory")
        else:
            qio.atomic_write(path, lambda tmp: Path(tmp).write_text(self.cfg.to_json()))

    def _params(self, path: Path, compute: Callable[[], P.Params], **meta) -> P.Params:
        if path.exists():
            return qio.load_params(path)[0]
        with self.timer.stage(str(meta.get("stage", "params"))):
            value = compute()
            qio.save_params(path, value, self._meta(**meta))
        return value

    def _meta(self, stage: str, task: str, **extra) -> dict:
        """What a checkpoint needs to rebuild its model and data without the run directory:
        model (preset, overrides, num_classes), task and its data (seed, sizes), stage and
        provenance (run name, seed, bits, scope). The CLI's ``evaluate``/``geometry`` read it."""
        c = self.cfg
        data = {}
        if task.startswith("pretext:"):
            num_classes = sum(len(TASKS[n].classes) for n in c.pretext_tasks)
            sizes = {"n_per_task": c.n_pretext_per_task}
        elif not task:  # θ_0 loaded from timm or a file: a backbone without a head
            num_classes, sizes = 0, {}
        else:
            num_classes = self.tasks[task].num_classes
            sizes = {"n_train": c.n_train, "n_val": c.n_val, "n_test": c.n_test}
            task = task_specs(c)[task]  # the specification, so `qgeom evaluate` finds the data again
            data = {"data_root": c.data_root} if parse_task(task).streamed else {}
        return dict(stage=stage, preset=c.preset, model_overrides=c.model_overrides, num_classes=num_classes,
                    task=task, data_seed=0, data_sizes=sizes, run=c.name, **data, **extra)

    def _table(self, path: Path, compute: Callable[[], pd.DataFrame], stage: str = "table") -> pd.DataFrame:
        if path.exists():
            return read_table(path)
        with self.timer.stage(stage):
            return write_table(path, compute())

    @cached_property
    def names(self) -> list[str]:
        """The task names (what artifacts are filed under), in the config's order."""
        return list(task_specs(self.cfg))

    @cached_property
    def tasks(self) -> dict[str, Task]:
        template = create_model(self.cfg.preset, 2, **self.cfg.model_overrides)
        return {t: load_run_task(self.cfg, t, template) for t in self.names}

    def model(self, task: str):
        """The architecture for ``task`` (a template; weights come from parameter dicts)."""
        return create_model(self.cfg.preset, self.tasks[task].num_classes, **self.cfg.model_overrides)

    def _eval_batches(self, split, device: torch.device):
        """A split's evaluation batches for :func:`qgeom.evaluation.top1_many`: an in-memory split
        moved to the device once; a streamed split as a callable that re-opens its loader (it is
        never held whole)."""
        from qgeom.data import Split

        if isinstance(split, Split):
            return [(x.to(device), y.to(device)) for x, y in batches(split, self.cfg.eval_batch)]
        return lambda: batches(split, self.cfg.eval_batch)

    def _curves(self, artifact: Path, stage: str, **meta) -> CurveLog:
        """The training-curve log of the stage that writes ``artifact`` (CSV beside it)."""
        return CurveLog(artifact.with_suffix(".curve.csv"), self.cfg.trackers,
                        run=f"{self.cfg.name}/{artifact.relative_to(self.dir).with_suffix('')}", stage=stage, **meta)

    def _train_kwargs(self, curves: CurveLog) -> dict:
        return dict(progress=self.progress, log=curves, val_every=self.cfg.val_every)

    # -- training stages ---------------------------------------------------------------------

    # A *basin* is a θ_0 and everything trained from it: "" (the run's own) or "other" (a θ_0
    # pretrained with another seed, for the other-basin control), filed under RUN/other/.

    def _in(self, basin: str, rel: str) -> Path:
        return self.dir / basin / rel if basin else self.dir / rel

    def theta0(self, basin: str = "") -> P.Params:
        """θ_0 per ``cfg.theta0``: pretrained here, timm's weights, or a local checkpoint (backbone only
        for the latter two; every task gets a fresh head). ``basin="other"``: pretrained with seed 1."""
        path = self._in(basin, "theta0.safetensors")
        seed = 1 if basin else 0

        def compute():
            if self.cfg.theta0 != "pretrain":
                self.log(f"loading θ_0 from {self.cfg.theta0}")
                return load_pretrained(self.cfg.theta0, self.model(self.names[0]))
            self.log(f"pretraining θ_0{' (other basin)' if basin else ''}")
            task = pretext_task(self.cfg.pretext_tasks, seed=0, n_per_task=self.cfg.n_pretext_per_task)
            m = create_model(self.cfg.preset, task.num_classes, seed=seed, **self.cfg.model_overrides)
            with self._curves(path, "pretrain") as curves:
                return pretrain(m, task, self.cfg.pretrain.with_(seed=seed), **self._train_kwargs(curves))

        if self.cfg.theta0 == "pretrain":
            origin = dict(task="pretext:" + "+".join(self.cfg.pretext_tasks),
                          config=self.cfg.pretrain.with_(seed=seed).to_dict())
        else:
            origin = dict(task="")
        return self._params(path, compute, stage="pretrain", source=self.cfg.theta0, basin=basin, **origin)

    def finetuned(self, seed: int, task: str, basin: str = "") -> P.Params:
        path = self._in(basin, f"seed{seed}/finetune/{task}.safetensors")

        def compute():
            cfg = self.cfg.finetune.with_(seed=seed)
            with self._curves(path, "finetune", task=task, seed=seed) as curves:
                return finetune(self.model(task), self.theta0(basin), self.tasks[task], cfg,
                                **self._train_kwargs(curves))

        return self._params(path, compute, stage="finetune", task=task, seed=seed, basin=basin,
                            config=self.cfg.finetune.with_(seed=seed).to_dict())

    def qat(self, seed: int, bits: int, task: str, basin: str = "") -> P.Params:
        path = self._in(basin, f"seed{seed}/qat{bits}/{task}.safetensors")

        def compute():
            cfg = self.cfg.qat.with_(seed=seed)
            with self._curves(path, "qat", task=task, seed=seed, bits=bits) as curves:
                return qat(self.model(task), self.finetuned(seed, task, basin), self.tasks[task], QuantSpec(bits), cfg,
                           **self._train_kwargs(curves))

        return self._params(path, compute, stage="qat", task=task, seed=seed, bits=bits, basin=basin,
                            config=self.cfg.qat.with_(seed=seed).to_dict())

    def rho(self, seed: int, bits: int, task: str, basin: str = "") -> P.Params:
        """ρ_t = θ_t,QAT − θ_t on the backbone (the quantized scope is a subset of its keys)."""
        return self._params(self._in(basin, f"seed{seed}/qat{bits}/rho_{task}.safetensors"),
                            lambda: P.quantization_vector(self.qat(seed, bits, task, basin),
                                                          self.finetuned(seed, task, basin), "backbone"),
                            stage="quantization_vector", task=task, seed=seed, bits=bits, scope="backbone",
                            basin=basin)

    @property
    def basins(self) -> tuple[str, ...]:
        """The basins a run trains (:func:`qgeom.experiment.stages.basins`): its own, and "other" with the
        other-basin control."""
        from qgeom.experiment.stages import basins

        return basins(self.cfg)

    # -- evaluation ------------------------------------------------------------------------

    def evaluate(self, seed: int, bits: int, receiver: str) -> pd.DataFrame:
        return self._table(self.dir / f"seed{seed}/eval{bits}/{receiver}.csv",
                           lambda: self._evaluate(seed, bits, receiver), stage="evaluate")

    def _evaluate(self, seed: int, bits: int, receiver: str) -> pd.DataFrame:
        """Accuracy rows of receiver R: baselines, the λ grid of every donor's patch and of the
        multi-donor patch, and the random control, post-PTQ (``ptq_top1``) and FP (``fp_top1``).

        Where the protocol reads each split: λ is chosen per (donor, scope) on *validation*
        post-PTQ Top-1 over the grid (:func:`qgeom.experiment.analysis.lambda_on_val`); *test* is evaluated
        only where the analysis reads it — at λ = 1 (PTQ and FP) and at the chosen λ (PTQ) — and
        for the baselines and the random control (test only: no λ is chosen for it). The λ curves
        are drawn from validation. Every set is quantized once and all sets of a split share one
        pass over its batches (:func:`qgeom.evaluation.top1_many`)."""
        from qgeom.experiment.analysis import lambda_on_val
        from qgeom.evaluation import top1_many

        c, spec, task = self.cfg, QuantSpec(bits), self.tasks[receiver]
        model, theta = self.model(receiver), self.finetuned(seed, receiver)
        rhos = {d: self.rho(seed, bits, d) for d in self.names}
        device = default_device()
        data = {split: self._eval_batches(getattr(task, split), device) for split in ("val", "test")}
        key = dict(seed=seed, bits=bits, receiver=receiver)
        rows: list[dict] = []

        def run(jobs: list[tuple[dict, P.Params]], split: str) -> None:
            """Evaluate jobs (row fields incl. metric, params) on ``split``; PTQ'd per metric
            (a set already on a quantization grid, a decomposition hybrid, is used as it is)."""
            sets = [ptq(th, spec) if row["metric"] == "ptq_top1" and not row.pop("quantized", False) else th
                    for row, th in jobs]
            acc = top1_many(model, sets, data[split], device=device)
            rows.extend(key | row | dict(split=split, value=float(a)) for (row, _), a in zip(jobs, acc))

        def job(th, method, metric="ptq_top1", donor="", scope="", lam=np.nan, draw=-1, quantized=False):
            row = dict(donor=donor, method=method, scope=scope, lam=lam, draw=draw, metric=metric)
            return (row | {"quantized": True} if quantized else row), th

        theta0 = self.theta0()
        pretrained = {k: (v if P.is_head(k) else theta0[k]) for k, v in theta.items()}
        theta_qat = self.qat(seed, bits, receiver)
        others = [d for d in self.names if d != receiver]
        lams = sorted(set(c.lambdas) | {1.0})
        vecs = {scope: {d: P.select(rhos[d], scope) for d in self.names} for scope in c.scopes}
        means = {scope: P.lincomb([vecs[scope][d] for d in others], [1.0 / len(others)] * len(others))
                 for scope in c.scopes}

        def grid_vector(method, donor, scope):
            return means[scope] if method == "multi_donor" else vecs[scope][donor]

        grid = [(m, d, scope) for scope in c.scopes for m, d in
                [("patch", d) for d in self.names] + [("multi_donor", "mean(others)")]]
        # validation: the baselines and the whole λ grid (post-PTQ), to choose λ
        val_jobs = [job(theta, "baseline"), job(theta_qat, "qat")]
        val_jobs += [job(P.patch(theta, grid_vector(m, d, scope), lam), m, donor=d, scope=scope, lam=lam)
                     for m, d, scope in grid for lam in lams]
        run(val_jobs, "val")
        chosen = lambda_on_val(pd.DataFrame(rows))
        lam_val = {(r.method, r.donor, r.scope): r.lam_val for r in chosen.itertuples()}
        # test: baselines (PTQ and FP), the grid at λ = 1 (PTQ, FP) and at the chosen λ (PTQ), the control
        test_jobs = [job(th, method, metric) for th, method in ((theta, "baseline"), (theta_qat, "qat"),
                                                                 (pretrained, "pretrained_backbone"))
                     for metric in ("ptq_top1", "fp_top1")]
        for m, d, scope in grid:
            at_one = P.patch(theta, grid_vector(m, d, scope), 1.0)
            test_jobs += [job(at_one, m, metric, d, scope, 1.0) for metric in ("ptq_top1", "fp_top1")]
            lv = float(lam_val[(m, d, scope)])
            if lv != 1.0:
                test_jobs.append(job(P.patch(theta, grid_vector(m, d, scope), lv), m, donor=d, scope=scope, lam=lv))
        for scope in c.scopes:
            for d in others:  # the control: no λ is chosen for it, so test split only
                g = torch.Generator().manual_seed(zlib.crc32(f"{seed}/{bits}/{d}/{receiver}/{scope}".encode()))
                for draw in range(c.random_draws):
                    test_jobs.append(job(P.patch(theta, random_like(vecs[scope][d], g), 1.0), "random", donor=d,
                                         scope=scope, lam=1.0, draw=draw))
                test_jobs += self._control_jobs(job, theta, vecs[scope][d], seed, bits, receiver, d, scope)
                if c.decomposition:  # what the patch does through the grid, and through the values
                    patched = P.patch(theta, vecs[scope][d], 1.0)
                    test_jobs += [job(grid_only(theta, patched, spec), "grid_only", donor=d, scope=scope, lam=1.0,
                                      quantized=True),
                                  job(values_only(theta, patched, spec), "values_only", donor=d, scope=scope, lam=1.0,
                                      quantized=True)]
                    rows.extend(key | dict(donor=d, method="patch", scope=scope, lam=1.0, draw=-1, split="test",
                                           metric=name, value=v)
                                for name, v in grid_statistics(theta, patched, spec).items())
        run(test_jobs, "test")
        return pd.DataFrame(rows, columns=EVAL_COLUMNS)

    def _control_jobs(self, job, theta: P.Params, vec: P.Params, seed: int, bits: int, receiver: str, donor: str,
                      scope: str) -> list:
        """Patches at λ = 1 with the configured controls of ρ_D (test split; :mod:`qgeom.experiment.controls`):
        ``random_rows`` and ``row_permuted`` (``random_draws`` draws each), ``negated``, and
        ``other_basin`` — the donor's ρ from the θ_0 pretrained with another seed."""
        from qgeom.experiment.controls import control

        out = []
        for name in self.cfg.controls:
            if name == "other_basin":
                other = P.select(self.rho(seed, bits, donor, "other"), scope)
                out.append(job(P.patch(theta, other, 1.0), name, donor=donor, scope=scope, lam=1.0))
                continue
            g = torch.Generator().manual_seed(zlib.crc32(f"{seed}/{bits}/{donor}/{receiver}/{scope}/{name}".encode()))
            for draw in range(1 if name == "negated" else self.cfg.random_draws):
                out.append(job(P.patch(theta, control(name, vec, g), 1.0), name, donor=donor, scope=scope, lam=1.0,
                               draw=draw))
        return out

    # -- geometry --------------------------------------------------------------------------

    def geometry(self, seed: int, bits: int, receiver: str) -> pd.DataFrame:
        return self._table(self.dir / f"seed{seed}/geometry{bits}/{receiver}.csv",
                           lambda: self._geometry(seed, bits, receiver), stage="geometry")

    def _geometry(self, seed: int, bits: int, receiver: str) -> pd.DataFrame:
        from qgeom.curvature.operator import CurvatureOperator
        from qgeom.curvature.geometry import gram_matrix

        c, spec, task = self.cfg, QuantSpec(bits), self.tasks[receiver]
        model, device = self.model(receiver), default_device()
        points = {"fp": self.finetuned(seed, receiver), "ste": self.qat(seed, bits, receiver)}
        probe = probe_batches(task.val, c.probe_size, c.probe_batch, seed=seed)
        from qgeom.curvature.geometry import probe_warnings

        warnings = probe_warnings(c.probe_size, len(task.val), task.num_classes)
        for w in warnings:
            self.log(f"warning ({receiver}): {w}")
        probe_x = torch.cat([x for x, _ in probe])
        probe_y = torch.cat([y for _, y in probe])
        names = self.names
        rows: list[dict] = []

        def put(scope, metric, objective, donor, quantity, value):
            rows.append(dict(seed=seed, bits=bits, receiver=receiver, donor=donor, scope=scope, metric=metric,
                             objective=objective, quantity=quantity, value=float(value)))

        def ptq_loss(th):  # L(Q_b(θ)) on the probe set: what the patch is meant to lower
            out = logits(model, ptq(th, spec), probe_x, c.eval_batch)
            return float(torch.nn.functional.cross_entropy(out, probe_y))

        theta_r = points["fp"]
        for scope in c.scopes:
            V = [P.select(self.rho(seed, bits, d), scope) for d in names]
            r = names.index(receiver)
            gram = {"euclidean": np.array([[P.inner(a, b) for b in V] for a in V])}
            floors = {"euclidean": np.zeros(len(V))}  # forms at roundoff level count as 0 (geometry.py)
            grads = {}
            for metric in c.metrics:
                for objective, point in points.items():
                    on_device = {k: v.to(device) for k, v in point.items()}
                    op = CurvatureOperator(model, on_device, probe, metric=metric, objective=objective,
                                           scope=scope, spec=spec if objective == "ste" else None)
                    K, floor, _ = gram_matrix(op, V)  # GGN/Fisher: from JVPs alone (geometry.py)
                    gram[f"{metric}_{objective}"], floors[f"{metric}_{objective}"] = K, np.array(floor)
                    if objective not in grads:  # the gradient does not depend on the metric
                        grads[objective] = {k: v.cpu() for k, v in op.gradient().items()}
            for key, K in gram.items():
                metric, _, objective = key.partition("_")
                # a diagnostic of Proposition 1: K = VᵀMV is symmetric up to roundoff
                put(scope, metric, objective, "", "K_asymmetry", np.abs(K - K.T).max() / max(np.abs(K).max(), 1e-300))
                K = 0.5 * (K + K.T)
                pos = np.diag(K) > floors[key]
                for i, d in enumerate(names):
                    kdd, krr, kdr = K[i, i], K[r, r], K[i, r]
                    ok = pos[i] and pos[r]
                    cos = kdr / np.sqrt(kdd * krr) if ok else np.nan
                    put(scope, metric, objective, d, "inner", kdr)
                    put(scope, metric, objective, d, "self", kdd)
                    put(scope, metric, objective, d, "cosine", cos)
                    put(scope, metric, objective, d, "cos2", cos**2 if ok else np.nan)
                    put(scope, metric, objective, d, "lam_star", kdr / kdd if pos[i] else np.nan)
                    put(scope, metric, objective, d, "indefinite", float(not ok))
                for j, ev in enumerate(np.linalg.eigvalsh(K)):
                    put(scope, metric, objective, "", f"K_eig_{j}", ev)
            for objective, g in grads.items():
                for i, d in enumerate(names):
                    put(scope, "gradient", objective, d, "directional_gradient", P.inner(P.select(g, scope), V[i]))
            self._bound_rows(put, model, probe, spec, scope, V, r, gram, grads, points["ste"])
            # loss recovery R(D,R) = (L(0) − L(λ ρ_D)) / (L(0) − L(ρ_R)) of the quantized receiver
            l0, lr = ptq_loss(theta_r), ptq_loss(P.patch(theta_r, V[r], 1.0))
            for key in [k for k in gram if k.endswith("_ste")] + ["unit"]:
                K = gram.get(key)
                for i, d in enumerate(names):
                    lam = 1.0 if K is None else (K[i, r] / K[i, i] if K[i, i] > floors[key][i] else np.nan)
                    rec = (l0 - ptq_loss(P.patch(theta_r, V[i], lam))) / (l0 - lr) if np.isfinite(lam) else np.nan
                    put(scope, key, "ptq_loss", d, "recovery", rec)
            for w in warnings:  # recorded in the table: value 1 flags a degenerate probe set
                put(scope, "probe", "", "", f"probe_warning: {w}", 1.0)
            put(scope, "ptq_loss", "ptq_loss", "", "L0", l0)
            put(scope, "ptq_loss", "ptq_loss", "", "L_own_qat_vector", lr)
        return pd.DataFrame(rows)

    def _bound_rows(self, put, model, probe, spec, scope, V, r, gram, grads, theta_qat) -> None:
        """Proposition 2′'s terms (proofs/02, :mod:`qgeom.curvature.bounds`) for every metric's cos² at the STE
        surrogate g(δ) = L(θ̂ + δ − ρ_R), θ̂ = Q_b(θ_R,QAT): rows objective ``prop2``, quantity
        ``p2_<term>``. Costs N Hessian products, 2 + N·|metrics| probe losses per scope; the M
        products and the STE gradient are the ``ste`` ones above (the same as the fp ones at θ̂)."""
        from qgeom.curvature.bounds import second_order_terms
        from qgeom.curvature.operator import CurvatureOperator

        device = default_device()
        theta_hat = {k: v.to(device) for k, v in ptq(theta_qat, spec).items()}
        op_h = CurvatureOperator(model, theta_hat, probe, metric="hessian", objective="fp", scope=scope)
        HV = [{k: v.cpu() for k, v in hb.items()} for hb in op_h.matmat(V)]  # N products, once
        KH = np.array([[P.inner(a, hb) for hb in HV] for a in V])
        KE = gram["euclidean"]
        sd = [P.inner(P.select(grads["ste"], scope), v) for v in V]
        g0 = op_h.loss({k: -v.to(device) for k, v in V[r].items()})
        gR = op_h.loss()
        for metric in self.cfg.metrics:
            KM = KH if metric == "hessian" else gram[f"{metric}_ste"]
            for i, d in enumerate(self.names):
                ix = np.ix_([i, r], [i, r])
                t = second_order_terms(KM[ix], KH[ix], KE[ix], (sd[i], sd[r]))
                if np.isfinite(t["lam_star"]):
                    delta = {k: (t["lam_star"] * V[i][k] - V[r][k]).to(device) for k in V[r]}
                    t = second_order_terms(KM[ix], KH[ix], KE[ix], (sd[i], sd[r]), (g0, gR, op_h.loss(delta)))
                for q, val in t.items():
                    put(scope, metric, "prop2", d, f"p2_{q}", val)

    def dissimilarity(self) -> pd.DataFrame:
        """1 − cos of task prototypes: mean θ_0 features (pre-head) of each task's val images."""

        def compute():
            theta0 = self.theta0()
            names = self.names
            protos = []
            for t in names:
                m = self.model(t)
                th = {k: v for k, v in theta0.items() if not P.is_head(k)}
                th.update({k: v for k, v in P.from_model(m).items() if P.is_head(k)})
                P.load_into(m, th)
                total, n = 0.0, 0
                with torch.inference_mode():
                    for x, _ in batches(self.tasks[t].val, self.cfg.eval_batch):
                        total = total + m.forward_head(m.forward_features(x), pre_logits=True).double().sum(0)
                        n += len(x)
                protos.append(total / n)
            rows = []
            for i, a in enumerate(names):
                for j, b in enumerate(names):
                    cos = float(torch.nn.functional.cosine_similarity(protos[i], protos[j], dim=0))
                    rows.append(dict(donor=a, receiver=b, dissimilarity=1 - cos))
            return pd.DataFrame(rows)

        return self._table(self.dir / "dissimilarity.csv", compute, stage="dissimilarity")

    # -- the whole run -----------------------------------------------------------------------

    def run(self, geometry: bool = True, workers: int = 1) -> dict[str, pd.DataFrame]:
        """Every stage in order (each skipped when its artifact exists); the combined tables.

        workers > 1: after θ_0, the independent jobs — per (seed, task): fine-tune then QAT and ρ
        for every bit width; per (seed, bits, receiver): evaluation then geometry — run in that
        many spawned processes with one torch thread each (the artifacts are the hand-off, as for
        jobs on other machines). On 2 cores this avoids the intra-op thread synchronisation that
        makes 2-thread torch slow on a loaded machine (measured: a micro-ViT training step 0.10 s
        with 1 thread, 0.20 s with 2, at load 3.3). Each artifact is computed by one single-thread
        process, so its values do not depend on ``workers``. Stage seconds are then summed over
        the processes; ``phase_seconds`` holds each phase's wall time."""
        c, names = self.cfg, self.names
        self.phase_seconds: dict[str, float] = {}
        jobs = [(s, b) for s in c.seeds for b in c.bits]
        self.tasks  # resolve every task (files found, classes read) before any work
        for basin in self.basins:
            self.theta0(basin)
        train = [("train", s, None, t) for s in c.seeds for t in self.names]
        receive = [("receive", s, b, t) for s, b in jobs for t in self.names]
        pool = None
        try:
            for phase, steps in (("training", train), ("evaluation + geometry", receive)):
                t0 = time.perf_counter()
                todo = [st for st in steps if not self._step_done(st, geometry)]
                if workers > 1 and todo:
                    pool = pool or self._pool(workers)  # one pool for both phases: workers start once
                    self._run_parallel(pool, todo, geometry, workers, phase)
                else:
                    for step in tqdm(todo, desc=f"{c.name}: {phase}", disable=not self.progress, dynamic_ncols=True):
                        self._run_step(step, geometry)
                self.phase_seconds[phase] = time.perf_counter() - t0
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
        tables = {
            "accuracy": pd.concat([self.evaluate(s, b, t) for s, b in jobs for t in names], ignore_index=True),
            "dissimilarity": self.dissimilarity(),
        }
        geo_paths = [self.dir / f"seed{s}/geometry{b}/{t}.csv" for s, b in jobs for t in names]
        if geometry or all(p.exists() for p in geo_paths):  # without the stage: read what a full run left
            tables["geometry"] = pd.concat([self.geometry(s, b, t) for s, b in jobs for t in names],
                                           ignore_index=True)
        for name, df in tables.items():
            if name != "dissimilarity":
                write_table(self.dir / f"{name}.csv", df)
        return tables

    def _run_step(self, step: tuple, geometry: bool) -> None:
        kind, s, b, t = step
        self.log(f"{kind} seed={s} bits={b} task={t}")
        if kind == "train":
            for basin in self.basins:
                self.finetuned(s, t, basin)
                for bits in self.cfg.bits:
                    self.rho(s, bits, t, basin)
        else:
            self.evaluate(s, b, t)
            if geometry:
                self.geometry(s, b, t)

    def _pool(self, workers: int):
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        return ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_worker_init,
                                   initargs=(self.cfg, str(self.dir)))

    def _run_parallel(self, pool, todo: list[tuple], geometry: bool, workers: int, phase: str) -> None:
        from concurrent.futures import as_completed

        futures = [pool.submit(_worker_step, st, geometry) for st in todo]
        bar = tqdm(total=len(futures), desc=f"{self.cfg.name}: {phase} ({workers} workers)",
                   disable=not self.progress, dynamic_ncols=True)
        for f in as_completed(futures):
            self.timer.merge(f.result())  # re-raises a worker's exception here
            bar.update()
        bar.close()

    def _step_done(self, step: tuple, geometry: bool) -> bool:
        """Whether a worker step's outputs all exist (the paths declared in :mod:`qgeom.experiment.stages`)."""
        from qgeom.experiment.stages import Stage

        kind, s, b, t = step
        if kind == "train":
            stages = [Stage("qat", s, bits, t, basin) for bits in self.cfg.bits for basin in self.basins]
        else:
            stages = [Stage("evaluate", s, b, t)] + ([Stage("geometry", s, b, t)] if geometry else [])
        return all(st.done(self.dir) for st in stages)


_WORKER_RUN: TransferRun | None = None


def _worker_init(cfg: RunConfig, run_dir: str) -> None:
    """A worker process: one torch thread, its own TransferRun over the shared run directory."""
    global _WORKER_RUN
    torch.set_num_threads(1)
    _WORKER_RUN = TransferRun(cfg, run_dir, progress=False)


def _worker_step(step: tuple, geometry: bool) -> dict:
    """Run one job in a worker; return the seconds and counts its stages took."""
    run = _WORKER_RUN
    run.timer = StageTimer()
    run._run_step(step, geometry)
    return run.timer.state()

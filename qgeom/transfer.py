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
import zlib
from collections.abc import Callable
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from qgeom import params as P
from qgeom.analysis import read_table
from qgeom.config import RunConfig
from qgeom.data import Task, batches, load_task, model_transform, parse_task, pretext_task, probe_batches
from qgeom.models import create_model, default_device, load_pretrained
from qgeom.tracking import CurveLog
from qgeom.quant import QuantSpec, ptq
from qgeom.train import accuracy, finetune, logits, pretrain, qat

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
    P.atomic_write(path, lambda tmp: df.to_csv(tmp, index=False))
    return read_table(path)


def random_like(vector: P.Params, generator: torch.Generator) -> P.Params:
    """A Gaussian direction with the same per-tensor norms as ``vector`` (the random control)."""
    out = {}
    for k, v in vector.items():
        r = torch.randn(v.shape, generator=generator, dtype=torch.float64)
        n = r.norm()
        out[k] = (r * (v.double().norm() / n if n > 0 else 0.0)).to(v.dtype)
    return out


class TransferRun:
    """One run directory of the transfer experiment; each ``stage_*`` method is idempotent."""

    def __init__(self, cfg: RunConfig, run_dir: str | Path, progress: bool = True,
                 log: Callable[[str], None] | None = None) -> None:
        self.cfg, self.dir, self.progress = cfg, Path(run_dir), progress
        self.log = log or (lambda msg: None)
        self._check_config()

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
            P.atomic_write(path, lambda tmp: Path(tmp).write_text(self.cfg.to_json()))

    def _params(self, path: Path, compute: Callable[[], P.Params], **meta) -> P.Params:
        if path.exists():
            return P.load_params(path)[0]
        value = compute()
        P.save_params(path, value, meta)
        return value

    def _table(self, path: Path, compute: Callable[[], pd.DataFrame]) -> pd.DataFrame:
        if path.exists():
            return read_table(path)
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

    def _curves(self, artifact: Path, stage: str, **meta) -> CurveLog:
        """The training-curve log of the stage that writes ``artifact`` (CSV beside it)."""
        return CurveLog(artifact.with_suffix(".curve.csv"), self.cfg.trackers,
                        run=f"{self.cfg.name}/{artifact.relative_to(self.dir).with_suffix('')}", stage=stage, **meta)

    def _train_kwargs(self, curves: CurveLog) -> dict:
        return dict(progress=self.progress, log=curves, val_every=self.cfg.val_every)

    # -- training stages ---------------------------------------------------------------------

    def theta0(self) -> P.Params:
        """θ_0 per ``cfg.theta0``: pretrained here, timm's weights, or a local checkpoint (backbone only
        for the latter two; every task gets a fresh head)."""
        path = self.dir / "theta0.safetensors"

        def compute():
            if self.cfg.theta0 != "pretrain":
                self.log(f"loading θ_0 from {self.cfg.theta0}")
                return load_pretrained(self.cfg.theta0, self.model(self.names[0]))
            self.log("pretraining θ_0")
            task = pretext_task(self.cfg.pretext_tasks, seed=0, n_per_task=self.cfg.n_pretext_per_task)
            m = create_model(self.cfg.preset, task.num_classes, seed=0, **self.cfg.model_overrides)
            with self._curves(path, "pretrain") as curves:
                return pretrain(m, task, self.cfg.pretrain, **self._train_kwargs(curves))

        return self._params(path, compute, stage="pretrain", source=self.cfg.theta0)

    def finetuned(self, seed: int, task: str) -> P.Params:
        path = self.dir / f"seed{seed}/finetune/{task}.safetensors"

        def compute():
            cfg = self.cfg.finetune.with_(seed=seed)
            with self._curves(path, "finetune", task=task, seed=seed) as curves:
                return finetune(self.model(task), self.theta0(), self.tasks[task], cfg, **self._train_kwargs(curves))

        return self._params(path, compute, stage="finetune", task=task, seed=seed)

    def qat(self, seed: int, bits: int, task: str) -> P.Params:
        path = self.dir / f"seed{seed}/qat{bits}/{task}.safetensors"

        def compute():
            cfg = self.cfg.qat.with_(seed=seed)
            with self._curves(path, "qat", task=task, seed=seed, bits=bits) as curves:
                return qat(self.model(task), self.finetuned(seed, task), self.tasks[task], QuantSpec(bits), cfg,
                           **self._train_kwargs(curves))

        return self._params(path, compute, stage="qat", task=task, seed=seed, bits=bits)

    def rho(self, seed: int, bits: int, task: str) -> P.Params:
        """ρ_t = θ_t,QAT − θ_t on the backbone (the quantized scope is a subset of its keys)."""
        return self._params(self.dir / f"seed{seed}/qat{bits}/rho_{task}.safetensors",
                            lambda: P.quantization_vector(self.qat(seed, bits, task), self.finetuned(seed, task),
                                                          "backbone"),
                            stage="quantization_vector", task=task, seed=seed, bits=bits, scope="backbone")

    # -- evaluation ------------------------------------------------------------------------

    def evaluate(self, seed: int, bits: int, receiver: str) -> pd.DataFrame:
        return self._table(self.dir / f"seed{seed}/eval{bits}/{receiver}.csv",
                           lambda: self._evaluate(seed, bits, receiver))

    def _evaluate(self, seed: int, bits: int, receiver: str) -> pd.DataFrame:
        c, spec, task = self.cfg, QuantSpec(bits), self.tasks[receiver]
        model, theta = self.model(receiver), self.finetuned(seed, receiver)
        rhos = {d: self.rho(seed, bits, d) for d in self.names}
        rows: list[dict] = []

        def ev(th, method, donor="", scope="", lam=np.nan, draw=-1, splits=("val", "test"), fp=True):
            for split in splits:
                data = getattr(task, split)
                base = dict(seed=seed, bits=bits, receiver=receiver, donor=donor, method=method, scope=scope,
                            lam=lam, draw=draw, split=split)
                rows.append(base | dict(metric="ptq_top1", value=accuracy(model, th, data, spec, c.eval_batch)))
                if fp and split == "test":
                    rows.append(base | dict(metric="fp_top1", value=accuracy(model, th, data, None, c.eval_batch)))

        ev(theta, "baseline")
        ev(self.qat(seed, bits, receiver), "qat")
        theta0 = self.theta0()
        ev({k: (v if P.is_head(k) else theta0[k]) for k, v in theta.items()}, "pretrained_backbone", splits=("test",))
        others = [d for d in self.names if d != receiver]
        lams = sorted(set(c.lambdas) | {1.0})
        for scope in c.scopes:
            vecs = {d: P.select(rhos[d], scope) for d in self.names}
            # λ grid: post-PTQ Top-1 on val (to choose λ) and test; FP Top-1 at λ = 1 only
            for d in self.names:
                for lam in lams:
                    ev(P.patch(theta, vecs[d], lam), "patch", d, scope, lam, fp=lam == 1.0)
            mean = P.lincomb([vecs[d] for d in others], [1.0 / len(others)] * len(others))
            for lam in lams:
                ev(P.patch(theta, mean, lam), "multi_donor", "mean(others)", scope, lam, fp=lam == 1.0)
            for d in others:  # the control: no λ is chosen for it, so test split only
                g = torch.Generator().manual_seed(zlib.crc32(f"{seed}/{bits}/{d}/{receiver}/{scope}".encode()))
                for draw in range(c.random_draws):
                    ev(P.patch(theta, random_like(vecs[d], g), 1.0), "random", d, scope, 1.0, draw, splits=("test",))
        return pd.DataFrame(rows, columns=EVAL_COLUMNS)

    # -- geometry --------------------------------------------------------------------------

    def geometry(self, seed: int, bits: int, receiver: str) -> pd.DataFrame:
        return self._table(self.dir / f"seed{seed}/geometry{bits}/{receiver}.csv",
                           lambda: self._geometry(seed, bits, receiver))

    def _geometry(self, seed: int, bits: int, receiver: str) -> pd.DataFrame:
        from qgeom.curvature import CurvatureOperator
        from qgeom.geometry import gram_matrix

        c, spec, task = self.cfg, QuantSpec(bits), self.tasks[receiver]
        model, device = self.model(receiver), default_device()
        points = {"fp": self.finetuned(seed, receiver), "ste": self.qat(seed, bits, receiver)}
        probe = probe_batches(task.val, c.probe_size, c.probe_batch, seed=seed)
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
            # loss recovery R(D,R) = (L(0) − L(λ ρ_D)) / (L(0) − L(ρ_R)) of the quantized receiver
            l0, lr = ptq_loss(theta_r), ptq_loss(P.patch(theta_r, V[r], 1.0))
            for key in [k for k in gram if k.endswith("_ste")] + ["unit"]:
                K = gram.get(key)
                for i, d in enumerate(names):
                    lam = 1.0 if K is None else (K[i, r] / K[i, i] if K[i, i] > floors[key][i] else np.nan)
                    rec = (l0 - ptq_loss(P.patch(theta_r, V[i], lam))) / (l0 - lr) if np.isfinite(lam) else np.nan
                    put(scope, key, "ptq_loss", d, "recovery", rec)
            put(scope, "ptq_loss", "ptq_loss", "", "L0", l0)
            put(scope, "ptq_loss", "ptq_loss", "", "L_own_qat_vector", lr)
        return pd.DataFrame(rows)

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

        return self._table(self.dir / "dissimilarity.csv", compute)

    # -- the whole run -----------------------------------------------------------------------

    def run(self, geometry: bool = True) -> dict[str, pd.DataFrame]:
        """Every stage in order (each skipped when its artifact exists); the combined tables."""
        c, names = self.cfg, self.names
        self.tasks  # resolve every task (files found, classes read) before any work
        self.theta0()
        jobs = [(s, b) for s in c.seeds for b in c.bits]
        steps = [("finetune", s, None, t) for s in c.seeds for t in names]
        steps += [("qat", s, b, t) for s, b in jobs for t in names]
        steps += [("evaluate", s, b, t) for s, b in jobs for t in names]
        if geometry:
            steps += [("geometry", s, b, t) for s, b in jobs for t in names]
        for stage, s, b, t in tqdm(steps, desc=c.name, disable=not self.progress, dynamic_ncols=True):
            self.log(f"{stage} seed={s} bits={b} task={t}")
            if stage == "finetune":
                self.finetuned(s, t)
            elif stage == "qat":
                self.rho(s, b, t)
            elif stage == "evaluate":
                self.evaluate(s, b, t)
            else:
                self.geometry(s, b, t)
        tables = {
            "accuracy": pd.concat([self.evaluate(s, b, t) for s, b in jobs for t in names], ignore_index=True),
            "dissimilarity": self.dissimilarity(),
        }
        if geometry:
            tables["geometry"] = pd.concat([self.geometry(s, b, t) for s, b in jobs for t in names],
                                           ignore_index=True)
        for name, df in tables.items():
            if name != "dissimilarity":
                write_table(self.dir / f"{name}.csv", df)
        return tables

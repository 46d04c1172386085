"""One run directory of the transfer experiment: each artifact computed once, then read back.

Data flows one way::

    config → θ_0 → θ_t per task → θ_t,QAT → ρ_t → patched + quantized receivers → accuracy
    receivers' curvature products with every ρ → geometry;   tables → statistics (analysis, stats)

:class:`TransferRun` computes an artifact when its file (:class:`~qgeom.experiment.layout.RunLayout`)
is missing and reads it otherwise, so a killed run resumes where it stopped and a finished run
re-reads everything in seconds. Seeds vary fine-tuning and QAT (head initialisation, data order);
θ_0 and the task data are shared by all seeds, so seed-to-seed spread measures the training noise
of the method. The evaluation protocol and the geometry are pure functions
(:mod:`~qgeom.experiment.evaluate`, :mod:`~qgeom.experiment.measure`); this class only loads
their inputs and files their outputs. θ_0 comes from ``cfg.theta0``: pretrained here on the offline
pretext mixture (``pretrain``), timm's weights (``timm:NAME``) or a local checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from pathlib import Path

import pandas as pd
import torch

from qgeom import params as P
from qgeom.activations import ActivationSpec, calibrate
from qgeom.data import TASKS, Task, check_task, fingerprint, parse_task, pretext_task
from qgeom.experiment.analysis import read_table
from qgeom.experiment.config import RunConfig, validate
from qgeom.experiment.evaluate import Receiver, calibration_batches, evaluate_receiver
from qgeom.experiment.layout import RunLayout, claim_config
from qgeom.experiment.measure import GeometryInputs, measure_receiver, task_dissimilarity
from qgeom.experiment.provenance import StaleInputsError
from qgeom.experiment.stages import basins
from qgeom.experiment.tasks import load_run_task, task_specs
from qgeom.experiment.timing import StageTimer
from qgeom.io import load_params, read_metadata, remove_stale_temps, save_params, write_csv
from qgeom.models import create_model, default_device, load_pretrained
from qgeom.quant import QuantSpec
from qgeom.quantizers import quantize
from qgeom.tracking import CurveLog
from qgeom.train import finetune, pretrain, qat


class TransferRun:
    """One run directory of the transfer experiment; every artifact method is idempotent.

    ``validated``: ``cfg`` has already passed :func:`~qgeom.experiment.config.validate`
    (:func:`~qgeom.experiment.presets.resolve_config` does it once for the command line);
    otherwise it is validated here, before anything is written."""

    def __init__(self, cfg: RunConfig, run_dir: str | Path, progress: bool = True,
                 log: Callable[[str], None] | None = None, *, validated: bool = False, claim: bool = True) -> None:
        if not validated:
            validate(cfg)  # a refused config leaves the run directory as it was
        self.cfg, self.dir, self.progress = cfg, Path(run_dir), progress
        self.layout = RunLayout(self.dir)
        self.log = log or (lambda msg: None)
        self.timer = StageTimer()  # seconds per computed stage (read by the summary's time table)
        if claim:
            self.claim()

    def claim(self) -> None:
        """Write the run's ``config.json`` (or check that the one there is the same), and remove the
        temporaries of a write killed in an earlier run. ``claim=False`` at construction defers it,
        so that :meth:`preflight` can check every input before anything is written."""
        claim_config(self.dir, self.cfg)
        remove_stale_temps(self.dir, recursive=True)

    def preflight(self) -> dict[str, str | None]:
        """Check every input before anything is written; returns each task's data fingerprint
        (:func:`qgeom.data.fingerprint`, ``None`` for offline tasks) for :mod:`~qgeom.experiment.provenance`.

        θ_0 from a file: readable (never unpickled), fitting the architecture, and on a resume the
        very θ_0 the run holds (its backbone's content hash). The tasks: resolved, at least 2 classes,
        no empty split, every image file decodable (:func:`qgeom.data.check_task`)."""
        c = self.cfg
        if c.theta0 != "pretrain" and not c.theta0.startswith("timm:"):
            have = P.content_hash(load_pretrained(c.theta0, create_model(c.preset, 2, **c.model_overrides)))
            if self.layout.theta0().exists() and read_metadata(self.layout.theta0()).get("content_hash") != have:
                raise StaleInputsError(f"theta0: {c.theta0} is not the θ_0 this run was computed from (its tensors "
                                       f"changed since the run read it): choose a new run directory")
        for t in self.tasks.values():
            check_task(t, images=True)
        return {name: fingerprint(spec, c.data_root or None) for name, spec in task_specs(c).items()}

    # -- bookkeeping -----------------------------------------------------------------------

    def _params(self, path: Path, compute: Callable[[], P.Params], **meta) -> P.Params:
        if path.exists():
            return load_params(path)[0]
        with self.timer.stage(str(meta.get("stage", "params"))):
            value = compute()
            save_params(path, value, self._meta(**meta))
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
            write_csv(path, compute())
            return read_table(path)  # as read back, so fresh and resumed runs agree

    def _curves(self, artifact: Path, stage: str, **meta) -> CurveLog:
        """The training-curve log of the stage that writes ``artifact`` (CSV beside it)."""
        return CurveLog(artifact.with_suffix(".curve.csv"), self.cfg.trackers,
                        run=f"{self.cfg.name}/{artifact.relative_to(self.dir).with_suffix('')}", stage=stage, **meta)

    def _train_kwargs(self, curves: CurveLog) -> dict:
        return dict(progress=self.progress, log=curves, val_every=self.cfg.val_every)

    @cached_property
    def names(self) -> list[str]:
        """The task names (what artifacts are filed under), in the config's order."""
        return list(task_specs(self.cfg))

    @cached_property
    def tasks(self) -> dict[str, Task]:
        template = create_model(self.cfg.preset, 2, **self.cfg.model_overrides)
        return {t: load_run_task(self.cfg, t, template) for t in self.names}

    def model(self, task: str) -> torch.nn.Module:
        """The architecture for ``task`` (a template; weights come from parameter dicts)."""
        return create_model(self.cfg.preset, self.tasks[task].num_classes, **self.cfg.model_overrides)

    @property
    def basins(self) -> tuple[str, ...]:
        """The basins a run trains (:func:`qgeom.experiment.stages.basins`)."""
        return basins(self.cfg)

    # -- training stages ---------------------------------------------------------------------

    def theta0(self, basin: str = "") -> P.Params:
        """θ_0 per ``cfg.theta0``: pretrained here, timm's weights, or a local checkpoint (backbone only
        for the latter two; every task gets a fresh head). ``basin="other"``: pretrained with seed 1."""
        path, seed, c = self.layout.theta0(basin), 1 if basin else 0, self.cfg
        read_as: list[str] = []  # what reading the file changed (DDP prefixes, half precision): its metadata says

        def compute():
            if c.theta0 != "pretrain":
                self.log(f"loading θ_0 from {c.theta0}")
                return load_pretrained(c.theta0, self.model(self.names[0]), read_as)
            self.log(f"pretraining θ_0{' (other basin)' if basin else ''}")
            task = pretext_task(c.pretext_tasks, seed=0, n_per_task=c.n_pretext_per_task)
            m = create_model(c.preset, task.num_classes, seed=seed, **c.model_overrides)
            with self._curves(path, "pretrain") as curves:
                return pretrain(m, task, c.pretrain.with_(seed=seed), **self._train_kwargs(curves))

        origin = (dict(task="pretext:" + "+".join(c.pretext_tasks), config=c.pretrain.with_(seed=seed).to_dict())
                  if c.theta0 == "pretrain" else dict(task="", read_as=read_as))  # filled by compute(), then saved
        return self._params(path, compute, stage="pretrain", source=c.theta0, basin=basin, **origin)

    def finetuned(self, seed: int, task: str, basin: str = "") -> P.Params:
        path, cfg = self.layout.finetuned(seed, task, basin), self.cfg.finetune.with_(seed=seed)

        def compute():
            with self._curves(path, "finetune", task=task, seed=seed) as curves:
                return finetune(self.model(task), self.theta0(basin), self.tasks[task], cfg,
                                **self._train_kwargs(curves))

        return self._params(path, compute, stage="finetune", task=task, seed=seed, basin=basin, config=cfg.to_dict())

    def qat(self, seed: int, bits: int, task: str, basin: str = "") -> P.Params:
        path, cfg = self.layout.qat(seed, bits, task, basin), self.cfg.qat.with_(seed=seed)

        def compute():
            theta_t = self.finetuned(seed, task, basin)
            acts = None  # with act_bits: W+A QAT, input ranges calibrated on θ_t and kept fixed
            if self.cfg.act_bits:
                acts = (calibrate(self.model(task), theta_t, self.calibration(task)), ActivationSpec(self.cfg.act_bits))
            with self._curves(path, "qat", task=task, seed=seed, bits=bits) as curves:
                return qat(self.model(task), theta_t, self.tasks[task], QuantSpec(bits), cfg, act_inputs=acts,
                           **self._train_kwargs(curves))

        return self._params(path, compute, stage="qat", task=task, seed=seed, bits=bits, basin=basin,
                            config=cfg.to_dict())

    def calibration(self, task: str) -> list:
        """The first ``calib_size`` training images of ``task``: GPTQ's, AWQ's and the activation
        ranges' calibration set (the task's own data: these are not zero-shot rows)."""
        return calibration_batches(self.tasks[task].train, self.cfg.calib_size, self.cfg.eval_batch, default_device())

    def quantized_point(self, seed: int, bits: int, task: str, basin: str = "") -> P.Params:
        """θ_t,QAT, or with ``vector_source`` gptq/awq the fine-tuned θ_t quantized by that method
        on its own calibration images (onto the same grid)."""
        if self.cfg.vector_source == "qat":
            return self.qat(seed, bits, task, basin)
        return quantize(self.cfg.vector_source, self.finetuned(seed, task, basin), QuantSpec(bits),
                        model=self.model(task), batches=self.calibration(task)).params

    def rho(self, seed: int, bits: int, task: str, basin: str = "") -> P.Params:
        """ρ_t = θ_t,QAT − θ_t (or θ_t,GPTQ/AWQ − θ_t, ``vector_source``) on the backbone (the
        quantized scope is a subset of its keys)."""
        return self._params(self.layout.rho(seed, bits, task, basin),
                            lambda: P.quantization_vector(self.quantized_point(seed, bits, task, basin),
                                                          self.finetuned(seed, task, basin), "backbone"),
                            stage="quantization_vector", task=task, seed=seed, bits=bits, scope="backbone",
                            basin=basin, source=self.cfg.vector_source)

    # -- receivers ---------------------------------------------------------------------------

    def evaluate(self, seed: int, bits: int, receiver: str) -> pd.DataFrame:
        return self._table(self.layout.evaluation(seed, bits, receiver),
                           lambda: self._evaluate(seed, bits, receiver), stage="evaluate")

    def _evaluate(self, seed: int, bits: int, receiver: str) -> pd.DataFrame:
        """:func:`~qgeom.experiment.evaluate.evaluate_receiver` on this run's artifacts."""
        others = {d: self.rho(seed, bits, d, "other") for d in self.names if d != receiver} \
            if "other_basin" in self.cfg.controls else {}
        r = Receiver(seed, bits, receiver, self.model(receiver), self.tasks[receiver], self.finetuned(seed, receiver),
                     self.qat(seed, bits, receiver), self.theta0(), {d: self.rho(seed, bits, d) for d in self.names},
                     others, default_device(), act_bits=self.cfg.act_bits,
                     calib=self.calibration(receiver) if set(self.cfg.ptq) - {"rtn"} or self.cfg.act_bits else [])
        return evaluate_receiver(self.cfg, r)

    def geometry(self, seed: int, bits: int, receiver: str) -> pd.DataFrame:
        return self._table(self.layout.geometry(seed, bits, receiver),
                           lambda: self._geometry(seed, bits, receiver), stage="geometry")

    def _geometry(self, seed: int, bits: int, receiver: str) -> pd.DataFrame:
        """:func:`~qgeom.experiment.measure.measure_receiver` on this run's artifacts."""
        g = GeometryInputs(seed, bits, receiver, self.model(receiver), self.tasks[receiver],
                           self.finetuned(seed, receiver), self.qat(seed, bits, receiver),
                           {d: self.rho(seed, bits, d) for d in self.names}, default_device())
        return measure_receiver(self.cfg, g, self.log)

    def dissimilarity(self) -> pd.DataFrame:
        """1 − cos of task prototypes (:func:`~qgeom.experiment.measure.task_dissimilarity`)."""
        return self._table(self.layout.table("dissimilarity"), lambda: task_dissimilarity(
            self.theta0(), {t: self.model(t) for t in self.names}, self.tasks, self.cfg.eval_batch),
            stage="dissimilarity")

"""Every path of a run directory, declared once, and its ``config.json``.

::

    RUN/config.json                        the RunConfig (a resumed run must ask for the same)
    RUN/inputs.json                        what each artifact was computed from (provenance.py)
    RUN/.qgeom.lock                        held by the one process writing the run
    RUN/theta0.safetensors                 pretrained θ_0       (+ theta0.curve.csv)
    RUN/seed{s}/finetune/{t}.safetensors   θ_t                  (+ {t}.curve.csv: loss, lr, val Top-1)
    RUN/seed{s}/qat{b}/{t}.safetensors     θ_t,QAT at b bits;  rho_{t}.safetensors: ρ_t (backbone)
    RUN/seed{s}/eval{b}/{R}.csv            accuracy rows for receiver R
    RUN/seed{s}/geometry{b}/{R}.csv        geometry rows for receiver R
    RUN/{accuracy,geometry,dissimilarity,pairs,receivers,correlations}.csv, summary.json
    RUN/jobs/state.json                    job ids and states (:mod:`qgeom.experiment.jobs`)
    RUN/other/…                            the other basin (θ_0 pretrained with seed 1), same layout

A *basin* is a θ_0 and everything trained from it: ``""`` (the run's own) or ``"other"``. The
layout imports neither torch nor numpy, so light commands (``qgeom summary``) can use it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qgeom.experiment.config import RunConfig

#: The run-level tables, each ``RUN/<name>.csv``.
TABLES = ("accuracy", "geometry", "dissimilarity", "pairs", "receivers", "correlations")


class ConfigMismatchError(ValueError):
    """The run directory holds results of a different configuration."""


@dataclass(frozen=True)
class RunLayout:
    """The paths of one run directory ``root`` (nothing is read or created here)."""

    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    def _in(self, basin: str, rel: str) -> Path:
        return self.root / basin / rel if basin else self.root / rel

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def inputs(self) -> Path:
        """What every artifact was computed from (:mod:`qgeom.experiment.provenance`)."""
        return self.root / "inputs.json"

    @property
    def lock(self) -> Path:
        """Held by the one process that writes the run (:func:`qgeom.files.hold_lock`)."""
        return self.root / ".qgeom.lock"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def job_state(self) -> Path:
        return self.root / "jobs" / "state.json"

    def job_dir(self, job_id: str = "%j") -> Path:
        """submitit's folder of one job (``%j``: the pattern submitit fills in)."""
        return self.root / "jobs" / job_id

    def table(self, name: str) -> Path:
        return self.root / f"{name}.csv"

    def theta0(self, basin: str = "") -> Path:
        return self._in(basin, "theta0.safetensors")

    def finetuned(self, seed: int, task: str, basin: str = "") -> Path:
        return self._in(basin, f"seed{seed}/finetune/{task}.safetensors")

    def qat(self, seed: int, bits: int, task: str, basin: str = "") -> Path:
        return self._in(basin, f"seed{seed}/qat{bits}/{task}.safetensors")

    def rho(self, seed: int, bits: int, task: str, basin: str = "") -> Path:
        return self._in(basin, f"seed{seed}/qat{bits}/rho_{task}.safetensors")

    def evaluation(self, seed: int, bits: int, receiver: str) -> Path:
        return self.root / f"seed{seed}/eval{bits}/{receiver}.csv"

    def geometry(self, seed: int, bits: int, receiver: str) -> Path:
        return self.root / f"seed{seed}/geometry{bits}/{receiver}.csv"

    def outputs(self, kind: str, seed: int = -1, bits: int = -1, task: str = "", basin: str = "") -> list[Path]:
        """The files a stage of ``kind`` writes (:class:`qgeom.experiment.stages.Stage`)."""
        files = {
            "theta0": lambda: [self.theta0(basin)],
            "finetune": lambda: [self.finetuned(seed, task, basin)],
            "qat": lambda: [self.qat(seed, bits, task, basin), self.rho(seed, bits, task, basin)],
            "evaluate": lambda: [self.evaluation(seed, bits, task)],
            "geometry": lambda: [self.geometry(seed, bits, task)],
        }
        if kind not in files:
            raise ValueError(f"unknown stage kind {kind!r}; known: {', '.join(files)}")
        return files[kind]()


def load_run_config(run_dir: str | Path) -> RunConfig:
    """The :class:`~qgeom.experiment.config.RunConfig` a run directory holds (``config.json``)."""
    from qgeom.experiment.config import from_dict  # lazy: the layout itself stays torch-free (qgeom summary)

    path = RunLayout(run_dir).config
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: not a qgeom run directory")
    return from_dict(json.loads(path.read_text()))


def claim_config(run_dir: str | Path, cfg: RunConfig) -> None:
    """Write ``cfg`` as the run's ``config.json``, or check that the one there is the same.

    Fields added to :class:`RunConfig` since the run was made count as their defaults, so a run
    written by an older qgeom resumes. A difference is a :class:`ConfigMismatchError` naming the
    fields."""
    from qgeom.experiment.config import RunConfig  # lazy: the layout itself stays torch-free (qgeom summary)
    from qgeom.io import write_json  # lazy: the layout itself stays torch-free (qgeom summary)

    layout = RunLayout(run_dir)
    if not layout.config.exists():
        write_json(layout.config, cfg.to_dict(), indent=2, sort_keys=True)
        return
    old = json.loads(layout.config.read_text())
    new = json.loads(cfg.to_json())
    default = json.loads(RunConfig().to_json())
    diff = sorted(k for k in set(old) | set(new) if old.get(k, default.get(k)) != new.get(k))
    if diff:
        raise ConfigMismatchError(f"{layout.root} holds a run with another configuration (differs in: "
                                  f"{', '.join(diff)}); choose a new run directory")

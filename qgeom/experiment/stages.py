"""The transfer experiment as stages with declared inputs and outputs over the run directory.

A :class:`Stage` names one unit of work — θ_0, one fine-tuning, one QAT (with its ρ), one
receiver's evaluation or geometry — the files it writes (``outputs``, relative to the run
directory) and the stages whose files it reads (``inputs``). :func:`plan` lists a config's
stages; :func:`waves` groups them so that every stage's inputs lie in earlier waves; ``run_stage``
(:mod:`qgeom.experiment.run`) is the one function that computes a stage, in this process or as a
job anywhere that sees the run directory (:mod:`qgeom.experiment.jobs`). A stage is done when all
its outputs exist: they are written atomically, so a file that exists is whole, and a killed stage
is simply run again.

====================  ===============================================  =========================
stage                 outputs                                          inputs
====================  ===============================================  =========================
theta0                ``theta0.safetensors``                           —
finetune  (s, t)      ``seed{s}/finetune/{t}.safetensors``             theta0
qat       (s, b, t)   ``seed{s}/qat{b}/{t}.safetensors``, ``rho_{t}``  finetune (s, t)
evaluate  (s, b, R)   ``seed{s}/eval{b}/{R}.csv``                      qat (s, b, every task), theta0
geometry  (s, b, R)   ``seed{s}/geometry{b}/{R}.csv``                  qat (s, b, every task)
====================  ===============================================  =========================
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from qgeom.experiment.config import RunConfig
from qgeom.experiment.layout import RunLayout
from qgeom.experiment.tasks import task_specs

KINDS = ("theta0", "finetune", "qat", "evaluate", "geometry")


@dataclass(frozen=True, order=True)
class Stage:
    """One unit of work of a run: ``kind`` with its seed, bit width and task where they apply."""

    kind: str
    seed: int = -1
    bits: int = -1
    task: str = ""
    basin: str = ""  # "" (the run's θ_0) or "other" (the other-basin control's θ_0, under RUN/other/)

    @property
    def key(self) -> str:
        """A readable unique name: ``qat/seed0/2bit/shape`` (``other/qat/…`` in the other basin)."""
        parts = ([self.basin] if self.basin else []) + [self.kind] + \
                ([f"seed{self.seed}"] if self.seed >= 0 else []) + \
                ([f"{self.bits}bit"] if self.bits >= 0 else []) + ([self.task] if self.task else [])
        return "/".join(parts)

    def outputs(self) -> list[str]:
        """The files this stage writes, relative to the run directory."""
        paths = RunLayout(".").outputs(self.kind, self.seed, self.bits, self.task, self.basin)
        return [p.as_posix() for p in paths]

    def inputs(self, tasks: list[str], basins: tuple[str, ...] = ("",)) -> list["Stage"]:
        """The stages whose outputs this one reads (``tasks``: every task name of the run;
        ``basins``: the run's basins — an evaluation also reads the other basin's vectors)."""
        if self.kind == "theta0":
            return []
        if self.kind == "finetune":
            return [Stage("theta0", basin=self.basin)]
        if self.kind == "qat":
            return [Stage("finetune", self.seed, -1, self.task, self.basin)]
        donors = [Stage("qat", self.seed, self.bits, d) for d in tasks]
        if self.kind == "geometry":
            return donors
        others = [Stage("qat", self.seed, self.bits, d, b) for b in basins if b for d in tasks if d != self.task]
        return donors + others + [Stage("theta0")]

    def done(self, run_dir: str | Path) -> bool:
        """All outputs exist (each written atomically, so each is whole)."""
        return all((Path(run_dir) / p).exists() for p in self.outputs())


def basins(cfg: RunConfig) -> tuple[str, ...]:
    """The run's basins: its own θ_0, and "other" when the other-basin control is on."""
    return ("", "other") if "other_basin" in cfg.controls else ("",)


def plan(cfg: RunConfig, geometry: bool = True) -> list[Stage]:
    """Every stage of a run of ``cfg``, in an order that respects the inputs."""
    names = list(task_specs(cfg))
    jobs = [(s, b) for s in cfg.seeds for b in cfg.bits]
    out = [Stage("theta0", basin=b) for b in basins(cfg)]
    out += [Stage("finetune", s, -1, t, b) for b in basins(cfg) for s in cfg.seeds for t in names]
    out += [Stage("qat", s, bits, t, b) for b in basins(cfg) for s, bits in jobs for t in names]
    out += [Stage("evaluate", s, b, t) for s, b in jobs for t in names]
    if geometry:
        out += [Stage("geometry", s, b, t) for s, b in jobs for t in names]
    return out


def waves(stages: list[Stage], tasks: list[str]) -> list[list[Stage]]:
    """``stages`` grouped so that each stage's inputs are all in earlier groups (or not planned)."""
    planned, placed, out = set(stages), {}, []
    bs = tuple(sorted({s.basin for s in stages}))
    remaining = list(stages)
    while remaining:
        wave = [s for s in remaining if all(i in placed or i not in planned for i in s.inputs(tasks, bs))]
        if not wave:
            raise ValueError(f"stages with circular inputs: {[s.key for s in remaining]}")
        for s in wave:
            placed[s] = len(out)
        out.append(wave)
        remaining = [s for s in remaining if s not in placed]
    return out


def chains(cfg: RunConfig, geometry: bool = True) -> tuple[list[list[Stage]], list[list[Stage]]]:
    """The units of work of the two parallel phases of an in-process run, each a list of stages run
    one after the other by one process: *training* — per (seed, task), in every basin, fine-tune
    then QAT (and ρ) at every bit width; *receiving* — per (seed, bits, receiver), evaluate then
    geometry."""
    names = list(task_specs(cfg))
    train = [[st for b in basins(cfg)
              for st in [Stage("finetune", s, -1, t, b)] + [Stage("qat", s, bits, t, b) for bits in cfg.bits]]
             for s in cfg.seeds for t in names]
    receive = [[Stage("evaluate", s, b, t)] + ([Stage("geometry", s, b, t)] if geometry else [])
               for s in cfg.seeds for b in cfg.bits for t in names]
    return train, receive

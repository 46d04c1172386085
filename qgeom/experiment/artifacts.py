"""Read-only access to a finished run's checkpoints, quantization vectors and task data.

Commands that only read a run (``align-demo``, the checkpoint figures) use :class:`RunArtifacts`:
it never trains or writes, and a stage the run lacks is an error that says how to make it.
"""

from __future__ import annotations

from pathlib import Path

from qgeom.data import Task, parse_task, probe_batches
from qgeom.experiment.layout import RunLayout, load_run_config
from qgeom.experiment.tasks import load_run_task, task_specs
from qgeom.io import load_params
from qgeom.models import create_model
from qgeom.params import Params, select


class RunArtifacts:
    """Read-only access to a finished run's checkpoints and task data (the layout of
    :class:`~qgeom.experiment.layout.RunLayout`); nothing is ever trained or written."""

    def __init__(self, run_dir: str | Path) -> None:
        self.dir = Path(run_dir)
        self.layout = RunLayout(self.dir)
        self.cfg = load_run_config(self.dir)
        self._tasks: dict = {}

    def require(self, *, seed: int | None = None, bits: int | None = None, tasks: tuple[str, ...] = ()) -> None:
        """Raise ``ValueError`` naming the stage and how to make it unless the run's config has
        ``seed``, ``bits`` and ``tasks`` (a read-only command never trains what is missing)."""
        c, how = self.cfg, f"qgeom run {self.layout.config}"
        if bits is not None and bits not in c.bits:
            want = ",".join(str(b) for b in sorted(set(c.bits) | {bits}))
            raise ValueError(f"{self.dir} has no {bits}-bit stage (its bits: {', '.join(map(str, c.bits))}); "
                             f"make one with `{how} bits={want} --run-dir NEW_DIR`")
        if seed is not None and seed not in c.seeds:
            want = ",".join(str(s) for s in sorted(set(c.seeds) | {seed}))
            raise ValueError(f"{self.dir} has no seed {seed} (its seeds: {', '.join(map(str, c.seeds))}); "
                             f"make one with `{how} seeds={want} --run-dir NEW_DIR`")
        unknown = [t for t in tasks if t not in c.tasks]
        if unknown:
            raise ValueError(f"{self.dir} has no task {', '.join(unknown)} (its tasks: {', '.join(c.tasks)})")

    def _load(self, path: Path) -> Params:
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: the run is unfinished; resume it with "
                                    f"`qgeom run {self.layout.config} --run-dir {self.dir}`")
        return load_params(path)[0]

    def finetuned(self, seed: int, task: str):
        return self._load(self.layout.finetuned(seed, task))

    def qat(self, seed: int, bits: int, task: str):
        return self._load(self.layout.qat(seed, bits, task))

    def rho(self, seed: int, bits: int, task: str, scope: str = "backbone"):
        return select(self._load(self.layout.rho(seed, bits, task)), scope)

    def model(self, params):
        """The run's architecture for a checkpoint (classes read from its head)."""
        return create_model(self.cfg.preset, int(params["head.weight"].shape[0]), **self.cfg.model_overrides)

    @property
    def names(self) -> list[str]:
        """The run's task names (what its artifacts are filed under)."""
        return list(task_specs(self.cfg))

    def task(self, name: str) -> Task:
        """The task's val and test splits as the run read them (offline: a token train split)."""
        if name not in self._tasks:
            small = {} if parse_task(task_specs(self.cfg)[name]).streamed else {"n_train": 8}
            self._tasks[name] = load_run_task(self.cfg, name, **small)
        return self._tasks[name]

    def probe(self, task: str, seed: int, n: int):
        return probe_batches(self.task(task).val, n, min(n, self.cfg.probe_batch), seed=seed)

    def defaults(self, seed: int | None, bits: int | None) -> tuple[int, int]:
        return (self.cfg.seeds[0] if seed is None else int(seed)), (min(self.cfg.bits) if bits is None else int(bits))

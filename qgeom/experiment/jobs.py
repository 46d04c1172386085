"""A run's stages as cluster jobs, through submitit (Slurm, or local subprocesses).

:func:`run_jobs` submits :func:`qgeom.experiment.run.run_stage_job` once per stage that is not done, wave
by wave (:func:`qgeom.experiment.stages.waves`: a stage starts when what it reads exists), at most
``max_parallel`` at a time, retrying a failed or pre-empted job ``retries`` times. The run
directory stays the one source of truth: a job whose outputs exist is never submitted again,
so re-running the same command after a crash, a kill or a cancelled allocation continues where
the run stopped. Job ids and states are kept in ``RUN/jobs/state.json`` (for
:func:`status`), submitit's logs in ``RUN/jobs/<job id>/``.

This is orchestration only: no scheduler is written here. On Slurm the submitting process
waits for each wave (run it in a ``tmux``/``screen`` session or a small CPU job).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from qgeom.experiment.layout import RunLayout
from qgeom.experiment.run import run_stage_job
from qgeom.experiment.stages import Stage, plan, waves
from qgeom.io import write_json

EXECUTORS = ("none", "local", "slurm")


class ExecutorUnavailableError(ValueError):
    """The requested executor cannot run here (e.g. no Slurm on this machine); a ``ValueError``
    like every refused input, so the CLI reports it in one line."""


class StageFailedError(ValueError):
    """A stage's job failed every attempt (the message names the stage, the job and its logs)."""


def check_executor(executor: str) -> None:
    """Fail at once — before any work — when ``executor`` cannot run on this machine."""
    if executor not in EXECUTORS:
        raise ValueError(f"--executor: {executor!r} is not one of {', '.join(EXECUTORS)}")
    if executor == "none":
        return
    try:
        import submitit  # noqa: F401  # lazy: optional dependency (qgeom[cluster])
    except ImportError:
        raise ExecutorUnavailableError("the job executors need submitit: pip install submitit "
                                       "(or qgeom[cluster])") from None
    if executor == "slurm" and shutil.which("sbatch") is None:
        raise ExecutorUnavailableError("--executor slurm: no Slurm here (sbatch is not on PATH); run on a "
                                       "cluster's login node, or use --executor local")


def read_state(run_dir: str | Path) -> dict:
    """``{stage key: {"job_id", "state", "attempt"}}`` as last recorded by :func:`run_jobs`."""
    path = RunLayout(run_dir).job_state
    return json.loads(path.read_text()) if path.exists() else {}


def _write_state(run_dir: Path, state: dict) -> None:
    write_json(RunLayout(run_dir).job_state, state, indent=1, sort_keys=True)


def make_executor(run_dir: Path, executor: str, *, partition: str | None = None, gpus_per_job: int = 0,
                  timeout_min: int = 60, cpus_per_job: int | None = None, name: str = "qgeom"):
    """A configured ``submitit.AutoExecutor`` writing its files under ``run_dir/jobs``."""
    import submitit  # lazy: optional dependency (qgeom[cluster])

    ex = submitit.AutoExecutor(folder=str(RunLayout(run_dir).job_dir()), cluster=executor)
    params = dict(name=name, timeout_min=timeout_min, gpus_per_node=gpus_per_job, tasks_per_node=1, nodes=1)
    if cpus_per_job:
        params["cpus_per_task"] = cpus_per_job
    if partition:
        params["slurm_partition"] = partition
    ex.update_parameters(**params)
    return ex


def run_jobs(cfg, run_dir: str | Path, executor: str = "local", geometry: bool = True, *,
             partition: str | None = None, gpus_per_job: int = 0, timeout_min: int = 60, max_parallel: int = 4,
             retries: int = 1, threads: int | None = None, cpus_per_job: int | None = None,
             log: Callable[[str], None] = lambda msg: None, poll_s: float = 0.5) -> list[Stage]:
    """Run every stage of ``cfg`` that is not done as a job; returns the stages that ran.

    The run directory must already hold ``cfg`` (``config.json``, written by
    :class:`~qgeom.experiment.transfer.TransferRun`). A job that fails ``retries + 1`` times stops the run
    with its log's path (the stages already done stay done).
    """
    import submitit  # lazy: optional dependency (qgeom[cluster])

    check_executor(executor)
    run_dir = Path(run_dir)
    stages = plan(cfg, geometry)
    names = sorted({s.task for s in stages if s.task})
    ex = make_executor(run_dir, executor, partition=partition, gpus_per_job=gpus_per_job, timeout_min=timeout_min,
                       cpus_per_job=cpus_per_job, name=f"qgeom-{cfg.name}")
    state, ran = read_state(run_dir), []
    for wave in waves(stages, names):
        todo = [s for s in wave if not s.done(run_dir)]
        attempts = {s: 0 for s in todo}
        running: dict = {}
        while todo or running:
            while todo and len(running) < max_parallel:
                stage = todo.pop(0)
                attempts[stage] += 1
                job = ex.submit(run_stage_job, str(run_dir), stage, threads)
                running[job] = stage
                state[stage.key] = {"job_id": str(job.job_id), "state": "running", "attempt": attempts[stage]}
                _write_state(run_dir, state)
                log(f"submitted {stage.key} as job {job.job_id} (attempt {attempts[stage]})")
            time.sleep(poll_s)
            for job in [j for j in running if j.done()]:
                stage = running.pop(job)
                try:
                    job.result()
                    ok = stage.done(run_dir)
                    why = "" if ok else "finished without writing all its outputs"
                except (submitit.core.utils.UncompletedJobError, submitit.core.utils.FailedJobError) as e:
                    ok, why = False, str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
                state[stage.key] = {"job_id": str(job.job_id), "state": "done" if ok else "failed",
                                    "attempt": attempts[stage]}
                _write_state(run_dir, state)
                if ok:
                    ran.append(stage)
                    log(f"done {stage.key} (job {job.job_id})")
                elif attempts[stage] <= retries:
                    log(f"job {job.job_id} ({stage.key}) failed: {why}; retrying")
                    todo.append(stage)
                else:
                    for other in running:
                        other.cancel(check=False)
                    raise StageFailedError(f"stage {stage.key} failed {attempts[stage]} times (last job {job.job_id}: "
                                       f"{why}); logs in {RunLayout(run_dir).job_dir(str(job.job_id))}; re-run the same "
                                       "command to continue")
    return ran


def status(cfg, run_dir: str | Path, geometry: bool = True) -> list[dict]:
    """One row per planned stage: ``stage``, ``status`` (done / running / failed / missing), ``job_id``."""
    run_dir = Path(run_dir)
    state = read_state(run_dir)
    rows = []
    for s in plan(cfg, geometry):
        rec = state.get(s.key, {})
        if s.done(run_dir):
            st = "done"
        elif rec.get("state") in ("running", "failed"):
            st = rec["state"]
        else:
            st = "missing"
        rows.append({"stage": s.key, "status": st, "job_id": rec.get("job_id", "") if st != "missing" else ""})
    return rows

"""The one dispatcher of a run's stages, and the loop that runs them all on this machine.

:func:`run_stage` computes one :class:`~qgeom.experiment.stages.Stage` of a
:class:`~qgeom.experiment.transfer.TransferRun` (skipped where its outputs exist); every way of
running a run goes through it: :func:`run_all` here, in this process or in worker processes, and
the cluster jobs of :mod:`qgeom.experiment.jobs` (:func:`run_stage_job`).

:func:`run_all` computes θ_0 (every basin) first, then two parallel phases over
:func:`~qgeom.experiment.stages.chains`: *training* (per seed and task: fine-tune, then QAT and ρ
for every bit width and basin) and *evaluation + geometry* (per seed, bit width and receiver).
With ``workers > 1`` the chains run in that many spawned processes with one torch thread each
(the artifacts are the hand-off, as for jobs on other machines). On 2 cores this avoids the
intra-op thread synchronisation that makes 2-thread torch slow on a loaded machine (measured: a
micro-ViT training step 0.10 s with 1 thread, 0.20 s with 2, at load 3.3). Each artifact is
computed by one single-thread process, so its values do not depend on ``workers``.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import torch

from qgeom.experiment.config import RunConfig
from qgeom.experiment.layout import RunLayout, load_run_config
from qgeom.experiment.stages import KINDS, Stage, chains
from qgeom.experiment.timing import StageTimer
from qgeom.experiment.transfer import TransferRun
from qgeom.io import write_csv
from qgeom.processes import start_worker, worker_initargs
from qgeom.progress import progress

PHASES = ("training", "evaluation + geometry")


def run_stage(run: TransferRun, stage: Stage) -> list[str]:
    """Compute ``stage`` of ``run`` (skipped where its outputs exist); its outputs.

    ``QGEOM_KILL_STAGE=<key>`` (a fault injection for tests) kills the process once, half-way
    through that stage: after a QAT checkpoint is written and before its ρ."""
    if stage.kind == "theta0":
        run.theta0(stage.basin)
    elif stage.kind == "finetune":
        run.finetuned(stage.seed, stage.task, stage.basin)
    elif stage.kind == "qat":
        run.qat(stage.seed, stage.bits, stage.task, stage.basin)
        _maybe_kill(run.dir, stage)
        run.rho(stage.seed, stage.bits, stage.task, stage.basin)
    elif stage.kind == "evaluate":
        run.evaluate(stage.seed, stage.bits, stage.task)
    elif stage.kind == "geometry":
        run.geometry(stage.seed, stage.bits, stage.task)
    else:
        raise ValueError(f"unknown stage kind {stage.kind!r}; known: {', '.join(KINDS)}")
    return stage.outputs()


def run_stage_job(run_dir: str | Path, stage: Stage, threads: int | None = None) -> list[str]:
    """:func:`run_stage` as the body of a job (:mod:`qgeom.experiment.jobs`): it reads only the run
    directory (its ``config.json`` and the inputs' files) and writes only the stage's outputs,
    atomically. ``threads`` sets torch's intra-op threads, so a job computes bit for bit what the
    submitting process would."""
    if threads:
        torch.set_num_threads(threads)
    return run_stage(TransferRun(load_run_config(run_dir), run_dir, progress=False), stage)


def _maybe_kill(run_dir: str | Path, stage: Stage) -> None:
    if os.environ.get("QGEOM_KILL_STAGE") != stage.key:
        return
    marker = RunLayout(run_dir).job_dir(f"killed-{stage.key.replace('/', '_')}")
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text("killed once by QGEOM_KILL_STAGE\n")
    os.kill(os.getpid(), signal.SIGKILL)


def run_all(run: TransferRun, geometry: bool = True, workers: int = 1) -> dict[str, float]:
    """Every stage of ``run`` in order (each skipped when its outputs exist); returns each
    phase's wall time. Stage seconds are summed over the processes into ``run.timer``."""
    run.tasks  # resolve every task (files found, classes read) before any work
    for basin in run.basins:
        run.theta0(basin)
    seconds: dict[str, float] = {}
    pool, finished = None, False
    try:
        for phase, todo in zip(PHASES, chains(run.cfg, geometry)):
            t0 = time.perf_counter()
            todo = [chain for chain in todo if not all(s.done(run.dir) for s in chain)]
            if workers > 1 and todo:
                pool = pool or worker_pool(workers, _worker_init, (run.cfg, str(run.dir)))  # workers start once
                _run_parallel(run, pool, todo, f"{run.cfg.name}: {phase} ({workers} workers)")
            else:
                for chain in progress(todo, desc=f"{run.cfg.name}: {phase}", unit="chains", enabled=run.progress):
                    _run_chain(run, chain)
            seconds[phase] = time.perf_counter() - t0
        finished = True
    finally:
        if pool is not None:
            stop_pool(pool, wait=finished)
    return seconds


def _run_chain(run: TransferRun, chain: list[Stage]) -> None:
    run.log(" ".join(s.key for s in chain))
    for stage in chain:
        run_stage(run, stage)


def collect_tables(run: TransferRun, geometry: bool = True) -> dict[str, pd.DataFrame]:
    """The run's combined tables (``accuracy``, ``dissimilarity``, and ``geometry`` when computed or
    left by a full run), the first two written as ``RUN/<name>.csv``, the geometry one too."""
    c = run.cfg
    cells = [(s, b, t) for s in c.seeds for b in c.bits for t in run.names]
    tables = {"accuracy": pd.concat([run.evaluate(*cell) for cell in cells], ignore_index=True),
              "dissimilarity": run.dissimilarity()}
    if geometry or all(run.layout.geometry(*cell).exists() for cell in cells):  # read what a full run left
        tables["geometry"] = pd.concat([run.geometry(*cell) for cell in cells], ignore_index=True)
    for name, df in tables.items():
        if name != "dissimilarity":
            write_csv(run.layout.table(name), df)
    return tables



def worker_pool(workers: int, initializer=None, initargs: tuple = ()) -> ProcessPoolExecutor:
    """``workers`` spawned processes that end with this one — also when it is killed with SIGKILL
    (:mod:`qgeom.processes`) — and leave Ctrl-C to it: they ignore SIGINT, so an interrupted run
    prints one message (this process's), and :func:`stop_pool` ends them."""
    return ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=start_worker,
                               initargs=worker_initargs(initializer, initargs))


def stop_pool(pool: ProcessPoolExecutor, wait: bool = True) -> None:
    """Shut ``pool`` down: after its work (``wait``), or at once, terminating the workers (an
    exception or Ctrl-C in this process: a chain may run for minutes, and its outputs are written
    atomically, so nothing is lost but the chain's progress)."""
    if wait:
        pool.shutdown(wait=True)
        return
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for p in processes:
        p.terminate()
    for p in processes:
        p.join(10)


@contextmanager
def sigint_deferred():
    """SIGINT blocked (not ignored) while worker processes are spawned. The workers inherit the
    signal mask, so a Ctrl-C that reaches them while they still import (before
    :func:`qgeom.processes.start_worker` ignores and unblocks it) prints no traceback; this process
    keeps a Ctrl-C that arrives meanwhile pending and takes it when the block ends — never lost,
    however long spawning takes on a loaded machine. Without ``pthread_sigmask`` (not POSIX):
    ignored while spawning, as the workers then are."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if hasattr(signal, "pthread_sigmask"):
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            yield
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def _run_parallel(run: TransferRun, pool: ProcessPoolExecutor, todo: list[list[Stage]], desc: str) -> None:
    with sigint_deferred():  # submit spawns the workers
        futures = [pool.submit(_worker_chain, chain) for chain in todo]
    with progress(total=len(futures), desc=desc, unit="chains", enabled=run.progress) as bar:
        for f in as_completed(futures):
            run.timer.merge(f.result())  # re-raises a worker's exception here
            bar.update()


_WORKER_RUN: TransferRun | None = None


def _worker_init(cfg: RunConfig, run_dir: str) -> None:
    """A worker process: one torch thread, its own TransferRun over the shared run directory."""
    global _WORKER_RUN
    torch.set_num_threads(1)
    _WORKER_RUN = TransferRun(cfg, run_dir, progress=False, validated=True)


def _worker_chain(chain: list[Stage]) -> dict:
    """Run one chain of stages in a worker; return the seconds and counts its stages took."""
    run = _WORKER_RUN
    run.timer = StageTimer()
    _run_chain(run, chain)
    return run.timer.state()

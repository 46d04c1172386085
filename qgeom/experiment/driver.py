"""The experiment end to end: config → run (stages) → tables → statistics → ``summary.json``.

:func:`run_experiment` is what ``qgeom run`` and ``qgeom demo`` call, and what a script or a
notebook calls to run an experiment without the command line.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch

from qgeom.experiment import analysis, provenance
from qgeom.experiment.jobs import check_executor, run_jobs
from qgeom.experiment.layout import RunLayout
from qgeom.experiment.presets import resolve_config
from qgeom.experiment.run import collect_tables, run_all
from qgeom.experiment.summary import summarize
from qgeom.experiment.transfer import TransferRun
from qgeom.files import check_writable, hold_lock
from qgeom.io import write_csv, write_json
from qgeom.runtime import default_workers, machine_info

SERIAL_STAGES = ("pretrain", "dissimilarity", "statistics")  # not inside a parallel phase


def run_experiment(config: str, run_dir: Path | None, overrides: list[str], geometry: bool = True,
                   progress: bool = True, workers: int | None = None, jobs: dict | None = None,
                   log: Callable[[str], None] = lambda msg: None) -> dict:
    """Run (or resume) a configured experiment and write its tables and summary; returns the summary.

    config: a run preset or a .json/.yaml file; overrides: ``key=value`` strings. workers:
    processes for the per-task and per-receiver chains (default
    :func:`qgeom.runtime.default_workers`). jobs: keyword arguments of
    :func:`qgeom.experiment.jobs.run_jobs` (``executor`` local or slurm, …): the stages then run as
    cluster jobs, and this process only reads their artifacts.

    Nothing is written before the whole configuration and every input (θ_0, the tasks) has been
    checked; then the run directory is locked (one writer), claimed, and its recorded inputs
    compared with the current ones (:mod:`qgeom.experiment.provenance`) before any work."""
    cfg = resolve_config(config, overrides)  # validated: a bad config fails here, before any work
    run_dir = Path(run_dir or f"runs/{cfg.name}")
    check_writable(run_dir, directory=True)
    workers = workers or default_workers()  # QGEOM_WORKERS checked before anything is written
    executor = (jobs or {}).get("executor", "none")
    if executor != "none":
        check_executor(executor)  # before anything is written or trained
    start = time.time()
    run = TransferRun(cfg, run_dir, progress=progress, validated=True, claim=False)
    data = run.preflight()  # θ_0 and the tasks: still nothing written
    with hold_lock(RunLayout(run_dir).lock, str(run_dir)):
        run.claim()
        provenance.sync(run_dir, cfg, data)  # a changed input is refused here, before any work
        summary = _run(run, geometry, workers, jobs, log, start)
        provenance.sync(run_dir, cfg, data)  # records what was computed
        write_summary(run_dir, summary)
    return summary


def _run(run: TransferRun, geometry: bool, workers: int, jobs: dict | None, log: Callable[[str], None],
         start: float) -> dict:
    """The stages (as jobs, or here), the tables and the statistics of a claimed run: its summary."""
    cfg, run_dir = run.cfg, run.dir
    if jobs and jobs.get("executor", "none") != "none":
        run_jobs(cfg, run_dir, geometry=geometry, threads=torch.get_num_threads(), log=log if run.progress else
                 (lambda msg: None), **jobs)
    phase_seconds = run_all(run, geometry, workers)
    tables = collect_tables(run, geometry)
    with run.timer.stage("statistics"):
        results, corr = statistics(run_dir, tables, cfg.permutations)
    seconds = time.time() - start
    return {"config": cfg.to_dict(), "run_dir": str(run_dir), "seconds": round(seconds, 1),
            "machine": machine_info() | {"workers": workers},
            "stage_seconds": time_table(run.timer.table(), phase_seconds, seconds),
            "results": results,
            "correlations": corr[(corr.target == "gain_unit") & (corr.method == "spearman")].to_dict("records")}


def statistics(run_dir: Path, tables: dict[str, pd.DataFrame], permutations: int) -> tuple[list[dict], pd.DataFrame]:
    """Pairs, receivers and correlations tables (written as CSV) and the summary's results."""
    layout = RunLayout(run_dir)
    pairs = analysis.pair_table(tables["accuracy"], tables.get("geometry"), tables["dissimilarity"])
    receivers = analysis.receiver_table(tables["accuracy"])
    corr = analysis.correlations(pairs, permutations)
    for name, df in (("pairs", pairs), ("receivers", receivers), ("correlations", corr)):
        write_csv(layout.table(name), df)
    return summarize(pairs, receivers, corr), corr


def time_table(stages: list[dict], phase_seconds: dict[str, float], seconds: float) -> list[dict]:
    """Seconds per computed stage, then each parallel phase's wall time and the rest."""
    phases = [dict(stage=f"wall: {k}", n=1, seconds=round(v, 2), per_call=None) for k, v in phase_seconds.items()]
    serial = sum(r["seconds"] for r in stages if r["stage"] in SERIAL_STAGES)
    phases.append(dict(stage="wall: other (loading, tables)", n=1,
                       seconds=round(seconds - serial - sum(r["seconds"] for r in phases), 2), per_call=None))
    return stages + phases


def write_summary(run_dir: Path, summary: dict) -> None:
    """``RUN/summary.json``, written atomically as strict JSON (NaN → null)."""
    write_json(RunLayout(run_dir).summary, summary)


def recompute_summary(run_dir: Path, summary: dict) -> dict:
    """``summary`` with its results recomputed by :func:`qgeom.experiment.summary.summarize` from the
    run's CSVs (no training, evaluation or permutation test is redone); written back atomically."""
    layout = RunLayout(run_dir)
    tables = {n: pd.read_csv(layout.table(n)) for n in ("pairs", "receivers", "correlations")}
    summary = summary | {"results": summarize(tables["pairs"], tables["receivers"], tables["correlations"])}
    write_summary(run_dir, summary)
    return summary

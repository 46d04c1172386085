"""``qgeom run`` and ``qgeom demo``: the transfer experiment end to end, with a summary table."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from qgeom.commands import check_writable, clean_errors
from qgeom.commands import options as O
from qgeom.commands.output import make_console

def _console() -> Console:
    """A terminal's own width; COLUMNS when set; else 120 (files and pipes)."""
    if "COLUMNS" in os.environ or Console().is_terminal:
        return Console()
    return Console(width=120)


console = _console()


def machine_info() -> dict:
    """Where the run's time was measured: CPU model, cores, torch threads, 1-minute load average."""
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": device,
            "load_average_at_end": [round(x, 2) for x in load]}


def default_workers() -> int:
    """Worker processes for a run: ``QGEOM_WORKERS`` when set, else 1 on a GPU, else min(2, cores)."""
    if os.environ.get("QGEOM_WORKERS"):
        return max(1, int(os.environ["QGEOM_WORKERS"]))
    import torch

    return 1 if torch.cuda.is_available() else max(1, min(2, os.cpu_count() or 1))


def run_experiment(config: str, run_dir: Path | None, overrides: list[str], geometry: bool = True,
                   progress: bool = True, workers: int | None = None, jobs: dict | None = None) -> dict:
    """Run (or resume) a configured experiment and write its tables and summary; returns the summary.

    workers: processes for the per-task and per-receiver jobs (default :func:`default_workers`).
    jobs: keyword arguments of :func:`qgeom.experiment.jobs.run_jobs` (``executor`` local or slurm, …): the
    stages then run as cluster jobs, and this process only reads their artifacts."""

    from qgeom.experiment import analysis
    from qgeom.experiment.config import load_config, with_overrides
    from qgeom.io import atomic_write
    from qgeom.experiment.run import TransferRun

    cfg = with_overrides(load_config(config), overrides)  # validated: a bad config fails here, before any work
    run_dir = Path(run_dir or f"runs/{cfg.name}")
    check_writable(run_dir, directory=True)
    executor = (jobs or {}).get("executor", "none")
    if executor != "none":
        from qgeom.experiment.jobs import check_executor

        check_executor(executor)  # before anything is written or trained
    start = time.time()
    run = TransferRun(cfg, run_dir, progress=progress)
    workers = workers or default_workers()
    if executor != "none":
        import torch

        from qgeom.experiment.jobs import run_jobs

        run_jobs(cfg, run_dir, geometry=geometry, threads=torch.get_num_threads(),
                 log=(lambda msg: console.print(msg)) if progress else (lambda msg: None), **jobs)
    tables = run.run(geometry=geometry, workers=workers)
    with run.timer.stage("statistics"):
        pairs = analysis.pair_table(tables["accuracy"], tables.get("geometry"), tables["dissimilarity"])
        receivers = analysis.receiver_table(tables["accuracy"])
        corr = analysis.correlations(pairs, cfg.permutations)
        for name, df in (("pairs", pairs), ("receivers", receivers), ("correlations", corr)):
            atomic_write(run_dir / f"{name}.csv", lambda tmp, df=df: df.to_csv(tmp, index=False))
        results = analysis.summarize(pairs, receivers, corr)
    seconds = time.time() - start
    stages = run.timer.table()
    phases = [dict(stage=f"wall: {k}", n=1, seconds=round(v, 2), per_call=None) for k, v in run.phase_seconds.items()]
    serial = sum(r["seconds"] for r in stages if r["stage"] in ("pretrain", "dissimilarity", "statistics"))
    phases.append(dict(stage="wall: other (loading, tables)", n=1,
                       seconds=round(seconds - serial - sum(r["seconds"] for r in phases), 2), per_call=None))
    summary = {"config": cfg.to_dict(), "run_dir": str(run_dir), "seconds": round(seconds, 1),
               "machine": machine_info() | {"workers": workers}, "stage_seconds": stages + phases,
               "results": results,
               "correlations": corr[(corr.target == "gain_unit") & (corr.method == "spearman")].to_dict("records")}
    write_summary(run_dir, summary)
    return summary


def write_summary(run_dir: Path, summary: dict) -> None:
    """``RUN/summary.json``, written atomically (what ``qgeom summary`` reads)."""
    from qgeom.io import atomic_write

    atomic_write(run_dir / "summary.json", lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=2, default=float)))


def recompute_summary(run_dir: Path, summary: dict) -> dict:
    """``summary`` with its results recomputed by :func:`qgeom.experiment.analysis.summarize` from the run's
    CSVs (no training, evaluation or permutation test is redone); written back atomically."""
    import pandas as pd

    from qgeom.experiment import analysis

    tables = {n: pd.read_csv(run_dir / f"{n}.csv") for n in ("pairs", "receivers", "correlations")}
    summary = summary | {"results": analysis.summarize(tables["pairs"], tables["receivers"], tables["correlations"])}
    write_summary(run_dir, summary)
    return summary


def print_summary(summary: dict, console: Console = console) -> None:
    """The summary as two rich tables (outcomes; alignment) plus the plain-language verdicts."""
    cfg = summary["config"]
    table = Table(title=f"qgeom transfer: {cfg['name']} ({len(cfg['tasks'])} tasks, seeds {cfg['seeds']})",
                  caption="Top-1 % on test, mean over seeds; gains in points over off-diagonal donor→receiver pairs; 95% "
                          "intervals over tasks and seeds (task bootstrap ⊕ t over seeds)")
    for col in ("bits", "scope", "pairs", "FP", "PTQ", "QAT→PTQ", "gain λ=1", "vs random", "gain λ_val",
                "multi λ=1", "FP cost λ=1"):
        table.add_column(col, justify="right")

    def iv(d: dict) -> str:
        lo, hi = d["low"], d["high"]
        return f"{d['mean']:+.1f} [{lo:+.1f}, {hi:+.1f}]" if lo == lo else f"{d['mean']:+.1f}"

    for r in summary["results"]:
        table.add_row(str(r["bits"]), r["scope"], str(r["n_pairs"]), f"{r['base_fp']:.1f}", f"{r['base_ptq']:.1f}",
                      f"{r['qat_ptq']:.1f}", iv(r["gain_unit"]), iv(r["gain_vs_random"]), iv(r["gain_tuned"]),
                      f"{r['multi_donor_gain_unit']:+.1f}", f"{r['fp_cost']:+.1f}")
    console.print(table)
    corr = summary.get("correlations", [])
    if corr:
        t2 = Table(title="Does alignment predict the λ = 1 gain? Spearman over off-diagonal pairs",
                   caption="Spearman and p (quadratic-assignment permutation test over task labels) on the seed-averaged "
                           "matrices; per-seed range: the same Spearman seed by seed; LOO: leave-one-task-out range")
        def rng(lo, hi) -> str:
            return f"[{lo:+.2f}, {hi:+.2f}]" if lo == lo and hi == hi else "n/a (too few tasks)"

        for col in ("bits", "scope", "alignment", "Spearman", "p (QAP)", "per-seed range", "LOO range"):
            t2.add_column(col, justify="right")
        for c in corr:
            t2.add_row(str(c["bits"]), c["scope"], c["alignment"], f"{c['r']:+.2f}", f"{c['p_value']:.3f}",
                       rng(c.get("seed_r_min", float("nan")), c.get("seed_r_max", float("nan"))),
                       rng(c["loo_min"], c["loo_max"]))
        console.print(t2)
    for r in summary["results"]:
        console.print(f"[bold]{r['bits']} bits, {r['scope']} scope[/]")
        for key in ("verdict_patch", "verdict_random", "verdict_tuned", "verdict_alignment", "verdict_over_controls"):
            if r.get(key):
                console.print(f"  - {r[key]}")
        for line in r.get("verdict_controls", []):  # the stronger controls and the decomposition (issue 15)
            console.print(f"  - {line}")
    stages = summary.get("stage_seconds")
    if stages:
        t3 = Table(title="Where the time went: seconds per computed stage (summed over worker processes), "
                         "and the wall time of each parallel phase")
        for col in ("stage", "n", "seconds", "per call"):
            t3.add_column(col, justify="right")
        for r in stages:
            t3.add_row(r["stage"], str(r["n"]), f"{r['seconds']:.1f}",
                       f"{r['per_call']:.1f}" if r.get("per_call") is not None else "")
        console.print(t3)
    m = summary.get("machine")
    where = (f" on {m['cpu']} ({m['cores']} cores, {m.get('workers', 1)} workers, {m['device']}; load average "
             f"at the end {', '.join(f'{x:.2f}' for x in m['load_average_at_end'])})") if m else ""
    console.print(f"finished in {summary['seconds']} s{where}")


def emit_summary(summary: dict, fmt: str, quiet: bool = False) -> None:
    """The summary in the format asked for: rich tables (``print_summary``; in a pipe wide enough
    that nothing is cut), or for programs the outcome rows as CSV (then, under ``# table:``
    lines, the correlations) or the whole summary as JSON (stdout holds only the data)."""
    if fmt == "table":
        print_summary(summary, console=make_console())
        return
    if fmt == "json":
        sys.stdout.write(json.dumps(summary, indent=1, default=float) + "\n")
        return
    import csv

    tables = [("results", summary.get("results", [])), ("correlations", summary.get("correlations", []))]
    for i, (name, rows) in enumerate(tables):
        cols = list(dict.fromkeys(k for r in rows for k in r))
        sys.stdout.write(("\n" if i else "") + f"# table: {name}\n")
        writer = csv.DictWriter(sys.stdout, fieldnames=cols, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    sys.stdout.flush()


def register(app: typer.Typer) -> None:
    @app.command("run")
    @clean_errors
    def run_cmd(
        config: str = typer.Argument("demo", help="a preset (demo, tiny, gpu) or a .json/.yaml config file"),
        overrides: Optional[list[str]] = typer.Argument(None, help="key=value overrides, e.g. bits=2,3 finetune.steps=300"),
        run_dir: Optional[Path] = typer.Option(None, help="run directory (default runs/NAME); resumes if it exists"),
        bits: Optional[str] = O.bits("bit widths, comma-separated, each 2–8 (same as bits=...; default: the "
                                     "preset's)"),
        geometry: bool = typer.Option(True, help="compute the curvature geometry stage"),
        workers: Optional[int] = typer.Option(None, help="worker processes (default: QGEOM_WORKERS, else 1 on a GPU, "
                                                         "else min(2, cores)); each uses one torch thread"),
        executor: str = typer.Option("none", help="none: every stage on this machine (with --workers); local: each "
                                                  "stage a subprocess job; slurm: each stage a Slurm job (submitit)"),
        slurm_partition: Optional[str] = typer.Option(None, help="Slurm partition of the jobs"),
        gpus_per_job: int = typer.Option(0, min=0, help="GPUs per job (Slurm)"),
        timeout_min: int = typer.Option(60, min=1, help="time limit of one job, minutes"),
        max_parallel: int = typer.Option(4, min=1, help="jobs running at once"),
        retries: int = typer.Option(1, min=0, help="re-submissions of a failed or pre-empted job"),
        device: str = O.device(), threads: int = O.threads(), quiet: bool = O.quiet(), format: str = O.format(),
    ) -> None:
        """Run or resume the transfer experiment: pretrain → fine-tune → QAT → ρ → evaluate → geometry → statistics."""
        O.apply_runtime(device, threads)
        if executor not in ("none", "local", "slurm"):
            raise typer.BadParameter(f"{executor!r} is not one of none, local, slurm", param_hint="--executor")
        ov = list(overrides or []) + ([f"bits={','.join(map(str, bits))}"] if bits else [])
        jobs = None if executor == "none" else dict(executor=executor, partition=slurm_partition,
                                                      gpus_per_job=gpus_per_job, timeout_min=timeout_min,
                                                      max_parallel=max_parallel, retries=retries)
        emit_summary(run_experiment(config, run_dir, ov, geometry, progress=not quiet, workers=workers, jobs=jobs),
                     format, quiet)

    @app.command("demo")
    @clean_errors
    def demo_cmd(
        run_dir: Optional[Path] = typer.Option(None, help="run directory (default runs/demo); resumes if it exists"),
        bits: Optional[str] = O.bits("bit widths, comma-separated, each 2–8 (default: the preset's 2)"),
        device: str = O.device(), threads: int = O.threads(), quiet: bool = O.quiet(), format: str = O.format(),
    ) -> None:
        """The embedded default: the `demo` preset (micro ViT, 6 offline tasks, 2 bits, 3 seeds) on CPU."""
        O.apply_runtime(device, threads)
        ov = [f"bits={','.join(map(str, bits))}"] if bits else []
        emit_summary(run_experiment("demo", run_dir, ov, progress=not quiet), format, quiet)

    @app.command("summary")
    @clean_errors
    def summary_cmd(run_dir: Path = typer.Argument(..., help="a finished run directory"),
                    format: str = O.format(),
                    recompute: bool = typer.Option(False, help=(
                        "recompute the verdicts from the run's pairs/receivers/correlations CSVs (after an "
                        "upgrade of qgeom's summary) and rewrite summary.json, keeping its recorded times"))) -> None:
        """Print the summary table of a finished run."""
        path = run_dir / "summary.json"
        if not path.exists():
            raise typer.BadParameter(f"{path} does not exist: run `qgeom run` first")
        summary = json.loads(path.read_text())
        if recompute:
            summary = recompute_summary(run_dir, summary)
        emit_summary(summary, format)

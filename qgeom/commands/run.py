"""``qgeom run``, ``qgeom demo`` and ``qgeom summary``: the transfer experiment end to end
(:func:`qgeom.experiment.driver.run_experiment`) and its summary, printed."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from qgeom.commands import clean_errors
from qgeom.commands import options as O
from qgeom.commands.output import flatten, make_console, write_csv_rows
from qgeom.experiment.layout import RunLayout
from qgeom.experiment.presets import RUN_PRESETS

def _console() -> Console:
    """A terminal's own width; COLUMNS when set; else 120 (files and pipes)."""
    if "COLUMNS" in os.environ or Console().is_terminal:
        return Console()
    return Console(width=120)


console = _console()


NAN = float("nan")


def _num(x) -> float:
    """A number of a summary read back from strict JSON, where NaN was written as null."""
    return NAN if x is None else x


def _interval(d: dict) -> str:
    lo, hi, mean = _num(d["low"]), _num(d["high"]), _num(d["mean"])
    return f"{mean:+.1f} [{lo:+.1f}, {hi:+.1f}]" if lo == lo else f"{mean:+.1f}"


def _outcome_table(summary: dict) -> Table:
    cfg = summary["config"]
    table = Table(title=f"qgeom transfer: {cfg['name']} ({len(cfg['tasks'])} tasks, seeds {cfg['seeds']})",
                  caption="Top-1 % on test, mean over seeds; gains in points over off-diagonal donor→receiver pairs; 95% "
                          "intervals over tasks and seeds (task bootstrap ⊕ t over seeds)")
    for col in ("bits", "scope", "pairs", "FP", "PTQ", "QAT→PTQ", "gain λ=1", "vs random", "gain λ_val",
                "multi λ=1", "FP cost λ=1"):
        table.add_column(col, justify="right")
    for r in summary["results"]:
        table.add_row(str(r["bits"]), r["scope"], str(r["n_pairs"]), f"{_num(r['base_fp']):.1f}",
                      f"{_num(r['base_ptq']):.1f}", f"{_num(r['qat_ptq']):.1f}", _interval(r["gain_unit"]),
                      _interval(r["gain_vs_random"]), _interval(r["gain_tuned"]),
                      f"{_num(r['multi_donor_gain_unit']):+.1f}", f"{_num(r['fp_cost']):+.1f}")
    return table


def _alignment_table(corr: list[dict]) -> Table:
    t2 = Table(title="Does alignment predict the λ = 1 gain? Spearman over off-diagonal pairs",
               caption="Spearman and p (quadratic-assignment permutation test over task labels) on the seed-averaged "
                       "matrices; per-seed range: the same Spearman seed by seed; LOO: leave-one-task-out range")

    def rng(lo, hi) -> str:
        lo, hi = _num(lo), _num(hi)
        return f"[{lo:+.2f}, {hi:+.2f}]" if lo == lo and hi == hi else "n/a (too few tasks)"

    for col in ("bits", "scope", "alignment", "Spearman", "p (QAP)", "per-seed range", "LOO range"):
        t2.add_column(col, justify="right")
    for c in corr:
        t2.add_row(str(c["bits"]), c["scope"], c["alignment"], f"{_num(c['r']):+.2f}", f"{_num(c['p_value']):.3f}",
                   rng(c.get("seed_r_min"), c.get("seed_r_max")), rng(c["loo_min"], c["loo_max"]))
    return t2


def _time_table(stages: list[dict]) -> Table:
    t3 = Table(title="Where the time went: seconds per computed stage (summed over worker processes), "
                     "and the wall time of each parallel phase")
    for col in ("stage", "n", "seconds", "per call"):
        t3.add_column(col, justify="right")
    for r in stages:
        t3.add_row(r["stage"], str(r["n"]), f"{r['seconds']:.1f}",
                   f"{r['per_call']:.1f}" if r.get("per_call") is not None else "")
    return t3


def print_summary(summary: dict, console: Console = console) -> None:
    """The summary as rich tables (outcomes; alignment; time) plus the plain-language verdicts."""
    console.print(_outcome_table(summary))
    if summary.get("correlations"):
        console.print(_alignment_table(summary["correlations"]))
    for r in summary["results"]:
        console.print(f"[bold]{r['bits']} bits, {r['scope']} scope[/]")
        for key in ("verdict_patch", "verdict_random", "verdict_tuned", "verdict_alignment", "verdict_over_controls"):
            if r.get(key):
                console.print(f"  - {r[key]}")
        # the stronger controls and the decomposition (issue 15), the stronger quantizers (issue 24)
        for line in r.get("verdict_controls", []) + r.get("verdict_quantizers", []):
            console.print(f"  - {line}")
    if summary.get("stage_seconds"):
        console.print(_time_table(summary["stage_seconds"]))
    m = summary.get("machine")
    where = (f" on {m['cpu']} ({m['cores']} cores, {m.get('workers', 1)} workers, {m['device']}; load average "
             f"at the end {', '.join(f'{_num(x):.2f}' for x in m['load_average_at_end'])})") if m else ""
    console.print(f"finished in {summary['seconds']} s{where}")


def emit_summary(summary: dict, fmt: str, quiet: bool = False) -> None:
    """The summary in the format asked for: rich tables (``print_summary``; in a pipe wide enough
    that nothing is cut), or for programs the outcome rows as CSV (then, under ``# table:``
    lines, the correlations) or the whole summary as strict JSON (stdout holds only the data:
    ``summary.json`` as written, NaN as null).

    CSV: one row per outcome (bits, scope), numbers at full precision; an interval
    ``{"mean", "low", "high", "n", "method"}`` is spread into columns (``gain_unit_mean``,
    ``gain_unit_low``, ``gain_unit_high``, …; the controls' as ``controls_negated_mean``, …); a
    list (the verdict lines of the controls) is a JSON array in its cell, never a Python repr."""
    if fmt == "table":
        print_summary(summary, console=make_console())
        return
    if fmt == "json":
        from qgeom.io import dumps_json  # lazy: torch-free --help

        sys.stdout.write(dumps_json(summary, indent=1, ensure_ascii=False) + "\n")
        return
    tables = [("results", summary.get("results", [])), ("correlations", summary.get("correlations", []))]
    for i, (name, rows) in enumerate(tables):
        sys.stdout.write(("\n" if i else "") + f"# table: {name}\n")
        write_csv_rows(sys.stdout, [flatten(r) for r in rows])
    sys.stdout.flush()


def _bits(bits: Optional[list[int]]) -> list[str]:
    return [f"bits={','.join(map(str, bits))}"] if bits else []


@clean_errors
def run_cmd(
    config: str = typer.Argument("demo", help=f"a run preset ({', '.join(RUN_PRESETS)}) or a .json/.yaml config file"),
    overrides: Optional[list[str]] = typer.Argument(None, help="key=value overrides, e.g. bits=2,3 finetune.steps=300"),
    run_dir: Optional[Path] = typer.Option(None, help="run directory (default runs/NAME); resumes if it exists"),
    bits: Optional[str] = O.bits("bit widths, comma-separated, each 2–8 (same as bits=...; default: the "
                                 "preset's)"),
    geometry: bool = typer.Option(True, help="compute the curvature geometry stage"),
    workers: Optional[int] = O.workers(),
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
    from qgeom.experiment.driver import run_experiment  # lazy: torch-free --help

    O.apply_runtime(device, threads)
    if bits and any(o.split("=", 1)[0].strip() == "bits" for o in overrides or []):
        raise typer.BadParameter("bit widths given twice (--bits and bits=...): give them once", param_hint="--bits")
    if executor not in ("none", "local", "slurm"):
        raise typer.BadParameter(f"{executor!r} is not one of none, local, slurm", param_hint="--executor")
    jobs = None if executor == "none" else dict(executor=executor, partition=slurm_partition,
                                                  gpus_per_job=gpus_per_job, timeout_min=timeout_min,
                                                  max_parallel=max_parallel, retries=retries)
    summary = run_experiment(config, run_dir, list(overrides or []) + _bits(bits), geometry, progress=not quiet,
                             workers=workers, jobs=jobs, log=console.print)
    emit_summary(summary, format, quiet)


@clean_errors
def demo_cmd(
    run_dir: Optional[Path] = typer.Option(None, help="run directory (default runs/demo); resumes if it exists"),
    bits: Optional[str] = O.bits("bit widths, comma-separated, each 2–8 (default: the preset's 2)"),
    device: str = O.device(), threads: int = O.threads(), quiet: bool = O.quiet(), format: str = O.format(),
) -> None:
    """The embedded default: the `demo` preset (micro ViT, 6 offline tasks, 2 bits, 3 seeds) on CPU."""
    from qgeom.experiment.driver import run_experiment  # lazy: torch-free --help

    O.apply_runtime(device, threads)
    emit_summary(run_experiment("demo", run_dir, _bits(bits), progress=not quiet), format, quiet)


def _read_summary(run_dir: Path) -> dict:
    import json

    path = RunLayout(run_dir).summary
    if not path.exists():
        raise typer.BadParameter(f"{path} does not exist: run `qgeom run` first")
    return json.loads(path.read_text())


def _replicate_table(check) -> Table:
    table = Table("bits", "scope", "verdict line", "status in each replicate", "means", "spread", "margin", "verdict",
                  title="Replicate check: a line is established when its status is the same in every replicate and "
                        "its interval is clear of the status boundary by more than the replicates' spread")
    for r in check.itertuples():
        table.add_row(str(r.bits), r.scope, r.line, r.statuses, r.means, f"{r.spread:.2f}",
                      "" if r.margin != r.margin else f"{r.margin:.2f}", r.verdict)
    return table


@clean_errors
def summary_cmd(run_dir: Path = typer.Argument(..., help="a finished run directory"),
                format: str = O.format(),
                recompute: bool = typer.Option(False, help=(
                    "recompute the verdicts from the run's pairs/receivers/correlations CSVs (after an "
                    "upgrade of qgeom's summary) and rewrite summary.json, keeping its recorded times")),
                replicate: Optional[list[Path]] = typer.Option(None, help=(
                    "a replicate of the run (same configuration, another thread count or other seeds); "
                    "repeat it: each verdict line is then marked established or borderline"))) -> None:
    """Print the summary table of a finished run (and, with --replicate, which verdicts replicate)."""
    summary = _read_summary(run_dir)
    if recompute:
        from qgeom.experiment.driver import recompute_summary  # lazy: torch-free --help

        summary = recompute_summary(run_dir, summary)
    if not replicate:
        emit_summary(summary, format)
        return
    from qgeom.experiment.replicates import replicate_check  # lazy: torch-free --help

    runs = [run_dir, *replicate]
    check = replicate_check({f"{i}: {r}": summary if i == 0 else _read_summary(r) for i, r in enumerate(runs)})
    if format != "table":  # full precision for programs
        records = check.to_dict("records")
        if format == "csv":
            write_csv_rows(sys.stdout, records)
        else:
            from qgeom.io import dumps_json  # lazy: torch-free --help

            sys.stdout.write(dumps_json({"replicates": records}, indent=1, ensure_ascii=False) + "\n")
        return
    emit_summary(summary, format)
    make_console().print(_replicate_table(check))


def register(app: typer.Typer) -> None:
    app.command("run")(run_cmd)
    app.command("demo")(demo_cmd)
    app.command("summary")(summary_cmd)

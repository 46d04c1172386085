"""``qgeom run`` and ``qgeom demo``: the transfer experiment end to end, with a summary table."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from qgeom.commands import clean_errors
from qgeom.commands.threads import with_threads

def _console() -> Console:
    """A terminal's own width; COLUMNS when set; else 120 (files and pipes)."""
    if "COLUMNS" in os.environ or Console().is_terminal:
        return Console()
    return Console(width=120)


console = _console()


def run_experiment(config: str, run_dir: Path | None, overrides: list[str], geometry: bool = True,
                   progress: bool = True) -> dict:
    """Run (or resume) a configured experiment and write its tables and summary; returns the summary."""

    from qgeom import analysis
    from qgeom.config import load_config, with_overrides
    from qgeom.params import atomic_write
    from qgeom.transfer import TransferRun

    cfg = with_overrides(load_config(config), overrides)
    run_dir = Path(run_dir or f"runs/{cfg.name}")
    start = time.time()
    run = TransferRun(cfg, run_dir, progress=progress)
    tables = run.run(geometry=geometry)
    pairs = analysis.pair_table(tables["accuracy"], tables.get("geometry"), tables["dissimilarity"])
    receivers = analysis.receiver_table(tables["accuracy"])
    corr = analysis.correlations(pairs, cfg.permutations)
    for name, df in (("pairs", pairs), ("receivers", receivers), ("correlations", corr)):
        atomic_write(run_dir / f"{name}.csv", lambda tmp, df=df: df.to_csv(tmp, index=False))
    summary = {"config": cfg.to_dict(), "run_dir": str(run_dir), "seconds": round(time.time() - start, 1),
               "results": analysis.summarize(pairs, receivers, corr),
               "correlations": corr[(corr.target == "gain_unit") & (corr.method == "spearman")].to_dict("records")}
    atomic_write(run_dir / "summary.json", lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=2, default=float)))
    return summary


def print_summary(summary: dict, console: Console = console) -> None:
    """The summary as two rich tables (outcomes; alignment) plus the plain-language verdicts."""
    cfg = summary["config"]
    table = Table(title=f"qgeom transfer: {cfg['name']} ({len(cfg['tasks'])} tasks, seeds {cfg['seeds']})",
                  caption="Top-1 % on test; gains in points over off-diagonal donor→receiver pairs, 95% intervals")
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
                   caption="p: quadratic-assignment permutation test over task labels; LOO: leave-one-task-out range")
        for col in ("bits", "scope", "alignment", "Spearman", "p (QAP)", "LOO range"):
            t2.add_column(col, justify="right")
        for c in corr:
            t2.add_row(str(c["bits"]), c["scope"], c["alignment"], f"{c['r']:+.2f}", f"{c['p_value']:.3f}",
                       f"[{c['loo_min']:+.2f}, {c['loo_max']:+.2f}]")
        console.print(t2)
    for r in summary["results"]:
        console.print(f"[bold]{r['bits']} bits, {r['scope']} scope[/]")
        for key in ("verdict_patch", "verdict_random", "verdict_alignment"):
            console.print(f"  - {r[key]}")
    console.print(f"finished in {summary['seconds']} s")


def register(app: typer.Typer) -> None:
    @app.command("run")
    @clean_errors
    @with_threads
    def run_cmd(
        config: str = typer.Argument("demo", help="a preset (demo, tiny, gpu) or a .json/.yaml config file"),
        overrides: Optional[list[str]] = typer.Argument(None, help="key=value overrides, e.g. bits=2,3 finetune.steps=300"),
        run_dir: Optional[Path] = typer.Option(None, help="run directory (default runs/NAME); resumes if it exists"),
        bits: Optional[str] = typer.Option(None, help="bit widths, comma-separated (same as bits=...)"),
        geometry: bool = typer.Option(True, help="compute the curvature geometry stage"),
    ) -> None:
        """Run or resume the transfer experiment: pretrain → fine-tune → QAT → ρ → evaluate → geometry → statistics."""
        ov = list(overrides or []) + ([f"bits={bits}"] if bits else [])
        print_summary(run_experiment(config, run_dir, ov, geometry))

    @app.command("demo")
    @clean_errors
    @with_threads
    def demo_cmd(
        run_dir: Path = typer.Option(Path("runs/demo"), help="run directory; an existing one is resumed"),
        bits: Optional[str] = typer.Option(None, help="bit widths, comma-separated (default: the preset's 2)"),
    ) -> None:
        """The embedded default: the `demo` preset (micro ViT, 6 offline tasks, 2 bits) on CPU."""
        print_summary(run_experiment("demo", run_dir, [f"bits={bits}"] if bits else []))

    @app.command("summary")
    @clean_errors
    @with_threads
    def summary_cmd(run_dir: Path = typer.Argument(..., help="a finished run directory")) -> None:
        """Print the summary table of a finished run."""
        path = run_dir / "summary.json"
        if not path.exists():
            raise typer.BadParameter(f"{path} does not exist: run `qgeom run` first")
        print_summary(json.loads(path.read_text()))

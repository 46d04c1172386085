"""``qgeom figures RUN_DIR [--out paper_figures]``: every figure of a finished run, regenerated.

Each figure is written as ``NAME.pdf`` (vector), ``NAME.png`` and ``NAME.csv`` (the table it was
drawn from) by :func:`qgeom.figures.save_figure`; ``manifest.json`` lists them with the run they
came from and the seconds each took. The four figures that compute on the run's checkpoints
(Proposition 1, spectrum, landscape, invariance) cache their tables in the output directory
(``NAME.csv`` + ``NAME.params.json``) and reuse them while the run and the parameters are
unchanged; ``--recompute`` ignores the cache, ``--cheap`` skips them.

Threads: the checkpoint tables are many small products (probe sets of 32–300 images), so the
command runs torch on one thread unless ``--threads`` says otherwise. Measured on the demo's
micro ViT with the 2 cores shared by other jobs: 37 s wall with 1 thread, 388 s with torch's
default 2 (OpenMP threads spinning against each other); on idle cores 2 threads gain little.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import typer

from qgeom.commands import check_writable, clean_errors


@dataclass(frozen=True)
class Made:
    """One written figure: its name, the seconds it took, and what it shows (one line)."""

    name: str
    seconds: float
    about: str


def render_all(run_dir: str | Path, out: str | Path = "paper_figures", *, bits: list[int] | None = None,
               scope: str | None = None, recompute: bool = False, cheap: bool = False,
               log: Callable[[str], None] = lambda msg: None) -> list[Made]:
    """Draw and save every figure of ``run_dir`` into ``out``; returns what was made.

    Table figures are drawn for every bit width of the run (or ``bits``); the checkpoint figures
    for the lowest one. ``scope`` defaults to ``backbone`` (the paper's); a non-default scope is
    added to the file names.
    """
    import matplotlib

    matplotlib.use("Agg")
    from qgeom import figures as F

    run_dir, out = Path(run_dir), Path(out)
    T = F.load_run(run_dir)
    acc = T["accuracy"]
    all_bits = sorted(int(b) for b in acc.bits.unique())
    bits = sorted(int(b) for b in bits) if bits else all_bits
    scope = F.choose_scope(acc[acc.method == "patch"], scope)
    tag = "" if scope == "backbone" else f"_{scope}"
    made: list[Made] = []

    def save(name: str, draw: Callable, table_fn: Callable, about: str) -> None:
        t0 = time.perf_counter()
        table = table_fn()
        fig = draw(table)
        F.save_figure(fig, table, out, name)
        made.append(Made(name, round(time.perf_counter() - t0, 2), about))
        log(f"{name}: {made[-1].seconds:.1f} s")

    for b in bits:
        sfx = f"_{b}bit{tag}"
        save(f"baselines_{b}bit", lambda t, b=b: F.baseline_bars(acc, b), lambda b=b: F.baseline_table(acc, b),
             "Top-1 per task: FT, FT+PTQ, QAT, QAT+PTQ")
        if "pairs" in T:
            P = T["pairs"]
            save(f"delta_heatmaps{sfx}", lambda t, b=b: F.delta_heatmaps(P, b, scope),
                 lambda b=b: F.delta_table(P, b, scope), "donor × receiver Δ post-PTQ Top-1 at λ = 1 and λ_val")
            save(f"lambda_curves{sfx}", lambda t, b=b: F.lambda_curves(acc, P, b, scope),
                 lambda b=b: F.lambda_table(acc, P, b, scope), "post-PTQ Top-1 vs λ per receiver, λ* marked")
            if any(c.startswith("cos_") for c in P.columns):
                C = T.get("correlations")
                save(f"alignment_heatmaps{sfx}", lambda t, b=b: F.alignment_heatmaps(P, b, scope),
                     lambda b=b: F.alignment_table(P, b, scope), "cosines of ρ_D and ρ_R per metric")
                save(f"alignment_scatter{sfx}", lambda t, b=b: F.alignment_scatter(P, C, b, scope),
                     lambda b=b: F.alignment_scatter_table(P, C, b, scope),
                     "alignment vs gain and loss recovery, Spearman and QAP p")
        if "receivers" in T:
            R = T["receivers"]
            save(f"radar{sfx}", lambda t, b=b: F.radar(R, b, scope), lambda b=b: F.radar_table(R, b, scope),
                 "FT+PTQ, best-donor patch + PTQ, QAT+PTQ per task")
            save(f"improvement{sfx}", lambda t, b=b: F.improvement_bars(R, b, scope),
                 lambda b=b: F.improvement_table(R, b, scope), "(patch+PTQ − FT+PTQ) / QAT+PTQ per task")

    if cheap:
        return _manifest(made, run_dir, out)
    b = bits[0]
    sfx = f"_{b}bit{tag}"

    def cached(name: str, fn: Callable) -> Callable:
        return lambda: F.cached_table(out, name, run_dir, fn, bits=b, scope=scope)

    if recompute:  # drop the cache's parameter records: cached_table then recomputes and rewrites them
        for name in ("proposition1", "spectrum", "landscape", "invariance"):
            (out / f"{name}{sfx}.params.json").unlink(missing_ok=True)
        (out / f"proposition1{sfx}_quadratic.params.json").unlink(missing_ok=True)
    if "geometry" in T:
        G = T["geometry"]
        quad = cached(f"proposition1{sfx}_quadratic", F.quadratic_model_table)
        save(f"proposition1{sfx}", lambda t: F.proposition1(G, quad(), b, scope),
             lambda: F.proposition1_table(G, quad(), b, scope), "Proposition 1: K spectrum, stationarity, "
             "measured vs quadratic loss along λ")
    save(f"spectrum{sfx}", F.spectrum, cached(f"spectrum{sfx}", F.spectrum_table),
         "Hessian SLQ density at a receiver; ρ energy on top eigenvectors")
    save(f"landscape{sfx}", F.landscape, cached(f"landscape{sfx}", F.landscape_table),
         "post-PTQ Top-1 on the plane θ_R + aρ_D + bρ_R")
    save(f"invariance{sfx}", F.invariance, cached(f"invariance{sfx}", F.invariance_table),
         "Euclidean vs metric cosine and PTQ under growing random symmetries")
    return _manifest(made, run_dir, out)


def _manifest(made: list[Made], run_dir: Path, out: Path) -> list[Made]:
    out.mkdir(parents=True, exist_ok=True)
    doc = {"run_dir": str(run_dir), "command": f"qgeom figures {run_dir} --out {out}",
           "figures": [{"name": m.name, "files": [f"{m.name}.{e}" for e in ("pdf", "png", "csv")],
                        "about": m.about, "seconds": m.seconds} for m in made],
           "seconds": round(sum(m.seconds for m in made), 1)}
    (out / "manifest.json").write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    return made


def register(app: typer.Typer) -> None:
    @app.command("figures")
    @clean_errors
    def figures_cmd(
        run_dir: Path = typer.Argument(..., help="a finished run directory (qgeom run / qgeom demo)"),
        out: Path = typer.Option(Path("paper_figures"), help="output directory (PDF, PNG and CSV per figure)"),
        bits: Optional[str] = typer.Option(None, help="bit widths, comma-separated (default: all of the run's)"),
        scope: Optional[str] = typer.Option(None, help="patch scope (default: backbone, the paper's)"),
        recompute: bool = typer.Option(False, help="recompute the cached checkpoint tables"),
        cheap: bool = typer.Option(False, help="only the figures drawn from the run's tables (no curvature)"),
        threads: int = typer.Option(1, min=1, help="torch threads for the checkpoint tables (see the module notes)"),
    ) -> None:
        """Regenerate every figure of a finished run: PDF + PNG + the CSV each was drawn from."""
        from rich.console import Console
        from rich.table import Table

        console = Console()
        if not (run_dir / "accuracy.csv").exists():
            raise typer.BadParameter(f"{run_dir} has no accuracy.csv: run `qgeom run` first")
        check_writable(out, directory=True)
        try:
            bit_list = [int(b) for b in bits.split(",") if b.strip()] if bits else None
        except ValueError:
            raise typer.BadParameter(f"{bits!r} is not a comma-separated list of integers", param_hint="--bits") from None
        if not cheap:
            import torch

            torch.set_num_threads(threads)
        t0 = time.perf_counter()
        made = render_all(run_dir, out, bits=bit_list, scope=scope,
                          recompute=recompute, cheap=cheap, log=lambda m: console.log(m))
        table = Table(title=f"figures of {run_dir} → {out}")
        for col in ("figure", "seconds", "shows"):
            table.add_column(col, justify="right" if col == "seconds" else "left")
        for m in made:
            table.add_row(m.name, f"{m.seconds:.1f}", m.about)
        console.print(table)
        console.print(f"{len(made)} figures in {time.perf_counter() - t0:.1f} s (manifest: {out / 'manifest.json'})")

"""``qgeom figures RUN_DIR [--out-dir DIR]`` (default ``RUN_DIR/figures``): every figure of a finished run, regenerated.

Each figure is written as ``NAME.pdf`` (vector), ``NAME.png`` and ``NAME.csv`` (the table it was
drawn from) by :func:`qgeom.figures.save_figure`; ``manifest.json`` lists them with the run they
came from and the seconds each took. The four figures that compute on the run's checkpoints
(Proposition 1, spectrum, landscape, invariance) cache their tables in the output directory
(``NAME.csv`` + ``NAME.params.json``) and reuse them while the run and the parameters are
unchanged; ``--recompute`` ignores the cache, ``--cheap`` skips them.

Threads: the checkpoint tables are many small products (probe sets of 32–300 images), so the
command runs torch on one thread unless ``--threads`` says otherwise (the shared option's default). Measured on the demo's
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
from qgeom.commands import options as O


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
    doc = {"run_dir": str(run_dir), "command": f"qgeom figures {run_dir} --out-dir {out}",
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
        out: Optional[Path] = O.out_dir("output directory: PDF, PNG and CSV per figure (default: RUN_DIR/figures)"),
        bits: Optional[str] = O.bits("bit widths, comma-separated, each 2–8 (default: all of the run's)"),
        scope: Optional[str] = O.scope("patch scope (default: backbone, the paper's)"),
        recompute: bool = typer.Option(False, help="recompute the cached checkpoint tables"),
        cheap: bool = typer.Option(False, help="only the figures drawn from the run's tables (no curvature)"),
        device: str = O.device(), threads: int = O.threads(), quiet: bool = O.quiet(), format: str = O.format(),
    ) -> None:
        """Regenerate every figure of a finished run: PDF + PNG + the CSV each was drawn from."""
        from rich.table import Table

        from qgeom.commands.output import Output

        if not (run_dir / "accuracy.csv").exists():
            raise typer.BadParameter(f"{run_dir} has no accuracy.csv: run `qgeom run` first")
        out = out if out is not None else run_dir / "figures"
        check_writable(out, directory=True)
        bit_list = list(bits) if bits else None
        log = Output(format, quiet)
        if not cheap:
            O.apply_runtime(device, threads)
        t0 = time.perf_counter()
        made = render_all(run_dir, out, bits=bit_list, scope=scope,
                          recompute=recompute, cheap=cheap, log=log.info)
        table = Table(title=f"figures of {run_dir} → {out}")
        for col in ("figure", "seconds", "shows"):
            table.add_column(col, justify="right" if col == "seconds" else "left")
        for m in made:
            table.add_row(m.name, f"{m.seconds:.1f}", m.about)
        log.table("figures", table)
        log.info(f"{len(made)} figures in {time.perf_counter() - t0:.1f} s (manifest: {out / 'manifest.json'})")
        log.close()

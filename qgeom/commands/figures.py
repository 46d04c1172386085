"""``qgeom figures RUN_DIR [RUN_DIR ...] [--out-dir DIR]`` (default: the first run's ``figures/``):
every figure of finished runs, regenerated; with several runs (or a run with several bit widths)
also the figures across them.

Each figure is written as ``NAME.pdf`` (vector), ``NAME.png`` and ``NAME.csv`` (the table it was
drawn from) by :func:`qgeom.figures.save_figure`; ``manifest.json`` (strict JSON) lists them with
the seconds each took and the run they came from: for each run its directory, the SHA-256 of its
configuration and the content hash of every run file a figure read
(:func:`qgeom.figures.files.run_fingerprint`), and for each figure its ``run_fingerprint`` — the
same value its CSV carries in the columns ``run_config_sha256`` and ``run_fingerprint`` — so a
figure regenerated from another run, or from changed tables, can be told apart. The four figures that compute on the run's checkpoints
(Proposition 1, spectrum, landscape, invariance) cache their tables in the output directory
(``NAME.csv`` + ``NAME.params.json``) and reuse them while the run and the parameters are
unchanged; ``--recompute`` ignores the cache, ``--cheap`` skips them.

Threads: the checkpoint tables are many small products (probe sets of 32–300 images), so the
command runs torch on one thread unless ``--threads`` says otherwise (the shared option's default). Measured on the demo's
micro ViT with the 2 cores shared by other jobs: 37 s wall with 1 thread, 388 s with torch's
default 2 (OpenMP threads spinning against each other); on idle cores 2 threads gain little.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from qgeom.commands import check_writable, clean_errors
from qgeom.commands import options as O
from qgeom.commands.output import Output
from qgeom.progress import progress


@dataclass(frozen=True)
class Made:
    """One written figure: its name, the seconds it took, what it shows (one line), and the
    fingerprint of the run(s) it was drawn from (by setting, for a figure across runs)."""

    name: str
    seconds: float
    about: str
    fingerprint: dict | None = None


def render_all(run_dir: str | Path, out: str | Path = "paper_figures", *, bits: list[int] | None = None,
               scope: str | None = None, recompute: bool = False, cheap: bool = False,
               log: Callable[[str], None] = lambda msg: None, overrides: dict | None = None) -> list[Made]:
    """Draw and save every figure of ``run_dir`` into ``out`` (:data:`qgeom.figures.SPECS`, the
    list the notebooks draw from too); returns what was made.

    Table figures are drawn for every bit width of the run (or ``bits``); the checkpoint figures
    for the lowest one. ``scope`` defaults to ``backbone`` (the paper's); a non-default scope is
    added to the file names. ``overrides``: smaller parameters per checkpoint-table function.
    """
    import matplotlib  # lazy: --help without matplotlib

    matplotlib.use("Agg")
    from qgeom.figures import catalogue  # lazy: torch-free --help

    run_dir, out = Path(run_dir), Path(out)
    T = catalogue.load_run(run_dir)
    all_bits = sorted(int(b) for b in T["accuracy"].bits.unique())
    bits = sorted(int(b) for b in bits) if bits else all_bits
    made: list[Made] = []

    def save(spec, ctx) -> None:
        t0 = time.perf_counter()
        drawn = catalogue.draw_spec(spec, ctx)
        made.append(Made(drawn.name, round(time.perf_counter() - t0, 2), spec.about, drawn.fingerprint))
        log(f"{drawn.name}: {made[-1].seconds:.1f} s")

    for b in bits:
        ctx = catalogue.context(run_dir, out, bits=b, scope=scope, tables=T, recompute=recompute, overrides=overrides)
        for spec in catalogue.available(ctx, checkpoint=False):
            save(spec, ctx)
    if not cheap:
        ctx = catalogue.context(run_dir, out, bits=bits[0], scope=scope, tables=T, recompute=recompute,
                              overrides=overrides)
        for spec in [s for s in catalogue.available(ctx) if s.checkpoint]:
            save(spec, ctx)
    if len(bits) > 1:  # the bit widths of one run, compared
        made += render_comparisons([run_dir], out, bits=bits, log=log)
    return _manifest(made, [run_dir], out)


def render_comparisons(run_dirs: list[Path], out: Path, *, bits: list[int] | None = None,
                       log: Callable[[str], None] = lambda msg: None) -> list[Made]:
    """The figures across settings (:data:`qgeom.figures.COMPARISONS`): every run at every bit
    width (or ``bits``), labelled from the runs' configs."""
    from qgeom import figures as F  # lazy: torch-free --help
    from qgeom.figures.comparison import settings_with_runs  # lazy: torch-free --help

    runs, where = settings_with_runs(run_dirs, bits)
    reads = ["accuracy.csv", "pairs.csv", "receivers.csv"]
    by_run = {r: F.run_fingerprint(r, reads) for r in dict.fromkeys(where.values())}
    fps = {label: by_run[r] for label, r in where.items()}
    made = []
    for c in F.COMPARISONS:
        t0 = time.perf_counter()
        F.save_figure(c.draw(runs), c.table(runs), out, c.name, fingerprint=fps)
        made.append(Made(c.name, round(time.perf_counter() - t0, 2), c.about, fps))
        log(f"{c.name}: {made[-1].seconds:.1f} s")
    return made


def render_runs(run_dirs: list[Path], out: Path, **kw) -> list[Made]:
    """One run: :func:`render_all` into ``out``. Several: each run's own figures into
    ``out/RUN_NAME/``, and the figures across them (:func:`render_comparisons`) into ``out``."""
    if len(run_dirs) == 1:
        return render_all(run_dirs[0], out, **kw)
    names = [Path(r).name for r in run_dirs]
    subdirs = [n if names.count(n) == 1 else f"{n}-{i}" for i, n in enumerate(names)]
    made = []
    for run, sub in zip(run_dirs, subdirs):
        made += [Made(f"{sub}/{m.name}", m.seconds, m.about, m.fingerprint) for m in render_all(run, out / sub, **kw)]
    made += render_comparisons(run_dirs, out, bits=kw.get("bits"), log=kw.get("log", lambda m: None))
    return _manifest(made, run_dirs, out)


def _manifest(made: list[Made], run_dirs: list[Path], out: Path) -> list[Made]:
    """Write ``out/manifest.json``: the figures, and the fingerprint of every run they read."""
    from qgeom.io import write_json  # lazy: torch-free --help

    runs = " ".join(str(r) for r in run_dirs)
    fps = [fp for m in made for fp in _fingerprints(m)]
    run_records: dict[str, dict] = {}
    for fp in fps:  # per run: its config hash and every file any figure read
        rec = run_records.setdefault(fp["run_dir"], {"run_dir": fp["run_dir"], "config_sha256": fp["config_sha256"],
                                                    "artifacts": {}})
        rec["artifacts"].update(fp["artifacts"])
    doc = {"run_dir": runs, "command": f"qgeom figures {runs} --out-dir {out}",
           "runs": list(run_records.values()),
           "figures": [{"name": m.name, "files": [f"{m.name}.{e}" for e in ("pdf", "png", "csv")],
                        "about": m.about, "seconds": m.seconds} | _figure_fingerprint(m) for m in made],
           "seconds": round(sum(m.seconds for m in made), 1)}
    write_json(out / "manifest.json", doc, indent=1, ensure_ascii=False)  # strict: NaN → null
    return made


def _fingerprints(m: Made) -> list[dict]:
    if not m.fingerprint:
        return []
    return [m.fingerprint] if "fingerprint" in m.fingerprint else list(m.fingerprint.values())


def _figure_fingerprint(m: Made) -> dict:
    """A figure's entry: the run it read, its files and its fingerprint (by setting across runs)."""
    if not m.fingerprint:
        return {}
    if "fingerprint" in m.fingerprint:
        return {"run_fingerprint": m.fingerprint["fingerprint"], "artifacts": sorted(m.fingerprint["artifacts"])}
    return {"run_fingerprint": {label: fp["fingerprint"] for label, fp in m.fingerprint.items()},
            "artifacts": sorted({a for fp in m.fingerprint.values() for a in fp["artifacts"]})}


def figures_cmd(
    run_dirs: list[Path] = typer.Argument(..., help="finished run directories (qgeom run / qgeom demo); "
                                                    "several: each run's figures in OUT/RUN_NAME and the figures across "
                                                    "them in OUT"),
    out: Optional[Path] = O.out_dir("output directory: PDF, PNG and CSV per figure (default: the first "
                                    "RUN_DIR/figures)"),
    bits: Optional[str] = O.bits("bit widths, comma-separated, each 2–8 (default: all of the run's)"),
    scope: Optional[str] = O.scope("patch scope (default: backbone, the paper's)"),
    recompute: bool = typer.Option(False, help="recompute the cached checkpoint tables"),
    cheap: bool = typer.Option(False, help="only the figures drawn from the run's tables (no curvature)"),
    device: str = O.device(), threads: int = O.threads(), quiet: bool = O.quiet(), format: str = O.format(),
) -> None:
    """Regenerate every figure of finished runs (and, for several, the figures across them): PDF + PNG
    + the CSV each was drawn from."""
    for run_dir in run_dirs:
        if not (run_dir / "accuracy.csv").exists():
            raise typer.BadParameter(f"{run_dir} has no accuracy.csv: run `qgeom run` first")
    out = out if out is not None else run_dirs[0] / "figures"
    check_writable(out, directory=True)
    bit_list = list(bits) if bits else None
    log = Output(format, quiet)
    if not cheap:
        O.apply_runtime(device, threads)
    t0 = time.perf_counter()
    with progress(desc="figures", unit="figures", enabled=not quiet) as bar:
        def done(msg: str) -> None:  # one line per figure (above the bar on a terminal), counted
            bar.write(msg)
            bar.update()

        made = render_runs(run_dirs, out, bits=bit_list, scope=scope, recompute=recompute, cheap=cheap, log=done)
    table = Table(title=f"figures of {', '.join(map(str, run_dirs))} → {out}")
    for col in ("figure", "seconds", "shows"):
        table.add_column(col, justify="right" if col == "seconds" else "left")
    for m in made:
        table.add_row(m.name, f"{m.seconds:.1f}", m.about)
    log.table("figures", table, records=[{"figure": m.name, "seconds": m.seconds, "about": m.about} for m in made])
    log.info(f"{len(made)} figures in {time.perf_counter() - t0:.1f} s (manifest: {out / 'manifest.json'})")
    log.close()


def register(app: typer.Typer) -> None:
    """Add ``figures`` to ``app``."""
    app.command("figures")(clean_errors(figures_cmd))

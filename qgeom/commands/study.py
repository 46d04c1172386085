"""``qgeom study``: one transfer run per cell of a study file, then the table and the phase diagram
across the cells (:mod:`qgeom.experiment.study`, :mod:`qgeom.figures.regime`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from qgeom.commands import check_writable, clean_errors
from qgeom.commands import options as O
from qgeom.commands.output import Output


@clean_errors
def study_cmd(
    study: Path = typer.Argument(..., help="a study file (YAML: name, preset, common overrides, cells), e.g. "
                                           "studies/regime.yaml"),
    root: Optional[Path] = typer.Option(None, help="where the cells' run directories go (default runs/<name>)"),
    cells: Optional[str] = typer.Option(None, help="only these cells, comma-separated (default: every cell)"),
    out_dir: Optional[Path] = typer.Option(None, help="where <name>.csv and the phase diagram <name>_phase.{pdf,png,csv} "
                                                      "go (default: the root)"),
    table_only: bool = typer.Option(False, "--table-only", help="run nothing: tabulate the finished cells"),
    workers: Optional[int] = O.workers("worker processes per cell (as qgeom run)"),
    device: str = O.device(), threads: int = O.threads(), quiet: bool = O.quiet(), format: str = O.format(),
) -> None:
    """Run (or resume) every cell of a study, then write the table across its cells and the phase diagram."""
    from qgeom.experiment.study import load_study, run_study, study_table  # lazy: torch-free --help
    from qgeom.figures.files import save_figure  # lazy: torch-free --help
    from qgeom.figures.regime import phase_diagram  # lazy: torch-free --help
    from qgeom.io import write_csv  # lazy: torch-free --help

    O.apply_runtime(device, threads)
    log = Output(format, quiet)
    name = load_study(study)["name"]
    root = root or Path("runs") / name
    out = out_dir or root
    check_writable(out, directory=True)
    if not table_only:
        run_study(study, root, [c for c in (cells or "").split(",") if c] or None, workers=workers,
                  progress=not quiet, log=log.info)
    table = study_table(study, root)
    if table.empty:
        raise ValueError(f"no cell of {study} has finished under {root}: run it first (without --table-only)")
    write_csv(Path(out) / f"{name}.csv", table)
    save_figure(phase_diagram(table), table, out, f"{name}_phase")
    log.result(f"{len(table.cell.unique())} cells tabulated: {Path(out) / f'{name}.csv'}, {Path(out) / f'{name}_phase.pdf'}")
    shown = table[["cell", "bits", "scope", "ptq_drop", "gain_unit", "gain_tuned", "gain_over_controls",
                   "gain_over_controls_low", "transfers"]]
    log.table("cells", shown.to_string(index=False, float_format=lambda v: f"{v:+.2f}"),
              records=table.to_dict("records"))  # csv/json: every column at full precision
    log.close()


def register(app: typer.Typer) -> None:
    app.command("study")(study_cmd)

"""``qgeom status``: which stages of a run are done, running (with job ids), failed or missing."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from qgeom.commands import clean_errors
from qgeom.commands import options as O
from qgeom.commands.output import Output


def register(app: typer.Typer) -> None:
    @app.command("status")
    @clean_errors
    def status_cmd(
        run_dir: Path = typer.Argument(..., help="a run directory"),
        geometry: bool = typer.Option(True, help="count the geometry stages"),
        all_stages: bool = typer.Option(False, "--all", help="list every stage, not only those not done"),
        quiet: bool = O.quiet(), format: str = O.format(),
    ) -> None:
        """List the stages of a run: done, running (job id), failed or missing.

        The table lists the stages not done (every stage with --all, or when all are done);
        csv/json list every stage, one record each: ``stage``, ``status``, ``job_id``."""
        from collections import Counter

        from qgeom.experiment.jobs import status  # lazy: torch-free --help
        from qgeom.experiment.layout import load_run_config  # lazy: torch-free --help

        log = Output(format, quiet)
        rows = status(load_run_config(run_dir), run_dir, geometry)
        counts = Counter(r["status"] for r in rows)
        shown = [r for r in rows if all_stages or r["status"] != "done"] or rows
        title = f"{run_dir}: " + ", ".join(f"{n} {k}" for k, n in counts.items())
        if len(shown) == len(rows) and not all_stages and counts.get("done") == len(rows):
            title += " (every stage is done)"
        table = Table("stage", "status", "job id", title=title)
        for r in shown:
            table.add_row(r["stage"], r["status"], r["job_id"])
        log.table("stages", table, records=rows)
        log.close()

"""What a command prints: tables for people, CSV or JSON for programs, readable in a pipe.

``Output(fmt, quiet)`` is made from ``--format`` and ``--quiet``:

* ``table`` (default): rich tables and status lines on stdout. On a terminal rich fits them to
  its width; in a pipe or a file (``qgeom check-invariance | cat``, ``> log``) the console is
  wide enough that no cell is cut ("qk_mi…") or wrapped: each table takes its natural width, and
  long lines are not folded. ``COLUMNS`` still sets the width when given.
* ``csv`` / ``json``: stdout holds only the data; status lines and warnings go to stderr. A
  command with several tables prints each under a ``# table: NAME`` line in CSV (one blank line
  between), and one object ``{NAME: [row, ...], ...}`` in JSON. Both end with a newline.
* ``--quiet``: no status lines (progress bars are the caller's: pass ``progress=not quiet`` or
  ``enabled=not quiet`` to :func:`qgeom.progress.progress`); results and warnings stay.

The data of csv and json are the command's *records* (``table(name, display, records=rows)``):
one row per record, stable snake_case keys, numbers as numbers at full precision (Python's
shortest round-trip repr), booleans as ``true``/``false`` (``True``/``False`` in CSV), a missing
or undefined number (None, NaN, ±Inf) as ``null`` in JSON and an empty cell in CSV. Display
rounding and display names (``‖ρ‖``, ``λ*``) belong to the ``table`` format only. JSON is strict
(:func:`qgeom.io.dumps_json`: no bare ``NaN``, which standard parsers reject). A table given
without records prints its display cells (markup stripped) — only for a table whose cells are text.
"""

from __future__ import annotations

import csv
import io
import math
import os
import sys
from collections.abc import Mapping, Sequence

from rich.console import Console
from rich.table import Table
from rich.text import Text

PIPE_WIDTH = 10_000  # wider than any table: rich then lays each one out at its natural width


def make_console(*, stderr: bool = False) -> Console:
    """A terminal's own width (or ``COLUMNS``); in a pipe or file, wide enough to cut nothing."""
    probe = Console(stderr=stderr)
    if probe.is_terminal or "COLUMNS" in os.environ:
        return probe
    return Console(stderr=stderr, width=PIPE_WIDTH, soft_wrap=True)


def csv_cell(value):
    """A record's value as a CSV cell: numbers at full precision, None/NaN/±Inf empty, a list or a
    mapping as JSON text (never a Python repr)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:  # numpy / torch scalars
        return csv_cell(value.item())
    if isinstance(value, (list, tuple, Mapping)):
        from qgeom.io import dumps_json  # lazy: torch-free --help

        return dumps_json(value, indent=None)
    return value


def flatten(record: Mapping, prefix: str = "") -> dict:
    """A record with nested mappings spread into columns: ``{"gain_unit": {"mean": m, "low": l}}``
    → ``{"gain_unit_mean": m, "gain_unit_low": l}`` (keys joined by ``_``, recursively)."""
    out: dict = {}
    for k, v in record.items():
        key = f"{prefix}{k}"
        out |= flatten(v, f"{key}_") if isinstance(v, Mapping) else {key: v}
    return out


def write_csv_rows(stream, rows: Sequence[Mapping], columns: Sequence[str] | None = None) -> None:
    """``rows`` (records) as CSV on ``stream``: a header of every key (first-seen order), one line
    per row, ``\\n`` line ends (the last one too)."""
    cols = list(columns) if columns is not None else list(dict.fromkeys(k for r in rows for k in r))
    writer = csv.DictWriter(stream, fieldnames=cols, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows({k: csv_cell(r.get(k)) for k in cols} for r in rows)


def plain(cell) -> str:
    """A cell without rich markup (``[green]✓ 1e-15[/]`` → ``✓ 1e-15``)."""
    return Text.from_markup(cell).plain if isinstance(cell, str) else str(cell)


class Output:
    """Tables and messages of one command, in the format it was asked for."""

    def __init__(self, fmt: str = "table", quiet: bool = False) -> None:
        self.fmt, self.quiet = fmt, quiet
        self.console = make_console()  # results
        self.messages = self.console if fmt == "table" else make_console(stderr=True)
        self.tables: dict[str, list[dict]] = {}  # JSON, printed by close()
        self._written, self._named = 0, False
        self.silent = False

    def silence(self) -> None:
        """Print nothing at all (the non-zero ranks of a data-parallel run: rank 0 speaks for all)."""
        self.silent = True
        self.console.quiet = self.messages.quiet = True

    # -- messages ----------------------------------------------------------------------------------
    def info(self, msg: str) -> None:
        """A status line ("wrote …", timings): suppressed by --quiet."""
        if not self.quiet:
            self.messages.print(msg)

    def result(self, msg: str) -> None:
        """A result line (an accuracy, a verdict): shown unless --quiet in csv/json (stdout is data)."""
        if self.fmt == "table":
            self.console.print(msg)
        elif not self.quiet:
            self.messages.print(msg)

    def warn(self, msg: str) -> None:
        """A warning: always shown (stderr in csv/json)."""
        self.messages.print(f"[yellow]warning: {msg}[/]")

    # -- tables ------------------------------------------------------------------------------------
    def table(self, name: str, table, records: Sequence[Mapping] | None = None) -> None:
        """Print ``table`` (a rich table, or any renderable) now in the table format; or the
        ``records`` as CSV now, or keep them for JSON (see the module docstring). Without
        records, the display cells of ``table`` (a rich :class:`Table`) stand in for them."""
        if self.silent:
            return
        if self.fmt == "table":
            self.console.print(table)
            return
        rows = [dict(r) for r in records] if records is not None else _display_rows(table)
        if self.fmt == "json":
            self.tables[name] = rows
            return
        buf = io.StringIO()
        if self._written:
            buf.write("\n")
        if self._named:
            buf.write(f"# table: {name}\n")
        write_csv_rows(buf, rows, None if records is not None else [plain(c.header) for c in table.columns])
        sys.stdout.write(buf.getvalue())
        sys.stdout.flush()
        self._written += 1

    def expect_tables(self, n: int) -> None:
        """Declare that a command prints ``n`` tables: with more than one, CSV names each."""
        self._named = n > 1

    def close(self) -> None:
        """Finish: JSON prints one object, ``{table name: [row, ...]}`` (rows as dicts)."""
        if self.fmt != "json" or self.silent:
            return
        from qgeom.io import dumps_json  # lazy: torch-free --help

        sys.stdout.write(dumps_json(self.tables, indent=1, ensure_ascii=False) + "\n")
        sys.stdout.flush()
        self.tables.clear()


def _display_rows(table: Table) -> list[dict]:
    """The display cells of a rich table as records (markup stripped; text)."""
    header = [plain(c.header) for c in table.columns]
    return [dict(zip(header, r)) for r in zip(*[[plain(c) for c in col._cells] for col in table.columns])]

"""What a command prints: tables for people, CSV or JSON for programs, readable in a pipe.

``Output(fmt, quiet)`` is made from ``--format`` and ``--quiet``:

* ``table`` (default): rich tables and status lines on stdout. On a terminal rich fits them to
  its width; in a pipe or a file (``qgeom check-invariance | cat``, ``> log``) the console is
  wide enough that no cell is cut ("qk_mi…") or wrapped: each table takes its natural width, and
  long lines are not folded. ``COLUMNS`` still sets the width when given.
* ``csv`` / ``json``: stdout holds only the data (markup stripped); status lines and warnings go
  to stderr. A command with several tables prints each under a ``# table: NAME`` line in CSV
  (one blank line between), and one object ``{NAME: [row, ...], ...}`` in JSON.
* ``--quiet``: no status lines (progress bars are the caller's: pass ``progress=not quiet``);
  results and warnings stay.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys

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


def plain(cell) -> str:
    """A cell without rich markup (``[green]✓ 1e-15[/]`` → ``✓ 1e-15``)."""
    return Text.from_markup(cell).plain if isinstance(cell, str) else str(cell)


class Output:
    """Tables and messages of one command, in the format it was asked for."""

    def __init__(self, fmt: str = "table", quiet: bool = False) -> None:
        self.fmt, self.quiet = fmt, quiet
        self.console = make_console()  # results
        self.messages = self.console if fmt == "table" else make_console(stderr=True)
        self.tables: dict[str, tuple[list[str], list[list[str]]]] = {}  # JSON, printed by close()
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
    def table(self, name: str, table: Table) -> None:
        """Print a rich table now (table format), or its cells as CSV now, or keep them for JSON."""
        if self.silent:
            return
        if self.fmt == "table":
            self.console.print(table)
            return
        header = [plain(c.header) for c in table.columns]
        rows = [list(r) for r in zip(*[[plain(c) for c in col._cells] for col in table.columns])]
        if self.fmt == "json":
            self.tables[name] = (header, rows)
            return
        buf = io.StringIO()
        if self._written:
            buf.write("\n")
        if self._named:
            buf.write(f"# table: {name}\n")
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
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
        doc = {name: [dict(zip(header, row)) for row in rows] for name, (header, rows) in self.tables.items()}
        sys.stdout.write(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
        sys.stdout.flush()
        self.tables.clear()

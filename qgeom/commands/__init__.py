"""CLI commands defined in their own modules; qgeom.cli registers each one."""

from __future__ import annotations

import functools
import os

import typer


def clean_errors(command):
    """Report qgeom's own errors (missing or corrupt checkpoints, incompatible vectors, unknown
    tasks, unsupported bit widths: ``ValueError``s and ``FileNotFoundError``) as one line on
    stderr with exit code 1, instead of a traceback. ``QGEOM_DEBUG=1`` shows the traceback."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (ValueError, FileNotFoundError) as e:
            if os.environ.get("QGEOM_DEBUG"):
                raise
            typer.echo(f"Error: {e}", err=True)
            raise typer.Exit(1) from e

    return run

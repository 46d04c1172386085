"""CLI commands defined in their own modules; qgeom.cli registers each one.

One error path for the whole CLI (:func:`clean_errors`, applied to every command) and one check
of output locations before any work (:func:`qgeom.files.check_writable`, re-exported here).
"""

from __future__ import annotations

import errno
import functools
import os
import typer

from qgeom.files import check_not_input, check_writable

INTERRUPTED = ("Interrupted: files are written atomically, so nothing half-written was kept; "
               "run the same command again to resume (qgeom run continues where it stopped).")


def describe_os_error(e: OSError) -> str:
    """One line naming the path(s) and what went wrong, e.g. ``permission denied: runs/x``."""
    what = (e.strerror or errno.errorcode.get(e.errno or 0, "") or str(e) or type(e).__name__).rstrip(".")
    what = what[0].lower() + what[1:] if what else type(e).__name__
    paths = [str(p) for p in (e.filename, e.filename2) if p is not None]
    return f"{what}: {' -> '.join(paths)}" if paths else what


def one_line(text: str) -> str:
    """Collapse a message onto one line (library messages may span several)."""
    return " ".join(str(text).split())


def clean_errors(command):
    """Report every expected failure as one line on stderr with exit code 1, never a traceback.

    qgeom's own errors (``ValueError`` and subclasses: missing, corrupt or non-finite checkpoints,
    incompatible vectors, bad configs) print their message; OS errors (permission denied, not a
    directory, no space left, exists) print what went wrong and the path; Ctrl-C prints that the
    command can be rerun to resume (exit 130). Usage errors stay click's (exit 2).
    ``QGEOM_DEBUG=1`` re-raises, to show the traceback.
    """

    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort, typer.BadParameter):
            raise
        except KeyboardInterrupt as e:
            if os.environ.get("QGEOM_DEBUG"):
                raise
            typer.echo(INTERRUPTED, err=True)
            raise typer.Exit(130) from e
        except (ValueError, OSError) as e:
            if os.environ.get("QGEOM_DEBUG"):
                raise
            named = isinstance(e, OSError) and (e.filename is not None or e.strerror)
            msg = describe_os_error(e) if named else str(e)
            typer.echo(f"Error: {one_line(msg)}", err=True)
            raise typer.Exit(1) from e

    run.clean_errors = True  # lets a test check that every command goes through this path
    return run


def check_finite_option(value: float, name: str, *, positive: bool = False) -> float:
    """Raise ``typer.BadParameter`` for a NaN/Inf option value (or one ≤ 0 with ``positive``)."""
    import math

    if not math.isfinite(value) or (positive and value <= 0):
        raise typer.BadParameter(f"{value} is not a finite number{' > 0' if positive else ''}", param_hint=name)
    return value


__all__ = ["INTERRUPTED", "check_finite_option", "check_not_input", "check_writable", "clean_errors", "describe_os_error", "one_line"]

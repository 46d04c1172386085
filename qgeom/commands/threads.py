"""The one ``--threads`` option every command and benchmark shares, and what sets it.

Default: 1 torch thread. Measured on the project's 2-core machine shared with other jobs
(README, Threads): the README's curvature example took 44 s with 1 thread against 493 s with
torch's default (2), the figures command 37 s against 388 s — OpenMP threads spin-wait against
the other jobs' threads; benchmarks/spectrum_cost.py measured one Hessian product at 1.6 s with 1
thread against 16.6 s with 2, interleaved, at load average ~6. On idle cores 2 threads gain little
on these small models (figures_cli's notes; no quiet machine to re-measure). So 1 is the
default; ``--threads 0`` keeps torch's own default (all cores), for a machine you have to yourself.
"""

from __future__ import annotations

import torch
import typer

THREADS_HELP = ("torch CPU threads (default 1: ~10× faster than torch's default on a loaded, shared "
                "machine; 0 = torch's default, worth it on idle cores — see README, Threads)")


def set_threads(n: int | None) -> int:
    """Set torch's intra-op threads to ``n`` (None or 0: leave torch's default); return the count in use."""
    if n:
        torch.set_num_threads(int(n))
    return torch.get_num_threads()


def threads_option(default: int = 1):
    """``--threads`` as a typer option (one line per command: ``threads: int = threads_option()``)."""
    return typer.Option(default, "--threads", min=0, help=THREADS_HELP)





def with_threads(command):
    """Give ``command`` the shared ``--threads`` option (one decorator line per command).

    Adds a keyword ``threads`` to the signature typer reads, and on each call sets torch's thread
    count (:func:`set_threads`) before running the command without it."""
    import functools
    import inspect

    sig = inspect.signature(command)
    if "threads" in sig.parameters:
        return command

    @functools.wraps(command)
    def run(*args, threads: int = 1, **kwargs):
        set_threads(threads)
        return command(*args, **kwargs)

    extra = inspect.Parameter("threads", inspect.Parameter.KEYWORD_ONLY, default=threads_option(), annotation=int)
    run.__signature__ = sig.replace(parameters=[*sig.parameters.values(), extra])
    return run
__all__ = ["THREADS_HELP", "set_threads", "threads_option", "with_threads"]

"""Torch's thread count for the benchmarks, and why 1 is qgeom's default (the commands' own
``--threads`` is declared in :mod:`qgeom.commands.options` and applied by ``apply_runtime``).

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

THREADS_HELP = ("torch CPU threads (default 1: ~10× faster than torch's default on a loaded, shared "
                "machine; 0 = torch's default, worth it on idle cores — see README, Threads)")


def set_threads(n: int | None) -> int:
    """Set torch's intra-op threads to ``n`` (None or 0: leave torch's default); return the count in use."""
    if n:
        torch.set_num_threads(int(n))
    return torch.get_num_threads()


__all__ = ["THREADS_HELP", "set_threads"]

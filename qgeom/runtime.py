"""Where qgeom runs: torch's thread count, a run's worker processes, and the machine a time was
measured on (the commands' own ``--threads`` is declared in :mod:`qgeom.commands.options` and
applied by ``apply_runtime``).

Threads. 
Default: 1 torch thread. Measured on the project's 2-core machine shared with other jobs
(README, Threads): the README's curvature example took 44 s with 1 thread against 493 s with
torch's default (2), the figures command 37 s against 388 s — OpenMP threads spin-wait against
the other jobs' threads; benchmarks/spectrum_cost.py measured one Hessian product at 1.6 s with 1
thread against 16.6 s with 2, interleaved, at load average ~6. On idle cores 2 threads gain little
on these small models (qgeom.commands.figures' notes; no quiet machine to re-measure). So 1 is the
default; ``--threads 0`` keeps torch's own default (all cores), for a machine you have to yourself.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

THREADS_HELP = ("torch CPU threads (default 1: ~10× faster than torch's default on a loaded, shared "
                "machine; 0 = torch's default, worth it on idle cores — see README, Threads)")


def set_threads(n: int | None) -> int:
    """Set torch's intra-op threads to ``n`` (None or 0: leave torch's default); return the count in use."""
    if n:
        torch.set_num_threads(int(n))
    return torch.get_num_threads()


def default_workers() -> int:
    """Worker processes for a run: ``QGEOM_WORKERS`` when set, else 1 on a GPU, else min(2, cores)."""
    value = os.environ.get("QGEOM_WORKERS", "").strip()
    if value:
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"QGEOM_WORKERS={value!r}: expected a number of worker processes ≥ 1")
        return int(value)
    return 1 if torch.cuda.is_available() else max(1, min(2, os.cpu_count() or 1))


def machine_info() -> dict:
    """Where a time was measured: CPU model, cores, torch threads, device, 1-minute load average."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": device,
            "load_average_at_end": [round(x, 2) for x in load]}


__all__ = ["THREADS_HELP", "default_workers", "machine_info", "set_threads"]

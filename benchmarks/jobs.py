"""What running stages as jobs costs (a measurement, not a test): JSON out.

    python benchmarks/jobs.py                  # the tiny preset: in-process vs submitit's local executor

Runs the same config twice into fresh run directories — every stage in this process, then every
stage a submitit job (a subprocess that imports qgeom and torch, reads its inputs from the run
directory and writes its outputs) — and reports both wall times, the number of jobs and the
overhead per job ((jobs wall − in-process wall) / jobs × parallelism), with the machine's load.
The tables of the two runs are compared (they must be identical).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from qgeom.experiment.driver import run_experiment  # noqa: E402
from qgeom.experiment.presets import preset  # noqa: E402
from qgeom.experiment.stages import plan  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="tiny")
    ap.add_argument("--max-parallel", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "jobs_cpu.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    n_jobs = len(plan(preset(args.config)))
    with tempfile.TemporaryDirectory() as tmp:
        load0 = os.getloadavg()
        t = time.perf_counter()
        run_experiment(args.config, Path(tmp) / "inprocess", [], progress=False)
        inprocess = time.perf_counter() - t
        t = time.perf_counter()
        run_experiment(args.config, Path(tmp) / "jobs", [], progress=False,
                       jobs=dict(executor="local", max_parallel=args.max_parallel))
        jobs = time.perf_counter() - t
        same = all(pd.read_csv(Path(tmp) / "inprocess" / f).equals(pd.read_csv(Path(tmp) / "jobs" / f))
                   for f in ("accuracy.csv", "geometry.csv"))
    result = {
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
                    "load_average_start": load0, "load_average_end": os.getloadavg()},
        "config": args.config, "threads": args.threads, "max_parallel": args.max_parallel, "jobs": n_jobs,
        "seconds": {"in_process": round(inprocess, 1), "local_jobs": round(jobs, 1)},
        "overhead_per_job_s": round((jobs - inprocess) * args.max_parallel / n_jobs, 2),
        "tables_identical": same,
    }
    text = json.dumps(result, indent=2)
    print(text)
    Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()

"""What the README's spectrum example costs, and what a thread count costs (a measurement): JSON out.

    python benchmarks/spectrum_cost.py

The README's example: ``eigsh(H, k=5, which="LA")`` for the Hessian of the ``fp`` objective on the
``quantized`` scope of the micro preset, 256 probe images of the ``count`` task in batches of 64,
float32. Measured with the old fixed tolerance (1e-10, max 100 steps) and with the dtype's
default (:func:`qgeom.spectra.lanczos.default_tol`): steps, wall time, convergence, achieved relative
residuals. Then the thread count: the same Hessian product with 1 and with 2 torch threads,
interleaved in one process (so the machine's load hits both alike), with the load average
recorded — on a shared machine, the other jobs' threads decide which wins.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from curvature import machine  # noqa: E402
from qgeom.curvature.operator import CurvatureOperator  # noqa: E402
from qgeom.data import load_task, probe_batches  # noqa: E402
from qgeom.spectra.eigsh import eigsh  # noqa: E402
from qgeom.models import create_model  # noqa: E402
from qgeom.params import from_model  # noqa: E402


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--thread-repeats", type=int, default=5)
    ap.add_argument("--skip-old", action="store_true", help="skip the 1e-10 run (≈ 100 steps)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "spectrum_cost_cpu.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    task = load_task("count")
    model = create_model("micro", len(task.classes), seed=0).eval()
    batches = probe_batches(task.train, 256, 64, seed=0)
    H = CurvatureOperator(model, from_model(model), batches, metric="hessian", objective="fp", scope="quantized")
    load = [os.getloadavg()]
    runs = {}
    for name, tol in (("dtype_default", None), ("old_1e-10", 1e-10)):
        if name == "old_1e-10" and args.skip_old:
            continue
        t = time.perf_counter()
        r = eigsh(H, k=5, which="LA", tol=tol, return_vectors=False)
        runs[name] = {"seconds": time.perf_counter() - t, "steps": r.n_iter, "converged": r.converged,
                      "tol": r.info["tol"], "relative_residuals": r.info["relative_residuals"],
                      "eigenvalues": r.eigenvalues.tolist(), "message": r.message, "method": r.info["method"]}
        load.append(os.getloadavg())
    v = H.unflatten(torch.randn(H.n_params, generator=torch.Generator().manual_seed(0)))
    samples = {1: [], 2: []}
    H.matvec(v)
    for _ in range(args.thread_repeats):
        for n in (1, 2):
            torch.set_num_threads(n)
            t = time.perf_counter()
            H.matvec(v)
            samples[n].append(time.perf_counter() - t)
    torch.set_num_threads(1)
    load.append(os.getloadavg())
    threads = {str(n): {"median_s": statistics.median(s), "min_s": min(s), "max_s": max(s)} for n, s in samples.items()}
    threads["two_over_one"] = threads["2"]["median_s"] / threads["1"]["median_s"]
    out = {"machine": {**machine(torch.device("cpu")), "load_averages": load},
           "config": {"preset": "micro", "scope": "quantized", "n_params": H.n_params, "probe_images": 256,
                      "probe_batch": 64, "dtype": "float32", "k": 5},
           "eigsh": runs, "hessian_product_threads": threads}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()

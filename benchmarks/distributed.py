"""Data-parallel curvature products: 1 vs N ranks (a measurement, not a test): JSON out.

    python benchmarks/distributed.py                       # micro and small presets, 1 and 2 ranks, gloo, CPU
    python benchmarks/distributed.py --ranks 1,2,4,8 --presets base --device cuda   # on a GPU node (NCCL)

Each configuration is launched with ``torch.distributed.run`` (``torchrun``); every rank builds
the same model and the same probe set (``--probe`` images in batches of ``--batch``), and rank 0
times ``CurvatureOperator.matvec`` (GGN and Hessian) over the whole probe set: medians over
``--repeats`` after a warm-up, one thread per rank on CPU. Products per second and the scaling
efficiency (speed-up / ranks) against 1 rank measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker(args) -> None:
    import torch

    sys.path.insert(0, str(ROOT))
    from qgeom.curvature.operator import CurvatureOperator
    from qgeom.models import create_model
    from qgeom.params import from_model

    device = torch.device(args.device)
    if args.device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        device = torch.device("cuda", torch.cuda.current_device())
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        torch.distributed.init_process_group("nccl" if args.device == "cuda" else "gloo")
    torch.set_num_threads(1)
    size = 224 if args.preset != "micro" else 32
    model = create_model(args.preset, 10, seed=0).to(device)
    theta = {k: v.to(device) for k, v in from_model(model).items()}
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(args.batch, 3, size, size, generator=g).to(device),
                torch.randint(0, 10, (args.batch,), generator=g).to(device)) for _ in range(args.probe // args.batch)]
    v = {k: torch.randn(t.shape, generator=g).to(device) for k, t in theta.items()}
    out = {}
    for metric in ("ggn", "hessian"):
        op = CurvatureOperator(model, theta, batches, metric=metric)
        op.matvec(v)
        times = []
        for _ in range(args.repeats):
            if args.device == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            op.matvec(v)
            if args.device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        out[metric] = statistics.median(times)
    if int(os.environ.get("RANK", "0")) == 0:
        Path(args.result).write_text(json.dumps(out))
    if torch.distributed.is_initialized():  # every rank done before the group goes
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--presets", default="micro,small")
    ap.add_argument("--ranks", default="1,2")
    ap.add_argument("--probe", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "distributed_cpu.json"))
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--preset", default="micro", help=argparse.SUPPRESS)
    ap.add_argument("--result", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    rows = []
    load0 = os.getloadavg()
    for preset in args.presets.split(","):
        base = None
        for n in [int(r) for r in args.ranks.split(",")]:
            with tempfile.NamedTemporaryFile(suffix=".json") as f:
                cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n),
                       __file__, "--worker", "--preset", preset, "--result", f.name, "--probe", str(args.probe),
                       "--batch", str(args.batch), "--repeats", str(args.repeats), "--device", args.device]
                subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True)
                secs = json.loads(Path(f.name).read_text())
            base = base or secs
            for metric, s in secs.items():
                rows.append({"preset": preset, "ranks": n, "metric": metric, "seconds_per_product": s,
                             "products_per_second": 1 / s, "speedup": base[metric] / s,
                             "efficiency": base[metric] / s / n})
            print(json.dumps(rows[-2:]))
    result = {"machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                          "load_average_start": load0, "load_average_end": os.getloadavg()},
              "probe": args.probe, "batch": args.batch, "repeats": args.repeats, "device": args.device, "rows": rows}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""Planned memory of curvature work on ViT-B/16, from per-parameter and per-sample costs measured
here (a measurement and a plan, not a test): JSON out.

    python benchmarks/memory_plan.py                     # vit_base_patch16_224 on CPU, batches 1 and 2
    python benchmarks/memory_plan.py --preset small      # quicker

Each measurement runs in a fresh child process (CPU: resident set size sampled at 1 kHz above its
value before the call, glibc told to return every freed block over 64 KiB to the OS, as in
benchmarks/curvature.py; CUDA: ``max_memory_allocated``). The model, the probe batch, θ and the
input vectors are built *before* the baseline is read, so a figure is the working memory of the
call above its inputs. Measured at batch sizes B1 < B2, each figure is split into a part that does
not grow with the batch (divided by n: bytes per parameter) and a per-sample part (activations),
and the plan evaluates fixed + B · per_sample at the planned batch. Lanczos and SLQ add their
stored vectors, computed exactly: full reorthogonalization m · n · bytes(basis), thick restart
max(2k + 1, 20) · n · bytes(basis), SLQ 3 · n · bytes(operator).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from curvature import machine, peak_memory_mib  # noqa: E402
from qgeom.runtime import set_threads  # noqa: E402

CALLS = ("hvp", "hvp_graph_build", "ggn_product", "gram6_jvp", "gram6_products")


def child(args) -> dict:
    from qgeom.curvature.operator import CurvatureOperator
    from qgeom.curvature.geometry import gram_matrix
    from qgeom.models import create_model
    from qgeom.params import from_model

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    model = create_model(args.preset, num_classes=10, seed=0).to(device, dtype).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, *model.patch_embed.img_size, generator=g).to(device, dtype)
    y = torch.randint(0, 10, (args.batch,), generator=g).to(device)
    theta = from_model(model)
    metric = "hessian" if args.call.startswith("hvp") else "ggn"
    op = CurvatureOperator(model, theta, [(x, y)], metric=metric, cache_graph=args.call == "hvp_graph_build")
    nv = 6 if args.call.startswith("gram6") else 1
    vs = [{k: torch.randn(t.shape, generator=g).to(device, dtype) for k, t in op.theta.items()} for _ in range(nv)]
    fn = {"hvp": lambda: op.matvec(vs[0]), "hvp_graph_build": lambda: op.matvec(vs[0]),
          "ggn_product": lambda: op.matvec(vs[0]), "gram6_jvp": lambda: gram_matrix(op, vs, "jvp"),
          "gram6_products": lambda: gram_matrix(op, vs, "products")}[args.call]
    peak = peak_memory_mib(fn, device)
    return {"call": args.call, "batch": args.batch, "peak_mib": peak, "n_params": op.n_params}


def run_child(args, call: str, batch: int) -> dict:
    cmd = [sys.executable, __file__, "--child", call, "--batch-child", str(batch), "--preset", args.preset,
           "--device", args.device, "--dtype", args.dtype, "--threads", str(args.threads)]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="base")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--batches", default="1,2", help="two measured batch sizes")
    ap.add_argument("--plan-batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--batch-child", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    set_threads(args.threads)
    if args.child:
        args.call, args.batch = args.child, args.batch_child
        print(json.dumps(child(args)))
        return {}
    b1, b2 = (int(b) for b in args.batches.split(","))
    load_start = os.getloadavg()
    meas = {c: {b: run_child(args, c, b) for b in (b1, b2)} for c in CALLS}
    n = meas["hvp"][b1]["n_params"]
    bpp = torch.empty((), dtype=getattr(torch, args.dtype)).element_size()
    fit = {}
    for c, m in meas.items():
        per_sample = max(0.0, (m[b2]["peak_mib"] - m[b1]["peak_mib"]) / (b2 - b1))
        fixed = max(0.0, m[b1]["peak_mib"] - b1 * per_sample)
        fit[c] = {"bytes_per_parameter": fixed * 2**20 / n, "mib_per_sample": per_sample,
                  "measured_mib": {str(b): m[b]["peak_mib"] for b in (b1, b2)}}
    B, gib = args.plan_batch, 2**30

    def at(c: str) -> float:
        return (fit[c]["bytes_per_parameter"] * n + B * fit[c]["mib_per_sample"] * 2**20) / gib

    k, m_full = 10, 100
    plan = {
        "parameters_gib": n * bpp / gib,
        "one_hvp_gib": at("hvp"),
        "hvp_cached_graph_gib": at("hvp_graph_build"),
        "one_ggn_product_gib": at("ggn_product"),
        "gram6_ggn_jvp_gib": at("gram6_jvp") + 6 * n * bpp / gib,
        "gram6_ggn_products_gib": at("gram6_products") + 6 * n * bpp / gib,
        "top10_lanczos_full_float64_gib": m_full * n * 8 / gib + at("hvp_graph_build"),
        "top10_lanczos_full_float32_gib": m_full * n * 4 / gib + at("hvp_graph_build"),
        "top10_thick_restart_float32_gib": max(2 * k + 1, 20) * n * 4 / gib + at("hvp_graph_build"),
        "top10_thick_restart_float64_gib": max(2 * k + 1, 20) * n * 8 / gib + at("hvp_graph_build"),
        "slq_gib": 3 * n * bpp / gib + at("hvp_graph_build"),
    }
    out = {"machine": {**machine(torch.device(args.device)), "load_average_start": load_start,
                       "load_average_end": os.getloadavg()},
           "config": {"preset": args.preset, "dtype": args.dtype, "measured_batches": [b1, b2], "plan_batch": B,
                      "n_params": n, "lanczos_k": k, "lanczos_full_iterations": m_full},
           "fit": fit, "plan_gib": plan,
           "notes": "Gram figures include the 6 input vectors; Lanczos/SLQ figures include one product with the "
                    "cached gradient graph (the default for one batch) plus the stored vectors."}
    path = Path(args.out or Path(__file__).parent / "results" / f"memory_plan_{args.preset}_{args.device}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(json.dumps({"fit": fit, "plan_gib": plan}, indent=1))
    print(f"wrote {path}")
    return out


if __name__ == "__main__":
    main()

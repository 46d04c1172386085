"""Benchmark of qgeom's curvature products (a measurement, not a test): JSON out.

    python benchmarks/curvature.py                       # micro preset on CPU, batch 32, 1 thread
    python benchmarks/curvature.py --preset base         # vit_base_patch16_224, on CUDA if present

Measured, per call, on one batch of random images at a seeded random point (eval mode, manual
attention, float32 unless --dtype):

* forward (the loss), gradient;
* HVP by forward-over-reverse (torch.func.jvp of grad) and by double backward, through
  :class:`qgeom.curvature.operator.CurvatureOperator` without the gradient-graph cache, the default
  operator (one batch: the ∇L graph cached, a product is one backward pass), and the *baseline* — double backward the
  PyHessian way, written here on the nn.Module: ``autograd.grad(loss, params,
  create_graph=True)`` then ``autograd.grad(grads, params, grad_outputs=v)``;
* GGN and empirical-Fisher products;
* products with 4 vectors: one ``matmat`` against 4 ``matvec`` calls (every route);
* Lanczos: milliseconds per iteration (one product plus full reorthogonalization);
* peak memory of one call: on CUDA ``torch.cuda.max_memory_allocated`` above the baseline; on
  CPU the resident set size sampled every millisecond by a thread, above its value before the
  call, in a child process where glibc returns every freed block over 64 KiB to the OS
  (``MALLOC_MMAP_THRESHOLD_``), so the RSS follows the live tensors (approximate: spikes
  shorter than a millisecond are missed). Timings never run in that child.

Timing is interleaved — every repeat runs each measurement once in turn — so a change in the
machine's load hits all of them alike; the JSON gives medians and quartiles over the repeats
and ratios computed from medians of the same run. The machine (platform, CPU count, load
average, versions, device) is recorded alongside.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qgeom.runtime import THREADS_HELP, set_threads  # noqa: E402
from qgeom.curvature.operator import CurvatureOperator  # noqa: E402
from qgeom.spectra.lanczos import lanczos  # noqa: E402
from qgeom.models import create_model  # noqa: E402
from qgeom.params import from_model  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_memory_mib(fn, device: torch.device) -> float:
    """Peak memory of one call of ``fn`` above the memory in use before it (MiB)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    if not os.path.exists("/proc/self/statm"):
        return float("nan")
    base, peak, done = _rss_mib(), [0.0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mib())
            time.sleep(0.001)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    fn()
    done.set()
    t.join()
    return max(peak[0], _rss_mib()) - base


def pyhessian_hvp(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, v: list[torch.Tensor]) -> list[torch.Tensor]:
    """The baseline: double backward on the module's own Parameters (PyHessian's hessian_vector_product)."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = F.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    return list(torch.autograd.grad(grads, params, grad_outputs=v))


def time_interleaved(fns: dict, repeats: int, device: torch.device, warmup: int = 2) -> dict:
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    samples = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            _sync(device)
            t = time.perf_counter()
            fn()
            _sync(device)
            samples[k].append((time.perf_counter() - t) * 1e3)
    out = {}
    for k, s in samples.items():
        q = statistics.quantiles(s, n=4) if len(s) > 1 else [s[0]] * 3
        out[k] = {"median_ms": statistics.median(s), "q1_ms": q[0], "q3_ms": q[2], "min_ms": min(s), "n": len(s)}
    return out


def machine(device: torch.device) -> dict:
    import numpy
    import scipy
    import timm

    info = {
        "platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "timm": timm.__version__,
        "numpy": numpy.__version__, "scipy": scipy.__version__, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
    }
    return info


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default=None, help="micro (CPU default) or base (CUDA default)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--lanczos-iter", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/curvature_<device>.json)")
    ap.add_argument("--memory-only", action="store_true", help=argparse.SUPPRESS)  # the CPU memory child
    return ap.parse_args(argv)


def setup(args: argparse.Namespace) -> tuple[dict, CurvatureOperator, torch.nn.Module, str]:
    """The measured callables, the default Hessian operator, the model and the preset."""
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    set_threads(args.threads)
    preset = args.preset or ("base" if device.type == "cuda" else "micro")
    model = create_model(preset, num_classes=10, seed=0).to(device, dtype)
    img = model.patch_embed.img_size
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, *img, generator=g).to(device, dtype)
    y = torch.randint(0, 10, (args.batch,), generator=g).to(device)
    theta = from_model(model)
    batches = [(x, y)]
    ops = {m: CurvatureOperator(model, theta, batches, metric="hessian", method=m, cache_graph=False)
           for m in ("forward-over-reverse", "double-backward")}
    default = CurvatureOperator(model, theta, batches, metric="hessian")  # one batch: graph cached
    ggn = CurvatureOperator(model, theta, batches, metric="ggn")
    fisher = CurvatureOperator(model, theta, batches, metric="fisher")
    vs = [{k: torch.randn(t.shape, generator=g).to(device, dtype) for k, t in default.theta.items()} for _ in range(4)]
    v, v_list = vs[0], [vs[0][n] for n, _ in model.named_parameters()]
    fns = {
        "forward": default.loss,
        "gradient": default.gradient,
        "hvp_forward_over_reverse": lambda: ops["forward-over-reverse"].matvec(v),
        "hvp_double_backward": lambda: ops["double-backward"].matvec(v),
        "hvp_baseline_pyhessian": lambda: pyhessian_hvp(model, x, y, v_list),
        "hvp_default_cached_graph": lambda: default.matvec(v),
        "hvp_default_first_call": lambda: (default.clear_cache(), default.matvec(v)),  # builds the graph
        "ggn_product": lambda: ggn.matvec(v),
        "fisher_product": lambda: fisher.matvec(v),
    }
    for name, op in (("forward_over_reverse", ops["forward-over-reverse"]), ("double_backward", ops["double-backward"]),
                     ("ggn", ggn), ("default_cached", default)):
        fns[f"{name}_4_singles"] = lambda op=op: [op.matvec(u) for u in vs]
        fns[f"{name}_matmat_4"] = lambda op=op: op.matmat(vs)
    fns["lanczos_10_iterations"] = lambda: lanczos(default, args.lanczos_iter, seed=0, keep_basis=False)
    for p in model.parameters():
        p.requires_grad_(True)
    return fns, default, model, preset


def memory(args: argparse.Namespace, fns: dict) -> tuple[dict, str]:
    """Peak memory per call (MiB). CPU: in a child process whose glibc returns every block over
    64 KiB to the OS on free (MALLOC_MMAP_THRESHOLD_), so the RSS follows live tensors."""
    device = torch.device(args.device)
    if device.type == "cuda":
        return ({k: peak_memory_mib(fn, device) for k, fn in fns.items() if not k.endswith("4_singles")},
                "torch.cuda.max_memory_allocated above memory_allocated before the call")
    cmd = [sys.executable, __file__, "--memory-only", "--batch", str(args.batch), "--dtype", args.dtype,
           "--device", args.device, "--lanczos-iter", str(args.lanczos_iter)]
    cmd += ["--preset", args.preset] if args.preset else []
    cmd += ["--threads", str(args.threads)] if args.threads else []
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return (json.loads(res.stdout.strip().splitlines()[-1]),
            "RSS sampled at 1 kHz above its value before the call, in a child process with "
            "MALLOC_MMAP_THRESHOLD_=65536 (freed tensors leave the RSS); approximate")


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    fns, default, model, preset = setup(args)
    device = torch.device(args.device)
    if args.memory_only:
        for fn in fns.values():
            fn()  # warm-up: lazy initialisation is not the call's memory
        print(json.dumps({k: peak_memory_mib(fn, device) for k, fn in fns.items() if not k.endswith("4_singles")}))
        return {}
    load_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    t = time_interleaved({k: f for k, f in fns.items() if not k.startswith("lanczos")}, args.repeats, device)
    lz = time_interleaved({"lanczos": fns["lanczos_10_iterations"]}, max(3, args.repeats // 5), device, warmup=1)
    mem, mem_method = memory(args, fns)

    med = {k: s["median_ms"] for k, s in t.items()}
    dflt = "hvp_" + default.method.replace("-", "_")  # the route, without the graph cache
    other = "hvp_forward_over_reverse" if dflt == "hvp_double_backward" else "hvp_double_backward"
    ratios = {
        "hvp_default_over_gradient": med[dflt] / med["gradient"],
        "hvp_forward_over_reverse_over_gradient": med["hvp_forward_over_reverse"] / med["gradient"],
        "hvp_double_backward_over_gradient": med["hvp_double_backward"] / med["gradient"],
        "hvp_baseline_over_gradient": med["hvp_baseline_pyhessian"] / med["gradient"],
        "hvp_default_over_baseline": med[dflt] / med["hvp_baseline_pyhessian"],
        "hvp_cached_over_baseline": med["hvp_default_cached_graph"] / med["hvp_baseline_pyhessian"],
        "hvp_cached_over_uncached": med["hvp_default_cached_graph"] / med[dflt],
        "hvp_default_over_other_route": med[dflt] / med[other],
        "ggn_over_gradient": med["ggn_product"] / med["gradient"],
        "fisher_over_gradient": med["fisher_product"] / med["gradient"],
        **{f"matmat_4_speedup_{n}": med[f"{n}_4_singles"] / med[f"{n}_matmat_4"]
           for n in ("forward_over_reverse", "double_backward", "ggn", "default_cached")},
        "matmat_4_cached_speedup_over_4_uncached_singles": med["double_backward_4_singles"] / med["default_cached_matmat_4"],
    }
    default_key = dflt.removeprefix("hvp_")
    result = {
        "machine": {**machine(device), "load_average_start": load_start,
                    "load_average_end": os.getloadavg() if hasattr(os, "getloadavg") else None},
        "config": {"preset": preset, "batch": args.batch, "dtype": args.dtype, "repeats": args.repeats,
                   "n_params": default.n_params, "default_hvp_method": default.method,
                   "img_size": list(model.patch_embed.img_size), "lanczos_iter": args.lanczos_iter},
        "timings": t,
        "lanczos_ms_per_iteration": lz["lanczos"]["median_ms"] / args.lanczos_iter,
        "ratios": ratios,
        "targets": {
            "default_hvp_le_3x_gradient": ratios["hvp_default_over_gradient"] <= 3.0,
            "default_route_no_slower_than_other": ratios["hvp_default_over_other_route"] <= 1.0,
            "matmat_4_ge_1.5x_default_route": ratios[f"matmat_4_speedup_{default_key}"] >= 1.5,
        },
        "peak_memory_mib": mem,
        "peak_memory_method": mem_method,
        "process_max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    out = Path(args.out or Path(__file__).parent / "results" / f"curvature_{device.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps({"ratios": ratios, "targets": result["targets"], "lanczos_ms_per_iteration":
                      result["lanczos_ms_per_iteration"], "peak_memory_mib": mem,
                      "median_ms": {k: round(v, 2) for k, v in med.items()}}, indent=2))
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()

"""qgeom against the curvature libraries researchers already use, side by side in one run: JSON out.

    python benchmarks/peers.py                     # micro preset, CPU, batch 32, 1 thread
    python benchmarks/peers.py --preset small      # timm-small-sized ViT
    python benchmarks/peers.py --preset base --device cuda --dtype bfloat16   # ViT-B/16 on a GPU

Peers (the ``bench`` extra): curvlinops (``HessianLinearOperator``, ``GGNLinearOperator``, its
``hutchinson_trace``; eigenvalues by scipy's ARPACK on ``to_scipy()``, its documented route),
PyHessian (the ``pyhessian`` package's ``hessian`` class: its products on the cached gradient
graph, ``eigenvalues`` (power iteration with deflation) and ``trace``), hessian-eigenthings
(``HessianOperator``, ``GGNOperator``, its ``lanczos`` and ``hutchinson``). All on the same model,
batch, point, vectors and thread count. Cells (a peer without the feature is "n/a"):

* ``hvp``: one Hessian-vector product (qgeom: the default operator, which for a one-batch probe
  set keeps the ∇L graph — as PyHessian's class does; ``qgeom_uncached``: without it);  ``hvp_block4``: 4 products (one call where the library
  has a block API, else a loop);  ``top5``: the 5 largest Hessian eigenvalues;
* ``trace32``: Hutchinson's trace of H with 32 Rademacher probes;
* ``gram6_ggn``: the 6 × 6 GGN Gram VᵀGV (qgeom: from JVPs; qgeom_products: 6 GGN products).

Every cell reports the median time over interleaved repeats (each round runs every cell once in
turn, so load changes hit all alike; the second-long cells stop after ``--repeats`` rounds, the
product and Gram cells run ``--repeats-fast``) and its error against a trusted reference: qgeom's float64
operator on a float64 copy of the model (tested against dense float64 references with a
decomposed LayerNorm). Products, blocks and Grams: relative Frobenius error; top-5:
max |λ_i − λ_i,ref| / |λ_1,ref|; trace: |t − t_ref| / |t_ref| and z = (t − t_ref)/(√2·SE_ref)
(estimates with different probes differ by sampling noise). A cell is *correct* when its error is
≤ 1e-4 (products, Grams: float32 roundoff ~1e-7 × accumulation), ≤ 1e-3 (eigenvalues: what
PyHessian's and hessian-eigenthings' default tolerances promise) or |z| ≤ 4 (trace). The table's
ratio is qgeom's time over the fastest *correct* peer: a fast wrong answer does not count.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from curvature import machine  # noqa: E402
from qgeom.runtime import THREADS_HELP, set_threads  # noqa: E402
from qgeom.curvature.operator import CurvatureOperator  # noqa: E402
from qgeom.curvature.geometry import gram_matrix  # noqa: E402
from qgeom.spectra.density import hutchinson_trace  # noqa: E402
from qgeom.spectra.eigsh import eigsh  # noqa: E402
from qgeom.models import create_model  # noqa: E402
from qgeom.params import from_model  # noqa: E402

TOL = {"hvp": 1e-4, "hvp_block4": 1e-4, "gram6_ggn": 1e-4, "top5": 1e-3}
TOL_BF16 = {"hvp": 3e-2, "hvp_block4": 3e-2, "gram6_ggn": 3e-2, "top5": 3e-2}  # bf16: eps 7.8e-3


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def versions() -> dict:
    out = {}
    for mod, dist in (("curvlinops", "curvlinops-for-pytorch"), ("pyhessian", "pyhessian"),
                      ("hessian_eigenthings", "hessian-eigenthings")):
        try:
            from importlib.metadata import version
            __import__(mod)
            out[dist] = version(dist)
        except Exception as e:  # noqa: BLE001 - a peer that is not installed is reported, not fatal
            out[dist] = f"unavailable: {type(e).__name__}: {e}"
    return out


def build(args):
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    model = create_model(args.preset, num_classes=10, seed=0).to(device, dtype).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, *model.patch_embed.img_size, generator=g).to(device, dtype)
    y = torch.randint(0, 10, (args.batch,), generator=g).to(device)
    names = [n for n, _ in model.named_parameters()]
    params = [p for p in model.parameters()]
    for p in params:
        p.requires_grad_(True)
    n = sum(p.numel() for p in params)
    V = torch.randn(n, 6, generator=g).to(device, dtype)  # the 6 vectors (the first 4: the block)
    return model, x, y, names, params, n, V


def reference(model, x, y, names, V, args) -> dict:
    """float64 truths from qgeom's float64 operator (trusted: tests/_cases_curvature.py)."""
    m64 = create_model(args.preset, num_classes=10, seed=0).to(model_device(model), torch.float64).eval()
    m64.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    b = [(x.double(), y)]
    th = from_model(m64)
    H = CurvatureOperator(m64, th, b, metric="hessian")
    G = CurvatureOperator(m64, th, b, metric="ggn")
    V64 = V.double()
    assert H.keys == names, "qgeom's 'all' scope must be the module's parameters, in order"
    HV = H.flat_matmat(V64[:, :4])
    top = eigsh(H, k=5, which="LA", return_vectors=False)
    top_lm = eigsh(H, k=5, which="LM", return_vectors=False)
    tr = hutchinson_trace(H, n_probes=32, seed=1)
    K, _, _ = gram_matrix(G, [G.unflatten(V64[:, j]) for j in range(6)])
    return {"hvp": HV[:, 0], "hvp_block4": HV, "top5": np.sort(top.eigenvalues)[::-1],
            "top5_lm": top_lm.eigenvalues[np.argsort(-np.abs(top_lm.eigenvalues))], "trace32": (tr.trace, tr.stderr),
            "gram6_ggn": torch.from_numpy(K), "top5_converged": top.converged}


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def cells_qgeom(model, x, y, V, args) -> dict:
    th = from_model(model)
    b = [(x, y)]
    H = CurvatureOperator(model, th, b, metric="hessian")  # one batch: the ∇L graph is cached
    H0 = CurvatureOperator(model, th, b, metric="hessian", cache_graph=False)
    G = CurvatureOperator(model, th, b, metric="ggn")
    vs = [G.unflatten(V[:, j]) for j in range(6)]
    return {
        "qgeom": {
            "hvp": lambda: H.flat_matvec(V[:, 0]),
            "hvp_block4": lambda: H.flat_matmat(V[:, :4]),
            "top5": lambda: np.sort(eigsh(H, k=5, which="LA", return_vectors=False).eigenvalues)[::-1],
            "trace32": lambda: hutchinson_trace(H, n_probes=32, seed=2).trace,
            "gram6_ggn": lambda: torch.from_numpy(gram_matrix(G, vs)[0]),
        },
        "qgeom_products": {"gram6_ggn": lambda: torch.from_numpy(gram_matrix(G, vs, route="products")[0])},
        "qgeom_uncached": {"hvp": lambda: H0.flat_matvec(V[:, 0]), "hvp_block4": lambda: H0.flat_matmat(V[:, :4])},
    }


def cells_curvlinops(model, x, y, params, V) -> dict:
    import scipy.sparse.linalg as sla
    from curvlinops import GGNLinearOperator, HessianLinearOperator, hutchinson_trace as cl_trace

    loss = torch.nn.CrossEntropyLoss()
    data = [(x, y)]
    H = HessianLinearOperator(model, loss, params, data, progressbar=False, check_deterministic=False)
    G = GGNLinearOperator(model, loss, params, data, progressbar=False, check_deterministic=False)

    def top5():
        v0 = np.random.default_rng(0).standard_normal(H.shape[0])
        ev = sla.eigsh(H.to_scipy(), k=5, which="LA", tol=1e-5, v0=v0, return_eigenvectors=False)
        return np.sort(ev)[::-1]

    def trace32():
        torch.manual_seed(3)
        return float(cl_trace(H, 32))

    return {"curvlinops": {"hvp": lambda: H @ V[:, 0], "hvp_block4": lambda: H @ V[:, :4], "top5": top5,
                           "trace32": trace32, "gram6_ggn": lambda: V.T @ (G @ V)}}


def cells_pyhessian(model, x, y, params, V) -> dict:
    from pyhessian import hessian
    from pyhessian.utils import hessian_vector_product

    hc = hessian(model, torch.nn.CrossEntropyLoss(), data=(x, y), cuda=x.is_cuda)
    shapes = [p.shape for p in params]

    def split(v):
        return list(torch.split(v, [math.prod(s) for s in shapes]))

    def hv(v):
        Hv = hessian_vector_product(hc.gradsH, hc.params, [t.reshape(s) for t, s in zip(split(v), shapes)])
        return torch.cat([t.reshape(-1) for t in Hv])

    def top5():
        torch.manual_seed(4)
        ev, _ = hc.eigenvalues(top_n=5)  # power iteration: the largest |λ| (LM), compared with LM
        return ("LM", np.array(ev)[np.argsort(-np.abs(ev))])

    def trace32():
        torch.manual_seed(5)
        return float(np.mean(hc.trace(maxIter=32, tol=-1.0)))

    return {"pyhessian": {"hvp": lambda: hv(V[:, 0]),
                          "hvp_block4": lambda: torch.stack([hv(V[:, j]) for j in range(4)], 1),
                          "top5": top5, "trace32": trace32}}


def cells_eigenthings(model, x, y, params, V) -> dict:
    import hessian_eigenthings as he

    crit = torch.nn.CrossEntropyLoss()
    data = [(x, y)]
    H = he.HessianOperator(model, data, he.supervised_loss(crit))
    G = he.GGNOperator(model, data, he.supervised_forward, he.supervised_loss_of_output(crit))

    def top5():
        # its defaults (max_iter = 2k = 10, no reorthogonalization past 50 steps) do not converge here:
        # given qgeom's budget (100 steps, full reorthogonalization, float32 tolerance)
        r = he.lanczos(H, k=5, which="LA", seed=0, max_iter=100, tol=1e-5, reorthogonalize=True)
        return np.sort(r.eigenvalues.double().cpu().numpy())[::-1]

    def gram():
        GV = torch.stack([G.matvec(V[:, j]) for j in range(6)], 1)
        return V.T @ GV

    return {"hessian-eigenthings": {
        "hvp": lambda: H.matvec(V[:, 0]),
        "hvp_block4": lambda: torch.stack([H.matvec(V[:, j]) for j in range(4)], 1),
        "top5": top5,
        "trace32": lambda: float(he.hutchinson(H, num_samples=32, seed=6).estimate),
        "gram6_ggn": gram,
    }}


def error(cell: str, out, ref, ref_lm=None) -> dict:
    if cell == "trace32":
        t_ref, se = ref
        t = float(out)
        return {"value": t, "rel_err": abs(t - t_ref) / abs(t_ref), "z": (t - t_ref) / (math.sqrt(2) * se),
                "correct": abs((t - t_ref) / (math.sqrt(2) * se)) <= 4}
    if cell == "top5":
        if isinstance(out, tuple):  # ("LM", values): a peer that computes the largest magnitudes
            ref, out = ref_lm, out[1]
        got = np.asarray(out, dtype=np.float64)
        e = float(np.abs(got - ref).max() / abs(ref[0])) if got.shape == ref.shape else float("inf")
        return {"value": got.tolist(), "rel_err": e, "correct": e <= TOL[cell]}
    out = torch.as_tensor(out).double().cpu()
    e = float((out - ref.cpu()).norm() / ref.norm())
    return {"rel_err": e, "correct": e <= TOL[cell]}


ROWS = {"hvp": "one Hessian product", "hvp_block4": "4 Hessian products", "top5": "top-5 eigenvalues",
        "trace32": "Hutchinson trace, 32 probes", "gram6_ggn": "6×6 GGN Gram"}


def markdown(result: dict) -> str:
    """The README table of a result JSON: per cell, median ms (relative error; ✗ = wrong), and
    qgeom's time over the fastest correct peer."""
    libs = ["qgeom", "curvlinops", "pyhessian", "hessian-eigenthings"]
    lines = ["| cell | " + " | ".join(libs) + " | qgeom / fastest correct peer |", "|" + " --- |" * (len(libs) + 2)]
    for c, title in ROWS.items():
        if c not in result["table"]:
            continue
        row = []
        for lib in libs:
            r = result["cells"].get(f"{lib}/{c}")
            if r is None:
                row.append("n/a")
            elif "error" in r:
                row.append("fails")
            else:
                err = r.get("z") if c == "trace32" else r["rel_err"]
                tag = f"z = {err:+.1f}" if c == "trace32" else f"err {err:.0e}"
                row.append(f"{r['median_ms']:,.0f} ({tag}){'' if r['correct'] else ' ✗'}")
        t = result["table"][c]
        ratio = t["qgeom_over_fastest_correct_peer"]
        row.append(f"**{ratio:.2f}×** vs {t['fastest_correct_peer']}" if ratio else "—")
        lines.append(f"| {title} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="micro")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5, help="repeats of the slow cells (top5, trace32)")
    ap.add_argument("--repeats-fast", type=int, default=21, help="repeats of the product and Gram cells")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float64"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    ap.add_argument("--skip", default="", help="comma-separated cells to skip (e.g. top5,trace32)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--table", default=None, help="print the README table of a result JSON and exit")
    args = ap.parse_args(argv)
    if args.table:
        print(markdown(json.loads(Path(args.table).read_text())))
        return {}
    set_threads(args.threads)
    if args.dtype == "bfloat16":
        TOL.update(TOL_BF16)
    device = torch.device(args.device)
    model, x, y, names, params, n, V = build(args)
    t0 = time.perf_counter()
    ref = reference(model, x, y, names, V, args)
    ref_s = time.perf_counter() - t0
    cells: dict = {}
    cells.update(cells_qgeom(model, x, y, V, args))
    for build_peer in (cells_curvlinops, cells_pyhessian, cells_eigenthings):
        try:
            cells.update(build_peer(model, x, y, params, V))
        except ImportError as e:
            print(f"skipping {build_peer.__name__}: {e}")
    skip = set(filter(None, args.skip.split(",")))
    fns = {(lib, c): f for lib, cs in cells.items() for c, f in cs.items() if c not in skip}
    results: dict = {}
    for key, fn in fns.items():  # warm-up and the errors (outputs of the first call)
        try:
            results[key] = error(key[1], fn(), ref[key[1]], ref["top5_lm"])
        except Exception as e:  # noqa: BLE001 - a peer that fails a cell is reported
            results[key] = {"error": f"{type(e).__name__}: {e}"[:300], "correct": False}
    live = {k: f for k, f in fns.items() if "error" not in results[k]}
    samples = {k: [] for k in live}
    load_start = os.getloadavg()
    slow = {"top5", "trace32"}  # seconds per call: fewer repeats (--repeats); the rest get --repeats-fast
    budget = {k: args.repeats if k[1] in slow else max(args.repeats, args.repeats_fast) for k in live}
    for r in range(max(budget.values(), default=0)):
        for k, fn in live.items():  # interleaved: every cell still in budget runs once per round
            if r >= budget[k]:
                continue
            _sync(device)
            t = time.perf_counter()
            fn()
            _sync(device)
            samples[k].append((time.perf_counter() - t) * 1e3)
    for k, s in samples.items():
        results[k].update(median_ms=statistics.median(s), min_ms=min(s), max_ms=max(s), n=len(s))
    table = {}
    for c in sorted({c for _, c in fns}):
        row = {lib: results[(lib, cc)] for (lib, cc) in fns if cc == c}
        peers = {lib: r["median_ms"] for lib, r in row.items() if not lib.startswith("qgeom") and r.get("correct")
                 and "median_ms" in r}
        best = min(peers, key=peers.get) if peers else None
        q = row.get("qgeom", {})
        table[c] = {"fastest_correct_peer": best, "peer_ms": peers.get(best) if best else None,
                    "qgeom_ms": q.get("median_ms"), "qgeom_correct": q.get("correct"),
                    "qgeom_over_fastest_correct_peer": (q["median_ms"] / peers[best]) if best and "median_ms" in q
                    else None}
    med = {k: r.get("median_ms") for k, r in results.items()}
    ratios = {}
    if med.get(("qgeom_products", "gram6_ggn")) and med.get(("qgeom", "gram6_ggn")):
        ratios["gram6_jvp_speedup_over_6_ggn_products"] = med[("qgeom_products", "gram6_ggn")] / med[("qgeom", "gram6_ggn")]
    if med.get(("qgeom", "hvp")) and med.get(("qgeom", "hvp_block4")):
        ratios["hvp_block4_speedup_over_4_singles"] = 4 * med[("qgeom", "hvp")] / med[("qgeom", "hvp_block4")]
    if med.get(("qgeom_uncached", "hvp")) and med.get(("qgeom_uncached", "hvp_block4")):
        ratios["uncached_hvp_block4_speedup_over_4_uncached_singles"] = (
            4 * med[("qgeom_uncached", "hvp")] / med[("qgeom_uncached", "hvp_block4")])
        ratios["cached_hvp_speedup_over_uncached"] = med[("qgeom_uncached", "hvp")] / med[("qgeom", "hvp")]
    out = {
        "machine": {**machine(device), "load_average_start": load_start, "load_average_end": os.getloadavg()},
        "peers": versions(),
        "config": {"preset": args.preset, "batch": args.batch, "dtype": args.dtype, "repeats": args.repeats,
                   "repeats_fast": args.repeats_fast,
                   "threads": args.threads, "n_params": n, "reference_seconds": ref_s,
                   "reference_top5_converged": bool(ref["top5_converged"]), "tolerances": TOL,
                   "trace_correct_if": "|z| <= 4"},
        "cells": {f"{lib}/{c}": r for (lib, c), r in results.items()},
        "table": table,
        "ratios": ratios,
    }
    path = Path(args.out or Path(__file__).parent / "results" / f"peers_{device.type}_{args.preset}_{args.dtype}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2, default=float))
    print(json.dumps({"table": table, "ratios": ratios, "load": [load_start, out["machine"]["load_average_end"]]},
                     indent=1, default=float))
    print(f"wrote {path}")
    return out


if __name__ == "__main__":
    main()

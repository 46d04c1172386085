"""RTN vs GPTQ vs AWQ on the micro ViT: relative layer-output error and time, per bit width; JSON out.

    python benchmarks/quantizer_error.py                        # micro, pretrained 300 steps, bits 2,3,4
    python benchmarks/quantizer_error.py --pretrain-steps 0     # random initialisation

The model is the demo's ``micro`` preset (width 96, depth 4, 4 heads), either at its random
initialisation or pretrained for ``--pretrain-steps`` AdamW steps on the offline pretext mixture
(the demo's θ_0 recipe, shortened). Calibration: ``--calib`` images of the pretext mixture's
validation split (never trained on), batches of 32. Each method runs through
:func:`qgeom.quantizers.quantize` on the paper's per-row symmetric grid, so the methods differ only
in the method. Per layer: ‖(Ŵ − W)X‖_F / ‖WX‖_F with X the layer's inputs in that method's own
quantized model (sequential: every earlier layer quantized by the same method); the table gives
the mean over the 16 quantized Linears, the mean per layer kind (qkv, proj, fc1, fc2) and the
wall time of ``quantize`` (one run, 1 thread by default; the error is deterministic, the time is
indicative only on a shared machine). Writes ``results/quantizer_error_cpu.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curvature import machine  # noqa: E402
from qgeom.data import batches, pretext_task  # noqa: E402
from qgeom.experiment.config import RunConfig  # noqa: E402
from qgeom.models import create_model  # noqa: E402
from qgeom.params import from_model  # noqa: E402
from qgeom.quant import QuantSpec  # noqa: E402
from qgeom.quantizers import METHODS, quantize  # noqa: E402
from qgeom.train import pretrain  # noqa: E402

KINDS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")


def build(args):
    task = pretext_task(RunConfig().pretext_tasks, seed=0, n_per_task=args.n_per_task)
    model = create_model("micro", task.num_classes, seed=0)
    theta = from_model(model)
    if args.pretrain_steps:
        cfg = RunConfig().pretrain.with_(steps=args.pretrain_steps, warmup_steps=min(30, args.pretrain_steps // 10))
        theta = pretrain(model, task, cfg)
    n = min(args.calib, len(task.val))
    calib = list(batches(task.val.subset(torch.arange(n)), 32))
    return model, theta, calib


def measure(model, theta, calib, bits: int) -> dict:
    out = {}
    for method in METHODS:
        t = time.perf_counter()
        q = quantize(method, theta, QuantSpec(bits), model=model, batches=calib)
        seconds = time.perf_counter() - t
        errs = {r["name"]: r["rel_error"] for r in q.layers}
        out[method] = dict(mean=statistics.fmean(errs.values()), seconds=seconds,
                           by_kind={k: statistics.fmean(e for n, e in errs.items() if f".{k}." in n) for k in KINDS},
                           alphas=[r["alpha"] for r in q.layers] if method == "awq" else None)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bits", default="2,3,4")
    ap.add_argument("--pretrain-steps", type=int, default=300)
    ap.add_argument("--n-per-task", type=int, default=1000, help="pretext images per task (pretraining)")
    ap.add_argument("--calib", type=int, default=256, help="calibration images")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "quantizer_error_cpu.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, theta, calib = build(args)
    results = {b: measure(model, theta, calib, int(b)) for b in args.bits.split(",")}
    print(f"micro ViT, pretrained {args.pretrain_steps} steps, {sum(len(x) for x, _ in calib)} calibration images")
    print("bits  method  mean rel. output error   qkv     proj    fc1     fc2    seconds")
    for b, r in results.items():
        for m, v in r.items():
            kinds = "  ".join(f"{v['by_kind'][k]:.4f}" for k in KINDS)
            print(f"{b:>4}  {m:<6}  {v['mean']:.4f}                 {kinds}  {v['seconds']:.2f}")
        print(f"      awq α per layer: {r['awq']['alphas']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    record = dict(args={k: v for k, v in vars(args).items() if k != "out"}, machine=machine(torch.device("cpu")),
                  results=results)
    Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
    return results


if __name__ == "__main__":
    main()

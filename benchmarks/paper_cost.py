"""What the paper's experiment costs, from step times qgeom measures here (a measurement, not a test).

    python benchmarks/paper_cost.py                          # ViT-B/16 on this machine (CUDA if present)
    python benchmarks/paper_cost.py --preset paper-vit-l16 --batch 64

Measured on the current device, with random weights of the preset's timm architecture (nothing
is downloaded) and random 224×224 images, in the run's own code paths:

* one training step of :func:`qgeom.train.fit` at ``--batch`` (forward, backward, clip, AdamW;
  bf16 autocast on CUDA, as the run does), median over ``--repeats``;
* one evaluation forward at ``--batch`` (:func:`qgeom.train.logits`, inference mode);
* one GGN product on a probe batch (:class:`qgeom.curvature.operator.CurvatureOperator`, fp32).

The estimate scales them to the preset (seconds per image × images): fine-tuning and QAT steps
per task at the recipe's batch 128; evaluations per receiver as ``qgeom.experiment.run`` makes them
(baseline, QAT, pretrained backbone, every donor over the λ grid, the multi-donor mean, the
random control; both scopes; val and test); the GGN Gram matrix per receiver (one product per
task vector per probe batch, fp and ste). Split sizes are the datasets' published sizes with
qgeom's carving rules (``SPLITS`` below). Data loading is assumed hidden behind compute
(8 workers); on a CPU that does not hold, on a GPU it mostly does. JSON out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qgeom.experiment.presets import preset as run_preset  # noqa: E402
from qgeom.curvature.operator import CurvatureOperator  # noqa: E402
from qgeom.models import create_model, default_device  # noqa: E402
from qgeom.params import from_model  # noqa: E402
from qgeom.train import fit, logits  # noqa: E402

#: (train, val, test) images per task after qgeom's carving (val: 10 % of train, at most 5 000,
#: where the dataset ships none; EuroSAT, SUN397, RESISC45 as flat folders: 80/10/10).
SPLITS = {
    "Cars": (7330, 814, 8041), "DTD": (1880, 1880, 1880), "EuroSAT": (21600, 2700, 2700),
    "GTSRB": (23976, 2664, 12630), "MNIST": (55000, 5000, 10000), "RESISC45": (25200, 3150, 3150),
    "SUN397": (87004, 10875, 10875), "SVHN": (68257, 5000, 26032), "CIFAR10": (45000, 5000, 10000),
    "CIFAR100": (45000, 5000, 10000), "STL10": (4500, 500, 8000), "Food101": (70750, 5000, 25250),
    "Flowers102": (1020, 1020, 6149), "FER2013": (25838, 2871, 7178), "PCAM": (262144, 32768, 32768),
    "OxfordIIITPet": (3312, 368, 3669), "RenderedSST2": (6920, 872, 1821), "EMNIST": (107800, 5000, 18800),
    "FashionMNIST": (55000, 5000, 10000), "KMNIST": (55000, 5000, 10000), "TinyImageNet": (95000, 5000, 10000),
    "ImageNet": (1276167, 5000, 50000),
}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_time(fn, repeats: int, device) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def evaluations_per_receiver(cfg, n_tasks: int) -> tuple[int, int]:
    """(evaluations on val, evaluations on test) per receiver, seed and bit width (transfer.py)."""
    lams = len(set(cfg.lambdas) | {1.0})
    per_scope_val = n_tasks * lams + lams  # every donor's patch and the multi-donor mean over the grid
    per_scope_test = n_tasks * lams + lams + (n_tasks - 1) * cfg.random_draws + n_tasks + 1  # + random, FP at λ=1
    scopes = len(cfg.scopes)
    return 2 + scopes * per_scope_val, 2 + 1 + 1 + scopes * per_scope_test  # baseline and QAT (val, test; FP)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="paper-vit-b16")
    ap.add_argument("--batch", type=int, default=None, help="measured batch (default 8 on CPU, 128 on CUDA)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    device = default_device()
    cfg = run_preset(args.preset)
    batch = args.batch or (128 if device.type == "cuda" else 8)
    model = create_model(cfg.preset, 100, seed=0)
    theta = from_model(model)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 224, 224, generator=g)
    y = torch.randint(0, 100, (batch,), generator=g)

    step = median_time(lambda: fit(model, theta, [(x, y)], 1, device=device), args.repeats, device)
    single = median_time(lambda: fit(model, theta, [(x, y)], 0, device=device), args.repeats, device)
    train_step = max(step - single, 1e-9)  # one step, without fit's copy of the model to the device
    forward = median_time(lambda: logits(model, theta, x, batch), args.repeats, device)
    on_dev = {k: v.to(device) for k, v in theta.items()}
    op = CurvatureOperator(model.to(device), on_dev, [(x.to(device), y.to(device))], metric="ggn")
    v = {k: torch.randn_like(t) for k, t in on_dev.items()}
    ggn = median_time(lambda: op.matvec(v), args.repeats, device)

    n = len(cfg.tasks)
    per_img = {"train": train_step / batch, "forward": forward / batch, "ggn": ggn / batch}
    train_s = n * (cfg.finetune.steps * cfg.finetune.batch_size + cfg.qat.steps * cfg.qat.batch_size) * per_img["train"]
    ev_val, ev_test = evaluations_per_receiver(cfg, n)
    eval_s = sum(ev_val * SPLITS[t][1] + ev_test * SPLITS[t][2] for t in cfg.tasks) * per_img["forward"]
    geometry_s = n * len(cfg.scopes) * 2 * n * cfg.probe_size * per_img["ggn"]  # fp and ste Grams, N products each
    total = (train_s + eval_s + geometry_s) * len(cfg.seeds) * len(cfg.bits)
    result = {
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "device": str(device),
                    "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine(),
                    "torch": torch.__version__, "load_average": os.getloadavg()},
        "preset": args.preset, "model": cfg.preset, "measured_batch": batch, "repeats": args.repeats,
        "seconds": {"train_step": train_step, "eval_forward": forward, "ggn_product": ggn},
        "seconds_per_image": per_img,
        "estimate_hours": {"train": train_s / 3600, "evaluate": eval_s / 3600, "geometry": geometry_s / 3600,
                           "total": total / 3600},
        "counts": {"tasks": n, "train_images_per_task": cfg.finetune.steps * cfg.finetune.batch_size * 2,
                   "evaluations_per_receiver": {"val": ev_val, "test": ev_test}},
    }
    text = json.dumps(result, indent=2)
    print(text)
    out = Path(args.out or Path(__file__).parent / "results" / f"paper_cost_{device.type}.json")
    out.write_text(text + "\n")


if __name__ == "__main__":
    main()

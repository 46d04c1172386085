"""A float64 curvature case computed in one process or under ``torchrun`` (gloo): the test
``tests/curvature/test_distributed.py`` compares the two. Writes ``OUT/rank{r}.pt``."""

from __future__ import annotations

import sys
from pathlib import Path

import torch


def compute() -> dict:
    from qgeom.curvature.operator import CurvatureOperator
    from qgeom.curvature.geometry import gram
    from qgeom.spectra.eigsh import eigsh
    from qgeom.models import create_model
    from qgeom.params import from_model

    torch.manual_seed(0)
    model = create_model("micro", 3, seed=0, embed_dim=8, depth=1, num_heads=2).double()
    theta = {k: v.double() for k, v in from_model(model).items()}
    g = torch.Generator().manual_seed(1)
    sizes = (7, 7, 7, 7, 3)  # 5 batches of unequal size: 3 on rank 0, 2 on rank 1
    batches = [(torch.randn(n, 3, 32, 32, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g))
               for n in sizes]
    vs = [{k: torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in theta.items()} for _ in range(3)]
    out = {}
    for metric in ("ggn", "hessian"):
        op = CurvatureOperator(model, theta, batches, metric=metric, dtype=torch.float64)
        out[f"{metric}_product"] = torch.cat([t.reshape(-1) for t in op.matvec(vs[0]).values()])
        out[f"{metric}_gram"] = torch.as_tensor(gram(op, vs).value)
        out[f"{metric}_top3"] = torch.as_tensor(eigsh(op, k=3, which="LA", max_iter=30, seed=0).eigenvalues)
    out["loss"] = torch.tensor(op.loss())
    out["gradient"] = torch.cat([t.reshape(-1) for t in op.gradient().values()])
    return out


if __name__ == "__main__":
    dist = "--distributed" in sys.argv
    out_dir = Path([a for a in sys.argv[1:] if not a.startswith("--")][0])
    rank = 0
    if dist:
        torch.distributed.init_process_group("gloo")
        rank = torch.distributed.get_rank()
    torch.set_num_threads(1)
    result = compute()
    torch.save(result, out_dir / f"rank{rank}.pt")
    if dist:  # every rank done with its collectives before the group goes (gloo aborts otherwise, rarely)
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
        import os

        os._exit(0)  # results are on disk: skip interpreter teardown, where gloo's threads can abort

"""Shared cases of the symmetry tests (tests/symmetry/, tests/test_proof_gaps.py): inputs, the
relative logit error of an element, probe batches, and the assertion that every row of an
invariance report came out as expected. The strategies (configurations, models, elements,
vectors) and ``tiny_vit`` are public: :mod:`qgeom.testing`.
"""

import torch
from torch.func import functional_call

from qgeom.symmetry.invariance import InvarianceReport


def inputs(cfg: dict, n: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, cfg["img_size"], cfg["img_size"], generator=g, dtype=torch.float64)


def rel_logit_error(model, theta, g, x) -> float:
    f0 = functional_call(model, theta, (x,))
    f1 = functional_call(model, g(theta), (x,))
    return float((f1 - f0).abs().max() / f0.abs().max())


def batches(cfg, n=6, classes=3, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, cfg["img_size"], cfg["img_size"], generator=g, dtype=dtype)
    y = torch.randint(0, classes, (n,), generator=g)
    return [(x[: n // 2], y[: n // 2]), (x[n // 2 :], y[n // 2 :])]


def assert_as_expected(report: InvarianceReport) -> None:
    bad = [r for r in report.rows if r["as_expected"] is False]
    assert not bad, "\n".join(f"{r['symmetry']} {r['level']} {r['quantity']}: expected {r['expected']}, "
                              f"measured {r['measured']:.3g} (tol {r['tolerance']:.3g}, holds {r['holds']})" for r in bad)

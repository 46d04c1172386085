"""Shared cases of the symmetry tests (tests/symmetry/, tests/test_proof_gaps.py): random tiny
timm ViT configurations and perturbed float64 models, inputs, random symmetry elements, probe
batches, and the assertion that an invariance report agrees with its expectations.
"""

import torch
from hypothesis import strategies as st
from torch.func import functional_call

from qgeom.models import create_model
from qgeom.params import from_model
from qgeom.symmetry import applicable_kinds, random_symmetry
from qgeom.symmetry.invariance import InvarianceReport


@st.composite
def vit_configs(draw, min_head_dim: int = 2) -> dict:
    """Random tiny timm ViT keyword arguments (embed dim = heads × head_dim)."""
    heads, head_dim = draw(st.integers(1, 4)), draw(st.integers(min_head_dim, 8))
    pool = draw(st.sampled_from(["token", "avg", "avg+cls"]))
    return dict(depth=draw(st.integers(1, 3)), num_heads=heads, embed_dim=heads * head_dim,
                qkv_bias=draw(st.booleans()), init_values=draw(st.sampled_from([None, 0.5])),
                global_pool="token" if pool == "token" else "avg", class_token=pool != "avg",
                img_size=draw(st.sampled_from([8, 12])), patch_size=4, mlp_ratio=2.0)


def tiny_vit(cfg: dict, seed: int = 0, num_classes: int = 3):
    """(float64 model, θ) with every tensor perturbed, so norms, tokens and biases are generic."""
    model = create_model("micro", num_classes, seed=seed, **cfg).double()
    g = torch.Generator().manual_seed(seed)
    theta = {k: v + 0.3 * torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in from_model(model).items()}
    return model, theta


def inputs(cfg: dict, n: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, cfg["img_size"], cfg["img_size"], generator=g, dtype=torch.float64)


def rel_logit_error(model, theta, g, x) -> float:
    f0 = functional_call(model, theta, (x,))
    f1 = functional_call(model, g(theta), (x,))
    return float((f1 - f0).abs().max() / f0.abs().max())


def draw_element(data, model, strength=None):
    ok = [k for k, why in applicable_kinds(model).items() if why is None]
    kind = data.draw(st.sampled_from(ok), label="kind")
    strength = data.draw(st.floats(0.3, 2.0), label="strength") if strength is None else strength
    return random_symmetry(model, kind, strength=strength, seed=data.draw(st.integers(0, 2**16), label="seed"))


def batches(cfg, n=6, classes=3, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, cfg["img_size"], cfg["img_size"], generator=g, dtype=dtype)
    y = torch.randint(0, classes, (n,), generator=g)
    return [(x[: n // 2], y[: n // 2]), (x[n // 2 :], y[n // 2 :])]


def assert_agrees(report: InvarianceReport) -> None:
    bad = [r for r in report.rows if r["agrees"] is False]
    assert not bad, "\n".join(f"{r['symmetry']} {r['level']} {r['quantity']}: expected {r['expected']}, "
                              f"measured {r['measured']:.3g} (tol {r['tolerance']:.3g})" for r in bad)

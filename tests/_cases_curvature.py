"""Shared cases and dense references for the curvature, Lanczos and geometry tests.

The tiny case: a one-block timm ViT (width 8, 2 heads, 8×8 images, patch 4, 3 classes;
1 083 parameters) at a *perturbed* point θ = θ_init + 0.3·ε (so the curvature is not dominated
by the head and the Hessian is indefinite), with a probe set of two batches of unequal size
(7 and 5) — which checks the n_b / N weighting against the dense references, built on all 12
samples as one batch.

Dense references are independent of qgeom.curvature.operator's code paths:

* Hessian: ``torch.func.hessian`` of the flattened loss, with ``F.layer_norm`` replaced by its
  textbook formula. With the native op, ``torch.func.hessian`` (jacfwd∘jacrev) is *wrong* in
  torch 2.14 — nested forward-mode through layer_norm's backward (cf. pytorch/pytorch#196700);
  the decomposed formula only uses elementwise ops and reductions, whose derivatives are right.
  (:func:`test_operator.test_dense_reference_is_trustworthy` checks it by finite differences.)
* GGN: (1/N) Σ_i J_iᵀ (diag p_i − p_i p_iᵀ) J_i from the Jacobian J (``jacrev`` of the logits,
  first order only).
* Fisher: (1/N) Σ_i g_i g_iᵀ from per-sample gradients (``vmap`` over ``grad``).

Everything is cached per process, so the three test files share the work.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, hessian, jacrev, vmap

from qgeom.models import create_model
from qgeom.params import Params, flatten, from_model, scope_keys, unflatten
from qgeom.quant import QuantSpec, ptq

TINY = dict(num_classes=3, embed_dim=8, depth=1, num_heads=2, img_size=8, patch_size=4, mlp_ratio=2.0)
SPEC = QuantSpec(bits=2)


@dataclass(frozen=True)
class Case:
    model: nn.Module
    params: Params
    batches: list[tuple[Tensor, Tensor]]

    @property
    def x(self) -> Tensor:
        return torch.cat([b[0] for b in self.batches])

    @property
    def y(self) -> Tensor:
        return torch.cat([b[1] for b in self.batches])


@lru_cache(maxsize=None)
def tiny_case(dtype: torch.dtype = torch.float64, seed: int = 0) -> Case:
    if dtype != torch.float64:  # the same point and data, rounded
        c = tiny_case(torch.float64, seed)
        return Case(create_model("micro", seed=seed, **TINY).to(dtype),
                    {k: v.to(dtype) for k, v in c.params.items()}, [(x.to(dtype), y) for x, y in c.batches])
    model = create_model("micro", seed=seed, **TINY).to(dtype)
    g = torch.Generator().manual_seed(seed + 1)
    params = {k: v + 0.3 * torch.randn(v.shape, generator=g, dtype=dtype) for k, v in from_model(model).items()}
    batches = [(torch.randn(n, 3, 8, 8, generator=g, dtype=dtype), torch.randint(0, 3, (n,), generator=g))
               for n in (7, 5)]
    return Case(model, params, batches)


def random_vector(like: Params, seed: int) -> Params:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in like.items()}


def _layer_norm_formula(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    dims = tuple(range(-len(normalized_shape), 0))
    mu = x.mean(dims, keepdim=True)
    z = (x - mu) * torch.rsqrt((x - mu).pow(2).mean(dims, keepdim=True) + eps)
    z = z * weight if weight is not None else z
    return z + bias if bias is not None else z


@contextlib.contextmanager
def decomposed_layer_norm():
    """Temporarily route ``F.layer_norm`` (what nn.LayerNorm calls) through its formula."""
    orig = F.layer_norm
    F.layer_norm = _layer_norm_formula
    try:
        yield
    finally:
        F.layer_norm = orig


def flat_functions(case: Case, params: Params, scope):
    """(θ_flat, logits(θ_flat, x), keys) for the scoped coordinates of ``params``."""
    keys = scope_keys(params, scope)
    theta = flatten(params, keys)

    def logits(t: Tensor, x: Tensor) -> Tensor:
        return functional_call(case.model, {**params, **unflatten(t, params, keys)}, (x,))

    return theta, logits, keys


@lru_cache(maxsize=None)
def dense_hessian(scope: str = "all", at: str = "theta", dtype: torch.dtype = torch.float64) -> Tensor:
    """∇²L (P × P) of the mean loss over all samples; at="quantized" evaluates it at Q_b(θ)."""
    case = tiny_case(dtype)
    params = case.params if at == "theta" else ptq(case.params, SPEC)
    theta, logits, _ = flat_functions(case, params, scope)
    x, y = case.x, case.y
    with decomposed_layer_norm():
        return hessian(lambda t: F.cross_entropy(logits(t, x), y))(theta)


@lru_cache(maxsize=None)
def dense_ggn(scope: str = "all") -> Tensor:
    case = tiny_case()
    theta, logits, _ = flat_functions(case, case.params, scope)
    J = jacrev(lambda t: logits(t, case.x))(theta)  # (N, K, P)
    p = torch.softmax(logits(theta, case.x), -1)
    C = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    return torch.einsum("nkp,nkl,nlq->pq", J, C, J) / len(case.y)


@lru_cache(maxsize=None)
def dense_fisher(scope: str = "all") -> Tensor:
    case = tiny_case()
    theta, logits, _ = flat_functions(case, case.params, scope)
    per_sample = vmap(grad(lambda t, x, y: F.cross_entropy(logits(t, x[None]), y[None])), in_dims=(None, 0, 0))
    G = per_sample(theta, case.x, case.y)  # (N, P)
    return G.T @ G / len(case.y)


def sketch(op, k: int = 6, seed: int = 0) -> tuple[Tensor, Tensor]:
    """(X, M X) for X (P, k) of k seeded Gaussian columns: a random sketch of the operator.

    ‖(A − B) X‖ ≥ c ‖A − B‖ with overwhelming probability for Gaussian X, so comparing A X with
    B X tests A = B at k / P of the cost of the dense matrix.
    """
    X = torch.randn(op.n_params, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return X, op.flat_matmat(X).double()


def rel_err(a: Tensor, b: Tensor) -> float:
    """‖a − b‖_F / ‖b‖_F in float64."""
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


# --------------------------------------------------------------------------------------------
# any module, any loss: a small MLP and references by plain autograd loops
# --------------------------------------------------------------------------------------------


def mlp(seed: int = 0, d_in: int = 5, hidden: int = 6, d_out: int = 3) -> nn.Module:
    """Linear–tanh–Linear in float64 (57 parameters at the defaults): not a ViT, no LayerNorm."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, d_out)).double().eval()


def autograd_hessian(f, theta: Tensor) -> Tensor:
    """∇²f(θ) (P × P) row by row: ∇f with create_graph, then one backward per coordinate —
    plain reverse-over-reverse ``torch.autograd.grad``, no torch.func composition."""
    t = theta.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(f(t), t, create_graph=True)
    return torch.stack([torch.autograd.grad(g[i], t, retain_graph=True)[0] for i in range(t.numel())])


def autograd_jacobian(f, theta: Tensor) -> Tensor:
    """∂f(θ)/∂θ (numel(f) × P) row by row, one backward per output entry (first order only)."""
    t = theta.detach().clone().requires_grad_(True)
    out = f(t).reshape(-1)
    return torch.stack([torch.autograd.grad(out[i], t, retain_graph=True)[0] for i in range(out.numel())])

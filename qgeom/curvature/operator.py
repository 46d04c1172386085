"""Curvature operators: products with the Hessian, the Gauss-Newton matrix and the empirical Fisher.

All three are matrices over the coordinates of a *scope* (the variables; every other tensor of
the model is held fixed at the expansion point θ), for the loss of one of two objectives on a
fixed probe set {(x_b, y_b)} of N = Σ_b n_b samples:

* ``fp``:  L(θ) = (1/N) Σ_i ℓ(f(θ, x_i), y_i), ℓ the softmax cross-entropy, eval mode;
* ``ste``: L(Q_b(θ)) with Q_b's Jacobian taken as the identity (:func:`qgeom.quant.fake_quantize`
  on the ``quantized`` tensors), so every derivative is the fp derivative evaluated at Q_b(θ):
  ∇ = ∇L(Q_b(θ)), H_ste(θ) = H_L(Q_b(θ)).

Metrics (P = number of scoped coordinates, K = classes, J_i = ∂f(θ, x_i)/∂θ ∈ R^{K×P}):

* ``hessian``  H = ∇²L, products H·v by forward-over-reverse (``torch.func.jvp`` of
  ``torch.func.grad``) or by double backward (``torch.autograd.grad(create_graph=True)``);
* ``ggn``      G = (1/N) Σ_i J_iᵀ C_i J_i, C_i = diag(p_i) − p_i p_iᵀ the Hessian of ℓ in the
  logits (p_i = softmax f(θ, x_i)): one JVP (J v) and one VJP (Jᵀ u) per batch; G ⪰ 0;
* ``fisher``   F = (1/N) Σ_i g_i g_iᵀ, g_i = ∇ℓ_i = J_iᵀ r_i with r_i = p_i − e_{y_i}; by this
  batch formula F v = (1/N) Σ_i J_iᵀ r_i (r_iᵀ J_i v), one JVP and one VJP per batch, no
  per-sample gradients (the tests check it against vmap-ed per-sample gradients).

Each batch contributes its mean (the formulas of one batch are :mod:`qgeom.curvature.products`),
weighted n_b / N by :func:`qgeom.curvature.probe.reduce_over_probe` — the one place the
data-parallel mode (an all-reduce of the weighted sums) slots in. Products with several
vectors at once (:meth:`CurvatureOperator.matmat`) share the forward/backward of the expansion
point and batch the tangents with ``torch.func.vmap``.

Default route (``method="auto"``) for the Hessian: double backward, on every device and dtype.
Measured (benchmarks/results/curvature_cpu.json, micro preset, batch 32, 2 CPU cores): 53 ms
against 71 ms for forward-over-reverse; FINDINGS.md shows the two routes equal in fp32 and
double backward faster in bf16 on an H200. Profiled against PyHessian-style double backward on
the module's own parameters (issue 12): the backward passes are ≥ 95 % of the time;
``functional_call`` adds ~0.3 ms per forward (≈ 1 % of a product), the per-tensor finiteness
checks and the float64 round trip of a one-batch reduction ~1–2 % — now skipped — so the
uncached route is within noise of that baseline. What made PyHessian's own products faster is
that it keeps the ∇L graph: with ``cache_graph`` (default for a one-batch probe set) a product
is one backward pass, ~1.4–1.6× faster (benchmarks/README.md).

Known PyTorch defect the products (:mod:`qgeom.curvature.products`) steer around:
``torch.func.hessian`` (jacfwd∘jacrev) and any jvp∘vmap∘vjp composition give *wrong* second
derivatives through ``F.layer_norm`` in torch 2.14 (cf. pytorch/pytorch#196700). The compositions used here (vmap∘jvp∘grad, double backward)
are correct; the tests compare them with a dense Hessian of a decomposed LayerNorm.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.sparse.linalg import LinearOperator
from torch import Tensor, nn
from torch.func import functional_call, grad

from qgeom.vocabulary import METRICS, OBJECTIVES
from qgeom.curvature.probe import Batch, check_eval_mode, check_forward_ad, probe_hash, reduce_over_probe
from qgeom.curvature.products import (Graph, batch_jvp_gram, grad_graph, hvp_double, hvp_forward, hvp_through_graph,
                                      outer_vp)
from qgeom.params import Params, Scope, check_compatible, check_finite, content_hash, flatten, scope_keys, unflatten
from qgeom.quant import QuantSpec, fake_quantize

METHODS = ("auto", "forward-over-reverse", "double-backward")
DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def default_method(device: torch.device, dtype: torch.dtype) -> str:
    """The faster Hessian route for ``device``/``dtype``: double backward (see module docstring)."""
    return "double-backward"


def _as_scope(scope: Scope | Sequence[str]) -> tuple[Scope, str]:
    """A scope usable by :func:`qgeom.params.in_scope` and the name recorded in ``info``."""
    if isinstance(scope, (list, tuple, set, frozenset)):
        names = frozenset(scope)
        return (lambda k, _t: k in names), f"{len(names)} named tensors"
    return scope, scope if isinstance(scope, str) else getattr(scope, "__name__", "callable")



# --------------------------------------------------------------------------------------------
# the operator
# --------------------------------------------------------------------------------------------


class CurvatureOperator:
    """M ∈ {H, G, F} of the ``fp`` or ``ste`` objective at θ, over the coordinates of ``scope``.

    model: a timm ViT (eval mode, manual attention); only its structure is used — values come
    from ``params`` (the full dict, e.g. :func:`qgeom.params.from_model`; missing entries are
    taken from the model). batches: the probe set, a list of (x (n_b, C, H, W), y (n_b,)).
    scope: ``"quantized"|"backbone"|"all"``, a callable or a list of names. spec: the
    quantizer of the ``ste`` objective (default ``QuantSpec()``). dtype: compute dtype (default:
    the scoped parameters'). Vectors are Params keyed by the scope's keys; results come back in
    the operator's dtype and device.

    cache_graph (Hessian, double backward): keep each batch's graph of ∇L_b(θ) (built with
    ``create_graph=True``) between products, so a product is one backward pass through it instead
    of forward + backward + backward — what PyHessian does; measured 1.6× faster per product on
    the micro preset (benchmarks/README.md). It holds that graph's memory (about what one product
    peaks at) for the operator's lifetime, per batch; default (None): on when the probe set is one
    batch, so peak memory does not grow with caching. :meth:`clear_cache` frees it.
    """

    def __init__(self, model: nn.Module, params: Params, batches: Sequence[Batch], *, metric: str = "ggn",
                 objective: str = "fp", scope: Scope | Sequence[str] = "all", spec: QuantSpec | None = None,
                 method: str = "auto", dtype: torch.dtype | None = None, cache_graph: bool | None = None) -> None:
        for what, val, known in (("metric", metric, METRICS), ("objective", objective, OBJECTIVES),
                                 ("method", method, METHODS)):
            if val not in known:
                raise ValueError(f"unknown {what} {val!r}; choose one of {', '.join(known)}")
        check_eval_mode(model)
        scope, scope_name = _as_scope(scope)
        full = {k: v for k, v in model.state_dict().items() if torch.is_floating_point(v)}
        full.update({k: v for k, v in params.items() if torch.is_floating_point(v)})
        keys = scope_keys(full, scope)
        if not keys:
            raise ValueError(f"scope {scope_name!r} selects no floating tensor of the parameters")
        dtype = dtype or full[keys[0]].dtype
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype}")
        self.device = full[keys[0]].device
        self.dtype, self.keys = dtype, keys
        full = {k: v.detach().to(self.device, dtype) for k, v in full.items()}
        self.theta: Params = {k: full[k] for k in keys}
        self._fixed: Params = {k: v for k, v in full.items() if k not in self.theta}
        self.batches: list[Batch] = [(x.to(self.device, dtype), y.to(self.device)) for x, y in batches]
        if not self.batches:
            raise ValueError("the probe set is empty")
        self.model, self.metric, self.objective = model, metric, objective
        self.spec = (spec or QuantSpec()) if objective == "ste" else None
        self.method = default_method(self.device, dtype) if method == "auto" else method
        if metric != "hessian":
            self.method = "jvp-vjp"
        check_forward_ad(model, self.method)
        # the ∇L_b graph of each batch, kept between products (double backward only; see the class doc)
        self.cache_graph = (len(self.batches) == 1 if cache_graph is None else bool(cache_graph)) \
            and self.method == "double-backward"
        self._graphs: dict[int, Graph] = {}
        self.n_params = sum(v.numel() for v in self.theta.values())
        self.info: dict[str, Any] = {
            "metric": metric, "objective": objective, "scope": scope_name, "method": self.method,
            "dtype": str(dtype).removeprefix("torch."), "device": str(self.device),
            "expansion_point": content_hash({k: v.detach().cpu() for k, v in params.items()}),
            "probe": probe_hash(batches), "n_params": self.n_params, "n_tensors": len(keys),
            "n_samples": sum(int(y.shape[0]) for _, y in batches), "n_batches": len(self.batches),
            "spec": self.spec.to_dict() if self.spec else None,
        }

    def __repr__(self) -> str:
        i = self.info
        return (f"CurvatureOperator({i['metric']}, {i['objective']}, scope={i['scope']}, "
                f"method={i['method']}, {i['dtype']}, P={i['n_params']}, N={i['n_samples']})")

    # ---- the objective ------------------------------------------------------------------------

    def logits(self, theta: Params, x: Tensor) -> Tensor:
        """f(θ, x) (n, K) with the scoped tensors from ``theta``; Q_b(θ) by STE for ``ste``."""
        p = {**self._fixed, **theta}
        if self.objective == "ste":
            p = fake_quantize(p, self.spec)
        return functional_call(self.model, p, (x,))

    def batch_loss(self, theta: Params, x: Tensor, y: Tensor) -> Tensor:
        """Mean cross-entropy of one batch at ``theta``."""
        return F.cross_entropy(self.logits(theta, x), y)

    def loss(self, shift: Params | None = None) -> float:
        """L(θ + shift) over the probe set (float64 sum); ``shift`` keyed by scope keys or None."""
        theta = self.theta if shift is None else self._shifted(shift)
        with torch.no_grad():
            return float(reduce_over_probe(lambda x, y: self.batch_loss(theta, x, y), self.batches))

    def gradient(self) -> Params:
        """∇L(θ) on the scope (for ``ste``: ∇L at Q_b(θ), the STE gradient)."""
        return self._reduce(lambda x, y: grad(self.batch_loss)(self.theta, x, y))

    # ---- products -------------------------------------------------------------------------------

    def matvec(self, v: Params) -> Params:
        """M v for one vector keyed by the scope's keys."""
        return self.matmat([v])[0]

    def matmat(self, vs: Sequence[Params], chunk_size: int | None = None) -> list[Params]:
        """[M v_1, …, M v_k]: one shared forward/backward per batch, tangents batched.

        chunk_size bounds how many vectors travel together (memory); default all.
        """
        return self._products([self._check(v) for v in vs], chunk_size)

    def _products(self, vs: list[Params], chunk_size: int | None = None) -> list[Params]:
        """:meth:`matmat` of vectors already checked and on the operator's device and dtype."""
        if not vs:
            return []
        step = chunk_size or len(vs)
        out: list[Params] = []
        for i in range(0, len(vs), step):
            chunk = vs[i : i + step]
            stacked = {k: torch.stack([v[k] for v in chunk]) if len(chunk) > 1 else chunk[0][k].unsqueeze(0)
                       for k in self.keys}
            prod = self._reduce(lambda x, y: self._batch_products(stacked, x, y))
            out += [{k: prod[k][j] for k in self.keys} for j in range(len(chunk))]
        return out

    def _batch_products(self, V: Params, x: Tensor, y: Tensor) -> Params:
        """M_b V for stacked tangents V (k, *shape) on one batch (mean over its samples)."""
        if self.metric == "hessian":
            if self.method == "forward-over-reverse":
                return hvp_forward(self.batch_loss, self.theta, V, x, y)
            if self.cache_graph:
                return hvp_through_graph(self._grad_graph(x, y), self.keys, V)
            return hvp_double(self.batch_loss, self.theta, self.keys, V, x, y)
        return outer_vp(self.logits, self.theta, self.metric, V, x, y)

    def clear_cache(self) -> None:
        """Free the cached ∇L_b graphs (``cache_graph``); the next product rebuilds them."""
        self._graphs.clear()

    def _grad_graph(self, x: Tensor, y: Tensor) -> Graph:
        """One batch's ∇L_b graph (:func:`qgeom.curvature.products.grad_graph`), kept when ``cache_graph``."""
        key = id(x)
        if key in self._graphs:
            return self._graphs[key]
        out = grad_graph(self.batch_loss, self.theta, self.keys, x, y)
        if self.cache_graph:
            self._graphs[key] = out
        return out

    # ---- Gram matrices from forward-mode products alone -------------------------------------

    def jvp_gram(self, vs: Sequence[Params], chunk_size: int | None = None) -> np.ndarray:
        """K = Vᵀ M V (N × N, float64) for M = G or F from N JVPs per batch and no backward pass.

        With JV_i = J_i V ∈ R^{N_v × K} per sample (J_i the logits' Jacobian, one forward-mode
        pass per vector, batched with vmap ``chunk_size`` vectors at a time; default all):

        * ``ggn``:    K_ab = (1/N) Σ_i (J_i v_a)ᵀ (diag p_i − p_i p_iᵀ) (J_i v_b),
        * ``fisher``: K_ab = (1/N) Σ_i (r_iᵀ J_i v_a)(r_iᵀ J_i v_b), r_i = p_i − e_{y_i}.

        The same numbers as ``[[⟨v_a, M v_b⟩]]`` from :meth:`matmat` (which pays a JVP *and* a VJP
        per vector), symmetric by construction. Memory: one forward-mode pass of ``chunk_size``
        tangents plus the N_v × n_b × K tangent logits of a batch; the contraction is float64.
        The Hessian has no such formula (its second-order term needs the backward pass).
        """
        if self.metric == "hessian":
            raise ValueError("a Gram matrix from JVPs exists for the GGN and the Fisher only; "
                             "use products (geometry.gram(..., route='products')) for the Hessian")
        vs = [self._check(v) for v in vs]
        if not vs:
            return np.zeros((0, 0))
        step = chunk_size or len(vs)
        chunks = [{k: torch.stack([v[k] for v in vs[i : i + step]]) for k in self.keys}
                  for i in range(0, len(vs), step)]
        K = reduce_over_probe(lambda x, y: batch_jvp_gram(self.logits, self.theta, self.metric, chunks, x, y),
                              self.batches)
        return (0.5 * (K + K.T)).cpu().numpy()  # symmetric by the formula; BLAS rounds ab and ba apart

    # ---- plumbing -------------------------------------------------------------------------------

    def _check(self, v: Params) -> Params:
        check_compatible(self.theta, v, check_dtype=False, finite=False, names=("operator scope", "vector"))
        check_finite(v, "vector")
        return {k: v[k].detach().to(self.device, self.dtype) for k in self.keys}

    def _shifted(self, shift: Params) -> Params:
        s = self._check(shift)
        return {k: self.theta[k] + s[k] for k in self.keys}

    def _reduce(self, fn: Callable[[Tensor, Tensor], Params]) -> Params:
        """:func:`reduce_over_probe` cast to the operator's dtype; one batch: fn's own result (the
        float64 round trip of a weight-1 sum is exact, so only its two copies are skipped)."""
        if len(self.batches) == 1:
            out = fn(*self.batches[0])
            return {k: out[k].detach().to(self.dtype) for k in self.keys}
        return self._cast(reduce_over_probe(fn, self.batches))

    def _cast(self, p: Params) -> Params:
        return {k: p[k].to(self.dtype) for k in self.keys}

    def flatten(self, v: Params) -> Tensor:
        """v (scope keys) → (P,) in the scope's key order."""
        return flatten(v, self.keys)

    def unflatten(self, x: Tensor) -> Params:
        """(P,) → Params shaped like θ on the scope (operator dtype and device)."""
        return unflatten(x.to(self.device, self.dtype), self.theta, self.keys)

    def _check_flat(self, X: Tensor) -> Tensor:
        check_finite({"flat vector": X}, "vector")  # one reduction instead of one per tensor
        return X

    def flat_matvec(self, x: Tensor) -> Tensor:
        """M x for x (P,) → (P,) in the operator's dtype (one finiteness check on the flat vector)."""
        return self.flatten(self._products([self.unflatten(self._check_flat(x))])[0])

    def flat_matmat(self, X: Tensor) -> Tensor:
        """M X for X (P, k) → (P, k), one :meth:`matmat`."""
        X = self._check_flat(X)
        cols = self._products([self.unflatten(X[:, j]) for j in range(X.shape[1])])
        return torch.stack([self.flatten(c) for c in cols], dim=1)

    def to_scipy(self) -> LinearOperator:
        """A symmetric ``scipy.sparse.linalg.LinearOperator`` (P × P), float64 numpy in and out."""

        def mv(x: np.ndarray) -> np.ndarray:
            return self.flat_matvec(torch.from_numpy(np.asarray(x, dtype=np.float64).reshape(-1))).double().cpu().numpy()

        def mm(X: np.ndarray) -> np.ndarray:
            return self.flat_matmat(torch.from_numpy(np.asarray(X, dtype=np.float64))).double().cpu().numpy()

        return LinearOperator((self.n_params, self.n_params), matvec=mv, rmatvec=mv, matmat=mm, dtype=np.float64)


# --------------------------------------------------------------------------------------------
# one-liners
# --------------------------------------------------------------------------------------------


def hvp(model: nn.Module, params: Params, v: Params, batches: Sequence[Batch], *, scope: Scope = "all",
        objective: str = "fp", spec: QuantSpec | None = None, method: str = "auto") -> Params:
    """H v of the probe-set loss at ``params`` (v keyed by the scope's keys)."""
    op = CurvatureOperator(model, params, batches, metric="hessian", objective=objective, scope=scope,
                           spec=spec, method=method)
    return op.matvec(v)


def ggn_vp(model: nn.Module, params: Params, v: Params, batches: Sequence[Batch], *, scope: Scope = "all",
           objective: str = "fp", spec: QuantSpec | None = None) -> Params:
    """G v = Jᵀ C J v of the probe-set loss at ``params``."""
    return CurvatureOperator(model, params, batches, metric="ggn", objective=objective, scope=scope,
                             spec=spec).matvec(v)


def fisher_vp(model: nn.Module, params: Params, v: Params, batches: Sequence[Batch], *, scope: Scope = "all",
              objective: str = "fp", spec: QuantSpec | None = None) -> Params:
    """F v = (1/N) Σ_i g_i (g_iᵀ v), the empirical Fisher, at ``params``."""
    return CurvatureOperator(model, params, batches, metric="fisher", objective=objective, scope=scope,
                             spec=spec).matvec(v)


__all__ = ["CurvatureOperator", "DTYPES", "METHODS", "METRICS", "OBJECTIVES", "default_method", "fisher_vp", "ggn_vp",
           "hvp"]

"""Curvature operators: products with the Hessian, the Gauss-Newton matrix and the empirical Fisher.

All three are matrices over the coordinates of a *scope* (the variables; every other tensor of
the model is held fixed at the expansion point θ), for the loss of one of two objectives on a
fixed probe set {(x_b, y_b)} of N = Σ_b n_b samples, for any module f and any loss ℓ that is a
batch mean (:mod:`qgeom.curvature.losses`; default the softmax cross-entropy):

* ``fp``:  L(θ) = (1/N) Σ_i ℓ(f(θ, x_i), y_i), eval mode;
* ``ste``: L(Q_b(θ)) with Q_b's Jacobian taken as the identity (:func:`qgeom.quant.fake_quantize`
  on the ``quantized`` tensors), so every derivative is the fp derivative evaluated at Q_b(θ):
  ∇ = ∇L(Q_b(θ)), H_ste(θ) = H_L(Q_b(θ)).

Metrics (P = number of scoped coordinates, K = classes, J_i = ∂f(θ, x_i)/∂θ ∈ R^{K×P}):

* ``hessian``  H = ∇²L, products H·v by forward-over-reverse (``torch.func.jvp`` of
  ``torch.func.grad``) or by double backward (``torch.autograd.grad(create_graph=True)``);
* ``ggn``      G = (1/N) Σ_i J_iᵀ C_i J_i, C_i the Hessian of ℓ in the outputs — cross-entropy:
  diag(p_i) − p_i p_iᵀ (p_i = softmax f(θ, x_i)); MSE: (2/D) I — one JVP (J v) and one VJP
  (Jᵀ u) per batch; G ⪰ 0; defined for cross-entropy and MSE only;
* ``fisher``   F = (1/N) Σ_i g_i g_iᵀ, g_i = ∇ℓ_i = J_iᵀ r_i with r_i = ∂ℓ_i/∂f (cross-entropy:
  p_i − e_{y_i}; MSE: (2/D)(f_i − y_i)); by this
  batch formula F v = (1/N) Σ_i J_iᵀ r_i (r_iᵀ J_i v), one JVP and one VJP per batch, no
  per-sample gradients (the tests check it against vmap-ed per-sample gradients);
* ``layer``    GPTQ's metric, not the loss's: (M v)_ℓ = V_ℓ H_ℓ with H_ℓ = X_ℓX_ℓᵀ/N the input second
  moment of each quantized Linear ℓ of the scope, 0 on every other tensor; forward passes only,
  H_ℓ computed once and held (:meth:`CurvatureOperator.layer_grams`, :mod:`qgeom.curvature.layer`).

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

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, grad

from qgeom.vocabulary import GEOMETRY_METRICS, METRICS, OBJECTIVES
from qgeom.curvature.flat import FlatProducts
from qgeom.curvature.inputs import (OPERATOR_KEYWORDS, cast_batch, named_params, read_batches, refuse_keywords,
                                    scoped_keys)
from qgeom.curvature.layer import layer_products, linear_weights, probe_grams
from qgeom.curvature.losses import LossFn, resolve_loss
from qgeom.curvature.probe import Batch, check_eval_mode, check_forward_ad, probe_hash, reduce_over_probe
from qgeom.curvature.products import (Graph, batch_jvp_gram, grad_graph, hvp_double, hvp_forward, hvp_through_graph,
                                      outer_vp)
from qgeom.params import Params, Scope, check_compatible, check_finite, content_hash
from qgeom.models import without_fused_attention
from qgeom.quant import QuantSpec, fake_quantize

METHODS = ("auto", "forward-over-reverse", "double-backward")
DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def default_method(device: torch.device, dtype: torch.dtype) -> str:
    """The faster Hessian route for ``device``/``dtype``: double backward (see module docstring)."""
    return "double-backward"


# --------------------------------------------------------------------------------------------
# the operator
# --------------------------------------------------------------------------------------------


class CurvatureOperator(FlatProducts):
    """M ∈ {H, G, F, layer} of the ``fp`` or ``ste`` objective at θ, over the coordinates of ``scope``.

    model: any ``nn.Module`` (eval mode) whose forward maps inputs x to a tensor of outputs;
    only its structure is used — values come from ``params``: a name → tensor mapping (e.g.
    ``model.state_dict()``; missing floating entries are taken from the model and held fixed),
    a list of the model's own parameters (the variables; everything else fixed), or None (all
    of the model's parameters). batches: the probe set, one ``(x, y)`` batch or any iterable of
    them (read once and held; a generator is counted and hashed like a list). loss: any
    ``(outputs, targets) → scalar`` batch mean (default cross-entropy); the GGN and the Fisher
    only for cross-entropy and MSE (:mod:`qgeom.curvature.losses`). scope:
    ``"quantized"|"backbone"|"all"``, a callable, or a list of names (kept in that order: it is
    the order of flat vectors). spec: the quantizer of the ``ste`` objective (default
    ``QuantSpec()``). dtype: compute dtype (default: the scoped parameters').

    Products: ``op @ v`` or :meth:`matvec` for Params keyed by the scope's keys (:attr:`keys`),
    ``op @ x`` or :meth:`flat_matvec` / :meth:`flat_matmat` for flat (P,) or (P, k) tensors in
    the order of :attr:`keys`, :meth:`to_scipy` for scipy. Results come back in the operator's
    dtype and device. The caller's model is never changed: a model with fused attention
    (no forward-mode AD, no double backward) is replaced by a copy computing attention explicitly
    that shares its tensors (:func:`qgeom.models.without_fused_attention`; ``info["attention"]``).

    cache_graph (Hessian, double backward): keep each batch's graph of ∇L_b(θ) (built with
    ``create_graph=True``) between products, so a product is one backward pass through it instead
    of forward + backward + backward — what PyHessian does; measured 1.6× faster per product on
    the micro preset (benchmarks/README.md). It holds that graph's memory (about what one product
    peaks at) for the operator's lifetime, per batch; default (None): on when the probe set is one
    batch, so peak memory does not grow with caching. :meth:`clear_cache` frees it.
    """

    def __init__(self, model: nn.Module, params: Params | Iterable[Tensor] | None = None, batches: Any = None, *,
                 metric: str = "ggn", objective: str = "fp", scope: Scope | Sequence[str] = "all",
                 spec: QuantSpec | None = None, method: str = "auto", dtype: torch.dtype | None = None,
                 cache_graph: bool | None = None, loss: LossFn | None = None, **other: Any) -> None:
        refuse_keywords(other, "CurvatureOperator", OPERATOR_KEYWORDS)
        for what, val, known in (("metric", metric, GEOMETRY_METRICS), ("objective", objective, OBJECTIVES),
                                 ("method", method, METHODS)):
            if val not in known:
                raise ValueError(f"unknown {what} {val!r}; choose one of {', '.join(known)}")
        check_eval_mode(model)
        self.loss_fn, self.loss_kind, loss_name = resolve_loss(loss, metric)
        given, is_mapping = named_params(model, params)
        full = {k: v for k, v in model.state_dict().items() if torch.is_floating_point(v)}
        full.update({k: v for k, v in given.items() if torch.is_floating_point(v)})
        keys, scope_name = scoped_keys(full, scope, None if is_mapping else list(given))
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
        raw = read_batches(batches)
        self.batches: list[Batch] = [cast_batch(x, y, self.device, dtype) for x, y in raw]
        self.model, self.metric, self.objective = without_fused_attention(model), metric, objective
        self.spec = (spec or QuantSpec()) if objective == "ste" else None
        self.method = default_method(self.device, dtype) if method == "auto" else method
        if metric != "hessian":
            self.method = "forward" if metric == "layer" else "jvp-vjp"
        check_forward_ad(self.model, self.method)
        # the ∇L_b graph of each batch, kept between products (double backward only; see the class doc)
        self.cache_graph = (len(self.batches) == 1 if cache_graph is None else bool(cache_graph)) \
            and self.method == "double-backward"
        self._graphs: dict[int, Graph] = {}
        self.n_params = sum(v.numel() for v in self.theta.values())
        self.layer_weights = linear_weights(self.model, self.theta, keys) if metric == "layer" else []
        self._layer_grams: dict[str, Tensor] | None = None
        self.info: dict[str, Any] = {
            "metric": metric, "objective": objective, "scope": scope_name, "method": self.method,
            "dtype": str(dtype).removeprefix("torch."), "device": str(self.device),
            "expansion_point": content_hash({k: v.detach().cpu() for k, v in given.items()}),
            "probe": probe_hash(raw), "n_params": self.n_params, "n_tensors": len(keys),
            "n_samples": sum(int(y.shape[0]) for _, y in raw), "n_batches": len(self.batches),
            "spec": self.spec.to_dict() if self.spec else None,
        }
        if loss is not None:
            self.info["loss"] = loss_name
        if metric == "layer":
            self.info["layers"] = len(self.layer_weights)
        if self.model is not model:
            self.info["attention"] = "explicit, in a copy of the model (its own uses fused SDPA; left unchanged)"

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
        """The loss (default: mean cross-entropy) of one batch at ``theta``."""
        return self.loss_fn(self.logits(theta, x), y)

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
        if self.metric == "layer":
            return layer_products(self.layer_grams(), vs, self.dtype)
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
        return outer_vp(self.logits, self.theta, self.metric, V, x, y, self.loss_kind)

    def layer_grams(self) -> dict[str, Tensor]:
        """The ``layer`` metric's blocks: weight name → H_ℓ = X_ℓX_ℓᵀ/N (in × in, float64) at θ (for
        ``ste``: at Q_b(θ)), from one forward pass per batch on the first call, then held."""
        if self.metric != "layer":
            raise ValueError(f"layer_grams belongs to metric='layer', not {self.metric!r}")
        if self._layer_grams is None:
            self._layer_grams = probe_grams(self.model, self.layer_weights, lambda x: self.logits(self.theta, x),
                                            self.batches)
        return self._layer_grams

    def clear_cache(self) -> None:
        """Free the cached ∇L_b graphs (``cache_graph``) and layer blocks; the next product rebuilds them."""
        self._graphs.clear()
        self._layer_grams = None

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
        if self.metric not in ("ggn", "fisher"):
            raise ValueError("a Gram matrix from JVPs exists for the GGN and the Fisher only; use products "
                             f"(geometry.gram(..., route='products')) for the {self.metric} metric")
        vs = [self._check(v) for v in vs]
        if not vs:
            return np.zeros((0, 0))
        step = chunk_size or len(vs)
        chunks = [{k: torch.stack([v[k] for v in vs[i : i + step]]) for k in self.keys}
                  for i in range(0, len(vs), step)]
        K = reduce_over_probe(lambda x, y: batch_jvp_gram(self.logits, self.theta, self.metric, chunks, x, y,
                                                           self.loss_kind), self.batches)
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


# --------------------------------------------------------------------------------------------
# one-liners
# --------------------------------------------------------------------------------------------


def hvp(model: nn.Module, params: Params | None, v: Params | Tensor, batches: Any, *, scope: Scope = "all",
        objective: str = "fp", spec: QuantSpec | None = None, method: str = "auto",
        loss: LossFn | None = None) -> Params | Tensor:
    """H v of the probe-set loss at ``params`` (v: Params keyed by the scope's keys, or flat)."""
    return CurvatureOperator(model, params, batches, metric="hessian", objective=objective, scope=scope,
                             spec=spec, method=method, loss=loss) @ v


def ggn_vp(model: nn.Module, params: Params | None, v: Params | Tensor, batches: Any, *, scope: Scope = "all",
           objective: str = "fp", spec: QuantSpec | None = None, loss: LossFn | None = None) -> Params | Tensor:
    """G v = Jᵀ C J v of the probe-set loss at ``params``."""
    return CurvatureOperator(model, params, batches, metric="ggn", objective=objective, scope=scope,
                             spec=spec, loss=loss) @ v


def fisher_vp(model: nn.Module, params: Params | None, v: Params | Tensor, batches: Any, *, scope: Scope = "all",
              objective: str = "fp", spec: QuantSpec | None = None, loss: LossFn | None = None) -> Params | Tensor:
    """F v = (1/N) Σ_i g_i (g_iᵀ v), the empirical Fisher, at ``params``."""
    return CurvatureOperator(model, params, batches, metric="fisher", objective=objective, scope=scope,
                             spec=spec, loss=loss) @ v


__all__ = ["CurvatureOperator", "DTYPES", "GEOMETRY_METRICS", "METHODS", "METRICS", "OBJECTIVES", "default_method",
           "fisher_vp", "ggn_vp", "hvp"]

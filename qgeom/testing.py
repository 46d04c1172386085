"""Property tests for anyone's code: hypothesis strategies for tiny ViTs, their symmetries and
vectors, and :func:`assert_invariant`.

Strategies (they need hypothesis: ``pip install qgeom[testing]``; importing this module does not):

* :func:`vit_configs` — keyword arguments of :func:`qgeom.models.create_model` for tiny, valid
  timm ViTs (depth, heads, head_dim, MLP ratio, qkv bias, LayerScale, pooling, image size);
* :func:`vit_models` — ``(model, θ)``: such a ViT and parameters with every tensor perturbed;
* :func:`symmetries` — a random element of any kind of the catalogue the model has
  (:func:`qgeom.symmetry.random_symmetry`, :func:`qgeom.symmetry.applicable_kinds`);
* :func:`vectors` — finite parameter dicts shaped like a model's (or a dict's), in a chosen dtype.

:func:`assert_invariant` checks q(gθ, g·args) = q(θ, args) with a tolerance for the dtype, e.g.
with ``model, theta = data.draw(vit_models())`` and ``g = data.draw(symmetries(model))``::

    logits = lambda th, x: torch.func.functional_call(model, th, (x,))
    assert_invariant(logits, g, theta, x, transport=["fixed"])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from qgeom.models import create_model
from qgeom.params import Params, from_model, select
from qgeom.symmetry import KINDS, Symmetry, applicable_kinds, random_symmetry

__all__ = ["RTOL", "TRANSPORTS", "assert_invariant", "symmetries", "tiny_vit", "vectors", "vit_configs", "vit_models"]

#: Default relative tolerance of :func:`assert_invariant` per dtype (before the κ(g) factor).
RTOL: dict[torch.dtype, float] = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}
TRANSPORTS = ("tangent", "covector", "point", "fixed")  # how an argument of a quantity moves under g


def _hypothesis():
    """The hypothesis package, or an ImportError that says how to install it."""
    try:
        import hypothesis  # lazy: hypothesis is an optional extra (pip install qgeom[testing])
    except ImportError as e:
        raise ImportError("qgeom.testing's strategies need hypothesis: pip install qgeom[testing] "
                          "(or pip install hypothesis); assert_invariant works without it") from e
    return hypothesis


# --------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------


def tiny_vit(config: Mapping[str, Any], seed: int = 0, num_classes: int = 3,
             dtype: torch.dtype = torch.float64) -> tuple[nn.Module, Params]:
    """(model in ``dtype``, θ) with every tensor of the model's own init perturbed by 0.3·N(0, 1),
    so norms, tokens and biases are generic (no exact zeros or ones a symmetry could hide behind).
    ``config``: :func:`~qgeom.models.create_model` keyword arguments (e.g. from :func:`vit_configs`)."""
    model = create_model("micro", num_classes, seed=seed, **config).to(dtype)
    gen = torch.Generator().manual_seed(seed)
    theta = {k: v + 0.3 * torch.randn(v.shape, generator=gen, dtype=torch.float64).to(v.dtype)
             for k, v in from_model(model).items()}
    return model, theta


def _range(x: tuple[int, int] | int) -> tuple[int, int]:
    lo, hi = (x, x) if isinstance(x, int) else x
    if not 1 <= lo <= hi:
        raise ValueError(f"expected a range (lo, hi) with 1 ≤ lo ≤ hi, got {x!r}")
    return lo, hi


def vit_configs(*, depth: tuple[int, int] | int = (1, 3), num_heads: tuple[int, int] | int = (1, 4),
                head_dim: tuple[int, int] | int = (2, 8), mlp_ratio: Sequence[float] = (1.0, 2.0, 4.0),
                img_size: Sequence[int] = (8, 12), patch_size: int = 4, layerscale: bool | None = None,
                qkv_bias: bool | None = None, pools: Sequence[str] = ("token", "avg", "avg+cls")):
    """Strategy: tiny timm ViT keyword arguments, valid by construction.

    Ranges are inclusive (lo, hi) or one int: embed_dim = num_heads × head_dim, the MLP hidden
    width int(embed_dim × mlp_ratio) ≥ 1, every image size a multiple of ``patch_size``.
    layerscale / qkv_bias: None draws both (LayerScale ``init_values`` 0.5). pools: "token"
    (class token), "avg" (mean of patch tokens, no class token), "avg+cls" (mean, class token kept).
    """
    st = _hypothesis().strategies
    (d0, d1), (h0, h1), (k0, k1) = _range(depth), _range(num_heads), _range(head_dim)
    bad = [s for s in img_size if s % patch_size] + [r for r in mlp_ratio if int(h0 * k0 * r) < 1]
    unknown = set(pools) - {"token", "avg", "avg+cls"}
    if bad or unknown or not img_size or not mlp_ratio or not pools:
        raise ValueError(f"invalid ranges: image sizes must be multiples of patch_size {patch_size}, MLP ratios give "
                         f"≥ 1 hidden unit, pools among token/avg/avg+cls; offending: {bad or sorted(unknown) or 'empty'}")

    def flag(value: bool | None):
        return st.booleans() if value is None else st.just(value)

    @st.composite
    def draw(draw_) -> dict:
        heads, hd = draw_(st.integers(h0, h1)), draw_(st.integers(k0, k1))
        pool = draw_(st.sampled_from(list(pools)))
        return dict(depth=draw_(st.integers(d0, d1)), num_heads=heads, embed_dim=heads * hd,
                    qkv_bias=draw_(flag(qkv_bias)), init_values=0.5 if draw_(flag(layerscale)) else None,
                    global_pool="token" if pool == "token" else "avg", class_token=pool != "avg",
                    img_size=draw_(st.sampled_from(list(img_size))), patch_size=patch_size,
                    mlp_ratio=draw_(st.sampled_from(list(mlp_ratio))))

    return draw()


def vit_models(configs=None, *, dtype: torch.dtype = torch.float64, num_classes: int = 3):
    """Strategy: ``(model, θ)`` from :func:`tiny_vit` for a config drawn from ``configs``
    (default :func:`vit_configs`) and a drawn seed. Inputs: ``model.patch_embed.img_size``."""
    st = _hypothesis().strategies
    configs = vit_configs() if configs is None else configs

    @st.composite
    def draw(draw_) -> tuple[nn.Module, Params]:
        return tiny_vit(draw_(configs), seed=draw_(st.integers(0, 2**16)), num_classes=num_classes, dtype=dtype)

    return draw()


# --------------------------------------------------------------------------------------------
# symmetries and vectors
# --------------------------------------------------------------------------------------------


def symmetries(model: nn.Module, kinds: Sequence[str] | None = None,
               strength: float | tuple[float, float] = (0.3, 2.0)):
    """Strategy: a random element g of ``model`` (a :class:`~qgeom.symmetry.Symmetry`).

    kinds: the catalogue kinds to draw from (:data:`qgeom.symmetry.KINDS`); default every kind the
    model has (:func:`~qgeom.symmetry.applicable_kinds`). A kind the model lacks is refused with
    the reason. strength: a number, or a (lo, hi) range drawn from: the log condition number of GL
    blocks and the log-spread of rescalings (:func:`~qgeom.symmetry.random_symmetry`). Each draw
    notes its kind, strength and seed (printed with a falsifying example)."""
    hyp = _hypothesis()
    st = hyp.strategies
    why = applicable_kinds(model)
    chosen = [k for k in KINDS if why[k] is None] if kinds is None else list(kinds)
    unknown = [k for k in chosen if k not in why]
    if unknown:
        raise ValueError(f"unknown symmetry kinds {unknown}; known: {', '.join(KINDS)}")
    lacking = {k: why[k] for k in chosen if why[k] is not None}
    if lacking or not chosen:
        raise ValueError(f"this model has no symmetry of kind {lacking or 'any of those given'}")
    strengths = st.just(float(strength)) if isinstance(strength, (int, float)) else st.floats(*map(float, strength))

    @st.composite
    def draw(draw_) -> Symmetry:
        kind, s, seed = draw_(st.sampled_from(chosen)), draw_(strengths), draw_(st.integers(0, 2**16))
        hyp.note(f"g = random_symmetry(model, {kind!r}, strength={s!r}, seed={seed})")
        return random_symmetry(model, kind, strength=s, seed=seed)

    return draw()


def vectors(like: nn.Module | Mapping[str, Tensor], *, dtype: torch.dtype | None = None, scope=None,
            log10_scale: tuple[float, float] = (-3.0, 3.0)):
    """Strategy: a finite parameter dict v with the floating tensors of ``like`` (a module, or a
    dict such as θ) in ``scope`` (default all), each of its shape, in ``dtype`` (default each
    tensor's own).

    v_k = 10^(s + s_k) · z_k with z_k ~ N(0, I) from a drawn seed, s drawn from ``log10_scale``
    and per-tensor offsets s_k ∈ [−1, 1] (from the same seed): vectors of every size, with tensors
    of unequal norms. Entries are drawn from a seed, not one by one, so a vector of 10⁵ entries
    costs one draw."""
    st = _hypothesis().strategies
    base = from_model(like) if isinstance(like, nn.Module) else dict(like)
    base = {k: t for k, t in (select(base, scope) if scope is not None else base).items() if torch.is_floating_point(t)}
    if not base:
        raise ValueError("vectors: no floating tensors to shape a vector like (check the scope)")
    lo, hi = map(float, log10_scale)

    @st.composite
    def draw(draw_) -> Params:
        seed, s = draw_(st.integers(0, 2**32 - 1)), draw_(st.floats(lo, hi))
        gen = torch.Generator().manual_seed(seed)
        out = {}
        for k, t in base.items():
            offset = 2 * float(torch.rand((), generator=gen, dtype=torch.float64)) - 1
            z = torch.randn(t.shape, generator=gen, dtype=torch.float64) * 10.0 ** (s + offset)
            out[k] = z.to(dtype or t.dtype)
        return out

    return draw()


# --------------------------------------------------------------------------------------------
# the assertion
# --------------------------------------------------------------------------------------------


def _move(g: Symmetry, x: Any, how: str) -> Any:
    if how == "fixed":
        return x
    if how == "point" and isinstance(x, nn.Module):
        return g.apply_to(x)
    return {"tangent": g.act_tangent, "covector": g.act_covector, "point": g.act_point}[how](x)


def _flat(x: Any) -> Tensor:
    """A quantity's value as one float64 vector: numbers, tensors, numpy arrays, dicts (in key
    order), lists and tuples of them, or a result with a ``value`` attribute (qgeom's GeometryResult)."""
    if hasattr(x, "value") and not isinstance(x, Tensor):
        x = x.value
    if isinstance(x, Tensor):
        return x.detach().to("cpu", torch.float64).reshape(-1)
    if isinstance(x, (int, float)):
        return torch.tensor([float(x)], dtype=torch.float64)
    if isinstance(x, Mapping):
        return torch.cat([_flat(x[k]) for k in sorted(x)]) if x else torch.zeros(0, dtype=torch.float64)
    if isinstance(x, (list, tuple)):
        return torch.cat([_flat(v) for v in x]) if x else torch.zeros(0, dtype=torch.float64)
    if hasattr(x, "__array__"):  # numpy arrays and scalars
        return torch.as_tensor(x.__array__(), dtype=torch.float64).reshape(-1)
    raise TypeError(f"assert_invariant: cannot compare a quantity of type {type(x).__name__}; return a number, "
                    "a tensor, a dict/list/tuple of them, or a result with a .value")


def _dtype_of(params: Any, args: Sequence[Any]) -> torch.dtype:
    """The lowest-precision floating dtype among the point's tensors and dict arguments."""
    tensors = list(params.parameters()) if isinstance(params, nn.Module) else list(params.values())
    tensors += [t for a in args if isinstance(a, Mapping) for t in a.values() if isinstance(t, Tensor)]
    dtypes = {t.dtype for t in tensors if torch.is_floating_point(t)}
    return max(dtypes, key=lambda d: torch.finfo(d).eps) if dtypes else torch.float64


def _show(t: Tensor) -> str:
    return f"{t.item():.17g}" if t.numel() == 1 else f"{t[:4].tolist()}… ({t.numel()} entries)"


def assert_invariant(quantity: Callable[..., Any], element: Symmetry, params: Mapping[str, Tensor] | nn.Module,
                     *args: Any, transport: Sequence[str] | None = None, covariant: str | None = None,
                     rtol: float | None = None, atol: float = 0.0) -> None:
    """Assert q(gθ, g·a_1, …) = q(θ, a_1, …), or = g·q(θ, …) with ``covariant``; else AssertionError.

    params: θ, a parameter dict (moved by ``g.act_point``) or an ``nn.Module`` (moved by
    ``g.apply_to``, a transformed copy). args: the quantity's other arguments, each moved as
    ``transport`` declares, one word per argument: ``tangent`` (v ↦ g v: displacements, ρ, u, v),
    ``covector`` (c ↦ g⁻ᵀ c: gradients, products M·v), ``point`` or ``fixed`` (inputs x, batches:
    not moved). Default: dict arguments are tangents, the rest fixed. covariant: None (q is
    invariant) or how q's own value moves (``tangent``/``covector``/``point``: q(gθ) = g·q(θ)).

    The value may be a number, a tensor, a dict/list/tuple of them or a result with ``.value``;
    both sides are compared as float64 vectors a = q(θ), b = q(gθ):
    max|b − a| ≤ atol + rtol · max(max|a|, max|b|), NaN never passes.

    Default rtol: 1e-10 for float64 θ and 1e-4 for float32 (float16 1e-2, bfloat16 5e-2), times
    κ(g) = ``element.condition_number()`` (g itself amplifies roundoff by up to κ). Why: float64
    roundoff is ε ≈ 1.1e-16 per operation over ~10³–10⁴ operations; on tiny ViTs (8 configs, every
    kind, strength 0.3) logits moved by ≤ 1.8e-15·κ, and qgeom's own checks stay ≤ 1e-13
    (:class:`qgeom.symmetry.invariance_report.Tolerances`), so 1e-10 leaves three digits of margin
    and still sits far below true violations (the same sweep: Euclidean cosines and norms under
    non-orthogonal elements moved by ≥ 2.4e-5). float32 (ε ≈ 1.2e-7): logits ≤ 7.2e-7·κ and GGN
    cosines ≤ 1.3e-5·κ at strength 2, so 1e-4 — which can hide a weak violation (1e-5): test
    non-invariance in float64. Give ``atol`` for a quantity that is 0 up to roundoff (a relative
    test cannot pass on pure noise).
    """
    words = [("tangent" if isinstance(a, Mapping) else "fixed") for a in args] if transport is None else list(transport)
    if isinstance(transport, str) or len(words) != len(args) or set(words) - set(TRANSPORTS):
        raise ValueError(f"transport: one of {TRANSPORTS} per argument ({len(args)} given), got {transport!r}")
    if covariant not in (None, "tangent", "covector", "point"):
        raise ValueError(f"covariant: None (an invariant) or tangent/covector/point, got {covariant!r}")
    point = element.apply_to(params) if isinstance(params, nn.Module) else element.act_point(params)
    before = quantity(params, *args)
    after = quantity(point, *(_move(element, a, w) for a, w in zip(args, words)))
    a, b = _flat(_move(element, before, covariant) if covariant else before), _flat(after)
    if rtol is None:
        rtol = RTOL.get(_dtype_of(params, args), 1e-10) * max(1.0, element.condition_number())
    what = f"{getattr(quantity, '__name__', 'quantity')} under {element.kind}"
    if a.shape != b.shape:
        raise AssertionError(f"{what}: q(θ) has {a.numel()} entries, q(gθ) {b.numel()}")
    err = float((b - a).abs().max()) if a.numel() else 0.0
    scale = max(float(a.abs().max()), float(b.abs().max())) if a.numel() else 0.0
    tol = atol + rtol * scale
    if not (math.isfinite(err) and err <= tol):
        side = "g·q(θ)" if covariant else "q(θ)"
        raise AssertionError(f"{what} is not {'covariant' if covariant else 'invariant'}: max|q(gθ) − {side}| = "
                             f"{err:.3e} > tolerance {tol:.3e} (rtol {rtol:.1e} × max|q| {scale:.3e} + atol {atol:.1e})\n"
                             f"  {side} = {_show(a)}\n  q(gθ) = {_show(b)}\n  difference = {_show(b - a)}")

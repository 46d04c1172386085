"""Named-parameter vectors: scopes, arithmetic and validation (files: :mod:`qgeom.io`).

A point θ or a direction ρ in weight space is a ``Params``: a ``dict[str, Tensor]`` keyed by
timm's parameter names. Every function here is pure: it returns new dicts and never mutates its
inputs. Reductions over millions of coordinates (inner products, norms) accumulate in float64.

Scopes select a subset of the keys:

* ``"quantized"`` — the 2-D ``.weight`` of every ``nn.Linear`` except the classifier head
  (in a timm ViT: ``qkv``, ``proj``, ``fc1``, ``fc2``). Decided from names and shapes alone,
  so it works on a bare dict: a ViT's only other ``.weight`` tensors are 1-D (norms) or 4-D
  (the patch-embedding convolution).
* ``"backbone"`` — every floating tensor except the head's (what the paper transfers).
* ``"all"`` — every floating tensor.
* a callable ``(name, tensor) -> bool``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Union

import torch
from torch import Tensor

from qgeom.vocabulary import SCOPES

Params = dict[str, Tensor]
Scope = Union[str, Callable[[str, Tensor], bool], None]

HEAD_PREFIXES = ("head.", "fc_norm_head.")


class IncompatibleParamsError(ValueError):
    """Two parameter dicts cannot be combined (keys, shapes or dtypes differ)."""


class NonFiniteParamsError(ValueError):
    """A parameter dict holds NaN or Inf values."""


# -- scopes ------------------------------------------------------------------------------------------

def is_head(name: str) -> bool:
    """True for the classifier head's tensors (``head.weight``, ``head.bias``)."""
    return name.startswith(HEAD_PREFIXES)


def in_scope(name: str, tensor: Tensor, scope: Scope) -> bool:
    """Whether ``name`` belongs to ``scope`` (see the module docstring); ``None`` means all."""
    check_scope(scope)
    if not torch.is_floating_point(tensor):
        return False
    if scope is None or scope == "all":
        return True
    if callable(scope):
        return bool(scope(name, tensor))
    if scope == "backbone":
        return not is_head(name)
    return name.endswith(".weight") and tensor.dim() == 2 and not is_head(name)  # "quantized"


def check_scope(scope: Scope) -> None:
    """Raise ``ValueError`` unless ``scope`` is a known scope name, ``None`` or a callable."""
    if scope is not None and not callable(scope) and scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}; known scopes: {', '.join(SCOPES)} or a callable")


def select(params: Mapping[str, Tensor], scope: Scope) -> Params:
    """The sub-dict of ``params`` in ``scope`` (the tensors are shared, not copied)."""
    check_scope(scope)
    return {k: v for k, v in params.items() if in_scope(k, v, scope)}


def scope_keys(params: Mapping[str, Tensor], scope: Scope) -> list[str]:
    """Names of ``params`` in ``scope``, in insertion order."""
    check_scope(scope)
    return [k for k, v in params.items() if in_scope(k, v, scope)]


def from_model(model: torch.nn.Module, scope: Scope = "all") -> Params:
    """Detached copies of a model's parameters *and* floating buffers in ``scope``.

    Buffers are included so that a dict round-trips through ``load_state_dict``; a timm ViT
    has none that are trainable, so for it this equals the parameter dict.
    """
    out: Params = {}
    for name, t in model.state_dict().items():
        if in_scope(name, t, scope):
            out[name] = t.detach().clone()
    return out


def load_into(model: torch.nn.Module, params: Mapping[str, Tensor], strict: bool = False) -> torch.nn.Module:
    """Copy ``params`` into ``model`` in place (keys must exist; shapes must match)."""
    state = model.state_dict()
    unknown = [k for k in params if k not in state]
    if unknown:
        raise IncompatibleParamsError(f"keys not in the model: {first_names(unknown)}")
    check_compatible(select(state, lambda k, _: k in params), params, check_dtype=False, finite=False)
    if strict:
        missing = [k for k in state if k not in params and torch.is_floating_point(state[k])]
        if missing:
            raise IncompatibleParamsError(f"model keys missing from params: {first_names(missing)}")
    with torch.no_grad():
        for k, v in params.items():
            state[k].copy_(v)
    return model


# -- validation --------------------------------------------------------------------------------------

def first_names(names: Iterable[str], n: int = 5) -> str:
    names = list(names)
    more = f" (and {len(names) - n} more)" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def check_finite(params: Mapping[str, Tensor], what: str = "params") -> None:
    """Raise :class:`NonFiniteParamsError` naming the first tensors with NaN/Inf."""
    bad = [k for k, v in params.items() if torch.is_floating_point(v) and not torch.isfinite(v).all()]
    if bad:
        raise NonFiniteParamsError(f"{what} hold NaN or Inf values in: {first_names(bad)}")


def check_compatible(
    a: Mapping[str, Tensor],
    b: Mapping[str, Tensor],
    *,
    check_dtype: bool = True,
    finite: bool = True,
    names: tuple[str, str] = ("first", "second"),
) -> None:
    """Raise a clear error unless ``a`` and ``b`` have the same keys, shapes (and dtypes).

    The message names the first offending keys, e.g.
    ``keys only in donor: blocks.3.attn.qkv.weight``.
    """
    ka, kb = set(a), set(b)
    if ka != kb:
        parts = []
        if ka - kb:
            parts.append(f"keys only in {names[0]}: {first_names(sorted(ka - kb))}")
        if kb - ka:
            parts.append(f"keys only in {names[1]}: {first_names(sorted(kb - ka))}")
        raise IncompatibleParamsError("; ".join(parts))
    shapes = [f"{k} {tuple(a[k].shape)} vs {tuple(b[k].shape)}" for k in a if a[k].shape != b[k].shape]
    if shapes:
        raise IncompatibleParamsError(f"shape mismatch between {names[0]} and {names[1]}: {first_names(shapes)}")
    if check_dtype:
        dts = [f"{k} {a[k].dtype} vs {b[k].dtype}" for k in a if a[k].dtype != b[k].dtype]
        if dts:
            raise IncompatibleParamsError(f"dtype mismatch between {names[0]} and {names[1]}: {first_names(dts)}")
    if finite:
        check_finite(a, names[0])
        check_finite(b, names[1])


# -- arithmetic --------------------------------------------------------------------------------------

def add(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> Params:
    """a + b, key by key (same keys and shapes required)."""
    check_compatible(a, b, check_dtype=False, finite=False)
    return {k: a[k] + b[k] for k in a}


def sub(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> Params:
    """a − b, key by key (same keys and shapes required)."""
    check_compatible(a, b, check_dtype=False, finite=False)
    return {k: a[k] - b[k] for k in a}


def scale(a: Mapping[str, Tensor], s: float) -> Params:
    """s · a."""
    return {k: v * s for k, v in a.items()}


def lincomb(vectors: Iterable[Mapping[str, Tensor]], coeffs: Iterable[float]) -> Params:
    """Σ_i c_i v_i over vectors with identical keys (e.g. the mean of several donors)."""
    vectors, coeffs = list(vectors), list(coeffs)
    if not vectors or len(vectors) != len(coeffs):
        raise ValueError("lincomb needs as many coefficients as vectors, at least one")
    out = scale(vectors[0], coeffs[0])
    for v, c in zip(vectors[1:], coeffs[1:]):
        check_compatible(out, v, check_dtype=False, finite=False)
        out = {k: out[k] + c * v[k] for k in out}
    return out


def zeros_like(a: Mapping[str, Tensor]) -> Params:
    """A zero vector with the keys, shapes and dtypes of ``a``."""
    return {k: torch.zeros_like(v) for k, v in a.items()}


def inner(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> float:
    """Euclidean ⟨a, b⟩ = Σ_k Σ_i a_k,i b_k,i, accumulated in float64."""
    check_compatible(a, b, check_dtype=False, finite=False)
    total = torch.zeros((), dtype=torch.float64)
    for k in a:
        total += (a[k].double() * b[k].double()).sum().cpu()
    return float(total)


def norm(a: Mapping[str, Tensor]) -> float:
    """Euclidean ‖a‖ = √⟨a, a⟩ (float64)."""
    return math.sqrt(max(inner(a, a), 0.0))


def cosine(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> float:
    """Euclidean cosine ⟨a, b⟩ / (‖a‖ ‖b‖); NaN when either vector is zero."""
    na, nb = norm(a), norm(b)
    return inner(a, b) / (na * nb) if na > 0 and nb > 0 else float("nan")


def layer_norms(a: Mapping[str, Tensor]) -> dict[str, float]:
    """‖a_k‖ for every tensor k (float64), e.g. to match a random direction's norms."""
    return {k: float(v.double().norm()) for k, v in a.items()}


def numel(a: Mapping[str, Tensor]) -> int:
    """Total number of coordinates."""
    return sum(v.numel() for v in a.values())


# -- the vectors of the method -----------------------------------------------------------------------

def task_vector(finetuned: Mapping[str, Tensor], pretrained: Mapping[str, Tensor], scope: Scope = "backbone",
                dtype: torch.dtype | None = torch.float64) -> Params:
    """τ_t = θ_t − θ_0 on ``scope``; the two dicts must agree on the scope's keys.

    Computed and stored in ``dtype`` (float64 by default): the difference of two float32
    values is exact in float64 when their magnitudes are within a factor 2^29 of each other (or
    one is 0), so θ_0 + τ_t reproduces θ_t bit for bit for all such entries (see :func:`patch`).
    Beyond that ratio it is rounded once (e.g. θ_0 = 1, θ_t = (1 + 2^−23)·2^−31).
    """
    ft, pt = select(finetuned, scope), select(pretrained, scope)
    check_compatible(ft, pt, names=("fine-tuned", "pretrained"))
    return {k: ft[k].to(dtype or ft[k].dtype) - pt[k].to(dtype or ft[k].dtype) for k in ft}


def quantization_vector(qat: Mapping[str, Tensor], finetuned: Mapping[str, Tensor], scope: Scope = "backbone",
                        dtype: torch.dtype | None = torch.float64) -> Params:
    """ρ_t = θ_t,QAT − θ_t on ``scope`` (the head is excluded by every default scope but ``all``).

    float64 by default, so that θ_t + 1·ρ_t is θ_t,QAT exactly (see :func:`task_vector`).
    """
    q, ft = select(qat, scope), select(finetuned, scope)
    check_compatible(q, ft, names=("QAT model", "fine-tuned model"))
    return {k: q[k].to(dtype or q[k].dtype) - ft[k].to(dtype or q[k].dtype) for k in q}


def patch(receiver: Mapping[str, Tensor], vector: Mapping[str, Tensor], lam: float = 1.0, scope: Scope = None, *,
          allow_partial: bool = False) -> Params:
    """θ_R(λ) = θ_R + λ ρ_D on the keys of ``vector`` (restricted to ``scope`` if given).

    The contract (the receiver keeps its head):

    * the vector never touches the head: a head tensor in it (e.g. a full checkpoint passed as
      a vector) is an :class:`IncompatibleParamsError`;
    * it covers exactly one scope of the receiver: ``scope`` when given, else ``backbone`` or
      ``quantized`` (whichever its keys are). A vector missing tensors of its scope is refused,
      naming them, unless ``allow_partial=True`` (the missing tensors then stay θ_R's);
    * every key exists in the receiver with the same shape; all values and λ are finite.

    Keys of the receiver not in the vector are copied unchanged. The sum is formed in float64
    and rounded once to the receiver's dtype, so with a float64 vector θ_R + 1·(θ_QAT − θ_R)
    equals θ_QAT exactly.
    """
    vec = select(vector, scope) if scope is not None else dict(vector)
    head = [k for k in vec if is_head(k)]
    if head:
        raise IncompatibleParamsError(f"the vector holds head tensors ({first_names(head)}): the receiver keeps its head "
                                      f"(a full checkpoint passed as a vector? extract ρ on the backbone)")
    missing = [k for k in vec if k not in receiver]
    if missing:
        raise IncompatibleParamsError(f"vector keys not in the receiver: {first_names(missing)}")
    check_compatible({k: receiver[k] for k in vec}, vec, check_dtype=False, names=("receiver", "vector"))
    if not math.isfinite(lam):
        raise ValueError(f"lam must be finite, got {lam}")
    if not allow_partial:
        check_coverage(receiver, vec, scope)
    out = {k: v.clone() for k, v in receiver.items()}
    for k, v in vec.items():
        out[k] = (receiver[k].double() + lam * v.double()).to(receiver[k].dtype)
    return out


def check_coverage(receiver: Mapping[str, Tensor], vector: Mapping[str, Tensor], scope: Scope = None) -> None:
    """Raise :class:`IncompatibleParamsError` unless ``vector`` has every tensor of the receiver
    in ``scope`` (None: ``backbone`` or ``quantized``, whichever fits) and no other."""
    keys = set(vector)
    candidates = [scope] if scope is not None else ["backbone", "quantized"]
    for s in candidates:
        if keys == {k for k in scope_keys(receiver, s) if not is_head(k)}:
            return
    s = candidates[0] if scope is not None or keys - set(scope_keys(receiver, "quantized")) else "quantized"
    want = [k for k in scope_keys(receiver, s) if not is_head(k)]
    lacking = [k for k in want if k not in keys]
    extra = [k for k in keys if k not in want]
    name = s if isinstance(s, str) else "the given scope"
    parts = [f"the vector covers {len(keys & set(want))} of the {len(want)} tensors of scope {name}"]
    if lacking:
        parts.append(f"missing: {first_names(lacking)}")
    if extra:
        parts.append(f"outside it: {first_names(sorted(extra))}")
    raise IncompatibleParamsError("; ".join(parts) + " (a partial vector needs allow_partial=True / --allow-partial)")


# -- flatten / unflatten -----------------------------------------------------------------------------

def flatten(a: Mapping[str, Tensor], keys: Iterable[str] | None = None, dtype: torch.dtype | None = None) -> Tensor:
    """Concatenate the tensors (in ``keys`` order, default insertion order) into one vector."""
    keys = list(a) if keys is None else list(keys)
    if not keys:
        return torch.zeros(0, dtype=dtype or torch.float32)
    return torch.cat([a[k].reshape(-1).to(dtype or a[k].dtype) for k in keys])


def unflatten(vec: Tensor, like: Mapping[str, Tensor], keys: Iterable[str] | None = None) -> Params:
    """Inverse of :func:`flatten`: split ``vec`` into tensors shaped like ``like``."""
    keys = list(like) if keys is None else list(keys)
    n = sum(like[k].numel() for k in keys)
    if vec.numel() != n:
        raise IncompatibleParamsError(f"vector has {vec.numel()} entries, the dict needs {n}")
    out, i = {}, 0
    for k in keys:
        m = like[k].numel()
        out[k] = vec[i : i + m].reshape(like[k].shape).to(like[k].dtype)
        i += m
    return out


# -- safetensors IO ----------------------------------------------------------------------------------

def content_hash(a: Mapping[str, Tensor]) -> str:
    """SHA-256 over sorted names, shapes, dtypes and raw bytes (stable across runs)."""
    h = hashlib.sha256()
    for k in sorted(a):
        t = a[k].detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        # reshape(-1): a 0-dim tensor cannot be viewed as bytes; the bytes are the same.
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()

"""The probe set {(x_b, y_b)} of N = Σ_b n_b samples that a curvature operator averages over.

* its identity: :func:`probe_hash` (SHA-256 over the batches' shapes, dtypes and bytes);
* its sanity: :func:`probe_warnings` (a probe set larger than its split, or too small for the
  number of classes);
* the one reduction over it: :func:`reduce_over_probe`, Σ_b (n_b / N) · (batch mean), in
  float64 — the one place the data-parallel mode (:func:`init_data_parallel`,
  :func:`data_parallel`: an all-reduce of the weighted sums under ``torchrun``) slots in;
* the model checks every operator makes before it differentiates through the model:
  :func:`check_eval_mode` (curvature is defined for the deterministic eval-mode function) and
  :func:`check_forward_ad` (fused attention has no forward-mode AD and no double backward).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_map

from qgeom.models import supports_forward_ad

Batch = tuple[Tensor, Tensor]
T = TypeVar("T")


class TrainingModeError(ValueError):
    """The model has a stochastic layer (dropout, drop-path, batch-norm) in training mode."""


class ForwardADError(ValueError):
    """The model's attention cannot be forward- or twice-differentiated (fused SDPA)."""


# --------------------------------------------------------------------------------------------
# checks of the model
# --------------------------------------------------------------------------------------------


def check_eval_mode(model: nn.Module) -> None:
    """Raise :class:`TrainingModeError` if a stochastic layer would act in the forward pass.

    Curvature is defined for the deterministic eval-mode function: Dropout with p > 0, timm's
    DropPath / PatchDropout with a positive rate, and BatchNorm are refused in training mode.
    """
    bad = []
    for name, m in model.named_modules():
        if not m.training:
            continue
        rate = getattr(m, "p", None) if isinstance(m, nn.modules.dropout._DropoutNd) else None
        rate = rate if rate is not None else getattr(m, "drop_prob", None) or getattr(m, "prob", None)
        if isinstance(m, nn.modules.batchnorm._BatchNorm) or (isinstance(rate, float) and rate > 0):
            bad.append(f"{name or type(m).__name__} ({type(m).__name__})")
    if bad:
        raise TrainingModeError(
            f"model has stochastic layers in training mode: {', '.join(bad[:5])}; curvature is "
            "defined for the eval-mode function — call model.eval() first")


def check_forward_ad(model: nn.Module, route: str) -> None:
    """Raise :class:`ForwardADError` if fused attention blocks ``route`` (see FINDINGS.md)."""
    if not supports_forward_ad(model):
        raise ForwardADError(
            f"the {route} route needs second-order derivatives through attention, but the model "
            "uses fused scaled_dot_product_attention (no forward-mode AD, no double backward); pass "
            "qgeom.models.without_fused_attention(model), a copy sharing its tensors (the model is left as it "
            "is; disable_fused_attention would change it in place), or build it with qgeom.models.create_model")


# --------------------------------------------------------------------------------------------
# the probe set: identity, sanity
# --------------------------------------------------------------------------------------------


def probe_hash(batches: Sequence[Batch]) -> str:
    """SHA-256 over the batches' shapes, dtypes and bytes, in order (the probe set's identity)."""
    h = hashlib.sha256()
    for x, y in batches:
        for t in (x, y):
            t = t.detach().cpu().contiguous()
            h.update(f"{tuple(t.shape)}{t.dtype}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


PROBE_FACTOR = 2  # a probe set below PROBE_FACTOR × (number of classes) images is flagged


def probe_warnings(requested: int, available: int, num_classes: int, factor: int = PROBE_FACTOR) -> list[str]:
    """Sanity of a probe set: warnings (empty when fine) for a request larger than the split
    (the probe is silently the whole split) and for a probe set smaller than ``factor`` ×
    ``num_classes`` images — the GGN/Fisher of n images has rank ≤ n·(C − 1), so a few images
    make cosines of a handful of vectors meaninglessly close to ±1."""
    out = []
    used = min(requested, available)
    if requested > available:
        out.append(f"probe size {requested} exceeds the split's {available} images: using {available}")
    if used < factor * num_classes:
        out.append(f"probe set of {used} images is below {factor} × {num_classes} classes: the metric has rank "
                   f"≤ {used * max(num_classes - 1, 1)}, cosines are degenerate")
    return out


# --------------------------------------------------------------------------------------------
# the one reduction over the probe set, and its data-parallel mode
# --------------------------------------------------------------------------------------------


def init_data_parallel() -> tuple[int, int]:
    """Join the process group ``torchrun`` describes (``WORLD_SIZE`` > 1 in the environment), once:
    NCCL with one GPU per rank (``LOCAL_RANK``) when CUDA is present, else gloo. Returns
    (rank, world size); without ``torchrun`` nothing happens and it returns (0, 1)."""
    if (int(os.environ.get("WORLD_SIZE", "1")) > 1 and torch.distributed.is_available()
            and not torch.distributed.is_initialized()):
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return data_parallel()


def data_parallel() -> tuple[int, int]:
    """(rank, world size) of the default ``torch.distributed`` process group; (0, 1) without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def reduce_over_probe(fn: Callable[[Tensor, Tensor], T], batches: Sequence[Batch]) -> T:
    """Σ_b (n_b / N) fn(x_b, y_b) over a pytree of tensors (Params, lists of them, scalars).

    fn returns a per-batch *mean*, so the result is the mean over all N samples. Accumulates in
    float64 (results are float64; callers cast).

    Data-parallel: under a ``torch.distributed`` process group of W ranks (``torchrun``), rank r
    evaluates the batches r, r + W, r + 2W, … (any number of batches; a rank may get none) and
    the weighted sums are all-reduced in float64, so every rank returns the same result, equal
    to the single-process one up to the order of the float64 additions. Every rank must hold
    the same probe set (as :func:`qgeom.data.probe_batches` gives with the same seed).
    """
    n_total = sum(int(y.shape[0]) for _, y in batches)
    if n_total == 0:
        raise ValueError("the probe set is empty")
    rank, world = data_parallel()
    mine = list(batches)[rank::world] if world > 1 else batches
    total = None
    for x, y in mine:
        w = int(y.shape[0]) / n_total
        out = fn(x, y)
        if total is None:
            total = tree_map(lambda a: a.detach().double() * w, out)
        else:
            total = tree_map(lambda t, a: t + a.detach().double() * w, total, out)
    if world == 1:
        return total
    if total is None:  # more ranks than batches: contribute zeros of the right structure
        x, y = batches[0]
        total = tree_map(lambda a: torch.zeros_like(a.detach(), dtype=torch.float64), fn(x[:1], y[:1]))
    leaves, spec = torch.utils._pytree.tree_flatten(total)
    flat = torch.cat([t.reshape(-1) for t in leaves])
    torch.distributed.all_reduce(flat)
    out, i = [], 0
    for t in leaves:
        out.append(flat[i : i + t.numel()].view_as(t))
        i += t.numel()
    return torch.utils._pytree.tree_unflatten(out, spec)


__all__ = [
    "Batch", "ForwardADError", "PROBE_FACTOR", "TrainingModeError", "check_eval_mode", "check_forward_ad",
    "data_parallel", "init_data_parallel", "probe_hash", "probe_warnings", "reduce_over_probe",
]

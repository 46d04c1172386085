"""Quadratic forms ⟨u, v⟩_M read as cosines and scales, with the roundoff floors that say when a
form is zero — plain numbers in, numbers out (no operator is called here).

cos_M(u, v) = ⟨u,v⟩_M / √(⟨u,u⟩_M ⟨v,v⟩_M) and λ* = ⟨u,v⟩_M / ⟨u,u⟩_M are defined only where the
forms they divide by are positive. Otherwise the result is *indefinite*: NaN with a message
naming the form — or, with ``allow_indefinite=True``, the **signed ratio**

* ⟨u,v⟩_M / √(|⟨u,u⟩_M| · |⟨v,v⟩_M|) in place of the cosine (equal to it when both forms are
  positive; no longer bounded by 1 in general, and not a cosine),
* ⟨u,v⟩_M / ⟨u,u⟩_M in place of λ* (the stationary point of the quadratic model along u: a
  maximum when ⟨u,u⟩_M < 0),

still flagged ``indefinite`` with the forms beside it. A form at roundoff level,
|⟨w,w⟩_M| ≤ floor (:func:`null_thresholds`), is a null direction of M: NaN in either mode, since
a ratio of roundoff carries no information.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from qgeom.params import Params, norm

NAN = float("nan")


def to_builtins(x: Any) -> Any:
    """numpy arrays → lists, numpy scalars → Python numbers, recursively; NaN is kept (not strict JSON)."""
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, dict):
        return {k: to_builtins(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_builtins(v) for v in x]
    if isinstance(x, (np.floating, np.integer, np.bool_)):
        return x.item()
    return x


@dataclass(frozen=True)
class GeometryResult:
    """One geometric quantity: ``value`` (float or array), the forms it came from (``terms``),
    the indefinite flag and its message, and the operator's provenance (``info``)."""

    name: str
    value: Any
    indefinite: bool = False
    message: str = ""
    terms: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)

    def __float__(self) -> float:
        return float(self.value)

    def to_dict(self) -> dict:
        return to_builtins(asdict(self))


def null_thresholds(op: Any, vectors: Sequence[Params], products: Sequence[Params]) -> list[float]:
    """Roundoff level of each form ⟨v, v⟩_M: 16·eps(op dtype)·s·‖v‖², s = max_i ‖M v_i‖/‖v_i‖.

    s is a lower bound of ‖M‖ taken from the products at hand; the error of a computed vᵀ(Mv) is
    of order eps·‖M‖·‖v‖², so a form below the threshold is indistinguishable from 0."""
    norms = [norm(v) for v in vectors]
    s = max((norm(mv) / n for mv, n in zip(products, norms) if n > 0), default=0.0)
    eps = torch.finfo(op.dtype).eps
    return [16 * eps * s * n**2 for n in norms]


def _bad_form(name: str, f: float, floor: float) -> str:
    why = f"≤ {floor:.3g} (roundoff: a null direction of M)" if f > 0 else "≤ 0"
    return f"⟨{name},{name}⟩_M = {f:.3g} {why}"


def cosine_of_forms(uv: float, uu: float, vv: float, names: Sequence[str] = ("u", "v"),
                    floors: Sequence[float] = (0.0, 0.0), allow_indefinite: bool = False) -> tuple[float, bool, str]:
    """(cos_M or NaN — or the signed ratio, see the module docstring —, indefinite, message)."""
    bad = [_bad_form(n, f, t) for n, f, t in zip(names, (uu, vv), floors) if not f > t]
    if not bad:
        return uv / math.sqrt(uu * vv), False, ""
    null = any(abs(f) <= t for f, t in zip((uu, vv), floors))
    if allow_indefinite and not null:
        return uv / math.sqrt(abs(uu) * abs(vv)), True, (
            f"indefinite: {'; '.join(bad)} — the value is the signed ratio ⟨{names[0]},{names[1]}⟩_M / "
            f"√(|⟨{names[0]},{names[0]}⟩_M|·|⟨{names[1]},{names[1]}⟩_M|), not a cosine")
    hint = " (a form at roundoff level has no ratio)" if allow_indefinite else \
        " (use a PSD metric such as 'ggn', or allow_indefinite=True for the signed ratio)"
    return NAN, True, f"indefinite: {'; '.join(bad)} — cos_M is undefined{hint}"


def scale_of_forms(uv: float, uu: float, name: str = "u", floor: float = 0.0,
                   allow_indefinite: bool = False) -> tuple[float, bool, str]:
    """(λ* = ⟨u,v⟩_M / ⟨u,u⟩_M or NaN — or the signed stationary point —, indefinite, message)."""
    if uu > floor:
        return uv / uu, False, ""
    if allow_indefinite and abs(uu) > floor:
        return uv / uu, True, (f"indefinite: {_bad_form(name, uu, floor)} — the value is the stationary "
                               f"point ⟨{name},·⟩_M/⟨{name},{name}⟩_M of the quadratic model along {name}, "
                               "a maximum")
    return NAN, True, (f"indefinite: {_bad_form(name, uu, floor)} — the quadratic model along {name} "
                       "has no minimizer, so λ* is undefined")


@dataclass(frozen=True)
class FormQuantities:
    """What a Gram matrix K = VᵀMV says, read once with its roundoff floors (N × N arrays,
    row D, column R): ``K_sym`` = (K + Kᵀ)/2; ``ok`` ⟨v_i, v_i⟩_M above its floor; ``cosines``
    K_DR/√(K_DD K_RR) and ``scales`` λ* = K_DR/K_DD, NaN where a form they divide by is not ok
    (with ``allow_indefinite``: the signed ratios wherever no form is at roundoff level);
    ``eigenvalues`` of K_sym, ascending."""

    K_sym: np.ndarray
    ok: np.ndarray
    cosines: np.ndarray
    scales: np.ndarray
    eigenvalues: np.ndarray


def form_quantities(K: np.ndarray, floors: Sequence[float], allow_indefinite: bool = False) -> FormQuantities:
    """Cosines and optimal scales of every pair from K and the floors of
    :func:`qgeom.curvature.geometry.gram_matrix`."""
    Ks = 0.5 * (K + K.T)
    d = np.diag(Ks)
    ok = d > np.array(floors)
    usable = np.abs(d) > np.array(floors) if allow_indefinite else ok
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(np.outer(usable, usable), Ks / np.sqrt(np.outer(np.abs(d), np.abs(d))), NAN)
        scales = np.where(usable[:, None], Ks / d[:, None], NAN)
    return FormQuantities(Ks, ok, cos, scales, np.linalg.eigvalsh(Ks))


__all__ = ["FormQuantities", "GeometryResult", "NAN", "cosine_of_forms", "form_quantities", "null_thresholds",
           "scale_of_forms", "to_builtins"]

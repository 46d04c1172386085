"""What a curvature operator accepts, turned into one form: the parameters, the scope, the probe set.

* parameters (:func:`named_params`): a name → tensor mapping (e.g. ``model.state_dict()`` or
  :func:`qgeom.params.from_model`), a list (or any iterable) of the module's own parameters —
  their names looked up on the module by identity — or None, the module's own parameters
  (``named_parameters()``; its buffers are held fixed);
* scope (:func:`scoped_keys`): ``"quantized"|"backbone"|"all"``, a callable ``(name, tensor) →
  bool``, or a list/tuple of names, kept in the caller's order (a set has no order: the
  parameters' order is used);
* probe set (:func:`read_batches`): one ``(x, y)`` batch or any iterable of batches (a list, a
  generator, a ``DataLoader``), read exactly once and held in memory — so a generator's samples
  are counted and hashed like a list's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from qgeom.curvature.probe import Batch
from qgeom.params import Params, Scope, first_names, scope_keys


#: The keywords of :class:`qgeom.curvature.operator.CurvatureOperator`, and what other libraries call some of them.
OPERATOR_KEYWORDS = ("params", "batches", "metric", "objective", "scope", "spec", "method", "dtype", "cache_graph",
                     "loss")
ALIASES = {"loss_fn": "loss", "loss_func": "loss", "criterion": "loss", "data": "batches", "dataloader": "batches",
           "parameters": "params", "theta": "params"}


def refuse_keywords(other: Mapping[str, Any], who: str, known: Sequence[str]) -> None:
    """Raise ``TypeError`` for keywords ``who`` does not take, naming the one to pass instead."""
    if not other:
        return
    hints = [f"{k}= is spelled {ALIASES[k]}= here" for k in other if k in ALIASES]
    raise TypeError(f"{who} got unexpected keyword(s) {', '.join(other)}" + (f" ({'; '.join(hints)})" if hints else "")
                    + f"; it takes {', '.join(known)}")


def named_params(model: nn.Module, params: Mapping[str, Tensor] | Iterable[Tensor] | None) -> tuple[Params, bool]:
    """(name → tensor, whether it was a mapping) for the accepted forms of ``params``.

    A list's tensors must be parameters of ``model`` (matched by identity); anything else is
    refused with the names to pass instead.
    """
    if isinstance(params, Mapping):
        return dict(params), True
    own = dict(model.named_parameters())
    if params is None:
        return own, False
    if isinstance(params, Tensor):
        raise TypeError("params must be a name → tensor mapping, a list of the model's parameters or None; "
                        "got a single tensor")
    names = {id(t): k for k, t in own.items()}
    out: Params = {}
    for i, t in enumerate(params):
        if not isinstance(t, Tensor) or id(t) not in names:
            raise TypeError(f"params[{i}] ({type(t).__name__}) is not a parameter of the model: pass a list of "
                            "the model's own parameters (e.g. list(model.parameters())), a name → tensor mapping "
                            "(e.g. dict(model.named_parameters())) or None for all of them")
        out[names[id(t)]] = t
    if not out:
        raise ValueError("params is an empty list: pass at least one of the model's parameters, or None for all")
    return out, False


def scoped_keys(full: Mapping[str, Tensor], scope: Scope | Sequence[str], candidates: Iterable[str] | None = None
                ) -> tuple[list[str], str]:
    """(keys, the scope's name for ``info``): the floating tensors of ``full`` in ``scope``,
    among ``candidates`` (default all of ``full``).

    A list or tuple of names keeps the caller's order and must name floating tensors among the
    candidates, each once; a set is taken in the candidates' order.
    """
    pool = {k: full[k] for k in (full if candidates is None else candidates) if torch.is_floating_point(full[k])}
    if isinstance(scope, (list, tuple)):
        names = list(scope)
        if not all(isinstance(n, str) for n in names):
            raise TypeError("a list scope holds parameter names (str); for vectors, pass them as the vectors")
        unknown = [n for n in names if n not in pool]
        if unknown:
            raise ValueError(f"scope names not among the floating parameters: {first_names(unknown)}")
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"scope names repeated: {first_names(dup)}")
        return names, f"{len(names)} named tensors"
    if isinstance(scope, (set, frozenset)):
        chosen = frozenset(scope)
        return scope_keys(pool, lambda k, _t: k in chosen), f"{len(chosen)} named tensors"
    name = scope if isinstance(scope, str) else getattr(scope, "__name__", "callable")
    return scope_keys(pool, scope), name


def _is_pair(b: Any) -> bool:
    return isinstance(b, (tuple, list)) and len(b) == 2 and all(isinstance(t, Tensor) for t in b)


def read_batches(batches: Any) -> list[Batch]:
    """The probe set as a list of (x, y): one ``(x, y)`` pair, or every batch of an iterable
    (iterated once). Raises ``TypeError`` for anything else, ``ValueError`` when it is empty."""
    if batches is None:
        raise TypeError("pass the probe set: one (x, y) batch or an iterable of (x, y) batches")
    if _is_pair(batches) and isinstance(batches, tuple):
        return [(batches[0], batches[1])]
    if isinstance(batches, Tensor) or not isinstance(batches, Iterable):
        raise TypeError(f"batches must be one (x, y) pair or an iterable of them, got {type(batches).__name__}")
    out = []
    for i, b in enumerate(batches):
        if not _is_pair(b):
            hint = "; for one batch pass the tuple (x, y)" if isinstance(b, Tensor) else ""
            raise TypeError(f"batch {i} is not an (inputs, targets) pair of tensors (got {type(b).__name__}){hint}")
        out.append((b[0], b[1]))
    if not out:
        raise ValueError("the probe set is empty")
    return out


def cast_batch(x: Tensor, y: Tensor, device: torch.device, dtype: torch.dtype) -> Batch:
    """(x, y) on ``device``; floating inputs and targets in ``dtype``, integer ones (token ids,
    class indices) as they are."""
    x = x.to(device, dtype) if torch.is_floating_point(x) else x.to(device)
    y = y.to(device, dtype) if torch.is_floating_point(y) else y.to(device)
    return x, y


__all__ = ["ALIASES", "OPERATOR_KEYWORDS", "cast_batch", "named_params", "read_batches", "refuse_keywords",
           "scoped_keys"]

"""One interface for every post-training quantizer: RTN, GPTQ and AWQ.

    quantize(method, params, spec, *, model=None, batches=None, scope="quantized", **options)
        -> QuantizedParams(params, layers)

* ``rtn`` — :func:`qgeom.quant.ptq`; needs no data. ``model`` and ``batches`` (both or neither)
  only let it report layer-output errors.
* ``gptq`` — :func:`qgeom.gptq.gptq` (options ``block_size``, ``damp``, ``act_order``).
* ``awq`` — :func:`qgeom.awq.awq` (options ``alphas``, ``sequential``); weights returned in the
  original coordinates (effective weights Q(W diag s) diag(s)⁻¹), so θ_AWQ − θ is a vector in the
  same space as a QAT vector.

Every method quantizes onto the grid of ``spec`` — the paper's per-row symmetric grid by default —
so that comparisons differ only in the method (GPTQ accepts only that grid).

``layers``: one record per quantized tensor: ``name`` (the weight's key), ``method``,
``rel_error`` and ``error`` (``"output"`` or ``"weight"``) saying which error it is. For a Linear
weight, where calibration inputs exist (``model`` and ``batches`` given), it is the
relative layer-output error on them, ‖(Ŵ − W)X‖_F / ‖W X‖_F, with X the layer's inputs in the
*quantized* model (every earlier layer quantized: the inputs sequential calibration used, since a
layer's input depends only on the layers before it); otherwise (and for any tensor in ``scope``
that is not a Linear weight) the relative weight error ‖Ŵ − W‖_F / ‖W‖_F. Method-specific fields
follow (GPTQ: ``damp``, ``rows``; AWQ: ``alpha``, ``foldable``, ``rows``).

Activation quantization is not an argument here (a choice): it acts on the inputs at evaluation,
through :func:`qgeom.activations.quantized_inputs` with ranges calibrated on the model that carries
the quantized weights, so it composes with whichever method produced ``params``; a ``quantize``
that took ``act_spec`` would have to return something other than parameters.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from qgeom.awq import awq
from qgeom.calibration import layer_hessians, linear_layers, output_error
from qgeom.gptq import gptq
from qgeom.params import Params, Scope, in_scope
from qgeom.quant import QuantSpec, ptq
from qgeom.vocabulary import QUANTIZERS

Method = Literal["rtn", "gptq", "awq"]
METHODS: tuple[str, ...] = QUANTIZERS  # (rtn, gptq, awq): the names configs and the CLI share
_CALIBRATED = {"gptq": gptq, "awq": awq}
_KEPT = {"gptq": ("damp", "rows"), "awq": ("alpha", "foldable", "rows")}  # per-layer fields passed on


@dataclass(frozen=True)
class QuantizedParams:
    """The quantized parameters (a new dict; tensors out of scope shared with the input) and one
    statistics record per quantized tensor (see the module docstring)."""

    params: Params
    layers: list[dict]


def method_options(method: str) -> tuple[str, ...]:
    """The ``**options`` that ``method`` takes (its keyword-only parameters other than ``scope``)."""
    check_method(method)
    if method == "rtn":
        return ()
    sig = inspect.signature(_CALIBRATED[method])
    return tuple(n for n, p in sig.parameters.items() if p.kind is p.KEYWORD_ONLY and n != "scope")


def check_method(method: str) -> None:
    """Raise ``ValueError`` unless ``method`` is one of :data:`METHODS`."""
    if method not in METHODS:
        raise ValueError(f"unknown quantization method {method!r}; choose one of {', '.join(METHODS)}")


def _check_inputs(method: str, model: nn.Module | None, batches, options: Mapping) -> None:
    unknown = sorted(set(options) - set(method_options(method)))
    if unknown:
        allowed = ", ".join(method_options(method)) or "none"
        raise ValueError(f"{method} takes no option {', '.join(unknown)}; its options: {allowed}")
    if method == "rtn":
        if (model is None) != (batches is None):
            raise ValueError("rtn: pass both model= and batches= (to report layer-output errors on them) or neither "
                             "(to report weight errors)")
    elif model is None or batches is None:
        what = {"model=": "model= (the nn.Module the params belong to)",
                "batches=": "batches= (calibration (x, y) batches: the receiver's data)"}
        missing = [what[n] for n, v in (("model=", model), ("batches=", batches)) if v is None]
        raise ValueError(f"{method} calibrates on data: pass {' and '.join(missing)}")


def quantize(method: Method, params: Mapping[str, Tensor], spec: QuantSpec, *, model: nn.Module | None = None,
             batches: Iterable[tuple[Tensor, Tensor]] | None = None, scope: Scope = "quantized",
             **options) -> QuantizedParams:
    """Quantize the tensors of ``params`` in ``scope`` with ``method`` onto the grid of ``spec``.

    ``model`` and ``batches`` (calibration (x, y) batches) are required by ``gptq`` and ``awq``;
    ``options`` go to the method (:func:`method_options`). The input is never mutated."""
    check_method(method)
    _check_inputs(method, model, batches, options)
    batches = None if batches is None else list(batches)
    if method == "rtn":
        quantized, extra = ptq(params, spec, scope), {}
    else:
        quantized, stats = _CALIBRATED[method](model, params, batches, spec, scope=scope, **options)
        extra = {f"{s['layer']}.weight": {k: s[k] for k in _KEPT[method]} for s in stats}
    names = [k for k, v in params.items() if in_scope(k, v, scope)]
    errors = {k: (_weight_error(params[k], quantized[k]), "weight") for k in names}
    if model is not None:
        outputs = _output_errors(model, params, quantized, batches, names)
        errors.update({k: (e, "output") for k, e in outputs.items()})
    layers = [dict(name=k, method=method, rel_error=e, error=kind, **extra.get(k, {}))
              for k, (e, kind) in errors.items()]
    return QuantizedParams(quantized, layers)


def _weight_error(w: Tensor, q: Tensor) -> float:
    """‖Ŵ − W‖_F / ‖W‖_F (float64; 0 for a zero W quantized to zero)."""
    return float((q.double() - w.double()).norm() / w.double().norm().clamp_min(1e-300))


def _output_errors(model: nn.Module, params: Mapping[str, Tensor], quantized: Mapping[str, Tensor],
                   batches: list, names: list[str]) -> dict[str, float]:
    """‖(Ŵ − W)X‖_F / ‖W X‖_F per Linear weight in ``names``, X its inputs in the quantized model."""
    layers = linear_layers(model, names)
    hessians = layer_hessians(model, quantized, layers, batches)
    out = {}
    for layer in layers:
        w, h = params[f"{layer}.weight"], hessians[layer]
        signal = output_error(w, torch.zeros_like(w), h)
        out[f"{layer}.weight"] = (output_error(w, quantized[f"{layer}.weight"], h) / max(signal, 1e-300)) ** 0.5
    return out

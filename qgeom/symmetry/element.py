"""The symmetry element: a :class:`Symmetry` value acting on points, tangents and covectors.

g applies its ``actions`` (tensor name, axis, :class:`~qgeom.symmetry.operators.AxisOp`) in
order; it composes, inverts and transposes exactly, and computes from its matrices which levels
it should satisfy (:meth:`Symmetry.expectations`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from qgeom.params import IncompatibleParamsError, Params, in_scope
from qgeom.quant import QuantSpec
from qgeom.symmetry.operators import Action, AxisClass, AxisOp, classify

EXPECTED_LEVELS = ("function", "quantizer", "optimizer_sgd", "optimizer_adamw", "pipeline", "euclidean",
                   "layer_metric")  # keys of Symmetry.expectations()


@dataclass(frozen=True, eq=False)
class Symmetry:
    """A symmetry element g: ``actions`` applied in order, each (tensor name, axis, operator).

    Three actions, named by what they move: :meth:`act_point` (θ ↦ gθ; also ``g(θ)``),
    :meth:`act_tangent` (v ↦ J v = g v) and :meth:`act_covector` (c ↦ J⁻ᵀ c = g⁻ᵀ c), with J the
    Jacobian of θ ↦ gθ; :meth:`apply_to` returns a transformed copy of an ``nn.Module``.

    ``shapes`` records the shape of every touched tensor, so a dict of the wrong model is
    refused instead of being silently half-transformed. ``kind`` names the element.
    """

    kind: str
    actions: tuple[Action, ...] = ()
    shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)

    def __call__(self, params: Mapping[str, Tensor]) -> Params:
        """g θ: the action on a point (:meth:`act_point`). Untouched tensors are shared, not copied."""
        return self._act(params, self.actions, "g(params)")

    def act_point(self, theta: Mapping[str, Tensor]) -> Params:
        """θ ↦ g θ on a point of parameter space (a parameter dict). g is linear, so this is the
        same map as :meth:`act_tangent`; the two names say which kind of object is moved."""
        return self._act(theta, self.actions, "g.act_point(theta)")

    def act_tangent(self, v: Mapping[str, Tensor]) -> Params:
        """v ↦ J v for a tangent vector v at θ (a displacement: ρ = θ_QAT − θ, a task vector, a
        Ritz vector), with J = ∂(gθ)/∂θ the Jacobian of the point action. g is linear, so J = g and
        v ↦ g v: transported like a difference of two points, g(θ + v) − g(θ) = g v. Pairs with
        :meth:`act_covector`: ⟨act_covector(c), act_tangent(v)⟩ = ⟨c, v⟩."""
        return self._act(v, self.actions, "g.act_tangent(v)")

    def act_covector(self, c: Mapping[str, Tensor]) -> Params:
        """c ↦ J⁻ᵀ c for a covector c at θ (a gradient ∇L(θ), a product M(θ)·v), J = g as in
        :meth:`act_tangent`: ∇L(gθ) = g⁻ᵀ ∇L(θ) for any L with L(gθ) = L(θ), and
        ⟨g⁻ᵀ c, g v⟩ = ⟨c, v⟩. Equal to :meth:`act_tangent` only for orthogonal g (g⁻ᵀ = g)."""
        return self._act(c, tuple((n, a, op.inverse().transpose()) for n, a, op in self.actions),
                         "g.act_covector(c)")

    act = act_point  # the historical name

    def apply_to(self, module: nn.Module) -> nn.Module:
        """A deep copy of ``module`` with its parameters (and floating buffers) replaced by g θ;
        ``module`` itself is left unchanged. The map is applied in float64 and the result cast
        back to each tensor's dtype. Every tensor g touches must exist with the shape g was built
        for (:class:`~qgeom.params.IncompatibleParamsError` otherwise)."""
        if not isinstance(module, nn.Module):
            raise TypeError(f"apply_to takes an nn.Module, got {type(module).__name__}; for a parameter dict use g(params)")
        out = copy.deepcopy(module)
        state = out.state_dict()
        missing = [n for n in self.touched if n not in state]
        if missing:
            raise IncompatibleParamsError(
                f"symmetry {self.kind!r} acts on tensors this module lacks: {', '.join(missing[:5])}; "
                "build the element on this module (e.g. qgeom.random_symmetry(module, kind))")
        moved = self.act_point({n: state[n].detach().double() for n in self.touched})
        with torch.no_grad():
            for n, t in moved.items():
                state[n].copy_(t.to(state[n].dtype))
        return out

    def __repr__(self) -> str:
        return f"Symmetry({self.kind!r}, {len(self.actions)} axis maps on {len(self.touched)} tensors)"

    def _repr_pretty_(self, printer, cycle: bool) -> None:
        """The short repr in IPython and in hypothesis' falsifying examples (not every matrix)."""
        printer.text(repr(self))

    def inverse(self) -> "Symmetry":
        """g⁻¹ (exact for permutations and monomial maps)."""
        return Symmetry(f"({self.kind})⁻¹", tuple((n, a, op.inverse()) for n, a, op in reversed(self.actions)), self.shapes)

    def transpose(self) -> "Symmetry":
        """gᵀ, the adjoint for the Euclidean inner product: ⟨gᵀ c, v⟩ = ⟨c, g v⟩."""
        return Symmetry(f"({self.kind})ᵀ", tuple((n, a, op.transpose()) for n, a, op in reversed(self.actions)), self.shapes)

    def __matmul__(self, other: "Symmetry") -> "Symmetry":
        """(g @ h) θ = g(h(θ))."""
        return Symmetry(f"{self.kind}∘{other.kind}", other.actions + self.actions, {**other.shapes, **self.shapes})

    @property
    def touched(self) -> list[str]:
        return list(dict.fromkeys(n for n, _, _ in self.actions))

    def _act(self, params: Mapping[str, Tensor], actions: tuple[Action, ...], how: str) -> Params:
        if isinstance(params, nn.Module):
            raise TypeError(f"{how} takes a parameter dict, got the module {type(params).__name__}; for a "
                            "transformed copy of a module use g.apply_to(model), or pass qgeom.from_model(model)")
        if not isinstance(params, Mapping):
            raise TypeError(f"{how} takes a parameter dict (name → tensor), got {type(params).__name__}; "
                            "for a flat vector use qgeom.unflatten(vec, like) first")
        out = dict(params)
        for name, axis, op in actions:
            if name not in out:
                continue  # a missing tensor is a zero component: it stays zero
            t = out[name]
            if tuple(t.shape) != tuple(self.shapes[name]):
                raise IncompatibleParamsError(
                    f"symmetry {self.kind!r} was built for {name} of shape {tuple(self.shapes[name])}, got {tuple(t.shape)}")
            out[name] = op.apply(t, axis)
        return out

    # ---------------- what g is, and which levels it should satisfy ----------------

    def axis_classes(self) -> dict[str, dict[int, AxisClass]]:
        """For every touched tensor and each of its axes: the class of the composed axis map."""
        ops: dict[tuple[str, int], list[AxisOp]] = {}
        for name, axis, op in self.actions:
            ops.setdefault((name, axis), []).append(op)
        return {n: {a: classify(ops.get((n, a), []), s) for a, s in enumerate(self.shapes[n])} for n in self.touched}

    def condition_number(self) -> float:
        """max over tensors of Π_axes cond(M_axis): roundoff amplification of g."""
        return max((math.prod(c.cond for c in cls.values()) for cls in self.axis_classes().values()), default=1.0)

    def is_orthogonal(self) -> bool:
        """gᵀ g = I: each tensor's map ⊗_a M_a with M_a = α_a O_a and Π α_a = 1."""
        return all(_orthogonal(cls) for cls in self.axis_classes().values())

    def is_signed_permutation(self) -> bool:
        """g maps each coordinate to ± another coordinate (commutes with elementwise optimizers)."""
        return all(_orthogonal(cls) and all(c.monomial is not None for c in cls.values()) for cls in self.axis_classes().values())

    def quantizer_equivariant(self, spec: QuantSpec | None = None) -> bool:
        """Whether Q_b(gθ) = g Q_b(θ) for every θ, decided from the matrices on quantized tensors.

        Per-row grids: rows may be mapped by any monomial matrix, columns by a scalar × signed
        permutation (it keeps each row's absmax ratio). Sign flips are fine for the asymmetric
        min/max grid too: its range always contains 0, so Q(−w) = −Q(w) (zero point q_max − zp).
        Per-tensor grids: both axes scalar × signed permutation. Per-group: columns must also map
        groups onto groups.
        """
        spec = spec or QuantSpec()
        for name, cls in self.axis_classes().items():
            if in_scope(name, torch.empty(self.shapes[name]), "quantized") and not _quantizer_ok(cls[0], cls[1], spec):
                return False
        return True

    def preserves_layer_metric(self, per_layer: bool = False) -> bool:
        """Whether GPTQ's layer metric is invariant, ⟨gu, gv⟩_layer(gθ) = ⟨u, v⟩_layer(θ)
        (:mod:`qgeom.curvature.layer`), decided from the row maps of the quantized weights.

        A function-level g maps a Linear weight W ↦ R W Cᵀ (rows by R, columns by C) while its
        inputs go x ↦ C⁻ᵀx (so W x ↦ R W x): in every kind of the catalogue the column map of a
        layer is undone by its inputs — head permutations and value/output mixing (proj), MLP
        permutations (fc2), LayerNorm folding (qkv, fc1), residual permutations (qkv, fc1) — and
        a layer whose weight g leaves alone keeps its inputs. Then H_ℓ ↦ C⁻ᵀH_ℓC⁻¹ and
        tr(U'H'V'ᵀ) = tr(U H Vᵀ RᵀR): the forms are invariant iff RᵀR = I on every quantized
        weight (True for permutations, orthogonal q/k or v/o mixing and LayerNorm folding; False
        for GL, diagonal or scalar q/k and v/o mixing and LayerScale folding, whose row maps are
        not orthogonal). ``per_layer``: R = c·O (a scalar times an orthogonal map) suffices for each
        layer's own cosine and λ*, whose forms all scale by c²."""
        for name, cls in self.axis_classes().items():
            if not in_scope(name, torch.empty(self.shapes[name]), "quantized"):
                continue
            a = cls[0].ortho_scale
            if a is None or (not per_layer and abs(abs(a) - 1.0) > 1e-9):
                return False
        return True

    def expectations(self, spec: QuantSpec | None = None) -> dict[str, bool]:
        """Which levels g should satisfy: function (always, by construction), quantizer, one
        SGD step (orthogonal g), one AdamW step (signed permutations), the QAT pipeline (signed
        permutation and quantizer), the Euclidean cosine (orthogonal g), GPTQ's layer metric
        (:meth:`preserves_layer_metric`)."""
        q, o, sp = self.quantizer_equivariant(spec), self.is_orthogonal(), self.is_signed_permutation()
        return {"function": True, "quantizer": q, "optimizer_sgd": o, "optimizer_adamw": sp,
                "pipeline": sp and q, "euclidean": o, "layer_metric": self.preserves_layer_metric()}


def identity() -> Symmetry:
    return Symmetry("identity")


def compose(*gs: Symmetry) -> Symmetry:
    """g_1 ∘ g_2 ∘ … ∘ g_k (g_k applied first)."""
    out = gs[0]
    for g in gs[1:]:
        out = out @ g
    return out


def _orthogonal(cls: dict[int, AxisClass], rtol: float = 1e-9) -> bool:
    scales = [c.ortho_scale for c in cls.values()]
    return all(s is not None for s in scales) and abs(math.prod(scales) - 1.0) <= rtol


def _quantizer_ok(rows: AxisClass, cols: AxisClass, spec: QuantSpec) -> bool:
    if rows.monomial is None or cols.monomial is None or cols.ortho_scale is None:
        return False
    if spec.granularity == "tensor":
        return rows.ortho_scale is not None
    if spec.granularity == "group":
        groups = (cols.monomial[0] // spec.group_size).reshape(-1, spec.group_size)
        return bool((groups == groups[:, :1]).all())
    return True

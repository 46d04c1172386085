"""Run every symbolic check in ``proofs/`` and every "must fail" perturbation.

Each ``check_0N_*.py`` exposes ``CHECKS`` (plain functions raising AssertionError when
the algebra fails). The perturbation tests inject one broken identity per case (a dropped
inverse-transpose, g instead of g^-T, a flipped sign, a wrong constant ...) and require
the corresponding check to raise: a check that cannot fail proves nothing.
"""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import sympy as sp

PROOFS = Path(__file__).resolve().parent
if str(PROOFS) not in sys.path:
    sys.path.insert(0, str(PROOFS))

MODULES = [
    "check_01_optimal_scale",
    "check_02_second_order",
    "check_03_covariance",
    "check_04_vit_symmetries",
    "check_05_quantizer",
    "check_06_optimizer_pipeline",
    "check_07_surrogate_term",
]


def _load(name: str) -> ModuleType:
    return importlib.import_module(name)


ALL_CHECKS = [(name, check.__name__) for name in MODULES for check in _load(name).CHECKS]


@pytest.mark.parametrize(("module", "check"), ALL_CHECKS, ids=[f"{m}:{c}" for m, c in ALL_CHECKS])
def test_check_passes(module: str, check: str) -> None:
    """Every stated identity holds."""
    line = getattr(_load(module), check)()
    assert isinstance(line, str) and line


def _m(name: str) -> ModuleType:
    return _load(name)


c1, c2, c3, c4, c5, c6, c7 = (_m(n) for n in MODULES)

# (id, check, keyword arguments that break exactly one identity)
PERTURBATIONS: list[tuple[str, Callable[..., str], dict[str, Any]]] = [
    # 1. optimal scale
    ("01 non-symmetric metric", c1.check_quadratic_expansion, {"symmetric": False}),
    ("01 lam* = b/c", c1.check_optimal_scale, {"lam_star": lambda a, b, c: b / c}),
    ("01 lam* = -b/a (sign flip)", c1.check_optimal_scale, {"lam_star": lambda a, b, c: -b / a}),
    ("01 fraction = cos (not cos^2)", c1.check_recovered_fraction,
     {"fraction": lambda a, b, c: b / sp.sqrt(a * c)}),
    ("01 equality case with fraction = cos", c1.check_equality_and_sign,
     {"fraction": lambda a, b, c: b / sp.sqrt(a * c)}),
    ("01 counterexamples with a constant fraction", c1.check_counterexamples,
     {"fraction": lambda a, b, c: sp.Rational(1, 2)}),
    # 2. second order
    ("02 Delta = lam* rho_D", c2.check_cubic_bound, {"delta_rule": lambda lam, u, v: lam * u}),
    ("02 not stationary", c2.check_cubic_bound, {"stationary": False}),
    ("02 constant 1/8", c2.check_taylor_remainder, {"const": sp.Rational(1, 8)}),
    ("02 Prop. 2 constant 1/8", c2.check_proposition_constant, {"const": sp.Rational(1, 8)}),
    ("02' constant 1/8", c2.check_prop2prime_bound, {"const": 1 / 8}),
    ("02' gradient term dropped", c2.check_prop2prime_bound, {"gradient": False}),
    ("02' curvature term dropped", c2.check_prop2prime_bound, {"curvature": False}),
    ("02' identity without the gradient term", c2.check_prop2prime_identity, {"gradient": False}),
    ("02' identity without the curvature term", c2.check_prop2prime_identity, {"curvature": False}),
    ("02' softplus maximum 1/12", c2.check_softplus_certificate, {"claimed": sp.Rational(1, 12)}),
    ("02'' ||lam* rho_D||_M in place of ||Delta||_M", c2.check_metric_norm_of_delta,
     {"delta_rule": lambda lam, u, v: lam * u}),
    ("02'' step transported as a covector", c2.check_metric_lipschitz_is_gauge_invariant,
     {"tangent": lambda g, gi, y: gi.T * y}),
    ("02'' constant 1/8", c2.check_prop2second_bound, {"const": 1 / 8}),
    ("02'' T(p) term dropped", c2.check_prop2second_bound, {"sqrt_term": False}),
    ("02'' L_M from the Euclidean constant", c2.check_prop2second_bound, {"euclidean_L": True}),
    # 3. covariance
    ("03 gradient as a vector (g, not g^-T)", c3.check_gradient_covariance,
     {"rule": lambda g, gi, x: g * x}),
    ("03 Hessian g^T H g", c3.check_hessian_covariance, {"rule": lambda g, gi, m: g.T * m * g}),
    ("03 Hessian without the transpose", c3.check_hessian_covariance,
     {"rule": lambda g, gi, m: gi * m * gi}),
    ("03 GGN g^-1 G g^-T", c3.check_ggn_covariance, {"rule": lambda g, gi, m: gi * m * gi.T}),
    ("03 Fisher g^T F g", c3.check_fisher_covariance, {"rule": lambda g, gi, m: g.T * m * g}),
    ("03 rho as a covector", c3.check_metric_invariants, {"tangent": lambda g, gi, u: gi.T * u}),
    ("03 covector transport under a non-conformal g", c3.check_covector_transport_needs_conformal,
     {"g": sp.diag(2, 1)}),
    # 4. ViT symmetries
    ("04 keys by A (no inverse-transpose)", c4.check_qk_mixing, {"key_rule": lambda a, ai, w: a * w}),
    ("04 keys by A^-1 (no transpose)", c4.check_qk_mixing, {"key_rule": lambda a, ai, w: ai * w}),
    ("04 proj by B^T", c4.check_vo_mixing, {"out_rule": lambda b, bi, w: w * b.T}),
    ("04 head perm without proj", c4.check_head_permutation, {"permute_proj": False}),
    ("04 LN folding with s, not 1/s", c4.check_layernorm_gain_folding, {"col_rule": lambda s: s}),
    ("04 LayerScale rows by s", c4.check_layerscale_folding, {"row_rule": lambda s: s}),
    ("04 MLP perm without fc2", c4.check_mlp_hidden_permutation, {"permute_fc2": False}),
    ("04 stream perm without LN gain", c4.check_residual_permutation, {"permute_gain": False}),
    ("04 stream sign flip keeps gain", c4.check_residual_sign_flip, {"negate_gain": False}),
    ("04 odd activation (tanh)", c4.check_mlp_sign_flip_fails, {"activation": sp.tanh}),
    ("04 q/k norm family at d_head = 3", c4.check_qk_norm_continuous_family, {"d": 3}),
    # 5. quantizer
    ("05 round half up is not odd", c5.check_rounding_is_odd, {"rounder": c5.round_half_up}),
    ("05 sign flips with round half up", c5.check_sign_flips, {"rounder": c5.round_half_up}),
    ("05 sign flips with torch.ao scale", c5.check_sign_flips, {"scale": c5.torchao_scale}),
    ("05 clamp reached with torch.ao scale", c5.check_clamp_inactive, {"scale": c5.torchao_scale}),
    ("05 per-tensor scale vs row scaling", c5.check_positive_row_scaling,
     {"quantizer": c5.per_tensor_quantize}),
    ("05 no rounding: no counterexample", c5.check_column_scaling_counterexample,
     {"quantizer": c5.identity_quantize}),
    ("05 converse witness (1, 1)", c5.check_column_converse_witness,
     {"witness": lambda qmax: [c5.Fraction(1), c5.Fraction(1)]}),
    # 5. the level-2 table on qgeom.symmetry elements: one must-fail twin per row
    *[(f"05 level-2 row negated: {row}", c5.check_catalogue_elements, {"flip": row}) for row in c5.LEVEL2_TABLE],
    # 6. optimizer and pipeline
    ("06 continuous rescaling", c6.check_adamw_signed_permutation, {"extra": [sp.diag(2, 1, 1)]}),
    ("06 eps = 0, gradient not transformed", c6.check_adamw_diagonal_forces_unit,
     {"eps_positive": False, "grad_rule": lambda x, d: x}),
    ("06 even update |m|", c6.check_adamw_signed_permutation,
     {"update": lambda m, v, e, lr: lr * sp.Abs(m) / (sp.sqrt(v) + e)}),
    ("06 gradient not transformed", c6.check_adamw_diagonal_forces_unit,
     {"grad_rule": lambda x, d: x}),
    ("06 pipeline with an even AdamW update", c6.check_toy_pipeline, {"odd": False}),
    ("06' Noether lemma on two-entry supports", c6.check_noether_constrained_gradients, {"support": 2}),
    # 7. the surrogate term
    ("07 identity without R_sur D(rho_R)", c7.check_surrogate_identity, {"with_receiver_point": False}),
    ("07 error bound from the evaluated point only", c7.check_entrywise_error_bound, {"own_point_only": True}),
    ("07 first-order remainder with constant 1/4", c7.check_first_order_remainder, {"const": 0.25}),
]


#: the reason a must-fail case must fail for (a regex on the AssertionError's message): a
#: perturbation that fails somewhere else (a crash in setup, another identity) does not count.
REASONS: dict[str, str] = {
    "02 Delta = lam* rho_D": "cubic bound violated",
    "02 not stationary": "cubic bound violated",
    "01 equality case with fraction = cos": "equality case",
    "02 constant 1/8": "extremal cubic violates the Lemma",
    "02 Prop. 2 constant 1/8": "Proposition 2 with constant 1/8 is violated",
    "02' constant 1/8": "violate Proposition 2'",
    "02' gradient term dropped": "random instances violate Proposition 2'",
    "02' curvature term dropped": "random instances violate Proposition 2'",
    "02' identity without the gradient term": "Proposition 2' identity",
    "02' identity without the curvature term": "Proposition 2' identity",
    "02' softplus maximum 1/12": "claimed 1/12",
    "02'' ||lam* rho_D||_M in place of ||Delta||_M": "c \\(1 - kappa\\)",
    "02'' step transported as a covector": "Hessian variation invariant",
    "02'' constant 1/8": "complex cubic violates Proposition 2''",
    "02'' T(p) term dropped": "complex cubic violates Proposition 2''",
    "02'' L_M from the Euclidean constant": "random instances violate Proposition 2''",
    "03 covector transport under a non-conformal g": "scales every form by k\\^-4",
    "04 q/k norm family at d_head = 3": "d = 3: no gain gamma' lifts",
    "05 converse witness (1, 1)": "does not separate b = 3",
    "07 identity without R_sur D(rho_R)": "surrogate identity",
    "07 error bound from the evaluated point only": "entrywise bound violated",
    "07 first-order remainder with constant 1/4": "violate the first-order remainder bound",
    "06' Noether lemma on two-entry supports": "span rank 2 < 3",
    "06 continuous rescaling": "theta equivariance for \\[\\[2",
    "06 even update |m|": "theta equivariance",
    "06 gradient not transformed": "solutions for d",
    "06 eps = 0, gradient not transformed": "solutions for d",
    "06 pipeline with an even AdamW update": "signed permutation: pipeline must be equivariant",
    **{f"05 level-2 row negated: {row}": f"level-2 table row '{re.escape(row)}'" for row in c5.LEVEL2_TABLE},
}


@pytest.mark.parametrize(("case", "check", "kwargs"), PERTURBATIONS,
                         ids=[p[0] for p in PERTURBATIONS])
def test_perturbation_is_detected(case: str, check: Callable[..., str],
                                  kwargs: dict[str, Any]) -> None:
    """A broken identity must make its check raise AssertionError (for the stated reason, where
    :data:`REASONS` names one)."""
    with pytest.raises(AssertionError, match=REASONS.get(case)):
        check(**kwargs)


def test_every_reason_names_a_perturbation() -> None:
    """REASONS is keyed by existing perturbation ids (a renamed case must not lose its reason)."""
    assert set(REASONS) <= {p[0] for p in PERTURBATIONS}


def test_every_module_has_a_perturbation() -> None:
    """Each check script is exercised by at least one must-fail case."""
    covered = {p[1].__module__ for p in PERTURBATIONS}
    assert covered == set(MODULES)


@pytest.mark.parametrize("module", MODULES[:2])
def test_script_entry_point(module: str) -> None:
    """``python proofs/check_0N_*.py`` runs and reports its checks (two cheap scripts)."""
    out = subprocess.run([sys.executable, str(PROOFS / f"{module}.py")],
                         capture_output=True, text=True, check=True, timeout=120)
    assert "checks passed" in out.stdout

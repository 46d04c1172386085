"""Symbolic checks for Proposition 1 (optimal scale and recovered fraction).

Notation (see ``01_optimal_scale.md``): M is a symmetric n x n metric, u = rho_D (donor
vector), v = rho_R (receiver vector), a = <u,u>_M, b = <u,v>_M, c = <v,v>_M,
q(lam) = 1/2 ||lam u - v||_M^2, and the local model g(delta) = g(rho_R) + 1/2 ||delta - rho_R||_M^2.

Identities that involve M are proved once as polynomial identities in a generic symmetric
3x3 M (``check_quadratic_expansion``); the rational algebra is then done in free symbols
(a, b, c), which is faster and more general.

Every ``check_*`` returns a one-line description and raises ``AssertionError`` if the
identity fails. Optional arguments inject a broken variant (used by ``test_proofs.py``).

Run ``python proofs/check_01_optimal_scale.py`` to print what is verified.
"""

from __future__ import annotations

from collections.abc import Callable

import sympy as sp

from _proofkit import (
    require,
    require_zero,
    run_checks,
    symbols_matrix,
    symbols_vector,
    symmetric_matrix,
)

N = 3  # dimension of the generic symbolic instance

ScaleRule = Callable[[sp.Expr, sp.Expr, sp.Expr], sp.Expr]


def _generic(symmetric: bool = True) -> tuple[sp.Matrix, sp.Matrix, sp.Matrix]:
    """A generic metric M (symmetric unless told otherwise) and vectors u, v in R^3."""
    m = symmetric_matrix("m", N) if symmetric else symbols_matrix("m", N, N)
    return m, symbols_vector("u", N), symbols_vector("v", N)


def _forms(m: sp.Matrix, u: sp.Matrix, v: sp.Matrix) -> tuple[sp.Expr, sp.Expr, sp.Expr]:
    """(a, b, c) = (<u,u>_M, <u,v>_M, <v,v>_M)."""
    return (u.T * m * u)[0], (u.T * m * v)[0], (v.T * m * v)[0]


# Abstract values of the three forms. Identities in M are proved once, as polynomial
# identities (check_quadratic_expansion); the rational algebra is then done in (a, b, c),
# which is both faster and more general.
A, B, C = sp.symbols("a b c", real=True)
LAM = sp.Symbol("lam", real=True)


def _q_abstract(lam: sp.Expr = LAM) -> sp.Expr:
    """q(lam) = 1/2 (a lam^2 - 2 b lam + c), valid by check_quadratic_expansion."""
    return sp.Rational(1, 2) * (A * lam**2 - 2 * B * lam + C)


def default_lam_star(a: sp.Expr, b: sp.Expr, c: sp.Expr) -> sp.Expr:
    """Proposition 1: lam* = <rho_D, rho_R>_M / <rho_D, rho_D>_M."""
    return b / a


def default_fraction(a: sp.Expr, b: sp.Expr, c: sp.Expr) -> sp.Expr:
    """Proposition 1: recovered fraction = cos_M^2 = b^2 / (a c)."""
    return b**2 / (a * c)


def check_quadratic_expansion(symmetric: bool = True) -> str:
    """Polynomial identities in a generic symmetric 3x3 M and generic u, v:

    1/2 ||lam u - v||_M^2 = 1/2 (a lam^2 - 2 b lam + c),
    g(0) - g(v) = c/2 and g(0) - g(lam u) = 1/2 (2 b lam - a lam^2) for
    g(d) = g0 + 1/2 ||d - v||_M^2.

    ``symmetric=False`` uses a non-symmetric M: then the linear coefficient is
    -(u^T M v + v^T M u)/2, not -b, and the check fails (M = M^T is needed).
    """
    m, u, v = _generic(symmetric)
    a, b, c = _forms(m, u, v)
    g0 = sp.Symbol("g0", real=True)

    def g(d: sp.Matrix) -> sp.Expr:
        w = d - v
        return g0 + sp.Rational(1, 2) * (w.T * m * w)[0]

    w = LAM * u - v
    q = sp.Rational(1, 2) * (w.T * m * w)[0]
    require_zero(q - sp.Rational(1, 2) * (a * LAM**2 - 2 * b * LAM + c), "expansion of q")
    zero = sp.zeros(N, 1)
    require_zero(g(zero) - g(v) - c / 2, "own gain = c/2")
    require_zero(g(zero) - g(LAM * u) - (2 * b * LAM - a * LAM**2) / 2, "gain along u")
    return "q(lam) = (a lam^2 - 2b lam + c)/2, own gain c/2, gain(lam u) = b lam - a lam^2/2"


def check_optimal_scale(lam_star: ScaleRule = default_lam_star) -> str:
    """q'(lam*) = 0, q'' = a and q(lam*) = (c - b^2/a)/2: lam* = b/a is the unique
    minimiser of q when a > 0."""
    q = _q_abstract()
    ls = lam_star(A, B, C)
    require_zero(sp.diff(q, LAM).subs(LAM, ls), "q'(lam*) must vanish")
    require_zero(sp.diff(q, LAM, 2) - A, "q'' must equal <u,u>_M")
    require_zero(q.subs(LAM, ls) - (C - B**2 / A) / 2, "q(lam*) = (c - b^2/a)/2")
    return "q'(b/a) = 0, q'' = a, q(b/a) = (c - b^2/a)/2"


def check_recovered_fraction(
    fraction: ScaleRule = default_fraction, lam_star: ScaleRule = default_lam_star
) -> str:
    """[g(0) - g(lam* u)] / [g(0) - g(v)] = b^2/(a c) = cos_M^2 (gains from the
    polynomial identities of check_quadratic_expansion)."""
    ls = lam_star(A, B, C)
    own_gain = C / 2
    patch_gain = (2 * B * ls - A * ls**2) / 2
    require_zero(patch_gain - B**2 / (2 * A), "patch gain = b^2/(2a)")
    require_zero(patch_gain / own_gain - fraction(A, B, C), "recovered fraction")
    return "gain(lam* rho_D) / gain(rho_R) = <u,v>_M^2 / (<u,u>_M <v,v>_M) = cos_M^2"


def check_cauchy_schwarz() -> str:
    """ac - b^2 = 2 a q(lam*) and, for M = L L^T, ac - b^2 = sum_{i<j} (x_i y_j - x_j y_i)^2.

    With x = L^T u, y = L^T v (any PSD M factors this way), the gap is a sum of squares,
    so cos_M^2 <= 1, with equality iff x and y are parallel, i.e. iff
    M (v - lam* u) = 0 (collinear when M is definite).
    """
    require_zero(A * C - B**2 - 2 * A * _q_abstract(B / A), "ac - b^2 = 2 a q(lam*)")
    x, y = symbols_vector("x", N), symbols_vector("y", N)
    lagrange = sum(
        (x[i] * y[j] - x[j] * y[i]) ** 2 for i in range(N) for j in range(i + 1, N)
    )
    require_zero(
        (x.T * x)[0] * (y.T * y)[0] - ((x.T * y)[0]) ** 2 - lagrange, "Lagrange identity"
    )
    _, u, v = _generic()
    lower = sp.Matrix(N, N, lambda i, j: sp.Symbol(f"l_{i + 1}{j + 1}") if j <= i else 0)
    xs, ys = lower.T * u, lower.T * v
    require_zero((u.T * lower * lower.T * v)[0] - (xs.T * ys)[0], "<u,v>_{LL^T} = x.y")
    return "ac - b^2 = a ||lam* u - v||_M^2 = sum of squares (Lagrange) for M = L L^T"


def check_equality_and_sign(fraction: ScaleRule = default_fraction) -> str:
    """Collinear v = mu u gives cos_M^2 = 1 and lam* = mu; and the equality case in general:
    a c (1 - fraction) = a ||v - lam* u||_M^2, computed from the matrix M (generic symmetric 3x3)
    and the residual vector v - lam* u -- an independent route to 1 - cos^2, which for
    M = L L^T vanishes iff L^T (v - lam* u) = 0 iff M (v - lam* u) = 0. ``fraction`` injects
    another formula for the recovered fraction."""
    m, u, v = _generic()
    a, b, c = _forms(m, u, v)
    resid_a = a * v - b * u  # a (v - lam* u): keeps the identity polynomial
    lhs = sp.cancel(A**2 * C * (1 - fraction(A, B, C)))  # a polynomial in a, b, c for the right formula
    require_zero(lhs.subs({A: a, B: b, C: c}) - (resid_a.T * m * resid_a)[0],
                 "equality case: a^2 c (1 - fraction) = ||a v - b u||_M^2")
    mu = sp.Symbol("mu", real=True)
    a, b, c = _forms(m, u, mu * u)
    require_zero(b - mu * a, "collinear => b = mu a")
    require_zero(c - mu**2 * a, "collinear => c = mu^2 a")
    require_zero(fraction(A, mu * A, mu**2 * A) - 1, "collinear => cos^2 = 1")
    require_zero(default_lam_star(A, mu * A, mu**2 * A) - mu, "collinear => lam* = mu")
    return "v = mu u => cos_M^2 = 1, lam* = mu; 1 - cos_M^2 = ||v - lam* u||_M^2 / c (equality iff M(v - lam* u) = 0)"


def check_counterexamples(fraction: ScaleRule = default_fraction) -> str:
    """The explicit counterexamples of the 'When it fails' section, exactly."""
    lam = sp.Symbol("lam", real=True)

    def q(m: sp.Matrix, u: sp.Matrix, v: sp.Matrix) -> sp.Expr:
        w = lam * u - v
        return sp.expand(sp.Rational(1, 2) * (w.T * m * w)[0])

    # (i) semidefinite, rho_D in ker M: q is constant, lam* = 0/0.
    m = sp.diag(1, 0)
    u, v = sp.Matrix([0, 1]), sp.Matrix([1, 1])
    a, b, c = _forms(m, u, v)
    require(a == 0 and b == 0 and c == 1, "kernel example forms")
    require(sp.diff(q(m, u, v), lam) == 0, "q must be constant when M u = 0")
    # (ii) semidefinite, not in the kernel: cos^2 = 1 without collinearity.
    u, v = sp.Matrix([1, 0]), sp.Matrix([1, 1])
    a, b, c = _forms(m, u, v)
    require(fraction(a, b, c) == 1 and u[0] * v[1] - u[1] * v[0] != 0, "PSD equality case")
    # (iii) indefinite, a < 0: q is unbounded below, lam* = b/a is a maximiser.
    m = sp.diag(1, -1)
    u, v = sp.Matrix([1, 2]), sp.Matrix([1, 0])
    a, b, c = _forms(m, u, v)
    require(a == -3 and sp.limit(q(m, u, v), lam, sp.oo) == -sp.oo, "indefinite: no minimum")
    require(sp.diff(q(m, u, v), lam, 2) < 0, "lam* is a maximum when a < 0")
    # (iv) indefinite, a, c > 0 but b^2 > ac: 'fraction' 25/9 > 1.
    u, v = sp.Matrix([2, 1]), sp.Matrix([2, -1])
    a, b, c = _forms(m, u, v)
    require((a, b, c) == (3, 5, 3), "indefinite forms")
    require(fraction(a, b, c) == sp.Rational(25, 9), "fraction exceeds 1 when M indefinite")
    # (v) indefinite with c < 0: cos_M has no real value.
    u, v = sp.Matrix([1, 0]), sp.Matrix([0, 1])
    a, b, c = _forms(m, u, v)
    require(a == 1 and c == -1 and not sp.sqrt(a * c).is_real, "cos_M undefined for c < 0")
    return "counterexamples: M u = 0 (q constant), PSD cos^2=1 non-collinear, a<0, 25/9>1, c<0"


CHECKS = [
    check_quadratic_expansion,
    check_optimal_scale,
    check_recovered_fraction,
    check_cauchy_schwarz,
    check_equality_and_sign,
    check_counterexamples,
]


def main() -> None:
    """Run every check of Proposition 1 and print what was verified."""
    run_checks("Proposition 1 (optimal scale, recovered fraction):", CHECKS)


if __name__ == "__main__":
    main()

"""Symbolic checks for Proposition 2 (second-order bookkeeping with a cubic remainder).

Setting (see ``02_second_order.md``): g(delta) = L_R,STE(theta_R + delta), expanded at the
receiver's QAT point rho_R, assumed stationary (grad g(rho_R) = 0), M = Hess g(rho_R) PSD,
Hessian L-Lipschitz in the operator norm induced by the Euclidean norm. With
u = rho_D, v = rho_R, lam* = <u,v>_M/<u,u>_M, p = lam* u, Delta = p - v:

    | [g(0) - g(p)] - cos_M^2 [g(0) - g(v)] |  <=  (L/6) ( ||v||^3 + ||Delta||^3 ).

Every ``check_*`` returns a one-line description and raises ``AssertionError`` if the
identity fails; optional arguments inject a broken variant (used by ``test_proofs.py``).
Run ``python proofs/check_02_second_order.py`` to print what is verified.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import sympy as sp

from _proofkit import require, require_zero, run_checks, symbols_vector

Vec = sp.Matrix | np.ndarray
DeltaRule = Callable[[sp.Expr | float, Vec, Vec], Vec]


def default_delta(lam_star: sp.Expr | float, u: Vec, v: Vec) -> Vec:
    """Delta = lam* rho_D - rho_R: the patched point minus the expansion point
    (works on sympy matrices and numpy arrays alike)."""
    return lam_star * u - v


def check_remainder_decomposition() -> str:
    """For any values g(0), g(v), g(p) (p = lam* u) and E(x) = g(x) - g(v) - 1/2||x - v||_M^2:

    [g(0) - g(p)] - cos^2 [g(0) - g(v)] = (1 - cos^2) E(0) - E(p),

    with ||0 - v||_M^2 = c and ||p - v||_M^2 = c - b^2/a (Proposition 1). In particular the
    quadratic model (E = 0) gives gain(p) = cos_M^2 gain(v) exactly.
    """
    a, b, c = sp.symbols("a b c", real=True)
    g0, gv, gp = sp.symbols("g0 gv gp", real=True)
    cos2 = b**2 / (a * c)
    e0 = g0 - gv - c / 2
    ep = gp - gv - (c - b**2 / a) / 2
    require_zero((g0 - gp) - cos2 * (g0 - gv) - ((1 - cos2) * e0 - ep), "decomposition")
    quad = {g0: gv + c / 2, gp: gv + (c - b**2 / a) / 2}
    require_zero(((g0 - gp) - cos2 * (g0 - gv)).subs(quad), "quadratic model is exact")
    return "gain(p) - cos^2 gain(v) = (1 - cos^2) E(0) - E(p); = 0 for the quadratic model"


def check_taylor_remainder(const: sp.Rational = sp.Rational(1, 6)) -> str:
    """Integral form of the second-order Taylor remainder and its constant, on a generic
    cubic polynomial in two variables (10 symbolic coefficients):

    g(x+y) - g(x) - grad g(x).y - 1/2 y^T H(x) y = int_0^1 (1-t) y^T (H(x+ty) - H(x)) y dt,

    int_0^1 (1-t) t dt = 1/6, and the bound (L/6)||y||^3 is attained by
    g(y) = (L/6)(w.y)^3, ||w|| = 1, y = s w. ``const`` injects a different constant.
    """
    x = symbols_vector("x", 2)
    y = symbols_vector("y", 2)
    t = sp.Symbol("t", real=True)
    coeffs = sp.symbols("k0:10", real=True)
    monos = [1, x[0], x[1], x[0] ** 2, x[0] * x[1], x[1] ** 2,
             x[0] ** 3, x[0] ** 2 * x[1], x[0] * x[1] ** 2, x[1] ** 3]
    g = sum(k * mono for k, mono in zip(coeffs, monos))
    grad = sp.Matrix([sp.diff(g, xi) for xi in x])
    hess = sp.hessian(g, list(x))
    shift = {x[0]: x[0] + y[0], x[1]: x[1] + y[1]}
    shift_t = {x[0]: x[0] + t * y[0], x[1]: x[1] + t * y[1]}
    remainder = g.subs(shift, simultaneous=True) - g - (grad.T * y)[0] - (y.T * hess * y)[0] / 2
    integrand = (1 - t) * (y.T * (hess.subs(shift_t, simultaneous=True) - hess) * y)[0]
    require_zero(remainder - sp.integrate(sp.expand(integrand), (t, 0, 1)), "integral form")
    require(sp.integrate((1 - t) * t, (t, 0, 1)) == const, "int_0^1 (1-t) t dt")
    # Tightness: the cubic (L/6)(w.y)^3 has Hessian L (w.y) w w^T (Lipschitz constant L for
    # ||w|| = 1) and remainder exactly (L/6)(w.y)^3; along y = s w it equals (L/6)|s|^3.
    lip, s = sp.symbols("L s", positive=True)
    w = sp.Matrix([sp.Rational(3, 5), sp.Rational(4, 5)])
    cubic = lip / 6 * ((w.T * y)[0]) ** 3
    h_cubic = sp.hessian(cubic, list(y))
    require_zero(h_cubic - lip * (w.T * y)[0] * w * w.T, "Hessian of the cubic")
    along = cubic.subs({y[0]: s * w[0], y[1]: s * w[1]}, simultaneous=True)
    require_zero(along - const * lip * s**3, "the constant 1/6 is attained")
    return "Taylor remainder = int (1-t) y^T(H(x+ty)-H(x))y dt <= (L/6)||y||^3, attained"


def _cubic_family_gains(
    m: sp.Matrix, u: sp.Matrix, v: sp.Matrix, w: sp.Matrix, lip: sp.Expr, slope: sp.Matrix
) -> tuple[sp.Expr, sp.Expr, sp.Expr, sp.Expr]:
    """g(x) = 1/2||x-v||_M^2 + (L/6)(w.(x-v))^3 + slope.(x-v); returns
    (gain(p), gain(v), cos_M^2, lam*)."""

    def g(x: sp.Matrix) -> sp.Expr:
        d = x - v
        return (d.T * m * d)[0] / 2 + lip_s / 6 * ((w.T * d)[0]) ** 3 + (slope.T * d)[0]

    lip_s = sp.sympify(lip)
    a, b, c = (u.T * m * u)[0], (u.T * m * v)[0], (v.T * m * v)[0]
    lam = b / a
    zero = sp.zeros(len(v), 1)
    return g(zero) - g(lam * u), g(zero) - g(v), b**2 / (a * c), lam


def _norm(x: sp.Matrix) -> sp.Expr:
    return sp.sqrt((x.T * x)[0])


def check_cubic_family_identities() -> str:
    """For g(x) = 1/2||x-v||_M^2 + (L/6)(w.(x-v))^3 (generic symmetric 2x2 M, generic v, w):
    grad g(v) = 0, Hess g(v) = M, Hess g(x) - Hess g(x') = L (w.(x-x')) w w^T (so the
    Hessian is L||w||^2-Lipschitz) and E(x) = (L/6)(w.(x-v))^3 exactly."""
    x, xp, v, w = (symbols_vector(n, 2) for n in ("x", "xp", "v", "w"))
    m11, m12, m22, lip = sp.symbols("m11 m12 m22 L", real=True)
    m = sp.Matrix([[m11, m12], [m12, m22]])
    d = x - v
    g = (d.T * m * d)[0] / 2 + lip / 6 * ((w.T * d)[0]) ** 3
    at_v = {x[0]: v[0], x[1]: v[1]}
    grad = sp.Matrix([sp.diff(g, xi) for xi in x])
    hess = sp.hessian(g, list(x))
    require_zero(grad.subs(at_v), "stationary at v")
    require_zero(hess.subs(at_v) - m, "Hess g(v) = M")
    hess_p = hess.subs({x[0]: xp[0], x[1]: xp[1]}, simultaneous=True)
    require_zero(hess - hess_p - lip * (w.T * (x - xp))[0] * w * w.T, "Hessian difference")
    require_zero(g - (d.T * m * d)[0] / 2 - lip / 6 * ((w.T * d)[0]) ** 3, "remainder")
    return "cubic family: stationary at rho_R, Hess = M there, Hessian L-Lipschitz, E exact"


# Explicit instances (M, rho_R, rho_D, w, L, slope). The first is the counterexample to the
# variant Delta = lam* rho_D quoted in the .md; the second is a definite-M variant of it.
INSTANCES: list[tuple[list[list[sp.Rational]], list[int], list[int], list[int], int]] = [
    ([[1, 0], [0, 0]], [1, 1], [1, -1], [0, 1], 1),
    ([[1, 0], [0, sp.Rational(1, 10)]], [1, 1], [1, -1], [0, 1], 1),
    ([[2, 1], [1, 3]], [1, -2], [3, 1], [0, -1], 2),
    ([[1, 0], [0, 1]], [-1, 0], [2, 1], [1, 0], 1),
]
# A pure quadratic (L = 0) whose expansion point is not stationary (used with slope e_2).
NON_STATIONARY = ([[1, 0], [0, 1]], [1, 0], [1, 1], [0, 1], 0)


def check_cubic_bound(delta_rule: DeltaRule = default_delta, stationary: bool = True) -> str:
    """|gain(p) - cos^2 gain(v)| <= (L/6)(||v||^3 + ||Delta||^3), exactly (sympy numbers) on
    the explicit instances and in float64 on 2000 random 3-d cubic-family instances.

    ``delta_rule`` injects another Delta (e.g. lam* rho_D); ``stationary=False`` adds the
    linear term (x - v)_2 to g, which breaks the stationarity assumption.
    """
    instances = INSTANCES if stationary else [NON_STATIONARY]
    slope = sp.Matrix([0, 0 if stationary else 1])  # gradient of g at rho_R
    for mm, vv, uu, ww, lip in instances:
        m, v, u, w = sp.Matrix(mm), sp.Matrix(vv), sp.Matrix(uu), sp.Matrix(ww)
        gd, gr, cos2, lam = _cubic_family_gains(m, u, v, w, lip, slope)
        err = sp.Abs(gd - cos2 * gr)
        bound = sp.Rational(lip, 6) * (_norm(v) ** 3 + _norm(delta_rule(lam, u, v)) ** 3)
        require(bool(sp.nsimplify(err - bound) <= 0),
                f"cubic bound violated: |err| = {err} > {bound} for M={m.tolist()}")
    rng = np.random.default_rng(0)
    worst = 0.0
    for _ in range(2000):
        a_ = rng.normal(size=(3, 3))
        m = a_ @ a_.T if rng.random() < 0.7 else np.diag(rng.random(3) * (rng.random(3) < 0.6))
        v, u, w = rng.normal(size=3), rng.normal(size=3), rng.normal(size=3)
        w /= np.linalg.norm(w)
        lip = float(rng.exponential())
        aa, bb, cc = u @ m @ u, u @ m @ v, v @ m @ v
        if aa < 1e-9 or cc < 1e-9:
            continue

        def g(x: np.ndarray) -> float:
            d = x - v
            lin = 0.0 if stationary else d[1]
            return 0.5 * d @ m @ d + lip / 6 * (w @ d) ** 3 + lin

        lam = bb / aa
        cos2 = bb**2 / (aa * cc)
        err = abs((g(0 * v) - g(lam * u)) - cos2 * (g(0 * v) - g(v)))
        delta = np.asarray(delta_rule(lam, u, v), dtype=float)
        bound = lip / 6 * (np.linalg.norm(v) ** 3 + np.linalg.norm(delta) ** 3)
        worst = max(worst, err / bound)
    require(worst <= 1 + 1e-9, f"random cubic instances violate the bound (ratio {worst:.3f})")
    return f"|gain(p) - cos^2 gain(v)| <= (L/6)(|rho_R|^3+|Delta|^3): 4 exact + 2000 random (max ratio {worst:.2f})"


def check_counterexample_values() -> str:
    """The numbers quoted in 02_second_order.md: with M = diag(1,0), rho_R = (1,1),
    rho_D = (1,-1), w = e_2, L = 1: gain(rho_R) = 1/3, gain(p) = 5/3, cos^2 = 1,
    error 4/3 > (1/6)(||rho_R||^3 + ||lam* rho_D||^3) = 2 sqrt(2)/3; and the non-stationary
    quadratic (M = I, rho_R = e_1, rho_D = (1,1), slope e_2) has error 1/2 with L = 0."""
    m, v, u, w = sp.diag(1, 0), sp.Matrix([1, 1]), sp.Matrix([1, -1]), sp.Matrix([0, 1])
    gd, gr, cos2, lam = _cubic_family_gains(m, u, v, w, 1, sp.zeros(2, 1))
    require((gd, gr, cos2, lam) == (sp.Rational(5, 3), sp.Rational(1, 3), 1, 1), "values")
    wrong = (_norm(v) ** 3 + _norm(lam * u) ** 3) / 6
    right = (_norm(v) ** 3 + _norm(lam * u - v) ** 3) / 6
    require(sp.simplify(wrong - 2 * sp.sqrt(2) / 3) == 0 and wrong < sp.Rational(4, 3) <= right,
            "Delta = lam* rho_D bound fails, Delta = lam* rho_D - rho_R bound holds")
    gd, gr, cos2, _ = _cubic_family_gains(
        sp.eye(2), sp.Matrix([1, 1]), sp.Matrix([1, 0]), w, 0, sp.Matrix([0, 1])
    )
    require((gd, gr, cos2) == (-sp.Rational(1, 4), sp.Rational(1, 2), sp.Rational(1, 2)),
            "non-stationary values")
    return "counterexamples: Delta = lam* rho_D (error 4/3 > 2 sqrt2/3); gradient at rho_R (1/2 > 0)"


CHECKS = [
    check_remainder_decomposition,
    check_taylor_remainder,
    check_cubic_family_identities,
    check_cubic_bound,
    check_counterexample_values,
]


def main() -> None:
    """Run every check of Proposition 2 and print what was verified."""
    run_checks("Proposition 2 (second-order bookkeeping):", CHECKS)


if __name__ == "__main__":
    main()

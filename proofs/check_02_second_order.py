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

from _proofkit import generic_gl, is_zero, require, require_zero, run_checks, symbols_vector, symmetric_matrix

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

    and int_0^1 (1-t) t dt = 1/6, so |remainder| <= (L/6)||y||^3. The Lemma's claim checked
    against ``const``: on the cubic g(y) = (L/6)(w.y)^3, ||w|| = 1, whose Hessian Lipschitz
    constant is computed independently (the eigenvalues of H(y) - H(y')), the remainder at x = 0
    -- computed by differentiating g, not read off its formula -- must be <= const L ||y||^3 at
    y = s w. It is equal to (1/6) L ||y||^3 there, so any const < 1/6 fails (the Lemma is sharp).
    """
    x = symbols_vector("x", 2)
    y = symbols_vector("y", 2)
    t = sp.Symbol("t", real=True)
    coeffs = sp.symbols("k0:10", real=True)
    monos = [1, x[0], x[1], x[0] ** 2, x[0] * x[1], x[1] ** 2,
             x[0] ** 3, x[0] ** 2 * x[1], x[0] * x[1] ** 2, x[1] ** 3]
    g = sum(k * mono for k, mono in zip(coeffs, monos))
    require_zero(_taylor_remainder(g, x, y) - _integral_at(g, x, x, y, t), "integral form")
    require(sp.integrate((1 - t) * t, (t, 0, 1)) == sp.Rational(1, 6), "int_0^1 (1-t) t dt = 1/6")
    # Sharpness of the Lemma on the cubic (L/6)(w.y)^3 (||w|| = 1).
    lip, s = sp.symbols("L s", positive=True)
    w = sp.Matrix([sp.Rational(3, 5), sp.Rational(4, 5)])
    yp = symbols_vector("yp", 2)
    cubic = lip / 6 * ((w.T * x)[0]) ** 3
    h = sp.hessian(cubic, list(x))
    diff = h.subs({x[0]: y[0], x[1]: y[1]}, simultaneous=True) - h.subs({x[0]: yp[0], x[1]: yp[1]}, simultaneous=True)
    eig = sorted(diff.eigenvals(), key=sp.default_sort_key)  # {0, L w.(y - y')}: ||.||_op = L |w.(y-y')| <= L||y-y'||
    require(len(eig) == 2 and any(is_zero(e) for e in eig)
            and any(is_zero(e - lip * (w.T * (y - yp))[0]) for e in eig), "Hessian of the cubic is L-Lipschitz")
    rem = _taylor_remainder(cubic, x, y).subs({x[0]: 0, x[1]: 0}).subs({y[0]: s * w[0], y[1]: s * w[1]})
    norm_y = s  # ||s w|| = s for ||w|| = 1, s > 0
    require(is_zero(rem - lip * norm_y**3 / 6) and bool(sp.simplify(const * lip * norm_y**3 - rem) >= 0),
            f"the extremal cubic violates the Lemma with constant {const}: remainder {rem}")
    return "Taylor remainder = int (1-t) y^T(H(x+ty)-H(x))y dt <= (L/6)||y||^3, attained by (L/6)(w.y)^3"


def _taylor_remainder(g: sp.Expr, x: sp.Matrix, y: sp.Matrix) -> sp.Expr:
    """g(x+y) - g(x) - grad g(x).y - 1/2 y^T Hess g(x) y, by differentiating g."""
    grad = sp.Matrix([sp.diff(g, xi) for xi in x])
    hess = sp.hessian(g, list(x))
    shift = {xi: xi + yi for xi, yi in zip(x, y)}
    return g.subs(shift, simultaneous=True) - g - (grad.T * y)[0] - (y.T * hess * y)[0] / 2


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
    # E(x) = g(x) - g(v) - 1/2||x-v||_M^2 computed as the Lemma's integral of the Hessian variation
    # along [v, x] (differentiation + integration, not the formula that defines g)
    t = sp.Symbol("t", real=True)
    yv = x - v
    e_int = _integral_at(g, x, v, yv, t)
    require_zero(e_int - lip / 6 * ((w.T * d)[0]) ** 3, "E(x) = (L/6)(w.(x-v))^3 (integral form)")
    return "cubic family: stationary at rho_R, Hess = M there, Hessian L-Lipschitz, E = cubic (integral form)"


def _integral_at(g: sp.Expr, x: sp.Matrix, base: sp.Matrix, step: sp.Matrix, t: sp.Symbol) -> sp.Expr:
    """int_0^1 (1-t) step^T (Hess g(base + t step) - Hess g(base)) step dt (g polynomial in x)."""
    hess = sp.hessian(g, list(x))
    at_t = hess.subs({xi: bi + t * si for xi, bi, si in zip(x, base, step)}, simultaneous=True)
    at_0 = hess.subs({xi: bi for xi, bi in zip(x, base)}, simultaneous=True)
    return sp.integrate(sp.expand((1 - t) * (step.T * (at_t - at_0) * step)[0]), (t, 0, 1))


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
    # Random instances that are not cubic polynomials: g = quadratic + softplus of a linear
    # form, made stationary at v with Hess g(v) = M (so Prop. 2 applies); L is certified by
    # check_softplus_certificate, and the remainder is not a single cubic, so the bound is not
    # Cauchy-Schwarz in disguise.
    rng = np.random.default_rng(0)
    worst = 0.0
    for _ in range(2000):
        inst = _softplus_instance(rng, stationary=stationary, metric="hessian")
        if inst is None:
            continue
        err = abs(inst["gap"])
        delta = np.asarray(delta_rule(inst["lam"], inst["u"], inst["v"]), dtype=float)
        bound = inst["L"] / 6 * (np.linalg.norm(inst["v"]) ** 3 + np.linalg.norm(delta) ** 3)
        worst = max(worst, err / bound)
    require(worst <= 1 + 1e-9, f"random softplus instances violate the bound (ratio {worst:.3f})")
    return (f"|gain(p) - cos^2 gain(v)| <= (L/6)(|rho_R|^3+|Delta|^3): 4 exact cubic + 2000 random "
            f"softplus instances (max ratio {worst:.2f})")


def check_proposition_constant(const: sp.Rational = sp.Rational(1, 6)) -> str:
    """The constant 1/6 of Proposition 2 itself (not only of the Lemma) cannot be improved.

    M = I, rho_R = (-r, 0), rho_D = (-3r/4, sqrt3 r/4), g(x) = 1/2||y||^2 + (1/6) Re((y_1 + i y_2)^3)
    with y = x - rho_R: stationary at rho_R with Hessian I there, Hessian L-Lipschitz with L = 1
    (Hess g(y) - Hess g(y') has eigenvalues +-||y - y'||, computed here), lam* = 1, kappa = 3/4,
    ||Delta|| = r/2, and G_D - kappa G_R = r^3/16 = (1/6)[(1-kappa)||rho_R||^3 + ||Delta||^3]:
    equality in the sharper form of Proposition 2 for every r > 0. ``const`` replaces 1/6."""
    r = sp.Symbol("r", positive=True)
    x, yp = symbols_vector("x", 2), symbols_vector("yp", 2)
    v = sp.Matrix([-r, 0])
    u = sp.Matrix([-3 * r / 4, sp.sqrt(3) * r / 4])
    y = x - v
    g = (y.T * y)[0] / 2 + sp.re(sp.expand((y[0] + sp.I * y[1]) ** 3)) / 6
    at = lambda pt: {x[0]: pt[0], x[1]: pt[1]}  # noqa: E731
    hess = sp.hessian(g, list(x))
    require_zero(sp.Matrix([sp.diff(g, xi) for xi in x]).subs(at(v)), "stationary at rho_R")
    require_zero(hess.subs(at(v)) - sp.eye(2), "Hess g(rho_R) = I = M")
    dh = hess - hess.subs(at(yp), simultaneous=True)
    dist2 = ((x - yp).T * (x - yp))[0]
    require_zero(sp.expand(dh * dh) - sp.expand(dist2) * sp.eye(2), "(H(x) - H(x'))^2 = ||x - x'||^2 I: L = 1")
    require(is_zero(dh.trace()), "H(x) - H(x') is traceless: eigenvalues +-||x - x'||")
    a, b, c = (u.T * u)[0], (u.T * v)[0], (v.T * v)[0]
    lam, kappa = b / a, b**2 / (a * c)
    require(lam == 1 and kappa == sp.Rational(3, 4), f"lam* = {lam}, kappa = {kappa}")
    delta = lam * u - v
    zero = sp.zeros(2, 1)
    gain_r = g.subs(at(zero)) - g.subs(at(v))
    gain_d = g.subs(at(zero)) - g.subs(at(lam * u))
    gap = sp.expand(gain_d - kappa * gain_r)
    bound = const * ((1 - kappa) * _norm(v) ** 3 + _norm(delta) ** 3)  # L = 1
    require(is_zero(gap - r**3 / 16), f"gap = {gap}, expected r^3/16")
    require(bool(sp.simplify(bound - gap) >= 0),
            f"Proposition 2 with constant {const} is violated: gap {gap} > {sp.simplify(bound)}")
    return "Proposition 2's constant 1/6 is attained (M = I, L = 1, kappa = 3/4: gap = r^3/16 = bound)"


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


# --------------------------------------------------------------------------------------------
# Proposition 2': any symmetric metric M, any expansion point (gradient s, Hessian H)
# --------------------------------------------------------------------------------------------

#: max over z of |d^3/dz^3 log(1 + e^z)| (check_softplus_certificate proves it)
SOFTPLUS_L3 = float(sp.sqrt(3) / 18)


def _sigmoid(z: np.ndarray | float) -> np.ndarray | float:
    return 1.0 / (1.0 + np.exp(-z))


def _softplus_instance(rng: np.random.Generator, stationary: bool = False, metric: str = "random",
                       n: int = 3) -> dict | None:
    """g(x) = 1/2 x^T A x + b.x + alpha softplus(w.x + beta) (float64), expansion point v.

    H(x) = A + alpha sigma''(w.x+beta) w w^T, so the Hessian is L-Lipschitz with
    L = |alpha| ||w||^3 sqrt(3)/18 (check_softplus_certificate). ``stationary`` chooses b with
    grad g(v) = 0; metric "hessian" uses M = H(v) (A is then chosen so that H(v) is PSD),
    "random" a random PSD M (possibly singular). Returns the instance with its exact terms
    (M, H, s, lam*, kappa, the gap G_D - kappa G_R), or None when kappa is undefined.
    """
    v, u, w = rng.normal(size=n), rng.normal(size=n), rng.normal(size=n)
    alpha, beta = float(rng.normal() * 3), float(rng.normal())
    p_v = _sigmoid(w @ v + beta)
    c2 = alpha * p_v * (1 - p_v)  # alpha sigma''(w.v + beta)
    a_ = rng.normal(size=(n, n))
    if metric == "hessian":
        m = a_ @ a_.T if rng.random() < 0.7 else np.diag(rng.random(n) * (rng.random(n) < 0.6))
        A = m - c2 * np.outer(w, w)
    else:
        A = 0.5 * (a_ + a_.T)
        b_ = rng.normal(size=(n, n))
        m = b_ @ b_.T if rng.random() < 0.7 else np.diag(rng.random(n) * (rng.random(n) < 0.6))
    b = -(A @ v + alpha * p_v * w) if stationary else rng.normal(size=n)
    H = A + c2 * np.outer(w, w)
    s = A @ v + b + alpha * p_v * w

    def g(x: np.ndarray) -> float:
        return 0.5 * x @ A @ x + b @ x + alpha * np.logaddexp(0.0, w @ x + beta)

    aa, bb, cc = u @ m @ u, u @ m @ v, v @ m @ v
    if aa < 1e-9 or cc < 1e-9:
        return None
    lam, kappa = bb / aa, bb**2 / (aa * cc)
    gap = (g(0 * v) - g(lam * u)) - kappa * (g(0 * v) - g(v))
    return dict(u=u, v=v, m=m, H=H, s=s, lam=lam, kappa=kappa, gap=gap, w=w, alpha=alpha,
                L=abs(alpha) * np.linalg.norm(w) ** 3 * SOFTPLUS_L3)


def prop2prime_bound(inst: dict, const: float = 1 / 6, gradient: bool = True, curvature: bool = True) -> float:
    """The right-hand side of Proposition 2' for one instance (u, v, M, H, s, lam, kappa, L):
    L const (|1-k| |v|^3 + |D|^3) + 1/2 (|1-k| |v^T(H-M)v| + |D^T(H-M)D|) + |s^T((1-k)v + D)|.
    ``const``, ``gradient=False``, ``curvature=False`` inject the wrong variants."""
    u, v, m, H, s, lam, k = (inst[x] for x in ("u", "v", "m", "H", "s", "lam", "kappa"))
    d = lam * u - v
    out = inst["L"] * const * (abs(1 - k) * np.linalg.norm(v) ** 3 + np.linalg.norm(d) ** 3)
    if curvature:
        out += 0.5 * (abs(1 - k) * abs(v @ (H - m) @ v) + abs(d @ (H - m) @ d))
    if gradient:
        out += abs(s @ ((1 - k) * v + d))
    return float(out)


def near_extremal_instance(r: float, t: float, m2: float) -> dict:
    """An instance where the cubic term is almost attained (mpmath, 50 digits): n = 2, w = e_1,
    alpha = 1, v = (r, 0) with w.v + beta at the argmax of the third derivative of softplus
    (sigmoid = (3 - sqrt3)/6), A and b chosen so that s = 0 and H(v) = M = diag(1, m2),
    u = (1, sqrt(t/m2)). Then 1 - kappa = t/(1+t), ||Delta|| = O(r sqrt(t)), and the gap is
    (1-kappa) T(0) - T(p) with T(0) ~ -(L/6) r^3: the ratio gap / bound tends to 1 as r, t -> 0
    and m2 -> infinity."""
    import mpmath as mp

    mp.mp.dps = 50
    pstar = (3 - mp.sqrt(3)) / 6
    beta = mp.log(pstar / (1 - pstar)) - r
    c2 = pstar * (1 - pstar)
    A = mp.matrix([[1 - c2, 0], [0, m2]])
    v = mp.matrix([r, 0])
    b = -(A * v) - mp.matrix([pstar, 0])
    u = mp.matrix([1, mp.sqrt(mp.mpf(t) / m2)])
    M = mp.matrix([[1, 0], [0, m2]])

    def g(x):
        return (x.T * A * x)[0] / 2 + (b.T * x)[0] + mp.log(1 + mp.exp(x[0] + beta))

    aa, bb, cc = (u.T * M * u)[0], (u.T * M * v)[0], (v.T * M * v)[0]
    lam, kappa = bb / aa, bb**2 / (aa * cc)
    z = mp.matrix([0, 0])
    gap = (g(z) - g(lam * u)) - kappa * (g(z) - g(v))

    def f(x):
        return np.array([float(xi) for xi in x])

    return dict(u=f(u), v=f(v), m=np.diag([1.0, float(m2)]), H=np.diag([1.0, float(m2)]), s=np.zeros(2),
                lam=float(lam), kappa=float(kappa), gap=float(gap), L=SOFTPLUS_L3)


def check_prop2prime_identity(gradient: bool = True, curvature: bool = True) -> str:
    """For generic symmetric 2x2 H and M, generic s, rho_R = v, rho_D = u and free values
    g(0), g(v), g(p): with T(x) = g(x) - g(v) - s.(x - v) - 1/2 (x-v)^T H (x-v),

    G_D - k G_R = (1-k) T(0) - T(p) + 1/2[(1-k) v^T(H-M)v - D^T(H-M)D] - s^T((1-k)v + D),

    k = cos_M^2, D = lam* u - v. ``gradient=False`` / ``curvature=False`` drop a term."""
    u, v, s = (symbols_vector(n, 2) for n in ("u", "v", "s"))
    h11, h12, h22, m11, m12, m22 = sp.symbols("h11 h12 h22 m11 m12 m22", real=True)
    H, M = sp.Matrix([[h11, h12], [h12, h22]]), sp.Matrix([[m11, m12], [m12, m22]])
    g0, gv, gp = sp.symbols("g0 gv gp", real=True)
    a, b, c = (u.T * M * u)[0], (u.T * M * v)[0], (v.T * M * v)[0]
    lam, k = b / a, b**2 / (a * c)
    d = lam * u - v
    t0 = g0 - gv + (s.T * v)[0] - (v.T * H * v)[0] / 2
    tp = gp - gv - (s.T * d)[0] - (d.T * H * d)[0] / 2
    rhs = (1 - k) * t0 - tp
    if curvature:
        rhs += ((1 - k) * (v.T * (H - M) * v)[0] - (d.T * (H - M) * d)[0]) / 2
    if gradient:
        rhs -= (s.T * ((1 - k) * v + d))[0]
    require_zero((g0 - gp) - k * (g0 - gv) - rhs, "Proposition 2' identity")
    return "G_D - k G_R = (1-k)T(0) - T(p) + curvature(H - M) + gradient(s): generic H, M, s, u, v"


def check_softplus_certificate(claimed: sp.Expr = sp.sqrt(3) / 18) -> str:
    """The third derivative of log(1+e^z) is p(1-p)(1-2p) with p = sigmoid(z), and the maximum
    of its absolute value over p in [0,1] is sqrt(3)/18 (at p = (3 -+ sqrt3)/6): the cubic has
    exactly these two critical points, it vanishes at p = 0 and 1, and the extreme value
    theorem does the rest. ``claimed`` injects a different maximum."""
    z, p = sp.symbols("z p", real=True)
    e = sp.exp(z)
    third = sp.diff(sp.log(1 + e), z, 3)
    ps = e / (1 + e)
    require_zero(third - ps * (1 - ps) * (1 - 2 * ps), "third derivative of softplus")
    q = p * (1 - p) * (1 - 2 * p)
    crit = sp.solve(sp.diff(q, p), p)
    require(len(crit) == 2 and all(0 < sp.N(r) < 1 for r in crit), "two interior critical points")
    values = [sp.expand(q.subs(p, r)) for r in crit] + [q.subs(p, 0), q.subs(p, 1)]
    top = max(abs(sp.N(x, 30)) for x in values)
    require(abs(top - sp.N(claimed, 30)) < sp.Float(1e-25), f"max |softplus'''| = {top}, claimed {claimed}")
    return "softplus''' = p(1-p)(1-2p), max |.| = sqrt(3)/18: L = |alpha| ||w||^3 sqrt(3)/18 certified"


def check_prop2prime_bound(const: float = 1 / 6, gradient: bool = True, curvature: bool = True) -> str:
    """|G_D - k G_R| <= Proposition 2' on 3000 random softplus instances (non-stationary, M a
    random PSD matrix, not the Hessian) and on near-extremal instances (the cubic term almost
    attained: ratio > 0.9). The wrong variants fail: ``const=1/8`` on the near-extremal ones,
    ``gradient=False`` / ``curvature=False`` on the random ones."""
    rng = np.random.default_rng(1)
    worst = 0.0
    for _ in range(3000):
        inst = _softplus_instance(rng, stationary=False, metric="random")
        if inst is None:
            continue
        worst = max(worst, abs(inst["gap"]) / prop2prime_bound(inst, const, gradient, curvature))
    require(worst <= 1 + 1e-9, f"random instances violate Proposition 2' (ratio {worst:.3f})")
    tight = 0.0
    for r, t in ((0.05, 1e-3), (0.02, 1e-3), (0.01, 1e-4)):
        inst = near_extremal_instance(r, t, 1e8)
        ratio = abs(inst["gap"]) / prop2prime_bound(inst, const, gradient, curvature)
        require(ratio <= 1 + 1e-9, f"near-extremal instance violates Proposition 2' (ratio {ratio:.4f})")
        tight = max(tight, ratio)
    require(tight > 0.9, f"the near-extremal instances should almost attain the bound (ratio {tight:.3f})")
    return (f"Proposition 2': 3000 random non-stationary softplus instances, PSD M != H (max ratio {worst:.2f}); "
            f"near-extremal instances reach ratio {tight:.3f}")


# --------------------------------------------------------------------------------------------
# Proposition 2'': the gauge-invariant bound, L_M measured in the M-norm
# --------------------------------------------------------------------------------------------


def check_metric_norm_of_delta(delta_rule: DeltaRule = default_delta) -> str:
    """||Delta||_M^2 = c (1 - kappa) for generic symmetric 2x2 M and generic u, v (multiplied by a^2 to
    stay polynomial: ||a Delta||_M^2 = a (a c - b^2)). ``delta_rule`` injects another Delta."""
    m = symmetric_matrix("m", 2)
    u, v = symbols_vector("u", 2), symbols_vector("v", 2)
    a, b, c = (u.T * m * u)[0], (u.T * m * v)[0], (v.T * m * v)[0]
    ad = (a * delta_rule(b / a, u, v)).applyfunc(sp.expand)  # a Delta: polynomial for lam* = b/a
    require_zero((ad.T * m * ad)[0] - a * (a * c - b**2), "||Delta||_M^2 = c (1 - kappa)")
    return "||lam* rho_D - rho_R||_M^2 = c (1 - kappa) (generic symmetric M)"


def check_metric_lipschitz_is_gauge_invariant(tangent: Callable[[sp.Matrix, sp.Matrix, sp.Matrix], sp.Matrix]
                                              = lambda g, gi, y: g * y) -> str:
    """Under a linear level-1 symmetry g (generic in GL(2)): Hessians move as g^-T H g^-1 (Result 3),
    the metric as g^-T M g^-1, steps as g y. Then y^T(H_1 - H_0)y and ||y||_M are unchanged, so L_M
    (their ratio) is invariant, while the Euclidean ||y|| (hence L) is not. ``tangent`` injects another
    transport of the step (as a covector it must fail)."""
    g, gi = generic_gl(2, "g")
    h0, h1, m = symmetric_matrix("h", 2), symmetric_matrix("k", 2), symmetric_matrix("m", 2)
    y = symbols_vector("y", 2)
    gy = tangent(g, gi, y)
    move = lambda x: gi.T * x * gi  # noqa: E731
    require_zero((gy.T * (move(h1) - move(h0)) * gy)[0] - (y.T * (h1 - h0) * y)[0], "Hessian variation invariant")
    require_zero((gy.T * move(m) * gy)[0] - (y.T * m * y)[0], "||g y||_{M(g theta)} = ||y||_M")
    require(not is_zero((gy.T * gy)[0] - (y.T * y)[0]), "the Euclidean norm must change under a generic g")
    return "L_M = sup |y^T(H_1 - H_0)y| / (t ||y||_M^3) is invariant under linear level-1 symmetries; L is not"


def _prop2_terms(inst: dict) -> tuple[float, float, float, float]:
    """(remainder, c, 1 - kappa, curvature + gradient) of a softplus instance."""
    u, v, m, H, s, lam, k = (inst[x] for x in ("u", "v", "m", "H", "s", "lam", "kappa"))
    d = lam * u - v
    measured = 0.5 * ((1 - k) * v @ (H - m) @ v - d @ (H - m) @ d) - s @ ((1 - k) * v + d)
    return inst["gap"] - measured, float(v @ m @ v), 1 - k, measured


def check_prop2second_bound(const: float = 1 / 6, sqrt_term: bool = True, euclidean_L: bool = False) -> str:
    """Proposition 2'': |G_D - kappa G_R - curvature - gradient| <= L_M c^{3/2}(1-k)(1+sqrt(1-k))/6.
    On 3000 random non-stationary softplus instances with a random positive definite M != H, with the
    certificate L_M = |alpha| (sqrt3/18) (w^T M^-1 w)^{3/2} (|w.y| <= ||w||_{M^-1} ||y||_M); and on the
    complex-cubic instance of check_proposition_constant (M = I, L_M = L = 1, kappa = 3/4), where it
    holds with equality. Twins: ``const = 1/8`` and ``sqrt_term=False`` (the T(p) part dropped) fail
    on the attained instance; ``euclidean_L`` (L_M := |alpha| (sqrt3/18) ||w||^3) on random ones."""
    rng = np.random.default_rng(2)
    worst, used = 0.0, 0
    for _ in range(3000):
        inst = _softplus_instance(rng, stationary=False, metric="random")
        if inst is None or np.linalg.eigvalsh(inst["m"]).min() < 1e-3:
            continue
        w = inst["w"]
        wmw = np.linalg.norm(w) ** 2 if euclidean_L else float(w @ np.linalg.solve(inst["m"], w))
        lip_m = abs(inst["alpha"]) * SOFTPLUS_L3 * wmw**1.5
        rem, c, one_k, _ = _prop2_terms(inst)
        cubic_m = c**1.5 * one_k * (1 + (np.sqrt(one_k) if sqrt_term else 0)) / 6
        worst = max(worst, abs(rem) / (6 * const * lip_m * cubic_m))
        used += 1
    require(worst <= 1 + 1e-9, f"random instances violate Proposition 2'' (ratio {worst:.3f})")
    r = 0.3  # the complex cubic: G_D - kappa G_R = r^3/16, c = r^2, kappa = 3/4, no curvature/gradient term
    c, one_k = r**2, 0.25
    bound = 6 * const * 1.0 * c**1.5 * one_k * (1 + (np.sqrt(one_k) if sqrt_term else 0)) / 6  # L_M = 1
    require(r**3 / 16 <= bound * (1 + 1e-12), f"the complex cubic violates Proposition 2'' (gap {r**3 / 16:.3e} > {bound:.3e})")
    return (f"Proposition 2'': {used} random instances with certified L_M (max ratio {worst:.2f}); "
            "attained by the complex cubic (M = I, kappa = 3/4)")


CHECKS = [
    check_remainder_decomposition,
    check_taylor_remainder,
    check_cubic_family_identities,
    check_cubic_bound,
    check_proposition_constant,
    check_counterexample_values,
    check_prop2prime_identity,
    check_softplus_certificate,
    check_prop2prime_bound,
    check_metric_norm_of_delta,
    check_metric_lipschitz_is_gauge_invariant,
    check_prop2second_bound,
]


def main() -> None:
    """Run every check of Proposition 2 and print what was verified."""
    run_checks("Proposition 2 (second-order bookkeeping):", CHECKS)


if __name__ == "__main__":
    main()

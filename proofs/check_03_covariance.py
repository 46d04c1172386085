"""Symbolic checks for Proposition 3 (covariance of gradients and metrics, invariance of
lam* and cos_M, non-invariance of the Euclidean cosine).

The symbolic model is the smallest one with a continuous GL(2) symmetry of the
query/key and value/output kind (see ``03_covariance.md``):

    z(theta, x) = W2 W1 x in R^2,   W1 in R^{2x1}, W2 in R^{2x2},   theta in R^6,
    g_A : (W1, W2) -> (A W1, W2 A^{-1}),  A = L D U in GL(2) with free symbols,

and the non-quadratic loss ell(z; y) = 1/2 z^T K z - y^T z + k3 z_1^3 (K, y, k3 symbolic),
so that the Hessian differs from the Gauss-Newton matrix. Gradient, Hessian and GGN use
one sample (the sum over samples is linear); the empirical Fisher uses two.

Every ``check_*`` returns a one-line description and raises ``AssertionError`` if the
identity fails; optional arguments inject a broken variant (used by ``test_proofs.py``).
Run ``python proofs/check_03_covariance.py`` to print what is verified.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import sympy as sp

from _proofkit import (
    generic_gl,
    require,
    require_zero,
    run_checks,
    symbols_vector,
    symmetric_matrix,
)

MetricRule = Callable[[sp.Matrix, sp.Matrix, sp.Matrix], sp.Matrix]
CovectorRule = Callable[[sp.Matrix, sp.Matrix, sp.Matrix], sp.Matrix]
TangentRule = Callable[[sp.Matrix, sp.Matrix, sp.Matrix], sp.Matrix]


def default_metric_rule(g: sp.Matrix, g_inv: sp.Matrix, m: sp.Matrix) -> sp.Matrix:
    """M(g theta) = g^{-T} M(theta) g^{-1}."""
    return g_inv.T * m * g_inv


def default_covector_rule(g: sp.Matrix, g_inv: sp.Matrix, grad: sp.Matrix) -> sp.Matrix:
    """grad L(g theta) = g^{-T} grad L(theta)."""
    return g_inv.T * grad


def default_tangent_rule(g: sp.Matrix, g_inv: sp.Matrix, u: sp.Matrix) -> sp.Matrix:
    """Tangent vectors (rho, displacements) transform as u -> g u."""
    return g * u


class _Model:
    """theta = (W1; rows of W2) in R^6, z_i = W2 W1 x_i, L = sum_i ell(z_i; y_i) with
    ell(z; y) = 1/2 z^T K z - y^T z + k z_1^3 (K generic symmetric, k a symbol)."""

    def __init__(self) -> None:
        self.theta = sp.Matrix(sp.symbols("t1:7", real=True))
        self.xs = sp.symbols("x1 x2", real=True)
        self.ys = [sp.Matrix(sp.symbols(f"y{i}_1 y{i}_2", real=True)) for i in (1, 2)]
        self.kmat = symmetric_matrix("K", 2)
        self.k3 = sp.Symbol("k3", real=True)
        a, a_inv = generic_gl(2, "a")
        # W1 -> A W1; each row r of W2 -> r A^{-1}, i.e. r^T -> A^{-T} r^T.
        self.g = sp.diag(a, a_inv.T, a_inv.T)
        self.g_inv = sp.diag(a_inv, a.T, a.T)
        self.g_theta = self.g * self.theta

    def outputs(self, theta: sp.Matrix, samples: int = 2) -> list[sp.Matrix]:
        w1 = sp.Matrix(theta[0:2])
        w2 = sp.Matrix(2, 2, list(theta[2:6]))
        return [w2 * w1 * x for x in self.xs[:samples]]

    def sample_loss(self, z: sp.Matrix, y: sp.Matrix) -> sp.Expr:
        return (z.T * self.kmat * z)[0] / 2 - (y.T * z)[0] + self.k3 * z[0] ** 3

    def loss(self, theta: sp.Matrix, samples: int = 1) -> sp.Expr:
        zs = self.outputs(theta, samples)
        return sum(self.sample_loss(z, y) for z, y in zip(zs, self.ys))

    def at_g_theta(self, expr: sp.Expr | sp.Matrix) -> sp.Expr | sp.Matrix:
        """Evaluate an expression of theta at g theta."""
        return expr.subs(dict(zip(self.theta, self.g_theta)), simultaneous=True)


@lru_cache(maxsize=1)
def _model() -> _Model:
    return _Model()


def _grad(expr: sp.Expr, theta: sp.Matrix) -> sp.Matrix:
    return sp.Matrix([sp.diff(expr, t) for t in theta])


def check_function_invariance() -> str:
    """z(g_A theta, x) = z(theta, x) for generic A in GL(2): the symmetry of the model."""
    mdl = _model()
    for z, zg in zip(mdl.outputs(mdl.theta), mdl.outputs(mdl.g_theta)):
        require_zero(zg - z, "function invariance")
    return "z(A W1, W2 A^-1) = z(W1, W2) for generic A in GL(2)"


def check_gradient_covariance(rule: CovectorRule = default_covector_rule) -> str:
    """grad L(g theta) = g^{-T} grad L(theta) (chain rule on L o g = L)."""
    mdl = _model()
    grad = _grad(mdl.loss(mdl.theta), mdl.theta)
    require_zero(mdl.at_g_theta(grad) - rule(mdl.g, mdl.g_inv, grad), "gradient covariance")
    return "grad L(g theta) = g^-T grad L(theta) (generic A in GL(2), cubic loss)"


def check_hessian_covariance(rule: MetricRule = default_metric_rule) -> str:
    """H(g theta) = g^{-T} H(theta) g^{-1}."""
    mdl = _model()
    hess = sp.hessian(mdl.loss(mdl.theta), list(mdl.theta))
    require_zero(mdl.at_g_theta(hess) - rule(mdl.g, mdl.g_inv, hess), "Hessian covariance")
    return "H(g theta) = g^-T H(theta) g^-1 (6x6 Hessian, generic A in GL(2))"


def check_ggn_covariance(rule: MetricRule = default_metric_rule) -> str:
    """J(g theta) = J(theta) g^{-1}; since z (hence C = Hess_z ell, e.g. diag(p) - p p^T
    for softmax cross-entropy) is unchanged, G = J^T C J transforms as g^{-T} G g^{-1}.
    C is a generic symmetric 2x2 matrix here."""
    mdl = _model()
    (z,) = mdl.outputs(mdl.theta, samples=1)
    jac = z.jacobian(mdl.theta)
    jac_g = mdl.at_g_theta(jac)
    require_zero(jac_g - jac * mdl.g_inv, "J(g theta) = J(theta) g^-1")
    cmat = symmetric_matrix("c", 2)
    require_zero(jac_g.T * cmat * jac_g - rule(mdl.g, mdl.g_inv, jac.T * cmat * jac),
                 "GGN covariance")
    return "J(g theta) = J(theta) g^-1 and G(g theta) = g^-T G(theta) g^-1 (generic C)"


def check_fisher_covariance(rule: MetricRule = default_metric_rule) -> str:
    """Empirical Fisher F = sum_i s_i s_i^T with s_i = grad ell_i: each per-sample gradient
    is a covector, s_i(g theta) = g^{-T} s_i(theta), so F(g theta) = g^{-T} F g^{-1}
    (two samples)."""
    mdl = _model()
    zs = mdl.outputs(mdl.theta, samples=2)
    scores = [_grad(mdl.sample_loss(z, y), mdl.theta) for z, y in zip(zs, mdl.ys)]
    scores_g = [mdl.at_g_theta(s) for s in scores]
    for s, sg in zip(scores, scores_g):
        require_zero(sg - mdl.g_inv.T * s, "per-sample gradient covariance")
    # F(g theta) = sum (g^-T s)(g^-T s)^T; compare with the rule applied to F(theta). SANITY
    # (true by construction once the per-sample covariance above holds: (As)(As)^T = A ss^T A^T);
    # the content of this check is the per-sample gradient covariance.
    sym = [symbols_vector(f"s{i}", 6) for i in (1, 2)]
    fisher = sum((s * s.T for s in sym), sp.zeros(6, 6))
    fisher_g = sum(((mdl.g_inv.T * s) * (mdl.g_inv.T * s).T for s in sym), sp.zeros(6, 6))
    require_zero(fisher_g - rule(mdl.g, mdl.g_inv, fisher), "empirical Fisher covariance")
    return "per-sample grads are covectors, so F(g theta) = g^-T F(theta) g^-1"


def check_metric_invariants(tangent: TangentRule = default_tangent_rule,
                            rule: MetricRule = default_metric_rule) -> str:
    """SANITY CHECK (true by construction: g^T g^-T = I; not evidence for Result 3, whose
    content is the covariance of H, G, F checked above): for generic symmetric 3x3 M, generic g
    in GL(3), generic u, v: <gu, gv>_{g^-T M g^-1} = <u, v>_M, hence lam* and cos_M^2 are
    invariant. Kept to guard the tangent/covector convention (its must-fail twin feeds rho as a
    covector)."""
    m = symmetric_matrix("m", 3)
    g, g_inv = generic_gl(3, "g")
    u, v = symbols_vector("u", 3), symbols_vector("v", 3)
    mg = rule(g, g_inv, m).applyfunc(sp.expand)
    gu, gv = tangent(g, g_inv, u), tangent(g, g_inv, v)

    def form(p: sp.Matrix, q: sp.Matrix, metric: sp.Matrix) -> sp.Expr:
        # expand M q first: keeps the intermediate expressions small
        return (p.T * (metric * q).applyfunc(sp.expand))[0]

    for (p, q), (pg, qg) in [((u, v), (gu, gv)), ((u, u), (gu, gu)), ((v, v), (gv, gv))]:
        require_zero(form(pg, qg, mg) - form(p, q, m), "<gu, gv>_{M(g theta)} = <u, v>_M")
    return "<gu,gv>_{g^-T M g^-1} = <u,v>_M (generic 3x3): lam*, cos_M invariant"


def check_covector_transport_needs_conformal(g: sp.Matrix | None = None) -> str:
    """Vectors wrongly transported as covectors (rho -> g^-T rho), metric moved correctly
    (M -> g^-T M g^-1): for conformal g = k Q (Q the rotation with cos 3/5, sin 4/5, k a free
    symbol) every form is multiplied by k^-4, so lam* (and cos_M) survive; for g = diag(2, 1),
    M = I, rho_D = (1, 1), rho_R = (1, 0): lam* = 1/2 before, 1/17 after. ``g`` replaces k Q
    (a non-conformal g must fail the k^-4 scaling)."""
    k = sp.Symbol("k", positive=True)
    q = sp.Matrix([[sp.Rational(3, 5), -sp.Rational(4, 5)], [sp.Rational(4, 5), sp.Rational(3, 5)]])
    g = k * q if g is None else g
    g_inv = g.inv()
    m = symmetric_matrix("m", 2)
    u, v = symbols_vector("u", 2), symbols_vector("v", 2)
    mg = g_inv.T * m * g_inv
    for p_, q_ in ((u, v), (u, u), (v, v)):
        moved = ((g_inv.T * p_).T * mg * (g_inv.T * q_))[0]
        require_zero(moved - (p_.T * m * q_)[0] / k**4, "covector transport scales every form by k^-4")
    d, e = sp.diag(2, 1), sp.eye(2)
    u0, v0 = sp.Matrix([1, 1]), sp.Matrix([1, 0])
    di = d.inv()
    lam = lambda a, b, mm: (a.T * mm * b)[0] / (a.T * mm * a)[0]  # noqa: E731
    require(lam(u0, v0, e) == sp.Rational(1, 2) and lam(di.T * u0, di.T * v0, di.T * e * di) == sp.Rational(1, 17),
            "diag(2, 1): lam* 1/2 -> 1/17 under covector transport")
    return "rho as a covector: forms x k^-4 for conformal g = kQ (lam*, cos_M kept); diag(2,1): lam* 1/2 -> 1/17"


def check_euclidean_cosine() -> str:
    """Euclidean cosine: invariant under orthogonal g (symbolic rotation, c^2 + s^2 = 1) and
    under scalar g = kI; not under g = diag(2, 1) (u = (1,1), v = (1,0): 1/sqrt2 -> 2/sqrt5).
    Converse: if B = g^T g (2x2) preserves orthogonality of the pairs (e1, e2) and
    (e1 + e2, e1 - e2), then B = b11 I, i.e. g is conformal (k times an isometry)."""
    c, s, k = sp.symbols("c s k", real=True)
    u, v = symbols_vector("u", 2), symbols_vector("v", 2)
    rot = sp.Matrix([[c, -s], [s, c]])
    unit = {s**2: 1 - c**2}
    require_zero(sp.expand(rot.T * rot).subs(unit) - sp.eye(2), "rotation is orthogonal")
    require_zero(sp.expand(((rot * u).T * (rot * v))[0]).subs(unit) - (u.T * v)[0], "dot kept")
    kg = k * sp.eye(2)
    require_zero((kg * u).T * (kg * v) - k**2 * (u.T * v), "scalar g scales all dots by k^2")

    def cos(p: sp.Matrix, q: sp.Matrix) -> sp.Expr:
        return (p.T * q)[0] / sp.sqrt((p.T * p)[0] * (q.T * q)[0])

    g = sp.diag(2, 1)
    u0, v0 = sp.Matrix([1, 1]), sp.Matrix([1, 0])
    require(cos(u0, v0) == 1 / sp.sqrt(2) and cos(g * u0, g * v0) == 2 / sp.sqrt(5),
            "diag(2,1) changes the cosine")
    b11, b12, b22 = sp.symbols("b11 b12 b22", real=True)
    bmat = sp.Matrix([[b11, b12], [b12, b22]])
    e1, e2 = sp.Matrix([1, 0]), sp.Matrix([0, 1])
    eqs = [((e1.T * bmat * e2)[0]), ((e1 + e2).T * bmat * (e1 - e2))[0]]
    sol = sp.solve(eqs, [b12, b22], dict=True)
    require(sol == [{b12: 0, b22: b11}], "orthogonality-preserving Gram is a multiple of I")
    return "Euclidean cos: invariant for orthogonal / scalar g, not for diag(2,1); converse: conformal"


def check_ggn_needs_function_invariance() -> str:
    """A loss symmetry that is not a function symmetry: theta in R, z = cos t - sin t,
    ell(z) = (z^2 - 1)^2 / 4, g = -1. L(-t) = L(t) (so H is covariant) but
    G(t) = z'(t)^2 ell''(z(t)) has G(t) - G(-t) = -4 sin t cos t != 0.
    Work with S = sin t, C = cos t and reduce modulo S^2 + C^2 = 1."""
    s, c = sp.symbols("S C", real=True)
    rel = s**2 + c**2 - 1

    def reduce(expr: sp.Expr) -> sp.Expr:
        return sp.reduced(sp.expand(expr), [rel], s, c)[1]

    def z(sg: sp.Expr) -> sp.Expr:  # z at t (sg = S) or at -t (sg = -S)
        return c - sg

    def dz(sg: sp.Expr) -> sp.Expr:  # dz/dt at t or -t: -sin - cos
        return -sg - c

    def ell(zz: sp.Expr) -> sp.Expr:
        return (zz**2 - 1) ** 2 / 4

    zz = sp.Symbol("z")
    ell2 = sp.diff(ell(zz), zz, 2)
    require(reduce(ell(z(s)) - ell(z(-s))) == 0, "L is even")
    ggn_t = dz(s) ** 2 * ell2.subs(zz, z(s))
    ggn_mt = dz(-s) ** 2 * ell2.subs(zz, z(-s))
    diff = reduce(ggn_t - ggn_mt)
    require(sp.expand(diff + 4 * s * c) == 0, f"G(t) - G(-t) = -4 S C, got {diff}")
    return "loss-only symmetry: L(-t) = L(t) but G(t) - G(-t) = -2 sin 2t (GGN not covariant)"


CHECKS = [
    check_function_invariance,
    check_gradient_covariance,
    check_hessian_covariance,
    check_ggn_covariance,
    check_fisher_covariance,
    check_metric_invariants,
    check_covector_transport_needs_conformal,
    check_euclidean_cosine,
    check_ggn_needs_function_invariance,
]


def main() -> None:
    """Run every check of Proposition 3 and print what was verified."""
    run_checks("Proposition 3 (covariance and invariance):", CHECKS)


if __name__ == "__main__":
    main()

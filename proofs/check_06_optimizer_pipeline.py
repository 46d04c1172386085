"""Checks for Proposition 6 (optimizer and pipeline equivariance, genericity).

AdamW (PyTorch's ``torch.optim.AdamW``), one step on coordinate i with gradient G_i:
    theta_i <- theta_i (1 - lr wd)
    m_i <- beta1 m_i + (1 - beta1) G_i,   v_i <- beta2 v_i + (1 - beta2) G_i^2
    theta_i <- theta_i - lr (m_i / c1) / (sqrt(v_i / c2) + eps),
c1 = 1 - beta1^t, c2 = 1 - beta2^t. Everything is a free symbol (v_i > 0, eps > 0).

A symmetry g acts on theta and on tangent vectors by g, on gradients (and hence on m)
by g^{-T}; for a signed permutation S = P D (D = diag(+-1)) g^{-T} = S, and the second
moment v transforms by |S| = P. See ``06_optimizer_pipeline.md``.

Every ``check_*`` returns a one-line description and raises ``AssertionError`` if the
statement fails; optional arguments inject a broken variant (used by ``test_proofs.py``).
Run ``python proofs/check_06_optimizer_pipeline.py`` to print what is verified.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction
from itertools import combinations, permutations, product

import numpy as np
import sympy as sp
from scipy.linalg import expm

from _proofkit import require, require_zero, run_checks, symbols_vector
from check_05_quantizer import quantize  # the exact quantizer of Proposition 5

N = 3
State = tuple[sp.Matrix, sp.Matrix, sp.Matrix]  # theta, m, v
Update = Callable[[sp.Expr, sp.Expr, sp.Expr, sp.Expr], sp.Expr]

LR, B1, B2, EPS, WD, C1, C2 = sp.symbols("lr beta1 beta2 eps wd c1 c2", positive=True)


def adam_direction(m_hat: sp.Expr, v_hat: sp.Expr, eps: sp.Expr, lr: sp.Expr) -> sp.Expr:
    """The AdamW update direction lr * m_hat / (sqrt(v_hat) + eps)."""
    return lr * m_hat / (sp.sqrt(v_hat) + eps)


def adamw_step(theta: sp.Matrix, grad: sp.Matrix, m: sp.Matrix, v: sp.Matrix,
               update: Update = adam_direction) -> State:
    """One elementwise AdamW step with symbolic hyper-parameters (PyTorch's order)."""
    th, mm, vv = [], [], []
    for i in range(theta.rows):
        m_new = B1 * m[i] + (1 - B1) * grad[i]
        v_new = B2 * v[i] + (1 - B2) * grad[i] ** 2
        th.append(theta[i] * (1 - LR * WD) - update(m_new / C1, v_new / C2, EPS, LR))
        mm.append(m_new)
        vv.append(v_new)
    return sp.Matrix(th), sp.Matrix(mm), sp.Matrix(vv)


def _signed_permutations(n: int) -> list[sp.Matrix]:
    out = []
    for perm in permutations(range(n)):
        for signs in product((1, -1), repeat=n):
            out.append(sp.Matrix(n, n, lambda i, j: signs[i] if perm[i] == j else 0))
    return out


def check_adamw_signed_permutation(update: Update = adam_direction,
                                   extra: list[sp.Matrix] | None = None) -> str:
    """For all 48 signed permutations S of R^3: AdamW(S theta, S G, S m, |S| v) =
    (S theta+, S m+, |S| v+), with theta, G, m, v (> 0), lr, beta1, beta2, eps, wd and the
    bias corrections all symbolic. ``extra`` adds further matrices g that must also pass, e.g. a
    rescaling: g acts on theta, g^{-T} on G and m, and on v by the entrywise square of g^{-T}
    (the transport of G (.) G when g^{-T} is monomial: |S| for a signed permutation, diag(1/d^2)
    for diag(d)), so a monomial g fails only where AdamW's step itself is not covariant."""
    theta, grad, m = (symbols_vector(n, N) for n in ("th", "G", "m"))
    v = symbols_vector("v", N, positive=True)
    new_theta, new_m, new_v = adamw_step(theta, grad, m, v, update)
    for s in _signed_permutations(N) + list(extra or []):
        cov = s.inv().T
        absolute = cov.applyfunc(lambda e: e**2)  # = |S| for a signed permutation
        t2, m2, v2 = adamw_step(s * theta, cov * grad, cov * m, absolute * v, update)
        require_zero(t2 - s * new_theta, f"theta equivariance for {s.tolist()}")
        require_zero(m2 - cov * new_m, f"m equivariance for {s.tolist()}")
        require_zero(v2 - absolute * new_v, f"v equivariance for {s.tolist()}")
    return "AdamW step commutes with all 48 signed permutations of R^3 (all symbols free)"


def covector_rule(x: sp.Expr, d: sp.Expr) -> sp.Expr:
    """A gradient coordinate under theta -> d theta: G -> G / d (chain rule)."""
    return x / d


def check_adamw_diagonal_forces_unit(
    eps_positive: bool = True, grad_rule: Callable[[sp.Expr, sp.Expr], sp.Expr] = covector_rule
) -> str:
    """One step from zero state (t = 1, c1 = 1 - beta1, c2 = 1 - beta2): the update of a
    coordinate with gradient x is lr x / (|x| + eps). Under theta -> d theta (d != 0) the
    gradient is x / d; commuting for all x > 0 means
        (x/d) / (|x|/|d| + eps) = d x / (x + eps)  for all x > 0,
    which forces d = 1 or d = -1 (both do commute). With eps = 0 (``eps_positive=False``)
    the same conclusion holds. ``grad_rule`` injects another gradient transformation."""
    x = sp.Symbol("x", positive=True)
    e = EPS if eps_positive else sp.Integer(0)
    solutions = []
    for sign in (1, -1):
        a = sp.Symbol("a", positive=True)  # |d|
        d = sign * a
        gx = grad_rule(x, d)
        lhs = gx / (sp.Abs(gx) + e)
        rhs = d * x / (x + e)
        num = sp.numer(sp.together(lhs - rhs))
        coeffs = sp.Poly(sp.expand(num), x).coeffs()
        sols = sp.solve(coeffs, a, dict=True)
        solutions += [sign * s[a] for s in sols]
    require(sorted(solutions) == [-1, 1], f"solutions for d: {solutions}")
    return "AdamW commutes with theta -> d theta (gradient -> G/d) for all G iff d = +-1"


def check_adamw_diagonal_forces_unit_eps0() -> str:
    """:func:`check_adamw_diagonal_forces_unit` in the eps = 0 (signSGD-like) branch."""
    return check_adamw_diagonal_forces_unit(eps_positive=False) + " (eps = 0)"


def check_general_linear_forces_signed_permutation() -> str:
    """The general lemma's two limits and its combinatorial step:
    t h / (|t h| + eps) -> sign(h) as t -> oo and ~ t h / eps as t -> 0 (so g_ij = sign(h_ij)
    and g = h = g^{-T}); every orthogonal matrix with entries in {-1, 0, 1} is a signed
    permutation (exhaustive over all 3^4 2x2 and 3^9 3x3 such matrices); and for eps = 0
    (signSGD) a {-1,0,1} matrix mapping {+-1}^n into {-1,0,1}^n has one non-zero per row."""
    t, h = sp.Symbol("t", positive=True), sp.Symbol("h", real=True, nonzero=True)
    phi = t * h / (sp.Abs(t * h) + EPS)
    require(sp.limit(phi.subs(h, 2), t, sp.oo) == 1 and sp.limit(phi.subs(h, -3), t, sp.oo) == -1,
            "large-t limit is sign(h)")
    require_zero(sp.diff(phi, t).subs(t, 0) - h / EPS, "small-t slope is h / eps")
    for n in (2, 3):
        count = 0
        entries = np.array(list(product((-1, 0, 1), repeat=n * n)), dtype=int).reshape(-1, n, n)
        gram = np.einsum("kij,kil->kjl", entries, entries)
        ortho = np.all(gram == np.eye(n, dtype=int), axis=(1, 2))
        for g in entries[ortho]:
            count += 1
            require(np.all(np.sum(g != 0, axis=0) == 1) and np.all(np.sum(g != 0, axis=1) == 1),
                    "orthogonal {-1,0,1} matrix must be a signed permutation")
        require(count == 2**n * math.factorial(n), f"expected 2^n n! elements, found {count}")
        signs = np.array(list(product((-1, 1), repeat=n)), dtype=int)
        images = np.einsum("kij,sj->ksi", entries, signs)
        ok = np.all(np.abs(images) <= 1, axis=(1, 2))
        dets = np.round(np.linalg.det(entries.astype(float))).astype(int)
        for g in entries[ok & (dets != 0)]:
            require(np.all(np.sum(g != 0, axis=1) == 1), "signSGD case: one non-zero per row")
    return "limits sign(h), h/eps; orthogonal {-1,0,1} matrices = signed permutations (n=2,3)"


def _phi(g: np.ndarray, eps: float) -> np.ndarray:
    """The first AdamW update direction from the zero state: G / (|G| + eps)."""
    return g / (np.abs(g) + eps)


def achievable_signs(nu: np.ndarray) -> np.ndarray:
    """The sign vectors sigma in {+-1}^n whose open orthant meets the hyperplane nu^perp: sigma (.) nu has
    a positive and a negative entry (on the support of nu; zeros of nu are free)."""
    n = len(nu)
    out = []
    for sig in product((1, -1), repeat=n):
        prod_ = np.array(sig) * nu
        if (prod_ > 0).any() and (prod_ < 0).any():
            out.append(sig)
    return np.array(out, dtype=float)


def check_noether_constrained_gradients(support: int = 3) -> str:
    """Proposition 6.2' (realistic gradients, G in (X theta)^perp). (i) The lemma: for nu with at least
    three non-zero entries the achievable sign vectors span R^n (exhaustive over the supports of
    n = 3, 4, 5), so X sigma = 0 for all of them forces X = 0; ``support = 2`` runs the same claim on
    two-entry supports, where it is false (rank n - 1). (ii) The bound is sharp: X = [[1, 1], [1, 1]],
    L = f(theta_1 - theta_2) is invariant under e^{sX} (symbolic), every realistic gradient is t(1, -1),
    and the first AdamW step commutes with e^{sX} for all s, t (symbolic, eps > 0). (iii) Generic X in
    gl(4), random theta: a realistic G without zero entries at which the step fails to commute, for
    s = 1e-3 (eps = 1e-8 and eps = 0)."""
    for n in (3, 4, 5):
        for supp in combinations(range(n), support):
            nu = np.zeros(n)
            nu[list(supp)] = np.arange(1, support + 1) * (-1) ** np.arange(support)
            rank = np.linalg.matrix_rank(achievable_signs(nu))
            require(rank == n, f"achievable signs of a {support}-entry support span rank {rank} < {n}")
    s_, t_, e_ = sp.symbols("s t eps", positive=True)
    th1, th2 = sp.symbols("th1 th2", real=True)
    X = sp.Matrix([[1, 1], [1, 1]])
    g = sp.simplify((s_ * X).exp())
    f = sp.Function("f")
    moved = g * sp.Matrix([th1, th2])
    require_zero(sp.simplify(f(moved[0] - moved[1]) - f(th1 - th2)), "L = f(th1 - th2) is invariant under e^{sX}")
    G = t_ * sp.Matrix([1, -1])
    gi_t = sp.simplify(g.inv().T)
    phi = lambda v: v.applyfunc(lambda c: c / (sp.Abs(c) + e_))  # noqa: E731
    require_zero(sp.simplify(phi(gi_t * G) - g * phi(G)), "X = 11^T commutes on realistic gradients")
    rng = np.random.default_rng(3)
    X4, theta = rng.normal(size=(4, 4)), rng.normal(size=4)
    nu = X4 @ theta
    basis = np.linalg.svd(nu[None, :])[2][1:]  # an orthonormal basis of nu^perp
    worst = {}
    for eps in (1e-8, 0.0):
        gaps = []
        for _ in range(50):
            G = basis.T @ rng.normal(size=3)
            gm = expm(1e-3 * X4)
            gaps.append(np.abs(_phi(np.linalg.inv(gm).T @ G, eps) - gm @ _phi(G, eps)).max())
        worst[eps] = max(gaps)
        require(worst[eps] > 1e-6, f"generic X: no realistic gradient breaks the step (eps = {eps})")
    return ("AdamW on Noether-constrained gradients: non-commuting for generic X (|supp X theta| >= 3: achievable signs "
            "span R^n); X = 11^T in R^2 commutes (the support bound is sharp)")


def check_sgd_commutes_iff_orthogonal() -> str:
    """SGD: g theta - lr g^{-T} G = g (theta - lr G) for all G iff g^{-T} = g iff g^T g = I.
    A symbolic rotation passes; diag(2, 1) and a shear fail."""
    c, s = sp.symbols("c s", real=True)
    theta, grad = symbols_vector("th", 2), symbols_vector("G", 2)
    lr = sp.Symbol("lr", positive=True)

    def gap(g: sp.Matrix, g_inv: sp.Matrix) -> sp.Matrix:
        return (g * theta - lr * g_inv.T * grad) - g * (theta - lr * grad)

    rot = sp.Matrix([[c, -s], [s, c]])
    rot_inv = rot.T  # valid on c^2 + s^2 = 1
    require_zero(gap(rot, rot_inv), "rotation commutes with SGD")
    require_zero(sp.expand(rot.T * rot).subs(s**2, 1 - c**2) - sp.eye(2), "rotation is orthogonal")
    for g in (sp.diag(2, 1), sp.Matrix([[1, 1], [0, 1]])):
        require(any(e != 0 for e in sp.expand(gap(g, g.inv()))), f"{g.tolist()} must fail")
    return "SGD step commutes with g iff g^-T = g (orthogonal): rotation yes, diag(2,1)/shear no"


# --- a toy QAT pipeline (explicit numbers) -------------------------------------------


def _quantize_rows(w: np.ndarray, bits: int = 3) -> np.ndarray:
    qmax = 2 ** (bits - 1) - 1
    s = np.max(np.abs(w), axis=1, keepdims=True) / qmax
    s = np.where(s == 0, 1.0, s)
    return s * np.clip(np.round(w / s), -qmax - 1, qmax)


def _toy_run(wq: np.ndarray, wk: np.ndarray, quantized: bool, steps: int = 30, odd: bool = True) -> np.ndarray:
    """AdamW on the bilinear score model f(x) = (W_q x) . (W_k x) with targets y, STE for
    Q_b if ``quantized``; returns the final (W_q, W_k) flattened. ``odd=False`` replaces the
    update m/(sqrt v + eps) by the even |m|/(sqrt v + eps) (an optimizer that is not level 3 for
    sign flips: Proposition 6.1's sign argument fails)."""
    rng = np.random.default_rng(0)
    xs, ys = rng.normal(size=(16, 3)), rng.normal(size=16)
    theta = np.concatenate([wq.ravel(), wk.ravel()])
    m, v = np.zeros_like(theta), np.zeros_like(theta)
    lr, b1, b2, eps, wd = 0.05, 0.9, 0.999, 1e-8, 0.1
    for t in range(1, steps + 1):
        a, b = theta[:6].reshape(2, 3), theta[6:].reshape(2, 3)
        aq, bq = (_quantize_rows(a), _quantize_rows(b)) if quantized else (a, b)
        qa, kb = xs @ aq.T, xs @ bq.T  # (16, 2)
        r = np.sum(qa * kb, axis=1) - ys
        ga = (r[:, None] * kb).T @ xs / len(xs)
        gb = (r[:, None] * qa).T @ xs / len(xs)
        grad = np.concatenate([ga.ravel(), gb.ravel()])
        theta = theta * (1 - lr * wd)
        m = b1 * m + (1 - b1) * grad
        v = b2 * v + (1 - b2) * grad**2
        step = (m if odd else np.abs(m)) / (1 - b1**t)
        theta = theta - lr * step / (np.sqrt(v / (1 - b2**t)) + eps)
    return theta


def _rho(wq: np.ndarray, wk: np.ndarray, odd: bool = True) -> np.ndarray:
    """Quantization vector of the toy: QAT run minus fine-tuning run, same start."""
    return _toy_run(wq, wk, True, odd=odd) - _toy_run(wq, wk, False, odd=odd)


def check_toy_pipeline(odd: bool = True) -> str:
    """Toy QAT pipeline (explicit numbers): the query/key symmetry W_q -> A W_q,
    W_k -> A^{-T} W_k is exact at level 1, and level 2 for monomial A. For the signed
    permutation A = [[0, -1], [1, 0]] the whole pipeline is equivariant:
    rho(g theta) = g rho(theta) to 1e-12; for the positive rescaling A = diag(2, 1/2)
    (level 1 and level 2, not level 3) it is not (difference > 1e-3).
    ``odd=False`` runs the toy with an even update |m|/(sqrt v + eps): level 3 fails for the sign
    in A, and the signed permutation must then fail (the must-fail twin of Theorem 6.3)."""
    rng = np.random.default_rng(1)
    wq, wk = rng.normal(size=(2, 3)), rng.normal(size=(2, 3))
    rho = _rho(wq, wk, odd)

    def act(a: np.ndarray, vec: np.ndarray) -> np.ndarray:
        a_inv_t = np.linalg.inv(a).T
        return np.concatenate([(a @ vec[:6].reshape(2, 3)).ravel(),
                               (a_inv_t @ vec[6:].reshape(2, 3)).ravel()])

    def gap(a: np.ndarray) -> float:
        theta = np.concatenate([wq.ravel(), wk.ravel()])
        moved = act(a, theta)
        rho_g = _rho(moved[:6].reshape(2, 3), moved[6:].reshape(2, 3), odd)
        return float(np.max(np.abs(rho_g - act(a, rho))))

    signed = np.array([[0.0, -1.0], [1.0, 0.0]])
    require(gap(signed) < 1e-12, f"signed permutation: pipeline must be equivariant (gap {gap(signed):.2e})")
    require(gap(np.diag([2.0, 0.5])) > 1e-3, "positive rescaling: pipeline must NOT be equivariant")
    return "toy QAT: rho(g theta) = g rho(theta) for a signed permutation, not for diag(2, 1/2)"


def check_fixed_point_sets() -> str:
    """For every non-identity signed permutation S of R^3, Fix(S) = ker(S - I) has
    dimension < 3 (a proper subspace: Lebesgue-null); the quantizer's cell boundaries
    {W : W_ij q_max = (k + 1/2) sigma W_il} and absmax ties {|W_ij| = |W_il|} are
    hyperplanes; off them Q_b is locally linear (checked exactly on a segment)."""
    # (The statement "Fix(S) is a proper subspace for S != I" is true by construction —
    # rank(S - I) >= 1 iff S != I — so it is not checked here; Theorem 6.5's condition on a
    # given checkpoint is tested in tests/symmetry/test_genericity.py.)
    # local linearity: Q(W + t H) is affine in t for small t (exact rationals, b = 3)
    w = [[Fraction(3), Fraction(7, 5), Fraction(-2, 5)], [Fraction(1, 3), Fraction(-5, 4), Fraction(1)]]
    h = [[Fraction(1), Fraction(-2), Fraction(3)], [Fraction(2), Fraction(1), Fraction(-1)]]

    def q_at(tt: Fraction) -> list[list[Fraction]]:
        return quantize([[a + tt * b for a, b in zip(ra, rb)] for ra, rb in zip(w, h)], 3)

    ts = [Fraction(k, 10**4) for k in (-2, -1, 0, 1, 2)]
    vals = [q_at(tt) for tt in ts]
    for i in range(2):
        for j in range(3):
            seq = [vv[i][j] for vv in vals]
            require(all(seq[k + 1] - seq[k] == seq[1] - seq[0] for k in range(4)),
                    "Q is affine near a generic W")
    # at a cell boundary it jumps: W = [[3, 1/2]] has W/s = (3, 1/2), a tie
    edge = [[Fraction(3), Fraction(1, 2)]]
    left = quantize([[Fraction(3), Fraction(1, 2) - Fraction(1, 10**6)]], 3)
    right = quantize([[Fraction(3), Fraction(1, 2) + Fraction(1, 10**6)]], 3)
    require(left[0][1] == 0 and right[0][1] == 1 and quantize(edge, 3)[0][1] == 0,
            "Q jumps across a cell boundary")
    return "Q affine off cell boundaries, jumps across them (exact rationals)"


CHECKS = [
    check_adamw_signed_permutation,
    check_adamw_diagonal_forces_unit,
    check_adamw_diagonal_forces_unit_eps0,
    check_general_linear_forces_signed_permutation,
    check_noether_constrained_gradients,
    check_sgd_commutes_iff_orthogonal,
    check_toy_pipeline,
    check_fixed_point_sets,
]


def main() -> None:
    """Run every check of Proposition 6 and print what was verified."""
    run_checks("Proposition 6 (optimizer and pipeline):", CHECKS)


if __name__ == "__main__":
    main()

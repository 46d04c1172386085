"""Symbolic and exact checks for Proposition 7 (the surrogate term R - R_surrogate).

Setting (see ``07_surrogate_term.md``): L_true(x) = L(P(theta_R + x)), g(x) = L(P(theta_Q) + x - rho_R),
D(x) = L_true(x) - g(x) at x = 0, rho_R, p = lam* rho_D; Delta_x = P(theta_R + x) - (P(theta_Q) + x - rho_R).

Every ``check_*`` returns a one-line description and raises ``AssertionError`` if the statement
fails; optional arguments inject a broken variant (used by ``test_proofs.py``).
Run ``python proofs/check_07_surrogate_term.py`` to print what is verified.
"""

from __future__ import annotations

import random
from fractions import Fraction

import numpy as np
import sympy as sp

from _proofkit import require, require_zero, run_checks
from check_05_quantizer import quantize  # the exact per-row quantizer of Result 5


def check_surrogate_identity(with_receiver_point: bool = True) -> str:
    """With free G_R, G_D (surrogate gains) and D0, DR, Dp (true minus surrogate loss at 0, rho_R, p):
    G_R,true = G_R + D0 - DR, G_D,true = G_D + D0 - Dp and

    R - R_sur = [(1 - R_sur) D0 + R_sur DR - Dp] / G_R,true.

    ``with_receiver_point=False`` drops the R_sur DR term (DR is not 0 when the head or off-scope
    tensors of theta_Q differ from theta_R's)."""
    GR, GD, D0, DR, Dp = sp.symbols("G_R G_D D0 DR Dp", real=True)
    r_sur = GD / GR
    grt, gdt = GR + D0 - DR, GD + D0 - Dp
    rhs = ((1 - r_sur) * D0 + (r_sur * DR if with_receiver_point else 0) - Dp) / grt
    require_zero(gdt / grt - r_sur - rhs, "surrogate identity")
    return "R - R_sur = [(1 - R_sur) D(0) + R_sur D(rho_R) - D(p)] / G_R,true (free symbols)"


def check_entrywise_error_bound(own_point_only: bool = False, seed: int = 0) -> str:
    """Exact rationals, b = 2, 3, 4: for random W_R, W_Q (rows of mixed scales) and directions x, with
    rho_R = W_Q - W_R, Delta_x = Q(W_R + x) - (Q(W_Q) + x - rho_R) equals e(W_R + x) - e(W_Q) (e = Q - id)
    and |Delta_x,ij| <= (s_i(W_R + x) + s_i(W_Q)) / 2, the per-row bound of Proposition 7; |e_ij| <= s_i/2
    itself (no clamp is active). ``own_point_only`` keeps only s_i(W_R + x)/2 (forgetting e(W_Q)), which
    must fail on some instance."""
    rng = random.Random(seed)

    def rand_matrix() -> list[list[Fraction]]:
        return [[Fraction(rng.randint(-60, 60), rng.randint(1, 9)) * (r + 1) for _ in range(4)] for r in range(3)]

    def scales(w: list[list[Fraction]], bits: int) -> list[Fraction]:
        return [max(abs(v) for v in row) / (2 ** (bits - 1) - 1) for row in w]

    count = 0
    for bits in (2, 3, 4):
        for _ in range(60):
            wr, wq, x = rand_matrix(), rand_matrix(), rand_matrix()
            rho = [[q - r for q, r in zip(rq, rr)] for rq, rr in zip(wq, wr)]
            pt = [[a + b for a, b in zip(ra, rb)] for ra, rb in zip(wr, x)]
            q_pt, q_q = quantize(pt, bits), quantize(wq, bits)
            s_pt, s_q = scales(pt, bits), scales(wq, bits)
            for i in range(3):
                for j in range(4):
                    e_pt, e_q = q_pt[i][j] - pt[i][j], q_q[i][j] - wq[i][j]
                    delta = q_pt[i][j] - (q_q[i][j] + x[i][j] - rho[i][j])
                    require(delta == e_pt - e_q, "Delta = e(W_R + x) - e(W_Q)")
                    require(abs(e_pt) <= s_pt[i] / 2 and abs(e_q) <= s_q[i] / 2, "|e| <= s/2")
                    bound = s_pt[i] / 2 + (0 if own_point_only else s_q[i] / 2)
                    require(abs(delta) <= bound, f"entrywise bound violated: |{delta}| > {bound} (b = {bits})")
                    count += 1
    return f"Delta_x = e(W_R + x) - e(W_Q), |Delta_x| <= (s(W_R + x) + s(W_Q))/2: {count} exact entries"


def check_first_order_remainder(const: float = 0.5) -> str:
    """|D - grad L(y).Delta| <= const beta ||Delta||^2 with const = 1/2, beta = sup_t |Delta^T Hess L(y + t
    Delta) Delta| / ||Delta||^2 (Taylor with integral remainder, first order): on 3000 random instances
    L(z) = 1/2 z^T A z + b.z + alpha softplus(w.z + c) in 3 dimensions, with the certificate
    beta <= |Delta^T A Delta| / ||Delta||^2 + |alpha| (w.Delta)^2 / (4 ||Delta||^2) (softplus'' <= 1/4); and
    sharp on the quadratic L = 1/2 z^T A z along A's top eigenvector (equality). ``const`` injects a
    smaller constant (1/4 must fail: the random instances that are nearly quadratic reach ratio 2)."""
    rng = np.random.default_rng(7)
    worst = 0.0
    for _ in range(3000):
        A = rng.normal(size=(3, 3))
        A = (A + A.T) / 2
        b, w, y, d = (rng.normal(size=3) for _ in range(4))
        alpha, c = 3 * rng.normal(), rng.normal()

        def L(z: np.ndarray) -> float:
            return 0.5 * z @ A @ z + b @ z + alpha * np.logaddexp(0.0, w @ z + c)

        sig = 1 / (1 + np.exp(-(w @ y + c)))
        grad = A @ y + b + alpha * sig * w
        beta = abs(d @ A @ d) / (d @ d) + abs(alpha) * (w @ d) ** 2 / (4 * (d @ d))
        worst = max(worst, abs(L(y + d) - L(y) - grad @ d) / (const * beta * (d @ d)))
    require(worst <= 1 + 1e-9, f"random instances violate the first-order remainder bound (ratio {worst:.3f})")
    A = np.diag([3.0, 1.0, -2.0])
    d = np.array([0.0, 0.0, 0.7])  # top |eigenvalue| direction: beta = 2
    exact = 0.5 * d @ A @ d  # D - F for a quadratic with y = 0
    require(abs(exact) <= const * 2.0 * (d @ d) * (1 + 1e-12),
            f"the quadratic violates the first-order bound with constant {const}")
    return f"|D - grad.Delta| <= (beta/2)||Delta||^2: 3000 random instances (max ratio {worst:.2f}), equality on a quadratic"


CHECKS = [check_surrogate_identity, check_entrywise_error_bound, check_first_order_remainder]


def main() -> None:
    """Run every check of Proposition 7 and print what was verified."""
    run_checks("Proposition 7 (the surrogate term):", CHECKS)


if __name__ == "__main__":
    main()

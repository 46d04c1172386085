"""Symbolic checks for Proposition 4 (the ViT symmetry catalogue preserves the function)
and for the non-symmetries (residual-stream rotations, MLP sign flips).

Conventions follow timm: a Linear layer maps a row of tokens x to x W^T + b; a head h
of ``qkv`` has row blocks W_q,h, W_k,h, W_v,h (d_head x d_model) and bias blocks; ``proj``
reads the concatenated heads through its column block W_o,h (d_model x d_head).
Sizes: n = 2 tokens, d_model = 3, d_head = 2, H = 2 heads, MLP hidden width 3; every
weight, bias, token and gain is a free symbol (see ``04_vit_symmetries.md``).

Every ``check_*`` returns a one-line description and raises ``AssertionError`` if the
identity fails; optional arguments inject a broken variant (used by ``test_proofs.py``).
Run ``python proofs/check_04_vit_symmetries.py`` to print what is verified.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import permutations

import sympy as sp

from _proofkit import (
    generic_gl,
    require,
    require_zero,
    run_checks,
    symbols_matrix,
    symbols_vector,
)

N_TOK, D_MODEL, D_HEAD, HIDDEN = 2, 3, 2, 3
MatRule = Callable[[sp.Matrix, sp.Matrix, sp.Matrix], sp.Matrix]


def _ones(n: int) -> sp.Matrix:
    return sp.ones(n, 1)


def linear(x: sp.Matrix, w: sp.Matrix, b: sp.Matrix) -> sp.Matrix:
    """timm/PyTorch Linear on a token matrix: x W^T + 1 b^T."""
    return x * w.T + _ones(x.rows) * b.T


def softmax_rows(s: sp.Matrix) -> sp.Matrix:
    """Row-wise softmax with symbolic exponentials."""
    out = sp.zeros(s.rows, s.cols)
    for i in range(s.rows):
        den = sum(sp.exp(s[i, j]) for j in range(s.cols))
        for j in range(s.cols):
            out[i, j] = sp.exp(s[i, j]) / den
    return out


def layernorm(x: sp.Matrix, gamma: sp.Matrix, beta: sp.Matrix, eps: sp.Expr) -> sp.Matrix:
    """LayerNorm of a column vector x: gamma * (x - mean) / sqrt(var + eps) + beta."""
    d = x.rows
    mean = sum(x) / d
    centred = x - mean * _ones(d)
    var = sum(c**2 for c in centred) / d
    return sp.matrix_multiply_elementwise(gamma, centred) / sp.sqrt(var + eps) + beta


def default_key_rule(a: sp.Matrix, a_inv: sp.Matrix, w_k: sp.Matrix) -> sp.Matrix:
    """Key side of query/key mixing: W_k,h -> A_h^{-T} W_k,h (and b_k,h likewise)."""
    return a_inv.T * w_k


def default_out_rule(b: sp.Matrix, b_inv: sp.Matrix, w_o: sp.Matrix) -> sp.Matrix:
    """Output side of value/output mixing: proj columns of head h -> W_o,h B_h^{-1}."""
    return w_o * b_inv


def check_qk_mixing(key_rule: MatRule = default_key_rule) -> str:
    """Q K^T is unchanged exactly under W_q -> A W_q, b_q -> A b_q, W_k -> A^{-T} W_k,
    b_k -> A^{-T} b_k, for a generic A in GL(d_head = 2); hence so are the scores
    Q K^T / sqrt(d_head) and the row-wise softmax."""
    x = symbols_matrix("x", N_TOK, D_MODEL)
    w_q, w_k = symbols_matrix("wq", D_HEAD, D_MODEL), symbols_matrix("wk", D_HEAD, D_MODEL)
    b_q, b_k = symbols_vector("bq", D_HEAD), symbols_vector("bk", D_HEAD)
    a, a_inv = generic_gl(D_HEAD, "a")
    scores = linear(x, w_q, b_q) * linear(x, w_k, b_k).T
    q_new = linear(x, a * w_q, a * b_q)
    k_new = linear(x, key_rule(a, a_inv, w_k), key_rule(a, a_inv, b_k))
    require_zero(q_new * k_new.T - scores, "Q K^T under query/key mixing")
    return "Q K^T unchanged under (W_q, b_q) -> A(.), (W_k, b_k) -> A^-T(.) (generic A in GL(2))"


def check_softmax_shift_and_key_bias() -> str:
    """softmax(s + r 1^T) = softmax(s) row-wise, and changing b_k adds (Q db_k) 1^T to the
    scores: the key bias never changes the function (an extra, affine, symmetry)."""
    s = symbols_matrix("s", N_TOK, 3)
    r = symbols_vector("r", N_TOK)
    shifted = softmax_rows(s + r * sp.ones(1, 3))
    base = softmax_rows(s)
    require_zero((shifted - base).applyfunc(lambda e: sp.powsimp(sp.expand(e, power_exp=True))),
                 "softmax shift invariance")
    x = symbols_matrix("x", N_TOK, D_MODEL)
    w_q, w_k = symbols_matrix("wq", D_HEAD, D_MODEL), symbols_matrix("wk", D_HEAD, D_MODEL)
    b_q, b_k, db = (symbols_vector(n, D_HEAD) for n in ("bq", "bk", "db"))
    q = linear(x, w_q, b_q)
    delta = q * linear(x, w_k, b_k + db).T - q * linear(x, w_k, b_k).T
    require_zero(delta - (q * db) * sp.ones(1, N_TOK), "key-bias change is row-constant")
    return "softmax is row-shift invariant; b_k -> b_k + db adds the row constant Q db"


def check_vo_mixing(out_rule: MatRule = default_out_rule) -> str:
    """For any attention matrix P (generic symbols), V -> V B^T (W_v, b_v -> B(.)) and
    W_o -> W_o B^{-1} leave P V W_o^T unchanged (generic B in GL(2))."""
    x = symbols_matrix("x", N_TOK, D_MODEL)
    p = symbols_matrix("p", N_TOK, N_TOK)
    w_v, b_v = symbols_matrix("wv", D_HEAD, D_MODEL), symbols_vector("bv", D_HEAD)
    w_o = symbols_matrix("wo", D_MODEL, D_HEAD)
    b, b_inv = generic_gl(D_HEAD, "b")
    before = p * linear(x, w_v, b_v) * w_o.T
    after = p * linear(x, b * w_v, b * b_v) * out_rule(b, b_inv, w_o).T
    require_zero(after - before, "value/output mixing")
    return "P V W_o^T unchanged under (W_v, b_v) -> B(.), W_o -> W_o B^-1 (generic B, any P)"


def _mha(x: sp.Matrix, heads: list[dict[str, sp.Matrix]], b_proj: sp.Matrix) -> sp.Matrix:
    """Multi-head attention, heads given as dicts of wq, bq, wk, bk, wv, bv, wo."""
    out = _ones(x.rows) * b_proj.T
    scale = 1 / sp.sqrt(D_HEAD)
    for h in heads:
        q, k, v = (linear(x, h[f"w{c}"], h[f"b{c}"]) for c in "qkv")
        out += softmax_rows(scale * q * k.T) * v * h["wo"].T
    return out


def check_head_permutation(permute_proj: bool = True) -> str:
    """Permuting the heads (q, k, v row blocks and biases, proj column blocks) with the
    same pi leaves multi-head attention (with its softmax) unchanged; H = 2, pi = swap.
    ``permute_proj=False`` forgets the proj column blocks."""
    x = symbols_matrix("x", N_TOK, D_MODEL)
    heads = []
    for i in range(2):
        h = {f"w{c}": symbols_matrix(f"w{c}{i}", D_HEAD, D_MODEL) for c in "qkv"}
        h |= {f"b{c}": symbols_vector(f"b{c}{i}", D_HEAD) for c in "qkv"}
        h["wo"] = symbols_matrix(f"wo{i}", D_MODEL, D_HEAD)
        heads.append(h)
    b_proj = symbols_vector("bp", D_MODEL)
    swapped = [dict(heads[1]), dict(heads[0])]
    if not permute_proj:
        swapped[0]["wo"], swapped[1]["wo"] = heads[0]["wo"], heads[1]["wo"]
    require_zero(_mha(x, swapped, b_proj) - _mha(x, heads, b_proj), "head permutation")
    return "multi-head attention (softmax included) unchanged under a head permutation"


def check_layernorm_gain_folding(col_rule: Callable[[sp.Expr], sp.Expr] = lambda s: 1 / s
                                 ) -> str:
    """W (gamma * xhat + beta) + b is unchanged under gamma -> s gamma, beta -> s beta,
    W -> W diag(col_rule(s)) with col_rule(s) = 1/s, for generic x, eps and s with non-zero
    entries (the catalogue takes s > 0; the algebra only needs s_i != 0)."""
    x, gamma, beta, s = (symbols_vector(n, D_MODEL) for n in ("x", "g", "be", "s"))
    w, b = symbols_matrix("w", 2, D_MODEL), symbols_vector("b", 2)
    eps = sp.Symbol("eps", positive=True)
    before = w * layernorm(x, gamma, beta, eps) + b
    scaled = layernorm(x, sp.matrix_multiply_elementwise(s, gamma),
                       sp.matrix_multiply_elementwise(s, beta), eps)
    w_new = w * sp.diag(*[col_rule(si) for si in s])
    require_zero(w_new * scaled + b - before, "LayerNorm gain folding")
    return "next_Linear(LN(x)) unchanged under (gamma, beta) -> s(.), W -> W diag(1/s)"


def check_layerscale_folding(row_rule: Callable[[sp.Expr], sp.Expr] = lambda s: 1 / s) -> str:
    """gamma * (W h + b) is unchanged under gamma -> s gamma, W -> diag(1/s) W, b -> b / s
    (LayerScale after proj or fc2; s with non-zero entries)."""
    h = symbols_vector("h", 2)
    gamma, s, b = (symbols_vector(n, D_MODEL) for n in ("g", "s", "b"))
    w = symbols_matrix("w", D_MODEL, 2)
    before = sp.matrix_multiply_elementwise(gamma, w * h + b)
    d = sp.diag(*[row_rule(si) for si in s])
    after = sp.matrix_multiply_elementwise(sp.matrix_multiply_elementwise(s, gamma),
                                           d * w * h + d * b)
    require_zero(after - before, "LayerScale folding")
    return "gamma * (W h + b) unchanged under gamma -> s gamma, (W, b) -> diag(1/s)(.)"


def check_mlp_hidden_permutation(permute_fc2: bool = True) -> str:
    """fc2(sigma(fc1(x))) is unchanged under W1 -> P W1, b1 -> P b1, W2 -> W2 P^T for every
    3x3 permutation P and ANY elementwise activation sigma (an undefined function)."""
    sigma = sp.Function("sigma")
    x = symbols_vector("x", 2)
    w1, b1 = symbols_matrix("w1", HIDDEN, 2), symbols_vector("b1", HIDDEN)
    w2, b2 = symbols_matrix("w2", 2, HIDDEN), symbols_vector("b2", 2)

    def mlp(w1_: sp.Matrix, b1_: sp.Matrix, w2_: sp.Matrix) -> sp.Matrix:
        return w2_ * (w1_ * x + b1_).applyfunc(sigma) + b2

    base = mlp(w1, b1, w2)
    for perm in permutations(range(HIDDEN)):
        p = sp.Matrix(HIDDEN, HIDDEN, lambda i, j: 1 if perm[i] == j else 0)
        w2_new = w2 * p.T if permute_fc2 else w2
        require_zero(mlp(p * w1, p * b1, w2_new) - base, f"MLP hidden permutation {perm}")
    return "fc2(sigma(fc1 x)) unchanged under all 6 hidden permutations (sigma arbitrary)"


def _block(x: sp.Matrix, prm: dict[str, sp.Matrix], eps: sp.Expr) -> sp.Matrix:
    """One pre-norm residual sub-block on a stream vector x (column):
    x + W_out sigma(W_in LN(x; gamma, beta) + b_in) + b_out, sigma an undefined function."""
    sigma = sp.Function("sigma")
    hidden = (prm["w_in"] * layernorm(x, prm["gamma"], prm["beta"], eps) + prm["b_in"])
    return x + prm["w_out"] * hidden.applyfunc(sigma) + prm["b_out"]


def _block_params() -> dict[str, sp.Matrix]:
    return {
        "gamma": symbols_vector("g", D_MODEL),
        "beta": symbols_vector("be", D_MODEL),
        "w_in": symbols_matrix("wi", 2, D_MODEL),
        "b_in": symbols_vector("bi", 2),
        "w_out": symbols_matrix("wo", D_MODEL, 2),
        "b_out": symbols_vector("bo", D_MODEL),
    }


def check_residual_permutation(permute_gain: bool = True) -> str:
    """For R = sigma P (P any 3x3 permutation, sigma = +-1):
    LN(R x; P gamma, sigma P beta) = R LN(x; gamma, beta), and a pre-norm residual block
    with readers W_in -> W_in R^T, writers (W_out, b_out) -> R(.) maps R x to R block(x)
    (12 cases; sigma = -1 is the sign-flip lift in which the LN output turns with the
    stream). ``permute_gain=False`` leaves gamma unpermuted."""
    x = symbols_vector("x", D_MODEL)
    eps = sp.Symbol("eps", positive=True)
    prm = _block_params()
    base = _block(x, prm, eps)
    for perm in permutations(range(D_MODEL)):
        p = sp.Matrix(D_MODEL, D_MODEL, lambda i, j: 1 if perm[i] == j else 0)
        for sigma in (1, -1):
            r = sigma * p
            new = {
                "gamma": p * prm["gamma"] if permute_gain else prm["gamma"],
                "beta": r * prm["beta"],
                "w_in": prm["w_in"] * r.T,
                "b_in": prm["b_in"],
                "w_out": r * prm["w_out"],
                "b_out": r * prm["b_out"],
            }
            require_zero(layernorm(r * x, new["gamma"], new["beta"], eps)
                         - r * layernorm(x, prm["gamma"], prm["beta"], eps),
                         f"LN equivariance for {sigma} * {perm}")
            require_zero(_block(r * x, new, eps) - r * base, f"stream map {sigma} * {perm}")
    return "pre-norm residual block (LN included) is equivariant under all 12 maps +-P"


def check_residual_sign_flip(negate_gain: bool = True) -> str:
    """An exact symmetry missing from the catalogue: the global sign flip of the residual
    stream. LN(-x; -gamma, beta) = LN(x; gamma, beta) (the normalisation is odd), so
    negating every stream writer (W_out, b_out; patch embedding, cls/pos tokens) and every
    LN gain gives block_new(-x) = -block(x). ``negate_gain=False`` forgets the gains."""
    x = symbols_vector("x", D_MODEL)
    eps = sp.Symbol("eps", positive=True)
    prm = _block_params()
    gamma = -prm["gamma"] if negate_gain else prm["gamma"]
    require_zero(layernorm(-x, gamma, prm["beta"], eps) - layernorm(x, prm["gamma"], prm["beta"], eps),
                 "LN(-x; -gamma, beta) = LN(x; gamma, beta)")
    new = dict(prm, gamma=gamma, w_out=-prm["w_out"], b_out=-prm["b_out"])
    require_zero(_block(-x, new, eps) + _block(x, prm, eps), "residual sign flip")
    return "stream sign flip x -> -x with gamma -> -gamma, writers -> -writers is exact"


def check_qk_norm_continuous_family(d: int = 2) -> str:
    """With q/k normalisation (a LayerNorm over d_head before the score) and d_head = 2, query/key
    mixing has a continuous family of exact lifts, so "only +-P" does not hold there.

    A = c P_1 + P_perp (P_1 the projector on span{1}, P_perp on 1^perp; c != 0) fixes 1^perp pointwise,
    so n(A x) = n(x) and LN(A x; gamma', beta') = A LN(x; gamma, beta) for all x with beta' = A beta and
    gamma' (.) z = A (gamma (.) z) on 1^perp: for d = 2, 1^perp is the line of w = (1, -1), and
    gamma' = (A(gamma (.) w)) (.) w solves it. A^{-T} = (1/c) P_1 + P_perp is of the same form, so
    scores (A q)^T (A^{-T} k) after the two norms are unchanged: a one-parameter group of level-1
    symmetries. ``d = 3`` is the twin: 1^perp is a plane, diag(gamma') = A diag(gamma) on it has no
    solution gamma' for generic gamma and c != 1 (part (a)(2)'s setting)."""
    x, gamma, beta = (symbols_vector(n, d) for n in ("x", "g", "b"))
    c, eps = sp.Symbol("c", positive=True), sp.Symbol("eps", positive=True)
    one = _ones(d)
    p1 = one * one.T / d
    a = c * p1 + (sp.eye(d) - p1)
    # the gain lift: diag(gamma') z = A diag(gamma) z for z in a basis of 1^perp
    basis = [sp.Matrix([1 if k == 0 else (-1 if k == j else 0) for k in range(d)]) for j in range(1, d)]
    gp = symbols_vector("gp", d)
    eqs = [e for z in basis for e in (sp.matrix_multiply_elementwise(gp, z) - a * sp.matrix_multiply_elementwise(gamma, z))]
    sol = sp.solve(eqs, list(gp), dict=True)
    require(len(sol) == 1 and set(sol[0]) == set(gp), f"d = {d}: no gain gamma' lifts A = c P_1 + P_perp")
    gamma_new = gp.subs(sol[0])
    lhs = layernorm(a * x, gamma_new, a * beta, eps)
    require_zero(lhs - a * layernorm(x, gamma, beta, eps), "LN(A x; gamma', A beta) = A LN(x; gamma, beta)")
    a_inv_t = (1 / c) * p1 + (sp.eye(d) - p1)
    require_zero(sp.expand(a.T * a_inv_t) - sp.eye(d), "A^T A^{-T} = I: scores unchanged")
    return "q/k norm, d_head = 2: A = c P_1 + P_perp (any c > 0) lifts through LayerNorm: a continuous family"


def check_stream_sign_flip_is_generated() -> str:
    """Item 9 = item 8 with R = -I composed with item 6 at s = -1: the sign each map puts on writers,
    LN gain, LN bias and readers multiplies to item 9's (-1, -1, +1, +1); checked on the block of
    check_residual_sign_flip by applying the two maps in turn."""
    x = symbols_vector("x", D_MODEL)
    eps = sp.Symbol("eps", positive=True)
    prm = _block_params()
    item8 = dict(prm, w_out=-prm["w_out"], b_out=-prm["b_out"], beta=-prm["beta"], w_in=-prm["w_in"])
    both = dict(item8, gamma=-item8["gamma"], beta=-item8["beta"], w_in=-item8["w_in"])
    item9 = dict(prm, gamma=-prm["gamma"], w_out=-prm["w_out"], b_out=-prm["b_out"])
    for k in prm:
        require_zero(both[k] - item9[k], f"item 8 (R = -I) o item 6 (s = -1) = item 9 on {k}")
    require_zero(_block(-x, both, eps) + _block(x, prm, eps), "the composition is exact")
    return "stream sign flip (item 9) = item 8 at R = -I composed with item 6 at s = -1"


def _n(x: sp.Matrix) -> sp.Matrix:
    """Normalised centred vector n(x) = LN(x; 1, 0) with eps = 1/100."""
    return layernorm(x, _ones(x.rows), sp.zeros(x.rows, 1), sp.Rational(1, 100))


def check_rotation_counterexamples() -> str:
    """Residual-stream rotations are not symmetries (numbers, d_model = 3, eps = 1/100):

    (a) R = rotation by pi/2 in the (e1, e2) plane does not fix span{1}: n(x) = n(x + t 1)
        for every t but n(R x) != n(R (x + 1)): LN's output after R is not a function of
        LN's output before R, so no downstream weights can compensate.
    (b) R = rotation by pi/2 about the axis 1/sqrt3 (fixes 1, so n(Rx) = R n(x)): with a
        non-constant gain gamma = (1, 2, 3), diag(gamma') R = R diag(gamma) on 1-perp has no
        solution gamma', so the gains cannot be transported.
    (c) The natural lift (writers R(.), readers (.)R^T, LN parameters R(.)) of (a) changes
        the output of a concrete pre-norm block.
    """
    x = sp.Matrix([1, 2, 4])
    one = _ones(3)
    rot = sp.Matrix([[0, -1, 0], [1, 0, 0], [0, 0, 1]])
    require_zero(_n(x + one) - _n(x), "n is shift invariant")
    require(not all(sp.simplify(e) == 0 for e in _n(rot * (x + one)) - _n(rot * x)),
            "(a) n(Rx) must not be a function of n(x)")
    # (b) rotation about 1/sqrt3 by pi/2 (Rodrigues), exact.
    k = one / sp.sqrt(3)
    kx = sp.Matrix([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    r1 = sp.eye(3) + kx + kx * kx  # sin = 1, 1 - cos = 1
    require(sp.simplify(r1 * r1.T - sp.eye(3)) == sp.zeros(3, 3) and r1 * one == one,
            "R fixes 1 and is orthogonal")
    gam = sp.Matrix([1, 2, 3])
    gp = symbols_vector("gp", 3)
    basis = [sp.Matrix([1, -1, 0]), sp.Matrix([0, 1, -1])]
    eqs = [e for b in basis for e in (sp.diag(*gp) * r1 * b - r1 * sp.diag(*gam) * b)]
    require(sp.solve(eqs, list(gp), dict=True) == [], "(b) no transported gain exists")
    # (c) natural lift of the (e1, e2) rotation on a concrete block.
    prm = {
        "gamma": sp.Matrix([1, 2, 3]), "beta": sp.Matrix([0, 1, 0]),
        "w_in": sp.Matrix([[1, 0, 2], [0, 1, -1]]), "b_in": sp.Matrix([0, 1]),
        "w_out": sp.Matrix([[1, 0], [0, 1], [1, 1]]), "b_out": sp.Matrix([1, 0, 0]),
    }
    eps = sp.Rational(1, 100)
    lifted = {
        "gamma": rot * prm["gamma"], "beta": rot * prm["beta"],
        "w_in": prm["w_in"] * rot.T, "b_in": prm["b_in"],
        "w_out": rot * prm["w_out"], "b_out": rot * prm["b_out"],
    }

    def blk(xx: sp.Matrix, pp: dict[str, sp.Matrix]) -> sp.Matrix:
        sig = sp.Lambda(sp.Symbol("t"), sp.Symbol("t") ** 2)  # any non-linear activation
        hidden = (pp["w_in"] * layernorm(xx, pp["gamma"], pp["beta"], eps) + pp["b_in"])
        return xx + pp["w_out"] * hidden.applyfunc(sig) + pp["b_out"]

    gap = (blk(rot * x, lifted) - rot * blk(x, prm)).evalf(30)
    require(max(abs(e) for e in gap) > sp.Rational(1, 10), "(c) the lifted block must differ")
    return "rotations: (a) n(Rx) not a function of n(x); (b) no transported gain; (c) output changes"


def gelu(z: sp.Expr) -> sp.Expr:
    """Exact (erf) GELU, timm's default nn.GELU."""
    return z / 2 * (1 + sp.erf(z / sp.sqrt(2)))


def check_mlp_sign_flip_fails(activation: Callable[[sp.Expr], sp.Expr] = gelu) -> str:
    """GELU(z) - GELU(-z) = z (odd part z/2), so the hidden sign flip (fc1 row and bias
    negated, fc2 column negated) changes a unit's contribution by -w z erf(z / sqrt2) != 0;
    also GELU(2z) != 2 GELU(z) (no positive rescaling). Counterexample z = 1:
    GELU(1) = 0.8413..., -GELU(-1) = 0.1586...

    ``activation`` injects another function; an odd one (tanh) makes the flip exact and
    the check fails."""
    z, w = sp.symbols("z w", real=True)
    if activation is gelu:
        require_zero(gelu(z) - gelu(-z) - z, "GELU(z) - GELU(-z) = z")
        change = -w * activation(-z) - w * activation(z)
        require_zero(change + w * z * sp.erf(z / sp.sqrt(2)), "flip changes output by -w z erf")
    flipped_minus_orig = (-activation(-sp.Integer(1))) - activation(sp.Integer(1))
    require(abs(sp.N(flipped_minus_orig)) > sp.Rational(1, 2),
            "sign flip must change the unit's output at z = 1")
    require(abs(sp.N(activation(sp.Integer(2)) - 2 * activation(sp.Integer(1)))) > sp.Rational(1, 10),
            "positive rescaling must change the unit's output")
    return "GELU(z) - GELU(-z) = z: sign flip changes output by -w z erf(z/sqrt2); 1 -> 0.84 vs 0.16"


CHECKS = [
    check_qk_mixing,
    check_softmax_shift_and_key_bias,
    check_vo_mixing,
    check_head_permutation,
    check_layernorm_gain_folding,
    check_layerscale_folding,
    check_mlp_hidden_permutation,
    check_residual_permutation,
    check_residual_sign_flip,
    check_stream_sign_flip_is_generated,
    check_qk_norm_continuous_family,
    check_rotation_counterexamples,
    check_mlp_sign_flip_fails,
]


def main() -> None:
    """Run every check of Proposition 4 and print what was verified."""
    run_checks("Proposition 4 (ViT symmetries preserve the function):", CHECKS)


if __name__ == "__main__":
    main()

"""Small helpers shared by the ``check_0N_*.py`` scripts in ``proofs/``.

Every check in ``proofs/`` is a plain function that returns a one-line description of
what it verified and raises :class:`AssertionError` when the algebra does not hold.
``require`` raises explicitly (it is not an ``assert`` statement), so the checks keep
working under ``python -O``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import sympy as sp

Check = Callable[[], str]

_RNG = random.Random(20260427)  # fixed seed: the checks are deterministic


def require(condition: bool, message: str) -> None:
    """Raise ``AssertionError(message)`` unless ``condition`` is true."""
    if not bool(condition):
        raise AssertionError(message)


def _refuted_at_random_point(expr: sp.Expr) -> bool:
    """True if ``expr`` is certainly non-zero at some rational point (so not an identity).

    Exact when the value is a rational number; otherwise (exp, sqrt, erf ...) the value is
    evaluated at 30 and 60 digits and counts only if both agree and it is clearly non-zero.
    """
    point = {s: sp.Rational(_RNG.randint(1, 9), _RNG.randint(1, 9)) for s in expr.free_symbols}
    try:
        value = expr.xreplace(point)
    except ZeroDivisionError:  # pragma: no cover - the point hit a pole
        return False
    if value.is_Rational:
        return value != 0
    if value.has(sp.Function("sigma")) or value.free_symbols:
        return False
    try:
        v30, v60 = complex(value.evalf(30)), complex(value.evalf(60))
    except (TypeError, ValueError):
        return False
    return abs(v60) > 1e-8 and abs(v30 - v60) <= 1e-6 * abs(v60)


def is_zero(expr: sp.Expr) -> bool:
    """True when a rational expression (radicals and functions allowed as generators)
    is identically zero.

    Steps: (1) evaluate at a random rational point; a clearly non-zero value refutes the
    identity at once (this is what makes broken variants fail fast); (2) ``expand``: zero
    proves the identity, and a non-zero Laurent polynomial disproves it; (3) otherwise put
    the expression over one denominator (``together``) and expand the numerator. Only
    steps (2) and (3) ever return True, so a false identity is never certified. No
    ``simplify``: an identity that needs relations between generators beyond sympy's
    automatic ones (e.g. sin^2 + cos^2 = 1) is reported as non-zero; the checks are
    written to avoid that.
    """
    expr = sp.sympify(expr)
    if expr == 0:
        return True
    # Fast refutation: an identity must hold at a random rational point.
    if _refuted_at_random_point(expr):
        return False
    expanded = sp.expand(expr)
    if expanded == 0:
        return True
    # A Laurent polynomial (negative powers of symbols only) is in canonical form once
    # expanded, so a non-zero expansion is a genuine non-zero: no need to go further.
    if all(
        p.base.is_Symbol or not p.exp.is_negative for p in expanded.atoms(sp.Pow)
    ):
        return False
    numerator, _ = sp.fraction(sp.together(expr))
    return sp.expand(numerator) == 0


def matrix_is_zero(m: sp.MatrixBase) -> bool:
    """True when every entry of ``m`` is identically zero (see :func:`is_zero`)."""
    return all(is_zero(e) for e in m)


def _summary(expr: sp.Expr, width: int = 160) -> str:
    """A short, cheap description of a non-zero residual (for error messages)."""
    terms = sp.Add.make_args(expr)
    text = " + ".join(sp.sstr(t) for t in terms[:3])
    more = f" + ... ({len(terms)} terms)" if len(terms) > 3 else ""
    return (text[:width] + " ...") if len(text) > width else text + more


def require_zero(expr: sp.Expr | sp.MatrixBase, message: str) -> None:
    """Require ``expr`` (an expression or a matrix) to vanish identically."""
    if isinstance(expr, sp.MatrixBase):
        require_zero_matrix(expr, message)
        return
    require(is_zero(expr), f"{message}: residual {_summary(expr)}")


def require_zero_matrix(m: sp.MatrixBase, message: str) -> None:
    """Require every entry of ``m`` to vanish identically."""
    for idx, e in enumerate(m):
        if not is_zero(e):
            raise AssertionError(
                f"{message}: entry {idx} residual {_summary(e)}"
            )


def symbols_vector(name: str, n: int, **assumptions: bool) -> sp.Matrix:
    """Column vector (name_1, ..., name_n) of fresh real symbols."""
    return sp.Matrix(sp.symbols(f"{name}_1:{n + 1}", real=True, **assumptions))


def symbols_matrix(name: str, rows: int, cols: int, **assumptions: bool) -> sp.Matrix:
    """Matrix of fresh real symbols name_ij (1-based indices)."""
    return sp.Matrix(
        rows,
        cols,
        lambda i, j: sp.Symbol(f"{name}_{i + 1}{j + 1}", real=True, **assumptions),
    )


def symmetric_matrix(name: str, n: int) -> sp.Matrix:
    """Generic symmetric n x n matrix of real symbols name_ij (i <= j)."""
    entries: dict[tuple[int, int], sp.Symbol] = {}
    for i in range(n):
        for j in range(i, n):
            entries[(i, j)] = entries[(j, i)] = sp.Symbol(f"{name}_{i + 1}{j + 1}", real=True)
    return sp.Matrix(n, n, lambda i, j: entries[(i, j)])


def run_checks(title: str, checks: Sequence[Check]) -> list[str]:
    """Run ``checks`` in order, print one line per verified statement, return the lines."""
    print(title)
    lines: list[str] = []
    for check in checks:
        line = check()
        lines.append(line)
        print(f"  ok  {check.__name__}: {line}")
    print(f"{len(lines)} checks passed.")
    return lines


def generic_gl(n: int, name: str) -> tuple[sp.Matrix, sp.Matrix]:
    """A generic invertible n x n matrix and its inverse, both without determinants.

    g = L D U with L unit lower-triangular, D diagonal (non-zero symbols), U unit
    upper-triangular, all entries free symbols. Every matrix whose leading principal
    minors are non-zero has exactly one such factorisation, so g ranges over an open
    dense subset of GL(n): an identity that holds for this symbolic g and is polynomial
    in the entries of g and g^{-1} holds on all of GL(n) by continuity. The inverse
    U^{-1} D^{-1} L^{-1} is polynomial in the l, u symbols and 1/d, which keeps every
    later cancellation cheap (monomial denominators only).
    """
    lower, upper = sp.eye(n), sp.eye(n)
    for i in range(n):
        for j in range(i):
            lower[i, j] = sp.Symbol(f"{name}l_{i + 1}{j + 1}", real=True)
            upper[j, i] = sp.Symbol(f"{name}u_{j + 1}{i + 1}", real=True)
    diag = [sp.Symbol(f"{name}d_{i + 1}", real=True, nonzero=True) for i in range(n)]
    g = lower * sp.diag(*diag) * upper
    g_inv = sp.expand(upper.inv() * sp.diag(*[1 / d for d in diag]) * lower.inv())
    return g, g_inv

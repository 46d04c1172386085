"""Statistics over donor × receiver matrices: correlations with a quadratic-assignment test.

Cells of a donor × receiver matrix share donors and receivers, so they are not independent and
IID p-values are wrong. The quadratic-assignment procedure (QAP, Mantel-style) permutes the
*task labels* of one matrix — the same permutation on its rows and columns — and recomputes the
correlation over the off-diagonal cells; the p-value is the fraction of relabellings with a
correlation at least as large in magnitude. With n tasks there are n! relabellings: all are
enumerated when n! ≤ ``permutations`` (an exact test), else a seeded random sample is used.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats


def off_diagonal(mat: np.ndarray) -> np.ndarray:
    """The n(n−1) off-diagonal entries of a square matrix, row-major."""
    mat = np.asarray(mat, float)
    return mat[~np.eye(len(mat), dtype=bool)]


def _corr(x: np.ndarray, y: np.ndarray, method: str) -> float:
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
        return float("nan")
    if method == "spearman":
        return float(stats.spearmanr(x[ok], y[ok]).statistic)
    if method == "pearson":
        return float(stats.pearsonr(x[ok], y[ok]).statistic)
    raise ValueError(f"unknown correlation {method!r}; known: spearman, pearson")


@dataclass(frozen=True)
class QAPResult:
    """A correlation over off-diagonal cells with its QAP p-value and leave-one-out range."""

    method: str
    r: float
    p_value: float
    n_cells: int
    n_permutations: int
    exact: bool
    loo_min: float
    loo_max: float

    def to_dict(self) -> dict:
        return asdict(self)


def _relabellings(n: int, permutations: int, seed: int):
    if math.factorial(n) <= permutations:
        return list(itertools.permutations(range(n))), True
    rng = np.random.default_rng(seed)
    return [tuple(rng.permutation(n)) for _ in range(permutations)], False


def qap_correlation(x: np.ndarray, y: np.ndarray, method: str = "spearman", permutations: int = 5000,
                    seed: int = 0) -> QAPResult:
    """Correlation of two n×n matrices over off-diagonal cells, with a two-sided QAP p-value.

    x, y: (n, n) arrays indexed [donor, receiver]. The permutation acts on x's task labels,
    x[π][:, π]. The leave-one-out range is over dropping every cell that involves one task
    (as donor or as receiver), for each task in turn.
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.shape != y.shape or x.ndim != 2 or x.shape[0] != x.shape[1]:
        raise ValueError(f"need two square matrices of the same shape, got {x.shape} and {y.shape}")
    n = len(x)
    r = _corr(off_diagonal(x), off_diagonal(y), method)
    perms, exact = _relabellings(n, permutations, seed)
    yo = off_diagonal(y)
    null = np.array([_corr(off_diagonal(x[np.ix_(p, p)]), yo, method) for p in perms])
    null = null[np.isfinite(null)]
    if not math.isfinite(r) or len(null) == 0:
        p_value = float("nan")
    elif exact:
        p_value = float(np.mean(np.abs(null) >= abs(r) - 1e-12))
    else:
        p_value = float((1 + np.sum(np.abs(null) >= abs(r) - 1e-12)) / (1 + len(null)))
    loo = []
    for t in range(n):
        keep = [i for i in range(n) if i != t]
        loo.append(_corr(off_diagonal(x[np.ix_(keep, keep)]), off_diagonal(y[np.ix_(keep, keep)]), method))
    loo = np.array([v for v in loo if math.isfinite(v)])
    return QAPResult(method, r, p_value, n * (n - 1), len(perms), exact,
                     float(loo.min()) if len(loo) else float("nan"), float(loo.max()) if len(loo) else float("nan"))


@dataclass(frozen=True)
class Interval:
    """A mean with a two-sided confidence interval."""

    mean: float
    low: float
    high: float
    n: int
    method: str

    def __str__(self) -> str:
        return f"{self.mean:+.2f} [{self.low:+.2f}, {self.high:+.2f}]"

    def to_dict(self) -> dict:
        return asdict(self)


def t_interval(values, confidence: float = 0.95) -> Interval:
    """Student-t interval of the mean of independent values (e.g. per-seed means)."""
    v = np.asarray([x for x in values if math.isfinite(x)], float)
    if len(v) == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0, "t")
    m = float(v.mean())
    if len(v) < 2:
        return Interval(m, float("nan"), float("nan"), 1, "t")
    h = float(stats.t.ppf(0.5 + confidence / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return Interval(m, m - h, m + h, len(v), "t")


def two_way_bootstrap(mat: np.ndarray, confidence: float = 0.95, draws: int = 2000, seed: int = 0) -> Interval:
    """Interval of the mean off-diagonal cell, resampling *tasks* (rows and columns together).

    Cells sharing a donor or receiver are correlated; resampling task labels with replacement
    and keeping the off-diagonal cells of the resampled matrix respects that dependence (a
    pigeonhole bootstrap). Used when there is a single seed.
    """
    mat = np.asarray(mat, float)
    n = len(mat)
    rng = np.random.default_rng(seed)
    means = []
    for _ in range(draws):
        idx = rng.integers(0, n, n)
        sub = mat[np.ix_(idx, idx)]
        mask = idx[:, None] != idx[None, :]
        vals = sub[mask]
        vals = vals[np.isfinite(vals)]
        if len(vals):
            means.append(vals.mean())
    m = float(np.nanmean(off_diagonal(mat)))
    lo, hi = np.quantile(means, [0.5 - confidence / 2, 0.5 + confidence / 2])
    return Interval(m, float(lo), float(hi), n * (n - 1), "task bootstrap")


def correlation_difference(x1: np.ndarray, x2: np.ndarray, y: np.ndarray, method: str = "spearman",
                           confidence: float = 0.95, draws: int = 2000, seed: int = 0) -> Interval:
    """Interval of r(x1, y) − r(x2, y) over off-diagonal cells, by resampling tasks.

    The two correlations share the target, so they are dependent; resampling task labels
    (rows and columns together, cells of a task paired with itself dropped) keeps both the
    pairing and the donor/receiver dependence. Answers "does alignment 1 predict y better than
    alignment 2?" with an interval rather than two separate p-values.
    """
    x1, x2, y = (np.asarray(a, float) for a in (x1, x2, y))
    n = len(y)
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(draws):
        idx = rng.integers(0, n, n)
        mask = idx[:, None] != idx[None, :]
        sub = [a[np.ix_(idx, idx)][mask] for a in (x1, x2, y)]
        d = _corr(sub[0], sub[2], method) - _corr(sub[1], sub[2], method)
        if math.isfinite(d):
            diffs.append(d)
    est = _corr(off_diagonal(x1), off_diagonal(y), method) - _corr(off_diagonal(x2), off_diagonal(y), method)
    if not diffs:
        return Interval(est, float("nan"), float("nan"), n * (n - 1), "task bootstrap")
    lo, hi = np.quantile(diffs, [0.5 - confidence / 2, 0.5 + confidence / 2])
    return Interval(est, float(lo), float(hi), n * (n - 1), "task bootstrap")

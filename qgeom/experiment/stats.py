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
import warnings
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats


def off_diagonal(mat: np.ndarray) -> np.ndarray:
    """The n(n−1) off-diagonal entries of a square matrix, row-major."""
    mat = np.asarray(mat, float)
    return mat[~np.eye(len(mat), dtype=bool)]


def corr(x: np.ndarray, y: np.ndarray, method: str) -> float:
    """Spearman (Pearson of average ranks, as scipy's) or Pearson over the pairs where both are
    finite; NaN with fewer than 3 pairs or a constant side. numpy only: ~10× faster than
    ``scipy.stats.spearmanr`` on 30 cells, which matters inside bootstraps and permutations."""
    if method not in ("spearman", "pearson"):
        raise ValueError(f"unknown correlation {method!r}; known: spearman, pearson")
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3:
        return float("nan")
    x, y = x[ok], y[ok]
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    if method == "spearman":
        x, y = stats.rankdata(x), stats.rankdata(y)
    return float(_pearson_rows(x[None, :], y)[0])


def _pearson_rows(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row of X (m, k) with y (k,): (m,) (NaN for a constant row)."""
    Xc = X - X.mean(axis=1, keepdims=True)
    yc = y - y.mean()
    den = np.sqrt((Xc**2).sum(axis=1) * (yc**2).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (Xc @ yc) / den
    return np.clip(r, -1.0, 1.0)


def _corr_rows(X: np.ndarray, Y: np.ndarray, method: str) -> np.ndarray:
    """:func:`_corr` of each row pair of X, Y (m, k) over the entries where both are finite,
    vectorised (average ranks among the kept entries of each row for Spearman)."""
    with warnings.catch_warnings():  # all-missing rows give NaN (then dropped), not a warning
        warnings.simplefilter("ignore", RuntimeWarning)
        return _corr_rows_impl(X, Y, method)


def _corr_rows_impl(X: np.ndarray, Y: np.ndarray, method: str) -> np.ndarray:
    ok = np.isfinite(X) & np.isfinite(Y)
    X, Y = np.where(ok, X, np.nan), np.where(ok, Y, np.nan)
    if method == "spearman":
        X, Y = stats.rankdata(X, axis=1, nan_policy="omit"), stats.rankdata(Y, axis=1, nan_policy="omit")
    cnt = ok.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        Xc = np.where(ok, X - np.nanmean(np.where(ok, X, np.nan), axis=1, keepdims=True), 0.0)
        Yc = np.where(ok, Y - np.nanmean(np.where(ok, Y, np.nan), axis=1, keepdims=True), 0.0)
        sxx, syy = (Xc**2).sum(axis=1), (Yc**2).sum(axis=1)
        r = (Xc * Yc).sum(axis=1) / np.sqrt(sxx * syy)
    constant = (np.nanmax(np.where(ok, X, np.nan), axis=1) == np.nanmin(np.where(ok, X, np.nan), axis=1)) | \
        (np.nanmax(np.where(ok, Y, np.nan), axis=1) == np.nanmin(np.where(ok, Y, np.nan), axis=1))
    r = np.clip(r, -1.0, 1.0)
    r[(cnt < 3) | constant] = np.nan
    return r


def _null_correlations(x: np.ndarray, y: np.ndarray, perms: np.ndarray, method: str) -> np.ndarray:
    """r(off(x[π][:, π]), off(y)) for every row π of ``perms`` (m, n), as one array operation.

    When every off-diagonal cell is finite, a relabelling only permutes x's off-diagonal values
    (the diagonal maps to itself), so their ranks are the permuted ranks: rank once, gather
    (m, n, n), correlate rows. With missing cells the kept set changes with π: a loop."""
    xo, yo = off_diagonal(x), off_diagonal(y)
    if not (np.isfinite(xo).all() and np.isfinite(yo).all()):
        return np.array([corr(off_diagonal(x[np.ix_(p, p)]), yo, method) for p in perms])
    if np.ptp(xo) == 0 or np.ptp(yo) == 0:
        return np.full(len(perms), np.nan)
    n = len(x)
    mask = ~np.eye(n, dtype=bool)
    vals = np.zeros((n, n))
    vals[mask] = stats.rankdata(xo) if method == "spearman" else xo
    target = stats.rankdata(yo) if method == "spearman" else yo
    out = np.empty(len(perms))
    for i in range(0, len(perms), 2048):  # bounded memory: 2048 × n² floats at a time
        P = perms[i : i + 2048]
        out[i : i + len(P)] = _pearson_rows(vals[P[:, :, None], P[:, None, :]][:, mask], target)
    return out


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
    min_p: float  # the smallest p-value this test can return (1/n! exact; 1/(1+m) sampled)

    def to_dict(self) -> dict:
        return asdict(self)


def _relabellings(n: int, permutations: int, seed: int) -> tuple[np.ndarray, bool]:
    if math.factorial(n) <= permutations:
        return np.array(list(itertools.permutations(range(n))), dtype=np.intp).reshape(-1, n), True
    rng = np.random.default_rng(seed)
    return np.array([rng.permutation(n) for _ in range(permutations)], dtype=np.intp), False


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
    r = corr(off_diagonal(x), off_diagonal(y), method)
    perms, exact = _relabellings(n, permutations, seed)
    null = _null_correlations(x, y, perms, method)
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
        loo.append(corr(off_diagonal(x[np.ix_(keep, keep)]), off_diagonal(y[np.ix_(keep, keep)]), method))
    loo = np.array([v for v in loo if math.isfinite(v)])
    min_p = 1 / len(perms) if exact else 1 / (1 + len(perms))
    return QAPResult(method, r, p_value, n * (n - 1), len(perms), exact,
                     float(loo.min()) if len(loo) else float("nan"), float(loo.max()) if len(loo) else float("nan"),
                     min_p)


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

    @property
    def degenerate(self) -> bool:
        """No usable interval: a bound is missing, or it has (numerically) zero width — e.g. a
        task bootstrap over 3 tasks whose resamples all give the same value."""
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            return True
        return self.high - self.low <= 1e-9 * max(1.0, abs(self.mean))

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
    idx = np.array([rng.integers(0, n, n) for _ in range(draws)]).reshape(draws, n)
    keep = idx[:, :, None] != idx[:, None, :]  # (draws, n, n): cells of a task with itself dropped

    def resampled(a):  # (draws, n²), NaN where dropped
        return np.where(keep, a[idx[:, :, None], idx[:, None, :]], np.nan).reshape(draws, -1)

    X1, X2, Y = resampled(x1), resampled(x2), resampled(y)
    d = _corr_rows(X1, Y, method) - _corr_rows(X2, Y, method)
    diffs = d[np.isfinite(d)]
    est = corr(off_diagonal(x1), off_diagonal(y), method) - corr(off_diagonal(x2), off_diagonal(y), method)
    if not len(diffs):
        return Interval(est, float("nan"), float("nan"), n * (n - 1), "task bootstrap")
    lo, hi = np.quantile(diffs, [0.5 - confidence / 2, 0.5 + confidence / 2])
    return Interval(est, float(lo), float(hi), n * (n - 1), "task bootstrap")


def seed_task_interval(mats, confidence: float = 0.95, draws: int = 2000, seed: int = 0) -> Interval:
    """Interval of the mean off-diagonal cell over S seeds that sees tasks *and* seeds.

    mats: S donor × receiver matrices (n, n), one per seed, same task order (NaN = missing).
    Two sources of variation, combined in quadrature:

    * tasks — :func:`two_way_bootstrap` of the seed-averaged matrix M̄ = (1/S) Σ_s M_s: mean m,
      percentile bounds [lo, hi]. Tasks are resampled *together* across seeds (the same tasks
      are in every seed), i.e. a bootstrap over tasks with seeds kept within;
    * seeds — the Student-t half-width h = t_{S−1, (1+c)/2} · sd(m_1 … m_S) / √S of the per-seed
      means m_s (training noise: fine-tuning and QAT order, CPU rounding; 3 seeds are too few
      for a bootstrap over seeds, whose spread is biased low by (S−1)/S and takes ≤ 10 values);

    interval = [m − √((m − lo)² + h²), m + √((hi − m)² + h²)]. It equals the task bootstrap
    exactly when the seeds agree (h = 0), the t-interval over seeds when the task bootstrap has
    no width, and widens with either. Adding half-widths in quadrature treats the two sources as
    independent; the task part of M̄ already holds some cell-level seed noise, so the result errs
    on the wide side. One seed: the task bootstrap alone.
    """
    mats = [np.asarray(m, float) for m in mats]
    if not mats:
        raise ValueError("no matrices")
    with warnings.catch_warnings():  # the diagonal (NaN in every seed) stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        mean_mat = np.nanmean(np.stack(mats), axis=0)
    task = two_way_bootstrap(mean_mat, confidence, draws, seed)
    if len(mats) < 2:
        return task
    per_seed = np.array([np.nanmean(off_diagonal(m)) for m in mats])
    per_seed = per_seed[np.isfinite(per_seed)]
    if len(per_seed) < 2:
        return task
    h = float(stats.t.ppf(0.5 + confidence / 2, len(per_seed) - 1) * per_seed.std(ddof=1) / math.sqrt(len(per_seed)))
    m, how = task.mean, f"task bootstrap (+) seed t, {len(per_seed)} seeds"
    if h == 0:  # seeds agree exactly: the task bootstrap itself (no roundoff from m ∓ (m − lo))
        return Interval(m, task.low, task.high, task.n, how)
    return Interval(m, m - math.hypot(m - task.low, h), m + math.hypot(task.high - m, h), task.n, how)

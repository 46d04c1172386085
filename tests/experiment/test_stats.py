"""Statistics over donor × receiver matrices: the vectorised tests equal the loops they replace,
the interval over tasks and seeds behaves as documented, and verdicts refuse degenerate evidence."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as ss

from qgeom.experiment import analysis
from qgeom.experiment import stats as S
from qgeom.experiment import summary


def _loop_null(x, y, perms, method):
    return np.array([S.corr(S.off_diagonal(x[np.ix_(p, p)]), S.off_diagonal(y), method) for p in perms])


@pytest.mark.parametrize("method", ["spearman", "pearson"])
@pytest.mark.parametrize("n", [3, 5, 6])
def test_vectorised_qap_null_equals_the_loop(n, method):
    rng = np.random.default_rng(n)
    x, y = rng.normal(size=(n, n)), rng.normal(size=(n, n))
    x[0, 1] = x[1, 0] = x[2, 0]  # ties: average ranks
    perms, exact = S._relabellings(n, 5000, 0)
    assert exact and len(perms) == math.factorial(n)
    np.testing.assert_allclose(S._null_correlations(x, y, perms, method), _loop_null(x, y, perms, method), atol=1e-12)
    x[1, 2] = np.nan  # a missing cell: the loop path, same answer
    np.testing.assert_allclose(S._null_correlations(x, y, perms, method), _loop_null(x, y, perms, method), atol=1e-12)
    ref = ss.spearmanr if method == "spearman" else ss.pearsonr
    ok = np.isfinite(S.off_diagonal(x))
    assert S.corr(S.off_diagonal(x), S.off_diagonal(y), method) == pytest.approx(
        ref(S.off_diagonal(x)[ok], S.off_diagonal(y)[ok]).statistic, abs=1e-12)


def test_vectorised_correlation_difference_equals_the_loop():
    rng = np.random.default_rng(0)
    x1, x2 = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    y = x1 + rng.normal(size=(6, 6))
    x1[2, 0] = np.nan
    got = S.correlation_difference(x1, x2, y, "spearman", draws=300)
    r = np.random.default_rng(0)
    diffs = []
    for _ in range(300):
        idx = r.integers(0, 6, 6)
        mask = idx[:, None] != idx[None, :]
        sub = [a[np.ix_(idx, idx)][mask] for a in (x1, x2, y)]
        d = S.corr(sub[0], sub[2], "spearman") - S.corr(sub[1], sub[2], "spearman")
        if math.isfinite(d):
            diffs.append(d)
    assert (got.low, got.high) == pytest.approx(tuple(np.quantile(diffs, [0.025, 0.975])), abs=1e-12)


def _three_seeds(pairs: pd.DataFrame, shift: dict[int, float]) -> pd.DataFrame:
    """Seed 0's pairs copied as seeds 0, 1, 2, with ``shift[s]`` added to every gain of seed s."""
    base = pairs[pairs.seed == pairs.seed.min()]
    out = []
    for s in (0, 1, 2):
        p = base.assign(seed=s)
        p["gain_unit"] = p.gain_unit + shift.get(s, 0.0)
        out.append(p)
    return pd.concat(out, ignore_index=True)


def test_combined_interval_equals_task_bootstrap_when_seeds_agree_and_widens_when_not(tiny_run: Path):
    pairs = pd.read_csv(tiny_run / "pairs.csv")
    pairs = pairs[(pairs.bits == 2) & (pairs.scope == "backbone")]
    names = sorted(set(pairs.donor))
    one = pairs[pairs.seed == 0]
    task = S.two_way_bootstrap(analysis.pair_matrix(one[~one.diagonal], "gain_unit", names))
    assert not task.degenerate
    agree = analysis.interval(_three_seeds(pairs, {}), "gain_unit")
    assert (agree.mean, agree.low, agree.high) == (task.mean, task.low, task.high)
    disagree = analysis.interval(_three_seeds(pairs, {1: +3.0, 2: -3.0}), "gain_unit")
    assert disagree.mean == pytest.approx(task.mean)
    assert disagree.low < task.low - 1 and disagree.high > task.high + 1
    # the seed part is the t half-width of the per-seed means (here ±3 around the mean)
    h = ss.t.ppf(0.975, 2) * 3.0 / math.sqrt(3)
    assert disagree.high - disagree.mean == pytest.approx(math.hypot(task.high - task.mean, h))
    assert disagree.mean - disagree.low == pytest.approx(math.hypot(task.mean - task.low, h))


def test_verdicts_refuse_degenerate_intervals_and_untestable_correlations():
    flat = S.Interval(0.70, 0.70, 0.70, 6, "task bootstrap")
    assert flat.degenerate and "too few tasks to tell" in summary.verdict(flat, "a", "b")
    assert "beats" in summary.verdict(S.Interval(1.0, 0.5, 1.5, 30, "x"), "a", "b")
    # 3 tasks: 3! = 6 relabellings, so p ≥ 1/6 — a "better" verdict must not be printed
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(3, 3)), rng.normal(size=(3, 3))
    res = S.qap_correlation(x, y)
    assert res.min_p == pytest.approx(1 / 6) and math.isnan(res.loo_min)
    m = res.to_dict() | dict(r=0.9, n_seeds=1)
    e = res.to_dict() | dict(r=0.2, n_seeds=1)
    v = summary.alignment_verdict(e, m, "ggn_fp", (0.70, 0.70, 0.70))
    assert "too few tasks to tell" in v and "predicts the gains better" not in v
    m6 = dict(r=0.9, p_value=0.01, min_p=1 / 720, n_seeds=3, seed_r_min=0.8, seed_r_max=0.95)
    e6 = dict(r=0.2, p_value=0.3, min_p=1 / 720, n_seeds=3, seed_r_min=0.1, seed_r_max=0.3)
    v6 = summary.alignment_verdict(e6, m6, "ggn_fp", (0.7, 0.2, 1.1))
    assert v6.endswith("predicts the gains better") and "per seed +0.80 … +0.95" in v6

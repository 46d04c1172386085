"""The replicate check marks a verdict established only when every replicate agrees and the
interval is clear of 0 by more than the replicates' spread (or p is far from 0.05)."""

from __future__ import annotations

import pytest

from qgeom.experiment.replicates import interval_status, replicate_check


def _summary(mean: float, low: float, high: float, r: float = 0.5, p: float = 0.01) -> dict:
    iv = dict(mean=mean, low=low, high=high)
    res = dict(bits=2, scope="backbone", gain_unit=iv, gain_vs_random=iv, gain_tuned=iv, controls={"row_permuted": iv})
    corr = [dict(bits=2, scope="backbone", alignment="ggn_fp", r=r, p_value=p)]
    return {"results": [res], "correlations": corr}


def _verdicts(*summaries) -> dict[str, str]:
    check = replicate_check({str(i): s for i, s in enumerate(summaries)})
    return dict(zip(check.line, check.verdict))


def test_interval_status_and_margin():
    assert interval_status(1.0, 3.0) == ("above 0", 1.0)
    assert interval_status(-3.0, -0.5) == ("below 0", 0.5)
    assert interval_status(-1.0, 4.0) == ("contains 0", 1.0)


def test_agreeing_replicates_far_from_zero_are_established():
    v = _verdicts(_summary(3.0, 2.0, 4.0), _summary(3.2, 2.1, 4.2), _summary(2.9, 1.9, 3.9))
    assert set(v.values()) == {"established"}


def test_a_status_that_flips_is_borderline():
    v = _verdicts(_summary(3.0, 0.1, 6.0), _summary(2.5, -0.1, 5.0))
    assert v["the donor patch at λ = 1 vs the unpatched receiver"] == "borderline"


def test_the_same_status_closer_to_zero_than_the_spread_is_borderline():
    # both above 0, but the lower end (0.2) is closer to 0 than the means are apart (1.0)
    v = _verdicts(_summary(3.0, 0.2, 6.0), _summary(4.0, 1.2, 7.0))
    assert v["the donor patch at λ = 1 vs the unpatched receiver"] == "borderline"
    v = _verdicts(_summary(3.0, 1.5, 6.0), _summary(4.0, 2.5, 7.0))
    assert v["the donor patch at λ = 1 vs the unpatched receiver"] == "established"


def test_a_correlation_needs_p_far_from_the_threshold_in_every_replicate():
    line = "Spearman of the ggn_fp alignment with the λ = 1 gain"
    assert _verdicts(_summary(1, 0, 2, p=0.01), _summary(1, 0, 2, p=0.02))[line] == "established"
    assert _verdicts(_summary(1, 0, 2, p=0.01), _summary(1, 0, 2, p=0.04))[line] == "borderline"
    assert _verdicts(_summary(1, 0, 2, p=0.03), _summary(1, 0, 2, p=0.2))[line] == "borderline"
    assert _verdicts(_summary(1, 0, 2, p=0.3), _summary(1, 0, 2, p=0.2))[line] == "established"


def test_one_run_is_not_a_replicate_check():
    with pytest.raises(ValueError, match="at least two"):
        replicate_check({"a": _summary(1, 0, 2)})

"""Verdicts that survive a change of machine: the same run replicated, each verdict line judged.

CPU training is not bit-reproducible across CPUs, so a run on another machine is in effect a new
draw of the training noise. Its closest proxies here are the same configuration with another torch
thread count (another floating-point path through training) and with other seeds. Given the
summaries of such replicates, :func:`replicate_check` marks each verdict line of the summary:

* an *interval* line (the donor patch against the receiver, a random direction, the tuned λ, each
  control) has a status — interval above 0, below 0, or containing 0 — and a margin: how far the
  interval's end nearest to a change of status is from 0 (``low`` when above, ``−high`` when below,
  ``min(high, −low)`` when it contains 0). It is **established** when its status is the same in
  every replicate and its smallest margin exceeds the replicates' spread (max − min of the means);
* a *correlation* line (Spearman of an alignment with the λ = 1 gain, QAP p) is significant at
  p < 0.05; it is **established** when its status is the same in every replicate and every p is a
  factor of 2 away from the threshold (p < 0.025 when significant, p > 0.1 when not).

Every other line is **borderline**: a second machine may well give the other verdict.
"""

from __future__ import annotations

import math

import pandas as pd

INTERVAL_LINES = {"gain_unit": "the donor patch at λ = 1 vs the unpatched receiver",
                  "gain_vs_random": "the donor patch at λ = 1 vs a norm-matched random direction",
                  "gain_tuned": "the donor patch at the λ chosen on val vs the unpatched receiver"}
P_THRESHOLD = 0.05


def _num(x) -> float:
    return math.nan if x is None else float(x)


def verdict_lines(summary: dict) -> list[dict]:
    """Every verdict line of a summary as ``{bits, scope, line, kind, mean, low, high}`` (intervals)
    or ``{…, kind: "correlation", mean: r, p}`` (alignments with the λ = 1 gain)."""
    rows = []
    for r in summary["results"]:
        key = dict(bits=r["bits"], scope=r["scope"])
        intervals = {k: r[k] for k in INTERVAL_LINES} | {f"gain_vs_{m}": iv for m, iv in r.get("controls", {}).items()}
        for name, iv in intervals.items():
            label = INTERVAL_LINES.get(name, f"the donor patch at λ = 1 vs the {name[len('gain_vs_'):]} control")
            rows.append(key | dict(line=label, kind="interval", mean=_num(iv["mean"]), low=_num(iv["low"]),
                                   high=_num(iv["high"])))
        for m, ivs in r.get("quantizers", {}).items():  # the stronger receiver quantizers (issue 24)
            for name, iv in ivs.items():
                rows.append(key | dict(line=f"{m}: {name}", kind="interval", mean=_num(iv["mean"]),
                                       low=_num(iv["low"]), high=_num(iv["high"])))
    for c in summary.get("correlations", []):
        rows.append(dict(bits=c["bits"], scope=c["scope"], line=f"Spearman of the {c['alignment']} alignment with the "
                         f"λ = 1 gain", kind="correlation", mean=_num(c["r"]), p=_num(c["p_value"])))
    return rows


def interval_status(low: float, high: float) -> tuple[str, float]:
    """(status, margin) of a 95 % interval: above / below / contains 0, and the distance from 0
    of the end that would change the status."""
    if low > 0:
        return "above 0", low
    if high < 0:
        return "below 0", -high
    return "contains 0", min(high, -low)


def _judge(group: pd.DataFrame) -> dict:
    spread = float(group["mean"].max() - group["mean"].min())
    if group.kind.iloc[0] == "interval":
        judged = [interval_status(lo, hi) for lo, hi in zip(group.low, group.high)]
        statuses, margin = [s for s, _ in judged], min(m for _, m in judged)
        ok = len(set(statuses)) == 1 and margin > spread
    else:
        statuses = [(f"{'positive' if r > 0 else 'negative'}, p < 0.05" if p < P_THRESHOLD else "p ≥ 0.05")
                    for r, p in zip(group["mean"], group.p)]
        far = all(p < P_THRESHOLD / 2 for p in group.p) or all(p > 2 * P_THRESHOLD for p in group.p)
        margin, ok = math.nan, len(set(statuses)) == 1 and far
    return dict(statuses=" | ".join(statuses), means=" | ".join(f"{m:+.2f}" for m in group["mean"]), spread=spread,
                margin=margin, verdict="established" if ok else "borderline")


def replicate_check(summaries: dict[str, dict]) -> pd.DataFrame:
    """One row per verdict line of the replicates' summaries (``{name: summary}``, the first the
    reference): each replicate's status and mean, the spread, the margin, and the verdict."""
    if len(summaries) < 2:
        raise ValueError("a replicate check needs at least two runs of the same configuration")
    frames = [pd.DataFrame(verdict_lines(s)).assign(replicate=name) for name, s in summaries.items()]
    lines = pd.concat(frames, ignore_index=True)
    keys = ["bits", "scope", "line"]
    counts = lines.groupby(keys, sort=False).replicate.nunique()
    common = counts[counts == len(summaries)].index  # lines every replicate has
    rows = [dict(zip(keys, k)) | _judge(g) for k, g in lines.groupby(keys, sort=False) if k in common]
    return pd.DataFrame(rows)

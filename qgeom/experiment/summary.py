"""The summary of a run: per (bits, scope), the headline numbers and plain-language verdicts.

Every verdict is computed over seeds: the gain intervals by
:func:`qgeom.experiment.analysis.interval` (tasks and seeds), the correlations on seed-averaged
matrices (QAP test) with the per-seed range shown. A verdict needs a usable interval and, for the
alignment, a test that can reach p < 0.05; otherwise it says "too few tasks to tell".
"""

from __future__ import annotations

import math

import pandas as pd

from qgeom.experiment.analysis import CORRELATION_COLUMNS, interval
from qgeom.experiment.stats import Interval


def summarize(pairs: pd.DataFrame, receivers: pd.DataFrame, corr: pd.DataFrame) -> list[dict]:
    """One record per (bits, scope): the headline numbers and plain-language verdicts (an empty
    ``corr``, from a run without geometry, gives NaN correlations and "no curvature alignment").

    Every verdict is computed over seeds: the gain intervals by :func:`interval` (tasks and
    seeds), the correlations on seed-averaged matrices (QAP test) with the per-seed range shown.
    A verdict needs a usable interval and, for the alignment, a test that can reach p < 0.05;
    otherwise it says "too few tasks to tell"."""
    out = []
    if corr.empty:
        corr = pd.DataFrame(columns=list(CORRELATION_COLUMNS))
    for (bits, scope), g in pairs.groupby(["bits", "scope"]):
        rec = receivers[(receivers.bits == bits) & (receivers.scope == scope)]
        off = g[~g.diagonal]
        n_tasks = len(set(g.donor) | set(g.receiver))
        gain, vs_rand, tuned = interval(g, "gain_unit"), interval(g, "gain_vs_random"), interval(g, "gain_tuned")
        c = corr[(corr.bits == bits) & (corr.scope == scope) & (corr.target == "gain_unit") & (corr.method == "spearman")]
        stat = {row.alignment: row._asdict() for row in c.itertuples(index=False)}
        best_metric = max((k for k in stat if k != "euclidean"), key=lambda k: stat[k]["r"], default=None)
        e, m = stat.get("euclidean", {}), stat.get(best_metric, {}) if best_metric else {}
        diff = (m.get("diff_vs_euclidean", math.nan), m.get("diff_low", math.nan), m.get("diff_high", math.nan))
        per_receiver = g.drop_duplicates(["seed", "receiver"])
        out.append(dict(
            bits=int(bits), scope=scope, n_pairs=int(len(off) / max(g.seed.nunique(), 1)), n_tasks=n_tasks,
            n_seeds=int(g.seed.nunique()),
            base_fp=float(per_receiver.base_fp.mean()), base_ptq=float(per_receiver.base_ptq.mean()),
            qat_ptq=float(per_receiver.qat_ptq.mean()),
            gain_unit=gain.to_dict(), gain_vs_random=vs_rand.to_dict(), gain_tuned=tuned.to_dict(),
            fp_cost=float(off.fp_cost.mean()),
            multi_donor_gain_unit=float((rec.multi_unit_ptq - rec.base_ptq).mean()),
            multi_donor_gain_tuned=float((rec.multi_tuned_ptq - rec.base_ptq).mean()),
            qat_gain=float((rec.qat_ptq - rec.base_ptq).mean()),
            spearman_euclidean=e.get("r", math.nan), p_euclidean=e.get("p_value", math.nan), best_metric=best_metric,
            spearman_metric=m.get("r", math.nan), p_metric=m.get("p_value", math.nan),
            verdict_patch=verdict(gain, "the donor patch at λ = 1", "the unpatched receiver"),
            verdict_random=verdict(vs_rand, "the donor patch at λ = 1", "a norm-matched random direction"),
            verdict_tuned=verdict(tuned, "the donor patch at the λ chosen on val", "the unpatched receiver"),
            diff_vs_euclidean=diff,
            verdict_alignment=alignment_verdict(e, m, best_metric, diff),
            verdict_over_controls=_over_controls_line(corr[(corr.bits == bits) & (corr.scope == scope)]),
            **_controls_summary(g), **_quantizers_summary(g),
        ))
    return out


CONTROL_NAMES = {"random_rows": "a random direction with ρ_D's per-row norms",
                 "row_permuted": "ρ_D with its entries permuted within each row",
                 "negated": "−ρ_D", "other_basin": "the donor's ρ from a θ_0 pretrained with another seed"}


def _controls_summary(g: pd.DataFrame) -> dict:
    """Intervals and verdicts of the stronger controls and of the grid/values decomposition
    (present when the run has them): the donor's gain over each control; the gain of the
    grid-only and values-only hybrids, and the share of the donor's mean gain each carries."""
    out: dict = {"controls": {}, "verdict_controls": []}
    for m, what in CONTROL_NAMES.items():
        if f"gain_vs_{m}" in g.columns and g[f"gain_vs_{m}"].notna().any():
            iv = interval(g, f"gain_vs_{m}")
            out["controls"][m] = iv.to_dict()
            out["verdict_controls"].append(verdict(iv, "the donor patch at λ = 1", what))
    if "gain_grid_only" in g.columns and g.gain_grid_only.notna().any():
        off = g[~g.diagonal]
        grid, values, full = interval(g, "gain_grid_only"), interval(g, "gain_values_only"), interval(g, "gain_unit")
        share = float(off.gain_grid_only.mean() / off.gain_unit.mean()) if abs(off.gain_unit.mean()) > 0.5 else math.nan
        out["decomposition"] = dict(grid_only=grid.to_dict(), values_only=values.to_dict(), patch=full.to_dict(),
                                    grid_share=share, absmax_moved=float(off.get("absmax_moved", pd.Series([math.nan])).mean()),
                                    codes_changed=float(off.get("codes_changed", pd.Series([math.nan])).mean()))
        if math.isfinite(share):
            how = f"carries {100 * share:.0f}% of the donor patch's mean gain ({full} points)"
        else:
            how = f"cannot be given as a share: the donor patch's mean gain is {full} points, about 0"
        out["verdict_controls"].append(
            f"the grid alone (θ_R's values on the patched per-row grid) changes post-PTQ Top-1 by {grid} points, "
            f"the values alone (on θ_R's grid) by {values}; the grid alone {how}")
    return out


QUANTIZER_NAMES = {"gptq": "GPTQ", "awq": "AWQ"}


def _quantizers_summary(g: pd.DataFrame) -> dict:
    """Intervals and verdicts of the stronger receiver quantizers (config ``ptq``): does ρ_D help
    beyond m (the patch at λ = 1, then m, vs m alone), and how much m itself recovers over RTN on
    the unpatched receiver. m is calibrated on receiver images: these are baselines, not zero-shot."""
    out: dict = {"quantizers": {}, "verdict_quantizers": []}
    for m, name in QUANTIZER_NAMES.items():
        if f"gain_unit_{m}" not in g.columns or not g[f"gain_unit_{m}"].notna().any():
            continue
        unit, tuned, over = (interval(g, f"gain_unit_{m}"), interval(g, f"gain_tuned_{m}"),
                             interval(g, f"{m}_over_rtn"))
        out["quantizers"][m] = dict(gain_unit=unit.to_dict(), gain_tuned=tuned.to_dict(), over_rtn=over.to_dict())
        what = "(receiver calibration data: a baseline, not zero-shot) "
        out["verdict_quantizers"] += [
            verdict(over, f"{name} {what}on the unpatched receiver", "round-to-nearest"),
            verdict(unit, f"the donor patch at λ = 1, then {name},", f"{name} alone"),
            verdict(tuned, f"the donor patch at the λ chosen on val, then {name},", f"{name} alone")]
    return out


def _over_controls_line(corr: pd.DataFrame) -> str:
    """Spearman (QAP p) of every alignment with ``gain_over_controls`` — the donor's λ = 1 gain
    minus the best control's — so that an alignment that only predicts "any perturbation of this
    size helps" is not read as predicting transfer. Empty when the run has no such correlations."""
    c = corr[(corr.target == "gain_over_controls") & (corr.method == "spearman")]
    if c.empty:
        return ""
    parts = [f"{r.alignment} {r.r:+.2f} (p = {r.p_value:.3f})" for r in c.sort_values("alignment").itertuples()]
    sig = [r.alignment for r in c.itertuples() if r.p_value < 0.05 and r.r > 0 and r.min_p < 0.05]
    tail = (f"{', '.join(sig)} significant (QAP p < 0.05)" if sig else "none significant (QAP p < 0.05)")
    return ("Spearman with the gain over the best control (the donor's λ = 1 gain minus the best control's): "
            f"{', '.join(parts)}: {tail}")


def verdict(iv: Interval, what: str, against: str) -> str:
    if iv.degenerate:
        return f"{what} vs {against}: {iv.mean:+.2f} points — too few tasks to tell (no usable 95% interval)"
    if iv.low > 0:
        return f"{what} beats {against}: {iv} points (95% interval above 0)"
    if iv.high < 0:
        return f"{what} is worse than {against}: {iv} points (95% interval below 0)"
    return f"{what} does not reliably beat {against}: {iv} points (95% interval contains 0)"


def _seed_range(stat: dict) -> str:
    lo, hi, n = stat.get("seed_r_min", math.nan), stat.get("seed_r_max", math.nan), stat.get("n_seeds", 1)
    return f", per seed {lo:+.2f} … {hi:+.2f}" if n and n > 1 and math.isfinite(lo) else ""


def alignment_verdict(e: dict, m: dict, name: str | None, diff: tuple[float, float, float]) -> str:
    """Does the curvature alignment predict the λ = 1 gain better than the Euclidean one?

    "Better" needs all of: the curvature correlation significant (QAP p < 0.05, on the
    seed-averaged matrices) and the task-bootstrap interval of the difference non-degenerate and
    above 0. When the QAP test cannot reach p < 0.05 (n! ≤ 20 relabellings: 3 tasks) or the
    interval of the difference has no width, the verdict is "too few tasks to tell"."""
    r_m, p_m = m.get("r", math.nan), m.get("p_value", math.nan)
    r_e, p_e = e.get("r", math.nan), e.get("p_value", math.nan)
    if name is None or not math.isfinite(r_m):
        return "no curvature alignment measured"
    d = Interval(diff[0], diff[1], diff[2], 0, "task bootstrap")
    head = (f"Spearman with the λ = 1 gain: {name} cosine {r_m:+.2f} (QAP p = {p_m:.3f}{_seed_range(m)}), Euclidean "
            f"{r_e:+.2f} (p = {p_e:.3f}{_seed_range(e)}); difference {diff[0]:+.2f} [{diff[1]:+.2f}, {diff[2]:+.2f}] "
            f"(95%, task bootstrap): ")
    if m.get("min_p", 0.0) >= 0.05 or d.degenerate:
        why = ("the permutation test cannot reach p < 0.05" if m.get("min_p", 0.0) >= 0.05
               else "the interval of the difference is degenerate")
        return head + f"too few tasks to tell ({why})"
    if d.low > 0 and p_m < 0.05:
        return head + "the curvature alignment predicts the gains better"
    if d.low > 0:
        return head + "the difference is above 0 but the curvature alignment itself is not significant: not shown"
    if p_m < 0.05 <= p_e:
        return head + ("only the curvature alignment is significant, but the interval of the difference "
                       "contains 0: not shown to predict better")
    if p_m < 0.05 and p_e < 0.05:
        return head + "both alignments are significant and the interval of the difference contains 0: neither shown better"
    if r_m > r_e:
        return head + "the curvature alignment ranks higher, not significantly"
    return head + "the curvature alignment does not predict better"

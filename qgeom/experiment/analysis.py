"""From a run's raw tables to per-pair gains, alignment correlations and the summary.

Inputs are the tidy tables written by :mod:`qgeom.experiment.run` (``accuracy``, ``geometry``,
``dissimilarity``). λ is chosen for every (receiver, donor) on the receiver's *validation*
split (post-PTQ Top-1, ties broken towards λ = 1) and reported on *test*; test rows never
influence the choice.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from qgeom.vocabulary import RUN_CONTROLS
from qgeom.experiment.stats import Interval, corr, correlation_difference, off_diagonal, qap_correlation, seed_task_interval

TEXT_COLUMNS = ("receiver", "donor", "method", "scope", "split", "metric", "objective", "quantity", "alignment",
                "target", "best_donor")


def read_table(path) -> pd.DataFrame:
    """Read a run table (CSV): empty text cells stay ``""`` (not NaN), numbers are float.

    Text columns are the known ones above (also when a column is empty throughout) and any other
    non-numeric column. One reader for the experiment (resume), the CLI and the figures."""
    df = pd.read_csv(path)
    for col in df.columns:
        if col in TEXT_COLUMNS or df[col].dtype == object or pd.api.types.is_string_dtype(df[col].dtype):
            df[col] = df[col].fillna("").astype(str)
    return df


ALIGNMENTS = ("euclidean", "ggn_fp", "ggn_ste", "hessian_fp", "hessian_ste", "fisher_fp", "fisher_ste", "layer_fp",
              "layer_ste")
TARGETS = ("gain_unit", "gain_tuned", "recovery_unit", "gain_over_controls")
#: Controls beyond the per-tensor random direction (config ``controls``; qgeom.experiment.controls) and the
#: grid/values hybrids (config ``decomposition``; qgeom.experiment.decomposition), as accuracy-table methods.
CONTROL_METHODS = RUN_CONTROLS
DECOMPOSITION_METHODS = ("grid_only", "values_only")
GRID_STATISTICS = ("absmax_moved", "dlog_scale", "codes_changed")
CORRELATION_COLUMNS = ("bits", "scope", "alignment", "target", "method", "r", "p_value", "n_cells", "n_permutations",
                       "exact", "loo_min", "loo_max", "diff_vs_euclidean", "diff_low", "diff_high")


LAMBDA_KEYS = ["seed", "bits", "receiver", "method", "donor", "scope"]


def lambda_on_val(acc: pd.DataFrame) -> pd.DataFrame:
    """λ maximising *validation* post-PTQ Top-1 per (seed, bits, receiver, method, donor, scope),
    ties broken towards λ = 1 (then towards the smaller λ); one row per group with ``lam_val``.

    Reads only rows with split == "val" and metric == "ptq_top1" of the patch / multi_donor
    methods. The experiment calls it on the validation rows alone to decide where to evaluate
    test, and the analysis on the whole table: the same function, so the same λ."""
    keys = LAMBDA_KEYS
    val = acc[acc.method.isin(["patch", "multi_donor"]) & (acc.split == "val") & (acc.metric == "ptq_top1")].copy()
    val["dist"] = (val.lam - 1.0).abs()
    best = val.sort_values(keys + ["value", "dist", "lam"], ascending=[True] * len(keys) + [False, True, True],
                           kind="mergesort")
    return best.groupby(keys, as_index=False).first()[keys + ["lam"]].rename(columns={"lam": "lam_val"})


def choose_lambda(acc: pd.DataFrame) -> pd.DataFrame:
    """For each (seed, bits, receiver, method, donor, scope): λ maximising *validation* PTQ Top-1.

    Returns one row per group with ``lam_val`` and the *test* PTQ / FP Top-1 at that λ.
    """
    grid = acc[acc.method.isin(["patch", "multi_donor"])]
    keys = LAMBDA_KEYS
    best = lambda_on_val(grid)
    test = grid[grid.split == "test"].pivot_table(index=keys + ["lam"], columns="metric", values="value").reset_index()
    out = best.merge(test, left_on=keys + ["lam_val"], right_on=keys + ["lam"], how="left").drop(columns="lam")
    return out.rename(columns={"ptq_top1": "tuned_ptq"})[keys + ["lam_val", "tuned_ptq"]]


def _test(acc: pd.DataFrame, metric: str = "ptq_top1") -> pd.DataFrame:
    return acc[(acc.split == "test") & (acc.metric == metric)]


def pair_table(acc: pd.DataFrame, geo: pd.DataFrame | None = None, dis: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (seed, bits, scope, donor, receiver): accuracies, gains and alignments.

    gain_unit = PTQ(θ_R + ρ_D) − PTQ(θ_R); gain_tuned at the validation λ; gain_vs_random =
    PTQ(θ_R + ρ_D) − mean over draws PTQ(θ_R + r), r matched to ρ_D's per-tensor norms;
    fp_cost = FP(θ_R + ρ_D) − FP(θ_R). Top-1 in percentage points.
    """
    t, tf = _test(acc), _test(acc, "fp_top1")
    rk = ["seed", "bits", "receiver"]
    base = t[t.method == "baseline"][rk + ["value"]].rename(columns={"value": "base_ptq"})
    base = base.merge(tf[tf.method == "baseline"][rk + ["value"]].rename(columns={"value": "base_fp"}), on=rk)
    qat = t[t.method == "qat"][rk + ["value"]].rename(columns={"value": "qat_ptq"})
    pk = rk + ["donor", "scope"]
    unit = t[(t.method == "patch") & (t.lam == 1.0)][pk + ["value"]].rename(columns={"value": "patch_ptq"})
    unit_fp = tf[(tf.method == "patch") & (tf.lam == 1.0)][pk + ["value"]].rename(columns={"value": "patch_fp"})
    rnd = t[t.method == "random"].groupby(pk, as_index=False).value.mean().rename(columns={"value": "random_ptq"})
    tuned = choose_lambda(acc)
    tuned = tuned[tuned.method == "patch"][pk + ["lam_val", "tuned_ptq"]]
    df = unit.merge(unit_fp, on=pk).merge(base, on=rk).merge(qat, on=rk).merge(tuned, on=pk)
    df = df.merge(rnd, on=pk, how="left")
    extra = [m for m in CONTROL_METHODS + DECOMPOSITION_METHODS if m in set(t.method)]
    for m in extra:  # the other controls and the decomposition hybrids: mean over draws, at λ = 1
        col = t[t.method == m].groupby(pk, as_index=False).value.mean().rename(columns={"value": f"{m}_ptq"})
        df = df.merge(col, on=pk, how="left")
    stats = acc[(acc.method == "patch") & acc.metric.isin(GRID_STATISTICS)]
    if len(stats):
        df = df.merge(stats.pivot_table(index=pk, columns="metric", values="value").reset_index(), on=pk, how="left")
    for col in ["patch_ptq", "patch_fp", "base_ptq", "base_fp", "qat_ptq", "tuned_ptq", "random_ptq"] + \
            [f"{m}_ptq" for m in extra]:
        df[col] = 100 * df[col]
    df["gain_unit"] = df.patch_ptq - df.base_ptq
    df["gain_tuned"] = df.tuned_ptq - df.base_ptq
    df["gain_vs_random"] = df.patch_ptq - df.random_ptq
    for m in ["random"] + extra:  # each control's own gain, and the donor's gain over it
        df[f"gain_{m}"] = df[f"{m}_ptq"] - df.base_ptq
        if m in CONTROL_METHODS:
            df[f"gain_vs_{m}"] = df.patch_ptq - df[f"{m}_ptq"]
    controls = [f"gain_{m}" for m in ["random"] + [m for m in extra if m in CONTROL_METHODS]]
    # the gain over the best control: what the donor adds beyond "any perturbation of this kind helps"
    df["gain_over_controls"] = df.gain_unit - df[controls].max(axis=1)
    df["fp_cost"] = df.patch_fp - df.base_fp
    df["diagonal"] = df.donor == df.receiver
    df = _strong_quantizers(acc, df, pk)
    if geo is not None and len(geo):
        cos = geo[geo.quantity == "cosine"].copy()
        cos["alignment"] = np.where(cos.metric == "euclidean", "euclidean", cos.metric + "_" + cos.objective)
        wide = cos.pivot_table(index=pk, columns="alignment", values="value").reset_index()
        wide = wide.rename(columns={a: f"cos_{a}" for a in ALIGNMENTS})
        df = df.merge(wide, on=pk, how="left")
        lam = geo[(geo.quantity == "lam_star") & (geo.objective == "ste") & (geo.metric == "ggn")]
        df = df.merge(lam[pk + ["value"]].rename(columns={"value": "lam_star_ggn_ste"}), on=pk, how="left")
        rec = geo[geo.quantity == "recovery"].pivot_table(index=pk, columns="metric", values="value").reset_index()
        rec = rec.rename(columns={c: f"recovery_{c}" for c in rec.columns if c not in pk})
        df = df.merge(rec, on=pk, how="left")
    if dis is not None and len(dis):
        df = df.merge(dis, on=["donor", "receiver"], how="left")
    return df.sort_values(["bits", "scope", "seed", "receiver", "donor"]).reset_index(drop=True)


#: Receiver quantizers besides RTN (config ``ptq``), as accuracy-table metrics ``m_top1``.
STRONG_QUANTIZERS = ("gptq", "awq")


def _strong_quantizers(acc: pd.DataFrame, df: pd.DataFrame, pk: list[str]) -> pd.DataFrame:
    """Columns of every stronger quantizer m the run evaluated (test split, points): ``base_m``,
    ``qat_m``, ``patch_m`` (λ = 1, then m), ``tuned_m`` (the λ chosen on val, then m),
    ``gain_unit_m`` = patch_m − base_m (does ρ_D help beyond m?), ``gain_tuned_m``, and
    ``m_over_rtn`` = base_m − base_ptq (what m itself recovers on the unpatched receiver)."""
    rk = ["seed", "bits", "receiver"]
    for m in [m for m in STRONG_QUANTIZERS if f"{m}_top1" in set(acc.metric)]:
        t = _test(acc, f"{m}_top1")
        base = t[t.method == "baseline"][rk + ["value"]].rename(columns={"value": f"base_{m}"})
        qat = t[t.method == "qat"][rk + ["value"]].rename(columns={"value": f"qat_{m}"})
        patch = t[t.method == "patch"]
        unit = patch[patch.lam == 1.0][pk + ["value"]].rename(columns={"value": f"patch_{m}"})
        tuned = patch.merge(df[pk + ["lam_val"]], on=pk)
        tuned = tuned[tuned.lam == tuned.lam_val][pk + ["value"]].rename(columns={"value": f"tuned_{m}"})
        df = df.merge(base, on=rk, how="left").merge(qat, on=rk, how="left")
        df = df.merge(unit, on=pk, how="left").merge(tuned, on=pk, how="left")
        for col in (f"base_{m}", f"qat_{m}", f"patch_{m}", f"tuned_{m}"):
            df[col] = 100 * df[col]
        df[f"gain_unit_{m}"] = df[f"patch_{m}"] - df[f"base_{m}"]
        df[f"gain_tuned_{m}"] = df[f"tuned_{m}"] - df[f"base_{m}"]
        df[f"{m}_over_rtn"] = df[f"base_{m}"] - df.base_ptq
    return df


def receiver_table(acc: pd.DataFrame) -> pd.DataFrame:
    """Per (seed, bits, scope, receiver): baseline, QAT ceiling, pretrained backbone, the
    multi-donor patch (mean of the other donors' vectors) at λ = 1 and at the validation λ, and
    the best single donor chosen on validation. Top-1 in percentage points (test split)."""
    t = _test(acc)
    rk = ["seed", "bits", "receiver"]
    out = []
    tuned = choose_lambda(acc)
    for (seed, bits, rec), g in t.groupby(rk):
        base = g[g.method == "baseline"].value.iloc[0]
        row0 = dict(seed=seed, bits=bits, receiver=rec, base_ptq=100 * base,
                    qat_ptq=100 * g[g.method == "qat"].value.iloc[0],
                    pretrained_ptq=100 * g[g.method == "pretrained_backbone"].value.iloc[0])
        for scope in sorted(g.scope[g.scope != ""].unique()):
            md = g[(g.method == "multi_donor") & (g.scope == scope) & (g.lam == 1.0)].value.iloc[0]
            tu = tuned[(tuned.seed == seed) & (tuned.bits == bits) & (tuned.receiver == rec) & (tuned.scope == scope)]
            mdt = tu[tu.method == "multi_donor"]
            single = tu[(tu.method == "patch") & (tu.donor != rec)]
            val = acc[(acc.split == "val") & (acc.metric == "ptq_top1") & (acc.method == "patch") & (acc.seed == seed)
                      & (acc.bits == bits) & (acc.receiver == rec) & (acc.scope == scope) & (acc.donor != rec)]
            best_donor = val.sort_values("value", ascending=False).donor.iloc[0]
            out.append(row0 | dict(scope=scope, multi_unit_ptq=100 * md, multi_tuned_ptq=100 * mdt.tuned_ptq.iloc[0],
                                   multi_lam_val=mdt.lam_val.iloc[0], best_donor=best_donor,
                                   best_donor_tuned_ptq=100 * single[single.donor == best_donor].tuned_ptq.iloc[0]))
    return _strong_receiver_columns(acc, pd.DataFrame(out), tuned)


def _strong_receiver_columns(acc: pd.DataFrame, rec: pd.DataFrame, tuned: pd.DataFrame) -> pd.DataFrame:
    """For every stronger quantizer m of the run: ``base_m``, ``qat_m``, ``multi_tuned_m`` and
    ``best_donor_tuned_m`` — the receiver table's settings, each quantized by m instead of RTN
    (λ and the best donor still chosen on validation under RTN). Points, test split."""
    rk = ["seed", "bits", "receiver"]
    for m in [m for m in STRONG_QUANTIZERS if f"{m}_top1" in set(acc.metric)]:
        t = _test(acc, f"{m}_top1")
        for method, col in (("baseline", f"base_{m}"), ("qat", f"qat_{m}")):
            rec = rec.merge(t[t.method == method][rk + ["value"]].rename(columns={"value": col}), on=rk, how="left")
        at_val = t.merge(tuned, on=LAMBDA_KEYS)
        at_val = at_val[at_val.lam == at_val.lam_val]
        multi = at_val[at_val.method == "multi_donor"][rk + ["scope", "value"]]
        rec = rec.merge(multi.rename(columns={"value": f"multi_tuned_{m}"}), on=rk + ["scope"], how="left")
        best = at_val[at_val.method == "patch"][rk + ["scope", "donor", "value"]]
        best = best.rename(columns={"donor": "best_donor", "value": f"best_donor_tuned_{m}"})
        rec = rec.merge(best, on=rk + ["scope", "best_donor"], how="left")
        for col in (f"base_{m}", f"qat_{m}", f"multi_tuned_{m}", f"best_donor_tuned_{m}"):
            rec[col] = 100 * rec[col]
    return rec


def pair_matrix(pairs: pd.DataFrame, col: str, names: list[str]) -> np.ndarray:
    """The donor × receiver matrix of ``col`` (mean over seeds), NaN where a cell is missing."""
    wide = pairs.pivot_table(index="donor", columns="receiver", values=col, aggfunc="mean")
    return wide.reindex(index=list(names), columns=list(names)).to_numpy(dtype=float)


def correlations(pairs: pd.DataFrame, permutations: int = 5000) -> pd.DataFrame:
    """Spearman and Pearson of every alignment with every target over off-diagonal cells, with
    QAP p-values and leave-one-task-out ranges on the *seed-averaged* matrices, and the range of
    the same correlation computed seed by seed (``seed_r_min``, ``seed_r_max``, ``n_seeds``).
    Rows of a curvature alignment also carry ``diff_vs_euclidean``: r(alignment) − r(Euclidean)
    with a task-bootstrap 95% interval (``diff_low``, ``diff_high``). Without alignment columns (a
    run without the geometry stage) the table is empty, with its columns."""
    rows = []
    for (bits, scope), g in pairs.groupby(["bits", "scope"]):
        names = sorted(set(g.donor) | set(g.receiver))
        seeds = sorted(g.seed.unique())
        aligns = [c for c in g.columns if c.startswith("cos_")]
        for target in [t for t in TARGETS if t in g.columns]:
            y = pair_matrix(g, target, names)
            ys = [pair_matrix(g[g.seed == s], target, names) for s in seeds]
            for a in aligns:
                x = pair_matrix(g, a, names)
                xs = [pair_matrix(g[g.seed == s], a, names) for s in seeds]
                for method in ("spearman", "pearson"):
                    res = qap_correlation(x, y, method, permutations)
                    per_seed = [corr(off_diagonal(xi), off_diagonal(yi), method) for xi, yi in zip(xs, ys)]
                    per_seed = [r for r in per_seed if math.isfinite(r)]
                    row = dict(bits=bits, scope=scope, alignment=a[4:], target=target) | res.to_dict() | dict(
                        n_seeds=len(seeds), seed_r_min=min(per_seed, default=math.nan),
                        seed_r_max=max(per_seed, default=math.nan))
                    if a != "cos_euclidean" and "cos_euclidean" in aligns:
                        d = correlation_difference(x, pair_matrix(g, "cos_euclidean", names), y, method)
                        row |= dict(diff_vs_euclidean=d.mean, diff_low=d.low, diff_high=d.high)
                    rows.append(row)
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=list(CORRELATION_COLUMNS))


def interval(pairs: pd.DataFrame, col: str) -> Interval:
    """95% interval of the mean off-diagonal value of ``col`` that sees both sources of
    variation: :func:`qgeom.experiment.stats.seed_task_interval` over the per-seed donor × receiver
    matrices (a task bootstrap of the seed-averaged matrix, widened in quadrature by the
    t-interval of the per-seed means); with one seed, the task bootstrap alone."""
    off = pairs[~pairs.diagonal]
    names = sorted(set(pairs.donor) | set(pairs.receiver))
    return seed_task_interval([pair_matrix(off[off.seed == s], col, names) for s in sorted(off.seed.unique())])

"""Figures of accuracy from the run's tables: baseline bars (FT, FT+PTQ, QAT, QAT+PTQ), donor ×
receiver Δ heatmaps, the radar over tasks (λ = 1 and tuned-λ webs) and normalized-improvement
bars. The λ figures are in :mod:`qgeom.figures.sweeps`.

Top-1 in percent, gains in percentage points; tasks in sorted order; seeds averaged (bars show
± 1 s.d. over seeds, the radar each seed's point, when there are several).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from qgeom.figures.selection import choose_bits, pair_frame, select_rows
from qgeom.figures.theme import (
    DOUBLE, SETTING_COLORS, SINGLE, caption, colors_for, grid_label, lighter, new_figure, pair_heatmap, relabel,
    robust_range, style,
)

ANNOTATE_MAX = 7  # tasks per heatmap panel whose cells still hold a number at print size

BASELINE_SETTINGS = {("baseline", "fp_top1"): "FT", ("baseline", "ptq_top1"): "FT+PTQ",
                     ("qat", "fp_top1"): "QAT", ("qat", "ptq_top1"): "QAT+PTQ",
                     # the stronger receiver quantizers of a run with ptq=rtn,gptq,awq (issue 24)
                     ("baseline", "gptq_top1"): "FT+GPTQ", ("qat", "gptq_top1"): "QAT+GPTQ",
                     ("baseline", "awq_top1"): "FT+AWQ", ("qat", "awq_top1"): "QAT+AWQ"}


def baseline_table(acc: pd.DataFrame, bits: int | None = None) -> pd.DataFrame:
    """Per task and setting (FT, FT+PTQ, QAT, QAT+PTQ): test Top-1 (%) mean and s.d. over seeds."""
    bits = choose_bits(acc, bits)
    t = acc[(acc.bits == bits) & (acc.split == "test") & acc.method.isin(["baseline", "qat"])
            & acc.metric.isin({k for _, k in BASELINE_SETTINGS})].copy()
    t["setting"] = [BASELINE_SETTINGS[(m, k)] for m, k in zip(t.method, t.metric)]
    g = t.groupby(["receiver", "setting"]).value
    out = pd.DataFrame({"top1": 100 * g.mean(), "sd": 100 * g.std(ddof=1), "n_seeds": g.count()}).reset_index()
    out.insert(0, "bits", bits)
    return out.rename(columns={"receiver": "task"})


def baseline_bars(acc: pd.DataFrame, bits: int | None = None, *, palette=None, title: str | None = None,
                  xlabel: str | None = None, ylabel: str | None = None) -> Figure:
    """Grouped bars per task: FT, FT+PTQ, QAT, QAT+PTQ — and FT/QAT + GPTQ/AWQ where the run has
    them (the quantizer as a hue) — (test Top-1, %); hatched bars = float.
    ``palette``: colours per setting (:func:`~qgeom.figures.theme.colors_for`)."""
    tab = baseline_table(acc, bits)
    tasks = sorted(tab.task.unique())
    settings = [s for s in BASELINE_SETTINGS.values() if s in set(tab.setting)]
    colors = colors_for(settings, palette, SETTING_COLORS)
    fig = new_figure(DOUBLE if len(tasks) > 3 else SINGLE, 2.3)
    with style():
        ax = fig.add_subplot()
        w = 0.8 / len(settings)
        x = np.arange(len(tasks))
        for i, s in enumerate(settings):
            d = tab[tab.setting == s].set_index("task").reindex(tasks)
            fp = "+" not in s
            c = colors[s]
            ax.bar(x + (i - (len(settings) - 1) / 2) * w, d.top1, w, label=s, color=lighter(c) if fp else c, edgecolor=c,
                   hatch="///" if fp else None, linewidth=0.6,
                   yerr=d.sd if (d.n_seeds > 1).any() else None, capsize=1.5, error_kw={"lw": 0.8})
        ax.set_xticks(x, tasks, rotation=30 if len(tasks) > 7 else 0)
        ax.set_xlabel("task")
        ax.set_ylabel("Top-1 on test (%)")
        ax.set_ylim(0, 108)  # headroom: a bar at 99.8 does not touch the frame
        ax.set_yticks([0, 25, 50, 75, 100])
        ax.set_title(f"Fine-tuned vs QAT, before and after {tab.bits.iloc[0]}-bit PTQ")
        fig.legend(*ax.get_legend_handles_labels(), ncols=min(len(settings), 4), loc="outside lower center")
        if (tab.n_seeds > 1).any():
            caption(fig, f"Bars: mean over {int(tab.n_seeds.max())} seeds, whiskers ± 1 s.d.")
    return relabel(fig, title, xlabel, ylabel)


def delta_table(pairs: pd.DataFrame, bits: int | None = None, scope: str | None = None) -> pd.DataFrame:
    """donor × receiver Δ post-PTQ Top-1 (points, test, mean over seeds) at λ = 1 and at the
    validation λ; ``lam``: the median over seeds of the λ chosen on validation (a grid value for
    an odd number of seeds, where a mean would print 0.9167)."""
    p, bits, scope = select_rows(pairs, bits, scope)
    g = p.groupby(["donor", "receiver"], as_index=False)[["gain_unit", "gain_tuned"]].mean()
    g = g.merge(p.groupby(["donor", "receiver"], as_index=False).lam_val.median(), on=["donor", "receiver"])
    unit = g.assign(lam_choice="λ = 1", delta=g.gain_unit, lam=1.0)
    tuned = g.assign(lam_choice="λ on val", delta=g.gain_tuned, lam=g.lam_val)
    out = pd.concat([unit, tuned])[["donor", "receiver", "lam_choice", "lam", "delta"]]
    out["diagonal"] = out.donor == out.receiver
    return out.assign(bits=bits, scope=scope).reset_index(drop=True)


def delta_heatmaps(pairs: pd.DataFrame, bits: int | None = None, scope: str | None = None, *, cmap="RdBu",
                   title: str | None = None, xlabel: str | None = None, ylabel: str | None = None) -> Figure:
    """Two donor × receiver heatmaps of Δ post-PTQ Top-1 (λ = 1; validation-chosen λ, annotated),
    in the diverging colour map ``cmap``.

    One symmetric colour range for both, from the 95 % quantile of |Δ| over *off-diagonal* cells
    (the diagonal — the receiver's own ρ, i.e. its QAT — would otherwise dominate); cells beyond
    it saturate, their numbers are printed. The diagonal is framed.
    """
    tab = delta_table(pairs, bits, scope)
    names = sorted(set(tab.donor) | set(tab.receiver))
    lim = robust_range(tab[~tab.diagonal].delta)
    n = len(names)
    fig = new_figure(DOUBLE, 3.3)
    with style():
        axes = fig.subplots(1, 2)
        for ax, choice in zip(axes, ["λ = 1", "λ on val"]):
            d = tab[tab.lam_choice == choice]
            lam = pair_frame(d, "lam", names).map(lambda v: f"λ={grid_label(v)}") if choice != "λ = 1" else None
            pair_heatmap(ax, pair_frame(d, "delta", names), vmin=-lim, vmax=lim, cmap=cmap, text=lam,
                         annotate=n <= ANNOTATE_MAX)
            ax.set_title(f"Δ post-PTQ Top-1, {choice}")
        axes[1].set_ylabel("")
        sm = ScalarMappable(Normalize(-lim, lim), cmap)
        fig.colorbar(sm, ax=list(axes), extend="both", shrink=0.8,
                     label=f"Δ Top-1 vs FT+PTQ (points, test, {tab.bits.iloc[0]} bits)")
        fig.suptitle(rf"Patching $\theta_R + \lambda\rho_D$ ({tab.scope.iloc[0]} scope); framed: own $\rho_R$")
        caption(fig, "Colour range: 95 % quantile of |Δ| off the diagonal (beyond it cells saturate). "
                + ("Right: the λ chosen on validation in each cell, as on the grid (the median over seeds)."
                   if n <= ANNOTATE_MAX else "Cell values in the CSV beside the figure."))
    return relabel(fig, title, xlabel, ylabel)


RADAR_SETTINGS = {"FT+PTQ": "FT + PTQ", "patch+PTQ, λ = 1": "best donor, λ = 1, + PTQ",
                  "patch+PTQ": "best donor, λ on val, + PTQ", "QAT+PTQ": "QAT + PTQ"}


def radar_table(receivers: pd.DataFrame, bits: int | None = None, scope: str | None = None,
                pairs: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per task and seed: FT+PTQ, the best single donor (chosen on val) + PTQ at λ = 1 (from
    ``pairs``; omitted without it) and at its val λ, and QAT+PTQ (test %); ``seed`` = "mean" rows
    hold the seed means the webs draw."""
    r, bits, scope = select_rows(receivers, bits, scope)
    r = r.copy()
    cols = {"FT+PTQ": "base_ptq", "patch+PTQ": "best_donor_tuned_ptq", "QAT+PTQ": "qat_ptq"}
    if pairs is not None and len(pairs):
        p = pairs[(pairs.bits == bits) & (pairs.scope == scope)].set_index(["seed", "receiver", "donor"]).patch_ptq
        r["unit_ptq"] = [p.get((s, rc, d), np.nan) for s, rc, d in zip(r.seed, r.receiver, r.best_donor)]
        cols = {"FT+PTQ": "base_ptq", "patch+PTQ, λ = 1": "unit_ptq", "patch+PTQ": "best_donor_tuned_ptq",
                "QAT+PTQ": "qat_ptq"}
    donor = r.groupby("receiver").best_donor.agg(lambda s: s.mode().iloc[0])
    rows = []
    for (task, seed), row in r.set_index(["receiver", "seed"]).iterrows():
        for setting, col in cols.items():
            rows.append(dict(bits=bits, scope=scope, task=task, seed=str(seed), setting=setting, top1=row[col],
                             best_donor=donor[task]))
    long = pd.DataFrame(rows)
    mean = long.groupby(["task", "setting"], as_index=False, sort=False).agg(
        top1=("top1", "mean"), best_donor=("best_donor", "first")).assign(bits=bits, scope=scope, seed="mean")
    return pd.concat([long, mean[long.columns]], ignore_index=True)


def radar(receivers: pd.DataFrame, bits: int | None = None, scope: str | None = None,
          pairs: pd.DataFrame | None = None, *, palette=None, title: str | None = None, xlabel: str | None = None,
          ylabel: str | None = None) -> Figure:
    """Radar over tasks: FT+PTQ, best-donor patch + PTQ at λ = 1 (with ``pairs``) and at the val
    λ, QAT+PTQ (test Top-1, %); each seed's value as a dot when there are several. ``palette``:
    colours per setting (keys of :data:`RADAR_SETTINGS`)."""
    tab = radar_table(receivers, bits, scope, pairs)
    mean, per_seed = tab[tab.seed == "mean"], tab[tab.seed != "mean"]
    tasks = sorted(mean.task.unique())
    ang = np.linspace(0, 2 * np.pi, len(tasks), endpoint=False)
    fig = new_figure(SINGLE, 3.7)
    fig.set_layout_engine("none")  # polar tick labels escape the constrained layout: place the web by hand
    colors = colors_for(RADAR_SETTINGS, palette, {"FT+PTQ": SETTING_COLORS["FT+PTQ"], "QAT+PTQ": SETTING_COLORS["QAT+PTQ"],
                                                  "patch+PTQ, λ = 1": SETTING_COLORS["patch+PTQ"],
                                                  "patch+PTQ": SETTING_COLORS["patch+PTQ"]})
    styles = {k: (ls, colors[k]) for k, ls in zip(RADAR_SETTINGS, ("-", ":", "-", "--"))}
    with style():
        ax = fig.add_axes((0.26, 0.3, 0.48, 0.54), projection="polar")
        for setting in [s for s in RADAR_SETTINGS if s in set(mean.setting)]:
            ls, c = styles[setting]
            v = mean[mean.setting == setting].set_index("task").top1.reindex(tasks).to_numpy()
            ax.plot(np.r_[ang, ang[:1]], np.r_[v, v[:1]], ls, color=c, lw=1.4, marker="o", ms=2.5,
                    label=RADAR_SETTINGS[setting])
            if setting != "patch+PTQ, λ = 1":
                ax.fill(np.r_[ang, ang[:1]], np.r_[v, v[:1]], color=c, alpha=0.06)
            if per_seed.seed.nunique() > 1:
                d = per_seed[per_seed.setting == setting]
                ax.scatter(ang[[tasks.index(t) for t in d.task]], d.top1, s=4, color=c, alpha=0.6, lw=0,
                           label="_seed")
        donor = mean.drop_duplicates("task").set_index("task").best_donor
        ax.set_xticks(ang, [f"{t}\n(ρ from {donor[t]})" for t in tasks])
        for lab, a in zip(ax.get_xticklabels(), ang):  # labels lean away from the web, never across it
            c, s = np.cos(a), np.sin(a)
            lab.set_horizontalalignment("left" if c > 0.1 else "right" if c < -0.1 else "center")
            lab.set_verticalalignment("bottom" if s > 0.1 else "top" if s < -0.1 else "center")
        ax.tick_params(axis="x", pad=1)
        ax.set_ylim(0, 100)
        ax.set_rlabel_position(360 / len(tasks) / 2)  # between two spokes
        ax.set_yticks([25, 50, 75, 100], ["25", "50", "75", "100 %"])
        fig.suptitle(f"Post-PTQ Top-1 on test ({mean.bits.iloc[0]} bits, {mean.scope.iloc[0]} scope)", y=0.99)
        fig.legend(*ax.get_legend_handles_labels(), loc="lower center", bbox_to_anchor=(0.5, 0.0), ncols=1)
        if per_seed.seed.nunique() > 1:
            caption(fig, f"Webs: mean over {per_seed.seed.nunique()} seeds; dots: each seed.")
    return relabel(fig, title, xlabel, ylabel)


#: The receiver quantizers of the improvement figure: RTN (the run's ``ptq`` columns) and the stronger ones.
QUANTIZER_LABELS = {"ptq": "RTN", "gptq": "GPTQ", "awq": "AWQ"}


def improvement_table(receivers: pd.DataFrame, bits: int | None = None, scope: str | None = None) -> pd.DataFrame:
    """(patch+Q − FT+Q) / QAT+Q per task for the best single donor and the mean of the other donors
    (both at their validation λ), and the QAT ceiling (QAT+Q − FT+Q) / QAT+Q, for the receiver
    quantizer Q = RTN and every stronger one the run has (``quantizer``): ``improvement`` from the
    seed means, ``sd`` over the seeds' own ratios (NaN with one seed)."""
    r, bits, scope = select_rows(receivers, bits, scope)
    rows = []
    for q, label in QUANTIZER_LABELS.items():
        cols = [f"base_{q}", f"qat_{q}", f"best_donor_tuned_{q}", f"multi_tuned_{q}"]
        if not set(cols) <= set(r.columns):
            continue
        g = r.groupby("receiver")[cols].mean()
        for task, row in g.iterrows():
            seeds = r[r.receiver == task]
            base, qat = seeds[f"base_{q}"], seeds[f"qat_{q}"]
            for patch, col in (("best donor", cols[2]), ("mean of other donors", cols[3]), ("QAT ceiling", cols[1])):
                per_seed = ((seeds[col] - base) / qat.where(qat > 0)).to_numpy()
                ratio = (row[col] - row[cols[0]]) / row[cols[1]] if row[cols[1]] > 0 else np.nan
                rows.append(dict(bits=bits, scope=scope, quantizer=label, task=task, patch=patch, improvement=ratio,
                                 sd=float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else np.nan,
                                 n_seeds=len(per_seed)))
    return pd.DataFrame(rows)


def improvement_bars(receivers: pd.DataFrame, bits: int | None = None, scope: str | None = None, *, palette=None,
                     title: str | None = None, xlabel: str | None = None, ylabel: str | None = None) -> Figure:
    """Bars per task of the normalized improvement (± 1 s.d. over seeds when there are several);
    black ticks mark the QAT ceiling; one panel per receiver quantizer (RTN, and GPTQ/AWQ where the
    run has them). ``palette``: colours of "best donor" and "mean of other donors"."""
    tab = improvement_table(receivers, bits, scope)
    tasks = sorted(tab.task.unique())
    seeds = int(tab.n_seeds.max())
    quantizers = list(dict.fromkeys(tab.quantizer))
    fig = new_figure(DOUBLE if len(tasks) > 3 or len(quantizers) > 1 else SINGLE, 2.3)
    with style():
        axes = np.atleast_1d(fig.subplots(1, len(quantizers), sharey=True))
        x = np.arange(len(tasks))
        colors = colors_for(["best donor", "mean of other donors"], palette,
                            {"best donor": SETTING_COLORS["patch+PTQ"], "mean of other donors": SETTING_COLORS["multi+PTQ"]})
        for ax, q in zip(axes, quantizers):
            tq = tab[tab.quantizer == q]
            for i, (patch, c) in enumerate(colors.items()):
                v = tq[tq.patch == patch].set_index("task").reindex(tasks)
                ax.bar(x + (i - 0.5) * 0.38, v.improvement, 0.38, color=c, label=f"{patch} (λ on val)",
                       yerr=v.sd if seeds > 1 else None, capsize=1.5, error_kw={"lw": 0.8})
            ceil = tq[tq.patch == "QAT ceiling"].set_index("task").improvement.reindex(tasks)
            ax.hlines(ceil, x - 0.42, x + 0.42, colors="black", lw=1.2, label="QAT ceiling")
            ax.axhline(0, color="0.3", lw=0.6)
            ax.set_xticks(x, tasks, rotation=30 if len(tasks) > 7 or len(quantizers) > 1 else 0)
            ax.set_xlabel("receiver task")
            if len(quantizers) > 1:
                ax.set_title(f"receiver quantized by {q}" + ("" if q == "RTN" else " (receiver calibration data)"))
        q0 = "PTQ" if quantizers == ["RTN"] else "Q"
        axes[0].set_ylabel(f"(patch+{q0} − FT+{q0}) / QAT+{q0}")
        sc = tab.scope.iloc[0]
        head = f"Normalized improvement, test ({tab.bits.iloc[0]} bits" + ("" if sc == "backbone" else f", {sc}") + ")"
        (axes[0].set_title if len(quantizers) == 1 else fig.suptitle)(head)
        fig.legend(*axes[0].get_legend_handles_labels(), ncols=3 if len(tasks) > 3 else 1, loc="outside lower center")
        if seeds > 1:
            caption(fig, f"Bars: ratio of the means over {seeds} seeds; whiskers ± 1 s.d. of the seeds' ratios.")
    return relabel(fig, title, xlabel, ylabel)

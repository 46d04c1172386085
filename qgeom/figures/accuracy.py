"""Figures of accuracy from the run's tables: baseline bars (FT, FT+PTQ, QAT, QAT+PTQ), donor ×
receiver Δ heatmaps, the radar over tasks, normalized-improvement bars and the λ curves.

Top-1 in percent, gains in percentage points; tasks in sorted order; seeds averaged (bars show
± 1 s.d. when there are several).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from qgeom.figures.selection import _matrix, _select, choose_bits, choose_scope
from qgeom.figures.theme import SETTING_COLORS, _figure, _heatmap, _lighter, robust_range, style, task_colors

BASELINE_SETTINGS = {("baseline", "fp_top1"): "FT", ("baseline", "ptq_top1"): "FT+PTQ",
                     ("qat", "fp_top1"): "QAT", ("qat", "ptq_top1"): "QAT+PTQ"}


def baseline_table(acc: pd.DataFrame, bits: int | None = None) -> pd.DataFrame:
    """Per task and setting (FT, FT+PTQ, QAT, QAT+PTQ): test Top-1 (%) mean and s.d. over seeds."""
    bits = choose_bits(acc, bits)
    t = acc[(acc.bits == bits) & (acc.split == "test") & acc.method.isin(["baseline", "qat"])].copy()
    t["setting"] = [BASELINE_SETTINGS[(m, k)] for m, k in zip(t.method, t.metric)]
    g = t.groupby(["receiver", "setting"]).value
    out = pd.DataFrame({"top1": 100 * g.mean(), "sd": 100 * g.std(ddof=1), "n_seeds": g.count()}).reset_index()
    out.insert(0, "bits", bits)
    return out.rename(columns={"receiver": "task"})


def baseline_bars(acc: pd.DataFrame, bits: int | None = None) -> Figure:
    """Grouped bars per task: FT, FT+PTQ, QAT, QAT+PTQ (test Top-1, %); hatched bars = float."""
    tab = baseline_table(acc, bits)
    tasks, settings = sorted(tab.task.unique()), list(BASELINE_SETTINGS.values())
    fig = _figure(figsize=(max(5.0, 1.1 * len(tasks) + 1.5), 3.4))
    with style():
        ax = fig.add_subplot()
        w = 0.8 / len(settings)
        x = np.arange(len(tasks))
        for i, s in enumerate(settings):
            d = tab[tab.setting == s].set_index("task").reindex(tasks)
            fp = not s.endswith("PTQ")
            c = SETTING_COLORS[s]
            ax.bar(x + (i - 1.5) * w, d.top1, w, label=s, color=_lighter(c) if fp else c, edgecolor=c,
                   hatch="///" if fp else None, linewidth=0.8,
                   yerr=d.sd if (d.n_seeds > 1).any() else None, capsize=2)
        ax.set_xticks(x, tasks, rotation=30 if len(tasks) > 5 else 0)
        ax.set_xlabel("task")
        ax.set_ylabel("Top-1 on test (%)")
        ax.set_ylim(0, 100)
        ax.set_title(f"Fine-tuned vs QAT, before and after {tab.bits.iloc[0]}-bit PTQ")
        fig.legend(*ax.get_legend_handles_labels(), ncols=4, loc="outside lower center")
    return fig


def delta_table(pairs: pd.DataFrame, bits: int | None = None, scope: str | None = None) -> pd.DataFrame:
    """donor × receiver Δ post-PTQ Top-1 (points, test) at λ = 1 and at the validation λ (seed mean)."""
    p, bits, scope = _select(pairs, bits, scope)
    g = p.groupby(["donor", "receiver"], as_index=False)[["gain_unit", "gain_tuned", "lam_val"]].mean()
    unit = g.assign(lam_choice="λ = 1", delta=g.gain_unit, lam=1.0)
    tuned = g.assign(lam_choice="λ on val", delta=g.gain_tuned, lam=g.lam_val)
    out = pd.concat([unit, tuned])[["donor", "receiver", "lam_choice", "lam", "delta"]]
    out["diagonal"] = out.donor == out.receiver
    return out.assign(bits=bits, scope=scope).reset_index(drop=True)


def delta_heatmaps(pairs: pd.DataFrame, bits: int | None = None, scope: str | None = None) -> Figure:
    """Two donor × receiver heatmaps of Δ post-PTQ Top-1 (λ = 1; validation-chosen λ, annotated).

    One symmetric colour range for both, from the 95 % quantile of |Δ| over *off-diagonal* cells
    (the diagonal — the receiver's own ρ, i.e. its QAT — would otherwise dominate); cells beyond
    it saturate, their numbers are printed. The diagonal is framed.
    """
    tab = delta_table(pairs, bits, scope)
    names = sorted(set(tab.donor) | set(tab.receiver))
    lim = robust_range(tab[~tab.diagonal].delta)
    n = len(names)
    fig = _figure(figsize=(2 * (0.62 * n + 1.3) + 0.8, 0.62 * n + 1.6))
    with style():
        axes = fig.subplots(1, 2)
        for ax, choice in zip(axes, ["λ = 1", "λ on val"]):
            d = tab[tab.lam_choice == choice]
            lam = _matrix(d, "lam", names).map(lambda v: f"λ={v:.2g}") if choice != "λ = 1" else None
            _heatmap(ax, _matrix(d, "delta", names), vmin=-lim, vmax=lim, cmap="RdBu", text=lam)
            ax.set_title(f"Δ post-PTQ Top-1, {choice}")
        axes[1].set_ylabel("")
        sm = ScalarMappable(Normalize(-lim, lim), "RdBu")
        fig.colorbar(sm, ax=list(axes), extend="both", shrink=0.8,
                     label=f"Δ Top-1 vs FT+PTQ (points, test, {tab.bits.iloc[0]} bits)")
        fig.suptitle(f"Patching θ_R + λρ_D ({tab.scope.iloc[0]} scope); framed: own ρ_R")
    return fig


def radar_table(receivers: pd.DataFrame, bits: int | None = None, scope: str | None = None) -> pd.DataFrame:
    """Per task: FT+PTQ, best single donor (chosen on val, at its val λ) + PTQ, QAT+PTQ (test %)."""
    r, bits, scope = _select(receivers, bits, scope)
    g = r.groupby("receiver").agg(base=("base_ptq", "mean"), patch=("best_donor_tuned_ptq", "mean"),
                                  qat=("qat_ptq", "mean"), best_donor=("best_donor", lambda s: s.mode().iloc[0]))
    rows = []
    for task, row in g.iterrows():
        for setting, col in (("FT+PTQ", "base"), ("patch+PTQ", "patch"), ("QAT+PTQ", "qat")):
            rows.append(dict(bits=bits, scope=scope, task=task, setting=setting, top1=row[col],
                             best_donor=row.best_donor))
    return pd.DataFrame(rows)


def radar(receivers: pd.DataFrame, bits: int | None = None, scope: str | None = None) -> Figure:
    """Radar over tasks: FT+PTQ, best-donor patch + PTQ, QAT+PTQ (test Top-1, %)."""
    tab = radar_table(receivers, bits, scope)
    tasks = sorted(tab.task.unique())
    ang = np.linspace(0, 2 * np.pi, len(tasks), endpoint=False)
    fig = _figure(figsize=(5.2, 4.8))
    with style():
        ax = fig.add_subplot(projection="polar")
        labels = {"FT+PTQ": "FT + PTQ", "patch+PTQ": "best donor patch + PTQ", "QAT+PTQ": "QAT + PTQ"}
        for setting, ls in (("FT+PTQ", "-"), ("patch+PTQ", "-"), ("QAT+PTQ", "--")):
            v = tab[tab.setting == setting].set_index("task").top1.reindex(tasks).to_numpy()
            c = SETTING_COLORS[setting]
            ax.plot(np.r_[ang, ang[:1]], np.r_[v, v[:1]], ls, color=c, lw=2, marker="o", ms=4, label=labels[setting])
            ax.fill(np.r_[ang, ang[:1]], np.r_[v, v[:1]], color=c, alpha=0.08)
        donor = tab.drop_duplicates("task").set_index("task").best_donor
        ax.set_xticks(ang, [f"{t}\n(ρ from {donor[t]})" for t in tasks])
        ax.set_ylim(0, 100)
        ax.set_rlabel_position(90)
        ax.set_yticks([25, 50, 75, 100], ["25", "50", "75", "100 %"], fontsize=7)
        ax.set_title(f"Post-PTQ Top-1 on test ({tab.bits.iloc[0]} bits, {tab.scope.iloc[0]} scope)")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.08), ncols=3, fontsize=8)
    return fig


def improvement_table(receivers: pd.DataFrame, bits: int | None = None, scope: str | None = None) -> pd.DataFrame:
    """(patch+PTQ − FT+PTQ) / QAT+PTQ per task for the best single donor and the mean of the
    other donors (both at their validation λ), and the QAT ceiling (QAT+PTQ − FT+PTQ) / QAT+PTQ."""
    r, bits, scope = _select(receivers, bits, scope)
    g = r.groupby("receiver")[["base_ptq", "qat_ptq", "best_donor_tuned_ptq", "multi_tuned_ptq"]].mean()
    rows = []
    for task, row in g.iterrows():
        for patch, col in (("best donor", "best_donor_tuned_ptq"), ("mean of other donors", "multi_tuned_ptq"),
                           ("QAT ceiling", "qat_ptq")):
            rows.append(dict(bits=bits, scope=scope, task=task, patch=patch,
                             improvement=(row[col] - row.base_ptq) / row.qat_ptq if row.qat_ptq > 0 else np.nan))
    return pd.DataFrame(rows)


def improvement_bars(receivers: pd.DataFrame, bits: int | None = None, scope: str | None = None) -> Figure:
    """Bars per task of the normalized improvement; black ticks mark the QAT ceiling."""
    tab = improvement_table(receivers, bits, scope)
    tasks = sorted(tab.task.unique())
    fig = _figure(figsize=(max(5.0, 0.9 * len(tasks) + 1.5), 3.4))
    with style():
        ax = fig.add_subplot()
        x = np.arange(len(tasks))
        for i, (patch, c) in enumerate((("best donor", SETTING_COLORS["patch+PTQ"]),
                                        ("mean of other donors", SETTING_COLORS["multi+PTQ"]))):
            v = tab[tab.patch == patch].set_index("task").improvement.reindex(tasks)
            ax.bar(x + (i - 0.5) * 0.38, v, 0.38, color=c, label=f"{patch} (λ on val)")
        ceil = tab[tab.patch == "QAT ceiling"].set_index("task").improvement.reindex(tasks)
        ax.hlines(ceil, x - 0.42, x + 0.42, colors="black", lw=1.5, label="QAT ceiling")
        ax.axhline(0, color="0.3", lw=0.8)
        ax.set_xticks(x, tasks, rotation=30 if len(tasks) > 5 else 0)
        ax.set_xlabel("receiver task")
        ax.set_ylabel("(patch+PTQ − FT+PTQ) / QAT+PTQ")
        ax.set_title(f"Normalized improvement ({tab.bits.iloc[0]} bits, {tab.scope.iloc[0]} scope, test)")
        fig.legend(*ax.get_legend_handles_labels(), fontsize=8, ncols=3, loc="outside lower center")
    return fig


def lambda_split(acc: pd.DataFrame) -> str:
    """The split the λ curves are drawn from: ``test`` when it holds the whole λ grid (runs made
    before issue 16), else ``val`` (the experiment evaluates test only at λ = 1 and the λ chosen
    on val; the curve λ is chosen from is the validation one)."""
    p = acc[(acc.method == "patch") & (acc.metric == "ptq_top1")]
    lams = {s: set(p[p.split == s].lam.dropna()) for s in ("val", "test")}
    return "test" if lams["test"] and lams["test"] >= lams["val"] else "val"


def lambda_table(acc: pd.DataFrame, pairs: pd.DataFrame | None = None, bits: int | None = None,
                 scope: str | None = None, split: str | None = None) -> pd.DataFrame:
    """Post-PTQ Top-1 (%) of θ_R + λρ_D per receiver, donor and λ (λ = 0: FT+PTQ) on ``split``
    (default :func:`lambda_split`), with the receiver's QAT+PTQ and the donor's λ* (GGN-ste, from
    ``pairs``; NaN without it). The table's ``split`` column says which split was drawn."""
    bits = choose_bits(acc, bits)
    scope = choose_scope(acc[acc.method == "patch"], scope)
    split = split or lambda_split(acc[acc.bits == bits])
    t = acc[(acc.bits == bits) & (acc.split == split) & (acc.metric == "ptq_top1")]
    patch = t[(t.method == "patch") & (t.scope == scope)]
    patch = patch.groupby(["receiver", "donor", "lam"], as_index=False).value.mean()
    base = t[t.method == "baseline"].groupby("receiver").value.mean()
    qat = t[t.method == "qat"].groupby("receiver").value.mean()
    zero = patch.drop_duplicates(["receiver", "donor"]).assign(lam=0.0)
    zero["value"] = zero.receiver.map(base)
    out = pd.concat([zero, patch]).sort_values(["receiver", "donor", "lam"]).rename(columns={"value": "top1"})
    out["top1"] *= 100
    out["qat_ptq"] = 100 * out.receiver.map(qat)
    out["lam_star"] = np.nan
    if pairs is not None and "lam_star_ggn_ste" in pairs:
        p = pairs[(pairs.bits == bits) & (pairs.scope == scope)]
        ls = p.groupby(["receiver", "donor"]).lam_star_ggn_ste.mean()
        out["lam_star"] = [ls.get((r, d), np.nan) for r, d in zip(out.receiver, out.donor)]
    return out.assign(bits=bits, scope=scope, split=split).reset_index(drop=True)


def lambda_curves(acc: pd.DataFrame, pairs: pd.DataFrame | None = None, bits: int | None = None,
                  scope: str | None = None) -> Figure:
    """One panel per receiver: post-PTQ Top-1 (split of :func:`lambda_split`) vs λ for each donor (own ρ_R dashed), the
    receiver's QAT+PTQ (black, dotted), and each donor's λ* (GGN-ste) as a triangle on its curve
    (hollow, at the panel's edge, when λ* lies outside the λ range)."""
    tab = lambda_table(acc, pairs, bits, scope)
    recs = sorted(tab.receiver.unique())
    colors = task_colors(sorted(set(tab.donor) | set(recs)))
    ncol = min(3, len(recs))
    nrow = math.ceil(len(recs) / ncol)
    fig = _figure(figsize=(3.3 * ncol + 0.3, 2.7 * nrow + 0.7))
    with style():
        axes = np.atleast_1d(fig.subplots(nrow, ncol, sharex=True, squeeze=False)).ravel()
        lam_max = tab.lam.max()
        for ax, r in zip(axes, recs):
            d = tab[tab.receiver == r]
            for donor, g in d.groupby("donor"):
                own = donor == r
                ax.plot(g.lam, g.top1, "--" if own else "-", marker="o", ms=3, color=colors[donor],
                        label=f"ρ from {donor}" + (" (own)" if own else ""), lw=1.6 if not own else 1.2)
                ls = g.lam_star.iloc[0]
                if np.isfinite(ls):
                    inside = 0 <= ls <= lam_max
                    xs = float(np.clip(ls, 0, lam_max))
                    ax.plot([xs], [np.interp(xs, g.lam, g.top1)], "v", ms=8, color=colors[donor],
                            mfc=colors[donor] if inside else "none", mew=1.5, zorder=5)
            ax.axhline(d.qat_ptq.iloc[0], color="0.15", ls=":", lw=1.5)
            ax.set_title(f"receiver {r}")
            ax.set_xlabel("λ (patch θ_R + λρ_D)" if ax.get_subplotspec().is_last_row() else "")
            ax.set_ylabel(f"post-PTQ Top-1, {tab.split.iloc[0]} (%)")
        for ax in axes[len(recs):]:
            ax.set_visible(False)
        handles, labels = [], []
        for donor in sorted(colors):
            handles.append(Line2D([], [], color=colors[donor], marker="o", ms=3))
            labels.append(f"ρ_D from {donor}")
        handles += [Line2D([], [], color="0.15", ls=":"),
                    Line2D([], [], color="0.3", ls="", marker="v", ms=7),
                    Line2D([], [], color="0.3", ls="--")]
        labels += ["QAT+PTQ of the receiver", "λ* (GGN-ste; hollow: outside range)", "own ρ_R (diagonal)"]
        fig.legend(handles, labels, loc="outside lower center", ncols=min(4, len(labels)), fontsize=8)
        fig.suptitle(f"λ sweeps ({tab.bits.iloc[0]} bits, {tab.scope.iloc[0]} scope); λ = 0 is FT+PTQ")
    return fig

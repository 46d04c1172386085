"""Figures of the scale λ: post-PTQ Top-1 along θ_R + λρ_D per receiver (λ curves), the Δ
pooled over pairs per λ with the histogram of the tuned λ (sensitivity), and the λ chosen on
validation against the λ* the metric predicts (calibration).

The λ grid is read from the test split when it holds every λ of the validation split, else from
validation (a run may evaluate test only at the chosen λ and at λ = 1); the figure says which.
λ* outside the plotted range is drawn at the range's edge with an arrow and its value, never
clipped silently. Seeds: curves are seed means with a ± 1 s.d. band when there are several.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from scipy.stats import spearmanr

from qgeom.figures.selection import choose_bits, choose_scope, select_rows
from qgeom.figures.theme import (
    CB, DOUBLE, SINGLE, caption, colors_for, grid_label, new_figure, relabel, style, task_colors,
)

LAM_STAR_LABELS = {"ggn_ste": "GGN, STE at $\\theta_{R,\\mathrm{QAT}}$", "ggn_fp": "GGN, fp at $\\theta_R$",
                   "hessian_ste": "Hessian, STE", "hessian_fp": "Hessian, fp", "fisher_ste": "Fisher, STE",
                   "fisher_fp": "Fisher, fp"}


def lambda_split(acc: pd.DataFrame) -> str:
    """``test`` when *every* patch (seed, bits, receiver, donor, scope) holds on test every λ it
    holds on validation, else ``val``. Per patch, not pooled: a run that evaluates test only at
    λ = 1 and at each patch's chosen λ covers the whole grid once pooled over patches, but a curve
    drawn from it would show, at λ ≠ 1, only the patches that chose that λ (selection bias)."""
    p = acc[(acc.method == "patch") & (acc.metric == "ptq_top1")].dropna(subset=["lam"])
    if not (p.split == "val").any():
        return "test"
    keys = [k for k in ("seed", "bits", "receiver", "donor", "scope") if k in p.columns]
    lams = p.groupby(keys + ["split"]).lam.agg(frozenset).unstack("split")
    if "test" not in lams:
        return "val"
    full = [isinstance(t, frozenset) and isinstance(v, frozenset) and v <= t for t, v in zip(lams["test"], lams["val"])]
    return "test" if all(full) else "val"


def lambda_table(acc: pd.DataFrame, pairs: pd.DataFrame | None = None, bits: int | None = None,
                 scope: str | None = None) -> pd.DataFrame:
    """Post-PTQ Top-1 (%) of θ_R + λρ_D per receiver, donor and λ (λ = 0: FT+PTQ), mean and
    s.d. over seeds, on the split with the full λ grid (:func:`lambda_split`), with the
    receiver's QAT+PTQ and the donor's λ* (GGN-ste, from ``pairs``; NaN without it)."""
    bits = choose_bits(acc, bits)
    scope = choose_scope(acc[acc.method == "patch"], scope)
    a = acc[acc.bits == bits]
    split = lambda_split(a)
    t = a[(a.split == split) & (a.metric == "ptq_top1")]
    patch = t[(t.method == "patch") & (t.scope == scope)][["seed", "receiver", "donor", "lam", "value"]]
    base = t[t.method == "baseline"].set_index(["seed", "receiver"]).value
    qat = t[t.method == "qat"].groupby("receiver").value.mean()
    zero = patch.drop_duplicates(["seed", "receiver", "donor"]).assign(lam=0.0)
    zero["value"] = [base[(s, r)] for s, r in zip(zero.seed, zero.receiver)]
    g = pd.concat([zero, patch]).groupby(["receiver", "donor", "lam"]).value
    out = pd.DataFrame({"top1": 100 * g.mean(), "sd": 100 * g.std(ddof=1), "n_seeds": g.count()}).reset_index()
    out["qat_ptq"] = 100 * out.receiver.map(qat)
    out["lam_star"] = np.nan
    if pairs is not None and "lam_star_ggn_ste" in pairs:
        p = pairs[(pairs.bits == bits) & (pairs.scope == scope)]
        ls = p.groupby(["receiver", "donor"]).lam_star_ggn_ste.mean()
        out["lam_star"] = [ls.get((r, d), np.nan) for r, d in zip(out.receiver, out.donor)]
    return out.assign(split=split, bits=bits, scope=scope)


def _edge_arrow(ax, x_edge: float, y: float, value: float, side: int, k: int, color) -> None:
    """An arrow at the plot's edge pointing to where ``value`` lies (side −1: left, +1: right),
    labelled with it; the k-th arrow at one edge is stacked below the previous."""
    ax.annotate(f"λ*={value:.2f}", xy=(x_edge, y), xytext=(-side * 4, -9 * k - 6), textcoords="offset points",
                ha="left" if side < 0 else "right", va="top", fontsize=7, color=color,
                arrowprops=dict(arrowstyle="<|-", color=color, lw=0.8, shrinkA=0, shrinkB=0,
                                mutation_scale=6), annotation_clip=False, gid="lam_star_outside")


def lambda_curves(acc: pd.DataFrame, pairs: pd.DataFrame | None = None, bits: int | None = None,
                  scope: str | None = None, *, palette=None, title: str | None = None, xlabel: str | None = None, ylabel: str | None = None) -> Figure:
    """One panel per receiver: post-PTQ Top-1 vs λ for each donor (own ρ_R dashed; ± 1 s.d. band
    over seeds; ``palette``: colours per task), the receiver's QAT+PTQ (black, dotted), and each
    donor's λ* (GGN-ste) as a triangle on its curve, or, outside the λ range, as an arrow at the
    panel's edge with its value."""
    tab = lambda_table(acc, pairs, bits, scope)
    recs = sorted(tab.receiver.unique())
    names = sorted(set(tab.donor) | set(recs))
    colors = colors_for(names, palette, task_colors(names))
    ncol = min(3, len(recs))
    nrow = math.ceil(len(recs) / ncol)
    fig = new_figure(DOUBLE if ncol > 1 else SINGLE, 1.75 * nrow + 0.9)
    split, seeds = tab.split.iloc[0], int(tab.n_seeds.max())
    with style():
        axes = np.atleast_1d(fig.subplots(nrow, ncol, sharex=True, squeeze=False)).ravel()
        lam_max = tab.lam.max()
        for ax, r in zip(axes, recs):
            d = tab[tab.receiver == r]
            at_edge = {-1: 0, 1: 0}
            for donor, g in d.groupby("donor"):
                own = donor == r
                ax.plot(g.lam, g.top1, "--" if own else "-", marker="o", ms=2.5, color=colors[donor],
                        label=f"ρ from {donor}" + (" (own)" if own else ""), lw=1.0 if own else 1.2)
                if seeds > 1:
                    ax.fill_between(g.lam, g.top1 - g.sd, g.top1 + g.sd, color=colors[donor], alpha=0.15, lw=0)
                ls = g.lam_star.iloc[0]
                if not np.isfinite(ls):
                    continue
                if 0 <= ls <= lam_max:
                    ax.plot([ls], [np.interp(ls, g.lam, g.top1)], "v", ms=5, color=colors[donor], zorder=5)
                else:
                    side = -1 if ls < 0 else 1
                    xe = 0.0 if side < 0 else lam_max
                    _edge_arrow(ax, xe, float(np.interp(xe, g.lam, g.top1)), ls, side, at_edge[side], colors[donor])
                    at_edge[side] += 1
            ax.axhline(d.qat_ptq.iloc[0], color="0.15", ls=":", lw=1.0)
            ax.set_title(f"receiver {r}")
            ax.set_xlabel(r"$\lambda$ in $\theta_R + \lambda\rho_D$" if ax.get_subplotspec().is_last_row() else "")
            ax.set_ylabel(f"PTQ Top-1, {split} (%)" if ax.get_subplotspec().is_first_col() else "")
        for ax in axes[len(recs):]:
            ax.set_visible(False)
        handles = [Line2D([], [], color=colors[dn], marker="o", ms=2.5) for dn in sorted(colors)]
        labels = [rf"$\rho_D$ from {dn}" for dn in sorted(colors)]
        handles += [Line2D([], [], color="0.15", ls=":"), Line2D([], [], color="0.3", ls="", marker="v", ms=5),
                    Line2D([], [], color="0.3", ls="--")]
        labels += ["QAT+PTQ of the receiver", r"$\lambda^*$ (GGN, STE)", r"own $\rho_R$ (diagonal)"]
        fig.legend(handles, labels, loc="outside lower center", ncols=4)
        fig.suptitle(f"λ sweeps ({tab.bits.iloc[0]} bits, {tab.scope.iloc[0]} scope, {split} split)")
        note = (r"λ = 0 is FT+PTQ. $\lambda^*$ outside the plotted range [0, " + grid_label(lam_max)
                + "] is drawn at the edge with an arrow and its value.")
        if split == "val":
            note += " The test split lacks part of the λ grid: curves from validation."
        if seeds > 1:
            note += f" Curves: mean over {seeds} seeds, band ± 1 s.d."
        caption(fig, note)
    return relabel(fig, title, xlabel, ylabel)


# --------------------------------------------------------------------------------------------
# calibration: λ on validation vs the metric's λ*
# --------------------------------------------------------------------------------------------


def lambda_calibration_table(pairs: pd.DataFrame, bits: int | None = None, scope: str | None = None) -> pd.DataFrame:
    """Off-diagonal pairs (seed means): the λ chosen on validation (``lam_val``) against each λ*
    the run computed (``lam_star_*`` columns: ``estimator``), with the Spearman r over pairs."""
    p, bits, scope = select_rows(pairs, bits, scope)
    p = p[~p.diagonal.astype(bool)]
    ests = [c[9:] for c in p.columns if c.startswith("lam_star_")]
    rows = []
    for e in ests:
        g = p.groupby(["donor", "receiver"], as_index=False)[["lam_val", f"lam_star_{e}"]].mean()
        ok = np.isfinite(g[f"lam_star_{e}"])
        r = spearmanr(g.lam_val[ok], g[f"lam_star_{e}"][ok]).statistic if ok.sum() > 2 else np.nan
        rows.append(g.rename(columns={f"lam_star_{e}": "lam_star"}).assign(estimator=e, spearman=r))
    cols = ["donor", "receiver", "lam_val", "lam_star", "estimator", "spearman"]
    out = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=cols)
    return out.assign(bits=bits, scope=scope)


def lambda_calibration(pairs: pd.DataFrame, bits: int | None = None, scope: str | None = None,
                       lam_range: tuple[float, float] | None = None, *, palette=None, title: str | None = None, xlabel: str | None = None, ylabel: str | None = None) -> Figure:
    """λ* from the metric (y) against the λ chosen on validation (x), one point per off-diagonal
    pair and estimator (``palette``: colours per estimator); y = x dashed. λ* outside ``lam_range``
    (default: the λ grid ± 0.25) is drawn at the edge as a hollow triangle pointing out, with its value."""
    tab = lambda_calibration_table(pairs, bits, scope)
    ests = list(dict.fromkeys(tab.estimator))
    colors = colors_for(ests, palette, {e: CB[(0, 3, 2, 4, 5)[i % 5]] for i, e in enumerate(ests)})
    grid = sorted(set(tab.lam_val.dropna()))
    lo, hi = lam_range or (min([0.0, *grid]) - 0.25, max([1.0, *grid]) + 0.25)
    fig = new_figure(SINGLE, 3.0)
    with style():
        ax = fig.add_subplot()
        ax.plot([lo, hi], [lo, hi], "--", color="0.5", lw=0.8, label="$\\lambda^* = \\lambda_{\\mathrm{val}}$")
        n_out = 0
        for i, e in enumerate(ests):
            d = tab[(tab.estimator == e) & np.isfinite(tab.lam_star)]
            c = colors[e]
            x = d.lam_val + 0.03 * (i - (len(ests) - 1) / 2)  # estimators side by side on the grid
            inside = (d.lam_star >= lo) & (d.lam_star <= hi)
            ax.scatter(x[inside], d.lam_star[inside], s=10, color=c, lw=0,
                       label=f"{LAM_STAR_LABELS.get(e, e)} (Spearman {d.spearman.iloc[0]:+.2f})" if len(d) else e)
            for xv, yv in zip(x[~inside], d.lam_star[~inside]):
                edge = lo if yv < lo else hi
                ax.plot([xv], [edge], "v" if yv < lo else "^", ms=4, mfc="none", color=c, mew=0.8,
                        gid="lam_star_outside", clip_on=False)
                ax.annotate(f"{yv:.2f}", (xv, edge), xytext=(3, 2 if yv > hi else -2), textcoords="offset points",
                            va="bottom" if yv > hi else "top", fontsize=7, color=c)
                n_out += 1
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_xlabel("$\\lambda_{\\mathrm{val}}$ (chosen on validation)")
        ax.set_ylabel("$\\lambda^*$ from the metric")
        ax.set_title(f"λ calibration ({tab.bits.iloc[0]} bits, off-diagonal pairs)")
        ax.legend(loc="upper left", fontsize=7)
        caption(fig, f"{n_out} of {len(tab)} λ* lie outside [{lo:g}, {hi:g}]: hollow triangles at the edge, "
                     "with their value." if n_out else f"Every λ* lies within [{lo:g}, {hi:g}].")
    return relabel(fig, title, xlabel, ylabel)


# --------------------------------------------------------------------------------------------
# sensitivity: Δ(λ) pooled over pairs, and the tuned λ
# --------------------------------------------------------------------------------------------


def _units(arg, name: str) -> dict:
    return dict(arg) if isinstance(arg, Mapping) else {name: arg}


def lambda_sensitivity_table(accs, pairs=None, scope: str | None = None) -> pd.DataFrame:
    """Per setting (a label → accuracy table at one bit width; a bare table is one setting):

    * ``panel = "delta"``: per λ, the median and quartiles over off-diagonal pairs of Δ post-PTQ
      Top-1 (points, seed mean per pair) on the split with the full grid (λ = 0: Δ = 0);
    * ``panel = "tuned"``: per grid λ, how many (seed, off-diagonal pair) chose it on validation
      (``pairs``' ``lam_val``; a label → pairs table, matching ``accs``).
    """
    accs = _units(accs, "run")
    pairs = _units(pairs, "run") if pairs is not None else {}
    rows = []
    for label, acc in accs.items():
        bits = choose_bits(acc, None)
        tab = lambda_table(acc, None, bits, scope)
        base = tab[tab.lam == 0].set_index(["receiver", "donor"]).top1
        off = tab[tab.receiver != tab.donor].copy()
        off["delta"] = off.top1 - [base[(r, d)] for r, d in zip(off.receiver, off.donor)]
        for lam, g in off.groupby("lam"):
            q = np.quantile(g.delta, [0.25, 0.5, 0.75])
            rows.append(dict(setting=label, panel="delta", lam=lam, median=q[1], q25=q[0], q75=q[2],
                             n_pairs=len(g), count=np.nan, split=tab.split.iloc[0], bits=bits))
        if label in pairs:
            p = pairs[label]
            p = p[(p.bits == bits) & (p.scope == tab.scope.iloc[0]) & ~p.diagonal.astype(bool)]
            counts = p.lam_val.value_counts()
            for lam in sorted(set(tab.lam[tab.lam > 0]) | set(counts.index)):
                rows.append(dict(setting=label, panel="tuned", lam=lam, median=np.nan, q25=np.nan, q75=np.nan,
                                 n_pairs=len(p), count=int(counts.get(lam, 0)), split="val", bits=bits))
    return pd.DataFrame(rows)


def lambda_sensitivity(accs, pairs=None, scope: str | None = None, *, palette=None, title: str | None = None, xlabel: str | None = None, ylabel: str | None = None) -> Figure:
    """(a) median Δ post-PTQ Top-1 over off-diagonal pairs per λ with its interquartile band, one
    line per setting (``palette``: colours per setting); (b) histogram of the λ chosen on
    validation (with ``pairs``)."""
    tab = lambda_sensitivity_table(accs, pairs, scope)
    labels = list(dict.fromkeys(tab.setting))
    colors = colors_for(labels, palette)
    tuned = tab[tab.panel == "tuned"]
    fig = new_figure(DOUBLE if len(tuned) else SINGLE, 2.4)
    with style():
        axes = fig.subplots(1, 2 if len(tuned) else 1, squeeze=False).ravel()
        for i, label in enumerate(labels):
            d = tab[(tab.panel == "delta") & (tab.setting == label)]
            d = pd.concat([pd.DataFrame([dict(lam=0.0, median=0.0, q25=0.0, q75=0.0)]), d])
            axes[0].plot(d.lam, d["median"], "-o", ms=2.5, color=colors[label], label=label)
            axes[0].fill_between(d.lam, d.q25, d.q75, color=colors[label], alpha=0.18, lw=0)
        axes[0].axhline(0, color="0.3", lw=0.6)
        axes[0].set_xlabel(r"$\lambda$ in $\theta_R + \lambda\rho_D$")
        split = tab[tab.panel == "delta"].split.iloc[0]
        axes[0].set_ylabel(f"Δ PTQ Top-1 vs FT+PTQ ({split}, points)")
        axes[0].set_title("(a) median over pairs, band: IQR")
        if len(tuned):
            grid = sorted(set(tuned.lam))  # one slot per grid value: 0.15 and 0.25 would collide on a λ axis
            w = 0.8 / len(labels)
            for i, label in enumerate(labels):
                d = tuned[tuned.setting == label]
                x = np.array([grid.index(v) for v in d.lam], dtype=float)
                axes[1].bar(x + (i - (len(labels) - 1) / 2) * w, d["count"], w, color=colors[label], label=label)
            axes[1].set_xlabel(r"$\lambda_{\mathrm{val}}$ (chosen on validation)")
            axes[1].set_ylabel("pairs × seeds")
            axes[1].set_title("(b) the tuned λ")
            axes[1].set_xticks(range(len(grid)), [grid_label(v) for v in grid])
        if len(labels) > 1:
            fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=min(4, len(labels)))
        fig.suptitle("Sensitivity to λ, off-diagonal pairs" + (f" ({labels[0]})" if len(labels) == 1 else ""))
        n = int(tab[tab.panel == "delta"].n_pairs.max())
        caption(fig, f"λ = 0 is FT+PTQ (Δ = 0). (a) {n} off-diagonal (donor, receiver) pairs per λ, seed means.")
    return relabel(fig, title, xlabel, ylabel)

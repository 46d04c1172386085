"""Figures of alignment from the run's tables: donor × receiver heatmaps of cos(ρ_D, ρ_R) per
metric, and scatter plots of each cosine against the transfer it should predict (Spearman r
and its QAP permutation p-value per panel)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from qgeom.experiment.stats import qap_correlation
from qgeom.figures.selection import pair_frame, select_rows
from qgeom.figures.cells import CellGroup
from qgeom.figures.theme import DOUBLE, caption, colors_for, new_figure, pair_heatmap, relabel, style, task_colors

ANNOTATE_MAX = 7  # tasks per heatmap panel whose cells still hold a number at print size
ALIGNMENT_LABELS = {"euclidean": "Euclidean cosine", "ggn_fp": r"GGN cosine (fp, at $\theta_R$)",
                    "ggn_ste": r"GGN cosine (STE, at $\theta_{R,\mathrm{QAT}}$)", "hessian_fp": "Hessian cosine (fp)",
                    "hessian_ste": "Hessian cosine (STE)", "fisher_fp": "Fisher cosine (fp)",
                    "fisher_ste": "Fisher cosine (STE)"}
TARGET_LABELS = {"gain_unit": "Δ post-PTQ Top-1 at λ = 1 (points)",
                 "gain_tuned": "Δ post-PTQ Top-1 at λ_val (points)",
                 "recovery_unit": "loss recovery R(D, R) at λ = 1",
                 "recovery_ggn_ste": r"loss recovery R(D, R) at $\lambda^*$"}
TARGET_SHORT = {"gain_unit": "Δ Top-1, λ = 1 (points)", "gain_tuned": "Δ Top-1, λ_val (points)",
                "recovery_unit": "recovery R(D, R), λ = 1",
                "recovery_ggn_ste": r"recovery R(D, R), $\lambda^*$"}


def _alignments(df: pd.DataFrame) -> list[str]:
    have = [c[4:] for c in df.columns if c.startswith("cos_")]
    order = list(ALIGNMENT_LABELS)
    return sorted(have, key=lambda a: (order.index(a) if a in order else len(order), a))


def alignment_table(pairs: pd.DataFrame, bits: int | None = None, scope: str | None = None) -> pd.DataFrame:
    """Long table donor, receiver, alignment, cosine (seed mean) for every ``cos_*`` column."""
    p, bits, scope = select_rows(pairs, bits, scope)
    cols = [f"cos_{a}" for a in _alignments(p)]
    g = p.groupby(["donor", "receiver"], as_index=False)[cols].mean()
    out = g.melt(id_vars=["donor", "receiver"], var_name="alignment", value_name="cosine")
    out["alignment"] = out.alignment.str[4:]
    out["diagonal"] = out.donor == out.receiver
    return out.assign(bits=bits, scope=scope)


def alignment_heatmaps(pairs: pd.DataFrame, bits: int | None = None, scope: str | None = None, *, cmap="PuOr",
                       title: str | None = None, xlabel: str | None = None, ylabel: str | None = None) -> Figure:
    """One donor × receiver heatmap per alignment (Euclidean, GGN-fp, GGN-ste, …), range [−1, 1],
    in the diverging colour map ``cmap``; the panels print their numbers alike."""
    tab = alignment_table(pairs, bits, scope)
    names = sorted(set(tab.donor) | set(tab.receiver))
    aligns = _alignments(pairs)
    n = len(names)
    ncol = min(3, len(aligns))
    nrow = -(-len(aligns) // ncol)
    fig = new_figure(DOUBLE, 2.45 * nrow + 0.4)
    with style():
        axes = np.atleast_1d(fig.subplots(nrow, ncol, squeeze=False)).ravel()
        cells = CellGroup()
        for i, (ax, a) in enumerate(zip(axes, aligns)):
            pair_heatmap(ax, pair_frame(tab[tab.alignment == a], "cosine", names), vmin=-1, vmax=1, cmap=cmap,
                         fmt="{:.2f}", annotate=n <= ANNOTATE_MAX, group=cells)
            ax.set_title(ALIGNMENT_LABELS.get(a, a))
            if i % ncol:
                ax.set_ylabel("")
        for ax in axes[len(aligns):]:
            ax.set_visible(False)
        sm = ScalarMappable(Normalize(-1, 1), cmap)
        fig.colorbar(sm, ax=list(axes[:len(aligns)]), shrink=0.8, label=r"cos($\rho_D$, $\rho_R$)")
        fig.suptitle(f"Alignment of quantization vectors ({tab.bits.iloc[0]} bits, {tab.scope.iloc[0]} scope)")
    return relabel(fig, title, xlabel, ylabel)


def alignment_scatter_table(pairs: pd.DataFrame, corr: pd.DataFrame | None = None, bits: int | None = None,
                            scope: str | None = None, targets: Sequence[str] = ("gain_unit", "recovery_unit"),
                            permutations: int = 5000) -> pd.DataFrame:
    """Off-diagonal (donor, receiver) points: each alignment's cosine against each target, with the
    panel's Spearman r and QAP p-value (from ``corr`` = correlations.csv, else computed with
    :func:`qgeom.experiment.stats.qap_correlation` on the seed-mean matrices)."""
    p, bits, scope = select_rows(pairs, bits, scope)
    names = sorted(set(p.donor) | set(p.receiver))
    targets = [t for t in targets if t in p.columns]
    rows = []
    for a in _alignments(p):
        x = pair_frame(p, f"cos_{a}", names)
        for t in targets:
            y = pair_frame(p, t, names)
            c = None if corr is None else corr[(corr.bits == bits) & (corr.scope == scope) & (corr.alignment == a)
                                               & (corr.target == t) & (corr.method == "spearman")]
            if c is not None and len(c):
                r, pv, nperm = float(c.r.iloc[0]), float(c.p_value.iloc[0]), int(c.n_permutations.iloc[0])
            else:
                res = qap_correlation(x.to_numpy(), y.to_numpy(), "spearman", permutations)
                r, pv, nperm = res.r, res.p_value, res.n_permutations
            for d in names:
                for rc in names:
                    if d != rc:
                        rows.append(dict(bits=bits, scope=scope, alignment=a, target=t, donor=d, receiver=rc,
                                         cosine=x.loc[d, rc], value=y.loc[d, rc], spearman=r, qap_p=pv,
                                         n_permutations=nperm))
    return pd.DataFrame(rows)


def alignment_scatter(pairs: pd.DataFrame, corr: pd.DataFrame | None = None, bits: int | None = None,
                      scope: str | None = None, targets: Sequence[str] = ("gain_unit", "recovery_unit"), *,
                      palette=None, title: str | None = None, xlabel: str | None = None,
                      ylabel: str | None = None) -> Figure:
    """Rows: alignments; columns: targets (λ = 1 gain, loss recovery). Points are off-diagonal
    pairs coloured by receiver (``palette``: colours per task); each panel states Spearman ρ and
    its QAP permutation p-value."""
    tab = alignment_scatter_table(pairs, corr, bits, scope, targets)
    aligns, targets = list(dict.fromkeys(tab.alignment)), list(dict.fromkeys(tab.target))
    names = sorted(set(tab.receiver) | set(tab.donor))
    colors = colors_for(names, palette, task_colors(names))
    fig = new_figure(DOUBLE, 1.75 * len(aligns) + 0.7)
    with style():
        axes = fig.subplots(len(aligns), len(targets), squeeze=False)
        for i, a in enumerate(aligns):
            for j, t in enumerate(targets):
                ax, d = axes[i, j], tab[(tab.alignment == a) & (tab.target == t)]
                for rc, g in d.groupby("receiver"):
                    ax.scatter(g.cosine, g.value, s=9, color=colors[rc], label=rc, edgecolor="white", lw=0.3)
                ax.axhline(0, color="0.6", lw=0.6)
                r, pv = d.spearman.iloc[0], d.qap_p.iloc[0]
                # the statistics head the panel, outside the data: no point is hidden behind them
                ax.set_title(f"Spearman ρ = {r:+.2f}, QAP p = {pv:.3f}", fontsize=7, gid="stats")
                ax.set_xlabel(ALIGNMENT_LABELS.get(a, a))
                ax.set_ylabel(TARGET_SHORT.get(t, t))
        h, lab = axes[0, 0].get_legend_handles_labels()
        fig.legend(h, lab, title="receiver", loc="outside right center")
        fig.suptitle(f"Does alignment predict the transfer? off-diagonal pairs, {tab.bits.iloc[0]} bits, "
                     f"{tab.scope.iloc[0]} scope")
        caption(fig, "Columns: " + "; ".join(f"{TARGET_LABELS.get(t, t)}" for t in targets)
                + ". QAP p: task-label permutation test of the Spearman ρ.")
    return relabel(fig, title, xlabel, ylabel)

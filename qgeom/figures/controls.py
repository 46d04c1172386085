"""Where the gain comes from (issue 15): the donors' gain beside every control's, per receiver, and
the grid-only / values-only split of the patch.

Drawn from ``pairs.csv`` (:func:`qgeom.experiment.analysis.pair_table`): for each receiver, the mean over
off-diagonal donors and seeds of the post-PTQ gain at λ = 1 of the donor's ρ_D and of each
control (a direction sharing a statistic of ρ_D but not its alignment), with ± 1 s.d. over the
donor × seed cells; and, when the run has the decomposition, the gain of the two hybrids.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from qgeom.figures.selection import select_rows
from qgeom.figures.theme import CB, DOUBLE, caption, colors_for, new_figure, relabel, style

SERIES = [("unit", "donor $\\rho_D$", CB[2]), ("random", "random, per-tensor norms", CB[7]),
          ("random_rows", "random, per-row norms", CB[5]), ("row_permuted", "$\\rho_D$ permuted in rows", CB[4]),
          ("negated", "$-\\rho_D$", CB[3]), ("other_basin", "$\\rho_D$ from another $\\theta_0$", CB[1]),
          ("grid_only", "grid only", CB[0]), ("values_only", "values only", CB[8])]


def controls_table(pairs: pd.DataFrame, bits: int | None = None, scope: str | None = None) -> pd.DataFrame:
    """Per receiver and series (donor patch, controls, hybrids): mean and s.d. of the post-PTQ gain
    at λ = 1 in points over the off-diagonal donor × seed cells, and the cell count."""
    p, bits, scope = select_rows(pairs, bits, scope)
    off = p[~p.diagonal]
    rows = []
    for key, label, _ in SERIES:
        col = f"gain_{key}"
        if col not in off or off[col].isna().all():
            continue
        for r, g in off.groupby("receiver"):
            v = g[col].dropna()
            rows.append(dict(receiver=r, series=key, label=label, mean=float(v.mean()),
                             sd=float(v.std(ddof=1)) if len(v) > 1 else float("nan"), n=int(len(v))))
    return pd.DataFrame(rows).assign(bits=bits, scope=scope)


def controls(pairs: pd.DataFrame, bits: int | None = None, scope: str | None = None, *, palette=None,
             title: str | None = None, xlabel: str | None = None, ylabel: str | None = None) -> Figure:
    """(a) per receiver, the mean post-PTQ gain at λ = 1 of the donors' ρ_D and of every control;
    (b) the patch's gain beside its grid-only and values-only hybrids (when the run has them).
    ``palette``: colours per series (keys of :data:`SERIES`: ``unit``, ``random``, …)."""
    tab = controls_table(pairs, bits, scope)
    has_split = tab.series.isin(["grid_only", "values_only"]).any()
    fig = new_figure(DOUBLE, 4.6 if has_split else 2.6)
    groups = [[k for k, _, _ in SERIES if k not in ("grid_only", "values_only")]]
    if has_split:
        groups.append(["unit", "grid_only", "values_only"])
    colors = colors_for([k for k, _, _ in SERIES], palette, {k: c for k, _, c in SERIES})
    labels = {k: lab for k, lab, _ in SERIES}
    with style():
        axes = np.atleast_1d(fig.subplots(len(groups), 1, squeeze=False)).ravel()
        recs = sorted(tab.receiver.unique())
        for ax, keys, heading in zip(axes, groups, ("(a) donors and controls", "(b) what the grid and the values do")):
            keys = [k for k in keys if k in set(tab.series)]
            width = 0.8 / max(len(keys), 1)
            for i, k in enumerate(keys):
                t = tab[tab.series == k].set_index("receiver").reindex(recs)
                x = np.arange(len(recs)) + (i - (len(keys) - 1) / 2) * width
                ax.bar(x, t["mean"], width, yerr=t["sd"], color=colors[k], label=labels[k],
                       error_kw=dict(lw=0.6, capsize=1.5))
            ax.axhline(0, color="0.3", lw=0.8)
            ax.set_xticks(np.arange(len(recs)), recs)
            ax.set_ylabel("Δ post-PTQ Top-1 (points)")
            ax.set_title(heading)
        handles = {}
        for ax in axes:
            for h, lab in zip(*ax.get_legend_handles_labels()):
                handles.setdefault(lab, h)
        fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncols=4)
        caption(fig, f"{tab.bits.iloc[0]} bits, {tab.scope.iloc[0]} scope, test split, λ = 1; bars: mean over the "
                     "off-diagonal donor × seed cells of each receiver, whiskers ± 1 s.d. Grid only: $\\theta_R$'s "
                     "values on the per-row grid of $\\theta_R + \\rho_D$; values only: $\\theta_R + \\rho_D$ on "
                     "$\\theta_R$'s grid.")
    return relabel(fig, title, xlabel, ylabel)

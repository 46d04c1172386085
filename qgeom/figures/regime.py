"""Where zero-shot transfer appears: the phase diagram of a study (:mod:`qgeom.experiment.study`).

Left: every cell (rows, in the study's order) × (bits, scope) (columns), coloured by the donor
patch's λ = 1 gain over the best control, with its 95 % interval over tasks and seeds; a cell whose
interval lies above 0 — the donor's vector beats every control — is framed. Right: the cells in the
plane of two sizes that set the regime, how far fine-tuning moved from θ_0 (‖θ_R − θ_0‖/‖θ_0‖) and
how large the receiver's own quantization vector is (‖ρ_R‖/‖θ_R‖), coloured by the same gain (2 bits,
backbone: the paper's setting).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from qgeom.figures.cells import CellGroup, add_cell_text
from qgeom.figures.theme import DOUBLE, MIN_PT, caption, new_figure, relabel, robust_range, style


def _grid(table: pd.DataFrame, col: str) -> pd.DataFrame:
    cells = list(dict.fromkeys(table.cell))
    out = table.pivot_table(index="cell", columns=["bits", "scope"], values=col, aggfunc="first")
    return out.reindex(index=cells)


def phase_diagram(table: pd.DataFrame, cmap="PuOr", bits: int = 2, scope: str = "backbone", *,
                  title: str | None = None, xlabel: str | None = None, ylabel: str | None = None) -> Figure:
    """The study's phase diagram from :func:`qgeom.experiment.study.study_table` rows, in the
    diverging colour map ``cmap`` (a name or a colour map)."""
    mean, low, high = (_grid(table, c) for c in ("gain_over_controls", "gain_over_controls_low",
                                                 "gain_over_controls_high"))
    lim = robust_range(table[["gain_over_controls_low", "gain_over_controls_high"]].to_numpy(), 1.0)
    fig = new_figure(DOUBLE, 1.2 + 0.42 * len(mean))
    with style():
        ax, ax2 = fig.subplots(1, 2, width_ratios=[1.3, 1])
        _heatmap(ax, mean, low, high, lim, cmap)
        _plane(ax2, table[(table.bits == bits) & (table.scope == scope)], lim, cmap, f"{bits} bits, {scope}")
    caption(fig, "Gain over the best control: the donor patch's post-PTQ Top-1 gain at λ = 1 minus the best "
                 "control's (norm-matched random, per-row random, row-permuted $\\rho_D$), mean over off-diagonal pairs "
                 "and seeds, with its 95% interval over tasks and seeds; framed: interval above 0. Right: each cell's "
                 "fine-tuning distance and receiver vector size (means over receivers and seeds).")
    return relabel(fig, title, xlabel, ylabel)


def _heatmap(ax, mean: pd.DataFrame, low: pd.DataFrame, high: pd.DataFrame, lim: float, cmap: str) -> None:
    norm = Normalize(-lim, lim)
    ax.imshow(mean.to_numpy(float), cmap=cmap, norm=norm, aspect="auto")
    group = CellGroup(sizes=(MIN_PT,))
    for i in range(len(mean.index)):
        for j in range(len(mean.columns)):
            v, lo, hi = mean.iat[i, j], low.iat[i, j], high.iat[i, j]
            if not np.isfinite(v):
                continue
            add_cell_text(ax, j, i, [f"{v:+.1f}\n[{lo:+.1f}, {hi:+.1f}]", f"{v:+.1f}\n[{lo:+.0f}, {hi:+.0f}]",
                                     f"{v:+.1f}"], group, gid="cell")
            if lo > 0:
                ax.add_patch(Rectangle((j - 0.48, i - 0.48), 0.96, 0.96, fill=False, lw=1.2, ec="black"))
    ax.set_xticks(range(len(mean.columns)), [f"{b} b, {s}" for b, s in mean.columns], rotation=20)
    ax.set_yticks(range(len(mean.index)), list(mean.index))
    ax.grid(False)
    ax.set_title("gain over the best control (points)")


def _plane(ax, rows: pd.DataFrame, lim: float, cmap: str, title: str) -> None:
    sc = ax.scatter(rows.finetune_distance, rows.rho_size, c=rows.gain_over_controls, cmap=cmap, vmin=-lim,
                    vmax=lim, s=28, edgecolors=["black" if t else "none" for t in rows.transfers], linewidths=1.0)
    for r in rows.itertuples():
        ax.annotate(r.cell, (r.finetune_distance, r.rho_size), xytext=(3, 3), textcoords="offset points",
                    fontsize=MIN_PT)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(r"$\|\theta_R - \theta_0\| / \|\theta_0\|$")
    ax.set_ylabel(r"$\|\rho_R\| / \|\theta_R\|$")
    ax.set_title(title)
    ax.figure.colorbar(sc, ax=ax, shrink=0.8, label="gain over controls")

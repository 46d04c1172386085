"""The one look of qgeom's figures: seaborn style, the colour-blind palette and its colours per
setting and per task, a bare figure, and the annotated donor × receiver heatmap.

Colours: seaborn's colour-blind palette for categories (blue = fine-tuned receiver, orange =
QAT, green = patched), ColorBrewer RdBu / PuOr for signed matrices, viridis for accuracies.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager

import matplotlib
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.colors import Normalize, to_rgb
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

CB = sns.color_palette("colorblind")
SETTING_COLORS = {"FT": CB[0], "FT+PTQ": CB[0], "QAT": CB[1], "QAT+PTQ": CB[1], "patch+PTQ": CB[2],
                  "multi+PTQ": CB[4], "random": CB[7]}


@contextmanager
def style():
    """The one look of qgeom's figures (seaborn whitegrid, paper context, colour-blind palette)."""
    with sns.axes_style("whitegrid"), sns.plotting_context("paper", font_scale=1.15), matplotlib.rc_context(
            {"axes.prop_cycle": matplotlib.cycler(color=CB), "axes.titlesize": 11, "figure.dpi": 110,
             "pdf.fonttype": 42, "legend.frameon": False, "image.cmap": "viridis"}):
        yield


def _figure(**kw) -> Figure:
    """A bare :class:`~matplotlib.figure.Figure` (no pyplot: no global registry, any backend)."""
    with style():
        return Figure(layout="constrained", **kw)


def task_colors(names: Sequence[str]) -> dict[str, tuple]:
    """One colour-blind-safe colour per task (sorted names; cycles past 10 tasks)."""
    pal = sns.color_palette("colorblind", 10)
    return {n: pal[i % 10] for i, n in enumerate(sorted(names))}


def _lighter(color, amount: float = 0.55):
    return tuple(1 - amount * (1 - c) for c in to_rgb(color))


def robust_range(values, q: float = 0.95) -> float:
    """Symmetric colour limit: the q-quantile of |values| (finite ones), never 0."""
    v = np.abs(np.asarray(values, float))
    v = v[np.isfinite(v)]
    lim = float(np.quantile(v, q)) if len(v) else 1.0
    return lim if lim > 0 else (float(v.max()) if len(v) and v.max() > 0 else 1.0)


def _heatmap(ax, mat: pd.DataFrame, *, vmin: float, vmax: float, cmap: str, fmt: str = "{:+.1f}",
             text: pd.DataFrame | None = None) -> None:
    """Annotated donor (rows) × receiver (columns) heatmap; diagonal cells framed."""
    sns.heatmap(mat, ax=ax, vmin=vmin, vmax=vmax, cmap=cmap, center=0, cbar=False, square=True,
                linewidths=0.5, linecolor="white", annot=False)
    norm = Normalize(vmin, vmax)
    cm = matplotlib.colormaps[cmap]
    for i, d in enumerate(mat.index):
        for j, r in enumerate(mat.columns):
            v = mat.loc[d, r]
            if not np.isfinite(v):
                continue
            lum = np.dot(to_rgb(cm(norm(np.clip(v, vmin, vmax)))), [0.299, 0.587, 0.114])
            label = fmt.format(v) + ("" if text is None else f"\n{text.loc[d, r]}")
            ax.text(j + 0.5, i + 0.5, label, ha="center", va="center", fontsize=7,
                    color="white" if lum < 0.5 else "black")
        if d in list(mat.columns):
            ax.add_patch(Rectangle((list(mat.columns).index(d) + 0.06, i + 0.06), 0.88, 0.88, fill=False, lw=1.5,
                                   ec="black", ls=(0, (3, 1.5))))
    ax.set_xlabel("receiver R")
    ax.set_ylabel("donor D")
    ax.tick_params(axis="x", labelrotation=45)
    ax.tick_params(axis="y", labelrotation=0)

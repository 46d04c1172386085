"""The one look of qgeom's figures: seaborn style at print size, the colour-blind palette and its
colours per setting and per task, a bare figure, a caption, and the annotated donor × receiver
heatmap.

Print size: every figure is drawn at a paper's column width, :data:`SINGLE` (3.25 in) or
:data:`DOUBLE` (6.75 in), and saved at that size, so its text prints at the size it was set:
8 pt for labels and titles, 7 pt for ticks, legends, captions and cell numbers (:data:`MIN_PT`,
the smallest text; mathtext sub- and superscripts are 0.7 of their text, as in print). Symbols
are mathtext (``$\\theta_R$``, ``$\\rho_D$``), never code with underscores.

Colours: seaborn's colour-blind palette for categories (blue = fine-tuned receiver, orange =
QAT, green = patched), ColorBrewer RdBu / PuOr for signed matrices, viridis for accuracies.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Mapping, Sequence
from contextlib import contextmanager

import matplotlib
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.colors import Normalize, to_rgb
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from qgeom.figures.cells import CellGroup, add_cell_text, ladder

SINGLE, DOUBLE = 3.25, 6.75  # a paper's column and text width, inches
MIN_PT, BASE_PT = 7.0, 8.0  # the smallest text and the labels' size, points
CB = sns.color_palette("colorblind")
SETTING_COLORS = {"FT": CB[0], "FT+PTQ": CB[0], "QAT": CB[1], "QAT+PTQ": CB[1], "patch+PTQ": CB[2],
                  "multi+PTQ": CB[4], "random": CB[7], "FT+GPTQ": CB[3], "QAT+GPTQ": CB[3], "FT+AWQ": CB[5],
                  "QAT+AWQ": CB[5]}


def style_rc() -> dict:
    """The rcParams of qgeom's look: seaborn's whitegrid style and paper context, the colour-blind
    palette, print sizes (8 pt labels and titles, 7 pt ticks and legends), vector-friendly fonts."""
    sizes = {"font.size": BASE_PT, "axes.labelsize": BASE_PT, "axes.titlesize": BASE_PT, "figure.titlesize": 9,
             "xtick.labelsize": MIN_PT, "ytick.labelsize": MIN_PT, "legend.fontsize": MIN_PT,
             "legend.title_fontsize": MIN_PT, "lines.linewidth": 1.2, "lines.markersize": 3.5,
             "axes.linewidth": 0.6, "grid.linewidth": 0.5, "patch.linewidth": 0.5}
    return (dict(sns.axes_style("whitegrid")) | dict(sns.plotting_context("paper"))
            | {"axes.prop_cycle": matplotlib.cycler(color=CB), "figure.dpi": 150, "pdf.fonttype": 42,
               "legend.frameon": False, "image.cmap": "viridis", "mathtext.fontset": "dejavusans",
               "axes.titlepad": 3, "figure.constrained_layout.h_pad": 0.03,
               "figure.constrained_layout.w_pad": 0.03} | sizes)


@contextmanager
def style():
    """The one look of qgeom's figures (:func:`style_rc`), inside a ``with`` block only.

    Every figure function draws inside it, and so do its ``title=``/``xlabel=``/``ylabel=``
    keywords. Text added to a returned figure *after* the block (``ax.set_title(...)``) takes
    matplotlib's rcParams at that moment — 12 pt by default; either add it inside ``with
    style():``, or call :func:`use_style` once (a notebook's first cell) to make the look global."""
    with matplotlib.rc_context(style_rc()):
        yield


def use_style() -> dict:
    """Make qgeom's look global: ``matplotlib.rcParams.update(style_rc())``, so that every later
    figure and every edit of a returned figure (titles, labels, annotations) prints at qgeom's
    sizes outside ``with style():`` too. Returns the rcParams it replaced (``rcParams.update(old)``
    restores them)."""
    new = style_rc()
    old = {k: matplotlib.rcParams[k] for k in new}
    matplotlib.rcParams.update(new)
    return old


def colors_for(keys: Sequence, palette=None, default: Mapping | None = None) -> dict:
    """One colour per key (setting, task, series): ``default`` (key → colour; else the colour-blind
    palette in key order) unless ``palette`` says otherwise — a mapping (its keys override the
    default's), or a seaborn/matplotlib palette name or a list of colours (given out in key order,
    cycled)."""
    keys = list(keys)
    base = dict(default) if default is not None else {}
    spare = sns.color_palette("colorblind", 10)
    base |= {k: spare[i % 10] for i, k in enumerate(keys) if k not in base}
    if palette is None:
        return {k: base[k] for k in keys}
    if isinstance(palette, Mapping):
        return {k: palette.get(k, base[k]) for k in keys}
    cols = sns.color_palette(palette, len(keys)) if isinstance(palette, str) else list(palette)
    if not cols:
        raise ValueError("palette is empty: pass a palette name (e.g. 'tab10'), a list of colours or a mapping")
    return {k: cols[i % len(cols)] for i, k in enumerate(keys)}


def relabel(fig: Figure, title: str | None = None, xlabel: str | None = None, ylabel: str | None = None) -> Figure:
    """Replace the texts a figure function chose (its ``title=``, ``xlabel=``, ``ylabel=``
    keywords), in qgeom's look: ``title`` replaces the figure's title (its suptitle; a one-panel
    figure without one: the panel's title); ``xlabel``/``ylabel`` replace the axis label of every
    panel that has one (every panel when none has). Colour bars keep theirs. Returns ``fig``."""
    axes = [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]
    with style():
        if title is not None:
            if fig._suptitle is None and len(axes) == 1:
                axes[0].set_title(title)
            else:
                fig.suptitle(title)
        for text, get, set_ in ((xlabel, "get_xlabel", "set_xlabel"), (ylabel, "get_ylabel", "set_ylabel")):
            if text is not None:
                labelled = [ax for ax in axes if getattr(ax, get)()] or axes
                for ax in labelled:
                    getattr(ax, set_)(text)
    return fig


def new_figure(width: float = DOUBLE, height: float = 2.6, **kw) -> Figure:
    """A bare :class:`~matplotlib.figure.Figure` (no pyplot: no global registry, any backend),
    ``width`` inches wide: :data:`SINGLE` or :data:`DOUBLE`."""
    if width not in (SINGLE, DOUBLE):
        raise ValueError(f"figures are {SINGLE} or {DOUBLE} in wide, not {width}")
    with style():
        return Figure(figsize=(width, height), layout="constrained", **kw)


def caption(fig: Figure, text: str) -> None:
    """A caption under the figure (``MIN_PT``, wrapped to its width): the reference points and
    notes a reader needs (what λ = 0 is, where an expansion is taken, what was left out)."""
    parts = re.split(r"(\$[^$]*\$)", text)  # mathtext stays whole: its spaces do not break lines
    protected = "".join(p.replace(" ", "\0") if p.startswith("$") else p for p in parts)
    chars = int(fig.get_figwidth() * 72 / (0.52 * MIN_PT))  # a conservative count of 7 pt characters per line
    wrapped = textwrap.fill(protected, chars).replace("\0", " ")
    with style():
        fig.text(0.0, 0.0, wrapped, ha="left", va="top", fontsize=MIN_PT, gid="caption", transform=fig.transFigure)


def grid_label(v: float) -> str:
    """A λ as the grid wrote it (1.25, not 1.2); a mean over seeds keeps its decimals."""
    return f"{v:.4g}"


def task_colors(names: Sequence[str]) -> dict[str, tuple]:
    """One colour-blind-safe colour per task (sorted names; cycles past 10 tasks)."""
    pal = sns.color_palette("colorblind", 10)
    return {n: pal[i % 10] for i, n in enumerate(sorted(names))}


def lighter(color, amount: float = 0.55):
    """``color`` mixed with white: 1 − amount·(1 − c) per RGB channel (the fill of full-precision bars)."""
    return tuple(1 - amount * (1 - c) for c in to_rgb(color))


def robust_range(values, q: float = 0.95) -> float:
    """Symmetric colour limit: the q-quantile of |values| (finite ones), never 0."""
    v = np.abs(np.asarray(values, float))
    v = v[np.isfinite(v)]
    lim = float(np.quantile(v, q)) if len(v) else 1.0
    return lim if lim > 0 else (float(v.max()) if len(v) and v.max() > 0 else 1.0)


def pair_heatmap(ax, mat: pd.DataFrame, *, vmin: float, vmax: float, cmap="RdBu", fmt: str = "{:+.1f}",
                 text: pd.DataFrame | None = None, annotate: bool = True, group: CellGroup | None = None) -> None:
    """Annotated donor (rows) × receiver (columns) heatmap; diagonal cells framed. ``cmap``: any
    matplotlib colour map (name or object). Numbers only when ``annotate``, and fitted to the
    cells when drawn (:mod:`~qgeom.figures.cells`: leading zeros, then a decimal, dropped before two
    numbers could touch; none when even those do not fit at 7 pt); panels that pass one ``group``
    print their numbers alike."""
    cm = matplotlib.colormaps[cmap] if isinstance(cmap, str) else cmap
    sns.heatmap(mat, ax=ax, vmin=vmin, vmax=vmax, cmap=cmap, center=0, cbar=False, square=True,
                linewidths=0.5, linecolor="white", annot=False)
    norm = Normalize(vmin, vmax)
    group = group if group is not None else CellGroup()
    for i, d in enumerate(mat.index):
        for j, r in enumerate(mat.columns):
            v = mat.loc[d, r]
            if not np.isfinite(v) or not annotate:
                continue
            lum = np.dot(to_rgb(cm(norm(np.clip(v, vmin, vmax)))), [0.299, 0.587, 0.114])
            add_cell_text(ax, j + 0.5, i + 0.5, ladder(v, fmt, None if text is None else str(text.loc[d, r])), group,
                          color="white" if lum < 0.5 else "black", gid="cell")
        if d in list(mat.columns):
            ax.add_patch(Rectangle((list(mat.columns).index(d) + 0.06, i + 0.06), 0.88, 0.88, fill=False, lw=1.0,
                                   ec="black", ls=(0, (3, 1.5))))
    ax.set_xlabel("receiver $R$")
    ax.set_ylabel("donor $D$")
    ax.tick_params(axis="x", labelrotation=45)
    ax.tick_params(axis="y", labelrotation=0)

"""Figures from a run's tables: one function per figure, one look, vector PDF + PNG + the CSV.

Every figure comes in two parts: a *table* function (a run's tables → the tidy table that is
drawn) and a *figure* function (→ a ``matplotlib.figure.Figure``). Figures built from the
experiment's own tables (``accuracy``, ``pairs``, ``receivers``, ``correlations``,
``geometry``; :func:`load_run`) take those tables and compute their table internally;
:func:`save_figure` writes ``NAME.pdf``, ``NAME.png`` and ``NAME.csv`` (the table it was drawn
from). Four figures need new computation on a run's checkpoints; their table functions take the
run directory and are kept cheap (small probe sets, small grids):

=========================  ==============================================================
table (from a run dir)     what it computes
=========================  ==============================================================
quadratic_model_table      Proposition 1: L(Q_b(θ_R + λρ_D)) measured vs its quadratic model
spectrum_table             SLQ density of the receiver's Hessian; ρ energy on top eigvecs
landscape_table            post-PTQ Top-1 on the plane θ_R + aρ_D + bρ_R
invariance_table           Euclidean vs metric cosine and PTQ Top-1 under random symmetries
=========================  ==============================================================

Conventions: Top-1 in percent, gains in percentage points, losses in nats (mean cross-entropy);
tasks in sorted order everywhere; seeds averaged (bars show ± 1 s.d. when there are several);
one bit width and one scope per figure (default: the lowest bits, the ``backbone`` scope, the
paper's). Colours: seaborn's colour-blind palette for categories (blue = fine-tuned receiver,
orange = QAT, green = patched), ColorBrewer RdBu / PuOr for signed matrices, viridis for
accuracies.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize, to_rgb
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

CB = sns.color_palette("colorblind")
SETTING_COLORS = {"FT": CB[0], "FT+PTQ": CB[0], "QAT": CB[1], "QAT+PTQ": CB[1], "patch+PTQ": CB[2],
                  "multi+PTQ": CB[4], "random": CB[7]}
ALIGNMENT_LABELS = {"euclidean": "Euclidean cosine", "ggn_fp": "GGN cosine (fp, at θ_R)",
                    "ggn_ste": "GGN cosine (STE, at θ_R,QAT)", "hessian_fp": "Hessian cosine (fp)",
                    "hessian_ste": "Hessian cosine (STE)", "fisher_fp": "Fisher cosine (fp)",
                    "fisher_ste": "Fisher cosine (STE)"}
TARGET_LABELS = {"gain_unit": "Δ post-PTQ Top-1 at λ = 1 (points)",
                 "gain_tuned": "Δ post-PTQ Top-1 at λ_val (points)",
                 "recovery_unit": "loss recovery R(D, R) at λ = 1",
                 "recovery_ggn_ste": "loss recovery R(D, R) at λ*"}
TARGET_SHORT = {"gain_unit": "Δ Top-1, λ = 1 (points)", "gain_tuned": "Δ Top-1, λ_val (points)",
                "recovery_unit": "recovery R(D, R), λ = 1", "recovery_ggn_ste": "recovery R(D, R), λ*"}
RUN_TABLES = ("accuracy", "pairs", "receivers", "correlations", "geometry", "dissimilarity")


# --------------------------------------------------------------------------------------------
# look, saving, loading, selection
# --------------------------------------------------------------------------------------------


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


def save_figure(fig: Figure, table: pd.DataFrame, out_dir: str | Path, name: str, dpi: int = 150) -> dict[str, Path]:
    """Write ``NAME.pdf`` (vector), ``NAME.png`` and ``NAME.csv`` (the table drawn) into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {ext: out / f"{name}.{ext}" for ext in ("pdf", "png", "csv")}
    fig.savefig(paths["pdf"], bbox_inches="tight", metadata={"CreationDate": None, "Creator": "qgeom"})
    fig.savefig(paths["png"], bbox_inches="tight", dpi=dpi, metadata={"Software": "qgeom"})
    table.to_csv(paths["csv"], index=False)
    return paths


def read_table(path: str | Path) -> pd.DataFrame:
    """A run table as :func:`qgeom.transfer.read_table` reads it (empty text cells stay ``""``,
    numbers float) without importing torch: text columns are the non-numeric ones."""
    df = pd.read_csv(path)
    for col in df.columns:
        if df[col].dtype == object or pd.api.types.is_string_dtype(df[col].dtype):
            df[col] = df[col].fillna("").astype(str)
    return df


def load_run(run_dir: str | Path) -> dict[str, pd.DataFrame]:
    """The run's tables that exist (``accuracy``, ``pairs``, ``receivers``, ``correlations``,
    ``geometry``, ``dissimilarity``), read with :func:`read_table`."""
    run_dir = Path(run_dir)
    if not (run_dir / "accuracy.csv").exists():
        raise FileNotFoundError(f"{run_dir} has no accuracy.csv: is it a finished run directory (qgeom run)?")
    return {n: read_table(run_dir / f"{n}.csv") for n in RUN_TABLES if (run_dir / f"{n}.csv").exists()}


def choose_bits(df: pd.DataFrame, bits: int | None) -> int:
    have = sorted(int(b) for b in df.bits.unique())
    if bits is None:
        return have[0]
    if int(bits) not in have:
        raise ValueError(f"no rows at {bits} bits; the table has {have}")
    return int(bits)


def choose_scope(df: pd.DataFrame, scope: str | None) -> str:
    have = sorted(s for s in df.scope.unique() if s)
    if scope is None:
        return "backbone" if "backbone" in have else have[0]
    if scope not in have:
        raise ValueError(f"no rows for scope {scope!r}; the table has {have}")
    return scope


def _matrix(df: pd.DataFrame, col: str, names: Sequence[str]) -> pd.DataFrame:
    """donor × receiver matrix of ``col`` (mean over seeds), rows and columns in ``names`` order."""
    return df.pivot_table(index="donor", columns="receiver", values=col, aggfunc="mean").reindex(
        index=list(names), columns=list(names))


def _lighter(color, amount: float = 0.55):
    return tuple(1 - amount * (1 - c) for c in to_rgb(color))


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


def robust_range(values, q: float = 0.95) -> float:
    """Symmetric colour limit: the q-quantile of |values| (finite ones), never 0."""
    v = np.abs(np.asarray(values, float))
    v = v[np.isfinite(v)]
    lim = float(np.quantile(v, q)) if len(v) else 1.0
    return lim if lim > 0 else (float(v.max()) if len(v) and v.max() > 0 else 1.0)


# --------------------------------------------------------------------------------------------
# baselines, Δ heatmaps, radar, normalized improvement
# --------------------------------------------------------------------------------------------

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
    bits, scope = choose_bits(pairs, bits), choose_scope(pairs, scope)
    p = pairs[(pairs.bits == bits) & (pairs.scope == scope)]
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
    bits, scope = choose_bits(receivers, bits), choose_scope(receivers, scope)
    r = receivers[(receivers.bits == bits) & (receivers.scope == scope)]
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
    bits, scope = choose_bits(receivers, bits), choose_scope(receivers, scope)
    r = receivers[(receivers.bits == bits) & (receivers.scope == scope)]
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


# --------------------------------------------------------------------------------------------
# λ curves, alignment
# --------------------------------------------------------------------------------------------


def lambda_table(acc: pd.DataFrame, pairs: pd.DataFrame | None = None, bits: int | None = None,
                 scope: str | None = None) -> pd.DataFrame:
    """Post-PTQ test Top-1 (%) of θ_R + λρ_D per receiver, donor and λ (λ = 0: FT+PTQ), with the
    receiver's QAT+PTQ and the donor's λ* (GGN-ste, from ``pairs``; NaN without it)."""
    bits = choose_bits(acc, bits)
    scope = choose_scope(acc[acc.method == "patch"], scope)
    t = acc[(acc.bits == bits) & (acc.split == "test") & (acc.metric == "ptq_top1")]
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
    return out.assign(bits=bits, scope=scope).reset_index(drop=True)


def task_colors(names: Sequence[str]) -> dict[str, tuple]:
    """One colour-blind-safe colour per task (sorted names; cycles past 10 tasks)."""
    pal = sns.color_palette("colorblind", 10)
    return {n: pal[i % 10] for i, n in enumerate(sorted(names))}


def lambda_curves(acc: pd.DataFrame, pairs: pd.DataFrame | None = None, bits: int | None = None,
                  scope: str | None = None) -> Figure:
    """One panel per receiver: post-PTQ test Top-1 vs λ for each donor (own ρ_R dashed), the
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
            ax.set_ylabel("post-PTQ Top-1, test (%)")
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


def _alignments(df: pd.DataFrame) -> list[str]:
    have = [c[4:] for c in df.columns if c.startswith("cos_")]
    order = list(ALIGNMENT_LABELS)
    return sorted(have, key=lambda a: (order.index(a) if a in order else len(order), a))


def alignment_table(pairs: pd.DataFrame, bits: int | None = None, scope: str | None = None) -> pd.DataFrame:
    """Long table donor, receiver, alignment, cosine (seed mean) for every ``cos_*`` column."""
    bits, scope = choose_bits(pairs, bits), choose_scope(pairs, scope)
    p = pairs[(pairs.bits == bits) & (pairs.scope == scope)]
    cols = [f"cos_{a}" for a in _alignments(p)]
    g = p.groupby(["donor", "receiver"], as_index=False)[cols].mean()
    out = g.melt(id_vars=["donor", "receiver"], var_name="alignment", value_name="cosine")
    out["alignment"] = out.alignment.str[4:]
    out["diagonal"] = out.donor == out.receiver
    return out.assign(bits=bits, scope=scope)


def alignment_heatmaps(pairs: pd.DataFrame, bits: int | None = None, scope: str | None = None) -> Figure:
    """One donor × receiver heatmap per alignment (Euclidean, GGN-fp, GGN-ste, …), range [−1, 1]."""
    tab = alignment_table(pairs, bits, scope)
    names = sorted(set(tab.donor) | set(tab.receiver))
    aligns = _alignments(pairs)
    n = len(names)
    fig = _figure(figsize=(len(aligns) * (0.6 * n + 1.2) + 0.8, 0.6 * n + 1.6))
    with style():
        axes = np.atleast_1d(fig.subplots(1, len(aligns)))
        for i, (ax, a) in enumerate(zip(axes, aligns)):
            _heatmap(ax, _matrix(tab[tab.alignment == a], "cosine", names), vmin=-1, vmax=1, cmap="PuOr",
                     fmt="{:.2f}")
            ax.set_title(ALIGNMENT_LABELS.get(a, a), fontsize=9)
            if i:
                ax.set_ylabel("")
        sm = ScalarMappable(Normalize(-1, 1), "PuOr")
        fig.colorbar(sm, ax=list(axes), shrink=0.8, label="cos(ρ_D, ρ_R)")
        fig.suptitle(f"Alignment of quantization vectors ({tab.bits.iloc[0]} bits, {tab.scope.iloc[0]} scope)")
    return fig


def alignment_scatter_table(pairs: pd.DataFrame, corr: pd.DataFrame | None = None, bits: int | None = None,
                            scope: str | None = None, targets: Sequence[str] = ("gain_unit", "recovery_unit"),
                            permutations: int = 5000) -> pd.DataFrame:
    """Off-diagonal (donor, receiver) points: each alignment's cosine against each target, with the
    panel's Spearman r and QAP p-value (from ``corr`` = correlations.csv, else computed with
    :func:`qgeom.stats.qap_correlation` on the seed-mean matrices)."""
    from qgeom.stats import qap_correlation

    bits, scope = choose_bits(pairs, bits), choose_scope(pairs, scope)
    p = pairs[(pairs.bits == bits) & (pairs.scope == scope)]
    names = sorted(set(p.donor) | set(p.receiver))
    targets = [t for t in targets if t in p.columns]
    rows = []
    for a in _alignments(p):
        x = _matrix(p, f"cos_{a}", names)
        for t in targets:
            y = _matrix(p, t, names)
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
                      scope: str | None = None, targets: Sequence[str] = ("gain_unit", "recovery_unit")) -> Figure:
    """Rows: alignments; columns: targets (λ = 1 gain, loss recovery). Points are off-diagonal
    pairs coloured by receiver; each panel states Spearman ρ and its QAP permutation p-value."""
    tab = alignment_scatter_table(pairs, corr, bits, scope, targets)
    aligns, targets = list(dict.fromkeys(tab.alignment)), list(dict.fromkeys(tab.target))
    colors = task_colors(sorted(set(tab.receiver) | set(tab.donor)))
    fig = _figure(figsize=(3.6 * len(targets) + 1.6, 2.7 * len(aligns) + 0.4))
    with style():
        axes = fig.subplots(len(aligns), len(targets), squeeze=False)
        for i, a in enumerate(aligns):
            for j, t in enumerate(targets):
                ax, d = axes[i, j], tab[(tab.alignment == a) & (tab.target == t)]
                for rc, g in d.groupby("receiver"):
                    ax.scatter(g.cosine, g.value, s=22, color=colors[rc], label=rc, edgecolor="white", lw=0.4)
                ax.axhline(0, color="0.6", lw=0.7)
                r, pv = d.spearman.iloc[0], d.qap_p.iloc[0]
                ax.text(0.03, 0.96, f"Spearman ρ = {r:+.2f}\nQAP p = {pv:.3f}", transform=ax.transAxes, va="top",
                        fontsize=8, bbox=dict(boxstyle="round", fc="white", ec="0.8", alpha=0.9))
                ax.set_xlabel(ALIGNMENT_LABELS.get(a, a))
                ax.set_ylabel(TARGET_SHORT.get(t, t))
                if i == 0:
                    ax.set_title(TARGET_LABELS.get(t, t), fontsize=9)
        h, lab = axes[0, 0].get_legend_handles_labels()
        fig.legend(h, lab, title="receiver", loc="outside right center", fontsize=8)
        fig.suptitle(f"Does alignment predict the transfer? off-diagonal pairs, {tab.bits.iloc[0]} bits, "
                     f"{tab.scope.iloc[0]} scope")
    return fig


# --------------------------------------------------------------------------------------------
# checkpoints of a run (read-only)
# --------------------------------------------------------------------------------------------


class RunArtifacts:
    """Read-only access to a finished run's checkpoints and task data (the layout of
    :mod:`qgeom.transfer`); nothing is ever trained or written."""

    def __init__(self, run_dir: str | Path) -> None:
        from qgeom.config import from_dict

        self.dir = Path(run_dir)
        path = self.dir / "config.json"
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist: not a qgeom run directory")
        self.cfg = from_dict(json.loads(path.read_text()))
        self._tasks: dict = {}

    def _load(self, rel: str):
        from qgeom.params import load_params

        path = self.dir / rel
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: run `qgeom run` to finish {self.dir}")
        return load_params(path)[0]

    def finetuned(self, seed: int, task: str):
        return self._load(f"seed{seed}/finetune/{task}.safetensors")

    def qat(self, seed: int, bits: int, task: str):
        return self._load(f"seed{seed}/qat{bits}/{task}.safetensors")

    def rho(self, seed: int, bits: int, task: str, scope: str = "backbone"):
        from qgeom.params import select

        return select(self._load(f"seed{seed}/qat{bits}/rho_{task}.safetensors"), scope)

    def model(self, params):
        """The run's architecture for a checkpoint (classes read from its head)."""
        from qgeom.models import create_model

        return create_model(self.cfg.preset, int(params["head.weight"].shape[0]), **self.cfg.model_overrides)

    def task(self, name: str):
        """The task's val and test splits (as the run made them; the train split is not built)."""
        from qgeom.data import load_task

        if name not in self._tasks:
            self._tasks[name] = load_task(name, 0, n_train=8, n_val=self.cfg.n_val, n_test=self.cfg.n_test)
        return self._tasks[name]

    def probe(self, task: str, seed: int, n: int):
        from qgeom.data import probe_batches

        return probe_batches(self.task(task).val, n, min(n, self.cfg.probe_batch), seed=seed)

    def defaults(self, seed: int | None, bits: int | None) -> tuple[int, int]:
        return (self.cfg.seeds[0] if seed is None else int(seed)), (min(self.cfg.bits) if bits is None else int(bits))


def cached_table(out_dir: str | Path | None, name: str, run_dir: str | Path,
                 fn: Callable[..., pd.DataFrame], **kwargs) -> pd.DataFrame:
    """``fn(run_dir, **kwargs)`` unless ``out_dir/NAME.csv`` already holds it.

    ``NAME.params.json`` records ``fn``'s name, its parameters (defaults updated by ``kwargs``)
    and a fingerprint of the run (its config.json and accuracy.csv); any difference recomputes
    and rewrites both files. ``out_dir=None`` always computes.
    """
    if out_dir is None:
        return fn(run_dir, **kwargs)
    out, run = Path(out_dir), Path(run_dir)
    params = {k: v.default for k, v in inspect.signature(fn).parameters.items() if v.default is not v.empty}
    h = hashlib.sha256()
    for f in ("config.json", "accuracy.csv"):
        if (run / f).exists():
            h.update((run / f).read_bytes())
    meta = {"table": name, "function": fn.__name__, "params": json.loads(json.dumps(params | kwargs, default=str)),
            "run_fingerprint": h.hexdigest()}
    csv, js = out / f"{name}.csv", out / f"{name}.params.json"
    if csv.exists() and js.exists():
        try:
            if json.loads(js.read_text()) == meta:
                return read_table(csv)
        except json.JSONDecodeError:
            pass
    df = fn(run_dir, **kwargs)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(csv, index=False)
    js.write_text(json.dumps(meta, indent=1, ensure_ascii=False))
    return df


# --------------------------------------------------------------------------------------------
# Proposition 1 diagnostics
# --------------------------------------------------------------------------------------------


def quadratic_model_table(run_dir: str | Path, *, receivers: Sequence[str] | None = None, seed: int | None = None,
                          bits: int | None = None, scope: str = "backbone", metric: str = "ggn",
                          lambdas: Sequence[float] = (0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5),
                          probe_size: int = 64) -> pd.DataFrame:
    """Measured L(Q_b(θ_R + λρ_D)) against Proposition 1's quadratic model, per receiver/donor/λ.

    The model is expanded at θ̂_R = θ_R + ρ_R (the receiver's head with its QAT backbone, so that
    the path θ_R + λρ_D stays in the expansion's coordinates) for the STE objective with metric
    M (GGN by default), on ``probe_size`` validation images: with d(λ) = λρ_D − ρ_R,

        quadratic(λ)   = L(θ̂_R) + gᵀd + ½ dᵀMd          (g = ∇L_ste(θ̂_R))
        proposition(λ) = L(θ̂_R) + ½ dᵀMd                (the proposition assumes g = 0)
        measured(λ)    = L(Q_b(θ_R + λρ_D))              (STE forward = PTQ forward)

    Columns: receiver, donor, lam, measured, quadratic, proposition, lam_star (⟨ρ_D,ρ_R⟩_M /
    ⟨ρ_D,ρ_D⟩_M, the proposition's minimiser), g_dot_d (gᵀρ_D), rho_M_rho (ρ_DᵀMρ_D).
    Cost per receiver: one gradient, one product with all the run's vectors, len(lambdas) ×
    tasks forward passes on the probe set. Default receivers: the first two tasks.
    """
    from qgeom.curvature import CurvatureOperator
    from qgeom.params import inner, patch
    from qgeom.quant import QuantSpec

    run = RunArtifacts(run_dir)
    seed, bits = run.defaults(seed, bits)
    names = sorted(run.cfg.tasks)
    receivers = list(receivers) if receivers is not None else names[:2]
    rows = []
    for r in receivers:
        V = {d: run.rho(seed, bits, d, scope) for d in names}
        theta_r = run.finetuned(seed, r)
        point = patch(theta_r, V[r], 1.0)
        op = CurvatureOperator(run.model(theta_r), point, run.probe(r, seed, probe_size), metric=metric,
                               objective="ste", scope=list(V[r]), spec=QuantSpec(bits))
        L0, g = op.loss(), op.gradient()
        MV = dict(zip(names, op.matmat([V[d] for d in names])))
        rr, gr = inner(V[r], MV[r]), inner(g, V[r])
        for d in names:
            dd, dr, gd = inner(V[d], MV[d]), inner(V[r], MV[d]), inner(g, V[d])
            for lam in lambdas:
                dmd = lam * lam * dd - 2 * lam * dr + rr
                shift = {k: lam * V[d][k] - V[r][k] for k in V[r]}
                rows.append(dict(seed=seed, bits=bits, scope=scope, metric=metric, receiver=r, donor=d, lam=float(lam),
                                 measured=op.loss(shift), quadratic=L0 + lam * gd - gr + 0.5 * dmd,
                                 proposition=L0 + 0.5 * dmd, lam_star=dr / dd if dd > 0 else np.nan,
                                 g_dot_d=gd, rho_M_rho=dd))
    return pd.DataFrame(rows)


def proposition1_table(geometry: pd.DataFrame, quadratic: pd.DataFrame | None = None, bits: int | None = None,
                       scope: str | None = None) -> pd.DataFrame:
    """Everything :func:`proposition1` draws, long, with a ``panel`` column:

    * ``K_eigenvalue``: receiver, alignment (metric_objective), index j, value λ_j(K), rel = λ_j / max|λ|;
    * ``stationarity``: receiver, donor, objective, value = ρ_Dᵀ∇L / ρ_DᵀGρ_D (same objective);
    * ``quadratic``: the rows of :func:`quadratic_model_table` (lam, measured, quadratic, …).
    """
    bits, scope = choose_bits(geometry, bits), choose_scope(geometry, scope)
    g = geometry[(geometry.bits == bits) & (geometry.scope == scope)]
    eig = g[g.quantity.str.startswith("K_eig_")].copy()
    eig["alignment"] = np.where(eig.metric == "euclidean", "euclidean", eig.metric + "_" + eig.objective)
    eig["index"] = eig.quantity.str[6:].astype(int)
    eig["rel"] = eig.value / eig.groupby(["seed", "receiver", "alignment"]).value.transform(lambda v: v.abs().max())
    eig = eig[["seed", "receiver", "alignment", "index", "value", "rel"]].assign(panel="K_eigenvalue")
    keys = ["seed", "receiver", "donor", "objective"]
    dg = g[g.quantity == "directional_gradient"][keys + ["value"]]
    selfs = g[(g.quantity == "self") & (g.metric == "ggn")][keys + ["value"]]
    st = dg.merge(selfs, on=keys, suffixes=("_g", "_m"))
    st = st.assign(value=st.value_g / st.value_m, panel="stationarity")[keys + ["value", "panel"]]
    parts = [eig, st]
    if quadratic is not None and len(quadratic):
        parts.append(quadratic.drop(columns=["bits", "scope"], errors="ignore").assign(panel="quadratic"))
    return pd.concat(parts, ignore_index=True).assign(bits=bits, scope=scope)


def proposition1(geometry: pd.DataFrame, quadratic: pd.DataFrame | None = None, bits: int | None = None,
                 scope: str | None = None, receiver: str | None = None) -> Figure:
    """Proposition 1's assumptions, three panels (data: :func:`proposition1_table`):

    (a) eigenvalues of each Gram K = VᵀMV (÷ its largest; log, symlog if any is ≤ 0) per
        receiver — positive for GGN, possibly negative for the Hessian;
    (b) stationarity: ρ_Dᵀ∇L / ρ_DᵀGρ_D per receiver for the fp (at θ_R) and STE (at θ_R,QAT)
        objectives — how far the gradient term moves the quadratic model's minimiser in λ;
        small when the expansion point is stationary along ρ_D;
    (c) measured L(Q_b(θ_R + λρ_D)) (solid) vs the quadratic model (dashed) along λ for one
        receiver (``quadratic`` from :func:`quadratic_model_table`; panel omitted without it).
    """
    tab = proposition1_table(geometry, quadratic, bits, scope)
    eig, st, q = (tab[tab.panel == k] for k in ("K_eigenvalue", "stationarity", "quadratic"))
    recs = sorted(set(eig.receiver) | set(st.receiver))
    panels = 3 if len(q) else 2
    fig = _figure(figsize=(4.0 * panels, 3.6))
    with style():
        axes = fig.subplots(1, panels)
        order = [a for a in ALIGNMENT_LABELS if a in set(eig.alignment)]
        sns.stripplot(eig, x="receiver", y="rel", hue="alignment", hue_order=order, order=recs, dodge=True,
                      ax=axes[0], size=4, jitter=False, palette="colorblind")
        if (eig.rel <= 0).any():
            axes[0].set_yscale("symlog", linthresh=1e-3)
            axes[0].axhline(0, color="0.3", lw=0.8)
        else:
            axes[0].set_yscale("log")
        axes[0].set_ylabel("eigenvalue of K ÷ largest |eigenvalue|")
        axes[0].set_title("(a) Gram K = VᵀMV: spectrum")
        axes[0].legend(title="M", fontsize=7, title_fontsize=8)
        st = st.assign(point=st.objective.map({"fp": "fp at θ_R", "ste": "STE at θ_R,QAT"}))
        sns.stripplot(st, x="receiver", y="value", hue="point", hue_order=["fp at θ_R", "STE at θ_R,QAT"], order=recs,
                      dodge=True, ax=axes[1], size=4, jitter=0.1, palette=[SETTING_COLORS["FT"], SETTING_COLORS["QAT"]])
        axes[1].axhline(0, color="0.3", lw=0.8)
        axes[1].set_yscale("symlog", linthresh=1e-2)
        axes[1].set_ylabel("ρ_Dᵀ∇L / ρ_DᵀGρ_D (shift of λ*)")
        axes[1].set_title("(b) stationarity along each ρ_D")
        axes[1].legend(fontsize=7)
        for ax in axes[:2]:
            ax.set_xlabel("receiver")
            ax.tick_params(axis="x", labelrotation=30 if len(recs) > 4 else 0)
        if panels == 3:
            ax = axes[2]
            r = receiver if receiver is not None else sorted(q.receiver.unique())[0]
            q = q[q.receiver == r]
            colors = task_colors(sorted(q.donor.unique()))
            for d, gd in q.groupby("donor"):
                own = " (own)" if d == r else ""
                ax.plot(gd.lam, gd.measured, "-o", ms=3, color=colors[d], label=f"ρ from {d}{own}")
                ax.plot(gd.lam, gd.quadratic, "--", color=colors[d], lw=1)
            ax.set_xlabel("λ (patch θ_R + λρ_D)")
            ax.set_ylabel("post-PTQ loss on probe set (nats)")
            ax.set_title(f"(c) measured (—) vs quadratic (--), receiver {r}")
            ax.legend(fontsize=7)
        fig.suptitle(f"Proposition 1 diagnostics ({tab.bits.iloc[0]} bits, {tab.scope.iloc[0]} scope)")
    return fig


# --------------------------------------------------------------------------------------------
# Hessian spectrum
# --------------------------------------------------------------------------------------------


def spectrum_table(run_dir: str | Path, *, receiver: str | None = None, seed: int | None = None,
                   bits: int | None = None, scope: str = "backbone", metric: str = "hessian",
                   objective: str = "fp", top_k: int = 6, n_iter: int = 30, n_probes: int = 1,
                   probe_size: int = 32, n_grid: int = 300) -> pd.DataFrame:
    """The receiver's curvature spectrum and where every ρ puts its energy.

    SLQ density (:func:`qgeom.lanczos.spectral_density`: ``n_probes`` Rademacher probes,
    ``n_iter`` Lanczos steps) and the ``top_k`` largest eigenpairs (:func:`qgeom.lanczos.eigsh`,
    at most ``n_iter`` steps; residuals recorded) of M at θ_R (``fp``) on ``probe_size``
    validation images. The defaults (≈ 70 products with M) take ~10 s of CPU for the demo's
    micro ViT; one probe gives a coarse density — raise ``n_probes`` for a smoother one. Long
    table with column ``part``:

    * ``density``: eigenvalue (grid), value = φ(eigenvalue);
    * ``eigenpair``: index j, eigenvalue λ_j, value = residual ‖Mu − λu‖;
    * ``norm_share``: vector, j, λ_j, value = (u_jᵀρ)² / ‖ρ‖²;
    * ``curvature_share``: vector, j, λ_j, value = λ_j (u_jᵀρ)² / ρᵀMρ (NaN if ρᵀMρ ≤ 0).

    Vectors: the receiver's own ρ_R and every donor's ρ_D (names ``ρ_R (task)``, ``ρ_D (task)``).
    """
    from qgeom.curvature import CurvatureOperator
    from qgeom.geometry import eigenbasis_projection
    from qgeom.lanczos import eigsh, spectral_density
    from qgeom.params import norm
    from qgeom.quant import QuantSpec

    run = RunArtifacts(run_dir)
    seed, bits = run.defaults(seed, bits)
    names = sorted(run.cfg.tasks)
    r = receiver or names[0]
    V = {d: run.rho(seed, bits, d, scope) for d in names}
    point = run.finetuned(seed, r) if objective == "fp" else run.qat(seed, bits, r)
    op = CurvatureOperator(run.model(point), point, run.probe(r, seed, probe_size), metric=metric,
                           objective=objective, scope=list(V[r]), spec=QuantSpec(bits) if objective == "ste" else None)
    dens = spectral_density(op, n_probes=n_probes, n_iter=n_iter, seed=seed, n_grid=n_grid)
    eig = eigsh(op, k=top_k, which="LA", max_iter=n_iter, tol=1e-6, seed=seed)
    labels = {d: f"ρ_R ({d})" if d == r else f"ρ_D ({d})" for d in names}
    proj = eigenbasis_projection(op, {labels[d]: V[d] for d in names}, eig)
    base = dict(seed=seed, bits=bits, scope=scope, metric=metric, objective=objective, receiver=r)
    rows = [base | dict(part="density", vector="", index=-1, eigenvalue=x, value=y)
            for x, y in zip(dens.grid, dens.density)]
    rows += [base | dict(part="eigenpair", vector="", index=j, eigenvalue=lam, value=res)
             for j, (lam, res) in enumerate(zip(eig.eigenvalues, eig.residuals))]
    c, lam, forms = proj.terms["coefficients"], proj.terms["eigenvalues"], proj.terms["forms"]
    for i, (d, name) in enumerate(zip(names, proj.terms["names"])):
        sq = norm(V[d]) ** 2
        for j in range(len(lam)):
            rows.append(base | dict(part="norm_share", vector=name, index=j, eigenvalue=lam[j],
                                    value=c[i, j] ** 2 / sq))
            rows.append(base | dict(part="curvature_share", vector=name, index=j, eigenvalue=lam[j],
                                    value=lam[j] * c[i, j] ** 2 / forms[i] if forms[i] > 0 else np.nan))
    return pd.DataFrame(rows)


def spectrum(table: pd.DataFrame) -> Figure:
    """(a) SLQ spectral density (log scale) with the top Lanczos eigenvalues as ticks;
    (b) share of each ρ's squared norm on each top eigenvector u_j (at x = λ_j);
    (c) cumulative share of ρᵀMρ carried by the top-j eigendirections. ρ_R in black."""
    r = table.receiver.iloc[0]
    dens, eig = table[table.part == "density"], table[table.part == "eigenpair"]
    vecs = list(dict.fromkeys(table[table.part == "norm_share"].vector))
    colors = task_colors([v[5:-1] for v in vecs])  # "ρ_D (task)" → task: the colours of the other figures
    col = {v: ("black" if v.startswith("ρ_R") else colors[v[5:-1]]) for v in vecs}
    fig = _figure(figsize=(12, 3.6))
    with style():
        axes = fig.subplots(1, 3)
        ax = axes[0]
        ax.plot(dens.eigenvalue, np.maximum(dens.value, 1e-12), color=CB[0], lw=1.5)
        ax.set_yscale("log")
        ax.set_ylim(max(dens.value.max() * 1e-7, 1e-12), dens.value.max() * 3)
        for lam in eig.eigenvalue:
            ax.axvline(lam, color=CB[3], lw=0.8, alpha=0.7, ymax=0.12)
        ax.set_xlabel("eigenvalue of M")
        ax.set_ylabel("spectral density (SLQ)")
        ax.set_title(f"(a) {table.metric.iloc[0]} spectrum at receiver {r}")
        for v in vecs:
            d = table[(table.part == "norm_share") & (table.vector == v)]
            own = v.startswith("ρ_R")
            axes[1].plot(d.eigenvalue, d.value, "o" if own else ".", ls="-" if own else ":", color=col[v], label=v,
                         ms=6 if own else 5, lw=1.5 if own else 0.8, zorder=3 if own else 2)
            c = table[(table.part == "curvature_share") & (table.vector == v)].sort_values("index")
            axes[2].plot(c["index"] + 1, c.value.cumsum(), "-o" if own else "-", color=col[v], ms=3,
                         lw=2 if own else 1, label=v)
        axes[1].set_yscale("log")
        axes[1].set_xlabel("eigenvalue λ_j of the top eigenvector u_j")
        axes[1].set_ylabel("(u_jᵀρ)² / ‖ρ‖²")
        axes[1].set_title("(b) norm share on top eigenvectors")
        axes[2].set_xlabel("number j of top eigendirections")
        axes[2].set_ylabel(r"$\sum_{i\leq j}\, \lambda_i (u_i^\top\rho)^2 \,/\, \rho^\top M \rho$")
        axes[2].set_title("(c) cumulative curvature share")
        axes[2].set_ylim(bottom=0)
        axes[2].legend(fontsize=7, loc="lower right")
        fig.suptitle(f"Where quantization vectors put their energy ({table.bits.iloc[0]} bits, {table.scope.iloc[0]} "
                     f"scope, {table.objective.iloc[0]} objective)")
    return fig


# --------------------------------------------------------------------------------------------
# landscape
# --------------------------------------------------------------------------------------------


def landscape_table(run_dir: str | Path, *, receiver: str | None = None, donor: str | None = None,
                    seed: int | None = None, bits: int | None = None, scope: str = "backbone",
                    a: Sequence[float] = (-0.25, 0.0, 0.25, 0.5, 0.75, 1.0, 1.25),
                    b: Sequence[float] = (-0.25, 0.0, 0.25, 0.5, 0.75, 1.0, 1.25),
                    split: str = "val") -> pd.DataFrame:
    """Post-PTQ Top-1 (%) of θ_R + aρ_D + bρ_R on the receiver's ``split`` over the (a, b) grid.

    Defaults: the first task as receiver; as donor, the best single donor chosen on validation
    (receivers.csv), else the first other task. (0, 0) is FT+PTQ, (1, 0) the zero-shot patch,
    (0, 1) the receiver's QAT backbone with its FT head.
    """
    from qgeom.params import lincomb
    from qgeom.quant import QuantSpec
    from qgeom.train import accuracy

    run = RunArtifacts(run_dir)
    seed, bits = run.defaults(seed, bits)
    names = sorted(run.cfg.tasks)
    r = receiver or names[0]
    if donor is None:
        donor = next(d for d in names if d != r)
        rec_csv = run.dir / "receivers.csv"
        if rec_csv.exists():
            rt = pd.read_csv(rec_csv)
            rt = rt[(rt.receiver == r) & (rt.bits == bits) & (rt.scope == scope) & (rt.seed == seed)]
            donor = str(rt.best_donor.iloc[0]) if len(rt) else donor
    theta = run.finetuned(seed, r)
    rd, rr = run.rho(seed, bits, donor, scope), run.rho(seed, bits, r, scope)
    model, data, spec = run.model(theta), getattr(run.task(r), split), QuantSpec(bits)
    rows = []
    for av in a:
        for bv in b:
            th = dict(theta)
            th.update({k: (theta[k].double() + v).to(theta[k].dtype)
                       for k, v in lincomb([rd, rr], [float(av), float(bv)]).items()})
            rows.append(dict(seed=seed, bits=bits, scope=scope, split=split, receiver=r, donor=donor, a=float(av),
                             b=float(bv), ptq_top1=100 * accuracy(model, th, data, spec, run.cfg.eval_batch)))
    return pd.DataFrame(rows)


def landscape(table: pd.DataFrame) -> Figure:
    """Filled contours of post-PTQ Top-1 over (a, b): θ_R + aρ_D + bρ_R; markers at θ_R (0, 0),
    the zero-shot patch (1, 0) and the own QAT vector (0, 1)."""
    r, d = table.receiver.iloc[0], table.donor.iloc[0]
    grid = table.pivot_table(index="b", columns="a", values="ptq_top1")
    fig = _figure(figsize=(5.4, 4.4))
    with style():
        ax = fig.add_subplot()
        A, B = np.meshgrid(grid.columns.to_numpy(), grid.index.to_numpy())
        z = grid.to_numpy()
        lo, hi = np.nanmin(z), np.nanmax(z)
        levels = MaxNLocator(12).tick_values(lo, hi if hi > lo else lo + 1)  # round numbers, within 0–100 %
        levels = np.unique(np.clip(levels, 0, 100)) if 0 <= lo and hi <= 100 else levels
        cs = ax.contourf(A, B, z, levels=levels, cmap="viridis")
        ax.contour(A, B, z, levels=cs.levels, colors="white", linewidths=0.3, alpha=0.6)
        fig.colorbar(cs, ax=ax, label=f"post-PTQ Top-1 on {table.split.iloc[0]} (%)")
        for (x, y), m, lab in (((0, 0), "o", "θ_R (FT + PTQ)"), ((1, 0), "*", "θ_R + ρ_D (zero-shot patch)"),
                               ((0, 1), "s", "θ_R + ρ_R (own QAT vector)")):
            ax.plot([x], [y], m, color="white", mec="black", ms=11 if m == "*" else 8, label=lab, ls="")
        ax.axhline(0, color="white", lw=0.6, ls="--")
        ax.axvline(0, color="white", lw=0.6, ls="--")
        ax.set_xticks(grid.columns[:: max(1, len(grid.columns) // 7)])
        ax.set_yticks(grid.index[:: max(1, len(grid.index) // 7)])
        ax.set_xlabel(f"a (coefficient of ρ_D, donor {d})")
        ax.set_ylabel(f"b (coefficient of ρ_R, receiver {r})")
        ax.set_title(f"Post-PTQ landscape at receiver {r} ({table.bits.iloc[0]} bits)")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncols=2)
    return fig


# --------------------------------------------------------------------------------------------
# invariance
# --------------------------------------------------------------------------------------------


def invariance_table(run_dir: str | Path, *, receiver: str | None = None, donor: str | None = None,
                     seed: int | None = None, bits: int | None = None, scope: str = "backbone",
                     kinds: Sequence[str] = ("qk_scalar", "qk_mixing", "vo_diagonal"),
                     strengths: Sequence[float] = (0.0, 2.0, 4.0, 6.0), metric: str = "ggn",
                     probe_size: int = 64, symmetry_seed: int = 0, touched_only: bool = True) -> pd.DataFrame:
    """Euclidean vs metric cosine of (gρ_D, gρ_R) at gθ_R, and post-PTQ Top-1 of gθ_R and of
    g(θ_R + ρ_D), for a random element g of each symmetry kind as its strength grows
    (:func:`qgeom.symmetry.random_symmetry`: the log condition number of GL blocks, the
    log-spread of scalings). The metric cosine uses M(gθ_R) (fp objective, probe set of
    ``probe_size`` validation images): invariant for every function-level symmetry; the
    Euclidean cosine only for orthogonal g; PTQ only where Q_b commutes with g. Default kinds:
    a per-head q/k rescaling (commutes with per-row Q_b), a q/k GL mixing and a per-channel
    v/o rescaling (neither commutes), strengths up to 6 (κ(g) = e⁶ ≈ 400).

    touched_only: the cosines are taken over the tensors g acts on (its ``touched`` ∩ the
    scope), where the Euclidean drift is not diluted by the untouched rest of ρ. g is block
    diagonal over tensors, so the metric's block on those coordinates transforms by the same
    congruence and the metric cosine stays invariant there too.

    Long table: kind, strength, condition_number, quantity (``euclidean_cosine``,
    ``metric_cosine``, ``ptq_top1_receiver``, ``ptq_top1_patched``, Top-1 in % on val), value.
    """
    from qgeom.curvature import CurvatureOperator
    from qgeom.geometry import metric_cosine
    from qgeom.params import cosine, patch
    from qgeom.quant import QuantSpec
    from qgeom.symmetry import random_symmetry
    from qgeom.train import accuracy

    run = RunArtifacts(run_dir)
    seed, bits = run.defaults(seed, bits)
    names = sorted(run.cfg.tasks)
    r = receiver or names[0]
    donor = donor or next(d for d in names if d != r)
    theta = run.finetuned(seed, r)
    rd, rr = run.rho(seed, bits, donor, scope), run.rho(seed, bits, r, scope)
    model, probe, spec, val = run.model(theta), run.probe(r, seed, probe_size), QuantSpec(bits), run.task(r).val
    patched = patch(theta, rd, 1.0)
    rows = []
    for kind in kinds:
        for s in strengths:
            g = random_symmetry(model, kind, strength=float(s), seed=symmetry_seed)
            keys = [k for k in g.touched if k in rd] if touched_only else list(rd)
            gt = g(theta)
            gd, gr = g({k: rd[k] for k in keys}), g({k: rr[k] for k in keys})
            op = CurvatureOperator(model, gt, probe, metric=metric, scope=keys)
            vals = {"euclidean_cosine": cosine(gd, gr), "metric_cosine": float(metric_cosine(op, gd, gr).value),
                    "ptq_top1_receiver": 100 * accuracy(model, gt, val, spec, run.cfg.eval_batch),
                    "ptq_top1_patched": 100 * accuracy(model, g(patched), val, spec, run.cfg.eval_batch)}
            for q, v in vals.items():
                rows.append(dict(seed=seed, bits=bits, scope=scope, receiver=r, donor=donor, metric=metric, kind=kind,
                                 strength=float(s), condition_number=g.condition_number(), n_tensors=len(keys),
                                 quantity=q, value=v))
    return pd.DataFrame(rows)


def invariance(table: pd.DataFrame) -> Figure:
    """(a) change of the cosine of (gρ_D, gρ_R) from its value at s = 0, metric (solid) and
    Euclidean (dashed), against the strength s of a random element g of each kind: the metric
    line stays at 0, the Euclidean one drifts (legend: both cosines at s = 0);
    (b) post-PTQ Top-1 (val) of gθ_R (solid) and g(θ_R + ρ_D) (dashed) under the same elements."""
    kinds = list(dict.fromkeys(table.kind))
    pal = dict(zip(kinds, [CB[i] for i in (0, 3, 2, 4, 5, 8, 9)]))
    metric = table.metric.iloc[0].upper() if "metric" in table else "M"
    fig = _figure(figsize=(10.5, 4.0))
    with style():
        axes = fig.subplots(1, 2)
        labels = []
        for k in kinds:
            d = table[table.kind == k]
            at0 = {}
            for q, ls, ax in (("metric_cosine", "-", axes[0]), ("euclidean_cosine", "--", axes[0]),
                              ("ptq_top1_receiver", "-", axes[1]), ("ptq_top1_patched", "--", axes[1])):
                e = d[d.quantity == q].sort_values("strength")
                y = e.value.to_numpy()
                if q.endswith("cosine"):
                    at0[q] = y[0]
                    y = y - y[0]
                ax.plot(e.strength, y, ls, marker="o", ms=3, color=pal[k], lw=1.6)
            labels.append(f"{k} (cos at s = 0: {metric} {at0['metric_cosine']:.2f}, "
                          f"Eucl. {at0['euclidean_cosine']:.2f})")
        axes[0].axhline(0, color="0.3", lw=0.8)
        for ax in axes:
            ax.set_xlabel("symmetry strength s (log condition number / log-spread)")
        axes[0].set_ylabel("cos(gρ_D, gρ_R) − cos(ρ_D, ρ_R)")
        axes[0].set_title(f"(a) {metric} cosine at gθ_R (—) vs Euclidean (--)")
        axes[1].set_ylabel("post-PTQ Top-1 on val (%)")
        axes[1].set_title("(b) PTQ of gθ_R (—) and g(θ_R + ρ_D) (--)")
        handles = [Line2D([], [], color=pal[k], lw=2) for k in kinds]
        handles += [Line2D([], [], color="0.3", ls="-"), Line2D([], [], color="0.3", ls="--")]
        fig.legend(handles, labels + ["(a) metric cosine, (b) receiver", "(a) Euclidean cosine, (b) patched"],
                   loc="outside lower center", ncols=2, fontsize=8)
        fig.suptitle(f"Invariance under random ViT symmetries (receiver {table.receiver.iloc[0]}, "
                     f"donor {table.donor.iloc[0]}, {table.bits.iloc[0]} bits; cosines over the tensors g touches)")
    return fig


__all__ = [
    "RunArtifacts", "alignment_heatmaps", "alignment_scatter", "alignment_scatter_table", "alignment_table",
    "baseline_bars", "baseline_table", "cached_table", "choose_bits", "choose_scope", "delta_heatmaps",
    "delta_table", "improvement_bars", "improvement_table", "invariance", "invariance_table", "lambda_curves",
    "lambda_table", "landscape", "landscape_table", "load_run", "proposition1", "proposition1_table",
    "quadratic_model_table", "radar", "radar_table", "read_table", "robust_range", "save_figure", "spectrum",
    "spectrum_table", "style", "task_colors",
]

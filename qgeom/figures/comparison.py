"""Figures across settings: several runs (model scales, seeds, real vs offline data) and the bit
widths within a run, each setting labelled from its run's config.

A *setting* is one run at one bit width: :func:`settings` turns run directories into
``{label: tables}`` with every table cut to that bit width. Each figure takes that mapping:
baselines across settings, the normalized improvement overlaid, Δ heatmaps side by side, and the
stacked proportions of pairs that improve, stay neutral or degrade (also drawn for a single run).
λ sensitivity pooled over pairs is :func:`qgeom.figures.sweeps.lambda_sensitivity`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from qgeom.figures.accuracy import baseline_table, delta_table, improvement_table
from qgeom.figures.files import load_run
from qgeom.figures.selection import choose_scope, pair_frame
from qgeom.figures.cells import CellGroup
from qgeom.figures.theme import (
    CB, DOUBLE, SETTING_COLORS, SINGLE, caption, colors_for, lighter, new_figure, pair_heatmap, relabel,
    robust_range, style,
)

Settings = Mapping[str, Mapping[str, pd.DataFrame]]


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out |= _flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v}
    return out


LABEL_KEYS = {"model_overrides.embed_dim": "width", "model_overrides.depth": "depth", "preset": "model",
              "seeds": "seeds", "data_root": "data", "theta0": "θ0", "n_train": "train images"}


def run_labels(run_dirs: Sequence[str | Path]) -> list[str]:
    """One label per run from its config.json: its ``name`` and, when runs share a name or differ
    in the model, the config values that tell them apart (width, depth, model, seeds, data)."""
    cfgs = [_flat(json.loads((Path(r) / "config.json").read_text())) if (Path(r) / "config.json").exists()
            else {"name": Path(r).name} for r in run_dirs]
    names = [str(c.get("name", Path(r).name)) for c, r in zip(cfgs, run_dirs)]
    differ = [k for k in LABEL_KEYS if len({json.dumps(c.get(k), default=str) for c in cfgs}) > 1]
    labels = []
    for name, c in zip(names, cfgs):
        extra = [f"{LABEL_KEYS[k]} {_short(c.get(k))}" for k in differ]
        labels.append(f"{name} ({', '.join(extra)})" if extra else name)
    seen: dict[str, int] = {}
    for i, lab in enumerate(labels):  # still equal: number them
        seen[lab] = seen.get(lab, 0) + 1
        if labels.count(lab) > 1:
            labels[i] = f"{lab} #{seen[lab]}"
    return [lab.replace("_", "-") for lab in labels]


def _short(v) -> str:
    return ",".join(map(str, v)) if isinstance(v, list) else (Path(v).name or "offline") if isinstance(v, str) else str(v)


def settings(run_dirs: Sequence[str | Path], bits: Sequence[int] | None = None) -> dict[str, dict[str, pd.DataFrame]]:
    """``{label: tables}``, one entry per run and bit width (the run's label, plus the bit width
    when the settings do not all share one), every table cut to that bit width."""
    return settings_with_runs(run_dirs, bits)[0]


def settings_with_runs(run_dirs: Sequence[str | Path], bits: Sequence[int] | None = None
                       ) -> tuple[dict[str, dict[str, pd.DataFrame]], dict[str, Path]]:
    """:func:`settings` and, per setting label, the run directory it comes from."""
    units = []
    for run, label in zip(run_dirs, run_labels(run_dirs)):
        T = load_run(run)
        for b in sorted(int(x) for x in T["accuracy"].bits.unique()):
            if bits is None or b in bits:
                units.append((label, b, {k: (v[v.bits == b] if "bits" in v else v) for k, v in T.items()}, Path(run)))
    one_bits = len({b for _, b, _, _ in units}) == 1
    names = [label if one_bits else f"{label}, {b} bit" for label, b, _, _ in units]
    return dict(zip(names, (t for _, _, t, _ in units))), dict(zip(names, (r for _, _, _, r in units)))


# --------------------------------------------------------------------------------------------
# stacked proportions (one setting or several)
# --------------------------------------------------------------------------------------------


def proportion_table(pairs, scope: str | None = None, neutral: float = 1.0) -> pd.DataFrame:
    """Per setting (label → pairs at one bit width; a bare table is one setting) and λ choice
    (λ = 1, λ on val): how many off-diagonal pairs (seed means) improve (Δ > ``neutral``
    points), stay neutral (|Δ| ≤ ``neutral``) or degrade (Δ < −``neutral``)."""
    pairs = dict(pairs) if isinstance(pairs, Mapping) else {"run": pairs}
    rows = []
    for label, p in pairs.items():
        sc = choose_scope(p, scope)
        g = p[(p.scope == sc) & ~p.diagonal.astype(bool)].groupby(["donor", "receiver"])[
            ["gain_unit", "gain_tuned"]].mean()
        for choice, col in (("λ = 1", "gain_unit"), ("λ on val", "gain_tuned")):
            v = g[col].to_numpy()
            for outcome, n in (("improve", (v > neutral).sum()), ("neutral", (np.abs(v) <= neutral).sum()),
                               ("degrade", (v < -neutral).sum())):
                rows.append(dict(setting=label, lam_choice=choice, outcome=outcome, count=int(n),
                                 fraction=n / len(v) if len(v) else np.nan, n_pairs=len(v), neutral=neutral,
                                 scope=sc, bits=int(p.bits.iloc[0])))
    return pd.DataFrame(rows)


OUTCOME_COLORS = {"improve": CB[2], "neutral": (0.8, 0.8, 0.8), "degrade": CB[3]}


def proportion_bars(pairs, scope: str | None = None, neutral: float = 1.0, *, palette=None,
                    title: str | None = None, xlabel: str | None = None, ylabel: str | None = None) -> Figure:
    """Stacked bars, one per setting and λ choice: the fraction of off-diagonal pairs that
    improve, stay neutral or degrade after patching + PTQ (``palette``: colours per outcome)."""
    tab = proportion_table(pairs, scope, neutral)
    colors = colors_for(OUTCOME_COLORS, palette, OUTCOME_COLORS)
    labels = list(dict.fromkeys(tab.setting))
    bars = [(s, c) for s in labels for c in ("λ = 1", "λ on val")]
    fig = new_figure(SINGLE if len(labels) <= 2 else DOUBLE, 2.6)
    with style():
        ax = fig.add_subplot()
        x = np.arange(len(bars)) + np.repeat(np.arange(len(labels)) * 0.5, 2)
        bottom = np.zeros(len(bars))
        for outcome, c in colors.items():
            v = np.array([tab[(tab.setting == s) & (tab.lam_choice == ch) & (tab.outcome == outcome)].fraction.iloc[0]
                          for s, ch in bars])
            ax.bar(x, v, 0.8, bottom=bottom, color=c, label=outcome, edgecolor="white", lw=0.5)
            for xi, b, vi in zip(x, bottom, v):
                if vi >= 0.08:
                    ax.text(xi, b + vi / 2, f"{vi:.0%}", ha="center", va="center", fontsize=7)
            bottom += v
        ax.set_xticks(x, [ch for _, ch in bars])
        if len(labels) > 1:
            for i, s in enumerate(labels):
                ax.text(x[2 * i:2 * i + 2].mean(), -0.16, s, ha="center", va="top", fontsize=7,
                        transform=ax.get_xaxis_transform())
        ax.set_ylim(0, 1)
        ax.set_ylabel("fraction of off-diagonal pairs")
        ax.set_title(f"Does patching help? ({tab.bits.iloc[0]} bits)" if tab.bits.nunique() == 1
                     else "Does patching help?")
        fig.legend(*ax.get_legend_handles_labels(), loc="outside right center")
        n = tab.groupby("setting").n_pairs.first()
        caption(fig, f"Neutral: |Δ post-PTQ Top-1| ≤ {neutral:g} point on test (seed means); "
                     + ", ".join(f"{s}: {int(v)} pairs" for s, v in n.items()) + ".")
    return relabel(fig, title, xlabel, ylabel)


# --------------------------------------------------------------------------------------------
# across settings
# --------------------------------------------------------------------------------------------


def runs_baseline_table(runs: Settings) -> pd.DataFrame:
    """Per setting and baseline (FT, FT+PTQ, QAT, QAT+PTQ): per task test Top-1 (``task`` rows,
    seed means) and the mean over tasks (``task`` = "mean", with the s.d. over seeds of each
    seed's task mean)."""
    rows = []
    for label, T in runs.items():
        acc = T["accuracy"]
        per_seed = [baseline_table(acc[acc.seed == s]).assign(seed=s) for s in sorted(acc.seed.unique())]
        ps = pd.concat(per_seed)
        rows.append(baseline_table(acc).rename(columns={"setting": "baseline"}).assign(setting=label))
        m = ps.groupby(["seed", "setting"]).top1.mean().groupby("setting")
        rows.append(pd.DataFrame({"top1": m.mean(), "sd": m.std(ddof=1), "n_seeds": m.count()}).reset_index()
                    .rename(columns={"setting": "baseline"}).assign(setting=label, task="mean",
                                                                    bits=int(acc.bits.iloc[0])))
    return pd.concat(rows, ignore_index=True)[["setting", "bits", "baseline", "task", "top1", "sd", "n_seeds"]]


def runs_baselines(runs: Settings, *, palette=None, title: str | None = None, xlabel: str | None = None, ylabel: str | None = None) -> Figure:
    """Grouped bars per setting: FT, FT+PTQ, QAT, QAT+PTQ, mean test Top-1 over tasks (whiskers:
    ± 1 s.d. over seeds when there are several); dots: each task. ``palette``: colours per baseline."""
    tab = runs_baseline_table(runs)
    labels = list(runs)
    kinds = ["FT", "FT+PTQ", "QAT", "QAT+PTQ"]
    colors = colors_for(kinds, palette, SETTING_COLORS)
    fig = new_figure(SINGLE if len(labels) <= 2 else DOUBLE, 2.6)
    with style():
        ax = fig.add_subplot()
        x, w = np.arange(len(labels)), 0.2
        for i, k in enumerate(kinds):
            m = tab[(tab.task == "mean") & (tab.baseline == k)].set_index("setting").reindex(labels)
            c, fp = colors[k], not k.endswith("PTQ")
            ax.bar(x + (i - 1.5) * w, m.top1, w, color=lighter(c) if fp else c, edgecolor=c, hatch="///" if fp else None,
                   lw=0.6, label=k, yerr=m.sd if (m.n_seeds > 1).any() else None, capsize=1.5, error_kw={"lw": 0.8})
            t = tab[(tab.task != "mean") & (tab.baseline == k)]
            ax.scatter(x[[labels.index(s) for s in t.setting]] + (i - 1.5) * w, t.top1, s=3, color="0.2", lw=0,
                       zorder=3, label="each task" if i == 0 else "_task")
        ax.set_xticks(x, labels, rotation=15 if len(labels) > 2 else 0)
        ax.set_ylim(0, 108)
        ax.set_yticks([0, 25, 50, 75, 100])
        ax.set_ylabel("Top-1 on test (%), mean over tasks")
        ax.set_title("Baselines across settings")
        fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=3)
    return relabel(fig, title, xlabel, ylabel)


def runs_improvement_table(runs: Settings, scope: str | None = None) -> pd.DataFrame:
    """:func:`improvement_table` of each setting, with a ``setting`` column."""
    return pd.concat([improvement_table(T["receivers"], None, scope).assign(setting=label)
                      for label, T in runs.items() if "receivers" in T], ignore_index=True)


def runs_improvement(runs: Settings, scope: str | None = None, *, palette=None, title: str | None = None, xlabel: str | None = None, ylabel: str | None = None) -> Figure:
    """Normalized improvement of the best donor (λ on val) per task, one marker series per setting
    (± 1 s.d. over seeds when there are several; ``palette``: colours per setting), overlaid;
    hollow: the QAT ceiling."""
    tab = runs_improvement_table(runs, scope)
    labels = list(dict.fromkeys(tab.setting))
    colors = colors_for(labels, palette)
    tasks = sorted(tab.task.unique())
    fig = new_figure(DOUBLE if len(tasks) > 4 else SINGLE, 2.5)
    with style():
        ax = fig.add_subplot()
        for i, label in enumerate(labels):
            off = (i - (len(labels) - 1) / 2) * 0.12
            d = tab[(tab.setting == label) & (tab.patch == "best donor")].set_index("task").reindex(tasks)
            q = tab[(tab.setting == label) & (tab.patch == "QAT ceiling")].set_index("task").reindex(tasks)
            x = np.arange(len(tasks)) + off
            ax.errorbar(x, d.improvement, yerr=d.sd if (d.n_seeds > 1).any() else None, fmt="-o", ms=3.5, lw=0.8,
                        color=colors[label], label=label, capsize=1.5)
            ax.plot(x, q.improvement, "o", mfc="none", ms=4, color=colors[label], mew=0.8, label="_ceiling")
        ax.axhline(0, color="0.3", lw=0.6)
        ax.set_xticks(np.arange(len(tasks)), tasks, rotation=30 if len(tasks) > 7 else 0)
        ax.set_xlabel("receiver task")
        ax.set_ylabel("(patch+PTQ − FT+PTQ) / QAT+PTQ")
        ax.set_title("Normalized improvement, best donor at λ on val")
        fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=min(3, len(labels)))
        caption(fig, "Filled: best single donor (chosen on validation) + PTQ; hollow: the QAT ceiling "
                     "(QAT+PTQ − FT+PTQ) / QAT+PTQ of the same setting.")
    return relabel(fig, title, xlabel, ylabel)


def runs_delta_table(runs: Settings, scope: str | None = None) -> pd.DataFrame:
    """:func:`delta_table` of each setting at λ = 1, with a ``setting`` column."""
    return pd.concat([delta_table(T["pairs"], None, scope).query("lam_choice == 'λ = 1'").assign(setting=label)
                      for label, T in runs.items() if "pairs" in T], ignore_index=True)


def runs_delta_heatmaps(runs: Settings, scope: str | None = None, *, cmap="RdBu", title: str | None = None, xlabel: str | None = None, ylabel: str | None = None) -> Figure:
    """One donor × receiver heatmap of Δ post-PTQ Top-1 at λ = 1 per setting, side by side, one
    colour range (95 % quantile of |Δ| off the diagonal over all settings) in the diverging
    colour map ``cmap``."""
    tab = runs_delta_table(runs, scope)
    labels = list(dict.fromkeys(tab.setting))
    lim = robust_range(tab[~tab.diagonal].delta)
    ncol = min(3, len(labels))
    nrow = math.ceil(len(labels) / ncol)
    fig = new_figure(DOUBLE, 2.4 * nrow + 0.5)
    with style():
        axes = np.atleast_1d(fig.subplots(nrow, ncol, squeeze=False)).ravel()
        cells = CellGroup()
        for i, (ax, label) in enumerate(zip(axes, labels)):
            d = tab[tab.setting == label]
            names = sorted(set(d.donor) | set(d.receiver))
            pair_heatmap(ax, pair_frame(d, "delta", names), vmin=-lim, vmax=lim, cmap=cmap, annotate=len(names) <= 5,
                         group=cells)
            ax.set_title(label)
            if i % ncol:
                ax.set_ylabel("")
        for ax in axes[len(labels):]:
            ax.set_visible(False)
        fig.colorbar(ScalarMappable(Normalize(-lim, lim), cmap), ax=list(axes[:len(labels)]), extend="both",
                     shrink=0.8, label="Δ Top-1 vs FT+PTQ (points, test)")
        fig.suptitle(r"Patching $\theta_R + \rho_D$ ($\lambda = 1$) across settings; framed: own $\rho_R$")
    return relabel(fig, title, xlabel, ylabel)

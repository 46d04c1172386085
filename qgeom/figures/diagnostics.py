"""Figures of the diagnostics: Proposition 1's assumptions, Proposition 2′'s gap, the curvature
spectrum, the post-PTQ landscape and invariance under symmetries. Each draws a table:
:func:`proposition1` the run's ``geometry`` table (and
:func:`~qgeom.figures.checkpoint_tables.quadratic_model_table`), :func:`proposition2_gap` the
``geometry`` table, the others the table of the same name in :mod:`qgeom.figures.checkpoint_tables`."""

from __future__ import annotations

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from qgeom.figures.alignment import ALIGNMENT_LABELS
from qgeom.figures.selection import select_rows
from qgeom.figures.theme import (
    CB, DOUBLE, SETTING_COLORS, SINGLE, caption, colors_for, new_figure, relabel, style, task_colors,
)

FP_AT, STE_AT = r"fp at $\theta_R$", r"STE at $\theta_{R,\mathrm{QAT}}$"


def proposition1_table(geometry: pd.DataFrame, quadratic: pd.DataFrame | None = None, bits: int | None = None,
                       scope: str | None = None) -> pd.DataFrame:
    """Everything :func:`proposition1` draws, long, with a ``panel`` column:

    * ``K_eigenvalue``: receiver, alignment (metric_objective), index j, value λ_j(K), rel = λ_j / max|λ|;
    * ``stationarity``: receiver, donor, objective, value = ρ_Dᵀ∇L / ρ_DᵀGρ_D (same objective);
    * ``quadratic``: the rows of :func:`quadratic_model_table` (lam, measured, quadratic, …).
    """
    g, bits, scope = select_rows(geometry, bits, scope)
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
                 scope: str | None = None, receiver: str | None = None, *, palette=None,
                 title: str | None = None, xlabel: str | None = None, ylabel: str | None = None) -> Figure:
    """Proposition 1's assumptions, three panels (data: :func:`proposition1_table`):

    (a) eigenvalues of each Gram K = VᵀMV (÷ its largest; log, symlog if any is ≤ 0) per
        receiver — positive for GGN, possibly negative for the Hessian;
    (b) stationarity: ρ_Dᵀ∇L / ρ_DᵀGρ_D per receiver for the fp (at θ_R) and STE (at θ_R,QAT)
        objectives — how far the gradient term moves the quadratic model's minimiser in λ;
        small when the expansion point is stationary along ρ_D;
    (c) measured L(Q_b(θ_R + λρ_D)) (solid) vs the quadratic model (dashed) along λ for one
        receiver (``quadratic`` from :func:`quadratic_model_table`; panel omitted without it).

    ``palette``: colours of the metrics M in (a) (keys ``euclidean``, ``ggn_fp``, …) and of the
    donor tasks in (c).
    """
    tab = proposition1_table(geometry, quadratic, bits, scope)
    eig, st, q = (tab[tab.panel == k] for k in ("K_eigenvalue", "stationarity", "quadratic"))
    recs = sorted(set(eig.receiver) | set(st.receiver))
    panels = 3 if len(q) else 2
    fig = new_figure(DOUBLE, 2.7)
    with style():
        axes = fig.subplots(1, panels)
        order = [a for a in ALIGNMENT_LABELS if a in set(eig.alignment)]
        sns.stripplot(eig, x="receiver", y="rel", hue="alignment", hue_order=order, order=recs, dodge=True,
                      ax=axes[0], size=2.5, jitter=False, palette=colors_for(order, palette))
        if (eig.rel <= 0).any():
            axes[0].set_yscale("symlog", linthresh=1e-3)
            axes[0].axhline(0, color="0.3", lw=0.6)
        else:
            axes[0].set_yscale("log")
        axes[0].set_ylabel("eigenvalue of $K$ ÷ largest |eigenvalue|")
        axes[0].set_title("(a) spectrum of $K = V^\\top M V$")
        handles, _ = axes[0].get_legend_handles_labels()
        axes[0].legend(handles, [ALIGNMENT_LABELS.get(a, a).replace(" cosine", "") for a in order], title="$M$")
        st = st.assign(point=st.objective.map({"fp": FP_AT, "ste": STE_AT}))
        sns.stripplot(st, x="receiver", y="value", hue="point", hue_order=[FP_AT, STE_AT], order=recs,
                      dodge=True, ax=axes[1], size=2.5, jitter=0.1, palette=[SETTING_COLORS["FT"], SETTING_COLORS["QAT"]])
        axes[1].axhline(0, color="0.3", lw=0.6)
        axes[1].set_yscale("symlog", linthresh=1e-2)
        axes[1].set_ylabel(r"$\rho_D^\top\nabla L \,/\, \rho_D^\top G\rho_D$ (shift of $\lambda^*$)")
        axes[1].set_title(r"(b) stationarity along $\rho_D$")
        axes[1].legend()
        for ax in axes[:2]:
            ax.set_xlabel("receiver")
            ax.tick_params(axis="x", labelrotation=30 if len(recs) > 4 else 0)
        if panels == 3:
            ax = axes[2]
            r = receiver if receiver is not None else sorted(q.receiver.unique())[0]
            q = q[q.receiver == r]
            donors = sorted(q.donor.unique())
            colors = colors_for(donors, palette, task_colors(donors))
            for d, gd in q.groupby("donor"):
                own = " (own)" if d == r else ""
                ax.plot(gd.lam, gd.measured, "-o", ms=2.5, color=colors[d], label=f"ρ from {d}{own}")
                ax.plot(gd.lam, gd.quadratic, "--", color=colors[d], lw=0.9)
                if own and (gd.lam == 1.0).any():  # the expansion point lies on the own ρ_R's path, at λ = 1
                    ax.plot([1.0], [gd.measured[gd.lam == 1.0].iloc[0]], "*", ms=8, color="black", zorder=5,
                            gid="expansion_point", label=r"expansion point $\theta_R + \rho_R$")
            ax.set_xlabel(r"$\lambda$ in $\theta_R + \lambda\rho_D$")
            ax.set_ylabel("post-PTQ loss on probe set (nats)")
            ax.set_title("(c) measured —, model --")
            ax.legend(title=f"receiver {r}")
            caption(fig, r"(c) The quadratic model is expanded at $\theta_R + \rho_R$ (the receiver's own QAT "
                         r"backbone, ★), which the path $\theta_R + \lambda\rho_D$ passes only for the own $\rho_R$ "
                         r"at $\lambda = 1$. The gap at $\lambda = 0$ is the distance $\|\rho_R\|$ from that point, "
                         "not a failure of the model where it is expanded.")
        fig.suptitle(f"Proposition 1 diagnostics ({tab.bits.iloc[0]} bits, {tab.scope.iloc[0]} scope)")
    return relabel(fig, title, xlabel, ylabel)


def proposition2_gap_table(geometry: pd.DataFrame, metric: str = "ggn", bits: int | None = None,
                           scope: str | None = None) -> pd.DataFrame:
    """Proposition 2′ per off-diagonal pair (mean over seeds), sorted by R − κ: the gap between the
    loss recovery R and κ = cos²_M split into the bound's terms ÷ G_R (curvature, gradient, cubic
    remainder, PTQ-vs-surrogate mismatch; :func:`qgeom.curvature.bounds.gap_decomposition`)."""
    from qgeom.curvature.bounds import gap_decomposition  # lazy: torch only for this table (figures import without it)

    g, bits, scope = select_rows(geometry, bits, scope)
    parts = []
    for seed, gs in g.groupby("seed"):
        parts.append(gap_decomposition(gs, metric).dropna(subset=["R", "kappa"]))
    tab = pd.concat(parts) if parts else pd.DataFrame(columns=["donor", "receiver", "R", "kappa"])
    cols = [c for c in ("R", "kappa", "curvature", "gradient", "remainder", "surrogate", "explained") if c in tab]
    tab = tab.groupby(["donor", "receiver"], as_index=False)[cols].mean()
    tab = tab.assign(gap=tab.R - tab.kappa).sort_values("gap").reset_index(drop=True)
    return tab.assign(bits=bits, scope=scope, metric=metric)


def proposition2_gap(geometry: pd.DataFrame, metric: str = "ggn", bits: int | None = None,
                     scope: str | None = None, *, palette=None, title: str | None = None, xlabel: str | None = None, ylabel: str | None = None) -> Figure:
    """Proposition 2′ on a run: for each off-diagonal pair, the measured gap R − cos²_M (black
    dots) stacked into the bound's terms ÷ G_R: curvature (H − M), gradient (a non-stationary
    expansion point), cubic remainder, and the PTQ loss against its smooth STE surrogate
    (``palette``: colours per term, keys ``curvature``, ``gradient``, ``remainder``, ``surrogate``)."""
    tab = proposition2_gap_table(geometry, metric, bits, scope)
    terms = ["curvature", "gradient", "remainder", "surrogate"]
    c = colors_for(terms, palette, dict(zip(terms, CB[:4])))
    parts = [("curvature", "curvature $(H - M)$", c["curvature"]),
             ("gradient", "gradient $s^\\top(\\ldots)$", c["gradient"]),
             ("remainder", "cubic remainder", c["remainder"]), ("surrogate", "PTQ loss vs STE surrogate", c["surrogate"])]
    fig = new_figure(DOUBLE, 3.0)
    with style():
        ax = fig.subplots()
        x = np.arange(len(tab))
        pos, neg = np.zeros(len(tab)), np.zeros(len(tab))
        for col, label, color in parts:
            if col not in tab:
                continue
            v = tab[col].fillna(0).to_numpy()
            ax.bar(x, v, bottom=np.where(v >= 0, pos, neg), color=color, label=label, width=0.8)
            pos, neg = pos + np.clip(v, 0, None), neg + np.clip(v, None, 0)
        ax.plot(x, tab.gap, "o", color="black", ms=3.5, label=f"$R - \\cos^2_{{{metric}}}$")
        ax.axhline(0, color="0.3", lw=0.8)
        ax.set_xticks(x, [f"{d}→{r}" for d, r in zip(tab.donor, tab.receiver)], rotation=70)
        ax.set_ylabel("share of the receiver's gain $G_R$")
        span = float(np.nanmax(np.abs(tab.gap))) if len(tab) else 0.0
        symlog = span > 20  # pairs whose receiver gains ~0 from ρ_R (R = x/≈0) would flatten the rest
        if symlog:
            ax.set_yscale("symlog", linthresh=1.0)
        ax.set_title(f"Proposition 2′: $R - \\cos^2$ by term ({tab.bits.iloc[0] if len(tab) else ''} bits)")
        fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=3)
        med = float(np.nanmedian(tab.explained)) if "explained" in tab and len(tab) else float("nan")
        caption(fig, f"Pairs sorted by $R - \\kappa$, means over seeds; terms at the STE surrogate's point "
                     f"$Q_b(\\theta_{{R,QAT}})$. Median share of the gap explained by curvature + gradient: {med:.0%}."
                     + (" Symmetric-log axis (linear within ±1): some receivers gain almost nothing from their own "
                        "$\\rho_R$, so R divides by nearly 0." if symlog else ""))
    return relabel(fig, title, xlabel, ylabel)


def spectrum(table: pd.DataFrame, *, palette=None, title: str | None = None, xlabel: str | None = None, ylabel: str | None = None) -> Figure:
    """(a) SLQ spectral density (log scale) with the top Lanczos eigenvalues as ticks;
    (b) share of each ρ's squared norm on each top eigenvector u_j (at x = λ_j);
    (c) cumulative share of ρᵀMρ carried by the top-j eigendirections. ρ_R in black.

    Vectors whose share is undefined (ρᵀMρ ≤ 0) are left out of (c) and its legend, and the
    caption says so; shares above 1 (the top directions carry more than ρᵀMρ, because the rest
    of an indefinite M contributes negatively) are explained in the caption. ``palette``:
    colours per task (ρ_R stays black)."""
    r = table.receiver.iloc[0]
    dens, eig = table[table.part == "density"], table[table.part == "eigenpair"]
    vecs = list(dict.fromkeys(table[table.part == "norm_share"].vector))
    tasks = [v[5:-1] for v in vecs]  # "ρ_D (task)" → task: the colours of the other figures
    colors = colors_for(tasks, palette, task_colors(tasks))
    col = {v: ("black" if v.startswith("ρ_R") else colors[v[5:-1]]) for v in vecs}
    fig = new_figure(DOUBLE, 2.7)
    dropped, above_one = [], False
    with style():
        axes = fig.subplots(1, 3)
        ax = axes[0]
        ax.plot(dens.eigenvalue, np.maximum(dens.value, 1e-12), color=CB[0], lw=1.2)
        ax.set_yscale("log")
        ax.set_ylim(max(dens.value.max() * 1e-7, 1e-12), dens.value.max() * 3)
        for lam in eig.eigenvalue:
            ax.axvline(lam, color=CB[3], lw=0.8, alpha=0.7, ymax=0.12)
        ax.set_xlabel("eigenvalue of M")
        ax.set_ylabel("spectral density (SLQ)")
        ax.set_title(f"(a) {table.metric.iloc[0]} spectrum" + (f", {r}" if r else ""))
        for v in vecs:
            d = table[(table.part == "norm_share") & (table.vector == v)]
            own = v.startswith("ρ_R")
            label = _math_vector(v)
            axes[1].plot(d.eigenvalue, d.value, "o" if own else ".", ls="-" if own else ":", color=col[v], label=label,
                         ms=4 if own else 3, lw=1.2 if own else 0.7, zorder=3 if own else 2)
            c = table[(table.part == "curvature_share") & (table.vector == v)].sort_values("index")
            if not np.isfinite(c.value).any():  # ρᵀMρ ≤ 0: no share to draw, and no legend entry
                dropped.append(label)
                continue
            cum = c.value.cumsum()
            above_one |= bool((cum > 1 + 1e-9).any())
            axes[2].plot(c["index"] + 1, cum, "-o" if own else "-", color=col[v], ms=2.5,
                         lw=1.6 if own else 0.9, label=label)
        axes[1].set_yscale("log")
        axes[1].set_xlabel(r"eigenvalue $\lambda_j$ of the top eigenvector $u_j$")
        axes[1].set_ylabel(r"$(u_j^\top\rho)^2 \,/\, \|\rho\|^2$")
        axes[1].set_title("(b) norm share, top eigenvectors")
        axes[1].legend(fontsize=7, loc="lower right")
        axes[2].set_xlabel("top eigendirections $j$")
        axes[2].set_ylabel(r"$\sum_{i\leq j}\, \lambda_i (u_i^\top\rho)^2 \,/\, \rho^\top M \rho$")
        axes[2].set_title("(c) cumulative share")
        axes[2].set_ylim(bottom=0)
        if above_one:
            axes[2].axhline(1, color="0.4", lw=0.6, ls=":")
        notes = []
        if dropped:
            notes.append(f"(c) leaves out {', '.join(dropped)}: " + r"$\rho^\top M\rho \leq 0$, its share is undefined.")
        if above_one:
            notes.append("(c) Shares above 1 (dotted line): the top eigendirections carry more than "
                         + r"$\rho^\top M\rho$, because the rest of the indefinite $M$ adds negative curvature.")
        if notes:
            caption(fig, " ".join(notes))
        where = ([f"{table.bits.iloc[0]} bits"] if table.bits.iloc[0] else []) + [f"{table.scope.iloc[0]} scope",
                                                                                 f"{table.objective.iloc[0]} objective"]
        fig.suptitle(f"Where quantization vectors put their energy ({', '.join(where)})")
    return relabel(fig, title, xlabel, ylabel)


def _math_vector(v: str) -> str:
    """"ρ_D (task)" → mathtext "$\\rho_D$ (task)": no literal underscore in a label."""
    head, _, rest = v.partition(" ")
    return (f"$\\rho_{{{head[2:]}}}$ {rest}" if head.startswith("ρ_") else v).strip()


def landscape(table: pd.DataFrame, *, cmap="viridis", title: str | None = None, xlabel: str | None = None, ylabel: str | None = None) -> Figure:
    """Filled contours of post-PTQ Top-1 over (a, b): θ_R + aρ_D + bρ_R in the colour map ``cmap``;
    markers at θ_R (0, 0), the zero-shot patch (1, 0) and the own QAT vector (0, 1)."""
    r, d = table.receiver.iloc[0], table.donor.iloc[0]
    grid = table.pivot_table(index="b", columns="a", values="ptq_top1")
    fig = new_figure(SINGLE, 3.4)
    with style():
        ax = fig.add_subplot()
        A, B = np.meshgrid(grid.columns.to_numpy(), grid.index.to_numpy())
        z = grid.to_numpy()
        lo, hi = np.nanmin(z), np.nanmax(z)
        levels = MaxNLocator(12).tick_values(lo, hi if hi > lo else lo + 1)  # round numbers, within 0–100 %
        levels = np.unique(np.clip(levels, 0, 100)) if 0 <= lo and hi <= 100 else levels
        cs = ax.contourf(A, B, z, levels=levels, cmap=cmap)
        ax.contour(A, B, z, levels=cs.levels, colors="white", linewidths=0.3, alpha=0.6)
        fig.colorbar(cs, ax=ax, label=f"post-PTQ Top-1 on {table.split.iloc[0]} (%)")
        for (x, y), m, lab in (((0, 0), "o", r"$\theta_R$ (FT + PTQ)"), ((1, 0), "*", r"$\theta_R + \rho_D$ (zero-shot)"),
                               ((0, 1), "s", r"$\theta_R + \rho_R$ (own QAT)")):
            ax.plot([x], [y], m, color="white", mec="black", ms=8 if m == "*" else 5, label=lab, ls="")
        ax.axhline(0, color="white", lw=0.6, ls="--")
        ax.axvline(0, color="white", lw=0.6, ls="--")
        ax.set_xticks(grid.columns[:: max(1, len(grid.columns) // 7)])
        ax.set_yticks(grid.index[:: max(1, len(grid.index) // 7)])
        ax.set_xlabel(rf"$a$ (coefficient of $\rho_D$, donor {d})")
        ax.set_ylabel(rf"$b$ (coefficient of $\rho_R$, receiver {r})")
        ax.set_title(f"Post-PTQ landscape, receiver {r} ({table.bits.iloc[0]} bits)")
        fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=2)
    return relabel(fig, title, xlabel, ylabel)


def invariance(table: pd.DataFrame, *, palette=None, title: str | None = None, xlabel: str | None = None, ylabel: str | None = None) -> Figure:
    """(a) change of the cosine of (gρ_D, gρ_R) from its value at s = 0, metric (solid) and
    Euclidean (dashed), against the strength s of a random element g of each kind: the metric
    line stays at 0, the Euclidean one drifts (legend: both cosines at s = 0);
    (b) post-PTQ Top-1 (val) of gθ_R (solid) and g(θ_R + ρ_D) (dashed) under the same elements.

    Reference points: s = 0 is the identity for the scaling kinds, but a random *orthogonal*
    map (κ = 1) for the GL-mixing kinds (``*_mixing``), whose s = 0 markers are hollow; PTQ does
    not commute with it, so their curves in (b) start apart. The caption says so. ``palette``:
    colours per kind."""
    kinds = list(dict.fromkeys(table.kind))
    pal = colors_for(kinds, palette, dict(zip(kinds, [CB[i] for i in (0, 3, 2, 4, 5, 8, 9)])))
    metric = table.metric.iloc[0].upper() if "metric" in table else "M"
    fig = new_figure(DOUBLE, 2.9)
    orthogonal = [k for k in kinds if k.endswith("_mixing")]
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
                ax.plot(e.strength, y, ls, marker="o", ms=2.5, color=pal[k], lw=1.2)
                if k in orthogonal:  # s = 0 is an orthogonal map here, not the identity
                    ax.plot(e.strength.iloc[:1], y[:1], "o", ms=5, mfc="white", mec=pal[k], mew=0.9, zorder=4,
                            gid="orthogonal_start")
            labels.append(f"{k.replace('_', ' ')} (cos at s = 0: {metric} {at0['metric_cosine']:.2f}, "
                          f"Eucl. {at0['euclidean_cosine']:.2f})")
        axes[0].axhline(0, color="0.3", lw=0.6)
        for ax in axes:
            ax.set_xlabel(r"strength $s$ (log condition number / log-spread)")
        axes[0].set_ylabel(r"cos($g\rho_D, g\rho_R$) − cos at $s = 0$")
        axes[0].set_title(rf"(a) {metric} cosine at $g\theta_R$ (—) vs Euclidean (--)")
        axes[1].set_ylabel("post-PTQ Top-1 on val (%)")
        axes[1].set_title(r"(b) PTQ of $g\theta_R$ (—) and $g(\theta_R + \rho_D)$ (--)")
        handles = [Line2D([], [], color=pal[k], lw=2) for k in kinds]
        handles += [Line2D([], [], color="0.3", ls="-"), Line2D([], [], color="0.3", ls="--")]
        fig.legend(handles, labels + ["(a) metric cosine, (b) receiver", "(a) Euclidean cosine, (b) patched"],
                   loc="outside lower center", ncols=2)
        fig.suptitle(f"Invariance under random ViT symmetries (receiver {table.receiver.iloc[0]}, "
                     f"donor {table.donor.iloc[0]}, {table.bits.iloc[0]} bits)")
        note = (r"Cosines over the tensors $g$ acts on. $s = 0$ is the identity for the scaling kinds"
                + (f"; for {', '.join(k.replace('_', ' ') for k in orthogonal)} it is a random orthogonal map "
                   r"($\kappa = 1$, hollow markers), which PTQ does not commute with: in (b) those curves start "
                   "apart from the identity's." if orthogonal else "."))
        caption(fig, note)
    return relabel(fig, title, xlabel, ylabel)

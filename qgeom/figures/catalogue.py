"""Every figure of a run by name, with its file name, its table and its drawing: the one list that
``qgeom figures`` and the notebooks both draw from, so that they write the same files (the same
names, the same cached tables, identical CSVs).

``fig, table = draw("baselines", RUN, OUT)`` draws one figure of a run — the figure and the
pandas table it was drawn from — and, with ``OUT``, writes ``OUT/baselines_2bit.{pdf,png,csv}``
exactly as ``qgeom figures RUN --out OUT`` does (the CSV adds the run's fingerprint,
:func:`~qgeom.figures.files.run_fingerprint`). Keywords of the figure function restyle it:
``draw("alignment_heatmaps", RUN, cmap="viridis", title="…")``. File names carry the bit width
(``_2bit``) and a scope other than ``backbone`` (``_2bit_quantized``; not for ``baselines``,
which has no scope). Checkpoint figures cache their tables in ``OUT``
(:func:`~qgeom.figures.files.cached_table`).

:data:`COMPARISONS` are the figures across settings (runs × bit widths,
:func:`~qgeom.figures.comparison.settings`), written as ``runs_NAME``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import pandas as pd
from matplotlib.figure import Figure

import qgeom.figures
from qgeom.figures import accuracy as A
from qgeom.figures import alignment as AL
from qgeom.figures import comparison as C
from qgeom.figures import controls as CT
from qgeom.figures import diagnostics as D
from qgeom.figures import sweeps as S
from qgeom.figures.files import cached_table, load_run, run_fingerprint, save_figure
from qgeom.figures.selection import choose_scope


@dataclass
class Context:
    """One run at one bit width and scope, with where its checkpoint tables are cached."""

    run_dir: Path
    tables: dict[str, pd.DataFrame]
    bits: int
    scope: str
    out: Path | None = None
    recompute: bool = False
    overrides: dict[str, dict] = field(default_factory=dict)  # cache name → smaller parameters (tests)

    def cached(self, name: str, fn: Callable) -> pd.DataFrame:
        """``fn``'s table for this run, cached in ``out`` as ``NAME`` (recomputed with ``recompute``)."""
        if self.recompute and self.out is not None:
            (self.out / f"{name}.params.json").unlink(missing_ok=True)
        return cached_table(self.out, name, self.run_dir, fn, bits=self.bits, scope=self.scope,
                            **self.overrides.get(fn.__name__, {}))

    def suffix(self, scoped: bool = True) -> str:
        return f"_{self.bits}bit" + ("" if self.scope == "backbone" or not scoped else f"_{self.scope}")


@dataclass(frozen=True)
class Spec:
    """A figure: what it shows, the run tables it needs, its table and its drawing (``draw(ctx,
    table, **style)``: the figure function's keyword arguments, ``cmap``/``palette``, ``title``, …)."""

    name: str
    about: str
    needs: tuple[str, ...]
    table: Callable[[Context], pd.DataFrame]
    draw: Callable[..., Figure]
    checkpoint: bool = False  # computes on the run's checkpoints (cached; skipped by --cheap)
    scoped: bool = True  # the file name carries a non-default scope
    when: Callable[[Context], bool] = lambda c: True
    reads: tuple[str, ...] = ()  # run files it reads beside its needed tables

    def file_name(self, ctx: Context) -> str:
        return self.name + ctx.suffix(self.scoped)

    def artifacts(self) -> list[str]:
        """The run's files the figure is drawn from (relative paths): accuracy.csv (which chose
        the bit width and scope), its tables, and for a checkpoint figure ``inputs.json`` (the
        run's record of every checkpoint's content hash)."""
        files = ["accuracy.csv", *(f"{n}.csv" for n in self.needs), *self.reads]
        return list(dict.fromkeys(files + (["inputs.json"] if self.checkpoint else [])))


def _t(ctx: Context, name: str):
    return ctx.tables.get(name)


def _table_fn(name: str) -> Callable:
    """A checkpoint-table function looked up when called (``qgeom.figures.NAME``), so that one
    replaced there — smaller grids in a test — is the one used."""
    return getattr(qgeom.figures, name)


def _quadratic(ctx: Context) -> pd.DataFrame:
    return ctx.cached(f"proposition1{ctx.suffix()}_quadratic", _table_fn("quadratic_model_table"))


def _cached(name: str, fn: str) -> Callable[[Context], pd.DataFrame]:
    return lambda ctx: ctx.cached(name + ctx.suffix(), _table_fn(fn))


_ACC, _PAIRS, _REC = "accuracy", "pairs", "receivers"
SPECS: list[Spec] = [
    Spec("baselines", "Top-1 per task: FT, FT+PTQ, QAT, QAT+PTQ", (_ACC,),
         lambda c: A.baseline_table(_t(c, _ACC), c.bits), lambda c, t, **k: A.baseline_bars(_t(c, _ACC), c.bits, **k),
         scoped=False),
    Spec("delta_heatmaps", "donor × receiver Δ post-PTQ Top-1 at λ = 1 and λ_val", (_PAIRS,),
         lambda c: A.delta_table(_t(c, _PAIRS), c.bits, c.scope),
         lambda c, t, **k: A.delta_heatmaps(_t(c, _PAIRS), c.bits, c.scope, **k)),
    Spec("lambda_curves", "post-PTQ Top-1 vs λ per receiver, λ* marked (outside: arrow and value)", (_ACC, _PAIRS),
         lambda c: S.lambda_table(_t(c, _ACC), _t(c, _PAIRS), c.bits, c.scope),
         lambda c, t, **k: S.lambda_curves(_t(c, _ACC), _t(c, _PAIRS), c.bits, c.scope, **k)),
    Spec("lambda_sensitivity", "Δ Top-1 per λ pooled over pairs (median, IQR); histogram of the tuned λ",
         (_ACC, _PAIRS), lambda c: S.lambda_sensitivity_table(*_one_bit(c), c.scope),
         lambda c, t, **k: S.lambda_sensitivity(*_one_bit(c), c.scope, **k)),
    Spec("lambda_calibration", "λ chosen on validation vs λ* from the metric, per pair", (_PAIRS,),
         lambda c: S.lambda_calibration_table(_t(c, _PAIRS), c.bits, c.scope),
         lambda c, t, **k: S.lambda_calibration(_t(c, _PAIRS), c.bits, c.scope, **k),
         when=lambda c: any(k.startswith("lam_star_") for k in c.tables[_PAIRS].columns)),
    Spec("proportions", "fraction of pairs that improve / stay neutral / degrade, λ = 1 and λ_val", (_PAIRS,),
         lambda c: C.proportion_table(_pairs_at(c), c.scope),
         lambda c, t, **k: C.proportion_bars(_pairs_at(c), c.scope, **k)),
    Spec("alignment_heatmaps", "cosines of ρ_D and ρ_R per metric", (_PAIRS,),
         lambda c: AL.alignment_table(_t(c, _PAIRS), c.bits, c.scope),
         lambda c, t, **k: AL.alignment_heatmaps(_t(c, _PAIRS), c.bits, c.scope, **k),
         when=lambda c: any(k.startswith("cos_") for k in c.tables[_PAIRS].columns)),
    Spec("alignment_scatter", "alignment vs gain and loss recovery, Spearman and QAP p", (_PAIRS,),
         lambda c: AL.alignment_scatter_table(_t(c, _PAIRS), _t(c, "correlations"), c.bits, c.scope),
         lambda c, t, **k: AL.alignment_scatter(_t(c, _PAIRS), _t(c, "correlations"), c.bits, c.scope, **k),
         when=lambda c: any(k.startswith("cos_") for k in c.tables[_PAIRS].columns), reads=("correlations.csv",)),
    Spec("radar", "FT+PTQ, best-donor patch + PTQ at λ = 1 and at λ_val, QAT+PTQ per task", (_REC,),
         lambda c: A.radar_table(_t(c, _REC), c.bits, c.scope, _t(c, _PAIRS)),
         lambda c, t, **k: A.radar(_t(c, _REC), c.bits, c.scope, _t(c, _PAIRS), **k), reads=("pairs.csv",)),
    Spec("improvement", "(patch+PTQ − FT+PTQ) / QAT+PTQ per task", (_REC,),
         lambda c: A.improvement_table(_t(c, _REC), c.bits, c.scope),
         lambda c, t, **k: A.improvement_bars(_t(c, _REC), c.bits, c.scope, **k)),
    Spec("controls", "donors' gain beside every control's per receiver; grid-only / values-only split", (_PAIRS,),
         lambda c: CT.controls_table(_t(c, _PAIRS), c.bits, c.scope),
         lambda c, t, **k: CT.controls(_t(c, _PAIRS), c.bits, c.scope, **k),
         when=lambda c: any(k in c.tables[_PAIRS].columns for k in ("gain_row_permuted", "gain_grid_only"))),
    Spec("proposition2", "Proposition 2′: R − cos²_GGN split into curvature, gradient, remainder, surrogate",
         ("geometry",), lambda c: D.proposition2_gap_table(_t(c, "geometry"), "ggn", c.bits, c.scope),
         lambda c, t, **k: D.proposition2_gap(_t(c, "geometry"), "ggn", c.bits, c.scope, **k),
         when=lambda c: (c.tables["geometry"].objective == "prop2").any()),
    Spec("proposition1", "Proposition 1: K spectrum, stationarity, measured vs quadratic loss along λ",
         ("geometry",), lambda c: D.proposition1_table(_t(c, "geometry"), _quadratic(c), c.bits, c.scope),
         lambda c, t, **k: D.proposition1(_t(c, "geometry"), _quadratic(c), c.bits, c.scope, **k), checkpoint=True),
    Spec("spectrum", "Hessian SLQ density at a receiver; ρ energy on top eigenvectors", (),
         _cached("spectrum", "spectrum_table"), lambda c, t, **k: D.spectrum(t, **k), checkpoint=True),
    Spec("landscape", "post-PTQ Top-1 on the plane θ_R + aρ_D + bρ_R", (),
         _cached("landscape", "landscape_table"), lambda c, t, **k: D.landscape(t, **k), checkpoint=True,
         reads=("receivers.csv",)),
    Spec("invariance", "Euclidean vs metric cosine and PTQ under growing random symmetries", (),
         _cached("invariance", "invariance_table"), lambda c, t, **k: D.invariance(t, **k), checkpoint=True),
]
BY_NAME = {s.name: s for s in SPECS}


def _one_bit(c: Context) -> tuple[dict, dict]:
    acc, pairs = _t(c, _ACC), _t(c, _PAIRS)
    label = f"{c.bits} bits"
    return {label: acc[acc.bits == c.bits]}, {label: pairs[pairs.bits == c.bits]}


def _pairs_at(c: Context) -> dict:
    p = _t(c, _PAIRS)
    return {f"{c.bits} bits": p[p.bits == c.bits]}


def context(run_dir: str | Path, out: str | Path | None = None, *, bits: int | None = None,
            scope: str | None = None, tables: dict | None = None, recompute: bool = False,
            overrides: dict | None = None) -> Context:
    """The run's tables at ``bits`` (default: the lowest) and ``scope`` (default: backbone)."""
    T = tables if tables is not None else load_run(run_dir)
    acc = T["accuracy"]
    b = int(bits) if bits is not None else int(min(acc.bits))
    sc = choose_scope(acc[acc.method == "patch"], scope)
    return Context(Path(run_dir), T, b, sc, None if out is None else Path(out), recompute, dict(overrides or {}))


def available(ctx: Context, checkpoint: bool = True) -> list[Spec]:
    """The figures this run can draw (its tables exist; checkpoint ones unless ``checkpoint=False``)."""
    return [s for s in SPECS if all(n in ctx.tables for n in s.needs) and (checkpoint or not s.checkpoint)
            and s.when(ctx)]


class Drawn(NamedTuple):
    """A drawn figure: the figure, the table it was drawn from, its file name, and (when saved)
    the run's fingerprint (:func:`~qgeom.figures.files.run_fingerprint`) written into its CSV."""

    fig: Figure
    table: pd.DataFrame
    name: str
    fingerprint: dict | None = None


def draw_spec(spec: Spec, ctx: Context, **style) -> Drawn:
    """Draw ``spec`` for ``ctx`` (``style``: keywords of its figure function); save it into
    ``ctx.out`` when set, the CSV carrying the run's fingerprint."""
    table = spec.table(ctx)
    fig = spec.draw(ctx, table, **style)
    name = spec.file_name(ctx)
    fp = None
    if ctx.out is not None:
        fp = run_fingerprint(ctx.run_dir, spec.artifacts())
        save_figure(fig, table, ctx.out, name, fingerprint=fp)
    return Drawn(fig, table, name, fp)


def draw(name: str, run_dir: str | Path, out: str | Path | None = None, *, bits: int | None = None,
         scope: str | None = None, tables: dict | None = None, recompute: bool = False,
         **style) -> tuple[Figure, pd.DataFrame]:
    """Figure ``name`` of the run and the pandas table it was drawn from: ``(fig, table)`` (and,
    with ``out``, its files, named as ``qgeom figures`` names them). ``style``: keywords of the
    figure function — ``cmap`` or ``palette``, ``title``, ``xlabel``, ``ylabel``."""
    if name not in BY_NAME:
        raise ValueError(f"no figure {name!r}; known: {', '.join(BY_NAME)}")
    drawn = draw_spec(BY_NAME[name], context(run_dir, out, bits=bits, scope=scope, tables=tables,
                                             recompute=recompute), **style)
    return drawn.fig, drawn.table


# --------------------------------------------------------------------------------------------
# across settings
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    name: str
    about: str
    table: Callable
    draw: Callable


def _acc_pairs(runs):
    return ({k: T["accuracy"] for k, T in runs.items()}, {k: T["pairs"] for k, T in runs.items() if "pairs" in T})


COMPARISONS: list[Comparison] = [
    Comparison("runs_baselines", "FT, FT+PTQ, QAT, QAT+PTQ per setting (mean over tasks, each task a dot)",
               C.runs_baseline_table, C.runs_baselines),
    Comparison("runs_improvement", "normalized improvement per task, settings overlaid",
               C.runs_improvement_table, C.runs_improvement),
    Comparison("runs_delta_heatmaps", "Δ post-PTQ Top-1 at λ = 1, one heatmap per setting",
               C.runs_delta_table, C.runs_delta_heatmaps),
    Comparison("runs_proportions", "pairs that improve / stay neutral / degrade, per setting",
               lambda r: C.proportion_table({k: T["pairs"] for k, T in r.items()}),
               lambda r: C.proportion_bars({k: T["pairs"] for k, T in r.items()})),
    Comparison("runs_lambda_sensitivity", "Δ Top-1 per λ pooled over pairs, per setting; tuned λ",
               lambda r: S.lambda_sensitivity_table(*_acc_pairs(r)), lambda r: S.lambda_sensitivity(*_acc_pairs(r))),
]

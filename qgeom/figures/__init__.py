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
operator_spectrum_table    the same for any curvature operator and named vectors (your own model)
landscape_table            post-PTQ Top-1 on the plane θ_R + aρ_D + bρ_R
invariance_table           Euclidean vs metric cosine and PTQ Top-1 under random symmetries
=========================  ==============================================================

Modules, one purpose each (every public name is re-exported here):

=========================  ==============================================================
module                     what it holds
=========================  ==============================================================
theme                      the look: style (a with block), use_style (global), palette,
                           setting/task colours, colors_for, relabel, bare figure (new_figure),
                           lighter colour, donor × receiver heatmap (pair_heatmap)
cells                      heatmap cell numbers fitted to their cells when drawn (never touching)
files                      load_run, read_table, save_figure, cached_table, run_fingerprint
selection                  choose_bits, choose_scope, select_rows (one bit width, one scope per
                           figure); pair_frame (donor × receiver matrix of a column)
accuracy                   baselines, Δ heatmaps, radar (λ = 1 and tuned webs), normalized improvement
sweeps                     λ curves, λ sensitivity pooled over pairs, λ calibration (λ_val vs λ*)
comparison                 across settings (runs × bit widths): baselines, improvement, Δ heatmaps,
                           stacked proportions; settings labelled from each run's config
catalogue                  every figure by name and file name: what ``qgeom figures`` and the
                           notebooks both draw (``draw("baselines", RUN, OUT)``)
alignment                  alignment heatmaps and scatter (cosine vs transfer)
checkpoint_tables          the four tables above, computed on checkpoints
diagnostics                Proposition 1, spectrum, landscape and invariance figures
=========================  ==============================================================

Print: every figure is 3.25 in (one column) or 6.75 in (page) wide, text ≥ 7 pt, symbols in
mathtext (:mod:`~qgeom.figures.theme`); notes a reader needs (reference points, what was left
out) are in a caption under the figure.

Restyling: every figure function takes ``cmap=`` (figures with a colour scale: heatmaps, the
landscape) or ``palette=`` (figures of categories: a palette name, a list of colours, or a
mapping key → colour overriding some of the defaults, :func:`colors_for`), and ``title=``,
``xlabel=``, ``ylabel=`` (:func:`relabel`); :func:`draw` passes them on and returns ``(fig,
table)``, the figure and the pandas table it was drawn from. Text added to a returned figure
later takes matplotlib's rcParams: call :func:`use_style` once (it sets qgeom's look globally)
or add it inside ``with style():``.

Provenance: every CSV :func:`draw` (with an output directory) and ``qgeom figures`` write carries
``run_config_sha256`` and ``run_fingerprint`` (:func:`run_fingerprint`: the run's configuration
and the content hashes of the files the figure read); ``manifest.json`` lists them per run.

Conventions: Top-1 in percent, gains in percentage points, losses in nats (mean cross-entropy);
tasks in sorted order everywhere; seeds averaged (bars show ± 1 s.d. when there are several);
one bit width and one scope per figure (default: the lowest bits, the ``backbone`` scope, the
paper's). Colours: seaborn's colour-blind palette for categories (blue = fine-tuned receiver,
orange = QAT, green = patched), ColorBrewer RdBu / PuOr for signed matrices, viridis for
accuracies.
"""

from qgeom.figures.accuracy import (
    BASELINE_SETTINGS, baseline_bars, baseline_table, delta_heatmaps, delta_table, improvement_bars,
    improvement_table, radar, radar_table,
)
from qgeom.figures.alignment import (
    ALIGNMENT_LABELS, TARGET_LABELS, TARGET_SHORT, alignment_heatmaps, alignment_scatter, alignment_scatter_table,
    alignment_table,
)
from qgeom.figures.catalogue import COMPARISONS, SPECS, Drawn, draw
from qgeom.figures.checkpoint_tables import (
    invariance_table, landscape_table, operator_spectrum_table, quadratic_model_table, spectrum_table,
)
from qgeom.figures.controls import controls, controls_table
from qgeom.figures.diagnostics import invariance, landscape, proposition1, proposition1_table, proposition2_gap, proposition2_gap_table, spectrum
from qgeom.figures.comparison import (
    proportion_bars, proportion_table, run_labels, runs_baseline_table, runs_baselines, runs_delta_heatmaps,
    runs_delta_table, runs_improvement, runs_improvement_table, settings, settings_with_runs,
)
from qgeom.figures.files import RUN_TABLES, cached_table, load_run, read_table, run_fingerprint, save_figure
from qgeom.figures.selection import choose_bits, choose_scope, pair_frame, select_rows
from qgeom.figures.sweeps import (
    lambda_calibration, lambda_calibration_table, lambda_curves, lambda_sensitivity, lambda_sensitivity_table,
    lambda_split, lambda_table,
)
from qgeom.figures.regime import phase_diagram
from qgeom.figures.theme import (
    CB, DOUBLE, MIN_PT, SETTING_COLORS, SINGLE, colors_for, lighter, new_figure, pair_heatmap, relabel, robust_range,
    style, style_rc, task_colors, use_style,
)

__all__ = [
    "ALIGNMENT_LABELS", "BASELINE_SETTINGS", "CB", "COMPARISONS", "DOUBLE", "Drawn", "MIN_PT", "SINGLE", "SPECS", "draw",
    "colors_for", "phase_diagram", "relabel", "run_fingerprint", "settings_with_runs", "style_rc", "use_style",
    "lambda_calibration", "lambda_calibration_table", "lambda_sensitivity", "lambda_sensitivity_table",
    "lambda_split", "proportion_bars", "proportion_table", "run_labels", "runs_baseline_table", "runs_baselines",
    "runs_delta_heatmaps", "runs_delta_table", "runs_improvement", "runs_improvement_table", "settings", "RUN_TABLES", "SETTING_COLORS", "TARGET_LABELS", "TARGET_SHORT",
    "alignment_heatmaps", "alignment_scatter", "alignment_scatter_table", "alignment_table",
    "baseline_bars", "baseline_table", "cached_table", "choose_bits", "choose_scope", "delta_heatmaps",
    "delta_table", "improvement_bars", "improvement_table", "invariance", "invariance_table", "lambda_curves",
    "lambda_table", "landscape", "landscape_table", "lighter", "load_run", "new_figure", "pair_frame", "pair_heatmap", "proposition1", "proposition1_table", "proposition2_gap", "proposition2_gap_table", "controls", "controls_table",
    "quadratic_model_table", "radar", "radar_table", "read_table", "robust_range", "save_figure", "select_rows", "spectrum",
    "spectrum_table", "operator_spectrum_table", "style", "task_colors",
]

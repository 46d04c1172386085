"""qgeom.figures: each figure on a small synthetic table (what was drawn, not only that a file
exists), the checkpoint tables on a real tiny run (checked against the run's own numbers), the
cache, and the ``qgeom figures`` command end to end."""

from __future__ import annotations

import functools
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.container import BarContainer
from matplotlib.collections import LineCollection, PathCollection, QuadMesh

from qgeom.experiment import analysis
from qgeom import figures as F

TASKS = ("alpha", "beta", "gamma")
N = len(TASKS)
LAMS = (0.5, 1.0, 1.5)


# --------------------------------------------------------------------------------------------
# synthetic run tables (the schema of qgeom.experiment.run), derived tables through qgeom.experiment.analysis
# --------------------------------------------------------------------------------------------


def synthetic_accuracy(seeds=(0, 1), bits=2, rng_seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(rng_seed)
    rows = []

    def add(seed, rec, method, donor="", scope="", lam=math.nan, draw=-1, splits=("val", "test")):
        for split in splits:
            base = dict(seed=seed, bits=bits, receiver=rec, donor=donor, method=method, scope=scope, lam=lam,
                        draw=draw, split=split)
            rows.append(base | dict(metric="ptq_top1", value=float(rng.uniform(0.2, 0.9))))
            if split == "test":
                rows.append(base | dict(metric="fp_top1", value=float(rng.uniform(0.5, 1.0))))

    for s in seeds:
        for r in TASKS:
            add(s, r, "baseline")
            add(s, r, "qat")
            add(s, r, "pretrained_backbone", splits=("test",))
            for scope in ("backbone", "quantized"):
                for d in TASKS:
                    for lam in LAMS:
                        add(s, r, "patch", d, scope, lam)
                for lam in LAMS:
                    add(s, r, "multi_donor", "mean(others)", scope, lam)
                for d in TASKS:
                    if d != r:
                        for draw in range(2):
                            add(s, r, "random", d, scope, 1.0, draw)
    return pd.DataFrame(rows)


def synthetic_geometry(seeds=(0, 1), bits=2, rng_seed=1) -> pd.DataFrame:
    rng = np.random.default_rng(rng_seed)
    rows = []
    for s in seeds:
        for r in TASKS:
            for scope in ("backbone", "quantized"):
                def put(metric, objective, donor, quantity, value):
                    rows.append(dict(seed=s, bits=bits, receiver=r, donor=donor, scope=scope, metric=metric,
                                     objective=objective, quantity=quantity, value=float(value)))

                for metric, objective in (("euclidean", ""), ("ggn", "fp"), ("ggn", "ste")):
                    for d in TASKS:
                        put(metric, objective, d, "cosine", 1.0 if d == r else rng.uniform(-0.2, 0.9))
                        put(metric, objective, d, "self", rng.uniform(0.5, 2.0))
                        put(metric, objective, d, "lam_star", rng.uniform(0.2, 1.4))
                    for j, ev in enumerate(sorted(rng.uniform(0.01, 3.0, N))):
                        put(metric, objective, "", f"K_eig_{j}", ev)
                for objective in ("fp", "ste"):
                    for d in TASKS:
                        put("gradient", objective, d, "directional_gradient", rng.normal(0, 0.1))
                for key in ("ggn_ste", "unit"):
                    for d in TASKS:
                        put(key, "ptq_loss", d, "recovery", rng.uniform(-0.2, 1.0))
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def synth():
    acc, geo = synthetic_accuracy(), synthetic_geometry()
    pairs = analysis.pair_table(acc, geo)
    return dict(accuracy=acc, geometry=geo, pairs=pairs, receivers=analysis.receiver_table(acc),
                correlations=analysis.correlations(pairs, permutations=24))


def heat_cells(ax) -> int:
    return sum(c.get_array().size for c in ax.collections if isinstance(c, QuadMesh))


def data_axes(fig):
    """The figure's axes that are not colorbars."""
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


# --------------------------------------------------------------------------------------------
# figures on synthetic tables
# --------------------------------------------------------------------------------------------


def test_baseline_bars(synth):
    acc = synth["accuracy"]
    tab = F.baseline_table(acc)
    ft = acc[(acc.method == "baseline") & (acc.metric == "fp_top1") & (acc.split == "test") & (acc.receiver == "beta")]
    assert tab.set_index(["task", "setting"]).top1[("beta", "FT")] == pytest.approx(100 * ft.value.mean())
    fig = F.baseline_bars(acc)
    (ax,) = fig.axes
    assert len(ax.patches) == 4 * N
    assert [t.get_text() for t in ax.get_xticklabels()] == list(TASKS)
    assert "Top-1" in ax.get_ylabel() and "%" in ax.get_ylabel() and ax.get_xlabel() == "task"
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["FT", "FT+PTQ", "QAT", "QAT+PTQ"]
    ptq = tab[tab.setting == "FT+PTQ"].set_index("task").top1
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert [b.get_height() for b in bars[1]] == pytest.approx(list(ptq[list(TASKS)]))
    assert len(bars) == 4 and all(c.errorbar is not None for c in bars)  # two seeds: ± s.d.


def test_delta_heatmaps_robust_range_and_diagonal(synth):
    pairs = synth["pairs"].copy()
    pairs.loc[pairs.diagonal & (pairs.receiver == "alpha"), "gain_unit"] = 90.0  # one huge diagonal cell
    fig = F.delta_heatmaps(pairs)
    axes = data_axes(fig)
    assert len(axes) == 2
    for ax in axes:
        assert heat_cells(ax) == N * N
        assert ax.get_xlabel() == "receiver $R$" and ax.get_ylabel() in ("donor $D$", "")
        frames = [p for p in ax.patches if not p.get_fill()]
        assert sorted((int(p.get_x()), int(p.get_y())) for p in frames) == [(i, i) for i in range(N)]
    mesh = axes[0].collections[0]
    vmin, vmax = mesh.get_clim()
    tab = F.delta_table(pairs)
    assert vmax == -vmin == pytest.approx(F.robust_range(tab[~tab.diagonal].delta))
    assert vmax < 90  # the diagonal does not set the range
    cbar = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"][0]
    assert "points" in cbar.get_ylabel()
    texts = [t.get_text() for t in axes[1].texts]
    assert sum("λ=" in t for t in texts) == N * N  # the chosen λ is printed in every cell


def test_robust_range():
    assert F.robust_range([1, -2, 3, 100], q=0.5) == pytest.approx(2.5)
    assert F.robust_range([0, 0]) == 1.0
    assert F.robust_range([np.nan, -4.0], q=1.0) == 4.0


def test_radar(synth):
    fig = F.radar(synth["receivers"], pairs=synth["pairs"])
    (ax,) = fig.axes
    assert ax.name == "polar"
    lines = [ln for ln in ax.lines if not ln.get_label().startswith("_")]
    assert [ln.get_label() for ln in lines] == ["FT + PTQ", "best donor, λ = 1, + PTQ", "best donor, λ on val, + PTQ",
                                                "QAT + PTQ"]  # both webs: λ = 1 and tuned λ
    assert all(len(ln.get_xdata()) == N + 1 for ln in lines)  # closed polygons
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert all(lab.startswith(t) and "ρ from" in lab for lab, t in zip(labels, TASKS))
    tab = F.radar_table(synth["receivers"], pairs=synth["pairs"])
    mean = tab[tab.seed == "mean"]
    qat = mean[mean.setting == "QAT+PTQ"].set_index("task").top1
    assert list(lines[3].get_ydata()[:N]) == pytest.approx(list(qat[list(TASKS)]))
    p = synth["pairs"].query("scope == 'backbone'").set_index(["seed", "receiver", "donor"]).patch_ptq
    rec = synth["receivers"].query("scope == 'backbone' and receiver == 'beta'")
    unit = np.mean([p[(s, "beta", d)] for s, d in zip(rec.seed, rec.best_donor)])
    assert mean[(mean.setting == "patch+PTQ, λ = 1")].set_index("task").top1["beta"] == pytest.approx(unit)
    seeds = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert len(seeds) == 4 and all(len(c.get_offsets()) == 2 * N for c in seeds)  # each seed's point, two seeds


def test_improvement_bars(synth):
    rec = synth["receivers"]
    tab = F.improvement_table(rec)
    r = rec[(rec.scope == "backbone")].groupby("receiver").mean(numeric_only=True).loc["gamma"]
    got = tab[(tab.task == "gamma") & (tab.patch == "best donor")].improvement.iloc[0]
    assert got == pytest.approx((r.best_donor_tuned_ptq - r.base_ptq) / r.qat_ptq)
    fig = F.improvement_bars(rec)
    (ax,) = fig.axes
    assert len(ax.patches) == 2 * N
    ceiling = [c for c in ax.collections if isinstance(c, LineCollection) and len(c.get_segments()) == N
               and all(len(s) == 2 and s[0][1] == s[1][1] for s in c.get_segments())]
    assert len(ceiling) >= 1
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert all(b.errorbar is not None for b in bars)  # two seeds: ± s.d. of the seeds' ratios
    assert ax.get_ylabel() == "(patch+PTQ − FT+PTQ) / QAT+PTQ"


def test_lambda_curves_come_from_validation_when_test_holds_only_the_chosen_lambdas(tiny_run, synth):
    """A run evaluates test only at λ = 1 and at each patch's chosen λ: pooled over patches that
    covers the grid, but a curve from it would show at λ ≠ 1 only the patches that chose λ — so
    the λ curves and the pooled sensitivity are drawn from validation. A table with the whole grid
    on test for every patch (synthetic) is drawn from test."""
    acc = pd.read_csv(tiny_run / "accuracy.csv", keep_default_na=False, na_values=[""])
    test = acc[(acc.method == "patch") & (acc.split == "test") & (acc.metric == "ptq_top1")]
    assert set(test.lam) == {0.5, 1.0, 1.5} and test.groupby(["seed", "receiver", "donor", "scope"]).lam.nunique().max() < 3
    assert F.lambda_split(acc) == "val"
    assert set(F.lambda_table(acc).split) == {"val"}
    sens = F.lambda_sensitivity_table(acc)
    assert set(sens[sens.panel == "delta"].split) == {"val"}
    assert F.lambda_split(synth["accuracy"]) == "test"


def test_lambda_curves(synth):
    acc, pairs = synth["accuracy"], synth["pairs"]
    tab = F.lambda_table(acc, pairs)
    assert sorted(tab.lam.unique()) == [0.0, *LAMS] and set(tab.split) == {"test"}
    fig = F.lambda_curves(acc, pairs)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == N
    for ax, r in zip(axes, TASKS):
        assert ax.get_title() == f"receiver {r}"
        assert ax.get_xlabel().startswith("$\\lambda$") and "Top-1" in axes[0].get_ylabel()
        curves = [ln for ln in ax.lines if ln.get_label().startswith("ρ from")]
        assert len(curves) == N
        assert sum(ln.get_linestyle() == "--" for ln in curves) == 1  # own ρ_R dashed
        base = 100 * acc[(acc.method == "baseline") & (acc.split == "test") & (acc.metric == "ptq_top1")
                         & (acc.receiver == r)].value.mean()
        assert all(ln.get_xdata()[0] == 0 and ln.get_ydata()[0] == pytest.approx(base) for ln in curves)
        stars = [ln for ln in ax.lines if ln.get_marker() == "v"]
        outside = [t for t in ax.texts if t.get_gid() == "lam_star_outside"]
        assert len(stars) + len(outside) == N  # λ* of every donor
        qat = [ln for ln in ax.lines if ln.get_linestyle() == ":"]
        assert len(qat) == 1


def test_alignment_heatmaps(synth):
    fig = F.alignment_heatmaps(synth["pairs"])
    axes = data_axes(fig)
    assert [ax.get_title() for ax in axes] == [F.ALIGNMENT_LABELS[a] for a in ("euclidean", "ggn_fp", "ggn_ste")]
    assert all(heat_cells(ax) == N * N for ax in axes)
    assert axes[0].collections[0].get_clim() == (-1, 1)


def test_alignment_scatter_reports_spearman_and_qap(synth):
    pairs, corr = synth["pairs"], synth["correlations"]
    fig = F.alignment_scatter(pairs, corr)
    axes = [ax for ax in fig.axes]
    assert len(axes) == 3 * 2
    for ax in axes:
        pts = sum(len(c.get_offsets()) for c in ax.collections if isinstance(c, PathCollection))
        assert pts == N * (N - 1)  # off-diagonal pairs only
    row = corr[(corr.scope == "backbone") & (corr.alignment == "ggn_ste") & (corr.target == "gain_unit")
               & (corr.method == "spearman")].iloc[0]
    text = axes[4].get_title()  # row ggn_ste, column gain_unit: the statistics head the panel
    assert f"Spearman ρ = {row.r:+.2f}" in text and f"QAP p = {row.p_value:.3f}" in text
    assert axes[4].get_xlabel() == F.ALIGNMENT_LABELS["ggn_ste"] and "points" in axes[4].get_ylabel()
    # without correlations.csv the same numbers come from qgeom.experiment.stats
    t2 = F.alignment_scatter_table(pairs, None, permutations=24)
    t1 = F.alignment_scatter_table(pairs, corr)
    assert np.allclose(t1.spearman, t2.spearman, equal_nan=True)


def synthetic_quadratic() -> pd.DataFrame:
    rows = []
    for d in TASKS:
        for lam in (0.0, 0.5, 1.0):
            rows.append(dict(seed=0, bits=2, scope="backbone", metric="ggn", receiver="alpha", donor=d, lam=lam,
                             measured=1 + lam**2, quadratic=1 + 0.9 * lam**2, proposition=1.0, lam_star=0.5,
                             g_dot_d=0.1, rho_M_rho=1.0))
    return pd.DataFrame(rows)


def test_proposition1(synth):
    geo = synth["geometry"]
    fig = F.proposition1(geo)
    assert len(fig.axes) == 2
    tab = F.proposition1_table(geo, synthetic_quadratic())
    assert set(tab.panel) == {"K_eigenvalue", "stationarity", "quadratic"}
    eig = tab[tab.panel == "K_eigenvalue"]
    assert len(eig) == 2 * N * 3 * N  # seeds × receivers × alignments × eigenvalues
    assert eig.groupby(["seed", "receiver", "alignment"]).rel.max().eq(1).all()
    fig = F.proposition1(geo, synthetic_quadratic())
    a, b, c = fig.axes
    assert sum(len(col.get_offsets()) for col in a.collections) == 2 * N * 3 * N  # every eigenvalue of every seed
    assert "eigenvalue of $K$" in a.get_ylabel() and "\\nabla L" in b.get_ylabel()
    assert len([ln for ln in c.lines if ln.get_gid() != "expansion_point"]) == 2 * N  # measured, quadratic per donor
    assert c.get_ylabel().endswith("(nats)")


def synthetic_spectrum(k=4) -> pd.DataFrame:
    base = dict(seed=0, bits=2, scope="backbone", metric="hessian", objective="fp", receiver="alpha")
    grid = np.linspace(-1, 5, 50)
    rows = [base | dict(part="density", vector="", index=-1, eigenvalue=x, value=float(np.exp(-x * x))) for x in grid]
    lams = [5.0, 3.0, 2.0, 1.0][:k]
    rows += [base | dict(part="eigenpair", vector="", index=j, eigenvalue=lam, value=1e-3)
             for j, lam in enumerate(lams)]
    for v in ("ρ_R (alpha)", "ρ_D (beta)", "ρ_D (gamma)"):
        for j, lam in enumerate(lams):
            rows.append(base | dict(part="norm_share", vector=v, index=j, eigenvalue=lam, value=0.01 * (j + 1)))
            rows.append(base | dict(part="curvature_share", vector=v, index=j, eigenvalue=lam, value=0.1))
    return pd.DataFrame(rows)


def test_spectrum():
    fig = F.spectrum(synthetic_spectrum())
    a, b, c = fig.axes
    assert a.get_yscale() == "log" and a.get_xlabel() == "eigenvalue of M"
    assert len(a.lines) == 1 + 4  # density + a tick per top eigenvalue
    assert len(b.lines) == 3 and len(c.lines) == 3
    assert list(c.lines[0].get_ydata()) == pytest.approx([0.1, 0.2, 0.3, 0.4])  # cumulative
    assert [t.get_text() for t in b.get_legend().get_texts()] == [
        "$\\rho_{R}$ (alpha)", "$\\rho_{D}$ (beta)", "$\\rho_{D}$ (gamma)"]


def test_landscape():
    a, b = (-0.5, 0.0, 1.0, 1.5), (0.0, 1.0, 2.0)
    tab = pd.DataFrame([dict(seed=0, bits=2, scope="backbone", split="val", receiver="alpha", donor="beta", a=x, b=y,
                             ptq_top1=50 + 10 * x - 5 * y) for x in a for y in b])
    fig = F.landscape(tab)
    ax = fig.axes[0]
    markers = [ln for ln in ax.lines if ln.get_marker() in ("o", "*", "s")]
    assert [(ln.get_xdata()[0], ln.get_ydata()[0]) for ln in markers] == [(0, 0), (1, 0), (0, 1)]
    assert "\\rho_D" in ax.get_xlabel() and "beta" in ax.get_xlabel() and "\\rho_R" in ax.get_ylabel()
    assert "Top-1" in fig.axes[1].get_ylabel()  # colorbar
    assert ax.get_xlim() == (-0.5, 1.5) and ax.get_ylim() == (0.0, 2.0)


def test_invariance():
    rows = []
    for kind in ("qk_diagonal", "vo_mixing"):
        for s in (0.0, 1.0, 2.0):
            for q, v in (("euclidean_cosine", 0.2 + 0.1 * s), ("metric_cosine", 0.8), ("ptq_top1_receiver", 50.0),
                         ("ptq_top1_patched", 55 - s)):
                rows.append(dict(seed=0, bits=2, scope="backbone", receiver="alpha", donor="beta", metric="ggn",
                                 kind=kind, strength=s, condition_number=math.exp(s), quantity=q, value=v))
    fig = F.invariance(pd.DataFrame(rows))
    a, b = fig.axes
    curves = [ln for ln in a.lines if len(ln.get_xdata()) == 3]
    assert len(curves) == 4 and len([ln for ln in b.lines if len(ln.get_xdata()) == 3]) == 4  # 2 kinds × 2
    metric = [ln for ln in curves if ln.get_linestyle() == "-"]
    eucl = [ln for ln in curves if ln.get_linestyle() == "--"]
    assert all(np.allclose(ln.get_ydata(), 0) for ln in metric)  # change from s = 0
    assert all(np.allclose(ln.get_ydata(), [0, 0.1, 0.2]) for ln in eucl)
    assert "cos" in a.get_ylabel() and "Top-1" in b.get_ylabel() and "strength" in a.get_xlabel()
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend[0] == "qk diagonal (cos at s = 0: GGN 0.80, Eucl. 0.20)"


def test_save_figure_writes_pdf_png_csv(tmp_path, synth):
    tab = F.baseline_table(synth["accuracy"])
    paths = F.save_figure(F.baseline_bars(synth["accuracy"]), tab, tmp_path / "out", "baselines")
    assert paths["pdf"].read_bytes()[:4] == b"%PDF" and paths["png"].read_bytes()[:4] == b"\x89PNG"
    pd.testing.assert_frame_equal(pd.read_csv(paths["csv"]), tab, check_dtype=False)


def test_cached_table(tmp_path):
    calls = []

    def table(run_dir, *, k: int = 1):
        calls.append(k)
        return pd.DataFrame({"k": [k], "x": [0.1 * k]})

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    a = F.cached_table(tmp_path / "out", "t", run, table)
    b = F.cached_table(tmp_path / "out", "t", run, table)
    assert calls == [1] and a.equals(b)
    F.cached_table(tmp_path / "out", "t", run, table, k=2)  # other parameters
    (run / "config.json").write_text('{"changed": 1}')  # another run
    F.cached_table(tmp_path / "out", "t", run, table, k=2)
    assert calls == [1, 2, 2]
    assert json.loads((tmp_path / "out" / "t.params.json").read_text())["params"] == {"k": 2}


# --------------------------------------------------------------------------------------------
# checkpoint tables on a real run, against the run's own numbers
# --------------------------------------------------------------------------------------------


def run_acc(run, receiver, method, donor="", scope="", split="val"):
    acc = F.load_run(run)["accuracy"]
    sel = acc[(acc.receiver == receiver) & (acc.method == method) & (acc.split == split) & (acc.metric == "ptq_top1")
              & (acc.donor == donor) & (acc.scope == scope)]
    if method == "patch":
        sel = sel[sel.lam == 1.0]
    return 100 * float(sel.value.iloc[0])


def test_landscape_table_matches_the_run(tiny_run):
    tab = F.landscape_table(tiny_run, receiver="hue", donor="shape", a=(0.0, 1.0), b=(0.0, 1.0))
    at = tab.set_index(["a", "b"]).ptq_top1
    assert at[(0.0, 0.0)] == pytest.approx(run_acc(tiny_run, "hue", "baseline"))
    assert at[(1.0, 0.0)] == pytest.approx(run_acc(tiny_run, "hue", "patch", "shape", "backbone"))
    assert at[(0.0, 1.0)] == pytest.approx(run_acc(tiny_run, "hue", "patch", "hue", "backbone"))


def test_quadratic_model_table(tiny_run):
    tab = F.quadratic_model_table(tiny_run, receivers=["hue"], lambdas=(0.0, 1.0))
    assert len(tab) == N * 2 and set(tab.donor) == {"hue", "position", "shape"}
    own = tab[(tab.donor == "hue") & (tab.lam == 1.0)].iloc[0]  # the expansion point: all three agree
    assert own.measured == pytest.approx(own.quadratic, rel=1e-5)
    assert own.proposition == pytest.approx(own.measured, rel=1e-5)
    geo = F.load_run(tiny_run)["geometry"]
    g = geo[(geo.receiver == "hue") & (geo.scope == "backbone")].set_index("quantity").value
    zero = tab[tab.lam == 0.0].measured  # L(Q_b(θ_R)) on the run's probe set
    assert np.allclose(zero, g["L0"], rtol=1e-3)
    assert own.measured == pytest.approx(g["L_own_qat_vector"], rel=1e-3)


def test_spectrum_table(tiny_run):
    tab = F.spectrum_table(tiny_run, receiver="position", top_k=3, n_iter=12, probe_size=16, n_grid=200)
    dens = tab[tab.part == "density"]
    assert np.trapezoid(dens.value, dens.eigenvalue) == pytest.approx(1.0, abs=1e-6)
    eig = tab[tab.part == "eigenpair"]
    assert len(eig) == 3 and (np.diff(eig.eigenvalue) <= 0).all()
    share = tab[tab.part == "norm_share"]
    assert set(share.vector) == {"ρ_R (position)", "ρ_D (hue)", "ρ_D (shape)"}
    assert (share.value >= 0).all() and (share.groupby("vector").value.sum() <= 1 + 1e-9).all()


def test_invariance_table_metric_flat_euclidean_drifts(tiny_run):
    tab = F.invariance_table(tiny_run, receiver="hue", donor="shape", kinds=("qk_scalar", "vo_mixing"),
                             strengths=(0.0, 4.0), probe_size=32)
    v = tab.set_index(["kind", "strength", "quantity"]).value
    for kind in ("qk_scalar", "vo_mixing"):
        assert v[(kind, 4.0, "metric_cosine")] == pytest.approx(v[(kind, 0.0, "metric_cosine")], abs=1e-4)
        assert abs(v[(kind, 4.0, "euclidean_cosine")] - v[(kind, 0.0, "euclidean_cosine")]) > 1e-3
    one_image = 100 / 64 + 1e-9  # row scalings commute with per-row Q_b: PTQ unchanged (up to a rounding tie)
    assert abs(v[("qk_scalar", 4.0, "ptq_top1_receiver")] - v[("qk_scalar", 0.0, "ptq_top1_receiver")]) <= one_image
    assert v[("qk_scalar", 0.0, "ptq_top1_receiver")] == pytest.approx(run_acc(tiny_run, "hue", "baseline"))


def test_load_run_keeps_empty_text_cells_and_numbers(tiny_run):
    """One reader for the experiment and the figures: empty text cells stay "" (plain pandas reads
    NaN), numbers stay float."""
    tables = F.load_run(tiny_run)
    assert {"accuracy", "pairs", "geometry", "correlations"} <= set(tables)
    acc = tables["accuracy"]
    base = acc[acc.method == "baseline"]
    assert (base.donor == "").all() and (base.scope == "").all()
    assert pd.read_csv(tiny_run / "accuracy.csv").query("method == 'baseline'").donor.isna().all()
    assert acc.value.dtype == float and acc.lam.dtype == float


def test_figures_command(tiny_run, tmp_path, monkeypatch):
    """The command end to end (checkpoint tables made smaller here; their own tests are above)."""
    from typer.testing import CliRunner

    from qgeom.cli import app

    calls = []

    def smaller(fn, **small):
        @functools.wraps(fn)
        def wrapper(run_dir, **kw):
            calls.append(fn.__name__)
            return fn(run_dir, **(small | kw))
        return wrapper

    monkeypatch.setattr(F, "quadratic_model_table", smaller(F.quadratic_model_table, receivers=["hue"], lambdas=(0, 1)))
    monkeypatch.setattr(F, "spectrum_table", smaller(F.spectrum_table, n_iter=8, top_k=3, probe_size=16))
    monkeypatch.setattr(F, "landscape_table", smaller(F.landscape_table, a=(0.0, 1.0), b=(0.0, 1.0)))
    monkeypatch.setattr(F, "invariance_table", smaller(F.invariance_table, kinds=("qk_scalar",), strengths=(0, 1)))
    out = tmp_path / "figs"
    threads = torch.get_num_threads()
    try:
        res = CliRunner().invoke(app, ["figures", str(tiny_run), "--out-dir", str(out)])
    finally:
        torch.set_num_threads(threads)  # the command sets its own; keep the suite's
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "manifest.json").read_text())
    names = [f["name"] for f in manifest["figures"]]
    assert names == ["baselines_2bit", "delta_heatmaps_2bit", "lambda_curves_2bit", "lambda_sensitivity_2bit",
                     "lambda_calibration_2bit", "proportions_2bit", "alignment_heatmaps_2bit", "alignment_scatter_2bit",
                     "radar_2bit", "improvement_2bit", "controls_2bit", "proposition2_2bit", "proposition1_2bit",
                     "spectrum_2bit", "landscape_2bit", "invariance_2bit"]
    for n in names:
        for ext in ("pdf", "png", "csv"):
            assert (out / f"{n}.{ext}").stat().st_size > 0
    (run,) = manifest["runs"]  # issue 26: which run, and which of its files, every figure was drawn from
    assert run["run_dir"] == str(tiny_run) and set(run["artifacts"]) >= {"accuracy.csv", "pairs.csv", "inputs.json"}
    for f in manifest["figures"]:
        csv = pd.read_csv(out / f"{f['name']}.csv")
        assert (csv.run_fingerprint == f["run_fingerprint"]).all() and (csv.run_config_sha256 == run["config_sha256"]).all()
        want = F.run_fingerprint(tiny_run, f["artifacts"])
        assert want["fingerprint"] == f["run_fingerprint"] and want["artifacts"].items() <= run["artifacts"].items()
    assert "inputs.json" in next(f for f in manifest["figures"] if f["name"] == "spectrum_2bit")["artifacts"]
    assert set(pd.read_csv(out / "proposition1_2bit.csv").panel) == {"K_eigenvalue", "stationarity", "quadratic"}
    controls = pd.read_csv(out / "controls_2bit.csv")  # issue 15: every control and the two hybrids, per receiver
    assert set(controls.series) == {"unit", "random", "random_rows", "row_permuted", "negated", "other_basin",
                                    "grid_only", "values_only"}
    pairs = pd.read_csv(tiny_run / "pairs.csv")
    off = pairs[(~pairs.diagonal) & (pairs.bits == 2) & (pairs.scope == "backbone")]
    want = off.groupby("receiver").gain_row_permuted.mean()
    got = controls[controls.series == "row_permuted"].set_index("receiver")["mean"]
    assert np.allclose(got.sort_index(), want.sort_index())
    p2 = pd.read_csv(out / "proposition2_2bit.csv")  # issue 13: Prop 2′ terms of every off-diagonal pair
    assert len(p2) == len(off.drop_duplicates(["donor", "receiver"])) and (p2.gap == p2.R - p2.kappa).all()
    assert len(pd.read_csv(out / "landscape_2bit.csv")) == 4
    assert sorted(calls) == ["invariance_table", "landscape_table", "quadratic_model_table", "spectrum_table"]
    for name in ("proposition1_2bit_quadratic", "spectrum_2bit", "landscape_2bit", "invariance_2bit"):
        assert json.loads((out / f"{name}.params.json").read_text())["params"]["bits"] == 2  # cache records
    res = CliRunner().invoke(app, ["figures", str(tmp_path / "nothing")])
    assert res.exit_code != 0

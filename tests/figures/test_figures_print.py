"""Figures as a paper prints them: each saved PDF's size and smallest font, no code in labels,
each defect of issue 14 checked on the drawn object, and the figures across two tiny runs."""

from __future__ import annotations

import json
import re
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PolyCollection
from matplotlib.text import Text

from qgeom import figures as F
from tests.figures.test_figures import TASKS, synth, synthetic_quadratic, synthetic_spectrum  # noqa: F401


def pdf_size_and_fonts(path: Path) -> tuple[float, float, list[float]]:
    """Width, height (inches) of the PDF's page and every font size (pt) its text is set in."""
    raw = path.read_bytes()
    box = [float(x) for x in re.search(rb"/MediaBox\s*\[\s*([\d.\s-]+)\]", raw).group(1).split()]
    sizes = []
    for m in re.finditer(rb"stream\r?\n(.*?)\r?\nendstream", raw, re.S):
        try:
            data = zlib.decompress(m.group(1))
        except zlib.error:
            data = m.group(1)
        sizes += [float(x) for x in re.findall(rb"/F\d+\s+([\d.]+)\s+Tf", data)]
    return (box[2] - box[0]) / 72, (box[3] - box[1]) / 72, sizes


def invariance_table(kinds=("qk_scalar", "qk_mixing")) -> pd.DataFrame:
    rows = []
    for kind in kinds:
        for s in (0.0, 2.0):
            for q, v in (("euclidean_cosine", 0.2 + 0.1 * s), ("metric_cosine", 0.8), ("ptq_top1_receiver", 50.0),
                         ("ptq_top1_patched", 55 - s - (kind == "qk_mixing"))):
                rows.append(dict(seed=0, bits=2, scope="backbone", receiver="alpha", donor="beta", metric="ggn",
                                 kind=kind, strength=s, condition_number=np.exp(s), quantity=q, value=v))
    return pd.DataFrame(rows)


def landscape_table() -> pd.DataFrame:
    return pd.DataFrame([dict(seed=0, bits=2, scope="backbone", split="val", receiver="alpha", donor="beta", a=x, b=y,
                              ptq_top1=50 + 10 * x - 5 * y) for x in (0.0, 1.0) for y in (0.0, 1.0)])


def every_figure(s) -> dict:
    acc, pairs, rec = s["accuracy"], s["pairs"], s["receivers"]
    return {
        "baselines": lambda: F.baseline_bars(acc),
        "delta_heatmaps": lambda: F.delta_heatmaps(pairs),
        "radar": lambda: F.radar(rec, pairs=pairs),
        "improvement": lambda: F.improvement_bars(rec),
        "lambda_curves": lambda: F.lambda_curves(acc, pairs),
        "lambda_sensitivity": lambda: F.lambda_sensitivity(acc, pairs),
        "lambda_calibration": lambda: F.lambda_calibration(pairs),
        "proportions": lambda: F.proportion_bars(pairs[pairs.bits == 2]),
        "alignment_heatmaps": lambda: F.alignment_heatmaps(pairs),
        "alignment_scatter": lambda: F.alignment_scatter(pairs, s["correlations"]),
        "proposition1": lambda: F.proposition1(s["geometry"], synthetic_quadratic()),
        "spectrum": lambda: F.spectrum(synthetic_spectrum()),
        "landscape": lambda: F.landscape(landscape_table()),
        "invariance": lambda: F.invariance(invariance_table()),
    }


NAMES = ["baselines", "delta_heatmaps", "radar", "improvement", "lambda_curves", "lambda_sensitivity",
         "lambda_calibration", "proportions", "alignment_heatmaps", "alignment_scatter", "proposition1", "spectrum",
         "landscape", "invariance"]


@pytest.mark.parametrize("name", NAMES)
def test_print_size_fonts_and_math(name, synth, tmp_path):  # noqa: F811
    """At most 6.75 in wide (one column, 3.25 in, or the page), no text under 7 pt (mathtext sub-
    and superscripts are 0.7 of a text ≥ 7 pt), no literal underscore outside mathtext."""
    fig = every_figure(synth)[name]()
    paths = F.save_figure(fig, pd.DataFrame({"x": [0]}), tmp_path, name)
    w, h, sizes = pdf_size_and_fonts(paths["pdf"])
    assert w <= F.DOUBLE + 0.05 and (w <= F.SINGLE + 0.05 or w >= F.DOUBLE - 0.4), f"{name}: {w:.2f} in wide"
    assert sizes and min(sizes) >= 0.7 * F.MIN_PT - 1e-6
    full = [x for x in sizes if x >= F.MIN_PT - 1e-6]
    for x in sizes:  # a size under 7 pt is a mathtext script of a text ≥ 7 pt
        assert x >= F.MIN_PT - 1e-6 or any(abs(x - 0.7 * y) < 0.05 for y in full), f"{name}: {x} pt"
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    r = FigureCanvasAgg(fig).get_renderer()
    fig.draw(r)
    for cap in [t for t in fig.texts if t.get_gid() == "caption"]:  # under everything else, overlapping nothing
        top = cap.get_window_extent(r).y1
        assert all(top < lg.get_window_extent(r).y0 for lg in fig.legends), name
        assert all(top < ax.get_tightbbox(r).y0 for ax in fig.axes if ax.get_visible()), name
    texts = [t.get_text() for t in fig.findobj(Text) if t.get_visible() and t.get_text()]
    for t in texts:
        plain = re.sub(r"\$[^$]*\$", "", t)
        assert "_" not in plain, f"{name}: literal underscore in {t!r}"
    for t in fig.findobj(Text):
        if t.get_visible() and t.get_text():
            assert t.get_fontsize() >= F.MIN_PT, f"{name}: {t.get_text()!r} at {t.get_fontsize()} pt"


def test_delta_heatmaps_print_the_grid_lambda(synth):  # noqa: F811
    pairs = synth["pairs"].copy()
    pairs.loc[(pairs.donor == "alpha") & (pairs.receiver == "beta"), "lam_val"] = 1.25
    fig = F.delta_heatmaps(pairs)
    texts = [t.get_text() for t in fig.axes[1].texts]
    assert any("λ=1.25" in t for t in texts) and not any(t.endswith("λ=1.2") for t in texts)


def test_lambda_star_outside_range_is_an_arrow_with_its_value(synth):  # noqa: F811
    pairs = synth["pairs"].copy()
    sel = (pairs.donor == "beta") & (pairs.receiver == "alpha")
    pairs.loc[sel, "lam_star_ggn_ste"] = -0.7
    fig = F.lambda_curves(synth["accuracy"], pairs)
    ax = fig.axes[0]  # receiver alpha
    arrows = [t for t in ax.texts if t.get_gid() == "lam_star_outside"]
    assert len(arrows) == 1 and arrows[0].get_text() == "λ*=-0.70" and arrows[0].arrow_patch is not None
    assert arrows[0].xy[0] == 0.0  # at the left edge, where λ* lies beyond
    assert not [ln for ln in ax.lines if ln.get_marker() == "v" and ln.get_xdata()[0] == 0.0]
    cal = F.lambda_calibration(pairs)
    hollow = [ln for ln in cal.axes[0].lines if ln.get_gid() == "lam_star_outside"]
    assert len(hollow) == 1 and hollow[0].get_ydata()[0] == cal.axes[0].get_ylim()[0]
    assert any("-0.70" in t.get_text() for t in cal.axes[0].texts)


def test_lambda_curves_use_val_when_test_lacks_the_grid_and_show_seed_bands(synth):  # noqa: F811
    acc = synth["accuracy"]
    acc = acc[~((acc.split == "test") & (acc.method == "patch") & (acc.lam != 1.0))]
    tab = F.lambda_table(acc, synth["pairs"])
    assert set(tab.split) == {"val"} and sorted(tab.lam.unique()) == [0.0, 0.5, 1.0, 1.5]
    fig = F.lambda_curves(acc, synth["pairs"])
    assert "val split" in fig.get_suptitle() and "validation" in caption_text(fig)
    assert [c for c in fig.axes[0].collections if isinstance(c, PolyCollection)]  # ± 1 s.d. bands, two seeds


def caption_text(fig) -> str:
    return " ".join(t.get_text() for t in fig.texts if t.get_gid() == "caption")


def test_spectrum_drops_undefined_shares_and_explains_shares_above_one():
    tab = synthetic_spectrum()
    nan = (tab.part == "curvature_share") & (tab.vector == "ρ_D (gamma)")
    tab.loc[nan, "value"] = np.nan
    tab.loc[(tab.part == "curvature_share") & (tab.vector == "ρ_D (beta)"), "value"] = 0.4
    fig = F.spectrum(tab)
    c = fig.axes[2]
    assert len(c.lines) == 2 + 1  # ρ_R, ρ_D (beta), and the line at 1
    assert all("gamma" not in ln.get_label() for ln in c.lines)
    cap = caption_text(fig)
    assert "gamma" in cap and "undefined" in cap and "above 1" in cap


def test_invariance_states_the_orthogonal_start():
    fig = F.invariance(invariance_table())
    assert "orthogonal" in caption_text(fig) and "qk mixing" in caption_text(fig)
    hollow = [ln for ax in fig.axes for ln in ax.lines if ln.get_gid() == "orthogonal_start"]
    assert len(hollow) == 4 and all(ln.get_xdata()[0] == 0.0 for ln in hollow)


def test_proposition1_states_the_expansion_point(synth):  # noqa: F811
    fig = F.proposition1(synth["geometry"], synthetic_quadratic())
    star = [ln for ln in fig.axes[2].lines if ln.get_gid() == "expansion_point"]
    assert len(star) == 1 and star[0].get_xdata()[0] == 1.0
    assert r"$\theta_R + \rho_R$" in caption_text(fig) and "λ = 0" in caption_text(fig).replace("$\\lambda = 0$", "λ = 0")


def test_alignment_stats_hide_no_point(synth):  # noqa: F811
    fig = F.alignment_scatter(synth["pairs"], synth["correlations"])
    for ax in fig.axes:
        assert not [t for t in ax.texts if "Spearman" in t.get_text()]  # nothing inside the data area
        assert "Spearman" in ax.get_title()


def test_radar_labels_stay_off_the_web(synth):  # noqa: F811
    fig = F.radar(synth["receivers"], pairs=synth["pairs"])
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    r = FigureCanvasAgg(fig).get_renderer()
    fig.draw(r)
    ax = fig.axes[0]
    box = ax.get_window_extent(r)
    cx, cy, radius = (box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2, box.width / 2
    for lab in ax.get_xticklabels():
        e = lab.get_window_extent(r)
        nx, ny = np.clip(cx, e.x0, e.x1), np.clip(cy, e.y0, e.y1)  # the label's point nearest the centre
        assert np.hypot(nx - cx, ny - cy) >= radius - 1, lab.get_text()


def test_baselines_leave_headroom_and_error_bars(synth):  # noqa: F811
    acc = synth["accuracy"].copy()
    acc.loc[(acc.method == "qat") & (acc.metric == "fp_top1"), "value"] = 0.998
    (ax,) = F.baseline_bars(acc).axes
    assert ax.get_ylim()[1] > 100


# --------------------------------------------------------------------------------------------
# across runs: two tiny runs that differ in model width
# --------------------------------------------------------------------------------------------


def test_figures_across_two_runs(tiny_run, tiny_run_wide, tmp_path):
    from typer.testing import CliRunner

    from qgeom.cli import app

    out = tmp_path / "figs"
    res = CliRunner().invoke(app, ["figures", str(tiny_run), str(tiny_run_wide), "--out-dir", str(out), "--cheap"])
    assert res.exit_code == 0, res.output
    names = [f["name"] for f in json.loads((out / "manifest.json").read_text())["figures"]]
    runs = [n for n in names if n.startswith("runs_")]
    assert runs == ["runs_baselines", "runs_improvement", "runs_delta_heatmaps", "runs_proportions",
                    "runs_lambda_sensitivity"]
    assert f"{tiny_run.name}/baselines_2bit" in names and f"{tiny_run_wide.name}/baselines_2bit" in names
    labels = F.run_labels([tiny_run, tiny_run_wide])
    assert labels[0] != labels[1] and "width 32" in labels[0] and "width 48" in labels[1]
    base = pd.read_csv(out / "runs_baselines.csv")
    assert list(dict.fromkeys(base.setting)) == labels
    for run, label in zip((tiny_run, tiny_run_wide), labels):  # the numbers are each run's own
        own = F.baseline_table(F.load_run(run)["accuracy"]).set_index(["task", "setting"]).top1
        got = base[(base.setting == label) & (base.task != "mean")].set_index(["task", "baseline"]).top1
        assert np.allclose(got.sort_index(), own.sort_index())
        fp = F.run_fingerprint(run, ["accuracy.csv", "pairs.csv", "receivers.csv"])  # and so is each row's run
        assert set(base[base.setting == label].run_fingerprint) == {fp["fingerprint"]}
    runs_T = F.settings([tiny_run, tiny_run_wide])
    heat = F.runs_delta_heatmaps(runs_T)
    assert [ax.get_title() for ax in heat.axes if ax.get_label() != "<colorbar>" and ax.get_visible()] == labels
    prop = pd.read_csv(out / "runs_proportions.csv")
    assert (prop.groupby(["setting", "lam_choice"])["count"].sum() == 6).all()  # 3 tasks: 6 off-diagonal pairs
    sens = F.lambda_sensitivity(*({k: T["accuracy"] for k, T in runs_T.items()},
                                  {k: T["pairs"] for k, T in runs_T.items()}))
    assert [t.get_text() for t in sens.legends[0].get_texts()] == labels
    for n in runs:
        w, _, sizes = pdf_size_and_fonts(out / f"{n}.pdf")
        assert w <= F.DOUBLE + 0.05 and min(sizes) >= 0.7 * F.MIN_PT - 1e-6

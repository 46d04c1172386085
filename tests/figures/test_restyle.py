"""Figures a researcher can restyle (issue 26, item 5): a colour keyword and label keywords on
every figure function, ``draw`` returning ``(fig, table)``, the look outside ``with style():``,
cell numbers that never touch (checked on the drawn text), and the run's fingerprint in every
figure CSV and in ``manifest.json``."""

from __future__ import annotations

import hashlib
import inspect
import json
import shutil

import matplotlib
import matplotlib.container
import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import to_hex
from matplotlib.figure import Figure

from qgeom import figures as F
from tests.figures.test_figures import synth, synthetic_quadratic, synthetic_spectrum  # noqa: F401
from tests.figures.test_figures_print import invariance_table, landscape_table

MARK = "#123456"


def figure_functions() -> dict:
    """Every public function of qgeom.figures that returns a figure (but the bare one and relabel)."""
    return {n: f for n in F.__all__ if callable(f := getattr(F, n)) and inspect.isfunction(f)
            and inspect.signature(f).return_annotation in ("Figure", Figure) and n not in ("new_figure", "relabel")}


def test_every_figure_function_takes_a_colour_and_label_keywords():
    fns = figure_functions()
    assert len(fns) >= 20 and "phase_diagram" in fns
    for name, fn in fns.items():
        params = inspect.signature(fn).parameters
        assert {"title", "xlabel", "ylabel"} <= set(params), name
        assert "cmap" in params or "palette" in params, name
        assert all(params[k].default is None for k in ("title", "xlabel", "ylabel")), name


def phase_table() -> pd.DataFrame:
    rows = [dict(cell=c, bits=2, scope="backbone", gain_over_controls=g, gain_over_controls_low=g - 1,
                 gain_over_controls_high=g + 1, finetune_distance=0.1 * (i + 1), rho_size=0.01 * (i + 1),
                 transfers=g > 1) for i, (c, g) in enumerate((("base", 0.5), ("wide", 2.0)))]
    return pd.DataFrame(rows)


def every_call(s) -> dict:
    """Figure name → (function of the keywords, the colour keyword it takes)."""
    acc, pairs, rec, runs = s["accuracy"], s["pairs"], s["receivers"], {"A": s, "B": s}
    return {
        "baseline_bars": (lambda **k: F.baseline_bars(acc, **k), "palette"),
        "delta_heatmaps": (lambda **k: F.delta_heatmaps(pairs, **k), "cmap"),
        "radar": (lambda **k: F.radar(rec, pairs=pairs, **k), "palette"),
        "improvement_bars": (lambda **k: F.improvement_bars(rec, **k), "palette"),
        "lambda_curves": (lambda **k: F.lambda_curves(acc, pairs, **k), "palette"),
        "lambda_sensitivity": (lambda **k: F.lambda_sensitivity(acc, pairs, **k), "palette"),
        "lambda_calibration": (lambda **k: F.lambda_calibration(pairs, **k), "palette"),
        "proportion_bars": (lambda **k: F.proportion_bars(pairs[pairs.bits == 2], **k), "palette"),
        "alignment_heatmaps": (lambda **k: F.alignment_heatmaps(pairs, **k), "cmap"),
        "alignment_scatter": (lambda **k: F.alignment_scatter(pairs, s["correlations"], **k), "palette"),
        "controls": (lambda **k: F.controls(pairs.assign(gain_random=pairs.gain_unit - 1), **k), "palette"),
        "proposition1": (lambda **k: F.proposition1(s["geometry"], synthetic_quadratic(), **k), "palette"),
        "spectrum": (lambda **k: F.spectrum(synthetic_spectrum(), **k), "palette"),
        "landscape": (lambda **k: F.landscape(landscape_table(), **k), "cmap"),
        "invariance": (lambda **k: F.invariance(invariance_table(), **k), "palette"),
        "runs_baselines": (lambda **k: F.runs_baselines(runs, **k), "palette"),
        "runs_improvement": (lambda **k: F.runs_improvement(runs, **k), "palette"),
        "runs_delta_heatmaps": (lambda **k: F.runs_delta_heatmaps(runs, **k), "cmap"),
        "phase_diagram": (lambda **k: F.phase_diagram(phase_table(), **k), "cmap"),
    }


def colours(fig) -> set[str]:
    """Every colour the figure's lines, patches and collections are drawn in."""
    out = set()
    for a in fig.findobj(lambda a: isinstance(a, (matplotlib.lines.Line2D, matplotlib.patches.Patch,
                                                  matplotlib.collections.Collection))):
        if isinstance(a, matplotlib.lines.Line2D):
            out |= {to_hex(a.get_color()), to_hex(a.get_markerfacecolor())}
        elif isinstance(a, matplotlib.patches.Patch):
            out |= {to_hex(a.get_facecolor()), to_hex(a.get_edgecolor())}
        else:
            out |= {to_hex(c) for c in a.get_facecolors()} | {to_hex(c) for c in a.get_edgecolors()}
    return out


def cmaps(fig) -> set[str]:
    return {a.get_cmap().name for a in fig.findobj(lambda a: isinstance(a, ScalarMappable))}


@pytest.mark.parametrize("name", list(every_call({k: None for k in ("accuracy", "pairs", "receivers")})))
def test_colour_and_label_keywords_restyle_the_figure(name, synth):  # noqa: F811
    call, colour = every_call(synth)[name]
    default = call()
    assert MARK not in colours(default) and "magma" not in cmaps(default)
    fig = call(title="My title", xlabel="my x", ylabel="my y", **{colour: [MARK] if colour == "palette" else "magma"})
    if colour == "palette":
        assert MARK in colours(fig), name
    else:
        assert "magma" in cmaps(fig), name
    axes = [ax for ax in fig.axes if ax.get_label() != "<colorbar>" and ax.get_visible()]
    assert fig.get_suptitle() == "My title" or [ax.get_title() for ax in axes] == ["My title"], name
    assert any(ax.get_xlabel() == "my x" for ax in axes) and any(ax.get_ylabel() == "my y" for ax in axes), name
    assert all(ax.get_xlabel() in ("my x", "") for ax in axes), name
    assert (fig._suptitle or axes[0].title).get_fontsize() <= 9  # the print look, not matplotlib's 12 pt


def test_a_palette_mapping_overrides_only_its_keys(synth):  # noqa: F811
    fig = F.baseline_bars(synth["accuracy"], palette={"QAT+PTQ": MARK})
    bars = {c.get_label(): to_hex(c.patches[0].get_facecolor()) for c in fig.axes[0].containers
            if isinstance(c, matplotlib.container.BarContainer)}
    assert bars["QAT+PTQ"] == MARK and bars["FT+PTQ"] == to_hex(F.SETTING_COLORS["FT+PTQ"])


def test_the_look_applies_outside_the_block_after_use_style(synth):  # noqa: F811
    fig = F.baseline_bars(synth["accuracy"])
    before = fig.axes[0].set_title("added later").get_fontsize()
    old = F.use_style()
    try:
        after = fig.axes[0].set_title("added later").get_fontsize()
        label = fig.axes[0].set_xlabel("later").get_fontsize()
    finally:
        matplotlib.rcParams.update(old)
    assert before == pytest.approx(12.0)  # matplotlib's own default: why use_style exists
    assert after == pytest.approx(8.0) and label == pytest.approx(8.0)
    assert matplotlib.rcParams["axes.titlesize"] == old["axes.titlesize"]  # restored


# -- cell numbers -------------------------------------------------------------------------------------


def pairs7(n: int = 7, seed: int = 0) -> pd.DataFrame:
    """7 tasks (the most a panel annotates) with the numbers that ran together: 1.00 beside -0.07."""
    rng = np.random.default_rng(seed)
    names = [f"task{i}" for i in range(n)]
    rows = [dict(seed=0, bits=2, scope="backbone", donor=d, receiver=r, diagonal=d == r,
                 cos_euclidean=1.0 if d == r else -0.07, cos_ggn_fp=1.0 if d == r else rng.uniform(-1, 1),
                 cos_ggn_ste=1.0 if d == r else 0.07, gain_unit=rng.normal(0, 20), gain_tuned=-10.07, lam_val=1.25)
            for d in names for r in names]
    return pd.DataFrame(rows)


def drawn_texts(fig, tmp_path, name):
    """The figure as saved (caption strip and all), drawn again: its renderer and its axes' texts."""
    F.save_figure(fig, pd.DataFrame({"x": [0]}), tmp_path, name)
    r = FigureCanvasAgg(fig).get_renderer()
    fig.draw(r)
    return r, [[t for t in ax.texts if t.get_visible() and t.get_text()] for ax in fig.axes]


def overlaps(boxes) -> list[tuple[int, int]]:
    return [(i, j) for i in range(len(boxes)) for j in range(i + 1, len(boxes))
            if boxes[i].x0 < boxes[j].x1 and boxes[j].x0 < boxes[i].x1
            and boxes[i].y0 < boxes[j].y1 and boxes[j].y0 < boxes[i].y1]


@pytest.mark.parametrize("name", ["alignment_heatmaps", "delta_heatmaps", "runs_delta_heatmaps"])
def test_no_two_cell_numbers_touch(name, tmp_path):
    p, p5 = pairs7(), pairs7(5)  # across settings a panel annotates up to 5 tasks, three panels a row
    fig = {"alignment_heatmaps": lambda: F.alignment_heatmaps(p), "delta_heatmaps": lambda: F.delta_heatmaps(p),
           "runs_delta_heatmaps": lambda: F.runs_delta_heatmaps({k: {"pairs": p5} for k in "ABC"})}[name]()
    r, per_axes = drawn_texts(fig, tmp_path, name)
    cells = [t for texts in per_axes for t in texts if t.get_gid() == "cell"]
    assert cells, "the numbers were dropped instead of fitted"
    for texts in per_axes:
        boxes = [t.get_window_extent(r) for t in texts]
        assert not overlaps(boxes), [(texts[i].get_text(), texts[j].get_text()) for i, j in overlaps(boxes)]
    for t in cells:  # inside its own cell, at a print size
        e, (w, h) = t.get_window_extent(r), t.cell_pixels()
        assert e.width <= w and e.height <= h and t.get_fontsize() >= F.MIN_PT


def test_the_overlap_check_sees_numbers_that_run_together(tmp_path):
    """The same cells written as before the fix (7 pt, two decimals, centred): the check fails."""
    fig = F.alignment_heatmaps(pairs7())
    for ax in fig.axes:
        for t in [t for t in ax.texts if t.get_gid() == "cell"]:
            x, y = t.get_position()
            ax.text(x, y, t.labels[0], ha="center", va="center", fontsize=F.MIN_PT, gid="naive")
            t.set_visible(False)
    r, per_axes = drawn_texts(fig, tmp_path, "naive")
    assert any(overlaps([t.get_window_extent(r) for t in texts]) for texts in per_axes)


# -- draw and the run's fingerprint ------------------------------------------------------------------


def copy_tables(src, dst):
    dst.mkdir()
    for f in ("config.json", "accuracy.csv", "pairs.csv", "receivers.csv", "correlations.csv", "geometry.csv"):
        shutil.copy(src / f, dst / f)
    return dst


def test_draw_returns_the_figure_and_its_table_and_the_csv_names_the_run(tiny_run, tmp_path):
    run = copy_tables(tiny_run, tmp_path / "run")
    fig, table = F.draw("baselines", run, tmp_path / "out", palette="Greys", title="Baselines")
    assert isinstance(fig, Figure) and fig.axes[0].get_title() == "Baselines"
    pd.testing.assert_frame_equal(table, F.baseline_table(F.load_run(run)["accuracy"]))
    csv = pd.read_csv(tmp_path / "out" / "baselines_2bit.csv")
    canonical = json.dumps(json.loads((run / "config.json").read_text()), sort_keys=True, separators=(",", ":"))
    assert (csv.run_config_sha256 == hashlib.sha256(canonical.encode()).hexdigest()).all()
    fp = F.run_fingerprint(run, ["accuracy.csv"])
    assert fp["artifacts"] == {"accuracy.csv": hashlib.sha256((run / "accuracy.csv").read_bytes()).hexdigest()}
    assert (csv.run_fingerprint == fp["fingerprint"]).all()
    pd.testing.assert_frame_equal(csv.drop(columns=["run_config_sha256", "run_fingerprint"]), table,
                                  check_dtype=False)


def test_a_figure_from_another_run_has_another_fingerprint(tiny_run, tmp_path):
    a, b = copy_tables(tiny_run, tmp_path / "a"), copy_tables(tiny_run, tmp_path / "b")
    (b / "geometry.csv").write_text((b / "geometry.csv").read_text() + "\n")  # a file baselines does not read
    same = [F.run_fingerprint(r, ["accuracy.csv"])["fingerprint"] for r in (a, b)]
    assert same[0] == same[1]
    acc = pd.read_csv(b / "accuracy.csv")
    acc.loc[0, "value"] += 0.01
    acc.to_csv(b / "accuracy.csv", index=False)
    cfg = json.loads((a / "config.json").read_text())
    (a / "config.json").write_text(json.dumps(cfg, indent=4))  # formatting alone changes nothing
    fa, fb = (F.run_fingerprint(r, ["accuracy.csv"]) for r in (a, b))
    assert fa["fingerprint"] != fb["fingerprint"] and fa["config_sha256"] == fb["config_sha256"]
    cfg["seeds"] = [7]
    (b / "config.json").write_text(json.dumps(cfg))
    assert F.run_fingerprint(b, ["accuracy.csv"])["config_sha256"] != fa["config_sha256"]

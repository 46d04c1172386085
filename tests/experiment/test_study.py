"""Studies: a grid of runs, each resumable, and the table across them (checked against the runs'
own files, computed independently here)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from qgeom.cli import app
from qgeom.experiment.config import ConfigError
from qgeom.experiment.layout import RunLayout
from qgeom.experiment.study import load_study, run_study, study_table, vector_sizes
from qgeom.io import load_params

STUDY = """
name: mini
preset: tiny
common: [seeds=0, permutations=50]
cells:
  short: [finetune.steps=4]
"""


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("study")
    path = root / "mini.yaml"
    path.write_text(STUDY)
    run_study(path, root / "runs", progress=False)
    return path, root / "runs"


def test_a_study_file_is_checked(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("preset: tiny\ncells: {}\n")
    with pytest.raises(ConfigError, match="cells"):
        load_study(bad)
    bad.write_text("preset: tiny\ncells:\n  a/b: []\n")
    with pytest.raises(ConfigError, match="plain directory name"):
        load_study(bad)
    bad.write_text("preset: tiny\ncells:\n  a: finetune.steps=3\n")
    with pytest.raises(ConfigError, match="list of key=value"):
        load_study(bad)


def test_each_cell_is_a_run_named_after_the_study_and_resumes(study) -> None:
    path, root = study
    layout = RunLayout(root / "short")
    assert layout.summary.exists() and '"name": "mini-short"' in layout.config.read_text()
    before = {p: p.stat().st_mtime_ns for p in (root / "short").rglob("*.safetensors")}
    run_study(path, root, progress=False)  # resumes: nothing is trained again
    assert {p: p.stat().st_mtime_ns for p in (root / "short").rglob("*.safetensors")} == before


def test_the_table_holds_each_cell_and_its_intervals(study) -> None:
    path, root = study
    table = study_table(path, root)
    assert set(table.cell) == {"short"} and set(table.scope) == {"backbone", "quantized"}
    for col in ("gain_unit", "gain_tuned", "gain_over_controls"):
        assert (table[f"{col}_low"] <= table[col]).all() and (table[col] <= table[f"{col}_high"]).all()
    assert (table.transfers == (table.gain_over_controls_low > 0)).all()
    acc = pd.read_csv(root / "short" / "accuracy.csv")
    base = acc[(acc.method == "baseline") & (acc.split == "test")].pivot_table(index="receiver", columns="metric",
                                                                               values="value")
    drop = 100 * float((base.fp_top1 - base.ptq_top1).mean())  # one seed: the mean over receivers
    assert table.ptq_drop.to_numpy() == pytest.approx([drop, drop], abs=1e-9)


def test_vector_sizes_agree_with_a_direct_computation(study) -> None:
    _, root = study
    layout = RunLayout(root / "short")
    theta0 = load_params(layout.theta0())[0]
    dist, size = [], []
    for task in ("shape", "hue", "position"):
        theta = load_params(layout.finetuned(0, task))[0]
        rho = load_params(layout.rho(0, 2, task))[0]
        keys = [k for k in theta if not k.startswith("head.")]
        flat = lambda d: torch.cat([d[k].double().reshape(-1) for k in keys])  # noqa: E731
        dist.append(float((flat(theta) - flat(theta0)).norm() / flat(theta0).norm()))
        size.append(float(torch.cat([rho[k].reshape(-1) for k in keys]).norm() / flat(theta).norm()))
    got = vector_sizes(root / "short")
    assert math.isclose(got["finetune_distance"], sum(dist) / 3, rel_tol=1e-12)
    assert math.isclose(got["rho_size"], sum(size) / 3, rel_tol=1e-12)


def test_the_command_tabulates_and_draws_the_phase_diagram(study, tmp_path: Path) -> None:
    path, root = study
    res = CliRunner().invoke(app, ["study", str(path), "--root", str(root), "--table-only", "--out-dir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert {p.name for p in tmp_path.iterdir()} >= {"mini.csv", "mini_phase.pdf", "mini_phase.png", "mini_phase.csv"}
    empty = tmp_path / "none"
    res = CliRunner().invoke(app, ["study", str(path), "--root", str(empty), "--table-only"])
    assert res.exit_code == 1 and "no cell" in res.output

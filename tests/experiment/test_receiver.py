"""The evaluation protocol and the geometry of one receiver are functions of what is passed in:
called on tensors loaded from a finished run, with no run directory to write into, they give
the run's own rows exactly (the run computed them in the same single-thread process setting)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from qgeom.experiment.artifacts import RunArtifacts
from qgeom.experiment.evaluate import Receiver, evaluate_receiver
from qgeom.experiment.layout import RunLayout
from qgeom.experiment.measure import GeometryInputs, measure_receiver
from qgeom.experiment.tasks import load_run_task
from qgeom.io import load_params


def _inputs(run_dir: Path, receiver: str = "hue", seed: int = 0, bits: int = 2):
    art, layout = RunArtifacts(run_dir), RunLayout(run_dir)
    names = art.names
    task = load_run_task(art.cfg, receiver)  # the full task, as the run read it
    theta = art.finetuned(seed, receiver)
    rhos = {d: art.rho(seed, bits, d) for d in names}
    return art, layout, task, theta, rhos


def test_evaluate_receiver_needs_no_run_directory_and_gives_the_run_rows(tiny_run: Path, tmp_path: Path) -> None:
    art, layout, task, theta, rhos = _inputs(tiny_run)
    others = {d: load_params(layout.rho(0, 2, d, "other"))[0] for d in art.names if d != "hue"}
    r = Receiver(0, 2, "hue", art.model(theta), task, theta, art.qat(0, 2, "hue"),
                 load_params(layout.theta0())[0], rhos, others, torch.device("cpu"))
    before = sorted(p.name for p in tmp_path.iterdir())
    got = evaluate_receiver(art.cfg, r)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written
    want = pd.read_csv(layout.evaluation(0, 2, "hue"), keep_default_na=False, na_values=[""])
    got = pd.read_csv(pd.io.common.StringIO(got.to_csv(index=False)), keep_default_na=False, na_values=[""])
    pd.testing.assert_frame_equal(got, want, check_exact=True)


def test_measure_receiver_needs_no_run_directory_and_gives_the_run_rows(tiny_run: Path) -> None:
    art, layout, task, theta, rhos = _inputs(tiny_run)
    g = GeometryInputs(0, 2, "hue", art.model(theta), task, theta, art.qat(0, 2, "hue"), rhos, torch.device("cpu"))
    logged: list[str] = []
    got = measure_receiver(art.cfg, g, logged.append)
    want = pd.read_csv(layout.geometry(0, 2, "hue"), keep_default_na=False, na_values=[""])
    got = pd.read_csv(pd.io.common.StringIO(got.to_csv(index=False)), keep_default_na=False, na_values=[""])
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    assert set(got.quantity) >= {"cosine", "lam_star", "indefinite", "recovery", "p2_lam_star", "L0"}

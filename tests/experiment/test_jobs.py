"""Stages as jobs: declared inputs/outputs, waves, submitit's local executor (real subprocesses)."""

from __future__ import annotations

import shutil

import pandas as pd

from qgeom.experiment.presets import preset
from qgeom.experiment.layout import load_run_config
from qgeom.experiment.stages import Stage, plan, waves

TABLES = ("accuracy.csv", "geometry.csv", "pairs.csv", "correlations.csv")


def test_waves_put_every_input_in_an_earlier_wave():
    cfg = preset("tiny")
    stages = plan(cfg)
    names = list(cfg.tasks)
    ws = waves(stages, names)
    assert sum(len(w) for w in ws) == len(stages) == 2 + 6 + 6 + 3 + 3  # tiny has the other-basin control
    where = {s: i for i, w in enumerate(ws) for s in w}
    for s in stages:
        assert all(where[i] < where[s] for i in s.inputs(names)), s.key
    assert [len(w) for w in ws] == [2, 6, 6, 6]  # θ_0s; fine-tunes; QATs; evaluations and geometry


def test_declared_outputs_are_what_an_in_process_run_writes(tiny_run):
    cfg = load_run_config(tiny_run)
    for s in plan(cfg):
        assert s.done(tiny_run), f"{s.key}: {s.outputs()}"
    assert not Stage("qat", 7, 2, "shape").done(tiny_run)


def test_slurm_unavailable_fails_at_once_before_any_work(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from qgeom.cli import app

    monkeypatch.setattr(shutil, "which", lambda name: None)
    res = CliRunner().invoke(app, ["run", "tiny", "--run-dir", str(tmp_path / "r"), "--executor", "slurm"])
    assert res.exit_code == 1 and "no Slurm here (sbatch is not on PATH)" in res.output
    assert not (tmp_path / "r").exists()


def test_local_jobs_give_the_in_process_tables_even_after_a_job_is_killed(tiny_run, tmp_path, monkeypatch):
    """Every stage a real subprocess (submitit's local executor); one QAT job is SIGKILLed after
    writing θ_QAT and before ρ, and is retried: the tables equal the in-process run's."""
    from qgeom.experiment.driver import run_experiment
    from qgeom.experiment.jobs import status

    monkeypatch.setenv("QGEOM_KILL_STAGE", "qat/seed0/2bit/hue")
    run_dir = tmp_path / "jobs_run"
    run_experiment("tiny", run_dir, [], progress=False,
                   jobs=dict(executor="local", max_parallel=3, retries=1, timeout_min=10))
    assert (run_dir / "jobs" / "killed-qat_seed0_2bit_hue").exists()  # the kill happened
    for name in TABLES:
        pd.testing.assert_frame_equal(pd.read_csv(run_dir / name), pd.read_csv(tiny_run / name), check_exact=True)
    rows = status(load_run_config(run_dir), run_dir)
    assert {r["status"] for r in rows} == {"done"} and all(r["job_id"] for r in rows if r["stage"] != "theta0")

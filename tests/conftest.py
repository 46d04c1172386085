"""Shared test settings: one thread by default (tiny models gain nothing from more; CI has 2 cores), deterministic seeds, hypothesis profile."""

import os
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

torch.set_num_threads(int(os.environ.get("QGEOM_TEST_THREADS", "1")))
os.environ.setdefault("QGEOM_WORKERS", "1")  # runs in-process (tests monkeypatch stages); one test asks for 2
settings.register_profile("qgeom", deadline=None, max_examples=30,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile("qgeom")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run of the ``tiny`` preset (geometry included), made once per session and
    shared by the transfer, figure and notebook tests (read-only: copy it before changing it)."""
    from qgeom.experiment.driver import run_experiment

    run_dir = tmp_path_factory.mktemp("tiny_run") / "run"
    run_experiment("tiny", run_dir, [], progress=False)
    return run_dir


@pytest.fixture(scope="session")
def tiny_run_wide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``tiny`` preset at width 48 instead of 32, without the geometry stage: the second run
    of the figures across runs (model scales)."""
    from qgeom.experiment.driver import run_experiment

    run_dir = tmp_path_factory.mktemp("tiny_run_wide") / "wide"
    run_experiment("tiny", run_dir, ['model_overrides={"embed_dim": 48, "depth": 2, "num_heads": 2}'], geometry=False,
                   progress=False)
    return run_dir

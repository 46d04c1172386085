"""A tiny finished run (the ``tiny`` preset, geometry included) shared by the figure and notebook
tests: made once per session, whichever test module asks first.

A fixture imported into two test modules is registered twice by pytest, so the run itself is
cached here, at module level (the module is imported once per session).
"""

from __future__ import annotations

from pathlib import Path

import pytest

_RUN: Path | None = None


def make_tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run directory, made with ``run_experiment("tiny", …)`` on the first call."""
    global _RUN
    if _RUN is None:
        from qgeom.commands.transfer_cli import run_experiment

        run_dir = tmp_path_factory.mktemp("tiny_run") / "run"
        run_experiment("tiny", run_dir, [], progress=False)
        _RUN = run_dir
    return _RUN


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_run(tmp_path_factory)

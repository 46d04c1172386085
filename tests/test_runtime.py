"""The shared ``--threads`` option: present on every command that runs torch, and applied."""

from __future__ import annotations

import torch
from typer.testing import CliRunner

from qgeom.cli import app
from qgeom.runtime import set_threads

NO_TORCH = {"tasks", "summary", "status"}  # list tasks, print a summary.json, list stage files: no torch work


def _names():
    for c in app.registered_commands:
        yield c.name or c.callback.__name__.replace("_", "-")


def test_every_torch_command_has_threads():
    runner = CliRunner()
    missing = [n for n in _names() if n not in NO_TORCH and "--threads" not in runner.invoke(app, [n, "--help"]).output]
    assert not missing, f"commands without --threads: {missing}"


def test_set_threads_keeps_torchs_count_for_zero():
    before = torch.get_num_threads()
    try:
        assert set_threads(1) == 1
        assert set_threads(0) == 1  # 0 keeps what is set
    finally:
        torch.set_num_threads(before)

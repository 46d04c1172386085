"""The shared ``--threads`` option: present on every command that runs torch, and applied."""

from __future__ import annotations

import torch
import typer
from typer.testing import CliRunner

from qgeom.cli import app
from qgeom.commands.threads import set_threads, with_threads

NO_TORCH = {"tasks"}  # lists the offline tasks: no torch work to thread


def _names():
    for c in app.registered_commands:
        yield c.name or c.callback.__name__.replace("_", "-")


def test_every_torch_command_has_threads():
    runner = CliRunner()
    missing = [n for n in _names() if n not in NO_TORCH and "--threads" not in runner.invoke(app, [n, "--help"]).output]
    assert not missing, f"commands without --threads: {missing}"


def test_threads_is_applied_and_removed_before_the_command():
    seen = {}
    before = torch.get_num_threads()
    try:
        mini = typer.Typer()

        @mini.command()
        @with_threads
        def probe(x: int = 0) -> None:
            seen["threads"], seen["x"] = torch.get_num_threads(), x

        res = CliRunner().invoke(mini, ["--x", "3", "--threads", "1"])
        assert res.exit_code == 0, res.output
        assert seen == {"threads": 1, "x": 3}
        assert set_threads(0) == 1  # 0 keeps what is set
    finally:
        torch.set_num_threads(before)

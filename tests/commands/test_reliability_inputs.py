"""Issue 27: reliability, round two. No exit 0 with a number computed from mismatched inputs, no
stale results after an input changed, no traceback or locked run directory after a failed start.
One test (or more) per item of the issue's "What to build"; each fails on the code before the
fix. Runs on copies of the shared tiny run (never on the run itself)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from qgeom.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def refused(res, *needles: str) -> None:
    """Exit 1, one ``Error:`` line holding every needle, no traceback."""
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output and isinstance(res.exception, SystemExit), res.output
    errors = [x for x in res.output.splitlines() if x.startswith("Error:")]
    assert len(errors) == 1 and all(n in errors[0] for n in needles), res.output


def image_folder(root: Path, classes: int, per_class: int = 10) -> Path:
    """A flat ImageFolder ``root/<class>/<image>.png`` of small solid-colour images."""
    from PIL import Image

    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (8, 8), (40 * c, 7 * i, 100)).save(root / f"c{c}" / f"{i}.png")
    return root


@pytest.fixture
def run_copy(tiny_run: Path, tmp_path: Path) -> Path:
    d = tmp_path / "run"
    shutil.copytree(tiny_run, d)
    return d


# -- 1. a checkpoint and a task must fit, in every command that reads both ---------------------------------


def test_a_head_that_does_not_fit_the_task_is_refused_by_every_command(tiny_run: Path, tmp_path: Path) -> None:
    from qgeom.models import create_model

    ck = tmp_path / "three.pth"  # a timm-format 3-class checkpoint (no qgeom metadata)
    torch.save(create_model("micro", 3, seed=0).state_dict(), ck)
    data = f"imagefolder:two={image_folder(tmp_path / 'two', 2)}"
    rho = tiny_run / "seed0/qat2/rho_shape.safetensors"
    same = ["--model", "micro", "--data", data]
    commands = {
        "geometry": ["geometry", ck, rho, rho, *same, "--n-probe", "4"],
        "spectrum": ["spectrum", ck, *same, "--n-probe", "4", "--k", "1"],
        "check-invariance": ["check-invariance", "--checkpoint", ck, *same, "--n-probe", "4", "--levels", "function"],
        "evaluate": ["evaluate", ck, *same],
        "qat": ["qat", "--finetuned", ck, *same, "--out", tmp_path / "q.safetensors", "--steps", "1"],
    }
    for name, args in commands.items():
        refused(invoke(*args), f"{ck} has a 3-class head but task two has 2 classes")
    assert not (tmp_path / "q.safetensors").exists()


def test_a_head_trained_for_another_task_of_the_same_size_is_refused(tiny_run: Path) -> None:
    shape = tiny_run / "seed0/finetune/shape.safetensors"  # shape and position: 4 classes each
    rho = tiny_run / "seed0/qat2/rho_shape.safetensors"
    for args in (["geometry", shape, rho, rho, "--data", "position", "--n-probe", "4"],
                 ["evaluate", shape, "--data", "position"],
                 ["check-invariance", "--checkpoint", shape, "--data", "position", "--n-probe", "4",
                  "--levels", "function"]):
        refused(invoke(*args), f"{shape} was trained for task shape", "not for task position")
    res = invoke("evaluate", shape, "--data", "shape")  # its own task, named: fine
    assert res.exit_code == 0, res.output

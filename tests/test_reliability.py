"""Issue 17: no command loses data, reports a number computed from bad input, or starts work on
a config it will later refuse. One test (or more) per numbered defect of the issue; each fails
on the code before the fix. Runs on copies of the shared tiny run (never on the run itself)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qgeom.cli import app

runner = CliRunner()
TABLES = ("accuracy.csv", "geometry.csv", "pairs.csv", "receivers.csv", "correlations.csv", "dissimilarity.csv")


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture
def run_copy(tiny_run: Path, tmp_path: Path) -> Path:
    d = tmp_path / "run"
    shutil.copytree(tiny_run, d)
    return d


# -- 1. data loss: --no-geometry -------------------------------------------------------------------


def test_no_geometry_on_a_finished_run_rewrites_no_table(run_copy: Path) -> None:
    before = {n: (run_copy / n).read_bytes() for n in TABLES}
    res = invoke("run", "tiny", "--no-geometry", "--run-dir", run_copy)
    assert res.exit_code == 0, res.output
    for n in TABLES:
        assert (run_copy / n).read_bytes() == before[n], n
    summary = json.loads((run_copy / "summary.json").read_text())
    assert summary["results"] and summary["correlations"]


def test_no_geometry_on_a_run_without_geometry_works(run_copy: Path) -> None:
    shutil.rmtree(run_copy / "seed0" / "geometry2")
    for n in TABLES + ("summary.json",):
        (run_copy / n).unlink()
    res = invoke("run", "tiny", "--no-geometry", "--run-dir", run_copy)
    assert res.exit_code == 0, res.output
    assert "no curvature alignment measured" in res.output
    assert not (run_copy / "geometry.csv").exists() and not (run_copy / "seed0" / "geometry2").exists()
    header = (run_copy / "correlations.csv").read_text().splitlines()
    assert header[0].startswith("bits,scope,alignment,target,method,r,p_value") and len(header) == 1
    assert json.loads((run_copy / "summary.json").read_text())["results"]


# -- 2. a malformed config fails before any work, naming the key, leaving the run dir as it was ---------

BAD_OVERRIDES = [
    ("bits=9", "bits: 9 is not a supported bit width (2–8)"),
    ("bits=abc", "bits: 'abc' is not an integer"),
    ("bits=", "bits: needs at least 1 value"),
    ("seeds=", "seeds: needs at least 1 value"),
    ("tasks=", "tasks: needs at least 2 values"),
    ("tasks=shape,cifar", "tasks: unknown task 'cifar'"),
    ("pretext_tasks=nope", "pretext_tasks: unknown task 'nope'"),
    ("lambdas=nan,1", "lambdas: nan is not a finite λ > 0"),
    ("lambdas=-1,1", "lambdas: -1.0 is not a finite λ > 0"),
    ("finetune.steps=0", "finetune.steps: 0 must be ≥ 1"),
    ("qat.lr=nan", "qat.lr: nan must be a finite number > 0"),
    ("pretrain.lr=inf", "pretrain.lr: inf must be a finite number > 0"),
    ("probe_size=-3", "probe_size: -3 must be ≥ 1"),
    ("scopes=head", "scopes: 'head' is not one of backbone, quantized"),
    ("metrics=cosine", "metrics: 'cosine' is not one of ggn, hessian, fisher"),
]


@pytest.mark.parametrize("override,message", BAD_OVERRIDES)
def test_a_malformed_config_is_refused_before_any_work(tmp_path: Path, override: str, message: str) -> None:
    d = tmp_path / "run"
    res = invoke("run", "tiny", override, "--run-dir", d)
    assert res.exit_code == 1, res.output
    assert f"Error: {message}" in res.output and "Traceback" not in res.output
    assert not d.exists()  # nothing written: the corrected config can use the same directory


def test_a_malformed_config_leaves_an_existing_run_dir_as_it_was(run_copy: Path) -> None:
    before = snapshot(run_copy)
    res = invoke("run", "tiny", "bits=9", "--run-dir", run_copy)
    assert res.exit_code == 1 and "bits: 9" in res.output
    assert snapshot(run_copy) == before


def test_a_malformed_config_file_names_the_file_and_key(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.json"
    cfg.write_text(json.dumps({"preset_base": "tiny", "finetune": {"lr": "fast"}}))
    res = invoke("run", cfg, "--run-dir", tmp_path / "run")
    assert res.exit_code == 1 and f"{cfg}: finetune.lr: 'fast' is not a number" in res.output
    assert not (tmp_path / "run").exists()


def test_validation_accepts_every_preset_and_the_api_refuses_too(tmp_path: Path) -> None:
    import dataclasses

    from qgeom.config import ConfigError, preset, validate
    from qgeom.transfer import TransferRun

    for name in ("demo", "tiny", "gpu"):
        validate(preset(name))
    with pytest.raises(ConfigError, match="bits: 1 is not a supported bit width"):
        TransferRun(dataclasses.replace(preset("tiny"), bits=(1,)), tmp_path / "r")
    assert not (tmp_path / "r").exists()

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

    from qgeom.experiment.config import ConfigError, validate
    from qgeom.experiment.presets import preset
    from qgeom.experiment.transfer import TransferRun

    for name in ("demo", "tiny", "gpu"):
        validate(preset(name))
    with pytest.raises(ConfigError, match="bits: 1 is not a supported bit width"):
        TransferRun(dataclasses.replace(preset("tiny"), bits=(1,)), tmp_path / "r")
    assert not (tmp_path / "r").exists()


# -- 3. a read-only command never writes into a run ---------------------------------------------------


def test_align_demo_never_trains_a_missing_stage(run_copy: Path) -> None:
    before = snapshot(run_copy)
    res = invoke("align-demo", run_copy, "--donor-task", "shape", "--receiver-task", "hue", "--bits", "3")
    assert res.exit_code == 1, res.output
    assert "has no 3-bit stage" in res.output and "bits=2,3" in res.output and "Traceback" not in res.output
    res = invoke("align-demo", run_copy, "--donor-task", "shape", "--receiver-task", "count")
    assert res.exit_code == 1 and "has no task count" in res.output
    assert snapshot(run_copy) == before


# -- 6. one error path: every command, OS errors as one line naming the path, Ctrl-C ------------------


def _commands(run: Path, bad: Path) -> dict[str, list]:
    ft, q = run / "seed0/finetune/hue.safetensors", run / "seed0/qat2/hue.safetensors"
    rho = run / "seed0/qat2/rho_shape.safetensors"
    return {
        "pretrain": ["pretrain", "--out", bad / "t.safetensors", "--steps", "1"],
        "finetune": ["finetune", "--pretrained", run / "theta0.safetensors", "--task", "hue", "--out", bad / "f.safetensors"],
        "qat": ["qat", "--finetuned", ft, "--out", bad / "q.safetensors"],
        "extract": ["extract", "--qat", q, "--finetuned", ft, "--out", bad / "r.safetensors"],
        "patch": ["patch", "--receiver", ft, "--vector", rho, "--out", bad / "p.safetensors"],
        "ptq": ["ptq", "--weights", ft, "--out", bad / "p.safetensors"],
        "geometry": ["geometry", ft, rho, "--out-dir", bad / "geo"],
        "spectrum": ["spectrum", ft, "--out-dir", bad / "spec"],
        "check-invariance": ["check-invariance", "--out-dir", bad / "inv"],
        "figures": ["figures", run, "--out-dir", bad / "figs", "--cheap"],
        "run": ["run", "tiny", "--run-dir", bad / "run"],
        "demo": ["demo", "--run-dir", bad / "run"],
    }


@pytest.mark.parametrize("command", sorted(_commands(Path("r"), Path("b"))))
def test_every_command_with_an_unwritable_output_fails_in_one_line(tiny_run: Path, tmp_path: Path, command: str) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    res = invoke(*_commands(tiny_run, blocker)[command])
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output and isinstance(res.exception, SystemExit)
    line = [x for x in res.output.splitlines() if x.startswith("Error:")]
    assert line == [f"Error: not a directory: {blocker}"], res.output
    assert blocker.read_text() == "not a directory"


def test_every_command_is_wrapped_by_the_one_error_path() -> None:
    import typer

    commands = typer.main.get_command(app).commands
    assert set(_commands(Path("r"), Path("b"))) <= set(commands)
    for name, cmd in commands.items():
        f, wrapped = cmd.callback, False
        while f is not None and not wrapped:
            wrapped, f = getattr(f, "clean_errors", False), getattr(f, "__wrapped__", None)
        assert wrapped, f"{name} is not wrapped by clean_errors"


def test_check_invariance_refuses_a_pickle_in_one_line(tmp_path: Path) -> None:
    import pickle

    bad = tmp_path / "evil.safetensors"
    bad.write_bytes(pickle.dumps({"x": 1}))
    res = invoke("check-invariance", "--checkpoint", bad, "--n-probe", "2")
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert f"Error: {bad} is a pickle" in res.output
    assert invoke("check-invariance", "--bits", "1").exit_code == 2
    assert invoke("align-demo", tmp_path, "--bits", "1").exit_code == 2


def test_a_failing_write_names_the_path_and_keeps_the_old_file(tiny_run: Path, tmp_path: Path, monkeypatch) -> None:
    import errno

    import safetensors.torch

    out = tmp_path / "p.safetensors"
    out.write_bytes(b"old")

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    res = invoke("ptq", "--weights", tiny_run / "seed0/finetune/hue.safetensors", "--out", out)
    assert res.exit_code == 1 and f"Error: no space left on device: {out}" in res.output, res.output
    assert out.read_bytes() == b"old" and not list(tmp_path.glob(".*.tmp"))


def test_ctrl_c_says_the_run_can_be_resumed(run_copy: Path, monkeypatch) -> None:
    import qgeom.experiment.transfer as T

    def interrupted(self, *a, **k):
        raise KeyboardInterrupt

    (run_copy / "accuracy.csv").unlink()
    monkeypatch.setattr(T.TransferRun, "dissimilarity", interrupted)
    res = invoke("run", "tiny", "--run-dir", run_copy)
    assert res.exit_code == 130 and "run the same command again to resume" in res.output
    assert "Traceback" not in res.output


# -- 7. qgeom reads its own checkpoints without extra flags -------------------------------------------


def test_evaluate_and_geometry_read_every_artifact_of_a_run(tiny_run: Path, tmp_path: Path) -> None:
    import pandas as pd

    models = [tiny_run / "theta0.safetensors"] + sorted(tiny_run.glob("seed0/finetune/*.safetensors")) + \
        sorted(p for p in tiny_run.glob("seed0/qat2/*.safetensors") if not p.name.startswith("rho_"))
    vectors = sorted(tiny_run.glob("seed0/qat2/rho_*.safetensors"))
    assert len(models) == 7 and len(vectors) == 3
    res = invoke("evaluate", *models)
    assert res.exit_code == 0, res.output
    assert "pretext:shape+hue+position" in res.output
    # the numbers are the run's own: same task data, same sizes
    acc = pd.read_csv(tiny_run / "accuracy.csv")
    fp = acc[(acc.method == "baseline") & (acc.metric == "fp_top1") & (acc.receiver == "hue")].value.item()
    rows = [[c.strip() for c in x.split("│")] for x in res.output.splitlines() if x.startswith("│")]
    assert len(rows) == 7 and rows[1][2] == "hue"  # theta0, then finetune/hue
    assert rows[1][3] == f"{100 * fp:.1f}"  # printed Top-1 in %, like every command
    for receiver, extra in ((tiny_run / "seed0/finetune/hue.safetensors", []),
                            (tiny_run / "seed0/qat2/hue.safetensors", ["--objective", "ste"])):
        res = invoke("geometry", receiver, *vectors, "--n-probe", "16", "--probe-batch", "16", *extra)
        assert res.exit_code == 0, res.output
    res = invoke("evaluate", vectors[0])
    assert res.exit_code == 1 and "is a quantization vector" in res.output


# -- 4. no number from non-finite input ----------------------------------------------------------------


def _with_nan(src: Path, dst: Path, key: str = "blocks.0.attn.qkv.weight") -> Path:
    from qgeom import io as qio

    theta, meta = qio.load_params(src)
    theta[key] = theta[key].clone()
    theta[key][0, 0] = float("nan")
    from safetensors.torch import save_file

    meta.pop("content_hash", None)
    save_file({k: v.contiguous() for k, v in theta.items()}, str(dst), metadata=meta)  # bypasses save_params' check
    return dst


def test_evaluate_and_geometry_refuse_a_checkpoint_with_nan_naming_file_and_tensor(tiny_run: Path, tmp_path: Path) -> None:
    bad = _with_nan(tiny_run / "seed0/finetune/hue.safetensors", tmp_path / "nan.safetensors")
    res = invoke("evaluate", bad)  # no --bits: used to print an FP Top-1 from NaN weights
    assert res.exit_code == 1 and f"Error: {bad}: NaN or Inf values in tensor blocks.0.attn.qkv.weight" in res.output
    rho = tiny_run / "seed0/qat2/rho_shape.safetensors"
    res = invoke("geometry", bad, rho, rho, "--out-dir", tmp_path / "geo")
    assert res.exit_code == 1 and f"{bad}: NaN or Inf" in res.output and not (tmp_path / "geo").exists()
    bad_rho = _with_nan(rho, tmp_path / "nan_rho.safetensors")
    res = invoke("geometry", tiny_run / "seed0/finetune/hue.safetensors", bad_rho, rho)
    assert res.exit_code == 1 and f"{bad_rho}: NaN or Inf" in res.output


def test_api_loaders_refuse_non_finite_tensors(tiny_run: Path, tmp_path: Path) -> None:
    import torch

    from qgeom import io as qio, params as P
    from qgeom.models import load_checkpoint

    bad = _with_nan(tiny_run / "seed0/finetune/hue.safetensors", tmp_path / "nan.safetensors")
    with pytest.raises(P.NonFiniteParamsError, match="nan.safetensors: NaN or Inf values in tensor blocks.0"):
        qio.load_params(bad)
    assert qio.load_params(bad, finite=False)[0]  # explicit opt-out for forensics
    torch.save({"w": torch.tensor([1.0, float("inf")])}, tmp_path / "inf.pt")
    with pytest.raises(P.NonFiniteParamsError, match="inf.pt: NaN or Inf values in tensor w"):
        load_checkpoint(tmp_path / "inf.pt")


def test_geometry_json_is_strict(tiny_run: Path, tmp_path: Path) -> None:
    from qgeom import io as qio, params as P

    vectors = sorted(tiny_run.glob("seed0/qat2/rho_*.safetensors"))
    rho, meta = qio.load_params(vectors[0])
    qio.save_params(tmp_path / "zero.safetensors", P.zeros_like(rho), meta)  # cos_M undefined: NaN in the tables
    res = invoke("geometry", tiny_run / "seed0/finetune/hue.safetensors", *vectors, tmp_path / "zero.safetensors",
                 "--n-probe", "16", "--out-dir", tmp_path / "geo")
    assert res.exit_code == 0, res.output
    text = (tmp_path / "geo" / "geometry.json").read_text()
    data = json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in geometry.json"))
    assert any(p["metric_cosine"] is None for p in data["pairs"])  # undefined is null, not NaN


# -- 5. patching states its contract ---------------------------------------------------------------------


def test_patch_refuses_a_partial_vector_and_a_checkpoint_as_vector(tiny_run: Path, tmp_path: Path) -> None:
    from qgeom import io as qio, params as P

    receiver = tiny_run / "seed0/finetune/hue.safetensors"
    rho, meta = qio.load_params(tiny_run / "seed0/qat2/rho_shape.safetensors")
    partial = dict(list(rho.items())[:-3])
    qio.save_params(tmp_path / "partial.safetensors", partial, meta)
    out = tmp_path / "out.safetensors"
    res = invoke("patch", "--receiver", receiver, "--vector", tmp_path / "partial.safetensors", "--out", out)
    assert res.exit_code == 1 and "of scope backbone; missing: " in res.output and not out.exists()
    assert list(rho)[-1] in res.output
    res = invoke("patch", "--receiver", receiver, "--vector", tmp_path / "partial.safetensors", "--out", out,
                 "--allow-partial")
    assert res.exit_code == 0, res.output
    assert json.loads(qio.load_params(out)[1]["partial"]) is True
    res = invoke("patch", "--receiver", receiver, "--vector", tiny_run / "seed0/qat2/shape.safetensors",
                 "--out", tmp_path / "o2.safetensors")
    assert res.exit_code == 1 and "is a model checkpoint (stage qat), not a vector" in res.output
    # the API: a full checkpoint (head included) and a partial vector are refused
    theta = qio.load_params(receiver)[0]
    with pytest.raises(P.IncompatibleParamsError, match="head tensors .*head.bias, head.weight|head tensors .*head.weight"):
        P.patch(theta, P.sub(theta, theta))
    with pytest.raises(P.IncompatibleParamsError, match="missing: "):
        P.patch(theta, partial)
    P.patch(theta, partial, allow_partial=True)
    P.patch(theta, P.select(rho, "quantized"))  # a whole scope is fine
    # the declared scope is read: a backbone vector restricted to quantized via --scope
    res = invoke("patch", "--receiver", receiver, "--vector", tiny_run / "seed0/qat2/rho_shape.safetensors",
                 "--out", tmp_path / "o3.safetensors", "--scope", "quantized")
    assert res.exit_code == 0, res.output
    patched, pm = qio.load_params(tmp_path / "o3.safetensors")
    assert pm["vector_scope"] == "quantized" and qio.load_params(receiver)[0]["norm.weight"].equal(patched["norm.weight"])


# -- 8. degenerate probe sets are flagged --------------------------------------------------------------


def test_geometry_flags_a_tiny_or_capped_probe_set(tiny_run: Path, tmp_path: Path) -> None:
    import pandas as pd

    from qgeom.curvature.probe import probe_warnings

    assert probe_warnings(64, 64, 6) == []
    assert "exceeds the split's 64 images" in probe_warnings(100000, 64, 6)[0]
    receiver = tiny_run / "seed0/finetune/hue.safetensors"  # 6 classes
    vectors = sorted(tiny_run.glob("seed0/qat2/rho_*.safetensors"))
    res = invoke("geometry", receiver, *vectors, "--n-probe", "1", "--out-dir", tmp_path / "g1")
    assert res.exit_code == 0 and "warning: probe set of 1 images is below 2 × 6 classes" in res.output
    assert pd.read_csv(tmp_path / "g1" / "geometry_pairs.csv").probe_warning.str.contains("degenerate").all()
    res = invoke("geometry", receiver, *vectors, "--n-probe", "100000", "--probe-split", "val", "--out-dir", tmp_path / "g2")
    assert res.exit_code == 0 and "exceeds the split's 64 images: using 64" in " ".join(res.output.split())
    info = json.loads((tmp_path / "g2" / "geometry.json").read_text())["info"]
    assert info["n_probe_used"] == 64 and info["probe_warnings"]


# -- 8 (build list). a killed atomic write leaves nothing behind --------------------------------------------


def test_temporaries_of_a_write_killed_by_sigkill_are_removed_by_the_next_write(tmp_path: Path) -> None:
    import subprocess
    import sys

    target = tmp_path / "table.csv"
    code = ("import os, signal, sys; from qgeom.io import atomic_write\n"
            "def w(tmp):\n    open(tmp, 'w').write('half a'); os.kill(os.getpid(), signal.SIGKILL)\n"
            f"atomic_write({str(target)!r}, w)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[2], capture_output=True)
    assert proc.returncode == -9
    left = list(tmp_path.glob(".table.csv.*.tmp"))
    assert len(left) == 1 and not target.exists()  # the kill left a temporary, never the target
    from qgeom.io import atomic_write

    atomic_write(tmp_path / "other.csv", lambda tmp: Path(tmp).write_text("x"))  # any next write in the directory
    assert not list(tmp_path.glob(".*.tmp")) and not target.exists()


def test_temporaries_written_on_another_machine_are_left_alone(tmp_path: Path) -> None:
    """A run directory shared by cluster jobs: another machine's process ids mean nothing here,
    so its in-flight temporaries must survive a write on this machine."""
    from qgeom.io import HOST, atomic_write

    foreign = tmp_path / f".table.csv.{HOST}x_1.abc.tmp"  # another host name, a pid that is dead here
    mine_dead = tmp_path / f".table.csv.{HOST}_999999999.abc.tmp"
    foreign.write_text("in flight elsewhere")
    mine_dead.write_text("killed here")
    atomic_write(tmp_path / "other.csv", lambda tmp: Path(tmp).write_text("x"))
    assert foreign.exists() and not mine_dead.exists()

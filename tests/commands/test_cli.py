"""The ``qgeom`` command line: help everywhere, one tiny pipeline end to end, clear errors.

The pipeline runs in-process (typer's CliRunner) on a one-block micro model (pretrain's
``--model-overrides``, carried by every later checkpoint's metadata) with 2 optimizer steps per
stage, and with the tasks the commands load shrunk to 64/16/64 images (``qgeom.commands.inputs.task_for`` is
patched: the default 4000/500/1000 would dominate the suite's run time). It checks files,
metadata and that each command computes what the library does, not accuracy.
"""

from __future__ import annotations

import json

import pytest
import torch
import typer
from typer.testing import CliRunner

from qgeom import params as P
from qgeom import io as qio
from qgeom.cli import app
from qgeom.data import load_task
from qgeom.quant import QuantSpec, ptq
from qgeom.train import accuracy

runner = CliRunner()
FAST = ["--steps", "2", "--batch-size", "16"]
TINY = '{"embed_dim": 16, "depth": 1, "num_heads": 2}'
SIZES = dict(n_train=64, n_val=16, n_test=64)


def small_task(name, seed, model=None, data_root=None, **sizes):
    return load_task(name, seed, **SIZES)


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def ok(*args: str):
    result = invoke(*args)
    assert result.exit_code == 0, f"{args}: {result.output}\n{result.exception!r}"
    return result


# --------------------------------------------------------------------------------------------
# help
# --------------------------------------------------------------------------------------------


def command_names() -> list[str]:
    return sorted(typer.main.get_command(app).commands)


def test_top_level_help_lists_the_stage_commands():
    out = ok("--help").output
    for name in ("pretrain", "finetune", "qat", "extract", "patch", "ptq", "evaluate", "tasks"):
        assert name in out
    assert set(command_names()) >= {"pretrain", "finetune", "qat", "extract", "patch", "ptq", "evaluate", "tasks"}


@pytest.mark.parametrize("name", command_names())
def test_every_command_has_help(name):
    result = ok(name, "--help")
    assert "Usage:" in result.output and name in result.output


def test_bits_help_states_the_range():
    assert "2–8" in ok("qat", "--help").output


def test_tasks_lists_the_offline_and_real_tasks():
    out = ok("tasks").output
    assert "shape" in out and "digits" in out and "ImageNet" in out


# --------------------------------------------------------------------------------------------
# the pipeline
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("qgeom.commands.inputs.task_for", small_task)
        yield pipeline(tmp_path_factory.mktemp("cli"))


def pipeline(d):
    f = {name: d / f"{name}.safetensors" for name in ("theta0", "ft_shape", "ft_hue", "qat_shape", "rho", "patched",
                                                      "restored", "ptq")}
    logs = {}
    logs["pretrain"] = ok("pretrain", "--out", f["theta0"], "--tasks", "shape,hue", "--n-per-task", "32",
                          "--model-overrides", TINY, *FAST).output
    logs["ft_shape"] = ok("finetune", "--pretrained", f["theta0"], "--task", "shape", "--out", f["ft_shape"], *FAST).output
    logs["ft_hue"] = ok("finetune", "--pretrained", f["theta0"], "--task", "hue", "--out", f["ft_hue"], *FAST).output
    logs["qat"] = ok("qat", "--finetuned", f["ft_shape"], "--out", f["qat_shape"], "--bits", "2", *FAST).output
    logs["extract"] = ok("extract", "--qat", f["qat_shape"], "--finetuned", f["ft_shape"], "--out", f["rho"]).output
    logs["patch"] = ok("patch", "--receiver", f["ft_hue"], "--vector", f["rho"], "--out", f["patched"],
                       "--lam", "0.5").output
    ok("patch", "--receiver", f["ft_shape"], "--vector", f["rho"], "--out", f["restored"])  # donor = receiver
    logs["ptq"] = ok("ptq", "--weights", f["patched"], "--out", f["ptq"], "--bits", "3").output
    logs["evaluate"] = ok("evaluate", f["ft_hue"], f["patched"], "--bits", "2").stdout  # the table; progress: stderr
    return d, f, logs


def load(path):
    return qio.load_params(path)  # verifies the content hash


def test_pipeline_writes_every_file_with_its_metadata(run):
    d, f, logs = run
    assert all(p.is_file() for p in f.values())
    assert not list(d.glob(".*.tmp"))  # no leftovers of atomic writes
    theta0, m0 = load(f["theta0"])
    assert m0["preset"] == "micro" and json.loads(m0["num_classes"]) == 10  # shape 4 + hue 6
    assert json.loads(m0["model_overrides"]) == json.loads(TINY)
    assert m0["task"] == "pretext:shape+hue" and m0["stage"] == "pretrain"
    assert json.loads(m0["config"])["steps"] == 2
    ft, mf = load(f["ft_shape"])
    assert mf["task"] == "shape" and json.loads(mf["num_classes"]) == 4 and mf["stage"] == "finetune"
    assert mf["parent"] == str(f["theta0"]) and ft["head.weight"].shape == (4, 16)
    assert json.loads(mf["model_overrides"]) == json.loads(TINY)  # carried on
    assert load(f["ft_hue"])[0]["head.weight"].shape == (6, 16)
    assert not torch.equal(ft["blocks.0.attn.qkv.weight"], theta0["blocks.0.attn.qkv.weight"])  # it trained
    q, mq = load(f["qat_shape"])
    assert list(q) == list(ft) and mq["stage"] == "qat" and json.loads(mq["bits"]) == 2
    assert "shape test Top-1 after 2-bit PTQ" in logs["qat"]


def test_extract_writes_the_quantization_vector(run):
    _, f, logs = run
    rho, meta = load(f["rho"])
    q, ft = load(f["qat_shape"])[0], load(f["ft_shape"])[0]
    expected = P.quantization_vector(q, ft)
    assert set(rho) == set(P.scope_keys(ft, "backbone")) and "head.weight" not in rho
    assert all(torch.equal(rho[k], expected[k]) for k in rho)
    assert meta["stage"] == "quantization_vector" and meta["scope"] == "backbone"
    assert f"{P.norm(rho):.4g}" in logs["extract"]


def test_patch_and_ptq_compute_what_the_library_does(run):
    _, f, logs = run
    receiver, rho = load(f["ft_hue"])[0], load(f["rho"])[0]
    patched, meta = load(f["patched"])
    expected = P.patch(receiver, rho, 0.5)
    assert list(patched) == list(receiver) and all(torch.equal(patched[k], expected[k]) for k in patched)
    assert torch.equal(patched["head.weight"], receiver["head.weight"])  # the receiver keeps its head
    assert meta["task"] == "hue" and json.loads(meta["lam"]) == 0.5 and meta["stage"] == "patch"
    quantized, qmeta = load(f["ptq"])
    expected_q = ptq(patched, QuantSpec(3))
    assert all(torch.equal(quantized[k], expected_q[k]) for k in quantized)
    assert json.loads(qmeta["bits"]) == 3 and "blocks.0.mlp.fc2.weight" in logs["ptq"]


def test_patching_the_donor_with_its_own_vector_restores_its_qat_weights(run):
    _, f, _ = run
    restored, q = load(f["restored"])[0], load(f["qat_shape"])[0]
    ft = load(f["ft_shape"])[0]
    for k in P.scope_keys(q, "backbone"):
        assert torch.equal(restored[k], q[k]), k
    assert torch.equal(restored["head.weight"], ft["head.weight"])


def test_evaluate_reports_fp_and_ptq_accuracy(run):
    _, f, logs = run
    out = logs["evaluate"]
    assert "PTQ 2b" in out and "hue" in out
    # the printed FP accuracy of the receiver is the library's
    from qgeom.models import create_model

    theta, meta = load(f["ft_hue"])
    t = small_task("hue", 0)
    model = create_model("micro", t.num_classes, **json.loads(TINY))
    acc, acc_q = accuracy(model, theta, t.test), accuracy(model, theta, t.test, QuantSpec(2))
    row = next(line for line in out.splitlines() if "ft_hue" in line)
    assert f"{100 * acc:.1f}" in row and f"{100 * acc_q:.1f}" in row  # Top-1 in %, like every command


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", ["9", "1"])
def test_unsupported_bits_exit_with_a_message(run, bits):
    d, f, _ = run
    for cmd in (["qat", "--finetuned", f["ft_shape"], "--out", d / "q9.safetensors", "--bits", bits, *FAST],
                ["ptq", "--weights", f["ft_shape"], "--out", d / "p9.safetensors", "--bits", bits],
                ["evaluate", f["ft_shape"], "--bits", "2", "--bits", bits]):
        result = invoke(*cmd)
        assert result.exit_code == 2, result.output
        assert "Invalid value for '--bits'" in result.output
    assert not (d / "q9.safetensors").exists() and not (d / "p9.safetensors").exists()


def test_an_incompatible_vector_exits_naming_the_key(run):
    d, f, _ = run
    rho, meta = load(f["rho"])
    qio.save_params(d / "rho_extra.safetensors", {**rho, "blocks.9.attn.qkv.weight": torch.zeros(3)}, meta)
    result = invoke("patch", "--receiver", f["ft_hue"], "--vector", d / "rho_extra.safetensors", "--out", d / "bad.safetensors")
    assert result.exit_code == 1
    assert result.output.startswith("Error: ")  # names the files, then the key
    assert "rho_extra.safetensors → " in result.output
    assert "vector keys not in the receiver: blocks.9.attn.qkv.weight" in result.output
    assert "Traceback" not in result.output and not (d / "bad.safetensors").exists()
    # a shape that does not fit names the key and both shapes
    qio.save_params(d / "rho_shape.safetensors", {**rho, "pos_embed": torch.zeros(1, 5, 16)}, meta)
    result = invoke("patch", "--receiver", f["ft_hue"], "--vector", d / "rho_shape.safetensors", "--out", d / "bad.safetensors")
    assert result.exit_code == 1 and "pos_embed (1, 17, 16) vs (1, 5, 16)" in result.output


def test_missing_corrupt_and_foreign_checkpoints_exit_cleanly(run, tmp_path):
    d, f, _ = run
    result = invoke("ptq", "--weights", tmp_path / "absent.safetensors", "--out", tmp_path / "x.safetensors")
    assert result.exit_code == 1 and "Error: no such checkpoint" in result.output
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(f["ft_shape"].read_bytes()[:1000])
    result = invoke("extract", "--qat", cut, "--finetuned", f["ft_shape"], "--out", tmp_path / "x.safetensors")
    assert result.exit_code == 1 and "truncated or corrupt" in result.output
    bare = qio.save_params(tmp_path / "bare.safetensors", load(f["ft_shape"])[0])  # no model metadata
    result = invoke("evaluate", bare)
    assert result.exit_code == 2 and "no model metadata" in result.output
    result = invoke("finetune", "--pretrained", bare, "--task", "shape", "--out", tmp_path / "x.safetensors")
    assert result.exit_code == 2 and "no model metadata" in result.output


def test_unknown_task_and_split_exit_cleanly(run, tmp_path):
    _, f, _ = run
    result = invoke("finetune", "--pretrained", f["theta0"], "--task", "cifar", "--out", tmp_path / "x.safetensors")
    assert result.exit_code == 1 and "unknown task 'cifar'; known offline tasks: shape" in result.output
    result = invoke("evaluate", f["ft_hue"], "--split", "dev")
    assert result.exit_code == 2 and "split must be train, val or test" in result.output


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_ptq_method_is_the_quantizer_on_the_checkpoints_own_calibration_images(run, method, monkeypatch):
    """``qgeom ptq --method gptq|awq`` = qgeom.quantizers.quantize on the first --calib-size
    training images of the checkpoint's task; --method rtn (the default) needs no data."""
    from qgeom.experiment.evaluate import calibration_batches
    from qgeom.models import create_model
    from qgeom.quant import QuantSpec
    from qgeom.quantizers import quantize

    monkeypatch.setattr("qgeom.commands.inputs.task_for", small_task)
    d, f, _ = run
    out = d / f"ptq_{method}.safetensors"
    ok("ptq", "--weights", f["ft_shape"], "--out", out, "--bits", "2", "--method", method, "--calib-size", "16")
    got, meta = load(out)
    assert meta["method"] == method and meta["calib_size"] == "16"
    theta, tmeta = load(f["ft_shape"])
    net = create_model(tmeta["preset"], int(tmeta["num_classes"]), **json.loads(tmeta["model_overrides"]))
    calib = calibration_batches(small_task("shape", 0, net).train, 16, 256, torch.device("cpu"))
    want = quantize(method, theta, QuantSpec(2), model=net, batches=calib).params
    assert all(torch.equal(got[k], want[k]) for k in want)
    bad = invoke("ptq", "--weights", f["ft_shape"], "--out", d / "bad.safetensors", "--method", "hqq")
    assert bad.exit_code == 2 and "rtn, gptq, awq" in bad.output

"""Issue 18: qgeom's commands behave as one tool — one option vocabulary, output that survives a
pipe, help without torch, no FutureWarning from torch's internals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import click.testing
import pytest
import typer
from typer.testing import CliRunner

from qgeom.cli import app
from qgeom.commands import options as O

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()

# Options that are stage hyperparameters, not vocabulary: their defaults differ on purpose.
STAGE_SPECIFIC = {
    "--steps": "optimizer steps of the stage (pretrain 500, finetune 150, qat 100)",
    "--lr": "peak learning rate of the stage (pretrain 2e-3, finetune 1e-3, qat 5e-4)",
}
# The vocabulary: every option that two commands share, with its one declaration.
VOCABULARY = {
    "--n-probe": O.n_probe, "--probe-batch": O.probe_batch, "--probe-seed": O.probe_seed,
    "--data-seed": O.data_seed, "--seed": O.seed, "--out": O.out_file, "--out-dir": O.out_dir, "--bits": O.bits,
    "--dtype": O.dtype, "--scope": O.scope, "--device": O.device, "--threads": O.threads, "--quiet": O.quiet,
    "--format": O.format, "--model": O.model, "--data": O.data, "--data-root": O.data_root, "--workers": O.workers,
    "--allow-partial": O.allow_partial,
}
# Shared within one family of commands, declared once in that family's module; they must agree too.
FAMILY = {
    "--batch-size": "training batch of pretrain, finetune, qat", "--finetuned": "θ_t checkpoint of qat and extract",
    "--lam": "scale λ of patch and align-demo", "--metric": "curvature metric of geometry and spectrum",
    "--objective": "fp or ste, geometry and spectrum", "--probe-split": "probe split of geometry and spectrum",
    "--run-dir": "run directory of run and demo",
    "--geometry": "whether the run has (run) or counts (status) the geometry stage",
    "--recompute": "recompute what is cached: figures' checkpoint tables, summary's verdicts",
}
ALIASES = {"--task": "--data", "-q": "--quiet"}
RETIRED = ("--samples", "--batch-size-probe", "--split-probe", "--preset")  # old second names of shared concepts


def commands() -> dict:
    return typer.main.get_command(app).commands


def signature(p) -> tuple:
    """What must agree between two commands declaring the same option (typer ≥ 0.2x vendors its
    own click: the declared type is ``type_descriptor``; older typers expose click's ``type``)."""
    desc = getattr(p, "type_descriptor", None)
    if desc is not None:
        kind = (desc.annotation, getattr(desc.parameter_info, "parser", None))
    else:
        kind = getattr(p.type, "func", None) or type(p.type)
    return (tuple(sorted(p.opts)), tuple(p.secondary_opts), kind, p.required, p.default, p.is_flag, p.multiple,
            getattr(p, "min", getattr(getattr(p, "type", None), "min", None)),
            getattr(p, "max", getattr(getattr(p, "type", None), "max", None)), getattr(p.callback, "__doc__", None))


def shared_options() -> dict[str, dict]:
    by_name: dict[str, dict] = {}
    for cmd_name, cmd in commands().items():
        for p in cmd.params:
            if p.param_type_name == "option" and p.name != "help":  # typer may vendor its own click
                for opt in p.opts:
                    by_name.setdefault(opt, {})[cmd_name] = p
    return {k: v for k, v in by_name.items() if len(v) > 1}


def test_a_shared_option_has_one_name_one_type_one_default_everywhere():
    shared = shared_options()
    assert {"--n-probe", "--bits", "--dtype", "--device", "--threads", "--format", "--out", "--out-dir"} <= set(shared)
    unknown = set(shared) - set(VOCABULARY) - set(STAGE_SPECIFIC) - set(FAMILY) - set(ALIASES)
    assert not unknown, f"shared but declared nowhere in the vocabulary: {sorted(unknown)}"
    for opt, where in shared.items():
        if opt in STAGE_SPECIFIC:
            continue
        sigs = {name: signature(p) for name, p in where.items()}
        assert len(set(sigs.values())) == 1, f"{opt} differs between commands: {sigs}"
    for opt, make in VOCABULARY.items():  # and it is the declaration in qgeom.commands.options
        info = make()
        for name, p in shared.get(opt, {}).items():
            default = None if info.default is ... else info.default
            assert (p.default if not p.required else None) == default, (opt, name)


def test_every_shared_concept_goes_by_one_name():
    for cmd_name, cmd in commands().items():
        opts = {o for p in cmd.params for o in getattr(p, "opts", [])}
        assert not opts & set(RETIRED), f"{cmd_name} still has {opts & set(RETIRED)}"


@pytest.mark.parametrize("opt, expected", [
    ("--device", {"pretrain", "finetune", "qat", "evaluate", "align-demo", "geometry", "spectrum", "check-invariance",
                  "run", "demo", "study", "figures"}),
    ("--threads", {"pretrain", "finetune", "qat", "extract", "patch", "ptq", "evaluate", "align-demo", "geometry",
                   "spectrum", "check-invariance", "run", "demo", "study", "figures"}),
    ("--format", {"ptq", "evaluate", "align-demo", "tasks", "geometry", "spectrum", "check-invariance", "run", "demo",
                  "summary", "study", "figures", "status"}),
    ("--quiet", {"pretrain", "finetune", "qat", "extract", "patch", "ptq", "evaluate", "align-demo", "geometry",
                 "spectrum", "check-invariance", "run", "demo", "study", "figures", "status"}),
    ("--bits", {"qat", "ptq", "evaluate", "align-demo", "geometry", "spectrum", "check-invariance", "run", "demo",
                "figures"}),
    ("--scope", {"extract", "patch", "geometry", "spectrum", "figures"}),
    ("--dtype", {"geometry", "spectrum", "check-invariance"}),
    ("--n-probe", {"geometry", "spectrum", "check-invariance"}),
])
def test_the_vocabulary_is_where_a_researcher_expects_it(opt, expected):
    have = {name for name, cmd in commands().items() if any(opt in getattr(p, "opts", []) for p in cmd.params)}
    assert have == expected


def test_bit_widths_parse_and_are_checked():
    assert O.bit_widths("2") == (2,) and O.bit_widths("3, 2,3") == (3, 2)
    for bad in ("", "1", "9", "two", "2,,x"):
        with pytest.raises(ValueError):
            O.bit_widths(bad)
    assert O.one_bit_width(None, 3) == 3 and O.one_bit_width((4,)) == 4
    with pytest.raises(typer.BadParameter, match="one bit width"):
        O.one_bit_width((2, 3), command="qat")
    res = runner.invoke(app, ["ptq", "--weights", "x.safetensors", "--out", "y.safetensors", "--bits", "2,9"])
    assert res.exit_code == 2 and "Invalid value for '--bits'" in res.output


def test_device_is_checked_before_any_work(tmp_path):
    res = runner.invoke(app, ["pretrain", "--out", tmp_path / "t.safetensors", "--device", "gpu0"])
    assert res.exit_code == 2 and "--device" in res.output and not (tmp_path / "t.safetensors").exists()


def test_runtime_options_are_restored_after_the_command(monkeypatch):
    import torch

    monkeypatch.delenv("QGEOM_DEVICE", raising=False)
    before = torch.get_num_threads()
    cmd = click.Command("x", callback=lambda: (O.apply_runtime("cpu", before + 1),
                                               click.echo(f"{torch.get_num_threads()} {os.environ['QGEOM_DEVICE']}")))
    res = click.testing.CliRunner().invoke(cmd, [])
    assert res.output.strip() == f"{before + 1} cpu", res.output
    assert torch.get_num_threads() == before and "QGEOM_DEVICE" not in os.environ


# -- output that survives a pipe ------------------------------------------------------------------------


def test_tables_in_a_pipe_are_neither_cut_nor_wrapped():
    """CliRunner's stdout is not a terminal, like `| cat`: every name whole, one line per row."""
    res = runner.invoke(app, ["check-invariance", "--levels", "function", "--n-probe", "2", "--metrics", "ggn",
                              "--dtype", "float32"], env={"COLUMNS": None})
    assert res.exit_code == 0, res.output
    for name in ("qk_mixing", "vo_orthogonal", "mlp_permutation", "residual_permutation", "head_permutation"):
        rows = [line for line in res.output.splitlines() if f" {name} " in line]
        assert len(rows) == 1 and "✓" in rows[0], name  # whole name, and its cells on the same line
    assert "…" not in res.output


def test_csv_and_json_hold_only_the_data():
    res = runner.invoke(app, ["tasks", "--format", "csv"])
    lines = res.stdout.splitlines()
    assert lines[0] == "task,kind,classes,source,description" and lines[1].startswith("shape,offline,4,")
    assert not res.stderr  # nothing but the data, and nothing left to say on stderr
    doc = json.loads(runner.invoke(app, ["tasks", "--format", "json"]).stdout)
    assert doc["tasks"][0] == {"task": "shape", "kind": "offline", "classes": 4, "source": "generated (qgeom.data)",
                               "description": "which shape is drawn"}
    res = runner.invoke(app, ["check-invariance", "--levels", "function", "--n-probe", "2", "--symmetry",
                              "qk_mixing,head_permutation", "--format", "json", "--dtype", "float32"])
    rows = json.loads(res.stdout)["rows"]  # every check, numeric cells (no "✓ 1e-07" display text)
    assert list(dict.fromkeys(r["symmetry"] for r in rows)) == ["qk_mixing", "head_permutation"]
    assert all(isinstance(r["measured"], float) and r["holds"] is True and r["as_expected"] is True for r in rows)


def test_tiny_run_summary_as_csv_and_json(tiny_run):
    res = runner.invoke(app, ["summary", str(tiny_run), "--format", "csv"])
    assert res.exit_code == 0 and res.stdout.startswith("# table: results\nbits,scope,")
    doc = json.loads(runner.invoke(app, ["summary", str(tiny_run), "--format", "json"]).stdout)
    assert doc["results"] and doc["config"]["name"] == "tiny"


def test_summary_recompute_rebuilds_the_verdicts_from_the_tables_and_keeps_the_times(tiny_run, tmp_path):
    """--recompute on a copy of a finished run: results equal to those the run wrote (same code),
    the stage times kept; a results entry removed from summary.json comes back."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    stored = json.loads((run / "summary.json").read_text())
    broken = stored | {"results": [{k: v for k, v in r.items() if k != "verdict_over_controls"}
                                   for r in stored["results"]]}
    (run / "summary.json").write_text(json.dumps(broken))
    res = runner.invoke(app, ["summary", str(run), "--recompute"])
    assert res.exit_code == 0, res.output
    again = json.loads((run / "summary.json").read_text())
    assert again["stage_seconds"] == stored["stage_seconds"] and again["seconds"] == stored["seconds"]
    assert json.dumps(again["results"], sort_keys=True, default=float) == \
        json.dumps(stored["results"], sort_keys=True, default=float)
    assert all(r["verdict_over_controls"].startswith("Spearman with the gain over the best control")
               for r in again["results"])


# -- help without torch, no FutureWarning ------------------------------------------------------------------


def _python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "100"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)


def test_help_imports_no_torch():
    code = """
import sys
from qgeom.cli import app
for args in (["--help"], ["geometry", "--help"], ["check-invariance", "--help"], ["run", "--help"], ["figures", "--help"]):
    try:
        app(args, prog_name="qgeom")
    except SystemExit as e:
        assert e.code == 0, (args, e.code)
heavy = sorted(m for m in ("torch", "timm", "numpy", "pandas", "scipy", "matplotlib") if m in sys.modules)
print("HEAVY", heavy, file=sys.stderr)
"""
    res = _python(code)
    assert "HEAVY []" in res.stderr, res.stderr[-2000:]
    assert "Usage: qgeom" in res.stdout


def test_a_ggn_product_prints_no_future_warning():
    """torch's first forward-mode product imports decompositions that call torch.jit.script (a
    FutureWarning since torch 2.9); qgeom.curvature.operator imports them under a scoped filter."""
    code = """
import warnings
import torch
before = list(warnings.filters)
with warnings.catch_warnings(record=True) as seen:
    warnings.simplefilter("always")
    import qgeom.curvature.operator
    value = torch.func.jvp(lambda x: (x * x).sum(), (torch.ones(3),), (torch.ones(3),))[1].item()
print(value, [str(w.message) for w in seen if issubclass(w.category, FutureWarning)], list(warnings.filters) == before)
"""
    res = _python(code)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "6.0 [] True"  # no FutureWarning; the filter did not leak into the user's

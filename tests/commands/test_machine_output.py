"""Output that programs and logs can read (issue 26, item 6), on the session's finished tiny run:
``--format json|csv`` holds full-precision numbers under snake_case keys (the keys of the files
a command writes), one row per record, a final newline; every JSON text is strict; progress in a
log is plain lines; ``geometry`` reproduces the run's ``geometry.csv`` at its defaults; ``tasks``
lists every task; ``status`` shows the stages of a finished run."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from qgeom.cli import app
from qgeom.data import load_task

runner = CliRunner()


def strict(text: str):
    """json.loads that refuses NaN / Infinity (what a standard parser outside Python does)."""
    def refuse(name):
        raise ValueError(f"bare {name} in JSON")
    return json.loads(text, parse_constant=refuse)


def ok(*args) -> object:
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, f"{args}: {res.output}\n{res.exception!r}"
    return res


def rows(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


def files(run: Path, seed: int = 0):
    return (run / f"seed{seed}/finetune/shape.safetensors",
            [run / f"seed{seed}/qat2/rho_{t}.safetensors" for t in ("shape", "hue", "position")])


def test_geometry_json_has_the_out_dir_keys_and_full_precision(tiny_run, tmp_path):
    receiver, vectors = files(tiny_run)
    res = ok("geometry", receiver, *vectors, "--format", "json", "--out-dir", tmp_path, "-q")
    assert res.stdout.endswith("}\n")
    doc = strict(res.stdout)
    written = pd.read_csv(tmp_path / "geometry_pairs.csv")
    assert list(doc["pairs"][0]) == list(written.columns)  # the keys of the file it writes, not ‖ρ‖ or λ*
    assert list(doc["vectors"][0]) == list(pd.read_csv(tmp_path / "geometry_vectors.csv").columns)
    for got, want in zip(doc["pairs"], written.to_dict("records")):
        assert isinstance(got["metric_cosine"], float) and isinstance(got["indefinite"], bool)
        assert got["metric_cosine"] == want["metric_cosine"]  # the file's repr: every digit, nothing rounded
    res = ok("geometry", receiver, *vectors, "--format", "csv", "-q")
    pairs = res.stdout.split("# table: pairs\n")[1]
    assert float(rows(pairs)[0]["optimal_scale"]) == doc["pairs"][0]["optimal_scale"] and res.stdout.endswith("\n")


def test_geometry_defaults_reproduce_the_runs_geometry_csv(tiny_run):
    """The run probes validation (``probe_size`` images, its seed as probe seed): so do the
    defaults. The run computes in float32, the command in float64: agreement to 1e-5 relative
    (float32's 1.2e-7 relative rounding, accumulated over the probe set's sums)."""
    receiver, vectors = files(tiny_run)
    doc = strict(ok("geometry", receiver, *vectors, "--format", "json", "-q").stdout)
    geo = pd.read_csv(tiny_run / "geometry.csv")
    geo = geo[(geo.seed == 0) & (geo.bits == 2) & (geo.receiver == "shape") & (geo.scope == "backbone")
              & (geo.metric == "ggn") & (geo.objective == "fp")]
    for donor in ("hue", "position"):
        got = next(p for p in doc["pairs"] if p["donor"] == f"rho_{donor}" and p["receiver_vector"] == "rho_shape")
        want = geo[(geo.donor == donor)].set_index("quantity").value
        assert got["metric_cosine"] == pytest.approx(want["cosine"], rel=1e-5)
        assert got["optimal_scale"] == pytest.approx(want["lam_star"], rel=1e-5)
    res = ok("geometry", receiver, *vectors[:2], "--probe-split", "train", "--format", "json")
    assert "--probe-split val" in res.stderr and "reproduce" in res.stderr  # the difference, said
    assert strict(res.stdout)["pairs"][0]["metric_cosine"] != pytest.approx(doc["pairs"][0]["metric_cosine"], rel=1e-3)


def test_evaluate_csv_is_one_row_per_record_at_full_precision(tiny_run):
    receiver, _ = files(tiny_run)
    res = ok("evaluate", receiver, "--bits", "2", "--format", "csv")
    assert res.stdout.endswith("\n") and not res.stdout.endswith("\n\n")
    got = rows(res.stdout)
    assert [(r["precision"], r["bits"]) for r in got] == [("fp", ""), ("ptq", "2")]
    acc = pd.read_csv(tiny_run / "accuracy.csv")
    base = acc[(acc.seed == 0) & (acc.bits == 2) & (acc.receiver == "shape") & (acc.method == "baseline")
               & (acc.split == "test")].set_index("metric").value
    assert float(got[0]["top1"]) == pytest.approx(100 * base["fp_top1"], abs=1e-12)  # not rounded to 0.1
    assert float(got[1]["top1"]) == pytest.approx(100 * base["ptq_top1"], abs=1e-12)
    doc = strict(ok("evaluate", receiver, "--format", "json").stdout)
    assert doc["accuracy"][0]["bits"] is None and isinstance(doc["accuracy"][0]["top1"], float)


def test_summary_csv_spreads_intervals_into_columns(tiny_run):
    res = ok("summary", tiny_run, "--format", "csv")
    results = rows(res.stdout.split("# table: results\n")[1].split("\n\n# table:")[0])
    summary = strict((tiny_run / "summary.json").read_text())
    assert "{'" not in res.stdout and "['" not in res.stdout  # no Python repr in any cell
    for r, want in zip(results, summary["results"]):
        for key in ("gain_unit", "gain_tuned", "gain_vs_random"):
            for part in ("mean", "low", "high"):
                have, expect = r[f"{key}_{part}"], want[key][part]
                assert (have == "" and expect is None) or float(have) == expect
        assert json.loads(r["verdict_controls"]) == want["verdict_controls"]  # a list: JSON text
    assert strict(ok("summary", tiny_run, "--format", "json").stdout) == summary


def test_spectrum_reports_progress_in_a_log_and_numbers_in_json(tiny_run):
    receiver, _ = files(tiny_run)
    res = ok("spectrum", receiver, "--k", "2", "--lanczos-iter", "6", "--hutchinson-probes", "2", "--slq-probes", "1",
             "--slq-iter", "3", "--n-probe", "16", "--format", "json")
    doc = strict(res.stdout)
    assert [r["rank"] for r in doc["eigenvalues"]] == [1, 2] and isinstance(doc["eigenvalues"][0]["eigenvalue"], float)
    (est,) = doc["estimates"]
    assert isinstance(est["hutchinson_trace"], float) and est["hutchinson_probes"] == 2
    assert "\r" not in res.stderr  # CliRunner's stderr is not a terminal: a log
    assert "spectrum: top-2 eigenvalues (Lanczos)" in res.stderr and "products, done in" in res.stderr


def test_finetune_progress_in_a_log_has_no_carriage_returns(tiny_run, tmp_path, monkeypatch):
    monkeypatch.setattr("qgeom.commands.inputs.task_for",
                        lambda name, seed, *a, **k: load_task(name, seed, n_train=32, n_val=8, n_test=8))
    res = ok("finetune", "--pretrained", tiny_run / "theta0.safetensors", "--task", "shape", "--steps", "3",
             "--batch-size", "8", "--out", tmp_path / "ft.safetensors")
    assert "\r" not in res.stderr and "finetune shape: 3/3 steps" in res.stderr and "done in" in res.stderr
    quiet = ok("finetune", "--pretrained", tiny_run / "theta0.safetensors", "--task", "shape", "--steps", "3",
               "--batch-size", "8", "--out", tmp_path / "ft2.safetensors", "-q")
    assert "steps" not in quiet.stderr


def test_tasks_json_lists_every_task_with_integer_classes():
    from qgeom.data import TASKS
    from qgeom.paper import REAL_TASKS

    res = ok("tasks", "--format", "json")
    doc = strict(res.stdout)["tasks"]
    assert [t["task"] for t in doc] == [*TASKS, *REAL_TASKS] and not res.stderr
    assert all(isinstance(t["classes"], int) and t["classes"] >= 2 and t["source"] for t in doc)
    by = {t["task"]: t for t in doc}
    assert by["shape"]["classes"] == len(TASKS["shape"].classes) and by["shape"]["kind"] == "offline"
    assert by["CIFAR100"] == by["CIFAR100"] | {"kind": "real", "classes": 100}
    assert "torchvision" in by["CIFAR100"]["source"] and "ImageFolder" in by["RESISC45"]["source"]


def test_status_of_a_finished_run_shows_its_stages(tiny_run):
    res = ok("status", tiny_run)
    assert "every stage is done" in res.stdout and "finetune/seed0/shape" in res.stdout
    doc = strict(ok("status", tiny_run, "--format", "json").stdout)["stages"]
    assert len(doc) > 10 and {r["status"] for r in doc} == {"done"} and set(doc[0]) == {"stage", "status", "job_id"}


def test_every_json_file_of_a_run_is_strict(tiny_run):
    found = sorted(tiny_run.rglob("*.json"))
    assert any(p.name == "summary.json" for p in found)
    for p in found:
        strict(p.read_text())


def test_json_output_writes_nan_as_null_and_csv_as_an_empty_cell(capsys):
    from qgeom.commands.output import Output

    out = {}
    for fmt in ("json", "csv"):
        log = Output(fmt)
        log.table("t", None, records=[{"a_b": math.nan, "c": 1.0000000000000002, "d": [1, 2], "e": True}])
        log.close()
        out[fmt] = capsys.readouterr().out
    assert strict(out["json"]) == {"t": [{"a_b": None, "c": 1.0000000000000002, "d": [1, 2], "e": True}]}
    assert out["json"].endswith("}\n")
    assert out["csv"] == "a_b,c,d,e\n,1.0000000000000002,\"[1, 2]\",True\n"

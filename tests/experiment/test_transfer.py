"""End-to-end checks of the transfer experiment on the `tiny` preset (3 tasks, a few steps).

They check the invariants of the tables, not the numbers a tiny model happens to reach.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from qgeom.experiment import analysis
from qgeom import params as P
from qgeom.experiment.driver import run_experiment
from qgeom.experiment.config import with_overrides
from qgeom.experiment.presets import preset
from qgeom.experiment.controls import random_like
from qgeom.experiment.layout import ConfigMismatchError
from qgeom.experiment.transfer import TransferRun

TABLES = ("accuracy.csv", "geometry.csv", "pairs.csv", "receivers.csv", "correlations.csv")




def test_tables_exist_and_are_tidy(tiny_run: Path) -> None:
    for name in TABLES:
        assert (tiny_run / name).stat().st_size > 0, name
    acc = pd.read_csv(tiny_run / "accuracy.csv")
    assert set(acc.method) == {"baseline", "qat", "pretrained_backbone", "patch", "multi_donor", "random",
                               "random_rows", "row_permuted", "negated", "other_basin", "grid_only", "values_only"}
    assert acc[acc.metric.isin(["ptq_top1", "fp_top1"])].value.between(0, 1).all()
    cfg = preset("tiny")
    # every donor × receiver × λ × scope is there on val (where λ is chosen) ...
    patch = acc[(acc.method == "patch") & (acc.metric == "ptq_top1")]
    lams = sorted(set(cfg.lambdas) | {1.0})
    n_grid = len(cfg.tasks) ** 2 * len(cfg.scopes)
    assert len(patch[patch.split == "val"]) == n_grid * len(lams)
    # ... and test only where the analysis reads it: λ = 1 and the λ chosen on val
    test = patch[patch.split == "test"]
    chosen = analysis.lambda_on_val(acc)
    chosen = chosen[chosen.method == "patch"]
    assert len(test) == n_grid + int((chosen.lam_val != 1.0).sum())
    got = test[test.lam != 1.0].set_index(["receiver", "donor", "scope"]).lam.sort_index()
    want = chosen[chosen.lam_val != 1.0].set_index(["receiver", "donor", "scope"]).lam_val.sort_index()
    assert (got.values == want.values).all() and (got.index == want.index).all()
    assert len(test[test.lam == 1.0]) == n_grid


def test_self_patch_reproduces_qat_backbone_exactly(tiny_run: Path) -> None:
    """θ_R + 1·ρ_R on the backbone is θ_R,QAT's backbone, bit for bit (head stays θ_R's)."""
    run = TransferRun(preset("tiny"), tiny_run, progress=False)
    for t in run.cfg.tasks:
        theta, theta_q, rho = run.finetuned(0, t), run.qat(0, 2, t), run.rho(0, 2, t)
        patched = P.patch(theta, rho, 1.0)
        for k in theta:
            expected = theta[k] if P.is_head(k) else theta_q[k]
            # ρ is stored in float64, where θ_q − θ of float32 values is exact: bit-for-bit equality
            assert torch.equal(patched[k], expected), k
        assert any(not torch.equal(theta[k], theta_q[k]) for k in rho)  # QAT moved the backbone


def test_random_control_matches_per_tensor_norms() -> None:
    g = torch.Generator().manual_seed(0)
    vec = {"a.weight": torch.randn(5, 7), "b.bias": torch.randn(3) * 10, "z.weight": torch.zeros(4, 4)}
    r = random_like(vec, g)
    for k in vec:
        assert r[k].norm().item() == pytest.approx(vec[k].norm().item(), rel=1e-6)
    assert P.cosine(r, vec) < 0.9  # a different direction


def test_lambda_is_chosen_on_validation_only(tiny_run: Path) -> None:
    acc = pd.read_csv(tiny_run / "accuracy.csv", keep_default_na=False, na_values=[""])
    chosen = analysis.choose_lambda(acc)
    scrambled = acc.copy()
    test_rows = scrambled.split == "test"
    scrambled.loc[test_rows, "value"] = np.random.default_rng(0).random(test_rows.sum())
    assert (analysis.choose_lambda(scrambled).lam_val.values == chosen.lam_val.values).all()
    # and validation rows do drive it: making λ = 0.5 best on val selects it everywhere
    forced = acc.copy()
    forced.loc[(forced.split == "val") & (forced.lam == 0.5), "value"] = 2.0
    assert (analysis.choose_lambda(forced).lam_val == 0.5).all()


def test_resume_after_kill_gives_identical_tables(tiny_run: Path, tmp_path: Path, monkeypatch) -> None:
    """Kill a fresh run half-way (an exception in the geometry stage), resume, compare tables."""
    import qgeom.experiment.transfer as T

    run_dir = tmp_path / "resumed"
    shutil.copytree(tiny_run, run_dir)
    for f in list(run_dir.glob("seed0/eval2/*.csv"))[:1] + list(run_dir.glob("seed0/geometry2/*.csv")) + \
            list(run_dir.glob("seed0/qat2/*position*")) + [run_dir / n for n in TABLES]:
        f.unlink()
    calls = {"n": 0}
    original = T.TransferRun._geometry

    def dying(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated kill")
        return original(self, *a, **k)

    monkeypatch.setattr(T.TransferRun, "_geometry", dying)
    with pytest.raises(KeyboardInterrupt):
        run_experiment("tiny", run_dir, [], progress=False)
    assert not list(run_dir.rglob("*.tmp")), "a killed stage left a partial file"
    monkeypatch.setattr(T.TransferRun, "_geometry", original)
    run_experiment("tiny", run_dir, [], progress=False)
    for name in TABLES:
        a, b = pd.read_csv(tiny_run / name), pd.read_csv(run_dir / name)
        pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-9, atol=1e-12, obj=name)


def test_other_config_in_same_directory_is_refused(tiny_run: Path) -> None:
    with pytest.raises(ConfigMismatchError, match="finetune"):
        TransferRun(with_overrides(preset("tiny"), ["finetune.steps=11"]), tiny_run)


def test_geometry_is_consistent(tiny_run: Path) -> None:
    geo = pd.read_csv(tiny_run / "geometry.csv", keep_default_na=False, na_values=[""])
    cos = geo[geo.quantity == "cosine"].value.dropna()
    assert (cos.abs() <= 1 + 1e-9).all()
    # the receiver's own vector has cosine 1 with itself and λ* = 1 in every metric
    own = geo[(geo.donor == geo.receiver) & geo.quantity.isin(["cosine", "lam_star"])]
    assert np.allclose(own.value, 1.0, atol=1e-6)
    # GGN Gram matrices are PSD: eigenvalues ≥ −(roundoff)
    eig = geo[geo.quantity.str.startswith("K_eig") & geo.metric.isin(["ggn", "euclidean"])]
    assert (eig.value > -1e-6 * eig.value.abs().max()).all()


def test_align_demo_on_a_trained_run(tiny_run: Path) -> None:
    """The hidden permutation is recovered and the aligned patch equals g(same-basis patch)."""
    from typer.testing import CliRunner

    from qgeom.cli import app

    res = CliRunner().invoke(app, ["align-demo", str(tiny_run), "--donor-task", "shape", "--receiver-task", "hue"])
    assert res.exit_code == 0, res.output
    assert "recovered exactly: True" in res.output
    assert "= 0.00e+00" in res.output.replace("\n", "")


def test_gram_matrices_are_symmetric_up_to_float32_roundoff(tiny_run: Path) -> None:
    """K = VᵀMV from one matmat per metric: K[i,j] = v_iᵀ(M v_j) and K[j,i] = v_jᵀ(M v_i) agree up to
    the roundoff of the float32 products (≈ 1e-7 relative per entry; sums are float64): 1e-5 leaves
    headroom without hiding a real asymmetry (a wrong transpose gives O(1))."""
    geo = pd.read_csv(tiny_run / "geometry.csv", keep_default_na=False, na_values=[""])
    asym = geo[geo.quantity == "K_asymmetry"]
    assert len(asym) == 3 * 2 * 3  # 3 receivers × 2 scopes × (euclidean, ggn_fp, ggn_ste)
    assert (asym[asym.metric == "euclidean"].value == 0).all()
    assert (asym.value < 1e-5).all()


def test_batched_evaluation_equals_one_set_at_a_time(tiny_run: Path) -> None:
    """top1_many over many patched, quantized receivers gives exactly train.accuracy per set,
    and the experiment's accuracy rows are those numbers (spot-checked at λ = 1 and on val)."""
    from qgeom.data import batches
    from qgeom.evaluation import top1_many
    from qgeom.quant import QuantSpec, ptq
    from qgeom.train import accuracy

    cfg = preset("tiny")
    run = TransferRun(cfg, tiny_run, progress=False)
    r, spec = "hue", QuantSpec(2)
    model, theta, task = run.model(r), run.finetuned(0, r), run.tasks[r]
    sets = [P.patch(theta, P.select(run.rho(0, 2, d), "backbone"), lam) for d in cfg.tasks for lam in (0.5, 1.0)]
    quantized = [ptq(s, spec) for s in sets]
    for split in ("val", "test"):
        data = getattr(task, split)
        for bs in (cfg.eval_batch, 17):  # one batch, and several uneven ones
            many = top1_many(model, quantized, list(batches(data, bs)), chunk=4)
            one = [accuracy(model, s, data, spec, bs) for s in sets]
            assert list(many) == one
    # a one-shot iterator and a callable (a streamed split) give the same
    assert list(top1_many(model, quantized, lambda: batches(task.val, 20), chunk=3)) == \
        list(top1_many(model, quantized, batches(task.val, 20), chunk=3))
    acc = pd.read_csv(tiny_run / "accuracy.csv", keep_default_na=False, na_values=[""])
    row = acc[(acc.receiver == r) & (acc.method == "patch") & (acc.donor == "shape") & (acc.scope == "backbone")
              & (acc.lam == 1.0) & (acc.metric == "ptq_top1")]
    for split in ("val", "test"):
        want = accuracy(model, P.patch(theta, P.select(run.rho(0, 2, "shape"), "backbone"), 1.0), getattr(task, split),
                        spec, cfg.eval_batch)
        assert row[row.split == split].value.item() == pytest.approx(want, abs=1e-12)


def test_worker_processes_give_the_same_tables(tiny_run: Path, tmp_path: Path) -> None:
    """Two spawned single-thread workers (the default on 2 CPU cores) reproduce the in-process run
    (one thread in the tests) exactly, and the run records its stage times."""
    import json

    run_dir = tmp_path / "two_workers"
    run_dir.mkdir()
    shutil.copy(tiny_run / "theta0.safetensors", run_dir)  # θ_0 is computed in the parent either way
    shutil.copy(tiny_run / "config.json", run_dir)
    (run_dir / "other").mkdir()  # the other-basin control's θ_0 too
    shutil.copy(tiny_run / "other" / "theta0.safetensors", run_dir / "other")
    run_experiment("tiny", run_dir, [], progress=False, workers=2)
    for name in ("accuracy.csv", "geometry.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(tiny_run / name), pd.read_csv(run_dir / name), obj=name)
    summary = json.loads((run_dir / "summary.json").read_text())
    stages = {r["stage"]: r for r in summary["stage_seconds"]}
    # 3 tasks, each fine-tuned from both basins (the tiny preset has the other-basin control)
    assert stages["finetune"]["n"] == 6 and stages["evaluate"]["n"] == 3 and stages["geometry"]["n"] == 3
    assert "statistics" in stages and summary["machine"]["workers"] == 2

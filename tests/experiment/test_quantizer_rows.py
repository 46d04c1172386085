"""Stronger receiver quantizers and activation quantization in the evaluation protocol (issue 24):
``ptq=rtn,gptq,awq`` adds rows without changing RTN's, each row equals the quantizer applied by
hand, and ``act_bits`` fake-quantizes the inputs of every quantized set and of no FP set."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from qgeom.activations import ActivationSpec, calibrate, quantized_inputs
from qgeom.data import batches
from qgeom.evaluation import top1_many
from qgeom.experiment.analysis import pair_table, receiver_table
from qgeom.experiment.artifacts import RunArtifacts
from qgeom.experiment.config import RunConfig
from qgeom.experiment.evaluate import Receiver, calibration_batches, evaluate_receiver
from qgeom.experiment.layout import RunLayout
from qgeom.experiment.summary import summarize
from qgeom.experiment.tasks import load_run_task
from qgeom.gptq import gptq
from qgeom.io import load_params
from qgeom.quant import QuantSpec, ptq

KEY = ["method", "donor", "scope", "lam", "draw", "split", "metric"]


def _receiver(run_dir: Path, cfg: RunConfig, name: str = "hue") -> Receiver:
    art, layout = RunArtifacts(run_dir), RunLayout(run_dir)
    task = load_run_task(art.cfg, name)
    theta = art.finetuned(0, name)
    others = {d: load_params(layout.rho(0, 2, d, "other"))[0] for d in art.names if d != name}
    calib = calibration_batches(task.train, cfg.calib_size, cfg.eval_batch, torch.device("cpu"))
    return Receiver(0, 2, name, art.model(theta), task, theta, art.qat(0, 2, name), load_params(layout.theta0())[0],
                    {d: art.rho(0, 2, d) for d in art.names}, others, torch.device("cpu"), calib=calib,
                    act_bits=cfg.act_bits)


def _rows(df: pd.DataFrame) -> pd.DataFrame:
    return pd.read_csv(pd.io.common.StringIO(df.to_csv(index=False)), keep_default_na=False, na_values=[""])


@pytest.fixture(scope="module")
def strong(tiny_run: Path) -> tuple[RunConfig, dict[str, pd.DataFrame]]:
    cfg = dataclasses.replace(RunArtifacts(tiny_run).cfg, ptq=("rtn", "gptq", "awq"))
    return cfg, {name: evaluate_receiver(cfg, _receiver(tiny_run, cfg, name)) for name in RunArtifacts(tiny_run).names}


def test_stronger_quantizers_leave_the_rtn_protocol_unchanged(tiny_run: Path, strong) -> None:
    cfg, rows = strong
    got = _rows(rows["hue"])
    want = pd.read_csv(RunLayout(tiny_run).evaluation(0, 2, "hue"), keep_default_na=False, na_values=[""])
    same = got[got.metric.isin(set(want.metric))].reset_index(drop=True)
    pd.testing.assert_frame_equal(same, want, check_exact=True)  # every RTN, FP and control row, bit for bit
    for m in ("gptq_top1", "awq_top1"):
        new = got[got.metric == m]
        assert set(new.split) == {"test"}
        assert {"baseline", "qat", "patch", "multi_donor"} <= set(new.method)
        assert set(new[new.method == "patch"].lam) >= {1.0}


def test_a_gptq_row_is_gptq_applied_by_hand(tiny_run: Path, strong) -> None:
    cfg, rows = strong
    r = _receiver(tiny_run, cfg)
    q, _ = gptq(r.model, r.theta, r.calib, QuantSpec(2))  # sequential GPTQ on the receiver's calibration images
    test = [(x, y) for x, y in batches(r.task.test, cfg.eval_batch)]
    want = float(top1_many(r.model, [q], test)[0])
    got = rows["hue"]
    row = got[(got.method == "baseline") & (got.metric == "gptq_top1")]
    assert float(row.value.iloc[0]) == want


def test_pairs_and_summary_say_whether_rho_helps_beyond_each_quantizer(strong) -> None:
    cfg, rows = strong
    acc = pd.concat(rows.values(), ignore_index=True)
    pairs = pair_table(acc)
    for m in ("gptq", "awq"):
        one = pairs[(pairs.donor == "shape") & (pairs.receiver == "hue") & (pairs.scope == "backbone")].iloc[0]
        t = acc[(acc.receiver == "hue") & (acc.split == "test") & (acc.metric == f"{m}_top1")]
        patch = t[(t.method == "patch") & (t.donor == "shape") & (t.scope == "backbone") & (t.lam == 1.0)].value
        base = t[t.method == "baseline"].value
        assert one[f"gain_unit_{m}"] == pytest.approx(100 * (float(patch.iloc[0]) - float(base.iloc[0])), abs=1e-9)
        assert one[f"{m}_over_rtn"] == pytest.approx(one[f"base_{m}"] - one.base_ptq, abs=1e-9)
    s = summarize(pairs, receiver_table(acc), pd.DataFrame())
    lines = [line for r in s for line in r["verdict_quantizers"]]
    assert any("then GPTQ" in line and "GPTQ alone" in line for line in lines)
    assert any("AWQ (receiver calibration data" in line for line in lines)
    assert set(s[0]["quantizers"]) == {"gptq", "awq"}


@pytest.mark.parametrize("bits", [8, 2])
def test_act_bits_quantizes_the_inputs_of_every_quantized_set_and_of_no_fp_set(tiny_run: Path, bits: int) -> None:
    cfg = dataclasses.replace(RunArtifacts(tiny_run).cfg, act_bits=bits, controls=(), decomposition=False)
    r = _receiver(tiny_run, cfg)
    got = _rows(evaluate_receiver(cfg, r))
    plain = _rows(evaluate_receiver(dataclasses.replace(cfg, act_bits=0), dataclasses.replace(r, act_bits=0)))
    fp, fp_plain = (d[d.metric == "fp_top1"].reset_index(drop=True) for d in (got, plain))
    pd.testing.assert_frame_equal(fp, fp_plain, check_exact=True)  # (λ chosen on val may differ: row positions do)
    q = ptq(r.theta, QuantSpec(2))  # the FT+PTQ baseline by hand: W2 weights, then inputs at `bits`
    test = [(x, y) for x, y in batches(r.task.test, cfg.eval_batch)]
    with quantized_inputs(r.model, calibrate(r.model, q, r.calib), ActivationSpec(bits)) as model:
        want = float(top1_many(model, [q], test)[0])
    base = got[(got.method == "baseline") & (got.metric == "ptq_top1") & (got.split == "test")]
    assert float(base.value.iloc[0]) == want
    same = ["split", "method", "donor", "scope", "lam", "draw"]  # rows evaluated in both (λ = 1, baselines, grid)
    both = got[got.metric == "ptq_top1"].merge(plain[plain.metric == "ptq_top1"], on=same, suffixes=("", "_plain"))
    moved = np.abs(both.value.to_numpy() - both.value_plain.to_numpy())
    print(f"act_bits={bits}: mean |Δ top1| over {len(both)} quantized sets = {moved.mean():.4f}")
    if bits == 8:  # 255 levels per tensor: a flip of a few test images at most (64 images: 1/64 each)
        assert moved.mean() < 0.05
    else:  # 3 levels per tensor on every Linear's inputs: the function changes
        assert moved.mean() > 0.05


def test_the_layer_metric_in_the_run_geometry_is_layer_geometry_of_each_pair(tiny_run: Path) -> None:
    """metrics=ggn,layer: the geometry table's pooled and per-layer layer-metric cosines are those of
    :func:`qgeom.layer_geometry` on the same probe set (its own Gram path: tested against dense
    references in tests/curvature/test_layer_metric.py), and the pair table gains cos_layer_fp."""
    from qgeom import layer_geometry
    from qgeom.data import probe_batches
    from qgeom.experiment.measure import GeometryInputs, measure_receiver
    from qgeom.params import select

    art = RunArtifacts(tiny_run)
    cfg = dataclasses.replace(art.cfg, metrics=("ggn", "layer"), scopes=("quantized",))
    task = load_run_task(cfg, "hue")
    theta = art.finetuned(0, "hue")
    rhos = {d: art.rho(0, 2, d) for d in art.names}
    g = GeometryInputs(0, 2, "hue", art.model(theta), task, theta, art.qat(0, 2, "hue"), rhos, torch.device("cpu"))
    geo = measure_receiver(cfg, g)
    probe = probe_batches(task.val, cfg.probe_size, cfg.probe_batch, seed=0)
    want = layer_geometry(g.model, theta, select(rhos["shape"], "quantized"), select(rhos["hue"], "quantized"), probe,
                          scope="quantized")
    rows = geo[(geo.metric == "layer") & (geo.objective == "fp") & (geo.donor == "shape")].set_index("quantity").value
    # both paths read float64 H_ℓ from the same probe batches and differ only in summation order
    # (measured: pooled identical, per layer 4e-16), so 1e-12 leaves margin and catches any other path
    assert rows["cosine"] == pytest.approx(want["pooled"]["cosine"], rel=1e-12, abs=1e-12)
    assert rows["lam_star"] == pytest.approx(want["pooled"]["optimal_scale"], rel=1e-12, abs=1e-12)
    for layer, w in want["layers"].items():
        assert rows[f"cosine@{layer}"] == pytest.approx(w["cosine"], rel=1e-12, abs=1e-12)
    assert len(want["layers"]) == sum(q.startswith("cosine@") for q in rows.index) > 0


def test_baselines_and_improvement_figures_take_the_quantizer_as_a_hue(strong) -> None:
    import matplotlib.pyplot as plt

    from qgeom import figures as F

    _, rows = strong
    acc = pd.concat(rows.values(), ignore_index=True)
    base = F.baseline_table(acc)
    assert {"FT", "FT+PTQ", "QAT+PTQ", "FT+GPTQ", "QAT+GPTQ", "FT+AWQ", "QAT+AWQ"} <= set(base.setting)
    gptq_ft = acc[(acc.receiver == "hue") & (acc.method == "baseline") & (acc.metric == "gptq_top1")].value.iloc[0]
    assert base[(base.task == "hue") & (base.setting == "FT+GPTQ")].top1.iloc[0] == pytest.approx(100 * gptq_ft)
    rec = receiver_table(acc)
    imp = F.improvement_table(rec)
    assert set(imp.quantizer) == {"RTN", "GPTQ", "AWQ"}
    one = rec[(rec.receiver == "hue") & (rec.scope == "backbone")].iloc[0]
    want = (one.multi_tuned_gptq - one.base_gptq) / one.qat_gptq
    got = imp[(imp.task == "hue") & (imp.quantizer == "GPTQ") & (imp.patch == "mean of other donors")]
    assert float(got.improvement.iloc[0]) == pytest.approx(want, rel=1e-12)
    fig = F.baseline_bars(acc)
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["FT", "FT+PTQ", "QAT", "QAT+PTQ", "FT+GPTQ", "QAT+GPTQ", "FT+AWQ", "QAT+AWQ"]  # a bar per setting
    plt.close(fig)
    fig = F.improvement_bars(rec)
    assert [ax.get_title() for ax in fig.axes] == ["receiver quantized by RTN", "receiver quantized by GPTQ (receiver "
                                                   "calibration data)", "receiver quantized by AWQ (receiver calibration data)"]
    plt.close(fig)


def test_a_run_with_every_quantizer_option_end_to_end(tiny_run: Path, tmp_path: Path) -> None:
    """``act_bits=8 ptq=rtn,gptq vector_source=gptq`` through the whole run: W+A QAT (its checkpoint
    differs from the weight-only run's), ρ_D = θ_D,GPTQ − θ_D (recorded in its metadata, equal to GPTQ
    by hand), GPTQ rows in the accuracy table, and the 'beyond GPTQ' verdicts in summary.json."""
    import json

    from qgeom.experiment.driver import run_experiment
    from qgeom.params import quantization_vector

    run = tmp_path / "run"
    run_experiment("tiny", run, ["act_bits=8", "ptq=rtn,gptq", "vector_source=gptq", "seeds=0", "bits=2"],
                   geometry=False, progress=False)
    layout, old = RunLayout(run), RunLayout(tiny_run)
    qat_wa, _ = load_params(layout.qat(0, 2, "hue"))
    qat_w, _ = load_params(old.qat(0, 2, "hue"))
    assert any(not torch.equal(qat_wa[k], qat_w[k]) for k in qat_w)  # the same FT point, W+A QAT
    rho, meta = load_params(layout.rho(0, 2, "shape"))
    art = RunArtifacts(run)
    theta = art.finetuned(0, "shape")
    task = load_run_task(art.cfg, "shape")
    calib = calibration_batches(task.train, art.cfg.calib_size, art.cfg.eval_batch, torch.device("cpu"))
    q, _ = gptq(art.model(theta), theta, calib, QuantSpec(2))
    want = quantization_vector(q, theta, "backbone")
    assert meta["source"] == "gptq" and all(torch.equal(rho[k], want[k]) for k in want)
    acc = pd.read_csv(run / "accuracy.csv")
    assert {"ptq_top1", "fp_top1", "gptq_top1"} <= set(acc.metric)
    summary = json.loads((run / "summary.json").read_text())
    assert all("gptq" in r["quantizers"] for r in summary["results"])

"""Controls keep the statistic they claim; the grid/values hybrids reduce to plain PTQ."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from qgeom.experiment.controls import control, negated, permuted_within_rows, random_like_rows
from qgeom.experiment.decomposition import grid_only, grid_statistics, quantize_on_grid, values_only
from qgeom.params import patch
from qgeom.quant import QuantSpec, ptq, quantize_weight


def vector(seed: int, rows: int = 5, cols: int = 7) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"blocks.0.mlp.fc1.weight": torch.randn(rows, cols, generator=g, dtype=torch.float64),
            "blocks.0.mlp.fc1.bias": torch.randn(rows, generator=g, dtype=torch.float64)}


@given(st.integers(0, 10_000), st.integers(1, 9), st.integers(2, 9))
def test_per_row_norms_are_kept(seed, rows, cols):
    v = vector(seed, rows, cols)
    r = random_like_rows(v, torch.Generator().manual_seed(seed + 1))
    torch.testing.assert_close(r["blocks.0.mlp.fc1.weight"].norm(dim=1), v["blocks.0.mlp.fc1.weight"].norm(dim=1),
                               rtol=1e-12, atol=0)
    torch.testing.assert_close(r["blocks.0.mlp.fc1.bias"].norm(), v["blocks.0.mlp.fc1.bias"].norm(), rtol=1e-12, atol=0)
    assert not torch.equal(r["blocks.0.mlp.fc1.weight"], v["blocks.0.mlp.fc1.weight"])


@given(st.integers(0, 10_000), st.integers(1, 9), st.integers(2, 9))
def test_within_row_permutation_keeps_every_rows_sorted_values(seed, rows, cols):
    v = vector(seed, rows, cols)
    p = permuted_within_rows(v, torch.Generator().manual_seed(seed + 1))
    w, pw = v["blocks.0.mlp.fc1.weight"], p["blocks.0.mlp.fc1.weight"]
    assert torch.equal(w.sort(dim=1).values, pw.sort(dim=1).values)  # same multiset per row, bit for bit
    assert torch.equal(w.abs().amax(1), pw.abs().amax(1))  # so the same absmax: the same grid


def test_negation_is_exact_and_unknown_controls_are_refused():
    v = vector(0)
    assert all(torch.equal(negated(v)[k], -v[k]) for k in v)
    with pytest.raises(ValueError, match="unknown control 'zero'"):
        control("zero", v, torch.Generator())


@given(st.integers(0, 10_000), st.sampled_from([2, 3, 4, 8]))
def test_hybrids_reduce_to_plain_ptq(seed, bits):
    spec = QuantSpec(bits)
    theta = vector(seed, 6, 8)
    rho = vector(seed + 1, 6, 8)
    q = ptq(theta, spec)
    unpatched = patch(theta, rho, 0.0, allow_partial=True)
    assert all(torch.equal(grid_only(theta, unpatched, spec)[k], q[k]) for k in theta)  # λ = 0: plain PTQ
    zero = {k: torch.zeros_like(v) for k, v in rho.items()}
    same = patch(theta, zero, 1.0, allow_partial=True)
    assert all(torch.equal(values_only(theta, same, spec)[k], q[k]) for k in theta)  # ρ = 0: plain PTQ
    # and a patched tensor on its own grid is Q_b of it
    w = theta["blocks.0.mlp.fc1.weight"] + rho["blocks.0.mlp.fc1.weight"]
    assert torch.equal(quantize_on_grid(w, w, spec), quantize_weight(w, spec))


def test_grid_statistics_see_a_moved_absmax_and_changed_codes():
    spec = QuantSpec(2)
    theta = {"blocks.0.mlp.fc1.weight": torch.tensor([[1.0, 0.2, -0.4], [0.5, -2.0, 0.1]], dtype=torch.float64)}
    bumped = {"blocks.0.mlp.fc1.weight": torch.tensor([[1.0, 1.2, -0.4], [0.5, -2.0, 0.1]], dtype=torch.float64)}
    stats = grid_statistics(theta, bumped, spec)
    assert stats["absmax_moved"] == 0.5  # row 0's absmax moved from column 0 to column 1
    assert stats["dlog_scale"] == pytest.approx(abs(torch.log(torch.tensor(1.2))) / 2)
    assert stats["codes_changed"] > 0
    assert grid_statistics(theta, theta, spec) == {"absmax_moved": 0.0, "dlog_scale": 0.0, "codes_changed": 0.0}
    with pytest.raises(ValueError, match="symmetric per-row grid"):
        grid_statistics(theta, bumped, QuantSpec(2, granularity="tensor"))


# --------------------------------------------------------------------------------------------
# in the transfer run (the tiny preset has every control and the decomposition)
# --------------------------------------------------------------------------------------------


def test_the_run_evaluates_every_control_and_the_other_basin_comes_from_another_theta0(tiny_run):
    import json

    import pandas as pd

    from qgeom.params import content_hash
    from qgeom.io import load_params

    acc = pd.read_csv(tiny_run / "accuracy.csv")
    for m in ("random", "random_rows", "row_permuted", "negated", "other_basin", "grid_only", "values_only"):
        rows = acc[(acc.method == m) & (acc.split == "test") & (acc.metric == "ptq_top1")]
        assert len(rows) and (rows.donor != rows.receiver).all() and (rows.lam == 1.0).all(), m
    stats = acc[acc.metric.isin(["absmax_moved", "dlog_scale", "codes_changed"])]
    assert len(stats) and stats.value.between(0, 10).all()
    own, _ = load_params(tiny_run / "theta0.safetensors")
    other, meta = load_params(tiny_run / "other" / "theta0.safetensors")
    assert content_hash(own) != content_hash(other) and meta["basin"] == "other"
    pairs = pd.read_csv(tiny_run / "pairs.csv")
    for col in ("gain_vs_row_permuted", "gain_vs_negated", "gain_vs_other_basin", "gain_grid_only", "gain_over_controls"):
        assert pairs.loc[~pairs.diagonal, col].notna().all(), col
    best = pairs[[c for c in pairs.columns if c.startswith("gain_") and c[5:] in
                  ("random", "random_rows", "row_permuted", "negated", "other_basin")]].max(axis=1)
    assert ((pairs.gain_unit - best) - pairs.gain_over_controls).abs().max() < 1e-9
    summary = json.loads((tiny_run / "summary.json").read_text())
    lines = summary["results"][0]["verdict_controls"]
    assert any("permuted within each row" in v for v in lines) and any("the grid alone" in v for v in lines)


def test_a_hybrid_row_is_the_accuracy_of_the_hybrid_itself(tiny_run):
    """The grid-only row is Top-1 of Q(θ_R; s(θ_R + ρ_D)) as it is — not re-quantized."""
    import pandas as pd

    from qgeom.experiment.artifacts import RunArtifacts
    from qgeom.params import patch, select
    from qgeom.train import accuracy

    run = RunArtifacts(tiny_run)
    acc = pd.read_csv(tiny_run / "accuracy.csv")
    row = acc[(acc.method == "grid_only") & (acc.seed == 0) & (acc.scope == "backbone")].iloc[0]
    theta = run.finetuned(0, row.receiver)
    patched = patch(theta, run.rho(0, int(row.bits), row.donor, "backbone"), 1.0)
    hybrid = grid_only(theta, patched, QuantSpec(int(row.bits)))
    model = run.model(theta)
    assert accuracy(model, hybrid, run.task(row.receiver).test) == pytest.approx(row.value, abs=1e-12)
    assert select(hybrid, "quantized").keys() == select(theta, "quantized").keys()

"""check_invariance: every level for random configurations and elements; pipeline; report; CLI."""

import json

import pandas as pd
import pytest
import torch
from _cases_symmetry import assert_as_expected, batches  # shared cases (tests/)
from hypothesis import given, settings
from hypothesis import strategies as st

from qgeom.symmetry.invariance import InvarianceReport, Tolerances, check_invariance
from qgeom.params import select
from qgeom.quant import QuantSpec
from qgeom.symmetry import KINDS, BlockLinear, Symmetry, applicable_kinds, random_symmetry
from qgeom.testing import symmetries, tiny_vit, vit_configs

TINY = dict(depth=2, num_heads=2, embed_dim=8, img_size=8, patch_size=4, mlp_ratio=2.0, init_values=0.5)


@settings(max_examples=15, deadline=None)
@given(cfg=vit_configs(head_dim=(4, 8)), data=st.data())
def test_every_level_agrees_with_the_expectations(cfg, data):
    """float64: logits to 1e-10; ∇L, G·v and H·v covariant; λ*, cos_M, wᵀ∇L invariant; the
    Euclidean cosine invariant for orthogonal g and measurably changed otherwise; Q_b equivariant
    where the element's matrices say so and measurably not otherwise; one AdamW/SGD step likewise."""
    model, theta = tiny_vit(cfg, seed=data.draw(st.integers(0, 99)))
    g = data.draw(symmetries(model), label="g")
    report = check_invariance(model, theta, g, batches(cfg), spec=QuantSpec(bits=3),
                              levels=("function", "covariance", "geometry", "quantizer", "optimizer"))
    assert_as_expected(report)
    df = report.frame
    exp = g.expectations(QuantSpec(bits=3))
    assert (df.level == "covariance").sum() == 3 and (df[df.level == "covariance"].expected == "covariant").all()
    eu = df[df.quantity == "Euclidean cosine"].iloc[0]
    assert eu.expected == ("invariant" if exp["euclidean"] else "not invariant")
    assert df[df.quantity.str.startswith("‖Q(gθ)")].iloc[0].expected == ("invariant" if exp["quantizer"] else "not invariant")
    assert df[(df.level == "geometry") & df.quantity.str.startswith("λ*_ggn")].iloc[0].expected == "invariant"


def test_pipeline_level_qat_commutes_with_a_permutation_and_breaks_under_a_rescaling():
    """ρ(gθ) = g ρ(θ) for a real 3-step AdamW QAT run under a residual permutation (and a sign
    flip of query/key coordinates), not under a query/key rescaling (AdamW is not scale-equivariant)."""
    model, theta = tiny_vit(TINY)
    syms = [random_symmetry(model, k, seed=2) for k in ("residual_permutation", "qk_signed_permutation", "qk_scalar")]
    report = check_invariance(model, theta, syms, batches(TINY), spec=QuantSpec(bits=2), levels=("pipeline",),
                              pipeline_steps=3)
    rows = {r["symmetry"]: r for r in report.rows}
    assert rows["residual_permutation"]["expected"] == "invariant" and rows["residual_permutation"]["measured"] <= 1e-10
    assert rows["qk_signed_permutation"]["measured"] <= 1e-10
    assert rows["qk_scalar"]["expected"] == "not invariant" and rows["qk_scalar"]["measured"] > 1e-3
    assert report.ok and not report.surprises()


def test_float32_tolerances_hold_for_every_kind():
    model, theta = tiny_vit(TINY)
    syms = [random_symmetry(model, k, seed=4) for k in KINDS]
    report = check_invariance(model, theta, syms, batches(TINY), dtype=torch.float32, spec=QuantSpec(bits=3),
                              levels=("function", "covariance", "geometry", "quantizer", "optimizer"))
    assert_as_expected(report)
    assert report.meta["dtype"] == "float32"
    assert (report.frame.tolerance[report.frame.level == "function"] >= Tolerances.for_dtype(torch.float32).function).all()


def test_vectors_on_a_scope_and_a_broken_symmetry_fails(tmp_path):
    model, theta = tiny_vit(TINY)
    g = torch.Generator().manual_seed(0)
    u = {k: 1e-2 * torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in select(theta, "backbone").items()}
    v = {k: t + 1e-2 * torch.randn(t.shape, generator=g, dtype=t.dtype) for k, t in u.items()}
    A = torch.randn(2, 4, 4, generator=g, dtype=torch.float64)
    bad = Symmetry("bad", (("blocks.0.attn.qkv.weight", 0, BlockLinear(torch.cat([A, A, torch.eye(4).double().expand(2, 4, 4)]))),),
                   {"blocks.0.attn.qkv.weight": (24, 8)})
    good = random_symmetry(model, "vo_mixing", seed=1)
    report = check_invariance(model, theta, [good, bad], batches(TINY), vectors=(u, v),
                              levels=("function", "covariance", "geometry"))
    assert report.meta["vector_keys"] == len(u)
    assert not report.ok
    assert {r["symmetry"] for r in report.failures()} == {"bad"}
    assert {r["level"] for r in report.failures()} >= {"function", "covariance"}
    csv, js = report.write(tmp_path / "inv")
    assert list(pd.read_csv(csv).columns) == list(InvarianceReport.COLUMNS)
    loaded = json.loads(js.read_text())
    assert loaded["ok"] is False and len(loaded["rows"]) == len(report.rows)


def _cli():
    import typer

    from qgeom.commands.invariance import register

    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)  # keep typer in multi-command mode
    return app


def test_cli_check_invariance(tmp_path):
    from typer.testing import CliRunner

    app = _cli()
    out = tmp_path / "inv"
    args = ["check-invariance", "--symmetry", "head_permutation,qk_scalar", "--levels", "function,quantizer",
            "--n-probe", "4", "--bits", "3", "--out-dir", str(out)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "as expected" in res.output and "agree" not in res.output
    df = pd.read_csv(out / "invariance.csv")
    assert list(df.columns) == list(InvarianceReport.COLUMNS)
    assert set(df.symmetry) == {"head_permutation", "qk_scalar"} and df.as_expected.isin([True, False]).any()
    res = CliRunner().invoke(app, ["check-invariance", "--symmetry", "no_such_kind"])
    assert res.exit_code != 0 and "no_such_kind" in res.output


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_cli_csv_and_json_cells_are_numbers_not_display_text(fmt):
    """--format csv|json: one record per check under the report's columns, measured/tolerance as
    numbers (no "✓ 1e-15"), holds/as_expected as booleans, a final newline, strict JSON."""
    import io

    from typer.testing import CliRunner

    args = ["check-invariance", "--symmetry", "head_permutation,qk_scalar", "--levels", "function,geometry",
            "--metrics", "ggn", "--n-probe", "4", "--format", fmt]
    res = CliRunner().invoke(_cli(), args)
    assert res.exit_code == 0, res.output
    text = res.stdout
    assert text.endswith("\n") and "✓" not in text and "≠" not in text and "[green]" not in text
    if fmt == "json":
        rows = json.loads(text)["rows"]  # json.loads accepts NaN; strictness: no bare NaN in the text
        assert "NaN" not in text
    else:
        rows = pd.read_csv(io.StringIO(text)).to_dict("records")
        assert list(rows[0]) == list(InvarianceReport.COLUMNS)
    assert len(rows) > 4 and {r["symmetry"] for r in rows} == {"head_permutation", "qk_scalar"}
    for r in rows:
        assert isinstance(r["measured"], float) and isinstance(r["tolerance"], float)
        assert r["holds"] in (True, False)  # bool (JSON) or numpy bool (CSV read by pandas)
    eu = {r["symmetry"]: r for r in rows if r["quantity"] == "Euclidean cosine"}
    assert not eu["qk_scalar"]["holds"] and eu["qk_scalar"]["as_expected"] and eu["head_permutation"]["holds"]


def test_holds_and_as_expected_cannot_be_misread():
    """On a "not invariant" row the violation measured means holds=False and as_expected=True; on
    an invariant row holds=True and as_expected=True; failures() and surprises() read as_expected."""
    model, theta = tiny_vit(TINY)
    syms = [random_symmetry(model, "head_permutation", seed=1), random_symmetry(model, "qk_scalar", seed=1)]
    report = check_invariance(model, theta, syms, batches(TINY), levels=("geometry",), metrics=("ggn",))
    eu = {r["symmetry"]: r for r in report.rows if r["quantity"] == "Euclidean cosine"}
    broke, kept = eu["qk_scalar"], eu["head_permutation"]
    assert broke["expected"] == "not invariant" and broke["measured"] > broke["tolerance"]
    assert broke["holds"] is False and broke["as_expected"] is True
    assert kept["expected"] == "invariant" and kept["holds"] is True and kept["as_expected"] is True
    assert report.ok and not report.surprises() and "agrees" not in report.frame.columns
    flipped = InvarianceReport([{**broke, "holds": True, "as_expected": False},
                                {**kept, "holds": False, "as_expected": False}])
    assert flipped.surprises() == [flipped.rows[0]] and flipped.failures() == [flipped.rows[1]]


def test_a_nan_measurement_never_counts_as_held_or_as_expected():
    from qgeom.symmetry.invariance_report import _row

    nan = float("nan")
    cells = {e: _row("g", "geometry", "q", e, nan, 1e-8) for e in ("invariant", "covariant", "not invariant", "reported")}
    assert all(r["holds"] is None for r in cells.values())
    assert [cells[e]["as_expected"] for e in ("invariant", "covariant", "not invariant", "reported")] == [False, False, False, None]
    assert InvarianceReport(cells.values()).failures() == [cells["invariant"], cells["covariant"]]
    shown = _row("g", "quantizer", "accuracy", "reported", 0.25, 0.5)
    assert shown["holds"] is True and shown["as_expected"] is None


def test_applicable_kinds_names_the_reason():
    model, _ = tiny_vit({**TINY, "init_values": None})
    why = applicable_kinds(model)
    assert why["layerscale_folding"] and "LayerScale" in why["layerscale_folding"]
    assert all(why[k] is None for k in KINDS if k != "layerscale_folding")


@pytest.mark.slow
def test_micro_preset_all_kinds_float64():
    from qgeom.data import make_task
    from qgeom.models import create_model
    from qgeom.params import from_model

    task = make_task("shape", n_train=8, n_val=16, n_test=8)
    model = create_model("micro", task.num_classes, seed=0, init_values=0.1)
    syms = [random_symmetry(model, k, seed=1) for k in KINDS]
    report = check_invariance(model, from_model(model), syms, [(task.val.x, task.val.y)], spec=QuantSpec(bits=2),
                              pipeline_for=("residual_permutation", "qk_scalar"))
    assert_as_expected(report)

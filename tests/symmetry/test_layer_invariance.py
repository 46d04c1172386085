"""GPTQ's layer metric under the symmetry catalogue: which kinds keep it (derived by hand below,
registered in CATALOGUE and computed by Symmetry.preserves_layer_metric), and what
check_invariance / ``qgeom check-invariance`` measure (float64: tolerance 1e-8 × κ(g); a
violation must exceed it).

The derivation. A function-level g maps a Linear weight W ↦ R W Cᵀ while its inputs go
x ↦ C⁻ᵀx, so H_ℓ ↦ C⁻ᵀ H_ℓ C⁻¹ and tr(U'H'V'ᵀ) = tr(U H Vᵀ RᵀR): the forms are invariant iff
every quantized weight's row map R is orthogonal.

* head permutation: qkv rows permuted (R orthogonal); proj columns permuted with its inputs → yes
* q/k mixing A_h: qkv rows by diag(A, A⁻ᵀ, I) → only for orthogonal or signed-permutation A
* v/o mixing B_h: qkv rows by diag(I, I, B); proj columns by B⁻¹ with inputs B·o → only orthogonal B
* MLP permutation: fc1 rows, fc2 columns with its inputs → yes
* LayerNorm folding: qkv/fc1 columns × 1/s, their inputs (the norm's output) × s → yes
* LayerScale folding: proj/fc2 rows × 1/s → no (each layer's own cosine only for a uniform s)
* residual permutation: qkv/fc1 columns with their inputs, proj/fc2 rows permuted → yes
"""

from __future__ import annotations

import io

import pandas as pd
import torch
from _cases_symmetry import assert_as_expected, batches  # shared cases (tests/)
from hypothesis import given, settings
from hypothesis import strategies as st

from qgeom.symmetry import CATALOGUE, KINDS, layerscale_folding, random_symmetry
from qgeom.symmetry.invariance import check_invariance
from qgeom.testing import symmetries, tiny_vit, vit_configs

KEEPS_LAYER_METRIC = {"head_permutation", "qk_orthogonal", "qk_signed_permutation", "vo_orthogonal",
                      "vo_signed_permutation", "mlp_permutation", "layernorm_folding", "residual_permutation"}
TINY = dict(depth=1, num_heads=2, embed_dim=8, img_size=8, patch_size=4, mlp_ratio=2.0, init_values=0.5)
LEVELS = ("function", "covariance", "geometry")


def layer_rows(report) -> pd.DataFrame:
    df = report.frame
    return df[df.quantity.str.contains("layer")]


def test_catalogue_registers_the_derivation():
    assert set(CATALOGUE) == set(KINDS)
    assert {k for k in KINDS if CATALOGUE[k]["layer_metric"]} == KEEPS_LAYER_METRIC


def test_every_kind_measured_on_a_tiny_vit():
    """One generic element of each kind: the layer metric's covariance, λ*, cos, forms and
    per-layer cosines are invariant for the kinds above and measurably changed for the others."""
    model, theta = tiny_vit(TINY)
    syms = [random_symmetry(model, k, seed=7) for k in KINDS]
    report = check_invariance(model, theta, syms, batches(TINY), metrics=("layer",), levels=LEVELS)
    assert_as_expected(report)
    rows = layer_rows(report)
    assert len(rows) == 5 * len(KINDS)
    for kind, r in rows.groupby("symmetry"):
        kept = kind in KEEPS_LAYER_METRIC
        assert set(r.expected) == ({"invariant", "covariant"} if kept else {"not invariant"}), kind
        assert r.as_expected.all(), kind
    assert (report.frame[report.frame.level == "function"].as_expected).all()  # every element is a symmetry


@settings(max_examples=15, deadline=None)
@given(cfg=vit_configs(head_dim=(2, 8)), data=st.data())
def test_layer_rows_agree_for_random_models_and_elements(cfg, data):
    """For all tiny ViT configurations and elements: the layer rows' expectations are the
    element's own (computed from its matrices) and the measurements agree with them."""
    model, theta = tiny_vit(cfg, seed=data.draw(st.integers(0, 99)))
    g = data.draw(symmetries(model))
    report = check_invariance(model, theta, g, batches(cfg), metrics=("layer",), levels=LEVELS)
    assert_as_expected(report)
    rows = layer_rows(report)
    pooled = rows[~rows.quantity.str.startswith("per-layer")]
    kept = g.expectations()["layer_metric"]
    assert set(pooled.expected) <= ({"invariant", "covariant", "reported"} if kept else {"not invariant", "reported"})
    per_layer = rows[rows.quantity.str.startswith("per-layer")].iloc[0]
    assert per_layer.expected in ("reported", "invariant" if g.preserves_layer_metric(per_layer=True) else "not invariant")


def test_uniform_layerscale_keeps_each_layers_cosine_but_not_the_pooled_one():
    """s = c·1 scales proj's and fc2's forms by 1/c² and leaves qkv's and fc1's: every layer's own
    cosine is invariant, the pooled cosine is not."""
    model, theta = tiny_vit(TINY)
    c = torch.full((8,), 2.5, dtype=torch.float64)
    g = layerscale_folding(model, {"blocks.0.ls1": c, "blocks.0.ls2": c})
    assert g.preserves_layer_metric(per_layer=True) and not g.preserves_layer_metric()
    report = check_invariance(model, theta, g, batches(TINY), metrics=("layer",), levels=("geometry",))
    assert_as_expected(report)
    rows = {r["quantity"]: r for r in report.rows}
    assert rows["per-layer cos_layer, max |change|"]["expected"] == "invariant"
    assert rows["cos_layer"]["expected"] == "not invariant" and rows["cos_layer"]["measured"] > 1e-6


def test_cli_reports_the_layer_metric_in_its_own_column(tmp_path):
    import typer
    from typer.testing import CliRunner

    from qgeom.commands.invariance import register

    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)  # keep typer in multi-command mode
    out = tmp_path / "inv"
    res = CliRunner().invoke(app, ["check-invariance", "--symmetry", "head_permutation,qk_mixing", "--levels",
                                   "covariance,geometry", "--metrics", "ggn,layer", "--n-probe", "4",
                                   "--format", "csv", "--out-dir", str(out)])
    assert res.exit_code == 0, res.output
    rows = pd.read_csv(io.StringIO(res.output))  # one numeric row per check (csv: no display text)
    layer = rows[rows.quantity.str.contains("layer")]
    assert (layer[layer.symmetry == "head_permutation"].holds).all()
    assert not layer[(layer.symmetry == "qk_mixing") & (layer.level == "geometry")].holds.any()
    assert rows[(rows.quantity == "cos_ggn")].holds.all()  # the loss's metric keeps its own rows
    df = pd.read_csv(out / "invariance.csv")
    cov = df[df.quantity.str.endswith("M=layer")].set_index("symmetry")
    assert cov.loc["head_permutation", "expected"] == "covariant" and cov.loc["qk_mixing", "expected"] == "not invariant"
    assert df[df.quantity.str.contains("layer")].as_expected.all()
    assert (df[df.quantity == "cos_ggn"].expected == "invariant").all()  # the loss's metric: invariant for both

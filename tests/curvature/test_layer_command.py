"""``qgeom geometry --metric layer``: GPTQ's layer metric from the command line, pooled and per layer.

The per-layer forms written to geometry_layers.csv must sum to the pooled Gram matrix of
geometry.json, and every cosine must be its forms' ratio (float64 products: 1e-10 relative)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from _cases_curvature import random_vector
from qgeom.io import save_params

NAMES = ["rho_a", "rho_b", "rho_own"]


@pytest.fixture(scope="module")
def receiver(tmp_path_factory):
    """A micro-preset receiver (depth 1, width 16) on the offline 'shape' task, three vectors."""
    from qgeom.models import create_model
    from qgeom.params import from_model, select

    d = tmp_path_factory.mktemp("layer_cli")
    overrides = {"depth": 1, "embed_dim": 16, "num_heads": 2}
    theta = from_model(create_model("micro", 4, seed=0, **overrides))
    save_params(d / "receiver.safetensors", theta,
                {"preset": "micro", "num_classes": 4, "task": "shape", "model_overrides": overrides})
    back = select(theta, "backbone")
    for i, name in enumerate(NAMES):
        save_params(d / f"{name}.safetensors", {k: 0.01 * v for k, v in random_vector(back, i).items()})
    return d


def _app():
    import typer

    from qgeom.commands import curvature, spectrum

    app = typer.Typer()  # two commands: typer's multi-command mode, as the real CLI
    curvature.register(app)
    spectrum.register(app)
    return app


def test_geometry_command_with_the_layer_metric(receiver):
    d, out = receiver, receiver / "geo"
    res = CliRunner().invoke(_app(), ["geometry", str(d / "receiver.safetensors"),
                                      *[str(d / f"{n}.safetensors") for n in NAMES], "--metric", "layer",
                                      "--n-probe", "16", "--probe-batch", "8", "--out-dir", str(out)])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "geometry.json").read_text())
    assert summary["info"]["metric"] == "layer" and summary["info"]["layers"] == 4
    K = np.array(summary["gram"]["value"])
    pairs = pd.read_csv(out / "geometry_pairs.csv")
    layers = pd.read_csv(out / "geometry_layers.csv")
    assert len(pairs) == 6 and len(layers) == 6 * 4 and len(summary["layers"]) == 24
    assert set(layers.layer) == {f"blocks.0.{m}.weight" for m in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")}
    for _, p in pairs.iterrows():
        i, j = NAMES.index(p.donor), NAMES.index(p.receiver_vector)
        assert -1 <= p.metric_cosine <= 1
        assert p.metric_cosine == pytest.approx(K[i, j] / math.sqrt(K[i, i] * K[j, j]), rel=1e-10)
        per = layers[(layers.donor == p.donor) & (layers.receiver_vector == p.receiver_vector)]
        assert per.DR.sum() == pytest.approx(K[i, j], rel=1e-10) and per.DD.sum() == pytest.approx(K[i, i], rel=1e-10)
        assert np.allclose(per.layer_cosine, per.DR / np.sqrt(per.DD * per.RR), rtol=1e-10)
        assert np.allclose(per.layer_optimal_scale, per.DR / per.DD, rtol=1e-10)
    assert "GPTQ's metric" in " ".join(CliRunner().invoke(_app(), ["geometry", "--help"]).output.split())

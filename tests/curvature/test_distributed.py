"""Data-parallel curvature: ``torchrun --nproc-per-node 2`` (gloo, CPU) gives the single-process
products, Gram matrices, Lanczos eigenvalues, loss and gradient (float64) on every rank, with a
probe set whose 5 batches of unequal size do not divide evenly over the ranks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

CASE = Path(__file__).with_name("_distributed_case.py")


def test_two_ranks_give_the_single_process_numbers(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2]), "OMP_NUM_THREADS": "1"}
    single, multi = tmp_path / "single", tmp_path / "multi"
    single.mkdir(), multi.mkdir()
    subprocess.run([sys.executable, str(CASE), str(single)], check=True, env=env, capture_output=True)
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          str(CASE), str(multi), "--distributed"], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    ref = torch.load(single / "rank0.pt", weights_only=True)
    for rank in (0, 1):
        got = torch.load(multi / f"rank{rank}.pt", weights_only=True)
        for key, want in ref.items():
            err = float((got[key] - want).abs().max() / want.abs().max())
            assert err < 1e-12, (rank, key, err)  # float64: only the order of the sums differs


@pytest.mark.slow
def test_geometry_command_under_torchrun_matches_one_process(tiny_run, tmp_path):
    """``torchrun --nproc-per-node 2 -m qgeom geometry …`` (gloo): the command is unchanged, one
    rank writes, and the tables equal the single-process ones."""
    import json

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2]), "OMP_NUM_THREADS": "1"}
    receiver = tiny_run / "seed0" / "finetune" / "hue.safetensors"
    vectors = [tiny_run / "seed0" / "qat2" / f"rho_{t}.safetensors" for t in ("hue", "shape", "position")]
    args = ["geometry", str(receiver), *map(str, vectors), "--n-probe", "40", "--batch-size", "8", "--dtype", "float64"]
    subprocess.run([sys.executable, "-m", "qgeom", *args, "--out", str(tmp_path / "one")], check=True, env=env,
                   capture_output=True)
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "qgeom", *args, "--out", str(tmp_path / "two")], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "geometry.json").read_text())
    two = json.loads((tmp_path / "two" / "geometry.json").read_text())
    for a, b in zip(one["pairs"], two["pairs"]):
        for key in ("metric_cosine", "optimal_scale"):
            assert abs(a[key] - b[key]) <= 1e-12 * max(1.0, abs(a[key])), (key, a[key], b[key])

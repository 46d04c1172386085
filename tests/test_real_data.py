"""Real models and real data, offline: a timm checkpoint as θ_0, torchvision's own MNIST reader on
IDX files written here, ImageFolder trees of PNGs; streaming bounds; bad input.

The model is timm's registered ``test_vit`` (a real timm VisionTransformer: 160×160 input, patch
16, width 64, depth 6, 0.3 M parameters), written to disk by the test as a timm-format checkpoint
(a plain state dict, as ``safetensors`` and as a ``torch.save`` file) — the path a researcher's
``vit_base_patch16_224`` file takes.
"""

from __future__ import annotations

import json
import multiprocessing
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from qgeom.data import (
    DatasetNotFoundError,
    ShuffledBatches,
    StreamSplit,
    UnreadableImageError,
    batches,
    load_task,
    model_transform,
)
from qgeom.models import PretrainedUnavailableError, create_model, load_pretrained
from qgeom.io import CheckpointError, load_params

runner = CliRunner()
ARCH = "timm:test_vit"


def cli(*args):
    from qgeom.cli import app

    return runner.invoke(app, [str(a) for a in args])


# --------------------------------------------------------------------------------------------
# fixtures: files in the formats their readers expect
# --------------------------------------------------------------------------------------------


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file (the MNIST format): magic (0, 0, 0x08 = ubyte, ndim), big-endian dims, bytes."""
    with open(path, "wb") as f:
        f.write(bytes([0, 0, 0x08, array.ndim]))
        f.write(struct.pack(">" + "I" * array.ndim, *array.shape))
        f.write(np.ascontiguousarray(array, dtype=np.uint8).tobytes())


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory) -> Path:
    """``ROOT/MNIST/raw/*-idx?-ubyte`` made from the offline digits task's images (scikit-learn's
    8×8 digits, scaled ×3 and padded to 28×28), read by ``torchvision.datasets.MNIST``."""
    from sklearn.datasets import load_digits

    d = load_digits()
    img = (d.images / 16.0 * 255).astype(np.uint8).repeat(3, axis=1).repeat(3, axis=2)  # 24×24
    img = np.pad(img, ((0, 0), (2, 2), (2, 2)))
    root = tmp_path_factory.mktemp("mnist")
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, sl in (("train", slice(0, 300)), ("t10k", slice(300, 400))):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", img[sl])
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", d.target[sl].astype(np.uint8))
    return root


def write_png_folder(root: Path, layout: dict[str, dict[str, int]], draw) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, per_class in layout.items():
        for cls, n in per_class.items():
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(draw(cls, rng)).save(root / split / cls / f"{i}.png")
    return root


def colour_image(cls: str, rng) -> np.ndarray:
    base = {"red": (200, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 200)}[cls]
    noise = rng.integers(-40, 40, size=(32, 32, 3))
    return np.clip(np.array(base) + noise, 0, 255).astype(np.uint8)


def bar_image(cls: str, rng) -> np.ndarray:
    img = rng.integers(0, 60, size=(32, 32, 3)).astype(np.uint8)
    k = int(rng.integers(4, 28))
    if cls == "horizontal":
        img[k - 2 : k + 2] = 230
    else:
        img[:, k - 2 : k + 2] = 230
    return img


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("folders")
    colours = write_png_folder(base / "colours", {"train": {"red": 40, "green": 40, "blue": 40},
                                                  "test": {"red": 10, "green": 10, "blue": 10}}, colour_image)
    # flat layout (class folders at the root): carved 80/10/10
    bars = write_png_folder(base / "bars", {"": {"horizontal": 50, "vertical": 50}}, bar_image)
    return {"colours": colours, "bars": bars}


@pytest.fixture(scope="module")
def timm_checkpoint(tmp_path_factory) -> dict[str, Path]:
    """A θ_0 for timm's test_vit (random weights standing in for pretrained ones), head removed,
    written as a plain timm state dict: safetensors and torch.save."""
    d = tmp_path_factory.mktemp("timm")
    state = {k: v.contiguous() for k, v in create_model(ARCH, 0, seed=1).state_dict().items()}
    save_file(state, d / "test_vit.safetensors")
    torch.save(state, d / "test_vit.pth")
    return {"safetensors": d / "test_vit.safetensors", "pth": d / "test_vit.pth", "state": state}


# --------------------------------------------------------------------------------------------
# data sources
# --------------------------------------------------------------------------------------------


def test_torchvision_mnist_reads_the_idx_files_through_the_models_transform(mnist_root):
    model = create_model(ARCH, 10)
    t = load_task("MNIST", seed=0, root=mnist_root, transform=model_transform(model))
    assert t.num_classes == 10 and isinstance(t.train, StreamSplit)
    # torchvision's MNIST has no validation split: 10 % of train carved with the seed
    assert (len(t.train), len(t.val), len(t.test)) == (270, 30, 100)
    assert set(t.train.indices.tolist()).isdisjoint(t.val.indices.tolist())
    x, y = next(batches(t.test, 8))
    assert x.shape == (8, 3, 160, 160) and x.dtype == torch.float32 and y.dtype == torch.int64
    from sklearn.datasets import load_digits

    assert y.tolist() == load_digits().target[300:308].tolist()  # the labels written into the IDX file
    # timm's normalisation for test_vit (mean = std = 0.5): the black border maps to −1
    assert torch.allclose(x[:, :, 0, 0], torch.full((8, 3), -1.0))


def test_flat_image_folder_is_carved_and_seeded(folders):
    t = load_task(f"imagefolder:bars={folders['bars']}", seed=3)
    assert t.name == "bars" and t.classes == ("horizontal", "vertical")
    assert (len(t.train), len(t.val), len(t.test)) == (80, 10, 10)
    again = load_task(f"imagefolder:bars={folders['bars']}", seed=3)
    assert torch.equal(again.test.indices, t.test.indices)
    capped = load_task(f"imagefolder:bars={folders['bars']}", seed=3, n_train=16, n_val=4)
    assert (len(capped.train), len(capped.val), len(capped.test)) == (16, 4, 10)


class CountingDataset(torch.utils.data.Dataset):
    """Images decoded on demand; a shared counter records how many were decoded (all workers)."""

    def __init__(self, n: int) -> None:
        self.n, self.decoded = n, multiprocessing.Value("i", 0)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        with self.decoded.get_lock():
            self.decoded.value += 1
        return torch.full((3, 8, 8), float(i)), i % 3


@pytest.mark.parametrize("workers", [0, 2])
def test_a_streamed_split_is_never_decoded_ahead_of_one_batch_per_worker(workers):
    n, b = 200, 8
    ds = CountingDataset(n)
    split = StreamSplit(ds, torch.arange(n), num_workers=workers)
    seen = 0
    for k, (x, y) in enumerate(batches(split, b)):
        seen += len(y)
        # what was decoded: the batches handed out, plus at most one batch in flight per worker
        assert ds.decoded.value <= (k + 1) * b + workers * b, (k, ds.decoded.value)
        assert torch.equal(x[:, 0, 0, 0].long(), torch.arange(k * b, k * b + len(y)))
    assert seen == n
    # training batches stream the same way, in the seeded order an in-memory split would use
    ds2 = CountingDataset(n)
    shuffled = ShuffledBatches(StreamSplit(ds2, torch.arange(n), num_workers=workers), b, steps=5, seed=1)
    for k, (x, _) in enumerate(shuffled):
        assert ds2.decoded.value <= (k + 1) * b + workers * b
        assert torch.equal(x[:, 0, 0, 0].long(), shuffled._order[k * b : (k + 1) * b])


# --------------------------------------------------------------------------------------------
# θ_0 sources
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_a_timm_checkpoint_loads_as_theta0(timm_checkpoint, fmt):
    model = create_model(ARCH, 5)
    theta0 = load_pretrained(str(timm_checkpoint[fmt]), model)
    assert not any(k.startswith("head.") for k in theta0)
    for k, v in theta0.items():
        assert torch.equal(v, timm_checkpoint["state"][k]), k


def test_a_checkpoint_for_another_architecture_is_refused_naming_keys(timm_checkpoint):
    with pytest.raises(CheckpointError, match="test_vit.pth: keys the model does not have: blocks.4.norm1.weight, .* \\(and 19 more\\)"):
        load_pretrained(str(timm_checkpoint["pth"]), create_model("micro", 5))


def test_timm_pretrained_offline_fails_at_once_saying_how_to_pass_a_file(monkeypatch, tmp_path):
    import huggingface_hub.constants as hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path))  # nothing cached
    with pytest.raises(PretrainedUnavailableError, match="theta0=test_vit.safetensors"):
        load_pretrained(ARCH, create_model(ARCH, 5))


# --------------------------------------------------------------------------------------------
# bad data
# --------------------------------------------------------------------------------------------


def test_missing_torchvision_dataset_names_the_folder_it_expects(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=f"CIFAR10: torchvision.datasets.CIFAR10 found no data under "
                                                   f"{tmp_path}.*cifar-10-batches-py.*data_download=true"):
        load_task("CIFAR10", root=tmp_path)


def test_an_unreadable_image_stops_naming_the_file(tmp_path):
    root = write_png_folder(tmp_path / "f", {"train": {"red": 3, "blue": 3}}, colour_image)
    bad = root / "train" / "red" / "1.png"
    bad.write_bytes(b"not a png at all")
    t = load_task(f"imagefolder:f={root}", seed=0)
    with pytest.raises(UnreadableImageError, match=f"{bad}: cannot be decoded"):
        for split in (t.train, t.val, t.test):
            list(batches(split, 2))


# --------------------------------------------------------------------------------------------
# every entry point on them
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_run(tmp_path_factory, mnist_root, folders, timm_checkpoint) -> Path:
    """``qgeom run`` end to end: timm θ_0 (torch file), MNIST through torchvision, two ImageFolders."""
    run_dir = tmp_path_factory.mktemp("real") / "run"
    res = cli("run", "tiny", "--run-dir", run_dir, f"preset={ARCH}", "model_overrides={}", "controls=", f"theta0={timm_checkpoint['pth']}",
              f"tasks=MNIST,imagefolder:colours={folders['colours']},imagefolder:bars={folders['bars']}",
              f"data_root={mnist_root}", "n_train=64", "n_val=16", "n_test=16", "scopes=backbone",
              "probe_size=16", "probe_batch=16", "eval_batch=64", "val_every=4")
    assert res.exit_code == 0, res.output
    return run_dir


def test_run_end_to_end_on_a_timm_checkpoint_and_real_data(real_run, timm_checkpoint):
    theta0, meta = load_params(real_run / "theta0.safetensors")
    assert meta["source"] == str(timm_checkpoint["pth"])
    assert all(torch.equal(v, timm_checkpoint["state"][k]) for k, v in theta0.items())
    import pandas as pd

    acc = pd.read_csv(real_run / "accuracy.csv")
    assert set(acc.receiver) == {"MNIST", "colours", "bars"}
    geo = pd.read_csv(real_run / "geometry.csv")
    assert set(geo.receiver) == {"MNIST", "colours", "bars"} and geo.value.notna().any()
    curve = pd.read_csv(real_run / "seed0" / "finetune" / "colours.curve.csv")
    assert curve.step.max() == 9 and curve.loss.notna().sum() >= 2 and curve.val_top1.notna().sum() >= 2
    assert json.loads((real_run / "config.json").read_text())["preset"] == ARCH


def test_geometry_and_invariance_on_a_timm_format_checkpoint_with_imagefolder_data(real_run, folders, tmp_path):
    theta, _ = load_params(real_run / "seed0" / "finetune" / "colours.safetensors")
    receiver = tmp_path / "colours.pth"
    torch.save(theta, receiver)  # a plain timm state dict: no qgeom metadata
    vectors = [real_run / "seed0" / "qat2" / f"rho_{t}.safetensors" for t in ("colours", "bars")]
    data = f"imagefolder:colours={folders['colours']}"
    res = cli("geometry", receiver, *vectors, "--model", ARCH, "--data", data, "--n-probe", "8", "--probe-batch", "8",
              "--out-dir", tmp_path / "geo")
    assert res.exit_code == 0, res.output
    pairs = json.loads((tmp_path / "geo" / "geometry.json").read_text())["pairs"]
    assert len(pairs) == 2 and all(-1 <= p["euclidean_cosine"] <= 1 for p in pairs)
    res = cli("check-invariance", "--checkpoint", receiver, "--model", ARCH, "--data", data, "--n-probe", "4",
              "--symmetry", "head_permutation", "--levels", "function,covariance", "--metrics", "ggn")
    assert res.exit_code == 0, res.output
    assert "0 failed" in res.output
    # without --model a timm-format file cannot say what it is
    res = cli("geometry", receiver, *vectors, "--data", data)
    assert res.exit_code != 0 and "--model timm:NAME" in res.output


def test_evaluate_takes_a_timm_format_checkpoint_and_real_data(real_run, mnist_root, tmp_path):
    theta, _ = load_params(real_run / "seed0" / "finetune" / "MNIST.safetensors")
    path = tmp_path / "mnist.pth"
    torch.save(theta, path)
    res = cli("evaluate", path, "--model", ARCH, "--data", "MNIST", "--data-root", mnist_root, "--bits", "2")
    assert res.exit_code == 0, res.output and "MNIST" in res.output


def test_the_paper_preset_starts_offline_and_stops_at_once_on_the_missing_dataset(tmp_path):
    run_dir = tmp_path / "paper"
    res = cli("run", "paper", "--run-dir", run_dir, f"data_root={tmp_path / 'data'}")
    assert res.exit_code == 1
    assert "Cars: torchvision.datasets.StanfordCars found no data under" in res.output
    assert "stanford_cars" in res.output and "data_download=true" in res.output
    assert not (run_dir / "theta0.safetensors").exists()  # no work started


def test_finetune_and_qat_commands_on_a_timm_checkpoint_and_an_image_folder(timm_checkpoint, folders, tmp_path):
    data = f"imagefolder:colours={folders['colours']}"
    ft, q = tmp_path / "ft.safetensors", tmp_path / "qat.safetensors"
    fast = ["--steps", "2", "--batch-size", "8"]
    res = cli("finetune", "--pretrained", timm_checkpoint["pth"], "--model", ARCH, "--data", data, "--out", ft, *fast)
    assert res.exit_code == 0, res.output
    _, meta = load_params(ft)
    assert meta["preset"] == ARCH and meta["task"] == data and meta["num_classes"] == "3"
    res = cli("qat", "--finetuned", ft, "--out", q, "--bits", "2", *fast)  # model and data from the metadata
    assert res.exit_code == 0, res.output and "colours test Top-1 after 2-bit PTQ" in res.output


def test_unknown_or_missing_trackers_are_refused_before_any_work(tmp_path):
    import importlib.util

    from qgeom.tracking import CurveLog, check_trackers

    with pytest.raises(ValueError, match="trackers: unknown tracker 'mlflow'"):
        check_trackers(["mlflow"])
    if importlib.util.find_spec("tensorboard") is None:
        with pytest.raises(ValueError, match="trackers: tensorboard is not installed"):
            CurveLog(tmp_path / "c.csv", ["tensorboard"])
    with CurveLog(tmp_path / "c.csv") as log:  # CSV alone: rows are readable while the stage runs
        log({"step": 0, "loss": 1.5, "lr": 0.1})
        assert (tmp_path / "c.csv").read_text().splitlines()[1] == "0,1.5,0.1,"


def test_figures_draw_from_a_run_on_real_data(real_run, tmp_path):
    from qgeom.commands.figures import render_all

    made = render_all(real_run, tmp_path, cheap=True)
    assert len(made) >= 5 and all((tmp_path / f"{m.name}.png").exists() for m in made)

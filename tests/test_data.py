"""qgeom.data: the offline task registry, pretext mixtures, batching and the ImageFolder adaptor.

No wall-time assertions: generation speed is a benchmark, not a test.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from qgeom.data import (
    IMG,
    REAL_TASKS,
    TASKS,
    ShuffledBatches,
    Split,
    batches,
    from_image_folder,
    load_task,
    make_task,
    pretext_task,
    probe_batches,
)

SIZES = dict(n_train=300, n_val=60, n_test=60)
LO, HI = (0 - 0.4) / 0.3, (1 - 0.4) / 0.3  # images are (clip(v, 0, 1) − 0.4) / 0.3


@pytest.fixture(scope="module", params=sorted(TASKS))
def task(request):
    return make_task(request.param, seed=0, **SIZES)


def test_registry_holds_the_documented_tasks():
    assert set(TASKS) == {"shape", "stripes", "count", "hue", "texture", "position", "size", "mirror", "digits"}
    assert len(REAL_TASKS) == 22 and "ImageNet" in REAL_TASKS
    assert all(len(spec.classes) >= 2 and spec.description for spec in TASKS.values())


def test_task_shapes_dtypes_and_label_ranges(task):
    assert task.num_classes == len(TASKS[task.name].classes) and task.classes == TASKS[task.name].classes
    for split, n in ((task.train, 300), (task.val, 60), (task.test, 60)):
        assert split.x.shape == (n, 3, IMG, IMG) and split.x.dtype == torch.float32
        assert split.y.shape == (n,) and split.y.dtype == torch.int64 and len(split) == n
        assert split.x.is_contiguous() and torch.isfinite(split.x).all()
        assert split.y.min() >= 0 and split.y.max() < task.num_classes
        # the documented standardisation, up to float32 rounding of the division
        assert split.x.min() >= LO - 1e-5 and split.x.max() <= HI + 1e-5


def test_every_class_is_present_in_training(task):
    # 300 uniform labels over ≤ 10 classes: a missing class has probability < 1e-12
    assert set(task.train.y.tolist()) == set(range(task.num_classes))


def test_images_carry_the_label(task):
    # not a learnability test: the class-mean images must differ (labels are not noise)
    means = torch.stack([task.train.x[task.train.y == c].mean(0) for c in range(task.num_classes)])
    spread = (means - means.mean(0)).abs().mean()
    assert spread > 1e-3


def test_deterministic_for_a_seed_and_different_across_seeds(task):
    again = make_task(task.name, seed=0, **SIZES)
    other = make_task(task.name, seed=1, **SIZES)
    for s in ("train", "val", "test"):
        assert torch.equal(getattr(again, s).x, getattr(task, s).x) and torch.equal(getattr(again, s).y, getattr(task, s).y)
        assert not torch.equal(getattr(other, s).x, getattr(task, s).x)
    assert again.seed == 0 and other.seed == 1


def test_splits_are_independent_streams(task):
    # growing one split never changes another, and the splits hold different images
    bigger = make_task(task.name, seed=0, n_train=500, n_val=60, n_test=60)
    assert torch.equal(bigger.val.x, task.val.x) and torch.equal(bigger.test.x, task.test.x)
    assert not torch.equal(task.val.x, task.test.x[: len(task.val)])
    flat = {s: getattr(task, s).x.flatten(1) for s in ("train", "val", "test")}
    assert not (torch.cdist(flat["val"], flat["test"]) == 0).any()
    if task.name != "digits":  # digits re-uses the 1 797 sklearn images (shifted, recoloured)
        assert not (torch.cdist(flat["train"], flat["test"]) == 0).any()


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown offline task 'shapes'; known offline tasks: shape, stripes"):
        make_task("shapes")
    with pytest.raises(ValueError, match="unknown task 'nope'; known offline tasks: shape.*real tasks.*CIFAR10.*imagefolder"):
        load_task("nope")


def test_load_task_procedural_and_real_without_root():
    t = load_task("hue", seed=3, n_train=20, n_val=5, n_test=5)
    assert torch.equal(t.train.x, make_task("hue", 3, 20, 5, 5).train.x)
    with pytest.raises(ValueError, match="CIFAR10 is a real task: set the data root"):
        load_task("CIFAR10")


# --------------------------------------------------------------------------------------------
# pretext mixture
# --------------------------------------------------------------------------------------------


def test_pretext_task_joint_label_space():
    names = ["shape", "hue", "mirror"]
    t = pretext_task(names, seed=0, n_per_task=100)
    sizes = [len(TASKS[n].classes) for n in names]  # 4, 6, 2
    assert t.num_classes == sum(sizes) == 12
    assert t.classes[:4] == tuple(f"shape:{c}" for c in TASKS["shape"].classes)
    assert t.classes[4] == "hue:red" and t.classes[-1] == "mirror:symmetric"
    assert len(t.train) == 300 and len(t.val) == 30
    offsets = np.cumsum([0] + sizes[:-1])
    for i, (name, off) in enumerate(zip(names, offsets)):
        part = slice(100 * i, 100 * (i + 1))
        y = t.train.y[part]
        assert y.min() >= off and y.max() < off + sizes[i]
        assert set((y - off).tolist()) == set(range(sizes[i]))
        # the same images as the task's own seed+10 000 stream, labels shifted
        own = make_task(name, seed=10_000, n_train=100, n_val=10, n_test=1)
        assert torch.equal(t.train.x[part], own.train.x) and torch.equal(y, own.train.y + int(off))
        assert torch.equal(t.val.y[10 * i : 10 * (i + 1)], own.val.y + int(off))
    # its images differ from those a task is later fine-tuned on (seed 0)
    assert not torch.equal(t.train.x[:100], make_task("shape", 0, 100, 10, 1).train.x)
    assert t.name == "pretext:shape+hue+mirror"


# --------------------------------------------------------------------------------------------
# batching
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def split() -> Split:
    return Split(torch.arange(10.0)[:, None].expand(10, 3), torch.arange(10))


def test_shuffled_batches_are_seeded_epoch_permutations(split):
    b = ShuffledBatches(split, batch_size=5, steps=7, seed=0)
    assert len(b) == 7
    items = [b[i] for i in range(7)]
    again = ShuffledBatches(split, batch_size=5, steps=7, seed=0)
    assert all(torch.equal(x, again[i][0]) and torch.equal(y, again[i][1]) for i, (x, y) in enumerate(items))
    other = ShuffledBatches(split, batch_size=5, steps=7, seed=1)
    assert any(not torch.equal(y, other[i][1]) for i, (_, y) in enumerate(items))
    # every epoch (two batches of 5) is a permutation of the 10 examples; features follow labels
    for e in range(3):
        ys = torch.cat([items[2 * e][1], items[2 * e + 1][1]])
        assert sorted(ys.tolist()) == list(range(10))
    assert all(torch.equal(x[:, 0], y.float()) and x.shape == (5, 3) for x, y in items)
    assert len(list(b)) == 7  # iteration stops at `steps`
    with pytest.raises(IndexError):
        b[7]


def test_shuffled_batches_larger_than_the_split(split):
    b = ShuffledBatches(split, batch_size=25, steps=2, seed=0)
    assert all(len(y) == 25 for _, y in b)


def test_batches_cover_the_split_in_order(split):
    parts = list(batches(split, 4))
    assert [len(y) for _, y in parts] == [4, 4, 2]
    assert torch.equal(torch.cat([y for _, y in parts]), split.y)


def test_probe_batches(split):
    p = probe_batches(split, 7, batch_size=3, seed=0)
    assert [len(y) for _, y in p] == [3, 3, 1]
    ys = torch.cat([y for _, y in p])
    assert len(set(ys.tolist())) == 7  # distinct examples
    again = probe_batches(split, 7, batch_size=3, seed=0)
    assert all(torch.equal(a[1], b[1]) for a, b in zip(p, again))
    assert not torch.equal(ys, torch.cat([y for _, y in probe_batches(split, 7, batch_size=3, seed=1)]))
    assert len(torch.cat([y for _, y in probe_batches(split, 50)])) == 10  # capped at the split


# --------------------------------------------------------------------------------------------
# ImageFolder
# --------------------------------------------------------------------------------------------

COLOURS = {"blue": (0, 0, 255), "red": (255, 0, 0), "white": (255, 255, 255)}


def write_folder(root: Path, counts: dict[str, dict[str, int]], size=(20, 12)) -> Path:
    """root/<split>/<class>/<i>.png, each image a flat colour (the class's)."""
    from PIL import Image

    for split, per_class in counts.items():
        for cls, n in per_class.items():
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                mode = "L" if (cls == "white" and i == 0) else "RGB"  # a grayscale file too
                img = Image.new("RGB", size, COLOURS[cls]).convert(mode)
                img.save(d / f"{i}.png")
    return root


def materialise(split) -> tuple[torch.Tensor, torch.Tensor]:
    """A streamed split read whole (tests only: tiny folders)."""
    xs, ys = zip(*batches(split, 4))
    return torch.cat(xs), torch.cat(ys)


def test_from_image_folder_splits_off_a_validation_set(tmp_path):
    root = write_folder(tmp_path / "colours", {"train": {"blue": 5, "red": 5, "white": 5},
                                                "test": {"blue": 2, "red": 2, "white": 2}})
    t = from_image_folder(root, img_size=16, seed=0, val_fraction=0.2)
    assert t.name == "colours" and t.classes == ("blue", "red", "white") and t.num_classes == 3
    assert len(t.train) == 12 and len(t.val) == 3 and len(t.test) == 6
    tx, ty = materialise(t.train)
    assert tx.shape == (12, 3, 16, 16) and tx.dtype == torch.float32 and ty.dtype == torch.int64
    # labels follow folders: the per-channel value is (c/255 − 0.4)/0.3 for the class colour c
    for s in (t.train, t.val, t.test):
        for x, y in zip(*materialise(s)):
            expected = (torch.tensor(COLOURS[t.classes[y]], dtype=torch.float32) / 255 - 0.4) / 0.3
            torch.testing.assert_close(x.mean(dim=(1, 2)), expected, atol=1e-5, rtol=0)  # flat images
    # the validation images were taken out of train: 15 distinct files in all
    files = [t.train.dataset.samples[i][0] for i in t.train.indices] + [t.val.dataset.samples[i][0] for i in t.val.indices]
    assert len(set(files)) == 15
    # seeded: the same split again, another with another seed
    again = from_image_folder(root, img_size=16, seed=0, val_fraction=0.2)
    assert torch.equal(again.val.indices, t.val.indices) and torch.equal(again.train.indices, t.train.indices)
    assert any(not torch.equal(from_image_folder(root, img_size=16, seed=s, val_fraction=0.2).val.indices,
                               t.val.indices) for s in range(1, 4))


def test_from_image_folder_with_a_val_folder_and_load_task(tmp_path):
    root = write_folder(tmp_path / "d", {"train": {"blue": 2, "red": 2}, "val": {"blue": 1, "red": 1},
                                         "test": {"blue": 1, "red": 1}})
    t = load_task(f"imagefolder:EuroSAT={root}")
    assert t.name == "EuroSAT" and len(t.train) == 4 and len(t.val) == 2 and materialise(t.val)[1].tolist() == [0, 1]
    assert materialise(t.train)[0].shape[-2:] == (IMG, IMG)


def test_from_image_folder_errors(tmp_path):
    from qgeom.data import DatasetNotFoundError

    with pytest.raises(DatasetNotFoundError, match="no ImageFolder at"):
        from_image_folder(tmp_path / "missing")
    with pytest.raises(ValueError, match="the train and test splits have different classes .only in train: \\['red'\\]"):
        from_image_folder(write_folder(tmp_path / "b", {"train": {"blue": 2, "red": 2}, "test": {"blue": 1}}))
    # a val folder lacking a class would silently renumber the labels (red → 0)
    with pytest.raises(ValueError, match="the train and val splits have different classes"):
        from_image_folder(write_folder(tmp_path / "c", {"train": {"blue": 2, "red": 2}, "val": {"red": 1},
                                                        "test": {"blue": 1, "red": 1}}))

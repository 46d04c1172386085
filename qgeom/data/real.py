"""Real image datasets, streamed from disk: ImageFolder trees and the paper's torchvision datasets.

Nothing is downloaded unless asked (``download=True`` lets torchvision fetch a dataset where
there is network); a missing dataset is a :class:`DatasetNotFoundError` naming the folder
torchvision expects. Images go through the transform timm derives for the model
(:func:`model_transform`: resize, crop, interpolation, mean/std from its pretrained config) and
are read batch by batch (:class:`~qgeom.data.splits.StreamSplit`), never held whole in memory.

Splits. Where a dataset ships a validation (test) split it is used; where it has none, one is
carved from train with a fixed seed (``val_fraction`` of train, at most ``MAX_VAL`` images, as the
task-vector literature the paper builds on does); where it has no split at all (EuroSAT,
SUN397, a flat ImageFolder) train/val/test are carved 80/10/10 with the same seed. Split sizes
can be capped (``n_train``/``n_val``/``n_test`` > 0: a seeded subset) for quick runs.

Unreadable images stop the run with the file's path (:class:`UnreadableImageError`) rather than
being skipped: a skipped image silently changes a split and the fixed probe sets, so results
would depend on which files happen to decode.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from qgeom.data.splits import StreamSplit, Task
from qgeom.paper import REAL_TASKS  # noqa: F401  (re-exported by qgeom.data)



#: name → (torchvision class, keyword arguments per split it ships, extra keyword arguments,
#: the folder under the data root that torchvision reads). Splits not listed are carved.
TORCHVISION: dict[str, tuple[str, dict[str, dict], dict, str]] = {
    "MNIST": ("MNIST", {"train": {"train": True}, "test": {"train": False}}, {}, "MNIST/raw"),
    "FashionMNIST": ("FashionMNIST", {"train": {"train": True}, "test": {"train": False}}, {}, "FashionMNIST/raw"),
    "KMNIST": ("KMNIST", {"train": {"train": True}, "test": {"train": False}}, {}, "KMNIST/raw"),
    "EMNIST": ("EMNIST", {"train": {"train": True}, "test": {"train": False}}, {"split": "balanced"}, "EMNIST/raw"),
    "CIFAR10": ("CIFAR10", {"train": {"train": True}, "test": {"train": False}}, {}, "cifar-10-batches-py"),
    "CIFAR100": ("CIFAR100", {"train": {"train": True}, "test": {"train": False}}, {}, "cifar-100-python"),
    "SVHN": ("SVHN", {"train": {"split": "train"}, "test": {"split": "test"}}, {}, "train_32x32.mat, test_32x32.mat"),
    "STL10": ("STL10", {"train": {"split": "train"}, "test": {"split": "test"}}, {}, "stl10_binary"),
    "GTSRB": ("GTSRB", {"train": {"split": "train"}, "test": {"split": "test"}}, {}, "gtsrb"),
    "DTD": ("DTD", {"train": {"split": "train"}, "val": {"split": "val"}, "test": {"split": "test"}}, {}, "dtd"),
    "Flowers102": ("Flowers102", {"train": {"split": "train"}, "val": {"split": "val"}, "test": {"split": "test"}},
                   {}, "flowers-102"),
    "Food101": ("Food101", {"train": {"split": "train"}, "test": {"split": "test"}}, {}, "food-101"),
    "OxfordIIITPet": ("OxfordIIITPet", {"train": {"split": "trainval"}, "test": {"split": "test"}}, {},
                      "oxford-iiit-pet"),
    "Cars": ("StanfordCars", {"train": {"split": "train"}, "test": {"split": "test"}}, {}, "stanford_cars"),
    "FER2013": ("FER2013", {"train": {"split": "train"}, "test": {"split": "test"}}, {}, "fer2013"),
    "PCAM": ("PCAM", {"train": {"split": "train"}, "val": {"split": "val"}, "test": {"split": "test"}}, {}, "pcam"),
    "RenderedSST2": ("RenderedSST2", {"train": {"split": "train"}, "val": {"split": "val"},
                                      "test": {"split": "test"}}, {}, "rendered-sst2"),
    "EuroSAT": ("EuroSAT", {"all": {}}, {}, "eurosat"),
    "SUN397": ("SUN397", {"all": {}}, {}, "SUN397"),
    "ImageNet": ("ImageNet", {"train": {"split": "train"}, "test": {"split": "val"}}, {}, "train/, val/, devkit"),
}
#: torchvision classes without a download option (manual download; their error names the files).
NO_DOWNLOAD = ("FER2013", "ImageNet")
#: Real tasks torchvision does not ship: read as ImageFolder trees under ``data_root/NAME``.
FOLDER_ONLY = ("RESISC45", "TinyImageNet")

VAL_FRACTION, MAX_VAL = 0.1, 5000


class DatasetNotFoundError(FileNotFoundError):
    """A real dataset is not on disk where it was looked for."""


class UnreadableImageError(ValueError):
    """An image file could not be decoded."""


class ToRGB:
    """PIL image → RGB (grayscale datasets such as MNIST feed a 3-channel ViT); picklable for workers."""

    def __call__(self, img):
        return img.convert("RGB") if getattr(img, "mode", "RGB") != "RGB" else img


def model_transform(model: torch.nn.Module) -> Callable:
    """The evaluation transform timm derives for ``model`` (crop, interpolation, mean/std from its
    pretrained config; the input size the model was built for), preceded by :class:`ToRGB`. It is used for training too, without augmentation, as the
    task-vector code the paper builds on does."""
    from timm.data import create_transform, resolve_data_config
    from torchvision import transforms

    cfg = resolve_data_config({}, model=model)
    size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if size is not None:  # the pretrained config says 224 even when the model was built for another size
        cfg["input_size"] = (3, *tuple(size))
    return transforms.Compose([ToRGB(), create_transform(**cfg, is_training=False)])


def default_transform(img_size: int = 32) -> Callable:
    """Resize to ``img_size``² and standardise like the offline tasks ((v − 0.4) / 0.3 per channel)."""
    from torchvision import transforms

    return transforms.Compose([ToRGB(), transforms.Resize((img_size, img_size)), transforms.ToTensor(),
                               transforms.Normalize([0.4] * 3, [0.3] * 3)])


def checked_loader(path: str):
    """Open an image as RGB, or raise :class:`UnreadableImageError` naming the file."""
    from PIL import Image

    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            return img.convert("RGB")
    except Exception as e:  # PIL raises several types for truncated or foreign files
        raise UnreadableImageError(f"{path}: cannot be decoded as an image ({type(e).__name__}: {e}); remove or "
                                   "replace it (qgeom does not skip images: a skipped image would silently "
                                   "change the split)") from None


def verify_images(split: StreamSplit) -> None:
    """Open every image file of an ImageFolder split and check its structure (PIL's ``verify``:
    headers and, for PNG, every chunk's checksum; no pixel is decoded, so it is cheap), raising
    :class:`UnreadableImageError` naming the first bad file. Splits of other datasets (torchvision's
    arrays) have no files to check."""
    from PIL import Image

    samples = getattr(split.dataset, "samples", None)
    if samples is None:
        return
    for i in split.indices.tolist():
        path = samples[i][0]
        try:
            with Image.open(path) as img:
                img.verify()
        except Exception as e:  # PIL raises several types for truncated or foreign files
            raise UnreadableImageError(f"{path}: cannot be decoded as an image ({type(e).__name__}: {e}); remove or "
                                       "replace it (qgeom does not skip images: a skipped image would silently "
                                       "change the split)") from None


def data_paths(name: str, root: str | os.PathLike | None) -> list[Path]:
    """The files and folders torchvision (or an ImageFolder under the data root) reads for the real task ``name``."""
    if root is None:
        return []
    if name in FOLDER_ONLY:
        return [Path(root) / name]
    folder = TORCHVISION[name][3] if name in TORCHVISION else name
    return [Path(root) / part.strip().rstrip("/") for part in folder.split(",")]


def _carve(n: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """Seeded disjoint train / val / test positions, 80 / 10 / 10 (val and test at least 1)."""
    if n < 3:
        raise ValueError(f"cannot carve train/val/test out of {n} images")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    k = max(1, n // 10)
    return perm[2 * k :], perm[:k], perm[k : 2 * k]


def _cap(split: StreamSplit, n: int | None, seed: int) -> StreamSplit:
    if not n or n >= len(split):
        return split
    return split.subset(torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:n])


def _assemble(name: str, classes, parts: dict[str, StreamSplit], seed: int, description: str,
              sizes: dict[str, int | None], val_fraction: float = VAL_FRACTION) -> Task:
    """train/val/test from the splits a source ships: carve what is missing, cap the sizes."""
    if "all" in parts:
        whole = parts.pop("all")
        tr, va, te = _carve(len(whole), seed)
        parts = {"train": whole.subset(tr), "val": whole.subset(va), "test": whole.subset(te)}
    for split, salt in (("test", 1), ("val", 0)):  # carved from train when the source lacks them
        if split not in parts:
            train = parts["train"]
            k = min(MAX_VAL, max(1, int(len(train) * val_fraction)))
            perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed + salt))
            parts[split], parts["train"] = train.subset(perm[:k]), train.subset(perm[k:])
    capped = {s: _cap(parts[s], sizes.get(f"n_{s}"), seed + i) for i, s in enumerate(("train", "val", "test"))}
    return Task(name, tuple(str(c) for c in classes), capped["train"], capped["val"], capped["test"], description, seed)


def from_image_folder(root: str | os.PathLike, transform: Callable | None = None, name: str | None = None,
                      seed: int = 0, num_workers: int = 0, img_size: int = 32, val_fraction: float = VAL_FRACTION,
                      **sizes: int | None) -> Task:
    """A streamed task from an ImageFolder tree.

    Layouts: ``root/{train,val,test}/<class>/<image>`` (``val``/``test`` optional: carved from
    train with ``seed`` when absent), or ``root/<class>/<image>`` (carved 80/10/10). Every split
    must have the same class folders (ImageFolder numbers classes by sorted folder name, so a
    missing class would relabel the others). ``transform`` defaults to a resize to ``img_size``
    standardised like the offline tasks ((v − 0.4) / 0.3); pass :func:`model_transform` for a
    pretrained model.
    """
    from torchvision import datasets

    root = Path(root)
    if not root.is_dir():
        raise DatasetNotFoundError(f"no ImageFolder at {root}: expected {root}/train/<class>/<image> "
                                   f"(and optionally val/, test/) or {root}/<class>/<image>")
    transform = transform or default_transform(img_size)
    present = [s for s in ("train", "val", "test") if (root / s).is_dir()]
    if present and "train" not in present:
        raise DatasetNotFoundError(f"{root} has {', '.join(present)}/ but no train/ folder")
    folders = {s: root / s for s in present} if present else {"all": root}
    parts, classes = {}, None
    for split, folder in folders.items():
        try:
            ds = datasets.ImageFolder(str(folder), transform=transform, loader=checked_loader)
        except FileNotFoundError as e:  # no class folders, or a class folder without images
            raise DatasetNotFoundError(f"{folder}: {e}") from None
        if classes is None:
            classes, first = ds.classes, split
        elif ds.classes != classes:
            only_a = sorted(set(classes) - set(ds.classes))
            only_b = sorted(set(ds.classes) - set(classes))
            raise ValueError(f"{root}: the {first} and {split} splits have different classes "
                             f"(only in {first}: {only_a or '-'}; only in {split}: {only_b or '-'})")
        parts[split] = StreamSplit(ds, torch.arange(len(ds)), num_workers, f"ImageFolder {folder}")
    return _assemble(name or root.name, classes, parts, seed, f"ImageFolder {root}", sizes, val_fraction)


def from_torchvision(name: str, root: str | os.PathLike, transform: Callable, seed: int = 0, num_workers: int = 0,
                     download: bool = False, **sizes: int | None) -> Task:
    """One of the paper's datasets through its ``torchvision.datasets`` class under ``root``.

    With ``download=False`` (the default) a dataset not on disk is a :class:`DatasetNotFoundError`
    naming the folder torchvision expects; with ``download=True`` torchvision fetches it.
    """
    import torchvision.datasets as tvd

    if name in FOLDER_ONLY:
        return from_image_folder(Path(root) / name, transform, name=name, seed=seed, num_workers=num_workers, **sizes)
    if name not in TORCHVISION:
        raise ValueError(f"{name!r} is not a torchvision dataset qgeom knows; known: {', '.join(TORCHVISION)}")
    cls_name, splits, extra, folder = TORCHVISION[name]
    cls = getattr(tvd, cls_name)
    can_download = cls_name not in NO_DOWNLOAD
    fetch = ("data_download=true (qgeom run) lets torchvision fetch it on a machine with network"
             if can_download else f"torchvision cannot download {cls_name}: fetch it by hand")
    parts, classes = {}, None
    for split, kwargs in splits.items():
        try:
            ds = cls(str(root), **kwargs, **extra, transform=transform, **({"download": download} if can_download else {}))
        except (RuntimeError, FileNotFoundError, OSError) as e:
            raise DatasetNotFoundError(
                f"{name}: torchvision.datasets.{cls_name} found no data under {root} (it reads {Path(root) / folder.split(',')[0]}"
                f"{' …' if ',' in folder else ''}; expected: {folder}). Put the dataset there or point data_root at the "
                f"folder that holds it; {fetch} ({e})") from None
        parts[split] = StreamSplit(ds, torch.arange(len(ds)), num_workers, f"torchvision {cls_name} {split}")
        classes = classes or getattr(ds, "classes", None)
    if classes is None:  # datasets without a class list (SVHN, PCAM): labels 0..K−1
        n = {"SVHN": 10, "PCAM": 2}.get(name)
        classes = [str(i) for i in range(n)] if n else None
        if classes is None:
            raise ValueError(f"{name}: cannot tell its classes")
    return _assemble(name, classes, parts, seed, f"torchvision {cls_name} under {root}", sizes)

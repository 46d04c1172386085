"""Facts about the paper qgeom reproduces ("Zero-Shot Quantization via Weight-Space Arithmetic",
arXiv 2604.03420), as plain data: nothing here imports torch, so the command line's help can
list what depends on them.
"""

from __future__ import annotations

#: The 22 real tasks of the paper, in its order.
REAL_TASKS = (
    "Cars", "DTD", "EuroSAT", "GTSRB", "MNIST", "RESISC45", "SUN397", "SVHN", "CIFAR10",
    "CIFAR100", "STL10", "Food101", "Flowers102", "FER2013", "PCAM", "OxfordIIITPet",
    "RenderedSST2", "EMNIST", "FashionMNIST", "KMNIST", "TinyImageNet", "ImageNet",
)  # fmt: skip

#: The published class count of each real task (EMNIST: its ``balanced`` split, the one qgeom
#: reads; Cars: Stanford Cars). A loaded task counts its own classes; this is for listing them.
REAL_CLASSES = {
    "Cars": 196, "DTD": 47, "EuroSAT": 10, "GTSRB": 43, "MNIST": 10, "RESISC45": 45, "SUN397": 397, "SVHN": 10,
    "CIFAR10": 10, "CIFAR100": 100, "STL10": 10, "Food101": 101, "Flowers102": 102, "FER2013": 7, "PCAM": 2,
    "OxfordIIITPet": 37, "RenderedSST2": 2, "EMNIST": 47, "FashionMNIST": 10, "KMNIST": 10, "TinyImageNet": 200,
    "ImageNet": 1000,
}  # fmt: skip

#: The validation grid the paper chooses λ from.
PAPER_LAMBDAS = (0.15, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5)

#: One run per ViT scale of the paper's code: run name → timm model.
PAPER_SCALES = {
    "paper-vit-b16": "vit_base_patch16_224.orig_in21k",
    "paper-vit-l16": "vit_large_patch16_224.orig_in21k",
    "paper-vit-h14": "vit_huge_patch14_224.orig_in21k",
}

#: Fine-tuning and QAT: AdamW lr 1e-5, weight decay 0.1, 500 warm-up steps then cosine, batch 128,
#: grad-norm clip 1.0. The paper gives no step count: 2 000 is qgeom's choice (the task-vector
#: literature's budget at batch 128).
PAPER_RECIPE = dict(steps=2000, batch_size=128, lr=1e-5, weight_decay=0.1, warmup_steps=500, clip_grad_norm=1.0)

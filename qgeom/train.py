"""Pretraining, fine-tuning, QAT and evaluation: seeded, deterministic on CPU, with progress.

The recipe is the paper's where it fits (AdamW, weight decay 0.1, linear warm-up then cosine
decay, gradient-norm clipping at 1.0), with steps and learning rate scaled to the micro preset:
the paper's lr 1e-5 × 500 warm-up steps suits a pretrained ViT-B over thousands of steps; a
0.47 M-parameter ViT trained for a few hundred steps needs ~1e-3.

Models are used as templates: every function takes a ``model`` (architecture) and a parameter
dict, trains a private copy, and returns a new dict; the caller's model and dict are never
mutated.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace

import torch
from torch import Tensor, nn
from torch.func import functional_call

from qgeom.activations import ActivationSpec, Range, quantized_inputs
from qgeom.data import AnySplit, ShuffledBatches, Task, batches as split_batches
from qgeom.models import default_device
from qgeom.params import Params, check_finite, from_model, is_head, load_into
from qgeom.progress import Progress
from qgeom.quant import QuantSpec, prepare_qat, ptq, strip_qat


@dataclass(frozen=True)
class TrainConfig:
    """One training stage's hyper-parameters (the paper's recipe, scaled to the micro preset)."""

    steps: int = 200
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 20
    clip_grad_norm: float = 1.0
    optimizer: str = "adamw"
    seed: int = 0

    def with_(self, **changes) -> "TrainConfig":
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)


def learning_rate(step: int, steps: int, lr: float, warmup_steps: int) -> float:
    """Linear warm-up over ``warmup_steps`` to ``lr``, then cosine decay to 0 at ``steps``."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    t = (step - warmup_steps) / max(1, steps - warmup_steps)
    return lr * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))


def make_optimizer(name: str, params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW (decoupled weight decay; the paper's) or plain SGD with weight decay."""
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; known: adamw, sgd")


def _stream(batches: Iterable[tuple[Tensor, Tensor]], steps: int) -> Iterator[tuple[Tensor, Tensor]]:
    """``steps`` batches: ``batches[i % len]`` for a sequence held in memory; otherwise the
    iterable is read in order and re-read from its start when it runs out."""
    if isinstance(batches, Sequence) and not isinstance(batches, ShuffledBatches):
        for i in range(steps):
            yield batches[i % len(batches)]
        return
    n = 0
    while n < steps:
        empty = True
        for b in batches:
            empty = False
            yield b
            n += 1
            if n == steps:
                return
        if empty:
            raise ValueError("no training batches")


def autocast(device: torch.device):
    """bf16 autocast on CUDA (training and evaluation); a no-op on the CPU. Curvature never uses it."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


def fit(
    model: nn.Module,
    params: Mapping[str, Tensor],
    batches: Iterable[tuple[Tensor, Tensor]],
    steps: int | None = None,
    *,
    lr: float = 1e-3,
    weight_decay: float = 0.1,
    warmup_steps: int = 0,
    clip_grad_norm: float | None = 1.0,
    qat_spec: QuantSpec | None = None,
    act_inputs: tuple[Mapping[str, Range], ActivationSpec] | None = None,
    seed: int = 0,
    optimizer: str = "adamw",
    progress: bool = False,
    desc: str = "fit",
    device: torch.device | str | None = None,
    log: Callable[[dict], None] | None = None,
    log_every: int = 10,
    val: AnySplit | None = None,
    val_every: int = 0,
) -> Params:
    """Train a copy of ``model`` from ``params`` on ``batches``; return the trained dict.

    Step i uses ``batches[i % len(batches)]`` (an iterable is read in order and restarted) and
    the mean cross-entropy. ``log`` receives ``{step, loss, lr}`` every ``log_every`` steps and
    ``{step, val_top1}`` every ``val_every`` steps (and at the end) when ``val`` is given — for
    QAT that is the accuracy of the fake-quantized network, i.e. after PTQ. With ``qat_spec``
    every Linear but the head is fake-quantized with an STE (QAT); with ``act_inputs`` (calibrated
    ranges and an :class:`~qgeom.activations.ActivationSpec`) their inputs too (W+A QAT, ranges
    fixed); the returned keys are the FP model's either way. Deterministic on CPU for a given seed and batch sequence. Runs on
    ``device`` (default: :func:`qgeom.models.default_device`), under bf16 autocast on CUDA; the
    result is on the CPU.
    """
    check_finite(params, "initial weights")
    steps = len(batches) if steps is None else steps
    torch.manual_seed(seed)
    device = torch.device(device) if device is not None else default_device()
    net = load_into(copy.deepcopy(model), params).to(device)
    if qat_spec is not None:
        prepare_qat(net, qat_spec)
    net.train()
    opt = make_optimizer(optimizer, [p for p in net.parameters() if p.requires_grad], lr, weight_decay)
    bar = Progress(_stream(batches, steps), total=steps, desc=desc, unit="steps", enabled=progress, leave=False)
    for step, (x, y) in enumerate(bar):
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, steps, lr, warmup_steps)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast(device), (quantized_inputs(net, *act_inputs) if act_inputs else contextlib.nullcontext()):
            loss = nn.functional.cross_entropy(net(x).float(), y)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{desc}: loss became {loss.item()} at step {step}; lower the learning rate")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip_grad_norm is not None:
            nn.utils.clip_grad_norm_(net.parameters(), clip_grad_norm)
        opt.step()
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if log is not None and (step % log_every == 0 or step == steps - 1):
            log({"step": step, "loss": loss.item(), "lr": opt.param_groups[0]["lr"]})
        if log is not None and val is not None and val_every > 0 and ((step + 1) % val_every == 0 or step == steps - 1):
            log({"step": step, "val_top1": _module_accuracy(net, val, device)})
            net.train()
    strip_qat(net)
    return {k: v.cpu() for k, v in from_model(net.eval()).items() if k in params}


@torch.inference_mode()
def _module_accuracy(net: nn.Module, split: AnySplit, device: torch.device, batch_size: int = 256) -> float:
    """Top-1 of a module as it is (QAT wrappers included) on ``split``, in eval mode."""
    net.eval()
    correct = total = 0
    for x, y in split_batches(split, batch_size):
        with autocast(device):
            correct += int((net(x.to(device)).argmax(-1).cpu() == y).sum())
        total += len(y)
    return correct / max(total, 1)


def fit_task(model: nn.Module, params: Mapping[str, Tensor], split: AnySplit, cfg: TrainConfig, *,
             qat_spec: QuantSpec | None = None, act_inputs: tuple | None = None, progress: bool = False,
             desc: str = "fit", log: Callable[[dict], None] | None = None, val: AnySplit | None = None,
             val_every: int = 0) -> Params:
    """:func:`fit` on seeded shuffled batches of ``split`` with the hyper-parameters of ``cfg``."""
    data = ShuffledBatches(split, cfg.batch_size, cfg.steps, seed=cfg.seed)
    return fit(model, params, data, cfg.steps, lr=cfg.lr, weight_decay=cfg.weight_decay,
               warmup_steps=cfg.warmup_steps, clip_grad_norm=cfg.clip_grad_norm, qat_spec=qat_spec, act_inputs=act_inputs,
               seed=cfg.seed, optimizer=cfg.optimizer, progress=progress, desc=desc, log=log, val=val,
               val_every=val_every)


def with_fresh_head(model: nn.Module, backbone: Mapping[str, Tensor], seed: int = 0) -> Params:
    """``model``'s parameters with the backbone taken from ``backbone`` and a new head.

    The head (sized for ``model``'s classes) is re-initialised from ``seed``: zero bias, weights
    N(0, 0.02²) as timm initialises ViT heads; every other tensor comes from ``backbone``.
    """
    out = from_model(model)
    missing = [k for k in out if not is_head(k) and k not in backbone]
    if missing:
        raise KeyError(f"backbone lacks {', '.join(missing[:5])}")
    g = torch.Generator().manual_seed(seed)
    for k in out:
        if is_head(k):
            out[k] = torch.randn(out[k].shape, generator=g) * 0.02 if k.endswith("weight") else torch.zeros_like(out[k])
        else:
            out[k] = backbone[k].clone()
    return out


@torch.inference_mode()
def logits(model: nn.Module, params: Mapping[str, Tensor], x: Tensor, batch_size: int = 1000) -> Tensor:
    """f(θ, x) for a parameter dict, without touching the model's own weights.

    Computed on the device of :func:`qgeom.models.default_device`; returned on the CPU.
    """
    device = default_device()
    model.eval().to(device)
    theta = {k: v.to(device) for k, v in params.items()}
    with autocast(device):
        outs = [functional_call(model, theta, (x[i : i + batch_size].to(device),)).float().cpu()
                for i in range(0, len(x), batch_size)]
    return torch.cat(outs)


def _over_split(model: nn.Module, theta: Mapping[str, Tensor], split: AnySplit, batch_size: int):
    """(logits, labels) batch by batch over ``split`` (streamed splits are never held whole)."""
    for x, y in split_batches(split, batch_size):
        yield logits(model, theta, x, batch_size), y


def accuracy(model: nn.Module, params: Mapping[str, Tensor], split: AnySplit, spec: QuantSpec | None = None,
             batch_size: int = 1000) -> float:
    """Top-1 accuracy of θ on ``split``; with ``spec``, of the post-PTQ weights Q_b(θ)."""
    theta = ptq(params, spec) if spec is not None else params
    correct = total = 0
    for out, y in _over_split(model, theta, split, batch_size):
        correct += int((out.argmax(-1) == y).sum())
        total += len(y)
    return correct / total if total else float("nan")


def loss(model: nn.Module, params: Mapping[str, Tensor], split: AnySplit, spec: QuantSpec | None = None,
         batch_size: int = 1000) -> float:
    """Mean cross-entropy of θ (or of Q_b(θ) with ``spec``) on ``split``."""
    theta = ptq(params, spec) if spec is not None else params
    total, n = 0.0, 0
    for out, y in _over_split(model, theta, split, batch_size):
        total += float(nn.functional.cross_entropy(out.double(), y, reduction="sum"))
        n += len(y)
    return total / n if n else float("nan")


def pretrain(model: nn.Module, task: Task, cfg: TrainConfig, progress: bool = False, **curves) -> Params:
    """θ_0: train ``model`` (sized for ``task``'s joint label space) from its random init.

    ``curves``: ``log``, ``val_every`` of :func:`fit` (``val`` is the task's validation split)."""
    return fit_task(model, from_model(model), task.train, cfg, progress=progress, desc="pretrain",
                    val=task.val, **curves)


def finetune(model: nn.Module, theta0: Mapping[str, Tensor], task: Task, cfg: TrainConfig,
             progress: bool = False, **curves) -> Params:
    """θ_t: fine-tune θ_0's backbone with a fresh head for ``task`` (``model`` sized for it)."""
    start = with_fresh_head(model, theta0, seed=cfg.seed)
    return fit_task(model, start, task.train, cfg, progress=progress, desc=f"finetune {task.name}",
                    val=task.val, **curves)


def qat(model: nn.Module, theta_t: Mapping[str, Tensor], task: Task, spec: QuantSpec, cfg: TrainConfig,
        progress: bool = False, act_inputs: tuple | None = None, **curves) -> Params:
    """θ_t,QAT: quantization-aware training from θ_t with fake-quantized Linear weights (STE), and
    with ``act_inputs`` (:func:`fit`) fake-quantized Linear inputs too."""
    return fit_task(model, theta_t, task.train, cfg, qat_spec=spec, act_inputs=act_inputs, progress=progress,
                    desc=f"QAT {task.name} {spec.bits}b", val=task.val, **curves)

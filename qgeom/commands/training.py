"""``qgeom pretrain``, ``finetune`` and ``qat``: the training stages one at a time, checkpoints in and out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from qgeom.commands import check_finite_option, check_not_input, check_writable, clean_errors, inputs
from qgeom.commands import options as O
from qgeom.commands.output import Output

BITS_HELP = "weight bit width, 2–8 (per-row symmetric RTN, the paper's quantizer)"


def _start(out: Path, lr: float, device: str, threads: int, quiet: bool, inputs_: dict[str, Path] | None = None) -> Output:
    """What every training command checks before any work: the output is writable (and is none of
    its inputs), the learning rate is a finite number > 0; then the runtime, and the output."""
    check_writable(out)
    if inputs_:
        check_not_input(out, inputs_)
    check_finite_option(lr, "--lr", positive=True)
    O.apply_runtime(device, threads)
    return Output(quiet=quiet)


@clean_errors
def pretrain(
    out: Path = O.out_file("where to write θ_0 (.safetensors)"),
    preset: Optional[str] = O.model("architecture: a preset (micro, the default, tiny, small, base, large) or "
                                    "timm:NAME"),
    tasks: str = typer.Option("shape,stripes,count,hue,texture,position,size,mirror",
                              help="comma-separated tasks of the pretext mixture (joint label space)"),
    steps: int = typer.Option(500, min=1, help="optimizer steps"),
    lr: float = typer.Option(2e-3, help="peak learning rate"),
    batch_size: int = typer.Option(128, min=1),
    n_per_task: int = typer.Option(3000, min=1, help="training images per task in the mixture"),
    seed: int = O.seed("seed of the weights, the images and the data order"),
    model_overrides: str = typer.Option("{}", help='timm keyword overrides as JSON, e.g. \'{"depth": 2}\'; '
                                                   "recorded in every later checkpoint's metadata"),
    device: str = O.device(), threads: int = O.threads(), quiet: bool = O.quiet(),
) -> None:
    """Pretrain θ_0 on a pretext mixture of the offline tasks."""
    log = _start(out, lr, device, threads, quiet)
    preset = preset or "micro"
    from qgeom.data import pretext_task  # lazy: torch-free --help
    from qgeom.models import create_model  # lazy: torch-free --help
    from qgeom.train import TrainConfig, accuracy, pretrain as run  # lazy: torch-free --help

    try:
        overrides = json.loads(model_overrides)
    except json.JSONDecodeError as e:
        raise typer.BadParameter(f"not JSON: {e}", param_hint="--model-overrides") from e
    if not isinstance(overrides, dict):
        raise typer.BadParameter("must be a JSON object", param_hint="--model-overrides")
    names = [t for t in tasks.split(",") if t]
    task = pretext_task(names, seed=seed, n_per_task=n_per_task)
    model = create_model(preset, task.num_classes, seed=seed, **overrides)
    cfg = TrainConfig(steps=steps, lr=lr, batch_size=batch_size, warmup_steps=max(1, steps // 15), seed=seed)
    theta0 = run(model, task, cfg, progress=not quiet)
    log.result(f"pretext validation Top-1: {inputs.pct(accuracy(model, theta0, task.val))} %")
    inputs.save(out, theta0, {}, log, preset=preset, num_classes=task.num_classes, task=task.name, stage="pretrain",
          config=cfg.to_dict(), model_overrides=overrides, data_seed=seed, data_sizes={"n_per_task": n_per_task})


@clean_errors
def finetune(
    pretrained: Path = typer.Option(..., help="θ_0 checkpoint: qgeom's, or a timm-format file with --model"),
    task: Optional[str] = O.data("task to fine-tune on (required: θ_0 records only its pretext mixture): an "
                                 "offline name (qgeom tasks), imagefolder:NAME=DIR, or a real dataset name under "
                                 "--data-root"),
    out: Path = O.out_file("where to write θ_t (.safetensors)"),
    model: Optional[str] = O.model(),
    data_root: Optional[str] = O.data_root(),
    steps: int = typer.Option(150, min=1),
    lr: float = typer.Option(1e-3),
    batch_size: int = typer.Option(128, min=1),
    seed: int = O.seed("seed of the head initialisation and the data order"),
    data_seed: Optional[int] = O.data_seed("seed of the task's generated images (default 0: θ_0 records "
                                           "only its pretext mixture's)"),
    device: str = O.device(), threads: int = O.threads(), quiet: bool = O.quiet(),
) -> None:
    """Fine-tune θ_0 on one task with a fresh head: θ_t."""
    log = _start(out, lr, device, threads, quiet, {"--pretrained": pretrained})
    data_seed = 0 if data_seed is None else data_seed
    if not task:
        raise typer.BadParameter("name the task to fine-tune on (θ_0 records only its pretext mixture)",
                                 param_hint="--data")
    from qgeom.data import check_task  # lazy: torch-free --help
    from qgeom.train import TrainConfig, accuracy, finetune as run  # lazy: torch-free --help

    theta0, meta = inputs.read_checkpoint(pretrained)
    arch = model or meta.get("preset")
    template = inputs.build_model(pretrained, theta0, meta, model, num_classes=1)
    t = check_task(inputs.task_for(task, data_seed, template, data_root), images=True)  # before training
    net = inputs.build_model(pretrained, theta0, meta, model, t.num_classes)
    cfg = TrainConfig(steps=steps, lr=lr, batch_size=batch_size, warmup_steps=max(1, steps // 10), seed=seed)
    theta = run(net, theta0, t, cfg, progress=not quiet)
    log.result(f"{t.name} test Top-1: {inputs.pct(accuracy(net, theta, t.test))} %")
    inputs.save(out, theta, {k: v for k, v in meta.items() if k not in ("preset", "model_overrides")}, log,
          **inputs.arch_meta(net, arch, meta), task=task, stage="finetune", parent=str(pretrained), config=cfg.to_dict(),
          data_seed=data_seed, data_root=data_root or "", data_sizes={})  # θ_0's pretext sizes do not apply


@clean_errors
def qat(
    finetuned: Path = typer.Option(..., help="θ_t checkpoint"),
    out: Path = O.out_file("where to write θ_t,QAT (.safetensors)"),
    bits: Optional[str] = O.bits(BITS_HELP + "; one width (default: the checkpoint's, else 2)"),
    model: Optional[str] = O.model(),
    data: Optional[str] = O.data(),
    data_root: Optional[str] = O.data_root(),
    steps: int = typer.Option(100, min=1),
    lr: float = typer.Option(5e-4),
    batch_size: int = typer.Option(128, min=1),
    seed: int = O.seed("seed of the data order"),
    device: str = O.device(), threads: int = O.threads(), quiet: bool = O.quiet(),
) -> None:
    """Quantization-aware training (STE) from θ_t on its own task: θ_t,QAT."""
    log = _start(out, lr, device, threads, quiet, {"--finetuned": finetuned})
    from qgeom.quant import QuantSpec  # lazy: torch-free --help
    from qgeom.data import check_task  # lazy: torch-free --help
    from qgeom.train import TrainConfig, accuracy, qat as run  # lazy: torch-free --help

    theta, meta = inputs.read_checkpoint(finetuned)
    inputs.refuse_vector(finetuned, meta)
    bits = O.one_bit_width(bits, O.recorded_bits(meta) or 2, command="qat")
    spec = QuantSpec(bits)
    net = inputs.build_model(finetuned, theta, meta, model)
    data = inputs.task_spec(data, meta, finetuned)
    data_seed, sizes = inputs.data_provenance(meta)
    t = inputs.task_for(data, data_seed, net, data_root or meta.get("data_root") or None, **sizes)
    inputs.check_fit(finetuned, meta, net.num_classes, check_task(t, images=True))  # before training
    cfg = TrainConfig(steps=steps, lr=lr, batch_size=batch_size, warmup_steps=max(1, steps // 10), seed=seed)
    theta_q = run(net, theta, t, spec, cfg, progress=not quiet)
    log.result(f"{t.name} test Top-1 after {bits}-bit PTQ: {inputs.pct(accuracy(net, theta_q, t.test, spec))} %")
    inputs.save(out, theta_q, meta, log, **inputs.arch_meta(net, model or meta.get("preset"), meta), task=data, stage="qat",
          parent=str(finetuned), bits=bits, config=cfg.to_dict())



def register(app: typer.Typer) -> None:
    app.command("pretrain")(pretrain)
    app.command("finetune")(finetune)
    app.command("qat")(qat)

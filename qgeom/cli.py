"""The ``qgeom`` command line: one command per pipeline stage, ``--help`` on each.

Checkpoints are safetensors files whose metadata records how to rebuild the model
(``preset``, ``num_classes``, ``task``) and where they came from (``stage``, inputs, config),
so every command after ``pretrain`` needs only file names.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from qgeom import params as P
from qgeom.commands import clean_errors
from qgeom.commands.threads import with_threads
from qgeom.commands.inputs import DATA_HELP, DATA_ROOT_HELP, MODEL_HELP, build_model, load_data, read_checkpoint, task_spec

app = typer.Typer(help="qgeom: quantization vectors of Vision Transformers — transfer, curvature, symmetries.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
console = Console()

BITS_HELP = "weight bit width, 2–8 (per-row symmetric RTN, the paper's quantizer)"
BITS_RANGE = dict(min=2, max=8)  # checked by click before any work: "Invalid value for '--bits'"


def _load(path: Path) -> tuple[P.Params, dict]:
    params, meta = P.load_params(path)
    return params, meta


def _save(path: Path, params: P.Params, meta: dict, **extra) -> None:
    meta = {k: v for k, v in meta.items() if k not in ("content_hash", "qgeom_version")}
    meta.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in extra.items()})
    P.save_params(path, params, meta)
    console.print(f"wrote [bold]{path}[/] ({P.numel(params):,} values)")


def _task(spec: str, seed: int, model=None, data_root: str | None = None):
    """The task a specification names (kept a function so tests can shrink the data)."""
    return load_data(spec, seed, model, data_root)


def _arch_meta(net, arch: str, meta: dict) -> dict:
    """Metadata that rebuilds ``net``: architecture, overrides, classes."""
    overrides = json.loads(meta.get("model_overrides", "{}")) if arch == meta.get("preset") else {}
    return dict(preset=arch, model_overrides=overrides, num_classes=int(net.num_classes))


@app.command()
@clean_errors
@with_threads
def pretrain(
    out: Path = typer.Option(..., help="where to write θ_0 (.safetensors)"),
    preset: str = typer.Option("micro", help="model preset: micro, tiny, small, base, large"),
    tasks: str = typer.Option("shape,stripes,count,hue,texture,position,size,mirror",
                              help="comma-separated tasks of the pretext mixture (joint label space)"),
    steps: int = typer.Option(500, help="optimizer steps"),
    lr: float = typer.Option(2e-3, help="peak learning rate"),
    batch_size: int = typer.Option(128),
    n_per_task: int = typer.Option(3000, help="training images per task in the mixture"),
    seed: int = typer.Option(0),
    model_overrides: str = typer.Option("{}", help='timm keyword overrides as JSON, e.g. \'{"depth": 2}\'; '
                                                   "recorded in every later checkpoint's metadata"),
) -> None:
    """Pretrain θ_0 on a pretext mixture of the offline tasks."""
    from qgeom.data import pretext_task
    from qgeom.models import create_model
    from qgeom.train import TrainConfig, accuracy, pretrain as run

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
    theta0 = run(model, task, cfg, progress=True)
    console.print(f"pretext validation Top-1: {accuracy(model, theta0, task.val):.3f}")
    _save(out, theta0, {}, preset=preset, num_classes=task.num_classes, task=task.name, stage="pretrain",
          config=cfg.to_dict(), model_overrides=overrides)


@app.command()
@clean_errors
@with_threads
def finetune(
    pretrained: Path = typer.Option(..., help="θ_0 checkpoint: qgeom's, or a timm-format file with --model"),
    task: str = typer.Option(..., "--task", "--data", help="task: an offline name (qgeom tasks), imagefolder:NAME=DIR, "
                                                           "or a real dataset name under --data-root"),
    out: Path = typer.Option(..., help="where to write θ_t"),
    model: Optional[str] = typer.Option(None, help=MODEL_HELP),
    data_root: Optional[str] = typer.Option(None, help=DATA_ROOT_HELP),
    steps: int = typer.Option(150),
    lr: float = typer.Option(1e-3),
    batch_size: int = typer.Option(128),
    seed: int = typer.Option(0, help="seed of the head initialisation and the data order"),
    data_seed: int = typer.Option(0, help="seed of the task's generated images"),
) -> None:
    """Fine-tune θ_0 on one task with a fresh head: θ_t."""
    from qgeom.train import TrainConfig, accuracy, finetune as run

    theta0, meta = read_checkpoint(pretrained)
    arch = model or meta.get("preset")
    template = build_model(pretrained, theta0, meta, model, num_classes=1)
    t = _task(task, data_seed, template, data_root)
    net = build_model(pretrained, theta0, meta, model, t.num_classes)
    cfg = TrainConfig(steps=steps, lr=lr, batch_size=batch_size, warmup_steps=max(1, steps // 10), seed=seed)
    theta = run(net, theta0, t, cfg, progress=True)
    console.print(f"{t.name} test Top-1: {accuracy(net, theta, t.test):.3f}")
    _save(out, theta, {k: v for k, v in meta.items() if k not in ("preset", "model_overrides")},
          **_arch_meta(net, arch, meta), task=task, stage="finetune", parent=str(pretrained), config=cfg.to_dict(),
          data_seed=data_seed, data_root=data_root or "")


@app.command()
@clean_errors
@with_threads
def qat(
    finetuned: Path = typer.Option(..., help="θ_t checkpoint"),
    out: Path = typer.Option(..., help="where to write θ_t,QAT"),
    bits: int = typer.Option(2, help=BITS_HELP, **BITS_RANGE),
    model: Optional[str] = typer.Option(None, help=MODEL_HELP),
    data: Optional[str] = typer.Option(None, help=DATA_HELP),
    data_root: Optional[str] = typer.Option(None, help=DATA_ROOT_HELP),
    steps: int = typer.Option(100),
    lr: float = typer.Option(5e-4),
    batch_size: int = typer.Option(128),
    seed: int = typer.Option(0),
) -> None:
    """Quantization-aware training (STE) from θ_t on its own task: θ_t,QAT."""
    from qgeom.quant import QuantSpec
    from qgeom.train import TrainConfig, accuracy, qat as run

    theta, meta = read_checkpoint(finetuned)
    spec = QuantSpec(bits)
    net = build_model(finetuned, theta, meta, model)
    data = task_spec(data, meta, finetuned)
    t = _task(data, int(meta.get("data_seed", "0")), net, data_root or meta.get("data_root") or None)
    cfg = TrainConfig(steps=steps, lr=lr, batch_size=batch_size, warmup_steps=max(1, steps // 10), seed=seed)
    theta_q = run(net, theta, t, spec, cfg, progress=True)
    console.print(f"{t.name} test Top-1 after {bits}-bit PTQ: {accuracy(net, theta_q, t.test, spec):.3f}")
    _save(out, theta_q, meta, **_arch_meta(net, model or meta.get("preset"), meta), task=data, stage="qat",
          parent=str(finetuned), bits=bits, config=cfg.to_dict())


@app.command()
@clean_errors
@with_threads
def extract(
    qat_checkpoint: Path = typer.Option(..., "--qat", help="θ_t,QAT checkpoint"),
    finetuned: Path = typer.Option(..., help="θ_t checkpoint"),
    out: Path = typer.Option(..., help="where to write ρ_t"),
    scope: str = typer.Option("backbone", help="backbone (the paper's), quantized, or all"),
) -> None:
    """Extract the quantization vector ρ_t = θ_t,QAT − θ_t on a scope."""
    q, meta = _load(qat_checkpoint)
    theta, _ = _load(finetuned)
    rho = P.quantization_vector(q, theta, scope)
    console.print(f"‖ρ‖ = {P.norm(rho):.4g} over {len(rho)} tensors")
    _save(out, rho, meta, stage="quantization_vector", scope=scope, parent=str(qat_checkpoint))


@app.command()
@clean_errors
@with_threads
def patch(
    receiver: Path = typer.Option(..., help="receiver θ_R checkpoint"),
    vector: Path = typer.Option(..., help="vector ρ_D (.safetensors)"),
    out: Path = typer.Option(..., help="where to write θ_R + λ ρ_D"),
    lam: float = typer.Option(1.0, "--lam", help="scale λ"),
) -> None:
    """Patch a receiver: θ_R(λ) = θ_R + λ ρ_D (the receiver keeps its head)."""
    theta, meta = _load(receiver)
    rho, rmeta = _load(vector)
    patched = P.patch(theta, rho, lam)
    _save(out, patched, meta, stage="patch", parent=str(receiver), vector=str(vector), lam=lam)


@app.command()
@clean_errors
@with_threads
def ptq(
    weights: Path = typer.Option(..., help="checkpoint to quantize"),
    out: Path = typer.Option(..., help="where to write Q_b(θ)"),
    bits: int = typer.Option(2, help=BITS_HELP, **BITS_RANGE),
    granularity: str = typer.Option("row", help="row (default), tensor or group"),
) -> None:
    """Post-training quantization of every Linear weight but the head; prints per-layer errors."""
    from qgeom.quant import QuantSpec, ptq as run, quantization_error

    theta, meta = _load(weights)
    spec = QuantSpec(bits, granularity=granularity)
    table = Table("tensor", "rel. error", "levels/row")
    for row in quantization_error(theta, spec):
        table.add_row(row["name"], f"{row['rel_error']:.3f}", f"{row['levels_used']:.1f}")
    console.print(table)
    _save(out, run(theta, spec), meta, stage="ptq", parent=str(weights), bits=bits, granularity=granularity)


@app.command()
@clean_errors
@with_threads
def evaluate(
    weights: list[Path] = typer.Argument(..., help="checkpoints to evaluate"),
    bits: Optional[list[int]] = typer.Option(None, help="also evaluate after PTQ at these bit widths (2–8)",
                                             **BITS_RANGE),
    split: str = typer.Option("test", help="train, val or test"),
    model: Optional[str] = typer.Option(None, help=MODEL_HELP),
    data: Optional[str] = typer.Option(None, help=DATA_HELP),
    data_root: Optional[str] = typer.Option(None, help=DATA_ROOT_HELP),
) -> None:
    """Top-1 of checkpoints on their own task (or --data), FP and after PTQ."""
    from qgeom.quant import QuantSpec
    from qgeom.train import accuracy

    if split not in ("train", "val", "test"):
        raise typer.BadParameter(f"split must be train, val or test, got {split!r}", param_hint="--split")
    bits = bits or []
    table = Table("checkpoint", "task", "FP", *[f"PTQ {b}b" for b in bits])
    for path in weights:
        theta, meta = read_checkpoint(path)
        net = build_model(path, theta, meta, model)
        t = _task(task_spec(data, meta, path), int(meta.get("data_seed", "0")), net,
                  data_root or meta.get("data_root") or None)
        if t.num_classes != net.num_classes:
            raise ValueError(f"{path} has a {net.num_classes}-class head but task {t.name} has {t.num_classes} classes")
        split_data = getattr(t, split)
        accs = [accuracy(net, theta, split_data)] + [accuracy(net, theta, split_data, QuantSpec(b)) for b in bits]
        table.add_row(str(path), t.name, *[f"{a:.3f}" for a in accs])
    console.print(table)


@app.command("align-demo")
@with_threads
def align_demo(
    run_dir: Path = typer.Argument(..., help="a transfer run directory (e.g. runs/demo)"),
    donor: str = typer.Option("shape", help="donor task"),
    receiver: str = typer.Option("count", help="receiver task"),
    bits: int = typer.Option(2, help=BITS_HELP),
    seed: int = typer.Option(0, help="run seed (and seed of the hidden permutation)"),
    lam: float = typer.Option(1.0, "--lam", help="scale λ"),
) -> None:
    """Transfer ρ_D into a receiver hidden behind a random head/MLP/residual permutation,
    with and without weight-matching alignment (FP and post-PTQ Top-1 on the receiver's test split)."""
    from qgeom.alignment import alignment_demo
    from qgeom.data import batches
    from qgeom.quant import QuantSpec
    from qgeom.transfer import TransferRun
    from qgeom.config import RunConfig, from_dict

    cfg = from_dict(json.loads((run_dir / "config.json").read_text()), RunConfig())
    run = TransferRun(cfg, run_dir, progress=False)
    out = alignment_demo(run.model(receiver), run.finetuned(seed, donor), run.qat(seed, bits, donor),
                         run.finetuned(seed, receiver), list(batches(run.tasks[receiver].test, 500)),
                         spec=QuantSpec(bits), lam=lam, seed=seed)
    table = Table("variant", "FP Top-1", f"PTQ {bits}b Top-1", "PTQ loss")
    for r in out["table"].itertuples():
        table.add_row(r.variant, f"{100 * r.fp_acc:.1f}", f"{100 * r.ptq_acc:.1f}", f"{r.ptq_loss:.3f}")
    console.print(table)
    console.print(f"permutation recovered exactly: {out['recovered']}; "
                  f"‖aligned − g(same-basis patch)‖ / ‖·‖ = {out['identity_error']:.2e}")


@app.command()
def tasks() -> None:
    """List the offline tasks and the known real tasks."""
    from qgeom.data import REAL_TASKS, TASKS

    table = Table("task", "classes", "what it asks")
    for name, spec in TASKS.items():
        table.add_row(name, str(len(spec.classes)), spec.description)
    console.print(table)
    console.print("real tasks (ImageFolder on disk): " + ", ".join(REAL_TASKS))


# Commands defined in their own modules (one concept per module), registered here.
for _name in ("curvature_cli", "invariance_cli", "transfer_cli", "figures_cli"):
    if (Path(__file__).parent / "commands" / f"{_name}.py").exists():
        importlib.import_module(f"qgeom.commands.{_name}").register(app)


if __name__ == "__main__":  # pragma: no cover
    app()

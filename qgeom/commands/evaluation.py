"""``qgeom evaluate``, ``align-demo`` and ``tasks``: accuracy of checkpoints, weight matching on a run, the task list."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from qgeom.commands import check_finite_option, clean_errors, inputs
from qgeom.commands import options as O
from qgeom.commands.output import Output
from qgeom.progress import progress

BITS_HELP = "weight bit width, 2–8 (per-row symmetric RTN, the paper's quantizer)"


@clean_errors
def evaluate(
    weights: list[Path] = typer.Argument(..., help="checkpoints to evaluate"),
    bits: Optional[str] = O.bits("also evaluate after PTQ at these bit widths, comma-separated, each 2–8 "
                                 "(default: FP only)"),
    split: str = typer.Option("test", help="train, val or test"),
    model: Optional[str] = O.model(),
    data: Optional[str] = O.data(),
    data_root: Optional[str] = O.data_root(),
    device: str = O.device(), threads: int = O.threads(), quiet: bool = O.quiet(), format: str = O.format(),
) -> None:
    """Top-1 (%) of checkpoints on their own task (or --data), FP and after PTQ.

    csv/json: one record per checkpoint and precision (``precision`` fp or ptq, ``bits`` null
    for fp), ``top1`` in percent at full precision."""
    if split not in ("train", "val", "test"):
        raise typer.BadParameter(f"split must be train, val or test, got {split!r}", param_hint="--split")
    O.apply_runtime(device, threads)
    from qgeom.quant import QuantSpec  # lazy: torch-free --help
    from qgeom.train import accuracy  # lazy: torch-free --help

    log = Output(format, quiet)
    bits = list(bits or [])
    table = Table("checkpoint", "task", "FP", *[f"PTQ {b}b" for b in bits], caption=f"Top-1 % on {split}")
    records = []
    with progress(total=len(weights) * (1 + len(bits)), desc="evaluate", unit="evaluations", enabled=not quiet) as bar:
        for path in weights:
            theta, meta = inputs.read_checkpoint(path)
            inputs.refuse_vector(path, meta)
            net = inputs.build_model(path, theta, meta, model)
            data_seed, sizes = inputs.data_provenance(meta)
            t = inputs.task_for(inputs.task_spec(data, meta, path), data_seed, net,
                                data_root or meta.get("data_root") or None, **sizes)
            inputs.check_fit(path, meta, net.num_classes, t)
            split_data = getattr(t, split)
            accs = []
            for b in [None, *bits]:
                bar.step(f"{path.name}, {'FP' if b is None else f'PTQ {b} bits'}")
                accs.append(accuracy(net, theta, split_data, None if b is None else QuantSpec(b)))
                bar.update()
                records.append({"checkpoint": str(path), "task": t.name, "split": split, "n_images": len(split_data),
                                "precision": "fp" if b is None else "ptq", "bits": b, "top1": 100 * accs[-1]})
            table.add_row(str(path), t.name, *[inputs.pct(a) for a in accs])
    log.table("accuracy", table, records=records)
    log.close()


@clean_errors
def align_demo(
    run_dir: Path = typer.Argument(..., help="a transfer run directory (e.g. runs/demo)"),
    donor: str = typer.Option("shape", "--donor-task", help="donor task (its ρ is transferred)"),
    receiver: str = typer.Option("count", "--receiver-task", help="receiver task (hidden behind the permutation)"),
    bits: Optional[str] = O.bits(BITS_HELP + "; one width of the run (default 2)"),
    seed: int = O.seed("run seed (and seed of the hidden permutation)"),
    lam: float = typer.Option(1.0, "--lam", help="scale λ"),
    device: str = O.device(), threads: int = O.threads(), quiet: bool = O.quiet(), format: str = O.format(),
) -> None:
    """Transfer ρ_D into a receiver hidden behind a random head/MLP/residual permutation,
    with and without weight-matching alignment (FP and post-PTQ Top-1 on the receiver's test split).

    Read-only: it uses the run's checkpoints and never trains or writes into the run; a stage the
    run lacks (e.g. another bit width) is an error that says how to make it."""
    from qgeom.symmetry.weight_matching import matching_demo  # lazy: torch-free --help
    from qgeom.data import batches  # lazy: torch-free --help
    from qgeom.experiment.artifacts import RunArtifacts  # lazy: torch-free --help
    from qgeom.quant import QuantSpec  # lazy: torch-free --help

    check_finite_option(lam, "--lam")
    bits = O.one_bit_width(bits, 2, command="align-demo")
    O.apply_runtime(device, threads)
    log = Output(format, quiet)
    art = RunArtifacts(run_dir)
    art.require(seed=seed, bits=bits, tasks=(donor, receiver))
    theta_r = art.finetuned(seed, receiver)
    out = matching_demo(art.model(theta_r), art.finetuned(seed, donor), art.qat(seed, bits, donor), theta_r,
                        list(batches(art.task(receiver).test, 500)), spec=QuantSpec(bits), lam=lam, seed=seed)
    table = Table("variant", "FP Top-1", f"PTQ {bits}b Top-1", "PTQ loss")
    records = []
    for r in out["table"].itertuples():
        table.add_row(r.variant, f"{100 * r.fp_acc:.1f}", f"{100 * r.ptq_acc:.1f}", f"{r.ptq_loss:.3f}")
        records.append({"variant": r.variant, "bits": bits, "fp_top1": 100 * float(r.fp_acc),
                        "ptq_top1": 100 * float(r.ptq_acc), "ptq_loss": float(r.ptq_loss),
                        "permutation_recovered": bool(out["recovered"]), "identity_error": float(out["identity_error"])})
    log.table("alignment", table, records=records)
    log.result(f"permutation recovered exactly: {out['recovered']}; "
               f"‖aligned − g(same-basis patch)‖ / ‖·‖ = {out['identity_error']:.2e}")
    log.close()


@clean_errors
def tasks(format: str = O.format()) -> None:
    """List every task: the offline ones (generated) and the paper's real datasets (on disk).

    csv/json: one record per task, ``task``, ``kind`` (offline or real), ``classes`` (an
    integer), ``source`` (where its images come from) and ``description``."""
    from qgeom.data.offline import TASKS  # lazy: torch-free --help
    from qgeom.data.real import FOLDER_ONLY, TORCHVISION  # lazy: torch-free --help
    from qgeom.paper import REAL_CLASSES, REAL_TASKS  # lazy: torch-free --help

    records = [{"task": name, "kind": "offline", "classes": len(spec.classes), "source": "generated (qgeom.data)",
                "description": spec.description} for name, spec in TASKS.items()]
    for name in REAL_TASKS:
        source = (f"ImageFolder DATA_ROOT/{name}" if name in FOLDER_ONLY
                  else f"torchvision.datasets.{TORCHVISION[name][0]} under DATA_ROOT")
        records.append({"task": name, "kind": "real", "classes": REAL_CLASSES[name], "source": source,
                        "description": "the paper's dataset, read from --data-root"})
    log = Output(format)
    table = Table("task", "kind", "classes", "source", "what it asks")
    for r in records:
        table.add_row(r["task"], r["kind"], str(r["classes"]), r["source"], r["description"])
    log.table("tasks", table, records=records)
    log.close()


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
    app.command("align-demo")(align_demo)
    app.command("tasks")(tasks)

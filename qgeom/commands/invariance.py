"""``qgeom check-invariance``: measure every invariance level of the ViT symmetries.

Builds a model (a preset with seeded random weights, or a qgeom checkpoint), a probe set from an
offline task, random elements of the chosen symmetry kinds, and runs
:func:`qgeom.symmetry.invariance.check_invariance`. Prints a table (``--format csv|json`` for programs),
writes ``invariance.csv`` and ``invariance.json`` into ``--out-dir``, and exits with status 1
when an expected invariance (or covariance) fails. Each check's columns: ``expected``,
``measured``, ``tolerance``, ``holds`` (measured ≤ tolerance: did the identity hold?) and
``as_expected`` (is that what ``expected`` says?); ``--format csv|json`` prints these rows with
numeric cells, the table format a per-level summary (``--full``: every row).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from qgeom.commands import check_finite_option, clean_errors
from qgeom.commands import options as O
from qgeom.commands.inputs import build_model, check_cover, check_fit, load_data, read_checkpoint
from qgeom.commands.output import Output


def _model_and_params(preset: Optional[str], checkpoint: Optional[Path], read: tuple[dict, dict], task, seed: int,
                      init_values: Optional[float]):
    """(model, θ, description): a preset with seeded random weights, or a checkpoint (qgeom's, or
    timm-format with --model; ``read``: its parameters and metadata) whose head must fit ``task``."""
    from qgeom.models import create_model  # lazy: torch-free --help
    from qgeom.params import from_model  # lazy: torch-free --help

    if checkpoint is None:
        extra = {} if init_values is None else {"init_values": init_values}
        model = create_model(preset or "micro", task.num_classes, seed=seed, **extra)
        return model, from_model(model), f"preset {preset or 'micro'} (random weights, seed {seed})"
    params, meta = read
    model = build_model(checkpoint, params, meta, preset, None if "head.weight" in params else task.num_classes)
    if "head.weight" in params:  # its own head: it must fit the task
        check_fit(checkpoint, meta, model.num_classes, task)
    else:  # a backbone (θ_0): its head keeps the seeded random init
        params = {**from_model(model), **params}
    return model, params, f"checkpoint {checkpoint}"


def _kinds(symmetry: str) -> list[str]:
    from qgeom.symmetry import KINDS  # lazy: torch-free --help

    kinds = list(KINDS) if symmetry == "all" else [k.strip() for k in symmetry.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise typer.BadParameter(f"unknown symmetry {', '.join(unknown)}; known: all, {', '.join(KINDS)}", param_hint="--symmetry")
    return kinds


COLUMNS = ("function", "covariance", "geometry", "euclidean", "layer", "quantizer", "adamw", "sgd", "pipeline")


def _column(row: dict) -> str:
    if row["quantity"] == "Euclidean cosine":
        return "euclidean"
    if "layer" in row["quantity"]:  # GPTQ's layer metric: its own column (invariant under fewer symmetries)
        return "layer"
    if row["level"] == "optimizer":
        return "adamw" if row["quantity"].startswith("AdamW") else "sgd"
    return row["level"]


def _cell(rows: list[dict]) -> str:
    """✓ worst error where invariance is expected and held; ✗ an expected invariance that did not
    hold; ≠ the largest violation where one is expected and was measured; ? an expected violation
    not measured; – nothing checked."""
    checked = [r for r in rows if r["expected"] in ("invariant", "covariant")]
    broken = [r for r in rows if r["expected"] == "not invariant"]
    if any(not r["as_expected"] for r in checked):
        return "[red]✗ " + f"{max(r['measured'] for r in checked if not r['as_expected']):.0e}[/]"
    if broken:
        worst = max(r["measured"] for r in broken)
        return f"[yellow]? {worst:.0e}[/]" if any(not r["as_expected"] for r in broken) else f"[cyan]≠ {worst:.0e}[/]"
    if checked:
        return f"[green]✓ {max(r['measured'] for r in checked):.0e}[/]"
    return "[dim]–[/]"


def _summary(rows: list[dict]) -> Table:
    """One row per symmetry, one column per level: ✓ max error where invariance is expected,
    ≠ the violation measured where it is not, ✗ an expected invariance that failed."""
    table = Table("symmetry", *COLUMNS, title="invariance by level (relative errors; ✓ held as expected, "
                  "≠ broke as expected, ✗ broke unexpectedly, ? expected break not measured)")
    for sym in dict.fromkeys(r["symmetry"] for r in rows):
        cells = [_cell([r for r in rows if r["symmetry"] == sym and _column(r) == c]) for c in COLUMNS]
        table.add_row(sym, *cells)
    return table


def _full(rows: list[dict]) -> Table:
    """Every check: ``holds`` (measured ≤ tol: did the identity hold?) and ``as expected``."""
    table = Table("symmetry", "level", "quantity", "expected", "measured", "tol", "holds", "as expected", "before → after")
    holds = {True: "yes", False: "no", None: "[dim]–[/]"}
    mark = {True: "[green]✓[/]", False: "[red]✗[/]", None: "[dim]–[/]"}
    for r in rows:
        ba = "" if r["before"] != r["before"] else f"{r['before']:.6g} → {r['after']:.6g}"
        flag = "[yellow]✗[/]" if r["as_expected"] is False and r["expected"] == "not invariant" else mark[r["as_expected"]]
        table.add_row(r["symmetry"], r["level"], r["quantity"], r["expected"], f"{r['measured']:.2e}",
                      f"{r['tolerance']:.1e}", holds[r["holds"]], flag, ba)
    return table


def _emit(report, log: Output, full: bool) -> None:
    """Print the report: rich tables for people (per-level summary, or every check with
    ``--full``); for programs (``--format csv|json``) every check as one record with numeric
    cells under the report's own columns (:attr:`InvarianceReport.COLUMNS`; JSON strict: NaN → null)."""
    if log.fmt == "table":
        log.table("checks" if full else "summary", _full(report.rows) if full else _summary(report.rows))
        return
    if log.fmt == "json":
        from qgeom.io import dumps_json  # lazy: torch-free --help

        sys.stdout.write(dumps_json({"meta": report.meta, "rows": report.rows, "ok": report.ok}, indent=1) + "\n")
    else:
        sys.stdout.write(report.frame.to_csv(index=False))
    sys.stdout.flush()


def _levels(levels: str) -> list[str]:
    from qgeom.symmetry.invariance import LEVELS  # lazy: torch-free --help

    lv = list(LEVELS) if levels == "all" else [x.strip() for x in levels.split(",") if x.strip()]
    if set(lv) - set(LEVELS):
        raise typer.BadParameter(f"unknown levels {sorted(set(lv) - set(LEVELS))}", param_hint="--levels")
    return lv


def _probe_setup(preset: Optional[str], checkpoint: Optional[Path], bits: Optional[str], task: Optional[str],
                 data_root: Optional[str], n_probe: int, seed: int, init_values: Optional[float]):
    """(model, θ, source, probe batches, task, bit width, device): the model and θ on the default
    device, the probe set from the task's validation split (task and bits default to the
    checkpoint's)."""
    from qgeom.data import parse_task, probe_batches  # lazy: torch-free --help
    from qgeom.models import default_device  # lazy: torch-free --help

    read = read_checkpoint(checkpoint) if checkpoint is not None else ({}, {})
    meta = read[1]
    task = task or meta.get("task") or "shape"
    bits = O.one_bit_width(bits, O.recorded_bits(meta) or 2, command="check-invariance")
    streamed = parse_task(task).streamed
    sizes = {} if streamed else dict(n_train=1, n_val=max(n_probe, 1), n_test=1)
    data = load_data(task, seed, None, data_root, **sizes)  # class count first; images below
    model, params, source = _model_and_params(preset, checkpoint, read, data, seed, init_values)
    if streamed:  # through the model's own timm transform
        data = load_data(task, seed, model, data_root)
    dev = default_device()  # --device (QGEOM_DEVICE), else CUDA when present
    model = model.to(dev)
    params = {k: v.to(dev) for k, v in params.items()}
    batches = probe_batches(data.val, n_probe, batch_size=n_probe, seed=seed)  # labels fit: check_fit
    return model, params, source, batches, task, bits, dev


def _vectors(rho_d: Optional[Path], rho_r: Optional[Path], params: dict, allow_partial: bool, dev, log: Output):
    """(ρ_D, ρ_R) from --rho-d/--rho-r on ``dev``, or None (random directions); each must cover
    its scope of θ (backbone or quantized) unless ``allow_partial`` (then it is said)."""
    from qgeom.io import load_params  # lazy: torch-free --help

    if rho_d is None and rho_r is None:
        return None
    if rho_d is None or rho_r is None:
        raise typer.BadParameter("give both --rho-d and --rho-r")
    vs = {str(p): load_params(p)[0] for p in (rho_d, rho_r)}
    for note in check_cover(params, vs, None, allow_partial):
        log.warn(note)
    return tuple({k: v.to(dev) for k, v in rho.items()} for rho in vs.values())


def _elements(model, kinds: list[str], symmetry: str, strength: float, seed: int, log: Output):
    """(random elements of the applicable kinds, the kinds to run the QAT pipeline for or None)."""
    from qgeom.symmetry import CATALOGUE, applicable_kinds, random_symmetry  # lazy: torch-free --help

    why = applicable_kinds(model)
    for k in [k for k in kinds if why[k]]:
        log.info(f"[yellow]skipping {k}[/]: {why[k]}")
    syms = [random_symmetry(model, k, strength=strength, seed=seed + i) for i, k in enumerate(kinds) if not why[k]]
    if not syms:
        raise typer.BadParameter("no applicable symmetry for this model", param_hint="--symmetry")
    if symmetry == "all":  # signed permutations, and one rescaling to show where the pipeline breaks
        return syms, [g.kind for g in syms if CATALOGUE[g.kind]["pipeline"]] + ["qk_scalar"]
    return syms, None


def check_invariance_cmd(
    symmetry: str = typer.Option("all", help="a symmetry kind, a comma-separated list, or 'all'"),
    strength: float = typer.Option(1.0, help="log condition number of GL blocks / log-spread of rescalings"),
    dtype: str = O.dtype("float64 (the default: tolerance 1e-10 on the function) or float32"),
    preset: Optional[str] = O.model("architecture: a preset (random weights when no --checkpoint; "
                                    "default micro) or timm:NAME; with --checkpoint, default: its metadata"),
    checkpoint: Optional[Path] = typer.Option(None, help="a checkpoint instead of random weights: qgeom's, or "
                                                         "timm-format (.safetensors/.pth) with --model"),
    bits: Optional[str] = O.bits("weight bit width of Q_b, 2–8, per-row symmetric RTN; one width (default: "
                                 "the checkpoint's, else 2)"),
    task: Optional[str] = O.data("task whose validation images form the probe set: an offline name, "
                                 "imagefolder:NAME=DIR, or a real dataset name under --data-root "
                                 "(default: the checkpoint's, else shape)"),
    data_root: Optional[str] = O.data_root(),
    n_probe: int = O.n_probe("probe images (validation split): every check's probe set"),
    levels: str = typer.Option("all", help="comma-separated: function,covariance,geometry,quantizer,optimizer,pipeline"),
    metrics: str = typer.Option("ggn,hessian,layer", help="metrics for covariance and geometry: ggn, hessian, "
                                "fisher, layer (GPTQ's layer-input metric; its own column in the summary)"),
    pipeline_steps: int = typer.Option(3, min=1, help="AdamW QAT steps of the pipeline level"),
    rho_d: Optional[Path] = typer.Option(None, help="ρ_D (.safetensors); default: random directions"),
    rho_r: Optional[Path] = typer.Option(None, help="ρ_R (.safetensors), with --rho-d"),
    allow_partial: bool = O.allow_partial(),
    init_values: Optional[float] = typer.Option(None, help="LayerScale init for a preset (enables layerscale_folding)"),
    seed: int = O.seed("seeds the weights, the elements and the random vectors"),
    out: Optional[Path] = O.out_dir("directory for invariance.csv and invariance.json; default: print only"),
    full: bool = typer.Option(False, "--full", help="print every check, not the per-level summary "
                                                     "(--format csv|json always print every check)"),
    device: str = O.device(), threads: int = O.threads(), quiet: bool = O.quiet(), format: str = O.format(),
) -> None:
    """Check function, covariance, geometry, quantizer, optimizer and pipeline invariance of ViT symmetries."""
    import torch  # lazy: torch-free --help

    from qgeom.quant import QuantSpec  # lazy: torch-free --help
    from qgeom.symmetry.invariance import check_invariance  # lazy: torch-free --help

    t0 = time.time()
    out = O.table_dir(out)
    check_finite_option(strength, "--strength")
    O.apply_runtime(device, threads)
    log = Output(format, quiet)
    kinds, lv = _kinds(symmetry), _levels(levels)
    model, params, source, batches, task, bits, dev = _probe_setup(preset, checkpoint, bits, task, data_root, n_probe,
                                                                   seed, init_values)
    vectors = _vectors(rho_d, rho_r, params, allow_partial, dev, log)
    syms, pipe = _elements(model, kinds, symmetry, strength, seed, log)
    report = check_invariance(model, params, syms, batches, vectors=vectors, spec=QuantSpec(bits=bits),
                              dtype=getattr(torch, dtype), levels=lv, metrics=[m for m in metrics.split(",") if m],
                              pipeline_steps=pipeline_steps, pipeline_for=pipe, seed=seed)
    report.meta.update(source=source, task=task, strength=strength, kinds=[g.kind for g in syms])
    _emit(report, log, full)
    fails, surprises = report.failures(), report.surprises()
    agree = sum(1 for r in report.rows if r["as_expected"])
    log.result(f"{source}; {len(batches[0][1])} probe images of {task!r}; {dtype}; Q_b {bits} bits; "
               f"{len(report.rows)} checks: {agree} as expected, [red]{len(fails)} failed[/], "
               f"[yellow]{len(surprises)} expected violations not measured[/] ({time.time() - t0:.1f} s)")
    if out is not None:
        csv, js = report.write(out / "invariance")
        log.info(f"wrote [bold]{csv}[/] and [bold]{js}[/]")
    # no log.close(): the report was printed by _emit, not kept as an Output table (close would add "{}")
    if fails:
        raise typer.Exit(code=1)


def register(app: typer.Typer) -> None:
    """Add ``check-invariance`` to ``app``."""
    app.command("check-invariance")(clean_errors(check_invariance_cmd))

"""``qgeom geometry`` (and the helpers ``qgeom spectrum`` shares): the receiver's curvature, from the command line.

geometry: a receiver checkpoint θ_R and any number of vectors ρ (donors' and the receiver's own)
→ norms, directional gradients ρᵀ∇L, and for every ordered pair (D, R): Euclidean and metric
cosines, λ* = ⟨ρ_D, ρ_R⟩_M / ⟨ρ_D, ρ_D⟩_M and the recovered fraction cos²_M — all from one
Gram matrix K = Vᵀ M V (N products). ``--metric layer`` (GPTQ's block-diagonal input metric) adds
each quantized Linear's own cosine and λ* per pair (geometry_layers.csv, ``layers`` in the JSON). spectrum: top-k eigenvalues (Lanczos), Hutchinson's trace
and the SLQ spectral density of M at θ_R.

The probe set is ``--n-probe`` images of the task's ``--probe-split`` picked by ``--probe-seed``
(:func:`qgeom.data.probe_batches`); its hash is in the JSON. For ``--objective ste`` pass the
receiver's QAT checkpoint: Proposition 1 expands there (``--bits`` defaults to the bit width it
records). Computed on ``--device`` (default: CUDA when present) in ``--dtype`` (default float64).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from qgeom.commands import clean_errors, inputs
from qgeom.commands import options as O
from qgeom.commands.inputs import build_model, read_checkpoint, task_spec
from qgeom.commands.output import Output
from qgeom.progress import Progress, progress

# options of geometry and spectrum only; the shared ones come from qgeom.commands.options
COMMON = dict(
    metric=typer.Option("ggn", help="ggn (PSD, the default), hessian, fisher, or layer (GPTQ's metric: each "
                                    "quantized Linear's input second moment, forward passes only)"),
    objective=typer.Option("fp", help="fp: L(θ); ste: L(Q_b(θ)) with the STE (pass the QAT checkpoint)"),
    probe_split=typer.Option("val", "--probe-split", help="split the probe set is drawn from: train, val (the "
                                                          "default: a run's geometry.csv probes validation) or test"),
)
BITS = "bit width of Q_b for --objective ste, 2–8 (default: the checkpoint's, else 2)"


def _probe(task: str, split: str, n: int, batch_size: int, seed: int, data_seed: int, sizes: dict | None = None,
           model=None, data_root: Optional[str] = None):
    """The probe set (a list of (x, y) batches) and its task (kept a function so tests can swap the data);
    the task is made as the checkpoint's metadata records it (``sizes``, pretext mixtures),
    streamed tasks through ``model``'s timm transform."""
    from qgeom.data import probe_batches  # lazy: torch-free --help

    if split not in ("train", "val", "test"):
        raise typer.BadParameter(f"split must be train, val or test, got {split!r}", param_hint="--probe-split")
    task_data = inputs.task_for(task, data_seed, model, data_root, **(sizes or {}))  # looked up when called
    return probe_batches(getattr(task_data, split), n, batch_size, seed), task_data


def _receiver(path: Path, task: Optional[str], model: Optional[str]):
    """(model, θ_R, task spec, metadata) from a checkpoint (qgeom's or timm-format with --model);
    --data/--model override its metadata."""
    theta, meta = read_checkpoint(path)
    if "head.weight" not in theta:
        raise typer.BadParameter(f"{path} has no head.weight: is it a fine-tuned model checkpoint?")
    net = build_model(path, theta, meta, model)
    return net, theta, task_spec(task, meta, path), meta


def operator_from_cli(receiver, task, preset, metric, objective, bits, scope, split, n_probe, batch_size, probe_seed,
              data_seed, dtype, data_root=None, log: Output | None = None, cover: tuple | None = None):
    """The receiver's curvature operator on its probe set; ``info`` records the inputs and warnings.
    ``cover``: (vectors by file name, their scope, allow partial): each must cover that scope of
    the receiver (:func:`qgeom.commands.inputs.check_cover`)."""
    # lazy: torch-free --help
    import torch

    from qgeom.curvature.operator import CurvatureOperator  # lazy: torch-free --help
    from qgeom.curvature.probe import init_data_parallel, probe_warnings  # lazy: torch-free --help
    from qgeom.models import default_device  # lazy: torch-free --help
    from qgeom.quant import QuantSpec  # lazy: torch-free --help

    log = log or Output()
    rank, _ = init_data_parallel()  # under torchrun: probe batches shared out, products all-reduced
    if rank != 0:  # one rank prints and writes; every rank computes
        log.silence()
    model, theta, task_name, meta = _receiver(receiver, task, preset)
    bits = O.one_bit_width(bits, O.recorded_bits(meta) or 2, command="--objective ste")
    device = default_device()  # --device (QGEOM_DEVICE), else CUDA when present
    model = model.to(device)
    theta = {k: v.to(device) for k, v in theta.items()}
    seed = int(meta.get("data_seed", 0)) if data_seed is None else data_seed
    sizes = json.loads(meta.get("data_sizes", "{}")) if task in (None, meta.get("task")) else {}
    batches, task_data = _probe(task_name, split, n_probe, batch_size, probe_seed, seed, sizes, model,
                                data_root or meta.get("data_root") or None)
    inputs.check_fit(receiver, meta, int(theta["head.weight"].shape[0]), task_data)
    partial = inputs.check_cover(theta, *cover) if cover else []
    task = task_name
    used = sum(len(y) for _, y in batches)
    available = used if used < n_probe else n_probe  # fewer than asked: the split was smaller
    warnings = probe_warnings(n_probe, available, int(theta["head.weight"].shape[0]))
    for w in warnings + partial:
        log.warn(w)
    op = CurvatureOperator(model, theta, batches, metric=metric, objective=objective, scope=scope,
                           spec=QuantSpec(bits) if objective == "ste" else None, dtype=getattr(torch, dtype))
    op.info.update({"receiver": str(receiver), "task": task, "split": split, "n_probe": n_probe,
                    "n_probe_used": sum(len(y) for _, y in batches), "probe_seed": probe_seed, "data_seed": seed,
                    "probe_warnings": warnings, "partial_vectors": partial,
                    "bits": bits if objective == "ste" else None})
    return op


def write_rows(out: Path, name: str, rows: list[dict]) -> Path:
    """``rows`` as a CSV table ``out/name``, atomically, written by rank 0 only."""
    from qgeom.curvature.probe import data_parallel  # lazy: torch-free --help
    from qgeom.io import atomic_write  # lazy: torch-free --help

    if data_parallel()[0] != 0:
        return out / name

    def w(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else [])
            writer.writeheader()
            writer.writerows(rows)

    return atomic_write(out / name, w)


def write_json_file(out: Path, name: str, obj: dict) -> Path:
    """``obj`` as strict JSON ``out/name`` (NaN/Inf → null), atomically, written by rank 0 only."""
    from qgeom.curvature.probe import data_parallel  # lazy: torch-free --help
    from qgeom.io import write_json  # lazy: torch-free --help

    if data_parallel()[0] != 0:
        return out / name
    return write_json(out / name, obj)


def counted(op, bar: Progress):
    """``op`` as a flat operator whose products advance ``bar`` (one step per product M v)."""
    from dataclasses import replace

    from qgeom.spectra.lanczos import as_flat_operator  # lazy: torch-free --help

    A = as_flat_operator(op)

    def matvec(x):
        out = A.matvec(x)
        bar.update()
        return out

    def matmat(X):
        out = A.matmat(X)
        bar.update(int(X.shape[1]))
        return out

    return replace(A, matvec=matvec, matmat=matmat if A.matmat is not None else None)


def _fmt(x: float) -> str:
    return "indefinite" if isinstance(x, float) and math.isnan(x) else f"{x:.4g}"


# --------------------------------------------------------------------------------------------
# qgeom geometry
# --------------------------------------------------------------------------------------------


def _read_vectors(vectors: list[Path], scope: Optional[str]) -> tuple[list[str], list[dict]]:
    """(names, vectors ρ) from their files, each cut to ``scope``; every vector must match the first."""
    from qgeom.io import load_params  # lazy: torch-free --help
    from qgeom.params import check_compatible, select  # lazy: torch-free --help

    names, vs = [], []
    for p in vectors:
        v, _ = load_params(p)
        if scope is not None:
            v = select(v, scope)
            if not v:
                raise typer.BadParameter(f"{p} holds no tensor of scope {scope}", param_hint="--scope")
        if vs:
            check_compatible(vs[0], v, check_dtype=False, names=(str(vectors[0]), str(p)))
        names.append(p.stem if p.stem not in names else f"{p.stem}#{len(names)}")
        vs.append(v)
    return names, vs


def _geometry_rows(op, K, dg, names: list[str], vectors: list[Path], vs: list[dict]) -> tuple[list[dict], list[dict]]:
    """The rows of geometry_vectors.csv (one per vector) and geometry_pairs.csv (one per ordered pair)."""
    from qgeom.params import norm  # lazy: torch-free --help

    Ks, cos, lam = K.terms["K_sym"], K.terms["cosines"], K.terms["scales"]
    vec_rows = [{"vector": n, "path": str(p), "euclidean_norm": norm(v), "metric_form": Ks[i, i],
                 "metric_norm": math.sqrt(Ks[i, i]) if Ks[i, i] > 0 else float("nan"),
                 "directional_gradient": dg.value[i]} for i, (n, p, v) in enumerate(zip(names, vectors, vs))]
    pair_rows = []
    for i, d in enumerate(names):
        for j, r in enumerate(names):
            if i == j:
                continue
            ip = sum(float((vs[i][k].double() * vs[j][k].double()).sum()) for k in vs[i])
            ni, nj = vec_rows[i]["euclidean_norm"], vec_rows[j]["euclidean_norm"]
            pair_rows.append({"donor": d, "receiver_vector": r,
                              "euclidean_cosine": ip / (ni * nj) if ni * nj > 0 else float("nan"),
                              "metric_cosine": cos[i, j], "optimal_scale": lam[i, j],
                              "recovered_fraction": cos[i, j] ** 2,
                              "euclidean_scale": ip / ni**2 if ni > 0 else float("nan"),
                              "indefinite": bool(math.isnan(cos[i, j])),
                              "probe_warning": "; ".join(op.info["probe_warnings"])})
    return vec_rows, pair_rows


def _layer_rows(op, names: list[str], vs: list[dict]) -> list[dict]:
    """With ``--metric layer``: one row per ordered pair and quantized Linear — that layer's own
    cosine and λ* in GPTQ's metric (:mod:`qgeom.curvature.layer_geometry`); none for other metrics."""
    if op.metric != "layer":
        return []
    from qgeom.curvature.forms import form_quantities  # lazy: torch-free --help
    from qgeom.curvature.layer_geometry import layer_gram_matrices  # lazy: torch-free --help

    rows = []
    for layer, (K, floors) in layer_gram_matrices(op, vs).items():
        q = form_quantities(K, floors)
        rows += [{"donor": d, "receiver_vector": r, "layer": layer, "layer_cosine": q.cosines[i, j],
                  "layer_optimal_scale": q.scales[i, j], "DD": K[i, i], "RR": K[j, j], "DR": q.K_sym[i, j]}
                 for i, d in enumerate(names) for j, r in enumerate(names) if i != j]
    return rows


def _geometry_tables(log: Output, op, vec_rows: list[dict], pair_rows: list[dict]) -> None:
    """Print the vectors and the pairs tables."""
    log.expect_tables(2)
    t = Table("vector", "‖ρ‖", "ρᵀMρ", "ρᵀ∇L", title=f"{op!r}")
    for row in vec_rows:
        t.add_row(row["vector"], _fmt(row["euclidean_norm"]), _fmt(row["metric_form"]),
                  _fmt(row["directional_gradient"]))
    log.table("vectors", t, records=vec_rows)
    t = Table("donor", "onto", "cos", "cos_M", "λ*", "cos²_M")
    for row in pair_rows:
        t.add_row(row["donor"], row["receiver_vector"], _fmt(row["euclidean_cosine"]),
                  _fmt(row["metric_cosine"]), _fmt(row["optimal_scale"]), _fmt(row["recovered_fraction"]))
    log.table("pairs", t, records=pair_rows)


@clean_errors
def geometry_cmd(
    receiver: Path = typer.Argument(..., help="receiver checkpoint θ_R (qgeom's .safetensors, or timm-format "
                                              "with --model)"),
    vectors: list[Path] = typer.Argument(..., help="vectors ρ (.safetensors): donors' and the receiver's own"),
    task: Optional[str] = O.data(), preset: Optional[str] = O.model(),
    data_root: Optional[str] = O.data_root(),
    metric: str = COMMON["metric"], objective: str = COMMON["objective"], bits: Optional[str] = O.bits(BITS),
    scope: Optional[str] = O.scope("compare the vectors on this scope (backbone, quantized or all); "
                                   "default: every tensor they hold"),
    allow_partial: bool = O.allow_partial(),
    split: str = COMMON["probe_split"], n_probe: int = O.n_probe(), batch_size: int = O.probe_batch(),
    probe_seed: int = O.probe_seed(), data_seed: Optional[int] = O.data_seed(),
    dtype: str = O.dtype(), out: Optional[Path] = O.out_dir(),
    device: str = O.device(), threads: int = O.threads(), quiet: bool = O.quiet(), format: str = O.format(),
) -> None:
    """Norms, cosines (Euclidean and metric), λ*, recovered fractions and directional gradients
    of quantization vectors under the receiver's curvature."""
    out = O.table_dir(out)
    O.apply_runtime(device, threads)
    from qgeom.curvature.geometry import directional_gradients, gram  # lazy: torch-free --help

    log = Output(format, quiet)
    with progress(total=3, desc="geometry", unit="steps", enabled=not quiet) as bar:
        bar.step("probe set and receiver")
        names, vs = _read_vectors(vectors, scope)
        op = operator_from_cli(receiver, task, preset, metric, objective, bits, list(vs[0]), split, n_probe, batch_size,
                       probe_seed, data_seed, dtype, data_root, log,
                       cover=({str(p): v for p, v in zip(vectors, vs)}, scope, allow_partial))
        bar.update()
        bar.step(f"Gram matrix of {len(vs)} vectors")
        K = gram(op, dict(zip(names, vs)))
        bar.update()
        bar.step("directional gradients")
        dg = directional_gradients(op, dict(zip(names, vs)))
        bar.update()
    note = inputs.probe_difference(receiver, split, n_probe, probe_seed, op.info["n_probe_used"])
    if note:
        log.info(f"note: {note}")
    vec_rows, pair_rows = _geometry_rows(op, K, dg, names, vectors, vs)
    layer_rows = _layer_rows(op, names, vs)
    _geometry_tables(log, op, vec_rows, pair_rows)
    if K.indefinite:
        log.warn(K.message)
    if out is not None:
        write_rows(out, "geometry_vectors.csv", vec_rows)
        write_rows(out, "geometry_pairs.csv", pair_rows)
        if layer_rows:
            write_rows(out, "geometry_layers.csv", layer_rows)
        write_json_file(out, "geometry.json", {"info": op.info, "loss": op.loss(), "vectors": vec_rows, "pairs": pair_rows,
                                           "layers": layer_rows, "gram": K.to_dict(), "message": K.message})
        log.info(f"wrote {out}/geometry_vectors.csv, geometry_pairs.csv, {'geometry_layers.csv, ' * bool(layer_rows)}"
                 "geometry.json")
    log.close()



def register(app: typer.Typer) -> None:
    """Add ``geometry`` to ``app`` (``spectrum``: :mod:`qgeom.commands.spectrum`)."""
    app.command("geometry")(geometry_cmd)

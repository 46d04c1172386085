"""Studies: one transfer run per cell of a grid of configurations, and a table across the cells.

A study file (YAML) names a run preset, overrides common to every cell, and the cells'
own overrides::

    name: regime
    preset: demo
    common: [bits=2, controls=random_rows,row_permuted, seeds=0,1,2]
    cells:
      base: []
      ft300: [finetune.steps=300, finetune.warmup_steps=30]

:func:`run_study` runs every cell with :func:`qgeom.experiment.driver.run_experiment` into
``ROOT/<cell>``, named ``<name>-<cell>`` (the run executor, its worker processes, its resume: a killed study continues
where it stopped, a finished cell is read back in seconds). :func:`study_table` reads each
finished cell into one row per (cell, bits, scope) — the quantities that say whether, and how
strongly, the donor's vector transfers there:

==========================  ===============================================================
column                      meaning (Top-1 points on test unless said; off-diagonal pairs)
==========================  ===============================================================
ptq_drop                    FT − FT+PTQ: what PTQ costs the receiver
qat_recovery                QAT+PTQ − FT+PTQ: what the receiver's own QAT recovers
gain_unit[_low,_high]       the donor patch at λ = 1 against the unpatched receiver (95 %)
gain_tuned[...]             the donor patch at the λ chosen on validation
gain_over_controls[...]     the λ = 1 gain minus the best control's (random, random_rows, …)
finetune_distance           ‖θ_R − θ_0‖ / ‖θ_0‖ on the backbone, mean over receivers and seeds
rho_size                    ‖ρ_R‖ / ‖θ_R‖ on the backbone, mean over receivers and seeds
cos_euclidean, cos_ggn_fp   mean cos(ρ_D, ρ_R), Euclidean and in the receiver's GGN
==========================  ===============================================================

A cell *transfers* when the lower end of the 95 % interval of ``gain_over_controls`` is above 0:
the donor's vector beats every control, over tasks and seeds.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import yaml

from qgeom import params as P
from qgeom.experiment.analysis import interval, read_table
from qgeom.experiment.config import ConfigError
from qgeom.experiment.driver import run_experiment
from qgeom.experiment.layout import RunLayout, load_run_config
from qgeom.experiment.tasks import task_specs
from qgeom.io import load_params

INTERVALS = ("gain_unit", "gain_tuned", "gain_over_controls")


def load_study(path: str | Path) -> dict:
    """The study file as ``{"name", "preset", "common", "cells": {name: [overrides]}}`` (checked;
    ``name`` defaults to the file's stem)."""
    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict) or not isinstance(data.get("cells"), dict) or not data["cells"]:
        raise ConfigError(f"{path}: a study needs a mapping 'cells' of cell name → list of key=value overrides")
    study = {"name": str(data.get("name", Path(path).stem)), "preset": str(data.get("preset", "demo")),
             "common": list(data.get("common") or []), "cells": {}}
    for name, overrides in data["cells"].items():
        if "/" in str(name) or not str(name).strip():
            raise ConfigError(f"{path}: cell name {name!r} must be a plain directory name")
        if not isinstance(overrides or [], list) or not all(isinstance(o, str) for o in overrides or []):
            raise ConfigError(f"{path}: cell {name}: expected a list of key=value strings, got {overrides!r}")
        study["cells"][str(name)] = list(overrides or [])
    return study


def cell_overrides(study: dict, cell: str, extra: list[str] = ()) -> list[str]:
    """Every override of ``cell``: the common ones, the cell's, its run name, then ``extra``."""
    return [*study["common"], *study["cells"][cell], f"name={study['name']}-{cell}", *extra]


def run_study(path: str | Path, root: str | Path, cells: list[str] | None = None, extra: list[str] = (),
              workers: int | None = None, progress: bool = True,
              log: Callable[[str], None] = lambda msg: None) -> list[str]:
    """Run (or resume) the cells of the study at ``path`` (all, or ``cells``) into ``root/<cell>``;
    ``extra`` overrides are appended to every cell. Returns the cells run."""
    study = load_study(path)
    names = cells or list(study["cells"])
    unknown = [c for c in names if c not in study["cells"]]
    if unknown:
        raise ConfigError(f"{path}: no cell {', '.join(unknown)} (cells: {', '.join(study['cells'])})")
    for cell in names:
        log(f"study cell {cell}: {' '.join(study['cells'][cell]) or '(the preset)'}")
        run_experiment(study["preset"], Path(root) / cell, cell_overrides(study, cell, list(extra)), progress=progress,
                       workers=workers, log=log)
    return names


def vector_sizes(run_dir: str | Path) -> dict[str, float]:
    """``finetune_distance`` ‖θ_R − θ_0‖/‖θ_0‖ and ``rho_size`` ‖ρ_R‖/‖θ_R‖ (backbone, bits: the
    run's first), each the mean over receivers and seeds, read from the run's checkpoints."""
    layout, cfg = RunLayout(run_dir), load_run_config(run_dir)
    theta0 = {k: v.double() for k, v in P.select(load_params(layout.theta0())[0], "backbone").items()}
    dist, size = [], []
    for seed in cfg.seeds:
        for task in task_specs(cfg):
            theta = {k: v.double() for k, v in P.select(load_params(layout.finetuned(seed, task))[0], "backbone").items()}
            rho = load_params(layout.rho(seed, min(cfg.bits), task))[0]
            dist.append(P.norm(P.sub(theta, {k: theta0[k] for k in theta})) / P.norm(theta0))
            size.append(P.norm(rho) / P.norm(theta))
    return {"finetune_distance": sum(dist) / len(dist), "rho_size": sum(size) / len(size)}


def cell_rows(cell: str, run_dir: str | Path) -> list[dict]:
    """One row per (bits, scope) of a finished cell (the columns of the module's table)."""
    layout = RunLayout(run_dir)
    pairs, receivers = read_table(layout.table("pairs")), read_table(layout.table("receivers"))
    sizes = vector_sizes(run_dir)
    rows = []
    for (bits, scope), g in pairs.groupby(["bits", "scope"]):
        rec = receivers[(receivers.bits == bits) & (receivers.scope == scope)].drop_duplicates(["seed", "receiver"])
        per_receiver = g.drop_duplicates(["seed", "receiver"])
        off = g[~g.diagonal]
        row = dict(cell=cell, bits=int(bits), scope=scope, n_seeds=int(g.seed.nunique()),
                   n_tasks=int(g.receiver.nunique()), base_fp=float(per_receiver.base_fp.mean()),
                   ptq_drop=float((per_receiver.base_fp - per_receiver.base_ptq).mean()),
                   qat_recovery=float((rec.qat_ptq - rec.base_ptq).mean()))
        for col in INTERVALS:
            iv = interval(g, col)
            row |= {col: iv.mean, f"{col}_low": iv.low, f"{col}_high": iv.high}
        row |= sizes
        for col in ("cos_euclidean", "cos_ggn_fp"):
            row[col] = float(off[col].mean()) if col in off else math.nan
        row["transfers"] = bool(row["gain_over_controls_low"] > 0)
        rows.append(row)
    return rows


def study_table(path: str | Path, root: str | Path) -> pd.DataFrame:
    """The rows of every finished cell of the study (cells still running or not started are
    left out; the ``cell`` order is the study file's)."""
    study = load_study(path)
    rows = []
    for cell in study["cells"]:
        if RunLayout(Path(root) / cell).summary.exists():
            rows += cell_rows(cell, Path(root) / cell)
    return pd.DataFrame(rows)

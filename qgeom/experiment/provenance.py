"""What a run's artifacts were computed from, recorded in ``RUN/inputs.json`` and checked on every
resume, so that a changed input is refused instead of its old results being reported.

``inputs.json`` holds

* ``config``: the configuration the run recorded (``config.json`` edited by hand since is refused,
  naming the fields);
* ``data``: a fingerprint of every streamed task's files (:func:`qgeom.data.fingerprint`: the
  listing of names and sizes); offline tasks are generated from code and need none;
* ``artifacts``: per artifact (relative path), its own hash (a checkpoint's content hash, a
  table's SHA-256) and the hashes of the artifacts it was computed from
  (:meth:`qgeom.experiment.stages.Stage.inputs`).

θ_0 read from a file is checked against the file itself (:meth:`TransferRun.preflight
<qgeom.experiment.transfer.TransferRun.preflight>` hashes its backbone), and every training
checkpoint against the configuration its own metadata records (``config``), so a run written
before ``inputs.json`` existed is checked too; it resumes, and its hashes are recorded from then on.
A difference is refused (:class:`StaleInputsError`), never reused silently: the message names the
artifact and the input that changed. Only the process that runs the experiment (the driver)
writes ``inputs.json``; worker processes and jobs only write artifacts.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from qgeom.experiment.layout import RunLayout
from qgeom.experiment.stages import basins, plan
from qgeom.experiment.tasks import task_specs
from qgeom.io import dumps_json, read_metadata, write_json
from qgeom.train import TrainConfig

VERSION = 1
HINT = "delete it and what was computed from it to recompute them, or choose a new run directory"


class StaleInputsError(ValueError):
    """An artifact of a run directory was computed from inputs other than the run's current ones."""


def file_hash(path: Path) -> str:
    """A qgeom checkpoint's content hash (from its header), else the SHA-256 of the file's bytes."""
    if path.suffix == ".safetensors":
        meta = read_metadata(path)
        if "content_hash" in meta:
            return meta["content_hash"]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def artifact_inputs(cfg) -> dict[str, list[str]]:
    """Every artifact of a run of ``cfg`` (relative path) → the artifacts it is computed from."""
    names, bs = list(task_specs(cfg)), basins(cfg)
    out: dict[str, list[str]] = {}
    for stage in plan(cfg, geometry=True):
        ins = [p for s in stage.inputs(names, bs) for p in s.outputs()]
        out.update({p: ins for p in stage.outputs()})
    out["dissimilarity.csv"] = ["theta0.safetensors"]
    return out


def expected_configs(cfg) -> dict[str, dict]:
    """Training checkpoint (relative path) → the training config its metadata must record."""
    layout, names, out = RunLayout("."), list(task_specs(cfg)), {}
    for basin in basins(cfg):
        if cfg.theta0 == "pretrain":
            out[layout.theta0(basin).as_posix()] = cfg.pretrain.with_(seed=1 if basin else 0).to_dict()
        for s in cfg.seeds:
            for t in names:
                out[layout.finetuned(s, t, basin).as_posix()] = cfg.finetune.with_(seed=s).to_dict()
                for b in cfg.bits:
                    out[layout.qat(s, b, t, basin).as_posix()] = cfg.qat.with_(seed=s).to_dict()
    return out


def _differences(old: dict, new: dict) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f"{k} {old.get(k)!r} → {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def _check_config(layout: RunLayout, cfg, recorded: dict | None) -> dict:
    """The config to record; a config.json that differs from the recorded one is refused. A field
    the record lacks (added to RunConfig since the run was made) counts as its default, as in
    :func:`~qgeom.experiment.layout.claim_config`, so a run of an older qgeom resumes."""
    current = json.loads(dumps_json(cfg.to_dict(), sort_keys=True))
    default = json.loads(dumps_json(type(cfg)().to_dict(), sort_keys=True))
    changed = [] if recorded is None else [k for k in sorted(set(recorded) | set(current))
                                           if recorded.get(k, default.get(k)) != current.get(k)]
    if changed:
        raise StaleInputsError(f"{layout.config} was edited since the run recorded it (differs in: {', '.join(changed)}); "
                               f"its artifacts were computed with the recorded configuration: restore it, or choose a "
                               f"new run directory")
    return current


def _check_data(recorded: dict, current: dict[str, str | None]) -> dict:
    for name, fp in current.items():
        if fp is not None and recorded.get(name) not in (None, fp):
            raise StaleInputsError(f"the data of task {name} changed since this run read it (its files were added, "
                                   f"removed or resized): its results would mix two datasets; choose a new run "
                                   f"directory")
    return {k: v for k, v in current.items() if v is not None}


def _check_training_config(root: Path, rel: str, want: dict) -> None:
    """Refuse a training checkpoint whose metadata records another training config than the run's."""
    meta = read_metadata(root / rel)
    if "config" not in meta:
        return
    default = json.loads(dumps_json(TrainConfig().to_dict()))  # fields added since it was written: their defaults
    have = default | json.loads(meta["config"])
    diff = _differences(have, json.loads(dumps_json(want)))
    if diff:
        raise StaleInputsError(f"{root / rel} was computed with another training configuration than the run's "
                               f"({'; '.join(diff)}): was config.json edited? {HINT}")


def _check_artifact(root: Path, rel: str, ins: list[str], entry: dict | None) -> dict:
    """The entry to record for one existing artifact; a recorded entry that differs is refused."""
    now = {"hash": file_hash(root / rel), "inputs": {p: file_hash(root / p) for p in ins if (root / p).exists()}}
    if entry is None:
        return now
    if entry.get("hash") != now["hash"]:
        raise StaleInputsError(f"{root / rel} is not the file this run computed (its hash changed since it was "
                               f"recorded): {HINT}")
    for p, h in now["inputs"].items():
        if entry.get("inputs", {}).get(p, h) != h:
            raise StaleInputsError(f"{root / rel} was computed from another {p} than the one now in the run "
                                   f"directory: {HINT}")
    return {"hash": now["hash"], "inputs": entry.get("inputs", {}) | now["inputs"]}


def sync(run_dir: str | Path, cfg, data: dict[str, str | None]) -> dict:
    """Check every input and existing artifact of the run at ``run_dir`` against ``inputs.json``
    (refusing a difference with :class:`StaleInputsError`) and record what it lacks; returns the
    record. Called before any work and again at the end (recording what was computed)."""
    layout = RunLayout(run_dir)
    root = layout.root
    old = json.loads(layout.inputs.read_text()) if layout.inputs.exists() else {}
    record = {"version": VERSION, "config": _check_config(layout, cfg, old.get("config")),
              "data": _check_data(old.get("data", {}), data), "artifacts": {}}
    configs = expected_configs(cfg)
    recorded = old.get("artifacts", {})
    for rel, ins in artifact_inputs(cfg).items():
        if not (root / rel).exists():
            continue
        if rel in configs:  # a run written before inputs.json too: a checkpoint's metadata says how it was made
            _check_training_config(root, rel, configs[rel])
        record["artifacts"][rel] = _check_artifact(root, rel, ins, recorded.get(rel))
    if record != old:
        write_json(layout.inputs, record, indent=1, sort_keys=True)
    return record

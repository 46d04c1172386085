"""What a transfer run is: :class:`RunConfig`, coercion of JSON/YAML/CLI values, overrides, validation.

A run is fully described by a :class:`RunConfig`; it is written into the run directory
(``config.json``, :mod:`qgeom.experiment.layout`) and a resumed run must ask for the same one.
Named configurations (``demo``, ``tiny``, the paper's scales, …) are data in
:mod:`qgeom.experiment.presets`. Every field can be overridden as ``key=value`` (nested with
dots: ``finetune.steps=300``; lists comma-separated: ``bits=2,3``). :func:`validate` checks a
whole config in milliseconds, touching no file, before anything is written.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from qgeom.curvature.operator import GEOMETRY_METRICS
from qgeom.experiment.checks import ConfigError, check, check_int, check_list, is_int
from qgeom.io import dumps_json
from qgeom.data import check_task_name, parse_task, task_names
from qgeom.models import create_model, preset_config
from qgeom.paper import PAPER_LAMBDAS
from qgeom.params import SCOPES
from qgeom.vocabulary import QUANTIZERS, RUN_CONTROLS, VECTOR_SOURCES
from qgeom.tracking import check_trackers
from qgeom.train import TrainConfig



@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a transfer run's results."""

    name: str = "demo"
    preset: str = "micro"  # a model preset (micro, tiny, small, base, large) or timm:NAME
    model_overrides: dict = field(default_factory=dict)
    # θ_0: "pretrain" (on the offline pretext mixture), "timm:NAME" (timm's weights) or a file path
    theta0: str = "pretrain"
    data_root: str = ""  # folder of the torchvision datasets (real task names)
    data_download: bool = False  # let torchvision download missing datasets (needs network)
    num_workers: int = 0  # DataLoader workers for streamed (real) tasks
    log_every: int = 10  # training curves: loss and learning rate every k steps
    val_every: int = 0  # training curves: validation Top-1 every k steps (0: at the end only)
    trackers: tuple[str, ...] = ()  # besides CSV: "tensorboard", "wandb" (optional extras)
    pretext_tasks: tuple[str, ...] = ("shape", "stripes", "count", "hue", "texture", "position", "size", "mirror")
    # receivers whose 2-bit PTQ loses accuracy (hue, texture, stripes lose < 0.5 point: nothing to recover)
    tasks: tuple[str, ...] = ("shape", "count", "position", "mirror", "size", "digits")
    n_pretext_per_task: int = 2500
    n_train: int = 3000
    n_val: int = 250
    n_test: int = 500
    pretrain: TrainConfig = TrainConfig(steps=500, lr=2e-3, warmup_steps=30)
    finetune: TrainConfig = TrainConfig(steps=150, lr=1e-3, warmup_steps=15)
    qat: TrainConfig = TrainConfig(steps=100, lr=5e-4, warmup_steps=10)
    bits: tuple[int, ...] = (2,)
    seeds: tuple[int, ...] = (0,)
    lambdas: tuple[float, ...] = PAPER_LAMBDAS
    random_draws: int = 3
    # stronger controls (qgeom.experiment.controls; test split, λ = 1): random_rows, row_permuted, negated, other_basin
    controls: tuple[str, ...] = ()
    decomposition: bool = False  # grid-only / values-only hybrids of every patch at λ = 1 (qgeom.experiment.decomposition)
    scopes: tuple[str, ...] = ("backbone", "quantized")
    metrics: tuple[str, ...] = ("ggn",)
    probe_size: int = 256
    probe_batch: int = 128
    permutations: int = 5000
    eval_batch: int = 1000
    # receiver quantizers (issue 24): RTN is the protocol's (λ grid, controls: zero-shot); gptq and awq
    # add test rows (baselines, patch at λ = 1 and at the val λ, then that quantizer), calibrated on
    # the receiver's own training images: baselines, not zero-shot
    ptq: tuple[str, ...] = ("rtn",)
    vector_source: str = "qat"  # ρ_D = θ_D,QAT − θ_D, or θ_D,GPTQ − θ_D / θ_D,AWQ − θ_D (donor calibration data)
    act_bits: int = 0  # inputs of every quantized Linear fake-quantized at this many bits, in QAT and PTQ (0: weights only)
    calib_size: int = 256  # calibration images (first of the train split) for gptq, awq and activation ranges

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return dumps_json(self.to_dict(), indent=2, sort_keys=True)


def _int(value: Any, key: str) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{key}: {value!r} is not an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    try:
        return int(str(value).strip())
    except ValueError:
        raise ConfigError(f"{key}: {value!r} is not an integer") from None


def _float(value: Any, key: str) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"{key}: {value!r} is not a number")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: {value!r} is not a number") from None


def _coerce(value: Any, default: Any, key: str) -> Any:
    """Turn a JSON/YAML/CLI value into the type of the field's default; a value that does not
    convert is a :class:`ConfigError` naming ``key`` (``bits: 'abc' is not an integer``)."""
    if isinstance(default, TrainConfig):
        if isinstance(value, TrainConfig):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {', '.join(f.name for f in fields(TrainConfig))}, "
                              f"got {value!r}")
        known = {f.name for f in fields(TrainConfig)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ConfigError(f"{key}: unknown fields {unknown}; known: {', '.join(sorted(known))}")
        return default.with_(**{k: _coerce(v, getattr(default, k), f"{key}.{k}") for k, v in value.items()})
    if isinstance(default, tuple):
        if isinstance(value, str) and value.strip().startswith("["):  # a JSON list: items may hold commas
            try:
                items = list(json.loads(value))
            except (json.JSONDecodeError, TypeError):
                raise ConfigError(f"{key}: {value!r} is not a JSON list") from None
        elif isinstance(value, str):
            items = value.split(",")
        elif isinstance(value, (list, tuple)):
            items = list(value)
        else:
            items = [value]
        proto = default[0] if default else ""
        return tuple(_coerce(v.strip() if isinstance(v, str) else v, proto, key) for v in items if v != "")
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("1", "true", "yes"):
            return True
        if str(value).lower() in ("0", "false", "no"):
            return False
        raise ConfigError(f"{key}: {value!r} is not a boolean")
    if value is None and key.endswith("clip_grad_norm"):
        return None  # no clipping
    if isinstance(default, int):
        return _int(value, key)
    if isinstance(default, float):
        return _float(value, key)
    if isinstance(default, dict):
        try:
            out = json.loads(value) if isinstance(value, str) else value
        except json.JSONDecodeError as e:
            raise ConfigError(f"{key}: not JSON ({e})") from None
        if not isinstance(out, dict):
            raise ConfigError(f"{key}: expected a JSON object, got {value!r}")
        return dict(out)
    return value if not isinstance(default, str) else str(value)


def _from_dict(data: dict, base: RunConfig) -> RunConfig:
    known = {f.name for f in fields(RunConfig)}
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a mapping of keys to values, got {type(data).__name__}")
    unknown = [k for k in data if k not in known]
    if unknown:
        raise ConfigError(f"unknown config keys {unknown}; known: {', '.join(known)}")
    changes = {k: _coerce(v, getattr(base, k), k) for k, v in data.items()}
    return dataclasses.replace(base, **changes)


def from_dict(data: dict, base: RunConfig | None = None) -> RunConfig:
    """A config from a (possibly partial) dict, each value coerced to its field's type; unknown
    keys are an error that lists the known ones, a value that does not convert a
    :class:`ConfigError` naming its key. Ranges are checked by :func:`validate`, once, where a
    run starts (:func:`qgeom.experiment.presets.resolve_config`, :class:`TransferRun`)."""
    return _from_dict(data, base or RunConfig())


def with_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """Apply ``key=value`` strings (``finetune.steps=300`` sets a nested field), coerced like
    :func:`from_dict` (the result is validated where the run starts)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        key, value = item.split("=", 1)
        key = key.strip()
        if "." in key:
            outer, inner = key.split(".", 1)
            sub = getattr(cfg, outer, None)
            if not isinstance(sub, TrainConfig):
                raise ConfigError(f"{outer!r} has no sub-fields")
            if inner not in {f.name for f in fields(TrainConfig)}:
                raise ConfigError(f"unknown field {inner!r} of {outer}; known: "
                                  f"{', '.join(f.name for f in fields(TrainConfig))}")
            cfg = dataclasses.replace(cfg, **{outer: sub.with_(**{inner: _coerce(value, getattr(sub, inner), key)})})
        else:
            cfg = _from_dict({key: value}, cfg)
    return cfg


# --------------------------------------------------------------------------------------------
# validation: one pass over every field, before any work and before config.json is written
# --------------------------------------------------------------------------------------------

#: A run's scopes: every scope of :data:`qgeom.params.SCOPES` but "all" (the patch never touches the head).
RUN_SCOPES = tuple(sorted(s for s in SCOPES if s != "all"))
#: A run's metrics: those of :data:`qgeom.curvature.operator.GEOMETRY_METRICS` (the loss's Hessian, GGN,
#: Fisher, and GPTQ's layer metric), the default (the GGN) first.
RUN_METRICS = tuple(sorted(GEOMETRY_METRICS, key=lambda m: m != "ggn"))
OPTIMIZERS = ("adamw", "sgd")


COMMA_HINT = (" (a list override is split on commas: write a task whose path holds a comma in a JSON list, "
              "tasks='[\"shape\", \"imagefolder:NAME=DIR,WITH,COMMAS\"]', or in a config file)")


def _check_train(key: str, t: Any) -> None:
    check(isinstance(t, TrainConfig), f"{key}: expected a mapping of training settings, got {t!r}")
    check_int(f"{key}.steps", t.steps, 1)
    check_int(f"{key}.batch_size", t.batch_size, 1)
    check_int(f"{key}.warmup_steps", t.warmup_steps, 0)
    check_int(f"{key}.seed", t.seed, 0)
    for name, low_ok in (("lr", False), ("weight_decay", True)):
        v = getattr(t, name)
        check(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
               and (v > 0 or (low_ok and v == 0)), f"{key}.{name}: {v!r} must be a finite number "
               f"{'≥ 0' if low_ok else '> 0'}")
    c = t.clip_grad_norm
    check(c is None or (isinstance(c, (int, float)) and math.isfinite(c) and c > 0),
           f"{key}.clip_grad_norm: {c!r} must be a finite number > 0 (or null: no clipping)")
    check(t.optimizer in OPTIMIZERS, f"{key}.optimizer: {t.optimizer!r} is not one of {', '.join(OPTIMIZERS)}")


def _check_task(key: str, name: Any) -> None:
    try:
        check_task_name(name)
    except ValueError as e:
        raise ConfigError(f"{key}: {e}") from None


def _check_bits(key: str, b: Any) -> None:
    check(is_int(b) and 2 <= b <= 8, f"{key}: {b!r} is not a supported bit width (2–8)")


def _check_lambda(key: str, lam: Any) -> None:
    check(isinstance(lam, (int, float)) and not isinstance(lam, bool) and math.isfinite(lam) and lam > 0,
           f"{key}: {lam!r} is not a finite λ > 0 (the patch θ_R + λρ_D is defined for λ > 0)")


def _check_model(cfg: RunConfig) -> None:
    """Build the model once, on the meta device (no memory, no random numbers drawn): overrides
    timm refuses (an unknown keyword, a width its heads do not divide) fail here, before any work."""
    try:
        with torch.device("meta"):
            create_model(cfg.preset, 2, **cfg.model_overrides)
    except Exception as e:  # timm raises TypeError, ValueError or AssertionError, by keyword
        raise ConfigError(f"model_overrides: {json.dumps(cfg.model_overrides)} do not build a {cfg.preset} model "
                          f"({type(e).__name__}: {str(e) or 'refused by timm'})") from None


def validate(cfg: RunConfig) -> None:
    """Check every field of ``cfg`` by name; raise :class:`ConfigError` ``"key: what is wrong"``.

    Ranges and types of every number, non-empty lists without repeats, task names that
    :func:`qgeom.data.check_task_name` resolves, bit widths 2–8, a λ grid of finite values > 0,
    steps > 0 and finite learning rates, known presets, scopes and metrics. Runs in
    milliseconds and touches no file, so a run refuses a bad config before any work.
    """
    check(isinstance(cfg, RunConfig), f"expected a RunConfig, got {type(cfg).__name__}")
    check(isinstance(cfg.name, str) and cfg.name.strip() != "" and "/" not in cfg.name and cfg.name not in (".", ".."),
           f"name: {cfg.name!r} must be a non-empty name without '/' (it names the default run directory)")
    check(isinstance(cfg.preset, str), f"preset: {cfg.preset!r} must be a preset name or timm:NAME")
    try:
        preset_config(cfg.preset)
    except ValueError as e:
        raise ConfigError(f"preset: {cfg.preset!r} is not a model preset or a timm model ({e})") from None
    check(isinstance(cfg.theta0, str) and (cfg.theta0 == "pretrain" or cfg.theta0.startswith("timm:")
                                            or Path(cfg.theta0).is_file()),
           f"theta0: {cfg.theta0!r} must be 'pretrain', 'timm:NAME' or an existing checkpoint file")
    if cfg.theta0.startswith("timm:"):
        try:
            preset_config(cfg.theta0)
        except ValueError as e:
            raise ConfigError(f"theta0: {e}") from None
    check(isinstance(cfg.data_root, str), f"data_root: {cfg.data_root!r} must be a folder name")
    check(isinstance(cfg.data_download, bool), f"data_download: {cfg.data_download!r} must be true or false")
    check_int("num_workers", cfg.num_workers, 0)
    check_int("log_every", cfg.log_every, 1)
    check_int("val_every", cfg.val_every, 0)
    try:
        check_trackers(cfg.trackers)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    check(isinstance(cfg.model_overrides, dict) and all(isinstance(k, str) for k in cfg.model_overrides),
           f"model_overrides: {cfg.model_overrides!r} must be a mapping of timm keyword arguments")
    _check_model(cfg)
    if cfg.theta0 == "pretrain":  # the pretext mixture is only read when θ_0 is pretrained here
        check_list("pretext_tasks", cfg.pretext_tasks, _check_task)
    try:
        check_list("tasks", cfg.tasks, _check_task, min_len=2)  # donors × receivers: at least two tasks
    except ConfigError as e:  # a folder's path with a comma, split as a list: say how to write it
        hint = any(str(t).startswith("imagefolder:") for t in cfg.tasks) and "unknown task" in str(e)
        raise ConfigError(f"{e}{COMMA_HINT if hint else ''}") from None
    try:
        task_names(cfg.tasks)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    offline = any(not parse_task(t).streamed for t in cfg.tasks)
    for key in ("n_train", "n_val", "n_test"):  # for real tasks a cap; 0 = every image
        check_int(key, getattr(cfg, key), 1 if offline else 0)
    check(isinstance(cfg.controls, tuple) and all(c in RUN_CONTROLS for c in cfg.controls)
           and len(set(cfg.controls)) == len(cfg.controls),
           f"controls: {list(cfg.controls)} must be distinct values of {', '.join(RUN_CONTROLS)}")
    check("other_basin" not in cfg.controls or cfg.theta0 == "pretrain",
           "controls: other_basin pretrains a second θ_0 with another seed, so it needs theta0=pretrain")
    check(isinstance(cfg.decomposition, bool), f"decomposition: {cfg.decomposition!r} must be true or false")
    for key in ("n_pretext_per_task", "random_draws", "probe_size", "probe_batch", "permutations", "eval_batch"):
        check_int(key, getattr(cfg, key), 1)
    for key in ("pretrain", "finetune", "qat"):
        _check_train(key, getattr(cfg, key))
    check_list("bits", cfg.bits, _check_bits)
    check_list("seeds", cfg.seeds, lambda k, s: check_int(k, s, 0))
    check_list("lambdas", cfg.lambdas, _check_lambda)
    check_list("scopes", cfg.scopes, lambda k, s: check(s in RUN_SCOPES, f"{k}: {s!r} is not one of {', '.join(RUN_SCOPES)}"))
    check_list("metrics", cfg.metrics, lambda k, m: check(m in RUN_METRICS, f"{k}: {m!r} is not one of {', '.join(RUN_METRICS)}"))
    _check_quantizers(cfg)


def _check_quantizers(cfg: RunConfig) -> None:
    """The quantizer fields: ``ptq`` distinct values of QUANTIZERS including rtn (the λ grid and the
    controls are RTN's: the zero-shot protocol), a known ``vector_source``, ``act_bits`` 0 or 2–8."""
    check_list("ptq", cfg.ptq, lambda k, m: check(m in QUANTIZERS, f"{k}: {m!r} is not one of {', '.join(QUANTIZERS)}"))
    check("rtn" in cfg.ptq, f"ptq: {list(cfg.ptq)} must include rtn (the λ grid and the controls are evaluated "
          "with round-to-nearest, the zero-shot protocol); e.g. ptq=rtn,gptq")
    check(cfg.vector_source in VECTOR_SOURCES,
          f"vector_source: {cfg.vector_source!r} is not one of {', '.join(VECTOR_SOURCES)}")
    check(is_int(cfg.act_bits) and (cfg.act_bits == 0 or 2 <= cfg.act_bits <= 8),
          f"act_bits: {cfg.act_bits!r} must be 0 (weights only) or a bit width 2–8")
    check_int("calib_size", cfg.calib_size, 1)

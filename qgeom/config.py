"""Run configuration of the transfer experiment: a dataclass, presets, YAML/JSON, overrides.

A run is fully described by a :class:`RunConfig`; it is written into the run directory
(``config.json``) and a resumed run must ask for the same one. Presets:

* ``demo`` — 2 CPU cores, < 10 minutes: micro ViT, 6 tasks, 2 bits, 3 seeds (one random draw
  per seed and cell).
* ``tiny`` — the tests' end-to-end configuration: 3 tasks, a few steps, seconds.
* ``gpu``  — a lent H100/H200: ViT-S width (384, 6 heads) at depth 6, patch 8, 8 tasks, 3×
  more data, 3 seeds, 2 bits; sized by estimate (≈ 13.5 k optimizer steps + ≈ 5 k
  evaluations) to finish inside 8 minutes, *not yet run on a GPU* (no device was lent to the
  session that wrote it). ``bits=2,3`` doubles the QAT, evaluation and geometry stages.

Every field can be overridden from the CLI as ``key=value`` (nested with dots:
``finetune.steps=300``; lists comma-separated: ``bits=2,3``).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from qgeom.train import TrainConfig

PAPER_LAMBDAS = (0.15, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5)  # the paper's validation grid for λ


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a transfer run's results."""

    name: str = "demo"
    preset: str = "micro"
    model_overrides: dict = field(default_factory=dict)
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
    scopes: tuple[str, ...] = ("backbone", "quantized")
    metrics: tuple[str, ...] = ("ggn",)
    probe_size: int = 256
    probe_batch: int = 128
    permutations: int = 5000
    eval_batch: int = 1000

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def _coerce(value: Any, typ: Any, default: Any) -> Any:
    """Turn a JSON/YAML/CLI value into the type of the field's default."""
    if isinstance(default, TrainConfig):
        if isinstance(value, TrainConfig):
            return value
        return TrainConfig(**{k: _coerce(v, None, getattr(TrainConfig(), k)) for k, v in dict(value).items()})
    if isinstance(default, tuple):
        items = value.split(",") if isinstance(value, str) else list(value)
        proto = default[0] if default else ""
        return tuple(_coerce(v, None, proto) for v in items if v != "")
    if isinstance(default, bool):
        return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
    if isinstance(default, int):
        return int(value)
    if isinstance(default, float):
        return float(value)
    if isinstance(default, dict):
        return json.loads(value) if isinstance(value, str) else dict(value)
    return value if not isinstance(default, str) else str(value)


def from_dict(data: dict, base: RunConfig | None = None) -> RunConfig:
    """A config from a (possibly partial) dict; unknown keys are an error that lists the known."""
    base = base or RunConfig()
    known = {f.name: f for f in fields(RunConfig)}
    unknown = [k for k in data if k not in known]
    if unknown:
        raise ValueError(f"unknown config keys {unknown}; known: {', '.join(known)}")
    changes = {k: _coerce(v, known[k].type, getattr(base, k)) for k, v in data.items()}
    return dataclasses.replace(base, **changes)


def with_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """Apply ``key=value`` strings; ``finetune.steps=300`` sets a nested field."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not key=value")
        key, value = item.split("=", 1)
        if "." in key:
            outer, inner = key.split(".", 1)
            sub = getattr(cfg, outer, None)
            if not isinstance(sub, TrainConfig):
                raise ValueError(f"{outer!r} has no sub-fields")
            if inner not in {f.name for f in fields(TrainConfig)}:
                raise ValueError(f"unknown field {inner!r} of {outer}; known: {', '.join(f.name for f in fields(TrainConfig))}")
            cfg = dataclasses.replace(cfg, **{outer: sub.with_(**{inner: _coerce(value, None, getattr(sub, inner))})})
        else:
            cfg = from_dict({key: value}, cfg)
    return cfg


def preset(name: str) -> RunConfig:
    """A named configuration: ``demo``, ``tiny`` or ``gpu``."""
    if name == "demo":
        # 3 seeds (every verdict is over seeds); one random draw per seed and cell: the random
        # control of a cell is still the mean of 3 draws once averaged over the 3 seeds
        return RunConfig(seeds=(0, 1, 2), random_draws=1)
    if name == "tiny":
        return RunConfig(
            name="tiny", model_overrides={"embed_dim": 32, "depth": 2, "num_heads": 2},
            pretext_tasks=("shape", "hue", "position"), tasks=("shape", "hue", "position"),
            n_pretext_per_task=200, n_train=256, n_val=64, n_test=64,
            pretrain=TrainConfig(steps=20, batch_size=64, lr=2e-3, warmup_steps=2),
            finetune=TrainConfig(steps=10, batch_size=64, lr=1e-3, warmup_steps=2),
            qat=TrainConfig(steps=8, batch_size=64, lr=5e-4, warmup_steps=2),
            lambdas=(0.5, 1.0, 1.5), random_draws=2, probe_size=64, probe_batch=32, permutations=200,
        )
    if name == "gpu":
        return RunConfig(
            name="gpu", model_overrides={"embed_dim": 384, "depth": 6, "num_heads": 6},
            tasks=("shape", "stripes", "count", "hue", "texture", "position", "size", "digits"),
            n_pretext_per_task=10000, n_train=10000, n_val=1000, n_test=2000,
            pretrain=TrainConfig(steps=1500, batch_size=256, lr=1e-3, warmup_steps=100),
            finetune=TrainConfig(steps=300, batch_size=256, lr=5e-4, warmup_steps=30),
            qat=TrainConfig(steps=200, batch_size=256, lr=2.5e-4, warmup_steps=20),
            bits=(2,), seeds=(0, 1, 2), probe_size=1024, probe_batch=256,
        )
    raise ValueError(f"unknown run preset {name!r}; known: demo, tiny, gpu")


def load_config(source: str | Path) -> RunConfig:
    """A preset name, or a ``.json`` / ``.yaml`` file (partial; missing fields from ``demo``)."""
    path = Path(source)
    if path.suffix in (".json", ".yaml", ".yml"):
        text = path.read_text()
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text) or {}
        base = preset(data.pop("preset_base", "demo"))
        return from_dict(data, base)
    return preset(str(source))

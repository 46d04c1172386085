"""The small checkers of :func:`qgeom.experiment.config.validate`, and the error they raise.

Each raises :class:`ConfigError` with a message that starts with the key it checks, so a refused
value names itself (``bits: 9 is not a supported bit width (2–8)``)."""

from __future__ import annotations

from typing import Any, Callable


class ConfigError(ValueError):
    """A configuration value is malformed or out of range; the message starts with the key."""


def check(ok: bool, msg: str) -> None:
    if not ok:
        raise ConfigError(msg)


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_int(key: str, v: Any, low: int) -> None:
    check(is_int(v), f"{key}: {v!r} is not an integer")
    check(v >= low, f"{key}: {v} must be ≥ {low}")


def check_list(key: str, values: Any, check_item: Callable[[str, Any], None], min_len: int = 1) -> None:
    check(isinstance(values, tuple), f"{key}: expected a list, got {values!r}")
    check(len(values) >= min_len, f"{key}: needs at least {min_len} value{'s' * (min_len > 1)}, got none"
           if not values else f"{key}: needs at least {min_len} values, got {list(values)}")
    dup = sorted({str(v) for v in values if values.count(v) > 1})
    check(not dup, f"{key}: repeated values {dup}")
    for v in values:
        check_item(key, v)

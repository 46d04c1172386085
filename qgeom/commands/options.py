"""One option vocabulary for every command: each shared option is defined here, once.

A command declares a shared option in one line, ``n_probe: int = O.n_probe()``; the name, type
and default come from here, so ``--n-probe`` means the same thing wherever it appears (a test,
``tests/test_options.py``, walks every command and checks it). ``help`` may say what the option
does in that command; nothing else may differ.

Defaults of ``None`` mean "what the input records": ``--bits`` the checkpoint's (or the run's,
or the preset's) bit width, else 2; ``--scope`` the vector's declared scope, else ``backbone``
(the paper's); ``--data`` / ``--model`` / ``--data-seed`` the checkpoint's metadata.

Runtime options (``--device``, ``--threads``) are applied by :func:`apply_runtime` and restored
when the command ends (several commands may run in one process, e.g. under a test runner).
Output options (``--format``, ``--quiet``) are read by :class:`qgeom.commands.output.Output`.
This module imports no torch: ``--help`` must answer without it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import click
import typer

from qgeom.commands.inputs import DATA_HELP, DATA_ROOT_HELP, MODEL_HELP
from qgeom.files import check_writable
from qgeom.vocabulary import SCOPES

DTYPES = ("float32", "float64")
FORMATS = ("table", "csv", "json")
BIT_RANGE = (2, 8)


def bit_widths(value) -> tuple[int, ...]:
    """``--bits``: bit widths, comma-separated (``2`` or ``2,3``), each checked to lie in 2–8.

    Parsed to a tuple of ints (duplicates dropped, order kept); a ``ValueError`` becomes click's
    "Invalid value for '--bits'" (exit 2) before any work. Commands that quantize at one width
    refuse a list with :func:`one_bit_width`."""
    if isinstance(value, tuple):
        return value
    parts = [p.strip() for p in str(value).split(",") if p.strip()]
    if not parts:
        raise ValueError("needs at least one bit width, e.g. 2 or 2,3")
    out = []
    for p in parts:
        try:
            b = int(p)
        except ValueError:
            raise ValueError(f"{p!r} is not an integer") from None
        if not BIT_RANGE[0] <= b <= BIT_RANGE[1]:
            raise ValueError(f"{b} is not in the range {BIT_RANGE[0]}<=x<={BIT_RANGE[1]} (2–8 bits)")
        out.append(b)
    return tuple(dict.fromkeys(out))


def _choice(values: tuple[str, ...], what: str):
    def check(value):
        if value is not None and value not in values:
            raise typer.BadParameter(f"{value!r} is not one of {', '.join(values)}")
        return value

    check.__doc__ = f"{what}: one of {', '.join(values)}"
    return check


# -- the vocabulary --------------------------------------------------------------------------------
# Each function returns a fresh typer.Option; the default and the type live only here.


def model(help: str | None = None) -> Any:
    return typer.Option(None, "--model", help=help or MODEL_HELP)


def data(help: str | None = None) -> Any:
    """``--data`` (``--task`` is the same option: the stage commands' historical name)."""
    return typer.Option(None, "--data", "--task", help=help or DATA_HELP)


def data_root(help: str | None = None) -> Any:
    return typer.Option(None, "--data-root", help=help or DATA_ROOT_HELP)


def n_probe(help: str = "probe images: the probe set the curvature (or the checks) are measured on") -> Any:
    return typer.Option(256, "--n-probe", min=1, help=help)


def probe_batch(help: str = "probe batch size") -> Any:
    return typer.Option(64, "--probe-batch", min=1, help=help)


def probe_seed(help: str = "seed picking the probe images") -> Any:
    return typer.Option(0, "--probe-seed", help=help)


def data_seed(help: str = "seed of the task's generated images (default: the checkpoint's, else 0)") -> Any:
    return typer.Option(None, "--data-seed", help=help)


def seed(help: str = "seed") -> Any:
    return typer.Option(0, "--seed", help=help)


def out_file(help: str = "where to write the checkpoint (.safetensors)") -> Any:
    """``--out FILE``: the one checkpoint a stage command writes (required)."""
    return typer.Option(..., "--out", help=help)


def out_dir(help: str = "directory for the tables (CSV and JSON); default: print only") -> Any:
    """``--out-dir DIR``: where a command that prints tables also writes them (optional)."""
    return typer.Option(None, "--out-dir", help=help)


def bits(help: str = "bit widths, comma-separated, each 2–8 (default: the checkpoint's, else 2)") -> Any:
    return typer.Option(None, "--bits", parser=bit_widths, help=help, metavar="BITS")


def dtype(help: str = "float64 (default: exact enough to verify invariances to 1e-10) or float32 (half the "
                      "memory and time)") -> Any:
    return typer.Option("float64", "--dtype", callback=_choice(DTYPES, "--dtype"), help=help)


def scope(help: str = "backbone (the paper's), quantized or all (default: the vector's declared scope, else "
                      "backbone)") -> Any:
    return typer.Option(None, "--scope", callback=_choice(SCOPES, "--scope"), help=help)


def allow_partial(help: str = "accept a vector that lacks tensors of its scope (they count as zero; said in the "
                              "output)") -> Any:
    """``--allow-partial``: opt out of the rule that a vector covers the scope it is used in."""
    return typer.Option(False, "--allow-partial", help=help)


def device(help: str = "auto (CUDA when present, else CPU), cpu, cuda or cuda:N") -> Any:
    return typer.Option("auto", "--device", help=help)


def threads(help: str = "torch's intra-op threads (tiny models gain nothing from more; 2-core machines lose)") -> Any:
    return typer.Option(1, "--threads", min=1, help=help)


def workers(help: str = "worker processes (default: QGEOM_WORKERS, else 1 on a GPU, else min(2, cores)); each "
                         "uses one torch thread") -> Any:
    return typer.Option(None, "--workers", min=1, help=help)


def quiet(help: str = "no progress bars and no status lines; results (and errors) only") -> Any:
    return typer.Option(False, "--quiet", "-q", help=help)


def format(help: str = "table (for people), csv or json (for programs: stdout holds only the data, messages "
                       "go to stderr)") -> Any:
    return typer.Option("table", "--format", callback=_choice(FORMATS, "--format"), help=help)


# -- applying them ------------------------------------------------------------------------------------


def one_bit_width(value: tuple[int, ...] | None, fallback: int = 2, *, command: str = "this command") -> int:
    """The single bit width of a command that quantizes at one width (``None``: ``fallback``)."""
    if not value:
        return fallback
    if len(value) > 1:
        raise typer.BadParameter(f"{command} quantizes at one bit width, got {','.join(map(str, value))}",
                                 param_hint="--bits")
    return value[0]


def recorded_bits(meta: dict) -> int | None:
    """The bit width a checkpoint's metadata records (a QAT, PTQ or patched QAT checkpoint), if any."""
    b = meta.get("bits")
    try:
        return int(b) if b not in (None, "") else None
    except ValueError:
        return None


_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")


def check_device(name: str) -> str:
    """Validate ``--device`` without torch (the syntax); :func:`apply_runtime` checks availability."""
    if not _DEVICE.match(name):
        raise typer.BadParameter(f"{name!r} is not auto, cpu, cuda, cuda:N or mps", param_hint="--device")
    return name


def apply_runtime(device: str = "auto", threads: int = 1) -> None:
    """Set torch's threads and qgeom's device (``QGEOM_DEVICE``, read by
    :func:`qgeom.models.default_device`) for the running command; both are restored when it ends."""
    import torch

    check_device(device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise typer.BadParameter("CUDA is not available on this machine", param_hint="--device")
    if device == "mps" and not torch.backends.mps.is_available():
        raise typer.BadParameter("MPS is not available on this machine", param_hint="--device")
    old_threads, old_device = torch.get_num_threads(), os.environ.get("QGEOM_DEVICE")

    def restore() -> None:
        torch.set_num_threads(old_threads)
        if old_device is None:
            os.environ.pop("QGEOM_DEVICE", None)
        else:
            os.environ["QGEOM_DEVICE"] = old_device

    torch.set_num_threads(threads)
    if device != "auto":
        os.environ["QGEOM_DEVICE"] = device
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.call_on_close(restore)


def table_dir(path: Path | None) -> Path | None:
    """``--out-dir``, checked writable before any work (``None``: print only)."""
    if path is not None:
        check_writable(path, directory=True)
    return path

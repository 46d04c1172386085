"""Files: atomic writes, safetensors checkpoints, strict JSON.

Every artifact qgeom writes goes through :func:`atomic_write` (a temporary file beside the
target, then a rename), so a killed process never leaves half a file and a file that exists is
whole. Checkpoints are safetensors files with string metadata (:func:`save_params`,
:func:`load_params`); nothing is ever unpickled. JSON is written strictly (:func:`write_json`):
NaN and ±Inf become ``null``, which every standard JSON parser reads.
"""

from __future__ import annotations

import json
import math
import os
import socket
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import safetensors.torch
from safetensors import safe_open
from torch import Tensor

from qgeom import __version__

from qgeom.params import NonFiniteParamsError, Params, check_finite, content_hash, first_names


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupt or not a safe format."""


def jsonable(x: Any) -> Any:
    """``x`` with every float that JSON cannot hold (NaN, ±Inf) as ``None``, numpy and torch
    scalars as Python numbers, tuples as lists — recursively through dicts and lists."""
    if isinstance(x, Mapping):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if hasattr(x, "item") and callable(x.item) and getattr(x, "ndim", 0) == 0:
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def dumps_json(obj: Any, indent: int | None = 2, sort_keys: bool = False, ensure_ascii: bool = True) -> str:
    """Strict JSON text of ``obj`` (:func:`jsonable`; ``allow_nan=False`` guards the rest): NaN
    and ±Inf are ``null``, never the bare ``NaN`` that standard parsers reject. Every JSON text
    qgeom writes or prints goes through here (files by :func:`write_json`; the commands' ``--format
    json``). ``ensure_ascii=False`` keeps non-ASCII text (ρ, λ) as it is instead of ``\\u`` escapes."""
    return json.dumps(jsonable(obj), indent=indent, allow_nan=False, default=_default, sort_keys=sort_keys,
                      ensure_ascii=ensure_ascii)


def _default(x: Any) -> Any:
    if hasattr(x, "tolist"):
        return jsonable(x.tolist())
    if hasattr(x, "__fspath__"):
        return os.fspath(x)
    raise TypeError(f"{type(x).__name__} is not JSON serializable")


def write_csv(path: str | os.PathLike, table) -> Path:
    """Write a pandas ``table`` as CSV (no index) to ``path``, atomically."""
    return atomic_write(path, lambda tmp: table.to_csv(tmp, index=False))


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2, sort_keys: bool = False,
               ensure_ascii: bool = True) -> Path:
    """Write ``obj`` as strict JSON (:func:`dumps_json`: NaN and ±Inf as ``null``) to ``path``,
    atomically, with a final newline. Every JSON file qgeom writes is written here."""
    text = dumps_json(obj, indent, sort_keys, ensure_ascii) + "\n"
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


TEMP_SUFFIX = ".tmp"
#: This machine's name in temporary file names: a run directory may be shared by jobs on several
#: machines (a cluster's file system), and a process id says nothing about another machine.
HOST = "".join(c if c.isalnum() else "-" for c in socket.gethostname()) or "host"


def _temp_prefix(path: Path, pid: int | None = None) -> str:
    return f".{path.name}.{HOST}_{os.getpid() if pid is None else pid}."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a live process of another user
        return True
    return True


def remove_stale_temps(directory: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Delete temporary files of :func:`atomic_write` whose writer process is gone (killed
    mid-write); returns them. Only temporaries written on this machine are judged (another
    machine's process ids cannot be checked from here); those of live processes are left alone
    (they may be writing now); a file that only looks like one is ignored unless its name parses."""
    d = Path(directory)
    if not d.is_dir():
        return []
    removed = []
    for tmp in (d.rglob if recursive else d.glob)(f".*{TEMP_SUFFIX}"):
        parts = tmp.name[: -len(TEMP_SUFFIX)].rsplit(".", 2)  # .{name}.{host}_{pid}.{random}
        host, _, pid = parts[1].rpartition("_") if len(parts) == 3 else ("", "", "")
        if host != HOST or not pid.isdigit() or not tmp.is_file():
            continue
        if int(pid) != os.getpid() and _alive(int(pid)):
            continue
        try:
            tmp.unlink()
            removed.append(tmp)
        except FileNotFoundError:
            pass
    return removed


def umask() -> int:
    """The process's umask (read from /proc where it can be, so that it is never changed, even for an instant)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` then rename onto ``path``, so a killed run never leaves half a file.

    The file gets the permissions any new file gets (0666 less the umask), so collaborators read
    a run directory as the umask allows. The temporary file (``.{name}.{pid}.{random}.tmp`` beside
    ``path``) is removed when ``write`` raises; one left by a killed process is removed by the next write into the same directory
    (:func:`remove_stale_temps`). An ``OSError`` that names no file (e.g. no space left on
    device) is re-raised naming ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path), suffix=TEMP_SUFFIX)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes it 0600: the file gets the mode open() would give it
        os.replace(tmp, path)
    except OSError as e:
        if e.filename is None or str(e.filename) == tmp:
            raise type(e)(e.errno, e.strerror or str(e), str(path)) from e
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def save_params(path: str | os.PathLike, params: Mapping[str, Tensor], metadata: Mapping[str, object] | None = None) -> Path:
    """Write ``params`` to a safetensors file atomically, with metadata.

    The metadata always holds ``content_hash`` (see :func:`content_hash`) and ``qgeom_version``;
    other values are JSON-encoded strings (safetensors metadata is ``str -> str``).
    """
    check_finite(params)
    tensors = {k: v.detach().cpu().contiguous() for k, v in params.items()}
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    meta["content_hash"] = content_hash(tensors)
    meta["qgeom_version"] = __version__

    def write(tmp: str) -> None:
        try:
            safetensors.torch.save_file(tensors, tmp, metadata=meta)
        except OSError:
            raise
        except Exception as e:  # safetensors' own errors (SafetensorError) name no file
            raise CheckpointError(f"{path}: could not write the safetensors file: {e}") from e

    return atomic_write(path, write)


def sniff_format(path: str | os.PathLike) -> str | None:
    """A description of a file that is recognisably *not* safetensors (a pickle, a torch zip
    checkpoint), from its first bytes; ``None`` when it may be safetensors (8-byte header
    length, then ``{``). Nothing is unpickled."""
    with open(path, "rb") as f:
        head = f.read(9)
    if head[8:9] == b"{":
        return None
    if head.startswith(b"PK\x03\x04"):
        return "a torch.save zip archive (pickle inside)"
    if head[:1] == b"\x80" and len(head) > 1 and head[1] <= 5:
        return "a pickle"
    return None


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata of a safetensors file, from its header alone (no tensor is read)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:  # safetensors raises SafetensorError / OSError / ValueError
        raise CheckpointError(f"{path} is not a readable safetensors file (truncated or corrupt?): {e}") from e


def load_params(path: str | os.PathLike, *, verify: bool = True, finite: bool = True) -> tuple[Params, dict[str, str]]:
    """Read a safetensors file written by :func:`save_params`: ``(params, metadata)``.

    Raises :class:`CheckpointError` for a missing, truncated, corrupt or foreign (pickle) file,
    or when the stored content hash does not match the tensors (``verify=True``), and
    :class:`NonFiniteParamsError` naming the file and the tensors when any value is NaN/Inf
    (``finite=True``): no number is ever computed from such a file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no such checkpoint: {path}")
    foreign = sniff_format(path)
    if foreign:
        raise CheckpointError(f"{path} is {foreign}, not a safetensors file; qgeom never unpickles files here "
                              f"(convert it: safetensors.torch.save_file(state_dict, ...))")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            params = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises SafetensorError / OSError / ValueError
        raise CheckpointError(f"{path} is not a readable safetensors file (truncated or corrupt?): {e}") from e
    if verify and "content_hash" in meta and meta["content_hash"] != content_hash(params):
        raise CheckpointError(f"{path}: content hash does not match the stored tensors (file corrupted?)")
    bad = [k for k, v in params.items() if finite and torch.is_floating_point(v) and not torch.isfinite(v).all()]
    if bad:
        raise NonFiniteParamsError(f"{path}: NaN or Inf values in tensor {first_names(bad)}")
    return params, meta
